"""Training, evaluating, converting, publishing and talking to BLSP-Emo models.

One sub-package per job: `training`, `evaluation`, `checkpoints`, `hub`, `inference`, `demo`, `cli`.
The names users call most are importable from here too; they load on first use, so importing
one sub-package never pulls in the CLI, the demo or gradio.
"""

import importlib

_PUBLIC_NAMES = {
    "SemanticAlignmentTrainer": "trainers.training",
    "EmotionAlignmentTrainer": "trainers.training",
    "LoraSettings": "trainers.training",
    "prepare_for_emotion_alignment": "trainers.training",
    "finalize": "trainers.training",
    "train_semantic": "trainers.training",
    "train_emotion": "trainers.training",
    "evaluate_ser": "trainers.evaluation",
    "evaluate_empathy": "trainers.evaluation",
    "calibrate_checkpoint": "trainers.evaluation",
    "build_blsp_emo": "trainers.checkpoints",
    "save_checkpoint": "trainers.checkpoints",
    "load_blsp_emo": "trainers.checkpoints",
    "convert_original": "trainers.checkpoints.original",
    "push_to_hub": "trainers.hub",
    "push_model_to_hub": "trainers.hub",
    "render_model_card": "trainers.hub",
    "BlspEmoChat": "trainers.inference",
    "ChatInputError": "trainers.inference",
    "Demo": "trainers.demo",
    "DemoSettings": "trainers.demo",
    "main": "trainers.cli.main",
}

__all__ = sorted(_PUBLIC_NAMES)


def __getattr__(name: str):
    if name not in _PUBLIC_NAMES:
        raise AttributeError(f"module 'trainers' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC_NAMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
