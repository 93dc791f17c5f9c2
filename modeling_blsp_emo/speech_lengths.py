"""How many speech embeddings a clip becomes: the one formula shared by the processor and the model.

Audio (16 kHz) → log-mel frames (100 Hz) → Whisper's stride-2 convolution (50 Hz) → the adapter's
stride-2 convolutions (6.25 Hz with the default three). Clips longer than 30 s are split into equal
windows of at most 30 s, each encoded on its own; their embeddings are concatenated.
"""

import math
from typing import Sequence, TypeVar

SAMPLING_RATE = 16000  # the rate Whisper's features and every clip in this package use
HOP_LENGTH = 160  # samples per mel frame
WINDOW_SAMPLES = 30 * SAMPLING_RATE  # Whisper's receptive field: 30 s
WINDOW_FRAMES = WINDOW_SAMPLES // HOP_LENGTH
MIN_SAMPLES = 400  # one 25-ms STFT window; Whisper's feature extractor cannot frame less

Length = TypeVar("Length")  # an int or an integer tensor


def parse_kernel_sizes(conv_kernel_sizes: str) -> tuple[int, ...]:
    """`"5,5,5"` → `(5, 5, 5)`: the adapter's kernel sizes as stored in config and processor."""
    return tuple(int(size) for size in str(conv_kernel_sizes).split(",") if size.strip())


def conv_output_length(length: Length, kernel_size: int, stride: int = 2) -> Length:
    """Output length of a `Conv1d` with `padding=kernel_size // 2`; works on ints and tensors."""
    return (length + 2 * (kernel_size // 2) - kernel_size) // stride + 1


def embeddings_from_frames(frames: Length, conv_kernel_sizes: Sequence[int]) -> Length:
    """Number of adapter outputs for `frames` real mel frames (Whisper conv2, then each adapter conv)."""
    length = conv_output_length(frames, 3)
    for kernel_size in conv_kernel_sizes:
        length = conv_output_length(length, kernel_size)
    return length


def split_into_windows(num_samples: int) -> list[int]:
    """Sample counts of the equal windows (each at most 30 s) that a clip is encoded in."""
    num_windows = max(1, math.ceil(num_samples / WINDOW_SAMPLES))
    base, extra = divmod(num_samples, num_windows)
    return [base + 1] * extra + [base] * (num_windows - extra)


def mel_frames(num_samples: int, audio_padding: str) -> int:
    """Real mel frames of one window: `padding="longest"` extraction yields N // 160 frames, while the
    attention mask of 30-s padded extraction counts ceil(N / 160)."""
    if num_samples < MIN_SAMPLES:
        raise ValueError(f"audio of {num_samples} samples is too short: at least {MIN_SAMPLES} (25 ms at 16 kHz)")
    if num_samples > WINDOW_SAMPLES:
        raise ValueError(f"a window holds at most {WINDOW_SAMPLES} samples (30 s), got {num_samples}")
    if audio_padding == "longest":
        return num_samples // HOP_LENGTH
    if audio_padding == "max_length":
        return math.ceil(num_samples / HOP_LENGTH)
    raise ValueError(f"audio_padding={audio_padding!r}: expected 'longest' or 'max_length'")


def num_speech_embeddings(
    num_samples: int,
    audio_padding: str = "longest",
    conv_kernel_sizes: Sequence[int] = (5, 5, 5),
    emotion_token: bool = False,
) -> int:
    """Number of speech embeddings (= audio placeholder tokens) for a 16-kHz clip of `num_samples`.

    A 30-s clip gives 188 embeddings with the default adapter, a 3-s clip 19; with `emotion_token`
    each window gives one more.
    """
    return sum(
        embeddings_from_frames(mel_frames(window, audio_padding), conv_kernel_sizes) + int(emotion_token)
        for window in split_into_windows(num_samples)
    )
