"""`BlspEmoProcessor`: audio + text (or chat conversations) → model inputs.

Each audio item becomes as many placeholder tokens as the model will produce speech embeddings for
it, so `model.generate(**processor(...))` works directly, batched with left padding.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature, ProcessorMixin

from .audio_loading import AudioInputError, describe_audio_item, load_audio, load_audio_batch
from .prompts import NEUTRAL_SYSTEM_PROMPT
from .speech_lengths import (
    MIN_SAMPLES,
    SAMPLING_RATE,
    WINDOW_FRAMES,
    mel_frames,
    num_speech_embeddings,
    parse_kernel_sizes,
    split_into_windows,
)

Message = dict[str, Any]
# Keys under which a chat content item may carry its audio.
AUDIO_ITEM_KEYS = ("audio", "path", "url", "array")


class BlspEmoProcessor(ProcessorMixin):
    r"""
    Wraps a Whisper feature extractor and the LLM's tokenizer.

    Args:
        feature_extractor (`WhisperFeatureExtractor`): must have the encoder's number of mel bins.
        tokenizer: the LLM tokenizer, with `audio_token` added as a special token.
        chat_template (`str`, *optional*): overrides the tokenizer's chat template.
        audio_token (`str`): the placeholder that speech embeddings replace.
        audio_padding (`"longest"` or `"max_length"`): must match the model config's.
        conv_kernel_sizes (`str`): must match the model config's (it sets the embedding count).
        emotion_token (`bool`): must match the model config's (one more placeholder per window).
    """

    def __init__(
        self,
        feature_extractor=None,
        tokenizer=None,
        chat_template: str | None = None,
        audio_token: str = "<|audio|>",
        audio_padding: str = "longest",
        conv_kernel_sizes: str = "5,5,5",
        emotion_token: bool = False,
    ):
        self.audio_token = audio_token
        self.audio_padding = audio_padding
        self.conv_kernel_sizes = conv_kernel_sizes
        self.emotion_token = emotion_token
        super().__init__(feature_extractor, tokenizer, chat_template=chat_template)

    @property
    def audio_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.audio_token)

    @property
    def kernel_sizes(self) -> tuple[int, ...]:
        return parse_kernel_sizes(self.conv_kernel_sizes)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "input_features", "feature_attention_mask", "audio_item_index"]

    def window_features(self, window: np.ndarray) -> tuple[np.ndarray, int]:
        """Log-mel features of one ≤30-s window and its number of real frames. Windows are extracted
        one at a time: batching would let padding shift a clip's last frames."""
        padding = "longest" if self.audio_padding == "longest" else "max_length"
        extracted = self.feature_extractor(
            window, sampling_rate=SAMPLING_RATE, padding=padding, return_attention_mask=True, return_tensors="np"
        )
        frames = mel_frames(len(window), self.audio_padding)
        return extracted["input_features"][0], frames

    def num_audio_tokens(self, num_samples: int) -> int:
        """Placeholder tokens for a 16-kHz clip of `num_samples` (the model's own length formula)."""
        return num_speech_embeddings(num_samples, self.audio_padding, self.kernel_sizes, self.emotion_token)

    def audio_features(self, clips: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        """Features of all windows of all clips, zero-padded to the longest window."""
        features, frame_counts, item_index = [], [], []
        for item, clip in enumerate(clips):
            start = 0
            for window_length in split_into_windows(len(clip)):
                window_features, frames = self.window_features(clip[start : start + window_length])
                start += window_length
                features.append(window_features)
                frame_counts.append(frames)
                item_index.append(item)
        width = WINDOW_FRAMES if self.audio_padding == "max_length" else max(f.shape[-1] for f in features)
        input_features = np.zeros((len(features), features[0].shape[0], width), dtype=np.float32)
        for row, window_features in enumerate(features):
            input_features[row, :, : window_features.shape[-1]] = window_features
        frames = torch.tensor(frame_counts)
        return {
            "input_features": torch.from_numpy(input_features),
            "feature_attention_mask": (torch.arange(width)[None, :] < frames[:, None]).long(),
            "audio_item_index": torch.tensor(item_index, dtype=torch.long),
        }

    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        audio: Any = None,
        sampling_rate: int | None = None,
        padding_side: str = "left",
        return_tensors: str = "pt",
        **tokenizer_kwargs,
    ) -> BatchFeature:
        """Tokenize `text` (one string or a batch) in which each `audio_token` marks where one audio
        item goes, in order; `audio` is one item or a list (paths, bytes, arrays with
        `sampling_rate`, `datasets` audio values). Returns `input_ids`, `attention_mask` and, with
        audio, `input_features`, `feature_attention_mask` and `audio_item_index`."""
        if text is None:
            raise ValueError("text is required: it marks where each audio item goes with the audio token")
        texts = [text] if isinstance(text, str) else list(text)
        items = [] if audio is None else list(audio) if isinstance(audio, (list, tuple)) else [audio]
        num_placeholders = sum(t.count(self.audio_token) for t in texts)
        if num_placeholders != len(items):
            raise AudioInputError(
                f"the text has {num_placeholders} audio placeholder(s) {self.audio_token!r} but {len(items)} audio "
                "item(s) were given; put one placeholder where each audio item goes"
            )
        clips = load_audio_batch(items, sampling_rate)
        for index, clip in enumerate(clips):
            if len(clip) < MIN_SAMPLES:
                raise AudioInputError(
                    f"{describe_audio_item(items[index], index)}: {len(clip)} samples at 16 kHz is too short "
                    f"(at least {MIN_SAMPLES}, 25 ms)"
                )
        expanded = self.expand_audio_tokens(texts, clips)
        encoded = self.tokenizer(
            expanded, padding=True, padding_side=padding_side, return_tensors=return_tensors, **tokenizer_kwargs
        )
        expected = [t.count(self.audio_token) for t in expanded]
        found = (encoded["input_ids"] == self.audio_token_id).sum(-1).tolist()
        if found != expected:
            raise ValueError(
                f"the tokenizer turned the audio placeholders into {found} tokens instead of {expected}: "
                f"add {self.audio_token!r} to the tokenizer as a special token"
            )
        data = dict(encoded)
        if clips:
            data.update(self.audio_features(clips))
        return BatchFeature(data=data, tensor_type=return_tensors)

    def expand_audio_tokens(self, texts: list[str], clips: list[np.ndarray]) -> list[str]:
        """Repeat each placeholder as many times as its clip has speech embeddings."""
        counts = iter(self.num_audio_tokens(len(clip)) for clip in clips)
        expanded = []
        for text in texts:
            parts = text.split(self.audio_token)
            pieces = [parts[0]]
            for part in parts[1:]:
                pieces.append(self.audio_token * next(counts) + part)
            expanded.append("".join(pieces))
        return expanded

    def render_conversation(
        self, conversation: list[Message], system_prompt: str | None = None
    ) -> tuple[list[dict[str, str]], list[Any], list[int | None]]:
        """Turn mixed text/audio content into plain-string messages with placeholders.

        Returns the messages, the audio items in order and each item's sampling rate (or None). A
        system message is always explicit: some chat templates inject their own default otherwise.
        """
        messages, audios, rates = [], [], []
        for index, message in enumerate(conversation):
            content = message.get("content")
            if isinstance(content, str):
                messages.append({"role": message["role"], "content": content})
                continue
            if not isinstance(content, list):
                raise ValueError(f"message {index}: content must be a string or a list of items, got {type(content).__name__}")
            pieces = []
            for item in content:
                kind = item.get("type")
                if kind == "text":
                    pieces.append(item["text"])
                elif kind == "audio":
                    key = next((k for k in AUDIO_ITEM_KEYS if item.get(k) is not None), None)
                    if key is None:
                        raise AudioInputError(f"message {index}: an audio item needs one of the keys {AUDIO_ITEM_KEYS}")
                    pieces.append(self.audio_token)
                    audios.append(item[key])
                    rates.append(item.get("sampling_rate"))
                else:
                    raise ValueError(f"message {index}: unknown content item type {kind!r} (expected 'text' or 'audio')")
            messages.append({"role": message["role"], "content": "".join(pieces)})
        if not messages or messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": system_prompt or NEUTRAL_SYSTEM_PROMPT})
        elif system_prompt is not None:
            raise ValueError("the conversation already starts with a system message; do not also pass system_prompt")
        return messages, audios, rates

    def apply_chat_template(
        self,
        conversation: list[Message] | list[list[Message]],
        add_generation_prompt: bool = True,
        tokenize: bool = True,
        system_prompt: str | None = None,
        chat_template: str | None = None,
        **kwargs,
    ) -> BatchFeature | str | list[str]:
        """Render one conversation (or a batch) with the LLM's chat template.

        User content may mix `{"type": "text", "text": ...}` and `{"type": "audio", "audio": ...}`
        items (`"sampling_rate"` alongside raw arrays). With `tokenize=False` returns the prompt
        text(s) with one placeholder per audio item; otherwise the model inputs.
        """
        batched = bool(conversation) and isinstance(conversation[0], list)
        conversations = conversation if batched else [conversation]
        texts, clips = [], []
        for dialogue in conversations:
            messages, audios, rates = self.render_conversation(dialogue, system_prompt)
            texts.append(
                self.tokenizer.apply_chat_template(
                    messages,
                    tokenize=False,
                    add_generation_prompt=add_generation_prompt,
                    chat_template=chat_template or self.chat_template,
                )
            )
            for item, rate in zip(audios, rates):
                clips.append(load_audio(item, sampling_rate=rate, name=describe_audio_item(item, len(clips))))
        if not tokenize:
            return texts if batched else texts[0]
        return self(text=texts, audio=clips, sampling_rate=SAMPLING_RATE, **kwargs)

    def batch_decode(self, *args, **kwargs) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs) -> str:
        return self.tokenizer.decode(*args, **kwargs)


__all__ = ["BlspEmoProcessor"]
