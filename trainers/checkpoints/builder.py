"""Assemble a new BLSP-Emo checkpoint from a pretrained Whisper model and a pretrained causal LM."""

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AddedToken,
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    WhisperFeatureExtractor,
    WhisperModel,
)
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from modeling_blsp_emo import DEFAULT_EMOTIONS, BlspEmoConfig, BlspEmoForConditionalGeneration, BlspEmoProcessor
from modeling_blsp_emo.adapter import SpeechAdapter
from processing.errors import output_folder
from trainers.checkpoints.checksums import write_checksums
from trainers.checkpoints.provenance import describe_base_model

logger = logging.getLogger(__name__)
DEFAULT_AUDIO_TOKEN = "<|audio|>"


def load_whisper_encoder(source: str, dtype: torch.dtype | str | None = None) -> WhisperEncoder:
    """The encoder of a full Whisper checkpoint (`model.encoder.*` keys) or of an encoder-only one."""
    config = AutoConfig.from_pretrained(source)
    if config.model_type != "whisper":
        raise ValueError(f"{source}: expected a Whisper checkpoint, found model_type={config.model_type!r}")
    whisper, info = WhisperModel.from_pretrained(source, dtype=dtype, output_loading_info=True)
    if not any(key.startswith("encoder.") for key in info["missing_keys"]):
        return whisper.encoder
    encoder, info = WhisperEncoder.from_pretrained(source, dtype=dtype, output_loading_info=True)
    if info["missing_keys"]:
        raise ValueError(f"{source}: no Whisper encoder weights found (missing {sorted(info['missing_keys'])[:3]} ...)")
    return encoder


def load_feature_extractor(source: str, num_mel_bins: int) -> WhisperFeatureExtractor:
    """The checkpoint's feature extractor, or a Whisper one with the encoder's mel-bin count."""
    try:
        extractor = WhisperFeatureExtractor.from_pretrained(source)
    except OSError:
        logger.info("%s has no feature extractor; using Whisper's with %d mel bins", source, num_mel_bins)
        return WhisperFeatureExtractor(feature_size=num_mel_bins)
    if extractor.feature_size != num_mel_bins:
        raise ValueError(
            f"{source}: feature extractor has {extractor.feature_size} mel bins but the encoder expects {num_mel_bins}"
        )
    return extractor


def build_blsp_emo(
    encoder: str,
    llm: str,
    *,
    audio_token: str = DEFAULT_AUDIO_TOKEN,
    audio_padding: str = "longest",
    emotion_labels: Sequence[str] = DEFAULT_EMOTIONS,
    conv_kernel_sizes: str = "5,5,5",
    adapter_inner_dim: int = 512,
    emotion_pooling: str = "adapter_mean",
    dtype: torch.dtype | str | None = None,
) -> tuple[BlspEmoForConditionalGeneration, BlspEmoProcessor]:
    """A BLSP-Emo model whose encoder and LLM carry the given checkpoints' weights (adapter and
    emotion head freshly initialised; the head reads what `emotion_pooling` says, see `BlspEmoConfig`),
    and its processor. `encoder`/`llm` are hub ids or directories;
    the config records where they came from in `base_models` (see `trainers.hub.push.describe_base_model`)."""
    audio_encoder = load_whisper_encoder(encoder, dtype)
    feature_extractor = load_feature_extractor(encoder, audio_encoder.config.num_mel_bins)

    tokenizer = AutoTokenizer.from_pretrained(llm)
    if tokenizer.chat_template is None:
        raise ValueError(f"{llm}: the tokenizer has no chat template; BLSP-Emo prompts go through it")
    tokenizer.add_tokens([AddedToken(audio_token, special=True, normalized=False)], special_tokens=True)
    causal_lm = AutoModelForCausalLM.from_pretrained(llm, dtype=dtype)
    if len(tokenizer) > causal_lm.get_input_embeddings().num_embeddings:
        causal_lm.resize_token_embeddings(len(tokenizer))
    backbone = getattr(causal_lm, causal_lm.base_model_prefix)
    head = causal_lm.get_output_embeddings()

    config = BlspEmoConfig(
        audio_config=audio_encoder.config,
        text_config=causal_lm.config,
        audio_token_id=tokenizer.convert_tokens_to_ids(audio_token),
        audio_padding=audio_padding,
        conv_kernel_sizes=conv_kernel_sizes,
        adapter_inner_dim=adapter_inner_dim,
        lm_head_bias=head.bias is not None,
        id2label=dict(enumerate(emotion_labels)),
        emotion_pooling=emotion_pooling,
    )
    # Hub ids and licences of the parts, for the model card (trainers.hub.push); local folders by name only.
    config.base_models = {"encoder": describe_base_model(encoder), "llm": describe_base_model(llm)}
    # Build the shell without allocating weights, then move the pretrained modules in.
    with torch.device("meta"):
        model = BlspEmoForConditionalGeneration(config)
    model.model.audio_encoder = audio_encoder
    model.model.language_model = backbone
    model.lm_head = head
    hidden_size = config.text_config.hidden_size
    reference = next(backbone.parameters())
    model.model.adapter = SpeechAdapter(
        config.audio_config.d_model, hidden_size, config.kernel_sizes, adapter_inner_dim
    ).to(reference.device, reference.dtype)
    model.emotion_head = nn.Linear(config.emotion_head_input_size, len(emotion_labels), bias=False).to(
        reference.device, reference.dtype
    )
    for module in (model.model.adapter, model.emotion_head):
        module.apply(model._init_weights)
    model.tie_weights()

    generation_config = GenerationConfig.from_dict(causal_lm.generation_config.to_dict())
    generation_config.suppress_tokens = sorted(set(generation_config.suppress_tokens or ()) | {config.audio_token_id})
    model.generation_config = generation_config
    processor = BlspEmoProcessor(
        feature_extractor, tokenizer, audio_token=audio_token, audio_padding=audio_padding,
        conv_kernel_sizes=conv_kernel_sizes,
    )
    return model, processor


def save_checkpoint(
    model: BlspEmoForConditionalGeneration, processor: BlspEmoProcessor, output_dir: str | Path, checksums: bool = True
) -> Path:
    """Write weights (safetensors), config, generation config, processor and the remote code, and
    with `checksums` the SHA-256 of each file written (`checksums.json`, see `verify_checksums`)."""
    output_dir = output_folder(output_dir)
    before = {path: path.stat().st_mtime_ns for path in output_dir.iterdir() if path.is_file()}
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    if checksums:
        written = [path for path in output_dir.iterdir() if path.is_file() and before.get(path) != path.stat().st_mtime_ns]
        write_checksums(output_dir, written)
    return output_dir
