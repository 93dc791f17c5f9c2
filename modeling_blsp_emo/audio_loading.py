"""Turn the audio inputs users actually have into 16 kHz mono float32 waveforms.

Ships as Hugging Face remote code, so it may only import the standard library, numpy, torch and
transformers; file decoding therefore goes through `transformers.audio_utils.load_audio`.
"""

import base64
import io
import logging
import math
import os
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers.audio_utils import load_audio as _hf_load_audio

from .speech_lengths import SAMPLING_RATE

logger = logging.getLogger(__name__)

_MIN_SAMPLING_RATE = 1000
_MAX_SAMPLING_RATE = 384000
_MAX_CHANNELS = 8

# dtype -> (offset, scale) mapping integer PCM onto [-1, 1).
_INT_PCM_SCALE = {
    np.dtype(np.int16): (0.0, 32768.0),
    np.dtype(np.int32): (0.0, 2.0**31),
    np.dtype(np.uint8): (128.0, 128.0),
}


class AudioInputError(ValueError):
    """An audio input that cannot be turned into a usable waveform; the message names the item."""


def resample(waveform: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling of a 1-D waveform with soxr (high quality). The output has
    `ceil(len(waveform) * target_sr / orig_sr)` samples, whatever the rates. Returns float32."""
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim != 1:
        raise ValueError(f"resample expects a 1-D waveform, got shape {waveform.shape}")
    orig_sr, target_sr = int(orig_sr), int(target_sr)
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sampling rates must be positive, got {orig_sr} and {target_sr}")
    if orig_sr == target_sr:
        return np.ascontiguousarray(waveform)
    try:  # inside `try`: transformers' check of remote-code imports leaves optional ones to us
        import soxr
    except ImportError as error:
        raise ImportError(f"resampling audio from {orig_sr} Hz needs soxr: pip install soxr") from error
    n_out = -(-waveform.shape[0] * target_sr // orig_sr)
    resampled = soxr.resample(waveform, orig_sr, target_sr, quality="HQ") if waveform.shape[0] else waveform
    # soxr rounds the length down; pad the last partial sample so lengths follow the documented ceil.
    resampled = np.pad(resampled[:n_out], (0, max(0, n_out - resampled.shape[0])))
    return np.ascontiguousarray(resampled, dtype=np.float32)


def load_audio(item: Any, sampling_rate: int | None = None, name: str | None = None) -> np.ndarray:
    """Load one audio input as a 1-D, C-contiguous float32 mono waveform at 16 kHz.

    `item` may be a file path, encoded file bytes, a numpy array or torch tensor of samples
    (needs `sampling_rate`), a `datasets` audio dict (`array`/`sampling_rate`, `bytes`/`path`
    or `path`), or a torchcodec-style decoder with `get_all_samples()`. `name` labels the item
    in error messages. Raises `AudioInputError` for anything unusable.
    """
    name = name if name is not None else describe_audio_item(item)
    if isinstance(item, (str, os.PathLike)):
        return _check_decoded(_decode_path(os.fsdecode(item), name), name)
    if isinstance(item, (bytes, bytearray)):
        return _check_decoded(_decode_bytes(bytes(item), name), name)
    if isinstance(item, dict):
        return _load_dict(item, sampling_rate, name)
    if isinstance(item, (np.ndarray, torch.Tensor)):
        if sampling_rate is None:
            raise AudioInputError(f"{name}: raw array needs sampling_rate= (the rate it was recorded at)")
        return _from_samples(item, sampling_rate, name)
    if callable(getattr(item, "get_all_samples", None)):
        samples = item.get_all_samples()
        # Decoders return (channels, samples), so the layout is known rather than guessed.
        return _from_samples(samples.data, samples.sample_rate, name, channels_first=True)
    raise AudioInputError(f"{name}: unsupported audio input type {type(item).__module__}.{type(item).__qualname__}")


def load_audio_batch(items: Any, sampling_rate: int | None = None) -> list[np.ndarray]:
    """Load a single item or a sequence of items with `load_audio`, naming each in errors."""
    if not isinstance(items, Sequence) or isinstance(items, (str, bytes, bytearray)):
        items = [items]
    return [load_audio(item, sampling_rate, describe_audio_item(item, i)) for i, item in enumerate(items)]


def describe_audio_item(item: Any, index: int | None = None) -> str:
    """How errors name an audio item (item `index` of a batch): its path, or `audio` / `audio item N`,
    followed by the path of a `{"path": ...}` dict."""
    default = "audio" if index is None else f"audio item {index}"
    if isinstance(item, (str, os.PathLike)):
        return os.fsdecode(item)
    if isinstance(item, dict) and isinstance(item.get("path"), (str, os.PathLike)):
        return f"{default} ({os.fsdecode(item['path'])})"
    return default


def _load_dict(item: dict, sampling_rate: int | None, name: str) -> np.ndarray:
    if item.get("array") is not None:
        rate = item.get("sampling_rate")
        rate = sampling_rate if rate is None else rate
        if rate is None:
            raise AudioInputError(f"{name}: dict with 'array' needs a 'sampling_rate' entry or sampling_rate=")
        return _from_samples(item["array"], rate, name)
    if item.get("bytes") is not None:
        return _check_decoded(_decode_bytes(bytes(item["bytes"]), name), name)
    if item.get("path") is not None:
        return _check_decoded(_decode_path(os.fsdecode(item["path"]), name), name)
    raise AudioInputError(f"{name}: audio dict has no usable 'array', 'bytes' or 'path' entry (keys: {list(item)})")


def _decode_path(path: str, name: str) -> np.ndarray:
    # transformers treats any string that is not an existing file as base64 or a URL, which would
    # turn a typo into a confusing decode error or a network request.
    if not os.path.exists(path):
        raise AudioInputError(f"{name}: file not found")
    if not os.path.isfile(path):
        raise AudioInputError(f"{name}: not a regular file")
    with open(path, "rb") as handle:
        _warn_if_truncated_wav(handle, os.path.getsize(path), name)
    return _decode(path, name)


def _decode_bytes(data: bytes, name: str) -> np.ndarray:
    _warn_if_truncated_wav(io.BytesIO(data), len(data), name)
    # A `data:` URI rather than bare base64, so the payload can never be mistaken for a local path;
    # the empty media type leaves format detection to the bytes themselves.
    return _decode("data:;base64," + base64.b64encode(data).decode("ascii"), name)


def _warn_if_truncated_wav(handle, size: int, name: str) -> None:
    """Warn when a WAV file's data chunk promises more bytes than the file holds (a copy cut short):
    the decoder quietly returns the part that is there."""
    header = handle.read(12)
    if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
        return
    position = 12
    while position + 8 <= size:
        handle.seek(position)
        chunk_id, chunk_size = struct.unpack("<4sI", handle.read(8))
        if chunk_id == b"data":
            available = size - position - 8
            if available < chunk_size != 0xFFFFFFFF:  # 0xFFFFFFFF: written while streaming, size unknown
                logger.warning(
                    "%s: truncated WAV: its header promises %d bytes of audio but the file holds %d (%.0f%%); "
                    "loading what is there", name, chunk_size, available, 100 * available / chunk_size,
                )
            return
        position += 8 + chunk_size + (chunk_size & 1)  # chunks are padded to an even size


def _decode(source: str, name: str) -> np.ndarray:
    try:
        return _hf_load_audio(source, sampling_rate=SAMPLING_RATE, backend="soundfile")
    except (RuntimeError, ValueError, OSError, EOFError) as exc:
        raise AudioInputError(f"{name}: could not decode audio ({type(exc).__name__}: {exc})") from exc


def _check_decoded(waveform: np.ndarray, name: str) -> np.ndarray:
    waveform = np.asarray(waveform, dtype=np.float32).reshape(-1)
    _check_samples(waveform, name)
    return np.ascontiguousarray(waveform)


def _check_samples(waveform: np.ndarray, name: str) -> None:
    if waveform.size == 0:
        raise AudioInputError(f"{name}: audio is empty (0 samples)")
    if not np.isfinite(waveform).all():
        raise AudioInputError(f"{name}: audio contains NaN/inf samples")


def _from_samples(samples: Any, sampling_rate: Any, name: str, channels_first: bool = False) -> np.ndarray:
    rate = _validate_rate(sampling_rate, name)
    waveform = _to_float(samples, name)
    _check_samples(waveform, name)
    waveform = _to_mono(waveform, name, channels_first)
    return np.ascontiguousarray(resample(waveform, rate, SAMPLING_RATE), dtype=np.float32)


def _validate_rate(rate: Any, name: str) -> int:
    if isinstance(rate, torch.Tensor) and rate.numel() == 1:
        rate = rate.item()
    if isinstance(rate, (bool, np.bool_)) or not isinstance(rate, (int, float, np.integer, np.floating)):
        raise AudioInputError(f"{name}: sample rate {rate!r} is not a number")
    if not math.isfinite(rate) or float(rate) != int(rate):
        raise AudioInputError(f"{name}: sample rate {rate} Hz is not a whole number")
    if not _MIN_SAMPLING_RATE <= int(rate) <= _MAX_SAMPLING_RATE:
        raise AudioInputError(
            f"{name}: sample rate {rate} Hz is outside the plausible range "
            f"{_MIN_SAMPLING_RATE}-{_MAX_SAMPLING_RATE} Hz"
        )
    return int(rate)


def _to_float(samples: Any, name: str) -> np.ndarray:
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().cpu()
        # numpy has no bfloat16, so widen reduced-precision floats before converting.
        if samples.is_floating_point():
            samples = samples.to(torch.float32)
        samples = samples.numpy()
    if not isinstance(samples, np.ndarray):
        raise AudioInputError(f"{name}: unsupported sample container {type(samples).__qualname__}")
    if samples.dtype.kind == "f":
        with np.errstate(over="ignore"):
            converted = samples.astype(np.float32)
        if not np.isfinite(converted).all() and np.isfinite(samples).all():
            peak = float(np.abs(samples).max())
            raise AudioInputError(f"{name}: sample values up to {peak:.3g} are out of range (float audio is expected within about -1..1)")
        return converted
    if samples.dtype in _INT_PCM_SCALE:
        offset, scale = _INT_PCM_SCALE[samples.dtype]
        return ((samples.astype(np.float64) - offset) / scale).astype(np.float32)
    raise AudioInputError(
        f"{name}: unsupported sample dtype {samples.dtype} (expected float, int16, int32 or uint8 PCM)"
    )


def _to_mono(waveform: np.ndarray, name: str, channels_first: bool) -> np.ndarray:
    if waveform.ndim == 1:
        return waveform
    if waveform.ndim != 2:
        raise AudioInputError(f"{name}: expected 1-D or 2-D (channels x samples) audio, got shape {waveform.shape}")
    if channels_first:
        channel_axis = 0
    else:
        channel_axis = int(np.argmin(waveform.shape))
        if waveform.shape[0] == waveform.shape[1] or waveform.shape[channel_axis] > _MAX_CHANNELS:
            raise AudioInputError(
                f"{name}: ambiguous 2-D audio shape {waveform.shape}: cannot tell the channel axis "
                f"(expected one axis with at most {_MAX_CHANNELS} channels)"
            )
    return waveform.mean(axis=channel_axis, dtype=np.float32)
