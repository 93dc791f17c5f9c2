"""Load a pushed repo back in a fresh process, as a Hub user would, and run one clip."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from huggingface_hub import get_token

from modeling_blsp_emo import PIPELINE_TASK
from modeling_blsp_emo.speech_lengths import SAMPLING_RATE
from trainers.hub.errors import HubPublishError

VERIFY_CODE = r"""
import json, sys
import numpy as np
from transformers import pipeline

repo_id, revision, task, rate = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
pipe = pipeline(task, model=repo_id, revision=revision, trust_remote_code=True)
time = np.arange(rate) / rate
clip = (0.3 * np.sin(2 * np.pi * 220 * time) * np.hanning(rate)).astype(np.float32)
# A tone is no speech: detect_speech=False makes the model run on it all the same.
result = pipe(clip, sampling_rate=rate, max_new_tokens=8, return_emotion=True, detect_speech=False)[0]
print(json.dumps({
    "generated_text": result["generated_text"], "emotion": result["emotion"],
    "pipeline_class": type(pipe).__module__ + "." + type(pipe).__qualname__,
    "package_imported": any(name.split(".")[0] == "modeling_blsp_emo" for name in sys.modules),
}))
"""


def verify_repo(repo_id: str, revision: str = "main", *, token: str | None = None, timeout: float = 3600) -> dict:
    """Load `repo_id` at `revision` in a fresh Python (`-I`, empty working folder, empty `HF_HOME`)
    that never imports this package, run the `audio-to-text` pipeline on a one-second clip, and return
    what it produced. Raises `HubPublishError` when loading or running fails."""
    from huggingface_hub import constants

    token = token or get_token()
    with tempfile.TemporaryDirectory(prefix="blsp_emo_verify_") as directory:
        env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        env.update(HF_HOME=str(Path(directory) / "hf_home"), HF_ENDPOINT=constants.ENDPOINT, TRANSFORMERS_VERBOSITY="error")
        if token:
            env["HF_TOKEN"] = token
        try:
            completed = subprocess.run(
                [sys.executable, "-I", "-c", VERIFY_CODE, repo_id, revision, PIPELINE_TASK, str(SAMPLING_RATE)], cwd=directory, env=env,
                capture_output=True, text=True, timeout=timeout,
            )
        except subprocess.TimeoutExpired as error:
            raise HubPublishError(f"verification of {repo_id}@{revision} did not finish in {timeout:.0f} s") from error
    if completed.returncode != 0:
        tail = completed.stderr[-3000:].replace(token, "***") if token else completed.stderr[-3000:]
        raise HubPublishError(f"{repo_id}@{revision} does not load and run in a fresh process:\n{tail}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    if result["package_imported"] or not result["pipeline_class"].startswith("transformers_modules."):
        raise HubPublishError(f"{repo_id}@{revision}: the pipeline did not come from the repo's own code ({result['pipeline_class']})")
    return result
