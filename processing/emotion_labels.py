"""Mapping a dataset's emotion labels onto the model's label set."""

import logging
from collections import Counter
from collections.abc import Sequence

import datasets

from processing.errors import UserInputError

logger = logging.getLogger(__name__)

# Names that common SER corpora use for the release's five emotions (IEMOCAP, MELD, RAVDESS, ...).
COMMON_ALIASES = {
    "neu": "neutral", "calm": "neutral",
    "hap": "happy", "exc": "happy", "happiness": "happy", "joy": "happy", "excited": "happy",
    "ang": "angry", "anger": "angry",
    "sad": "sad", "sadness": "sad",
    "sur": "surprise", "surprised": "surprise",
}


class LabelMapper:
    """Maps raw labels (case-insensitive, through `aliases`) to the names in `labels`.

    An unknown label is a `UserInputError` naming it and where it is (manifest line, or 1-based
    row), unless `drop_unmapped` (then the row is dropped and counted in `dropped`).
    """

    def __init__(self, labels: Sequence[str], aliases: dict[str, str] | None = None, drop_unmapped: bool = False):
        self.labels = list(labels)
        self.aliases = {key.lower(): value for key, value in {**COMMON_ALIASES, **(aliases or {})}.items()}
        self.drop_unmapped = drop_unmapped
        self.dropped: Counter[str] = Counter()

    def map(self, label: str, where: dict | None = None) -> str | None:
        """The label's name in `labels`, or None when dropped. `where` locates it in errors:
        `UserInputError` keywords (`path`, `line` or `row`, `field`)."""
        name = self.aliases.get(str(label).strip().lower(), str(label).strip().lower()) if label is not None else None
        if name in self.labels:
            return name
        if self.drop_unmapped:
            self.dropped[str(label)] += 1
            return None
        raise UserInputError(
            f"label {label!r} is not one of {self.labels}; map it with aliases "
            "(e.g. --label-map fru=angry) or drop such rows (--drop-unmapped)", **{"field": "emotion", **(where or {})},
        )

    def map_rows(self, rows: Sequence[dict], column: str = "emotion", source: str | None = None,
                 lines: Sequence[int] | None = None) -> list[dict]:
        """Rows (e.g. of a manifest, at `lines`) with `column` mapped; dropped rows left out."""
        mapped = []
        for index, row in enumerate(rows):
            where = {"path": source, "field": column, **({"line": lines[index]} if lines else {"row": index + 1})}
            label = self.map(row[column], where)
            if label is not None:
                mapped.append({**row, column: label})
        self._log_dropped(source)
        return mapped

    def apply(
        self, dataset: datasets.Dataset | datasets.IterableDataset, column: str = "emotion", source: str | None = None
    ) -> datasets.Dataset | datasets.IterableDataset:
        """The dataset with `column` mapped, rows with dropped labels removed (count logged; a
        streaming dataset maps lazily, as it is read). Errors name `source` and the 1-based row."""
        def where(index: int) -> dict:
            return {"path": source, "row": index + 1, "field": column}

        if isinstance(dataset, datasets.IterableDataset):
            mapped = dataset.map(lambda row, index: {column: self.map(row[column], where(index))}, with_indices=True)
            return mapped.filter(lambda row: row[column] is not None)
        mapped = [self.map(label, where(index)) for index, label in enumerate(dataset[column])]
        keep = [row for row, label in enumerate(mapped) if label is not None]
        self._log_dropped(source)
        dataset = dataset.select(keep) if len(keep) != len(mapped) else dataset
        labels = [mapped[row] for row in keep]
        return dataset.map(lambda batch, rows: {column: [labels[row] for row in rows]}, with_indices=True, batched=True)

    def _log_dropped(self, source: str | None) -> None:
        if self.dropped:
            logger.warning("%sdropped %d rows with unmapped emotion labels: %s", f"{source}: " if source else "",
                           sum(self.dropped.values()), dict(self.dropped))


def parse_label_map(pairs: Sequence[str]) -> dict[str, str]:
    """`["ang=angry", "exc=happy"]` → `{"ang": "angry", "exc": "happy"}`; a `UserInputError` for a
    pair that is not RAW=LABEL."""
    aliases = {}
    for pair in pairs:
        raw, separator, label = pair.partition("=")
        if not separator or not raw.strip() or not label.strip():
            raise UserInputError(f"{pair!r} is not RAW=LABEL (e.g. --label-map ang=angry exc=happy)", field="--label-map")
        aliases[raw.strip()] = label.strip()
    return aliases


def check_labelled_rows(rows: Sequence[dict], labels: Sequence[str], purpose: str) -> None:
    """Raise a `UserInputError` when `rows` (`audio`, `emotion`) are empty or carry an emotion outside
    `labels` (a model's label set); `purpose` completes "no labelled clips to ..."."""
    unknown = sorted({str(row["emotion"]) for row in rows} - set(labels))
    if unknown:
        raise UserInputError(f"labels {unknown} are not the model's {list(labels)} (map them with --label-map)", field="emotion")
    if not rows:
        raise UserInputError(f"no labelled clips to {purpose}")
