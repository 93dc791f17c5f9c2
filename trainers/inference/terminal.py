"""`blsp-emo chat`: a conversation with a BLSP-Emo model in the terminal.

Each line is one user turn: plain text, or `/audio PATH` for a spoken turn (an audio file). The
reply streams as it is generated; spoken turns also show the emotion head's label and scores.
"""

import sys
from typing import TextIO

from trainers.inference.chat import BlspEmoChat, ChatInputError, ChatTurn

HELP = """commands:
  TEXT                   a text turn
  /audio PATH            a spoken turn: the audio file at PATH (wav, flac, ogg, mp3)
  /empathetic on|off     switch the empathetic system prompt
  /reset                 start a new conversation
  /help                  this text
  /quit                  leave (or end of input)"""


def emotion_line(turn: ChatTurn) -> str:
    """`emotion: sad (sad 0.62, neutral 0.20, ...)`, highest score first."""
    ranked = sorted(turn.scores.items(), key=lambda item: -item[1])
    return f"emotion: {turn.emotion} (" + ", ".join(f"{label} {score:.2f}" for label, score in ranked) + ")"


def converse(chat: BlspEmoChat, lines: TextIO = sys.stdin, out: TextIO = sys.stdout, prompt: str = "you> ") -> int:
    """Read turns from `lines` until `/quit` or end of input, printing replies to `out`."""
    interactive = lines.isatty()
    print(f"chatting with {chat.model.config.text_config.model_type} BLSP-Emo; /help for commands", file=out)
    while True:
        if interactive:
            print(prompt, end="", file=out, flush=True)
        line = lines.readline()
        if not line or line.strip() == "/quit":
            return 0
        line = line.strip()
        if not line:
            continue
        text, audio = line, None
        if line == "/help":
            print(HELP, file=out)
            continue
        if line == "/reset":
            chat.reset()
            print("(new conversation)", file=out)
            continue
        if line.startswith("/empathetic"):
            setting = line.removeprefix("/empathetic").strip()
            if setting not in ("on", "off"):
                print("error: use /empathetic on or /empathetic off", file=out)
                continue
            chat.empathetic = setting == "on"
            print(f"(empathetic system prompt {setting})", file=out)
            continue
        if line.startswith("/audio"):
            text, audio = None, line.removeprefix("/audio").strip()
            if not audio:
                print("error: /audio needs the path of an audio file", file=out)
                continue
        elif line.startswith("/"):
            print(f"error: unknown command {line.split()[0]!r}; /help lists them", file=out)
            continue
        try:
            stream = chat.stream(text=text, audio=audio)
        except ChatInputError as error:
            print(f"error: {error}", file=out)
            continue
        print("model> ", end="", file=out, flush=True)
        for piece in stream:
            print(piece, end="", file=out, flush=True)
        turn = stream.turn
        print(file=out)
        if turn.emotion is not None:
            print(f"  [{emotion_line(turn)}]", file=out)
        elif turn.no_speech:
            print("  [no speech heard: emotion withheld]", file=out)
        if turn.dropped_turns:
            print(f"  [{turn.dropped_turns} oldest turn(s) dropped to fit {chat.max_context_tokens} tokens]", file=out)


__all__ = ["converse", "emotion_line"]
