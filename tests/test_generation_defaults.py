"""Replies that do not loop: repetition guards over the reply's own tokens, the defaults of the
pipeline and the chat, and NaN/inf checks on what generation produces."""

import pytest
import torch
from transformers import GenerationConfig, NoRepeatNGramLogitsProcessor, pipeline

from modeling_blsp_emo import BlspEmoProcessor
from modeling_blsp_emo.reply_generation import NonFiniteLogitsCheck, reply_logits_processors
from trainers.evaluation.replies import repeats_ngram
from trainers.inference.chat import BlspEmoChat

from tiny_models import AUDIO_TOKEN_ID, tiny_feature_extractor, tiny_model, tiny_tokenizer, voice_like

PLAIN_GREEDY = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0}
CLIPS = [voice_like(1 + 0.1875 * index, index) for index in range(4)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random model whose plain greedy replies loop (seed 1 repeats one word)."""
    directory = tmp_path_factory.mktemp("looping")
    tiny_model(seed=1).save_pretrained(directory)
    BlspEmoProcessor(tiny_feature_extractor(), tiny_tokenizer()).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def pipe(checkpoint):
    return pipeline("audio-to-text", model=str(checkpoint), trust_remote_code=True)


def test_repetition_penalty_of_generate_counts_generated_tokens_only():
    model = tiny_model()
    processors = model._get_logits_processor(GenerationConfig(repetition_penalty=2.0), input_ids_seq_length=3)
    input_ids = torch.tensor([[10, 11, 12, 13, 14]])  # prompt 10-12, generated 13-14
    scores = torch.ones(1, model.config.text_config.vocab_size)
    penalised = processors(input_ids, scores.clone())
    assert penalised[0, [10, 11, 12]].tolist() == [1.0, 1.0, 1.0]
    assert penalised[0, [13, 14]].tolist() == [0.5, 0.5]


def test_no_repeat_ngram_of_generate_ignores_ngrams_of_the_prompt():
    model = tiny_model()
    processors = model._get_logits_processor(GenerationConfig(no_repeat_ngram_size=3), input_ids_seq_length=4)
    scores = torch.zeros(1, model.config.text_config.vocab_size)
    # The prompt holds 20 21 22; the reply so far is 23 20 21: transformers would ban 22 next.
    prompt_repeat = torch.tensor([[20, 21, 22, 23, 20, 21]])
    assert NoRepeatNGramLogitsProcessor(3)(prompt_repeat, scores.clone())[0, 22] == float("-inf")
    assert processors(prompt_repeat, scores.clone())[0, 22] == 0
    reply_repeat = torch.tensor([[5, 6, 7, 8, 20, 21, 22, 20, 21]])  # the reply itself repeats 20 21 →
    processors = model._get_logits_processor(GenerationConfig(no_repeat_ngram_size=3), input_ids_seq_length=4)
    assert processors(reply_repeat, scores.clone())[0, 22] == float("-inf")


def test_reply_processors_are_off_when_not_asked_for():
    assert reply_logits_processors(10) == reply_logits_processors(10, 1.0, 0) == []


def test_pipeline_defaults_stop_a_looping_model_from_repeating_a_4gram(pipe):
    plain = pipe(CLIPS, sampling_rate=16000, max_new_tokens=40, batch_size=2, generate_kwargs=PLAIN_GREEDY)
    guarded = pipe(CLIPS, sampling_rate=16000, max_new_tokens=40, batch_size=2)
    assert all(repeats_ngram(result[0]["generated_text"]) for result in plain)
    assert not any(repeats_ngram(result[0]["generated_text"]) for result in guarded)


def test_pipeline_defaults_can_be_overridden_one_by_one(pipe):
    only_ngram = pipe(CLIPS[0], sampling_rate=16000, max_new_tokens=40, generate_kwargs={"repetition_penalty": 1.0})
    assert not repeats_ngram(only_ngram[0]["generated_text"])
    plain = pipe(CLIPS[0], sampling_rate=16000, max_new_tokens=40, generate_kwargs=PLAIN_GREEDY)
    assert only_ngram != plain


def test_chat_defaults_guard_replies_and_can_be_overridden(checkpoint):
    model, processor = BlspEmoChat.from_pretrained(str(checkpoint)).model, BlspEmoProcessor.from_pretrained(checkpoint)
    guarded = BlspEmoChat(model, processor, max_new_tokens=40).send(audio=CLIPS[1], sampling_rate=16000)
    plain = BlspEmoChat(model, processor, max_new_tokens=40, generate_kwargs=PLAIN_GREEDY).send(
        audio=CLIPS[1], sampling_rate=16000
    )
    assert repeats_ngram(plain.reply) and not repeats_ngram(guarded.reply)


def test_target_writing_stays_plain_greedy():
    """Stored stage-2 targets must not change: target writing passes no guard to `generate`."""
    import inspect

    import processing.target_generation as target_generation

    source = inspect.getsource(target_generation)
    assert "REPLY_GENERATION_DEFAULTS" not in source and "no_repeat_ngram_size" not in source
    assert "repetition_penalty" not in source


def test_nan_logits_during_generation_are_an_error_but_suppressed_tokens_are_not(checkpoint):
    check = NonFiniteLogitsCheck()
    suppressed = torch.zeros(2, 8)
    suppressed[:, AUDIO_TOKEN_ID] = float("-inf")
    check(None, suppressed)
    check.raise_if_found()
    check(None, torch.tensor([[0.0, float("nan")], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="LM logits: NaN or \\+inf"):
        check.raise_if_found()


def test_pipeline_raises_on_nan_weights_instead_of_answering(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        model.lm_head.weight[7, 0] = float("nan")
    model.save_pretrained(tmp_path)
    BlspEmoProcessor(tiny_feature_extractor(), tiny_tokenizer()).save_pretrained(tmp_path)
    pipe = pipeline("audio-to-text", model=str(tmp_path), trust_remote_code=True)
    with pytest.raises(ValueError, match="LM logits"):
        pipe(CLIPS[0], sampling_rate=16000, max_new_tokens=3)


def test_emotion_mode_raises_on_nan_in_the_emotion_head(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        model.emotion_head.weight[0, 0] = float("inf")
    model.save_pretrained(tmp_path)
    BlspEmoProcessor(tiny_feature_extractor(), tiny_tokenizer()).save_pretrained(tmp_path)
    pipe = pipeline("audio-to-text", model=str(tmp_path), trust_remote_code=True)
    with pytest.raises(ValueError, match="emotion head logits"):
        pipe(CLIPS[0], sampling_rate=16000, max_new_tokens=2, return_emotion=True)
