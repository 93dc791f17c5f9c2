"""A fast smoke run of `blsp-emo demo` on tiny random models and a voice-like "corpus"."""

import json
from pathlib import Path

import pytest
import soundfile
import torch
from safetensors.torch import load_file
from transformers.trainer_utils import get_last_checkpoint

from processing.errors import UserInputError
from processing.target_generation import load_targets
from trainers.cli.demo import summary
from trainers.demo.run import Demo, DemoSettings
from trainers.hub.card import render_model_card
from trainers.hub.files import checkpoint_files

from tiny_models import voice_like

EMOTIONS = ["neutral", "happy", "angry", "sad", "surprise"]
SENTENCES = {"train": ["hello world", "the lazy dog"], "validation": ["i am fine"], "test": ["good day today"]}


@pytest.fixture
def voice_corpus(tmp_path):
    folder = tmp_path / "corpus"
    for split, sentences in SENTENCES.items():
        (folder / split).mkdir(parents=True)
        rows = []
        for s, sentence in enumerate(sentences):
            for e, emotion in enumerate(EMOTIONS):
                name = f"{split}/{s}-{emotion}.wav"
                soundfile.write(folder / name, voice_like(0.75 + 0.05 * e, s * 10 + e), 16000)  # passes the speech check
                rows.append({"audio": name, "text": sentence, "emotion": emotion, "speaker": "noise:a", "sentence_id": str(s)})
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def write_distinct_stage2_targets(root) -> None:
    pairs = [(sentence, emotion) for sentences in SENTENCES.values() for sentence in sentences for emotion in EMOTIONS]
    records = [
        {"index": index, "text": text, "emotion": emotion, "target": f"{emotion} words about {text}", "truncated": False}
        for index, (text, emotion) in enumerate(pairs)
    ]
    (root / "targets_stage2").mkdir(parents=True)
    (root / "targets_stage2" / "targets-00000-of-00001.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (root / ".done-stage2_targets").touch()


def test_demo_runs_end_to_end_and_resumes(pretrained_parts, voice_corpus, tmp_path, monkeypatch):
    whisper_dir, llm_dir = pretrained_parts
    monkeypatch.chdir(tmp_path)  # a relative output folder, as `blsp-emo demo` has by default
    settings = DemoSettings(
        output="demo", encoder=str(whisper_dir), llm=str(llm_dir), corpus=str(voice_corpus),
        max_new_tokens=4, batch_size=2, stage1_steps=2, stage2_steps=2, cascade=False, lora_rank=2,
        writer=str(llm_dir), judge=str(llm_dir), helper_dtype="float32", reply_tokens=4, preference_steps=2,
    )
    # A tiny random writer continues a sentence alike in every emotion, which gives stage 3 no pairs:
    # stand in for a real writer's stage-2 targets (the step counts as done, as on a resume).
    write_distinct_stage2_targets(tmp_path / "demo")
    results = Demo(settings).run()
    assert results["test_clips"] == 5
    for model in ("stage2", "stage1_only"):
        assert 0 <= results[model]["head"]["accuracy"] <= 1
        assert results[model]["retrieval"]["clips"] + results[model]["retrieval"]["left_out_identical_targets"] == 5
    test_targets = {r["target"] for r in load_targets(tmp_path / "demo" / "targets_stage2") if r["text"] == "good day today"}
    assert results["writer_retrieval"]["sentences"] == int(len(test_targets) == 5)
    for model in ("stage2", "stage1_only"):
        assert set(results[model]["head_by_level"]) == {"as_recorded", "peak_normalized", "clips"}
        assert results[model]["sentence_retrieval"]["clips"] == 0  # one test sentence: nothing to tell apart
    assert set(results["judged"]) == {"stage2", "stage2_guarded", "stage3", "stage1_only"}
    assert results["stage3"]["head"]["confusion_matrix"] and (tmp_path / "demo" / "final_preference" / "config.json").is_file()
    assert len(json.loads((tmp_path / "demo" / "preference_log.json").read_text())) >= 2
    stage3_config = json.loads((tmp_path / "demo" / "final_preference" / "config.json").read_text())
    assert (stage3_config["lora_scope"], stage3_config["lora_rank"]) == ("audio", 8)  # fresh LoRA on the merged stage 2
    lines = summary(results, tmp_path / "demo").splitlines()
    assert lines[1].startswith(f"model:  {tmp_path / 'demo' / 'final_preference'}")  # the last model trained
    assert "stage 2 + DPO" in lines[2]  # the head line compares all three
    assert results["judged"]["stage2"]["emotion"]["clips"] == 5
    assert results["judge_calibration"]["writer_targets_emotion"]["clips"] == 5  # the test sentence, each emotion
    calibration = results["calibration"]
    assert calibration["clips"] == 5 and calibration["held_out"]["clips"] == 5
    final_config = json.loads((tmp_path / "demo" / "final" / "config.json").read_text())
    assert final_config["emotion_temperature"] == pytest.approx(calibration["temperature"])
    # The checkpoint the summary points at (stage 3's) is calibrated too; its head and encoder are stage 2's.
    assert stage3_config["emotion_temperature"] == pytest.approx(calibration["stage3"]["temperature"])
    assert calibration["stage3"]["temperature"] == pytest.approx(calibration["temperature"]) != 1.0
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "expected calibration error on the 5 held-out clips" in report and "(stage 3's, fitted alike: " in report
    warm_start = json.loads((tmp_path / "demo" / "head_warm_start.json").read_text())
    assert warm_start["clips"] > 0 and "the emotion head was fitted alone" in report
    # By default stage 2 leaves the Whisper encoder as stage 1 left it (the pretrained one).
    assert "The Whisper encoder stayed frozen in stage 2" in report
    stage1, final = (load_file(tmp_path / "demo" / name / "model.safetensors") for name in ("stage1", "final"))
    encoder = [name for name in stage1 if name.startswith("model.audio_encoder.")]
    assert encoder and all(torch.equal(stage1[name], final[name]) for name in encoder)
    assert "judge finds the reply more about its own sentence" in report and "replies that fit any sentence" in report
    assert "## What the models say, read by a judge" in report and "## Prosody, not level" in report
    assert "the LLM that wrote them" in report
    assert report.count("| stage 2 + preference (DPO) |") == 3  # SER, prosody and judged-replies tables
    assert "## Speech emotion recognition on held-out clips" in report and "transformers_modules" in report
    examples = json.loads((tmp_path / "demo" / "pipeline_examples.json").read_text())
    assert examples["rows"] and all(row["head_emotion"] is not None for row in examples["rows"])  # heard as speech
    assert examples["checkpoint"] == "final_preference" and "## The final checkpoint, `final_preference`," in report
    for image in ("stage1_curves.png", "stage2_curves.png", "eval/stage2_head_confusion.png"):
        assert (tmp_path / "demo" / image).stat().st_size > 0
    # Each stage's checkpoint carries its run's log and arguments for the model card (not pushed).
    demo = tmp_path / "demo"
    stages = [demo / "stage1", demo / "final", demo / "final_preference"]
    card = render_model_card(demo / "final_preference", "alice/emo", training_dirs=stages).text
    for stage in ("Stage 1: semantic alignment", "Stage 2: emotion alignment", "Stage 3: emotion preference alignment (DPO)"):
        assert f"### {stage}" in card
    assert "| beta | 0.1 |" in card and "| loss_type | sigmoid |" in card and "Hyper-parameters: unknown" not in card
    assert card.count("| max_steps | 2 |") == 3 and "num_train_epochs" not in card  # max_steps decides, not epochs
    assert "trainer_state.json" not in {path.name for path in checkpoint_files(demo / "final_preference")}
    assert (Path(get_last_checkpoint(str(demo / "stage1_run"))) / "training_args.json").is_file()
    timings = json.loads((tmp_path / "demo" / "timings.json").read_text())
    rerun = Demo(settings)
    rerun.run()
    assert json.loads((tmp_path / "demo" / "timings.json").read_text()) == timings  # nothing was redone


@pytest.mark.parametrize("helper", ["writer", "judge"])
def test_a_missing_writer_or_judge_is_refused_before_the_run_starts(tmp_path, helper):
    with pytest.raises(UserInputError, match="no such checkpoint folder"):
        Demo(DemoSettings.quick(str(tmp_path / "demo"), **{helper: str(tmp_path / "missing")}))
    assert not (tmp_path / "demo").exists()
