"""Linear probing of the emotion head before stage 2."""

import numpy as np
import pytest
import soundfile as sf
import torch

from processing.errors import UserInputError
from trainers.training.head_warm_start import fit_linear_head, pooled_speech_embeddings, warm_start_emotion_head

from conftest import noise
from tiny_models import tiny_model


def test_fit_linear_head_separates_separable_classes():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=generator) * 3
    label_ids = torch.arange(60) % 3
    features = centres[label_ids] + torch.randn(60, 8, generator=generator) * 0.3
    weight = fit_linear_head(features, label_ids, 3)
    assert weight.shape == (3, 8)
    assert ((features @ weight.T).argmax(-1) == label_ids).all()


def write_clips(tmp_path, model) -> list[dict]:
    """Clips whose label follows their loudness, so that a head on pooled embeddings can tell them apart."""
    rows = []
    for index in range(12):
        label = model.config.emotion_labels[index % 2]
        path = tmp_path / f"clip{index}.wav"
        sf.write(path, noise(8000, index) * (0.8 if index % 2 else 0.01), 16000)
        rows.append({"audio": str(path), "emotion": label})
    return rows


@pytest.mark.parametrize("emotion_pooling", ["adapter_mean", "encoder_stats"])
def test_warm_start_fits_only_the_head(processor, tmp_path, emotion_pooling):
    model = tiny_model(emotion_pooling=emotion_pooling)
    rows = write_clips(tmp_path, model)
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    result = warm_start_emotion_head(model, processor, rows, batch_size=5)
    assert result["clips"] == 12 and result["train_accuracy"] == 1.0
    changed = {name for name, parameter in model.named_parameters() if not torch.equal(parameter, before[name])}
    assert changed == {"emotion_head.weight"}
    clips = [sf.read(row["audio"], dtype="float32")[0] for row in rows]
    # The features fitted on are exactly what the head reads in the model.
    pooled = pooled_speech_embeddings(model, processor, clips)
    assert pooled.shape == (12, model.config.emotion_head_input_size)
    with torch.no_grad():
        inputs = processor.audio_features(clips)
        speech = model.model.get_speech_features(inputs["input_features"], inputs["feature_attention_mask"])
        logits = model.classify_emotion(speech.head_states, speech.head_lengths, inputs["audio_item_index"])
    torch.testing.assert_close(model.emotion_head(pooled), logits, rtol=1e-4, atol=1e-4)
    predicted = [model.config.emotion_labels[i] for i in logits.argmax(-1).tolist()]
    assert predicted == [row["emotion"] for row in rows]


def test_warm_start_with_augmented_copies(processor, tmp_path):
    model = tiny_model()
    rows = write_clips(tmp_path, model)
    seen = []

    def augment(clip: np.ndarray) -> np.ndarray:
        seen.append(len(clip))
        return clip

    assert warm_start_emotion_head(model, processor, rows, augment=augment, copies=3)["clips"] == 36
    assert len(seen) == 36


def test_warm_start_refuses_unknown_labels_and_no_clips(processor, tmp_path):
    model = tiny_model()
    with pytest.raises(UserInputError, match="bored"):
        warm_start_emotion_head(model, processor, [{"audio": "x.wav", "emotion": "bored"}])
    with pytest.raises(UserInputError, match="no labelled clips"):
        warm_start_emotion_head(model, processor, [])


def test_warm_start_names_a_missing_or_corrupt_clip(processor, tmp_path):
    from modeling_blsp_emo import AudioInputError

    model = tiny_model()
    (tmp_path / "corrupt.wav").write_bytes(b"not audio")
    for name in ("missing.wav", "corrupt.wav"):
        with pytest.raises(AudioInputError, match=name):
            warm_start_emotion_head(model, processor, [{"audio": str(tmp_path / name), "emotion": "sad"}])


def test_warm_start_refuses_non_finite_embeddings(processor, tmp_path):
    from modeling_blsp_emo.numerics import NonFiniteOutputError

    model = tiny_model()
    rows = write_clips(tmp_path, model)
    with torch.no_grad():
        next(model.model.adapter.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteOutputError, match="pooled speech embeddings"):
        warm_start_emotion_head(model, processor, rows)
