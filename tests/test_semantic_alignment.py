"""Stage 1: target generation (resumable, sharded, cleaned), the collator, and the KL trainer."""

import json

import pytest
import soundfile
import torch
from transformers import TrainingArguments

from modeling_blsp_emo.prompts import SEMANTIC_TARGET_INSTRUCTION
from processing.cleaning import RefusalFilter
from processing.collators import IGNORE_INDEX, SpeechContinuationCollator
from processing.errors import UserInputError
from processing.manifests import load_speech_dataset, read_manifest
from processing.target_generation import generate_targets, load_targets, shard_path
from trainers.training.base import TRAINED_WEIGHTS_NAME, load_trained_weights, save_trained_weights
from trainers.training.losses import distillation_kl, predicting_positions
from trainers.training.semantic_alignment import SemanticAlignmentTrainer

from conftest import StopAfterStep, noise
from tiny_models import tiny_model

TEXTS = ["hello world", "the quick brown fox", "i am fine", "the lazy dog", "good day today", "sad day", "hello the dog"]


@pytest.fixture
def manifest(tmp_path):
    rows = []
    for index, text in enumerate(TEXTS):
        soundfile.write(tmp_path / f"clip{index}.wav", noise(6000 + 1500 * index, index), 16000)
        rows.append({"audio": f"clip{index}.wav", "text": text})
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def targets(manifest, processor, tmp_path):
    dataset = load_speech_dataset(manifest)
    generate_targets(tiny_model(), processor.tokenizer, dataset, tmp_path / "targets", batch_size=3, max_new_tokens=5)
    return load_targets(tmp_path / "targets")


def test_manifest_paths_are_resolved_and_bad_lines_named(manifest, tmp_path):
    rows = read_manifest(manifest)
    assert rows[0]["audio"] == str(tmp_path / "clip0.wav")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"audio": "a.wav", "text": "x"}\n{"audio": "b.wav"}\n')
    with pytest.raises(ValueError, match=r"broken.jsonl:2: missing field\(s\) \['text'\]"):
        read_manifest(broken)


def test_targets_record_truncation_and_keep_fields(targets):
    assert [record["index"] for record in targets] == list(range(len(TEXTS)))
    assert all(record["truncated"] for record in targets)  # 5 new tokens never reach the end of a reply
    assert targets[1]["text"] == TEXTS[1] and targets[1]["audio"].endswith("clip1.wav")


def test_interrupted_generation_resumes_to_identical_output(manifest, processor, tmp_path):
    dataset = load_speech_dataset(manifest)
    reference = generate_targets(tiny_model(), processor.tokenizer, dataset, tmp_path / "whole", batch_size=2, max_new_tokens=4)

    model = tiny_model()
    real_generate, calls = model.generate, []

    def dying_generate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed while generating the third batch
        return real_generate(*args, **kwargs)

    model.generate = dying_generate
    with pytest.raises(KeyboardInterrupt):
        generate_targets(model, processor.tokenizer, dataset, tmp_path / "resumed", batch_size=2, max_new_tokens=4)
    partial = shard_path(tmp_path / "resumed", 0, 1)
    assert partial.read_text().count("\n") == 4
    with partial.open("a") as handle:
        handle.write('{"index": 4, "text": "half a li')  # a kill during the write
    model.generate = real_generate
    generate_targets(model, processor.tokenizer, dataset, tmp_path / "resumed", batch_size=2, max_new_tokens=4)
    assert partial.read_bytes() == reference.read_bytes()


def test_shards_together_cover_every_example_once(manifest, processor, tmp_path):
    dataset = load_speech_dataset(manifest)
    for shard in range(2):
        generate_targets(
            tiny_model(), processor.tokenizer, dataset, tmp_path / "sharded", batch_size=2, max_new_tokens=3, shard=shard, num_shards=2
        )
    generate_targets(tiny_model(), processor.tokenizer, dataset, tmp_path / "single", batch_size=2, max_new_tokens=3)
    sharded, single = load_targets(tmp_path / "sharded"), load_targets(tmp_path / "single")
    assert [r["index"] for r in sharded] == list(range(len(TEXTS)))
    assert [r["target"] for r in sharded] == [r["target"] for r in single]


def test_refusals_are_dropped_with_configurable_patterns():
    default = RefusalFilter()
    assert default.is_refusal("I'm sorry, but I cannot continue that.")
    assert default.is_refusal("Well, As an AI language model I feel nothing.")
    assert not default.is_refusal("and then the fox ran home.")
    custom = RefusalFilter(prefixes=["Nope"], phrases=["cannot comply"])
    kept, dropped = custom.split([{"target": "Nope."}, {"target": "I CANNOT COMPLY"}, {"target": "fine"}])
    assert [r["target"] for r in kept] == ["fine"] and len(dropped) == 2


def test_teacher_and_student_share_response_tokens(targets, processor):
    batch = SpeechContinuationCollator(processor, SEMANTIC_TARGET_INSTRUCTION, with_teacher=True)(targets[:3])
    for row in range(3):
        student = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX]
        teacher = batch["teacher_labels"][row][batch["teacher_labels"][row] != IGNORE_INDEX]
        assert torch.equal(student, teacher) and len(student) > 0
    assert (batch["input_ids"] == processor.audio_token_id).any()
    assert not (batch["teacher_input_ids"] == processor.audio_token_id).any()


def test_untruncated_target_ends_with_end_of_turn(processor):
    collator = SpeechContinuationCollator(processor, SEMANTIC_TARGET_INSTRUCTION)
    examples = [{"audio": noise(8000), "text": "hi", "target": "the dog", "truncated": truncated} for truncated in (False, True)]
    examples = [{**e, "audio": {"array": e["audio"], "sampling_rate": 16000}} for e in examples]
    batch = collator(examples)
    finished, cut = (batch["labels"][row][batch["labels"][row] != IGNORE_INDEX].tolist() for row in range(2))
    end_of_turn = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert finished[-1] == end_of_turn and end_of_turn not in cut and finished[:-1] == cut


def test_selected_positions_predict_exactly_the_response_tokens():
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 7, 8, 9, IGNORE_INDEX]])
    assert predicting_positions(labels).tolist() == [[False, True, True, True, False, False]]


def test_kl_is_zero_for_identical_distributions_and_positive_otherwise():
    logits = torch.randn(4, 11)
    assert distillation_kl(logits, logits, 2.0) == 0
    assert distillation_kl(logits, torch.randn(4, 11), 2.0) > 0


def trainer_for(model, targets, processor, tmp_path, **overrides):
    settings = dict(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=3, learning_rate=1e-2, max_steps=4,
        report_to=[], remove_unused_columns=False, use_cpu=True, save_steps=2, logging_steps=1, seed=0,
    )
    args = TrainingArguments(**{**settings, **overrides})
    collator = SpeechContinuationCollator(processor, SEMANTIC_TARGET_INSTRUCTION, with_teacher=True)
    return SemanticAlignmentTrainer(model=model, args=args, train_dataset=targets, data_collator=collator)


def test_loss_is_zero_when_student_hears_the_transcript(targets, processor, tmp_path):
    trainer = trainer_for(tiny_model(), targets, processor, tmp_path)
    batch = trainer.data_collator(targets[:3])
    text_only = {key.removeprefix("teacher_"): value for key, value in batch.items() if key.startswith("teacher_")}
    as_student = {**text_only, **{f"teacher_{key}": value for key, value in text_only.items()}}
    assert trainer.compute_loss(trainer.model, as_student) == 0


def test_only_the_adapter_gets_gradients(targets, processor, tmp_path):
    trainer = trainer_for(tiny_model(), targets, processor, tmp_path)
    trainer.model.train()
    trainer.compute_loss(trainer.model, trainer.data_collator(targets[:3])).backward()
    with_grad = {name for name, p in trainer.model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and all(name.startswith("model.adapter.") for name in with_grad)
    assert all(not p.requires_grad for name, p in trainer.model.named_parameters() if not name.startswith("model.adapter."))


def test_training_logs_kl_and_agreement_and_checkpoints_only_the_adapter(targets, processor, tmp_path):
    trainer = trainer_for(tiny_model(), targets, processor, tmp_path)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "kl" in entry]
    assert logged and all(0 <= entry["token_agreement"] <= 1 for entry in logged)
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "run" / "checkpoint-2" / TRAINED_WEIGHTS_NAME)
    assert saved and all(name.startswith("model.adapter.") for name in saved)


def test_a_damaged_trainer_checkpoint_is_named(tmp_path):
    model = tiny_model()
    save_trained_weights(model, str(tmp_path))
    weights = tmp_path / TRAINED_WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:-100])  # cut off, as by a kill while writing
    with pytest.raises(UserInputError, match=f"{TRAINED_WEIGHTS_NAME}: cannot read the trained weights"):
        load_trained_weights(model, str(tmp_path))


def test_resuming_from_a_checkpoint_reproduces_straight_training(targets, processor, tmp_path):
    straight = trainer_for(tiny_model(), targets, processor, tmp_path / "a")
    straight.train()
    interrupted = trainer_for(tiny_model(), targets, processor, tmp_path / "b")
    interrupted.add_callback(StopAfterStep(2))
    interrupted.train()
    base = tiny_model()  # the same base model, its adapter scrambled: the checkpoint must restore it
    with torch.no_grad():
        for parameter in base.model.adapter.parameters():
            parameter.normal_()
    resumed = trainer_for(base, targets, processor, tmp_path / "b")
    resumed.train(resume_from_checkpoint=str(tmp_path / "b" / "run" / "checkpoint-2"))
    for (name, a), (_, b) in zip(straight.model.model.adapter.named_parameters(), resumed.model.model.adapter.named_parameters()):
        torch.testing.assert_close(a, b, msg=name)
