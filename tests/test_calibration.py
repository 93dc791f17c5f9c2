"""The emotion head's scores are calibrated: the expected calibration error, a fitted temperature
stored in the config, and every path that turns the head's logits into scores applying it."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from transformers import pipeline

from modeling_blsp_emo import BlspEmoConfig, BlspEmoForAudioClassification, BlspEmoProcessor
from trainers.checkpoints import save_checkpoint
from trainers.checkpoints.checksums import verify_checksums
from trainers.checkpoints.editing import set_config_fields
from trainers.cli.main import main
from trainers.evaluation import calibrate_checkpoint, expected_calibration_error, fit_temperature
from trainers.evaluation.calibration import temperature_scaled
from trainers.inference.chat import BlspEmoChat

from tiny_models import tiny_config, tiny_feature_extractor, tiny_model, tiny_tokenizer, voice_like

FIXTURE = Path(__file__).parent / "fixtures" / "tiny_checkpoint_v1"
LABELS = ["neutral", "happy", "angry", "sad", "surprise"]


# --- expected calibration error -------------------------------------------------------------------


def test_ece_of_a_hand_made_example_equals_the_hand_computation():
    probabilities = [[0.95, 0.05], [0.93, 0.07], [0.35, 0.65], [0.55, 0.45], [0.45, 0.55]]
    labels = [0, 1, 1, 1, 1]
    # Ten bins: (0.9, 1] holds 0.95 (right) and 0.93 (wrong): |0.5 - 0.94| = 0.44, 2 of 5 examples;
    # (0.6, 0.7] holds 0.65 (right): |1 - 0.65| = 0.35, 1 of 5; (0.5, 0.6] holds two 0.55, one right:
    # |0.5 - 0.55| = 0.05, 2 of 5.
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.4 * 0.44 + 0.2 * 0.35 + 0.4 * 0.05)
    # One bin: |accuracy 3/5 - mean confidence 3.63/5|.
    assert expected_calibration_error(probabilities, labels, bins=1) == pytest.approx(abs(0.6 - 0.726))


def test_ece_is_zero_for_confident_right_answers_and_takes_tensors():
    assert expected_calibration_error(torch.eye(3), torch.tensor([0, 1, 2])) == 0.0


@pytest.mark.parametrize(
    ("probabilities", "labels", "message"),
    [
        (np.zeros((0, 3)), [], "non-empty"),
        ([[0.5, 0.5], [0.4, 0.6]], [0], "expected 2 class ids"),
        ([[0.5, 0.5]], [2], r"class ids must be in 0\.\.1"),
        ([[0.5, 0.5]], [0.0], "integer class ids"),
        ([[float("nan"), 0.5]], [0], "NaN or infinite"),
        ([[3.0, -1.0]], [0], "softmax scores, not logits"),
        ([0.5, 0.5], [0], "matrix"),
    ],
)
def test_ece_refuses_bad_input(probabilities, labels, message):
    with pytest.raises(ValueError, match=message):
        expected_calibration_error(probabilities, labels)


# --- fitting the temperature ----------------------------------------------------------------------


def synthetic(scale: float, count: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits `scale` times too sharp: labels drawn from softmax(true logits), logits = true * scale."""
    rng = np.random.default_rng(seed)
    true_logits = 2.0 * rng.standard_normal((count, 5))
    probabilities = temperature_scaled(true_logits, 1.0)
    labels = (probabilities.cumsum(1) > rng.random((count, 1))).argmax(1)
    return true_logits * scale, labels


@pytest.mark.parametrize("scale", [0.5, 1.0, 3.0])
def test_fitting_recovers_a_known_temperature(scale):
    logits, labels = synthetic(scale)
    assert fit_temperature(logits, labels) == pytest.approx(scale, rel=0.05)


def test_the_fitted_temperature_lowers_the_calibration_error_of_overconfident_scores():
    logits, labels = synthetic(3.0)
    temperature = fit_temperature(logits, labels)
    before = expected_calibration_error(temperature_scaled(logits, 1.0), labels)
    after = expected_calibration_error(temperature_scaled(logits, temperature), labels)
    assert before > 0.1 and after < 0.02


def test_fitting_takes_tensors_and_refuses_bad_input():
    logits, labels = synthetic(2.0, count=500)
    assert fit_temperature(torch.from_numpy(logits).float(), torch.from_numpy(labels)) == pytest.approx(2.0, rel=0.25)
    with pytest.raises(ValueError, match="non-empty"):
        fit_temperature(np.zeros((0, 5)), [])
    with pytest.raises(ValueError, match="expected 500 class ids"):
        fit_temperature(logits, labels[:-1])
    with pytest.raises(ValueError, match="NaN or infinite"):
        fit_temperature(np.where(np.eye(500, 5) > 0, np.inf, logits), labels)


# --- the temperature in the config and the model ----------------------------------------------------


def test_temperature_defaults_to_one_and_old_checkpoints_load_with_it():
    assert tiny_config().emotion_temperature == 1.0
    assert "emotion_temperature" not in json.loads((FIXTURE / "config.json").read_text())
    assert BlspEmoConfig.from_pretrained(FIXTURE).emotion_temperature == 1.0


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_a_temperature_that_is_not_a_positive_number_is_refused(temperature):
    with pytest.raises(ValueError, match="emotion_temperature"):
        tiny_config(emotion_temperature=temperature)


def test_classifier_logits_stay_raw_and_its_probabilities_use_the_temperature(processor):
    features = processor.audio_features([voice_like(), voice_like(seed=2)])
    outputs = {}
    for temperature in (1.0, 2.5):
        torch.manual_seed(0)
        classifier = BlspEmoForAudioClassification(tiny_config(emotion_temperature=temperature)).eval()
        with torch.no_grad():
            logits = classifier(**features).logits
        outputs[temperature] = logits, classifier.emotion_probabilities(logits)
    torch.testing.assert_close(outputs[2.5][0], outputs[1.0][0], rtol=0, atol=0)
    torch.testing.assert_close(outputs[2.5][1], (outputs[1.0][0] / 2.5).softmax(-1))
    assert outputs[2.5][1].argmax(-1).tolist() == outputs[1.0][1].argmax(-1).tolist()


# --- a saved checkpoint's temperature reaches every score --------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The same tiny checkpoint twice: as saved (temperature 1) and with temperature 4 set afterwards."""
    root = tmp_path_factory.mktemp("calibrated")
    save_checkpoint(tiny_model(), BlspEmoProcessor(tiny_feature_extractor(), tiny_tokenizer()), root / "plain")
    set_config_fields(root / "plain", {"emotion_temperature": 4.0}, output=root / "hot")
    return root / "plain", root / "hot"


def scaled(scores: dict, temperature: float) -> dict:
    """Scores that softmax(logits) gave, as softmax(logits / temperature) gives them (log p = logits + const)."""
    logits = torch.log(torch.tensor(list(scores.values()), dtype=torch.float64))
    return dict(zip(scores, (logits / temperature).softmax(-1).tolist()))


def test_set_config_fields_changes_only_the_config_and_keeps_checksums_true(checkpoints):
    plain, hot = checkpoints
    assert json.loads((hot / "config.json").read_text())["emotion_temperature"] == 4.0
    assert json.loads((plain / "config.json").read_text())["emotion_temperature"] == 1.0
    assert (hot / "model.safetensors").read_bytes() == (plain / "model.safetensors").read_bytes()
    assert verify_checksums(hot)
    with pytest.raises(ValueError, match="not a BLSP-Emo config field"):
        set_config_fields(plain, {"emotion_temprature": 2.0})
    with pytest.raises(ValueError, match="emotion_temperature"):
        set_config_fields(plain, {"emotion_temperature": 0.0})
    assert json.loads((plain / "config.json").read_text())["emotion_temperature"] == 1.0


def test_pipelines_apply_the_saved_temperature_to_scores_not_labels(checkpoints):
    clips = [voice_like(), voice_like(1.2, seed=3)]
    ranked = {}
    for name, checkpoint in zip(("plain", "hot"), checkpoints):
        classify = pipeline("audio-classification", model=str(checkpoint), trust_remote_code=True)
        ranked[name] = [{item["label"]: item["score"] for item in result} for result in classify(clips, sampling_rate=16000, top_k=None)]
        talk = pipeline("audio-to-text", model=str(checkpoint), trust_remote_code=True)
        ranked[name + " chat"] = [result[0]["scores"] for result in talk(clips, sampling_rate=16000, return_emotion=True, max_new_tokens=2)]
    for plain, hot in ((ranked["plain"], ranked["hot"]), (ranked["plain chat"], ranked["hot chat"])):
        for plain_scores, hot_scores in zip(plain, hot):
            assert max(hot_scores, key=hot_scores.get) == max(plain_scores, key=plain_scores.get)
            assert max(hot_scores.values()) < max(plain_scores.values())
            assert hot_scores == pytest.approx(scaled(plain_scores, 4.0), abs=1e-5)


def test_chat_scores_use_the_temperature(processor):
    model = tiny_model()
    plain = BlspEmoChat(model, processor, max_new_tokens=2).send(audio=voice_like(), sampling_rate=16000)
    model.config.emotion_temperature = 4.0
    hot = BlspEmoChat(model, processor, max_new_tokens=2).send(audio=voice_like(), sampling_rate=16000)
    assert hot.emotion == plain.emotion and hot.scores == pytest.approx(scaled(plain.scores, 4.0), abs=1e-5)


# --- blsp-emo calibrate and calibrate_checkpoint ------------------------------------------------------


@pytest.fixture
def labelled(tmp_path) -> tuple[Path, list[dict]]:
    """Eight voice-like clips with labels, and their manifest."""
    rows = []
    for index in range(8):
        soundfile.write(tmp_path / f"{index}.wav", voice_like(1.0 + 0.1 * index, seed=index), 16000)
        rows.append({"audio": str(tmp_path / f"{index}.wav"), "emotion": LABELS[index % len(LABELS)]})
    manifest = tmp_path / "validation.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return manifest, rows


def test_calibrate_command_writes_the_temperature_and_prints_the_calibration_error(checkpoints, labelled, tmp_path, capsys):
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(checkpoints[0], checkpoint)
    assert main(["calibrate", "--model", str(checkpoint), "--manifest", str(labelled[0])]) == 0
    out = capsys.readouterr().out
    temperature = json.loads((checkpoint / "config.json").read_text())["emotion_temperature"]
    assert temperature != 1.0 and f"temperature {temperature:.3f}, fitted on 8 clips" in out
    assert "expected calibration error on them: " in out and " before, " in out and " after" in out
    assert verify_checksums(checkpoint)


def test_calibrate_command_with_output_leaves_the_checkpoint_as_it_was(checkpoints, labelled, tmp_path, capsys):
    before = (checkpoints[0] / "config.json").read_bytes()
    assert main(["calibrate", "--model", str(checkpoints[0]), "--manifest", str(labelled[0]),
                 "--output", str(tmp_path / "calibrated")]) == 0
    assert (checkpoints[0] / "config.json").read_bytes() == before
    assert json.loads((tmp_path / "calibrated" / "config.json").read_text())["emotion_temperature"] != 1.0
    assert f"written to {tmp_path / 'calibrated'}/config.json" in capsys.readouterr().out


def test_calibrate_checkpoint_reports_the_error_before_and_after_on_held_out_clips(checkpoints, labelled, tmp_path):
    result = calibrate_checkpoint(checkpoints[0], labelled[1][:5], batch_size=4, output=tmp_path / "out",
                                  held_out_rows=labelled[1][5:])
    assert set(result) == {"temperature", "ece_before", "ece_after", "clips", "held_out"}
    assert result["clips"] == 5 and result["held_out"]["clips"] == 3
    assert all(0 <= result[key] <= 1 for key in ("ece_before", "ece_after"))
    assert all(0 <= result["held_out"][key] <= 1 for key in ("ece_before", "ece_after"))
    assert math.isclose(BlspEmoConfig.from_pretrained(tmp_path / "out").emotion_temperature, result["temperature"])


def test_calibrate_refuses_bad_input_with_one_line(checkpoints, labelled, tmp_path, capsys):
    manifest, rows = labelled
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text(json.dumps({**rows[0], "emotion": "bored"}) + "\n")
    assert main(["calibrate", "--model", str(checkpoints[0]), "--manifest", str(unknown)]) == 2
    assert "bored" in capsys.readouterr().err
    assert main(["calibrate", "--model", str(tmp_path / "nope"), "--manifest", str(manifest)]) == 2
    assert "no such checkpoint folder" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file.txt").write_text("x")
    assert main(["calibrate", "--model", str(checkpoints[0]), "--manifest", str(manifest), "--output", str(tmp_path / "taken")]) == 2
    assert "not an empty folder" in capsys.readouterr().err
