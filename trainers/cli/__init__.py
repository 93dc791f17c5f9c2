"""The `blsp-emo` command line: each subcommand a thin wrapper over one function of the other rooms."""

from trainers.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
