"""BlspEmoForConditionalGeneration: speech → placeholder embeddings → LLM, generation, saving, errors.

Inputs are built by hand (log-mel features per clip, `num_speech_embeddings` placeholders per clip,
left-padded prompt rows) so that these tests depend on the model only.
"""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from modeling_blsp_emo import BlspEmoConfig, BlspEmoForConditionalGeneration
from modeling_blsp_emo.speech_lengths import HOP_LENGTH, num_speech_embeddings

from tiny_models import (
    AUDIO_CONFIG,
    AUDIO_TOKEN_ID,
    EOS_TOKEN_ID,
    PAD_TOKEN_ID,
    SPECIAL_TOKENS,
    WORDS,
    clip_features,
    gradients,
    greedy,
    left_pad,
    positions,
    random_clip,
    row_alone,
    speech_inputs,
    tiny_config,
    tiny_model,
)

TEXT_MODEL_TYPES = ["qwen2", "llama"]


@pytest.mark.parametrize("audio_padding", ["longest", "max_length"])
def test_speech_embedding_count_formula_matches_the_adapter_output(audio_padding):
    model = tiny_model(audio_padding=audio_padding)
    for num_samples in [400, 401, 1599, 1600, 16000, 48000, 48159, 123456, 479999, 480000]:
        features, frame_mask = clip_features(random_clip(num_samples), audio_padding)
        with torch.no_grad():
            embeds, lengths = model.model.get_audio_features(features[None], frame_mask[None])
        expected = num_speech_embeddings(num_samples, audio_padding)
        assert int(lengths[0]) == embeds.shape[1] == expected, num_samples
    assert num_speech_embeddings(480000, audio_padding) == 188


@pytest.mark.parametrize("audio_padding", ["longest", "max_length"])
@pytest.mark.parametrize("text_model_type", TEXT_MODEL_TYPES)
def test_padded_batch_logits_equal_each_row_run_alone(text_model_type, audio_padding):
    model = tiny_model(text_model_type, audio_padding=audio_padding)
    clip_lengths = [8000, 27000, 16000]
    batch = speech_inputs(clip_lengths, audio_padding=audio_padding)
    with torch.no_grad():
        batched = model(**batch, position_ids=positions(batch["attention_mask"]))
        for row in range(len(clip_lengths)):
            alone = model(**row_alone(batch, row, audio_padding))
            real = batch["attention_mask"][row].bool()
            torch.testing.assert_close(batched.logits[row, real], alone.logits[0], atol=1e-4, rtol=0)
            # A clip's speech embeddings do not depend on its batch mates.
            steps = int(batched.audio_lengths[row])
            assert steps == alone.audio_embeds.shape[1]
            torch.testing.assert_close(batched.audio_embeds[row, :steps], alone.audio_embeds[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("text_model_type", TEXT_MODEL_TYPES)
def test_batched_left_padded_greedy_generation_equals_one_by_one(text_model_type):
    model = tiny_model(text_model_type)
    clip_lengths = [8000, 27000, 16000]
    batch = speech_inputs(clip_lengths)
    batched = greedy(model, batch, max_new_tokens=8)
    one_by_one = [greedy(model, row_alone(batch, row), max_new_tokens=8)[0] for row in range(len(clip_lengths))]
    assert batched == one_by_one


@pytest.mark.parametrize("text_model_type", TEXT_MODEL_TYPES)
def test_cached_greedy_generation_equals_full_recomputation(text_model_type):
    model = tiny_model(text_model_type)
    batch = speech_inputs([12000, 20000])
    steps = 6
    cached = model.generate(
        **batch, do_sample=False, max_new_tokens=steps, min_new_tokens=steps, pad_token_id=PAD_TOKEN_ID
    )

    # Reference: a full forward pass over the whole sequence (audio included) for every new token.
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    audio = {key: batch[key] for key in ("input_features", "feature_attention_mask")}
    with torch.no_grad():
        for _ in range(steps):
            logits = model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=positions(attention_mask), **audio
            ).logits[:, -1]
            logits[:, [AUDIO_TOKEN_ID, EOS_TOKEN_ID]] = -math.inf  # what generate suppresses here
            input_ids = torch.cat([input_ids, logits.argmax(-1, keepdim=True)], dim=1)
            attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
    assert torch.equal(cached, input_ids)

    uncached = model.generate(
        **batch, do_sample=False, max_new_tokens=steps, min_new_tokens=steps, pad_token_id=PAD_TOKEN_ID, use_cache=False
    )
    assert torch.equal(uncached, input_ids)


@pytest.mark.parametrize("audio_padding", ["longest", "max_length"])
def test_both_audio_padding_modes_run_forward_and_generate(audio_padding):
    model = tiny_model(audio_padding=audio_padding)
    clip_lengths = [8000, 27000]
    batch = speech_inputs(clip_lengths, audio_padding=audio_padding)
    if audio_padding == "max_length":
        assert batch["input_features"].shape[-1] == 3000
    with torch.no_grad():
        output = model(**batch, position_ids=positions(batch["attention_mask"]))
    assert output.audio_lengths.tolist() == [num_speech_embeddings(n, audio_padding) for n in clip_lengths]
    assert torch.isfinite(output.logits).all()
    assert all(len(tokens) > 0 for tokens in greedy(model, batch, max_new_tokens=3))


def test_max_length_padding_equals_the_release_encoder_path():
    model = tiny_model(audio_padding="max_length")
    clip_lengths = [24000, 40007]
    batch = speech_inputs(clip_lengths, audio_padding="max_length")
    with torch.no_grad():
        embeds, lengths = model.model.get_audio_features(batch["input_features"], batch["feature_attention_mask"])
        for clip, num_samples in enumerate(clip_lengths):
            # The release: transformers' WhisperEncoder on all 3000 frames, trimmed to the clip's frames.
            encoded = model.model.audio_encoder(batch["input_features"][clip : clip + 1]).last_hidden_state
            frames = math.ceil(num_samples / HOP_LENGTH)
            encoded = encoded[:, : (frames - 1) // 2 + 1]
            expected, _ = model.model.adapter(encoded, torch.tensor([encoded.shape[1]]))
            assert int(lengths[clip]) == expected.shape[1] == num_speech_embeddings(num_samples, "max_length")
            torch.testing.assert_close(embeds[clip, : int(lengths[clip])], expected[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("text_model_type", TEXT_MODEL_TYPES)
def test_save_and_reload_is_bit_exact_in_safetensors(text_model_type, tmp_path):
    model = tiny_model(text_model_type)
    batch = speech_inputs([16000])
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert not list(tmp_path.glob("*.bin"))

    reloaded = BlspEmoForConditionalGeneration.from_pretrained(tmp_path).eval()
    state, reloaded_state = model.state_dict(), reloaded.state_dict()
    assert state.keys() == reloaded_state.keys()
    assert all(torch.equal(state[key], reloaded_state[key]) for key in state)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reloaded(**batch).logits)


def test_reload_in_bfloat16_and_with_a_device_map(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    batch = speech_inputs([16000])

    bf16 = BlspEmoForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert {parameter.dtype for parameter in bf16.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        logits = bf16(**batch).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()

    mapped = BlspEmoForConditionalGeneration.from_pretrained(tmp_path, device_map="cpu").eval()
    assert {parameter.device.type for parameter in mapped.parameters()} == {"cpu"}
    with torch.no_grad():
        assert torch.isfinite(mapped(**batch).logits).all()


@pytest.mark.parametrize("checkpointing_kwargs", [None, {"use_reentrant": True}], ids=["default", "reentrant"])
@pytest.mark.parametrize("text_model_type", TEXT_MODEL_TYPES)
def test_gradient_checkpointing_gives_the_same_gradients(text_model_type, checkpointing_kwargs):
    model = tiny_model(text_model_type).train()  # the tiny configs have no dropout
    batch = speech_inputs([8000, 16000])
    plain = gradients(model, batch)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpointing_kwargs)
    assert model.is_activation_checkpointing
    checkpointed = gradients(model, batch)
    assert plain.keys() == checkpointed.keys()
    assert any(name.startswith("model.audio_encoder.") for name in plain)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-5, rtol=1e-5, msg=name)


def test_placeholder_count_differing_from_speech_embeddings_is_an_error():
    model = tiny_model()
    batch = speech_inputs([16000])
    batch["input_ids"] = torch.cat([batch["input_ids"], torch.tensor([[AUDIO_TOKEN_ID]])], dim=1)
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    count = num_speech_embeddings(16000)
    with pytest.raises(ValueError, match=rf"{count + 1} audio placeholder tokens but the audio gives {count} speech"):
        model(**batch)


def test_features_with_the_wrong_number_of_mel_bins_are_an_error():
    model = tiny_model()
    batch = speech_inputs([16000])
    batch["input_features"] = torch.zeros(1, 128, batch["input_features"].shape[-1])
    with pytest.raises(ValueError, match=r"128 mel bins but this Whisper encoder expects 80"):
        model(**batch)


def test_empty_audio_is_an_error():
    model = tiny_model()
    batch = speech_inputs([16000, 8000])
    batch["feature_attention_mask"][1] = 0
    with pytest.raises(ValueError, match=r"no mel frames \(empty audio\)"):
        model(**batch)


def test_placeholders_without_input_features_are_an_error():
    model = tiny_model()
    batch = speech_inputs([16000])
    with pytest.raises(ValueError, match=r"audio placeholder tokens but no input_features"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


@pytest.mark.parametrize("text_model_type", TEXT_MODEL_TYPES)
def test_generate_never_emits_the_audio_placeholder(text_model_type):
    model = tiny_model(text_model_type)
    # Make the placeholder's logit huge, so that it is the most likely next token everywhere.
    model.lm_head.register_forward_hook(
        lambda module, args, logits: logits.index_fill(-1, torch.tensor([AUDIO_TOKEN_ID]), 1e4)
    )
    batch = speech_inputs([16000, ()])
    with torch.no_grad():
        assert (model(**batch).logits.argmax(-1) == AUDIO_TOKEN_ID).all()
    prompt_width = batch["input_ids"].shape[1]
    for sampling in ({"do_sample": False}, {"do_sample": True, "top_k": 0}):
        output = model.generate(**batch, max_new_tokens=5, min_new_tokens=5, pad_token_id=PAD_TOKEN_ID, **sampling)
        assert not (output[:, prompt_width:] == AUDIO_TOKEN_ID).any()


def test_emotion_head_returns_logits_and_adds_its_loss_to_the_lm_loss():
    model = tiny_model()
    batch = speech_inputs([16000, 8000])
    labels = batch["input_ids"].masked_fill(batch["input_ids"] == AUDIO_TOKEN_ID, -100)
    with torch.no_grad():
        output = model(**batch, labels=labels, emotion_labels=torch.tensor([1, 3]))
        emotion_only = model(**batch, emotion_labels=torch.tensor([1, 3]))
    assert output.emotion_logits.shape == (2, 5)
    expected = torch.nn.functional.cross_entropy(output.emotion_logits, torch.tensor([1, 3]))
    torch.testing.assert_close(output.emotion_loss, expected)
    torch.testing.assert_close(output.loss, output.lm_loss + output.emotion_loss)
    assert emotion_only.lm_loss is None
    torch.testing.assert_close(emotion_only.loss, output.emotion_loss)


def test_emotion_head_pools_all_windows_of_an_audio_item():
    model = tiny_model()
    # Row 0 holds one item split into two windows; row 1 a one-window item.
    batch = speech_inputs([(16000, 9000), 12000])
    with torch.no_grad():
        output = model(**batch, audio_item_index=torch.tensor([0, 0, 1]))
    embeds, lengths = output.audio_embeds, output.audio_lengths
    item0 = torch.cat([embeds[0, : lengths[0]], embeds[1, : lengths[1]]]).mean(0)
    item1 = embeds[2, : lengths[2]].mean(0)
    expected = model.emotion_head(torch.stack([item0, item1]))
    assert output.emotion_logits.shape == (2, 5)
    torch.testing.assert_close(output.emotion_logits, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("text_model_type", TEXT_MODEL_TYPES)
def test_beam_search_on_a_batch_equals_beam_search_on_each_row(text_model_type):
    model = tiny_model(text_model_type)
    batch = speech_inputs([8000, 20000])
    beams = {"num_beams": 2, "max_new_tokens": 5}
    batched = greedy(model, batch, **beams)
    for row in range(2):
        assert batched[row] == greedy(model, row_alone(batch, row), **beams)[0]


def test_final_logit_softcapping_of_the_llm_is_applied():
    cap = 0.05  # well below the tiny model's raw logits
    text_config = dict(
        model_type="gemma2", vocab_size=len(SPECIAL_TOKENS) + len(WORDS), hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
        final_logit_softcapping=cap, eos_token_id=EOS_TOKEN_ID,
    )  # fmt: skip
    config = BlspEmoConfig(
        audio_config=AUDIO_CONFIG, text_config=text_config, audio_token_id=AUDIO_TOKEN_ID, adapter_inner_dim=16
    )
    torch.manual_seed(0)
    model = BlspEmoForConditionalGeneration(config).eval()
    batch = speech_inputs([16000, ()])
    with torch.no_grad():
        logits = model(**batch, position_ids=positions(batch["attention_mask"])).logits
    assert logits.abs().max() <= cap
    assert logits.abs().max() > 0.9 * cap  # the cap, not small weights, bounds them

    # Text-only logits equal those of the stock Gemma 2 LM with the same weights.
    stock = AutoModelForCausalLM.from_config(config.text_config).eval()
    stock.model.load_state_dict(model.model.language_model.state_dict())
    stock.lm_head.load_state_dict(model.lm_head.state_dict())
    input_ids, attention_mask = left_pad([[7, 8, 9, 10], [11, 12]])
    with torch.no_grad():
        ours = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions(attention_mask)).logits
        theirs = stock(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions(attention_mask)).logits
    real = attention_mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-5, rtol=1e-5)


def test_text_only_prompts_need_no_audio():
    model = tiny_model()
    input_ids, attention_mask = left_pad([[7, 8, 9], [10, 11, 12, 13]])
    with torch.no_grad():
        output = model(input_ids=input_ids, attention_mask=attention_mask)
    assert output.logits.shape == (2, 4, tiny_config().text_config.vocab_size)
    assert output.audio_embeds is None and output.emotion_logits is None


def test_generate_from_inputs_embeds_equals_generate_from_input_ids():
    model = tiny_model()
    batch = speech_inputs([16000, 9000])
    embeds = model.get_input_embeddings()(batch["input_ids"])
    audio = {name: batch[name] for name in ("input_features", "feature_attention_mask")}
    with torch.no_grad():
        from_ids = model.generate(**batch, max_new_tokens=5, do_sample=False, pad_token_id=PAD_TOKEN_ID)
        from_embeds = model.generate(
            inputs_embeds=embeds, attention_mask=batch["attention_mask"], **audio,
            max_new_tokens=5, do_sample=False, pad_token_id=PAD_TOKEN_ID,
        )  # fmt: skip
    assert from_embeds.tolist() == from_ids[:, batch["input_ids"].shape[1] :].tolist()


def test_the_kv_cache_has_one_name():
    import inspect

    from modeling_blsp_emo.modeling_blsp_emo import BlspEmoModel

    for forward in (BlspEmoForConditionalGeneration.forward, BlspEmoModel.forward):
        parameters = inspect.signature(forward).parameters
        assert "cache" in parameters and "past_key_values" not in parameters
    model = tiny_model()
    batch = speech_inputs([16000])
    with torch.no_grad():
        output = model(**batch, use_cache=True)
        assert output.cache.get_seq_length() == batch["input_ids"].shape[1]
        # The old name still works through transformers' own deprecation shim.
        with pytest.warns(FutureWarning, match="past_key_values"):
            model(input_ids=batch["input_ids"][:, -1:], past_key_values=output.cache, use_cache=True)


def test_an_old_transformers_is_refused_with_the_version_it_needs():
    from modeling_blsp_emo.compatibility import MIN_TRANSFORMERS_VERSION, check_transformers_version

    check_transformers_version(MIN_TRANSFORMERS_VERSION + ".0")
    check_transformers_version("6.0.0.dev0")
    with pytest.raises(ImportError, match=rf"transformers>={MIN_TRANSFORMERS_VERSION}, found 5\.23\.1"):
        check_transformers_version("5.23.1")


def test_causal_lm_and_multimodal_auto_classes_load_the_generation_model(tmp_path):
    from transformers import AutoModelForMultimodalLM

    tiny_model().save_pretrained(tmp_path)
    for auto_class in (AutoModelForCausalLM, AutoModelForMultimodalLM):
        assert type(auto_class.from_pretrained(tmp_path)) is BlspEmoForConditionalGeneration
