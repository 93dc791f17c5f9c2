"""The `audio-to-text` pipeline, in this process and in a fresh one."""

import io
import json

import datasets
import numpy as np
import pytest
import soundfile
from transformers import AutoModel, pipeline
from transformers.pipelines.pt_utils import KeyDataset

from modeling_blsp_emo import REPLY_GENERATION_DEFAULTS, BlspEmoProcessor, prompts

from fresh_process import run_isolated
from tiny_models import tiny_feature_extractor, tiny_model, tiny_tokenizer, voice_like


@pytest.fixture(scope="module")
def pipe(saved_checkpoint):
    return pipeline("audio-to-text", model=str(saved_checkpoint), trust_remote_code=True)


def by_hand(checkpoint, clips, prompt="", system=prompts.NEUTRAL_SYSTEM_PROMPT, max_new_tokens=4) -> list[str]:
    processor = BlspEmoProcessor.from_pretrained(checkpoint)
    model = AutoModel.from_pretrained(checkpoint).eval()
    conversations = [
        [{"role": "system", "content": system},
         {"role": "user", "content": ([{"type": "text", "text": prompt}] if prompt else [])
          + [{"type": "audio", "audio": clip, "sampling_rate": 16000}]}]
        for clip in clips
    ]
    inputs = processor.apply_chat_template(conversations)
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, **REPLY_GENERATION_DEFAULTS)
    return [text.strip() for text in processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)]


def test_single_clip_matches_processor_and_generate(pipe, saved_checkpoint):
    clip = voice_like(1.5)
    result = pipe(clip, sampling_rate=16000, prompt="hello", max_new_tokens=4)
    assert result == [{"generated_text": by_hand(saved_checkpoint, [clip], prompt="hello")[0]}]


def test_batch_matches_batched_generate(pipe, saved_checkpoint):
    clips = [voice_like(1.5, 1), voice_like(0.75, 2), voice_like(1.875, 3)]
    results = pipe(clips, sampling_rate=16000, max_new_tokens=4, batch_size=3)
    assert [r[0]["generated_text"] for r in results] == by_hand(saved_checkpoint, clips)


def test_empathetic_flag_selects_system_prompt(pipe, saved_checkpoint):
    clip = voice_like(1.25, 4)
    result = pipe(clip, sampling_rate=16000, empathetic=True, max_new_tokens=4)
    assert result[0]["generated_text"] == by_hand(saved_checkpoint, [clip], system=prompts.EMPATHETIC_SYSTEM_PROMPT)[0]


def test_emotion_mode_returns_head_scores_and_answer(pipe):
    result = pipe(voice_like(1.25), sampling_rate=16000, return_emotion=True, max_new_tokens=4)[0]
    assert set(result["scores"]) == {"neutral", "happy", "angry", "sad", "surprise"}
    assert sum(result["scores"].values()) == pytest.approx(1.0, abs=1e-5)
    assert result["emotion"] == max(result["scores"], key=result["scores"].get)
    assert isinstance(result["ser_answer"], str)


def test_unknown_argument_is_rejected(pipe):
    with pytest.raises(TypeError, match="max_tokens"):
        pipe(voice_like(1), sampling_rate=16000, max_tokens=3)


def test_fresh_process_pipeline_with_array_path_and_batch(saved_checkpoint, tmp_path):
    stereo_44k = np.stack([voice_like(2.75625, 5), voice_like(2.75625, 6)], axis=1)
    wav_path = tmp_path / "stereo_44k.wav"
    soundfile.write(wav_path, stereo_44k, 44100)
    clip = voice_like(1.5, 7)
    np.save(tmp_path / "clip.npy", clip)
    result = run_isolated(
        f"""
import json, numpy as np
from transformers import pipeline
pipe = pipeline("audio-to-text", model={str(saved_checkpoint)!r}, trust_remote_code=True)
clip = np.load({str(tmp_path / "clip.npy")!r})
print(json.dumps({{
    "array": pipe(clip, sampling_rate=16000, max_new_tokens=4),
    "path": pipe({str(wav_path)!r}, max_new_tokens=4),
    "batch": pipe([clip, {str(wav_path)!r}], sampling_rate=16000, max_new_tokens=4, batch_size=2),
    "module": type(pipe).__module__,
}}))
""",
        tmp_path,
    )
    assert result["module"].startswith("transformers_modules.")
    from modeling_blsp_emo import load_audio

    mono_16k = load_audio(str(wav_path))
    assert len(mono_16k) == 16000
    expected = by_hand(saved_checkpoint, [clip, mono_16k])
    assert result["array"] == [{"generated_text": expected[0]}]
    assert result["path"] == [{"generated_text": expected[1]}]
    assert result["batch"] == [[{"generated_text": text}] for text in expected]


def wav_bytes(clip: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, clip, 16000, format="WAV")
    return buffer.getvalue()


CLIPS = [voice_like(1.5, 11), voice_like(0.5625, 12), voice_like(2.5, 13), voice_like(1, 14), voice_like(1.9375, 15)]


def texts(results) -> list[str]:
    return [result[0]["generated_text"] for result in results]


def test_batch_size_4_gives_the_same_replies_as_batch_size_1(pipe):
    one = pipe(CLIPS, sampling_rate=16000, max_new_tokens=8, batch_size=1)
    four = pipe(CLIPS, sampling_rate=16000, max_new_tokens=8, batch_size=4)
    assert texts(four) == texts(one) and len(one) == len(CLIPS)
    assert None not in texts(one)  # every stand-in clip passes the speech check, so the model ran


def test_generators_and_key_datasets_stream_like_any_pipeline(pipe):
    expected = texts(pipe(CLIPS, sampling_rate=16000, max_new_tokens=6))
    streamed = pipe((clip for clip in CLIPS), sampling_rate=16000, max_new_tokens=6, batch_size=2)
    assert not isinstance(streamed, list) and texts(streamed) == expected
    # WAV bytes (`Audio(decode=False)`) carry their own sampling rate; PCM16 rounding changes no reply here.
    encoded = [{"bytes": wav_bytes(clip), "path": None} for clip in CLIPS]
    dataset = datasets.Dataset.from_dict({"audio": encoded}).cast_column("audio", datasets.Audio(decode=False))
    assert texts(pipe(KeyDataset(dataset, "audio"), max_new_tokens=6, batch_size=3)) == texts(
        pipe([wav_bytes(clip) for clip in CLIPS], max_new_tokens=6)
    )


def test_clips_longer_than_30s_are_batched_with_all_their_windows(pipe):
    long_clip = voice_like(45, 16)
    clips = [CLIPS[0], long_clip, CLIPS[1]]
    assert texts(pipe(clips, sampling_rate=16000, max_new_tokens=5, batch_size=3)) == [
        pipe(clip, sampling_rate=16000, max_new_tokens=5)[0]["generated_text"] for clip in clips
    ]


def test_an_unusable_item_is_named_by_index_and_source(pipe, tmp_path):
    missing = str(tmp_path / "missing.wav")
    with pytest.raises(ValueError, match=rf"audio item 2 \({missing}\): file not found"):
        pipe([CLIPS[0], CLIPS[1], missing], sampling_rate=16000, max_new_tokens=3, batch_size=2)
    with pytest.raises(ValueError, match="audio item 1: .*too short"):
        pipe([CLIPS[0], np.zeros(100, np.float32)], sampling_rate=16000, max_new_tokens=3)


def test_errors_return_keeps_the_other_results(pipe, tmp_path):
    missing = str(tmp_path / "missing.wav")
    results = pipe([CLIPS[0], missing, CLIPS[1]], sampling_rate=16000, max_new_tokens=4, batch_size=2, errors="return")
    assert results[1] == [{"generated_text": None, "error": f"audio item 1 ({missing}): file not found"}]
    assert [results[0], results[2]] == pipe([CLIPS[0], CLIPS[1]], sampling_rate=16000, max_new_tokens=4)
    with pytest.raises(ValueError, match="errors='skip'"):
        pipe(CLIPS[0], sampling_rate=16000, errors="skip")


def test_fresh_save_then_fresh_process_load_serves_both_pipelines(tmp_path):
    """The pipelines' code is saved with the checkpoint explicitly; a fresh process (without this
    package) loads both tasks from it, streams a generator through each, and can save it again."""
    checkpoint = tmp_path / "fresh"
    model = tiny_model(seed=3)
    model.save_pretrained(checkpoint)
    BlspEmoProcessor(tiny_feature_extractor(), tiny_tokenizer()).save_pretrained(checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    assert set(config["custom_pipelines"]) == {"audio-to-text", "audio-classification"}
    for name in ("pipeline_blsp_emo.py", "pipeline_audio_classification.py", "pipeline_base.py", "reply_generation.py"):
        assert (checkpoint / name).is_file(), name
    modeling_source = (checkpoint / "modeling_blsp_emo.py").read_text()
    assert "\nfrom .pipeline_blsp_emo import" not in modeling_source
    for index, clip in enumerate(CLIPS[:3]):
        np.save(tmp_path / f"clip{index}.npy", clip)
    result = run_isolated(
        f"""
import json, sys, numpy as np
from transformers import AutoModel, AutoProcessor, pipeline
clips = [np.load({str(tmp_path)!r} + f"/clip{{i}}.npy") for i in range(3)]
model = AutoModel.from_pretrained({str(checkpoint)!r}, trust_remote_code=True)
pipeline_loaded_with_model = any("pipeline_blsp_emo" in name for name in sys.modules)
model.save_pretrained({str(tmp_path / "again")!r})
AutoProcessor.from_pretrained({str(checkpoint)!r}, trust_remote_code=True).save_pretrained({str(tmp_path / "again")!r})
talk = pipeline("audio-to-text", model={str(tmp_path / "again")!r}, trust_remote_code=True)
classify = pipeline("audio-classification", model={str(tmp_path / "again")!r}, trust_remote_code=True)
print(json.dumps({{
    "replies": list(talk((c for c in clips), sampling_rate=16000, max_new_tokens=4, batch_size=2)),
    "labels": list(classify((c for c in clips), sampling_rate=16000, top_k=1, batch_size=2)),
    "pipeline_loaded_with_model": pipeline_loaded_with_model,
    "package_imported": any(m.split(".")[0] == "modeling_blsp_emo" for m in sys.modules),
}}))
""",
        tmp_path,
    )
    assert result["package_imported"] is False and result["pipeline_loaded_with_model"] is False
    talk = pipeline("audio-to-text", model=str(checkpoint), trust_remote_code=True)
    classify = pipeline("audio-classification", model=str(checkpoint), trust_remote_code=True)
    assert result["replies"] == talk(CLIPS[:3], sampling_rate=16000, max_new_tokens=4)
    expected = classify(CLIPS[:3], sampling_rate=16000, top_k=1)
    # Batches of 2 there, of 1 here: padding moves the last float32 digits of the scores.
    assert [item[0]["label"] for item in result["labels"]] == [item[0]["label"] for item in expected]
    assert [item[0]["score"] for item in result["labels"]] == pytest.approx([item[0]["score"] for item in expected], abs=1e-5)
