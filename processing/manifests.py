"""Speech datasets from JSONL manifests or any `datasets` dataset, with standard column names.

A manifest line is a JSON object with at least `audio` (a path, relative to the manifest's folder
or absolute) and `text`; emotion datasets add `emotion`. Audio stays undecoded (`{"bytes", "path"}`
or whatever the source holds): `modeling_blsp_emo.audio_loading.load_audio` decodes it when batched.
Problems are found when the data is opened, not minutes into a run: a bad line, a missing field or
label, and audio files that do not exist (or, with `check_audio="decode"`, do not decode) raise a
`UserInputError` naming the file, line and field.
"""

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import datasets

from modeling_blsp_emo.audio_loading import AudioInputError, load_audio
from processing.emotion_labels import LabelMapper
from processing.errors import UserInputError

logger = logging.getLogger(__name__)
REQUIRED_FIELDS = ("audio", "text")
AUDIO_CHECKS = ("exists", "decode", "none")


def read_manifest(
    path: str | Path,
    required: Sequence[str] = REQUIRED_FIELDS,
    *,
    audio_column: str = "audio",
    check_audio: str = "none",
    skip_bad_audio: bool = False,
    labels: LabelMapper | None = None,
    emotion_column: str = "emotion",
) -> list[dict]:
    """Rows of a JSONL manifest with audio paths made absolute. A `UserInputError` names a missing
    or empty file, a line that is not a JSON object, a missing or null field, an unusable audio file
    (`check_audio`: "exists", "decode" or "none"; `skip_bad_audio` drops such rows instead, with a
    count) and an unknown emotion label (through `labels`, which maps `emotion_column`)."""
    path = Path(path)
    rows, lines = _read_lines(path, required, audio_column)
    keep = usable_audio([row.get(audio_column) for row in rows], str(path), check_audio, skip_bad_audio, lines)
    rows, lines = [rows[i] for i in keep], [lines[i] for i in keep]
    if labels is not None:
        rows = labels.map_rows(rows, emotion_column, str(path), lines)
    return rows


def _read_lines(path: Path, required: Sequence[str], audio_column: str) -> tuple[list[dict], list[int]]:
    if not path.exists():
        raise UserInputError("no such manifest file", path=path)
    if not path.is_file():
        raise UserInputError("is a folder, expected a JSONL manifest file", path=path)
    rows, lines = [], []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserInputError(f"not valid JSON ({error.msg})", path=path, line=number) from error
            if not isinstance(row, dict):
                raise UserInputError(f"expected a JSON object, found {type(row).__name__}", path=path, line=number)
            missing = [field for field in required if field not in row]
            if missing:
                raise UserInputError(f"missing field(s) {missing}", path=path, line=number)
            for field in required:
                if row[field] is None:
                    raise UserInputError("is null", path=path, line=number, field=field)
            if isinstance(row.get(audio_column), str):
                row[audio_column] = str((path.parent / row[audio_column]).resolve())
            rows.append(row)
            lines.append(number)
    if not rows:
        raise UserInputError("the manifest has no rows", path=path)
    return rows, lines


def audio_problem(audio, decode: bool = False) -> str | None:
    """Why an undecoded audio value cannot be used (None when it can): a missing file, or with
    `decode`, the decoder's complaint. In-memory audio (bytes, arrays) is only checked with `decode`."""
    in_memory = isinstance(audio, dict) and (audio.get("bytes") is not None or audio.get("array") is not None)
    path = audio.get("path") if isinstance(audio, dict) and not in_memory else audio
    if isinstance(path, (str, os.PathLike)):
        if not os.path.exists(path):
            return f"audio file not found: {os.fsdecode(path)}"
        if not os.path.isfile(path):
            return f"audio path is not a file: {os.fsdecode(path)}"
    elif audio is None or path is None:
        return "no audio"
    if decode:
        try:
            load_audio(audio)
        except AudioInputError as error:
            return str(error)
    return None


def usable_audio(
    values: Iterable, source: str, check: str = "exists", skip: bool = False, lines: Sequence[int] | None = None
) -> list[int]:
    """Indices of the audio `values` that pass `check` ("exists", "decode" or "none"). Unusable ones
    raise a `UserInputError` naming the first (its manifest line, or 1-based row) and the count, or
    with `skip`, are left out with a logged count."""
    if check not in AUDIO_CHECKS:
        raise ValueError(f"check_audio={check!r}: expected one of {AUDIO_CHECKS}")
    problems = [None if check == "none" else audio_problem(value, decode=check == "decode") for value in values]
    bad = [index for index, problem in enumerate(problems) if problem]
    if bad and not skip:
        where = dict(line=lines[bad[0]]) if lines is not None else dict(row=bad[0] + 1)
        raise UserInputError(
            f"{problems[bad[0]]} ({len(bad)} of {len(problems)} rows have unusable audio; fix them or pass "
            "--skip-bad-audio to leave those rows out)", path=source, field="audio", **where,
        )
    if bad and len(bad) == len(problems):
        raise UserInputError(f"none of its {len(problems)} rows has usable audio (first: {problems[0]})", path=source)
    if bad:
        logger.warning("%s: skipped %d of %d rows with unusable audio (first: %s)", source, len(bad), len(problems), problems[bad[0]])
    return [index for index, problem in enumerate(problems) if not problem]


def load_speech_dataset(
    source: str | Path | datasets.Dataset | datasets.IterableDataset,
    *,
    audio_column: str = "audio",
    text_column: str | None = "text",
    extra_columns: Sequence[str] = (),
    split: str = "train",
    streaming: bool = False,
    check_audio: str = "exists",
    skip_bad_audio: bool = False,
    labels: LabelMapper | None = None,
    emotion_column: str = "emotion",
) -> datasets.Dataset | datasets.IterableDataset:
    """A dataset with columns `audio`, `text` and `extra_columns` from a manifest file, a dataset
    on disk or on the Hub (name or path), or a `datasets` object. Audio is never decoded here.
    `text_column=None` for data without transcripts (e.g. emotion evaluation).

    Audio is checked as the data opens (`check_audio`: "exists" (default), "decode" or "none";
    streaming data is not checked); `skip_bad_audio` drops unusable rows with a logged count
    instead of raising. `labels` maps the `emotion_column` onto a label set (see `LabelMapper`)."""
    wanted = [audio_column] + ([text_column] if text_column else []) + list(extra_columns)
    if isinstance(source, (datasets.Dataset, datasets.IterableDataset)):
        dataset = source
    elif str(source).endswith((".jsonl", ".json")):
        rows = read_manifest(
            source, required=wanted, audio_column=audio_column, check_audio=check_audio, skip_bad_audio=skip_bad_audio,
            labels=labels, emotion_column=emotion_column,
        )
        check_audio, labels = "none", None  # done, with line numbers
        dataset = datasets.Dataset.from_list(rows)
        if streaming:
            dataset = dataset.to_iterable_dataset()
    elif Path(source, "dataset_info.json").is_file() or Path(source, "state.json").is_file():
        dataset = datasets.load_from_disk(str(source))
    else:
        dataset = _load_dataset(str(source), split, streaming)
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise UserInputError(f"no split {split!r}; splits are {list(dataset)}", path=source)
        dataset = dataset[split]
    columns = dataset.column_names
    if columns is not None:
        missing = [column for column in wanted if column not in columns]
        if missing:
            raise UserInputError(f"no column(s) {missing}; columns are {columns}", path=str(source))
    if isinstance(dataset.features, datasets.Features) and isinstance(dataset.features.get(audio_column), datasets.Audio):
        dataset = dataset.cast_column(audio_column, datasets.Audio(decode=False))
    if isinstance(dataset, datasets.Dataset) and check_audio != "none":
        keep = usable_audio(_column_values(dataset, audio_column), str(source), check_audio, skip_bad_audio)
        dataset = dataset.select(keep) if len(keep) != len(dataset) else dataset
    if labels is not None:
        dataset = labels.apply(dataset, emotion_column, source=str(source))
    renames = {old: new for old, new in ((audio_column, "audio"), (text_column, "text")) if old and old != new}
    if renames:
        dataset = dataset.rename_columns(renames)
    if columns is not None:
        dataset = dataset.remove_columns([c for c in columns if c not in wanted])
    return dataset


def _load_dataset(name: str, split: str, streaming: bool):
    """A dataset by Hub name or local folder; a clear error for a path that does not exist."""
    if Path(name).is_file():
        raise UserInputError("not a manifest (.jsonl) or a saved dataset folder", path=name)
    if not Path(name).exists() and (name.startswith(("/", ".", "~")) or name.count("/") > 1):
        raise UserInputError("no such file or folder", path=name)
    try:
        return datasets.load_dataset(name, split=split, streaming=streaming)
    except (FileNotFoundError, ConnectionError) as error:
        raise UserInputError(f"not a manifest, a saved dataset folder or a reachable Hub dataset ({error})", path=name) from error


def _column_values(dataset: datasets.Dataset, column: str) -> Iterable:
    for batch in dataset.select_columns([column]).iter(batch_size=256):
        yield from batch[column]


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
