"""Speech emotion recognition, three ways: the model's own answer to the SER query (parsed from
free text), the emotion head, and emotion-target retrieval (which of the five emotion-aware
continuations of a sentence the model finds most likely, given the speech)."""

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import evaluate
import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from modeling_blsp_emo import BlspEmoForConditionalGeneration, BlspEmoProcessor, load_audio
from modeling_blsp_emo.prompts import EMOTION_CONTINUATION_INSTRUCTION, NEUTRAL_SYSTEM_PROMPT, ser_instruction
from processing.collators import IGNORE_INDEX, SpeechContinuationCollator
from processing.target_generation import continue_texts, load_targets, writing_chat

from .semantic_alignment import predicting_positions
from .ser_metrics import SER_METRICS_PATH

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
    audio = {"type": "audio", "audio": clip, "sampling_rate": 16000}
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
) -> list[dict]:
    """Per clip: the model's answer to the SER query, the label parsed from it (or None), and the
    emotion head's label and scores."""
    labels = model.config.emotion_labels
    query = ser_instruction(labels)
    results = []
    for start in tqdm(range(0, len(clips), batch_size), desc="SER", unit="batch"):
        batch = [load_audio(clip) for clip in clips[start : start + batch_size]]
        inputs = processor.apply_chat_template([conversation(clip, query) for clip in batch]).to(model.device)
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        answers = processor.batch_decode(generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        embeds, lengths = model.model.get_audio_features(inputs["input_features"], inputs["feature_attention_mask"])
        probabilities = model.classify_emotion(embeds, lengths, inputs["audio_item_index"]).float().softmax(-1)
        for answer, scores in zip(answers, probabilities.tolist()):
            results.append(
                {
                    "answer": answer.strip(),
                    "parsed": parse_emotion(answer, labels),
                    "head": labels[int(np.argmax(scores))],
                    "head_scores": dict(zip(labels, scores)),
                }
            )
    return results


def mean_response_log_probs(logits: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Mean log-probability per labelled token of each row `(batch,)`. `logits` are those kept at
    `positions` (rows' predicting positions, in order), as from `logits_to_keep=positions`."""
    token_log_probs = F.log_softmax(logits.float(), -1).gather(-1, labels[:, 1:][positions[:, :-1]][:, None])[:, 0]
    rows = positions.nonzero()[:, 0]
    totals = torch.zeros(len(labels), device=logits.device).index_add(0, rows, token_log_probs)
    return totals / positions.sum(1)


@torch.inference_mode()
def continuation_log_likelihoods(
    model: BlspEmoForConditionalGeneration, processor: BlspEmoProcessor, audio, candidates: Sequence[str]
) -> list[float]:
    """Mean log-probability per token of each candidate continuation, given the speech and the
    stage-2 instruction."""
    collator = SpeechContinuationCollator(processor, EMOTION_CONTINUATION_INSTRUCTION)
    clip = {"array": load_audio(audio), "sampling_rate": 16000}
    batch = collator([{"audio": clip, "target": text, "truncated": False} for text in candidates])
    batch = {name: tensor.to(model.device) for name, tensor in batch.items()}
    labels = batch.pop("labels")
    positions = predicting_positions(labels)
    return mean_response_log_probs(model(**batch, logits_to_keep=positions).logits, labels, positions).tolist()


@torch.inference_mode()
def reply_log_likelihoods(model, tokenizer, chat: list[dict], candidates: Sequence[str]) -> list[float]:
    """Mean log-probability per token of each candidate as the assistant's reply to a text `chat`
    (messages up to the last user turn), through the tokenizer's chat template."""
    prompt = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    replies = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in candidates]
    length = len(prompt_ids) + max(len(reply) for reply in replies)
    padding = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked: any id serves
    input_ids = torch.full((len(replies), length), padding, dtype=torch.long)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    attention_mask = torch.zeros_like(input_ids)
    for row, reply in enumerate(replies):
        end = len(prompt_ids) + len(reply)
        input_ids[row, :end] = torch.tensor(prompt_ids + reply)
        labels[row, len(prompt_ids) : end] = torch.tensor(reply)
        attention_mask[row, :end] = 1
    input_ids, labels, attention_mask = (tensor.to(model.device) for tensor in (input_ids, labels, attention_mask))
    positions = predicting_positions(labels)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return mean_response_log_probs(logits[positions], labels, positions).tolist()


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


def plot_confusion(matrix: Sequence[Sequence[int]], labels: Sequence[str], path: str | Path, title: str) -> None:
    """Save a confusion-matrix heat map (rows: true emotion, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    figure, axes = plt.subplots(figsize=(4.8, 4.2))
    axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    for (row, column), count in np.ndenumerate(matrix):
        axes.text(column, row, str(count), ha="center", va="center", color="white" if count > matrix.max() / 2 else "black")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_jsonl(path: str | Path, rows: Sequence[dict]) -> None:
    Path(path).write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
