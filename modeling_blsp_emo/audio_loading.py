"""Turn the audio inputs users actually have into 16 kHz mono float32 waveforms.

Ships as Hugging Face remote code, so it may only import the standard library, numpy, torch and
transformers; file decoding therefore goes through `transformers.audio_utils.load_audio`.
"""

import base64
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers.audio_utils import load_audio as _hf_load_audio

from .speech_lengths import SAMPLING_RATE

_MIN_SAMPLING_RATE = 1000
_MAX_SAMPLING_RATE = 384000
_MAX_CHANNELS = 8

# Kaiser-windowed sinc: 32 zero crossings per side with beta 8.6 (~85 dB stopband) keeps the
# transition band narrow enough that a 0.95 rolloff still leaves little room for aliasing.
_ZERO_CROSSINGS = 32
_KAISER_BETA = 8.6
_ROLLOFF = 0.95

# dtype -> (offset, scale) mapping integer PCM onto [-1, 1).
_INT_PCM_SCALE = {
    np.dtype(np.int16): (0.0, 32768.0),
    np.dtype(np.int32): (0.0, 2.0**31),
    np.dtype(np.uint8): (128.0, 128.0),
}


class AudioInputError(ValueError):
    """An audio input that cannot be turned into a usable waveform; the message names the item."""


def resample(waveform: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling of a 1-D waveform with a polyphase Kaiser-windowed sinc filter.

    The anti-aliasing cutoff is `_ROLLOFF * min(orig_sr, target_sr) / 2` and the output has
    `ceil(len(waveform) * target_sr / orig_sr)` samples. Returns float32.
    """
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim != 1:
        raise ValueError(f"resample expects a 1-D waveform, got shape {waveform.shape}")
    orig_sr, target_sr = int(orig_sr), int(target_sr)
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sampling rates must be positive, got {orig_sr} and {target_sr}")
    if orig_sr == target_sr:
        return np.ascontiguousarray(waveform)
    gcd = math.gcd(orig_sr, target_sr)
    orig, new = orig_sr // gcd, target_sr // gcd
    n_in = waveform.shape[0]
    n_out = -(-n_in * new // orig)
    if n_out == 0:
        return np.zeros(0, dtype=np.float32)

    cutoff = _ROLLOFF * min(orig, new) / (2.0 * orig)
    half_width = math.ceil(_ZERO_CROSSINGS / (2.0 * cutoff))
    n_taps = 2 * half_width
    # Output j sits at input time j * orig / new, so outputs sharing j % new (a phase) share taps.
    # Each conv1d call filters a group of consecutive phases at once (one output channel per
    # phase, taps shifted by the phase's offset); groups are sized so the shifted taps span about
    # two filter lengths, bounding wasted multiplies, memory and the number of calls even when gcd
    # reduction leaves thousands of phases (e.g. 44101 -> 16000 Hz).
    group = max(1, math.ceil(n_taps * new / orig))
    n_blocks = -(-n_out // new)
    padded = torch.nn.functional.pad(torch.from_numpy(waveform), (half_width, half_width))
    out = torch.zeros(n_blocks, new, dtype=torch.float32)
    for first in range(0, min(new, n_out), group):
        phases = torch.arange(first, min(first + group, new), dtype=torch.int64)
        floor_offsets = phases * orig // new
        kernels = _phase_kernels((phases * orig % new).to(torch.float64) / new, half_width, cutoff)
        shifts = floor_offsets - floor_offsets[0]
        span = int(shifts[-1]) + n_taps
        bank = torch.zeros(len(phases), span, dtype=torch.float32)
        bank[torch.arange(len(phases))[:, None], shifts[:, None] + torch.arange(n_taps)] = kernels
        blocks = len(range(first, n_out, new))
        start = int(floor_offsets[0]) + 1
        segment = padded[start : start + (blocks - 1) * orig + span]
        segment = torch.nn.functional.pad(segment, (0, (blocks - 1) * orig + span - segment.shape[0]))
        filtered = torch.nn.functional.conv1d(segment[None, None], bank[:, None, :], stride=orig)
        out[:blocks, first : first + len(phases)] = filtered[0].T
    return out.reshape(-1)[:n_out].numpy()


def _phase_kernels(frac: torch.Tensor, half_width: int, cutoff: float) -> torch.Tensor:
    """Kaiser-windowed sinc taps (rows: phases) for inputs at offsets -(half_width-1)..half_width
    from the sample just before each output, `frac` being each output's fractional position."""
    support = _ZERO_CROSSINGS / (2.0 * cutoff)
    delta = torch.arange(2 * half_width, dtype=torch.float64)[None, :] - (half_width - 1) - frac[:, None]
    ratio = (delta / support).clamp(-1.0, 1.0)
    beta = torch.tensor(_KAISER_BETA, dtype=torch.float64)
    window = torch.special.i0(beta * torch.sqrt(1.0 - ratio**2)) / torch.special.i0(beta)
    kernels = 2.0 * cutoff * torch.sinc(2.0 * cutoff * delta) * window
    # Per-phase DC normalisation stops the phases' slightly different gains from adding a
    # periodic ripple at the phase rate.
    return (kernels / kernels.sum(dim=1, keepdim=True)).to(torch.float32)


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
    return _decode(path, name)


def _decode_bytes(data: bytes, name: str) -> np.ndarray:
    # A `data:` URI rather than bare base64, so the payload can never be mistaken for a local path;
    # the empty media type leaves format detection to the bytes themselves.
    return _decode("data:;base64," + base64.b64encode(data).decode("ascii"), name)


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
        return samples.astype(np.float32)
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
