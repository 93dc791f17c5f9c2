"""`blsp-emo chat` and `serve`: talking to a model in the terminal or in the browser."""

import argparse
from pathlib import Path


def add_commands(commands) -> None:
    chat = commands.add_parser("chat", help="chat with a model in the terminal: text, or /audio PATH, per turn")
    serve = commands.add_parser("serve", help="a Gradio web app on 127.0.0.1 for chatting with a model by voice or text")
    for command in (chat, serve):
        command.add_argument("--model", required=True, help="BLSP-Emo checkpoint folder")
        command.add_argument("--dtype", help="load dtype, e.g. bfloat16")
        command.add_argument("--empathetic", action="store_true", help="start with the empathetic system prompt")
        command.add_argument("--max-new-tokens", type=int, default=128, help="reply length limit (default 128)")
        command.add_argument("--max-context-tokens", type=int, help="drop oldest turns beyond this (default: the LLM's limit)")
        command.add_argument("--max-audio-seconds", type=float, default=120.0, help="refuse longer audio (default 120)")
        command.add_argument("--no-speech-check", dest="detect_speech", action="store_false",
                             help="do not check spoken turns for speech (by default noise or silence gets no emotion)")
    chat.set_defaults(handler=run_chat)
    serve.add_argument("--port", type=int, default=7860, help="port on 127.0.0.1 (0: any free port; default 7860)")
    serve.set_defaults(handler=run_serve)


def chat_from_args(args: argparse.Namespace):
    """The chat that `blsp-emo chat` and `blsp-emo serve` build from their common options."""
    from trainers.inference import BlspEmoChat

    return BlspEmoChat.from_pretrained(
        args.model, dtype=args.dtype, empathetic=args.empathetic, max_new_tokens=args.max_new_tokens,
        max_context_tokens=args.max_context_tokens, max_audio_seconds=args.max_audio_seconds,
        detect_speech=args.detect_speech,
    )  # fmt: skip


def run_chat(args: argparse.Namespace) -> int:
    from trainers.inference.terminal import converse

    return converse(chat_from_args(args))


def run_serve(args: argparse.Namespace) -> int:
    from trainers.inference.web_app import serve

    return serve(chat_from_args(args), title=f"BLSP-Emo chat · {Path(args.model).name}", port=args.port,
                 empathetic=args.empathetic)
