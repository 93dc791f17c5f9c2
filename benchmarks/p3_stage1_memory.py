"""P3: peak memory of one stage-1 step, this project's loss vs full-vocabulary logits and log-softmax at
every position (the original release's way), same batch.

This project's variants are `SemanticAlignmentTrainer.compute_loss` as configured: "sliced" makes the
logits at the KL's positions all at once (`logits_chunk_size=None`), "chunked" in the default chunks
(`"auto"`: as many positions as fit in 256 MB of logits), "chunked+gc" adds gradient checkpointing of the
frozen LLM blocks (and with it, under `"auto"`, chunks of 128 positions).

Each variant runs in its own process and reports its peak resident memory (`ru_maxrss`), so they do
not share an allocator; "step growth" is the peak minus the memory held before the step (model and
batch). Random weights: Whisper-tiny-shaped encoder, SmolLM2-135M-shaped LLM (49,152-token vocabulary,
or `--vocab-size 151936` for Qwen's, as in the release).

    python benchmarks/p3_stage1_memory.py --batch-size 8 --target-tokens 48
    python benchmarks/p3_stage1_memory.py --vocab-size 151936 --seconds 30
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile

import torch

VARIANTS = {
    "sliced": "sliced, all KL positions at once",
    "chunked": "chunked KL (default chunks)",
    "chunked+gc": "chunked KL + checkpointing (128)",
    "full": "full vocab, every position",
}


def one_step(variant: str, batch_size: int, target_tokens: int, seconds: float, vocab_size: int) -> dict:
    from transformers import TrainingArguments

    from modeling_blsp_emo import num_speech_embeddings
    from trainers.training.losses import predicting_positions
    from trainers.training.semantic_alignment import SemanticAlignmentTrainer

    from p1_encoder_padding import AUDIO_TOKEN_ID, build_model, clip_features

    torch.manual_seed(0)
    model = build_model(vocab_size=vocab_size)
    model.train()
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith("model.adapter."))
    features, frame_mask = clip_features(seconds, "longest")
    placeholders = torch.full((num_speech_embeddings(int(seconds * 16000)),), AUDIO_TOKEN_ID)
    prompt = torch.cat([torch.randint(10, 1000, (30,)), placeholders, torch.randint(10, 1000, (10,))])
    student = {
        "input_ids": prompt.repeat(batch_size, 1),
        "input_features": features.repeat(batch_size, 1, 1),
        "feature_attention_mask": frame_mask.repeat(batch_size, 1),
    }
    prompt_length = student["input_ids"].shape[1]
    targets = torch.randint(10, 1000, (batch_size, target_tokens))
    student["input_ids"] = torch.cat([student["input_ids"], targets], 1)
    student["attention_mask"] = torch.ones_like(student["input_ids"])
    labels = torch.full_like(student["input_ids"], -100)
    labels[:, prompt_length:] = targets
    teacher_ids = torch.cat([torch.randint(10, 1000, (batch_size, 40)), targets], 1)
    teacher_labels = torch.full_like(teacher_ids, -100)
    teacher_labels[:, 40:] = targets
    if variant != "full":
        args = TrainingArguments(output_dir=tempfile.mkdtemp(), report_to=[], use_cpu=True, remove_unused_columns=False)
        chunk_size = None if variant == "sliced" else "auto"
        trainer = SemanticAlignmentTrainer(model=model, args=args, logits_chunk_size=chunk_size)
        if variant.endswith("+gc"):  # as `Trainer.train` does for `activation_checkpointing=True`
            model.activation_checkpointing_enable()
        batch = {**student, "labels": labels, "teacher_input_ids": teacher_ids, "teacher_labels": teacher_labels}
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if variant != "full":
        trainer.compute_loss(model, batch).backward()
    else:
        # The release: full logits everywhere, softmax and KL over the whole (batch, seq, vocab)
        # tensors, masked afterwards.
        student_positions, teacher_positions = predicting_positions(labels), predicting_positions(teacher_labels)
        with torch.no_grad():
            teacher_log_probs = torch.log_softmax(model(input_ids=teacher_ids).logits / 2.0, -1)
        student_log_probs = torch.log_softmax(model(**student).logits / 2.0, -1)
        kl = torch.nn.functional.kl_div(
            student_log_probs[student_positions], teacher_log_probs[teacher_positions], log_target=True, reduction="none"
        )
        (kl.sum(-1).mean()).backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"variant": variant, "peak_mib": peak / 1024, "step_mib": (peak - baseline) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--target-tokens", type=int, default=48)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--vocab-size", type=int, default=49152, help="151936 = Qwen's, as in the release")
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(one_step(args.variant, args.batch_size, args.target_tokens, args.seconds, args.vocab_size)))
        return
    results = {}
    for variant in VARIANTS:
        command = [sys.executable, __file__, "--variant", variant, "--batch-size", str(args.batch_size),
                   "--target-tokens", str(args.target_tokens), "--seconds", str(args.seconds),
                   "--vocab-size", str(args.vocab_size)]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results[variant] = json.loads(output.strip().splitlines()[-1])
    print(f"stage-1 step, batch {args.batch_size}, {args.target_tokens} target tokens, {args.seconds:g} s clips, "
          f"vocabulary {args.vocab_size}, torch {torch.__version__}")
    print(f"{'logits':<36}{'peak RSS MiB':>14}{'step growth MiB':>17}{'/ full':>8}")
    full = results["full"]["step_mib"]
    for variant, label in VARIANTS.items():
        result = results[variant]
        print(f"{label:<36}{result['peak_mib']:>14.0f}{result['step_mib']:>17.0f}{result['step_mib'] / full:>8.2f}")
    for variant in ("sliced", "chunked", "chunked+gc"):
        ratio = results[variant]["step_mib"] / full
        peak_ratio = results[variant]["peak_mib"] / results["full"]["peak_mib"]
        print(f"{VARIANTS[variant]} / full step memory: {ratio:.2f} (peak RSS ratio {peak_ratio:.2f})")


if __name__ == "__main__":
    main()
