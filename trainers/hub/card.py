"""The model card (README.md) of a checkpoint, rendered from `model_cards/blsp_emo_card.md`.

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

`metrics` is what `trainers.evaluation.ser.ser_metrics` returns: accuracy, UA, WA and macro-F1 are
fractions in [0, 1] (shown in % on the card); other numeric metrics are published as they are;
structured values (the confusion matrix) are left out; `unanswered` is a count, shown on the card but
not in `model-index`.
"""

import json
import logging
import math
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from trainers.hub.errors import HubPublishError
from trainers.hub.files import read_safetensors_header, weight_files
from trainers.hub.licences import license_metadata
from trainers.hub.training_runs import format_value, read_training_run

logger = logging.getLogger(__name__)

CARD_TEMPLATE = files("model_cards") / "blsp_emo_card.md"
HUB_PIPELINE_TAG = "audio-text-to-text"  # the Hub's task tag for speech(+text) in, text out
METRICS_FILE = "ser_metrics.json"
CARD_TAGS = ["blsp-emo", "speech", "audio", "speech-emotion-recognition", "empathetic-dialogue", "whisper"]
FRACTION_METRICS = {
    "accuracy": "Accuracy", "unweighted_accuracy": "Unweighted accuracy (UA)", "weighted_accuracy": "Weighted accuracy (WA)",
    "macro_f1": "Macro F1", "weighted_f1": "Weighted F1",
}
COUNT_METRICS = {"unanswered": "Unanswered clips"}


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
        (_metric_label(name, result), f"{100 * value:.1f} %" if name in FRACTION_METRICS else format_value(value))
        for name, value in result["metrics"].items()
    ]


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
        "emotion_token": "after each window's speech, the emotion head's probabilities × one embedding per emotion"
                         if config.get("emotion_token") else "none",
        "audio_padding": {"longest": "each clip at its own length", "max_length": "30 s (as the original release)"}.get(
            config.get("audio_padding"), str(config.get("audio_padding"))),
        "parameters": f"{parameters / 1e6:.1f} M" if parameters >= 1e5 else f"{parameters:,}",
        "version": str(config.get("blsp_emo_version", "unknown")),
    }


# What the emotion head reads (`emotion_pooling` in config.json; absent in older checkpoints), for the card.
HEAD_INPUTS = {
    "adapter_mean": "the mean of the speech embeddings",
    "encoder_stats": "the mean and standard deviation of the Whisper encoder's last and middle layers over the clip",
}


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
    license_fields, license_note = license_metadata(base_models, license)
    if not CARD_TEMPLATE.is_file():
        raise HubPublishError(f"model card template {CARD_TEMPLATE} is missing (reinstall blsp-emo)")
    return ModelCard.from_template(
        _card_metadata(repo_id, base_models, results, datasets, language, license_fields),
        template_path=str(CARD_TEMPLATE),
        repo_id=repo_id,
        model_name=repo_id.split("/")[-1],
        revision_argument=f', revision="{revision}"' if revision and revision != "main" else "",
        emotion_labels=[config["id2label"][key] for key in sorted(config.get("id2label", {}), key=int)],
        emotion_head_input=HEAD_INPUTS[config.get("emotion_pooling", "adapter_mean")],
        architecture=_architecture(config, weight_files(model_dir)),
        base_models=[
            {"role": role, "id": None, "name": "unknown", "license": None, **base_models.get(key, {})}
            for key, role in (("encoder", "speech encoder"), ("llm", "LLM"))
        ],
        license_note=license_note,
        training_runs=[run for directory in (training_dirs or [model_dir]) if (run := read_training_run(directory))],
        eval_results=[
            {"dataset_name": r.get("dataset_name") or r["dataset"], "split": r["split"], "num_examples": r.get("num_examples"),
             "method": r.get("method"), "rows": _metric_rows(r)}
            for r in results
        ],
        languages=", ".join(language) or "unspecified",
    )


def _card_metadata(
    repo_id: str, base_models: dict, results: list[dict], datasets: Sequence[str], language: Sequence[str],
    license_fields: dict,
) -> ModelCardData:
    """The card's YAML header: base models, datasets, task, tags, licence and `model-index` results."""
    hub_datasets = list(dict.fromkeys([*datasets, *(r["dataset"] for r in results if "/" in r["dataset"])]))
    return ModelCardData(
        base_model=[m["id"] for m in (base_models.get("encoder", {}), base_models.get("llm", {})) if m.get("id")] or None,
        datasets=hub_datasets or None,
        language=list(language) or None,
        library_name="transformers",
        pipeline_tag=HUB_PIPELINE_TAG,
        tags=CARD_TAGS,
        metrics=list(dict.fromkeys(name for r in results for name in r["metrics"] if name not in COUNT_METRICS)) or None,
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results(results) or None,
        **license_fields,
    )
