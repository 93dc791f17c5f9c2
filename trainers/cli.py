"""The `blsp-emo` command line."""

import argparse
import logging
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

from modeling_blsp_emo.configuration_blsp_emo import DEFAULT_EMOTIONS
from modeling_blsp_emo.version import __version__


def environment_report() -> dict[str, str]:
    """Versions and devices a bug report needs."""
    import torch
    import transformers

    devices = ["cpu"] + [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    return {
        "blsp-emo": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "devices": ", ".join(devices),
    }


def run_info(args: argparse.Namespace) -> int:
    for name, value in environment_report().items():
        print(f"{name:>13}: {value}")
    return 0


def run_generate_targets(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from processing.emotion_labels import LabelMapper
    from processing.manifests import interleave, load_speech_dataset
    from processing.target_generation import (
        emotion_demonstration,
        emotion_prompt,
        generate_targets,
        load_targets,
        semantic_prompt,
    )

    from .loading import load_text_generator

    state = PartialState(cpu=args.cpu)
    if int(os.environ.get("WORLD_SIZE", 1)) > state.num_processes:
        raise SystemExit("launched in several processes but running as one: add --cpu on a machine without GPUs")
    shard, num_shards = args.shard, args.num_shards
    if num_shards is None:  # under `accelerate launch`, one shard per process
        shard, num_shards = state.process_index, state.num_processes
    extra = [args.emotion_column] if args.emotion else []
    sources = [
        load_speech_dataset(
            source, audio_column=args.audio_column, text_column=args.text_column, extra_columns=extra,
            split=args.split, streaming=args.streaming,
        )
        for source in args.data
    ]
    dataset = interleave(sources, args.probabilities, args.seed)
    if args.emotion:
        if args.emotion_column != "emotion":
            dataset = dataset.rename_column(args.emotion_column, "emotion")
        aliases = dict(pair.split("=", 1) for pair in args.label_map)
        dataset = LabelMapper(args.labels.split(","), aliases, args.drop_unmapped).apply(dataset)
    model, tokenizer = load_text_generator(args.model, args.dtype, device_map={"": state.device})
    generate_targets(
        model, tokenizer, dataset, args.output,
        prompt=emotion_prompt if args.emotion else semantic_prompt,
        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, shard=shard, num_shards=num_shards,
        total=None if args.streaming else len(dataset),
        demonstration=emotion_demonstration if args.demonstrations else None,
    )
    state.wait_for_everyone()
    if state.is_main_process:
        records = load_targets(args.output)
        truncated = sum(record["truncated"] for record in records)
        print(f"{len(records)} targets in {args.output} ({truncated} cut at {args.max_new_tokens} tokens)")
    return 0


def run_init(args: argparse.Namespace) -> int:
    from processing.bundled import resolve_model_spec

    from .builder import build_blsp_emo, save_checkpoint
    from .loading import parse_dtype

    model, processor = build_blsp_emo(
        resolve_model_spec(args.encoder), resolve_model_spec(args.llm), audio_padding=args.audio_padding,
        emotion_labels=args.labels.split(","), dtype=parse_dtype(args.dtype),
    )
    save_checkpoint(model, processor, args.output)
    size = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"BLSP-Emo base model ({size:.0f}M parameters; adapter and emotion head untrained) saved to {args.output}")
    return 0


def run_push(args: argparse.Namespace) -> int:
    from .hub import HubPublishError, checkpoint_files, push_to_hub, render_model_card

    options = dict(
        metrics=args.metrics, datasets=args.dataset, language=args.language, license=args.license,
        training_dirs=args.training_dir,
    )
    try:
        if args.dry_run:
            files = checkpoint_files(args.model)
            print(render_model_card(args.model, args.repo_id, revision=args.revision, **options))
            print(f"\n{len(files) + 1} files would be pushed to {args.repo_id}: README.md, "
                  + ", ".join(path.relative_to(args.model).as_posix() for path in files))
            return 0
        result = push_to_hub(
            args.model, args.repo_id, private=args.private, revision=args.revision, verify=args.verify,
            commit_message=args.commit_message, **options,
        )
    except HubPublishError as error:
        raise SystemExit(f"blsp-emo push: {error}") from None
    print(f"pushed {len(result.files)} files to {result.repo_id} (branch {result.revision}, commit {result.commit_oid[:10]})")
    if result.verification:
        print(f"verified in a fresh process: emotion {result.verification['emotion']!r}, "
              f"reply {result.verification['generated_text']!r}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from .demo import Demo, DemoSettings

    overrides = {
        name: value
        for name, value in vars(args).items()
        if name in DemoSettings.__dataclass_fields__ and name != "output" and value is not None
    }
    settings = DemoSettings.quick(args.output, **overrides) if args.quick else DemoSettings(args.output, **overrides)
    results = Demo(settings).run()
    stage2, stage1 = results["stage2"], results["stage1_only"]
    print(f"report: {Path(args.output) / 'report.md'}")
    print(f"emotion head accuracy  stage 2 {stage2['head']['accuracy']:.1%}  stage 1 only {stage1['head']['accuracy']:.1%}")
    print(f"target retrieval       stage 2 {stage2['retrieval']['accuracy']:.1%}  stage 1 only {stage1['retrieval']['accuracy']:.1%}")
    print(f"  normalized           stage 2 {stage2['retrieval']['normalized_accuracy']:.1%}  "
          f"stage 1 only {stage1['retrieval']['normalized_accuracy']:.1%}")
    writer = results["writer_retrieval"]
    print(f"  the targets' writer, told the true emotion {writer['accuracy']:.1%} ({writer['sentences']} sentences)")
    print(f"SER query answers      stage 2 {stage2['generative']['accuracy']:.1%}  stage 1 only {stage1['generative']['accuracy']:.1%}")
    return 0


def run_convert_original(args: argparse.Namespace) -> int:
    from .convert_original import convert_original
    from .loading import parse_dtype

    labels = args.labels.split(",") if args.labels else None
    try:
        dtype = parse_dtype(args.dtype) if args.dtype != "auto" else None
        result = convert_original(args.source, args.output, dtype=dtype, max_shard_size=args.max_shard_size, emotion_labels=labels)
    except ValueError as error:  # a ConversionError (it says what is wrong with the release), or an unknown --dtype
        raise SystemExit(f"blsp-emo convert-original: {error}") from None
    lora = f"audio-scope LoRA on {', '.join(result.lora_target_modules)}" if result.lora_target_modules else "no LoRA"
    print(f"converted {len(result.sources)} tensors of {args.source} into {result.output_dir} "
          f"({result.num_bytes / 1e9:.2f} GB, {str(result.dtype).removeprefix('torch.')}, Qwen2 LLM, {lora}, 30-s audio padding)")
    return 0


def run_chat(args: argparse.Namespace) -> int:
    from .chat_cli import run_chat as chat_in_terminal

    return chat_in_terminal(args)


def run_serve(args: argparse.Namespace) -> int:
    from .web_app import run_serve as serve_web_app

    return serve_web_app(args)


def run_synth_corpus(args: argparse.Namespace) -> int:
    from processing.corpus_stats import measure_corpus, stats_table
    from processing.synth_corpus import synthesize_corpus

    report = synthesize_corpus(
        args.output, num_sentences=args.num_sentences, seed=args.seed, workers=args.workers, engines=args.engines,
        audio_format=args.format, piper_noise=not args.no_piper_noise, voices_per_sentence=args.voices_per_sentence,
    )
    print(f"{sum(report['clips'].values())} clips ({report['synthesized']} new) in {args.output}: {report['clips']}")
    print(stats_table(measure_corpus(report["manifests"].values())))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blsp-emo", description="Empathetic speech-language models (BLSP-Emo).")
    parser.add_argument("--version", action="version", version=f"blsp-emo {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    info = commands.add_parser("info", help="print versions and available devices")
    info.set_defaults(handler=run_info)

    init = commands.add_parser("init", help="build a base BLSP-Emo checkpoint from a Whisper model and an LLM")
    init.add_argument("--encoder", default="bundled:whisper-tiny.en", help="Whisper: hub id, folder or bundled:NAME")
    init.add_argument("--llm", default="bundled:smollm2-135m-instruct", help="causal LM: hub id, folder or bundled:NAME")
    init.add_argument("--output", required=True, help="folder for the new checkpoint")
    init.add_argument("--audio-padding", choices=["longest", "max_length"], default="longest")
    init.add_argument("--labels", default=",".join(DEFAULT_EMOTIONS), help="emotion label names, comma separated")
    init.add_argument("--dtype", help="dtype of the saved weights (default: as loaded)")
    init.set_defaults(handler=run_init)

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
    demo.set_defaults(handler=run_demo)

    corpus = commands.add_parser("synth-corpus", help="synthesize an emotional speech corpus with offline TTS engines")
    corpus.add_argument("--output", required=True, help="corpus folder (re-running resumes)")
    corpus.add_argument("--num-sentences", type=int, help="how many of the built-in sentences (default all 300)")
    corpus.add_argument("--seed", type=int, default=0)
    corpus.add_argument("--workers", type=int, default=2)
    corpus.add_argument("--voices-per-sentence", type=int, default=4, help="voices speaking each sentence (test: its held-out voices)")
    corpus.add_argument("--engines", nargs="+", choices=["piper", "flite", "espeak-ng"], help="default: all")
    corpus.add_argument("--format", choices=["flac", "wav"], default="flac")
    corpus.add_argument("--no-piper-noise", action="store_true", help="deterministic Piper audio (less varied)")
    corpus.set_defaults(handler=run_synth_corpus)

    targets = commands.add_parser("generate-targets", help="have the LLM write training targets for transcripts")
    targets.add_argument("--model", required=True, help="BLSP-Emo checkpoint or causal LM that writes the targets")
    targets.add_argument("--data", required=True, nargs="+", help="JSONL manifests or datasets (name or folder)")
    targets.add_argument("--probabilities", type=float, nargs="+", help="sampling probability of each --data source")
    targets.add_argument("--output", required=True, help="folder for targets-*.jsonl (re-running resumes)")
    targets.add_argument("--emotion", action="store_true", help="stage 2: emotion-aware targets from the true label")
    targets.add_argument("--audio-column", default="audio")
    targets.add_argument("--text-column", default="text")
    targets.add_argument("--emotion-column", default="emotion")
    targets.add_argument("--labels", default=",".join(DEFAULT_EMOTIONS), help="emotion label names, comma separated")
    targets.add_argument("--label-map", nargs="*", default=[], metavar="RAW=LABEL", help="e.g. ang=angry exc=happy")
    targets.add_argument("--drop-unmapped", action="store_true", help="drop rows whose label maps to none of --labels")
    targets.add_argument(
        "--demonstrations", action="store_true",
        help="with --emotion: show the LLM one worked example per emotion first (helps small LLMs; release labels only)",
    )
    targets.add_argument("--split", default="train")
    targets.add_argument("--streaming", action="store_true", help="stream the data instead of loading it")
    targets.add_argument("--batch-size", type=int, default=8)
    targets.add_argument("--max-new-tokens", type=int, default=48)
    targets.add_argument("--num-shards", type=int, help="split the work in this many shards (default: one per process)")
    targets.add_argument("--shard", type=int, default=0, help="which shard this run writes")
    targets.add_argument("--dtype", help="load dtype, e.g. bfloat16")
    targets.add_argument("--cpu", action="store_true", help="run on the CPU (several CPU processes need it)")
    targets.add_argument("--seed", type=int, default=0)
    targets.set_defaults(handler=run_generate_targets)

    push = commands.add_parser("push", help="publish a checkpoint on the Hugging Face Hub with its model card")
    push.add_argument("--model", required=True, help="checkpoint folder (saved by blsp-emo init / train-*)")
    push.add_argument("--repo-id", required=True, help="NAME or NAMESPACE/NAME of the Hub repo (created if needed)")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--revision", help="branch to push to (created from main if missing; default main)")
    push.add_argument("--metrics", help="SER metrics JSON for the card (default: MODEL/ser_metrics.json if present)")
    push.add_argument("--dataset", action="append", default=[], help="Hub id of a training dataset (repeatable)")
    push.add_argument("--language", nargs="+", default=["en"], help="language codes of the speech (default: en)")
    push.add_argument("--license", help="licence id for the card (default: the LLM's recorded licence)")
    push.add_argument("--training-dir", action="append", default=[],
                      help="training output folder with trainer_state.json, one per stage (default: MODEL)")
    push.add_argument("--commit-message")
    push.add_argument("--verify", action="store_true", help="load the pushed model in a fresh process and run one clip")
    push.add_argument("--dry-run", action="store_true", help="print the model card and the file list; push nothing")
    push.set_defaults(handler=run_push)

    convert = commands.add_parser(
        "convert-original", help="convert the authors' released checkpoint (cwang621/blsp-emo) into this package's format"
    )
    convert.add_argument("source", help="folder of the release: config.json, pytorch_model*.bin, qwen.tiktoken")
    convert.add_argument("output", help="new (or empty) folder for the converted checkpoint")
    convert.add_argument("--dtype", help="dtype of the converted weights (default: the release's)")
    convert.add_argument("--max-shard-size", default="2GB", help="largest safetensors shard written (default 2GB)")
    convert.add_argument("--labels", help="emotion label names in id order, comma separated (default: the release's five)")
    convert.set_defaults(handler=run_convert_original)

    chat = commands.add_parser("chat", help="chat with a model in the terminal: text, or /audio PATH, per turn")
    serve = commands.add_parser("serve", help="a Gradio web app on 127.0.0.1 for chatting with a model by voice or text")
    for command in (chat, serve):
        command.add_argument("--model", required=True, help="BLSP-Emo checkpoint folder")
        command.add_argument("--dtype", help="load dtype, e.g. bfloat16")
        command.add_argument("--empathetic", action="store_true", help="start with the empathetic system prompt")
        command.add_argument("--max-new-tokens", type=int, default=128, help="reply length limit (default 128)")
        command.add_argument("--max-context-tokens", type=int, help="drop oldest turns beyond this (default: the LLM's limit)")
        command.add_argument("--max-audio-seconds", type=float, default=120.0, help="refuse longer audio (default 120)")
    chat.set_defaults(handler=run_chat)
    serve.add_argument("--port", type=int, default=7860, help="port on 127.0.0.1 (0: any free port; default 7860)")
    serve.set_defaults(handler=run_serve)

    from .evaluate_cli import add_arguments as add_evaluation_commands

    add_evaluation_commands(commands)
    for name, help_text in (
        ("train-semantic", "stage 1: semantic alignment (options: --help)"),
        ("train-emotion", "stage 2: emotion alignment, or fine-tuning on new emotion data (options: --help)"),
    ):
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


TRAINING_COMMANDS = {"train-semantic": "trainers.train_semantic", "train-emotion": "trainers.train_emotion"}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if argv and argv[0] in TRAINING_COMMANDS:
        # Training commands take transformers' TrainingArguments through HfArgumentParser.
        import importlib

        return importlib.import_module(TRAINING_COMMANDS[argv[0]]).main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
