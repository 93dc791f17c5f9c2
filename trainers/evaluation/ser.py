"""Speech emotion recognition, three ways: the model's own answer to the SER query (parsed from
free text), the emotion head, and emotion-target retrieval (`trainers.evaluation.retrieval`); and
`evaluate_ser`, the one flow the CLI and the demo run."""

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import evaluate
import numpy as np
import torch
from tqdm.auto import tqdm

from modeling_blsp_emo import (
    AudioInputError,
    BlspEmoForAudioClassification,
    BlspEmoForConditionalGeneration,
    BlspEmoProcessor,
    load_audio,
)
from modeling_blsp_emo.audio_loading import describe_audio_item
from modeling_blsp_emo.numerics import check_finite
from modeling_blsp_emo.prompts import NEUTRAL_SYSTEM_PROMPT, ser_instruction
from modeling_blsp_emo.speech_activity import has_speech
from modeling_blsp_emo.speech_lengths import SAMPLING_RATE
from processing.errors import output_folder
from processing.manifests import write_jsonl
from processing.target_generation import continue_texts
from trainers.evaluation.calibration import expected_calibration_error
from trainers.evaluation.metrics import SER_METRICS_PATH
from trainers.evaluation.plots import plot_confusion
from trainers.evaluation.retrieval import target_retrieval

logger = logging.getLogger(__name__)

# Words an answer may use for each of the release's labels.
EMOTION_SYNONYMS = {
    "neutral": ("neutral", "calm", "no particular emotion", "no emotion", "indifferent"),
    "happy": ("happy", "happiness", "joy", "joyful", "excited", "excitement", "glad", "cheerful", "delighted"),
    "angry": ("angry", "anger", "mad", "furious", "annoyed", "irritated", "frustrated", "rage"),
    "sad": ("sad", "sadness", "unhappy", "sorrow", "sorrowful", "depressed", "upset", "melancholy"),
    "surprise": ("surprise", "surprised", "astonished", "astonishment", "amazed", "shocked", "shock"),
}


def parse_emotion(answer: str, labels: Sequence[str]) -> str | None:
    """The label an answer names ("The emotion tone of the speech is sad." → "sad"), through
    synonyms and any case; None when it names none. Negated mentions ("not happy") are ignored;
    of several labels the first named wins."""
    text = answer.lower()
    mentions = []
    for label in labels:
        for word in EMOTION_SYNONYMS.get(label, ()) + (label.lower(),):
            for match in re.finditer(rf"\b{re.escape(word)}\b", text):
                if not re.search(r"\b(not|no|isn't|n't)\s+$", text[: match.start()][-12:]):
                    mentions.append((match.start(), label))
    return min(mentions)[1] if mentions else None


def conversation(clip: np.ndarray, instruction: str) -> list[dict]:
    """A SER chat for a 16-kHz clip."""
    audio = {"type": "audio", "audio": clip, "sampling_rate": SAMPLING_RATE}
    return [
        {"role": "system", "content": NEUTRAL_SYSTEM_PROMPT},
        {"role": "user", "content": [{"type": "text", "text": instruction}, audio]},
    ]


@torch.inference_mode()
def predict_emotions(
    model: BlspEmoForConditionalGeneration,
    processor: BlspEmoProcessor,
    clips: Sequence,
    batch_size: int = 8,
    max_new_tokens: int = 24,
    errors: str = "raise",
    detect_speech: bool = False,
    answers: bool = True,
) -> list[dict]:
    """Per clip: the model's answer to the SER query, the label parsed from it (or None), the
    emotion head's label, its scores (calibrated: `model.emotion_probabilities`) and its raw logits
    (`head_logits`, a list in label order). With `answers=False` only the encoder, adapter and head
    run (no text is generated; `answer` and `parsed` are None). A clip that cannot be loaded raises
    `AudioInputError`, or with `errors="return"` gets `{"error": message}` instead while the others
    are still predicted. With `detect_speech`, a clip without speech (`speech_activity.has_speech`) is
    not run: its answer, labels, scores and logits are None and it has `"no_speech": True`.
    NaN/inf in the raw logits or the head's logits raise `NonFiniteOutputError` (corrupt weights)."""
    if errors not in ("raise", "return"):
        raise ValueError(f"errors={errors!r}: expected 'raise' or 'return'")
    labels = model.config.emotion_labels
    query = ser_instruction(labels) if answers else None
    results: list[dict] = []
    for start in tqdm(range(0, len(clips), batch_size), desc="SER", unit="batch"):
        loaded = {}
        for index, clip in enumerate(clips[start : start + batch_size], start=start):
            try:
                loaded[index] = load_audio(clip, name=describe_audio_item(clip, index))
            except AudioInputError as error:
                if errors == "raise":
                    raise
                loaded[index] = error
                continue
            if detect_speech and not has_speech(loaded[index]):
                loaded[index] = None  # no speech: no emotion is made up for it
        batch = [clip for clip in loaded.values() if isinstance(clip, np.ndarray)]
        predictions = iter(_predict_batch(model, processor, batch, query, labels, max_new_tokens) if batch else ())
        results.extend(
            {"error": str(clip)} if isinstance(clip, AudioInputError)
            else dict(answer=None, parsed=None, head=None, head_scores=None, head_logits=None, no_speech=True) if clip is None
            else next(predictions)
            for clip in loaded.values()
        )  # fmt: skip
    return results


def _predict_batch(
    model, processor, batch: list[np.ndarray], query: str | None, labels: Sequence[str], max_new_tokens: int
) -> list[dict]:
    """The SER query's answers (when there is a `query`) and the emotion head's outputs for 16-kHz clips."""
    if query is None:
        inputs = {name: value.to(model.device) for name, value in processor.audio_features(batch).items()}
        answers = [None] * len(batch)
    else:
        inputs = processor.apply_chat_template([conversation(clip, query) for clip in batch]).to(model.device)
        generated = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
        check_finite(torch.stack(generated.logits), "raw logits of the answers to the SER query")
        new_tokens = generated.sequences[:, inputs["input_ids"].shape[1] :]
        answers = [answer.strip() for answer in processor.batch_decode(new_tokens, skip_special_tokens=True)]
    # Both the full model and the fast path (`BlspEmoForAudioClassification`, no LLM) have these.
    features = inputs["input_features"].to(model.dtype)
    logits = model.emotion_logits(features, inputs["feature_attention_mask"], inputs["audio_item_index"])  # raises on NaN/inf
    return [
        {
            "answer": answer,
            "parsed": None if answer is None else parse_emotion(answer, labels),
            "head": labels[int(np.argmax(scores))],
            "head_scores": dict(zip(labels, scores)),
            "head_logits": raw,
        }
        for answer, scores, raw in zip(answers, model.emotion_probabilities(logits).tolist(), logits.float().tolist())
    ]


@torch.inference_mode()
def cascade_predictions(
    transcribe, model, tokenizer, clips: Sequence, labels: Sequence[str], batch_size: int = 8
) -> list[dict]:
    """The paper's cascade baseline: `transcribe(clip) -> text` (e.g. Whisper), then the LLM answers
    the SER query with the transcript in place of the speech. It cannot hear tone of voice."""
    query = ser_instruction(labels)
    transcripts = [transcribe(load_audio(clip)) for clip in tqdm(clips, desc="transcribing", unit="clip")]
    answers = []
    for start in range(0, len(transcripts), batch_size):
        prompts = [query + text for text in transcripts[start : start + batch_size]]
        answers.extend(text for text, _ in continue_texts(model, tokenizer, prompts, max_new_tokens=24))
    return [
        {"transcript": transcript, "answer": answer, "parsed": parse_emotion(answer, labels)}
        for transcript, answer in zip(transcripts, answers)
    ]


def ser_metrics(predicted: Sequence[str | None], references: Sequence[str], labels: Sequence[str]) -> dict:
    """Accuracy, UA, WA, macro-F1, unanswered count and confusion matrix (None = unanswered)."""
    ids = {label: index for index, label in enumerate(labels)}
    metric = evaluate.load(SER_METRICS_PATH)
    return metric.compute(
        predictions=[ids.get(label, -1) if label is not None else -1 for label in predicted],
        references=[ids[label] for label in references],
        num_labels=len(labels),
    )


def evaluate_ser(
    model: BlspEmoForConditionalGeneration,
    processor: BlspEmoProcessor,
    rows: Sequence[dict],
    output: str | Path,
    *,
    targets: dict[tuple[str, str], str] | None = None,
    batch_size: int = 8,
    name: str | None = None,
    detect_speech: bool = False,
    answers: bool = True,
) -> dict:
    """Evaluate SER on `rows` (`audio`, `emotion`; `text` too for retrieval) and write the evidence.

    Returns `{"generative": metrics, "head": metrics}` plus `"retrieval"` when emotion `targets`
    ({(text, emotion): target}) are given. With `answers=False` (always so for a
    `BlspEmoForAudioClassification`, the fast path that has no LLM) only the head is evaluated.
    The head's metrics include `ece`, the expected calibration error of its scores
    (`calibration.expected_calibration_error`; None when no clip got a score). Clips that cannot
    be loaded do not end a long run: they are logged, reported with their error in the predictions, left out of every metric and counted
    in the head's and the generative metrics as `unreadable`. With `detect_speech` (off here, so that
    a labelled speech corpus is measured whole; `blsp-emo evaluate-ser` turns it on), clips without
    speech get no label (`"no_speech": true` in their predictions), count as unanswered in every
    metric, and are counted as `no_speech`. Writes into `output` the predictions
    (each row's fields that are plain values, with its predictions) and a confusion-matrix plot per method:
    `predictions.jsonl`, `confusion_{head,generative}.png`, or with a model `name`,
    `{name}_predictions.jsonl`, `{name}_{head,generative}_confusion.png`.
    """
    answers = answers and not isinstance(model, BlspEmoForAudioClassification)
    if targets is not None and not answers:
        raise ValueError("target retrieval needs the LLM: evaluate the full model with answers=True")
    output = output_folder(output)
    labels = model.config.emotion_labels
    predictions = predict_emotions(
        model, processor, [row["audio"] for row in rows], batch_size, errors="return", detect_speech=detect_speech,
        answers=answers,
    )
    readable = readable_indices(predictions, "SER")
    truth = [rows[i]["emotion"] for i in readable]
    metrics = {"head": ser_metrics([predictions[i]["head"] for i in readable], truth, labels)}
    if answers:
        metrics["generative"] = ser_metrics([predictions[i]["parsed"] for i in readable], truth, labels)
    scored = [i for i in readable if predictions[i]["head_scores"] is not None]
    metrics["head"]["ece"] = expected_calibration_error(
        [[predictions[i]["head_scores"][label] for label in labels] for i in scored],
        [labels.index(rows[i]["emotion"]) for i in scored],
    ) if scored else None
    retrieved = [None] * len(rows)
    if targets is not None:
        results, metrics["retrieval"] = target_retrieval(model, processor, [rows[i] for i in readable], targets)
        for i, result in zip(readable, results):
            retrieved[i] = result
    no_speech = sum(bool(prediction.get("no_speech")) for prediction in predictions)
    if no_speech:
        logger.warning("SER: no speech heard in %d of %d clips; they get no label", no_speech, len(rows))
    for kind in ("head", "generative")[: 1 + answers]:
        metrics[kind]["unreadable"] = len(rows) - len(readable)
        metrics[kind]["no_speech"] = no_speech
    write_jsonl(output / (f"{name}_predictions.jsonl" if name else "predictions.jsonl"), [
        {**_plain_fields(row), **prediction, **({"retrieval": result} if result else {})}
        for row, prediction, result in zip(rows, predictions, retrieved)
    ])
    for kind, description in (("head", "emotion head"), ("generative", "answer to SER query"))[: 1 + answers]:
        plot = output / (f"{name}_{kind}_confusion.png" if name else f"confusion_{kind}.png")
        plot_confusion(metrics[kind]["confusion_matrix"], labels, plot, f"{name}: {description}" if name else description)
    return metrics


def readable_indices(predictions: Sequence[dict], job: str) -> list[int]:
    """Indices of the predictions whose clip could be loaded; the others are logged with a count
    (an `AudioInputError` when none could)."""
    readable = [index for index, prediction in enumerate(predictions) if "error" not in prediction]
    if len(readable) < len(predictions):
        first = next(p["error"] for p in predictions if "error" in p)
        if not readable:
            raise AudioInputError(f"none of the {len(predictions)} clips could be loaded (first: {first})")
        logger.warning("%s: skipped %d of %d clips that could not be loaded (first: %s)",
                       job, len(predictions) - len(readable), len(predictions), first)
    return readable


def _plain_fields(row: dict) -> dict:
    """The fields of a data row that a JSON line can hold (decoded audio arrays are left out)."""
    return {key: value for key, value in row.items() if isinstance(value, (str, int, float, bool, type(None)))}
