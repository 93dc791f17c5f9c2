"""Build a synthetic emotional speech corpus with offline TTS engines: train / validation / test.

Every chosen sentence (see `sentences.py`) is spoken in all five emotions by a few voices drawn,
by weight, from its split's pool of voices. Piper and flite carry most of the weight because they
are the most intelligible (Whisper tiny.en WER ≈ 0.04 and 0.13 against ≈ 0.48 for espeak-ng).
The test split holds out both its sentences and its voices; validation holds out sentences only.

Layout of `output_dir`: `audio/<split>/<speaker>/<sentence_id>-<emotion>.flac` (16 kHz mono,
16-bit), one `<split>.jsonl` manifest per split (fields `audio` relative to the manifest,
`text`, `emotion`, `speaker` as `engine:voice`, `sentence_id`) and `synthesis.json`, the
arguments the corpus was built with.
"""

import json
import logging
import os
import re
import time
import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from importlib.util import find_spec

import datasets
import numpy as np
from tqdm.auto import tqdm

from modeling_blsp_emo.speech_lengths import SAMPLING_RATE
from processing.manifests import read_manifest
from processing.resume import check_settings
from processing.synthetic.sentences import SENTENCES
from processing.synthetic.tts_engines import (
    EMOTIONS,
    ENGINES,
    PARTIAL_SUFFIX,
    Jitter,
    PiperEngine,
    Voice,
    check_sox,
    render_clips,
)

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")

DEFAULT_VOICES = (
    Voice("piper", "joe", weight=4.0),
    Voice("flite", "slt", weight=2.0),
    Voice("flite", "rms", weight=2.0),
    Voice("flite", "awb", weight=2.0),
    Voice("flite", "kal16", weight=0.75),
    Voice("flite", "kal", weight=0.75),
    Voice("espeak-ng", "en-us+m3", weight=0.75),
    Voice("espeak-ng", "en-us+f2", weight=0.5),
    Voice("espeak-ng", "en-us+f4", weight=0.5),
    Voice("espeak-ng", "en-us+m7", weight=0.5),
    Voice("espeak-ng", "en-gb+f1", weight=0.5),
    Voice("espeak-ng", "en-gb-scotland+m5", weight=0.5),
    Voice("espeak-ng", "en-029+f3", weight=0.5),
    Voice("espeak-ng", "en-gb-x-rp+m1", weight=0.5),
)
# Held out of train and validation. Piper has a single voice, which has to stay in training.
DEFAULT_TEST_VOICES = ("flite:awb", "espeak-ng:en-gb-x-rp+m1")

_SETTINGS_FILE = "synthesis.json"


@dataclass(frozen=True)
class _Clip:
    split: str
    sentence_index: int
    voice: Voice
    emotion: str
    audio: str  # relative to output_dir

    @property
    def sentence_id(self) -> str:
        return f"s{self.sentence_index:04d}"

    def row(self) -> dict:
        return {
            "audio": self.audio,
            "text": SENTENCES[self.sentence_index],
            "emotion": self.emotion,
            "speaker": self.voice.speaker,
            "sentence_id": self.sentence_id,
        }

    def jitter(self, seed: int) -> Jitter:
        key = [seed, self.sentence_index, zlib.crc32(self.voice.speaker.encode()), EMOTIONS.index(self.emotion)]
        return Jitter.draw(np.random.default_rng(key))


def split_sentences(
    num_sentences: int | None, seed: int, validation_fraction: float, test_fraction: float
) -> dict[str, list[int]]:
    """Sentence indices per split: a seeded draw of `num_sentences` (all when None), of which
    `test_fraction` and `validation_fraction` (each at least one sentence when there are three or
    more) are held out."""
    total = len(SENTENCES) if num_sentences is None else num_sentences
    if not 1 <= total <= len(SENTENCES):
        raise ValueError(f"num_sentences must be between 1 and {len(SENTENCES)}, got {num_sentences}")
    chosen = np.random.default_rng(seed).permutation(len(SENTENCES))[:total].tolist()
    minimum = 1 if total >= 3 else 0
    n_test = max(minimum, round(total * test_fraction)) if test_fraction > 0 else 0
    n_val = max(minimum, round(total * validation_fraction)) if validation_fraction > 0 else 0
    if n_test + n_val >= total:
        raise ValueError(f"{total} sentences leave none for training after {n_test} test and {n_val} validation")
    return {
        "test": sorted(chosen[:n_test]),
        "validation": sorted(chosen[n_test : n_test + n_val]),
        "train": sorted(chosen[n_test + n_val :]),
    }


def _slug(speaker: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", speaker)


def plan_clips(
    sentences: dict[str, list[int]],
    voices: Sequence[Voice],
    test_voices: Iterable[str],
    voices_per_sentence: int,
    emotions: Sequence[str],
    seed: int,
    audio_format: str,
) -> list[_Clip]:
    """Every clip of the corpus. Test sentences get test voices; the others get the rest. Each
    sentence's voices are a weighted draw without replacement seeded by (seed, sentence), so
    they do not depend on how many sentences are chosen."""
    test_voices = set(test_voices)
    pools = {
        "test": [v for v in voices if v.speaker in test_voices],
        "validation": [v for v in voices if v.speaker not in test_voices],
        "train": [v for v in voices if v.speaker not in test_voices],
    }
    clips = []
    for split in SPLITS:
        pool = pools[split]
        if sentences[split] and not pool:
            raise ValueError(f"no voice left for the {split} split (voices: {[v.speaker for v in voices]}, "
                             f"test voices: {sorted(test_voices)})")  # fmt: skip
        weights = np.array([v.weight for v in pool], dtype=np.float64)
        weights /= weights.sum() if pool else 1.0
        count = min(voices_per_sentence, len(pool))
        for index in sentences[split]:
            picks = np.random.default_rng([seed, index]).choice(len(pool), count, replace=False, p=weights)
            for voice in sorted((pool[i] for i in picks), key=lambda v: v.speaker):
                for emotion in emotions:
                    audio = f"audio/{split}/{_slug(voice.speaker)}/s{index:04d}-{emotion}.{audio_format}"
                    clips.append(_Clip(split, index, voice, emotion, audio))
    return clips


def _remove_partials(output_dir: str) -> int:
    removed = 0
    for root, _, files in os.walk(os.path.join(output_dir, "audio")):
        for name in files:
            if name.endswith(PARTIAL_SUFFIX):
                os.remove(os.path.join(root, name))
                removed += 1
    return removed


def _write_atomically(path: str, text: str) -> None:
    temporary = path + PARTIAL_SUFFIX
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _batches(clips: Sequence[_Clip], engines: dict) -> list[list[_Clip]]:
    """Clips sharing engine, voice and emotion, chunked to the engine's batch size."""
    groups: dict[tuple, list[_Clip]] = defaultdict(list)
    for clip in clips:
        groups[(clip.voice, clip.emotion)].append(clip)
    batches = []
    for (voice, _), members in groups.items():
        size = engines[voice.engine].batch_size
        batches += [members[i : i + size] for i in range(0, len(members), size)]
    # Largest engine calls first so that the pool does not end on one long Piper batch.
    return sorted(batches, key=lambda b: (engines[b[0].voice.engine].batch_size, len(b)), reverse=True)


def synthesize_corpus(
    output_dir: str | os.PathLike,
    num_sentences: int | None = None,
    seed: int = 0,
    workers: int = 2,
    engines: Iterable[str] | None = None,
    voices: Sequence[Voice] = DEFAULT_VOICES,
    test_voices: Iterable[str] = DEFAULT_TEST_VOICES,
    voices_per_sentence: int = 4,
    emotions: Sequence[str] = EMOTIONS,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    audio_format: str = "flac",
    piper_noise: bool = True,
    progress: bool = True,
) -> dict:
    """Synthesise (or finish synthesising) the corpus under `output_dir`; see the module docstring.

    `engines` limits the voices to those engines ("piper", "flite", "espeak-ng"; default all).
    Sentence choice, splits, voice assignment and per-clip prosody jitter are deterministic given
    `seed`, and so are flite, espeak-ng and sox; Piper's noise cannot be seeded (its ONNX graph
    draws it), so Piper audio differs between runs unless `piper_noise=False`.

    Resumable: finished clips are skipped, stray `*.partial` files from an interrupted run are
    removed, clips and manifests are written under a temporary name and moved into place, and the
    manifests are written only once every clip exists. Resuming with different arguments raises.
    `workers` engine calls run at once (each is its own process).

    Returns {"manifests": {split: path}, "clips": {split: count}, "synthesized": n,
    "skipped": n, "seconds": wall time, "seconds_per_clip": {engine: worker seconds per clip}}.
    Raises `EngineUnavailableError` naming the install command when a needed engine is missing.
    """
    output_dir = os.fspath(output_dir)
    if audio_format not in ("flac", "wav"):
        raise ValueError(f"audio_format must be 'flac' or 'wav', got {audio_format!r}")
    unknown = sorted(set(emotions) - set(EMOTIONS))
    if unknown:
        raise ValueError(f"unknown emotions {unknown}; expected a subset of {list(EMOTIONS)}")
    voices = _select_voices(voices, engines)
    test_voices = sorted(set(test_voices) & {v.speaker for v in voices})
    engine_objects = _ready_engines(voices, piper_noise)

    sentences = split_sentences(num_sentences, seed, validation_fraction, test_fraction)
    clips = plan_clips(sentences, voices, test_voices, voices_per_sentence, emotions, seed, audio_format)
    os.makedirs(output_dir, exist_ok=True)
    settings = {
        "num_sentences": num_sentences, "seed": seed, "voices": [asdict(v) for v in voices],
        "test_voices": test_voices, "voices_per_sentence": voices_per_sentence, "emotions": list(emotions),
        "validation_fraction": validation_fraction, "test_fraction": test_fraction,
        "audio_format": audio_format, "piper_noise": piper_noise, "sentences": len(SENTENCES),
    }  # fmt: skip
    check_settings(os.path.join(output_dir, _SETTINGS_FILE), settings)
    if removed := _remove_partials(output_dir):
        logger.info("removed %d partial files left by an interrupted run", removed)

    missing = [c for c in clips if not os.path.exists(os.path.join(output_dir, c.audio))]
    started = time.perf_counter()
    seconds_per_clip = _render_missing(missing, engine_objects, output_dir, seed, workers, progress)
    manifests = {}
    for split in SPLITS:
        rows = [c.row() for c in clips if c.split == split]
        path = os.path.join(output_dir, f"{split}.jsonl")
        _write_atomically(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        manifests[split] = path
    return {
        "manifests": manifests,
        "clips": {split: sum(c.split == split for c in clips) for split in SPLITS},
        "synthesized": len(missing),
        "skipped": len(clips) - len(missing),
        "seconds": time.perf_counter() - started,
        "seconds_per_clip": seconds_per_clip,
    }


def _select_voices(voices: Sequence[Voice], engines: Iterable[str] | None) -> list[Voice]:
    """The voices of the chosen engines (default all); raises on unknown engines or no voice left."""
    selected = set(ENGINES) if engines is None else set(engines)
    if selected - set(ENGINES):
        raise ValueError(f"unknown engines {sorted(selected - set(ENGINES))}; expected some of {list(ENGINES)}")
    chosen = [v for v in voices if v.engine in selected]
    if not chosen:
        raise ValueError(f"no voices left for engines {sorted(selected)}")
    return chosen


def _ready_engines(voices: Sequence[Voice], piper_noise: bool) -> dict:
    """One engine object per engine the voices use, each checked to be installed (and sox)."""
    engine_objects = {name: ENGINES[name]() for name in {v.engine for v in voices}}
    if "piper" in engine_objects:
        engine_objects["piper"] = PiperEngine(noise=piper_noise)
    check_sox()
    for name in sorted(engine_objects):
        engine_objects[name].check()
    return engine_objects


def _render_missing(
    missing: Sequence[_Clip], engine_objects: dict, output_dir: str, seed: int, workers: int, progress: bool
) -> dict[str, float]:
    """Render the clips not yet on disk, `workers` engine calls at a time; returns worker seconds per
    clip by engine. Clips finished before an interruption stay on disk for the next run."""
    for directory in {os.path.dirname(os.path.join(output_dir, c.audio)) for c in missing}:
        os.makedirs(directory, exist_ok=True)
    engine_seconds: dict[str, float] = defaultdict(float)
    engine_clips: dict[str, int] = defaultdict(int)

    def run(batch: list[_Clip]) -> tuple[str, int, float]:
        started = time.perf_counter()
        first = batch[0]
        render_clips(
            engine_objects[first.voice.engine],
            first.voice,
            first.emotion,
            [SENTENCES[c.sentence_index] for c in batch],
            [os.path.join(output_dir, c.audio) for c in batch],
            [c.jitter(seed) for c in batch],
        )
        return first.voice.engine, len(batch), time.perf_counter() - started

    with tqdm(total=len(missing), desc="synthesising", unit="clip", disable=not progress) as bar:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = [pool.submit(run, batch) for batch in _batches(missing, engine_objects)]
            try:
                for future in as_completed(futures):
                    engine, count, seconds = future.result()
                    engine_seconds[engine] += seconds
                    engine_clips[engine] += count
                    bar.update(count)
            except BaseException:
                for future in futures:  # queued batches are dropped
                    future.cancel()
                raise
    return {e: engine_seconds[e] / engine_clips[e] for e in sorted(engine_clips)}


def load_corpus(output_dir: str | os.PathLike, split: str, decode: bool | None = None) -> datasets.Dataset:
    """The `split` manifest as a `datasets.Dataset` with an `Audio` column (16 kHz).

    `decode=None` decodes only when torchcodec (which `datasets` needs for decoding) is
    installed; with `decode=False` each `audio` value is {"path": absolute path, "bytes": None},
    which `modeling_blsp_emo.audio_loading.load_audio` or soundfile read directly.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    manifest = os.path.join(os.fspath(output_dir), f"{split}.jsonl")
    if not os.path.exists(manifest):
        raise FileNotFoundError(f"{manifest} not found (run synthesize_corpus on {output_dir} first)")
    if decode is None:
        decode = find_spec("torchcodec") is not None
    dataset = datasets.Dataset.from_list(read_manifest(manifest))
    return dataset.cast_column("audio", datasets.Audio(sampling_rate=SAMPLING_RATE, decode=decode))
