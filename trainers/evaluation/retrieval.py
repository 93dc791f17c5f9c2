"""Emotion-target retrieval: which of a sentence's emotion-aware continuations the model finds most
likely given the speech, and the ceiling the targets allow (their writer, told the true emotion)."""

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from modeling_blsp_emo import BlspEmoForConditionalGeneration, BlspEmoProcessor, load_audio
from modeling_blsp_emo.numerics import check_finite
from modeling_blsp_emo.prompts import EMOTION_CONTINUATION_INSTRUCTION, NEUTRAL_SYSTEM_PROMPT
from processing.collators import SpeechContinuationCollator
from processing.target_generation import load_targets, writing_chat
from trainers.evaluation.shared_prefix import logits_after_shared_prefix


@torch.inference_mode()
def continuation_log_likelihoods(
    model: BlspEmoForConditionalGeneration,
    processor: BlspEmoProcessor,
    audio,
    candidates: Sequence[str],
    instruction: str = EMOTION_CONTINUATION_INSTRUCTION,
) -> list[float]:
    """Mean log-probability per token of each candidate continuation, given `instruction` (default:
    the stage-2 one) and the speech. The clip is encoded once and the prompt with its speech runs
    once for all candidates."""
    collator = SpeechContinuationCollator(processor, instruction)
    clip = load_audio(audio)
    prompt = collator.speech_prompts([clip])[0]
    responses = collator.tokenize([collator.chat.response(text, False) for text in candidates])
    predicting = [range(len(prompt) - 1, len(prompt) + len(response) - 1) for response in responses]
    features = processor.audio_features([clip])
    features.pop("audio_item_index")
    all_logits = logits_after_shared_prefix(
        model, [prompt + response for response in responses], predicting, collator.pad_id, prefix_inputs=features
    )
    return [mean_log_prob(logits, response, "the candidate continuations") for logits, response in zip(all_logits, responses)]


def mean_log_prob(logits: torch.Tensor, tokens: Sequence[int], what: str) -> float:
    """Mean log-probability of `tokens` under the rows of `logits` that predict them; raises naming
    `what` when the logits hold NaN or inf."""
    log_probs = F.log_softmax(check_finite(logits, f"raw logits of {what}"), -1)
    return log_probs.gather(-1, torch.tensor(tokens, device=logits.device)[:, None]).mean().item()


@torch.inference_mode()
def reply_log_likelihoods(model, tokenizer, chat: list[dict], candidates: Sequence[str]) -> list[float]:
    """Mean log-probability per token of each candidate as the assistant's reply to a text `chat`
    (messages up to the last user turn), through the tokenizer's chat template. The prompt runs once
    for all candidates; logits are made only where a reply token is predicted."""
    prompt = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    replies = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in candidates]
    if not all(replies):
        raise ValueError("an empty candidate reply has no tokens to score")
    # Position p predicts token p + 1: the prompt's last position predicts each reply's first token.
    predicting = [range(len(prompt_ids) - 1, len(prompt_ids) + len(reply) - 1) for reply in replies]
    rows = [prompt_ids + reply for reply in replies]
    all_logits = logits_after_shared_prefix(model, rows, predicting, tokenizer.pad_token_id)
    return [mean_log_prob(logits, reply, "the replies") for logits, reply in zip(all_logits, replies)]


def writer_retrieval(
    model,
    tokenizer,
    targets: dict[tuple[str, str], str],
    labels: Sequence[str],
    texts: Sequence[str],
    prompt: Callable[[dict], str],
    demonstration: Callable[[dict], list[dict]] | None = None,
    system_prompt: str = NEUTRAL_SYSTEM_PROMPT,
) -> dict:
    """The ceiling of emotion-target retrieval that the targets allow: the LLM that wrote them, given
    each sentence's transcript *and its true emotion* in the writing prompt, picks the most likely of
    the sentence's targets. A writer that finds its own sad continuation likelier than its happy one
    even when told the sentence is happy leaves no speech model a reason to do better.

    Sentences of `texts` whose targets are missing for a label or not all different are left out.
    Returns `{"accuracy", "sentences", "predictions": {emotion: [retrieved emotion per sentence]}}`."""
    usable = [
        text for text in dict.fromkeys(texts)
        if all((text, label) in targets for label in labels) and len({targets[text, label] for label in labels}) == len(labels)
    ]
    predictions: dict[str, list[str]] = {label: [] for label in labels}
    for text in tqdm(usable, desc="writer retrieval", unit="sentence"):
        candidates = [targets[text, label] for label in labels]
        for label in labels:
            example = {"text": text, "emotion": label}
            history = demonstration(example) if demonstration else ()
            scores = reply_log_likelihoods(model, tokenizer, writing_chat(prompt(example), system_prompt, history), candidates)
            predictions[label].append(labels[int(np.argmax(scores))])
    hits = sum(retrieved == label for label in labels for retrieved in predictions[label])
    return {"accuracy": hits / max(len(usable) * len(labels), 1), "sentences": len(usable), "predictions": predictions}


def retrieval_predictions(
    model: BlspEmoForConditionalGeneration, processor: BlspEmoProcessor, examples: Sequence[dict]
) -> list[dict]:
    """For examples with `audio`, `emotion` and `candidates` ({emotion: target of the same sentence}):
    the emotion whose target the model finds most likely. Examples whose candidates are not all
    different cannot be told apart and are marked `ambiguous` (left out of the accuracy)."""
    results = []
    for example in tqdm(examples, desc="target retrieval", unit="clip"):
        emotions = list(example["candidates"])
        texts = [example["candidates"][emotion] for emotion in emotions]
        scores = continuation_log_likelihoods(model, processor, example["audio"], texts)
        results.append(
            {
                "retrieved": emotions[int(np.argmax(scores))],
                "scores": dict(zip(emotions, scores)),
                "ambiguous": len(set(texts)) < len(texts),
            }
        )
    return results


def retrieval_targets(folder: str | Path) -> dict[tuple[str, str], str]:
    """`{(text, emotion): target}` from `generate-targets --emotion` output. Refusals are kept: they
    are left out of training, but retrieval ranks everything the LLM wrote for a sentence, and a
    sentence short of one target could not be used at all."""
    return {(r["text"], r["emotion"]): r["target"] for r in load_targets(folder, drop_refusals=False)}


def target_retrieval(
    model: BlspEmoForConditionalGeneration,
    processor: BlspEmoProcessor,
    rows: Sequence[dict],
    targets: dict[tuple[str, str], str],
) -> tuple[list[dict | None], dict]:
    """Retrieval over clips (`audio`, `text`, `emotion`) whose sentence has a target for every
    label in `targets` ({(text, emotion): target}). Returns per-row results (None where a target is
    missing) and `{"accuracy", "normalized_accuracy", "clips", "left_out_identical_targets"}`.

    `accuracy` is the plain measure: the true emotion's target is the most likely one. It also
    measures how likely each text is in itself (a short, repetitive continuation wins for every
    clip), so `normalized_accuracy` first subtracts from each candidate's score its mean over all
    clips of the same sentence: what is left is how much *this* clip's voice raises a continuation.
    It uses no labels, but it assumes each sentence is heard in a mix of emotions (as in the
    synthetic corpus, where every sentence is spoken in all of them)."""
    labels = model.config.emotion_labels
    usable = [i for i, row in enumerate(rows) if all((row["text"], label) in targets for label in labels)]
    examples = [
        {"audio": rows[i]["audio"], "emotion": rows[i]["emotion"],
         "candidates": {label: targets[(rows[i]["text"], label)] for label in labels}}
        for i in usable
    ]
    per_row: list[dict | None] = [None] * len(rows)
    for i, result in zip(usable, retrieval_predictions(model, processor, examples)):
        per_row[i] = result
    distinct = [i for i in usable if not per_row[i]["ambiguous"]]
    by_sentence: dict[str, list[int]] = {}
    for i in distinct:
        by_sentence.setdefault(rows[i]["text"], []).append(i)
    for members in by_sentence.values():
        scores = np.array([[per_row[i]["scores"][label] for label in labels] for i in members])
        for i, row_scores in zip(members, scores - scores.mean(0)):
            per_row[i]["retrieved_normalized"] = labels[int(np.argmax(row_scores))]
    def accuracy(key: str) -> float:
        return sum(per_row[i][key] == rows[i]["emotion"] for i in distinct) / max(len(distinct), 1)

    summary = {
        "accuracy": accuracy("retrieved"),
        "normalized_accuracy": accuracy("retrieved_normalized"),
        "clips": len(distinct),
        "left_out_identical_targets": len(usable) - len(distinct),
    }
    return per_row, summary
