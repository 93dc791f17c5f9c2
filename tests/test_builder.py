"""Assembling BLSP-Emo from a pretrained Whisper and a pretrained causal LM."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, WhisperModel

from modeling_blsp_emo import BlspEmoForConditionalGeneration
from trainers.checkpoints.builder import build_blsp_emo, save_checkpoint

from conftest import noise


@pytest.fixture(scope="module")
def built(pretrained_parts):
    whisper_dir, llm_dir = pretrained_parts
    return build_blsp_emo(str(whisper_dir), str(llm_dir))


def test_pretrained_weights_land_in_place(built, pretrained_parts):
    model, _ = built
    whisper_dir, llm_dir = pretrained_parts
    whisper_encoder = WhisperModel.from_pretrained(whisper_dir).encoder.state_dict()
    for name, value in model.model.audio_encoder.state_dict().items():
        torch.testing.assert_close(value, whisper_encoder[name], rtol=0, atol=0)
    causal_lm = AutoModelForCausalLM.from_pretrained(llm_dir)
    original = causal_lm.model.state_dict()
    for name, value in model.model.language_model.state_dict().items():
        if name == "embed_tokens.weight":
            value = value[: original[name].shape[0]]  # rows past the original vocabulary are new tokens
        torch.testing.assert_close(value, original[name], rtol=0, atol=0)


def test_audio_token_is_added_and_embeddings_grow(built, pretrained_parts):
    model, processor = built
    original = AutoTokenizer.from_pretrained(pretrained_parts[1])
    assert len(processor.tokenizer) == len(original) + 1
    assert model.config.audio_token_id == processor.audio_token_id == len(original)
    assert model.get_input_embeddings().num_embeddings == len(processor.tokenizer)
    assert processor.audio_token_id in model.generation_config.suppress_tokens


def test_tied_llm_stays_tied(built):
    model, _ = built
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight is model.get_input_embeddings().weight


def test_new_modules_are_initialised(built):
    model, _ = built
    for parameter in list(model.model.adapter.parameters()) + list(model.emotion_head.parameters()):
        assert parameter.device.type == "cpu" and torch.isfinite(parameter).all()
    assert model.model.adapter.fc1.weight.std() > 0


def test_saved_build_reloads_and_generates(built, tmp_path):
    model, processor = built
    save_checkpoint(model, processor, tmp_path)
    reloaded = BlspEmoForConditionalGeneration.from_pretrained(tmp_path).eval()
    inputs = processor(text="hello <|audio|>", audio=noise(16000), sampling_rate=16000)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model.eval()(**inputs).logits, rtol=0, atol=0)
    generated = reloaded.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 3


def test_non_whisper_encoder_is_refused(pretrained_parts):
    _, llm_dir = pretrained_parts
    with pytest.raises(ValueError, match="expected a Whisper checkpoint"):
        build_blsp_emo(str(llm_dir), str(llm_dir))
