"""The demo's report: results table, loss curves, confusion matrices and example responses."""

import json
from pathlib import Path

from trainers.evaluation.plots import plot_curves
from trainers.evaluation.target_check import kept_per_emotion

# Result name → row label in the tables (stage 3 only when the demo trained it).
MODEL_ROWS = (("stage2", "BLSP-Emo (stage 1 + 2)"), ("stage3", "stage 2 + preference (DPO)"), ("stage1_only", "stage 1 only"))
CURVES = {"stage1": ("kl", "token_agreement"), "stage2": ("lm_loss", "emotion_loss", "emotion_accuracy")}


def percent(value) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def write_report(
    root: Path, *, encoder: str, llm: str, random_level: bool = False, train_encoder: bool = False
) -> Path:
    """Write `report.md` (and the training-curve plots) from what the demo's steps left in `root`."""
    results = json.loads((root / "results.json").read_text())
    for stage, names in CURVES.items():
        plot_curves(root / f"{stage}_log.json", names, root / f"{stage}_curves.png", f"{stage} training")
    examples = json.loads((root / "pipeline_examples.json").read_text())
    timings = json.loads((root / "timings.json").read_text())
    lines = [
        "# BLSP-Emo demo report",
        "",
        f"Embedded default: encoder `{encoder}`, LLM `{llm}`; "
        f"{results['test_clips']} held-out test clips (sentences and voices unseen in training); chance = {percent(results['chance'])}.",
        "",
        *ser_section(results),
        *reply_section(results, random_level),
        *warm_start_lines(root / "head_warm_start.json", train_encoder),
        *target_check_lines(root / "targets_check.json"),
        *training_sections(results["stage1_kl"]),
        *examples_section(examples),
        *timings_section(timings),
    ]
    path = root / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def ser_section(results: dict) -> list[str]:
    """The held-out SER table (stage 2, stage 1 only, cascade) and how to read it."""
    lines = [
        "## Speech emotion recognition on held-out clips",
        "",
        "| model | emotion head | answer to the SER query (parsed) | unparseable answers | emotion-target retrieval "
        "| retrieval, normalized per sentence |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, label in MODEL_ROWS:
        if name not in results:
            continue
        row = results[name]
        lines.append(
            f"| {label} | {percent(row['head']['accuracy'])} | {percent(row['generative']['accuracy'])} | "
            f"{row['generative']['unanswered']} | {percent(row['retrieval']['accuracy'])} "
            f"({row['retrieval']['clips']} clips) | {percent(row['retrieval']['normalized_accuracy'])} |"
        )
    if "cascade" in results:
        cascade = results["cascade"]["generative"]
        lines.append(f"| Whisper → LLM cascade | – | {percent(cascade['accuracy'])} | {cascade['unanswered']} | – | – |")
    lines += [
        "",
        "Every test sentence is spoken in every emotion, so a system that reads only the words (the cascade) "
        "is at chance by construction: that is the paper's point, not a win for BLSP-Emo. Retrieval asks which "
        "of the five emotion-aware continuations the LLM wrote for a clip's sentence the model finds most "
        "likely given the speech; clips whose continuations are not all different are left out "
        f"({results['stage2']['retrieval']['left_out_identical_targets']} here). The plain measure also rewards "
        "continuations that are likely in themselves (short or repetitive ones win for every clip); the "
        "normalized one first subtracts each continuation's mean score over all clips of its sentence, "
        "leaving how much the clip's voice raises it.",
        "",
        f"How far plain retrieval can go is set by the targets: the LLM that wrote them, given a test sentence "
        f"*and told its true emotion*, finds that emotion's target the likeliest of the five "
        f"{percent(results['writer_retrieval']['accuracy'])} of the time "
        f"({results['writer_retrieval']['sentences']} sentences × {len(results['writer_retrieval']['predictions'])} emotions). "
        "A small writer's continuations differ more in how fluent they are than in how they follow the emotion.",
        "",
    ]
    return lines


REPLY_SETS = (
    ("stage2", "BLSP-Emo (stage 1 + 2)"), ("stage2_guarded", "BLSP-Emo, repetition guard"),
    ("stage3", "stage 2 + preference (DPO)"), ("stage1_only", "stage 1 only"), ("cascade", "Whisper → LLM cascade"),
)


def calibration_lines(calibration: dict | None) -> list[str]:
    """The emotion head's temperature and its calibration error on the held-out clips."""
    if not calibration:
        return []
    held_out = calibration["held_out"]
    stage3 = f" (stage 3's, fitted alike: {calibration['stage3']['temperature']:.2f})" if "stage3" in calibration else ""
    return [
        f"Emotion-head scores: temperature {calibration['temperature']:.2f}, fitted on {calibration['clips']} "
        f"validation clips and stored in the checkpoint{stage3}; expected calibration error on the "
        f"{held_out['clips']} held-out clips {held_out['ece_before']:.3f} before, {held_out['ece_after']:.3f} after.",
        "",
    ]


def warm_start_lines(path: Path, train_encoder: bool) -> list[str]:
    """How the emotion head started stage 2 (fitted alone on the stage-1 model's embeddings, or fresh)
    and whether the Whisper encoder under it was fine-tuned."""
    encoder = (
        "The Whisper encoder was fine-tuned in stage 2 (`--train-encoder`, as in the paper)."
        if train_encoder
        else "The Whisper encoder stayed frozen in stage 2 (`--train-encoder` fine-tunes it, as in the paper)."
    )
    if not path.exists():
        return [f"Stage 2 started from a fresh emotion head (`--no-warm-start-head`). {encoder}", ""]
    fit = json.loads(path.read_text())
    return [
        f"Before stage 2 the emotion head was fitted alone on the stage-1 model's pooled speech embeddings of "
        f"{fit['clips']} training clips (linear probing; training accuracy {percent(fit['train_accuracy'])}), then "
        f"trained on with everything else. {encoder}",
        "",
    ]


def target_check_lines(path: Path) -> list[str]:
    """How many stage-2 training targets the writer read as their own emotion (`--check-targets`)."""
    if not path.exists():
        return []
    counts = kept_per_emotion(json.loads(path.read_text()))
    kept, checked = (sum(row[key] for row in counts.values()) for key in ("kept", "checked"))
    per_emotion = ", ".join(f"{emotion} {row['kept']}/{row['checked']}" for emotion, row in counts.items())
    return [
        f"Stage 2 trained only on the {kept} of {checked} training targets that the writer itself read as the emotion "
        f"they were written for ({per_emotion}). The judge of the replies is the same model, so its verdicts on the "
        "replies share the writer's idea of each emotion.",
        "",
    ]


def reply_section(results: dict, random_level: bool) -> list[str]:
    """Head accuracy by level, sentence retrieval and the judged replies (when a judge ran)."""
    lines = [
        "## Prosody, not level",
        "",
        "| model | emotion head, as synthesized | each clip peak-normalized | sentence retrieval (normalized) |",
        "| --- | --- | --- | --- |",
    ]
    for name, label in MODEL_ROWS:
        if name not in results:
            continue
        level, sentences = results[name].get("head_by_level"), results[name].get("sentence_retrieval")
        if level:
            lines.append(f"| {label} | {percent(level['as_recorded'])} | {percent(level['peak_normalized'])} | "
                         f"{percent(sentences['accuracy'])} (chance {percent(sentences['chance'])}) |")
    lines += [
        "",
        ("Stage 2 trains on every clip at a random peak level, so the head cannot use loudness; " if random_level else
         "Stage 2 trains on the clips at their synthesized levels (`--random-level` was off), so the head may use loudness; ")
        + "sentence retrieval asks whether a clip makes the model prefer its own sentence's continuation over the other "
        "test sentences' (each candidate's mean score over all clips subtracted).",
        "",
        *calibration_lines(results.get("calibration")),
    ]
    judged = results.get("judged")
    if not judged:
        return lines
    calibration = results["judge_calibration"]
    lines += [
        "## What the models say, read by a judge",
        "",
        "Each held-out clip's continuation (given the speech and the stage-2 instruction) is read by the judge "
        "LLM, which names the emotion it expresses (from the label words' probabilities) and says whether it "
        "is about the sentence spoken: on topic means the judge finds the reply more about its own sentence "
        "than about each of three other test sentences (a reply that fits any sentence: chance, "
        f"{percent(next(iter(judged.values())).get('on_topic_chance'))}). Normalized, each sentence's mean "
        "yes-probability over all replies is subtracted first: some sentences draw \"yes\" for any reply, and the "
        "same reply for every clip then scores 0 %.",
        "",
        "| replies | judged emotion = true emotion | p (binomial, vs chance) | on topic | on topic, normalized "
        "| repeat a 4-gram |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, label in REPLY_SETS:
        if name in judged:
            row = judged[name]
            lines.append(f"| {label} | {percent(row['emotion']['accuracy'])} ({row['emotion']['clips']} clips) | "
                         f"{row['emotion']['p_value']:.2g} | {percent(row['on_topic'])} | "
                         f"{percent(row.get('on_topic_normalized'))} | {percent(row['repetition'])} |")
    writer = calibration["writer_targets_emotion"]
    lines += [
        "",
        f"Judge calibration: on the writer's emotion-aware targets of the test sentences it names the intended "
        f"emotion {percent(writer['accuracy'])} of the time ({writer['clips']} targets); it calls a sentence's own "
        f"continuation on topic {percent(calibration['on_topic_own_continuation'])}, another sentence's "
        f"{percent(calibration['on_topic_other_sentence'])} and replies that fit any sentence "
        f"{percent(calibration.get('on_topic_generic_reply'))}.",
        "",
    ]
    return lines


def training_sections(kl: dict) -> list[str]:
    """Stage 1's held-out KL before and after, and both stages' curves and confusion matrices."""
    return [
        "## Stage 1: semantic alignment",
        "",
        f"Held-out KL(teacher ‖ student): {kl['before']['eval_kl']:.3f} before → {kl['after']['eval_kl']:.3f} after; "
        f"token agreement {percent(kl['before']['eval_token_agreement'])} → {percent(kl['after']['eval_token_agreement'])}.",
        "",
        "![stage 1](stage1_curves.png)",
        "",
        "## Stage 2: emotion alignment",
        "",
        "![stage 2](stage2_curves.png)",
        "",
        "![head](eval/stage2_head_confusion.png) ![answers](eval/stage2_generative_confusion.png)",
        "",
    ]


def examples_section(examples: dict) -> list[str]:
    """One held-out clip per emotion as the fresh-process pipeline answered it."""
    checkpoint = examples.get("checkpoint", "final")  # runs before stage 3 existed reloaded `final`
    lines = [
        f"## The final checkpoint, `{checkpoint}`, in a fresh process (`{examples['loaded_from']}`)",
        "",
        "| true emotion | sentence | emotion head | continuation given the speech | empathetic reply |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in examples["rows"]:
        cells = [row["emotion"], row["text"], row["head_emotion"], row["continuation"], row["empathetic_reply"]]
        lines.append("| " + " | ".join(str(cell).replace("|", "/").replace("\n", " ") for cell in cells) + " |")
    return lines


def timings_section(timings: dict) -> list[str]:
    return [
        "", "## Time per step (seconds)", "", "| step | seconds |", "| --- | --- |",
        *(f"| {step} | {seconds} |" for step, seconds in timings.items()),
        f"| total | {sum(timings.values()):.0f} |",
    ]
