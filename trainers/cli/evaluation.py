"""`blsp-emo evaluate-ser`, `calibrate` and `evaluate-empathy`: measuring a trained model, and
calibrating its emotion head's scores."""

import argparse
import json
from pathlib import Path

from trainers.cli.data import add_audio_check_options


def add_labelled_data_options(command, split: str) -> None:
    """Where the labelled clips come from and how their labels map onto the model's."""
    command.add_argument("--split", default=split)
    command.add_argument("--audio-column", default="audio")
    command.add_argument("--emotion-column", default="emotion")
    command.add_argument("--label-map", nargs="*", default=[], metavar="RAW=LABEL")
    command.add_argument("--drop-unmapped", action="store_true")
    add_audio_check_options(command)
    command.add_argument("--batch-size", type=int, default=8)


def add_commands(commands) -> None:
    ser = commands.add_parser("evaluate-ser", help="speech emotion recognition: SER-query answers, emotion head, retrieval")
    ser.add_argument("--model", required=True, help="BLSP-Emo checkpoint")
    ser.add_argument("--data", required=True, help="JSONL manifest or dataset with audio and emotion columns")
    ser.add_argument("--output", required=True, help="folder for predictions.jsonl, ser_metrics.json and plots")
    ser.add_argument("--targets", help="emotion targets of the same sentences (generate-targets --emotion) for retrieval")
    add_labelled_data_options(ser, split="test")
    ser.add_argument("--dtype")
    ser.add_argument("--no-detect-speech", dest="detect_speech", action="store_false",
                     help="label every clip, even those in which no speech is heard (by default they get no label)")
    ser.add_argument("--head-only", action="store_true",
                     help="only the emotion head, on the fast path: encoder + adapter + head (the LLM is neither loaded nor run)")
    ser.set_defaults(handler=run_evaluate_ser)

    calibrate = commands.add_parser(
        "calibrate", help="fit the emotion head's temperature on labelled clips and store it in the checkpoint's config"
    )
    calibrate.add_argument("--model", required=True, help="local BLSP-Emo checkpoint folder")
    calibrate.add_argument("--manifest", required=True,
                           help="JSONL manifest or dataset of labelled clips not used in training (a validation split)")
    calibrate.add_argument("--output", help="write a calibrated copy of the checkpoint here instead of changing it")
    add_labelled_data_options(calibrate, split="validation")
    calibrate.set_defaults(handler=run_calibrate)

    empathy = commands.add_parser("evaluate-empathy", help="score spoken-instruction replies for quality and empathy")
    empathy.add_argument("--model", required=True)
    empathy.add_argument("--data", required=True, help="manifest with audio, text (the instruction) and emotion")
    empathy.add_argument("--judge", required=True, help="a local chat model that grades (e.g. Qwen/Qwen2.5-7B-Instruct)")
    empathy.add_argument("--output", required=True)
    empathy.add_argument("--max-new-tokens", type=int, default=128)
    empathy.set_defaults(handler=run_evaluate_empathy)


def load_labelled_rows(args: argparse.Namespace, data: str, with_text: bool = False) -> list[dict]:
    """The rows (`audio`, `emotion`, and `text` when `with_text`) of `data`, their labels mapped onto
    those of the checkpoint `args.model` (whose config is read, not its weights)."""
    from processing.emotion_labels import LabelMapper, parse_label_map
    from processing.manifests import load_speech_dataset
    from trainers.checkpoints.loading import load_blsp_emo_config

    labels = LabelMapper(load_blsp_emo_config(args.model).emotion_labels, parse_label_map(args.label_map), args.drop_unmapped)
    dataset = load_speech_dataset(
        data, audio_column=args.audio_column, text_column="text" if with_text else None,
        extra_columns=[args.emotion_column], split=args.split, check_audio=args.check_audio,
        skip_bad_audio=args.skip_bad_audio, labels=labels, emotion_column=args.emotion_column,
    )
    if args.emotion_column != "emotion":
        dataset = dataset.rename_column(args.emotion_column, "emotion")
    return list(dataset)


def run_evaluate_ser(args: argparse.Namespace) -> int:
    from modeling_blsp_emo import BlspEmoForAudioClassification, BlspEmoForConditionalGeneration
    from processing.errors import UserInputError, output_folder
    from trainers.checkpoints.loading import load_blsp_emo
    from trainers.evaluation import evaluate_ser, retrieval_targets

    if args.head_only and args.targets:
        raise UserInputError("--targets (retrieval) needs the LLM; drop --head-only or --targets")
    # The cheap checks first: a bad manifest should not wait for the model to load.
    output_folder(args.output)
    rows = load_labelled_rows(args, args.data, with_text=bool(args.targets))
    targets = retrieval_targets(args.targets) if args.targets else None
    model_class = BlspEmoForAudioClassification if args.head_only else BlspEmoForConditionalGeneration
    model, processor = load_blsp_emo(args.model, args.dtype, model_class=model_class)
    model.eval()
    metrics = evaluate_ser(
        model, processor, rows, args.output, targets=targets, batch_size=args.batch_size, detect_speech=args.detect_speech
    )
    unreadable = metrics["head"]["unreadable"]
    summary = {"dataset": str(args.data), "split": args.split, "num_examples": len(rows) - unreadable,
               "unreadable": unreadable, "method": "emotion head", "metrics": metrics["head"], "all": metrics}
    (Path(args.output) / "ser_metrics.json").write_text(json.dumps(summary, indent=2))
    for kind, values in metrics.items():
        extra = f"  UA {values['unweighted_accuracy']:.1%}" if "unweighted_accuracy" in values else ""
        extra += f"  normalized per sentence {values['normalized_accuracy']:.1%}" if "normalized_accuracy" in values else ""
        extra += f"  ECE {values['ece']:.3f}" if values.get("ece") is not None else ""
        print(f"{kind:>10}: accuracy {values['accuracy']:.1%}{extra}")
    if unreadable:
        print(f"skipped {unreadable} of {len(rows)} clips that could not be loaded (see 'error' in predictions.jsonl)")
    if metrics["head"]["no_speech"]:
        print(f"no speech heard in {metrics['head']['no_speech']} of {len(rows)} clips: no label given (--no-detect-speech labels them)")
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    from trainers.evaluation import calibrate_checkpoint

    rows = load_labelled_rows(args, args.manifest)
    result = calibrate_checkpoint(args.model, rows, args.batch_size, output=args.output)
    print(f"emotion head temperature {result['temperature']:.3f}, fitted on {result['clips']} clips")
    print(f"expected calibration error on them: {result['ece_before']:.3f} before, {result['ece_after']:.3f} after")
    print(f"written to {args.output or args.model}/config.json (emotion_temperature)")
    return 0


def run_evaluate_empathy(args: argparse.Namespace) -> int:
    from processing.manifests import load_speech_dataset, write_jsonl
    from trainers.checkpoints import load_blsp_emo
    from trainers.evaluation import evaluate_empathy, local_judge

    model, processor = load_blsp_emo(args.model)
    model.eval()
    rows = list(load_speech_dataset(args.data, extra_columns=["emotion"]))
    results, summary = evaluate_empathy(model, processor, rows, local_judge(args.judge), args.max_new_tokens)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    write_jsonl(output / "empathy_responses.jsonl", results)
    (output / "empathy_scores.json").write_text(json.dumps(summary, indent=2))
    for group, scores in summary.items():
        print(f"{group:>9}: quality {scores['quality']}  empathy {scores['empathy']}  ({scores['count']} clips)")
    return 0
