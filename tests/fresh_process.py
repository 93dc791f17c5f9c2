"""Run Python in a process that has never imported this package (as a Hub user would)."""

import json
import os
import subprocess
import sys
from pathlib import Path


def run_isolated(code: str, tmp_path: Path) -> dict:
    """Run `code` with `python -I` from an empty directory, a private HF_HOME and no network; the code
    prints one JSON object on its last stdout line, which is returned."""
    workdir = tmp_path / "isolated"
    workdir.mkdir(exist_ok=True)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    result = subprocess.run(
        [sys.executable, "-I", "-c", code], cwd=workdir, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
