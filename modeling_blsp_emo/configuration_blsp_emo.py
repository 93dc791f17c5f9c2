"""Configuration of a BLSP-Emo model: Whisper encoder, modality adapter, causal LM, emotion head."""

import math
from typing import Literal

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .compatibility import check_transformers_version
from .speech_lengths import parse_kernel_sizes
from .version import __version__

check_transformers_version()

# What the emotion head can read (`BlspEmoConfig.emotion_pooling`).
EMOTION_POOLINGS = ("adapter_mean", "encoder_stats")

# The release's label order (ids 0..4); checkpoints trained on other data store their own.
DEFAULT_EMOTIONS = ("neutral", "happy", "angry", "sad", "surprise")


class BlspEmoConfig(PreTrainedConfig):
    r"""
    Configuration for [`BlspEmoForConditionalGeneration`].

    Args:
        audio_config (`dict` or `WhisperConfig`): the Whisper model whose encoder hears the speech.
        text_config (`dict` or `PreTrainedConfig`): any causal LM config that `AutoModel` can build.
        conv_kernel_sizes (`str`, defaults to `"5,5,5"`): kernel sizes of the adapter's stride-2
            convolutions (one per layer, comma separated).
        adapter_inner_dim (`int`, defaults to 512): width of the adapter's residual bottleneck.
        audio_token_id (`int`): id of the placeholder token replaced by speech embeddings.
        audio_padding (`"longest"` or `"max_length"`): `"longest"` encodes each clip at its own
            length (fast); `"max_length"` pads every clip to 30 s before the encoder and trims after
            it, as the original release was trained.
        kd_temperature (`float`, defaults to 2.0): softmax temperature of the stage-1 KL loss.
        lora_scope (`"audio"`, `"global"` or `None`): `"audio"` builds masked LoRA layers applied
            only at speech positions; `"global"` LoRA is merged into the LLM before saving.
        lora_rank, lora_alpha, lora_dropout: LoRA hyper-parameters (paper: 16, 16, 0.05).
        lora_target_modules (`list[str]`, *optional*): names of the LLM's linear layers that get
            LoRA (e.g. `["q_proj", "v_proj"]`); `None` means every linear layer of every block.
        lm_head_bias (`bool`): whether the LLM's output projection has a bias (most have none).
        id2label / label2id: the emotion classes of the emotion head.
        emotion_temperature (`float`, defaults to 1.0): the emotion head's scores are
            `softmax(logits / emotion_temperature)`; fitted on labelled clips so that the scores are
            calibrated (`blsp-emo calibrate`). Logits are never scaled, so labels do not change.
        emotion_pooling (`"adapter_mean"` or `"encoder_stats"`, defaults to `"adapter_mean"`): what the
            emotion head reads. `"adapter_mean"`: the mean of the adapter's speech embeddings over each
            audio item (head input size: the LLM's hidden size), as the original release.
            `"encoder_stats"`: mean and standard deviation over each item's real frames of the Whisper
            encoder's last layer (after its final layer norm) and of the output of its middle layer
            `layers[encoder_layers // 2 - 1]`, concatenated as [mean(last), std(last), mean(middle),
            std(middle)] (head input size: 4 × the encoder's `d_model`); these statistics carry more of
            the voice's prosody. Checkpoints saved without the field load as `"adapter_mean"`.
        emotion_token (`bool`, defaults to `False`): after each ≤30-s window's speech embeddings the LLM
            reads one more embedding, the emotion token: the emotion head's probabilities for that
            window (softmax of its raw logits, temperature 1) times a table of one embedding per
            emotion (`emotion_token_embeddings`, initialised from the LLM's embeddings of the emotion
            names). The placeholder count per window is then one more (the processor's
            `emotion_token` must match). Off in the original release.
    """

    model_type = "blsp_emo"
    sub_configs_defaults = {
        "audio_config": SubConfigSpec(config_class=AutoConfig, model_type="whisper"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2"),
    }

    audio_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    conv_kernel_sizes: str = "5,5,5"
    adapter_inner_dim: int = 512
    audio_token_id: int | None = None
    audio_padding: Literal["longest", "max_length"] = "longest"
    kd_temperature: float = 2.0
    lora_scope: Literal["audio", "global"] | None = None
    lora_rank: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | None = None
    lm_head_bias: bool = False
    emotion_temperature: float = 1.0
    emotion_pooling: Literal["adapter_mean", "encoder_stats"] = "adapter_mean"
    emotion_token: bool = False
    tie_word_embeddings: bool | None = None
    blsp_emo_version: str = __version__

    def __post_init__(self, **kwargs):
        if self.id2label is None and "num_labels" not in kwargs:
            self.id2label = dict(enumerate(DEFAULT_EMOTIONS))
        super().__post_init__(**kwargs)
        if self.id2label is not None:
            self.label2id = {label: index for index, label in self.id2label.items()}
        if self.tie_word_embeddings is None:
            # Tying follows the LLM, or `lm_head` would silently stop sharing the embedding matrix.
            self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))
        self.validate_blsp_fields()

    def validate_blsp_fields(self) -> None:
        """Raise a `ValueError` naming the field when a BLSP-Emo specific value is unusable."""
        if self.audio_padding not in ("longest", "max_length"):
            raise ValueError(f"audio_padding={self.audio_padding!r}: expected 'longest' or 'max_length'")
        if self.lora_scope not in (None, "audio", "global"):
            raise ValueError(f"lora_scope={self.lora_scope!r}: expected 'audio', 'global' or None")
        if not self.kernel_sizes or any(size < 1 or size % 2 == 0 for size in self.kernel_sizes):
            raise ValueError(f"conv_kernel_sizes={self.conv_kernel_sizes!r}: expected odd positive integers")
        if not math.isfinite(self.emotion_temperature) or self.emotion_temperature <= 0:
            raise ValueError(f"emotion_temperature={self.emotion_temperature!r}: expected a finite number above 0")
        if self.emotion_pooling not in EMOTION_POOLINGS:
            expected = " or ".join(repr(name) for name in EMOTION_POOLINGS)
            raise ValueError(f"emotion_pooling={self.emotion_pooling!r}: expected {expected}")

    @property
    def kernel_sizes(self) -> tuple[int, ...]:
        """`conv_kernel_sizes` as integers."""
        return parse_kernel_sizes(self.conv_kernel_sizes)

    @property
    def emotion_head_input_size(self) -> int:
        """Width of the emotion head's input: the LLM's hidden size (`"adapter_mean"`) or 4 × the
        encoder's `d_model` (`"encoder_stats"`)."""
        if self.emotion_pooling == "encoder_stats":
            return 4 * self.audio_config.d_model
        return self.text_config.hidden_size

    @property
    def encoder_middle_layer(self) -> int:
        """Index of the encoder layer whose output `"encoder_stats"` pools: `encoder_layers // 2 - 1`."""
        return max(self.audio_config.encoder_layers // 2 - 1, 0)

    @property
    def emotion_labels(self) -> list[str]:
        """Emotion class names in id order."""
        return [self.id2label[index] for index in range(len(self.id2label))]


__all__ = ["BlspEmoConfig", "DEFAULT_EMOTIONS", "EMOTION_POOLINGS"]
