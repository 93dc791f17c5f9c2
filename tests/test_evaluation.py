"""SER parsing and metrics, the three SER measures, the cascade baseline and the empathy judge."""

import pytest

from trainers.evaluation.empathy import evaluate_empathy, parse_scores
from trainers.evaluation.plots import plot_confusion
from trainers.evaluation.retrieval import retrieval_predictions
from trainers.evaluation.ser import cascade_predictions, parse_emotion, predict_emotions, ser_metrics

from conftest import noise
from tiny_models import tiny_model, voice_like

LABELS = ["neutral", "happy", "angry", "sad", "surprise"]


def clip(samples: int, seed: int = 0) -> dict:
    return {"array": noise(samples, seed), "sampling_rate": 16000}


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("sad", "sad"),
        ("The emotion tone of the speech is Sad.", "sad"),
        ("I would say the speaker sounds furious.", "angry"),
        ("Happiness.", "happy"),
        ("The speaker is not happy; they sound upset.", "sad"),
        ("It is a surprised tone, maybe also happy", "surprise"),
        ("I cannot tell from this.", None),
        ("", None),
    ],
)
def test_parse_emotion(answer, expected):
    assert parse_emotion(answer, LABELS) == expected


def test_ser_metrics_values():
    metrics = ser_metrics(["sad", "sad", None, "happy"], ["sad", "happy", "happy", "happy"], LABELS)
    assert metrics["accuracy"] == 0.5 and metrics["weighted_accuracy"] == 0.5
    assert metrics["unweighted_accuracy"] == pytest.approx((1 + 1 / 3) / 2)
    assert metrics["unanswered"] == 1
    assert metrics["confusion_matrix"][1] == [0, 1, 0, 1, 0]


def test_confusion_plot_is_written(tmp_path):
    plot_confusion([[3, 1], [0, 4]], ["a", "b"], tmp_path / "cm.png", "test")
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predict_emotions_gives_answer_parse_and_head(processor):
    results = predict_emotions(tiny_model(), processor, [clip(16000, 1), clip(24000, 2), clip(9000, 3)], batch_size=2, max_new_tokens=3)
    assert len(results) == 3
    for result in results:
        assert result["head"] in LABELS and sum(result["head_scores"].values()) == pytest.approx(1, abs=1e-5)
        assert result["parsed"] == parse_emotion(result["answer"], LABELS)


def test_retrieval_picks_the_most_likely_candidate_and_flags_ties(processor):
    candidates = {"neutral": "hello world", "happy": "good day today", "angry": "the dog", "sad": "sad day", "surprise": "the fox"}
    examples = [
        {"audio": clip(16000), "emotion": "sad", "candidates": candidates},
        {"audio": clip(16000), "emotion": "sad", "candidates": {**candidates, "happy": "sad day"}},
    ]
    results = retrieval_predictions(tiny_model(), processor, examples)
    assert results[0]["retrieved"] == max(results[0]["scores"], key=results[0]["scores"].get)
    assert not results[0]["ambiguous"] and results[1]["ambiguous"]
    # identical texts get identical scores
    assert results[1]["scores"]["happy"] == pytest.approx(results[1]["scores"]["sad"], abs=1e-5)


def test_cascade_answers_from_the_transcript(processor):
    heard = []

    def transcribe(clip):
        heard.append(len(clip))
        return "i am fine"

    results = cascade_predictions(transcribe, tiny_model(), processor.tokenizer, [clip(16000), clip(8000)], LABELS)
    assert heard == [16000, 8000]
    assert [r["transcript"] for r in results] == ["i am fine", "i am fine"]


@pytest.mark.parametrize(
    "judgement, expected",
    [
        ("Quality: 8\nEmpathy: 6", {"quality": 8.0, "empathy": 6.0}),
        ("quality = 7/10, empathy: 9.5", {"quality": 7.0, "empathy": 9.5}),
        ("Quality: 12\nEmpathy: none", {"quality": None, "empathy": None}),
    ],
)
def test_parse_judge_scores(judgement, expected):
    assert parse_scores(judgement) == expected


def test_empathy_evaluation_with_a_scripted_judge(processor):
    prompts = []

    def judge(prompt):
        prompts.append(prompt)
        return "Quality: 6\nEmpathy: 9" if "sounded sad" in prompt else "I refuse to grade."

    examples = [
        {"audio": clip(16000, 1), "text": "help me plan my day", "emotion": "sad"},
        {"audio": clip(16000, 2), "text": "tell me a joke", "emotion": "happy"},
    ]
    rows, summary = evaluate_empathy(tiny_model(), processor, examples, judge, max_new_tokens=3)
    assert 'The user said: "help me plan my day"' in prompts[0] and "sounded sad" in prompts[0]
    assert rows[0]["response"] in prompts[0]
    assert summary["sad"]["empathy"] == 9 and summary["happy"]["empathy"] is None
    assert summary["all"] == {"count": 2, "quality": 6.0, "quality_unscored": 1, "empathy": 9.0, "empathy_unscored": 1}


def test_evaluate_ser_command_writes_predictions_metrics_and_plots(saved_checkpoint, tmp_path, capsys):
    import json

    import soundfile

    from trainers.cli.main import main

    rows = []
    for index, emotion in enumerate(["sad", "ang", "hap"]):
        soundfile.write(tmp_path / f"{index}.wav", voice_like(0.75, index), 16000)
        rows.append({"audio": f"{index}.wav", "emotion": emotion})
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(["evaluate-ser", "--model", str(saved_checkpoint), "--data", str(tmp_path / "test.jsonl"),
                 "--output", str(tmp_path / "out"), "--batch-size", "2"]) == 0
    assert "ECE" in capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "ser_metrics.json").read_text())
    assert summary["num_examples"] == 3 and 0 <= summary["metrics"]["accuracy"] <= 1
    assert summary["metrics"]["no_speech"] == 0 and 0 <= summary["metrics"]["ece"] <= 1
    predictions = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [p["emotion"] for p in predictions] == ["sad", "angry", "happy"]
    assert (tmp_path / "out" / "confusion_head.png").is_file()


def test_evaluate_ser_head_only_runs_the_fast_path_and_labels_as_the_full_model(saved_checkpoint, tmp_path, monkeypatch, capsys):
    import json

    import soundfile

    from modeling_blsp_emo import BlspEmoForConditionalGeneration
    from trainers.cli.main import main

    rows = []
    for index, emotion in enumerate(["sad", "angry", "happy", "neutral"]):
        soundfile.write(tmp_path / f"{index}.wav", voice_like(0.75 + 0.25 * index, index), 16000)
        rows.append({"audio": f"{index}.wav", "emotion": emotion})
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    command = ["evaluate-ser", "--model", str(saved_checkpoint), "--data", str(tmp_path / "test.jsonl"), "--batch-size", "3"]
    assert main([*command, "--output", str(tmp_path / "full")]) == 0

    def no_llm(*args, **kwargs):
        raise AssertionError("--head-only loaded the full model")

    monkeypatch.setattr(BlspEmoForConditionalGeneration, "from_pretrained", no_llm)
    assert main([*command, "--output", str(tmp_path / "fast"), "--head-only"]) == 0
    full, fast = (json.loads((tmp_path / name / "ser_metrics.json").read_text()) for name in ("full", "fast"))
    assert set(fast["all"]) == {"head"} and fast["metrics"]["accuracy"] == full["metrics"]["accuracy"]
    assert fast["metrics"]["ece"] == pytest.approx(full["metrics"]["ece"], abs=1e-5)
    predictions = {name: [json.loads(line) for line in (tmp_path / name / "predictions.jsonl").read_text().splitlines()]
                   for name in ("full", "fast")}
    for slow_row, fast_row in zip(predictions["full"], predictions["fast"]):
        assert fast_row["head"] == slow_row["head"] and fast_row["answer"] is None
        assert list(fast_row["head_scores"].values()) == pytest.approx(list(slow_row["head_scores"].values()), abs=1e-5)
    assert not (tmp_path / "fast" / "confusion_generative.png").exists()
    capsys.readouterr()
    assert main([*command, "--output", str(tmp_path / "bad"), "--head-only", "--targets", str(tmp_path)]) == 2
    assert "--targets (retrieval) needs the LLM" in capsys.readouterr().err


def test_normalized_retrieval_removes_how_likely_each_text_is_in_itself(monkeypatch):
    from types import SimpleNamespace

    import trainers.evaluation.retrieval as retrieval_module

    # "sad day" is the likeliest text for every clip; the voices move the scores around it.
    scores = {
        "a.wav": {"neutral": -3.0, "happy": -2.6, "angry": -3.0, "sad": -1.0, "surprise": -3.0},
        "b.wav": {"neutral": -3.0, "happy": -2.0, "angry": -3.0, "sad": -1.4, "surprise": -3.0},
        "c.wav": {"neutral": -3.0, "happy": -2.0, "angry": -3.0, "sad": -0.9, "surprise": -3.0},
    }

    def scripted(model, processor, examples):
        return [{"retrieved": max(scores[e["audio"]], key=scores[e["audio"]].get), "scores": scores[e["audio"]],
                 "ambiguous": False} for e in examples]

    monkeypatch.setattr(retrieval_module, "retrieval_predictions", scripted)
    model = SimpleNamespace(config=SimpleNamespace(emotion_labels=LABELS))
    targets = {(text, label): f"{text} {label}" for text in ("one", "two") for label in LABELS}
    rows = [{"audio": "a.wav", "text": "one", "emotion": "sad"}, {"audio": "b.wav", "text": "one", "emotion": "happy"},
            {"audio": "c.wav", "text": "two", "emotion": "sad"}, {"audio": "d.wav", "text": "three", "emotion": "sad"}]
    per_row, summary = retrieval_module.target_retrieval(model, None, rows, targets)
    assert [r["retrieved"] for r in per_row[:3]] == ["sad", "sad", "sad"] and per_row[3] is None
    assert per_row[0]["retrieved_normalized"] == "sad" and per_row[1]["retrieved_normalized"] == "happy"
    assert summary["clips"] == 3 and summary["accuracy"] == pytest.approx(2 / 3)
    # a sentence heard once has nothing to normalize against: its scores centre to zero (a miss here)
    assert summary["normalized_accuracy"] == pytest.approx(2 / 3)


def test_reply_log_likelihoods_match_each_reply_scored_alone(processor):
    import torch
    from torch.nn import functional as F

    from trainers.evaluation.retrieval import reply_log_likelihoods

    model, tokenizer = tiny_model().eval(), processor.tokenizer
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "continue: the dog"}]
    replies = ["runs far away", "sleeps", "barks at the fox all day long"]
    scores = reply_log_likelihoods(model, tokenizer, chat, replies)
    rendered = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    prompt = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    for reply, score in zip(replies, scores):
        ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            log_probs = F.log_softmax(model(input_ids=torch.tensor([prompt + ids])).logits[0].float(), -1)
        expected = log_probs[len(prompt) - 1 : -1].gather(-1, torch.tensor(ids)[:, None]).mean().item()
        assert score == pytest.approx(expected, abs=1e-4)


def test_continuation_log_likelihoods_match_the_plain_batch(processor):
    """The clip encoded once and its prompt run once give what one padded batch of clip + candidate
    rows gives (the collator's training layout)."""
    import torch

    from modeling_blsp_emo.prompts import EMOTION_CONTINUATION_INSTRUCTION
    from processing.collators import SpeechContinuationCollator
    from trainers.evaluation.retrieval import continuation_log_likelihoods
    from trainers.training.losses import mean_response_log_probs, predicting_positions

    model = tiny_model().eval()
    clip = {"array": noise(12000, 3), "sampling_rate": 16000}
    candidates = ["the dog runs far away", "sleeps", "barks at the fox all day long", "the dog runs home"]
    scores = continuation_log_likelihoods(model, processor, clip, candidates)
    batch = SpeechContinuationCollator(processor, EMOTION_CONTINUATION_INSTRUCTION)(
        [{"audio": clip, "target": text, "truncated": False} for text in candidates]
    )
    labels = batch.pop("labels")
    positions = predicting_positions(labels)
    with torch.inference_mode():
        expected = mean_response_log_probs(model(**batch, logits_to_keep=positions).logits, labels, positions)
    assert scores == pytest.approx(expected.tolist(), abs=1e-4)
    assert len(set(scores)) == len(candidates)


def test_writer_retrieval_is_told_the_emotion_and_leaves_out_ambiguous_sentences(monkeypatch):
    import trainers.evaluation.retrieval as retrieval_module

    def scripted(model, tokenizer, chat, candidates):
        # a writer that finds the continuation naming the prompt's emotion likeliest, except that
        # its "sad" text wins whenever the prompt says "surprise"
        told = next(label for label in LABELS if f"'{label}'" in chat[-1]["content"])
        wanted = "sad" if told == "surprise" else told
        return [0.0 if text.endswith(wanted) else -1.0 for text in candidates]

    monkeypatch.setattr(retrieval_module, "reply_log_likelihoods", scripted)
    targets = {(text, label): f"{text} {label}" for text in ("one", "two") for label in LABELS}
    targets["two", "happy"] = targets["two", "sad"]  # two targets alike: sentence "two" cannot be used
    prompt = lambda example: f"in a '{example['emotion']}' tone: {example['text']}"
    result = retrieval_module.writer_retrieval(None, None, targets, LABELS, ["one", "two", "one", "three"], prompt)
    assert result["sentences"] == 1
    assert result["accuracy"] == pytest.approx(4 / 5)
    assert result["predictions"]["surprise"] == ["sad"] and result["predictions"]["happy"] == ["happy"]


def test_retrieval_ranks_every_written_target_refusals_included(tmp_path):
    from processing.target_generation import append_batch, load_targets, shard_path
    from trainers.evaluation.retrieval import retrieval_targets

    records = [{"text": "one", "emotion": label, "index": i, "target": f"one {label}", "truncated": False}
               for i, label in enumerate(LABELS)]
    records[3]["target"] = "I'm sorry, but I cannot continue that."
    append_batch(shard_path(tmp_path, 0, 1), records)
    assert len(load_targets(tmp_path)) == 4  # training drops the refusal
    targets = retrieval_targets(tmp_path)
    assert targets["one", "sad"] == records[3]["target"] and len(targets) == 5
