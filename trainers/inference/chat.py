"""Multi-turn chat with a BLSP-Emo model: speech and text turns, the KV cache reused across turns.

The original release re-encoded every past audio turn and re-ran the whole conversation on each new
turn. Here the conversation's KV cache is kept: a new turn computes only its own tokens (the text the
chat template adds for it, and the speech embeddings of its own audio), so its cost does not grow
with the number of past turns.

How a turn continues the cache. The chat keeps `token_ids`, the tokens of the conversation so far
(the cache holds all of them but the last generated one, which `generate` never feeds back), and
`_text`, the template text those tokens stand for. The new turn renders the whole conversation with
the chat template; if the rendering starts with `_text`, only the rest (the end of the previous reply
as the template writes it, the new user turn, the generation prompt) is tokenized and appended, and
only the new audio is encoded. If the template rewrote earlier text (a new system prompt, a template
that trims old replies) or the history no longer fits the token budget (whole oldest turns are then
dropped), the conversation is tokenized and encoded again from scratch.
"""

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache, TextIteratorStreamer

from modeling_blsp_emo import AudioInputError, BlspEmoForConditionalGeneration, BlspEmoProcessor, load_audio
from modeling_blsp_emo.prompts import system_prompt as preset_system_prompt
from modeling_blsp_emo.reply_generation import REPLY_GENERATION_DEFAULTS
from modeling_blsp_emo.speech_activity import has_speech
from modeling_blsp_emo.speech_lengths import MIN_SAMPLES, SAMPLING_RATE

DEFAULT_MAX_NEW_TOKENS = 128
DEFAULT_MAX_AUDIO_SECONDS = 120.0


class ChatInputError(ValueError):
    """A chat turn that cannot be answered as given (empty, unusable audio, over the token budget);
    the message says what to change. The conversation is left as it was."""


@dataclass
class ChatTurn:
    """One exchange of a [`BlspEmoChat`]: the user's turn and the model's reply.

    `prompt_tokens` counts the conversation's tokens before the reply; `computed_tokens` how many of
    them this turn had to compute (the rest came from the KV cache). `rebuilt` is true when the whole
    conversation was encoded again (first turn, rewritten template text, trimmed history, or
    `reuse_cache=False`); `dropped_turns` is the number of oldest turns dropped to fit the budget.
    `no_speech` is true when the chat detects speech and heard none in the turn's audio (noise,
    silence, music); its `emotion` and `scores` are then None.
    """

    text: str
    audio_seconds: float | None
    reply: str
    reply_ids: list[int]
    emotion: str | None
    scores: dict[str, float] | None
    prompt_tokens: int
    computed_tokens: int
    rebuilt: bool
    dropped_turns: int
    seconds: float
    no_speech: bool = False


@dataclass
class _Exchange:
    user: list[dict[str, Any]]  # content items; audio as 16-kHz float32 arrays
    reply: str = ""  # the reply as the chat template shows it (special tokens kept)
    turn: ChatTurn | None = None


@dataclass
class _Pending:
    """A validated turn, ready to run: the token ids and audio features it appends."""

    exchange: _Exchange
    token_ids: list[int]
    text: str  # template text of `token_ids`
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    cache: DynamicCache | None = None
    rebuilt: bool = False
    dropped_turns: int = 0
    num_new_clips: int = 0
    no_speech: bool = False  # the turn's audio holds no speech (emotion withheld)


def conversation_of(exchanges: list[_Exchange]) -> list[dict[str, Any]]:
    """Chat messages of `exchanges` (the last one's reply left out while it is being answered)."""
    messages = []
    for exchange in exchanges:
        messages.append({"role": "user", "content": exchange.user})
        if exchange.turn is not None:
            messages.append({"role": "assistant", "content": exchange.reply})
    return messages


class ChatStream:
    """The streamed reply of one turn: iterate for text pieces as they are generated, then read `turn`."""

    def __init__(self, streamer: TextIteratorStreamer, thread: threading.Thread, outcome: dict):
        self._streamer, self._thread, self._outcome = streamer, thread, outcome

    def __iter__(self) -> Iterator[str]:
        yield from self._streamer
        self._thread.join()
        if "error" in self._outcome:
            raise self._outcome["error"]

    @property
    def turn(self) -> ChatTurn:
        """The finished turn (waits for generation to end; re-raises its error)."""
        self._thread.join()
        if "error" in self._outcome:
            raise self._outcome["error"]
        return self._outcome["turn"]


class BlspEmoChat:
    """A conversation of mixed speech and text turns with one BLSP-Emo model.

    ```python
    chat = BlspEmoChat(model, processor, empathetic=True, max_new_tokens=64)
    turn = chat.send(audio="question.wav")            # ChatTurn: reply, emotion, scores, timings
    turn = chat.send("And what should I do now?")      # text turn, continues from the cache
    for piece in (stream := chat.stream(audio=array, sampling_rate=44100)):
        print(piece, end="")
    stream.turn.emotion
    ```

    Args:
        model, processor: a BLSP-Emo model and its processor.
        system_prompt: the system message; default the release's neutral or `empathetic` prompt.
        max_new_tokens: reply length limit.
        max_context_tokens: the prompt plus `max_new_tokens` must fit in this many tokens; oldest whole
            turns are dropped until they do. Default: the LLM's `max_position_embeddings`.
        max_audio_seconds: longer audio is refused with a `ChatInputError`.
        reuse_cache: False re-runs the whole conversation (all audio re-encoded) on every turn, as the
            original release did; the replies are the same (for comparisons and benchmarks).
        generate_kwargs: extra `generate` arguments (e.g. `do_sample=False`). Replies are guarded
            against loops by `REPLY_GENERATION_DEFAULTS` (repetition penalty and no repeated 4-gram,
            over the reply's own tokens); pass e.g. `{"no_repeat_ngram_size": 0}` to change them.
        detect_speech: check each turn's audio for speech (`speech_activity.has_speech`, on by default); a turn
            without speech is still answered, but its `ChatTurn` has `no_speech=True` and no emotion.
    """

    def __init__(
        self,
        model: BlspEmoForConditionalGeneration,
        processor: BlspEmoProcessor,
        system_prompt: str | None = None,
        empathetic: bool = False,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        max_context_tokens: int | None = None,
        max_audio_seconds: float = DEFAULT_MAX_AUDIO_SECONDS,
        reuse_cache: bool = True,
        generate_kwargs: dict | None = None,
        detect_speech: bool = True,
    ):
        if system_prompt is not None and empathetic:
            raise ValueError("pass either system_prompt or empathetic=True, not both")
        self.model, self.processor = model, processor
        self.system_prompt = system_prompt if system_prompt is not None else preset_system_prompt(empathetic)
        self.max_new_tokens = max_new_tokens
        text_config = model.config.get_text_config(decoder=True)
        self.max_context_tokens = max_context_tokens or text_config.max_position_embeddings
        self.max_audio_seconds = max_audio_seconds
        self.reuse_cache = reuse_cache
        self.detect_speech = detect_speech
        self.generate_kwargs = {**REPLY_GENERATION_DEFAULTS, **(generate_kwargs or {})}
        eos = model.generation_config.eos_token_id
        eos = processor.tokenizer.eos_token_id if eos is None else eos
        self.eos_token_ids = {eos} if isinstance(eos, int) else set(eos)
        pad = processor.tokenizer.pad_token_id
        self.pad_token_id = min(self.eos_token_ids) if pad is None else pad
        self._lock = threading.Lock()
        self.reset()

    @classmethod
    def from_pretrained(cls, path: str, dtype: str | None = None, **kwargs) -> "BlspEmoChat":
        """A chat with the BLSP-Emo checkpoint at `path` (keyword arguments as for the constructor)."""
        from trainers.checkpoints.loading import load_blsp_emo

        model, processor = load_blsp_emo(path, dtype)
        return cls(model.eval(), processor, **kwargs)

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self._exchanges: list[_Exchange] = []
        self.token_ids: list[int] = []
        self._text = ""
        self._cache: DynamicCache | None = None

    @property
    def empathetic(self) -> bool:
        return self.system_prompt == preset_system_prompt(True)

    @empathetic.setter
    def empathetic(self, value: bool) -> None:
        """Switch between the release's neutral and empathetic system prompts (the next turn then
        encodes the conversation again, since its first message changed)."""
        self.system_prompt = preset_system_prompt(value)

    @property
    def turns(self) -> list[ChatTurn]:
        return [exchange.turn for exchange in self._exchanges]

    @property
    def num_cached_tokens(self) -> int:
        return 0 if self._cache is None else self._cache.get_seq_length()

    def messages(self) -> list[dict[str, Any]]:
        """The conversation in the processor's chat format (audio as 16-kHz arrays)."""
        return conversation_of(self._exchanges)

    def send(
        self, text: str | None = None, audio: Any = None, sampling_rate: int | None = None, streamer=None
    ) -> ChatTurn:
        """Answer one user turn: `text`, `audio` (a path, encoded bytes, or an array with
        `sampling_rate`), or both (the text is said before the speech). Raises `ChatInputError` for
        unusable input, leaving the conversation as it was."""
        with self._lock:
            return self._run(self._prepare(text, audio, sampling_rate), streamer)

    def stream(
        self, text: str | None = None, audio: Any = None, sampling_rate: int | None = None, timeout: float | None = None
    ) -> ChatStream:
        """Like `send`, but generates in a background thread and streams the reply's text. Input
        errors are raised here, before anything runs."""
        self._lock.acquire()
        try:
            pending = self._prepare(text, audio, sampling_rate)
        except BaseException:
            self._lock.release()
            raise
        streamer = TextIteratorStreamer(
            self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=timeout
        )
        outcome: dict = {}

        def work() -> None:
            try:
                outcome["turn"] = self._run(pending, streamer)
            except BaseException as error:  # handed to the consumer by ChatStream
                outcome["error"] = error
                streamer.end()
            finally:
                self._lock.release()

        thread = threading.Thread(target=work, name="blsp-emo-chat", daemon=True)
        thread.start()
        return ChatStream(streamer, thread, outcome)

    # Preparing a turn: validation, template rendering, cache reuse or rebuild, trimming.

    def _prepare(self, text: str | None, audio: Any, sampling_rate: int | None) -> _Pending:
        text = (text or "").strip()
        if not text and audio is None:
            raise ChatInputError("nothing to send: type a message, or record or upload audio")
        if self.processor.audio_token in text:
            raise ChatInputError(f"the text must not contain the audio placeholder {self.processor.audio_token!r}")
        content = [{"type": "text", "text": text}] if text else []
        no_speech = False
        if audio is not None:
            clip = self._load(audio, sampling_rate)
            no_speech = self.detect_speech and not has_speech(clip)
            content.append({"type": "audio", "audio": clip, "sampling_rate": SAMPLING_RATE})
        exchange = _Exchange(content)
        exchanges = self._exchanges + [exchange]
        rendered, clips = self._render(exchanges)
        new_clips = clips[len(clips) - (audio is not None) :]
        if self.token_ids and rendered.startswith(self._text):
            ids, features = self._tokenize(rendered[len(self._text) :], new_clips, add_special_tokens=False)
            if self.reuse_cache:
                pending = _Pending(exchange, self.token_ids + ids, rendered, features, self._cache)
            else:  # the baseline: the same token ids, the whole conversation recomputed from scratch
                features = self.processor.audio_features(clips) if clips else {}
                pending = _Pending(exchange, self.token_ids + ids, rendered, features, rebuilt=True)
        else:
            pending = self._rebuild(exchanges, rendered, clips)
        if len(pending.token_ids) + self.max_new_tokens > self.max_context_tokens:
            pending = self._trim(exchanges, len(pending.token_ids))
        pending.num_new_clips = len(new_clips)
        pending.no_speech = no_speech
        return pending

    def _load(self, audio: Any, sampling_rate: int | None) -> np.ndarray:
        name = os.path.basename(audio) if isinstance(audio, (str, os.PathLike)) else "the audio"
        try:
            clip = load_audio(audio, sampling_rate=sampling_rate, name=name)
        except AudioInputError as error:
            raise ChatInputError(str(error)) from None
        seconds = len(clip) / SAMPLING_RATE
        if len(clip) < MIN_SAMPLES or not np.any(clip):
            raise ChatInputError(f"{name}: the recording is empty or silent ({seconds:.2f} s); record or upload speech")
        if seconds > self.max_audio_seconds:
            raise ChatInputError(f"{name}: {seconds:.0f} s of audio is over the limit of {self.max_audio_seconds:g} s")
        return clip

    def _render(self, exchanges: list[_Exchange]) -> tuple[str, list[np.ndarray]]:
        """The conversation's template text (one placeholder per audio item) and its clips in order."""
        messages, clips, _ = self.processor.render_conversation(conversation_of(exchanges), self.system_prompt)
        text = self.processor.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, chat_template=self.processor.chat_template
        )
        return text, clips

    def _tokenize(
        self, text: str, clips: list[np.ndarray], add_special_tokens: bool
    ) -> tuple[list[int], dict[str, torch.Tensor]]:
        """Token ids of `text` (its placeholders expanded for `clips`) and the clips' features."""
        encoded = self.processor(
            text=text, audio=clips or None, sampling_rate=SAMPLING_RATE, add_special_tokens=add_special_tokens
        )
        ids = encoded.pop("input_ids")[0].tolist()
        encoded.pop("attention_mask")
        return ids, dict(encoded)

    def _rebuild(self, exchanges: list[_Exchange], rendered: str, clips: list[np.ndarray], dropped: int = 0) -> _Pending:
        ids, features = self._tokenize(rendered, clips, add_special_tokens=True)
        return _Pending(exchanges[-1], ids, rendered, features, rebuilt=True, dropped_turns=dropped)

    def _trim(self, exchanges: list[_Exchange], needed: int) -> _Pending:
        """Drop whole oldest exchanges until the prompt (`needed` tokens now) and the reply fit the
        token budget."""
        for dropped in range(1, len(exchanges)):
            kept = exchanges[dropped:]
            rendered, clips = self._render(kept)
            needed = len(self.processor.tokenizer(self.processor.expand_audio_tokens([rendered], clips)[0])["input_ids"])
            if needed + self.max_new_tokens <= self.max_context_tokens:
                return self._rebuild(kept, rendered, clips, dropped)
        raise ChatInputError(
            f"this turn needs {needed} prompt tokens plus {self.max_new_tokens} for the reply, over the budget of "
            f"{self.max_context_tokens} tokens: send shorter text or audio"
        )

    # Running a turn: prefill the uncached tokens (with the new audio), then generate from the cache.

    @torch.inference_mode()
    def _run(self, pending: _Pending, streamer=None) -> ChatTurn:
        start = time.perf_counter()
        cache = pending.cache
        if cache is None:
            cache = DynamicCache(config=self.model.config.get_text_config(decoder=True))
        cached = cache.get_seq_length()
        ids = torch.tensor([pending.token_ids], device=self.model.device)
        if ids[0, -1] == self.model.config.audio_token_id:
            raise RuntimeError("the rendered prompt ends inside an audio item; the chat template is unsuitable")
        try:
            emotion_logits = self._prefill(ids[:, :-1], cache, cached, pending.features)
            generated = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=self.max_new_tokens,
                pad_token_id=self.pad_token_id,
                streamer=streamer,
                cache=cache,
                **self.generate_kwargs,
            )
        except BaseException:
            self._cache = None  # partly extended: never reuse it
            self.token_ids, self._text = [], ""
            raise
        reply_ids = generated[0, ids.shape[1] :].tolist()
        if cache.get_seq_length() != len(pending.token_ids) + len(reply_ids) - 1:
            raise RuntimeError("the KV cache does not hold the conversation's tokens; please report this")
        return self._commit(pending, cache, reply_ids, emotion_logits, cached, time.perf_counter() - start)

    def _prefill(
        self, ids: torch.Tensor, cache: DynamicCache, cached: int, features: dict[str, torch.Tensor]
    ) -> torch.Tensor | None:
        """Run the uncached prompt tokens but the last through the model (the new audio encoded once,
        for the LLM and the emotion head); `generate` then starts from the last one."""
        if ids.shape[1] <= cached:
            return None
        features = {name: value.to(self.model.device) for name, value in features.items()}
        if "input_features" in features:
            features["input_features"] = features["input_features"].to(self.model.dtype)
        outputs = self.model(
            input_ids=ids[:, cached:],
            attention_mask=torch.ones_like(ids),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
            **features,
        )
        return outputs.emotion_logits

    def _commit(
        self, pending: _Pending, cache: DynamicCache, reply_ids: list[int], emotion_logits, cached: int, seconds: float
    ) -> ChatTurn:
        tokenizer = self.processor.tokenizer
        ended = bool(reply_ids) and reply_ids[-1] in self.eos_token_ids
        content_ids = reply_ids[:-1] if ended else reply_ids
        decode = dict(skip_special_tokens=False, clean_up_tokenization_spaces=False)
        exchange = pending.exchange
        exchange.reply = tokenizer.decode(content_ids, **decode)
        emotion = scores = None
        if pending.num_new_clips and emotion_logits is not None and not pending.no_speech:
            probs = self.model.emotion_probabilities(emotion_logits[-1]).tolist()
            scores = dict(zip(self.model.config.emotion_labels, probs))
            emotion = max(scores, key=scores.get)
        audio = next((item["audio"] for item in exchange.user if item["type"] == "audio"), None)
        exchange.turn = ChatTurn(
            text=next((item["text"] for item in exchange.user if item["type"] == "text"), ""),
            audio_seconds=None if audio is None else len(audio) / SAMPLING_RATE,
            reply=tokenizer.decode(reply_ids, skip_special_tokens=True).strip(),
            reply_ids=reply_ids,
            emotion=emotion,
            scores=scores,
            prompt_tokens=len(pending.token_ids),
            computed_tokens=len(pending.token_ids) - cached,
            rebuilt=pending.rebuilt,
            dropped_turns=pending.dropped_turns,
            seconds=seconds,
            no_speech=pending.no_speech,
        )
        kept = self._exchanges[pending.dropped_turns :] if pending.rebuilt else self._exchanges
        self._exchanges = kept + [exchange]
        self.token_ids = pending.token_ids + reply_ids
        self._text = pending.text + exchange.reply + (tokenizer.convert_ids_to_tokens(reply_ids[-1]) if ended else "")
        self._cache = cache if self.reuse_cache else None
        return exchange.turn


__all__ = ["BlspEmoChat", "ChatInputError", "ChatStream", "ChatTurn"]
