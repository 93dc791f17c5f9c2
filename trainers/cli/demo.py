"""`blsp-emo demo`: the whole mission, offline, on the embedded default."""

import argparse
from pathlib import Path

from modeling_blsp_emo.configuration_blsp_emo import EMOTION_POOLINGS


def add_commands(commands) -> None:
    demo = commands.add_parser("demo", help="run the whole mission offline on the embedded default and write a report")
    demo.add_argument("--output", default="outputs/demo", help="folder for everything (re-running resumes)")
    demo.add_argument("--quick", action="store_true", help="a much smaller run (a few minutes)")
    demo.add_argument("--num-sentences", dest="num_sentences", type=int)
    demo.add_argument("--stage1-steps", dest="stage1_steps", type=int)
    demo.add_argument("--stage2-steps", dest="stage2_steps", type=int)
    demo.add_argument("--voices-per-sentence", dest="voices_per_sentence", type=int)
    demo.add_argument("--batch-size", dest="batch_size", type=int)
    demo.add_argument("--eval-clips", dest="eval_clips", type=int)
    demo.add_argument("--engines", nargs="+", help="TTS engines for the corpus (piper flite espeak-ng)")
    demo.add_argument("--corpus", help="use an existing corpus folder instead of synthesizing one")
    demo.add_argument("--encoder", help="Whisper to build from (default bundled:whisper-tiny.en)")
    demo.add_argument("--llm", help="LLM to build from (default bundled:smollm2-135m-instruct)")
    demo.add_argument("--writer", type=model_or_none,
                      help="LLM that writes the stage-2 targets (default: bundled:qwen2.5-coder-1.5b-instruct; 'none': "
                           "the model's own, as in the paper)")
    demo.add_argument("--writer-wording", dest="writer_wording", choices=("release", "vivid"),
                      help="how the stage-2 targets are asked for: the release's instruction or (default) as someone "
                           "who feels the emotion")
    demo.add_argument("--check-targets", dest="check_targets", action=argparse.BooleanOptionalAction, default=None,
                      help="train stage 2 only on the targets that the writer itself reads as the emotion they were "
                           "written for (default: on)")
    demo.add_argument("--label-word-weight", dest="label_word_weight", type=float,
                      help="stage 2: weight of a loss that draws the adapter's mean speech embedding toward the LLM's "
                           "embedding of the clip's emotion name (default 1; 0: off)")
    demo.add_argument("--emotion-token", dest="emotion_token", action=argparse.BooleanOptionalAction, default=None,
                      help="stage 2: after the speech the LLM reads one more embedding, the emotion head's verdict as a "
                           "mixture of the LLM's embeddings of the emotions' names (default: on)")
    demo.add_argument("--judge", type=model_or_none,
                      help="LLM that reads the replies for the judged measures (default: bundled:qwen2.5-coder-1.5b-instruct; "
                           "'none': no judged measures)")
    demo.add_argument("--random-level", dest="random_level", action=argparse.BooleanOptionalAction, default=None,
                      help="train stage 2 on clips at random peak levels, so loudness cannot stand in for prosody "
                           "(default: on)")
    demo.add_argument("--train-encoder", dest="train_encoder", action=argparse.BooleanOptionalAction, default=None,
                      help="stage 2 fine-tunes the Whisper encoder too, as the paper (default: frozen; on the demo's "
                           "small corpus the fine-tuned encoder fits the training voices and the head hears unseen "
                           "voices less well)")
    demo.add_argument("--no-warm-start-head", dest="warm_start_head", action="store_false", default=None,
                      help="start stage 2 with a fresh emotion head instead of one fitted on the stage-1 model's embeddings")
    demo.add_argument("--emotion-pooling", dest="emotion_pooling", choices=EMOTION_POOLINGS,
                      help="what the emotion head reads: the adapter's mean embedding (adapter_mean, as the release) or "
                           "(default) the Whisper encoder's pooled statistics (encoder_stats)")
    demo.add_argument("--lora-scope", dest="lora_scope", choices=("audio", "global"),
                      help="stage 2's LoRA on the speech positions only (audio, as the release) or (default) on every "
                           "position")
    demo.add_argument("--preference-steps", dest="preference_steps", type=int,
                      help="stage 3: DPO steps on emotion preference pairs after stage 2 (needs trl; default 0: skipped)")
    demo.add_argument("--seed", type=int,
                      help="seed of the corpus, the splits and training (default 0; a resumed run needs the seed it started with)")
    demo.set_defaults(handler=run_demo)


NO_MODEL = ""  # --writer none / --judge none; becomes None in DemoSettings


def model_or_none(value: str) -> str:
    """A model spec as given, or NO_MODEL for 'none' (the demo's own LLM writes, nobody judges)."""
    return NO_MODEL if value.lower() == "none" else value


def run_demo(args: argparse.Namespace) -> int:
    from trainers.demo import Demo, DemoSettings

    overrides = {
        name: value
        for name, value in vars(args).items()
        if name in DemoSettings.__dataclass_fields__ and name != "output" and value is not None
    }
    overrides.update({name: None for name in ("writer", "judge") if overrides.get(name) == NO_MODEL})
    settings = DemoSettings.quick(args.output, **overrides) if args.quick else DemoSettings(args.output, **overrides)
    results = Demo(settings).run()
    print(summary(results, Path(args.output)))
    return 0


# The trained models a summary line compares, in order; stage 3 only when it was trained.
SUMMARY_MODELS = (("stage2", "stage 2"), ("stage3", "stage 2 + DPO"), ("stage1_only", "stage 1 only"))


def summary(results: dict, output: Path) -> str:
    """The lines a person reads after a demo run: where the report and the final checkpoint are, and
    the headline figures."""
    from trainers.demo.evaluation import final_checkpoint

    writer = results["writer_retrieval"]
    model = output / final_checkpoint("stage3" in results)

    def compared(title: str, measure) -> str:
        values = "  ".join(f"{label} {measure(results[name]):.1%}" for name, label in SUMMARY_MODELS if name in results)
        return f"{title:<22} {values}"

    return "\n".join([
        f"report: {output / 'report.md'}",
        f"model:  {model}  (pipeline(\"audio-to-text\", model=\"{model}\", trust_remote_code=True))",
        compared("emotion head accuracy", lambda model: model["head"]["accuracy"]),
        compared("target retrieval", lambda model: model["retrieval"]["accuracy"]),
        compared("  normalized", lambda model: model["retrieval"]["normalized_accuracy"]),
        f"  the targets' writer, told the true emotion {writer['accuracy']:.1%} ({writer['sentences']} sentences)",
        compared("SER query answers", lambda model: model["generative"]["accuracy"]),
        compared("head, peak-normalized", lambda model: model["head_by_level"]["peak_normalized"]),
        *judge_lines(results),
    ])


def judge_lines(results: dict) -> list[str]:
    lines = []
    for name, label in (*SUMMARY_MODELS, ("cascade", "cascade")):
        if name in results.get("judged", {}):
            row = results["judged"][name]
            lines.append(f"judged replies {label:>13}: emotion {row['emotion']['accuracy']:.1%} "
                         f"(p={row['emotion']['p_value']:.2g}), on topic {row['on_topic']:.1%} "
                         f"(normalized {rate(row.get('on_topic_normalized'))}), loops {row['repetition']:.1%}")
    return lines


def rate(value: float | None) -> str:
    """A share as a percentage; "–" for a measure the results do not hold (a run from an older version)."""
    return "–" if value is None else f"{value:.1%}"
