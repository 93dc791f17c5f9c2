"""Speech datasets from JSONL manifests or any `datasets` dataset, with standard column names.

A manifest line is a JSON object with at least `audio` (a path, relative to the manifest's folder
or absolute) and `text`; emotion datasets add `emotion`. Audio stays undecoded (`{"bytes", "path"}`
or whatever the source holds): `modeling_blsp_emo.audio_loading.load_audio` decodes it when batched.
"""

import json
from collections.abc import Sequence
from pathlib import Path

import datasets

REQUIRED_FIELDS = ("audio", "text")


def read_manifest(path: str | Path, required: Sequence[str] = REQUIRED_FIELDS) -> list[dict]:
    """Rows of a JSONL manifest with audio paths made absolute; a clear error names a bad line."""
    path = Path(path)
    rows = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from error
            missing = [field for field in required if field not in row]
            if missing:
                raise ValueError(f"{path}:{number}: missing field(s) {missing}")
            if isinstance(row["audio"], str):
                row["audio"] = str((path.parent / row["audio"]).resolve())
            rows.append(row)
    return rows


def load_speech_dataset(
    source: str | Path | datasets.Dataset | datasets.IterableDataset,
    *,
    audio_column: str = "audio",
    text_column: str | None = "text",
    extra_columns: Sequence[str] = (),
    split: str = "train",
    streaming: bool = False,
) -> datasets.Dataset | datasets.IterableDataset:
    """A dataset with columns `audio`, `text` and `extra_columns` from a manifest file, a dataset
    on disk or on the Hub (name or path), or a `datasets` object. Audio is never decoded here.
    `text_column=None` for data without transcripts (e.g. emotion evaluation)."""
    wanted = [audio_column] + ([text_column] if text_column else []) + list(extra_columns)
    if isinstance(source, (datasets.Dataset, datasets.IterableDataset)):
        dataset = source
    elif str(source).endswith((".jsonl", ".json")):
        rows = read_manifest(source, required=wanted)
        dataset = datasets.Dataset.from_list(rows)
        if streaming:
            dataset = dataset.to_iterable_dataset()
    elif Path(source, "dataset_info.json").is_file() or Path(source, "state.json").is_file():
        dataset = datasets.load_from_disk(str(source))
    else:
        dataset = datasets.load_dataset(str(source), split=split, streaming=streaming)
    if isinstance(dataset, datasets.DatasetDict):
        dataset = dataset[split]
    columns = dataset.column_names
    if columns is not None:
        missing = [column for column in wanted if column not in columns]
        if missing:
            raise ValueError(f"{source}: no column(s) {missing}; columns are {columns}")
    if isinstance(dataset.features, datasets.Features) and isinstance(dataset.features.get(audio_column), datasets.Audio):
        dataset = dataset.cast_column(audio_column, datasets.Audio(decode=False))
    renames = {old: new for old, new in ((audio_column, "audio"), (text_column, "text")) if old and old != new}
    if renames:
        dataset = dataset.rename_columns(renames)
    if columns is not None:
        dataset = dataset.remove_columns([c for c in columns if c not in wanted])
    return dataset


def interleave(
    sources: Sequence[datasets.Dataset | datasets.IterableDataset],
    probabilities: Sequence[float] | None = None,
    seed: int = 0,
) -> datasets.Dataset | datasets.IterableDataset:
    """Mix several speech datasets, sampling each with the given probabilities; every example is
    used once (a dataset that runs out drops out of the mix)."""
    if len(sources) == 1:
        return sources[0]
    return datasets.interleave_datasets(
        list(sources), probabilities=probabilities, seed=seed, stopping_strategy="all_exhausted_without_replacement"
    )


def write_jsonl(path: str | Path, rows: Sequence[dict]) -> None:
    """Write `rows` as a JSON-lines file (UTF-8, one object per line)."""
    Path(path).write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
