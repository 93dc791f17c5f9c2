"""Masked LoRA (lora_scope="audio"): LoRA that changes the LLM only at speech positions."""

import pytest
import torch
from torch import nn

from modeling_blsp_emo import BlspEmoForConditionalGeneration
from modeling_blsp_emo.masked_lora import MaskedLoraLinear

from tiny_models import (
    AUDIO_TOKEN_ID,
    gradients,
    greedy,
    left_pad,
    positions,
    row_alone,
    speech_inputs,
    tiny_model,
)

TEXT_MODEL_TYPES = ["qwen2", "llama"]
LINEAR_LAYERS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_layer(dropout: float = 0.0) -> MaskedLoraLinear:
    torch.manual_seed(0)
    layer = MaskedLoraLinear(nn.Linear(8, 6), rank=4, alpha=8, dropout=dropout)
    nn.init.normal_(layer.lora_B.weight)
    return layer


def randomise_lora_b(model: nn.Module) -> None:
    torch.manual_seed(1)
    for module in model.modules():
        if isinstance(module, MaskedLoraLinear):
            nn.init.normal_(module.lora_B.weight, std=0.2)


def audio_lora_model(text_model_type: str, **overrides) -> BlspEmoForConditionalGeneration:
    """A tiny model with audio-scope LoRA whose B matrices are random (so that LoRA does something)."""
    model = tiny_model(text_model_type, lora_scope="audio", **overrides)
    randomise_lora_b(model)
    return model


def base_model_of(lora_model: BlspEmoForConditionalGeneration, text_model_type: str) -> BlspEmoForConditionalGeneration:
    """The same model without LoRA: the LoRA model's weights with the LoRA matrices left out."""
    base = tiny_model(text_model_type)
    state = {
        key.replace(".base_layer.", "."): value
        for key, value in lora_model.state_dict().items()
        if ".lora_A." not in key and ".lora_B." not in key
    }
    base.load_state_dict(state)
    return base


def test_masked_lora_linear_without_a_mask_is_exactly_the_base_layer():
    layer = lora_layer()
    hidden = torch.randn(2, 5, 8)
    assert torch.equal(layer(hidden), layer.base_layer(hidden))


def test_masked_lora_linear_changes_exactly_the_masked_positions():
    layer = lora_layer()
    hidden = torch.randn(2, 5, 8)
    mask = torch.tensor([[0, 1, 1, 0, 0], [1, 0, 0, 0, 1]], dtype=torch.bool)
    output, base = layer(hidden, lora_mask=mask), layer.base_layer(hidden)
    assert torch.equal((output != base).any(-1), mask)
    expected = base + layer.lora_B(layer.lora_A(hidden)) * layer.scaling
    torch.testing.assert_close(output[mask], expected[mask])


def test_fresh_masked_lora_changes_nothing():
    torch.manual_seed(0)
    layer = MaskedLoraLinear(nn.Linear(8, 6), rank=4, alpha=8, dropout=0.0)
    hidden = torch.randn(2, 5, 8)
    assert torch.equal(layer(hidden, lora_mask=torch.ones(2, 5)), layer.base_layer(hidden))


@pytest.mark.parametrize("text_model_type", TEXT_MODEL_TYPES)
def test_freshly_built_audio_lora_model_equals_the_base_model(text_model_type):
    model = tiny_model(text_model_type, lora_scope="audio")
    lora_b = [module.lora_B.weight for module in model.modules() if isinstance(module, MaskedLoraLinear)]
    assert lora_b and all(not weight.any() for weight in lora_b)
    base = base_model_of(model, text_model_type)
    batch = speech_inputs([16000])
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, base(**batch).logits)


@pytest.mark.parametrize("text_model_type", TEXT_MODEL_TYPES)
def test_audio_scope_lora_leaves_text_only_prompts_exactly_unchanged(text_model_type):
    model = audio_lora_model(text_model_type)
    base = base_model_of(model, text_model_type)
    input_ids, attention_mask = left_pad([[7, 8, 9, 10, 11], [12, 13, 14]])
    text = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": positions(attention_mask)}
    with torch.no_grad():
        assert torch.equal(model(**text).logits, base(**text).logits)


@pytest.mark.parametrize("text_model_type", TEXT_MODEL_TYPES)
def test_audio_scope_lora_changes_prompts_with_audio_from_the_speech_on(text_model_type):
    model = audio_lora_model(text_model_type)
    base = base_model_of(model, text_model_type)
    batch = speech_inputs([16000, 8000, ()])
    with torch.no_grad():
        logits = model(**batch, position_ids=positions(batch["attention_mask"])).logits
        base_logits = base(**batch, position_ids=positions(batch["attention_mask"])).logits
    for row in range(3):
        real = batch["attention_mask"][row].bool()
        is_audio = batch["input_ids"][row, real] == AUDIO_TOKEN_ID
        first_audio = int(is_audio.float().argmax()) if is_audio.any() else int(real.sum())
        ours, theirs = logits[row, real], base_logits[row, real]
        # Causal attention: tokens before the speech never see a LoRA-changed state.
        torch.testing.assert_close(ours[:first_audio], theirs[:first_audio], atol=1e-6, rtol=0)
        assert all(not torch.allclose(ours[step], theirs[step]) for step in range(first_audio, len(ours)))


@pytest.mark.parametrize("text_model_type", TEXT_MODEL_TYPES)
def test_audio_scope_lora_weights_are_saved_and_reloaded(text_model_type, tmp_path):
    model = audio_lora_model(text_model_type)
    state = model.state_dict()
    for layer in range(model.config.text_config.num_hidden_layers):
        for name in LINEAR_LAYERS:
            module = "self_attn" if name in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            prefix = f"model.language_model.layers.{layer}.{module}.{name}"
            assert {f"{prefix}.lora_A.weight", f"{prefix}.lora_B.weight", f"{prefix}.base_layer.weight"} <= state.keys()

    model.save_pretrained(tmp_path)
    reloaded = BlspEmoForConditionalGeneration.from_pretrained(tmp_path).eval()
    reloaded_state = reloaded.state_dict()
    assert all(torch.equal(state[key], reloaded_state[key]) for key in state)
    batch = speech_inputs([16000])
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reloaded(**batch).logits)


def test_loading_with_a_lora_layout_the_weights_lack_is_refused(tmp_path):
    tiny_model().save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="has no audio-scope LoRA weights.*add_audio_lora"):
        BlspEmoForConditionalGeneration.from_pretrained(tmp_path / "plain", lora_scope="audio")
    audio_lora_model("qwen2").save_pretrained(tmp_path / "lora")
    with pytest.raises(ValueError, match="has audio-scope LoRA weights but the config says lora_scope=None"):
        BlspEmoForConditionalGeneration.from_pretrained(tmp_path / "lora", lora_scope=None)
    _, info = BlspEmoForConditionalGeneration.from_pretrained(tmp_path / "lora", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_lora_target_modules_limit_the_wrapped_layers():
    model = tiny_model(lora_scope="audio", lora_target_modules=["q_proj", "v_proj"])
    wrapped = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, MaskedLoraLinear)}
    assert wrapped == {"q_proj", "v_proj"}


@pytest.mark.parametrize("text_model_type", TEXT_MODEL_TYPES)
def test_audio_scope_lora_gradients_are_the_same_under_gradient_checkpointing(text_model_type):
    model = audio_lora_model(text_model_type, lora_dropout=0.0).train()
    batch = speech_inputs([8000, 16000])
    plain = gradients(model, batch)
    model.activation_checkpointing_enable()
    checkpointed = gradients(model, batch)
    lora_names = [name for name in plain if ".lora_" in name]
    assert len(lora_names) == 2 * len(LINEAR_LAYERS) * model.config.text_config.num_hidden_layers
    assert all(plain[name].any() for name in lora_names)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("text_model_type", TEXT_MODEL_TYPES)
def test_audio_scope_lora_batched_generation_equals_one_by_one(text_model_type):
    model = audio_lora_model(text_model_type)
    clip_lengths = [8000, 27000, 16000]
    batch = speech_inputs(clip_lengths)
    batched = greedy(model, batch, max_new_tokens=8)
    one_by_one = [greedy(model, row_alone(batch, row), max_new_tokens=8)[0] for row in range(len(clip_lengths))]
    assert batched == one_by_one
