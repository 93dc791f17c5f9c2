"""`blsp-emo train-semantic` and `train-emotion`: the two training stages, with all of transformers'
`TrainingArguments` on the command line (HfArgumentParser)."""

from collections.abc import Sequence

TRAINING_COMMANDS = {
    "train-semantic": "stage 1: semantic alignment (options: --help)",
    "train-emotion": "stage 2: emotion alignment, or fine-tuning on new emotion data (options: --help)",
}


def add_commands(commands) -> None:
    """List the training commands in `blsp-emo --help`; `run_training_command` parses their options."""
    for name, help_text in TRAINING_COMMANDS.items():
        commands.add_parser(name, help=help_text, add_help=False)


def run_training_command(name: str, argv: Sequence[str]) -> int:
    from transformers import HfArgumentParser, TrainingArguments

    from processing.errors import output_folder
    from trainers.training import (
        EmotionAlignmentArguments,
        SemanticAlignmentArguments,
        train_emotion,
        train_semantic,
    )

    arguments_class, train = {
        "train-semantic": (SemanticAlignmentArguments, train_semantic),
        "train-emotion": (EmotionAlignmentArguments, train_emotion),
    }[name]
    parser = HfArgumentParser((arguments_class, TrainingArguments), prog=f"blsp-emo {name}")
    arguments, training = parser.parse_args_into_dataclasses(list(argv))
    output_folder(training.output_dir)
    training.remove_unused_columns = False  # the collators read every field of an example
    train(arguments, training)
    return 0
