"""A wheel built from the repository installs into a clean virtualenv and every entry point starts:
`blsp-emo --help`, each subcommand's `--help`, and each benchmark's `--help` (run outside the repo)."""

import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def subcommands() -> list[str]:
    """Every `blsp-emo` subcommand, read from the parser (so a new one is covered too)."""
    import argparse

    from trainers.cli.main import build_parser

    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(action.choices)


def run(*command, cwd: Path, timeout: float = 1800) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, command))}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.integration
def test_wheel_in_a_clean_virtualenv_runs_every_help(tmp_path):
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(ROOT),
        cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("blsp_emo-*.whl"))
    venv.create(tmp_path / "venv", with_pip=True)
    python = tmp_path / "venv" / "bin" / "python"
    run(python, "-m", "pip", "install", "-q", "torch==2.13.0", cwd=tmp_path)  # CPU torch first (see setup.sh)
    run(python, "-m", "pip", "install", "-q", f"{wheel}[train]", cwd=tmp_path)
    # Every sub-package and the card template are in the wheel.
    listing = run(python, "-c", "import trainers.hub.card as c; print(c.CARD_TEMPLATE.is_file())", cwd=tmp_path)
    assert listing.stdout.strip() == "True"
    blsp_emo = tmp_path / "venv" / "bin" / "blsp-emo"
    assert "generate-targets" in run(blsp_emo, "--help", cwd=tmp_path).stdout
    commands = subcommands()
    assert {"demo", "train-semantic", "push", "verify-checksums"} <= set(commands)
    for command in commands:
        assert "usage:" in run(blsp_emo, command, "--help", cwd=tmp_path).stdout.lower(), command
    for benchmark in sorted((ROOT / "benchmarks").glob("*.py")):
        assert "usage:" in run(python, benchmark, "--help", cwd=tmp_path).stdout, benchmark.name
