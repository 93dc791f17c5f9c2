"""Changing a saved checkpoint without rewriting its weights: config fields set after training (the
emotion head's fitted temperature), in place or in a copy."""

import shutil
from pathlib import Path
from typing import Any

from processing.errors import UserInputError
from trainers.checkpoints.checksums import refresh_checksums
from trainers.checkpoints.loading import load_blsp_emo_config

CONFIG_NAME = "config.json"


def set_config_fields(checkpoint: str | Path, fields: dict[str, Any], output: str | Path | None = None) -> Path:
    """Set `fields` in the config.json of the local BLSP-Emo checkpoint `checkpoint`, or of a copy of
    it written to `output` (a new or empty folder). The config is checked as it loads and again with
    the new values; `checksums.json`, when present, records the new config's hash. Returns the
    checkpoint folder that was changed."""
    source = Path(checkpoint)
    if not source.is_dir():
        raise UserInputError("expected a local checkpoint folder (the config is rewritten in it)", path=checkpoint)
    config = load_blsp_emo_config(str(source))
    for name, value in fields.items():
        if not hasattr(config, name):
            raise ValueError(f"{name!r} is not a BLSP-Emo config field")
        setattr(config, name, value)
    config.validate_blsp_fields()
    target = source
    if output is not None:
        target = Path(output)
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise UserInputError("exists and is not an empty folder; choose a new output folder", path=target)
        shutil.copytree(source, target, dirs_exist_ok=True)
    config.save_pretrained(target)
    refresh_checksums(target, [CONFIG_NAME])
    return target
