"""`blsp-emo synth-corpus` and `generate-targets`: the training data."""

import argparse
import os

from modeling_blsp_emo.configuration_blsp_emo import DEFAULT_EMOTIONS


def add_commands(commands) -> None:
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
    targets.add_argument("--model", required=True, help="BLSP-Emo checkpoint (its LLM writes the targets) or a causal LM")
    targets.add_argument(
        "--writer",
        help="another LLM writes the targets instead (hub id, folder or bundled:NAME); default: --model's own LLM, as "
             "in the paper, which found a 7B LLM's own targets better than a stronger outside model's",
    )
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
    targets.add_argument(
        "--emotion-wording", choices=["release", "vivid"], default="release",
        help="with --emotion: the release's instruction, or one that has the writer speak as someone who feels the "
             "emotion (plainer emotion from small outside writers)",
    )
    add_audio_check_options(targets)
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


def add_audio_check_options(command) -> None:
    """`--check-audio` and `--skip-bad-audio`, shared by the commands that open speech data."""
    command.add_argument("--check-audio", choices=["exists", "decode", "none"], default="exists",
                         help="check each clip when the data opens: the file exists (default), it decodes (slower), or none")
    command.add_argument("--skip-bad-audio", action="store_true", help="leave out rows with unusable audio (counted) instead of stopping")


def run_synth_corpus(args: argparse.Namespace) -> int:
    from processing.synthetic.corpus_stats import measure_corpus, stats_table
    from processing.synthetic.synth_corpus import synthesize_corpus

    report = synthesize_corpus(
        args.output, num_sentences=args.num_sentences, seed=args.seed, workers=args.workers, engines=args.engines,
        audio_format=args.format, piper_noise=not args.no_piper_noise, voices_per_sentence=args.voices_per_sentence,
    )
    print(f"{sum(report['clips'].values())} clips ({report['synthesized']} new) in {args.output}: {report['clips']}")
    print(stats_table(measure_corpus(report["manifests"].values())))
    return 0


def run_generate_targets(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from processing.emotion_labels import LabelMapper, parse_label_map
    from processing.errors import output_folder
    from processing.manifests import interleave, load_speech_dataset
    from processing.target_generation import EMOTION_WORDINGS, generate_targets, load_targets, semantic_prompt
    from trainers.checkpoints import load_text_generator
    from trainers.checkpoints.bundled import resolve_model_spec

    state = PartialState(cpu=args.cpu)
    if int(os.environ.get("WORLD_SIZE", 1)) > state.num_processes:
        raise SystemExit("launched in several processes but running as one: add --cpu on a machine without GPUs")
    shard, num_shards = args.shard, args.num_shards
    if num_shards is None:  # under `accelerate launch`, one shard per process
        shard, num_shards = state.process_index, state.num_processes
    extra = [args.emotion_column] if args.emotion else []
    labels = LabelMapper(args.labels.split(","), parse_label_map(args.label_map), args.drop_unmapped) if args.emotion else None
    output_folder(args.output)
    sources = []
    for source in args.data:
        dataset = load_speech_dataset(
            source, audio_column=args.audio_column, text_column=args.text_column, extra_columns=extra,
            split=args.split, streaming=args.streaming, check_audio=args.check_audio, skip_bad_audio=args.skip_bad_audio,
            labels=labels, emotion_column=args.emotion_column,
        )
        if args.emotion and args.emotion_column != "emotion":
            dataset = dataset.rename_column(args.emotion_column, "emotion")
        sources.append(dataset)
    dataset = interleave(sources, args.probabilities, args.seed)
    writer = resolve_model_spec(args.writer) if args.writer else args.model
    model, tokenizer = load_text_generator(writer, args.dtype, device_map={"": state.device})
    emotion_prompt, emotion_demonstration = EMOTION_WORDINGS[args.emotion_wording]
    if args.demonstrations and emotion_demonstration is None:
        raise SystemExit(f"--demonstrations: the {args.emotion_wording} wording has no worked examples (use the release wording)")
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
