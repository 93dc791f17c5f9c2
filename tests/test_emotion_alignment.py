"""Stage 2: emotion labels, augmentation, LoRA scopes, the trainer, saving and fine-tuning."""

import importlib
import json

import datasets
import numpy as np
import pytest
import soundfile
import torch
from transformers import TrainingArguments

from modeling_blsp_emo import BlspEmoForConditionalGeneration
from modeling_blsp_emo.prompts import EMOTION_CONTINUATION_INSTRUCTION
from processing.augmentation import AugmentationConfig, EmotionSafeAugmentation
from processing.collators import SpeechContinuationCollator
from processing.emotion_labels import LabelMapper
from trainers.checkpoints.builder import save_checkpoint
from trainers.training.base import load_trained_weights, save_trained_weights
from trainers.training.emotion_alignment import EmotionAlignmentTrainer, LoraSettings, finalize, prepare_for_emotion_alignment
from trainers.training.head_warm_start import warm_start_emotion_head
from trainers.training.train_emotion import EmotionAlignmentArguments, train_emotion

from conftest import noise
from fresh_process import run_isolated
from tiny_models import tiny_model, voice_like

EMOTIONS = ["neutral", "happy", "angry", "sad", "surprise"]
# The module, not the function `trainers.training` re-exports under the same name.
train_emotion_module = importlib.import_module("trainers.training.train_emotion")


@pytest.fixture
def records(tmp_path):
    rows = []
    for index in range(6):
        path = tmp_path / f"clip{index}.wav"
        soundfile.write(path, noise(5000 + 1000 * index, index), 16000)
        rows.append({"audio": str(path), "text": "hello world", "emotion": EMOTIONS[index % 5],
                     "target": "i am fine" if index % 2 else "sad day", "truncated": False, "index": index})
    return rows


def batch_for(processor, records, model):
    collator = SpeechContinuationCollator(processor, EMOTION_CONTINUATION_INSTRUCTION, label2id=model.config.label2id)
    return collator(records)


def test_label_mapper_maps_aliases_and_names_unknown_rows():
    dataset = datasets.Dataset.from_dict({"emotion": ["ang", "HAP", "exc", "neu"]})
    assert LabelMapper(EMOTIONS).apply(dataset)["emotion"] == ["angry", "happy", "happy", "neutral"]
    with pytest.raises(ValueError, match=r"row 2: field 'emotion': label 'fru'"):
        LabelMapper(EMOTIONS).apply(datasets.Dataset.from_dict({"emotion": ["sad", "fru"]}))
    mapper = LabelMapper(EMOTIONS, aliases={"fea": "surprise"}, drop_unmapped=True)
    kept = mapper.apply(datasets.Dataset.from_dict({"emotion": ["fea", "fru", "dis", "fru"]}))
    assert kept["emotion"] == ["surprise"] and mapper.dropped == {"fru": 2, "dis": 1}


def test_augmentation_is_seeded_keeps_length_and_changes_audio():
    clip = (0.3 * np.sin(np.arange(16000) / 16000 * 2 * np.pi * 220)).astype(np.float32)
    config = AugmentationConfig(seed=3, noise_probability=1, reverb_probability=1)
    first, second = EmotionSafeAugmentation(config)(clip), EmotionSafeAugmentation(config)(clip)
    assert np.array_equal(first, second) and first.shape == clip.shape and not np.allclose(first, clip)


@pytest.mark.parametrize("scope", ["audio", "global"])
def test_trainable_weights_are_adapter_head_encoder_and_lora(scope):
    model = prepare_for_emotion_alignment(tiny_model(), LoraSettings(scope=scope, rank=4))
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    assert any("lora_" in name for name in trained)
    assert any("adapter" in name for name in trained) and any("emotion_head" in name for name in trained)
    assert any("audio_encoder" in name for name in trained)
    assert all(any(key in name for key in ("lora_", "adapter", "emotion_head", "audio_encoder")) for name in trained)
    frozen_encoder = prepare_for_emotion_alignment(tiny_model(), LoraSettings(scope=scope, rank=4), train_encoder=False)
    assert not any("audio_encoder" in name for name, p in frozen_encoder.named_parameters() if p.requires_grad)


def randomize_lora(model):
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)


def test_merged_global_lora_equals_unmerged(processor, records):
    model = prepare_for_emotion_alignment(tiny_model(), LoraSettings(scope="global", rank=4, dropout=0.0))
    randomize_lora(model)
    batch = batch_for(processor, records[:3], tiny_model())
    batch.pop("labels")
    with torch.no_grad():
        unmerged = model(**batch).logits
        merged = finalize(model)(**batch).logits
    assert type(finalize(model)) is BlspEmoForConditionalGeneration
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)


def test_resized_emotion_head_keeps_known_rows_and_everything_else():
    model = tiny_model()
    before = {name: p.clone() for name, p in model.named_parameters()}
    model.set_emotion_labels(["sad", "calm", "happy", "fearful", "disgust", "angry", "neutral"])
    assert model.config.id2label[1] == "calm" and model.config.label2id["angry"] == 5
    assert model.emotion_head.weight.shape == (7, 32)
    torch.testing.assert_close(model.emotion_head.weight[0], before["emotion_head.weight"][3])
    torch.testing.assert_close(model.emotion_head.weight[5], before["emotion_head.weight"][2])
    for name, parameter in model.named_parameters():
        if name != "emotion_head.weight":
            assert parameter.equal(before[name]), name


def trainer_for(model, records, processor, tmp_path, er_weight=1.0, **overrides):
    settings = dict(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=3, learning_rate=1e-3, max_steps=2,
        report_to=[], remove_unused_columns=False, use_cpu=True, save_steps=1, logging_steps=1, seed=0,
    )
    collator = SpeechContinuationCollator(processor, EMOTION_CONTINUATION_INSTRUCTION, label2id=EMOTION_IDS)
    return EmotionAlignmentTrainer(
        model=model, args=TrainingArguments(**{**settings, **overrides}), train_dataset=records,
        eval_dataset=records, data_collator=collator, er_weight=er_weight,
    )


EMOTION_IDS = {label: index for index, label in enumerate(EMOTIONS)}


def test_loss_is_response_cross_entropy_plus_weighted_emotion_loss(processor, records, tmp_path):
    model = tiny_model()
    trainer = trainer_for(model, records, processor, tmp_path, er_weight=0.5)
    batch = batch_for(processor, records[:3], model)
    with torch.no_grad():
        reference = model(**batch)
        loss = trainer.compute_loss(model, dict(batch))
    torch.testing.assert_close(loss, reference.lm_loss + 0.5 * reference.emotion_loss, rtol=1e-5, atol=1e-6)


def test_training_resets_a_fitted_emotion_temperature(processor, records, tmp_path, caplog):
    model = tiny_model(emotion_temperature=2.5)
    trainer_for(model, records, processor, tmp_path)
    assert model.config.emotion_temperature == 1.0 and "blsp-emo calibrate" in caplog.text


def test_training_logs_each_loss_and_eval_accuracy(processor, records, tmp_path):
    model = prepare_for_emotion_alignment(tiny_model(), LoraSettings(scope="audio", rank=4))
    trainer = trainer_for(model, records, processor, tmp_path, eval_strategy="steps", eval_steps=2)
    trainer.train()
    logged = {key for entry in trainer.state.log_history for key in entry}
    assert {"lm_loss", "emotion_loss", "emotion_accuracy", "eval_emotion_accuracy", "eval_lm_loss"} <= logged


def test_global_lora_checkpoint_resumes(processor, records, tmp_path):
    model = prepare_for_emotion_alignment(tiny_model(), LoraSettings(scope="global", rank=4))
    trainer_for(model, records, processor, tmp_path / "a").train()
    fresh = prepare_for_emotion_alignment(tiny_model(), LoraSettings(scope="global", rank=4))
    load_trained_weights(fresh, str(tmp_path / "a" / "run" / "checkpoint-2"))
    for (name, a), (_, b) in zip(model.named_parameters(), fresh.named_parameters()):
        assert a.equal(b), name


@pytest.mark.parametrize("scope", ["audio", "global"])
def test_saved_model_reproduces_logits_in_a_fresh_process(scope, processor, records, tmp_path):
    model = prepare_for_emotion_alignment(tiny_model(), LoraSettings(scope=scope, rank=4, dropout=0.0))
    randomize_lora(model)
    final = finalize(model).eval()
    save_checkpoint(final, processor, tmp_path / "final")
    batch = batch_for(processor, records[:2], final)
    batch.pop("labels")
    torch.save(dict(batch), tmp_path / "batch.pt")
    with torch.no_grad():
        expected = final(**batch).logits
    torch.testing.assert_close(BlspEmoForConditionalGeneration.from_pretrained(tmp_path / "final")(**batch).logits, expected)
    result = run_isolated(
        f"""
import json, sys, torch
from transformers import AutoModel
model = AutoModel.from_pretrained({str(tmp_path / "final")!r}, trust_remote_code=True).eval()
with torch.no_grad():
    torch.save(model(**torch.load({str(tmp_path / "batch.pt")!r})).logits, {str(tmp_path / "logits.pt")!r})
print(json.dumps({{"peft": "peft" in sys.modules}}))
""",
        tmp_path,
    )
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected)
    assert result["peft"] is False  # loading needs neither this package nor peft


def test_trained_weights_only_save_restores_audio_lora_model(processor, records, tmp_path):
    model = prepare_for_emotion_alignment(tiny_model(), LoraSettings(scope="audio", rank=4))
    randomize_lora(model)
    save_trained_weights(model, str(tmp_path / "small"))
    restored = prepare_for_emotion_alignment(tiny_model(), LoraSettings(scope="audio", rank=4))
    load_trained_weights(restored, str(tmp_path / "small"))
    for (name, a), (_, b) in zip(model.named_parameters(), restored.named_parameters()):
        assert a.equal(b), name


def test_fine_tuning_on_a_new_label_set_end_to_end(records, saved_checkpoint, tmp_path, monkeypatch):
    fits = []

    def recording_warm_start(model, processor, rows, **kwargs):
        fits.append(warm_start_emotion_head(model, processor, rows, **kwargs))
        fits.append(model.emotion_head.weight.detach().clone())
        return fits[0]

    monkeypatch.setattr(train_emotion_module, "warm_start_emotion_head", recording_warm_start)
    new_labels = ["calm", "fearful", "happy", "sad", "angry", "neutral", "disgust"]
    targets = tmp_path / "targets"
    targets.mkdir()
    rows = [{**row, "emotion": new_labels[row["index"]]} for row in records]
    (targets / "targets-00000-of-00001.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    arguments = EmotionAlignmentArguments(model=str(saved_checkpoint), targets=str(targets), labels=",".join(new_labels),
                                          lora_rank=4, trained_weights_output=str(tmp_path / "small"), warm_start_head=True)
    training = TrainingArguments(output_dir=str(tmp_path / "tuned"), max_steps=2, per_device_train_batch_size=3,
                                 report_to=[], remove_unused_columns=False, use_cpu=True, save_strategy="no")
    train_emotion(arguments, training)
    tuned = BlspEmoForConditionalGeneration.from_pretrained(tmp_path / "tuned")
    assert tuned.config.emotion_labels == new_labels and tuned.emotion_head.weight.shape[0] == 7
    assert fits[0]["clips"] == len(rows) and fits[1].shape == (7, tuned.config.text_config.hidden_size)
    assert fits[1].abs().sum() > 0  # the resized head was fitted before training
    assert tuned.config.lora_scope == "audio"
    from transformers import pipeline

    result = pipeline("audio-to-text", model=str(tmp_path / "tuned"), trust_remote_code=True)(
        voice_like(1), sampling_rate=16000, return_emotion=True, max_new_tokens=2
    )[0]
    assert set(result["scores"]) == set(new_labels)
    assert (tmp_path / "small" / "trained_weights.safetensors").is_file()


def test_unknown_target_labels_need_a_new_label_set(records, saved_checkpoint, tmp_path):
    targets = tmp_path / "targets"
    targets.mkdir()
    rows = [{**row, "emotion": "calm"} for row in records]
    (targets / "targets-00000-of-00001.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    training = TrainingArguments(output_dir=str(tmp_path / "x"), max_steps=1, report_to=[], use_cpu=True)
    with pytest.raises(ValueError, match=r"labels \['calm'\] are not the model's"):
        train_emotion(EmotionAlignmentArguments(model=str(saved_checkpoint), targets=str(targets)), training)


def test_emotion_demonstration_is_shown_before_the_request(processor, tmp_path):
    from processing.target_generation import EMOTION_DEMONSTRATIONS, emotion_demonstration, generate_targets

    rendered = []
    tokenizer = processor.tokenizer
    original = tokenizer.apply_chat_template

    def recording(messages, **kwargs):
        rendered.append(messages)
        return original(messages, **kwargs)

    tokenizer.apply_chat_template = recording
    examples = [{"text": "hello world", "emotion": "sad"}, {"text": "the dog", "emotion": "happy"}]
    generate_targets(tiny_model(), tokenizer, examples, tmp_path, batch_size=2, max_new_tokens=2,
                     prompt=lambda e: e["text"], demonstration=emotion_demonstration)
    sad_example, sad_reply = EMOTION_DEMONSTRATIONS["sad"]
    assert rendered[0][1]["content"].endswith(sad_example) and rendered[0][2] == {"role": "assistant", "content": sad_reply}
    assert rendered[0][3] == {"role": "user", "content": "hello world"}
    assert rendered[1][2]["content"] == EMOTION_DEMONSTRATIONS["happy"][1]


@pytest.mark.parametrize("scope", ["audio", "global"])
def test_emotion_head_and_encoder_can_have_their_own_learning_rates(processor, records, tmp_path, scope):
    model = prepare_for_emotion_alignment(tiny_model(), LoraSettings(scope=scope, rank=2))
    trainer = trainer_for(model, records, processor, tmp_path)
    trainer.head_learning_rate, trainer.encoder_learning_rate = 0.05, 1e-5
    optimizer = trainer.create_optimizer()
    rates = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    base = model.base_model.model if scope == "global" else model
    assert {rates[id(p)] for p in base.emotion_head.parameters()} == {0.05}
    assert {rates[id(p)] for p in base.model.audio_encoder.parameters()} == {1e-5}
    others = [p for name, p in model.named_parameters() if p.requires_grad and "emotion_head" not in name and "audio_encoder" not in name]
    assert others and {rates[id(p)] for p in others} == {1e-3}
    assert len(rates) == sum(p.requires_grad for p in model.parameters())
