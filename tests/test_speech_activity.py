"""Input without speech (silence, noise, tones, music) is said to be so, not given an emotion."""

import json
import shutil
import subprocess

import numpy as np
import pytest
import soundfile
from transformers import pipeline

from modeling_blsp_emo.audio_loading import load_audio
from modeling_blsp_emo.speech_activity import SpeechActivity, has_speech, measure_speech
from trainers.evaluation.ser import evaluate_ser, predict_emotions
from trainers.inference.chat import BlspEmoChat
from trainers.inference.web_app import status_line, user_bubble

from conftest import noise
from tiny_models import tiny_model, voice_like

SR = 16000


def seconds(duration: float) -> np.ndarray:
    return np.arange(int(duration * SR)) / SR


def at_dbfs(waveform: np.ndarray, dbfs: float) -> np.ndarray:
    return (waveform * 10 ** (dbfs / 20) / np.sqrt(np.mean(waveform**2))).astype(np.float32)


def harmonic(frequency: float, time: np.ndarray, harmonics: int = 6) -> np.ndarray:
    return sum(np.sin(2 * np.pi * k * frequency * time) / k for k in range(1, harmonics + 1))


def pink_noise(num_samples: int, seed: int = 0) -> np.ndarray:
    spectrum = np.fft.rfft(np.random.default_rng(seed).standard_normal(num_samples))
    return np.fft.irfft(spectrum / np.sqrt(np.maximum(np.arange(len(spectrum)), 1)), num_samples)


def melody(notes: list[float], note_seconds: float = 0.3, gap_seconds: float = 0.15) -> np.ndarray:
    parts = []
    for frequency in notes:
        note = harmonic(frequency, seconds(note_seconds)) * np.exp(-3 * seconds(note_seconds))
        parts += [note, np.zeros(int(gap_seconds * SR))]
    return np.concatenate(parts)


def sweep(start_hz: float, end_hz: float, duration: float = 3.0, harmonics: int = 1) -> np.ndarray:
    time = seconds(duration)
    phase = 2 * np.pi * (start_hz * time + (end_hz - start_hz) * time**2 / (2 * duration))
    return sum(np.sin(k * phase) / k for k in range(1, harmonics + 1))


NOT_SPEECH = {
    "silence": lambda: np.zeros(3 * SR, dtype=np.float32),
    **{f"white noise {db} dBFS": (lambda db=db: at_dbfs(noise(3 * SR), db)) for db in (-60, -35, -20, -6)},
    **{f"pink noise {db} dBFS": (lambda db=db: at_dbfs(pink_noise(3 * SR), db)) for db in (-50, -20)},
    "noise in bursts": lambda: at_dbfs(noise(3 * SR) * (np.sin(2 * np.pi * 3 * seconds(3)) > 0.3), -20),
    "tests' stand-in clip (noise)": lambda: noise(24000),
    **{f"tone {hz} Hz": (lambda hz=hz: at_dbfs(np.sin(2 * np.pi * hz * seconds(3)), -20)) for hz in (100, 440, 3000)},
    "C major chord": lambda: at_dbfs(sum(harmonic(hz, seconds(3)) for hz in (261.6, 329.6, 392.0)), -20),
    "beeps": lambda: at_dbfs(np.sin(2 * np.pi * 1000 * seconds(3)) * (np.sin(2 * np.pi * 2 * seconds(3)) > 0), -20),
    "sweep 100-4000 Hz": lambda: at_dbfs(sweep(100, 4000), -20),
    "harmonic sweep 80-400 Hz": lambda: at_dbfs(sweep(80, 400, harmonics=6), -20),
    "melody of plucked notes": lambda: at_dbfs(melody([220, 330, 262, 392, 294, 440]), -20),
}


@pytest.mark.parametrize("name", NOT_SPEECH)
def test_silence_noise_tones_and_music_have_no_speech(name):
    activity = measure_speech(NOT_SPEECH[name]())
    assert not activity.has_speech, activity
    assert activity.speech_seconds < 0.06


def tts(command: list[str], tmp_path) -> np.ndarray:
    if shutil.which(command[0]) is None:
        pytest.skip(f"{command[0]} is not installed")
    path = tmp_path / "speech.wav"
    subprocess.run([*command, str(path)], check=True, capture_output=True)
    return load_audio(str(path))


SENTENCES = ("Front center.", "I can't believe you did that again!", "Please call me back when you get this.")


@pytest.mark.parametrize("sentence", SENTENCES)
@pytest.mark.parametrize("voice", ["en", "en-us+f2", "en-gb-scotland+m5"])
def test_espeak_speech_has_speech(voice, sentence, tmp_path):
    assert has_speech(tts(["espeak-ng", "-v", voice, sentence, "-w"], tmp_path))


@pytest.mark.parametrize("sentence", SENTENCES)
@pytest.mark.parametrize("voice", ["kal", "slt", "awb"])
def test_flite_speech_has_speech(voice, sentence, tmp_path):
    assert has_speech(tts(["flite", "-voice", voice, "-t", sentence, "-o"], tmp_path))


def test_speech_in_noise_quiet_speech_and_speech_in_a_long_silence_have_speech(tmp_path):
    speech = tts(["espeak-ng", "-v", "en", "Hello, how are you today?", "-w"], tmp_path)
    padded = np.concatenate([np.zeros(SR // 2), speech, np.zeros(SR // 2)])
    assert has_speech(at_dbfs(padded, -25) + at_dbfs(noise(len(padded)), -35))  # 10 dB SNR
    assert has_speech(at_dbfs(padded, -50))
    assert has_speech(np.concatenate([np.zeros(14 * SR), speech, np.zeros(14 * SR)]))


def test_measure_speech_reports_seconds_and_fraction_and_takes_tensors():
    import torch

    activity = measure_speech(torch.from_numpy(voice_like(1.5)))
    assert isinstance(activity, SpeechActivity) and activity.has_speech
    assert 0.1 < activity.speech_seconds < 1.5
    assert 0 < activity.speech_fraction < 1
    assert measure_speech(np.zeros(400)) == SpeechActivity(False, 0.0, 0.0)  # shorter than one frame


# The wired paths, on the tiny checkpoint.


@pytest.fixture(scope="module")
def audio_to_text(saved_checkpoint):
    return pipeline("audio-to-text", model=str(saved_checkpoint), trust_remote_code=True)


# What the pipelines are given by default (no `detect_speech` argument): silence, noise and a music-like tone.
NO_SPEECH_INPUTS = {
    "silence": lambda: np.zeros(SR, dtype=np.float32),
    "noise": lambda: noise(24000),
    "melody": lambda: at_dbfs(melody([220, 330, 262, 392]), -20),
}


@pytest.mark.parametrize("name", NO_SPEECH_INPUTS)
def test_audio_to_text_pipeline_answers_no_speech_by_default(audio_to_text, name):
    results = audio_to_text([voice_like(), NO_SPEECH_INPUTS[name]()], sampling_rate=SR, max_new_tokens=3)
    assert isinstance(results[0][0]["generated_text"], str) and "no_speech" not in results[0][0]
    assert results[1] == [{"generated_text": None, "no_speech": True}]


def test_audio_to_text_emotion_mode_withholds_the_emotion(audio_to_text):
    result = audio_to_text(noise(24000), sampling_rate=SR, return_emotion=True, max_new_tokens=3)
    assert result == [{"generated_text": None, "emotion": None, "scores": None, "ser_answer": None, "no_speech": True}]
    spoken = audio_to_text(voice_like(), sampling_rate=SR, return_emotion=True, max_new_tokens=3)[0]
    assert spoken["emotion"] in spoken["scores"] and isinstance(spoken["generated_text"], str)


def test_audio_to_text_with_detect_speech_false_answers_noise_as_speech(audio_to_text):
    result = audio_to_text(noise(24000), sampling_rate=SR, detect_speech=False, return_emotion=True, max_new_tokens=3)
    assert result[0]["emotion"] is not None and "no_speech" not in result[0]


@pytest.mark.parametrize("name", NO_SPEECH_INPUTS)
def test_audio_classification_pipeline_gives_no_label_without_speech_by_default(saved_checkpoint, name):
    classify = pipeline("audio-classification", model=str(saved_checkpoint), trust_remote_code=True)
    speech, other = classify([voice_like(), NO_SPEECH_INPUTS[name]()], sampling_rate=SR, top_k=2)
    assert [item["label"] is not None for item in speech] == [True, True]
    assert other == [{"label": None, "score": None, "no_speech": True}]
    assert classify(noise(24000), sampling_rate=SR, detect_speech=False, top_k=1)[0]["label"] is not None


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_chat_turn_without_speech_has_no_emotion_and_says_so(model, processor):
    chat = BlspEmoChat(model, processor, max_new_tokens=3)  # checks by default
    turn = chat.send(audio=noise(24000), sampling_rate=SR)
    assert turn.no_speech and turn.emotion is None and turn.scores is None
    spoken = chat.send(audio=voice_like(), sampling_rate=SR)
    assert not spoken.no_speech and spoken.emotion is not None
    assert "no speech heard" in status_line(turn) and "no speech heard" not in status_line(spoken)
    assert "no speech heard" in user_bubble(None, True, turn)
    unchecked = BlspEmoChat(model, processor, max_new_tokens=3, detect_speech=False).send(audio=noise(24000), sampling_rate=SR)
    assert not unchecked.no_speech and unchecked.emotion is not None


def test_ser_predictions_mark_clips_without_speech_and_count_them(model, processor, tmp_path):
    clips = [{"array": voice_like(), "sampling_rate": SR}, {"array": noise(24000), "sampling_rate": SR}]
    predictions = predict_emotions(model, processor, clips, max_new_tokens=3, detect_speech=True)
    assert predictions[0]["head"] is not None and "no_speech" not in predictions[0]
    assert predictions[1] == {
        "answer": None, "parsed": None, "head": None, "head_scores": None, "head_logits": None, "no_speech": True
    }

    labels = model.config.emotion_labels
    for index, clip in enumerate((voice_like(seed=1), noise(24000), np.zeros(SR, dtype=np.float32))):
        soundfile.write(tmp_path / f"{index}.wav", clip, SR)
    rows = [{"audio": str(tmp_path / f"{index}.wav"), "emotion": labels[0]} for index in range(3)]
    metrics = evaluate_ser(model, processor, rows, tmp_path / "out", batch_size=2, detect_speech=True)
    assert metrics["head"]["no_speech"] == metrics["generative"]["no_speech"] == 2
    assert (tmp_path / "out" / "predictions.jsonl").read_text().count('"no_speech": true') == 2


def test_evaluate_ser_command_checks_for_speech_unless_told_not_to(saved_checkpoint, tmp_path, capsys):
    from trainers.cli.main import main

    for index, clip in enumerate((voice_like(), noise(24000), np.zeros(SR, dtype=np.float32))):
        soundfile.write(tmp_path / f"{index}.wav", clip, SR)
    (tmp_path / "test.jsonl").write_text("".join(f'{{"audio": "{index}.wav", "emotion": "sad"}}\n' for index in range(3)))
    command = ["evaluate-ser", "--model", str(saved_checkpoint), "--data", str(tmp_path / "test.jsonl"), "--batch-size", "3"]
    assert main([*command, "--output", str(tmp_path / "checked")]) == 0
    assert "no speech heard in 2 of 3 clips" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "checked" / "ser_metrics.json").read_text())["metrics"]
    assert metrics["no_speech"] == 2 and metrics["unanswered"] == 2
    assert main([*command, "--output", str(tmp_path / "unchecked"), "--no-detect-speech"]) == 0
    metrics = json.loads((tmp_path / "unchecked" / "ser_metrics.json").read_text())["metrics"]
    assert metrics["no_speech"] == 0 and metrics["unanswered"] == 0
