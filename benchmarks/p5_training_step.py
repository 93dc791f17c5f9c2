"""P5: time and peak memory of one stage-1 and one stage-2 training step, this project vs the original
release's algorithm on the same model, batch and machine, in one command.

The config is the one the release was measured on (DESIGN.md, "Speed of the original release"): a
Whisper-tiny-sized encoder (d 384, 4 layers), a Qwen-v1-shaped LLM (hidden 576, 12 layers, MLP 1536 per
projection, i.e. Qwen's `intermediate_size` 3072, vocabulary 151,936), 237M parameters, random weights,
fp32; a batch of 8 clips of 2-10 s with ~40 target tokens each.

"release" is the release's algorithm implemented on this model, after its `modeling_blsp2.py`: every clip
padded to 30 s (encoder over 3000 frames), full-vocabulary logits at every position for teacher and
student, the response positions selected from them for the KL (stage 1) or from a shifted copy for the
cross-entropy (stage 2), audio LoRA over the speech segment, and eager attention in the encoder (the
release's transformers 4.32 Whisper has no SDPA).
"project" is this package's trainers (`SemanticAlignmentTrainer`, `EmotionAlignmentTrainer`) as
configured; "+gc" adds gradient checkpointing of the LLM (and encoder) blocks. A step is forward,
backward and the AdamW update; each configuration runs in its own process, so peak RSS (`ru_maxrss`,
model included) does not mix between them. Times are medians of `--runs` steps after `--warmup`.

    python benchmarks/p5_training_step.py                 # CPU, 2 threads, all configurations
    python benchmarks/p5_training_step.py --stages 1 --variants release project

On a GPU (when `torch.cuda.is_available()`) `--gpu` instead reports tokens/s and peak memory of this
project's steps for a 7B-sized LLM in bf16 with gradient checkpointing (nothing else depends on it).
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from torch.nn import functional as F
from transformers import TrainingArguments, WhisperFeatureExtractor

from modeling_blsp_emo import BlspEmoConfig, BlspEmoForConditionalGeneration, num_speech_embeddings
from modeling_blsp_emo.speech_lengths import SAMPLING_RATE
from processing.collators import IGNORE_INDEX
from trainers.training.base import set_trainable
from trainers.training.emotion_alignment import EmotionAlignmentTrainer, LoraSettings, prepare_for_emotion_alignment
from trainers.training.semantic_alignment import SemanticAlignmentTrainer

from p1_encoder_padding import WHISPER_TINY

QWEN_V1_SHAPED = dict(
    model_type="qwen2", hidden_size=576, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=9,
    num_key_value_heads=9, vocab_size=151936, max_position_embeddings=8192, tie_word_embeddings=False,
)  # fmt: skip
# A 7B-sized LLM (Qwen2.5-7B's shape) and a Whisper-large-sized encoder, for the optional GPU run.
QWEN_7B_SHAPED = dict(
    model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
    num_key_value_heads=4, vocab_size=152064, max_position_embeddings=8192, tie_word_embeddings=False,
)  # fmt: skip
WHISPER_LARGE = dict(
    d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120, num_mel_bins=80,
    decoder_layers=1, decoder_attention_heads=20, decoder_ffn_dim=5120, max_source_positions=1500,
)  # fmt: skip
PROMPT_TOKENS, SUFFIX_TOKENS = 25, 5  # chat template + instruction before the speech / after it
TRANSCRIPT_TOKENS_PER_SECOND = 2.5
VARIANTS = ("release", "project", "project+gc")


def build_model(text_config: dict, audio_config: dict, audio_padding: str) -> BlspEmoForConditionalGeneration:
    """A randomly initialised BLSP-Emo model; the last vocabulary entry stands for the audio token."""
    torch.manual_seed(0)
    config = BlspEmoConfig(
        audio_config=audio_config, text_config=text_config, audio_token_id=text_config["vocab_size"] - 1,
        audio_padding=audio_padding,
    )  # fmt: skip
    return BlspEmoForConditionalGeneration(config)


def right_pad(rows: list[list[int]], responses: list[list[int]]) -> dict[str, torch.Tensor]:
    """`input_ids`, `attention_mask`, `labels` (response only) of prompt + response rows, as the collator makes them."""
    width = max(len(p) + len(r) for p, r in zip(rows, responses))
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    attention_mask = torch.zeros_like(input_ids)
    for row, (prompt, response) in enumerate(zip(rows, responses)):
        input_ids[row, : len(prompt) + len(response)] = torch.tensor(prompt + response)
        labels[row, len(prompt) : len(prompt) + len(response)] = torch.tensor(response)
        attention_mask[row, : len(prompt) + len(response)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def make_batch(
    config: BlspEmoConfig, audio_padding: str, batch_size: int, target_tokens: int, min_seconds: float, max_seconds: float
) -> dict[str, torch.Tensor]:
    """A stage-1/2 batch: student (speech) and teacher (transcript) sequences sharing the responses,
    features extracted per clip (30-s padded for `audio_padding="max_length"`) and emotion labels."""
    generator = torch.Generator().manual_seed(0)
    vocab = config.text_config.vocab_size - 1

    def tokens(count: int) -> list[int]:
        return torch.randint(10, vocab, (count,), generator=generator).tolist()

    extractor = WhisperFeatureExtractor(feature_size=config.audio_config.num_mel_bins)
    prompt, suffix = tokens(PROMPT_TOKENS), tokens(SUFFIX_TOKENS)
    features, students, teachers, responses = [], [], [], []
    for index, seconds in enumerate(np.linspace(min_seconds, max_seconds, batch_size)):
        samples = int(seconds * SAMPLING_RATE)
        clip = np.random.default_rng(index).standard_normal(samples).astype(np.float32) * 0.1
        extracted = extractor(clip, sampling_rate=SAMPLING_RATE, padding=audio_padding, return_attention_mask=True, return_tensors="np")
        frames = int(extracted.attention_mask.sum()) if audio_padding == "max_length" else extracted.input_features.shape[-1]
        features.append((extracted.input_features[0], frames))
        speech = [config.audio_token_id] * num_speech_embeddings(samples, audio_padding, config.kernel_sizes)
        responses.append(tokens(target_tokens - 4 + index % 9))
        students.append(prompt + speech + suffix)
        teachers.append(prompt + tokens(round(TRANSCRIPT_TOKENS_PER_SECOND * seconds)) + suffix)
    width = max(f.shape[-1] for f, _ in features)
    input_features = torch.zeros(batch_size, config.audio_config.num_mel_bins, width)
    feature_attention_mask = torch.zeros(batch_size, width, dtype=torch.long)
    for row, (row_features, frames) in enumerate(features):
        input_features[row, :, : row_features.shape[-1]] = torch.from_numpy(row_features)
        feature_attention_mask[row, :frames] = 1
    batch = right_pad(students, responses)
    batch.update({f"teacher_{key}": value for key, value in right_pad(teachers, responses).items()})
    batch.update(input_features=input_features, feature_attention_mask=feature_attention_mask)
    batch["emotion_labels"] = torch.arange(batch_size) % len(config.id2label)
    return batch


def release_stage1_loss(model, batch: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
    """The release's `response_kl`: the LM head makes full-vocabulary logits at every position of teacher
    and student; the response positions are selected from them and the KL (softmax over the vocabulary at
    those positions) is averaged over positions ("batchmean")."""
    with torch.no_grad():
        teacher = model(input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"], use_cache=False)
    student = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], input_features=batch["input_features"],
        feature_attention_mask=batch["feature_attention_mask"], use_cache=False,
    )  # fmt: skip
    # The release compares the distributions at the response tokens themselves (its off-by-one).
    student_log_probs = F.log_softmax(student.logits[batch["labels"] != IGNORE_INDEX] / temperature, -1)
    teacher_probs = F.softmax(teacher.logits[batch["teacher_labels"] != IGNORE_INDEX] / temperature, -1)
    return F.kl_div(student_log_probs, teacher_probs, reduction="batchmean")


def release_stage2_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The release's `response_ce` + `input_er`: full logits everywhere, shifted by a contiguous copy, the
    labelled positions selected and their cross-entropy averaged, plus the emotion head's cross-entropy."""
    outputs = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], input_features=batch["input_features"],
        feature_attention_mask=batch["feature_attention_mask"], emotion_labels=batch["emotion_labels"], use_cache=False,
    )  # fmt: skip
    shift_logits = outputs.logits[:, :-1].contiguous()
    shift_labels = batch["labels"][:, 1:].contiguous()
    labelled = shift_labels != IGNORE_INDEX
    return F.cross_entropy(shift_logits[labelled], shift_labels[labelled]) + outputs.emotion_loss


def project_trainer(model, stage: int, gradient_checkpointing: bool, output_dir: str, **trainer_kwargs):
    """This package's trainer for `stage`, with the optimizer it would train with."""
    args = TrainingArguments(
        output_dir=output_dir, use_cpu=not torch.cuda.is_available(), report_to=[], learning_rate=1e-4,
        activation_checkpointing=gradient_checkpointing, remove_unused_columns=False, bf16=model.dtype == torch.bfloat16,
    )  # fmt: skip
    if stage == 1:
        trainer = SemanticAlignmentTrainer(model=model, args=args, **trainer_kwargs)
    else:
        model = prepare_for_emotion_alignment(model, LoraSettings(scope="audio"), train_encoder=True)
        trainer = EmotionAlignmentTrainer(model=model, args=args, **trainer_kwargs)
    if gradient_checkpointing:  # `Trainer.train` would do this itself
        trainer.model.activation_checkpointing_enable(activation_checkpointing_kwargs=args.activation_checkpointing_kwargs)
    trainer.create_optimizer()
    return trainer


def step_function(stage: int, variant: str, text_config: dict, audio_config: dict, dtype: torch.dtype, batch_kwargs: dict):
    """Build the model and batch of one configuration; return `(step, batch)` where `step()` trains once."""
    audio_padding = "max_length" if variant == "release" else "longest"
    model = build_model(text_config, audio_config, audio_padding)
    if variant == "release":
        # The release runs transformers 4.32's Whisper encoder, which only has eager attention (SDPA came in
        # 4.37): its attention probabilities over 1500 positions are materialised and kept for the backward.
        model.model.audio_encoder.set_attn_implementation("eager")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device, dtype).train()
    batch = make_batch(model.config, audio_padding, **batch_kwargs)
    batch = {key: value.to(device) for key, value in batch.items()}
    if not variant.startswith("release"):
        trainer = project_trainer(model, stage, variant.endswith("+gc"), tempfile.mkdtemp())
        inputs = dict(batch) if stage == 1 else {k: v for k, v in batch.items() if not k.startswith("teacher_")}

        def step() -> None:
            trainer.model.train()
            trainer.accelerator.backward(trainer.compute_loss(trainer.model, dict(inputs)))
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)

        return step, batch
    if stage == 1:
        set_trainable(model, ("model.adapter.",))
    else:
        prepare_for_emotion_alignment(model, LoraSettings(scope="audio"), train_encoder=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        loss = release_stage1_loss(model, batch, model.config.kd_temperature) if stage == 1 else release_stage2_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, batch


def run_configuration(stage: int, variant: str, runs: int, warmup: int, batch_kwargs: dict) -> dict:
    """Time one configuration in this process (meant to be a fresh one)."""
    step, batch = step_function(stage, variant, QWEN_V1_SHAPED, WHISPER_TINY, torch.float32, batch_kwargs)
    for _ in range(warmup):
        step()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        cpu_start = time.process_time()
        step()
        times.append((time.perf_counter() - start, time.process_time() - cpu_start))
    wall = statistics.median(t for t, _ in times)
    return {
        "stage": stage, "variant": variant, "seconds": wall, "cpu_per_wall": statistics.median(c / t for t, c in times),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
        "student_tokens": int(batch["attention_mask"].sum()), "student_width": batch["input_ids"].shape[1],
    }  # fmt: skip


def run_gpu(runs: int, warmup: int, batch_kwargs: dict) -> None:
    """Tokens/s and peak memory of this project's steps for a 7B-sized LLM, bf16, gradient checkpointing."""
    print(f"GPU: {torch.cuda.get_device_name()}, 7B-sized LLM (Qwen2.5-7B shape), Whisper-large-sized encoder, "
          "bf16, gradient checkpointing")
    for stage in (1, 2):
        torch.cuda.reset_peak_memory_stats()
        step, batch = step_function(stage, "project+gc", QWEN_7B_SHAPED, WHISPER_LARGE, torch.bfloat16, batch_kwargs)
        for _ in range(warmup):
            step()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(runs):
            step()
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / runs
        tokens = int(batch["attention_mask"].sum()) + (int(batch["teacher_attention_mask"].sum()) if stage == 1 else 0)
        print(f"stage {stage}: {seconds:.3f} s/step, {tokens / seconds:,.0f} LLM tokens/s, "
              f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
        del step, batch
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the release was measured with 2)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--target-tokens", type=int, default=40)
    parser.add_argument("--gpu", action="store_true", help="the 7B-sized bf16 run on a GPU instead")
    parser.add_argument("--one", nargs=2, metavar=("STAGE", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batch_kwargs = dict(batch_size=args.batch_size, target_tokens=args.target_tokens, min_seconds=2.0, max_seconds=10.0)
    if args.gpu:
        if not torch.cuda.is_available():
            raise SystemExit("--gpu: no CUDA device is available")
        run_gpu(args.runs, args.warmup, batch_kwargs)
        return
    if args.one:
        result = run_configuration(int(args.one[0]), args.one[1], args.runs, args.warmup, batch_kwargs)
        print(json.dumps(result))
        return
    results = {}
    for stage in args.stages:
        for variant in args.variants:
            command = [sys.executable, __file__, "--one", str(stage), variant, "--runs", str(args.runs), "--warmup",
                       str(args.warmup), "--threads", str(args.threads), "--batch-size", str(args.batch_size),
                       "--target-tokens", str(args.target_tokens)]  # fmt: skip
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results[stage, variant] = json.loads(output.strip().splitlines()[-1])
    print(f"training step, batch {args.batch_size} of 2-10 s clips, ~{args.target_tokens} target tokens, fp32, "
          f"{args.threads} threads, torch {torch.__version__}, median of {args.runs} after {args.warmup} warm-up")
    print(f"{'stage':<7}{'variant':<22}{'s/step':>8}{'CPU/wall':>10}{'peak RSS GB':>13}{'speed-up':>10}{'RSS ratio':>11}")
    for (stage, variant), result in results.items():
        release = results.get((stage, "release"))
        speed = f"{release['seconds'] / result['seconds']:.2f}x" if release else "-"
        memory = f"{result['peak_rss_gb'] / release['peak_rss_gb']:.2f}" if release else "-"
        print(f"{stage:<7}{variant:<22}{result['seconds']:>8.2f}{result['cpu_per_wall']:>10.2f}"
              f"{result['peak_rss_gb']:>13.2f}{speed:>10}{memory:>11}")


if __name__ == "__main__":
    main()
