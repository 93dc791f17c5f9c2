"""Checking emotion-aware targets with a reader LLM, and the demo's use of it for stage 2."""

import json

import pytest

from trainers.cli.main import build_parser
from trainers.demo import run as demo_run
from trainers.evaluation.judge import WordChoiceJudge
from trainers.evaluation.target_check import agreeing_pairs, kept_per_emotion, read_target_emotions

from tiny_models import LABELS, FavouringModel, tiny_tokenizer

RECORDS = [
    {"text": "The bus is late.", "emotion": "sad", "target": "I miss it."},
    {"text": "The bus is late.", "emotion": "happy", "target": "Great!"},
    {"text": "It rains.", "emotion": "sad", "target": "Gloomy."},
]


def test_each_target_is_labelled_with_what_the_reader_reads():
    tokenizer = tiny_tokenizer()
    judge = WordChoiceJudge(FavouringModel(len(tokenizer), tokenizer.convert_tokens_to_ids("sad")), tokenizer, batch_size=2)
    checked = read_target_emotions(judge, RECORDS, LABELS)
    assert checked == [{"text": r["text"], "emotion": r["emotion"], "read_as": "sad"} for r in RECORDS]
    assert agreeing_pairs(checked) == {("The bus is late.", "sad"), ("It rains.", "sad")}
    assert kept_per_emotion(checked) == {"happy": {"checked": 1, "kept": 0}, "sad": {"checked": 2, "kept": 2}}


def test_the_demo_trains_stage_two_only_on_targets_read_as_their_emotion(tmp_path, monkeypatch):
    clips = [{"audio": f"{i}.wav", "text": r["text"], "emotion": r["emotion"]} for i, r in enumerate(RECORDS)]
    demo = demo_run.Demo(demo_run.DemoSettings(output=str(tmp_path), check_targets=True))
    monkeypatch.setattr(demo, "split", lambda name: clips)
    monkeypatch.setattr(demo_run, "load_targets", lambda folder: [{**r, "truncated": False} for r in RECORDS])
    checked = [{"text": r["text"], "emotion": r["emotion"], "read_as": "sad"} for r in RECORDS]
    (tmp_path / "targets_check.json").write_text(json.dumps(checked))
    kept = demo.with_targets("train", "targets_stage2", by_emotion=True, checked=True)
    assert [row["audio"] for row in kept] == ["0.wav", "2.wav"]
    assert len(demo.with_targets("train", "targets_stage2", by_emotion=True)) == 3
    (tmp_path / "targets_check.json").write_text(json.dumps([{**row, "read_as": "angry"} for row in checked]))
    with pytest.raises(RuntimeError, match="read none of its stage-2 targets.*--no-check-targets"):
        demo.with_targets("train", "targets_stage2", by_emotion=True, checked=True)


def test_the_demo_checks_only_the_training_sentences_with_its_writer(tmp_path, monkeypatch):
    tokenizer = tiny_tokenizer()
    reader = FavouringModel(len(tokenizer), tokenizer.convert_tokens_to_ids("sad"))
    reader.eval = lambda: reader
    loaded = []
    monkeypatch.setattr(demo_run, "resolve_model_spec", lambda spec: f"resolved:{spec}")
    monkeypatch.setattr(demo_run, "load_text_generator", lambda *args: loaded.append(args) or (reader, tokenizer))
    monkeypatch.setattr(demo_run, "load_config", lambda path: type("C", (), {"emotion_labels": LABELS})())
    monkeypatch.setattr(demo_run, "load_targets", lambda folder: RECORDS)
    demo = demo_run.Demo(demo_run.DemoSettings(output=str(tmp_path), writer="some-llm", check_targets=True))
    monkeypatch.setattr(demo, "split", lambda name: [{"text": "It rains.", "emotion": "sad"}] if name == "train" else [])
    demo.check_targets()
    assert loaded == [("resolved:some-llm", "bfloat16")]
    assert json.loads((tmp_path / "targets_check.json").read_text()) == [
        {"text": "It rains.", "emotion": "sad", "read_as": "sad"}
    ]


@pytest.mark.parametrize("on", [True, False])
def test_the_check_is_a_demo_step_only_when_asked(tmp_path, monkeypatch, on):
    steps = []
    demo = demo_run.Demo(demo_run.DemoSettings(output=str(tmp_path), check_targets=on))
    monkeypatch.setattr(demo, "step", lambda name, run: steps.append(name))
    monkeypatch.setattr(demo, "path", lambda name: type("P", (), {"read_text": lambda self: "{}"})())
    demo.run()
    assert ("check_targets" in steps) is on
    assert build_parser().parse_args(["demo", "--no-check-targets"]).check_targets is False
    assert steps.index("stage2_targets") < steps.index("stage2") and (not on or steps.index("check_targets") == steps.index("stage2") - 1)
