"""What both training stages share: logging several losses, and checkpoints of trained weights only."""

import logging
import os
from collections import defaultdict
from collections.abc import Iterable
from typing import Literal

import safetensors.torch
import torch
from transformers import PreTrainedModel, Trainer
from transformers.trainer import TRAINER_STATE_NAME

from processing.errors import UserInputError

logger = logging.getLogger(__name__)

TRAINED_WEIGHTS_NAME = "trained_weights.safetensors"
# The run's arguments beside each checkpoint (with Trainer's TRAINER_STATE_NAME log), read by `blsp-emo
# push` for the model card: JSON rather than Trainer's pickled training_args.bin, which a reader must unpickle.
TRAINING_ARGUMENTS_NAME = "training_args.json"
# Positions per logits chunk when `logits_chunk_size="auto"`. Under activation checkpointing (memory
# first) 128: ~80 MB per float32 logits tensor at a 152k vocabulary. Otherwise as many as fit in
# LOGITS_CHUNK_BYTES: the LM head's matrix product runs ~20 % faster on 320+ rows than on 128 (2-core CPU).
MEMORY_LEAN_CHUNK_SIZE = 128
LOGITS_CHUNK_BYTES = 256 * 2**20


def set_trainable(model: torch.nn.Module, prefixes: Iterable[str]) -> list[str]:
    """Train exactly the parameters whose names start with one of `prefixes`; returns their names."""
    prefixes = tuple(prefixes)
    trained = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith(prefixes))
        if parameter.requires_grad:
            trained.append(name)
    if not trained:
        raise ValueError(f"no parameter starts with {prefixes}")
    return trained


def forget_emotion_calibration(model: torch.nn.Module) -> None:
    """Set a fitted `emotion_temperature` back to 1.0 before training: it was fitted to the weights
    as they were, and training changes the head or its inputs (fit it again with `blsp-emo calibrate`)."""
    config = getattr(model, "config", None)
    if getattr(config, "emotion_temperature", 1.0) != 1.0:
        logger.warning(
            "emotion_temperature %.3g was fitted to the weights before this training: reset to 1.0 "
            "(run `blsp-emo calibrate` on the trained checkpoint)", config.emotion_temperature
        )
        config.emotion_temperature = 1.0


def emotion_scores_train(model: torch.nn.Module) -> bool:
    """Whether training `model`, with its parameters' `requires_grad` as they stand, changes the emotion
    head's scores: the head trains, or what it pools does (the Whisper encoder; the adapter too under
    `emotion_pooling="adapter_mean"`)."""
    prefixes = ["emotion_head.", "model.audio_encoder."]
    if getattr(model.config, "emotion_pooling", "adapter_mean") == "adapter_mean":
        prefixes.append("model.adapter.")
    return any(parameter.requires_grad for name, parameter in model.named_parameters() if name.startswith(tuple(prefixes)))


class AlignmentTrainer(Trainer):
    """A `Trainer` that logs named metrics recorded in `compute_loss` (averaged over the logging
    interval) and whose checkpoints hold only the weights being trained (plus the config), not the
    frozen encoder and LLM.

    `logits_chunk_size` positions' LM-head logits exist at a time in the loss (`None`: all at once;
    the result is the same up to float rounding). `"auto"` takes 128 under activation checkpointing,
    else as many as fit in 256 MB of float32 logits (`logits_chunk_rows`). `TrainingArguments(activation_checkpointing=True)`
    recomputes the LLM and encoder blocks in the backward instead of keeping their activations.
    A fitted emotion temperature is reset to 1.0 (`forget_emotion_calibration`).
    """

    def __init__(
        self, *args, eval_data_collator=None, logits_chunk_size: int | Literal["auto"] | None = "auto", **kwargs
    ):
        super().__init__(*args, **kwargs)
        forget_emotion_calibration(self.model)
        self.eval_data_collator = eval_data_collator
        # Positions whose LM-head logits the loss computes at once (None: all); see training/losses.py.
        self.logits_chunk_size = logits_chunk_size
        self._recorded = {"train": defaultdict(list), "eval": defaultdict(list)}

    def logits_chunk_rows(self, model: PreTrainedModel) -> int | None:
        """The positions per logits chunk for `model` (unwrapped), `logits_chunk_size` resolved."""
        if self.logits_chunk_size != "auto":
            return self.logits_chunk_size
        if model.is_activation_checkpointing:
            return MEMORY_LEAN_CHUNK_SIZE
        vocab_size = model.get_output_embeddings().weight.shape[0]
        return max(MEMORY_LEAN_CHUNK_SIZE, LOGITS_CHUNK_BYTES // (4 * vocab_size))

    def get_eval_dataloader(self, eval_dataset=None):
        """Evaluation may batch differently (e.g. without augmentation)."""
        if self.eval_data_collator is None:
            return super().get_eval_dataloader(eval_dataset)
        train_collator, self.data_collator = self.data_collator, self.eval_data_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = train_collator

    def record(self, **values: torch.Tensor | float) -> None:
        split = "train" if self.model.training else "eval"
        for name, value in values.items():
            self._recorded[split][name].append(float(value.detach()) if isinstance(value, torch.Tensor) else float(value))

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        split = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        prefix = "eval_" if split == "eval" else ""
        for name, values in self._recorded[split].items():
            if values:
                logs[prefix + name] = sum(values) / len(values)
        self._recorded[split].clear()
        super().log(logs, *args, **kwargs)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation runs the training loss (which records its metrics); no logits are gathered."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # Private Trainer hooks, on purpose: `save_model` (public) gathers FSDP/DeepSpeed state dicts and
    # then calls `_save`, and resuming calls `_load_from_checkpoint`; no public hook sits at either
    # point. Pinned by test_training_logs_kl_and_agreement_and_checkpoints_only_the_adapter,
    # test_resuming_from_a_checkpoint_reproduces_straight_training and test_global_lora_checkpoint_resumes.
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        save_trained_part(self, output_dir, state_dict)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        load_trained_weights(model if model is not None else self.accelerator.unwrap_model(self.model), resume_from_checkpoint)


def save_trained_part(trainer: Trainer, output_dir: str | None = None, state_dict: dict | None = None) -> None:
    """`Trainer._save` of this package's trainers: the trained weights, the config and the arguments."""
    output_dir = output_dir or trainer.args.output_dir
    save_trained_weights(trainer.accelerator.unwrap_model(trainer.model), output_dir, state_dict)
    save_training_arguments(trainer, output_dir)


def save_training_arguments(trainer: Trainer, output_dir: str) -> None:
    """Write the trainer's arguments as `training_args.json` in `output_dir`."""
    with open(os.path.join(output_dir, TRAINING_ARGUMENTS_NAME), "w") as file:
        file.write(trainer.args.to_json_string())


def save_run_record(trainer: Trainer, output_dir: str) -> None:
    """Write the finished run's log (`trainer_state.json`) and arguments (`training_args.json`) beside
    the checkpoint saved in `output_dir`, so that its model card can name the stage, the
    hyper-parameters and the last logged values. Neither file is pushed to the Hub."""
    trainer.state.save_to_json(os.path.join(output_dir, TRAINER_STATE_NAME))
    save_training_arguments(trainer, output_dir)


def save_trained_weights(model: torch.nn.Module, output_dir: str, state_dict: dict | None = None) -> None:
    """Write the weights that train (requires_grad) and the config: a small file to share or resume from."""
    os.makedirs(output_dir, exist_ok=True)
    trained = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    source = state_dict if state_dict is not None else model.state_dict()
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in source.items() if name in trained}
    safetensors.torch.save_file(tensors, os.path.join(output_dir, TRAINED_WEIGHTS_NAME), metadata={"format": "pt"})
    model.config.save_pretrained(output_dir)


def load_trained_weights(model: torch.nn.Module, directory: str) -> None:
    """Load weights written by `save_trained_weights` into a model of the same structure."""
    path = os.path.join(directory, TRAINED_WEIGHTS_NAME)
    if not os.path.isfile(path):
        raise UserInputError(f"no {TRAINED_WEIGHTS_NAME} (not a checkpoint of this trainer)", path=directory)
    try:
        tensors = safetensors.torch.load_file(path)
    except Exception as error:  # safetensors raises its own error types, by version
        raise UserInputError(f"cannot read the trained weights: {error} (half written or corrupt?)", path=path) from error
    expected = model.state_dict()
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise UserInputError(f"weights {unexpected[:3]} do not exist in the model", path=path)
    mismatched = [name for name, tensor in tensors.items() if tensor.shape != expected[name].shape]
    if mismatched:
        name = mismatched[0]
        raise UserInputError(
            f"{name} is {list(tensors[name].shape)} in the checkpoint but {list(expected[name].shape)} in the model "
            f"({len(mismatched)} such weights): resume with the options it was trained with (e.g. the same LoRA rank)",
            path=path,
        )
    model.load_state_dict(tensors, strict=False)
