"""BLSP-Emo: Whisper encoder → modality adapter → causal LLM, plus an emotion head.

The data path: log-mel features → speech embeddings (encoder + adapter) → scattered into the
positions of the audio placeholder tokens in the LLM's input embeddings → LLM → text.
"""

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.dynamic_module_utils import custom_object_save
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast, SequenceClassifierOutput
from transformers.models.whisper.modeling_whisper import WhisperEncoder
from transformers.utils.deprecation import deprecate_kwarg

from .adapter import SpeechAdapter, length_mask
from .configuration_blsp_emo import BlspEmoConfig
from .masked_lora import MaskedLoraLinear, add_masked_lora, check_lora_mask_reached_blocks
from .numerics import check_finite
from .reply_generation import reply_logits_processors
from .speech_encoder import check_input_features, encode_in_length_groups, encode_padded_to_30s
from .speech_lengths import WINDOW_FRAMES, embeddings_from_frames

# Inputs that describe the audio of a prompt: needed at prefill only.
AUDIO_INPUT_NAMES = ("input_features", "feature_attention_mask", "audio_item_index")
PIPELINE_TASK = "audio-to-text"
CLASSIFICATION_TASK = "audio-classification"
# Auto classes that load the generation model (transformers 5 maps audio/vision LLMs such as Qwen2-Audio
# and Voxtral under AutoModelForMultimodalLM; AutoModel stays the generation class, as documented).
GENERATION_AUTO_CLASSES = ("AutoModel", "AutoModelForCausalLM", "AutoModelForMultimodalLM")
CLASSIFICATION_AUTO_CLASS = "AutoModelForAudioClassification"
# What config.json's `custom_pipelines` says for each task a checkpoint serves. Both are resolved from
# the checkpoint itself; neither is registered globally (that would replace transformers' own
# `audio-classification` pipeline for every model in the process).
CHECKPOINT_PIPELINES = {
    PIPELINE_TASK: {"impl": "pipeline_blsp_emo.AudioToTextPipeline", "pt": ["AutoModel"], "tf": [], "type": "multimodal"},
    CLASSIFICATION_TASK: {
        "impl": "pipeline_audio_classification.AudioClassificationPipeline",
        "pt": [CLASSIFICATION_AUTO_CLASS],
        "tf": [],
        "type": "audio",
    },
}


def pipeline_classes(tasks: Sequence[str]) -> list[type]:
    """The pipeline classes of `tasks`, imported only to save their code with a checkpoint."""
    from .pipeline_audio_classification import AudioClassificationPipeline
    from .pipeline_blsp_emo import AudioToTextPipeline

    classes = {PIPELINE_TASK: AudioToTextPipeline, CLASSIFICATION_TASK: AudioClassificationPipeline}
    return [classes[task] for task in tasks]


class SpeechFeatures(NamedTuple):
    """What [`SpeechEmbeddingMixin.get_speech_features`] returns: the adapter's speech embeddings
    `(clips, steps, hidden)` and their real lengths (the LLM's input), and the states the emotion head
    pools with their real lengths (`config.emotion_pooling`): the embeddings themselves for
    `"adapter_mean"`; for `"encoder_stats"` the encoder's last layer and middle layer's output side by
    side `(clips, frames, 2 * d_model)`."""

    embeds: torch.Tensor
    lengths: torch.Tensor
    head_states: torch.Tensor
    head_lengths: torch.Tensor


@dataclass
class BlspEmoModelOutputWithPast(BaseModelOutputWithPast):
    """`BaseModelOutputWithPast` plus the speech embeddings `(clips, steps, hidden)` and their lengths,
    and what the emotion head pools (`SpeechFeatures.head_states`, `head_lengths`)."""

    audio_embeds: torch.Tensor | None = None
    audio_lengths: torch.Tensor | None = None
    emotion_head_states: torch.Tensor | None = None
    emotion_head_lengths: torch.Tensor | None = None


@dataclass
class BlspEmoCausalLMOutputWithPast(CausalLMOutputWithPast):
    """LM outputs plus the emotion head's. `loss` is `lm_loss + emotion_loss` (those present);
    `emotion_logits` are `(audio items, labels)`."""

    lm_loss: torch.Tensor | None = None
    emotion_loss: torch.Tensor | None = None
    emotion_logits: torch.Tensor | None = None
    audio_embeds: torch.Tensor | None = None
    audio_lengths: torch.Tensor | None = None


class BlspEmoPreTrainedModel(PreTrainedModel):
    config: BlspEmoConfig
    config_class = BlspEmoConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    input_modalities = ("audio", "text")
    supports_gradient_checkpointing = True
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _skip_keys_device_placement = ["cache"]

    # The pipelines that checkpoints saved from this class serve (see `save_pretrained`).
    checkpoint_tasks: tuple[str, ...] = ()

    def checkpoint_auto_map(self) -> dict[str, str]:
        """The auto classes (and the classes they load) that checkpoints saved from this class declare."""
        return {}

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save as usual, declaring this checkpoint's auto classes and pipelines in its config and
        copying the pipelines' code beside the model's (`custom_object_save`)."""
        if self.checkpoint_tasks:
            auto_config = (getattr(self.config, "auto_map", None) or {}).get("AutoConfig")
            self.config.auto_map = {**({"AutoConfig": auto_config} if auto_config else {}), **self.checkpoint_auto_map()}
            self.config.custom_pipelines = {task: CHECKPOINT_PIPELINES[task] for task in self.checkpoint_tasks}
        result = super().save_pretrained(save_directory, *args, **kwargs)
        for pipeline_class in pipeline_classes(self.checkpoint_tasks):
            custom_object_save(pipeline_class, save_directory)
        return result

    def initialize_weights(self) -> None:
        super().initialize_weights()
        # LoRA layers sit inside the LLM, whose own `_init_weights` draws lora_B like any linear
        # layer: restore B = 0 so that new LoRA starts as a no-op.
        for module in self.modules():
            if isinstance(module, MaskedLoraLinear):
                module.reset_lora_parameters()


class SpeechEmbeddingMixin:
    """The speech encoder and adapter of the full model and of the classifier's."""

    def init_speech_modules(self, config: BlspEmoConfig) -> None:
        self.audio_encoder = WhisperEncoder(config.audio_config)
        self.adapter = SpeechAdapter(
            config.audio_config.d_model, config.text_config.hidden_size, config.kernel_sizes, config.adapter_inner_dim
        )

    def get_audio_features(
        self, input_features: torch.Tensor, feature_attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Speech embeddings `(clips, steps, hidden)` and real lengths for `(clips, mel, frames)` features.

        `feature_attention_mask` marks real frames; without it every frame is real.
        """
        hidden_states, lengths = self.encode_speech(input_features, feature_attention_mask)
        return self.adapter(hidden_states, lengths)

    def get_speech_features(
        self, input_features: torch.Tensor, feature_attention_mask: torch.Tensor | None = None
    ) -> SpeechFeatures:
        """`get_audio_features`' embeddings and lengths plus what the emotion head pools
        (`config.emotion_pooling`), from one encoder pass: pass `head_states` and `head_lengths` to
        `classify_emotion`."""
        if self.config.emotion_pooling == "adapter_mean":
            embeds, lengths = self.get_audio_features(input_features, feature_attention_mask)
            return SpeechFeatures(embeds, lengths, embeds, lengths)
        hidden_states, lengths, head_states = self.encode_with_middle_layer(input_features, feature_attention_mask)
        embeds, embed_lengths = self.adapter(hidden_states, lengths)
        return SpeechFeatures(embeds, embed_lengths, head_states, lengths)

    def get_emotion_head_states(
        self, input_features: torch.Tensor, feature_attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`get_speech_features`' `head_states` and `head_lengths` alone: for `"encoder_stats"` the adapter,
        whose output the head does not read, is not run."""
        if self.config.emotion_pooling == "adapter_mean":
            return self.get_audio_features(input_features, feature_attention_mask)
        _, lengths, head_states = self.encode_with_middle_layer(input_features, feature_attention_mask)
        return head_states, lengths

    def encode_with_middle_layer(
        self, input_features: torch.Tensor, feature_attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The encoder's last hidden states, their real lengths, and the `"encoder_stats"` head's states:
        the last layer and the middle layer's output side by side `(clips, frames, 2 * d_model)`."""
        hidden_states, lengths, middle_states = self.encode_speech(
            input_features, feature_attention_mask, self.config.encoder_middle_layer
        )
        return hidden_states, lengths, torch.cat([hidden_states, middle_states], -1)

    def encode_speech(
        self, input_features: torch.Tensor, feature_attention_mask: torch.Tensor | None, middle_layer: int | None = None
    ) -> tuple[torch.Tensor, ...]:
        """The encoder's hidden states and real lengths (plus `middle_layer`'s output when asked for)."""
        check_input_features(self.audio_encoder, input_features, self.config.audio_padding)
        if feature_attention_mask is None:
            frame_lengths = torch.full(
                (input_features.shape[0],), input_features.shape[-1], dtype=torch.long, device=input_features.device
            )
        else:
            frame_lengths = feature_attention_mask.sum(-1).long()
        if bool((frame_lengths < 1).any()):
            raise ValueError("an audio clip has no mel frames (empty audio)")
        encode = encode_in_length_groups if self.config.audio_padding == "longest" else encode_padded_to_30s
        return encode(self.audio_encoder, input_features, frame_lengths, middle_layer)


class EmotionHeadMixin:
    """The emotion head's logits and scores, shared by the models that have one (`emotion_head`)."""

    def classify_emotion(
        self, head_states: torch.Tensor, head_lengths: torch.Tensor, audio_item_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Raw emotion logits `(items, labels)` from the pooled `head_states` (`emotion_probabilities`
        makes calibrated scores of them); raises `NonFiniteOutputError` when they hold NaN or inf
        (corrupt weights, overflow). `head_states` and `head_lengths` are `get_speech_features`' (for
        `emotion_pooling="adapter_mean"` they are the speech embeddings and their lengths)."""
        logits = self.emotion_head(self.pool_for_emotion_head(head_states, head_lengths, audio_item_index))
        return check_finite(logits, "emotion head logits")

    def emotion_logits(
        self,
        input_features: torch.Tensor,
        feature_attention_mask: torch.Tensor | None = None,
        audio_item_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Raw emotion logits `(items, labels)` of log-mel features: the speech modules the head needs
        (`model.get_emotion_head_states`) and the head, no LLM."""
        head_states, head_lengths = self.model.get_emotion_head_states(input_features, feature_attention_mask)
        return self.classify_emotion(head_states, head_lengths, audio_item_index)

    def pool_for_emotion_head(
        self, head_states: torch.Tensor, head_lengths: torch.Tensor, audio_item_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The emotion head's input `(items, config.emotion_head_input_size)`, pooled as
        `config.emotion_pooling` says from `get_speech_features`' `head_states` and `head_lengths`."""
        if self.config.emotion_pooling == "encoder_stats":
            expected = 2 * self.config.audio_config.d_model
            if head_states.shape[-1] != expected:
                raise ValueError(
                    f"emotion_pooling='encoder_stats' pools the encoder's last and middle layers ({expected} features "
                    f"per frame), got {head_states.shape[-1]}: pass get_speech_features' head_states"
                )
            return pool_encoder_statistics(head_states, head_lengths, audio_item_index)
        return pool_speech_embeddings(head_states, head_lengths, audio_item_index)

    def emotion_probabilities(self, emotion_logits: torch.Tensor) -> torch.Tensor:
        """The emotion head's scores `(items, labels)`, float32: `softmax(logits / config.emotion_temperature)`.
        The temperature (1.0 until fitted by `blsp-emo calibrate`) calibrates the scores; the argmax,
        and so the label, is the same as the raw logits'."""
        return (emotion_logits.float() / self.config.emotion_temperature).softmax(-1)


class BlspEmoModel(SpeechEmbeddingMixin, BlspEmoPreTrainedModel):
    """Speech encoder, adapter and LLM backbone (no LM head)."""

    def __init__(self, config: BlspEmoConfig):
        super().__init__(config)
        self.init_speech_modules(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.has_masked_lora = config.lora_scope == "audio"
        if self.has_masked_lora:
            add_masked_lora(
                self.language_model, config.lora_rank, config.lora_alpha, config.lora_dropout, config.lora_target_modules
            )
        # With `config.emotion_token`: the emotion token of each window from its speech features. The
        # model with the emotion head sets it, so that callers which run this backbone alone (trl's
        # fused LM head does) still place the token.
        self.emotion_token_provider: Callable[[SpeechFeatures], torch.Tensor] | None = None
        self.post_init()

    def add_audio_lora(
        self, rank: int = 16, alpha: int = 16, dropout: float = 0.05, target_modules: list[str] | None = None
    ) -> list[str]:
        """Add LoRA applied only at speech positions to the LLM; the config records it, so saved
        checkpoints rebuild it. Returns the wrapped layers' names."""
        if self.has_masked_lora:
            raise ValueError("this model already has audio-scope LoRA")
        wrapped = add_masked_lora(self.language_model, rank, alpha, dropout, target_modules)
        self.config.lora_scope, self.config.lora_rank, self.config.lora_alpha = "audio", rank, alpha
        self.config.lora_dropout, self.config.lora_target_modules = dropout, target_modules
        self.has_masked_lora = True
        return wrapped

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def placeholder_mask(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """Boolean `(batch, seq)` mask of the audio placeholder positions."""
        if self.config.audio_token_id is None:
            raise ValueError("config.audio_token_id is not set: the model cannot place speech in the prompt")
        if input_ids is not None:
            return input_ids == self.config.audio_token_id
        placeholder = self.get_input_embeddings()(
            torch.tensor(self.config.audio_token_id, device=inputs_embeds.device)
        )
        return (inputs_embeds == placeholder).all(-1)

    def merge_speech_embeddings(
        self, inputs_embeds: torch.Tensor, speech_mask: torch.Tensor, audio_embeds: torch.Tensor, audio_lengths: torch.Tensor
    ) -> torch.Tensor:
        """Put the real speech embeddings, clip after clip, into the placeholder positions."""
        speech = audio_embeds[length_mask(audio_lengths, audio_embeds.shape[1])]
        num_placeholders = int(speech_mask.sum())
        if num_placeholders != speech.shape[0]:
            raise ValueError(
                f"the prompt has {num_placeholders} audio placeholder tokens but the audio gives {speech.shape[0]} "
                "speech embeddings; build inputs with the model's processor so that the counts match"
            )
        mask = speech_mask[..., None].expand_as(inputs_embeds).to(inputs_embeds.device)
        return inputs_embeds.masked_scatter(mask, speech.to(inputs_embeds.device, inputs_embeds.dtype))

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        input_features: torch.Tensor | None = None,
        feature_attention_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BlspEmoModelOutputWithPast:
        r"""
        With `config.emotion_token`, each window's speech embeddings are followed by its emotion token
        (see `emotion_token_provider`).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        audio_embeds = audio_lengths = head_states = head_lengths = None
        if input_features is not None:
            speech = self.get_speech_features(input_features, feature_attention_mask)
            audio_embeds, audio_lengths, head_states, head_lengths = speech
            merged, merged_lengths = audio_embeds, audio_lengths
            if self.config.emotion_token:
                if self.emotion_token_provider is None:
                    raise ValueError(
                        "config.emotion_token is on but this BlspEmoModel has no emotion head to read; run it "
                        "inside BlspEmoForConditionalGeneration"
                    )
                merged, merged_lengths = append_to_windows(audio_embeds, audio_lengths, self.emotion_token_provider(speech))
            speech_mask = self.placeholder_mask(input_ids, inputs_embeds)
            inputs_embeds = self.merge_speech_embeddings(inputs_embeds, speech_mask, merged, merged_lengths)
            if self.has_masked_lora:
                kwargs["lora_mask"] = speech_mask
        elif input_ids is not None and self.config.audio_token_id is not None:
            if bool((input_ids == self.config.audio_token_id).any()):
                raise ValueError("the prompt has audio placeholder tokens but no input_features were given")

        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        if "lora_mask" in kwargs:
            check_lora_mask_reached_blocks(self.language_model)
        return BlspEmoModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            audio_embeds=audio_embeds,
            audio_lengths=audio_lengths,
            emotion_head_states=head_states,
            emotion_head_lengths=head_lengths,
        )


def append_to_windows(
    audio_embeds: torch.Tensor, audio_lengths: torch.Tensor, suffix: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(windows, steps + 1, hidden)` embeddings with `suffix[w]` right after window w's real ones, and
    the lengths one longer."""
    padded = torch.cat([audio_embeds, audio_embeds.new_zeros(audio_embeds.shape[0], 1, audio_embeds.shape[-1])], 1)
    index = audio_lengths.to(padded.device)[:, None, None].expand(-1, 1, padded.shape[-1])
    return padded.scatter(1, index, suffix[:, None, :].to(padded.dtype)), audio_lengths + 1


def pool_speech_embeddings(
    audio_embeds: torch.Tensor, audio_lengths: torch.Tensor, audio_item_index: torch.Tensor | None = None
) -> torch.Tensor:
    """Masked mean of speech embeddings per audio item `(items, hidden)`.

    A clip longer than 30 s is encoded as several windows; `audio_item_index` (one entry per window)
    says which item each window belongs to. Without it every window is its own item.
    """
    mask = length_mask(audio_lengths, audio_embeds.shape[1]).to(audio_embeds.dtype)
    sums = (audio_embeds * mask[..., None]).sum(1)
    counts = audio_lengths.to(audio_embeds.dtype)
    if audio_item_index is not None:
        num_items = int(audio_item_index.max()) + 1
        sums = sums.new_zeros(num_items, sums.shape[-1]).index_add(0, audio_item_index, sums)
        counts = counts.new_zeros(num_items).index_add(0, audio_item_index, counts)
    return sums / counts[:, None]


# Variances are clamped at this floor (not at 0) before the square root: sqrt's gradient is infinite
# at 0 (an item of one frame has no spread), and a std of 1e-6 instead of 0 changes nothing else.
MIN_VARIANCE = 1e-12


def pool_encoder_statistics(
    head_states: torch.Tensor, head_lengths: torch.Tensor, audio_item_index: torch.Tensor | None = None
) -> torch.Tensor:
    """`(items, 4 * d_model)`: [mean(last), std(last), mean(middle), std(middle)] over the real frames of
    each audio item, from `(windows, frames, 2 * d_model)` states (the encoder's last layer and middle
    layer's output side by side). An item spanning several windows (`audio_item_index`, one entry per
    window) is pooled over all its windows' real frames. The std is the population std (divided by the
    frame count). Computed in float32 (means first, then squared deviations from them); returned in
    `head_states`' dtype."""
    states = head_states.float()
    mask = length_mask(head_lengths, states.shape[1]).to(states.dtype)[..., None]
    counts = head_lengths.to(states.device, states.dtype)
    sums = (states * mask).sum(1)
    if audio_item_index is None:
        audio_item_index = torch.arange(states.shape[0], device=states.device)
    num_items = int(audio_item_index.max()) + 1
    item_counts = counts.new_zeros(num_items).index_add(0, audio_item_index, counts)
    means = sums.new_zeros(num_items, sums.shape[-1]).index_add(0, audio_item_index, sums) / item_counts[:, None]
    squares = ((states - means[audio_item_index][:, None, :]).square() * mask).sum(1)
    variances = squares.new_zeros(num_items, squares.shape[-1]).index_add(0, audio_item_index, squares)
    stds = (variances / item_counts[:, None]).clamp(min=MIN_VARIANCE).sqrt()
    last_mean, middle_mean = means.chunk(2, dim=-1)
    last_std, middle_std = stds.chunk(2, dim=-1)
    return torch.cat([last_mean, last_std, middle_mean, middle_std], -1).to(head_states.dtype)


def windows_per_row(
    input_ids: torch.Tensor,
    audio_token_id: int,
    feature_attention_mask: torch.Tensor,
    conv_kernel_sizes: tuple[int, ...],
    emotion_token: bool = False,
) -> list[int]:
    """How many consecutive audio windows belong to each prompt row (windows fill placeholders in order)."""
    frames = feature_attention_mask.sum(-1).long()
    window_sizes = (embeddings_from_frames(frames, conv_kernel_sizes) + int(emotion_token)).tolist()
    counts, window = [], 0
    for placeholders in (input_ids == audio_token_id).sum(-1).tolist():
        start = window
        while placeholders > 0 and window < len(window_sizes):
            placeholders -= window_sizes[window]
            window += 1
        if placeholders != 0:
            raise ValueError("audio placeholder tokens of a prompt row do not line up with whole audio windows")
        counts.append(window - start)
    return counts


class BlspEmoForConditionalGeneration(EmotionHeadMixin, BlspEmoPreTrainedModel, GenerationMixin):
    """BLSP-Emo with the LLM's output head and the emotion classification head."""

    checkpoint_tasks = (PIPELINE_TASK, CLASSIFICATION_TASK)

    def __init__(self, config: BlspEmoConfig):
        super().__init__(config)
        self.model = BlspEmoModel(config)
        self.model.emotion_token_provider = self.emotion_token_of_speech
        text_config = config.text_config
        self.lm_head = nn.Linear(text_config.hidden_size, text_config.vocab_size, bias=config.lm_head_bias)
        self.emotion_head = nn.Linear(config.emotion_head_input_size, len(config.id2label), bias=False)
        self.emotion_token_embeddings = (
            nn.Embedding(len(config.id2label), text_config.hidden_size) if config.emotion_token else None
        )
        if config.tie_word_embeddings:
            embeddings = self.model.language_model.get_input_embeddings()
            name = next(name for name, module in self.model.language_model.named_modules() if module is embeddings)
            self._tied_weights_keys = {"lm_head.weight": f"model.language_model.{name}.weight"}
        self.post_init()
        if config.audio_token_id is not None:
            # The placeholder only ever stands for speech: never generate it.
            suppressed = set(self.generation_config.suppress_tokens or ()) | {config.audio_token_id}
            self.generation_config.suppress_tokens = sorted(suppressed)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """Load as usual, but refuse weights that do not fit the config's LoRA layout (e.g.
        `lora_scope="audio"` given for a checkpoint saved without LoRA), which transformers would
        otherwise meet with a warning and randomly initialised LLM weights."""
        return_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        missing_base = [key for key in info["missing_keys"] if ".base_layer." in key]
        unused_lora = [key for key in info["unexpected_keys"] if ".lora_A." in key or ".lora_B." in key]
        if missing_base or unused_lora:
            found = "has no" if missing_base else "has"
            example = (missing_base or unused_lora)[0]
            raise ValueError(
                f"the checkpoint {found} audio-scope LoRA weights but the config says lora_scope="
                f"{model.config.lora_scope!r} (e.g. {example!r}); load it with its own config, then call "
                "`add_audio_lora(...)` to add fresh LoRA"
            )
        return (model, info) if return_info else model

    def checkpoint_auto_map(self) -> dict[str, str]:
        module = type(self).__module__.rsplit(".", 1)[-1]
        auto_map = {auto_class: f"{module}.{type(self).__name__}" for auto_class in GENERATION_AUTO_CLASSES}
        auto_map[CLASSIFICATION_AUTO_CLASS] = f"{module}.{BlspEmoForAudioClassification.__name__}"
        return auto_map

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def add_audio_lora(self, *args, **kwargs) -> list[str]:
        """See [`BlspEmoModel.add_audio_lora`]."""
        return self.model.add_audio_lora(*args, **kwargs)

    def add_emotion_token(self, label_embeddings: torch.Tensor) -> None:
        """Turn the emotion token on (see `BlspEmoConfig.emotion_token`) with its table initialised to
        `label_embeddings` `(labels, hidden)`, one row per emotion in id order (e.g. the LLM's embedding
        of each emotion's name). The processor's `emotion_token` must be turned on with it."""
        if self.config.emotion_token:
            raise ValueError("this model already has the emotion token")
        expected = (len(self.config.id2label), self.config.text_config.hidden_size)
        if tuple(label_embeddings.shape) != expected:
            raise ValueError(f"label_embeddings must have shape {expected} (labels, hidden), got {tuple(label_embeddings.shape)}")
        weight = self.emotion_head.weight
        table = nn.Embedding(*expected, device=weight.device, dtype=self.get_input_embeddings().weight.dtype)
        with torch.no_grad():
            table.weight.copy_(label_embeddings)
        self.emotion_token_embeddings = table
        self.config.emotion_token = True

    def emotion_token_of_speech(self, speech: SpeechFeatures) -> torch.Tensor:
        """The emotion token of each window `(windows, hidden)`: the softmax of the head's raw logits
        per window (temperature 1: calibration must not change what the LLM reads) times the table."""
        emotion_logits = self.classify_emotion(speech.head_states, speech.head_lengths)
        table = self.emotion_token_embeddings.weight
        return emotion_logits.float().softmax(-1).to(table.dtype) @ table

    def set_emotion_labels(self, labels: Sequence[str]) -> None:
        """Use a new set of emotion classes (e.g. a new dataset's). The head (and the emotion token's
        table) is resized; classes it already knew keep their weights, new ones start fresh (new token
        rows at the mean of the known ones); nothing else changes."""
        if len(set(labels)) != len(labels) or len(labels) < 2:
            raise ValueError(f"emotion labels must be at least two distinct names, got {list(labels)}")
        old_head, old_ids = self.emotion_head, self.config.label2id
        head = nn.Linear(old_head.in_features, len(labels), bias=False, device=old_head.weight.device, dtype=old_head.weight.dtype)
        nn.init.normal_(head.weight, std=getattr(self.config.text_config, "initializer_range", 0.02))
        with torch.no_grad():
            for index, label in enumerate(labels):
                if label in old_ids:
                    head.weight[index] = old_head.weight[old_ids[label]]
        self.emotion_head = head
        if self.emotion_token_embeddings is not None:
            # A new emotion's token starts at the mean of the known ones.
            old_table = self.emotion_token_embeddings.weight
            table = nn.Embedding(len(labels), old_table.shape[1], device=old_table.device, dtype=old_table.dtype)
            with torch.no_grad():
                table.weight.copy_(old_table.mean(0).expand_as(table.weight))
                for index, label in enumerate(labels):
                    if label in old_ids:
                        table.weight[index] = old_table[old_ids[label]]
            self.emotion_token_embeddings = table
        self.config.id2label = dict(enumerate(labels))
        self.config.label2id = {label: index for index, label in enumerate(labels)}

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """LM logits for (already sliced) LLM hidden states, with the LLM's own logit scaling/capping."""
        logits = self.lm_head(hidden_states)
        text_config = self.config.text_config
        if (scale := getattr(text_config, "logit_scale", None)) is not None:  # Cohere
            logits = logits * scale
        if (scaling := getattr(text_config, "logits_scaling", None)) is not None:  # Granite
            logits = logits / scaling
        if (cap := getattr(text_config, "final_logit_softcapping", None)) is not None:  # Gemma 2/3
            logits = torch.tanh(logits / cap) * cap
        return logits

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        input_features: torch.Tensor | None = None,
        feature_attention_mask: torch.Tensor | None = None,
        audio_item_index: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        emotion_labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> BlspEmoCausalLMOutputWithPast:
        r"""
        input_features (`torch.Tensor` of shape `(windows, mel bins, frames)`): log-mel features of the
            audio, one row per ≤30-s window, from [`BlspEmoProcessor`].
        feature_attention_mask (`torch.Tensor` of shape `(windows, frames)`): 1 on real mel frames.
        audio_item_index (`torch.LongTensor` of shape `(windows,)`): the audio item of each window
            (for the emotion head, when an item spans several windows).
        labels (`torch.LongTensor` of shape `(batch, seq)`): next-token targets (-100 = ignored).
        emotion_labels (`torch.LongTensor` of shape `(items,)`): emotion class ids of the audio items.
        logits_to_keep (`int` or `torch.Tensor`): the last N positions, 1-D position indices, or a
            `(batch, seq)` boolean mask (logits then come flattened as `(kept positions, vocab)`).
        """
        outputs = self.model(
            input_ids=input_ids,
            input_features=input_features,
            feature_attention_mask=feature_attention_mask,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if labels is None and isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden_states = hidden_states[:, -logits_to_keep:]
        elif labels is None and isinstance(logits_to_keep, torch.Tensor):
            # A (batch, seq) boolean mask keeps just those positions, flattened to (kept, hidden):
            # full-vocabulary logits everywhere would cost far more memory than the loss needs.
            is_mask = logits_to_keep.dtype == torch.bool and logits_to_keep.ndim == 2
            hidden_states = hidden_states[logits_to_keep] if is_mask else hidden_states[:, logits_to_keep]
        logits = self.compute_logits(hidden_states)

        lm_loss = emotion_logits = emotion_loss = None
        if labels is not None:
            lm_loss = self.loss_function(logits=logits, labels=labels, vocab_size=logits.shape[-1], **kwargs)
        if outputs.audio_embeds is not None:
            emotion_logits = self.classify_emotion(outputs.emotion_head_states, outputs.emotion_head_lengths, audio_item_index)
            if emotion_labels is not None:
                emotion_loss = nn.functional.cross_entropy(emotion_logits.float(), emotion_labels.to(emotion_logits.device))
        elif emotion_labels is not None:
            raise ValueError("emotion_labels were given without input_features")
        losses = [loss for loss in (lm_loss, emotion_loss) if loss is not None]
        return BlspEmoCausalLMOutputWithPast(
            loss=sum(losses) if losses else None,
            lm_loss=lm_loss,
            emotion_loss=emotion_loss,
            logits=logits,
            emotion_logits=emotion_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            audio_embeds=outputs.audio_embeds,
            audio_lengths=outputs.audio_lengths,
            cache=outputs.cache,
        )

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        next_sequence_length: int | None = None,
        cache: Cache | None = None,
        attention_mask: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        is_first_iteration: bool | None = False,
        **kwargs,
    ):
        model_inputs = super().prepare_inputs_for_generation(
            input_ids,
            next_sequence_length=next_sequence_length,
            cache=cache,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            is_first_iteration=is_first_iteration,
            **kwargs,
        )
        if not is_first_iteration and kwargs.get("use_cache", True):
            for name in AUDIO_INPUT_NAMES:
                model_inputs.pop(name, None)
        return model_inputs

    def _get_logits_processor(self, generation_config, input_ids_seq_length: int | None = None, **kwargs):
        """`repetition_penalty` and `no_repeat_ngram_size` count the reply's own tokens only, as the
        original release's penalty did (transformers' would count the prompt: instruction, system
        text, earlier turns, speech placeholders). See `reply_generation`."""
        reply_only = reply_logits_processors(
            input_ids_seq_length or 0, generation_config.repetition_penalty, generation_config.no_repeat_ngram_size
        )
        if reply_only:
            generation_config = copy.copy(generation_config)
            generation_config.repetition_penalty = generation_config.no_repeat_ngram_size = None
        processors = super()._get_logits_processor(generation_config, input_ids_seq_length, **kwargs)
        processors[:0] = reply_only
        return processors

    def _expand_inputs_for_generation(
        self, expand_size: int = 1, is_encoder_decoder: bool = False, input_ids=None, **model_kwargs
    ):
        """Beam search and sampling repeat each prompt row; repeat its audio windows with it, in row order."""
        features = model_kwargs.get("input_features")
        if expand_size == 1 or features is None:
            return super()._expand_inputs_for_generation(expand_size, is_encoder_decoder, input_ids, **model_kwargs)
        frame_mask = model_kwargs.get("feature_attention_mask")
        if frame_mask is None:
            frame_mask = features.new_ones(features.shape[0], features.shape[-1], dtype=torch.long)
        counts = windows_per_row(
            input_ids, self.config.audio_token_id, frame_mask, self.config.kernel_sizes, self.config.emotion_token
        )
        starts = [sum(counts[:row]) for row in range(len(counts))]
        order = [start + i for start, count in zip(starts, counts) for _ in range(expand_size) for i in range(count)]
        order = torch.tensor(order, dtype=torch.long, device=features.device)
        # The emotion head plays no part in generation, so item grouping is not carried over.
        audio_inputs = {"input_features": features[order], "feature_attention_mask": frame_mask[order]}
        other = {key: value for key, value in model_kwargs.items() if key not in AUDIO_INPUT_NAMES}
        input_ids, other = super()._expand_inputs_for_generation(expand_size, is_encoder_decoder, input_ids, **other)
        return input_ids, {**other, **audio_inputs}


class BlspEmoAudioModel(SpeechEmbeddingMixin, BlspEmoPreTrainedModel):
    """Speech encoder and adapter only: all the emotion head needs (no LLM)."""

    def __init__(self, config: BlspEmoConfig):
        super().__init__(config)
        self.init_speech_modules(config)
        self.post_init()


def frames_before_padding(input_features: torch.Tensor) -> torch.Tensor:
    """Real mel frames of 30-s padded features given without a mask: the frames after the audio are
    digital silence, every mel bin at the clip's floor (its minimum), so the clip ends after the last
    frame with any bin above it."""
    above_floor = (input_features > input_features.amin(dim=(1, 2), keepdim=True)).any(dim=1)
    positions = torch.arange(1, input_features.shape[-1] + 1, device=input_features.device)
    return (above_floor * positions).amax(-1).clamp(min=1)


class BlspEmoForAudioClassification(EmotionHeadMixin, BlspEmoPreTrainedModel):
    """Speech emotion recognition with BLSP-Emo's encoder, adapter and emotion head; the LLM is neither
    built nor loaded (its weights in a full checkpoint are skipped).

    ```python
    model = AutoModelForAudioClassification.from_pretrained(path, trust_remote_code=True)
    logits = model(**processor.audio_features([clip])).logits  # (items, labels); config.id2label names them
    model.emotion_probabilities(logits)  # calibrated scores (config.emotion_temperature)
    ```

    `logits` are the head's raw logits, as for any transformers classifier; the temperature is
    applied only where they become scores.
    """

    main_input_name = "input_features"
    checkpoint_tasks = (CLASSIFICATION_TASK,)
    # A full checkpoint's LLM, LM head and emotion token table: not part of this model.
    _keys_to_ignore_on_load_unexpected = [r"^model\.language_model\.", r"^lm_head\.", r"^emotion_token_embeddings\."]

    def __init__(self, config: BlspEmoConfig):
        super().__init__(config)
        self.model = BlspEmoAudioModel(config)
        self.emotion_head = nn.Linear(config.emotion_head_input_size, len(config.id2label), bias=False)
        self.post_init()

    def checkpoint_auto_map(self) -> dict[str, str]:
        return {CLASSIFICATION_AUTO_CLASS: f"{type(self).__module__.rsplit('.', 1)[-1]}.{type(self).__name__}"}

    def forward(
        self,
        input_features: torch.Tensor,
        feature_attention_mask: torch.Tensor | None = None,
        audio_item_index: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        r"""
        input_features (`torch.Tensor` of shape `(windows, mel bins, frames)`): log-mel features, from
            [`BlspEmoProcessor.audio_features`] or a Whisper feature extractor.
        feature_attention_mask (`torch.Tensor` of shape `(windows, frames)`): 1 on real mel frames.
            `attention_mask` is accepted under that name too (Whisper feature extractors call it so).
            Without either, 30-s padded features are trimmed after their last non-silent frame
            (transformers' own `audio-classification` pipeline sends them so).
        audio_item_index (`torch.LongTensor` of shape `(windows,)`): the item of each window.
        labels (`torch.LongTensor` of shape `(items,)`): emotion class ids; gives `loss`.
        """
        frame_mask = feature_attention_mask if feature_attention_mask is not None else attention_mask
        if frame_mask is None and input_features.shape[-1] == WINDOW_FRAMES:
            frames = frames_before_padding(input_features)
            frame_mask = length_mask(frames, input_features.shape[-1]).long()
            if self.config.audio_padding == "longest":
                input_features = input_features[..., : int(frames.max())]
                frame_mask = frame_mask[:, : input_features.shape[-1]]
        logits = self.emotion_logits(input_features, frame_mask, audio_item_index)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels.to(logits.device))
        return SequenceClassifierOutput(loss=loss, logits=logits)


__all__ = [
    "BlspEmoAudioModel",
    "BlspEmoForAudioClassification",
    "BlspEmoForConditionalGeneration",
    "BlspEmoModel",
    "BlspEmoPreTrainedModel",
    "SpeechFeatures",
    "pool_encoder_statistics",
    "pool_speech_embeddings",
]
