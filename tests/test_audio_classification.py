"""The fast speech-emotion path: encoder + adapter + emotion head as an `audio-classification` model."""

import io
import json

import datasets
import evaluate
import numpy as np
import pytest
import soundfile
import torch
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification, pipeline
from transformers.pipelines.pt_utils import KeyDataset

from modeling_blsp_emo import BlspEmoForAudioClassification, BlspEmoForConditionalGeneration, BlspEmoProcessor
from modeling_blsp_emo.numerics import NonFiniteOutputError
from trainers.evaluation.metrics import SER_METRICS_PATH

from fresh_process import run_isolated
from tiny_models import AUDIO_CONFIG, TEXT_CONFIGS, tiny_feature_extractor, tiny_model, tiny_tokenizer, voice_like

CLIP_SECONDS = [0.7, 1.2, 1.9, 2.6, 3.1, 4.4]


def decisive_model(**overrides) -> BlspEmoForConditionalGeneration:
    """A tiny random model whose emotion head is far from uniform (as a trained one is), so labels do
    not flip on the last mel frame's rounding."""
    model = tiny_model(**overrides)
    with torch.no_grad():
        model.emotion_head.weight.mul_(100)
    return model


def save_checkpoint(model, directory):
    model.save_pretrained(directory)
    processor = BlspEmoProcessor(tiny_feature_extractor(), tiny_tokenizer(), audio_padding=model.config.audio_padding)
    processor.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_checkpoint(decisive_model(), tmp_path_factory.mktemp("classifier"))


@pytest.fixture(scope="module")
def clips():
    return [voice_like(seconds, seed) for seed, seconds in enumerate(CLIP_SECONDS)]


def audio_dataset(clips) -> datasets.Dataset:
    """An `Audio(decode=False)` column of WAV bytes, the form that decodes without FFmpeg."""
    encoded = []
    for clip in clips:
        buffer = io.BytesIO()
        soundfile.write(buffer, clip, 16000, format="WAV")
        encoded.append({"bytes": buffer.getvalue(), "path": None})
    return datasets.Dataset.from_dict({"audio": encoded}).cast_column("audio", datasets.Audio(decode=False))


def own_path_logits(checkpoint, clips) -> torch.Tensor:
    """Emotion logits of the full model, one clip at a time, with the processor's features."""
    model = BlspEmoForConditionalGeneration.from_pretrained(checkpoint).eval()
    processor = BlspEmoProcessor.from_pretrained(checkpoint)
    with torch.no_grad():
        rows = []
        for clip in clips:
            features = processor.audio_features([clip])
            embeds, lengths = model.model.get_audio_features(features["input_features"], features["feature_attention_mask"])
            rows.append(model.classify_emotion(embeds, lengths, features["audio_item_index"]))
    return torch.cat(rows)


def test_checkpoint_maps_audio_classification_and_declares_its_pipeline(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["auto_map"]["AutoModelForAudioClassification"] == "modeling_blsp_emo.BlspEmoForAudioClassification"
    pipeline_entry = config["custom_pipelines"]["audio-classification"]
    assert pipeline_entry["impl"] == "pipeline_audio_classification.AudioClassificationPipeline"
    assert pipeline_entry["pt"] == ["AutoModelForAudioClassification"]
    assert (checkpoint / "pipeline_audio_classification.py").is_file()


def test_classifier_loads_without_the_llm_and_gives_the_full_models_logits(checkpoint, clips):
    classifier = AutoModelForAudioClassification.from_pretrained(checkpoint).eval()
    assert isinstance(classifier, BlspEmoForAudioClassification)
    assert not any("language_model" in name or "lm_head" in name for name in classifier.state_dict())
    assert classifier.config.id2label[2] == "angry" and classifier.config.label2id["sad"] == 3
    processor = BlspEmoProcessor.from_pretrained(checkpoint)
    with torch.no_grad():
        logits = torch.cat([classifier(**processor.audio_features([clip])).logits for clip in clips])
    torch.testing.assert_close(logits, own_path_logits(checkpoint, clips), rtol=1e-5, atol=1e-5)


def test_labels_give_a_cross_entropy_loss_that_trains_the_head(checkpoint, clips):
    classifier = BlspEmoForAudioClassification.from_pretrained(checkpoint)
    processor = BlspEmoProcessor.from_pretrained(checkpoint)
    labels = torch.tensor([0, 1, 2])
    output = classifier(**processor.audio_features(clips[:3]), labels=labels)
    torch.testing.assert_close(output.loss, torch.nn.functional.cross_entropy(output.logits, labels))
    output.loss.backward()
    assert classifier.emotion_head.weight.grad is not None and classifier.model.adapter.fc1.weight.grad is not None


@pytest.mark.parametrize("audio_padding", ["longest", "max_length"])
def test_30s_padded_features_without_a_mask_give_the_same_labels(audio_padding, clips, tmp_path):
    """transformers' own audio-classification pipeline (and `evaluate`) send 30-s padded features
    from the feature extractor, with no attention mask."""
    checkpoint = save_checkpoint(decisive_model(audio_padding=audio_padding), tmp_path)
    classifier = BlspEmoForAudioClassification.from_pretrained(checkpoint).eval()
    extractor = AutoFeatureExtractor.from_pretrained(checkpoint)
    with torch.no_grad():
        padded = [classifier(**extractor(clip, sampling_rate=16000, return_tensors="pt")).logits for clip in clips]
    assert torch.cat(padded).argmax(-1).tolist() == own_path_logits(checkpoint, clips).argmax(-1).tolist()


def test_evaluate_evaluator_with_the_model_object_agrees_with_its_own_path(checkpoint, clips):
    own_labels = own_path_logits(checkpoint, clips).argmax(-1).tolist()
    classifier = BlspEmoForAudioClassification.from_pretrained(checkpoint).eval()
    data = datasets.Dataset.from_dict({"audio": clips, "label": own_labels}).with_format("numpy")
    result = evaluate.evaluator("audio-classification").compute(
        model_or_pipeline=classifier,
        data=data,
        metric=evaluate.load(SER_METRICS_PATH),
        feature_extractor=AutoFeatureExtractor.from_pretrained(checkpoint),
        input_column="audio",
        label_column="label",
        label_mapping=classifier.config.label2id,
    )
    assert result["accuracy"] == 1.0


def test_pipeline_returns_ranked_labels_for_arrays_batches_and_streams(checkpoint, clips):
    classify = pipeline("audio-classification", model=str(checkpoint), trust_remote_code=True)
    expected = own_path_logits(checkpoint, clips).softmax(-1)
    result = classify(clips[0], sampling_rate=16000)
    assert [entry["label"] for entry in result] == [
        classify.model.config.id2label[i] for i in expected[0].argsort(descending=True).tolist()
    ]
    assert result[0]["score"] == pytest.approx(float(expected[0].max()), abs=1e-5)
    top1 = [[classify.model.config.id2label[int(row.argmax())]] for row in expected]
    batched = classify(clips, sampling_rate=16000, batch_size=4, top_k=1)
    streamed = classify((clip for clip in clips), sampling_rate=16000, batch_size=3, top_k=1)
    dataset = audio_dataset(clips)
    keyed = classify(KeyDataset(dataset, "audio"), batch_size=2, top_k=1)
    for results in (batched, list(streamed), list(keyed)):
        assert [[entry["label"] for entry in item] for item in results] == top1
    assert len(classify(clips[0], sampling_rate=16000, top_k=None)) == 5


def test_pipeline_errors_name_the_item_or_come_back_in_its_result(checkpoint, clips):
    classify = pipeline("audio-classification", model=str(checkpoint), trust_remote_code=True)
    with pytest.raises(ValueError, match=r"audio item 2 \(missing\.wav\)"):
        classify([clips[0], clips[1], "missing.wav"], sampling_rate=16000, batch_size=2)
    results = classify([clips[0], "missing.wav", clips[1]], sampling_rate=16000, batch_size=2, errors="return", top_k=1)
    assert results[1] == [{"label": None, "score": None, "error": "audio item 1 (missing.wav): file not found"}]
    assert results[0] == classify(clips[0], sampling_rate=16000, top_k=1)
    assert results[2] == classify(clips[1], sampling_rate=16000, top_k=1)


def test_nan_in_the_head_is_an_error_not_a_label(tmp_path, clips):
    model = decisive_model()
    with torch.no_grad():
        model.emotion_head.weight[1, 3] = float("nan")
    checkpoint = save_checkpoint(model, tmp_path)
    classify = pipeline("audio-classification", model=str(checkpoint), trust_remote_code=True)
    with pytest.raises(ValueError, match="emotion head logits: .*NaN"):
        classify(clips[0], sampling_rate=16000)
    processor = BlspEmoProcessor.from_pretrained(checkpoint)
    with pytest.raises(NonFiniteOutputError):
        BlspEmoForAudioClassification.from_pretrained(checkpoint)(**processor.audio_features(clips[:1]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_gives_the_same_labels_and_close_logits(dtype, checkpoint, clips):
    processor = BlspEmoProcessor.from_pretrained(checkpoint)
    features = processor.audio_features(clips)
    full = BlspEmoForAudioClassification.from_pretrained(checkpoint).eval()
    half = BlspEmoForAudioClassification.from_pretrained(checkpoint, dtype=dtype, device_map="auto").eval()
    assert {parameter.dtype for parameter in half.parameters()} == {dtype}
    with torch.no_grad():
        expected = full(**features).logits
        try:
            logits = half(**features).logits
        except RuntimeError as error:  # some CPUs have no float16 kernels
            pytest.skip(f"{dtype} not supported here: {error}")
    assert logits.argmax(-1).tolist() == expected.argmax(-1).tolist()
    torch.testing.assert_close(logits.float(), expected, rtol=0.03, atol=0.03 * float(expected.abs().max()))


def test_loading_the_classifier_from_a_full_checkpoint_stays_below_the_llms_size(tmp_path):
    """A checkpoint whose LLM is ~120 MB: loading only the classifier must not read it into memory."""
    text_config = dict(TEXT_CONFIGS["qwen2"], hidden_size=256, intermediate_size=512, vocab_size=60000)
    model = BlspEmoForConditionalGeneration(
        BlspEmoForConditionalGeneration.config_class(
            audio_config=AUDIO_CONFIG, text_config=text_config, audio_token_id=4, adapter_inner_dim=16
        )
    )
    speech_parts = ("model.audio_encoder.", "model.adapter.", "emotion_head.")
    llm_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if not n.startswith(speech_parts))
    model.save_pretrained(tmp_path / "big")
    del model
    result = run_isolated(
        f"""
import json, re, time
def peak_mb():
    return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024
import torch, transformers.modeling_utils, transformers.models.whisper.modeling_whisper
from transformers import AutoModelForAudioClassification
before = peak_mb()
start = time.perf_counter()
model = AutoModelForAudioClassification.from_pretrained({str(tmp_path / "big")!r}, trust_remote_code=True)
print(json.dumps({{"peak_mb": peak_mb() - before, "seconds": time.perf_counter() - start,
                  "class": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters())}}))
""",
        tmp_path,
    )
    assert result["class"] == "BlspEmoForAudioClassification"
    assert result["parameters"] * 4 < llm_bytes / 100
    assert result["peak_mb"] * 2**20 < llm_bytes / 2, result


def test_fresh_process_pipeline_and_auto_classes_leave_transformers_own_pipeline_alone(checkpoint, clips, tmp_path):
    np.save(tmp_path / "clip.npy", clips[2])
    result = run_isolated(
        f"""
import json, sys, numpy as np
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification, pipeline
from transformers.pipelines import PIPELINE_REGISTRY
clip = np.load({str(tmp_path / "clip.npy")!r})
classify = pipeline("audio-classification", model={str(checkpoint)!r}, trust_remote_code=True)
model = AutoModelForAudioClassification.from_pretrained({str(checkpoint)!r}, trust_remote_code=True)
extractor = AutoFeatureExtractor.from_pretrained({str(checkpoint)!r}, trust_remote_code=True)
builtin = str(PIPELINE_REGISTRY.check_task("audio-classification")[1]["impl"])
print(json.dumps({{"result": classify(clip, sampling_rate=16000, top_k=2),
                  "pipeline_module": type(classify).__module__, "model": type(model).__name__,
                  "model_module": type(model).__module__, "extractor": type(extractor).__name__,
                  "builtin": builtin,
                  "package_imported": any(m.split(".")[0] == "modeling_blsp_emo" for m in sys.modules)}}))
""",
        tmp_path,
    )
    assert result["package_imported"] is False
    assert result["pipeline_module"].startswith("transformers_modules.") and result["model_module"].startswith("transformers_modules.")
    assert result["model"] == "BlspEmoForAudioClassification" and result["extractor"] == "WhisperFeatureExtractor"
    assert result["builtin"].endswith("audio_classification.AudioClassificationPipeline"), result["builtin"]
    classify = pipeline("audio-classification", model=str(checkpoint), trust_remote_code=True)
    assert result["result"] == classify(clips[2], sampling_rate=16000, top_k=2)
