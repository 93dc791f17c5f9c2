"""Stage 2's label-word loss (the adapter's mean speech embedding should lie closest to the LLM's
embedding of the clip's emotion name) and the vivid wording for outside target writers."""

import math

import pytest
import torch
from transformers import TrainingArguments

from modeling_blsp_emo.prompts import EMOTION_CONTINUATION_INSTRUCTION
from processing.collators import SpeechContinuationCollator
from processing.target_generation import (
    EMOTION_WORDINGS,
    emotion_demonstration,
    emotion_prompt,
    vivid_emotion_prompt,
)
from trainers.cli.main import build_parser
from trainers.demo import run as demo_run
from trainers.training.emotion_alignment import EmotionAlignmentTrainer
from trainers.training.label_words import LABEL_WORD_SCALE, label_word_embeddings, label_word_ids, label_word_loss

from conftest import noise
from tiny_models import tiny_model

EMOTIONS = ["neutral", "happy", "angry", "sad", "surprise"]


def clips(tmp_path, count=4):
    import soundfile

    rows = []
    for index in range(count):
        path = tmp_path / f"clip{index}.wav"
        soundfile.write(path, noise(6000 + 1500 * index, index), 16000)
        rows.append({"audio": str(path), "text": "hello world", "emotion": EMOTIONS[index % 5], "target": "i am fine"})
    return rows


def test_label_word_ids_are_each_name_as_it_reads_inside_a_sentence(processor):
    ids = label_word_ids(processor.tokenizer, EMOTIONS)
    assert ids == [processor.tokenizer(" " + label, add_special_tokens=False)["input_ids"] for label in EMOTIONS]
    assert len({tuple(row) for row in ids}) == len(EMOTIONS)


def test_label_word_embeddings_average_the_names_tokens_without_gradient():
    embeddings = torch.nn.Embedding(10, 4)
    names = label_word_embeddings(embeddings, [[1, 2], [7]])
    torch.testing.assert_close(names[0], (embeddings.weight[1] + embeddings.weight[2]).detach() / 2)
    torch.testing.assert_close(names[1], embeddings.weight[7].detach())
    assert not names.requires_grad


def test_label_word_loss_is_cross_entropy_of_scaled_cosines_of_the_masked_mean():
    torch.manual_seed(0)
    embeds, lengths = torch.randn(2, 5, 3), torch.tensor([5, 2])
    names, labels = torch.randn(4, 3), torch.tensor([2, 0])
    expected = 0.0
    for row, length, label in zip(embeds, lengths, labels):
        mean = row[:length].mean(0)
        logits = [LABEL_WORD_SCALE * float(mean @ name / (mean.norm() * name.norm())) for name in names]
        expected += -(logits[label] - math.log(sum(math.exp(v) for v in logits))) / 2
    assert float(label_word_loss(embeds, lengths, names, labels)) == pytest.approx(expected, rel=1e-5)
    # Padding beyond a clip's length does not count.
    padded = embeds.clone()
    padded[1, 2:] = 100.0
    assert float(label_word_loss(padded, lengths, names, labels)) == pytest.approx(expected, rel=1e-5)


def trainer(model, processor, tmp_path, records, **kwargs):
    collator = SpeechContinuationCollator(processor, EMOTION_CONTINUATION_INSTRUCTION, label2id=model.config.label2id)
    arguments = TrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=2, max_steps=1,
                                  report_to=[], remove_unused_columns=False, use_cpu=True)
    return EmotionAlignmentTrainer(model=model, args=arguments, train_dataset=records, data_collator=collator, **kwargs), collator


def test_the_stage_two_loss_adds_the_weighted_label_word_loss(processor, tmp_path):
    model = tiny_model(emotion_pooling="encoder_stats")
    ids = label_word_ids(processor.tokenizer, model.config.emotion_labels)
    records = clips(tmp_path)
    weighted, collator = trainer(model, processor, tmp_path, records, er_weight=0.5, label_word_weight=0.7, label_word_ids=ids)
    plain, _ = trainer(model, processor, tmp_path, records, er_weight=0.5)
    batch = collator(records[:3])
    with torch.no_grad():
        reference = model(**batch)
        names = label_word_embeddings(model.get_input_embeddings(), ids)
        expected_words = label_word_loss(reference.audio_embeds, reference.audio_lengths, names, batch["emotion_labels"])
        loss = weighted.compute_loss(model, dict(batch))
        without = plain.compute_loss(model, dict(batch))
    torch.testing.assert_close(without, reference.lm_loss + 0.5 * reference.emotion_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, without + 0.7 * expected_words, rtol=1e-5, atol=1e-6)
    assert float(expected_words) > 0


def test_the_label_word_loss_trains_the_adapter_not_the_llm_embeddings(processor, tmp_path):
    model = tiny_model(emotion_pooling="encoder_stats").train()
    ids = label_word_ids(processor.tokenizer, model.config.emotion_labels)
    batch = SpeechContinuationCollator(processor, EMOTION_CONTINUATION_INSTRUCTION, label2id=model.config.label2id)(clips(tmp_path))
    outputs = model(**batch)
    names = label_word_embeddings(model.get_input_embeddings(), ids)
    label_word_loss(outputs.audio_embeds, outputs.audio_lengths, names, batch["emotion_labels"]).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.model.adapter.parameters())
    assert model.get_input_embeddings().weight.grad is None
    assert model.emotion_head.weight.grad is None  # the encoder-statistics head reads no adapter output


def test_a_label_word_weight_needs_the_label_names_ids(processor, tmp_path):
    with pytest.raises(ValueError, match="label_word_ids"):
        trainer(tiny_model(), processor, tmp_path, clips(tmp_path), label_word_weight=1.0)


def test_the_vivid_wording_speaks_as_someone_who_feels_the_emotion():
    example = {"text": "The bus is late.", "emotion": "surprise"}
    prompt = vivid_emotion_prompt(example)
    assert prompt.endswith("The bus is late.") and prompt.count("feel surprised") == 1 and prompt != emotion_prompt(example)
    assert "feels calm and matter-of-fact" in vivid_emotion_prompt({**example, "emotion": "neutral"})
    assert "feels frustrated" in vivid_emotion_prompt({**example, "emotion": "frustrated"})  # other labels as they are
    # No worked example: shown one, the writer copied its reply into many targets.
    assert EMOTION_WORDINGS == {"release": (emotion_prompt, emotion_demonstration), "vivid": (vivid_emotion_prompt, None)}


@pytest.mark.parametrize("wording", ["release", "vivid"])
def test_the_demo_asks_its_writer_in_the_chosen_wording(tmp_path, monkeypatch, wording):
    written = []
    monkeypatch.setattr(demo_run, "load_text_generator", lambda *args: (None, None))
    monkeypatch.setattr(demo_run, "resolve_model_spec", lambda spec: spec)
    monkeypatch.setattr(demo_run, "load_config", lambda path: None)  # "some-llm" is no real checkpoint
    monkeypatch.setattr(demo_run, "generate_targets", lambda *args, **kwargs: written.append(kwargs))
    settings = demo_run.DemoSettings(output=str(tmp_path), writer="some-llm", writer_wording=wording)
    demo = demo_run.Demo(settings)
    monkeypatch.setattr(demo, "split", lambda name: [{"text": "The bus is late.", "emotion": "sad"}])
    demo.stage2_targets()
    assert (written[0]["prompt"], written[0]["demonstration"]) == EMOTION_WORDINGS[wording]
    assert written[0]["prompt"] is (vivid_emotion_prompt if wording == "vivid" else emotion_prompt)
    assert build_parser().parse_args(["demo", "--writer-wording", wording]).writer_wording == wording


def args_list(manifest, tmp_path):
    return ["generate-targets", "--model", "m", "--data", str(manifest), "--output", str(tmp_path / "out"),
            "--emotion", "--emotion-wording", "vivid"]


def test_generate_targets_takes_the_vivid_wording(processor, tmp_path, monkeypatch):
    import trainers.cli.data as data_cli

    seen = []
    monkeypatch.setattr("processing.target_generation.generate_targets", lambda *args, **kwargs: seen.append(kwargs))
    monkeypatch.setattr("processing.target_generation.load_targets", lambda *args, **kwargs: [])
    monkeypatch.setattr("trainers.checkpoints.load_text_generator", lambda *args, **kwargs: (tiny_model(), processor.tokenizer))
    manifest = tmp_path / "data.jsonl"
    manifest.write_text('{"audio": "%s", "text": "hi there", "emotion": "sad"}\n' % clips(tmp_path, 1)[0]["audio"])
    args = build_parser().parse_args(args_list(manifest, tmp_path))
    assert data_cli.run_generate_targets(args) == 0
    assert (seen[0]["prompt"], seen[0]["demonstration"]) == (vivid_emotion_prompt, None)
    with pytest.raises(SystemExit, match="no worked examples"):
        data_cli.run_generate_targets(build_parser().parse_args([*args_list(manifest, tmp_path), "--demonstrations"]))


def test_the_demo_gives_stage_two_its_label_word_weight(tmp_path, monkeypatch):
    class Built(Exception):
        pass

    def capture(*args, **kwargs):
        raise Built(kwargs["label_word_weight"], kwargs["label_word_ids"])

    class Processor:
        tokenizer = type("T", (), {"__call__": lambda self, text, **kw: {"input_ids": [len(text)]}})()

    model = tiny_model()
    monkeypatch.setattr(demo_run, "load_blsp_emo", lambda path: (model, Processor()))
    monkeypatch.setattr(demo_run, "prepare_for_emotion_alignment", lambda model, lora, train_encoder: model)
    monkeypatch.setattr(demo_run, "SpeechContinuationCollator", lambda *args, **kwargs: None)
    monkeypatch.setattr(demo_run.Demo, "with_targets", lambda self, *args, **kwargs: [])
    monkeypatch.setattr(demo_run, "EmotionAlignmentTrainer", capture)
    settings = demo_run.DemoSettings(output=str(tmp_path), warm_start_head=False, label_word_weight=0.5)
    with pytest.raises(Built) as raised:
        demo_run.Demo(settings).train_stage2()
    assert raised.value.args == (0.5, [[len(" " + label)] for label in model.config.emotion_labels])
    assert build_parser().parse_args(["demo", "--label-word-weight", "0.5"]).label_word_weight == 0.5
    assert demo_run.DemoSettings(output=str(tmp_path)).label_word_weight == 1.0


def test_train_emotion_passes_its_label_word_weight(processor, tmp_path, monkeypatch):
    import importlib

    module = importlib.import_module("trainers.training.train_emotion")

    class Built(Exception):
        pass

    def capture(*args, **kwargs):
        raise Built(kwargs["label_word_weight"], kwargs["label_word_ids"])

    labels = tiny_model().config.emotion_labels
    monkeypatch.setattr(module, "load_blsp_emo", lambda *args: (tiny_model(), processor))
    monkeypatch.setattr(module, "load_targets", lambda *args, **kwargs: clips(tmp_path))
    monkeypatch.setattr(module, "EmotionAlignmentTrainer", capture)
    training = TrainingArguments(output_dir=str(tmp_path / "run"), report_to=[], use_cpu=True)
    for weight, ids in ((0.25, label_word_ids(processor.tokenizer, labels)), (0.0, None)):
        with pytest.raises(Built) as raised:
            module.train_emotion(module.EmotionAlignmentArguments(model="m", targets="t", label_word_weight=weight), training)
        assert raised.value.args == (weight, ids)
