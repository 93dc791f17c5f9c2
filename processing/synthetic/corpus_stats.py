"""Measure what a synthetic emotional speech corpus sounds like: pitch, speaking rate, loudness, WER.

`measure_corpus` reads a JSONL manifest (fields `audio`, `text`, `emotion`, `speaker`) and
summarises it per engine × emotion; `stats_table` renders that summary as a markdown table.
Everything here is plain numpy so the numbers can be reproduced without any TTS engine installed.
"""

import math
import os
import re
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from modeling_blsp_emo.audio_loading import load_audio
from modeling_blsp_emo.speech_lengths import SAMPLING_RATE
from processing.manifests import read_manifest

_FRAME_SECONDS = 0.04
_HOP_SECONDS = 0.01
_MIN_F0_HZ = 60.0
_MAX_F0_HZ = 600.0
# A frame counts as voiced when its normalised autocorrelation peak clears this bar...
_VOICING_THRESHOLD = 0.5
# ...and as speech (voiced or not) when it is within this many dB of the loudest frame.
_ACTIVITY_RANGE_DB = 35.0
# Accept the shortest lag whose correlation is this close to the best one: the best peak of a
# periodic signal repeats at 2x, 3x the period, and picking those halves the F0 (octave errors).
_OCTAVE_TOLERANCE = 0.9
# A clip's mean F0 ignores frames further than this from its median F0 (octave errors).
_OUTLIER_OCTAVES = 0.75


@dataclass(frozen=True)
class ClipStats:
    """Acoustic summary of one clip: `f0_hz` is the mean over voiced frames (nan if none),
    `speech_seconds` the span from the first to the last active frame, `rms_dbfs` the level of
    the active frames (0 dBFS = full-scale square wave)."""

    f0_hz: float
    speech_seconds: float
    rms_dbfs: float


@dataclass(frozen=True)
class GroupStats:
    """Means over the clips of one engine × emotion group (`wer` is nan without a transcriber)."""

    engine: str
    emotion: str
    clips: int
    f0_hz: float
    seconds_per_word: float
    rms_dbfs: float
    wer: float = math.nan


def _frames(waveform: np.ndarray, sampling_rate: int) -> np.ndarray:
    frame = int(round(_FRAME_SECONDS * sampling_rate))
    hop = int(round(_HOP_SECONDS * sampling_rate))
    if waveform.shape[0] < frame:
        waveform = np.pad(waveform, (0, frame - waveform.shape[0]))
    count = 1 + (waveform.shape[0] - frame) // hop
    return np.lib.stride_tricks.sliding_window_view(waveform, frame)[::hop][:count]


def _activity(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame energy (mean square) and whether each frame is within the activity range."""
    energy = np.mean(frames.astype(np.float64) ** 2, axis=1)
    peak = energy.max(initial=0.0)
    if peak <= 0.0:
        return energy, np.zeros(energy.shape, dtype=bool)
    return energy, energy >= peak * 10.0 ** (-_ACTIVITY_RANGE_DB / 10.0)


def frame_f0(waveform: np.ndarray, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """Per-frame F0 in Hz (40 ms frames, 10 ms hop) from the windowed, normalised autocorrelation;
    unvoiced or silent frames are nan. `waveform` is 1-D float."""
    frames = _frames(np.asarray(waveform, dtype=np.float64), sampling_rate)
    _, active = _activity(frames)
    frames = frames - frames.mean(axis=1, keepdims=True)
    window = np.hanning(frames.shape[1])
    size = 2 * frames.shape[1]
    spectrum = np.fft.rfft(frames * window, n=size)
    autocorr = np.fft.irfft(np.abs(spectrum) ** 2, n=size)[:, : frames.shape[1]]
    # Dividing by the window's own autocorrelation undoes the taper's decay with lag.
    window_corr = np.fft.irfft(np.abs(np.fft.rfft(window, n=size)) ** 2, n=size)[: frames.shape[1]]
    normalised = autocorr / np.maximum(autocorr[:, :1], 1e-12) / np.maximum(window_corr / window_corr[0], 1e-3)
    lo = int(sampling_rate / _MAX_F0_HZ)
    hi = min(int(sampling_rate / _MIN_F0_HZ), frames.shape[1] - 1)
    band = normalised[:, lo : hi + 1]
    best = band.max(axis=1)
    # First lag whose correlation comes within the tolerance of the best one.
    lag = np.argmax(band >= _OCTAVE_TOLERANCE * best[:, None], axis=1)
    # That lag sits on the rising flank of its peak: climb to the peak's top.
    rows = np.arange(len(lag))
    while True:
        step = (lag + 1 < band.shape[1]) & (band[rows, np.minimum(lag + 1, band.shape[1] - 1)] > band[rows, lag])
        if not step.any():
            break
        lag = lag + step
    lag = lag + lo
    # Parabolic interpolation around the chosen lag for sub-sample precision.
    idx = np.clip(lag, 1, normalised.shape[1] - 2)
    left, mid, right = normalised[rows, idx - 1], normalised[rows, idx], normalised[rows, idx + 1]
    denom = left - 2.0 * mid + right
    offset = np.where(np.abs(denom) > 1e-12, 0.5 * (left - right) / np.where(denom == 0, 1, denom), 0.0)
    f0 = sampling_rate / (idx + np.clip(offset, -0.5, 0.5))
    voiced = active & (best >= _VOICING_THRESHOLD)
    return np.where(voiced, f0, np.nan)


def clip_stats(waveform: np.ndarray, sampling_rate: int = SAMPLING_RATE) -> ClipStats:
    """Mean F0 (Hz), speech duration (s) and active-speech RMS level (dBFS) of one waveform."""
    waveform = np.asarray(waveform, dtype=np.float64).reshape(-1)
    frames = _frames(waveform, sampling_rate)
    energy, active = _activity(frames)
    if not active.any():
        return ClipStats(math.nan, 0.0, -math.inf)
    f0 = frame_f0(waveform, sampling_rate)
    start, end = _bounds(active)
    speech_seconds = end - start
    rms_dbfs = _level_dbfs(energy, active)
    return ClipStats(_robust_mean_f0(f0), float(speech_seconds), rms_dbfs)


def _robust_mean_f0(f0: np.ndarray) -> float:
    # Creaky and breathy frames still yield octave (and formant) errors now and then; they sit
    # far from the clip's median, real intonation (even a rising end) stays within 0.75 octave.
    voiced = f0[~np.isnan(f0)]
    if not voiced.size:
        return math.nan
    median = np.median(voiced)
    kept = voiced[np.abs(np.log2(voiced / median)) <= _OUTLIER_OCTAVES]
    return float(kept.mean())


def speech_bounds(waveform: np.ndarray, sampling_rate: int = SAMPLING_RATE) -> tuple[float, float]:
    """(start, end) in seconds of the span from the first to the last active frame; (0, 0) if silent."""
    _, active = _activity(_frames(np.asarray(waveform, dtype=np.float64).reshape(-1), sampling_rate))
    return _bounds(active)


def _bounds(active: np.ndarray) -> tuple[float, float]:
    if not active.any():
        return 0.0, 0.0
    first, last = np.flatnonzero(active)[[0, -1]]
    return first * _HOP_SECONDS, last * _HOP_SECONDS + _FRAME_SECONDS


def speech_rms_dbfs(waveform: np.ndarray, sampling_rate: int = SAMPLING_RATE) -> float:
    """RMS level (dBFS) of the frames within 35 dB of the loudest one, i.e. ignoring pauses."""
    energy, active = _activity(_frames(np.asarray(waveform, dtype=np.float64).reshape(-1), sampling_rate))
    return _level_dbfs(energy, active)


def _level_dbfs(energy: np.ndarray, active: np.ndarray) -> float:
    # Relative to a full-scale square wave (RMS 1); a full-scale sine reads -3 dBFS.
    if not active.any():
        return -math.inf
    return 10.0 * math.log10(max(float(energy[active].mean()), 1e-20))


_NUMBER_WORDS = "zero one two three four five six seven eight nine ten eleven twelve".split()


def normalize_text(text: str) -> str:
    """Lower-case, strip accents and punctuation, spell single-digit-to-twelve numbers, collapse
    whitespace: what WER should compare, so "Hello, World!" and "hello world" match."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    text = text.replace("’", "'").replace("%", " percent").replace("&", " and ")
    # Keep in-word apostrophes and hyphens as joiners ("don't" stays one word, "well-known" → "well known").
    text = re.sub(r"(?<=\w)'(?=\w)", "", text)
    text = re.sub(r"[^\w\s]", " ", text)
    words = [_NUMBER_WORDS[int(w)] if w.isdigit() and int(w) < len(_NUMBER_WORDS) else w for w in text.split()]
    return " ".join(words)


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference word count) after `normalize_text`."""
    ref = normalize_text(reference).split()
    hyp = normalize_text(hypothesis).split()
    previous = list(range(len(hyp) + 1))
    for i, ref_word in enumerate(ref, start=1):
        current = [i] + [0] * len(hyp)
        for j, hyp_word in enumerate(hyp, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_word != hyp_word))
        previous = current
    return previous[-1], len(ref)


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER: total word edits over total reference words (nan for no reference words)."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    errors = words = 0
    for reference, hypothesis in zip(references, hypotheses):
        e, n = word_errors(reference, hypothesis)
        errors, words = errors + e, words + n
    return errors / words if words else math.nan


def measure_corpus(
    manifest_path: str | os.PathLike | Iterable[str | os.PathLike],
    transcribe: Callable[[np.ndarray], str] | None = None,
) -> list[GroupStats]:
    """Mean F0, seconds per word, loudness and (with `transcribe`) WER per engine × emotion.

    `manifest_path` is one JSONL manifest or several. `transcribe` maps a 16 kHz mono float32
    waveform to text (e.g. a Whisper pipeline); WER is computed after `normalize_text`. The engine
    is the part of `speaker` before the first ':'. Groups are sorted by engine, then emotion.
    """
    paths = [manifest_path] if isinstance(manifest_path, (str, os.PathLike)) else list(manifest_path)
    # (engine, emotion) -> per-clip (f0, seconds per word, dBFS) and summed (word errors, words)
    measured: dict[tuple[str, str], list[tuple[float, float, float]]] = defaultdict(list)
    errors: dict[tuple[str, str], np.ndarray] = defaultdict(lambda: np.zeros(2, dtype=np.int64))
    for path in paths:
        for row in read_manifest(path, required=("audio", "text", "emotion", "speaker")):
            key = (row["speaker"].split(":", 1)[0], row["emotion"])
            waveform = load_audio(row["audio"])
            stats = clip_stats(waveform)
            words = max(len(normalize_text(row["text"]).split()), 1)
            measured[key].append((stats.f0_hz, stats.speech_seconds / words, stats.rms_dbfs))
            if transcribe is not None:
                errors[key] += word_errors(row["text"], transcribe(waveform))
    groups = []
    for key in sorted(measured, key=_group_order):
        f0, spw, rms = np.array(measured[key]).T
        edits, words = errors[key] if key in errors else (0, 0)
        groups.append(GroupStats(
            *key, clips=len(f0), f0_hz=float(np.nanmean(f0)) if np.isfinite(f0).any() else math.nan,
            seconds_per_word=float(spw.mean()), rms_dbfs=float(rms.mean()),
            wer=edits / words if words else math.nan,
        ))  # fmt: skip
    return groups


def _group_order(key: tuple[str, str]) -> tuple:
    # Emotions in the conventional order rather than alphabetically; unknown ones go last.
    order = ("neutral", "happy", "angry", "sad", "surprise")
    engine, emotion = key
    return (engine, order.index(emotion) if emotion in order else len(order), emotion)


def stats_table(groups: Sequence[GroupStats]) -> str:
    """Markdown table of `measure_corpus` results (a WER column only when any group has one)."""
    with_wer = any(not math.isnan(g.wer) for g in groups)
    header = ["engine", "emotion", "clips", "mean F0 (Hz)", "s / word", "RMS (dBFS)"] + (["WER"] if with_wer else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    for g in groups:
        cells = [g.engine, g.emotion, str(g.clips), f"{g.f0_hz:.0f}", f"{g.seconds_per_word:.3f}", f"{g.rms_dbfs:.1f}"]
        if with_wer:
            cells.append("–" if math.isnan(g.wer) else f"{g.wer:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
