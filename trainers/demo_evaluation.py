"""The demo's evaluation: stage 2 vs stage-1-only vs the Whisper→LLM cascade on held-out
sentences and voices, and a fresh-process reload of the final checkpoint through the pipeline."""

import json
import os
import random
import subprocess
import sys

from modeling_blsp_emo.prompts import EMOTION_CONTINUATION_INSTRUCTION
from processing.target_generation import emotion_demonstration, emotion_prompt

from .loading import load_blsp_emo
from .ser_evaluation import (
    cascade_predictions,
    plot_confusion,
    predict_emotions,
    retrieval_targets,
    ser_metrics,
    target_retrieval,
    write_jsonl,
    writer_retrieval,
)

MODELS = {"stage2": "final", "stage1_only": "stage1"}


def test_clips(demo) -> list[dict]:
    """Held-out clips (sentences and voices unseen in training), a seeded sample when capped."""
    rows = demo.split("test")
    if demo.settings.eval_clips is not None and len(rows) > demo.settings.eval_clips:
        rows = random.Random(demo.settings.seed).sample(rows, demo.settings.eval_clips)
    return rows


def whisper_transcriber(path: str):
    """`transcribe(16-kHz array) -> text` with a Whisper checkpoint (greedy)."""
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    processor = WhisperProcessor.from_pretrained(path)
    model = WhisperForConditionalGeneration.from_pretrained(path).eval()

    @torch.inference_mode()
    def transcribe(clip) -> str:
        features = processor(clip, sampling_rate=16000, return_tensors="pt").input_features
        return processor.batch_decode(model.generate(features, max_new_tokens=96), skip_special_tokens=True)[0].strip()

    return transcribe


def evaluate_demo(demo) -> None:
    rows = test_clips(demo)
    truth = [row["emotion"] for row in rows]
    targets = retrieval_targets(demo.path("targets_stage2"))
    folder = demo.path("eval")
    folder.mkdir(exist_ok=True)
    results = {"test_clips": len(rows), "chance": None}
    for name, checkpoint in MODELS.items():
        model, processor = load_blsp_emo(str(demo.path(checkpoint)))
        model.eval()
        labels = model.config.emotion_labels
        results["chance"] = 1 / len(labels)
        predictions = predict_emotions(model, processor, [row["audio"] for row in rows], demo.settings.batch_size)
        retrieved, retrieval = target_retrieval(model, processor, rows, targets)
        results[name] = {
            "generative": ser_metrics([p["parsed"] for p in predictions], truth, labels),
            "head": ser_metrics([p["head"] for p in predictions], truth, labels),
            "retrieval": retrieval,
        }
        write_jsonl(folder / f"{name}_predictions.jsonl", [
            {**row, **prediction, **({"retrieval": result} if result else {})}
            for row, prediction, result in zip(rows, predictions, retrieved)
        ])
        for kind in ("head", "generative"):
            plot_confusion(results[name][kind]["confusion_matrix"], labels, folder / f"{name}_{kind}_confusion.png",
                           f"{name}: {'emotion head' if kind == 'head' else 'answer to SER query'}")
    # The base model is the LLM that wrote the targets and the cascade's LLM.
    writer, processor = load_blsp_emo(str(demo.path("base")))
    writer.eval()
    results["writer_retrieval"] = writer_ceiling(demo, writer, processor.tokenizer, rows, targets)
    if demo.settings.cascade:
        results["cascade"] = cascade_baseline(demo, writer, processor.tokenizer, rows, truth)
    results["stage1_kl"] = json.loads(demo.path("stage1_eval.json").read_text())
    demo.path("results.json").write_text(json.dumps(results, indent=2))


def writer_ceiling(demo, model, tokenizer, rows: list[dict], targets: dict[tuple[str, str], str]) -> dict:
    """Retrieval by the LLM that wrote the targets, told each test sentence's true emotion: the most
    that the targets let a speech model reach."""
    demonstration = emotion_demonstration if demo.settings.emotion_demonstrations else None
    return writer_retrieval(
        model, tokenizer, targets, model.config.emotion_labels, [row["text"] for row in rows],
        emotion_prompt, demonstration,
    )


def cascade_baseline(demo, model, tokenizer, rows: list[dict], truth: list[str]) -> dict:
    from processing.bundled import resolve_model_spec

    labels = model.config.emotion_labels
    transcribe = whisper_transcriber(resolve_model_spec(demo.settings.encoder))
    predictions = cascade_predictions(transcribe, model, tokenizer, [row["audio"] for row in rows], labels)
    write_jsonl(demo.path("eval") / "cascade_predictions.jsonl", [{**r, **p} for r, p in zip(rows, predictions)])
    return {"generative": ser_metrics([p["parsed"] for p in predictions], truth, labels)}


PIPELINE_SCRIPT = """
import json, sys
from transformers import pipeline
final, clips, instruction = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
pipe = pipeline("audio-to-text", model=final, trust_remote_code=True)
rows = []
for clip in clips:
    emotion = pipe(clip["audio"], return_emotion=True, max_new_tokens=16)[0]
    continuation = pipe(clip["audio"], prompt=instruction, max_new_tokens=32)[0]["generated_text"]
    reply = pipe(clip["audio"], empathetic=True, max_new_tokens=48)[0]["generated_text"]
    rows.append({**clip, "head_emotion": emotion["emotion"], "scores": emotion["scores"],
                 "ser_answer": emotion["ser_answer"], "continuation": continuation, "empathetic_reply": reply})
print(json.dumps({"rows": rows, "loaded_from": type(pipe.model).__module__}))
"""


def pipeline_examples(demo) -> None:
    """One held-out clip per emotion through `pipeline(..., trust_remote_code=True)` in a process
    that never imported this package."""
    chosen = {}
    for row in test_clips(demo):
        chosen.setdefault(row["emotion"], {"audio": row["audio"], "text": row["text"], "emotion": row["emotion"]})
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HOME=str(demo.path("hf_home")), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    result = subprocess.run(
        [sys.executable, "-I", "-c", PIPELINE_SCRIPT, str(demo.path("final")), json.dumps(list(chosen.values())),
         EMOTION_CONTINUATION_INSTRUCTION],
        cwd=demo.root, env=env, capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"fresh-process pipeline failed:\n{result.stderr[-3000:]}")
    demo.path("pipeline_examples.json").write_text(json.dumps(json.loads(result.stdout.strip().splitlines()[-1]), indent=2))
