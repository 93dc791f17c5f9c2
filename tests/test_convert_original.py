"""`blsp-emo convert-original`: the authors' release (Qwen v1 LLM, masked LoRA) → this package.

Tiny random source checkpoints are built here in the release's key layout; the converted LLM is
checked against a forward pass written from Qwen v1's equations.
"""

import base64
import json
import unicodedata
import weakref
from collections import Counter

import numpy as np
import pytest
import regex
import torch
from safetensors import safe_open
from torch.nn import functional as F
from transformers import WhisperConfig, WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from modeling_blsp_emo import BlspEmoForConditionalGeneration, BlspEmoProcessor
from trainers.checkpoints.original import convert as convert_module
from trainers.checkpoints.original.convert import ConversionError, convert_original
from trainers.checkpoints.original.layout import Target, map_key
from trainers.checkpoints.original.qwen_v1_tokenizer import SPECIAL_TOKENS, qwen_v1_tokenizer
from trainers.cli.main import main

from conftest import noise
from fresh_process import run_isolated
from tiny_models import AUDIO_CONFIG, voice_like

# Qwen v1's pre-tokenizer pattern (every digit on its own) and its special-token order.
QWEN_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
CORPUS = "hello world, the quick brown fox jumps over the lazy dog. hello there! I'm fine, you're happy. 中文 test"
HIDDEN, HEADS, LAYERS, QWEN_INTERMEDIATE, VOCAB, ADAPTER_INNER = 32, 4, 2, 96, 576, 16
LORA_RANK, LORA_ALPHA = 4, 8  # scaling 2: a wrong scaling would show
EMOTIONS = 5
SAMPLES = [
    "hello world 12345", "I'm fine.\n\n  the lazy dog!!", "you're 2024-05-06 x123y", "Cafe\u0301 中文 ok?",
    "<|im_start|>user\nhello<|im_end|>\n", "\ttabs  and   spaces \n",
]


# ----------------------------------------------------------------------------- source checkpoints

def train_bpe_ranks(num_merges: int = 48) -> dict[bytes, int]:
    """A tiny byte-level BPE vocabulary trained on CORPUS as Qwen splits it, plus digit tokens that
    only a pattern grouping digits could ever produce."""
    ranks = {bytes([byte]): byte for byte in range(256)}
    words = [[bytes([byte]) for byte in piece.encode()] for piece in regex.findall(QWEN_PATTERN, CORPUS)]
    for _ in range(num_merges):
        pairs = Counter(pair for word in words for pair in zip(word, word[1:]))
        if not pairs:
            break
        (left, right), _ = pairs.most_common(1)[0]
        ranks[left + right] = len(ranks)
        merged_words = []
        for word in words:
            merged, index = [], 0
            while index < len(word):
                if word[index : index + 2] == [left, right]:
                    merged.append(left + right)
                    index += 2
                else:
                    merged.append(word[index])
                    index += 1
            merged_words.append(merged)
        words = merged_words
    for digits in (b"12", b"123"):
        ranks[digits] = len(ranks)
    return ranks


def write_tiktoken(ranks: dict[bytes, int], path) -> None:
    path.write_text("".join(f"{base64.b64encode(token).decode()} {rank}\n" for token, rank in ranks.items()))


def tiktoken_reference(ranks: dict[bytes, int], text: str) -> list[int]:
    """tiktoken's encoding, as Qwen v1 ran it: NFC, special tokens, the pattern, then byte-pair
    merges by lowest rank (a piece that is itself a token is kept whole)."""
    special_ids = {token: len(ranks) + index for index, token in enumerate(SPECIAL_TOKENS)}
    ids = []
    for chunk in regex.split("(" + "|".join(map(regex.escape, special_ids)) + ")", unicodedata.normalize("NFC", text)):
        if chunk in special_ids:
            ids.append(special_ids[chunk])
            continue
        for piece in regex.findall(QWEN_PATTERN, chunk):
            parts = [bytes([byte]) for byte in piece.encode()]
            if piece.encode() in ranks:
                parts = [piece.encode()]
            while len(parts) > 1:
                best = min(range(len(parts) - 1), key=lambda i: ranks.get(parts[i] + parts[i + 1], float("inf")))
                if parts[best] + parts[best + 1] not in ranks:
                    break
                parts[best : best + 2] = [parts[best] + parts[best + 1]]
            ids += [ranks[part] for part in parts]
    return ids


def random_release_state_dict(seed: int, with_lora: bool) -> dict[str, torch.Tensor]:
    """A `Blsp2Model` state dict in the release's layout (tiny Whisper, tiny Qwen v1)."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.1, offset=0.0):
        return torch.randn(*shape, generator=generator) * scale + offset

    torch.manual_seed(seed)
    whisper = WhisperEncoder(WhisperConfig(**AUDIO_CONFIG))
    state = {f"whisper_model.{key}": value.clone() for key, value in whisper.state_dict().items()}
    d_model = AUDIO_CONFIG["d_model"]
    conv_shapes = [(2 * d_model, d_model), (2 * d_model, d_model), (2 * HIDDEN, d_model)]
    for index, (out_channels, in_channels) in enumerate(conv_shapes):
        state[f"adapter.subsampler.conv_layers.{index}.weight"] = rand(out_channels, in_channels, 5)
        state[f"adapter.subsampler.conv_layers.{index}.bias"] = rand(out_channels)
    state["adapter.fc1.weight"] = rand(ADAPTER_INNER, HIDDEN)
    state["adapter.fc2.weight"] = rand(HIDDEN, ADAPTER_INNER)
    state["adapter.speech_ln.weight"], state["adapter.speech_ln.bias"] = rand(HIDDEN, offset=1.0), rand(HIDDEN)
    state["hidden2emotion.weight"] = rand(EMOTIONS, HIDDEN)

    # The release wraps Qwen in its own LoRA model (`qwen_model.model.`).
    qwen = "qwen_model.model." if with_lora else "qwen_model."
    state[f"{qwen}transformer.wte.weight"] = rand(VOCAB, HIDDEN, scale=0.5)
    state[f"{qwen}transformer.ln_f.weight"] = rand(HIDDEN, offset=1.0)
    state[f"{qwen}lm_head.weight"] = rand(VOCAB, HIDDEN)
    state[f"{qwen}transformer.rotary_emb.inv_freq"] = torch.ones(HIDDEN // HEADS // 2)  # a buffer, recomputed
    half = QWEN_INTERMEDIATE // 2
    linears = {  # module → (out, in, bias)
        "attn.c_attn": (3 * HIDDEN, HIDDEN, True), "attn.c_proj": (HIDDEN, HIDDEN, False),
        "mlp.w1": (half, HIDDEN, False), "mlp.w2": (half, HIDDEN, False), "mlp.c_proj": (HIDDEN, half, False),
    }
    for layer in range(LAYERS):
        block = f"{qwen}transformer.h.{layer}."
        state[f"{block}ln_1.weight"], state[f"{block}ln_2.weight"] = rand(HIDDEN, offset=1.0), rand(HIDDEN, offset=1.0)
        for module, (out_features, in_features, bias) in linears.items():
            state[f"{block}{module}.weight"] = rand(out_features, in_features, scale=0.2)
            if bias:
                state[f"{block}{module}.bias"] = rand(out_features)
            if with_lora:  # target_modules c_attn, c_proj, w1, w2: "c_proj" names both attn.c_proj and mlp.c_proj
                state[f"{block}{module}.lora_A.default.weight"] = rand(LORA_RANK, in_features, scale=0.3)
                state[f"{block}{module}.lora_B.default.weight"] = rand(out_features, LORA_RANK, scale=0.3)
    return state


def release_config(with_lora: bool, **overrides) -> dict:
    lora_config = dict(r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.05, target_modules=["c_attn", "c_proj", "w1", "w2"])
    return {
        "architectures": ["Blsp2Model"], "model_type": "blsp2", "adapter_type": "subsampler", "adapter_hidden_layers": 0,
        "conv_kernel_sizes": "5,5,5", "adapter_inner_dim": ADAPTER_INNER, "num_emotions": EMOTIONS, "kd_temperature": 2,
        "lora_config": lora_config if with_lora else {}, "lora_scope": "audio",
        "whisper_config": WhisperConfig(**AUDIO_CONFIG).to_dict(),
        "qwen_config": {
            "model_type": "qwen", "vocab_size": VOCAB, "hidden_size": HIDDEN, "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS, "kv_channels": HIDDEN // HEADS, "intermediate_size": QWEN_INTERMEDIATE,
            "layer_norm_epsilon": 1e-6, "rotary_emb_base": 10000, "rotary_pct": 1.0, "max_position_embeddings": 512,
            "use_dynamic_ntk": True, "use_logn_attn": True, "no_bias": True, "tie_word_embeddings": False,
        },
        **overrides,
    }


def write_release(directory, seed: int, with_lora: bool, num_shards: int = 1, **config_overrides) -> dict[str, torch.Tensor]:
    """A release folder: config.json, pytorch_model*.bin (+ index), qwen.tiktoken, generation config."""
    directory.mkdir(parents=True)
    state = random_release_state_dict(seed, with_lora)
    (directory / "config.json").write_text(json.dumps(release_config(with_lora, **config_overrides)))
    (directory / "generation_config.json").write_text(json.dumps({"chat_format": "chatml", "repetition_penalty": 1.1}))
    write_tiktoken(train_bpe_ranks(), directory / "qwen.tiktoken")
    WhisperFeatureExtractor(feature_size=AUDIO_CONFIG["num_mel_bins"]).save_pretrained(directory)
    if num_shards == 1:
        torch.save(state, directory / "pytorch_model.bin")
        return state
    keys, weight_map = list(state), {}
    for shard in range(num_shards):
        name = f"pytorch_model-{shard + 1:05d}-of-{num_shards:05d}.bin"
        shard_keys = keys[shard::num_shards]
        torch.save({key: state[key] for key in shard_keys}, directory / name)
        weight_map.update(dict.fromkeys(shard_keys, name))
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return state


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """The released shape: LoRA at speech positions, weights in two shards; converted into small shards.
    Returns the source state dict, the `ConversionResult` and the converted folder."""
    root = tmp_path_factory.mktemp("release")
    state = write_release(root / "original", seed=3, with_lora=True, num_shards=2)
    return state, convert_original(root / "original", root / "converted", max_shard_size="100KB"), root / "converted"


@pytest.fixture(scope="module")
def release_without_lora(tmp_path_factory):
    root = tmp_path_factory.mktemp("release_plain")
    state = write_release(root / "original", seed=4, with_lora=False)
    return state, convert_original(root / "original", root / "converted"), root / "converted"


def converted_tensors(directory) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(path, "pt") as file:
            for key in file.keys():
                assert key not in tensors, f"{key} written twice"
                tensors[key] = file.get_tensor(key)
    return tensors


# ----------------------------------------------------------------------------- Qwen v1 reference

def qwen_v1_logits(state, embeds: torch.Tensor, lora_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Qwen v1 from its equations: blocks of RMSNorm → fused attention with rotary (positions
    0…L−1) → residual, RMSNorm → c_proj(w1(x) * silu(w2(x))) → residual; then ln_f and lm_head.
    LoRA (B·A·alpha/r) is added where `lora_mask` is 1."""
    prefix = next(key for key in state if key.endswith("transformer.wte.weight")).removesuffix("transformer.wte.weight")

    def linear(x, name):
        output = x @ state[f"{prefix}{name}.weight"].T
        if f"{prefix}{name}.bias" in state:
            output = output + state[f"{prefix}{name}.bias"]
        if lora_mask is not None and f"{prefix}{name}.lora_A.default.weight" in state:
            delta = x @ state[f"{prefix}{name}.lora_A.default.weight"].T @ state[f"{prefix}{name}.lora_B.default.weight"].T
            output = output + lora_mask[..., None] * delta * (LORA_ALPHA / LORA_RANK)
        return output

    def rms_norm(x, name):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * state[f"{prefix}{name}.weight"]

    batch, length, _ = embeds.shape
    head_dim = HIDDEN // HEADS
    inv_freq = 1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.cat([torch.outer(torch.arange(length).float(), inv_freq)] * 2, dim=-1)
    cos, sin = angles.cos(), angles.sin()

    def rotate(x):  # rotate-half rotary embedding
        first, second = x[..., : head_dim // 2], x[..., head_dim // 2 :]
        return x * cos + torch.cat([-second, first], dim=-1) * sin

    causal = torch.full((length, length), float("-inf")).triu(1)
    hidden = embeds
    for layer in range(LAYERS):
        block = f"transformer.h.{layer}."
        query, key, value = linear(rms_norm(hidden, block + "ln_1"), block + "attn.c_attn").split(HIDDEN, dim=-1)
        query, key, value = (t.view(batch, length, HEADS, head_dim).transpose(1, 2) for t in (query, key, value))
        scores = rotate(query) @ rotate(key).transpose(-1, -2) / head_dim**0.5 + causal
        attention = (scores.softmax(-1) @ value).transpose(1, 2).reshape(batch, length, HIDDEN)
        hidden = hidden + linear(attention, block + "attn.c_proj")
        normed = rms_norm(hidden, block + "ln_2")
        hidden = hidden + linear(linear(normed, block + "mlp.w1") * F.silu(linear(normed, block + "mlp.w2")), block + "mlp.c_proj")
    return rms_norm(hidden, "transformer.ln_f") @ state[f"{prefix}lm_head.weight"].T


def converted_logits(model, embeds, lora_mask=None) -> torch.Tensor:
    extra = {} if lora_mask is None else {"lora_mask": lora_mask}
    with torch.no_grad():
        hidden = model.model.language_model(inputs_embeds=embeds, **extra).last_hidden_state
        return model.lm_head(hidden)


# ----------------------------------------------------------------------------- tokenizer

def test_tokenizer_encodes_like_tiktoken_with_qwen_pattern(tmp_path):
    ranks = train_bpe_ranks()
    write_tiktoken(ranks, tmp_path / "qwen.tiktoken")
    tokenizer = qwen_v1_tokenizer(tmp_path / "qwen.tiktoken")
    for text in SAMPLES:
        assert tokenizer(text)["input_ids"] == tiktoken_reference(ranks, text), text
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == unicodedata.normalize("NFC", text)


def test_digits_are_split_one_by_one_even_when_a_digit_group_is_a_token(tmp_path):
    ranks = train_bpe_ranks()
    write_tiktoken(ranks, tmp_path / "qwen.tiktoken")
    tokenizer = qwen_v1_tokenizer(tmp_path / "qwen.tiktoken")
    assert tokenizer.convert_ids_to_tokens(tokenizer("12345")["input_ids"]) == list("12345")
    assert ranks[b"123"] in tokenizer.get_vocab().values()


def test_special_tokens_follow_the_bpe_ranks_and_chat_template_is_chatml(tmp_path):
    ranks = train_bpe_ranks()
    write_tiktoken(ranks, tmp_path / "qwen.tiktoken")
    tokenizer = qwen_v1_tokenizer(tmp_path / "qwen.tiktoken", ("<|audio|>",))
    ids = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|extra_204|>", "<|audio|>"])
    assert ids == [len(ranks), len(ranks) + 1, len(ranks) + 2, len(ranks) + 207, len(ranks) + 208]
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|endoftext|>")
    messages = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "hi"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


# ----------------------------------------------------------------------------- key mapping

@pytest.mark.parametrize("prefix", ["qwen_model.", "qwen_model.model.", "qwen_model.base_model.model."])
def test_fused_attention_and_mlp_map_to_qwen2_layers(prefix):
    block, target = f"{prefix}transformer.h.3.", "model.language_model.layers.3."
    assert map_key(f"{block}attn.c_attn.weight", ()) == tuple(
        Target(f"{target}self_attn.{name}.weight", part, 3) for part, name in enumerate(["q_proj", "k_proj", "v_proj"])
    )
    assert map_key(f"{block}attn.c_proj.weight", ()) == (Target(f"{target}self_attn.o_proj.weight"),)
    assert map_key(f"{block}mlp.w1.weight", ()) == (Target(f"{target}mlp.up_proj.weight"),)  # c_proj(w1(x) * silu(w2(x)))
    assert map_key(f"{block}mlp.w2.weight", ()) == (Target(f"{target}mlp.gate_proj.weight"),)
    assert map_key(f"{block}mlp.c_proj.weight", ()) == (Target(f"{target}mlp.down_proj.weight"),)
    assert map_key(f"{block}ln_2.weight", ()) == (Target(f"{target}post_attention_layernorm.weight"),)


@pytest.mark.parametrize("base", ["", "base_layer."])
def test_lora_weights_map_to_masked_lora_layers(base):
    block, target = "qwen_model.base_model.model.transformer.h.0.", "model.language_model.layers.0.self_attn."
    lora = ("attn.c_attn",)
    assert map_key(f"{block}attn.c_attn.{base}bias", lora)[1] == Target(f"{target}k_proj.base_layer.bias", 1, 3)
    # One shared down-projection: each of q, k, v gets a whole copy; the up-projection's rows split.
    assert map_key(f"{block}attn.c_attn.lora_A.default.weight", lora) == tuple(
        Target(f"{target}{name}.lora_A.weight") for name in ("q_proj", "k_proj", "v_proj")
    )
    assert map_key(f"{block}attn.c_attn.lora_B.default.weight", lora)[2] == Target(f"{target}v_proj.lora_B.weight", 2, 3)


@pytest.mark.parametrize("fixture", ["release", "release_without_lora"])
def test_every_source_tensor_is_used_once_and_lands_unchanged(fixture, request):
    state, result, directory = request.getfixturevalue(fixture)
    assert set(result.sources) == set(state)
    tensors = converted_tensors(directory)
    produced = [target.key for targets in result.sources.values() for target in targets]
    assert sorted(produced) == sorted(tensors)  # each converted tensor comes from exactly one source tensor
    for key, targets in result.sources.items():
        for target in targets:
            torch.testing.assert_close(tensors[target.key], state[key].chunk(target.parts)[target.part], rtol=0, atol=0)


def test_result_lists_sources_and_config_matches_the_release(release_without_lora, release):
    state, result, directory = release_without_lora
    assert set(result.sources) == set(state)
    assert result.sources["qwen_model.transformer.rotary_emb.inv_freq"] == ()  # a buffer, recomputed
    assert result.lora_target_modules is None and result.dtype == torch.float32
    config = json.loads((directory / "config.json").read_text())
    assert config["audio_padding"] == "max_length" and config["lora_scope"] is None
    text = config["text_config"]
    assert (text["model_type"], text["intermediate_size"], text["num_key_value_heads"]) == ("qwen2", QWEN_INTERMEDIATE // 2, HEADS)
    assert text["rope_parameters"]["rope_theta"] == 10000 and text["rms_norm_eps"] == 1e-6

    lora_directory = release[2]
    lora_config = json.loads((lora_directory / "config.json").read_text())
    assert lora_config["lora_scope"] == "audio"
    assert (lora_config["lora_rank"], lora_config["lora_alpha"]) == (LORA_RANK, LORA_ALPHA)
    assert sorted(lora_config["lora_target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "gate_proj", "down_proj"]
    )
    assert len(list(lora_directory.glob("model-*-of-*.safetensors"))) > 1  # written in shards as they filled
    generation = json.loads((lora_directory / "generation_config.json").read_text())
    tokenizer = BlspEmoProcessor.from_pretrained(lora_directory).tokenizer
    assert generation["eos_token_id"] == tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|im_start|>", "<|endoftext|>"])
    assert generation["repetition_penalty"] == 1.1 and lora_config["audio_token_id"] in generation["suppress_tokens"]


# ----------------------------------------------------------------------------- numerics

def test_converted_llm_matches_qwen_v1_equations_with_lora_at_speech_positions(release):
    state, _, directory = release
    model = BlspEmoForConditionalGeneration.from_pretrained(directory, dtype=torch.float32).eval()
    embeds = torch.randn(2, 9, HIDDEN, generator=torch.Generator().manual_seed(0))
    speech = torch.zeros(2, 9)
    speech[0, 2:6], speech[1, 1:8] = 1, 1
    expected = qwen_v1_logits(state, embeds, speech)
    torch.testing.assert_close(converted_logits(model, embeds, speech.bool()), expected, rtol=1e-5, atol=1e-5)
    # Away from speech, LoRA is off: text-only prompts get the base LLM.
    torch.testing.assert_close(converted_logits(model, embeds), qwen_v1_logits(state, embeds), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(expected, qwen_v1_logits(state, embeds), atol=1e-3)


def test_converted_llm_matches_qwen_v1_equations_without_lora(release_without_lora):
    state, _, directory = release_without_lora
    model = BlspEmoForConditionalGeneration.from_pretrained(directory, dtype=torch.float32).eval()
    input_ids = torch.tensor([[5, 17, 300, 42, 7, 99, 0]])
    embeds = model.get_input_embeddings()(input_ids).detach()
    torch.testing.assert_close(embeds, state["qwen_model.transformer.wte.weight"][input_ids])
    torch.testing.assert_close(converted_logits(model, embeds), qwen_v1_logits(state, embeds), rtol=1e-5, atol=1e-5)


def test_speech_embeddings_and_emotion_match_the_release_path(release):
    """Whisper over 30 s trimmed to the clip, then conv-GLU ×3, residual bottleneck, LayerNorm, mean-pooled head."""
    state, _, directory = release
    model = BlspEmoForConditionalGeneration.from_pretrained(directory, dtype=torch.float32).eval()
    clip = noise(24001)
    features = BlspEmoProcessor.from_pretrained(directory).audio_features([clip])
    # The release's features: Whisper's extractor padding to 30 s, its attention mask marking the clip.
    extracted = WhisperFeatureExtractor(feature_size=AUDIO_CONFIG["num_mel_bins"])(
        clip, sampling_rate=16000, return_attention_mask=True, return_tensors="pt"
    )
    torch.testing.assert_close(features["input_features"], extracted.input_features)
    encoder = WhisperEncoder(WhisperConfig(**AUDIO_CONFIG)).eval()
    encoder.load_state_dict({key.removeprefix("whisper_model."): value for key, value in state.items() if key.startswith("whisper_model.")})
    with torch.no_grad():
        frames = int(extracted.attention_mask.sum())
        hidden = encoder(extracted.input_features).last_hidden_state[:, : (frames - 1) // 2 + 1].transpose(1, 2)
        for index in range(3):
            weight, bias = state[f"adapter.subsampler.conv_layers.{index}.weight"], state[f"adapter.subsampler.conv_layers.{index}.bias"]
            hidden = F.glu(F.conv1d(hidden, weight, bias, stride=2, padding=2), dim=1)
        hidden = hidden.transpose(1, 2)
        hidden = hidden + F.gelu(hidden @ state["adapter.fc1.weight"].T) @ state["adapter.fc2.weight"].T
        expected = F.layer_norm(hidden, (HIDDEN,), state["adapter.speech_ln.weight"], state["adapter.speech_ln.bias"], 1e-5)
        embeds, lengths = model.model.get_audio_features(features["input_features"], features["feature_attention_mask"])
        emotion = model.classify_emotion(embeds, lengths)
    assert int(lengths[0]) == expected.shape[1]
    torch.testing.assert_close(embeds[:, : expected.shape[1]], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(emotion, expected.mean(1) @ state["hidden2emotion.weight"].T, rtol=1e-5, atol=1e-5)


def test_converted_checkpoint_runs_in_the_pipeline_in_a_fresh_process(release, tmp_path):
    directory = release[2]
    np.save(tmp_path / "clip.npy", voice_like(1.25, 1))
    result = run_isolated(
        f"""
import json, numpy as np, transformers
pipe = transformers.pipeline("audio-to-text", model={str(directory)!r}, trust_remote_code=True)
clip = np.load({str(tmp_path / "clip.npy")!r})
reply, emotion = (pipe(clip, sampling_rate=16000, max_new_tokens=3, return_emotion=flag) for flag in (False, True))
print(json.dumps(dict(reply=reply, emotion=emotion, padding=pipe.model.config.audio_padding, module=type(pipe.model).__module__)))
""",
        tmp_path,
    )
    assert result["module"].startswith("transformers_modules.") and result["padding"] == "max_length"
    assert isinstance(result["reply"][0]["generated_text"], str)
    assert set(result["emotion"][0]["scores"]) == {"neutral", "happy", "angry", "sad", "surprise"}


# ----------------------------------------------------------------------------- command line, streaming, refusals

def test_command_line_converts_and_reports(release_without_lora, tmp_path, capsys):
    source = release_without_lora[2].parent / "original"
    assert main(["convert-original", str(source), str(tmp_path / "out"), "--dtype", "bfloat16"]) == 0
    assert "bfloat16" in capsys.readouterr().out
    assert {tensor.dtype for tensor in converted_tensors(tmp_path / "out").values()} == {torch.bfloat16}
    assert main(["convert-original", str(source), str(tmp_path / "out")]) == 2
    assert "not empty" in capsys.readouterr().err


def test_source_shards_are_loaded_one_at_a_time_and_freed(tmp_path, monkeypatch):
    write_release(tmp_path / "original", seed=5, with_lora=True, num_shards=3)
    load, earlier, alive_at_load = convert_module.load_state_dict, [], []

    def tracking_load(path):
        alive_at_load.append(sum(ref() is not None for ref in earlier))
        state_dict = load(path)
        earlier.extend(weakref.ref(tensor) for tensor in state_dict.values())
        return state_dict

    monkeypatch.setattr(convert_module, "load_state_dict", tracking_load)
    convert_original(tmp_path / "original", tmp_path / "converted")
    assert alive_at_load == [0, 0, 0]


def test_refuses_a_pickle_that_is_not_plain_tensors(tmp_path):
    write_release(tmp_path / "original", seed=6, with_lora=False)
    state = torch.load(tmp_path / "original" / "pytorch_model.bin", weights_only=True)
    state["adapter.fc1.weight"] = torch.nn.Linear(2, 2)  # an object: needs full unpickling
    torch.save(state, tmp_path / "original" / "pytorch_model.bin")
    with pytest.raises(ConversionError, match=r"weights_only=True"):
        convert_original(tmp_path / "original", tmp_path / "converted")


@pytest.mark.parametrize(
    "overrides, message",
    [({"adapter_type": "cformer"}, "adapter_type='cformer'"), ({"adapter_hidden_layers": 2}, "adapter_hidden_layers=2")],
)
def test_refuses_adapters_other_than_the_released_one(tmp_path, overrides, message):
    write_release(tmp_path / "original", seed=7, with_lora=False, **overrides)
    with pytest.raises(ConversionError, match=message):
        convert_original(tmp_path / "original", tmp_path / "converted")


@pytest.mark.parametrize(
    "extra_key, message",
    [
        ("adapter.fc1.bias", r"no place in the converted model: \['adapter.fc1.bias'\]"),
        ("qwen_model.transformer.h.0.ln_1.bias", r"not in the converted model: \['model.language_model.layers.0.input_layernorm.bias'\]"),
    ],
)
def test_refuses_tensors_without_a_place(tmp_path, extra_key, message):
    state = write_release(tmp_path / "original", seed=8, with_lora=False)
    state[extra_key] = torch.zeros(ADAPTER_INNER)
    torch.save(state, tmp_path / "original" / "pytorch_model.bin")
    with pytest.raises(ConversionError, match=message):
        convert_original(tmp_path / "original", tmp_path / "converted")
