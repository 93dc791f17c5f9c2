"""`blsp-emo train-preference`: the optional third stage, DPO on emotion preference pairs from a
stage-2 checkpoint. trl is imported only when a run starts, so this module (and the command's
`--help`) loads without it."""

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from processing.errors import UserInputError
from processing.preference_pairs import load_preference_pairs
from trainers.checkpoints.builder import save_checkpoint
from trainers.checkpoints.loading import load_blsp_emo, require_finite_weights
from trainers.training.base import save_run_record

if TYPE_CHECKING:
    from trl import DPOConfig

    from trainers.training.preference import SpeechPreferenceTrainer

logger = logging.getLogger(__name__)
INSTALL_HINT = "stage 3 needs trl, which is not installed: pip install 'blsp-emo[preference]'"


def dpo_config_class() -> type["DPOConfig"]:
    """trl's `DPOConfig`, or a `UserInputError` saying which extra to install."""
    try:
        from trl import DPOConfig
    except ImportError as error:
        raise UserInputError(INSTALL_HINT) from error
    return DPOConfig


@dataclass
class PreferenceArguments:
    model: str = field(metadata={"help": "stage-2 BLSP-Emo checkpoint (from `blsp-emo train-emotion`)"})
    manifest: str = field(metadata={"help": "JSONL manifest of the clips: audio, text, emotion"})
    targets: str = field(
        metadata={"help": "stage-2 targets folder (`blsp-emo generate-targets --emotion`) with the manifest's sentences in every emotion"}
    )
    rejected_per_clip: int | None = field(
        default=None, metadata={"help": "rejected continuations per clip, drawn with --seed (default: every other emotion's)"}
    )
    emotion_weight: float = field(default=0.0, metadata={"help": "weight of the emotion head's loss (0: the head does not train)"})
    train_encoder: bool = field(default=False, metadata={"help": "train the Whisper encoder too (default: frozen)"})
    freeze_adapter: bool = field(default=False, metadata={"help": "train only the audio-scope LoRA, not the adapter"})
    lora_rank: int = field(
        default=8,
        metadata={"help": "rank of a fresh audio-scope LoRA added to the LLM for this stage when the checkpoint has none "
                          "(a global-scope stage-2 checkpoint has its LoRA merged); 0: none. A checkpoint's own audio-scope "
                          "LoRA trains instead"},
    )
    dtype: str | None = None
    check_audio: str = field(default="exists", metadata={"help": "check each clip as the manifest loads: exists, decode or none"})
    skip_bad_audio: bool = field(default=False, metadata={"help": "leave out clips with unusable audio (counted)"})


def train_preference(arguments: PreferenceArguments, training: "DPOConfig") -> "SpeechPreferenceTrainer":
    """Run DPO from the stage-2 checkpoint `arguments.model` against itself, frozen (a copy, or with
    `training.precompute_ref_log_probs` the pairs scored once before training), and save a full
    checkpoint in `training.output_dir`. `training` carries trl's options (`beta`, `loss_type`, ...).

    What trains: the adapter (unless `freeze_adapter`) and audio-scope LoRA on the LLM, the
    checkpoint's own or, when it has none, a fresh one of rank `lora_rank`. The LLM's own weights
    stay frozen; the saved checkpoint records the LoRA (`lora_scope="audio"`), so it reloads as is."""
    try:
        from trainers.training.preference import SpeechPreferenceTrainer, frozen_reference, prepare_for_preference
    except ImportError as error:
        if error.name != "trl":
            raise
        raise UserInputError(INSTALL_HINT) from error
    if arguments.lora_rank < 0:
        raise UserInputError(f"must be 0 (no LoRA) or a positive rank, got {arguments.lora_rank}", field="lora_rank")
    model, processor = load_blsp_emo(arguments.model, arguments.dtype)
    require_finite_weights(model, arguments.model)
    pairs = load_preference_pairs(
        arguments.manifest, arguments.targets, rejected_per_clip=arguments.rejected_per_clip, seed=training.seed,
        check_audio=arguments.check_audio, skip_bad_audio=arguments.skip_bad_audio,
    )
    unknown = {pair["emotion"] for pair in pairs} - set(model.config.label2id)
    if arguments.emotion_weight and unknown:
        raise UserInputError(
            f"labels {sorted(unknown)} are not the model's {model.config.emotion_labels}, so the emotion head cannot learn them",
            path=arguments.manifest,
        )
    reference = None if training.precompute_ref_log_probs else frozen_reference(model)
    if model.model.has_masked_lora:
        logger.info("the checkpoint's own audio-scope LoRA trains (rank %d); lora_rank is not used", model.config.lora_rank)
    elif arguments.lora_rank:
        # Starts as a no-op (B = 0), so the reference is still the stage-2 model.
        model.add_audio_lora(arguments.lora_rank, arguments.lora_rank)
    prepare_for_preference(
        model, train_adapter=not arguments.freeze_adapter, train_encoder=arguments.train_encoder,
        train_head=arguments.emotion_weight > 0,
    )
    trainer = SpeechPreferenceTrainer(
        model, reference, training, processor=processor, train_dataset=pairs, emotion_weight=arguments.emotion_weight
    )
    trainer.train(resume_from_checkpoint=training.resume_from_checkpoint)
    if trainer.is_world_process_zero():
        save_checkpoint(trainer.accelerator.unwrap_model(trainer.model), processor, training.output_dir)
        save_run_record(trainer, training.output_dir)
    return trainer
