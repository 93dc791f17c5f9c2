"""`blsp-emo train-semantic`, `train-emotion` and `train-preference`: the training stages, with all of
transformers' `TrainingArguments` (trl's `DPOConfig` for stage 3) on the command line (HfArgumentParser)."""

from collections.abc import Callable, Sequence

TRAINING_COMMANDS = {
    "train-semantic": "stage 1: semantic alignment (options: --help)",
    "train-emotion": "stage 2: emotion alignment, or fine-tuning on new emotion data (options: --help)",
    "train-preference": "stage 3 (optional, needs trl): emotion preference alignment with DPO (options: --help)",
}


def add_commands(commands) -> None:
    """List the training commands in `blsp-emo --help`; `run_training_command` parses their options."""
    for name, help_text in TRAINING_COMMANDS.items():
        commands.add_parser(name, help=help_text, add_help=False)


def training_run(name: str) -> tuple[type, type, Callable]:
    """The command's options dataclass, its training-arguments dataclass and its run function.
    Without trl, `train-preference` still parses (so `--help` works) but its run says what to install."""
    from transformers import TrainingArguments

    if name == "train-preference":
        from processing.errors import UserInputError
        from trainers.training.train_preference import PreferenceArguments, dpo_config_class, train_preference

        try:
            return PreferenceArguments, dpo_config_class(), train_preference
        except UserInputError:  # parse with the plain arguments; running says what to install
            return PreferenceArguments, TrainingArguments, lambda *_: dpo_config_class()

    from trainers.training import EmotionAlignmentArguments, SemanticAlignmentArguments, train_emotion, train_semantic

    return {
        "train-semantic": (SemanticAlignmentArguments, TrainingArguments, train_semantic),
        "train-emotion": (EmotionAlignmentArguments, TrainingArguments, train_emotion),
    }[name]


def run_training_command(name: str, argv: Sequence[str]) -> int:
    from transformers import HfArgumentParser

    from processing.errors import output_folder

    arguments_class, training_class, train = training_run(name)
    parser = HfArgumentParser((arguments_class, training_class), prog=f"blsp-emo {name}")
    arguments, training = parser.parse_args_into_dataclasses(list(argv))
    output_folder(training.output_dir)
    training.remove_unused_columns = False  # the collators read every field of an example
    train(arguments, training)
    return 0
