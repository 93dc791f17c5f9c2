"""Which emotion-aware targets express the emotion they were written for, as a reader LLM reads them.

A small writer told "sad" still writes cheerful or neutral continuations for some sentences; a student
trained on those learns that a sad voice may get any reply. The reader (usually the writer itself) labels
each target with `judge_emotions`; training can then keep only the targets read as their own emotion.
"""

from collections import Counter
from collections.abc import Sequence

from trainers.evaluation.judge import WordChoiceJudge, judge_emotions


def read_target_emotions(judge: WordChoiceJudge, records: Sequence[dict], labels: Sequence[str]) -> list[dict]:
    """`{"text", "emotion", "read_as"}` per target record (`text`, `emotion`, `target`): the label the
    judge reads in the target."""
    read = judge_emotions(judge, [record["target"] for record in records], labels)
    return [{"text": r["text"], "emotion": r["emotion"], "read_as": label} for r, label in zip(records, read)]


def agreeing_pairs(checked: Sequence[dict]) -> set[tuple[str, str]]:
    """The `(text, emotion)` pairs whose target was read as its own emotion."""
    return {(row["text"], row["emotion"]) for row in checked if row["read_as"] == row["emotion"]}


def kept_per_emotion(checked: Sequence[dict]) -> dict[str, dict[str, int]]:
    """Per emotion, how many targets were checked and how many were read as that emotion."""
    total = Counter(row["emotion"] for row in checked)
    kept = Counter(row["emotion"] for row in checked if row["read_as"] == row["emotion"])
    return {emotion: {"checked": total[emotion], "kept": kept[emotion]} for emotion in sorted(total)}
