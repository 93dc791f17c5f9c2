"""Stage 3: emotion preference pairs, and trl's DPO trainer fed with the clips' speech."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile
import torch
from torch.nn import functional as F

from modeling_blsp_emo import BlspEmoForConditionalGeneration
from modeling_blsp_emo.prompts import EMOTION_CONTINUATION_INSTRUCTION
from processing.collators import SpeechContinuationCollator
from processing.errors import UserInputError
from processing.preference_pairs import load_preference_pairs, preference_pairs
from trainers.checkpoints.builder import save_checkpoint
from trainers.cli.main import main
from trainers.hub.card import render_model_card
from trainers.training.losses import mean_response_log_probs, predicting_positions

from conftest import StopAfterStep, noise
from tiny_models import tiny_model

trl = pytest.importorskip("trl")
from trainers.training.preference import (  # noqa: E402  (needs trl)
    SpeechPreferenceTrainer,
    frozen_reference,
    prepare_for_preference,
)

EMOTIONS = ["neutral", "happy", "angry", "sad", "surprise"]
REFUSAL = "I'm sorry, but I cannot continue this sentence."
# What the writer LLM gave for each sentence in each emotion (stage-2 targets).
TARGETS = {
    "hello world": {"neutral": "i am fine", "happy": "good day yes !", "angry": "bad day", "sad": "sad day",
                    "surprise": "yes today is good ?"},
    "the quick brown fox": {"neutral": "jumps over the lazy dog", "happy": "jumps over the dog !", "angry": "bad dog",
                            "sad": REFUSAL, "surprise": "jumps over the dog !"},
}


def target_records(table=TARGETS) -> list[dict]:
    rows = [(text, emotion, target) for text, targets in table.items() for emotion, target in targets.items()]
    return [{"index": i, "text": t, "emotion": e, "target": target, "truncated": i % 4 == 1} for i, (t, e, target) in enumerate(rows)]


def write_targets(folder: Path, records: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "targets-00000-of-00001.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    return folder


@pytest.fixture
def clips(tmp_path) -> list[dict]:
    """Three clips (wav files of different lengths) with their sentence and true emotion."""
    rows = []
    for index, (text, emotion) in enumerate([("hello world", "sad"), ("hello world", "happy"), ("the quick brown fox", "neutral")]):
        path = tmp_path / f"clip{index}.wav"
        soundfile.write(path, noise(4000 + 1500 * index, index), 16000)
        rows.append({"audio": str(path), "text": text, "emotion": emotion})
    return rows


@pytest.fixture
def pairs(clips) -> list[dict]:
    # Two pairs of each of the two "hello world" clips, so that batches mix clips of different lengths.
    return preference_pairs(clips, target_records(), rejected_per_clip=2, seed=0)[:4]


def stage2_model() -> BlspEmoForConditionalGeneration:
    """A tiny stand-in for a stage-2 model: audio-scope LoRA that is not a no-op."""
    model = tiny_model()
    model.add_audio_lora(rank=4, dropout=0.0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model


def policy_and_reference() -> tuple[BlspEmoForConditionalGeneration, BlspEmoForConditionalGeneration]:
    """The frozen stage-2 model, and a policy that has moved away from it (as after some DPO steps)."""
    policy = stage2_model()
    reference = frozen_reference(policy)
    prepare_for_preference(policy)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for parameter in policy.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return policy, reference


def trainer_for(policy, reference, pairs, processor, tmp_path, emotion_weight=0.0, **overrides) -> SpeechPreferenceTrainer:
    settings = dict(
        output_dir=str(tmp_path / "run"), beta=0.5, per_device_train_batch_size=2, max_steps=2, learning_rate=1e-2,
        report_to=[], use_cpu=True, save_strategy="no", logging_steps=1, seed=0,
    )
    args = trl.DPOConfig(**{**settings, **overrides})
    return SpeechPreferenceTrainer(policy, reference, args, processor=processor, train_dataset=pairs, emotion_weight=emotion_weight)


def response_log_probs(model, processor, pairs, side: str) -> torch.Tensor:
    """Σ log p(response | speech prompt) per pair for its `side` ("chosen"/"rejected"), computed
    independently of trl: stage 2's collator and the model's own forward and LM head."""
    batch = SpeechContinuationCollator(processor, EMOTION_CONTINUATION_INSTRUCTION)(
        [{"audio": pair["audio"], "target": pair[side], "truncated": pair[f"{side}_truncated"]} for pair in pairs]
    )
    labels = batch.pop("labels")
    positions = predicting_positions(labels)
    with torch.no_grad():
        logits = model(**batch, logits_to_keep=positions).logits
    return mean_response_log_probs(logits, labels, positions) * positions.sum(1)


def dpo_margins(policy, reference, processor, pairs) -> torch.Tensor:
    """(policy − reference log-ratio of chosen) − (the same of rejected), per pair."""
    ratio = {side: response_log_probs(policy, processor, pairs, side) - response_log_probs(reference, processor, pairs, side)
             for side in ("chosen", "rejected")}
    return ratio["chosen"] - ratio["rejected"]


# -- pairs -------------------------------------------------------------------------------------

def test_pairs_take_the_true_emotions_target_as_chosen_and_skip_refusals_and_identical_texts(clips):
    records = target_records()
    pairs = preference_pairs(clips, records)
    written = {(r["text"], r["emotion"]): r for r in records}
    for pair in pairs:
        assert pair["chosen"] == written[(pair["text"], pair["emotion"])]["target"]
        assert pair["chosen_truncated"] == written[(pair["text"], pair["emotion"])]["truncated"]
        assert pair["rejected"] == written[(pair["text"], pair["rejected_emotion"])]["target"]
        assert pair["rejected_emotion"] != pair["emotion"] and pair["rejected"] != pair["chosen"]
    by_clip = [[p["rejected_emotion"] for p in pairs if p["audio"] == clip["audio"]] for clip in clips]
    # "hello world" has five distinct targets: four pairs per clip. "the quick brown fox" heard as
    # neutral: sad's is a refusal and surprise wrote happy's text again, so happy and angry remain.
    assert by_clip == [["neutral", "happy", "angry", "surprise"], ["neutral", "angry", "sad", "surprise"], ["happy", "angry"]]
    assert all(REFUSAL not in (p["chosen"], p["rejected"]) for p in pairs)


def test_a_clip_whose_own_target_is_a_refusal_or_matches_every_other_gives_no_pair(clips):
    table = {"hello world": {**TARGETS["hello world"], "sad": REFUSAL}, "the quick brown fox": dict.fromkeys(EMOTIONS, "bad dog")}
    pairs = preference_pairs(clips, target_records(table))
    assert {p["audio"] for p in pairs} == {clips[1]["audio"]}  # clip 0 is sad (a refusal), clip 2's texts are all alike
    assert "sad" not in {p["rejected_emotion"] for p in pairs}


def test_sampled_rejections_are_a_seeded_subset():
    clips = [{"audio": f"c{i}.wav", "text": "hello world", "emotion": "neutral"} for i in range(6)]
    first, again = (preference_pairs(clips, target_records(), rejected_per_clip=2, seed=3) for _ in range(2))
    assert first == again and len(first) == 12
    assert {p["rejected_emotion"] for p in first} <= {"happy", "angry", "sad", "surprise"}
    assert len({tuple(p["rejected_emotion"] for p in first[i : i + 2]) for i in range(0, 12, 2)}) > 1  # drawn, not the first two


def test_bad_pair_inputs_name_the_problem(clips, tmp_path):
    missing = [r for r in target_records() if (r["text"], r["emotion"]) != ("hello world", "happy")]
    with pytest.raises(UserInputError, match=r"no stage-2 target for clip 2's text 'hello world' in its emotion 'happy'"):
        preference_pairs(clips, missing, source="targets")
    all_refusals = target_records({text: dict.fromkeys(EMOTIONS, REFUSAL) for text in TARGETS})
    with pytest.raises(UserInputError, match="no preference pairs from 3 clips"):
        preference_pairs(clips, all_refusals)
    with pytest.raises(UserInputError, match="rejected_per_clip"):
        preference_pairs(clips, target_records(), rejected_per_clip=0)
    manifest = tmp_path / "clips.jsonl"
    manifest.write_text("".join(json.dumps({"audio": c["audio"], "text": c["text"]}) + "\n" for c in clips))
    with pytest.raises(UserInputError, match=r"clips.jsonl:1: missing field\(s\) \['emotion'\]"):
        load_preference_pairs(manifest, write_targets(tmp_path / "targets", target_records()))


# -- the trainer -----------------------------------------------------------------------------

def test_dpo_loss_is_the_formula_from_policy_and_reference_log_probs_given_the_audio(processor, pairs, tmp_path):
    policy, reference = policy_and_reference()
    trainer = trainer_for(policy, reference, pairs, processor, tmp_path)
    with torch.no_grad():
        loss = trainer.compute_loss(policy, trainer.data_collator(pairs))
    margins = dpo_margins(policy, reference, processor, pairs)
    assert margins.abs().min() > 1e-3  # the policy has moved on every pair: the formula is not at its constant log 2
    torch.testing.assert_close(loss, -F.logsigmoid(0.5 * margins).mean(), rtol=1e-4, atol=1e-5)


def test_emotion_head_loss_is_added_with_its_weight(processor, pairs, tmp_path):
    policy, reference = policy_and_reference()
    without = trainer_for(policy, reference, pairs, processor, tmp_path / "a")
    weighted = trainer_for(policy, reference, pairs, processor, tmp_path / "b", emotion_weight=0.5)
    label2id = policy.config.label2id
    heard = SpeechContinuationCollator(processor, EMOTION_CONTINUATION_INSTRUCTION, label2id=label2id)(
        [{"audio": p["audio"], "emotion": p["emotion"], "target": p["chosen"]} for p in pairs]
    )
    heard.pop("labels")
    with torch.no_grad():
        emotion_loss = policy(**heard).emotion_loss
        dpo = without.compute_loss(policy, without.data_collator(pairs))
        total = weighted.compute_loss(policy, weighted.data_collator(pairs))
    torch.testing.assert_close(total, dpo + 0.5 * emotion_loss, rtol=1e-4, atol=1e-5)


def test_the_reference_gets_no_gradient_and_stays_the_stage2_model(processor, pairs, tmp_path):
    policy, reference = policy_and_reference()
    before = {name: parameter.clone() for name, parameter in reference.named_parameters()}
    trainer = trainer_for(policy, reference, pairs, processor, tmp_path)
    trainer.compute_loss(policy, trainer.data_collator(pairs)).backward()
    assert all(parameter.grad is None for parameter in reference.parameters())
    trained = {name: parameter.grad for name, parameter in policy.named_parameters() if parameter.requires_grad}
    assert any("lora_B" in name and grad.abs().sum() > 0 for name, grad in trained.items())
    assert any("adapter" in name and grad.abs().sum() > 0 for name, grad in trained.items())
    policy.zero_grad()
    trainer.train()
    assert all(parameter.equal(before[name]) for name, parameter in reference.named_parameters())


@pytest.mark.parametrize(
    "pooling, train_adapter, kept",
    [("encoder_stats", True, True), ("adapter_mean", True, False), ("adapter_mean", False, True)],
)
def test_a_fitted_emotion_temperature_is_reset_only_when_the_heads_scores_can_change(
    processor, pairs, tmp_path, pooling, train_adapter, kept
):
    policy = tiny_model(emotion_pooling=pooling)
    policy.add_audio_lora(rank=4, dropout=0.0)
    policy.config.emotion_temperature = 1.3
    reference = frozen_reference(policy)
    prepare_for_preference(policy, train_adapter=train_adapter)
    trainer_for(policy, reference, pairs, processor, tmp_path)
    assert policy.config.emotion_temperature == (1.3 if kept else 1.0)


def test_resuming_from_a_checkpoint_reproduces_straight_training(processor, pairs, tmp_path):
    def trained_weights(trainer) -> dict[str, torch.Tensor]:
        return {name: parameter for name, parameter in trainer.model.named_parameters() if parameter.requires_grad}

    def run(folder: str, policy=None):
        policy = policy if policy is not None else stage2_model()
        reference = frozen_reference(stage2_model())
        prepare_for_preference(policy)
        return trainer_for(policy, reference, pairs, processor, tmp_path / folder, max_steps=4, save_strategy="steps", save_steps=2)

    straight = run("a")
    straight.train()
    interrupted = run("b")
    interrupted.add_callback(StopAfterStep(2))
    interrupted.train()
    scrambled = stage2_model()  # the checkpoint must restore the adapter and LoRA
    with torch.no_grad():
        for name, parameter in scrambled.named_parameters():
            if "adapter" in name or "lora_" in name:
                parameter.normal_()
    resumed = run("b", scrambled)
    resumed.train(resume_from_checkpoint=str(tmp_path / "b" / "run" / "checkpoint-2"))
    expected, actual = trained_weights(straight), trained_weights(resumed)
    assert expected.keys() == actual.keys() and any("lora_B" in name for name in expected)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], msg=name)


def test_the_clips_audio_reaches_both_halves_of_its_pair(processor, pairs, tmp_path):
    policy, reference = policy_and_reference()
    trainer = trainer_for(policy, reference, pairs, processor, tmp_path)
    other = dict(pairs[1], audio=str(tmp_path / "other.wav"))
    soundfile.write(other["audio"], noise(7000, 9), 16000)
    changed = [pairs[0], other]

    def loss_and_rows(batch_pairs):
        batch = trainer.data_collator(batch_pairs)
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        positions = predicting_positions(labels)
        inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "input_features", "feature_attention_mask")}
        with torch.no_grad():
            rows = mean_response_log_probs(policy(**inputs, logits_to_keep=positions).logits, labels, positions)
            return trainer.compute_loss(policy, batch), rows

    loss, rows = loss_and_rows(pairs[:2])
    changed_loss, changed_rows = loss_and_rows(changed)
    assert not torch.isclose(loss, changed_loss)
    # Rows are [chosen 0, chosen 1, rejected 0, rejected 1]: only pair 1's two rows hear the new clip.
    moved = ~torch.isclose(rows, changed_rows, rtol=0, atol=1e-6)
    assert moved.tolist() == [False, True, False, True]


def test_precomputed_reference_log_probs_give_the_loss_of_a_frozen_copy(processor, pairs, tmp_path):
    stage2 = stage2_model()
    precomputed = trainer_for(stage2, None, pairs, processor, tmp_path / "a", precompute_ref_log_probs=True)
    assert precomputed.ref_model is None and "ref_chosen_logps" in precomputed.train_dataset.column_names
    policy, reference = policy_and_reference()
    stage2.load_state_dict(policy.state_dict())  # the same move away from stage 2, in the precomputed run's policy
    copied = trainer_for(policy, reference, pairs, processor, tmp_path / "b")
    rows = [precomputed.train_dataset[i] for i in range(len(pairs))]
    with torch.no_grad():
        expected = copied.compute_loss(policy, copied.data_collator(pairs))
        torch.testing.assert_close(precomputed.compute_loss(stage2, precomputed.data_collator(rows)), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="no reference model"):
        trainer_for(stage2_model(), None, pairs, processor, tmp_path / "c")


# -- the command -----------------------------------------------------------------------------

def preference_command(stage2, processor, clips, tmp_path, *options: str) -> list[str]:
    """`blsp-emo train-preference` arguments for 2 steps from `stage2` (saved to tmp_path/stage2) on the
    clips and their targets, into tmp_path/stage3; `options` come last."""
    save_checkpoint(stage2, processor, tmp_path / "stage2")
    manifest = tmp_path / "clips.jsonl"
    manifest.write_text("".join(json.dumps(clip) + "\n" for clip in clips))
    targets = write_targets(tmp_path / "targets", target_records())
    return ["train-preference", "--model", str(tmp_path / "stage2"), "--manifest", str(manifest), "--targets", str(targets),
            "--output_dir", str(tmp_path / "stage3"), "--max_steps", "2", "--per_device_train_batch_size", "2",
            "--learning_rate", "1e-2", "--beta", "0.5", "--report_to", "none", "--use_cpu", *options]


def test_train_preference_command_trains_lora_and_adapter_and_saves_a_loadable_checkpoint(processor, clips, tmp_path, capsys):
    command = preference_command(stage2_model(), processor, clips, tmp_path,
                                 "--rejected_per_clip", "2", "--save_steps", "1", "--save_total_limit", "1")
    assert main(command) == 0
    before = BlspEmoForConditionalGeneration.from_pretrained(tmp_path / "stage2").state_dict()
    after = BlspEmoForConditionalGeneration.from_pretrained(tmp_path / "stage3").state_dict()
    changed = {name for name in before if not before[name].equal(after[name])}
    assert any("lora_B" in name for name in changed) and any("adapter" in name for name in changed)
    assert all("lora_" in name or name.startswith("model.adapter.") for name in changed)  # LLM, encoder, heads frozen
    assert (tmp_path / "stage3" / "checkpoint-2" / "trained_weights.safetensors").is_file()
    assert json.loads((tmp_path / "stage3" / "checkpoint-2" / "training_args.json").read_text())["beta"] == 0.5
    card = render_model_card(tmp_path / "stage3", "alice/emo").text  # `blsp-emo push`'s default: the run's own folder
    assert "### Stage 3: emotion preference alignment (DPO)" in card and "| beta | 0.5 |" in card
    assert not (tmp_path / "stage3" / "README.md").exists()  # no trl card describing a text-generation model

    assert main([*command[:5], "--targets", str(tmp_path / "nowhere"), *command[7:]]) == 2
    assert "nowhere: no such targets folder" in capsys.readouterr().err


def test_a_checkpoint_without_audio_lora_gets_a_fresh_one_that_trains_and_reloads(processor, clips, tmp_path, capsys):
    stage2 = tiny_model()  # as a global-scope stage-2 checkpoint: its LoRA merged, none left
    command = preference_command(stage2, processor, clips, tmp_path, "--save_strategy", "no", "--lora_rank", "4", "--freeze_adapter")
    assert main(command) == 0
    before = stage2.state_dict()
    stage3 = BlspEmoForConditionalGeneration.from_pretrained(tmp_path / "stage3")
    assert (stage3.config.lora_scope, stage3.config.lora_rank) == ("audio", 4)
    after = stage3.state_dict()
    lora = [name for name in after if "lora_" in name]
    assert any("lora_B" in name and after[name].abs().sum() > 0 for name in lora)  # trained from B = 0
    # Everything else is the stage-2 model's, under the names the LoRA wrapper gives its base layers.
    unwrapped = {name.replace(".base_layer.", "."): tensor for name, tensor in after.items() if name not in lora}
    assert unwrapped.keys() == before.keys()
    assert all(unwrapped[name].equal(before[name]) for name in before)

    assert main([*command[:-3], "--lora_rank", "0", "--freeze_adapter"]) == 2
    assert "nothing to train" in capsys.readouterr().err
    assert main([*command[:-3], "--lora_rank", "-1"]) == 2
    assert "lora_rank" in capsys.readouterr().err


def test_resuming_with_other_options_or_from_nowhere_is_one_line(processor, clips, tmp_path, capsys):
    command = preference_command(tiny_model(), processor, clips, tmp_path, "--save_steps", "1", "--lora_rank", "4")
    assert main(command) == 0
    resume = [*command, "--max_steps", "3", "--resume_from_checkpoint"]
    assert main([*resume, str(tmp_path / "stage3" / "checkpoint-2"), "--lora_rank", "8"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "lora_A.weight is [4, 64] in the checkpoint but [8, 64] in the model" in error and "same LoRA rank" in error
    assert main([*resume, str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no trained_weights.safetensors" in capsys.readouterr().err


def test_a_checkpoint_with_nan_weights_is_refused_before_training(processor, clips, tmp_path, capsys):
    stage2 = stage2_model()
    with torch.no_grad():
        stage2.model.adapter.layer_norm.weight[0] = float("nan")
    assert main(preference_command(stage2, processor, clips, tmp_path)) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "stage2: weight model.adapter.layer_norm.weight holds NaN or infinite values" in error
    assert not (tmp_path / "stage3" / "config.json").exists()  # nothing trained or saved


def test_checkpoints_and_the_training_package_load_without_trl():
    code = (
        "import sys, modeling_blsp_emo, trainers, trainers.training, trainers.cli.main\n"
        "from trainers.training.train_preference import PreferenceArguments\n"
        "assert 'trl' not in sys.modules, 'trl was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
