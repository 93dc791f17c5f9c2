"""SHA-256 of each file a checkpoint save wrote, recorded beside them (`checksums.json`) and checked
on request: hashing a multi-GB checkpoint takes minutes, so loading never does it by itself.

Flipped bytes in a weights file load without complaint (safetensors checks only the header), and
the model then answers with NaN or silently wrong numbers; a checksum mismatch names the file."""

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from processing.errors import UserInputError

CHECKSUMS_NAME = "checksums.json"


def file_sha256(path: Path, chunk_size: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums(folder: str | Path, files: Iterable[Path]) -> Path:
    """Record the SHA-256 of `files` (inside `folder`) in `folder/checksums.json`."""
    folder = Path(folder)
    sums = {path.relative_to(folder).as_posix(): file_sha256(path) for path in sorted(files) if path.name != CHECKSUMS_NAME}
    target = folder / CHECKSUMS_NAME
    target.write_text(json.dumps({"algorithm": "sha256", "files": sums}, indent=2) + "\n", encoding="utf-8")
    return target


def refresh_checksums(folder: str | Path, names: Iterable[str]) -> bool:
    """Re-record the SHA-256 of the files `names` (relative to `folder`) after a deliberate change,
    when `folder` has a `checksums.json`; returns whether it had one."""
    folder = Path(folder)
    record = folder / CHECKSUMS_NAME
    if not record.is_file():
        return False
    sums = json.loads(record.read_text(encoding="utf-8"))
    sums["files"].update({name: file_sha256(folder / name) for name in names})
    record.write_text(json.dumps(sums, indent=2) + "\n", encoding="utf-8")
    return True


def verify_checksums(folder: str | Path) -> list[str]:
    """Check every file listed in `folder/checksums.json`; returns the names checked. A
    `UserInputError` names the first file that is missing or whose bytes changed, and how many did."""
    folder = Path(folder)
    record = folder / CHECKSUMS_NAME
    if not record.is_file():
        raise UserInputError(f"no {CHECKSUMS_NAME}: this checkpoint was saved without checksums", path=folder)
    try:
        sums = json.loads(record.read_text(encoding="utf-8"))["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise UserInputError(f"unreadable ({error})", path=record) from error
    bad = {}
    for name, expected in sums.items():
        path = folder / name
        if not path.is_file():
            bad[name] = "missing"
        elif file_sha256(path) != expected:
            bad[name] = f"SHA-256 differs from {CHECKSUMS_NAME} (changed or corrupt since it was saved)"
    if bad:
        name, reason = next(iter(bad.items()))
        others = f" ({len(bad) - 1} more file(s) too: {', '.join(list(bad)[1:])})" if len(bad) > 1 else ""
        raise UserInputError(f"{reason}{others}", path=folder / name)
    return list(sums)
