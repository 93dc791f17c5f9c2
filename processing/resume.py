"""Resumable runs record the settings they were started with and refuse to continue with others:
a folder finished half with one setting and half with another mixes two runs without a trace."""

import dataclasses
import json
from pathlib import Path
from typing import Any

from processing.errors import UserInputError


def settings_dict(settings: Any, ignore: tuple[str, ...] = ()) -> tuple[dict, dict]:
    """(the settings as a JSON-ready dict, the defaults of those a dataclass declares)."""
    if dataclasses.is_dataclass(settings):
        defaults = {f.name: f.default for f in dataclasses.fields(settings) if f.default is not dataclasses.MISSING}
        settings = dataclasses.asdict(settings)
    else:
        defaults = {}
    current = {key: value for key, value in settings.items() if key not in ignore}
    return json.loads(json.dumps(current, default=str)), json.loads(json.dumps(defaults, default=str))


def check_settings(record: str | Path, settings: Any, *, ignore: tuple[str, ...] = (), write: bool = True) -> None:
    """Compare `settings` (a dict or a dataclass, less the `ignore`d keys) with those recorded in
    `record` by an earlier run, and raise a `UserInputError` naming each changed setting (then and
    now). A setting the record lacks counts as its dataclass default (a setting added since). With
    `write`, the first run records its settings."""
    record = Path(record)
    current, defaults = settings_dict(settings, ignore)
    if record.exists():
        previous = json.loads(record.read_text(encoding="utf-8"))
        then = {key: previous.get(key, defaults.get(key)) for key in set(previous) | set(current)}
        changed = sorted(key for key in then if then[key] != current.get(key))
        if changed:
            details = ", ".join(f"{key} {then[key]!r} then, {current.get(key)!r} now" for key in changed)
            raise UserInputError(
                f"an earlier run here used other settings ({details}); pass the same settings to resume, or use another folder",
                path=record.parent,
            )
    elif write:
        write_settings(record, current)


def write_settings(record: str | Path, settings: dict) -> None:
    """Record `settings` (unless a record exists), atomically."""
    record = Path(record)
    if not record.exists():
        partial = record.with_name(record.name + ".partial")
        partial.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        partial.replace(record)
