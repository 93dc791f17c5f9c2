"""The demo on the real embedded default (bundled Whisper tiny.en + SmolLM2-135M) and its synthetic
corpus, at the default size: stage 1 brings the speech model closer to the LLM reading the
transcript, and stage 2 learns emotion that it recognises in held-out voices, in its emotion head and
in its own continuations. About 31 minutes on 2 CPU cores."""

import json

import pytest

from trainers.demo.run import Demo, DemoSettings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    settings = DemoSettings(output=str(tmp_path_factory.mktemp("demo")), piper_noise=False)
    return Demo(settings).run()


def test_stage1_reduces_held_out_kl(results):
    kl = results["stage1_kl"]
    assert kl["after"]["eval_kl"] < 0.95 * kl["before"]["eval_kl"]
    assert kl["after"]["eval_token_agreement"] > kl["before"]["eval_token_agreement"]


def test_stage2_is_evaluated_on_every_held_out_clip(results):
    for model in ("stage2", "stage1_only"):
        for kind in ("head", "generative"):
            matrix = results[model][kind]["confusion_matrix"]
            assert sum(map(sum, matrix)) + results[model][kind]["unanswered"] == results["test_clips"]
    retrieval = results["stage2"]["retrieval"]
    assert retrieval["clips"] + retrieval["left_out_identical_targets"] <= results["test_clips"]


def test_stage2_emotion_head_recognises_held_out_voices(results):
    stage2, stage1 = results["stage2"]["head"]["accuracy"], results["stage1_only"]["head"]["accuracy"]
    # 87.5 % in the README's run; 70-97.5 % in earlier runs of this size: the spread is large.
    assert stage2 >= 0.6 and stage2 > stage1 + 0.3, (stage2, stage1)


def test_stage2_continuations_follow_the_voice(results):
    # The sentence-normalized measure: the plain one is dominated by how likely each of the LLM's
    # continuations is in itself (it stays at chance here, and the writer of the targets, told the
    # true emotion, reaches only 40-60 %; the README explains).
    stage2, stage1 = (results[m]["retrieval"] for m in ("stage2", "stage1_only"))
    writer = results["writer_retrieval"]
    assert stage2["clips"] >= 10 and stage2["clips"] == 10 * writer["sentences"]  # 2 test voices x 5 emotions
    # 50-90 % over six runs, on 10-30 clips (coarse): assert twice chance, not a run's figure.
    assert stage2["normalized_accuracy"] >= 0.4 and stage2["normalized_accuracy"] > stage1["normalized_accuracy"], (stage2, stage1)


def test_report_and_fresh_process_reload(results, tmp_path_factory):
    folder = next(tmp_path_factory.getbasetemp().glob("demo*"))
    examples = json.loads((folder / "pipeline_examples.json").read_text())
    assert examples["loaded_from"].startswith("transformers_modules.")
    assert {row["emotion"] for row in examples["rows"]} == {"neutral", "happy", "angry", "sad", "surprise"}
    assert (folder / "report.md").read_text().count("|") > 20
