"""`BlspEmoChat`: multi-turn speech/text chat that reuses the KV cache, and `blsp-emo chat`."""

import io

import numpy as np
import pytest
import soundfile
import torch

from modeling_blsp_emo import REPLY_GENERATION_DEFAULTS
from modeling_blsp_emo.prompts import EMPATHETIC_SYSTEM_PROMPT
from trainers.cli.main import main
from trainers.inference.chat import BlspEmoChat, ChatInputError

from tiny_models import PAD_TOKEN_ID, random_clip, tiny_model, voice_like

NEW_TOKENS = 6


def spoken(seconds: float, seed: int, text: str | None = None) -> dict:
    return dict(text=text, audio=voice_like(seconds, seed), sampling_rate=16000)


# Speech, text, text with speech, text, speech.
TURNS = [spoken(1.0, 1), dict(text="hello world"), spoken(1.5, 2, "the dog"), dict(text="good day"), spoken(0.8, 3)]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def new_chat(model, processor, **kwargs) -> BlspEmoChat:
    return BlspEmoChat(model, processor, max_new_tokens=NEW_TOKENS, generate_kwargs={"do_sample": False}, **kwargs)


def conversation_clips(chat: BlspEmoChat) -> list[np.ndarray]:
    return [
        item["audio"] for message in chat.messages() if message["role"] == "user"
        for item in message["content"] if item["type"] == "audio"
    ]  # fmt: skip


def from_scratch(model, processor, chat: BlspEmoChat) -> list[int]:
    """Greedy reply to the chat's last prompt (its own token ids), run without any cache and with
    every clip of the conversation encoded anew."""
    prompt = chat.token_ids[: len(chat.token_ids) - len(chat.turns[-1].reply_ids)]
    input_ids = torch.tensor([prompt])
    clips = conversation_clips(chat)
    audio = processor.audio_features(clips) if clips else {}
    output = model.generate(
        input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **audio,
        max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=PAD_TOKEN_ID, **REPLY_GENERATION_DEFAULTS,
    )  # fmt: skip
    return output[0, len(prompt) :].tolist()


def test_each_reply_equals_a_from_scratch_run_of_the_whole_conversation(model, processor):
    chat = new_chat(model, processor)
    for index, turn in enumerate(TURNS):
        result = chat.send(**turn)
        assert result.reply_ids == from_scratch(model, processor, chat)
        assert result.rebuilt == (index == 0)
        if index:  # only the new turn's tokens (and the last reply token, never fed back) are computed
            assert result.computed_tokens < result.prompt_tokens - 10
        # The cache holds exactly the conversation's tokens but the last generated one.
        assert chat.num_cached_tokens == len(chat.token_ids) - 1


def test_a_turn_encodes_only_its_own_audio_and_matches_re_encoding_everything(model, processor, monkeypatch):
    encoded = []
    original = model.model.get_audio_features

    def counting(features, *args, **kwargs):
        encoded.append(features.shape[0])
        return original(features, *args, **kwargs)

    monkeypatch.setattr(model.model, "get_audio_features", counting)
    reuse, again = new_chat(model, processor), new_chat(model, processor, reuse_cache=False)
    counts = {}
    for name, chat in (("reuse", reuse), ("re-encode", again)):
        encoded.clear()
        replies = [chat.send(**turn).reply_ids for turn in TURNS]
        counts[name] = (list(encoded), replies)
    assert counts["reuse"][0] == [1, 1, 1]  # one clip per spoken turn
    assert counts["re-encode"][0] == [1, 1, 2, 2, 3]  # every past clip, every turn
    assert counts["reuse"][1] == counts["re-encode"][1]


def test_a_changed_system_prompt_makes_the_next_turn_encode_everything_again(model, processor):
    chat = new_chat(model, processor)
    for turn in TURNS[:2]:
        chat.send(**turn)
    chat.empathetic = True
    result = chat.send(text="good day")
    assert result.rebuilt and result.computed_tokens == result.prompt_tokens
    assert EMPATHETIC_SYSTEM_PROMPT.split()[-1] in processor.decode(chat.token_ids)
    assert result.reply_ids == from_scratch(model, processor, chat)
    assert not chat.send(text="hello world").rebuilt  # and continues from the new cache


def test_history_is_trimmed_by_whole_oldest_turns_to_the_token_budget(model, processor):
    budget = 80
    chat = new_chat(model, processor, max_context_tokens=budget)
    results = [chat.send(**turn) for turn in TURNS + TURNS[1:3]]
    trimmed = [result for result in results if result.dropped_turns]
    assert trimmed, "the conversation never reached the budget"
    for result in results:
        assert result.prompt_tokens + NEW_TOKENS <= budget
    assert all(result.rebuilt for result in trimmed)
    # What is left are whole turns: user and assistant alternate, and each kept user turn is the
    # complete content of one of the turns sent.
    messages = chat.messages()
    assert [m["role"] for m in messages] == ["user", "assistant"] * len(chat.turns)
    kept = [turn.text for turn in chat.turns]
    sent_texts = [(turn["text"] or "") for turn in TURNS + TURNS[1:3]]
    assert kept == sent_texts[len(sent_texts) - len(kept) :]
    assert results[-1].reply_ids == from_scratch(model, processor, chat)


def test_a_turn_over_the_budget_is_refused_and_the_conversation_kept(model, processor):
    with pytest.raises(ChatInputError, match="over the budget of 60 tokens"):
        new_chat(model, processor, max_context_tokens=60).send(**spoken(8.0, 4))  # 50 speech embeddings
    chat = new_chat(model, processor, max_context_tokens=60)
    chat.send(text="hello world")
    before = list(chat.token_ids)
    with pytest.raises(ChatInputError, match="over the budget of 60 tokens"):
        chat.send(**spoken(8.0, 4))
    assert chat.token_ids == before
    assert not chat.send(text="good day").rebuilt


def test_streaming_yields_the_reply_as_it_is_generated(model, processor):
    streamed, plain = new_chat(model, processor), new_chat(model, processor)
    for turn in TURNS[:3]:
        stream = streamed.stream(**turn)
        pieces = list(stream)
        expected = plain.send(**turn)
        assert stream.turn.reply_ids == expected.reply_ids
        assert "".join(pieces).strip() == stream.turn.reply == expected.reply
        assert len(pieces) > 1


@pytest.mark.parametrize(
    "turn, message",
    [
        (dict(), "nothing to send"),
        (dict(text="   "), "nothing to send"),
        (dict(audio=np.zeros(16000, np.float32), sampling_rate=16000), "empty or silent"),
        (dict(audio=random_clip(200), sampling_rate=16000), "empty or silent"),
        (dict(audio=b"this is not audio"), "could not decode audio"),
        (dict(audio=random_clip(16000), sampling_rate=None), "needs sampling_rate"),
        (spoken(3.0, 5), "over the limit of 2 s"),
        (dict(text="hi <|audio|>"), "audio placeholder"),
    ],
)
def test_bad_input_is_refused_and_the_conversation_continues(model, processor, turn, message):
    chat = new_chat(model, processor, max_audio_seconds=2)
    chat.send(**TURNS[0])
    before = list(chat.token_ids)
    with pytest.raises(ChatInputError, match=message):
        chat.send(**turn)
    assert chat.token_ids == before
    result = chat.send(text="hello world")
    assert not result.rebuilt and result.reply_ids == from_scratch(model, processor, chat)


def test_spoken_turns_carry_the_emotion_head_label_and_scores(model, processor):
    chat = new_chat(model, processor)
    text_turn = chat.send(text="hello world")
    spoken_turn = chat.send(**TURNS[2])
    assert text_turn.emotion is None and text_turn.scores is None
    features = processor.audio_features([TURNS[2]["audio"]])
    with torch.no_grad():
        embeds, lengths = model.model.get_audio_features(features["input_features"], features["feature_attention_mask"])
        probs = model.classify_emotion(embeds, lengths).softmax(-1)[0]
    assert list(spoken_turn.scores) == model.config.emotion_labels
    assert list(spoken_turn.scores.values()) == pytest.approx(probs.tolist(), abs=1e-5)
    assert spoken_turn.emotion == model.config.emotion_labels[int(probs.argmax())]


def test_a_failed_generation_leaves_a_chat_that_starts_afresh(model, processor, monkeypatch):
    chat = new_chat(model, processor)
    chat.send(**TURNS[0])
    monkeypatch.setattr(model, "generate", lambda *args, **kwargs: (_ for _ in ()).throw(RuntimeError("out of memory")))
    with pytest.raises(RuntimeError, match="out of memory"):
        chat.send(text="hello world")
    monkeypatch.undo()
    result = chat.send(text="good day")
    assert result.rebuilt and result.reply_ids == from_scratch(model, processor, chat)


def test_chat_command_converses_over_standard_input(saved_checkpoint, tmp_path, monkeypatch, capsys):
    clip, hum = tmp_path / "clip.wav", tmp_path / "hum.wav"
    soundfile.write(clip, voice_like(1.25, 1), 16000)
    soundfile.write(hum, random_clip(20000, 1), 16000)  # a steady tone in noise: no speech
    lines = ["hello world", f"/audio {clip}", f"/audio {hum}", "/audio missing.wav", "/empathetic on", "good day",
             "/bogus", "/quit"]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    assert main(["chat", "--model", str(saved_checkpoint), "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert out.count("model> ") == 4
    assert out.count("[emotion: ") == 1
    assert out.count("[no speech heard: emotion withheld]") == 1
    assert "error: missing.wav: file not found" in out
    assert "(empathetic system prompt on)" in out
    assert "error: unknown command '/bogus'" in out


def test_chat_and_serve_check_spoken_turns_for_speech_by_default():
    from trainers.cli.main import build_parser

    assert build_parser().parse_args(["chat", "--model", "m"]).detect_speech is True
    assert build_parser().parse_args(["serve", "--model", "m", "--no-speech-check"]).detect_speech is False
