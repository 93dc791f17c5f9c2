"""The demo's evaluation: stage 2 vs stage-1-only vs the Whisper→LLM cascade on held-out
sentences and voices, and a fresh-process reload of the final checkpoint through the pipeline."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

from modeling_blsp_emo import PIPELINE_TASK
from modeling_blsp_emo.prompts import EMOTION_CONTINUATION_INSTRUCTION
from modeling_blsp_emo.speech_lengths import SAMPLING_RATE
from processing.manifests import write_jsonl
from processing.target_generation import EMOTION_WORDINGS, continue_texts, semantic_prompt
from trainers.checkpoints import load_blsp_emo, load_text_generator
from trainers.checkpoints.bundled import resolve_model_spec
from trainers.demo.reply_evaluation import judge_calibration, judge_replies
from trainers.evaluation import cascade_predictions, evaluate_ser, retrieval_targets, ser_metrics, writer_retrieval
from trainers.evaluation.judge import WordChoiceJudge
from trainers.evaluation.level import head_accuracy_by_level
from trainers.evaluation.replies import REPETITION_GUARD, generate_replies, repetition_share, sentence_retrieval

# Result name → checkpoint folder in the demo's output (stage 3 only when it was trained).
MODELS = {"stage2": "final", "stage1_only": "stage1", "stage3": "final_preference"}


def final_checkpoint(preference_trained: bool) -> str:
    """The checkpoint folder a demo run ends with: stage 3's when it was trained, else stage 2's."""
    return MODELS["stage3"] if preference_trained else MODELS["stage2"]


def held_out_clips(rows: list[dict], limit: int | None, seed: int) -> list[dict]:
    """Test clips (sentences and voices unseen in training), a seeded sample of `limit` when capped."""
    if limit is not None and len(rows) > limit:
        return random.Random(seed).sample(rows, limit)
    return rows


def whisper_transcriber(path: str):
    """`transcribe(16-kHz array) -> text` with a Whisper checkpoint (greedy)."""
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    processor = WhisperProcessor.from_pretrained(path)
    model = WhisperForConditionalGeneration.from_pretrained(path).eval()

    @torch.inference_mode()
    def transcribe(clip) -> str:
        features = processor(clip, sampling_rate=SAMPLING_RATE, return_tensors="pt").input_features
        # `max_length` (which counts the decoder prompt), not `max_new_tokens`: Whisper's generation config
        # sets max_length already, and giving both warns on every clip.
        return processor.batch_decode(model.generate(features, max_length=100), skip_special_tokens=True)[0].strip()

    return transcribe


def evaluate_demo(
    root: Path,
    rows: list[dict],
    *,
    encoder: str,
    batch_size: int,
    demonstrations: bool,
    cascade: bool,
    writer: str | None = None,
    writer_wording: str = "release",
    judge: str | None = None,
    helper_dtype: str | None = None,
    reply_tokens: int = 32,
) -> dict:
    """Evaluate the demo's checkpoints in `root` on the held-out `rows` and write `results.json`.

    `encoder` is the Whisper the cascade transcribes with; `demonstrations` says whether the targets
    were written with worked examples and `writer_wording` in which wording (the writer's ceiling is
    scored with the same prompt); `writer` is the LLM that wrote the stage-2 targets (None: the base
    model's) and `judge` the LLM that reads the replies (None: no judged measures), both loaded in
    `helper_dtype`."""
    labels = json.loads((root / "base" / "config.json").read_text())["id2label"]
    labels = [labels[key] for key in sorted(labels, key=int)]
    targets = retrieval_targets(root / "targets_stage2")
    base, base_processor = load_blsp_emo(str(root / "base"))
    base.eval()
    sentences = sorted({row["text"] for row in rows})
    # The base LLM's own continuation of each test sentence (what stage 1 teaches for the words).
    continuations = dict(zip(sentences, (text for text, _ in continue_texts(
        base, base_processor.tokenizer, [semantic_prompt({"text": s}) for s in sentences], max_new_tokens=reply_tokens,
    ))))
    results = {"test_clips": len(rows), "chance": 1 / len(labels)}
    replies = {}
    for name, checkpoint in MODELS.items():
        if not (root / checkpoint).is_dir():
            continue
        model, processor = load_blsp_emo(str(root / checkpoint))
        results[name], model_replies = model_measures(
            model.eval(), processor, rows, root / "eval", name, targets, continuations, batch_size, reply_tokens
        )
        replies.update(model_replies)
    writer_model, writer_tokenizer = (
        load_text_generator(writer, helper_dtype) if writer else (base, base_processor.tokenizer)
    )
    emotion_prompt, emotion_demonstration = EMOTION_WORDINGS[writer_wording]
    results["writer_retrieval"] = writer_retrieval(
        writer_model.eval(), writer_tokenizer, targets, labels, [row["text"] for row in rows], emotion_prompt,
        emotion_demonstration if demonstrations else None,
    )
    if cascade:
        results["cascade"], replies["cascade"] = cascade_measures(
            base, base_processor.tokenizer, rows, labels, root / "eval", encoder, reply_tokens
        )
    results["repetition"] = {name: repetition_share(texts) for name, texts in replies.items()}
    if judge:
        judge_model, judge_tokenizer = (
            (writer_model, writer_tokenizer) if judge == writer else load_text_generator(judge, helper_dtype)
        )
        word_judge = WordChoiceJudge(judge_model.eval(), judge_tokenizer, batch_size=batch_size)
        results["judged"] = judge_replies(word_judge, rows, replies, labels)
        results["judge_calibration"] = judge_calibration(word_judge, sentences, targets, continuations, labels)
    write_jsonl(root / "eval" / "replies.jsonl", [
        {"audio": row["audio"], "text": row["text"], "emotion": row["emotion"],
         **{name: texts[index] for name, texts in replies.items()}}
        for index, row in enumerate(rows)
    ])
    results["stage1_kl"] = json.loads((root / "stage1_eval.json").read_text())
    results["calibration"] = json.loads((root / "calibration.json").read_text())
    (root / "results.json").write_text(json.dumps(results, indent=2))
    return results


def model_measures(
    model, processor, rows: list[dict], output: Path, name: str, targets: dict, continuations: dict[str, str],
    batch_size: int, reply_tokens: int,
) -> tuple[dict, dict[str, list[str]]]:
    """One checkpoint's SER measures, head accuracy by level and sentence retrieval, and its
    continuations of the held-out clips (stage 2's also with the repetition guard)."""
    measures = evaluate_ser(model, processor, rows, output, targets=targets, batch_size=batch_size, name=name)
    measures["head_by_level"] = head_accuracy_by_level(model, processor, rows, batch_size)
    measures["sentence_retrieval"] = sentence_retrieval(model, processor, rows, continuations)
    clips = [row["audio"] for row in rows]
    options = dict(batch_size=batch_size, max_new_tokens=reply_tokens)
    replies = {name: generate_replies(model, processor, clips, EMOTION_CONTINUATION_INSTRUCTION, **options)}
    if name == "stage2":
        replies["stage2_guarded"] = generate_replies(
            model, processor, clips, EMOTION_CONTINUATION_INSTRUCTION, **options, **REPETITION_GUARD
        )
    return measures, replies


def cascade_measures(
    llm, tokenizer, rows: list[dict], labels: list[str], output: Path, encoder: str, reply_tokens: int
) -> tuple[dict, list[str]]:
    """The Whisper→LLM cascade: its answers to the SER query and its continuations, both from the
    transcript alone."""
    transcribe = whisper_transcriber(resolve_model_spec(encoder))
    predictions = cascade_predictions(transcribe, llm, tokenizer, [row["audio"] for row in rows], labels)
    write_jsonl(output / "cascade_predictions.jsonl", [{**r, **p} for r, p in zip(rows, predictions)])
    measures = {"generative": ser_metrics([p["parsed"] for p in predictions], [row["emotion"] for row in rows], labels)}
    prompts = [EMOTION_CONTINUATION_INSTRUCTION + p["transcript"] for p in predictions]
    return measures, [text for text, _ in continue_texts(llm, tokenizer, prompts, max_new_tokens=reply_tokens)]


PIPELINE_SCRIPT = """
import json, sys
from transformers import pipeline
final, clips, instruction, task = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
pipe = pipeline(task, model=final, trust_remote_code=True)
rows = []
for clip in clips:
    emotion = pipe(clip["audio"], return_emotion=True, max_new_tokens=16)[0]
    continuation = pipe(clip["audio"], prompt=instruction, max_new_tokens=32)[0]["generated_text"]
    reply = pipe(clip["audio"], empathetic=True, max_new_tokens=48)[0]["generated_text"]
    rows.append({**clip, "head_emotion": emotion["emotion"], "scores": emotion["scores"],
                 "ser_answer": emotion["ser_answer"], "continuation": continuation, "empathetic_reply": reply})
print(json.dumps({"rows": rows, "loaded_from": type(pipe.model).__module__}))
"""


def pipeline_examples(root: Path, rows: list[dict], checkpoint: str) -> dict:
    """One held-out clip per emotion through `pipeline(..., trust_remote_code=True)` on the checkpoint
    folder `root / checkpoint`, in a process that never imported this package; written (with the
    folder's name) to `pipeline_examples.json`."""
    chosen = {}
    for row in rows:
        chosen.setdefault(row["emotion"], {"audio": row["audio"], "text": row["text"], "emotion": row["emotion"]})
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HOME=str(root / "hf_home"), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    result = subprocess.run(
        [sys.executable, "-I", "-c", PIPELINE_SCRIPT, str(root / checkpoint), json.dumps(list(chosen.values())),
         EMOTION_CONTINUATION_INSTRUCTION, PIPELINE_TASK],
        cwd=root, env=env, capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"fresh-process pipeline failed:\n{result.stderr[-3000:]}")
    examples = {"checkpoint": checkpoint, **json.loads(result.stdout.strip().splitlines()[-1])}
    (root / "pipeline_examples.json").write_text(json.dumps(examples, indent=2))
    return examples
