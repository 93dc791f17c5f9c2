"""Training-time audio augmentation that keeps emotional cues.

Pitch, tempo and loudness contours carry the emotion, so no pitch shift or time stretch: only
noise, a level change, mild room reverberation and gentle band limiting. Never used for evaluation.
`RandomLevel` goes further for level: it sets each clip's peak to a random level, so how loud a
recording is (microphone gain, distance) cannot stand in for how the voice sounds.
"""

import random
from dataclasses import dataclass

import numpy as np

from modeling_blsp_emo.speech_lengths import SAMPLING_RATE


@dataclass
class AugmentationConfig:
    """Probabilities and ranges of each transform (probability 0 disables one)."""

    noise_probability: float = 0.5
    min_snr_db: float = 15.0
    max_snr_db: float = 40.0
    gain_probability: float = 0.5
    max_gain_db: float = 6.0
    reverb_probability: float = 0.2
    filter_probability: float = 0.2
    seed: int | None = None


def mild_reverb(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """A small room: convolve with exponentially decaying noise (RT60 0.1-0.4 s), mixed in at
    10-30 %. (audiomentations' room simulator needs pyroomacoustics, a heavy compiled extra.)"""
    from scipy.signal import fftconvolve

    rt60 = np.random.uniform(0.1, 0.4)
    time = np.arange(int(rt60 * sample_rate)) / sample_rate
    response = np.random.standard_normal(time.size) * np.exp(-6.9 * time / rt60)
    response /= np.sqrt(np.sum(response**2))
    wet = fftconvolve(samples, response)[: samples.size]
    mix = np.random.uniform(0.1, 0.3)
    return ((1 - mix) * samples + mix * wet).astype(np.float32)


class EmotionSafeAugmentation:
    """Callable `(samples at 16 kHz) -> augmented samples` built on audiomentations."""

    def __init__(self, config: AugmentationConfig | None = None):
        import audiomentations as A

        self.config = config = config or AugmentationConfig()
        self.pipeline = A.Compose(
            [
                A.AddGaussianSNR(min_snr_db=config.min_snr_db, max_snr_db=config.max_snr_db, p=config.noise_probability),
                A.Gain(min_gain_db=-config.max_gain_db, max_gain_db=config.max_gain_db, p=config.gain_probability),
                A.Lambda(transform=mild_reverb, p=config.reverb_probability),
                A.OneOf(
                    [
                        A.LowPassFilter(min_cutoff_freq=3500, max_cutoff_freq=7500),
                        A.HighPassFilter(min_cutoff_freq=50, max_cutoff_freq=300),
                    ],
                    p=config.filter_probability,
                ),
            ]
        )
        self.random = np.random.default_rng(config.seed)

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        if self.config.seed is not None:
            # audiomentations draws from the global numpy and `random` generators.
            seed = int(self.random.integers(2**31))
            np.random.seed(seed)
            random.seed(seed)
        augmented = self.pipeline(samples=samples.astype(np.float32), sample_rate=SAMPLING_RATE)
        # Noise and gain may push peaks past full scale; clip rather than rescale the level.
        return np.clip(augmented, -1.0, 1.0).astype(np.float32)


class RandomLevel:
    """Callable `(samples) -> samples` scaled so that the peak sits at a level drawn uniformly from
    `[min_dbfs, max_dbfs]`, whatever the clip's own level: afterwards the absolute level carries no
    information about the clip (e.g. its emotion), while the contour within the clip is kept."""

    def __init__(self, min_dbfs: float = -35.0, max_dbfs: float = -1.0, seed: int | None = None):
        if not min_dbfs <= max_dbfs <= 0:
            raise ValueError(f"expected min_dbfs <= max_dbfs <= 0 dBFS, got {min_dbfs}, {max_dbfs}")
        self.min_dbfs, self.max_dbfs = min_dbfs, max_dbfs
        self.random = np.random.default_rng(seed)

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        level = self.random.uniform(self.min_dbfs, self.max_dbfs)
        return peak_normalize(samples, level)


def peak_normalize(samples: np.ndarray, dbfs: float = -1.0) -> np.ndarray:
    """`samples` scaled so that the largest absolute sample is `dbfs` dB below full scale (silence
    stays silence)."""
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    if peak == 0.0:
        return samples.astype(np.float32)
    return (samples * (10 ** (dbfs / 20) / peak)).astype(np.float32)
