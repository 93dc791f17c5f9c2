"""P6: speech emotion recognition through `BlspEmoForAudioClassification` (encoder + adapter + emotion
head) vs the full model's generative SER answer, on the same clips.

One checkpoint of the benchmark sizes (`p1_encoder_padding.py`: Whisper-tiny-shaped encoder, an LLM
shaped like SmolLM2-135M or, with `--llm qwen2.5-1.5b`, like the bundled 1.5B writer; random weights)
is saved once; each path then runs in its own process, which loads the checkpoint (timed, peak RSS
recorded) and handles one batch of `--clips` clips of 2–6 s after a small warm-up. The generative
path is prompted like `evaluate-ser` (SER instruction + speech, about 60 text tokens around the
speech) and writes exactly `--answer-tokens` tokens, a short answer ("The emotion is sad."): random
weights never stop by themselves.

    python benchmarks/p6_ser_fast_path.py --clips 16 --threads 2 [--llm qwen2.5-1.5b]
"""

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import WhisperFeatureExtractor

from modeling_blsp_emo import BlspEmoForAudioClassification, BlspEmoForConditionalGeneration
from modeling_blsp_emo.speech_lengths import SAMPLING_RATE, mel_frames, num_speech_embeddings

from p1_encoder_padding import AUDIO_TOKEN_ID, QWEN25_1_5B, SMOLLM2_135M, build_model

LLM_SHAPES = {"smollm2-135m": SMOLLM2_135M, "qwen2.5-1.5b": QWEN25_1_5B}

PROMPT_TEXT_TOKENS = 60  # system prompt, SER instruction and chat-template tokens around the speech


def peak_rss_mb() -> float:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def make_clips(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    clips = []
    for index in range(count):
        time_axis = np.arange(int((2 + 4 * index / max(count - 1, 1)) * SAMPLING_RATE)) / SAMPLING_RATE
        tone = 0.3 * np.sin(2 * np.pi * (150 + 10 * index) * time_axis)
        clips.append((tone + 0.05 * rng.standard_normal(len(time_axis))).astype(np.float32))
    return clips


def features(clips: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """Per-clip log-mel features zero-padded to the longest, with frame masks (as the processor makes them)."""
    extractor = WhisperFeatureExtractor(feature_size=80)
    rows = [extractor(clip, sampling_rate=SAMPLING_RATE, padding="longest", return_tensors="pt").input_features[0] for clip in clips]
    width = max(row.shape[-1] for row in rows)
    frames = torch.tensor([mel_frames(len(clip), "longest") for clip in clips])
    return {
        "input_features": torch.stack([torch.nn.functional.pad(row, (0, width - row.shape[-1])) for row in rows]),
        "feature_attention_mask": (torch.arange(width)[None] < frames[:, None]).long(),
    }


def generative_inputs(clips: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """Left-padded prompts: text tokens, the clip's speech placeholders, more text tokens."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    for clip in clips:
        text = torch.randint(100, AUDIO_TOKEN_ID, (PROMPT_TEXT_TOKENS,), generator=generator).tolist()
        half = PROMPT_TEXT_TOKENS // 2
        rows.append(text[:half] + [AUDIO_TOKEN_ID] * num_speech_embeddings(len(clip)) + text[half:])
    width = max(len(row) for row in rows)
    input_ids = torch.tensor([[0] * (width - len(row)) + row for row in rows])
    attention_mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
    return {"input_ids": input_ids, "attention_mask": attention_mask, **features(clips)}


def worker(path: str, kind: str, num_clips: int, answer_tokens: int) -> dict:
    """Load the checkpoint for one path and time one batch; returns the measurements."""
    clips = make_clips(num_clips)
    before = peak_rss_mb()
    start = time.perf_counter()
    model_class = BlspEmoForAudioClassification if kind == "classifier" else BlspEmoForConditionalGeneration
    model = model_class.from_pretrained(path).eval()
    load_seconds = time.perf_counter() - start
    load_peak = peak_rss_mb() - before

    def run(batch: list[np.ndarray]) -> None:
        with torch.inference_mode():
            if kind == "classifier":
                model(**features(batch)).logits.argmax(-1)
            else:
                model.generate(
                    **generative_inputs(batch), max_new_tokens=answer_tokens, min_new_tokens=answer_tokens, do_sample=False
                )

    run(clips[:2])  # warm-up
    start = time.perf_counter()
    run(clips)
    seconds = time.perf_counter() - start
    return {
        "path": kind,
        "load_seconds": load_seconds,
        "load_peak_rss_mb": load_peak,
        "batch_seconds": seconds,
        "clips_per_second": num_clips / seconds,
        "peak_rss_mb": peak_rss_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=16, help="clips in the timed batch")
    parser.add_argument("--answer-tokens", type=int, default=8, help="tokens of the generative SER answer")
    parser.add_argument("--llm", choices=LLM_SHAPES, default="smollm2-135m", help="the LLM's shape (random weights)")
    parser.add_argument("--llm-layers", type=int, default=None, help="LLM blocks (default: the shape's own)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--worker", nargs=2, metavar=("CHECKPOINT", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.clips, args.answer_tokens)))
        return

    with tempfile.TemporaryDirectory() as directory:
        shape = LLM_SHAPES[args.llm]
        model = build_model(llm_layers=args.llm_layers or shape["num_hidden_layers"], text_config=shape)
        llm_mb = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "language_model" in n or "lm_head" in n) / 2**20
        model.save_pretrained(directory)
        del model
        results = {}
        for kind in ("classifier", "generative"):
            command = [sys.executable, __file__, "--worker", directory, kind, "--clips", str(args.clips),
                       "--answer-tokens", str(args.answer_tokens)] + (["--threads", str(args.threads)] if args.threads else [])  # fmt: skip
            output = subprocess.run(command, capture_output=True, text=True, check=True)
            results[kind] = json.loads(output.stdout.strip().splitlines()[-1])
    print(f"{args.clips} clips of 2-6 s in one batch; LLM {args.llm} weights {llm_mb:.0f} MB (fp32), answer {args.answer_tokens} tokens")
    print(f"{'path':<12}{'clips/s':>10}{'batch s':>10}{'load s':>9}{'load peak MB':>14}{'peak RSS MB':>13}")
    for kind, result in results.items():
        print(
            f"{kind:<12}{result['clips_per_second']:>10.2f}{result['batch_seconds']:>10.2f}{result['load_seconds']:>9.2f}"
            f"{result['load_peak_rss_mb']:>14.0f}{result['peak_rss_mb']:>13.0f}"
        )
    ratio = results["classifier"]["clips_per_second"] / results["generative"]["clips_per_second"]
    print(f"fast path / generative: {ratio:.1f}x the clips per second")


if __name__ == "__main__":
    main()
