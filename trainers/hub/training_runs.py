"""Training runs as the model card shows them: stage, hyper-parameters and last logged values, read from
a training output folder."""

import importlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainers.hub.errors import HubPublishError

logger = logging.getLogger(__name__)

TRAINER_STATE_FILE = "trainer_state.json"
# Stage names by a value that only that stage's trainer logs (trainers/training/*_alignment.py and, for
# stage 3, trl's DPO trainer, which also logs `emotion_loss` when the head trains: checked first).
STAGE_BY_LOGGED_KEY = {
    "rewards/margins": "Stage 3: emotion preference alignment (DPO)",
    "kl": "Stage 1: semantic alignment",
    "emotion_loss": "Stage 2: emotion alignment",
}
TRAINING_ARGUMENTS = (
    "learning_rate", "lr_scheduler_type", "warmup_steps", "warmup_ratio", "num_train_epochs", "max_steps",
    "per_device_train_batch_size", "gradient_accumulation_steps", "weight_decay", "max_grad_norm", "optim", "bf16",
    "fp16", "seed", "beta", "loss_type",
)
# Values of those arguments that mean "not used" and are left out of the card.
UNUSED_ARGUMENT_VALUES = {"max_steps": -1, "warmup_steps": 0, "warmup_ratio": 0.0, "bf16": False, "fp16": False}
LOGGED_RESULTS = ("loss", "kl", "token_agreement", "lm_loss", "emotion_loss", "emotion_accuracy", "eval_loss",
                  "eval_kl", "eval_token_agreement", "eval_lm_loss", "eval_emotion_loss", "eval_emotion_accuracy",
                  "rewards/accuracies", "rewards/margins")


@dataclass
class TrainingRun:
    """One training run's record for the card: its stage, hyper-parameters and progress / last logged
    values, as `(name, value)` rows."""

    stage: str
    hyperparameters: list[tuple[str, str]] = field(default_factory=list)
    results: list[tuple[str, str]] = field(default_factory=list)


def format_value(value: Any) -> str:
    value = getattr(value, "value", value)  # enums (scheduler, optimizer) print as their value
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):  # e.g. trl's loss_type, a list of losses
        return ", ".join(format_value(item) for item in value)
    return str(value)


def _read_json(path: Path) -> dict:
    """A training record written as JSON; a damaged one stops the card with its path named."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise HubPublishError(f"{path}: not valid JSON ({error}); repair or delete it, or pass other --training-dir folders") from None


def _load_training_arguments(folder: Path) -> dict | None:
    json_path, bin_path = folder / "training_args.json", folder / "training_args.bin"
    if json_path.is_file():
        return _read_json(json_path)
    if not bin_path.is_file():
        return None
    import torch

    # A pickle: allow only the transformers/accelerate (and trl, for stage 3's DPOConfig) classes it is made of.
    try:
        allowed = []
        for name in torch.serialization.get_unsafe_globals_in_checkpoint(bin_path):
            module, _, attribute = name.rpartition(".")
            if module.split(".")[0] not in ("transformers", "accelerate", "trl"):
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
    state = _read_json(folder / TRAINER_STATE_FILE)
    history = state.get("log_history", [])
    logged = {key for entry in history for key in entry}
    stage = next((name for key, name in STAGE_BY_LOGGED_KEY.items() if key in logged), "Training")
    arguments = _load_training_arguments(folder) or _load_training_arguments(directory) or {}
    if (arguments.get("max_steps") or -1) > 0:
        arguments.pop("num_train_epochs", None)  # max_steps decides the length; the epochs are not used
    hyperparameters = [
        (name, format_value(arguments[name])) for name in TRAINING_ARGUMENTS
        if arguments.get(name) is not None and arguments[name] != UNUSED_ARGUMENT_VALUES.get(name, object())
    ]
    results = [(name, format_value(state[name])) for name in ("global_step", "epoch") if state.get(name) is not None]
    last = {}
    for entry in history:
        last.update({key: value for key, value in entry.items() if key in LOGGED_RESULTS})
    results += [(name, format_value(last[name])) for name in LOGGED_RESULTS if name in last]
    return TrainingRun(stage, hyperparameters, results)

