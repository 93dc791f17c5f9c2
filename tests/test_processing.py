"""The processor: chat rendering, placeholder expansion, audio windows, save/load."""

import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeling_blsp_emo import AudioInputError, BlspEmoProcessor, num_speech_embeddings, prompts

from conftest import noise
from tiny_models import tiny_model


def user_turn(*items) -> dict:
    return {"role": "user", "content": list(items)}


def audio(samples: int, seed: int = 0, rate: int = 16000) -> dict:
    return {"type": "audio", "audio": noise(samples, seed), "sampling_rate": rate}


def test_each_audio_item_expands_to_its_embedding_count(processor):
    inputs = processor(text=["a <|audio|>", "<|audio|> b <|audio|>"], audio=[noise(16000), noise(8000), noise(48000)], sampling_rate=16000)
    counts = (inputs["input_ids"] == processor.audio_token_id).sum(-1).tolist()
    assert counts == [num_speech_embeddings(16000), num_speech_embeddings(8000) + num_speech_embeddings(48000)]
    assert inputs["input_features"].shape[0] == 3
    assert inputs["audio_item_index"].tolist() == [0, 1, 2]


def test_batches_are_left_padded(processor):
    inputs = processor(text=["hello <|audio|>", "hello world the dog <|audio|>"], audio=[noise(16000), noise(16000)], sampling_rate=16000)
    assert inputs["attention_mask"][0, 0] == 0 and inputs["attention_mask"][:, -1].all()


def test_chat_template_always_has_explicit_system_prompt(processor):
    text = processor.apply_chat_template([user_turn({"type": "text", "text": "hi"})], tokenize=False)
    assert text.startswith(f"<|im_start|>system\n{prompts.NEUTRAL_SYSTEM_PROMPT}<|im_end|>")
    empathetic = processor.apply_chat_template(
        [user_turn({"type": "text", "text": "hi"})], tokenize=False, system_prompt=prompts.EMPATHETIC_SYSTEM_PROMPT
    )
    assert prompts.EMPATHETIC_SYSTEM_PROMPT in empathetic


def test_speech_follows_instruction_inside_user_turn(processor):
    instruction = prompts.EMOTION_CONTINUATION_INSTRUCTION
    text = processor.apply_chat_template([user_turn({"type": "text", "text": instruction}, audio(16000))], tokenize=False)
    assert f"<|im_start|>user\n{instruction}<|audio|><|im_end|>" in text


def test_multi_turn_conversation_with_several_audio_turns_generates(processor):
    conversation = [
        user_turn(audio(16000, 1)),
        {"role": "assistant", "content": "i am fine"},
        user_turn({"type": "text", "text": "and now "}, audio(24000, 2)),
    ]
    inputs = processor.apply_chat_template(conversation)
    assert (inputs["input_ids"] == processor.audio_token_id).sum() == num_speech_embeddings(16000) + num_speech_embeddings(24000)
    output = tiny_model().generate(**inputs, max_new_tokens=3, do_sample=False)
    assert output.shape[1] == inputs["input_ids"].shape[1] + 3


def test_long_clip_is_encoded_in_30s_windows_and_pooled_per_item(processor):
    long_clip = noise(16000 * 31)
    inputs = processor(text="<|audio|> <|audio|>", audio=[long_clip, noise(16000)], sampling_rate=16000)
    assert inputs["audio_item_index"].tolist() == [0, 0, 1]
    assert inputs["feature_attention_mask"].sum(-1).tolist() == [1550, 1550, 100]
    output = tiny_model()(**inputs)
    assert output.emotion_logits.shape == (2, 5)


def test_audio_items_must_match_placeholders(processor):
    with pytest.raises(AudioInputError, match="2 audio placeholder.*1 audio item"):
        processor(text="<|audio|> <|audio|>", audio=noise(16000), sampling_rate=16000)
    with pytest.raises(AudioInputError, match="0 audio placeholder.*1 audio item"):
        processor(text="hello", audio=noise(16000), sampling_rate=16000)


def test_bad_audio_item_is_named(processor):
    with pytest.raises(AudioInputError, match="audio item 1"):
        processor(text="<|audio|><|audio|>", audio=[noise(16000), np.full(16000, np.nan, np.float32)], sampling_rate=16000)
    with pytest.raises(AudioInputError, match="needs one of the keys"):
        processor.apply_chat_template([user_turn({"type": "audio"})])


def test_too_short_clip_is_named(processor):
    with pytest.raises(AudioInputError, match="audio item 1: 300 samples at 16 kHz is too short"):
        processor(text="<|audio|><|audio|>", audio=[noise(16000), noise(300)], sampling_rate=16000)


def test_save_and_load_keeps_settings(tmp_path):
    from tiny_models import tiny_feature_extractor, tiny_tokenizer

    original = BlspEmoProcessor(tiny_feature_extractor(), tiny_tokenizer(), audio_padding="max_length", conv_kernel_sizes="3,5,5")
    original.save_pretrained(tmp_path)
    loaded = BlspEmoProcessor.from_pretrained(tmp_path)
    assert (loaded.audio_padding, loaded.kernel_sizes, loaded.audio_token_id) == ("max_length", (3, 5, 5), original.audio_token_id)
    assert loaded(text="<|audio|>", audio=noise(8000), sampling_rate=16000)["input_features"].shape[-1] == 3000


def test_release_prompts_are_verbatim():
    assert prompts.ser_instruction() == (
        "Please identify the emotion tone of the speech provided below. Select from the following options: "
        "neutral, sad, angry, happy, or surprise.\n\nSpeech: "
    )
    assert prompts.emotion_target_instruction("sad") == (
        "Continue the following sentence that reflects a 'sad' emotion tone in a coherent style: "
    )


FUZZ_MODEL = tiny_model()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lengths=st.lists(st.integers(min_value=1200, max_value=40000), min_size=1, max_size=3),
    rate=st.sampled_from([8000, 16000, 22050, 44100]),
    words=st.lists(st.sampled_from(["hello", "the", "dog", "sad", "."]), max_size=4),
)
def test_fuzz_processor_output_always_fits_the_model(processor, lengths, rate, words):
    clips = [noise(length, seed) for seed, length in enumerate(lengths)]
    text = " ".join(words) + " <|audio|>" * len(clips)
    inputs = processor(text=text, audio=clips, sampling_rate=rate)
    resampled = [int(np.ceil(length * 16000 / rate)) for length in lengths]
    expected = sum(num_speech_embeddings(n) for n in resampled)
    assert int((inputs["input_ids"] == processor.audio_token_id).sum()) == expected
    with torch.no_grad():
        FUZZ_MODEL(**inputs)


# --- resuming: the same data and settings, or a clear refusal ----------------------------------


def write_some_targets(processor, folder, texts, **settings):
    from processing.target_generation import generate_targets

    examples = [{"text": text} for text in texts]
    return generate_targets(tiny_model(), processor.tokenizer, examples, folder, batch_size=2, max_new_tokens=2, **settings)


def test_target_resume_with_other_data_is_refused(processor, tmp_path):
    from processing.errors import UserInputError

    shard = write_some_targets(processor, tmp_path, ["hello world", "the dog", "good day", "bad day"])
    with pytest.raises(UserInputError, match=r"targets-00000-of-00001.jsonl:3: field 'text': row 2 was written from other data "
                                             r"\('good day' there, 'sad day' now\)"):
        write_some_targets(processor, tmp_path, ["hello world", "the dog", "sad day", "bad day"])
    with pytest.raises(UserInputError, match="holds more rows than this data gives"):
        write_some_targets(processor, tmp_path, ["hello world", "the dog"])
    lines = shard.read_text().splitlines()
    write_some_targets(processor, tmp_path, ["hello world", "the dog", "good day", "bad day", "the fox"])  # same rows, more
    assert shard.read_text().splitlines()[:4] == lines and len(shard.read_text().splitlines()) == 5


def test_target_resume_with_other_settings_or_shard_count_is_refused(processor, tmp_path):
    from processing.errors import UserInputError
    from processing.target_generation import emotion_prompt

    texts = ["hello world", "the dog", "good day"]
    write_some_targets(processor, tmp_path, texts)
    assert (tmp_path / "targets-00000-of-00001.settings.json").is_file()
    with pytest.raises(UserInputError, match=r"prompt 'processing.target_generation.semantic_prompt' then, "
                                             r"'processing.target_generation.emotion_prompt' now"):
        write_some_targets(processor, tmp_path, texts, prompt=emotion_prompt)
    with pytest.raises(UserInputError, match="holds shards of another run"):
        write_some_targets(processor, tmp_path, texts, shard=0, num_shards=2)


def test_settings_record_refuses_changes_and_accepts_settings_added_since(tmp_path):
    import json
    from dataclasses import dataclass

    from processing.errors import UserInputError
    from processing.resume import check_settings

    @dataclass
    class Settings:
        output: str
        seed: int = 0
        steps: int = 3

    check_settings(tmp_path / "settings.json", Settings("a"), ignore=("output",))
    check_settings(tmp_path / "settings.json", Settings("elsewhere"), ignore=("output",))
    with pytest.raises(UserInputError, match=r"seed 0 then, 1 now"):
        check_settings(tmp_path / "settings.json", Settings("a", seed=1), ignore=("output",))
    (tmp_path / "settings.json").write_text(json.dumps({"seed": 0}))  # written before `steps` existed
    check_settings(tmp_path / "settings.json", Settings("a"), ignore=("output",))


def test_demo_stage3_without_trl_names_the_extra_to_install(tmp_path, monkeypatch):
    from processing.errors import UserInputError
    from trainers.demo import Demo, DemoSettings

    monkeypatch.setitem(sys.modules, "trl", None)  # as if trl were not installed: importing it raises ImportError
    demo = Demo(DemoSettings(output=str(tmp_path), preference_steps=2))
    with pytest.raises(UserInputError, match=r"pip install 'blsp-emo\[preference\]'"):
        demo.train_preference()


def test_demo_refuses_to_resume_with_other_settings(tmp_path):
    from processing.errors import UserInputError
    from trainers.demo import Demo, DemoSettings

    Demo(DemoSettings(output=str(tmp_path), stage1_steps=7))
    Demo(DemoSettings(output=str(tmp_path), stage1_steps=7))
    with pytest.raises(UserInputError, match=r"stage1_steps 7 then, 5 now"):
        Demo(DemoSettings(output=str(tmp_path), stage1_steps=5))
