"""The demo on the real embedded default (bundled Whisper tiny.en + SmolLM2-135M) and a small
synthetic corpus: stage 1 brings the speech model closer to the LLM reading the transcript, and
stage 2 learns emotion from held-out voices. About 10 minutes on 2 CPU cores."""

import json

import pytest

from trainers.demo import Demo, DemoSettings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    settings = DemoSettings(
        output=str(tmp_path_factory.mktemp("demo")), num_sentences=24, stage1_steps=30, stage2_steps=50,
        max_new_tokens=24, piper_noise=False,
    )
    return Demo(settings).run()


def test_stage1_reduces_held_out_kl(results):
    kl = results["stage1_kl"]
    assert kl["after"]["eval_kl"] < 0.95 * kl["before"]["eval_kl"]
    assert kl["after"]["eval_token_agreement"] > kl["before"]["eval_token_agreement"]


def test_stage2_emotion_head_beats_chance_and_stage1(results):
    stage2, stage1 = results["stage2"]["head"]["accuracy"], results["stage1_only"]["head"]["accuracy"]
    assert stage2 >= results["chance"] + 0.2
    assert stage2 > stage1


def test_stage2_prefers_the_target_of_the_true_emotion(results):
    retrieval = results["stage2"]["retrieval"]
    assert retrieval["clips"] >= 10
    assert retrieval["accuracy"] >= results["chance"] + 0.1


def test_report_and_fresh_process_reload(results, tmp_path_factory):
    folder = next(tmp_path_factory.getbasetemp().glob("demo*"))
    examples = json.loads((folder / "pipeline_examples.json").read_text())
    assert examples["loaded_from"].startswith("transformers_modules.")
    assert {row["emotion"] for row in examples["rows"]} == {"neutral", "happy", "angry", "sad", "surprise"}
    assert (folder / "report.md").read_text().count("|") > 20
