import math
import pathlib
import re

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from modeling_blsp_emo.audio_loading import (
    AudioInputError,
    load_audio,
    load_audio_batch,
    resample,
)
from modeling_blsp_emo.speech_lengths import SAMPLING_RATE

SR = SAMPLING_RATE


def sine(freq: float, sr: int, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_frequency(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spectrum)])


def rms_amplitude(x: np.ndarray) -> float:
    """Peak amplitude of a sine, estimated from its RMS."""
    return float(np.sqrt(2 * np.mean(np.square(x, dtype=np.float64))))


def assert_valid_output(x: np.ndarray) -> None:
    assert x.dtype == np.float32
    assert x.ndim == 1
    assert x.flags["C_CONTIGUOUS"]


@pytest.fixture
def wav_16k(tmp_path):
    path = tmp_path / "mono16k.wav"
    data = sine(440, SR, 0.5)
    sf.write(path, data, SR, subtype="FLOAT")
    return path, data


# --- resample -------------------------------------------------------------------------------


def test_resample_is_identity_when_rates_are_equal():
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    np.testing.assert_array_equal(resample(x, SR, SR), x)


@pytest.mark.parametrize("orig_sr,target_sr,n", [(44100, 16000, 44100), (8000, 16000, 801), (22050, 16000, 333),
                                                 (48000, 16000, 7), (16000, 44100, 100), (44101, 16000, 999)])
def test_resample_output_length_is_ceil_of_scaled_length(orig_sr, target_sr, n):
    y = resample(np.zeros(n, dtype=np.float32), orig_sr, target_sr)
    assert len(y) == math.ceil(n * target_sr / orig_sr)


def test_resample_returns_float32_for_float64_input():
    assert resample(np.zeros(441, dtype=np.float64), 44100, 16000).dtype == np.float32


def test_resample_keeps_frequency_and_amplitude_of_440hz_sine():
    y = resample(sine(440, 44100, amplitude=1.0), 44100, 16000)
    trimmed = y[1000:-1000]  # edges see the zero padding beyond the signal
    assert abs(peak_frequency(trimmed, 16000) - 440) < 2
    assert rms_amplitude(trimmed) == pytest.approx(1.0, rel=0.02)


def test_resample_keeps_frequency_when_upsampling():
    y = resample(sine(1000, 8000, amplitude=1.0), 8000, 16000)
    trimmed = y[1000:-1000]
    assert abs(peak_frequency(trimmed, 16000) - 1000) < 2
    assert rms_amplitude(trimmed) == pytest.approx(1.0, rel=0.02)


def test_resample_attenuates_tone_above_target_nyquist():
    y = resample(sine(10000, 44100, amplitude=1.0), 44100, 16000)[1000:-1000]
    attenuation_db = -20 * np.log10(rms_amplitude(y))
    assert attenuation_db > 30


def test_resample_is_soxr_with_the_documented_length():
    x = np.random.default_rng(0).standard_normal(999).astype(np.float32)
    ours = resample(x, 44101, 16000)
    reference = soxr.resample(x, 44101, 16000, quality="HQ")
    assert len(ours) == math.ceil(len(x) * 16000 / 44101) == len(reference) + 1 and ours[-1] == 0
    np.testing.assert_array_equal(ours[: len(reference)], reference)


def test_resample_names_soxr_when_it_is_missing(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "soxr", None)
    with pytest.raises(ImportError, match="pip install soxr"):
        resample(np.zeros(100, dtype=np.float32), 8000, 16000)


def test_resample_handles_coprime_rates():
    y = resample(sine(440, 44101, amplitude=1.0), 44101, 16000)[1000:-1000]
    assert abs(peak_frequency(y, 16000) - 440) < 2
    assert rms_amplitude(y) == pytest.approx(1.0, rel=0.02)


# --- accepted inputs: files and bytes -------------------------------------------------------


def test_load_wav_16k_mono_returns_samples_unchanged(wav_16k):
    path, data = wav_16k
    out = load_audio(str(path))
    assert_valid_output(out)
    np.testing.assert_allclose(out, data, atol=1e-6)


def test_load_accepts_pathlib_path(wav_16k):
    path, data = wav_16k
    np.testing.assert_allclose(load_audio(pathlib.Path(path)), data, atol=1e-6)


def test_load_stereo_44k_wav_is_downmixed_and_resampled(tmp_path):
    n = 44100
    stereo = np.stack([sine(440, 44100), sine(440, 44100, amplitude=0.3)], axis=1)
    path = tmp_path / "stereo44k.wav"
    sf.write(path, stereo, 44100)
    out = load_audio(path)
    assert_valid_output(out)
    assert abs(len(out) - math.ceil(n * SR / 44100)) <= 1
    assert abs(peak_frequency(out, SR) - 440) < 2
    assert rms_amplitude(out[1000:-1000]) == pytest.approx(0.4, rel=0.02)


@pytest.mark.parametrize("extension,format_", [("flac", "FLAC"), ("ogg", "OGG"), ("mp3", "MP3")])
def test_load_compressed_formats(tmp_path, extension, format_):
    if format_ not in sf.available_formats():
        pytest.skip(f"soundfile cannot write {format_} here")
    path = tmp_path / f"tone.{extension}"
    sf.write(path, sine(440, 22050), 22050, format=format_)
    out = load_audio(path)
    assert_valid_output(out)
    assert abs(len(out) - SR) <= 1200  # lossy codecs may add priming/padding samples
    assert abs(peak_frequency(out, SR) - 440) < 3


def test_load_encoded_bytes(wav_16k):
    path, data = wav_16k
    out = load_audio(path.read_bytes())
    assert_valid_output(out)
    np.testing.assert_allclose(out, data, atol=1e-6)


def test_load_encoded_bytearray(wav_16k):
    path, data = wav_16k
    np.testing.assert_allclose(load_audio(bytearray(path.read_bytes())), data, atol=1e-6)


# --- accepted inputs: raw samples -----------------------------------------------------------


def test_load_int16_array_is_scaled_to_unit_range():
    pcm = np.array([0, 16384, -32768, 32767], dtype=np.int16)
    out = load_audio(pcm, sampling_rate=SR)
    assert_valid_output(out)
    np.testing.assert_allclose(out, [0.0, 0.5, -1.0, 32767 / 32768])


def test_load_int32_array_is_scaled_to_unit_range():
    pcm = np.array([0, 2**30, -(2**31)], dtype=np.int32)
    np.testing.assert_allclose(load_audio(pcm, sampling_rate=SR), [0.0, 0.5, -1.0])


def test_load_uint8_array_is_centred_and_scaled():
    pcm = np.array([128, 192, 0], dtype=np.uint8)
    np.testing.assert_allclose(load_audio(pcm, sampling_rate=SR), [0.0, 0.5, -1.0])


def test_load_float64_stereo_channels_first_is_averaged():
    left, right = sine(440, SR, 0.1), sine(440, SR, 0.1, amplitude=0.1)
    out = load_audio(np.stack([left, right]).astype(np.float64), sampling_rate=SR)
    assert_valid_output(out)
    np.testing.assert_allclose(out, (left + right) / 2, atol=1e-6)


def test_load_float64_stereo_channels_last_is_averaged():
    left, right = sine(440, SR, 0.1), sine(440, SR, 0.1, amplitude=0.1)
    out = load_audio(np.stack([left, right], axis=1).astype(np.float64), sampling_rate=SR)
    assert_valid_output(out)
    np.testing.assert_allclose(out, (left + right) / 2, atol=1e-6)


def test_load_raw_array_at_other_rate_is_resampled():
    out = load_audio(sine(440, 8000), sampling_rate=8000)
    assert len(out) == SR
    assert abs(peak_frequency(out, SR) - 440) < 2


def test_load_torch_tensor():
    data = sine(440, SR, 0.1)
    out = load_audio(torch.from_numpy(data), sampling_rate=SR)
    assert_valid_output(out)
    np.testing.assert_allclose(out, data)


def test_load_bfloat16_tensor_is_widened():
    out = load_audio(torch.full((100,), 0.5, dtype=torch.bfloat16), sampling_rate=SR)
    np.testing.assert_allclose(out, 0.5)


def test_load_accepts_integer_valued_float_sampling_rate():
    assert len(load_audio(np.zeros(80, dtype=np.float32), sampling_rate=8000.0)) == 160


# --- accepted inputs: datasets and decoders -------------------------------------------------


def test_load_decoded_datasets_dict():
    data = sine(440, 8000, 0.1)
    out = load_audio({"array": data, "sampling_rate": 8000, "path": None})
    assert len(out) == 1600


def test_load_decoded_dict_without_rate_falls_back_to_sampling_rate_argument():
    out = load_audio({"array": np.zeros(80, dtype=np.float32), "sampling_rate": None}, sampling_rate=8000)
    assert len(out) == 160


def test_load_datasets_dict_prefers_bytes_over_path(wav_16k):
    path, data = wav_16k
    out = load_audio({"bytes": path.read_bytes(), "path": "does/not/exist.wav"})
    np.testing.assert_allclose(out, data, atol=1e-6)


def test_load_datasets_dict_with_null_bytes_uses_path(wav_16k):
    path, data = wav_16k
    np.testing.assert_allclose(load_audio({"bytes": None, "path": str(path)}), data, atol=1e-6)


def test_load_datasets_dict_with_only_path(wav_16k):
    path, data = wav_16k
    np.testing.assert_allclose(load_audio({"path": str(path)}), data, atol=1e-6)


def test_load_row_of_real_dataset_with_undecoded_audio_column(wav_16k):
    datasets = pytest.importorskip("datasets")
    path, data = wav_16k
    ds = datasets.Dataset.from_dict({"audio": [str(path)]}).cast_column("audio", datasets.Audio(decode=False))
    row = ds[0]["audio"]
    assert set(row) == {"bytes", "path"}
    np.testing.assert_allclose(load_audio(row), data, atol=1e-6)


class FakeSamples:
    def __init__(self, data: torch.Tensor, sample_rate: int):
        self.data = data
        self.sample_rate = sample_rate


class FakeAudioDecoder:
    """Mimics torchcodec's AudioDecoder, which datasets 5 returns for decoded audio."""

    def __init__(self, data: torch.Tensor, sample_rate: int):
        self._samples = FakeSamples(data, sample_rate)

    def get_all_samples(self) -> FakeSamples:
        return self._samples


def test_load_duck_typed_decoder_object():
    # 2 channels x 4 samples: the smaller-axis guess would be unambiguous anyway, but the decoder
    # layout is channels-first by contract.
    data = torch.tensor([[0.2, 0.4, 0.6, 0.8], [0.0, 0.0, 0.0, 0.0]])
    out = load_audio(FakeAudioDecoder(data, SR))
    assert_valid_output(out)
    np.testing.assert_allclose(out, [0.1, 0.2, 0.3, 0.4], atol=1e-7)


def test_load_duck_typed_decoder_is_resampled():
    out = load_audio(FakeAudioDecoder(torch.from_numpy(sine(440, 48000))[None], 48000))
    assert len(out) == SR


# --- batches --------------------------------------------------------------------------------


def test_batch_accepts_list_of_mixed_items(wav_16k):
    path, data = wav_16k
    out = load_audio_batch([path, data], sampling_rate=SR)
    assert len(out) == 2
    for waveform in out:
        np.testing.assert_allclose(waveform, data, atol=1e-6)


def test_batch_wraps_single_item(wav_16k):
    path, data = wav_16k
    out = load_audio_batch(str(path))
    assert len(out) == 1
    np.testing.assert_allclose(out[0], data, atol=1e-6)


def test_batch_error_names_item_index():
    good = np.zeros(10, dtype=np.float32)
    with pytest.raises(AudioInputError, match=r"audio item 1: .*NaN/inf"):
        load_audio_batch([good, np.array([0.0, np.nan], dtype=np.float32)], sampling_rate=SR)


def test_batch_error_names_file_path(tmp_path):
    missing = tmp_path / "missing.wav"
    with pytest.raises(AudioInputError, match=rf"^{re.escape(str(missing))}: file not found"):
        load_audio_batch([missing])


# --- errors ---------------------------------------------------------------------------------


def test_missing_file_error_names_path(tmp_path):
    missing = tmp_path / "clip.wav"
    with pytest.raises(AudioInputError, match=rf"^{re.escape(str(missing))}: file not found"):
        load_audio(str(missing))


def test_missing_path_in_datasets_dict_names_path():
    with pytest.raises(AudioInputError, match=r"audio item 0 \(nope\.wav\): file not found"):
        load_audio_batch([{"bytes": None, "path": "nope.wav"}])


def test_directory_is_rejected(tmp_path):
    with pytest.raises(AudioInputError, match="not a regular file"):
        load_audio(tmp_path)


def test_corrupt_file_error_names_path_and_decoder_message(tmp_path):
    path = tmp_path / "corrupt.wav"
    path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEthis is not audio")
    with pytest.raises(AudioInputError, match=rf"^{re.escape(str(path))}: could not decode audio \(.+\)") as excinfo:
        load_audio(path)
    assert excinfo.value.__cause__ is not None


def test_corrupt_bytes_error_is_clear():
    with pytest.raises(AudioInputError, match=r"^audio item 0: could not decode audio"):
        load_audio_batch([b"definitely not an audio file"])


def test_empty_array_is_rejected():
    with pytest.raises(AudioInputError, match=r"audio item 0: audio is empty \(0 samples\)"):
        load_audio_batch([np.zeros(0, dtype=np.float32)], sampling_rate=SR)


def test_empty_stereo_array_is_rejected():
    with pytest.raises(AudioInputError, match=r"is empty \(0 samples\)"):
        load_audio(np.zeros((2, 0), dtype=np.float32), sampling_rate=SR)


def test_empty_wav_file_is_rejected(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), SR)
    with pytest.raises(AudioInputError, match=rf"^{re.escape(str(path))}: audio is empty \(0 samples\)"):
        load_audio(path)


def test_nan_samples_are_rejected():
    with pytest.raises(AudioInputError, match=r"audio item 0: audio contains NaN/inf samples"):
        load_audio_batch([np.array([0.0, np.nan, 0.1])], sampling_rate=SR)


def test_inf_samples_are_rejected():
    with pytest.raises(AudioInputError, match=r"audio item 0: audio contains NaN/inf samples"):
        load_audio_batch([torch.tensor([0.0, float("inf")])], sampling_rate=SR)


def test_nan_samples_in_float_wav_are_rejected(tmp_path):
    path = tmp_path / "nan.wav"
    sf.write(path, np.array([0.0, np.nan, 0.0] * 100, dtype=np.float32), SR, subtype="FLOAT")
    with pytest.raises(AudioInputError, match=rf"^{re.escape(str(path))}: audio contains NaN/inf"):
        load_audio(path)


def test_raw_array_without_sampling_rate_is_rejected():
    with pytest.raises(AudioInputError, match=r"audio item 0: raw array needs sampling_rate="):
        load_audio_batch([np.zeros(10, dtype=np.float32)])


def test_datasets_array_dict_without_any_rate_is_rejected():
    with pytest.raises(AudioInputError, match="needs a 'sampling_rate'"):
        load_audio({"array": np.zeros(10, dtype=np.float32)})


@pytest.mark.parametrize("rate", [500, 400000, 0, -16000])
def test_absurd_sampling_rate_is_rejected(rate):
    with pytest.raises(AudioInputError, match=rf"audio item 0: sample rate {rate} Hz is outside"):
        load_audio_batch([np.zeros(10, dtype=np.float32)], sampling_rate=rate)


def test_non_integer_sampling_rate_is_rejected():
    with pytest.raises(AudioInputError, match=r"sample rate 16000\.5 Hz is not a whole number"):
        load_audio(np.zeros(10, dtype=np.float32), sampling_rate=16000.5)


def test_absurd_rate_from_decoder_is_rejected():
    with pytest.raises(AudioInputError, match="sample rate 100 Hz"):
        load_audio(FakeAudioDecoder(torch.zeros(1, 10), 100))


@pytest.mark.parametrize("shape", [(20, 30), (16, 16)])
def test_ambiguous_2d_shape_is_rejected(shape):
    with pytest.raises(AudioInputError, match=rf"audio item 0: ambiguous 2-D audio shape \({shape[0]}, {shape[1]}\)"):
        load_audio_batch([np.zeros(shape, dtype=np.float32)], sampling_rate=SR)


def test_three_dimensional_array_is_rejected():
    with pytest.raises(AudioInputError, match=r"expected 1-D or 2-D"):
        load_audio(np.zeros((2, 2, 100), dtype=np.float32), sampling_rate=SR)


@pytest.mark.parametrize("dtype", [np.bool_, np.complex64, object, np.int64])
def test_unsupported_sample_dtype_is_rejected(dtype):
    with pytest.raises(AudioInputError, match=r"audio item 0: unsupported sample dtype"):
        load_audio_batch([np.zeros(10, dtype=dtype)], sampling_rate=SR)


def test_unsupported_item_type_is_rejected():
    with pytest.raises(AudioInputError, match=r"audio item 0: unsupported audio input type builtins\.int"):
        load_audio_batch([42])


def test_dict_without_audio_keys_is_rejected():
    with pytest.raises(AudioInputError, match=r"no usable 'array', 'bytes' or 'path'"):
        load_audio({"text": "hello"})


def test_audio_input_error_is_a_value_error():
    assert issubclass(AudioInputError, ValueError)


# --- files cut short, values out of range ------------------------------------------------------


def test_truncated_wav_loads_what_is_there_with_a_warning(tmp_path, caplog):
    path = tmp_path / "cut.wav"
    sf.write(path, sine(440, SR, 1.0), SR)  # 16-bit PCM: 32000 bytes of data
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    assert len(load_audio(path)) < SR
    assert f"{path}: truncated WAV: its header promises 32000 bytes of audio but the file holds" in caplog.text
    caplog.clear()
    load_audio(whole[: len(whole) // 2])
    assert "audio: truncated WAV" in caplog.text


def test_whole_wav_loads_without_a_warning(wav_16k, caplog):
    load_audio(wav_16k[0])
    assert "truncated" not in caplog.text


def test_values_beyond_float32_are_out_of_range_not_nan():
    with pytest.raises(AudioInputError, match=r"audio: sample values up to 1e\+40 are out of range"):
        load_audio(np.array([0.1, 1e40, -0.2]), sampling_rate=SR)


def test_error_for_a_path_dict_names_the_path(tmp_path):
    (tmp_path / "junk.wav").write_bytes(b"RIFF not audio")
    with pytest.raises(AudioInputError, match=re.escape(f"audio ({tmp_path / 'junk.wav'}): could not decode")):
        load_audio({"path": str(tmp_path / "junk.wav")})
    with pytest.raises(AudioInputError, match=re.escape(f"audio item 1 ({tmp_path / 'gone.wav'}): file not found")):
        load_audio_batch([sine(440, SR), {"path": str(tmp_path / "gone.wav"), "bytes": None}], sampling_rate=SR)
