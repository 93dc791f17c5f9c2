"""`emotion_pooling="encoder_stats"`: the emotion head reads the mean and std of the Whisper encoder's
last layer and middle layer's output over each audio item's real frames."""

import json

import pytest
import torch
from transformers import pipeline

from modeling_blsp_emo import BlspEmoConfig, BlspEmoForAudioClassification, BlspEmoForConditionalGeneration, BlspEmoProcessor
from modeling_blsp_emo.modeling_blsp_emo import pool_encoder_statistics
from modeling_blsp_emo.speech_encoder import encode_in_length_groups, encode_padded_to_30s, encode_variable_length
from trainers.checkpoints.builder import build_blsp_emo
from trainers.cli.main import build_parser
from trainers.demo import run as demo_run

from tiny_models import (
    AUDIO_CONFIG,
    TEXT_CONFIGS,
    clip_features,
    random_clip,
    speech_inputs,
    tiny_config,
    tiny_feature_extractor,
    tiny_tokenizer,
    voice_like,
)

D_MODEL = AUDIO_CONFIG["d_model"]
CLIP_SECONDS = [0.6, 2.3, 1.1, 4.0]


def stats_model(encoder_layers: int = 4, audio_padding: str = "longest", seed: int = 0) -> BlspEmoForConditionalGeneration:
    """A tiny model whose head reads encoder statistics, with `encoder_layers` encoder layers (4 as
    whisper-tiny: the middle one is layers[1]) and a head far from uniform."""
    config = tiny_config(emotion_pooling="encoder_stats", audio_padding=audio_padding)
    config.audio_config.encoder_layers = encoder_layers
    torch.manual_seed(seed)
    model = BlspEmoForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.emotion_head.weight.mul_(50)
    return model


def features_of(clips, audio_padding: str = "longest") -> tuple[torch.Tensor, torch.Tensor]:
    """Features of `clips` zero padded to the longest, and their frame masks."""
    extracted = [clip_features(clip, audio_padding) for clip in clips]
    frames = max(features.shape[-1] for features, _ in extracted)
    pad = torch.nn.functional.pad
    return (
        torch.stack([pad(features, (0, frames - features.shape[-1])) for features, _ in extracted]),
        torch.stack([pad(mask, (0, frames - mask.shape[-1])) for _, mask in extracted]),
    )


def reference_statistics(model, features, frame_mask) -> torch.Tensor:
    """[mean, std] of the last layer and of `layers[encoder_layers // 2 - 1]`'s output, one clip at a
    time, the middle layer captured by a hook on the plain (adapter-mean) path: independent of
    `encode_speech(middle_layer=...)` and of `pool_encoder_statistics`."""
    middle = model.model.audio_encoder.layers[model.config.audio_config.encoder_layers // 2 - 1]
    rows = []
    for index in range(features.shape[0]):
        frames = int(frame_mask[index].sum()) if model.config.audio_padding == "longest" else features.shape[-1]
        captured = []
        hook = middle.register_forward_hook(lambda module, args, output: captured.append(output))
        try:
            last, lengths = model.model.encode_speech(features[index : index + 1, :, :frames], frame_mask[index : index + 1, :frames])
        finally:
            hook.remove()
        steps = int(lengths[0])
        last, mid = last[0, :steps], captured[0][0, :steps]
        rows.append(torch.cat([last.mean(0), last.std(0, unbiased=False), mid.mean(0), mid.std(0, unbiased=False)]))
    return torch.stack(rows)


def test_config_validates_and_defaults_the_pooling():
    with pytest.raises(ValueError, match=r"emotion_pooling='max'.*'adapter_mean' or 'encoder_stats'"):
        tiny_config(emotion_pooling="max")
    assert tiny_config().emotion_pooling == "adapter_mean"
    config = tiny_config(emotion_pooling="encoder_stats")
    assert config.emotion_head_input_size == 4 * D_MODEL and config.encoder_middle_layer == 0  # 2 layers
    config.audio_config.encoder_layers = 4
    assert config.encoder_middle_layer == 1  # whisper-tiny's 4 layers: layers[1], as the P7 probe


def test_head_input_size_follows_the_pooling():
    assert stats_model().emotion_head.weight.shape == (5, 4 * D_MODEL)
    assert BlspEmoForConditionalGeneration(tiny_config()).emotion_head.weight.shape == (5, TEXT_CONFIGS["qwen2"]["hidden_size"])
    assert BlspEmoForAudioClassification(stats_model().config).emotion_head.weight.shape == (5, 4 * D_MODEL)


@pytest.mark.parametrize("audio_padding", ["longest", "max_length"])
def test_pooled_statistics_match_the_encoder_layers_clip_by_clip(audio_padding):
    model = stats_model(audio_padding=audio_padding)
    clips = [voice_like(seconds, seed) for seed, seconds in enumerate(CLIP_SECONDS)]
    features, frame_mask = features_of(clips, audio_padding)
    with torch.no_grad():
        speech = model.model.get_speech_features(features, frame_mask)
        pooled = model.pool_for_emotion_head(speech.head_states, speech.head_lengths)
        expected = reference_statistics(model, features, frame_mask)
        batch_logits = model.classify_emotion(speech.head_states, speech.head_lengths)
        alone = []
        for index in range(len(clips)):
            frames = int(frame_mask[index].sum()) if audio_padding == "longest" else features.shape[-1]
            one = model.model.get_speech_features(features[index : index + 1, :, :frames], frame_mask[index : index + 1, :frames])
            alone.append(model.classify_emotion(one.head_states, one.head_lengths))
    assert pooled.shape == (len(clips), 4 * D_MODEL)
    torch.testing.assert_close(pooled, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(batch_logits, torch.cat(alone), rtol=1e-4, atol=1e-4)
    assert len(set(batch_logits.argmax(-1).tolist())) > 1 or not torch.allclose(batch_logits[0], batch_logits[1])
    # The adapter's embeddings are those of the plain path (the LLM hears the same speech).
    embeds, lengths = model.model.get_audio_features(features, frame_mask)
    torch.testing.assert_close(speech.embeds, embeds)
    assert torch.equal(speech.lengths, lengths)


def test_encoder_returns_the_middle_layer_only_when_asked():
    model = stats_model()
    encoder = model.model.audio_encoder
    features, frame_mask = features_of([voice_like(0.8, 0), voice_like(3.5, 1)])
    frame_lengths = frame_mask.sum(-1)
    with torch.no_grad():
        for encode in (encode_variable_length, encode_in_length_groups):
            plain = encode(encoder, features, frame_lengths)
            with_middle = encode(encoder, features, frame_lengths, 1)
            assert len(plain) == 2 and len(with_middle) == 3
            torch.testing.assert_close(with_middle[0], plain[0])
            assert with_middle[2].shape == plain[0].shape
            assert not torch.allclose(with_middle[2], plain[0])
        padded, padded_mask = features_of([voice_like(0.8, 0)], "max_length")
        assert len(encode_padded_to_30s(encoder, padded, padded_mask.sum(-1))) == 2
        assert len(encode_padded_to_30s(encoder, padded, padded_mask.sum(-1), 1)) == 3
    with pytest.raises(ValueError, match="middle_layer=4"):
        encode_variable_length(encoder, features, frame_lengths, 4)


def test_an_item_over_two_windows_pools_all_its_frames():
    model = stats_model()
    clips = [voice_like(1.7, 3), voice_like(0.9, 4), voice_like(2.2, 5)]
    features, frame_mask = features_of(clips)
    with torch.no_grad():
        speech = model.model.get_speech_features(features, frame_mask)
        item_index = torch.tensor([0, 0, 1])  # windows 0 and 1 are one item
        pooled = model.pool_for_emotion_head(speech.head_states, speech.head_lengths, item_index)
        logits = model.classify_emotion(speech.head_states, speech.head_lengths, item_index)
    steps = speech.head_lengths.tolist()
    frames = torch.cat([speech.head_states[0, : steps[0]], speech.head_states[1, : steps[1]]])
    last, middle = frames[:, :D_MODEL], frames[:, D_MODEL:]
    expected = torch.cat([last.mean(0), last.std(0, unbiased=False), middle.mean(0), middle.std(0, unbiased=False)])
    assert pooled.shape == (2, 4 * D_MODEL)
    torch.testing.assert_close(pooled[0], expected, rtol=1e-5, atol=1e-5)
    separate = pool_encoder_statistics(speech.head_states, speech.head_lengths)
    torch.testing.assert_close(pooled[1], separate[2])
    assert not torch.allclose(pooled[0], separate[0], atol=1e-3)  # not window 0 alone
    torch.testing.assert_close(logits, model.emotion_head(pooled))


def test_a_one_frame_item_has_zero_std_and_finite_gradients():
    states = torch.randn(2, 5, 2 * D_MODEL, requires_grad=True)
    pooled = pool_encoder_statistics(states, torch.tensor([1, 5]))
    assert torch.all(pooled[0, D_MODEL : 2 * D_MODEL] < 1e-5)
    pooled.sum().backward()
    assert torch.isfinite(states.grad).all()


def test_emotion_loss_reaches_the_middle_layer_through_its_statistics():
    model = stats_model().train()
    with torch.no_grad():  # only the middle layer's statistics reach the logits
        model.emotion_head.weight[:, : 2 * D_MODEL] = 0
    inputs = speech_inputs([9000, 14000])
    encoded = []
    original = model.model.encode_speech
    model.model.encode_speech = lambda *args, **kwargs: encoded.append(1) or original(*args, **kwargs)
    outputs = model(**inputs, emotion_labels=torch.tensor([1, 3]))
    assert len(encoded) == 1  # the LLM's speech and the head's statistics come from one encoder pass
    assert outputs.emotion_logits.shape == (2, 5)
    outputs.emotion_loss.backward()
    encoder = model.model.audio_encoder

    def gradient_norm(module) -> float:
        return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)

    assert gradient_norm(encoder.layers[1]) > 0 and gradient_norm(encoder.layers[0]) > 0
    assert gradient_norm(encoder.layers[2]) == 0 and gradient_norm(encoder.layer_norm) == 0
    assert model.emotion_head.weight.grad[:, 2 * D_MODEL :].abs().sum() > 0


def test_save_and_load_keep_the_pooling_and_the_logits(tmp_path):
    model = stats_model()
    inputs = speech_inputs([7000, (16000, 5000)])
    inputs["audio_item_index"] = torch.tensor([0, 1, 1])
    with torch.no_grad():
        before = model(**inputs).emotion_logits
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["emotion_pooling"] == "encoder_stats"
    loaded = BlspEmoForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.emotion_pooling == "encoder_stats"
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).emotion_logits, before)
    assert before.shape == (2, 5)


def test_a_config_saved_without_the_field_loads_as_adapter_mean(tmp_path):
    tiny_config().save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved.pop("emotion_pooling", None)
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert BlspEmoConfig.from_pretrained(tmp_path).emotion_pooling == "adapter_mean"


def test_audio_classification_model_gives_the_generation_models_logits(tmp_path):
    model = stats_model()
    model.save_pretrained(tmp_path)
    classifier = BlspEmoForAudioClassification.from_pretrained(tmp_path).eval()
    assert classifier.config.emotion_pooling == "encoder_stats"
    features, frame_mask = features_of([voice_like(seconds, seed) for seed, seconds in enumerate(CLIP_SECONDS)])
    with torch.no_grad():
        speech = model.model.get_speech_features(features, frame_mask)
        expected = model.classify_emotion(speech.head_states, speech.head_lengths)
        logits = classifier(input_features=features, feature_attention_mask=frame_mask).logits
    torch.testing.assert_close(logits, expected)


def test_adapter_mean_head_states_are_the_speech_embeddings():
    model = BlspEmoForConditionalGeneration(tiny_config()).eval()
    features, frame_mask = features_of([random_clip(6000, 1), random_clip(11000, 2)])
    with torch.no_grad():
        speech = model.model.get_speech_features(features, frame_mask)
    assert speech.head_states is speech.embeds and speech.head_lengths is speech.lengths
    with pytest.raises(ValueError, match="encoder_stats"):
        stats_model(encoder_layers=2).classify_emotion(speech.embeds, speech.lengths)


def test_both_pipelines_serve_an_encoder_stats_checkpoint(tmp_path):
    model = stats_model(encoder_layers=2)
    model.save_pretrained(tmp_path)
    processor = BlspEmoProcessor(tiny_feature_extractor(), tiny_tokenizer())
    processor.save_pretrained(tmp_path)
    clips = [voice_like(1.3, 0), voice_like(2.1, 1)]
    with torch.no_grad():
        inputs = processor.audio_features(clips)
        speech = model.model.get_speech_features(inputs["input_features"], inputs["feature_attention_mask"])
        expected = model.emotion_probabilities(model.classify_emotion(speech.head_states, speech.head_lengths))
    labels = model.config.emotion_labels
    talk = pipeline("audio-to-text", model=str(tmp_path), trust_remote_code=True)
    for clip, probs in zip(clips, expected):
        result = talk(clip, sampling_rate=16000, return_emotion=True, max_new_tokens=2)[0]
        assert result["scores"] == pytest.approx(dict(zip(labels, probs.tolist())), abs=1e-5)
    classify = pipeline("audio-classification", model=str(tmp_path), trust_remote_code=True)
    top = classify(clips, sampling_rate=16000, top_k=1)
    assert [item[0]["label"] for item in top] == [labels[int(i)] for i in expected.argmax(-1)]


def test_init_and_demo_take_the_pooling(pretrained_parts, tmp_path):
    parser = build_parser()
    args = parser.parse_args(["init", "--output", str(tmp_path), "--emotion-pooling", "encoder_stats"])
    assert args.emotion_pooling == "encoder_stats"
    assert parser.parse_args(["init", "--output", str(tmp_path)]).emotion_pooling == "adapter_mean"
    assert parser.parse_args(["demo", "--emotion-pooling", "encoder_stats"]).emotion_pooling == "encoder_stats"
    assert parser.parse_args(["demo"]).emotion_pooling is None  # the settings' default applies
    assert demo_run.DemoSettings(output=str(tmp_path)).emotion_pooling == "encoder_stats"
    with pytest.raises(SystemExit):
        parser.parse_args(["init", "--output", str(tmp_path), "--emotion-pooling", "max"])

    whisper_dir, llm_dir = pretrained_parts
    model, _ = build_blsp_emo(str(whisper_dir), str(llm_dir), emotion_pooling="encoder_stats")
    assert model.config.emotion_pooling == "encoder_stats"
    assert model.emotion_head.weight.shape == (5, 4 * D_MODEL) and model.emotion_head.bias is None
    assert model.emotion_head.weight.device.type != "meta" and model.emotion_head.weight.abs().sum() > 0
    default, _ = build_blsp_emo(str(whisper_dir), str(llm_dir))
    assert default.config.emotion_pooling == "adapter_mean"
    assert default.emotion_head.in_features == default.config.text_config.hidden_size


def test_the_demo_builds_its_model_with_the_pooling(tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(demo_run, "build_blsp_emo", lambda *args, **kwargs: built.append(kwargs) or (None, None))
    monkeypatch.setattr(demo_run, "save_checkpoint", lambda *args, **kwargs: None)
    demo_run.Demo(demo_run.DemoSettings(output=str(tmp_path / "a"), emotion_pooling="adapter_mean")).build()
    demo_run.Demo(demo_run.DemoSettings(output=str(tmp_path / "b"))).build()
    assert [kwargs["emotion_pooling"] for kwargs in built] == ["adapter_mean", "encoder_stats"]


@pytest.mark.parametrize("scope", ["audio", "global"])
def test_the_demo_gives_stage_two_its_lora_scope_and_encoder_choice(tmp_path, monkeypatch, scope):
    class Prepared(Exception):
        pass

    def prepare(model, lora, train_encoder):
        raise Prepared(f"{lora.scope} train_encoder={train_encoder}")

    monkeypatch.setattr(demo_run, "load_blsp_emo", lambda path: (object(), None))
    monkeypatch.setattr(demo_run, "prepare_for_emotion_alignment", prepare)
    assert build_parser().parse_args(["demo", "--lora-scope", scope]).lora_scope == scope
    assert build_parser().parse_args(["demo", "--train-encoder"]).train_encoder is True
    for train_encoder in (False, True):
        settings = demo_run.DemoSettings(
            output=str(tmp_path), warm_start_head=False, emotion_token=False, lora_scope=scope, train_encoder=train_encoder
        )
        with pytest.raises(Prepared, match=f"{scope} train_encoder={train_encoder}"):
            demo_run.Demo(settings).train_stage2()
        (tmp_path / "settings.json").unlink()  # the next settings differ on purpose
    assert demo_run.DemoSettings(output=str(tmp_path)).train_encoder is False  # frozen by default
    assert demo_run.DemoSettings(output=str(tmp_path)).lora_scope == "global"
