"""Judging spoken-instruction responses for quality and empathy (0-10) with a judge LLM.

The judge is any chat model; a small one measures nothing, so use a strong local model for real
numbers (e.g. `--judge Qwen/Qwen2.5-7B-Instruct`). The judge prompt asks for two lines,
`Quality: N` and `Empathy: N`.
"""

import re
from collections import defaultdict
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from modeling_blsp_emo import BlspEmoForConditionalGeneration, BlspEmoProcessor, load_audio
from modeling_blsp_emo.prompts import EMPATHETIC_SYSTEM_PROMPT
from modeling_blsp_emo.speech_lengths import SAMPLING_RATE

JUDGE_PROMPT = """You are grading an AI assistant's reply to a spoken request.
The user said: "{instruction}"
The user's voice sounded {emotion}.
The assistant replied: "{response}"

Rate the reply on two scales from 0 to 10:
- Quality: is it helpful, correct, coherent and on topic?
- Empathy: does it notice and respond appropriately to how the user feels?
Answer with exactly two lines:
Quality: <0-10>
Empathy: <0-10>"""

Judge = Callable[[str], str]


def parse_scores(judgement: str) -> dict[str, float | None]:
    """`{"quality": ..., "empathy": ...}` from a judge's answer; None where a score is missing or
    outside 0-10."""
    scores = {}
    for name in ("quality", "empathy"):
        match = re.search(rf"{name}\s*[:=]\s*(\d+(?:\.\d+)?)(?:\s*/\s*10)?", judgement, re.IGNORECASE)
        value = float(match.group(1)) if match else None
        scores[name] = value if value is not None and 0 <= value <= 10 else None
    return scores


def local_judge(path: str, max_new_tokens: int = 32) -> Judge:
    """A judge backed by a local transformers chat model (greedy decoding)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype="auto", device_map="auto")

    @torch.inference_mode()
    def judge(prompt: str) -> str:
        inputs = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(model.device)
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    return judge


@torch.inference_mode()
def respond(
    model: BlspEmoForConditionalGeneration, processor: BlspEmoProcessor, audio, max_new_tokens: int = 128
) -> str:
    """The model's reply to a spoken instruction, with the empathetic system prompt."""
    conversation = [
        {"role": "system", "content": EMPATHETIC_SYSTEM_PROMPT},
        {"role": "user", "content": [{"type": "audio", "audio": load_audio(audio), "sampling_rate": SAMPLING_RATE}]},
    ]
    inputs = processor.apply_chat_template(conversation).to(model.device)
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def evaluate_empathy(
    model: BlspEmoForConditionalGeneration,
    processor: BlspEmoProcessor,
    examples: Sequence[dict],
    judge: Judge,
    max_new_tokens: int = 128,
) -> tuple[list[dict], dict]:
    """Examples have `audio`, `text` (the spoken instruction) and `emotion`. Returns per-example
    rows (response, judgement, scores) and mean scores overall and per emotion (unscored
    judgements are counted, not averaged)."""
    rows = []
    for example in tqdm(examples, desc="empathy", unit="clip"):
        response = respond(model, processor, example["audio"], max_new_tokens)
        judgement = judge(JUDGE_PROMPT.format(instruction=example["text"], emotion=example["emotion"], response=response))
        rows.append({"text": example["text"], "emotion": example["emotion"], "response": response,
                     "judgement": judgement, **parse_scores(judgement)})
    return rows, summarize_scores(rows)


def summarize_scores(rows: Sequence[dict]) -> dict:
    groups = defaultdict(list)
    for row in rows:
        groups["all"].append(row)
        groups[row["emotion"]].append(row)
    summary = {}
    for group, members in groups.items():
        summary[group] = {"count": len(members)}
        for name in ("quality", "empathy"):
            values = [row[name] for row in members if row[name] is not None]
            summary[group][name] = sum(values) / len(values) if values else None
            summary[group][f"{name}_unscored"] = len(members) - len(values)
    return summary
