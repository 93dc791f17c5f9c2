"""Tiny random BLSP-Emo parts built in-process: no network, a few hundred kB each."""

from types import SimpleNamespace
from typing import Sequence

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, WhisperFeatureExtractor

from modeling_blsp_emo import BlspEmoConfig, BlspEmoForConditionalGeneration
from modeling_blsp_emo.speech_lengths import SAMPLING_RATE, num_speech_embeddings

AUDIO_TOKEN = "<|audio|>"
SPECIAL_TOKENS = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", AUDIO_TOKEN]
WORDS = (
    "system user assistant you are a helpful . , : ! ? the quick brown fox jumps over lazy dog i am fine "
    "sad happy angry neutral surprise continue following sentence in coherent style based on conveyed emotion "
    "tone please identify of speech provided below select from options or your response should fulfill requests "
    "with empathy toward user's hello world today is good bad day yes no"
).split()
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

TEXT_CONFIGS = {
    "qwen2": dict(
        model_type="qwen2", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512,
    ),
    "llama": dict(
        model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=True,
    ),
}
AUDIO_CONFIG = dict(
    d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64, num_mel_bins=80,
    decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=64, max_source_positions=1500,
)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer with ChatML special tokens and the audio placeholder."""
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r"\s+"), behavior="removed"), pre_tokenizers.Punctuation()]
    )
    backend.decoder = decoders.WordPiece(prefix="##")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", AUDIO_TOKEN],
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def tiny_config(text_model_type: str = "qwen2", **overrides) -> BlspEmoConfig:
    tokenizer_size = len(SPECIAL_TOKENS) + len(WORDS)
    text_config = dict(TEXT_CONFIGS[text_model_type], vocab_size=tokenizer_size, eos_token_id=SPECIAL_TOKENS.index("<|im_end|>"))
    return BlspEmoConfig(
        audio_config=AUDIO_CONFIG,
        text_config=text_config,
        audio_token_id=SPECIAL_TOKENS.index(AUDIO_TOKEN),
        adapter_inner_dim=16,
        **overrides,
    )


def tiny_model(text_model_type: str = "qwen2", seed: int = 0, **overrides) -> BlspEmoForConditionalGeneration:
    torch.manual_seed(seed)
    return BlspEmoForConditionalGeneration(tiny_config(text_model_type, **overrides)).eval()


def tiny_feature_extractor() -> WhisperFeatureExtractor:
    return WhisperFeatureExtractor(feature_size=AUDIO_CONFIG["num_mel_bins"])


AUDIO_TOKEN_ID = SPECIAL_TOKENS.index(AUDIO_TOKEN)
PAD_TOKEN_ID = SPECIAL_TOKENS.index("<|endoftext|>")
EOS_TOKEN_ID = SPECIAL_TOKENS.index("<|im_end|>")
WORD_IDS = range(len(SPECIAL_TOKENS), len(SPECIAL_TOKENS) + len(WORDS))  # ordinary (non-special) tokens


def random_clip(num_samples: int, seed: int = 0) -> np.ndarray:
    """A 16-kHz float32 clip: a sine (its pitch set by `seed`) plus noise."""
    rng = np.random.default_rng(seed)
    time = np.arange(num_samples) / SAMPLING_RATE
    tone = 0.3 * np.sin(2 * np.pi * (150 + 40 * seed) * time)
    return (tone + 0.05 * rng.standard_normal(num_samples)).astype(np.float32)


def clip_features(clip: np.ndarray, audio_padding: str = "longest") -> tuple[torch.Tensor, torch.Tensor]:
    """Log-mel features `(mel bins, frames)` of one clip and its frame mask `(frames,)`, extracted
    as the processor does for `audio_padding` (own length, or 30 s with an attention mask)."""
    extractor = tiny_feature_extractor()
    if audio_padding == "longest":
        features = extractor(clip, sampling_rate=SAMPLING_RATE, padding="longest", return_tensors="pt").input_features[0]
        return features, torch.ones(features.shape[-1], dtype=torch.long)
    extracted = extractor(
        clip, sampling_rate=SAMPLING_RATE, padding="max_length", return_attention_mask=True, return_tensors="pt"
    )
    return extracted.input_features[0], extracted.attention_mask[0]


def left_pad(rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """`input_ids` and `attention_mask` of token rows, left padded with the pad token."""
    width = max(len(row) for row in rows)
    input_ids = torch.tensor([[PAD_TOKEN_ID] * (width - len(row)) + list(row) for row in rows])
    attention_mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
    return input_ids, attention_mask


def speech_inputs(
    clip_lengths: Sequence[int | Sequence[int]], audio_padding: str = "longest", seed: int = 0
) -> dict[str, torch.Tensor]:
    """Hand-built model inputs for a batch of prompts, one row per entry of `clip_lengths`.

    An entry is the sample count of the row's clip, a tuple of counts for a row whose audio spans
    several windows, or `()` for a text-only row. Each row is a few ordinary tokens (row i has
    2 + i % 3 before the audio), the audio placeholders, then two more tokens; rows are left padded.
    Clip features are zero padded to the longest clip.
    """
    rng = np.random.default_rng(seed)
    rows, features, frame_masks = [], [], []
    for row_index, entry in enumerate(clip_lengths):
        windows = (entry,) if isinstance(entry, int) else tuple(entry)
        placeholders = []
        for num_samples in windows:
            clip_feature, frame_mask = clip_features(random_clip(num_samples, seed + len(features)), audio_padding)
            features.append(clip_feature)
            frame_masks.append(frame_mask)
            placeholders += [AUDIO_TOKEN_ID] * num_speech_embeddings(num_samples, audio_padding)
        before, after = rng.choice(WORD_IDS, 2 + row_index % 3).tolist(), rng.choice(WORD_IDS, 2).tolist()
        rows.append(before + placeholders + after)
    input_ids, attention_mask = left_pad(rows)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if features:
        frames = max(feature.shape[-1] for feature in features)
        inputs["input_features"] = torch.stack(
            [torch.nn.functional.pad(feature, (0, frames - feature.shape[-1])) for feature in features]
        )
        inputs["feature_attention_mask"] = torch.stack(
            [torch.nn.functional.pad(mask, (0, frames - mask.shape[-1])) for mask in frame_masks]
        )
    return inputs


def save_tiny_whisper(directory) -> None:
    """A tiny random full Whisper checkpoint (encoder + decoder) with its feature extractor."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(1)
    WhisperForConditionalGeneration(WhisperConfig(**AUDIO_CONFIG)).save_pretrained(directory)
    tiny_feature_extractor().save_pretrained(directory)


def save_tiny_causal_lm(directory, text_model_type: str = "qwen2") -> None:
    """A tiny random causal LM whose tokenizer lacks the audio placeholder (the builder adds it)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = tiny_tokenizer()
    vocab = {token: index for token, index in tokenizer.get_vocab().items() if token != AUDIO_TOKEN}
    backend = Tokenizer(models.WordLevel({token: i for i, token in enumerate(sorted(vocab, key=vocab.get))}, unk_token="<unk>"))
    backend.pre_tokenizer = tokenizer.backend_tokenizer.pre_tokenizer
    backend.decoder = tokenizer.backend_tokenizer.decoder
    without_audio = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    without_audio.chat_template = CHATML_TEMPLATE
    without_audio.save_pretrained(directory)
    config = dict(TEXT_CONFIGS[text_model_type], vocab_size=len(without_audio), eos_token_id=without_audio.eos_token_id)
    model_type = config.pop("model_type")
    torch.manual_seed(2)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **config)).save_pretrained(directory)


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of left-padded rows, as `generate` computes them."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def row_alone(batch: dict[str, torch.Tensor], row: int, audio_padding: str = "longest") -> dict[str, torch.Tensor]:
    """Row `row` of a batch with one clip per row, without its padding (features trimmed to the clip's
    own frames, unless 30-s padding keeps all 3000)."""
    keep = batch["attention_mask"][row].bool()
    input_ids = batch["input_ids"][row, keep][None]
    frame_mask = batch["feature_attention_mask"][row : row + 1]
    frames = int(frame_mask.sum()) if audio_padding == "longest" else frame_mask.shape[-1]
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "input_features": batch["input_features"][row : row + 1, :, :frames],
        "feature_attention_mask": frame_mask[:, :frames],
    }


def until_eos(tokens: torch.Tensor) -> list[int]:
    """Generated token ids up to and including the first end-of-turn token."""
    tokens = tokens.tolist()
    return tokens[: tokens.index(EOS_TOKEN_ID) + 1] if EOS_TOKEN_ID in tokens else tokens


def greedy(model, inputs: dict[str, torch.Tensor], **kwargs) -> list[list[int]]:
    """New token ids of greedy generation, per row, cut after the end-of-turn token."""
    output = model.generate(**inputs, do_sample=False, pad_token_id=PAD_TOKEN_ID, **kwargs)
    return [until_eos(row) for row in output[:, inputs["input_ids"].shape[1] :]]


def training_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """LM loss on the text tokens plus the emotion loss of every clip."""
    labels = batch["input_ids"].masked_fill(
        (batch["attention_mask"] == 0) | (batch["input_ids"] == AUDIO_TOKEN_ID), -100
    )
    emotion_labels = torch.arange(batch["input_features"].shape[0]) % len(model.config.id2label)
    return model(**batch, labels=labels, emotion_labels=emotion_labels).loss


def gradients(model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Gradients of `training_loss` by parameter name (parameters without a gradient left out)."""
    model.zero_grad()
    training_loss(model, batch).backward()
    return {name: parameter.grad.clone() for name, parameter in model.named_parameters() if parameter.grad is not None}


def voice_like(duration: float = 1.5, seed: int = 0) -> np.ndarray:
    """A stand-in for speech that needs no TTS: a harmonic source whose pitch glides around 120 Hz,
    in syllables with pauses between them."""
    time = np.arange(int(duration * SAMPLING_RATE)) / SAMPLING_RATE
    phase = np.cumsum(120 * (1 + 0.25 * np.sin(2 * np.pi * 0.7 * time + seed))) / SAMPLING_RATE
    source = sum(np.sin(2 * np.pi * k * phase) / k for k in range(1, 25))
    syllables = np.clip(np.sin(2 * np.pi * 2 * time), 0, None) ** 0.5
    return (0.1 * source * syllables + 0.002 * np.random.default_rng(seed).standard_normal(len(time))).astype(np.float32)


LABELS = ["neutral", "happy", "angry", "sad", "surprise"]


class FavouringModel(torch.nn.Module):
    """A stand-in LLM whose next token is always `favourite` (logit 5, every other token 0)."""

    def __init__(self, vocab_size: int, favourite: int):
        super().__init__()
        self.vocab_size, self.favourite = vocab_size, favourite
        self.device = torch.device("cpu")

    def forward(self, input_ids, attention_mask=None, cache=None, use_cache=False, logits_to_keep=0):
        kept = 1 if isinstance(logits_to_keep, int) else len(logits_to_keep)
        logits = torch.zeros(len(input_ids), kept, self.vocab_size)
        logits[..., self.favourite] = 5.0
        return SimpleNamespace(logits=logits, cache=SimpleNamespace(batch_repeat_interleave=lambda repeats: None))
