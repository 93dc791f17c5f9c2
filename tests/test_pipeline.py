"""The `audio-to-text` pipeline, in this process and in a fresh one."""

import numpy as np
import pytest
import soundfile
from transformers import AutoModel, pipeline

from modeling_blsp_emo import BlspEmoProcessor, prompts

from conftest import noise
from fresh_process import run_isolated


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
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return [text.strip() for text in processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)]


def test_single_clip_matches_processor_and_generate(pipe, saved_checkpoint):
    clip = noise(24000)
    result = pipe(clip, sampling_rate=16000, prompt="hello", max_new_tokens=4)
    assert result == [{"generated_text": by_hand(saved_checkpoint, [clip], prompt="hello")[0]}]


def test_batch_matches_batched_generate(pipe, saved_checkpoint):
    clips = [noise(24000, 1), noise(12000, 2), noise(30000, 3)]
    results = pipe(clips, sampling_rate=16000, max_new_tokens=4, batch_size=3)
    assert [r[0]["generated_text"] for r in results] == by_hand(saved_checkpoint, clips)


def test_empathetic_flag_selects_system_prompt(pipe, saved_checkpoint):
    clip = noise(20000, 4)
    result = pipe(clip, sampling_rate=16000, empathetic=True, max_new_tokens=4)
    assert result[0]["generated_text"] == by_hand(saved_checkpoint, [clip], system=prompts.EMPATHETIC_SYSTEM_PROMPT)[0]


def test_emotion_mode_returns_head_scores_and_answer(pipe):
    result = pipe(noise(20000), sampling_rate=16000, return_emotion=True, max_new_tokens=4)[0]
    assert set(result["scores"]) == {"neutral", "happy", "angry", "sad", "surprise"}
    assert sum(result["scores"].values()) == pytest.approx(1.0, abs=1e-5)
    assert result["emotion"] == max(result["scores"], key=result["scores"].get)
    assert isinstance(result["ser_answer"], str)


def test_unknown_argument_is_rejected(pipe):
    with pytest.raises(TypeError, match="max_tokens"):
        pipe(noise(16000), sampling_rate=16000, max_tokens=3)


def test_fresh_process_pipeline_with_array_path_and_batch(saved_checkpoint, tmp_path):
    stereo_44k = np.stack([noise(44100, 5), noise(44100, 6)], axis=1)
    wav_path = tmp_path / "stereo_44k.wav"
    soundfile.write(wav_path, stereo_44k, 44100)
    clip = noise(24000, 7)
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
