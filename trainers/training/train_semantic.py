"""`blsp-emo train-semantic`: stage-1 training from a base checkpoint and generated targets."""

from dataclasses import dataclass, field

from transformers import TrainingArguments

from modeling_blsp_emo.prompts import SEMANTIC_TARGET_INSTRUCTION
from processing.collators import SpeechContinuationCollator
from processing.target_generation import load_targets
from trainers.checkpoints.builder import save_checkpoint
from trainers.checkpoints.loading import load_blsp_emo, require_finite_weights
from trainers.training.base import save_run_record
from trainers.training.semantic_alignment import SemanticAlignmentTrainer


@dataclass
class SemanticAlignmentArguments:
    model: str = field(metadata={"help": "BLSP-Emo checkpoint to align (from `blsp-emo init`)"})
    targets: str = field(metadata={"help": "folder written by `blsp-emo generate-targets`"})
    eval_targets: str | None = field(default=None, metadata={"help": "held-out targets folder for evaluation"})
    dtype: str | None = field(default=None, metadata={"help": "load dtype, e.g. bfloat16"})
    check_audio: str = field(default="exists", metadata={"help": "check each clip as the targets load: exists, decode or none"})
    skip_bad_audio: bool = field(default=False, metadata={"help": "leave out targets with unusable audio (counted)"})


def train_semantic(arguments: SemanticAlignmentArguments, training: TrainingArguments) -> SemanticAlignmentTrainer:
    """Run stage 1 and save a full checkpoint (remote code, processor) in `training.output_dir`."""
    model, processor = load_blsp_emo(arguments.model, arguments.dtype)
    require_finite_weights(model, arguments.model)
    collator = SpeechContinuationCollator(processor, SEMANTIC_TARGET_INSTRUCTION, with_teacher=True)
    checks = dict(required=("audio",), check_audio=arguments.check_audio, skip_bad_audio=arguments.skip_bad_audio)
    trainer = SemanticAlignmentTrainer(
        model=model,
        args=training,
        train_dataset=load_targets(arguments.targets, **checks),
        eval_dataset=load_targets(arguments.eval_targets, **checks) if arguments.eval_targets else None,
        data_collator=collator,
    )
    trainer.train(resume_from_checkpoint=training.resume_from_checkpoint)
    if trainer.is_world_process_zero():
        save_checkpoint(trainer.accelerator.unwrap_model(trainer.model), processor, training.output_dir)
        save_run_record(trainer, training.output_dir)
    return trainer
