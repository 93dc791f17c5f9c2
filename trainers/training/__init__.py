"""The two training stages: `Trainer` subclasses, their losses, and the runs behind `blsp-emo train-*`."""

from trainers.training.base import AlignmentTrainer, load_trained_weights, save_trained_weights, set_trainable
from trainers.training.emotion_alignment import (
    EmotionAlignmentTrainer,
    LoraSettings,
    finalize,
    prepare_for_emotion_alignment,
)
from trainers.training.semantic_alignment import SemanticAlignmentTrainer
from trainers.training.train_emotion import EmotionAlignmentArguments, train_emotion
from trainers.training.train_semantic import SemanticAlignmentArguments, train_semantic

__all__ = [
    "AlignmentTrainer", "EmotionAlignmentArguments", "EmotionAlignmentTrainer", "LoraSettings",
    "SemanticAlignmentArguments", "SemanticAlignmentTrainer", "finalize", "load_trained_weights",
    "prepare_for_emotion_alignment", "save_trained_weights", "set_trainable", "train_emotion", "train_semantic",
]
