"""Batches for training: chat-formatted speech prompts followed by the LLM-written target.

Prompt and response are tokenized separately and concatenated, so the response tokens are the
same in the speech (student) sequence and the transcript (teacher) sequence. Labels cover the
response only; a target cut at the generation limit has no end-of-turn token (the LLM never
finished it).
"""

from collections.abc import Callable, Sequence

import numpy as np
import torch

from modeling_blsp_emo import BlspEmoProcessor, load_audio
from modeling_blsp_emo.prompts import NEUTRAL_SYSTEM_PROMPT

IGNORE_INDEX = -100
_RESPONSE_MARKER = "\u2063RESPONSE\u2063"


class ChatFormat:
    """Where a reply sits in the tokenizer's chat template: the text the template puts before the
    reply content and the end-of-turn text after it."""

    def __init__(self, processor: BlspEmoProcessor, system_prompt: str = NEUTRAL_SYSTEM_PROMPT):
        self.processor = processor
        self.system_prompt = system_prompt
        messages = self.messages("x")
        prompt = self.render(messages, add_generation_prompt=True)
        full = self.render(messages + [{"role": "assistant", "content": _RESPONSE_MARKER}], add_generation_prompt=False)
        if not full.startswith(prompt) or _RESPONSE_MARKER not in full[len(prompt) :]:
            raise ValueError("the chat template does not render an assistant reply right after its generation prompt")
        self.reply_prefix, end = full[len(prompt) :].split(_RESPONSE_MARKER, 1)
        self.end_of_turn = end.rstrip()

    def messages(self, user_content: str) -> list[dict]:
        return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": user_content}]

    def render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return self.processor.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, chat_template=self.processor.chat_template
        )

    def prompt(self, user_content: str) -> str:
        return self.render(self.messages(user_content), add_generation_prompt=True)

    def response(self, target: str, truncated: bool) -> str:
        return self.reply_prefix + target + ("" if truncated else self.end_of_turn)


def concatenate(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids`, `attention_mask` and `labels` (response tokens only)."""
    length = max(len(p) + len(r) for p, r in zip(prompts, responses))
    input_ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    labels = torch.full((len(prompts), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for row, (prompt, response) in enumerate(zip(prompts, responses)):
        ids = prompt + response
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, len(prompt) : len(ids)] = torch.tensor(response, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class SpeechContinuationCollator:
    """Collates examples with `audio`, `text`, `target` and `truncated` (and `emotion` when
    `label2id` is given) into student inputs: `instruction` + speech → target.

    With `with_teacher=True` (stage 1) it adds `teacher_input_ids`, `teacher_attention_mask` and
    `teacher_labels`: the same prompt with the transcript in place of the speech. `augment`, when
    given, transforms each 16-kHz waveform (training only).
    """

    def __init__(
        self,
        processor: BlspEmoProcessor,
        instruction: str,
        *,
        system_prompt: str = NEUTRAL_SYSTEM_PROMPT,
        with_teacher: bool = False,
        label2id: dict[str, int] | None = None,
        augment: Callable | None = None,
    ):
        self.processor = processor
        self.instruction = instruction
        self.chat = ChatFormat(processor, system_prompt)
        self.with_teacher = with_teacher
        self.label2id = label2id
        self.augment = augment
        self.pad_id = processor.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = processor.tokenizer.eos_token_id

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return self.processor.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def speech_prompts(self, clips: Sequence[np.ndarray]) -> list[list[int]]:
        """Token ids of each clip's student prompt: the chat prompt with `instruction` and the clip's
        audio placeholders (one per speech embedding)."""
        prompts = [self.chat.prompt(self.instruction + self.processor.audio_token)] * len(clips)
        return self.tokenize(self.processor.expand_audio_tokens(prompts, list(clips)))

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        clips = [load_audio(example["audio"], name=f"example {example.get('index', i)}") for i, example in enumerate(examples)]
        if self.augment is not None:
            clips = [self.augment(clip) for clip in clips]
        responses = self.tokenize([self.chat.response(e["target"], bool(e.get("truncated"))) for e in examples])
        batch = concatenate(self.speech_prompts(clips), responses, self.pad_id)
        batch.update(self.processor.audio_features(clips))
        if self.with_teacher:
            teacher = concatenate(self.tokenize([self.chat.prompt(self.instruction + e["text"]) for e in examples]), responses, self.pad_id)
            batch.update({f"teacher_{key}": value for key, value in teacher.items()})
        if self.label2id is not None:
            batch["emotion_labels"] = torch.tensor([self.label2id[e["emotion"]] for e in examples], dtype=torch.long)
        return batch
