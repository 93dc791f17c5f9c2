"""`blsp-emo serve`: a Gradio web app for chatting with a BLSP-Emo model, on 127.0.0.1 only.

Speak into the microphone or upload an audio file, type text, or both; switch the empathetic system
prompt on or off. Replies stream as they are generated, and every spoken turn shows the emotion
head's label and scores. Each browser session has its own [`BlspEmoChat`] (one shared model), so a
new turn reuses the KV cache of that session's conversation.

Offline by design: Gradio's analytics are disabled (before Gradio is imported), nothing is shared,
and the default theme's fonts are served by the app itself.
"""

import logging
import os
import socket
from collections.abc import Callable, Iterator

from trainers.inference.chat import BlspEmoChat, ChatInputError, ChatTurn

HOST = "127.0.0.1"
MAX_UPLOAD = "50mb"  # Gradio refuses larger uploads itself; the chat refuses audio over max_audio_seconds


def _gradio():
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    import gradio

    return gradio


def user_bubble(text: str | None, spoken: bool, turn: ChatTurn | None = None) -> str:
    """What the chat window shows for a user turn: the text, a marker for speech and, once the
    turn has run, the speech's length and the emotion head's label and scores."""
    lines = [text.strip()] if text and text.strip() else []
    if spoken:
        lines.append("*[speech]*" if turn is None else f"*[speech, {turn.audio_seconds:.1f} s]*")
    if turn is not None and turn.no_speech:
        lines.append("no speech heard: emotion withheld")
    if turn is not None and turn.emotion is not None:
        ranked = sorted(turn.scores.items(), key=lambda item: -item[1])
        scores = ", ".join(f"{label} {score:.0%}" for label, score in ranked)
        lines.append(f"emotion: **{turn.emotion}** ({scores})")
    return "\n\n".join(lines)


def status_line(turn: ChatTurn) -> str:
    how = "whole conversation encoded" if turn.rebuilt else "continued from the cache"
    line = f"reply in {turn.seconds:.1f} s · {turn.computed_tokens} of {turn.prompt_tokens} prompt tokens computed ({how})"
    if turn.dropped_turns:
        line += f" · {turn.dropped_turns} oldest turn(s) dropped to fit the token budget"
    if turn.no_speech:
        line += " · ⚠️ no speech heard in the audio (noise, silence or music?): emotion withheld"
    return line


class ChatApp:
    """The event handlers of the web app, for chats made by `make_chat` (one per browser session)."""

    def __init__(self, make_chat: Callable[[], BlspEmoChat]):
        self.make_chat = make_chat

    def respond(self, text: str, audio: str | None, empathetic: bool, history: list, chat: BlspEmoChat | None) -> Iterator:
        """Run one turn; yields (chat window, session chat, text box, audio input, emotion, status)."""
        gr = _gradio()
        chat = chat or self.make_chat()
        chat.empathetic = empathetic
        try:
            stream = chat.stream(text=text, audio=audio)
        except ChatInputError as error:
            # Unusable audio is cleared so that the next recording or upload starts afresh.
            yield history, chat, gr.skip(), None, gr.skip(), f"⚠️ **Could not send this turn:** {error}"
            return
        history = history + [
            {"role": "user", "content": user_bubble(text, audio is not None)},
            {"role": "assistant", "content": ""},
        ]
        yield history, chat, "", None, gr.skip(), "generating…"
        reply = ""
        try:
            for piece in stream:
                reply += piece
                history[-1] = {"role": "assistant", "content": reply}
                yield history, chat, gr.skip(), gr.skip(), gr.skip(), "generating…"
            turn = stream.turn
        except Exception as error:
            # The chat kept nothing of this turn (and starts afresh next time): neither does the
            # window, and the user's input comes back for another try.
            yield history[:-2], chat, text, audio, gr.skip(), f"⚠️ **Generation failed:** {error}"
            return
        history[-2] = {"role": "user", "content": user_bubble(turn.text, turn.audio_seconds is not None, turn)}
        history[-1] = {"role": "assistant", "content": turn.reply or "*(empty reply)*"}
        # A turn without speech clears the previous turn's emotion rather than leaving it on show.
        emotion = turn.scores if turn.emotion is not None else None if turn.no_speech else gr.skip()
        yield history, chat, gr.skip(), gr.skip(), emotion, status_line(turn)

    def clear(self, chat: BlspEmoChat | None) -> tuple:
        if chat is not None:
            chat.reset()
        return [], chat, "", None, None, "new conversation"


def build_app(make_chat: Callable[[], BlspEmoChat], title: str = "BLSP-Emo chat", empathetic: bool = False):
    """The Gradio `Blocks` of the chat app; `make_chat` builds each browser session's chat and
    `empathetic` is the toggle's initial setting."""
    gr = _gradio()
    handlers = ChatApp(make_chat)
    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(f"## {title}\nSpeak, upload an audio file or type; the model hears how you say it.")
        chat_state = gr.State(None)
        chatbot = gr.Chatbot(
            elem_id="chatbot", label="Conversation", height=340, feedback_options=None, buttons=["copy", "copy_all"]
        )
        with gr.Row():
            audio = gr.Audio(
                sources=["upload", "microphone"], type="filepath", label="Speech (upload or record)", elem_id="audio_input",
                scale=2,
            )  # fmt: skip
            with gr.Column(scale=2):
                text = gr.Textbox(
                    label="Message", placeholder="Type a message (optional with speech)", lines=2, elem_id="text_input"
                )
                empathetic = gr.Checkbox(label="Empathetic mode", value=empathetic, elem_id="empathetic")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    clear = gr.Button("New conversation", elem_id="clear")
                status = gr.Markdown(elem_id="status")
            emotion = gr.Label(label="Emotion of the last spoken turn", num_top_classes=5, elem_id="emotion", scale=2)
        inputs = [text, audio, empathetic, chatbot, chat_state]
        outputs = [chatbot, chat_state, text, audio, emotion, status]
        for trigger in (send.click, text.submit):
            trigger(handlers.respond, inputs, outputs, concurrency_limit=1, show_progress="hidden")
        clear.click(handlers.clear, [chat_state], outputs)
    return app


def free_port(host: str = HOST) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def launch(app, port: int | None = None, block: bool = True) -> str:
    """Serve `app` on 127.0.0.1 (`port` None or 0: a free port); returns the URL. No share link,
    no analytics, no server-side rendering (which would need Node)."""
    port = port or free_port()
    app.queue().launch(
        server_name=HOST, server_port=port, share=False, inbrowser=False, prevent_thread_lock=not block,
        max_file_size=MAX_UPLOAD, ssr_mode=False, quiet=True, allowed_paths=[], footer_links=[],
    )  # fmt: skip
    return f"http://{HOST}:{port}/"


def serve(first: BlspEmoChat, *, title: str, port: int = 7860, empathetic: bool = False) -> int:
    """Serve the chat app until interrupted. Each browser session gets its own conversation on
    `first`'s model and settings (the model is loaded once and shared)."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own requests to itself
    model, processor = first.model, first.processor
    settings = dict(
        max_new_tokens=first.max_new_tokens, max_context_tokens=first.max_context_tokens,
        max_audio_seconds=first.max_audio_seconds, detect_speech=first.detect_speech,
    )  # fmt: skip

    def make_chat() -> BlspEmoChat:
        return BlspEmoChat(model, processor, **settings)

    app = build_app(make_chat, title=title, empathetic=empathetic)
    port = port or free_port()
    print(f"serving on http://{HOST}:{port}/ (Ctrl+C to stop)", flush=True)
    launch(app, port, block=True)
    return 0


__all__ = ["ChatApp", "build_app", "free_port", "launch", "serve", "status_line", "user_bubble"]
