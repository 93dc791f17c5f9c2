"""The oldest transformers this remote code runs on, checked when the code is loaded.

A checkpoint's code cannot pin its dependencies, so an older transformers must fail here with a
message that says what to install, not later with a confusing `TypeError` (transformers 5.24 named
the KV cache `cache`; earlier versions call it `past_key_values`).
"""

import re

import transformers

MIN_TRANSFORMERS_VERSION = "5.24"


def version_tuple(version: str) -> tuple[int, ...]:
    """`"5.24.0.dev0"` → `(5, 24, 0)`: the leading numeric release parts."""
    match = re.match(r"\d+(\.\d+)*", version)
    return tuple(int(part) for part in match.group(0).split(".")) if match else ()


def check_transformers_version(installed: str = transformers.__version__) -> None:
    """Raise an `ImportError` naming the required version when `installed` is older."""
    if version_tuple(installed) < version_tuple(MIN_TRANSFORMERS_VERSION):
        raise ImportError(
            f"BLSP-Emo checkpoints need transformers>={MIN_TRANSFORMERS_VERSION}, found {installed}: "
            f"pip install -U 'transformers>={MIN_TRANSFORMERS_VERSION}'"
        )
