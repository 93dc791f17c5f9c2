"""The demo's report: results table, loss curves, confusion matrices and example responses."""

import json
from pathlib import Path

CURVES = {"stage1": ("kl", "token_agreement"), "stage2": ("lm_loss", "emotion_loss", "emotion_accuracy")}


def plot_curves(log_path: Path, names: tuple[str, ...], output: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = json.loads(log_path.read_text())
    figure, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2))
    for axis, name in zip(axes, names):
        points = [(entry["step"], entry[name]) for entry in history if name in entry and "eval_" + name not in entry]
        if points:
            axis.plot(*zip(*points), marker=".")
        axis.set_title(name)
        axis.set_xlabel("step")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(output, dpi=110)
    plt.close(figure)


def percent(value) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def write_report(demo) -> None:
    results = json.loads(demo.path("results.json").read_text())
    for stage, names in CURVES.items():
        plot_curves(demo.path(f"{stage}_log.json"), names, demo.path(f"{stage}_curves.png"), f"{stage} training")
    examples = json.loads(demo.path("pipeline_examples.json").read_text())
    timings = json.loads(demo.timings_path.read_text())
    kl = results["stage1_kl"]
    lines = [
        "# BLSP-Emo demo report",
        "",
        f"Embedded default: encoder `{demo.settings.encoder}`, LLM `{demo.settings.llm}`; "
        f"{results['test_clips']} held-out test clips (sentences and voices unseen in training); chance = {percent(results['chance'])}.",
        "",
        "## Speech emotion recognition on held-out clips",
        "",
        "| model | emotion head | answer to the SER query (parsed) | unparseable answers | emotion-target retrieval "
        "| retrieval, normalized per sentence |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, label in (("stage2", "BLSP-Emo (stage 1 + 2)"), ("stage1_only", "stage 1 only")):
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
        f"## The final checkpoint in a fresh process (`{examples['loaded_from']}`)",
        "",
        "| true emotion | sentence | emotion head | continuation given the speech | empathetic reply |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in examples["rows"]:
        cells = [row["emotion"], row["text"], row["head_emotion"], row["continuation"], row["empathetic_reply"]]
        lines.append("| " + " | ".join(str(cell).replace("|", "/").replace("\n", " ") for cell in cells) + " |")
    lines += ["", "## Time per step (seconds)", "", "| step | seconds |", "| --- | --- |"]
    lines += [f"| {step} | {seconds} |" for step, seconds in timings.items()]
    lines.append(f"| total | {sum(timings.values()):.0f} |")
    demo.path("report.md").write_text("\n".join(lines) + "\n")
