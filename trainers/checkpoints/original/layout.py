"""The authors' BLSP-Emo release in this package's terms: where each of its tensors goes, and its
Qwen v1 config as a Qwen2 config.

| release key (`qwen_model.` may be followed by `model.` or `base_model.model.` when LoRA wraps it) | converted key |
| --- | --- |
| `whisper_model.*` | `model.audio_encoder.*` |
| `adapter.subsampler.conv_layers.N.*`, `adapter.fc1/fc2.weight`, `adapter.speech_ln.*` | `model.adapter.conv_layers.N.*`, `fc1/fc2.weight`, `layer_norm.*` |
| `hidden2emotion.weight` | `emotion_head.weight` |
| `qwen_model.transformer.wte.weight`, `.transformer.ln_f.weight`, `.lm_head.weight` | `model.language_model.embed_tokens.weight`, `.norm.weight`, `lm_head.weight` |
| `….transformer.h.N.attn.c_attn.{weight,bias}` (rows q, k, v) | `model.language_model.layers.N.self_attn.{q,k,v}_proj.*` |
| `….h.N.attn.c_proj`, `.mlp.w1`, `.mlp.w2`, `.mlp.c_proj`, `.ln_1`, `.ln_2` | `….o_proj`, `mlp.up_proj`, `mlp.gate_proj`, `mlp.down_proj`, `input_layernorm`, `post_attention_layernorm` |
| `….{module}.lora_A.default.weight`, `.lora_B.default.weight` | `….{proj}.lora_A.weight`, `.lora_B.weight` (base weights under `.base_layer.`) |
"""

import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import Qwen2Config

logger = logging.getLogger(__name__)

# `QWenConfig`'s defaults, for fields a release config might leave out.
QWEN_V1_DEFAULTS = dict(
    vocab_size=151936, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, layer_norm_epsilon=1e-6,
    initializer_range=0.02, max_position_embeddings=8192, scale_attn_weights=True, kv_channels=128, rotary_pct=1.0,
    rotary_emb_base=10000, use_dynamic_ntk=True, use_logn_attn=True, intermediate_size=22016, no_bias=True,
    tie_word_embeddings=False,
)

# Qwen v1 block modules → Qwen2 modules. `c_attn` stacks q, k and v by rows. Qwen v1's MLP is
# c_proj(w1(x) * silu(w2(x))) and Qwen2's is down(silu(gate(x)) * up(x)): w2 is the gate, w1 the up.
QWEN_BLOCK_MODULES = {
    "ln_1": ("input_layernorm",),
    "attn.c_attn": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "attn.c_proj": ("self_attn.o_proj",),
    "ln_2": ("post_attention_layernorm",),
    "mlp.w1": ("mlp.up_proj",),
    "mlp.w2": ("mlp.gate_proj",),
    "mlp.c_proj": ("mlp.down_proj",),
}
# Source key pattern → target key template, for tensors that keep their shape: outside the LLM …
RELEASE_KEYS = (
    (r"whisper_model\.(.+)", r"model.audio_encoder.\1"),
    (r"adapter\.subsampler\.conv_layers\.(\d+)\.(weight|bias)", r"model.adapter.conv_layers.\1.\2"),
    (r"adapter\.(fc1|fc2)\.weight", r"model.adapter.\1.weight"),
    (r"adapter\.speech_ln\.(weight|bias)", r"model.adapter.layer_norm.\1"),
    (r"hidden2emotion\.weight", "emotion_head.weight"),
)
# … and in the LLM, outside its blocks (keys without their `qwen_model.` prefix).
QWEN_KEYS = (
    (r"transformer\.wte\.weight", "model.language_model.embed_tokens.weight"),
    (r"transformer\.ln_f\.weight", "model.language_model.norm.weight"),
    (r"lm_head\.weight", "lm_head.weight"),
)
# Buffers recomputed from the config.
DROPPED_KEYS = re.compile(r"transformer\.(h\.\d+\.attn\.)?rotary_emb\.inv_freq")
# The LLM's keys: plain, or inside a LoRA wrapper (`model.` for the release's own LoRA model,
# `base_model.model.` for peft's).
QWEN_KEY = re.compile(r"qwen_model\.(?:base_model\.model\.|model\.)?(?P<key>.+)")
BLOCK_KEY = re.compile(
    r"transformer\.h\.(?P<layer>\d+)\.(?P<module>" + "|".join(map(re.escape, QWEN_BLOCK_MODULES)) + r")\."
    r"(?P<param>(?:base_layer\.)?(?:weight|bias)|lora_[AB]\.default\.weight)"
)


class ConversionError(ValueError):
    """The source folder is not a release checkpoint that can be converted; the message says why."""


@dataclass(frozen=True)
class Target:
    """A converted tensor: the whole source tensor, or row block `part` of `parts` equal blocks."""

    key: str
    part: int = 0
    parts: int = 1


def lora_modules(source_keys: Sequence[str]) -> tuple[str, ...]:
    """The Qwen v1 block modules that carry LoRA weights, the same in every block."""
    per_layer: dict[str, set[str]] = {}
    for source_key in source_keys:
        qwen_key = QWEN_KEY.fullmatch(source_key)
        block = qwen_key and BLOCK_KEY.fullmatch(qwen_key["key"])
        if block:
            modules = per_layer.setdefault(block["layer"], set())
            if block["param"].startswith("lora_A"):
                modules.add(block["module"])
    found = {frozenset(modules) for modules in per_layer.values()}
    if len(found) > 1:
        raise ConversionError("LoRA covers different layers in different blocks; the masked LoRA needs the same in all")
    return tuple(sorted(next(iter(found), ())))


def map_key(source_key: str, lora: Sequence[str]) -> tuple[Target, ...] | None:
    """Where a source tensor goes (`()` for buffers recomputed from the config, None if nowhere).

    `lora` lists the Qwen v1 modules with LoRA: their base weights move under `base_layer`. The
    fused `c_attn` LoRA keeps one down-projection `lora_A`, which each of q/k/v receives a copy of,
    while its `lora_B` rows split into the q, k and v parts.
    """
    qwen_key = QWEN_KEY.fullmatch(source_key)
    key = qwen_key["key"] if qwen_key else source_key
    if qwen_key and DROPPED_KEYS.fullmatch(key):
        return ()
    block = BLOCK_KEY.fullmatch(key) if qwen_key else None
    if block:
        names, module = QWEN_BLOCK_MODULES[block["module"]], block["module"]
        prefix = f"model.language_model.layers.{block['layer']}."
        param = block["param"].removeprefix("base_layer.")
        if param.startswith("lora_A"):
            return tuple(Target(f"{prefix}{name}.lora_A.weight") for name in names)
        leaf = "lora_B.weight" if param.startswith("lora_B") else ("base_layer." if module in lora else "") + param
        return tuple(Target(f"{prefix}{name}.{leaf}", part, len(names)) for part, name in enumerate(names))
    for pattern, template in QWEN_KEYS if qwen_key else RELEASE_KEYS:
        if match := re.fullmatch(pattern, key):
            return (Target(match.expand(template)),)
    return None


def plan_conversion(source_keys: Sequence[str], expected_keys: Sequence[str], lora: Sequence[str]) -> dict[str, tuple[Target, ...]]:
    """Each source key's targets; raises unless every source key has a place and every key of the
    converted model comes from exactly one source tensor."""
    plan = {key: map_key(key, lora) for key in source_keys}
    unplaced = [key for key, targets in plan.items() if targets is None]
    if unplaced:
        raise ConversionError(f"{len(unplaced)} tensors of the release have no place in the converted model: {unplaced[:5]}")
    produced = Counter(target.key for targets in plan.values() for target in targets)
    problems = {
        "written twice": [key for key, count in produced.items() if count > 1],
        "not in the converted model": sorted(set(produced) - set(expected_keys)),
        "missing from the release": sorted(set(expected_keys) - set(produced)),
    }
    problems = {label: keys for label, keys in problems.items() if keys}
    if problems:
        raise ConversionError("; ".join(f"{len(keys)} keys {label}: {keys[:5]}" for label, keys in problems.items()))
    return plan


def qwen2_text_config(qwen_config: dict, eos_token_id: int, pad_token_id: int) -> Qwen2Config:
    """The Qwen2 config computing what Qwen v1 computes (up to its training length)."""
    qwen = {**QWEN_V1_DEFAULTS, **qwen_config}
    hidden, heads = qwen["hidden_size"], qwen["num_attention_heads"]
    problems = [
        problem
        for problem, found in (
            (f"rotary_pct={qwen['rotary_pct']} (rotary over part of each head)", qwen["rotary_pct"] != 1.0),
            (f"kv_channels={qwen['kv_channels']} != hidden_size / heads", qwen["kv_channels"] * heads != hidden),
            ("no_bias=False (biases on every linear layer)", not qwen["no_bias"]),
            ("scale_attn_weights=False", not qwen["scale_attn_weights"]),
            ("tie_word_embeddings=True", qwen["tie_word_embeddings"]),
            (f"odd intermediate_size={qwen['intermediate_size']}", qwen["intermediate_size"] % 2),
        )
        if found
    ]
    if problems:
        raise ConversionError("qwen_config has no Qwen2 equivalent: " + "; ".join(problems))
    max_positions = qwen.get("seq_length") or qwen["max_position_embeddings"]
    if qwen["use_dynamic_ntk"] or qwen["use_logn_attn"]:
        logger.info("Qwen v1's dynamic NTK / log-n scaling acted beyond %d tokens only; the Qwen2 LLM uses plain RoPE", max_positions)
    return Qwen2Config(
        vocab_size=qwen["vocab_size"],
        hidden_size=hidden,
        intermediate_size=qwen["intermediate_size"] // 2,  # Qwen v1 counts w1 and w2 together
        num_hidden_layers=qwen["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=heads,
        hidden_act="silu",
        max_position_embeddings=max_positions,
        initializer_range=qwen["initializer_range"],
        rms_norm_eps=qwen["layer_norm_epsilon"],
        rope_parameters={"rope_type": "default", "rope_theta": float(qwen["rotary_emb_base"])},
        tie_word_embeddings=False,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )


__all__ = ["QWEN_BLOCK_MODULES", "ConversionError", "Target", "lora_modules", "map_key", "plan_conversion", "qwen2_text_config"]
