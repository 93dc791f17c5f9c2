"""Errors in what a user gave us (a manifest, a folder, an option), as opposed to bugs.

The command line prints a `UserInputError` as one line and exits with code 2; anything else keeps
its traceback. The message starts with where the problem is: `file:line: field 'text': ...`.
"""

from pathlib import Path


class UserInputError(ValueError):
    """A problem with the user's files or options; `str()` names the file, 1-based line (or row of a dataset) and field."""

    def __init__(
        self, message: str, *, path: str | Path | None = None, line: int | None = None, row: int | None = None,
        field: str | None = None,
    ):
        self.path, self.line, self.row, self.field, self.reason = path, line, row, field, message
        where = " ".join(part for part in (
            ":".join(str(part) for part in (path, line) if part is not None), f"row {row}" if row is not None else "",
        ) if part)
        what = f"field {field!r}: " if field is not None else ""
        super().__init__(f"{where}: {what}{message}" if where else f"{what}{message}")


def output_folder(path: str | Path) -> Path:
    """`path` as a folder to write into, created if needed; a `UserInputError` if a file is in the way."""
    path = Path(path)
    for existing in (path, *path.parents):
        if existing.exists():
            if not existing.is_dir():
                raise UserInputError("is a file, expected an output folder (or a path where one can be created)", path=existing)
            break
    path.mkdir(parents=True, exist_ok=True)
    return path
