"""The `blsp-emo` command line: the parser assembled from each command group, and `main`."""

import argparse
import logging
import os
import platform
import sys
from collections.abc import Sequence

from modeling_blsp_emo.audio_loading import AudioInputError
from modeling_blsp_emo.numerics import NonFiniteOutputError
from modeling_blsp_emo.version import __version__
from processing.errors import UserInputError
from trainers.cli import checkpoints, data, demo, evaluation, interactive, training

COMMAND_GROUPS = (demo, data, training, evaluation, checkpoints, interactive)
DEBUG_VARIABLE = "BLSP_EMO_DEBUG"
# What a user can cause and fix: their files and options, unusable audio, corrupt weights.
EXPECTED_ERRORS = (UserInputError, AudioInputError, NonFiniteOutputError)


def environment_report() -> dict[str, str]:
    """Versions and devices a bug report needs."""
    import torch
    import transformers

    devices = ["cpu"] + [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    return {
        "blsp-emo": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "devices": ", ".join(devices),
    }


def run_info(args: argparse.Namespace) -> int:
    for name, value in environment_report().items():
        print(f"{name:>13}: {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blsp-emo", description="Empathetic speech-language models (BLSP-Emo).")
    parser.add_argument("--version", action="version", version=f"blsp-emo {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of expected errors too (or set {DEBUG_VARIABLE}=1)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = commands.add_parser("info", help="print versions and available devices")
    info.set_defaults(handler=run_info)
    for group in COMMAND_GROUPS:
        group.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `blsp-emo` command. Expected errors (`EXPECTED_ERRORS`: bad files, options, audio,
    corrupt weights) print one line naming the file, line and field and return 2; with `--debug`
    (anywhere on the line) or BLSP_EMO_DEBUG=1 they raise with their traceback, like any other error."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")
    argv = [argument for argument in argv if argument != "--debug"]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command = next((argument for argument in argv if not argument.startswith("-")), "")
    try:
        if argv and argv[0] in training.TRAINING_COMMANDS:
            return training.run_training_command(argv[0], argv[1:])
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        return args.handler(args)
    except EXPECTED_ERRORS as error:
        if debug:
            raise
        print(f"blsp-emo {command}: {error}".replace("\n", " "), file=sys.stderr)
        return 2
