"""`blsp-emo init`, `convert-original` and `push`: making, converting and publishing checkpoints."""

import argparse

from modeling_blsp_emo.configuration_blsp_emo import DEFAULT_EMOTIONS, EMOTION_POOLINGS
from processing.errors import UserInputError


def add_commands(commands) -> None:
    init = commands.add_parser("init", help="build a base BLSP-Emo checkpoint from a Whisper model and an LLM")
    init.add_argument("--encoder", default="bundled:whisper-tiny.en", help="Whisper: hub id, folder or bundled:NAME")
    init.add_argument("--llm", default="bundled:smollm2-135m-instruct", help="causal LM: hub id, folder or bundled:NAME")
    init.add_argument("--output", required=True, help="folder for the new checkpoint")
    init.add_argument("--audio-padding", choices=["longest", "max_length"], default="longest")
    init.add_argument("--labels", default=",".join(DEFAULT_EMOTIONS), help="emotion label names, comma separated")
    init.add_argument("--dtype", help="dtype of the saved weights (default: as loaded)")
    init.add_argument("--emotion-pooling", choices=EMOTION_POOLINGS, default="adapter_mean",
                      help="what the emotion head reads: the adapter's mean embedding (default) or the Whisper "
                           "encoder's pooled statistics (mean and std of its last and middle layers)")
    init.set_defaults(handler=run_init)

    convert = commands.add_parser(
        "convert-original", help="convert the authors' released checkpoint (cwang621/blsp-emo) into this package's format"
    )
    convert.add_argument("source", help="folder of the release: config.json, pytorch_model*.bin, qwen.tiktoken")
    convert.add_argument("output", help="new (or empty) folder for the converted checkpoint")
    convert.add_argument("--dtype", help="dtype of the converted weights (default: the release's)")
    convert.add_argument("--max-shard-size", default="2GB", help="largest safetensors shard written (default 2GB)")
    convert.add_argument("--labels", help="emotion label names in id order, comma separated (default: the release's five)")
    convert.set_defaults(handler=run_convert_original)

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
    push.add_argument("--verify-checksums", action="store_true",
                      help="first check each file against the checkpoint's checksums.json (SHA-256; slow for large models)")
    push.set_defaults(handler=run_push)

    verify = commands.add_parser("verify-checksums", help="check a checkpoint's files against the SHA-256 recorded when it was saved")
    verify.add_argument("model", help="checkpoint folder with checksums.json")
    verify.set_defaults(handler=run_verify_checksums)


def run_init(args: argparse.Namespace) -> int:
    from trainers.checkpoints import build_blsp_emo, parse_dtype, save_checkpoint
    from trainers.checkpoints.bundled import resolve_model_spec

    model, processor = build_blsp_emo(
        resolve_model_spec(args.encoder), resolve_model_spec(args.llm), audio_padding=args.audio_padding,
        emotion_labels=args.labels.split(","), emotion_pooling=args.emotion_pooling, dtype=parse_dtype(args.dtype),
    )
    save_checkpoint(model, processor, args.output)
    size = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"BLSP-Emo base model ({size:.0f}M parameters; adapter and emotion head untrained) saved to {args.output}")
    return 0


def run_convert_original(args: argparse.Namespace) -> int:
    from trainers.checkpoints import parse_dtype
    from trainers.checkpoints.original import convert_original

    labels = args.labels.split(",") if args.labels else None
    try:
        dtype = parse_dtype(args.dtype) if args.dtype != "auto" else None
        result = convert_original(args.source, args.output, dtype=dtype, max_shard_size=args.max_shard_size, emotion_labels=labels)
    except ValueError as error:  # a ConversionError (it says what is wrong with the release), or an unknown --dtype
        raise UserInputError(str(error)) from error
    lora = f"audio-scope LoRA on {', '.join(result.lora_target_modules)}" if result.lora_target_modules else "no LoRA"
    print(f"converted {len(result.sources)} tensors of {args.source} into {result.output_dir} "
          f"({result.num_bytes / 1e9:.2f} GB, {str(result.dtype).removeprefix('torch.')}, Qwen2 LLM, {lora}, 30-s audio padding)")
    return 0


def run_push(args: argparse.Namespace) -> int:
    from trainers.hub import HubPublishError, checkpoint_files, push_to_hub, render_model_card

    options = dict(
        metrics=args.metrics, datasets=args.dataset, language=args.language, license=args.license,
        training_dirs=args.training_dir,
    )
    if args.verify_checksums:
        run_verify_checksums(args)
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
    except HubPublishError as error:  # it says what was wrong and what to do (never the token)
        raise UserInputError(str(error)) from error
    print(f"pushed {len(result.files)} files to {result.repo_id} (branch {result.revision}, commit {result.commit_oid[:10]})")
    if result.verification:
        print(f"verified in a fresh process: emotion {result.verification['emotion']!r}, "
              f"reply {result.verification['generated_text']!r}")
    return 0


def run_verify_checksums(args: argparse.Namespace) -> int:
    from trainers.checkpoints.checksums import verify_checksums

    names = verify_checksums(args.model)
    print(f"{len(names)} files of {args.model} match their recorded SHA-256")
    return 0
