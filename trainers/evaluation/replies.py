"""What a model says back: replies generated from held-out clips, how often they loop, and a
judge-free semantic measure (does a clip make the model prefer its own sentence's continuation?)."""

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from modeling_blsp_emo import BlspEmoForConditionalGeneration, BlspEmoProcessor, load_audio
from modeling_blsp_emo.prompts import NEUTRAL_SYSTEM_PROMPT, SEMANTIC_TARGET_INSTRUCTION
from modeling_blsp_emo.reply_generation import REPLY_GENERATION_DEFAULTS
from modeling_blsp_emo.speech_lengths import SAMPLING_RATE
from trainers.evaluation.retrieval import continuation_log_likelihoods

# The pipeline's and chat's guard against degenerate loops, over the reply's own tokens; target
# writing stays plain greedy.
REPETITION_GUARD = REPLY_GENERATION_DEFAULTS


@torch.inference_mode()
def generate_replies(
    model: BlspEmoForConditionalGeneration,
    processor: BlspEmoProcessor,
    clips: Sequence,
    instruction: str,
    *,
    system_prompt: str = NEUTRAL_SYSTEM_PROMPT,
    batch_size: int = 8,
    max_new_tokens: int = 48,
    **generation_kwargs,
) -> list[str]:
    """Greedy replies to `instruction` followed by each clip's speech (extra `generation_kwargs`, e.g.
    a repetition guard, go to `generate`)."""
    replies = []
    for start in tqdm(range(0, len(clips), batch_size), desc="replies", unit="batch"):
        conversations = [
            [{"role": "system", "content": system_prompt},
             {"role": "user", "content": [{"type": "text", "text": instruction},
                                          {"type": "audio", "audio": load_audio(clip), "sampling_rate": SAMPLING_RATE}]}]
            for clip in clips[start : start + batch_size]
        ]
        inputs = processor.apply_chat_template(conversations).to(model.device)
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, **generation_kwargs)
        replies += [text.strip() for text in processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)]
    return replies


def repeats_ngram(text: str, n: int = 4) -> bool:
    """Whether some word n-gram occurs twice in `text` (case and punctuation ignored): a looping reply."""
    words = ["".join(ch for ch in word.lower() if ch.isalnum()) for word in text.split()]
    words = [word for word in words if word]
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) < len(grams)


def repetition_share(texts: Sequence[str], n: int = 4) -> float:
    """The share of `texts` that repeat a word n-gram."""
    return sum(repeats_ngram(text, n) for text in texts) / max(len(texts), 1)


def sentence_retrieval(
    model: BlspEmoForConditionalGeneration,
    processor: BlspEmoProcessor,
    rows: Sequence[dict],
    continuations: dict[str, str],
    instruction: str = SEMANTIC_TARGET_INSTRUCTION,
) -> dict:
    """Does each clip (`audio`, `text`) make the model prefer its own sentence's continuation
    (`continuations[text]`, e.g. the stage-1 target) over the other sentences'? Normalized as
    emotion-target retrieval is: each candidate's score minus its mean over all clips, so a
    continuation that is likely in itself does not win everywhere. Returns `{"accuracy", "clips",
    "sentences", "chance"}`; clips whose sentence has no continuation are left out."""
    usable = [row for row in rows if row["text"] in continuations]
    sentences = sorted({row["text"] for row in usable})
    if len(sentences) < 2:
        return {"accuracy": None, "clips": 0, "sentences": len(sentences), "chance": None}
    candidates = [continuations[text] for text in sentences]
    scores = np.array([
        continuation_log_likelihoods(model, processor, row["audio"], candidates, instruction=instruction)
        for row in tqdm(usable, desc="sentence retrieval", unit="clip")
    ])
    picked = (scores - scores.mean(0)).argmax(1)
    hits = sum(sentences[index] == row["text"] for index, row in zip(picked, usable))
    return {"accuracy": hits / len(usable), "clips": len(usable), "sentences": len(sentences), "chance": 1 / len(sentences)}
