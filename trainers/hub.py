"""Publish a BLSP-Emo checkpoint on the Hugging Face Hub: weights, config, remote code, processor and a
model card, in one commit; optionally load it back in a fresh process to prove that it works.

The token comes from huggingface_hub's usual sources (`token=`, `HF_TOKEN`, `hf auth login`) and the
endpoint from `HF_ENDPOINT`. The token is never logged, printed or written to the card.

Evaluation results: `ser_metrics.json` in the checkpoint folder (or a file passed as `metrics=`) holds one
result, or a list of results, shaped like

    {"dataset": "AbstractTTS/IEMOCAP",     # Hub dataset id (or any name)
     "dataset_name": "IEMOCAP",           # optional display name
     "config": null,                      # optional dataset configuration
     "split": "test",
     "num_examples": 1241,                # optional
     "method": "generative",              # optional: how the label was obtained (e.g. "emotion head")
     "metrics": {"accuracy": 0.76, "unweighted_accuracy": 0.74, "weighted_accuracy": 0.76, "macro_f1": 0.73,
                 "unanswered": 3, "confusion_matrix": [[...], ...]}}

`metrics` is what `trainers.ser_evaluation.ser_metrics` returns: accuracy, UA, WA and macro-F1 are
fractions in [0, 1] (shown in % on the card); other numeric metrics are published as they are;
structured values (the confusion matrix) are left out; `unanswered` is a count, shown on the card but
not in `model-index`.
"""

import ast
import fnmatch
import importlib
import json
import logging
import math
import os
import re
import struct
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    EvalResult,
    HfApi,
    ModelCard,
    ModelCardData,
    get_token,
)
from huggingface_hub.errors import HfHubHTTPError

logger = logging.getLogger(__name__)

CARD_TEMPLATE = Path(__file__).resolve().parent.parent / "model_cards" / "blsp_emo_card.md"
PIPELINE_TASK = "audio-to-text"  # the custom pipeline the checkpoint registers
HUB_PIPELINE_TAG = "audio-text-to-text"  # the Hub's task tag for speech(+text) in, text out
METRICS_FILE = "ser_metrics.json"
TRAINER_STATE_FILE = "trainer_state.json"
CARD_TAGS = ["blsp-emo", "speech", "audio", "speech-emotion-recognition", "empathetic-dialogue", "whisper"]
# Files of a checkpoint that are not remote code, weights or the config, and belong in the repo.
PROCESSOR_FILES = (
    "generation_config.json", "processor_config.json", "preprocessor_config.json", "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
    "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt",
)
REQUIRED_FILES = ("config.json", "processor_config.json", "tokenizer_config.json")
# Files left in the repo by an earlier push that would mix with the new model (old shards, modules);
# other files (e.g. images a card links to) stay.
STALE_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.py")
# Where the bundled offline models (processing.bundled) come from.
BUNDLED_ORIGINS = {
    "whisper-tiny.en": {"id": "openai/whisper-tiny.en", "name": "openai/whisper-tiny.en", "license": "mit"},
    "smollm2-135m-instruct": {
        "id": "HuggingFaceTB/SmolLM2-135M-Instruct", "name": "HuggingFaceTB/SmolLM2-135M-Instruct", "license": "apache-2.0",
    },
}
# Licence identifiers the Hub accepts in `license:`; anything else is published as `other` + `license_name`.
HUB_LICENSES = {
    "apache-2.0", "mit", "openrail", "openrail++", "bigscience-openrail-m", "creativeml-openrail-m",
    "bigscience-bloom-rail-1.0", "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd", "bsd-2-clause",
    "bsd-3-clause", "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0",
    "cc-by-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0",
    "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0", "cdla-sharing-1.0",
    "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "ecl-2.0", "epl-1.0", "epl-2.0", "etalab-2.0", "eupl-1.1",
    "eupl-1.2", "agpl-3.0", "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1", "lgpl-3.0", "isc", "h-research",
    "intel-research", "lppl-1.3c", "ms-pl", "apple-ascl", "apple-amlr", "mpl-2.0", "odc-by", "odbl", "openmdw-1.0",
    "openrail", "osl-3.0", "postgresql", "ofl-1.1", "ncsa", "unlicense", "zlib", "pddl", "lgpl-lr", "deepfloyd-if-license",
    "fair-noncommercial-research-license", "llama2", "llama3", "llama3.1", "llama3.2", "llama3.3", "llama4", "gemma",
    "unknown", "other",
}
FRACTION_METRICS = {
    "accuracy": "Accuracy", "unweighted_accuracy": "Unweighted accuracy (UA)", "weighted_accuracy": "Weighted accuracy (WA)",
    "macro_f1": "Macro F1", "weighted_f1": "Weighted F1",
}
COUNT_METRICS = {"unanswered": "Unanswered clips"}
# Stage names by a loss that only that stage's trainer logs (see trainers/*_alignment.py).
STAGE_BY_LOGGED_KEY = {"kl": "Stage 1: semantic alignment", "emotion_loss": "Stage 2: emotion alignment"}
TRAINING_ARGUMENTS = (
    "learning_rate", "lr_scheduler_type", "warmup_steps", "warmup_ratio", "num_train_epochs", "max_steps",
    "per_device_train_batch_size", "gradient_accumulation_steps", "weight_decay", "max_grad_norm", "optim", "bf16",
    "fp16", "seed",
)
# Values of those arguments that mean "not used" and are left out of the card.
UNUSED_ARGUMENT_VALUES = {"max_steps": -1, "warmup_steps": 0, "warmup_ratio": 0.0, "bf16": False, "fp16": False}
LOGGED_RESULTS = ("loss", "kl", "token_agreement", "lm_loss", "emotion_loss", "emotion_accuracy", "eval_loss",
                  "eval_kl", "eval_token_agreement", "eval_lm_loss", "eval_emotion_loss", "eval_emotion_accuracy")

VERIFY_CODE = r"""
import json, sys
import numpy as np
from transformers import pipeline

repo_id, revision = sys.argv[1], sys.argv[2]
pipe = pipeline("audio-to-text", model=repo_id, revision=revision, trust_remote_code=True)
time = np.arange(16000) / 16000
clip = (0.3 * np.sin(2 * np.pi * 220 * time) * np.hanning(16000)).astype(np.float32)
result = pipe(clip, sampling_rate=16000, max_new_tokens=8, return_emotion=True)[0]
print(json.dumps({
    "generated_text": result["generated_text"], "emotion": result["emotion"],
    "pipeline_class": type(pipe).__module__ + "." + type(pipe).__qualname__,
    "package_imported": any(name.split(".")[0] == "modeling_blsp_emo" for name in sys.modules),
}))
"""


class HubPublishError(RuntimeError):
    """Publishing failed; the message says what was wrong and what to do (it never contains the token)."""


@dataclass
class PushResult:
    """What `push_to_hub` published: the repo, the branch, the commit and its files, and the
    verification (generated text, emotion, pipeline class) when one was run."""

    repo_id: str
    revision: str
    commit_oid: str
    commit_url: str
    files: list[str]
    verification: dict | None = None


@dataclass
class TrainingRun:
    """One training run's record for the card: its stage, hyper-parameters and progress / last logged
    values, as `(name, value)` rows."""

    stage: str
    hyperparameters: list[tuple[str, str]] = field(default_factory=list)
    results: list[tuple[str, str]] = field(default_factory=list)


# --- provenance of the base models -------------------------------------------------------------------

def describe_base_model(source: str) -> dict[str, str | None]:
    """Where a base model came from: `{"id": Hub repo id or None, "name": display name, "license": id or None}`.

    Hub ids are kept as they are and their licence is read from their model card (best effort). A local
    folder records only its name, never its path; it maps back to a Hub id when it is a bundled model
    (`processing.bundled`) or a Hub cache snapshot, and its licence comes from its own README.md if any.
    """
    path = Path(source)
    if not path.is_dir():
        return {"id": source, "name": source, "license": _hub_model_license(source)}
    resolved = path.resolve()
    if resolved.parent.name == "bundled" and resolved.name in BUNDLED_ORIGINS:
        return dict(BUNDLED_ORIGINS[resolved.name])
    snapshot = re.search(r"models--([^/]+)--([^/]+)/snapshots/[^/]+$", resolved.as_posix())
    repo_id = f"{snapshot.group(1)}/{snapshot.group(2)}" if snapshot else None
    readme = resolved / "README.md"
    return {"id": repo_id, "name": repo_id or resolved.name, "license": _card_license(readme) if readme.is_file() else None}


def _card_license(readme: Path) -> str | None:
    data = ModelCard.load(readme, ignore_metadata_errors=True).data
    return data.get("license_name") if data.get("license") == "other" else data.get("license")


def _hub_model_license(repo_id: str) -> str | None:
    try:
        return _card_license(Path(HfApi().hf_hub_download(repo_id, "README.md")))
    except Exception as error:  # the licence is a nicety: offline, gated or card-less models stay unknown
        logger.info("licence of %s unknown (%s)", repo_id, type(error).__name__)
        return None


# --- what goes into the repo ---------------------------------------------------------------------------

def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor names → dtype/shape/offsets), without reading data."""
    with open(path, "rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        return json.loads(file.read(length))


def weight_files(model_dir: Path) -> list[Path]:
    """The checkpoint's safetensors files (one, or the shards of an index)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [name for name in shards if not (model_dir / name).is_file()]
        if missing:
            raise HubPublishError(f"{model_dir}: weight shards {missing} listed in {index.name} are missing")
        return [index] + [model_dir / name for name in shards]
    if (model_dir / "model.safetensors").is_file():
        return [model_dir / "model.safetensors"]
    if list(model_dir.glob("*.bin")):
        raise HubPublishError(f"{model_dir}: weights are pickled (.bin); save the model again with safetensors")
    raise HubPublishError(f"{model_dir}: no model.safetensors found; save the model with trainers.builder.save_checkpoint")


def check_lora_is_publishable(config: dict, weights: list[Path]) -> None:
    """Global-scope LoRA must be merged (the remote code loads without peft); audio-scope LoRA is part
    of the model code and stays."""
    names = [name for path in weights if path.suffix == ".safetensors" for name in read_safetensors_header(path)]
    if any(name.startswith("base_model.model.") for name in names):
        raise HubPublishError(
            "the checkpoint holds unmerged peft LoRA weights (base_model.model.* keys); merge them "
            "(trainers.emotion_alignment.finalize) and save again, or use push_model_to_hub"
        )
    if config.get("lora_scope") != "audio" and any(".lora_A." in name or ".lora_B." in name for name in names):
        raise HubPublishError(
            f"the checkpoint has LoRA weights but lora_scope={config.get('lora_scope')!r}: only audio-scope LoRA "
            "is part of the model code; merge global LoRA before publishing"
        )


def remote_code_files(model_dir: Path, config: dict, processor_config: dict) -> list[str]:
    """The Python files the checkpoint's `auto_map` and custom pipeline name, plus every module they
    import relatively (transitively); raises when one is missing."""
    auto_map = {**processor_config.get("auto_map", {}), **config.get("auto_map", {})}
    pipeline = config.get("custom_pipelines", {}).get(PIPELINE_TASK)
    if "AutoModel" not in config.get("auto_map", {}) or pipeline is None or "AutoProcessor" not in auto_map:
        raise HubPublishError(
            f"{model_dir}: config.json needs auto_map (AutoConfig, AutoModel), custom_pipelines['{PIPELINE_TASK}'] and "
            "processor_config.json an AutoProcessor entry; save the checkpoint with trainers.builder.save_checkpoint"
        )
    # "org/repo--module.Class" references code in another repo, which is not ours to upload.
    references = [reference for reference in [*auto_map.values(), pipeline["impl"]] if "--" not in reference]
    pending = [reference.split(".")[0] + ".py" for reference in references]
    found: list[str] = []
    while pending:
        name = pending.pop()
        if name in found:
            continue
        source = model_dir / name
        if not source.is_file():
            raise HubPublishError(f"{model_dir}: remote-code file {name} is missing (imported by the checkpoint's code)")
        found.append(name)
        for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                modules = [node.module] if node.module else [alias.name for alias in node.names]
                pending += [module.split(".")[0] + ".py" for module in modules]
    return sorted(found)


def checkpoint_files(model_dir: str | Path) -> list[Path]:
    """Every file of a saved BLSP-Emo checkpoint that belongs on the Hub, checked for completeness:
    config, safetensors weights, remote code, processor/tokenizer/chat template and generation config.
    Training leftovers (trainer state, optimizer, `checkpoint-*` folders, trained-only weights) stay behind."""
    model_dir = Path(model_dir)
    missing = [name for name in REQUIRED_FILES if not (model_dir / name).is_file()]
    if missing:
        raise HubPublishError(f"{model_dir}: not a complete BLSP-Emo checkpoint (missing {', '.join(missing)})")
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") != "blsp_emo":
        raise HubPublishError(f"{model_dir}: not a BLSP-Emo checkpoint (model_type={config.get('model_type')!r})")
    weights = weight_files(model_dir)
    check_lora_is_publishable(config, weights)
    code = remote_code_files(model_dir, config, json.loads((model_dir / "processor_config.json").read_text()))
    extra = [model_dir / name for name in PROCESSOR_FILES if (model_dir / name).is_file()]
    templates = sorted((model_dir / "additional_chat_templates").glob("*.jinja"))
    return [model_dir / "config.json", *weights, *(model_dir / name for name in code), *extra, *templates]


# --- the model card --------------------------------------------------------------------------------------

def load_ser_metrics(path: str | Path) -> list[dict]:
    """Evaluation results from a metrics JSON file (one result or a list; see the module docstring),
    with `metrics` reduced to its numbers."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise HubPublishError(f"{path}: cannot read the metrics ({error})") from error
    results = []
    for index, result in enumerate(data if isinstance(data, list) else [data]):
        where = f"{path} (result {index})" if isinstance(data, list) else str(path)
        if not isinstance(result, dict) or not isinstance(result.get("dataset"), str) or not isinstance(result.get("split"), str):
            raise HubPublishError(f'{where}: expected {{"dataset": str, "split": str, "metrics": {{name: number}}}}')
        if not isinstance(result.get("metrics"), dict):
            raise HubPublishError(f"{where}: 'metrics' must be a mapping of metric name to number")
        numbers = {}
        for name, value in result["metrics"].items():
            if isinstance(value, (list, dict)):
                continue  # e.g. the confusion matrix: not a score
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise HubPublishError(f"{where}: metric {name!r} is {value!r}, expected a finite number")
            if name in FRACTION_METRICS and not 0 <= value <= 1:
                raise HubPublishError(f"{where}: {name} is {value}, expected a fraction in [0, 1]")
            numbers[name] = value
        if not numbers:
            raise HubPublishError(f"{where}: 'metrics' holds no numeric metric")
        results.append({**result, "metrics": numbers})
    return results


def _metric_label(name: str, result: dict) -> str:
    label = FRACTION_METRICS.get(name) or COUNT_METRICS.get(name) or name
    return f"{label} ({result['method']})" if result.get("method") else label


def eval_results(results: list[dict]) -> list[EvalResult]:
    """`model-index` entries (task: speech emotion recognition as audio classification); counts stay out."""
    return [
        EvalResult(
            task_type="audio-classification", task_name="Speech emotion recognition", dataset_type=result["dataset"],
            dataset_name=result.get("dataset_name") or result["dataset"], dataset_split=result["split"],
            dataset_config=result.get("config"), metric_type=name, metric_name=_metric_label(name, result),
            metric_value=value,
        )
        for result in results
        for name, value in result["metrics"].items()
        if name not in COUNT_METRICS
    ]


def _metric_rows(result: dict) -> list[tuple[str, str]]:
    return [
        (_metric_label(name, result), f"{100 * value:.1f} %" if name in FRACTION_METRICS else _format_value(value))
        for name, value in result["metrics"].items()
    ]


def _format_value(value: Any) -> str:
    value = getattr(value, "value", value)  # enums (scheduler, optimizer) print as their value
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _load_training_arguments(folder: Path) -> dict | None:
    json_path, bin_path = folder / "training_args.json", folder / "training_args.bin"
    if json_path.is_file():
        return json.loads(json_path.read_text())
    if not bin_path.is_file():
        return None
    import torch

    # A pickle: allow only the transformers/accelerate classes a TrainingArguments is made of.
    try:
        allowed = []
        for name in torch.serialization.get_unsafe_globals_in_checkpoint(bin_path):
            module, _, attribute = name.rpartition(".")
            if module.split(".")[0] not in ("transformers", "accelerate"):
                raise ValueError(f"unexpected class {name}")
            allowed.append(getattr(importlib.import_module(module), attribute))
        with torch.serialization.safe_globals(allowed):
            return dict(vars(torch.load(bin_path, weights_only=True)))
    except Exception as error:  # unreadable arguments only cost the card its hyper-parameter table
        logger.warning("%s: training arguments not readable (%s); hyper-parameters left unknown", bin_path, error)
        return None


def read_training_run(directory: str | Path) -> TrainingRun | None:
    """The run recorded in a training output folder (its `trainer_state.json`, or the latest
    `checkpoint-*` one's), with hyper-parameters from the training arguments saved beside it."""
    directory = Path(directory)
    checkpoints = [path for path in directory.glob("checkpoint-*") if path.name.split("-")[-1].isdigit()]
    candidates = [directory] + sorted(checkpoints, key=lambda path: int(path.name.split("-")[-1]), reverse=True)
    folder = next((c for c in candidates if (c / TRAINER_STATE_FILE).is_file()), None)
    if folder is None:
        return None
    state = json.loads((folder / TRAINER_STATE_FILE).read_text())
    history = state.get("log_history", [])
    logged = {key for entry in history for key in entry}
    stage = next((name for key, name in STAGE_BY_LOGGED_KEY.items() if key in logged), "Training")
    arguments = _load_training_arguments(folder) or _load_training_arguments(directory) or {}
    hyperparameters = [
        (name, _format_value(arguments[name])) for name in TRAINING_ARGUMENTS
        if arguments.get(name) is not None and arguments[name] != UNUSED_ARGUMENT_VALUES.get(name, object())
    ]
    results = [(name, _format_value(state[name])) for name in ("global_step", "epoch") if state.get(name) is not None]
    last = {}
    for entry in history:
        last.update({key: value for key, value in entry.items() if key in LOGGED_RESULTS})
    results += [(name, _format_value(last[name])) for name in LOGGED_RESULTS if name in last]
    return TrainingRun(stage, hyperparameters, results)


def _architecture(config: dict, weights: list[Path]) -> dict[str, str]:
    audio, text = config.get("audio_config", {}), config.get("text_config", {})
    parameters = sum(
        math.prod(info["shape"]) for path in weights if path.suffix == ".safetensors"
        for name, info in read_safetensors_header(path).items() if name != "__metadata__"
    )
    lora = config.get("lora_scope")
    return {
        "encoder": f"Whisper encoder: {audio.get('encoder_layers', '?')} layers, width {audio.get('d_model', '?')}, "
                   f"{audio.get('num_mel_bins', '?')} mel bins",
        "adapter": f"stride-2 Conv1d + GLU (kernels {config.get('conv_kernel_sizes', '5,5,5')}), residual bottleneck "
                   f"{config.get('adapter_inner_dim', 512)}, LayerNorm",
        "llm": f"{text.get('model_type', '?')}: {text.get('num_hidden_layers', '?')} layers, hidden size "
               f"{text.get('hidden_size', '?')}, vocabulary {text.get('vocab_size', '?')}",
        "lora": {"audio": f"masked LoRA at speech positions (rank {config.get('lora_rank')}), part of the model code",
                 "global": "merged into the LLM weights"}.get(lora, "none"),
        "audio_padding": {"longest": "each clip at its own length", "max_length": "30 s (as the original release)"}.get(
            config.get("audio_padding"), str(config.get("audio_padding"))),
        "parameters": f"{parameters / 1e6:.1f} M" if parameters >= 1e5 else f"{parameters:,}",
        "version": str(config.get("blsp_emo_version", "unknown")),
    }


def _license_metadata(base_models: dict, license: str | None) -> tuple[dict, str]:
    """The card's `license` fields and a sentence explaining them. The weights are mostly the LLM's,
    so its licence governs unless `license` overrides it."""
    llm, encoder = base_models.get("llm", {}), base_models.get("encoder", {})
    chosen = license or llm.get("license") or "unknown"
    if chosen in HUB_LICENSES:
        fields = {"license": chosen}
    else:
        link = f"https://huggingface.co/{llm['id']}/blob/main/LICENSE" if llm.get("id") and not license else None
        fields = {"license": "other", "license_name": re.sub(r"[^a-z0-9.-]+", "-", chosen.lower()), "license_link": link}
    if license:
        note = f"Published under `{license}` (chosen by the publisher)."
    elif llm.get("license"):
        note = f"The weights derive from the LLM, so its licence (`{llm['license']}`) applies to the whole model."
    else:
        note = "The LLM's licence is not recorded in this checkpoint: check the base models' terms before use."
    if encoder.get("license") and encoder.get("license") != llm.get("license"):
        note += f" The speech encoder's weights are under `{encoder['license']}`, whose terms apply as well."
    return {key: value for key, value in fields.items() if value}, note


def render_model_card(
    model_dir: str | Path,
    repo_id: str,
    *,
    revision: str | None = None,
    metrics: str | Path | None = None,
    datasets: Sequence[str] = (),
    language: Sequence[str] = ("en",),
    license: str | None = None,
    training_dirs: Sequence[str | Path] = (),
) -> ModelCard:
    """The model card (README.md) of a checkpoint, from `model_cards/blsp_emo_card.md`.

    `metrics` defaults to `ser_metrics.json` in `model_dir` when present; `training_dirs` are training
    output folders whose trainer state describes this checkpoint (default: `model_dir` itself); the
    licence follows the LLM recorded in the config's `base_models` unless `license` is given.
    """
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    base_models = config.get("base_models") or {}
    if not base_models:
        logger.warning("%s: config.json records no base_models; the card lists them as unknown", model_dir)
    metrics_path = Path(metrics) if metrics else model_dir / METRICS_FILE
    if metrics and not metrics_path.is_file():
        raise HubPublishError(f"{metrics_path}: metrics file not found")
    results = load_ser_metrics(metrics_path) if metrics_path.is_file() else []
    model_name = repo_id.split("/")[-1]
    license_fields, license_note = _license_metadata(base_models, license)
    hub_datasets = list(dict.fromkeys([*datasets, *(r["dataset"] for r in results if "/" in r["dataset"])]))
    card_data = ModelCardData(
        base_model=[m["id"] for m in (base_models.get("encoder", {}), base_models.get("llm", {})) if m.get("id")] or None,
        datasets=hub_datasets or None,
        language=list(language) or None,
        library_name="transformers",
        pipeline_tag=HUB_PIPELINE_TAG,
        tags=CARD_TAGS,
        metrics=list(dict.fromkeys(name for r in results for name in r["metrics"] if name not in COUNT_METRICS)) or None,
        model_name=model_name,
        eval_results=eval_results(results) or None,
        **license_fields,
    )
    runs = [run for directory in (training_dirs or [model_dir]) if (run := read_training_run(directory))]
    if not CARD_TEMPLATE.is_file():
        raise HubPublishError(f"model card template {CARD_TEMPLATE} is missing (install blsp-emo from its source tree)")
    return ModelCard.from_template(
        card_data,
        template_path=str(CARD_TEMPLATE),
        repo_id=repo_id,
        model_name=model_name,
        revision_argument=f', revision="{revision}"' if revision and revision != "main" else "",
        emotion_labels=[config["id2label"][key] for key in sorted(config.get("id2label", {}), key=int)],
        architecture=_architecture(config, weight_files(model_dir)),
        base_models=[
            {"role": role, "id": None, "name": "unknown", "license": None, **base_models.get(key, {})}
            for key, role in (("encoder", "speech encoder"), ("llm", "LLM"))
        ],
        license_note=license_note,
        training_runs=runs,
        eval_results=[
            {"dataset_name": r.get("dataset_name") or r["dataset"], "split": r["split"], "num_examples": r.get("num_examples"),
             "method": r.get("method"), "rows": _metric_rows(r)}
            for r in results
        ],
        languages=", ".join(language) or "unspecified",
    )


# --- publishing -------------------------------------------------------------------------------------------

def _hub_error(error: HfHubHTTPError, action: str, repo_id: str, token: str) -> HubPublishError:
    status = error.response.status_code if error.response is not None else None
    detail = (error.server_message or str(error).splitlines()[0]).strip()
    if status == 401:
        message = (f"the Hub rejected the token while trying to {action} (401: {detail}); log in again with "
                   "`hf auth login` or set HF_TOKEN to a valid token with write access")
    elif status == 403:
        message = (f"the Hub refused to {action} {repo_id} (403: {detail}); check that the repo id is right and "
                   f"that the token may write to the '{repo_id.split('/')[0]}' namespace")
    else:
        message = f"could not {action} {repo_id} ({status}: {detail})"
    return HubPublishError(message.replace(token, "***"))


def push_to_hub(
    model_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    metrics: str | Path | None = None,
    datasets: Sequence[str] = (),
    language: Sequence[str] = ("en",),
    license: str | None = None,
    training_dirs: Sequence[str | Path] = (),
    commit_message: str | None = None,
    verify: bool = False,
    verify_timeout: float = 3600,
) -> PushResult:
    """Upload a saved checkpoint and its model card to `repo_id` in one commit.

    The repo is created if needed (`private` applies then); `revision` names a branch, created from
    `main` if it does not exist. Weights and Python files of an earlier upload that the checkpoint
    no longer has are deleted in the same commit. `verify=True` then loads the pushed commit in a fresh Python process
    with an empty cache through `pipeline("audio-to-text", trust_remote_code=True)` and runs one clip.
    Raises `HubPublishError` with a clear message (missing token, refused repo, incomplete checkpoint).
    """
    model_dir = Path(model_dir)
    token = token or get_token()
    if not token:
        raise HubPublishError(
            "no Hugging Face token found: log in with `hf auth login`, set the HF_TOKEN environment variable, "
            "or pass token= in Python (the token needs write access)"
        )
    files = checkpoint_files(model_dir)
    api = HfApi(token=token)
    try:
        if "/" not in repo_id:
            repo_id = f"{api.whoami()['name']}/{repo_id}"
    except HfHubHTTPError as error:
        raise _hub_error(error, "look up the token's user name for", repo_id, token) from error
    branch = revision or "main"
    card = render_model_card(
        model_dir, repo_id, revision=branch, metrics=metrics, datasets=datasets, language=language, license=license,
        training_dirs=training_dirs,
    )
    try:
        card.validate()
    except ValueError as error:
        raise HubPublishError(f"the Hub rejected the model card's metadata: {error}") from error
    additions = [CommitOperationAdd(path.relative_to(model_dir).as_posix(), str(path)) for path in files]
    additions.append(CommitOperationAdd("README.md", str(card).encode()))
    action = "create the repo"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if branch != "main":
            action = f"create branch '{branch}' in"
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        action = "upload to"
        uploaded = {addition.path_in_repo for addition in additions}
        stale = [
            CommitOperationDelete(path) for path in api.list_repo_files(repo_id, revision=branch)
            if path not in uploaded and any(fnmatch.fnmatch(path, pattern) for pattern in STALE_PATTERNS)
        ]
        commit = api.create_commit(
            repo_id, [*additions, *stale], revision=branch,
            commit_message=commit_message or f"Upload BLSP-Emo model ({len(additions)} files)",
        )
    except HfHubHTTPError as error:
        raise _hub_error(error, action, repo_id, token) from error
    if stale:
        logger.info("removed files of an earlier upload: %s", ", ".join(op.path_in_repo for op in stale))
    logger.info("pushed %d files to %s (branch %s, commit %s)", len(additions), repo_id, branch, commit.oid)
    result = PushResult(repo_id, branch, commit.oid, commit.commit_url, [op.path_in_repo for op in additions])
    if verify:
        result.verification = verify_repo(repo_id, commit.oid, token=token, timeout=verify_timeout)
    return result


def push_model_to_hub(model, processor, repo_id: str, **kwargs) -> PushResult:
    """Save an in-memory model (global peft LoRA merged first) with `save_checkpoint`, then `push_to_hub`."""
    from .builder import save_checkpoint
    from .emotion_alignment import finalize

    with tempfile.TemporaryDirectory(prefix="blsp_emo_push_") as directory:
        save_checkpoint(finalize(model), processor, directory)
        return push_to_hub(directory, repo_id, **kwargs)


def verify_repo(repo_id: str, revision: str = "main", *, token: str | None = None, timeout: float = 3600) -> dict:
    """Load `repo_id` at `revision` in a fresh Python (`-I`, empty working folder, empty `HF_HOME`)
    that never imports this package, run the `audio-to-text` pipeline on a one-second clip, and return
    what it produced. Raises `HubPublishError` when loading or running fails."""
    from huggingface_hub import constants

    token = token or get_token()
    with tempfile.TemporaryDirectory(prefix="blsp_emo_verify_") as directory:
        env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        env.update(HF_HOME=str(Path(directory) / "hf_home"), HF_ENDPOINT=constants.ENDPOINT, TRANSFORMERS_VERBOSITY="error")
        if token:
            env["HF_TOKEN"] = token
        try:
            completed = subprocess.run(
                [sys.executable, "-I", "-c", VERIFY_CODE, repo_id, revision], cwd=directory, env=env,
                capture_output=True, text=True, timeout=timeout,
            )
        except subprocess.TimeoutExpired as error:
            raise HubPublishError(f"verification of {repo_id}@{revision} did not finish in {timeout:.0f} s") from error
    if completed.returncode != 0:
        tail = completed.stderr[-3000:].replace(token, "***") if token else completed.stderr[-3000:]
        raise HubPublishError(f"{repo_id}@{revision} does not load and run in a fresh process:\n{tail}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    if result["package_imported"] or not result["pipeline_class"].startswith("transformers_modules."):
        raise HubPublishError(f"{repo_id}@{revision}: the pipeline did not come from the repo's own code ({result['pipeline_class']})")
    return result
