"""The word-choice judge, the reply measures built on it, and the judge-free reply measures."""

import pytest
import torch

import trainers.evaluation.replies as replies_module
from trainers.evaluation.judge import (
    WordChoiceJudge,
    binomial_tail,
    emotion_agreement,
    judge_emotions,
    judge_on_topic,
    on_topic_chance,
    on_topic_verdicts,
)
from trainers.evaluation.replies import generate_replies, repeats_ngram, repetition_share, sentence_retrieval
from trainers.evaluation.shared_prefix import run_prefix, shared_prefix_length

from conftest import noise
from tiny_models import LABELS, FavouringModel, tiny_model, tiny_tokenizer


def test_judge_picks_the_option_whose_first_token_the_model_favours():
    tokenizer = tiny_tokenizer()
    judge = WordChoiceJudge(FavouringModel(len(tokenizer), tokenizer.convert_tokens_to_ids("sad")), tokenizer, batch_size=2)
    scores = judge.choose(["one", "two", "three"], LABELS)
    assert len(scores) == 3 and all(max(s, key=s.get) == "sad" for s in scores)
    assert all(sum(s.values()) == pytest.approx(1.0) for s in scores)
    assert judge_emotions(judge, ["i am fine", "bad day"], LABELS) == ["sad", "sad"]


def test_judge_runs_a_real_chat_model():
    tokenizer = tiny_tokenizer()
    scores = WordChoiceJudge(tiny_model().eval(), tokenizer).choose(["hello world", "the lazy dog"], ["good", "bad"])
    assert [sorted(s) for s in scores] == [["bad", "good"]] * 2


def test_shared_prefix_runs_once_and_gives_the_plain_logits():
    """Chats of different lengths with a common start: the logits after each equal a plain forward of
    that chat alone (the prefix's keys and values are reused, the suffixes right-padded), also after a
    prefix computed once for many calls (`run_prefix`), which those calls leave as it was."""
    tokenizer, model = tiny_tokenizer(), tiny_model().eval()
    judge = WordChoiceJudge(model, tokenizer)
    chats = ["the same opening words then one", "the same opening words then a much longer ending here", "the same opening"]
    rows = [tokenizer(chat, add_special_tokens=False)["input_ids"] for chat in chats]
    assert 0 < shared_prefix_length(rows) < min(map(len, rows))
    unrelated = [tokenizer(chat, add_special_tokens=False)["input_ids"] for chat in ["no shared", "start at all"]]
    with torch.inference_mode():
        plain = torch.stack([model(input_ids=torch.tensor([row])).logits[0, -1] for row in rows])
        assert torch.allclose(judge.next_token_logits(rows), plain, atol=1e-5)
        assert torch.allclose(judge.next_token_logits(unrelated), torch.stack([
            model(input_ids=torch.tensor([row])).logits[0, -1] for row in unrelated
        ]), atol=1e-5)  # fmt: skip
        prefix = run_prefix(model, rows[0][:2])
        for _ in range(2):  # the cached prefix is reused, not extended in place
            assert torch.allclose(judge.next_token_logits(rows, prefix), plain, atol=1e-5)
        assert prefix.cache.get_seq_length() == 2
        with pytest.raises(ValueError, match="cached prefix"):
            judge.next_token_logits(unrelated, prefix)
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2  # identical rows keep a token each
    assert shared_prefix_length([[1], [1, 2]]) == 0
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5]], limit=1) == 1


def test_choose_gives_the_same_scores_in_any_batching():
    """`choose` runs the questions' common start once for the whole set: the scores are those of
    each question asked alone."""
    tokenizer, model = tiny_tokenizer(), tiny_model().eval()
    questions = [f"the same long instruction for every question, then item {word}" for word in ("one", "two", "three", "four", "five")]
    alone = [WordChoiceJudge(model, tokenizer).choose([question], ["good", "bad"])[0] for question in questions]
    batched = WordChoiceJudge(model, tokenizer, batch_size=2).choose(questions, ["good", "bad"])
    for single, together in zip(alone, batched):
        assert together == pytest.approx(single, abs=1e-5)


def test_options_must_start_with_distinct_tokens():
    tokenizer = tiny_tokenizer()
    judge = WordChoiceJudge(FavouringModel(len(tokenizer), 0), tokenizer)
    with pytest.raises(ValueError, match="distinct tokens"):
        judge.choose(["q"], ["hello", "hello world"])


def test_on_topic_compares_the_own_transcript_with_rivals():
    """A reply is on topic when the judge finds it more about its own transcript than about each rival;
    a reply the judge says "yes" to whatever the transcript (generic) is not."""
    seen, groups = [], []

    class Scripted:
        def choose(self, questions, options, desc="", group_size=None):
            groups.append(group_size)
            seen.extend(questions)
            scores = []
            for question in questions:
                reply, said = question.split('"')[1], question.split('"')[3]
                shared = len(set(said.split()) & set(reply.split()))
                scores.append({"yes": 0.9 if reply.startswith("I'm so sorry") else 0.2 + 0.1 * shared, "no": 0.1})
            return scores

    transcripts = ["the bakery opens", "the flight was late", "a puppy at the shelter", "rain in the park", "the bakery opens"]
    replies = ["fresh bakery bread", "a fireplace", "the puppy sleeps", "I'm so sorry for your loss.", "the flight was fine"]
    assert judge_on_topic(Scripted(), transcripts, replies) == [True, False, True, False, False]
    assert len(seen) == 4 * len(replies)  # own transcript + 3 rivals each
    assert '"the bakery opens"' in seen[0] and '"the flight was late"' in seen[1]
    assert on_topic_chance(transcripts) == 0.25
    assert judge_on_topic(Scripted(), ["only one", "only one"], ["x", "y"]) == [True, True]
    assert on_topic_chance(["only one"]) == 1.0
    assert groups == [4, 1]  # the questions about one reply are judged together (own + rivals)


def test_normalized_on_topic_removes_the_judges_favourite_sentence():
    """A judge that says "yes" more to one sentence whatever the reply makes the same reply for every
    clip "on topic" for that sentence's clips; normalized per sentence, identical replies tie (never on
    topic) and a reply about its own sentence still wins."""
    sentences = ["bakery opens early", "flight was late", "puppy sleeps outside"]
    favoured = {"bakery opens early": 0.3, "flight was late": 0.0, "puppy sleeps outside": 0.0}

    def scores(reply):
        about = {s: 0.2 + 0.3 * bool(set(s.split()) & set(reply.split())) for s in sentences}
        return {s: about[s] + favoured[s] for s in sentences}

    transcripts = sentences * 2
    constant = [scores("tone is calm") for _ in transcripts]
    assert on_topic_verdicts(constant, transcripts) == [True, False, False] * 2
    assert on_topic_verdicts(constant, transcripts, normalized=True) == [False] * 6
    relevant = [scores(reply) for reply in ["fresh bread", "late flight", "puppy naps"] * 2]
    assert on_topic_verdicts(relevant, transcripts, normalized=True) == [True] * 6
    assert on_topic_verdicts(relevant, transcripts) == [True, False, False] * 2  # the favourite wins unnormalized


def test_binomial_tail_and_agreement():
    assert binomial_tail(10, 10, 0.5) == pytest.approx(1 / 1024)
    assert binomial_tail(0, 10, 0.2) == pytest.approx(1.0)
    result = emotion_agreement(["sad", "sad", "happy", "angry"], ["sad", "happy", "happy", "angry"], 0.2)
    assert result["accuracy"] == 0.75 and result["clips"] == 4
    assert result["p_value"] == pytest.approx(binomial_tail(3, 4, 0.2))


def test_repetition_is_a_repeated_word_four_gram():
    loop = "I'm so sorry for any inconvenience you're going to have. I'm so sorry for any problems."
    assert repeats_ngram(loop)
    assert not repeats_ngram("The bakery on the corner opens at six and sells fresh bread.")
    assert not repeats_ngram("so so so")  # shorter than a 4-gram
    assert repetition_share([loop, "fresh bread today", loop, "ok"]) == 0.5


def test_generate_replies_gives_one_text_per_clip(processor):
    model = tiny_model().eval()
    texts = generate_replies(model, processor, [{"array": noise(8000, i), "sampling_rate": 16000} for i in range(3)],
                             "continue the following sentence", batch_size=2, max_new_tokens=4)
    assert len(texts) == 3 and all(isinstance(text, str) for text in texts)


def test_sentence_retrieval_is_normalized_per_candidate(monkeypatch):
    # "the dog" continuation is likeliest for every clip; each clip raises its own sentence's a little.
    own_bonus = {"a.wav": "one", "b.wav": "two", "c.wav": "three"}
    base = {"one cont": -2.0, "two cont": -1.0, "three cont": -2.0}

    def scripted(model, processor, audio, candidates, instruction):
        return [base[c] + (0.5 if c.startswith(own_bonus[audio]) else 0.0) for c in candidates]

    monkeypatch.setattr(replies_module, "continuation_log_likelihoods", scripted)
    rows = [{"audio": a, "text": t} for a, t in own_bonus.items()] + [{"audio": "d.wav", "text": "unknown"}]
    result = sentence_retrieval(None, None, rows, {"one": "one cont", "two": "two cont", "three": "three cont"})
    assert result == {"accuracy": 1.0, "clips": 3, "sentences": 3, "chance": pytest.approx(1 / 3)}
