"""Level independence: training clips at random peak levels, and the head measured at one level."""

import numpy as np
import pytest

from processing.augmentation import RandomLevel, peak_normalize
from trainers.evaluation.level import head_accuracy_by_level, head_labels

from conftest import noise
from tiny_models import tiny_model


def test_random_level_sets_the_peak_whatever_the_input_level():
    quiet, loud = 0.01 * noise(4000, 1), 0.9 * noise(4000, 1) / np.abs(noise(4000, 1)).max()
    augment = RandomLevel(-30.0, -6.0, seed=0)
    peaks = [20 * np.log10(np.abs(augment(clip)).max()) for clip in (quiet, loud) * 50]
    assert min(peaks) >= -30.0 - 1e-4 and max(peaks) <= -6.0 + 1e-4
    # the output level says nothing about the input level
    assert abs(np.mean(peaks[0::2]) - np.mean(peaks[1::2])) < 3.0
    scaled = augment(quiet)
    np.testing.assert_allclose(scaled / np.abs(scaled).max(), quiet / np.abs(quiet).max(), atol=1e-6)


def test_peak_normalize_and_silence():
    assert 20 * np.log10(np.abs(peak_normalize(noise(1000), -3.0)).max()) == pytest.approx(-3.0, abs=1e-4)
    assert not peak_normalize(np.zeros(10, dtype=np.float32)).any()
    with pytest.raises(ValueError, match="min_dbfs"):
        RandomLevel(-1.0, -10.0)


def test_head_labels_match_the_full_forward(processor):
    model = tiny_model().eval()
    clips = [noise(6000 + 1000 * i, i) for i in range(3)]
    labels = head_labels(model, processor, clips, batch_size=2)
    for clip, label in zip(clips, labels):
        inputs = processor(text=processor.audio_token, audio=clip, sampling_rate=16000)
        logits = model(**inputs).emotion_logits
        assert label == model.config.emotion_labels[int(logits.argmax())]


def test_head_accuracy_is_reported_as_recorded_and_peak_normalized(processor):
    model = tiny_model().eval()
    rows = [{"audio": {"array": noise(6000, i) * (0.05 + 0.3 * i), "sampling_rate": 16000}, "emotion": "sad"} for i in range(3)]
    result = head_accuracy_by_level(model, processor, rows, batch_size=2)
    assert result["clips"] == 3 and 0 <= result["as_recorded"] <= 1 and 0 <= result["peak_normalized"] <= 1
