"""P1: speech encoder + adapter time for one clip, variable-length vs 30-s padded input.

Random weights at realistic sizes: a Whisper-tiny-shaped encoder (d_model 384, 4 layers, 6 heads,
FFN 1536, 80 mels) feeding an adapter into a SmolLM2-135M-shaped LLM (hidden 576). The sizes and
helpers here are shared with `p2_generation_speed.py`.

    python benchmarks/p1_encoder_padding.py --seconds 3 --runs 10

On a machine shared with other jobs, pass `--threads 1`: two OpenMP threads competing with other
processes for two cores give erratic timings (small workloads suffer most).
"""

import argparse
import statistics
import time
from typing import Callable

import numpy as np
import torch
from transformers import WhisperFeatureExtractor

from modeling_blsp_emo import BlspEmoConfig, BlspEmoForConditionalGeneration
from modeling_blsp_emo.speech_lengths import SAMPLING_RATE

WHISPER_TINY = dict(
    d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536, num_mel_bins=80,
    decoder_layers=4, decoder_attention_heads=6, decoder_ffn_dim=1536, max_source_positions=1500,
)  # fmt: skip
SMOLLM2_135M = dict(
    model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0,
    tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
)  # fmt: skip
# The shape of the bundled 1.5B writer and judge (Qwen2.5-1.5B), with SmolLM2's vocabulary so that
# token ids stay interchangeable between the two shapes.
QWEN25_1_5B = dict(
    SMOLLM2_135M, model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
    num_attention_heads=12, num_key_value_heads=2, rope_theta=1000000.0,
)  # fmt: skip
AUDIO_TOKEN_ID = SMOLLM2_135M["vocab_size"] - 1  # stands in for the placeholder token the builder adds


def build_model(
    audio_padding: str = "longest", llm_layers: int = 30, seed: int = 0, vocab_size: int | None = None,
    text_config: dict = SMOLLM2_135M,
) -> BlspEmoForConditionalGeneration:
    """A randomly initialised BLSP-Emo model of the benchmark sizes (`text_config`'s LLM with
    `llm_layers` blocks, optionally another vocabulary size; the audio token stays id 49151), in eval mode."""
    torch.manual_seed(seed)
    config = BlspEmoConfig(
        audio_config=WHISPER_TINY,
        text_config=dict(text_config, num_hidden_layers=llm_layers, vocab_size=vocab_size or text_config["vocab_size"]),
        audio_token_id=AUDIO_TOKEN_ID,
        audio_padding=audio_padding,
    )
    return BlspEmoForConditionalGeneration(config).eval()


def clip_features(seconds: float, audio_padding: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Features `(1, 80, frames)` and frame mask of a noisy-tone clip, extracted for `audio_padding`."""
    time_axis = np.arange(int(seconds * SAMPLING_RATE)) / SAMPLING_RATE
    clip = (0.3 * np.sin(2 * np.pi * 220 * time_axis) + 0.05 * np.random.default_rng(0).standard_normal(len(time_axis)))
    extracted = WhisperFeatureExtractor(feature_size=80)(
        clip.astype(np.float32), sampling_rate=SAMPLING_RATE, padding=audio_padding, return_attention_mask=True,
        return_tensors="pt",
    )  # fmt: skip
    return extracted.input_features, extracted.attention_mask


def median_seconds(functions: dict[str, Callable[[], object]], runs: int, warmup: int) -> dict[str, float]:
    """Median wall time of each function over `runs` calls after `warmup` untimed calls. Calls are
    interleaved round-robin, so that a change in machine load affects all functions alike."""
    for _ in range(warmup):
        for function in functions.values():
            function()
    times = {name: [] for name in functions}
    for _ in range(runs):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="clip length in seconds")
    parser.add_argument("--runs", type=int, default=10, help="timed runs per mode")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per mode")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    # The LLM plays no part here beyond its width (the adapter's output size): one block is enough.
    model = build_model(llm_layers=1)
    modes = ("longest", "max_length")
    inputs = {mode: clip_features(args.seconds, mode) for mode in modes}

    def encode(mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        model.config.audio_padding = mode
        return model.model.get_audio_features(*inputs[mode])

    with torch.inference_mode():
        embeddings = {mode: encode(mode)[0].shape[1] for mode in modes}
        seconds = median_seconds({mode: lambda mode=mode: encode(mode) for mode in modes}, args.runs, args.warmup)

    print(f"encoder + adapter, {args.seconds:g} s clip, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'audio_padding':<14}{'mel frames':>12}{'embeddings':>12}{'median ms':>12}")
    for mode in modes:
        print(f"{mode:<14}{inputs[mode][0].shape[-1]:>12}{embeddings[mode]:>12}{seconds[mode] * 1000:>12.1f}")
    print(f"speed-up of 'longest' over 'max_length': {seconds['max_length'] / seconds['longest']:.1f}x")

if __name__ == "__main__":
    main()
