"""Mapping a dataset's emotion labels onto the model's label set."""

import logging
from collections import Counter
from collections.abc import Sequence

import datasets

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

    An unknown label is an error naming it and its row, unless `drop_unmapped` (then the row is
    dropped and counted in `dropped`).
    """

    def __init__(self, labels: Sequence[str], aliases: dict[str, str] | None = None, drop_unmapped: bool = False):
        self.labels = list(labels)
        self.aliases = {key.lower(): value for key, value in {**COMMON_ALIASES, **(aliases or {})}.items()}
        self.drop_unmapped = drop_unmapped
        self.dropped: Counter[str] = Counter()

    def map(self, label: str, row: int | str) -> str | None:
        name = str(label).strip()
        name = self.aliases.get(name.lower(), name.lower())
        if name in self.labels:
            return name
        if self.drop_unmapped:
            self.dropped[str(label)] += 1
            return None
        raise ValueError(
            f"row {row}: emotion label {label!r} is not one of {self.labels}; map it with aliases "
            "(e.g. --label-map fru=angry) or drop such rows (--drop-unmapped)"
        )

    def apply(
        self, dataset: datasets.Dataset | datasets.IterableDataset, column: str = "emotion"
    ) -> datasets.Dataset | datasets.IterableDataset:
        """The dataset with `column` mapped, rows with dropped labels removed (count logged; a
        streaming dataset maps lazily, as it is read)."""
        if isinstance(dataset, datasets.IterableDataset):
            mapped = dataset.map(lambda row, index: {column: self.map(row[column], index)}, with_indices=True)
            return mapped.filter(lambda row: row[column] is not None)
        mapped = [self.map(label, row) for row, label in enumerate(dataset[column])]
        keep = [row for row, label in enumerate(mapped) if label is not None]
        if self.dropped:
            logger.warning("dropped %d rows with unmapped emotion labels: %s", sum(self.dropped.values()), dict(self.dropped))
        dataset = dataset.select(keep) if len(keep) != len(mapped) else dataset
        labels = [mapped[row] for row in keep]
        return dataset.map(lambda batch, rows: {column: [labels[row] for row in rows]}, with_indices=True, batched=True)
