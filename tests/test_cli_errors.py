"""`blsp-emo` on bad input: one line naming the file, 1-based line and field, exit code 2; `--debug`
(or BLSP_EMO_DEBUG=1) shows the traceback; unexpected errors keep theirs. Also the failures found at
evaluation time: NaN weights, unreadable clips, half-written and corrupted checkpoints."""

import json
import shutil

import pytest
import soundfile
import torch
from safetensors.torch import load_file, save_file

from processing.errors import UserInputError
from trainers.cli.main import main

from tiny_models import voice_like


def write_jsonl(path, rows) -> str:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return str(path)


def fails(capsys, argv: list[str]) -> str:
    """Run the command; assert exit code 2 and a one-line error (after any progress bars) without a
    traceback; return that line."""
    assert main(argv) == 2
    stderr = capsys.readouterr().err
    error = stderr.strip().splitlines()[-1]
    assert error.startswith(f"blsp-emo {argv[0]}: ") and "Traceback" not in stderr, stderr
    return error


@pytest.fixture
def clips(tmp_path):
    for index in range(3):
        soundfile.write(tmp_path / f"{index}.wav", voice_like(1, index), 16000)  # passes evaluate-ser's speech check
    return tmp_path


def ser(checkpoint, data, output, *extra) -> list[str]:
    return ["evaluate-ser", "--model", str(checkpoint), "--data", str(data), "--output", str(output), *extra]


def targets_command(checkpoint, data, output, *extra) -> list[str]:
    return ["generate-targets", "--model", str(checkpoint), "--data", str(data), "--output", str(output),
            "--batch-size", "2", "--max-new-tokens", "2", *extra]


# --- manifests ---------------------------------------------------------------------------------


def test_missing_manifest(saved_checkpoint, tmp_path, capsys):
    error = fails(capsys, ser(saved_checkpoint, tmp_path / "nope.jsonl", tmp_path / "out"))
    assert error == f"blsp-emo evaluate-ser: {tmp_path / 'nope.jsonl'}: no such manifest file"


def test_empty_manifest(saved_checkpoint, tmp_path, capsys):
    data = write_jsonl(tmp_path / "empty.jsonl", ["", "  "])
    assert fails(capsys, ser(saved_checkpoint, data, tmp_path / "out")).endswith("empty.jsonl: the manifest has no rows")


def test_line_that_is_not_json_is_named_by_its_1_based_line(saved_checkpoint, clips, capsys):
    data = write_jsonl(clips / "bad.jsonl", [{"audio": "0.wav", "emotion": "sad"}, "", "{oops"])
    assert "bad.jsonl:3: not valid JSON" in fails(capsys, ser(saved_checkpoint, data, clips / "out"))


def test_missing_field(saved_checkpoint, clips, capsys):
    data = write_jsonl(clips / "m.jsonl", [{"audio": "0.wav"}])
    assert "m.jsonl:1: missing field(s) ['emotion']" in fails(capsys, ser(saved_checkpoint, data, clips / "out"))


def test_null_text(saved_checkpoint, clips, capsys):
    data = write_jsonl(clips / "n.jsonl", [{"audio": "0.wav", "text": "hello"}, {"audio": "1.wav", "text": None}])
    assert "n.jsonl:2: field 'text': is null" in fails(capsys, targets_command(saved_checkpoint, data, clips / "t"))


def test_unknown_label_is_named_by_line(saved_checkpoint, clips, capsys):
    data = write_jsonl(clips / "l.jsonl", [{"audio": "0.wav", "emotion": "sad"}, "", {"audio": "1.wav", "emotion": "fru"}])
    error = fails(capsys, ser(saved_checkpoint, data, clips / "out"))
    assert "l.jsonl:3: field 'emotion': label 'fru' is not one of" in error and "--label-map fru=angry" in error


def test_bad_label_map_syntax(saved_checkpoint, clips, capsys):
    data = write_jsonl(clips / "ok.jsonl", [{"audio": "0.wav", "emotion": "sad"}])
    error = fails(capsys, ser(saved_checkpoint, data, clips / "out", "--label-map", "fru"))
    assert "field '--label-map': 'fru' is not RAW=LABEL" in error


# --- audio found missing when the data opens -----------------------------------------------------


def test_missing_audio_is_found_when_the_manifest_opens(saved_checkpoint, clips, capsys):
    rows = [{"audio": "0.wav", "text": "hello"}, {"audio": "gone.wav", "text": "world"}, {"audio": "1.wav", "text": "dog"}]
    data = write_jsonl(clips / "a.jsonl", rows)
    error = fails(capsys, targets_command(saved_checkpoint, data, clips / "t"))
    assert f"a.jsonl:2: field 'audio': audio file not found: {clips / 'gone.wav'} (1 of 3 rows" in error
    assert not (clips / "t").exists() or not list((clips / "t").glob("*.jsonl"))


def test_skip_bad_audio_drops_those_rows_with_a_count(saved_checkpoint, clips, capsys, caplog):
    rows = [{"audio": "0.wav", "text": "hello"}, {"audio": "gone.wav", "text": "world"}, {"audio": "1.wav", "text": "dog"}]
    data = write_jsonl(clips / "a.jsonl", rows)
    assert main(targets_command(saved_checkpoint, data, clips / "t", "--skip-bad-audio")) == 0
    assert "2 targets" in capsys.readouterr().out
    assert "skipped 1 of 3 rows with unusable audio" in caplog.text


def test_undecodable_audio_is_found_on_demand(saved_checkpoint, clips, capsys):
    (clips / "junk.wav").write_bytes(b"RIFF not really a wav file")
    data = write_jsonl(clips / "d.jsonl", [{"audio": "0.wav", "text": "hello"}, {"audio": "junk.wav", "text": "world"}])
    error = fails(capsys, targets_command(saved_checkpoint, data, clips / "t", "--check-audio", "decode"))
    assert "d.jsonl:2: field 'audio':" in error and "junk.wav" in error and "could not decode" in error


# --- targets folders and training -----------------------------------------------------------------


def train_command(name, checkpoint, targets, output) -> list[str]:
    return [name, "--model", str(checkpoint), "--targets", str(targets), "--output_dir", str(output), "--max_steps", "1",
            "--report_to", "none", "--use_cpu"]


def test_missing_and_empty_targets_folder(saved_checkpoint, tmp_path, capsys):
    error = fails(capsys, train_command("train-semantic", saved_checkpoint, tmp_path / "none", tmp_path / "run"))
    assert error.endswith(f"{tmp_path / 'none'}: no such targets folder")
    (tmp_path / "empty").mkdir()
    error = fails(capsys, train_command("train-semantic", saved_checkpoint, tmp_path / "empty", tmp_path / "run"))
    assert "empty: no targets-*-of-*.jsonl files" in error


def test_stage_1_targets_given_to_train_emotion(saved_checkpoint, clips, capsys):
    (clips / "stage1").mkdir()
    write_jsonl(clips / "stage1" / "targets-00000-of-00001.jsonl",
                [{"audio": str(clips / "0.wav"), "text": "hello", "index": 0, "target": "world", "truncated": False}])
    error = fails(capsys, train_command("train-emotion", saved_checkpoint, clips / "stage1", clips / "run"))
    assert "targets-00000-of-00001.jsonl:1: field 'emotion': missing (targets written without --emotion?" in error


def test_training_targets_with_missing_audio(saved_checkpoint, clips, capsys):
    (clips / "t").mkdir()
    write_jsonl(clips / "t" / "targets-00000-of-00001.jsonl",
                [{"audio": str(clips / "gone.wav"), "text": "hello", "index": 0, "target": "world", "truncated": False}])
    error = fails(capsys, train_command("train-semantic", saved_checkpoint, clips / "t", clips / "run"))
    assert "targets-00000-of-00001.jsonl:1: field 'audio': audio file not found" in error


# --- model and output paths ---------------------------------------------------------------------


def test_model_path_that_does_not_exist(clips, capsys):
    data = write_jsonl(clips / "ok.jsonl", [{"audio": "0.wav", "emotion": "sad"}])
    error = fails(capsys, ser(clips / "no_model", data, clips / "out"))
    assert error.endswith(f"{clips / 'no_model'}: no such checkpoint folder")


def test_model_path_that_is_not_a_checkpoint(clips, tmp_path, capsys):
    data = write_jsonl(clips / "ok.jsonl", [{"audio": "0.wav", "emotion": "sad"}])
    assert fails(capsys, ser(clips, data, clips / "out")).endswith("not a checkpoint: no config.json in this folder")
    (tmp_path / "llm").mkdir()
    (tmp_path / "llm" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert "not a BLSP-Emo checkpoint (model_type='llama')" in fails(capsys, ser(tmp_path / "llm", data, clips / "out"))


def test_output_path_that_is_a_file(saved_checkpoint, clips, capsys):
    data = write_jsonl(clips / "ok.jsonl", [{"audio": "0.wav", "emotion": "sad"}])
    (clips / "taken").write_text("x")
    error = fails(capsys, ser(saved_checkpoint, data, clips / "taken"))
    assert error.endswith(f"{clips / 'taken'}: is a file, expected an output folder (or a path where one can be created)")
    error = fails(capsys, targets_command(saved_checkpoint, write_jsonl(clips / "t.jsonl", [{"audio": "0.wav", "text": "hi"}]),
                                          clips / "taken"))
    assert "is a file, expected an output folder" in error


# --- --debug, and errors nobody expected ---------------------------------------------------------


def test_debug_flag_and_environment_variable_show_the_traceback(tmp_path, monkeypatch):
    argv = ser(tmp_path / "m", tmp_path / "nope.jsonl", tmp_path / "out")
    with pytest.raises(UserInputError, match="no such"):
        main(["--debug", *argv])
    monkeypatch.setenv("BLSP_EMO_DEBUG", "1")
    with pytest.raises(UserInputError, match="no such"):
        main(argv)


def test_unexpected_errors_keep_their_traceback(saved_checkpoint, clips, monkeypatch):
    import trainers.evaluation

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(trainers.evaluation, "evaluate_ser", broken)
    data = write_jsonl(clips / "ok.jsonl", [{"audio": "0.wav", "emotion": "sad"}])
    with pytest.raises(RuntimeError, match="a bug"):
        main(ser(saved_checkpoint, data, clips / "out"))


# --- corrupt checkpoints and unreadable clips at evaluation time --------------------------------------


def checkpoint_with(saved_checkpoint, tmp_path, change) -> str:
    folder = tmp_path / "checkpoint"
    shutil.copytree(saved_checkpoint, folder)
    weights = load_file(folder / "model.safetensors")
    change(weights)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return str(folder)


@pytest.mark.parametrize("weight, output", [
    ("emotion_head.weight", "emotion head logits"),
    ("model.language_model.norm.weight", "raw logits of the answers to the SER query"),
])
def test_nan_in_a_weight_fails_evaluation_instead_of_becoming_a_label(saved_checkpoint, clips, capsys, weight, output):
    checkpoint = checkpoint_with(saved_checkpoint, clips, lambda weights: weights[weight].view(-1)[0].fill_(float("nan")))
    data = write_jsonl(clips / "ok.jsonl", [{"audio": f"{i}.wav", "emotion": "sad"} for i in range(3)])
    error = fails(capsys, ser(checkpoint, data, clips / "out"))
    assert f"{output}: " in error and "NaN" in error and "corrupt" in error
    assert not (clips / "out" / "predictions.jsonl").exists()


def test_evaluate_ser_skips_unreadable_clips_with_a_count(saved_checkpoint, clips, capsys):
    (clips / "junk.wav").write_bytes(b"RIFF not really a wav file")
    rows = [{"audio": "0.wav", "emotion": "sad"}, {"audio": "junk.wav", "emotion": "happy"}, {"audio": "1.wav", "emotion": "angry"}]
    data = write_jsonl(clips / "e.jsonl", rows)
    assert main(ser(saved_checkpoint, data, clips / "out", "--batch-size", "2")) == 0
    assert "skipped 1 of 3 clips that could not be loaded" in capsys.readouterr().out
    summary = json.loads((clips / "out" / "ser_metrics.json").read_text())
    assert summary["num_examples"] == 2 and summary["unreadable"] == 1
    predictions = [json.loads(line) for line in (clips / "out" / "predictions.jsonl").read_text().splitlines()]
    assert "junk.wav" in predictions[1]["error"] and "head" in predictions[0] and "head" in predictions[2]


def test_half_written_checkpoint_names_the_file(saved_checkpoint, clips, capsys):
    folder = clips / "half"
    shutil.copytree(saved_checkpoint, folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    manifest = write_jsonl(clips / "ok.jsonl", [{"audio": "0.wav", "emotion": "sad"}])
    error = fails(capsys, ser(folder, manifest, clips / "out"))
    assert f"{folder / 'model.safetensors'}: cannot load the weights" in error


def test_config_edited_to_another_head_shape_is_named(saved_checkpoint, clips, capsys):
    folder = clips / "edited"
    shutil.copytree(saved_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    config["emotion_pooling"] = "encoder_stats"  # the saved head reads the adapter's mean: another shape
    (folder / "config.json").write_text(json.dumps(config))
    manifest = write_jsonl(clips / "ok.jsonl", [{"audio": "0.wav", "emotion": "sad"}])
    error = fails(capsys, ser(folder, manifest, clips / "out"))
    assert f"{folder}: the weights' shapes do not match config.json" in error


def test_checksums_catch_flipped_bytes_when_asked(clips, capsys):
    from modeling_blsp_emo import BlspEmoProcessor
    from trainers.checkpoints import save_checkpoint

    from tiny_models import tiny_feature_extractor, tiny_model, tiny_tokenizer

    folder = save_checkpoint(tiny_model(), BlspEmoProcessor(tiny_feature_extractor(), tiny_tokenizer()), clips / "ckpt")
    assert main(["verify-checksums", str(folder)]) == 0
    listed = json.loads((folder / "checksums.json").read_text())["files"]
    assert {"model.safetensors", "config.json", "modeling_blsp_emo.py", "tokenizer.json"} <= set(listed)
    weights = bytearray((folder / "model.safetensors").read_bytes())
    header = 8 + int.from_bytes(weights[:8], "little")
    for position in range(header, len(weights), 997):  # the data section only: the file still loads
        weights[position] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(weights))
    assert load_file(folder / "model.safetensors")  # corrupt, yet loadable
    error = fails(capsys, ["verify-checksums", str(folder)])
    assert error.endswith(f"{folder / 'model.safetensors'}: SHA-256 differs from checksums.json (changed or corrupt since it was saved)")
    assert "SHA-256 differs" in fails(capsys, ["push", "--model", str(folder), "--repo-id", "a/b", "--verify-checksums", "--dry-run"])


def test_nan_check_names_counts():
    from modeling_blsp_emo.numerics import NonFiniteOutputError, check_finite

    values = torch.tensor([1.0, float("nan"), float("inf"), 1e38])
    with pytest.raises(NonFiniteOutputError, match=r"head: 1 NaN and 1 infinite value\(s\) among 4"):
        check_finite(values, "head")
    assert check_finite(torch.tensor([-1e30, 0.0]), "ok") is not None


def test_train_preference_without_trl_names_the_extra_and_still_has_help(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "trl", None)  # as if trl were not installed
    message = fails(capsys, ["train-preference", "--model", "m", "--manifest", "x.jsonl", "--targets", "t",
                             "--output_dir", str(tmp_path / "out")])
    assert "pip install 'blsp-emo[preference]'" in message
    with pytest.raises(SystemExit) as exit_info:
        main(["train-preference", "--help"])
    assert exit_info.value.code == 0 and "--rejected_per_clip" in capsys.readouterr().out
