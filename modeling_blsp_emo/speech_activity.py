"""Is there speech in a clip? A cheap check, numpy only, so that noise, silence and music are not
answered as if someone had spoken.

Per 30-ms frame (10-ms hop) of a 16-kHz clip: a frame *looks voiced* when it is loud (9 dB above the
clip's own noise floor, its 10th-percentile frame energy, and above -70 dBFS), its energy sits in the
voice band (80-4000 Hz), its spectrum is far from flat (noise is flat) and it is periodic with a pitch
of 70-400 Hz. Steady sounds (tones, chords, hum, sweeps, stationary noise) never rise above their own
floor; music holds each note's pitch, while a voice's pitch keeps moving. So a frame counts as speech
when it and the frame 50 ms away both look voiced and the pitch moved between them by a quarter of a
semitone or more. A clip has speech when at least `MIN_SPEECH_SECONDS` of its frames count.

Not a full voice-activity detector: whispered speech (no pitch) is missed, and a pitch-gliding
periodic sound with gaps (a siren, singing) can pass.
"""

from dataclasses import dataclass

import numpy as np

from .speech_lengths import SAMPLING_RATE

FRAME = 480  # 30 ms: two periods of a 70-Hz voice
HOP = 160  # 10 ms
_NFFT = 1024  # ≥ 2 * FRAME, so the autocorrelation from the power spectrum does not wrap around
_VOICE_BAND_HZ = (80.0, 4000.0)
_PITCH_HZ = (70.0, 400.0)
_PAIR_FRAMES = 5  # pitch movement is measured between frames 50 ms apart

FLOOR_PERCENTILE = 10.0
MIN_DB_OVER_FLOOR = 9.0
MIN_DBFS = -70.0
MIN_VOICE_BAND_RATIO = 0.7  # white noise: 0.5; voiced speech: above 0.9
MAX_FLATNESS = 0.15  # spectral flatness in the voice band; white noise about 0.55, voiced speech under 0.06
MIN_PERIODICITY = 0.35  # normalised autocorrelation peak in the pitch range; white noise about 0.15
MIN_PITCH_MOVE_SEMITONES = 0.25
MAX_PITCH_MOVE_SEMITONES = 3.0
MIN_SPEECH_SECONDS = 0.06


@dataclass(frozen=True)
class SpeechActivity:
    """What `measure_speech` found: `has_speech`, the seconds of frames that count as speech, and
    their fraction of the clip's frames."""

    has_speech: bool
    speech_seconds: float
    speech_fraction: float


def _frames(waveform: np.ndarray) -> np.ndarray:
    """(num_frames, FRAME) frames every HOP samples; a clip shorter than a frame is zero-padded."""
    waveform = np.pad(waveform, (0, max(0, FRAME - len(waveform))))
    starts = HOP * np.arange(1 + (len(waveform) - FRAME) // HOP)
    return waveform[starts[:, None] + np.arange(FRAME)]


def _normalised_autocorrelation(frames: np.ndarray) -> np.ndarray:
    """(num_frames, lags 0..max pitch period + 2): per lag k, the correlation of each frame's first
    `FRAME - k` samples with its last `FRAME - k` (1 for a periodic frame at multiples of its period)."""
    lags = np.arange(int(SAMPLING_RATE / _PITCH_HZ[0]) + 3)
    products = np.fft.irfft(np.abs(np.fft.rfft(frames, _NFFT)) ** 2, _NFFT)[:, lags]
    squares = np.cumsum(frames**2, axis=1)
    head = squares[:, FRAME - 1 - lags]
    tail = squares[:, -1:] - np.concatenate([np.zeros((len(frames), 1)), squares[:, lags[1:] - 1]], axis=1)
    return products / (np.sqrt(head * tail) + 1e-20)


def _pitch(autocorrelation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: the periodicity (highest normalised autocorrelation in the pitch range) and the pitch
    in Hz, from the shortest lag whose peak reaches 90% of the highest (avoids octave errors), refined
    by a parabola through the peak."""
    low, high = int(SAMPLING_RATE / _PITCH_HZ[1]), int(SAMPLING_RATE / _PITCH_HZ[0])
    span = autocorrelation[:, low - 1 : high + 2]
    middle = span[:, 1:-1]
    is_peak = (middle > span[:, :-2]) & (middle >= span[:, 2:])
    periodicity = np.where(is_peak, middle, -np.inf).max(axis=1)
    first = np.argmax(is_peak & (middle >= 0.9 * periodicity[:, None]), axis=1)
    rows = np.arange(len(span))
    left, centre, right = span[rows, first], span[rows, first + 1], span[rows, first + 2]
    curvature = left - 2 * centre + right
    shift = np.divide(0.5 * (left - right), curvature, out=np.zeros_like(curvature), where=np.abs(curvature) > 1e-12)
    lag = low + first + np.clip(shift, -0.5, 0.5)
    return np.where(np.isfinite(periodicity), periodicity, 0.0), SAMPLING_RATE / lag


def measure_speech(waveform) -> SpeechActivity:
    """How much of a 16-kHz mono clip (numpy array or torch tensor, any float scale) sounds like speech."""
    waveform = np.asarray(waveform.detach().cpu() if hasattr(waveform, "detach") else waveform, dtype=np.float64)
    frames = _frames(waveform.reshape(-1))
    frames = frames - frames.mean(axis=1, keepdims=True)
    energy_db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    floor_db = np.percentile(energy_db, FLOOR_PERCENTILE)

    window = np.hanning(FRAME)
    power = np.abs(np.fft.rfft(frames * window, _NFFT)) ** 2
    freqs = np.fft.rfftfreq(_NFFT, 1 / SAMPLING_RATE)
    band = power[:, (freqs >= _VOICE_BAND_HZ[0]) & (freqs <= _VOICE_BAND_HZ[1])] + 1e-20
    band_ratio = band.sum(axis=1) / (power[:, freqs >= 40].sum(axis=1) + 1e-20)
    flatness = np.exp(np.mean(np.log(band), axis=1)) / np.mean(band, axis=1)
    periodicity, pitch_hz = _pitch(_normalised_autocorrelation(frames))

    voiced = (
        (energy_db > floor_db + MIN_DB_OVER_FLOOR)
        & (energy_db > MIN_DBFS)
        & (band_ratio > MIN_VOICE_BAND_RATIO)
        & (flatness < MAX_FLATNESS)
        & (periodicity > MIN_PERIODICITY)
    )
    lag = _PAIR_FRAMES
    move = np.abs(12 * np.log2(pitch_hz[lag:] / pitch_hz[:-lag]))
    moved = (move >= MIN_PITCH_MOVE_SEMITONES) & (move <= MAX_PITCH_MOVE_SEMITONES)
    pairs = voiced[lag:] & voiced[:-lag] & moved
    speech = np.zeros(len(frames), dtype=bool)
    speech[lag:] |= pairs
    speech[:-lag] |= pairs
    seconds = float(speech.sum() * HOP / SAMPLING_RATE)
    return SpeechActivity(seconds >= MIN_SPEECH_SECONDS, seconds, float(speech.mean()))


def has_speech(waveform) -> bool:
    """Whether a 16-kHz mono clip contains speech (see `measure_speech`)."""
    return measure_speech(waveform).has_speech


__all__ = ["SpeechActivity", "has_speech", "measure_speech"]
