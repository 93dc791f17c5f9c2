"""Convert a CTranslate2 Whisper model to a transformers `WhisperForConditionalGeneration` checkpoint.

A CTranslate2 Whisper directory holds `model.bin` (the weights), `config.json` (suppressed tokens,
alignment heads), `tokenizer.json` and `vocabulary.json` or `vocabulary.txt`. The result is an
ordinary float32 checkpoint directory (safetensors, config, generation config, feature extractor,
tokenizer) that `from_pretrained` loads and `generate` transcribes with. Nothing in the converter is
specific to one Whisper size: layer counts, widths, heads, mel bins and vocabulary come from the
tensors, the special-token ids from the tokenizer.
"""

import json
import logging
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
from transformers import (
    AddedToken,
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperTokenizer,
)

logger = logging.getLogger(__name__)

SUPPORTED_BINARY_VERSION = 6
# CTranslate2's on-disk dtype codes.
_DTYPES = {0: torch.float32, 1: torch.int8, 2: torch.int16, 3: torch.int32, 4: torch.float16, 5: torch.bfloat16}
# CTranslate2's ActivationType enum value for exact (erf) GELU, the only activation Whisper uses.
_CT2_GELU = 3
# Decoder options a Whisper conversion always writes with these values; anything else is a model
# transformers' Whisper cannot represent.
_FIXED_DECODER_OPTIONS = {"decoder/activation": _CT2_GELU, "decoder/alibi": 0, "decoder/pre_norm": 1,
                          "decoder/scale_embeddings": 0, "decoder/start_from_zero_embedding": 0}
# Guided-alignment settings of CTranslate2's generic decoder (Whisper's word-timing heads come from
# config.json instead) and ALiBi settings that newer CTranslate2 writes but that only apply with
# `decoder/alibi` on: no information for transformers.
_UNUSED_DECODER_OPTIONS = ("decoder/alignment_heads", "decoder/alignment_layer")
_OPTIONAL_UNUSED_DECODER_OPTIONS = ("decoder/alibi_use_positive_positions", "decoder/scale_alibi")
_TIED_PROJECTION = ("decoder/projection/weight", "decoder/embeddings/weight")
_LAYER = re.compile(r"^(encoder|decoder)/layer_(\d+)/")


@dataclass
class CT2Model:
    """The contents of a CTranslate2 `model.bin`: variables by name (tensors in their stored dtype;
    scalars are 0-d tensors) and aliases (alias name → name of the variable it shares)."""

    spec: str
    revision: int
    variables: dict[str, torch.Tensor]
    aliases: dict[str, str]


def read_ct2_model(path: str | Path) -> CT2Model:
    """Parse a CTranslate2 `model.bin` (binary version 6)."""
    path = Path(path)
    with path.open("rb") as stream:
        version = _read(stream, "I")
        if version != SUPPORTED_BINARY_VERSION:
            raise ValueError(f"{path}: CTranslate2 binary version {version}, expected {SUPPORTED_BINARY_VERSION}")
        spec, revision = _read_str(stream), _read(stream, "I")
        variables = {}
        for _ in range(_read(stream, "I")):
            name = _read_str(stream)
            shape = [_read(stream, "I") for _ in range(_read(stream, "B"))]
            code, num_bytes = _read(stream, "B"), _read(stream, "I")
            if code not in _DTYPES:
                raise ValueError(f"{path}: variable {name} has unknown dtype code {code}")
            data = bytearray(stream.read(num_bytes))
            if len(data) != num_bytes:
                raise ValueError(f"{path}: truncated while reading variable {name}")
            variables[name] = torch.frombuffer(data, dtype=_DTYPES[code]).reshape(shape)
        aliases = {}
        for _ in range(_read(stream, "I")):
            alias = _read_str(stream)
            aliases[alias] = _read_str(stream)
        if stream.read(1):
            raise ValueError(f"{path}: unexpected data after the alias table")
    return CT2Model(spec, revision, variables, aliases)


def _read(stream: BinaryIO, fmt: str) -> int:
    size = struct.calcsize("<" + fmt)
    data = stream.read(size)
    if len(data) != size:
        raise ValueError(f"{stream.name}: unexpected end of file")
    return struct.unpack("<" + fmt, data)[0]


def _read_str(stream: BinaryIO) -> str:
    # The length counts the trailing NUL.
    return stream.read(_read(stream, "H"))[:-1].decode("utf-8")


def whisper_tokenizer_from_ct2(ct2_dir: str | Path) -> WhisperTokenizer:
    """A Whisper tokenizer from `tokenizer.json`, completed with the timestamp tokens that only the
    CTranslate2 vocabulary lists; every id is checked against that vocabulary."""
    ct2_dir = Path(ct2_dir)
    data = json.loads((ct2_dir / "tokenizer.json").read_text(encoding="utf-8"))
    model = data["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"{ct2_dir}/tokenizer.json: expected a BPE tokenizer, found {model.get('type')!r}")
    merges = [tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge) for merge in model["merges"]]
    specials = [token["content"] for token in sorted(data["added_tokens"], key=lambda token: token["id"])]
    eos = "<|endoftext|>"
    tokenizer = WhisperTokenizer(
        vocab=model["vocab"], merges=merges, unk_token=eos, bos_token=eos, eos_token=eos,
        extra_special_tokens=[token for token in specials if token != eos],
    )
    vocabulary = read_ct2_vocabulary(ct2_dir)
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in vocabulary[len(tokenizer):]])
    mismatched = [i for i, token in enumerate(vocabulary) if tokenizer.convert_ids_to_tokens(i) != token]
    if mismatched or len(tokenizer) != len(vocabulary):
        raise ValueError(
            f"{ct2_dir}: tokenizer.json disagrees with the vocabulary ({len(tokenizer)} vs {len(vocabulary)} tokens; "
            f"first differing ids {mismatched[:5]})"
        )
    return tokenizer


def read_ct2_vocabulary(ct2_dir: str | Path) -> list[str]:
    """The tokens by id: `vocabulary.json` (newer CTranslate2) or `vocabulary.txt` (older; one per line)."""
    ct2_dir = Path(ct2_dir)
    if (ct2_dir / "vocabulary.json").is_file():
        return json.loads((ct2_dir / "vocabulary.json").read_text(encoding="utf-8"))
    if (ct2_dir / "vocabulary.txt").is_file():
        return (ct2_dir / "vocabulary.txt").read_text(encoding="utf-8").splitlines()
    raise FileNotFoundError(f"{ct2_dir}: no vocabulary.json or vocabulary.txt")


@dataclass(frozen=True)
class WhisperTokenIds:
    """Special-token ids of one Whisper vocabulary (they differ between English-only and multilingual
    models, and large-v3 adds a language)."""

    end_of_text: int
    start_of_transcript: int
    translate: int
    transcribe: int
    start_of_prev: int
    no_timestamps: int
    languages: dict[str, int]

    @classmethod
    def from_tokenizer(cls, tokenizer: WhisperTokenizer) -> "WhisperTokenIds":
        def token_id(token: str) -> int:
            value = tokenizer.convert_tokens_to_ids(token)
            if value is None or (value == tokenizer.unk_token_id and token != tokenizer.unk_token):
                raise ValueError(f"Whisper tokenizer has no {token} token")
            return value

        start, translate = token_id("<|startoftranscript|>"), token_id("<|translate|>")
        # Language tokens sit between <|startoftranscript|> and <|translate|>.
        languages = {token: index for index in range(start + 1, translate)
                     for token in [tokenizer.convert_ids_to_tokens(index)]}
        return cls(
            end_of_text=token_id("<|endoftext|>"), start_of_transcript=start, translate=translate,
            transcribe=token_id("<|transcribe|>"), start_of_prev=token_id("<|startofprev|>"),
            no_timestamps=token_id("<|notimestamps|>"), languages=languages,
        )

    def start_end_ids(self) -> dict[str, int]:
        """Start, end and padding ids as the keyword arguments of `WhisperConfig`/`GenerationConfig`."""
        return {"decoder_start_token_id": self.start_of_transcript, "bos_token_id": self.start_of_transcript,
                "eos_token_id": self.end_of_text, "pad_token_id": self.end_of_text}


def _suppressed_ids(options: dict) -> dict[str, list[int] | None]:
    """CTranslate2's suppressed-token lists as `WhisperConfig`/`GenerationConfig` keyword arguments."""
    return {"suppress_tokens": options.get("suppress_ids"), "begin_suppress_tokens": options.get("suppress_ids_begin")}


def whisper_from_ct2(
    model: CT2Model, options: dict, token_ids: WhisperTokenIds
) -> tuple[WhisperConfig, dict[str, torch.Tensor]]:
    """The transformers config and float32 state dict equivalent to a CTranslate2 Whisper model.

    `options` is the CTranslate2 `config.json`. Every variable and alias of `model` must be used
    exactly once (a ValueError lists leftovers); the key bias in CTranslate2's fused projections is
    dropped (transformers' Whisper has none, and a key bias cannot change attention weights).
    """
    if model.spec != "WhisperSpec":
        raise ValueError(f"expected a CTranslate2 WhisperSpec model, found {model.spec!r}")
    remaining = dict(model.variables)

    def take(name: str) -> torch.Tensor:
        if name not in remaining:
            raise ValueError(f"CTranslate2 model has no variable {name!r} (or it was used twice)")
        tensor = remaining.pop(name)
        if not tensor.is_floating_point() and tensor.dim() > 0:
            raise ValueError(f"{name} is stored as {tensor.dtype}: quantized CTranslate2 models are not "
                             "supported (convert with --quantization float16 or float32)")
        return tensor.to(torch.float32) if tensor.dim() else tensor

    for name, expected in _FIXED_DECODER_OPTIONS.items():
        if int(take(name)) != expected:
            raise ValueError(f"{name} = {int(model.variables[name])}, transformers' Whisper needs {expected}")
    for name in _UNUSED_DECODER_OPTIONS + tuple(n for n in _OPTIONAL_UNUSED_DECODER_OPTIONS if n in remaining):
        take(name)
    state = {}
    encoder_layers, decoder_layers = _layer_count(model, "encoder"), _layer_count(model, "decoder")
    _convert_encoder(take, state, encoder_layers)
    _convert_decoder(take, state, decoder_layers)
    tie = _check_aliases(model.aliases)
    if not tie:
        state["proj_out.weight"] = take(_TIED_PROJECTION[0])
    config = WhisperConfig(
        vocab_size=state["model.decoder.embed_tokens.weight"].shape[0],
        num_mel_bins=state["model.encoder.conv1.weight"].shape[1],
        d_model=state["model.encoder.conv1.weight"].shape[0],
        encoder_layers=encoder_layers,
        decoder_layers=decoder_layers,
        encoder_attention_heads=int(take("encoder/num_heads")),
        decoder_attention_heads=int(take("decoder/num_heads")),
        encoder_ffn_dim=state["model.encoder.layers.0.fc1.weight"].shape[0],
        decoder_ffn_dim=state["model.decoder.layers.0.fc1.weight"].shape[0],
        max_source_positions=state["model.encoder.embed_positions.weight"].shape[0],
        max_target_positions=state["model.decoder.embed_positions.weight"].shape[0],
        activation_function="gelu",
        tie_word_embeddings=tie,
        **token_ids.start_end_ids(),
        **_suppressed_ids(options),
    )
    if remaining:
        raise ValueError(f"CTranslate2 variables not mapped to transformers' Whisper: {sorted(remaining)}")
    return config, state


def _layer_count(model: CT2Model, stack: str) -> int:
    indices = {int(match[2]) for name in model.variables if (match := _LAYER.match(name)) and match[1] == stack}
    if not indices or indices != set(range(len(indices))):
        raise ValueError(f"CTranslate2 {stack} layers are not numbered 0..n-1: {sorted(indices)}")
    return len(indices)


def _check_aliases(aliases: dict[str, str]) -> bool:
    """Whether the output projection is tied to the token embeddings (the only alias Whisper has)."""
    unknown = {alias: target for alias, target in aliases.items() if (alias, target) != _TIED_PROJECTION}
    if unknown:
        raise ValueError(f"CTranslate2 aliases not mapped to transformers' Whisper: {unknown}")
    return _TIED_PROJECTION[0] in aliases


Take = Callable[[str], torch.Tensor]


def _linear(take: Take, state: dict, source: str, target: str) -> None:
    state[f"{target}.weight"] = take(f"{source}/weight")
    state[f"{target}.bias"] = take(f"{source}/bias")


def _layer_norm(take: Take, state: dict, source: str, target: str) -> None:
    state[f"{target}.weight"] = take(f"{source}/gamma")
    state[f"{target}.bias"] = take(f"{source}/beta")


def _fused(take: Take, state: dict, source: str, targets: list[str]) -> None:
    """Split a fused projection along its output rows; `k_proj` targets get no bias."""
    weights = take(f"{source}/weight").chunk(len(targets))
    biases = take(f"{source}/bias").chunk(len(targets))
    for target, weight, bias in zip(targets, weights, biases):
        state[f"{target}.weight"] = weight.clone()
        if not target.endswith("k_proj"):
            state[f"{target}.bias"] = bias.clone()


def _attention(take: Take, state: dict, source: str, target: str, fused_groups: list[list[str]]) -> None:
    _layer_norm(take, state, f"{source}/layer_norm", f"{target}_layer_norm")
    for index, group in enumerate(fused_groups):
        names = [f"{target}.{name}_proj" for name in group]
        if len(names) == 1:
            _linear(take, state, f"{source}/linear_{index}", names[0])
        else:
            _fused(take, state, f"{source}/linear_{index}", names)
    _linear(take, state, f"{source}/linear_{len(fused_groups)}", f"{target}.out_proj")


def _feed_forward(take: Take, state: dict, source: str, target: str) -> None:
    _layer_norm(take, state, f"{source}/ffn/layer_norm", f"{target}.final_layer_norm")
    _linear(take, state, f"{source}/ffn/linear_0", f"{target}.fc1")
    _linear(take, state, f"{source}/ffn/linear_1", f"{target}.fc2")


def _convert_encoder(take: Take, state: dict, num_layers: int) -> None:
    for conv in ("conv1", "conv2"):
        _linear(take, state, f"encoder/{conv}", f"model.encoder.{conv}")
    state["model.encoder.embed_positions.weight"] = take("encoder/position_encodings/encodings")
    for i in range(num_layers):
        source, target = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
        _attention(take, state, f"{source}/self_attention", f"{target}.self_attn", [["q", "k", "v"]])
        _feed_forward(take, state, source, target)
    _layer_norm(take, state, "encoder/layer_norm", "model.encoder.layer_norm")


def _convert_decoder(take: Take, state: dict, num_layers: int) -> None:
    state["model.decoder.embed_tokens.weight"] = take("decoder/embeddings/weight")
    state["model.decoder.embed_positions.weight"] = take("decoder/position_encodings/encodings")
    for i in range(num_layers):
        source, target = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        _attention(take, state, f"{source}/self_attention", f"{target}.self_attn", [["q", "k", "v"]])
        _attention(take, state, f"{source}/attention", f"{target}.encoder_attn", [["q"], ["k", "v"]])
        _feed_forward(take, state, source, target)
    _layer_norm(take, state, "decoder/layer_norm", "model.decoder.layer_norm")


def whisper_generation_config(config: WhisperConfig, options: dict, token_ids: WhisperTokenIds) -> GenerationConfig:
    """What `WhisperForConditionalGeneration.generate` needs: start/end tokens, suppression lists,
    timestamp and prompt tokens, and for multilingual models the language and task tokens."""
    # Whisper's own rule: the multilingual vocabularies are the ones with 51865 or more tokens.
    multilingual = config.vocab_size >= 51865
    generation_config = GenerationConfig(
        **token_ids.start_end_ids(),
        **_suppressed_ids(options),
        max_length=config.max_target_positions,
        no_timestamps_token_id=token_ids.no_timestamps,
        prev_sot_token_id=token_ids.start_of_prev,
        max_initial_timestamp_index=50,
        return_timestamps=False,
        is_multilingual=multilingual,
    )
    if options.get("alignment_heads"):
        generation_config.alignment_heads = options["alignment_heads"]
    if multilingual:
        generation_config.lang_to_id = token_ids.languages
        generation_config.task_to_id = {"transcribe": token_ids.transcribe, "translate": token_ids.translate}
    return generation_config


def convert_ct2_whisper(ct2_dir: str | Path, output_dir: str | Path) -> Path:
    """Write a float32 transformers Whisper checkpoint for the CTranslate2 model in `ct2_dir`.

    `ct2_dir` must hold `model.bin`, `config.json`, `tokenizer.json` and `vocabulary.json` or
    `vocabulary.txt`. Returns `output_dir`, which then loads with
    `WhisperForConditionalGeneration.from_pretrained` and `WhisperProcessor.from_pretrained`.
    """
    ct2_dir, output_dir = Path(ct2_dir), Path(output_dir)
    missing = [name for name in ("model.bin", "config.json", "tokenizer.json") if not (ct2_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{ct2_dir}: not a CTranslate2 Whisper directory (missing {', '.join(missing)})")
    logger.info("Reading CTranslate2 Whisper model from %s", ct2_dir)
    options = json.loads((ct2_dir / "config.json").read_text(encoding="utf-8"))
    tokenizer = whisper_tokenizer_from_ct2(ct2_dir)
    token_ids = WhisperTokenIds.from_tokenizer(tokenizer)
    config, state = whisper_from_ct2(read_ct2_model(ct2_dir / "model.bin"), options, token_ids)
    if config.vocab_size != len(tokenizer):
        raise ValueError(
            f"{ct2_dir}: model has {config.vocab_size} token embeddings, tokenizer {len(tokenizer)} tokens"
        )

    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    missing_keys, unexpected_keys = model.load_state_dict(state, strict=False, assign=True)
    missing_keys = set(missing_keys) - (set(model._tied_weights_keys or {}) if config.tie_word_embeddings else set())
    if missing_keys or unexpected_keys:
        raise ValueError(f"conversion mismatch: missing {sorted(missing_keys)}, unexpected {sorted(unexpected_keys)}")
    model.tie_weights()
    model.generation_config = whisper_generation_config(config, options, token_ids)

    logger.info("Writing transformers Whisper checkpoint to %s", output_dir)
    model.save_pretrained(output_dir)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir
