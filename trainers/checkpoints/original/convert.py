"""`blsp-emo convert-original`: the authors' BLSP-Emo release → a checkpoint of this package.

The release (Hub `cwang621/blsp-emo`) is a pickled state dict of their `Blsp2Model`: a Whisper
encoder (`whisper_model.*`), the conv subsampler adapter (`adapter.*`), Qwen-7B-Chat version 1
(`qwen_model.*`, not a transformers architecture) with LoRA applied at speech positions only, and
the emotion head (`hidden2emotion.*`). Qwen v1 is Qwen2's architecture with fused projections, so
it becomes a native `Qwen2Model`, and its LoRA becomes this package's audio-scope masked LoRA.

Memory: source shards are read one at a time (memory-mapped where the pickle format allows) and
their tensors are dropped as soon as they are converted; converted tensors go to safetensors shards
as those fill. The peak is about one source shard plus one output shard, never the whole model.
"""

import json
import logging
import pickle
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import GenerationConfig
from transformers.utils.hub import convert_file_size_to_int

from modeling_blsp_emo import DEFAULT_EMOTIONS, BlspEmoConfig, BlspEmoForConditionalGeneration, BlspEmoProcessor
from trainers.checkpoints.builder import DEFAULT_AUDIO_TOKEN, load_feature_extractor
from trainers.checkpoints.original.layout import (
    QWEN_BLOCK_MODULES,
    ConversionError,
    Target,
    lora_modules,
    plan_conversion,
    qwen2_text_config,
)
from trainers.checkpoints.original.qwen_v1_tokenizer import ENDOFTEXT, IM_END, IM_START, TIKTOKEN_FILE, qwen_v1_tokenizer

logger = logging.getLogger(__name__)

WEIGHTS_NAME, WEIGHTS_INDEX_NAME = "pytorch_model.bin", "pytorch_model.bin.index.json"

# The release's parts (the paper: Whisper-large-v2 and Qwen-7B-Chat) and their licences.
RELEASE_BASE_MODELS = {
    "encoder": {"id": "openai/whisper-large-v2", "name": "openai/whisper-large-v2", "license": "apache-2.0"},
    "llm": {"id": "Qwen/Qwen-7B-Chat", "name": "Qwen/Qwen-7B-Chat", "license": "tongyi-qianwen"},
}


@dataclass
class ConversionResult:
    """What `convert_original` wrote: every source key with the converted tensors it became (`()` for
    buffers recomputed from the config)."""

    output_dir: Path
    sources: dict[str, tuple[Target, ...]]
    dtype: torch.dtype
    lora_target_modules: list[str] | None
    num_bytes: int


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A pickled state dict, read with `torch.load(weights_only=True)` only (memory-mapped when the
    file is in the zip format), so the pickle cannot run code."""
    try:
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            state_dict = torch.load(path, map_location="cpu", weights_only=True)  # legacy (pre-zip) format
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        reason = next((line.strip() for line in str(error).splitlines() if "WeightsUnpickler" in line), str(error)[:200])
        raise ConversionError(
            f"{path}: refused, not a plain state dict that torch.load(weights_only=True) accepts ({reason})"
        ) from None
    if not isinstance(state_dict, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state_dict.items()
    ):
        raise ConversionError(f"{path}: expected a state dict (names → tensors), got {type(state_dict).__name__}")
    return state_dict


class OriginalCheckpoint:
    """A release folder: `config.json` (a `Blsp2Config`), `pytorch_model*.bin` (+ index), `qwen.tiktoken`."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        config_file = self.directory / "config.json"
        if not config_file.is_file():
            raise ConversionError(f"{self.directory}: no config.json (expected the release's Blsp2Config)")
        self.config = json.loads(config_file.read_text())
        check_blsp2_config(self.config, config_file)
        index_file = self.directory / WEIGHTS_INDEX_NAME
        if index_file.is_file():
            self.weight_map = json.loads(index_file.read_text())["weight_map"]
            self.files = [self.directory / name for name in sorted(set(self.weight_map.values()))]
        elif (self.directory / WEIGHTS_NAME).is_file():
            self.weight_map, self.files = None, [self.directory / WEIGHTS_NAME]
        else:
            found = sorted(path.name for path in self.directory.glob("*") if path.suffix in (".bin", ".safetensors", ".pt"))
            raise ConversionError(f"{self.directory}: no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME} (weight files found: {found})")
        for file in self.files:
            if not file.is_file():
                raise ConversionError(f"{index_file} names {file.name}, which is missing")
        self.tiktoken_file = self.directory / TIKTOKEN_FILE
        if not self.tiktoken_file.is_file():
            raise ConversionError(f"{self.directory}: no {TIKTOKEN_FILE} (Qwen v1's tokenizer vocabulary)")

    def keys(self) -> list[str]:
        """All tensor names, from the index (or the lone shard) without converting anything."""
        return list(self.weight_map) if self.weight_map is not None else list(load_state_dict(self.files[0]))

    def state_dicts(self) -> Iterator[tuple[Path, dict[str, torch.Tensor]]]:
        """Each shard's state dict in turn; only one is loaded at a time."""
        for file in self.files:
            logger.info("converting %s", file.name)
            state_dict = load_state_dict(file)
            yield file, state_dict
            del state_dict


def check_blsp2_config(config: dict, where: Path) -> None:
    """Raise a `ConversionError` unless the release config describes a convertible model."""
    missing = [name for name in ("whisper_config", "qwen_config") if not config.get(name)]
    if missing:
        raise ConversionError(f"{where}: not a Blsp2Config (no {', '.join(missing)})")
    adapter_type, hidden_layers = config.get("adapter_type", "subsampler"), config.get("adapter_hidden_layers", 0)
    if adapter_type != "subsampler" or hidden_layers != 0:
        raise ConversionError(
            f"{where}: adapter_type={adapter_type!r} with adapter_hidden_layers={hidden_layers}; only the released "
            "adapter (adapter_type='subsampler', adapter_hidden_layers=0) has a counterpart in this package"
        )
    lora = config.get("lora_config") or {}
    if lora and config.get("lora_scope", "audio") != "audio":
        raise ConversionError(f"{where}: lora_scope={config.get('lora_scope')!r}; only 'audio' (the release's) is supported")
    unsupported = [name for name in ("use_rslora", "use_dora", "rank_pattern", "alpha_pattern", "layers_to_transform") if lora.get(name)]
    if unsupported:
        raise ConversionError(f"{where}: lora_config sets {unsupported}; the masked LoRA has one rank and alpha for all layers")


class ShardWriter:
    """Writes tensors into safetensors shards of at most `max_bytes` as they come, then names them
    as transformers expects (`model.safetensors`, or numbered shards and an index)."""

    def __init__(self, directory: Path, max_bytes: int):
        self.directory, self.max_bytes = directory, max_bytes
        self.buffer: dict[str, torch.Tensor] = {}
        self.buffer_bytes = self.total_bytes = 0
        self.shards: list[tuple[Path, list[str]]] = []

    def add(self, key: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.buffer and self.buffer_bytes + size > self.max_bytes:
            self.flush()
        self.buffer[key] = tensor
        self.buffer_bytes += size
        self.total_bytes += size

    def flush(self) -> None:
        if self.buffer:
            path = self.directory / f"model-part-{len(self.shards) + 1:05d}.safetensors"
            save_file(self.buffer, path, metadata={"format": "pt"})
            self.shards.append((path, list(self.buffer)))
            self.buffer, self.buffer_bytes = {}, 0

    def finish(self) -> None:
        self.flush()
        if len(self.shards) == 1:
            self.shards[0][0].rename(self.directory / "model.safetensors")
            return
        weight_map = {}
        for number, (path, keys) in enumerate(self.shards, start=1):
            name = f"model-{number:05d}-of-{len(self.shards):05d}.safetensors"
            path.rename(self.directory / name)
            weight_map.update(dict.fromkeys(keys, name))
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def converted_tensor(tensor: torch.Tensor, target: Target, shape: tuple[int, ...], dtype: torch.dtype, source_key: str) -> torch.Tensor:
    """A fresh contiguous copy of the target's rows of `tensor` (so the source can be freed), cast to `dtype`."""
    if target.parts > 1:
        if tensor.shape[0] % target.parts:
            raise ConversionError(f"{source_key}: {tensor.shape[0]} rows do not split into {target.parts} equal parts")
        tensor = tensor.chunk(target.parts)[target.part]
    if tuple(tensor.shape) != shape:
        raise ConversionError(f"{source_key} → {target.key}: shape {tuple(tensor.shape)}, the config implies {shape}")
    return tensor.to(dtype=dtype if tensor.is_floating_point() else tensor.dtype, copy=True).contiguous()


def convert_shard(
    file: Path,
    state_dict: dict[str, torch.Tensor],
    plan: dict[str, tuple[Target, ...]],
    remaining: set[str],
    shapes: dict[str, tuple[int, ...]],
    writer: ShardWriter,
    dtype: torch.dtype | None,
) -> torch.dtype | None:
    """Convert one shard's tensors into `writer`, emptying `state_dict` as it goes so each source
    tensor is freed once converted. `dtype=None` takes the first floating tensor's; returns it."""
    while state_dict:
        source_key, tensor = state_dict.popitem()
        if source_key not in remaining:
            raise ConversionError(f"{file.name}: {source_key} is not listed for this file in the index, or repeats")
        remaining.discard(source_key)
        if dtype is None and tensor.is_floating_point():
            dtype = tensor.dtype
        for target in plan[source_key]:
            writer.add(target.key, converted_tensor(tensor, target, shapes[target.key], dtype, source_key))
    return dtype


def generation_config(source_dir: Path, tokenizer, audio_token_id: int) -> GenerationConfig:
    """Greedy decoding that stops where the release stopped (end of turn, a new turn, end of text)."""
    source_file = source_dir / "generation_config.json"
    source = json.loads(source_file.read_text()) if source_file.is_file() else {}
    stop_ids = tokenizer.convert_tokens_to_ids([IM_END, IM_START, ENDOFTEXT])
    kept = {"repetition_penalty": source["repetition_penalty"]} if "repetition_penalty" in source else {}
    return GenerationConfig(
        eos_token_id=stop_ids, pad_token_id=stop_ids[-1], suppress_tokens=[audio_token_id], **kept
    )


def converted_config(
    release_config: dict, tokenizer, lora: Sequence[str], emotion_labels: Sequence[str] | None
) -> BlspEmoConfig:
    """The BLSP-Emo config of the converted release: Qwen2 LLM, 30-s audio padding (as the release
    was trained), masked LoRA on the Qwen2 layers that the release's LoRA covered."""
    audio_token_id = tokenizer.convert_tokens_to_ids(DEFAULT_AUDIO_TOKEN)
    text_config = qwen2_text_config(release_config["qwen_config"], tokenizer.convert_tokens_to_ids(IM_END), tokenizer.pad_token_id)
    if audio_token_id >= text_config.vocab_size:
        raise ConversionError(f"no free embedding row for the audio token: vocab_size {text_config.vocab_size}, token id {audio_token_id}")
    num_emotions = release_config.get("num_emotions", len(DEFAULT_EMOTIONS))
    labels = list(emotion_labels or DEFAULT_EMOTIONS)
    if len(labels) != num_emotions:
        raise ConversionError(f"the release has {num_emotions} emotion classes but {len(labels)} labels were given: {labels}")
    lora_config = release_config.get("lora_config") or {}
    if bool(lora) != bool(lora_config):
        raise ConversionError(
            f"the config {'has' if lora_config else 'has no'} lora_config but the weights {'have' if lora else 'have no'} LoRA tensors"
        )
    config = BlspEmoConfig(
        audio_config=release_config["whisper_config"],
        text_config=text_config,
        conv_kernel_sizes=release_config.get("conv_kernel_sizes", "5,5,5"),
        adapter_inner_dim=release_config.get("adapter_inner_dim", 512),
        audio_token_id=audio_token_id,
        audio_padding="max_length",
        lora_scope="audio" if lora else None,
        lora_rank=lora_config.get("r", 16),
        lora_alpha=lora_config.get("lora_alpha", 16),
        lora_dropout=lora_config.get("lora_dropout", 0.05),
        lora_target_modules=sorted(name.rsplit(".", 1)[-1] for module in lora for name in QWEN_BLOCK_MODULES[module]) or None,
        id2label=dict(enumerate(labels)),
    )
    config.base_models = RELEASE_BASE_MODELS  # for the model card (trainers.hub.push)
    return config


def save_without_weights(model: BlspEmoForConditionalGeneration, processor: BlspEmoProcessor, output_dir: Path) -> None:
    """Config, generation config, remote code and processor files, through `save_pretrained`.

    Saving goes through a staging folder because `save_pretrained` deletes weight shards that it did
    not write itself."""
    with tempfile.TemporaryDirectory() as staging:
        model.save_pretrained(staging, state_dict={})
        processor.save_pretrained(staging)
        for path in Path(staging).iterdir():
            shutil.move(path, output_dir / path.name)


def convert_original(
    source_dir: str | Path,
    output_dir: str | Path,
    *,
    dtype: torch.dtype | None = None,
    max_shard_size: int | str = "2GB",
    emotion_labels: Sequence[str] | None = None,
) -> ConversionResult:
    """Convert the release folder `source_dir` into a BLSP-Emo checkpoint in `output_dir` (new or
    empty): weights (safetensors), config, Qwen2 tokenizer with a ChatML template, Whisper feature
    extractor, remote code. `dtype` defaults to the release's own; `emotion_labels` (id order) to
    the release's five."""
    source_dir, output_dir = Path(source_dir), Path(output_dir)
    checkpoint = OriginalCheckpoint(source_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise ConversionError(f"{output_dir}: not empty; choose a new folder")
    source_keys = checkpoint.keys()
    lora = lora_modules(source_keys)
    tokenizer = qwen_v1_tokenizer(checkpoint.tiktoken_file, (DEFAULT_AUDIO_TOKEN,))
    config = converted_config(checkpoint.config, tokenizer, lora, emotion_labels)
    with torch.device("meta"):  # key names and shapes only, no memory
        model = BlspEmoForConditionalGeneration(config)
    shapes = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    plan = plan_conversion(source_keys, list(shapes), lora)

    output_dir.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(output_dir, convert_file_size_to_int(max_shard_size))
    remaining = set(plan)
    for file, state_dict in checkpoint.state_dicts():
        dtype = convert_shard(file, state_dict, plan, remaining, shapes, writer, dtype)
    if remaining:
        raise ConversionError(f"{len(remaining)} tensors listed in the index are not in their files: {sorted(remaining)[:5]}")
    writer.finish()

    model.to(dtype)
    model.generation_config = generation_config(source_dir, tokenizer, config.audio_token_id)
    feature_extractor = load_feature_extractor(str(source_dir), config.audio_config.num_mel_bins)
    processor = BlspEmoProcessor(
        feature_extractor, tokenizer, audio_token=DEFAULT_AUDIO_TOKEN, audio_padding="max_length",
        conv_kernel_sizes=config.conv_kernel_sizes,
    )
    save_without_weights(model, processor, output_dir)
    return ConversionResult(output_dir, plan, dtype, config.lora_target_modules, writer.total_bytes)


__all__ = ["ConversionError", "ConversionResult", "OriginalCheckpoint", "convert_original", "load_state_dict"]
