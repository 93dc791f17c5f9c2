"""The emotion token: after each window's speech embeddings the LLM reads the emotion head's verdict,
softmax(head logits) × a table of one embedding per emotion (`BlspEmoConfig.emotion_token`)."""

import copy

import pytest
import torch

from modeling_blsp_emo import BlspEmoForAudioClassification, BlspEmoForConditionalGeneration, BlspEmoModel, BlspEmoProcessor
from modeling_blsp_emo.speech_lengths import num_speech_embeddings
from trainers.cli.main import build_parser
from trainers.training.emotion_alignment import LoraSettings, prepare_for_emotion_alignment
from trainers.training.label_words import add_emotion_token, label_word_embeddings, label_word_ids

from conftest import noise
from tiny_models import tiny_feature_extractor, tiny_model, tiny_tokenizer

PROMPTS = ["hello <|audio|> world", "<|audio|> hello"]


def with_token(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = tiny_model(seed=seed, **overrides).eval()
    model.add_emotion_token(torch.randn(len(model.config.id2label), model.config.text_config.hidden_size))
    processor = BlspEmoProcessor(tiny_feature_extractor(), tiny_tokenizer(), emotion_token=True)
    return model, processor


def batch_of(processor, lengths=(8000, 20000)):
    clips = [noise(length, index) for index, length in enumerate(lengths)]
    return processor(text=PROMPTS[: len(clips)], audio=clips, sampling_rate=16000, return_tensors="pt")


def llm_inputs(model, batch) -> torch.Tensor:
    """The embeddings the LLM itself received."""
    seen = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["inputs_embeds"]), with_kwargs=True
    )
    with torch.no_grad():
        model(**batch)
    hook.remove()
    return seen[0]


def test_each_window_gets_one_more_placeholder():
    for samples in (8000, 16000 * 45):  # one window; two windows
        windows = 1 if samples < 16000 * 30 else 2
        assert num_speech_embeddings(samples, emotion_token=True) == num_speech_embeddings(samples) + windows
    plain = BlspEmoProcessor(tiny_feature_extractor(), tiny_tokenizer())
    _, processor = with_token()
    assert processor.num_audio_tokens(8000) == plain.num_audio_tokens(8000) + 1


def test_the_llm_reads_the_head_probabilities_times_the_table_after_each_clips_speech():
    model, processor = with_token()
    batch = batch_of(processor)
    speech = model.model.get_speech_features(batch["input_features"], batch["feature_attention_mask"])
    with torch.no_grad():
        probabilities = model.classify_emotion(speech.head_states, speech.head_lengths).softmax(-1)
    expected = probabilities @ model.emotion_token_embeddings.weight
    embeds = llm_inputs(model, batch)
    for row in range(2):
        placeholders = (batch["input_ids"][row] == processor.audio_token_id).nonzero().flatten()
        torch.testing.assert_close(embeds[row, placeholders[-1]], expected[row])
        length = int(speech.lengths[row])
        torch.testing.assert_close(embeds[row, placeholders[:-1]], speech.embeds[row, :length].detach())


def test_the_token_ignores_the_calibration_temperature():
    model, processor = with_token()
    batch = batch_of(processor)
    before = llm_inputs(model, batch)
    model.config.emotion_temperature = 3.0
    torch.testing.assert_close(llm_inputs(model, batch), before)


def test_the_table_and_head_get_gradient_from_the_lm_loss_and_the_token_moves_the_reply():
    model, processor = with_token()
    batch = batch_of(processor)
    labels = batch["input_ids"].masked_fill(batch["input_ids"] == processor.audio_token_id, -100)
    model.train()
    model(**batch, labels=labels).lm_loss.backward()
    assert model.emotion_token_embeddings.weight.grad.abs().sum() > 0
    assert model.emotion_head.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        before = model(**batch).logits
        model.emotion_token_embeddings.weight.mul_(-1)
        assert not torch.allclose(model(**batch).logits, before)


def test_checkpoints_keep_the_token_and_classifiers_load_without_it(tmp_path):
    model, processor = with_token()
    batch = batch_of(processor)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, loaded_processor = BlspEmoForConditionalGeneration.from_pretrained(tmp_path), BlspEmoProcessor.from_pretrained(tmp_path)
    assert loaded.config.emotion_token and loaded_processor.emotion_token
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)
        classifier = BlspEmoForAudioClassification.from_pretrained(tmp_path)
        features = {key: batch[key] for key in ("input_features", "feature_attention_mask")}
        torch.testing.assert_close(classifier(**features).logits, model(**batch).emotion_logits)


def test_the_backbone_run_alone_places_the_token_and_copies_read_their_own_head():
    # trl's fused LM head runs `model.model(...)` and the LM head itself, skipping the outer forward.
    model, processor = with_token()
    batch = batch_of(processor)
    inputs = {key: batch[key] for key in ("input_ids", "input_features", "feature_attention_mask", "attention_mask")}
    with torch.no_grad():
        whole = model(**inputs).logits
        torch.testing.assert_close(model.lm_head(model.model(**inputs).last_hidden_state), whole)
        copied = copy.deepcopy(model)
        copied.emotion_token_embeddings.weight.mul_(-1)
        assert copied.model.emotion_token_provider.__self__ is copied
        assert not torch.allclose(copied.lm_head(copied.model(**inputs).last_hidden_state), whole)
        torch.testing.assert_close(model(**inputs).logits, whole)


def test_a_backbone_without_its_head_refuses_the_token():
    model, processor = with_token()
    backbone = BlspEmoModel(model.config)
    with pytest.raises(ValueError, match="no emotion head"):
        backbone(**{key: batch_of(processor)[key] for key in ("input_ids", "input_features", "feature_attention_mask")})


def test_a_processor_without_the_token_gives_a_clear_error():
    model, _ = with_token()
    plain = BlspEmoProcessor(tiny_feature_extractor(), tiny_tokenizer())
    with pytest.raises(ValueError, match="placeholder tokens but the audio gives"):
        model(**batch_of(plain))


def test_generation_batched_and_with_beams_over_long_clips():
    model, processor = with_token()
    batch = batch_of(processor, lengths=(8000, 16000 * 35))  # the second clip spans two windows
    greedy = model.generate(**batch, max_new_tokens=3, do_sample=False)
    beams = model.generate(**batch, max_new_tokens=3, do_sample=False, num_beams=2)
    assert greedy.shape[0] == beams.shape[0] == 2
    alone = processor(text=PROMPTS[:1], audio=[noise(8000, 0)], sampling_rate=16000, return_tensors="pt")
    single = model.generate(**alone, max_new_tokens=3, do_sample=False)
    assert single[0, -3:].tolist() == greedy[0, -3:].tolist()


def test_adding_the_token_checks_its_table():
    model = tiny_model()
    with pytest.raises(ValueError, match="shape"):
        model.add_emotion_token(torch.zeros(3, model.config.text_config.hidden_size))
    model.add_emotion_token(torch.zeros(5, model.config.text_config.hidden_size))
    with pytest.raises(ValueError, match="already"):
        model.add_emotion_token(torch.zeros(5, model.config.text_config.hidden_size))


def test_new_labels_resize_the_table_keeping_known_rows():
    model, _ = with_token()
    table = model.emotion_token_embeddings.weight.detach().clone()
    model.set_emotion_labels(["sad", "calm", "happy"])
    resized = model.emotion_token_embeddings.weight.detach()
    torch.testing.assert_close(resized[0], table[3])
    torch.testing.assert_close(resized[2], table[1])
    torch.testing.assert_close(resized[1], table.mean(0))


def test_the_training_helper_starts_the_table_at_the_emotion_names_and_stage_two_trains_it(processor):
    model = tiny_model()
    add_emotion_token(model, processor)
    ids = label_word_ids(processor.tokenizer, model.config.emotion_labels)
    torch.testing.assert_close(model.emotion_token_embeddings.weight.detach(), label_word_embeddings(model.get_input_embeddings(), ids))
    assert processor.emotion_token
    for scope in ("audio", "global", "none"):
        fresh = tiny_model()
        add_emotion_token(fresh, BlspEmoProcessor(tiny_feature_extractor(), tiny_tokenizer()))
        trained = prepare_for_emotion_alignment(fresh, LoraSettings(scope=scope))
        names = [name for name, parameter in trained.named_parameters() if parameter.requires_grad]
        assert any("emotion_token_embeddings" in name for name in names), scope


def test_the_commands_turn_the_token_on():
    parser = build_parser()
    assert parser.parse_args(["demo", "--emotion-token"]).emotion_token is True
    assert parser.parse_args(["demo"]).emotion_token is None


class Built(Exception):
    pass


def capture_model(*args, **kwargs):
    raise Built(kwargs["model"])


@pytest.mark.parametrize("on", [True, False])
def test_the_demo_turns_the_token_on_for_stage_two_when_asked(tmp_path, monkeypatch, processor, on):
    from trainers.demo import run as demo_run

    monkeypatch.setattr(demo_run, "load_blsp_emo", lambda path: (tiny_model(), processor))
    monkeypatch.setattr(demo_run, "prepare_for_emotion_alignment", lambda model, lora, train_encoder: model)
    monkeypatch.setattr(demo_run, "SpeechContinuationCollator", lambda *args, **kwargs: None)
    monkeypatch.setattr(demo_run.Demo, "with_targets", lambda self, *args, **kwargs: [])
    monkeypatch.setattr(demo_run, "EmotionAlignmentTrainer", capture_model)
    settings = demo_run.DemoSettings(output=str(tmp_path), warm_start_head=False, emotion_token=on)
    with pytest.raises(Built) as raised:
        demo_run.Demo(settings).train_stage2()
    assert raised.value.args[0].config.emotion_token is on and processor.emotion_token is on
    assert demo_run.DemoSettings(output=str(tmp_path)).emotion_token is True


@pytest.mark.parametrize("on", [True, False])
def test_train_emotion_turns_the_token_on_when_asked(tmp_path, monkeypatch, processor, on):
    import importlib

    from transformers import TrainingArguments

    module = importlib.import_module("trainers.training.train_emotion")
    monkeypatch.setattr(module, "load_blsp_emo", lambda *args: (tiny_model(), processor))
    monkeypatch.setattr(module, "load_targets", lambda *args, **kwargs: [{"audio": "a.wav", "emotion": "sad"}])
    monkeypatch.setattr(module, "EmotionAlignmentTrainer", capture_model)
    training = TrainingArguments(output_dir=str(tmp_path / "run"), report_to=[], use_cpu=True)
    with pytest.raises(Built) as raised:
        module.train_emotion(module.EmotionAlignmentArguments(model="m", targets="t", emotion_token=on), training)
    assert raised.value.args[0].config.emotion_token is on and processor.emotion_token is on


def test_the_demo_options_that_are_on_by_default_can_be_turned_off(tmp_path, monkeypatch):
    from trainers.cli import demo as demo_cli

    captured = []
    monkeypatch.setattr("trainers.demo.Demo", lambda settings: captured.append(settings) or (_ for _ in ()).throw(SystemExit))
    arguments = ["demo", "--output", str(tmp_path), "--no-emotion-token", "--no-random-level", "--writer", "none",
                 "--judge", "None"]
    with pytest.raises(SystemExit):
        demo_cli.run_demo(build_parser().parse_args(arguments))
    settings = captured[0]
    assert (settings.emotion_token, settings.random_level, settings.writer, settings.judge) == (False, False, None, None)
    with pytest.raises(SystemExit):
        demo_cli.run_demo(build_parser().parse_args(["demo", "--output", str(tmp_path), "--writer", "some/llm"]))
    assert captured[1].writer == "some/llm" and captured[1].judge == "bundled:qwen2.5-coder-1.5b-instruct"
    assert captured[1].emotion_token and captured[1].random_level and captured[1].check_targets
