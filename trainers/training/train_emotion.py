"""`blsp-emo train-emotion`: stage-2 training, or fine-tuning a BLSP-Emo checkpoint on new emotion data."""

from dataclasses import dataclass, field

from transformers import TrainingArguments

from modeling_blsp_emo.prompts import EMOTION_CONTINUATION_INSTRUCTION
from processing.augmentation import EmotionSafeAugmentation
from processing.collators import SpeechContinuationCollator
from processing.errors import UserInputError
from processing.target_generation import load_targets
from trainers.checkpoints.builder import save_checkpoint
from trainers.checkpoints.loading import load_blsp_emo, require_finite_weights
from trainers.training.base import save_run_record, save_trained_weights
from trainers.training.emotion_alignment import EmotionAlignmentTrainer, LoraSettings, finalize, prepare_for_emotion_alignment
from trainers.training.head_warm_start import warm_start_emotion_head
from trainers.training.label_words import add_emotion_token, label_word_ids


@dataclass
class EmotionAlignmentArguments:
    model: str = field(metadata={"help": "BLSP-Emo checkpoint (after stage 1, or a trained one to fine-tune)"})
    targets: str = field(metadata={"help": "folder written by `blsp-emo generate-targets --emotion`"})
    eval_targets: str | None = field(default=None, metadata={"help": "held-out targets folder for evaluation"})
    labels: str | None = field(default=None, metadata={"help": "new emotion label set, comma separated (resizes the head)"})
    lora_scope: str = field(default="audio", metadata={"help": "audio (speech positions only), global, or none"})
    lora_rank: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: str | None = field(default=None, metadata={"help": "comma-separated layer names; default all"})
    freeze_encoder: bool = field(default=False, metadata={"help": "keep the Whisper encoder frozen"})
    er_weight: float = field(default=1.0, metadata={"help": "weight of the emotion-classification loss"})
    label_word_weight: float = field(
        default=0.0,
        metadata={"help": "weight of a loss that draws the adapter's mean speech embedding toward the LLM's embedding of "
                  "the clip's emotion name (for emotion_pooling=encoder_stats, whose head loss does not reach the adapter)"},
    )  # fmt: skip
    emotion_token: bool = field(
        default=False,
        metadata={"help": "turn on the emotion token: after the speech the LLM reads the emotion head's verdict as a "
                  "mixture of its own embeddings of the emotions' names (the saved processor counts it)"},
    )  # fmt: skip
    head_learning_rate: float | None = field(default=None, metadata={"help": "own learning rate for the emotion head"})
    encoder_learning_rate: float | None = field(
        default=None, metadata={"help": "own learning rate for the Whisper encoder (lower than the LoRA/adapter one)"}
    )
    warm_start_head: bool = field(
        default=False,
        metadata={"help": "first fit the emotion head alone on the model's pooled speech embeddings of the training clips "
                  "(linear probing; for a fresh or resized head)"},
    )  # fmt: skip
    augment: bool = field(default=False, metadata={"help": "noise/gain/reverb/filter augmentation of training audio"})
    trained_weights_output: str | None = field(default=None, metadata={"help": "also save only the trained weights here"})
    dtype: str | None = None
    check_audio: str = field(default="exists", metadata={"help": "check each clip as the targets load: exists, decode or none"})
    skip_bad_audio: bool = field(default=False, metadata={"help": "leave out targets with unusable audio (counted)"})


def train_emotion(arguments: EmotionAlignmentArguments, training: TrainingArguments) -> EmotionAlignmentTrainer:
    """Run stage 2 and save a full checkpoint (LoRA merged when global) in `training.output_dir`."""
    model, processor = load_blsp_emo(arguments.model, arguments.dtype)
    require_finite_weights(model, arguments.model)
    if arguments.labels:
        model.set_emotion_labels(arguments.labels.split(","))
    checks = dict(required=("audio", "emotion"), check_audio=arguments.check_audio, skip_bad_audio=arguments.skip_bad_audio)
    train_records = load_targets(arguments.targets, **checks)
    unknown = {record["emotion"] for record in train_records} - set(model.config.label2id)
    if unknown:
        raise UserInputError(
            f"labels {sorted(unknown)} are not the model's {model.config.emotion_labels}; pass --labels", path=arguments.targets
        )
    if arguments.warm_start_head:
        warm_start_emotion_head(model, processor, train_records, batch_size=training.per_device_train_batch_size)
    if arguments.emotion_token and not model.config.emotion_token:
        add_emotion_token(model, processor)
    lora = LoraSettings(
        arguments.lora_scope, arguments.lora_rank, arguments.lora_alpha, arguments.lora_dropout,
        arguments.lora_target_modules.split(",") if arguments.lora_target_modules else None,
    )
    trained = prepare_for_emotion_alignment(model, lora, train_encoder=not arguments.freeze_encoder)
    collator = SpeechContinuationCollator(
        processor, EMOTION_CONTINUATION_INSTRUCTION, label2id=model.config.label2id,
        augment=EmotionSafeAugmentation() if arguments.augment else None,
    )
    trainer = EmotionAlignmentTrainer(
        model=trained, args=training, train_dataset=train_records,
        eval_dataset=load_targets(arguments.eval_targets, **checks) if arguments.eval_targets else None,
        data_collator=collator, er_weight=arguments.er_weight, head_learning_rate=arguments.head_learning_rate,
        encoder_learning_rate=arguments.encoder_learning_rate, label_word_weight=arguments.label_word_weight,
        label_word_ids=label_word_ids(processor.tokenizer, model.config.emotion_labels) if arguments.label_word_weight else None,
        eval_data_collator=SpeechContinuationCollator(
            processor, EMOTION_CONTINUATION_INSTRUCTION, label2id=model.config.label2id
        ),
    )
    trainer.train(resume_from_checkpoint=training.resume_from_checkpoint)
    if trainer.is_world_process_zero():
        if arguments.trained_weights_output:
            save_trained_weights(trainer.accelerator.unwrap_model(trainer.model), arguments.trained_weights_output)
        save_checkpoint(finalize(trainer.accelerator.unwrap_model(trainer.model)), processor, training.output_dir)
        save_run_record(trainer, training.output_dir)
    return trainer
