"""Run Python in a process that has never imported this package (as a Hub user would)."""

import json
import os
import subprocess
import sys
from pathlib import Path


def run_isolated(code: str, tmp_path: Path, env: dict[str, str | None] | None = None) -> dict:
    """Run `code` with `python -I` from an empty directory, a private HF_HOME and no network; the code
    prints one JSON object on its last stdout line, which is returned. `env` overrides environment
    variables last (None removes one), e.g. `{"HF_HUB_OFFLINE": None, "HF_ENDPOINT": url}`."""
    workdir = tmp_path / "isolated"
    workdir.mkdir(exist_ok=True)
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    environment.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    for key, value in (env or {}).items():
        if value is None:
            environment.pop(key, None)
        else:
            environment[key] = value
    result = subprocess.run(
        [sys.executable, "-I", "-c", code], cwd=workdir, env=environment, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
