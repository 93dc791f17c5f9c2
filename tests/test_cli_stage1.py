"""`blsp-emo generate-targets` and `train-semantic` from the command line, in one and two processes."""

import json
import os
import subprocess
import sys

import pytest
import soundfile

from processing.target_generation import load_targets
from trainers.hub.card import render_model_card

from conftest import noise

TEXTS = ["hello world", "the quick brown fox", "i am fine", "the lazy dog", "good day today"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    rows = []
    for index, text in enumerate(TEXTS):
        soundfile.write(folder / f"{index}.wav", noise(6000 + 2000 * index, index), 16000)
        rows.append({"audio": f"{index}.wav", "text": text})
    (folder / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder / "train.jsonl"


def run(*args: str, processes: int = 1) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "trainers.cli"]
    if processes > 1:
        # accelerate 1.x's `--cpu` launches a single process; `--multi_gpu` starts several, and the
        # command's own --cpu / --use_cpu makes them a CPU process group.
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                    "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "trainers.cli"]
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*launcher, *args], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_version_and_info():
    assert run("--version").stdout.strip().startswith("blsp-emo ")
    assert "transformers" in run("info").stdout


def test_generate_targets_in_two_processes_matches_one(manifest, saved_checkpoint, tmp_path):
    common = ["--model", str(saved_checkpoint), "--data", str(manifest), "--batch-size", "2", "--max-new-tokens", "4"]
    single = run("generate-targets", *common, "--output", str(tmp_path / "one"))
    assert f"{len(TEXTS)} targets" in single.stdout
    run("generate-targets", *common, "--output", str(tmp_path / "two"), "--cpu", processes=2)
    assert sorted(p.name for p in (tmp_path / "two").glob("*.jsonl")) == [
        "targets-00000-of-00002.jsonl", "targets-00001-of-00002.jsonl"
    ]
    one, two = load_targets(tmp_path / "one"), load_targets(tmp_path / "two")
    assert [(r["index"], r["target"]) for r in one] == [(r["index"], r["target"]) for r in two]


def test_train_semantic_in_two_processes_saves_a_loadable_checkpoint(manifest, saved_checkpoint, tmp_path):
    run("generate-targets", "--model", str(saved_checkpoint), "--data", str(manifest), "--max-new-tokens", "4",
        "--output", str(tmp_path / "targets"))
    output = tmp_path / "stage1"
    run("train-semantic", "--model", str(saved_checkpoint), "--targets", str(tmp_path / "targets"),
        "--output_dir", str(output), "--max_steps", "2", "--per_device_train_batch_size", "2",
        "--learning_rate", "1e-3", "--report_to", "none", "--use_cpu", "--save_strategy", "no", processes=2)
    from transformers import AutoModel

    model = AutoModel.from_pretrained(output, trust_remote_code=True)
    base = AutoModel.from_pretrained(saved_checkpoint, trust_remote_code=True)
    changed = [name for (name, a), (_, b) in zip(model.named_parameters(), base.named_parameters()) if not a.equal(b)]
    assert changed and all(name.startswith("model.adapter.") for name in changed)
    assert (output / "processor_config.json").is_file() and (output / "pipeline_blsp_emo.py").is_file()
    card = render_model_card(output, "alice/emo").text  # the run's log and arguments, written once beside it
    assert "### Stage 1: semantic alignment" in card and "| learning_rate | 0.001 |" in card
