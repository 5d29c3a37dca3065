"""extract/audio.py: every format/rate/channel count decodes to the right signal; bad input -> AudioError."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from embedstore.errors import AudioError, EmbedstoreError
from embedstore.extract.audio import audio_duration, audio_info, load_audio, preprocessing_description
from synth import cut_bytes, write_broken, write_truncated_pcm

FREQ = 440.0
SECONDS = 1.5
TARGET = 16000


def _dominant_freq(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spec)) * sr / x.size


def _write_sine(path: Path, sr: int, channels: int, subtype: str, amp: float = 0.5) -> np.ndarray:
    """Write a FREQ sine, channel c scaled by amp * (1 - 0.2 c); return the data ``[frames, channels]``."""
    t = np.arange(int(SECONDS * sr)) / sr
    tone = np.sin(2 * np.pi * FREQ * t)
    data = np.stack([amp * (1 - 0.2 * c) * tone for c in range(channels)], axis=1)
    sf.write(str(path), data, sr, subtype=subtype)
    return data


# (extension, subtype, native rate, channels, lossless)
FORMATS = [
    ("wav", "PCM_U8", 8000, 1, True),
    ("wav", "PCM_16", 22050, 1, True),
    ("wav", "PCM_24", 44100, 2, True),
    ("wav", "PCM_32", 48000, 1, True),
    ("wav", "FLOAT", 16000, 2, True),
    ("wav", "DOUBLE", 32000, 6, True),
    ("flac", "PCM_16", 44100, 2, True),
    ("flac", "PCM_24", 96000, 1, True),
    ("au", "PCM_16", 22050, 1, True),  # original GTZAN format
    ("ogg", "VORBIS", 48000, 2, False),
    ("mp3", "MPEG_LAYER_III", 44100, 2, False),
    ("mp3", "MPEG_LAYER_III", 22050, 1, False),
]


@pytest.mark.parametrize("ext,subtype,sr,channels,lossless", FORMATS, ids=lambda v: str(v))
def test_formats_rates_channels(tmp_path, ext, subtype, sr, channels, lossless):
    path = tmp_path / f"tone.{ext}"
    _write_sine(path, sr, channels, subtype)

    info = audio_info(path)
    assert (info.sample_rate, info.channels) == (sr, channels)
    assert audio_duration(path) == pytest.approx(SECONDS, abs=0.06 if not lossless else 1e-9)

    y = load_audio(path, TARGET)
    assert y.dtype == np.float32 and y.ndim == 1
    assert np.isfinite(y).all()
    assert y.size == pytest.approx(SECONDS * TARGET, abs=1 if lossless else 0.06 * TARGET)
    assert _dominant_freq(y, TARGET) == pytest.approx(FREQ, abs=2 * TARGET / y.size)
    peak = load_audio(path, TARGET, gain="peak")
    assert float(np.max(np.abs(peak))) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(peak, y / np.abs(y).max(), atol=1e-6)
    if lossless:
        # independent reference: the analytic tone sampled at the target rate, at the channel mean's
        # amplitude (no gain change by default)
        t = np.arange(y.size) / TARGET
        amplitude = np.mean([0.5 * (1 - 0.2 * c) for c in range(channels)])
        ref = amplitude * np.sin(2 * np.pi * FREQ * t)
        inner = slice(int(0.1 * TARGET), y.size - int(0.1 * TARGET))  # skip resampler edge transients
        tol = 0.015 if subtype == "PCM_U8" else 2.5e-3
        np.testing.assert_allclose(y[inner], ref[inner], atol=tol)


def test_native_rate_and_exact_values(tmp_path):
    rng = np.random.default_rng(0)
    data = (rng.uniform(-0.3, 0.3, size=(12345, 2))).astype(np.float32)
    path = tmp_path / "noise.wav"
    sf.write(str(path), data, 22050, subtype="FLOAT")
    raw = load_audio(path, None)
    np.testing.assert_allclose(raw, data.mean(axis=1), rtol=0, atol=1e-7)
    y = load_audio(path, None, gain="peak")
    mono = data.mean(axis=1)
    np.testing.assert_allclose(y, mono / np.abs(mono).max(), rtol=0, atol=1e-6)
    assert load_audio(path, 22050).size == 12345  # same rate: no resampling


def test_stereo_mix_is_channel_mean(tmp_path):
    t = np.arange(8000) / 8000
    left = 0.8 * np.sin(2 * np.pi * 300 * t)
    path = tmp_path / "st.wav"
    sf.write(str(path), np.stack([left, -0.5 * left], axis=1), 8000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path, None), 0.25 * left, atol=1e-6)


@pytest.mark.parametrize("ext,subtype", [("wav", "FLOAT"), ("flac", "PCM_24"), ("au", "PCM_16")])
def test_offset_and_duration_read_the_window(tmp_path, ext, subtype):
    sr = 8000
    rng = np.random.default_rng(1)
    data = rng.uniform(-0.9, 0.9, size=3 * sr)
    path = tmp_path / f"long.{ext}"
    sf.write(str(path), data, sr, subtype=subtype)
    full = load_audio(path, None)
    win = load_audio(path, None, offset=1.25, duration=0.5)
    np.testing.assert_array_equal(win, full[10000:14000])
    # a window running past the end is cut at the end
    tail = load_audio(path, None, offset=2.5, duration=2.0)
    np.testing.assert_array_equal(tail, full[20000:])
    # resampled window length follows the window, not the file
    assert load_audio(path, 16000, offset=1.0, duration=1.0).size == pytest.approx(16000, abs=1)


def test_mp3_seek_matches_full_decode(tmp_path):
    path = tmp_path / "s.mp3"
    _write_sine(path, 44100, 1, "MPEG_LAYER_III")
    full = load_audio(path, None)
    for offset in (0.05, 0.5, 1.0):  # before and after the decoder's pre-roll distance
        win = load_audio(path, None, offset=offset, duration=0.25)
        start = int(round(offset * 44100))
        assert win.size == int(0.25 * 44100)
        np.testing.assert_allclose(win, full[start:start + win.size], atol=1e-6)


@pytest.mark.parametrize("gain", ["none", "peak"])
def test_silence_stays_zero(tmp_path, gain):
    path = tmp_path / "silent.wav"
    sf.write(str(path), np.zeros(4000, np.float32), 16000, subtype="PCM_16")
    y = load_audio(path, 8000, gain=gain)
    assert y.size == 2000 and np.isfinite(y).all() and not y.any()


def test_gain_keeps_or_peak_normalises_the_decoded_amplitude(tmp_path):
    # a quiet copy of a clip decodes to the quiet samples; --gain peak maps both copies onto one waveform
    rng = np.random.default_rng(3)
    x = rng.uniform(-0.8, 0.8, size=8000).astype(np.float32)
    loud, quiet = tmp_path / "loud.wav", tmp_path / "quiet.wav"
    sf.write(str(loud), x, 8000, subtype="FLOAT")
    sf.write(str(quiet), np.float32(0.1) * x, 8000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(quiet, None), np.float32(0.1) * x)
    np.testing.assert_allclose(load_audio(loud, 16000), 10 * load_audio(quiet, 16000), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(load_audio(quiet, None, gain="peak"), x / np.abs(x).max(), atol=1e-6)
    np.testing.assert_allclose(load_audio(quiet, None, gain="peak"), load_audio(loud, None, gain="peak"), atol=1e-6)
    with pytest.raises(EmbedstoreError, match="--gain must be one of none, peak, got 'loud'"):
        load_audio(loud, None, gain="loud")


def test_preprocessing_description_names_each_rule():
    d = preprocessing_description(24000, "peak")
    assert (d["gain"], d["resampler"], d["resample_quality"], d["sample_rate"]) == ("peak", "soxr", "HQ", 24000)
    assert d["mono"] == "mean over channels"
    assert preprocessing_description(16000)["gain"] == "none"
    with pytest.raises(EmbedstoreError, match="--gain"):
        preprocessing_description(16000, "rms")


def test_real_gtzan_excerpt(gtzan_excerpts_dir):
    path = gtzan_excerpts_dir / "genres_original" / "jazz" / "jazz.00003.wav"
    with sf.SoundFile(str(path)) as f:
        frames, sr = f.frames, f.samplerate
        raw = f.read(dtype="float32")
    assert audio_duration(path) == pytest.approx(frames / sr)
    y = load_audio(path, 24000, offset=2.0, duration=10.0, gain="peak")
    assert y.size == pytest.approx(240000, abs=1)
    assert float(np.abs(y).max()) == pytest.approx(1.0)
    native = load_audio(path, None, offset=2.0, duration=10.0)
    np.testing.assert_array_equal(native, raw[2 * sr: 12 * sr])


# ---- bad input -------------------------------------------------------------------------------


def _nonfinite(tmp_path: Path, value: float) -> Path:
    path = tmp_path / "bad.wav"
    data = np.zeros(1000, np.float32)
    data[500] = value
    sf.write(str(path), data, 8000, subtype="FLOAT")
    return path


BAD = {
    "empty": (lambda d: write_broken(d, "x", "empty"), {}, "empty"),
    "truncated-header": (lambda d: write_broken(d, "x", "truncated-header"), {}, "corrupt or truncated"),
    "not-audio": (lambda d: write_broken(d, "x", "not-audio"), {}, "not audio"),
    "zero-length": (lambda d: write_broken(d, "x", "zero-length"), {}, "no audio samples"),
    "nan": (lambda d: _nonfinite(d, np.nan), {}, "NaN"),
    "inf": (lambda d: _nonfinite(d, np.inf), {}, "infinite"),
    "offset-past-end": (lambda d: _nonfinite(d, 0.5), {"offset": 1.0}, "past the end"),
    "negative-offset": (lambda d: _nonfinite(d, 0.5), {"offset": -1.0}, "invalid offset"),
    "zero-duration": (lambda d: _nonfinite(d, 0.5), {"duration": 0.0}, "invalid duration"),
    "missing": (lambda d: d / "nope.wav", {}, "not found"),
    "directory": (lambda d: d, {}, "directory"),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_input_raises_audio_error(tmp_path, kind):
    make, kwargs, words = BAD[kind]
    path = make(tmp_path)
    with pytest.raises(AudioError) as err:
        load_audio(path, 16000, **kwargs)
    msg = str(err.value)
    assert err.value.path == str(path) and msg.startswith(str(path))
    assert words in err.value.reason
    assert "\n" not in msg


@pytest.mark.parametrize("kind", ["empty", "truncated-header", "not-audio", "zero-length"])
def test_header_check_rejects_broken_files(tmp_path, kind):
    path = write_broken(tmp_path, "x", kind)
    with pytest.raises(AudioError):
        audio_info(path)
    with pytest.raises(AudioError):
        audio_duration(path)


def test_invalid_target_rate(tmp_path):
    path = _nonfinite(tmp_path, 0.5)
    with pytest.raises(AudioError, match="sample rate"):
        load_audio(path, 0)


# ---- truncated files ---------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["wav", "aiff", "au"])
def test_truncated_pcm_with_full_length_header_is_a_failure(tmp_path, ext):
    path = tmp_path / f"cut.{ext}"
    write_truncated_pcm(path, seconds=30.0, keep_seconds=0.4)
    expected = "truncated: header says 30.0 s, file holds 0.4 s"
    for read in (audio_info, lambda p: load_audio(p, 16000)):
        with pytest.raises(AudioError) as err:
            read(path)
        assert err.value.reason == expected and err.value.path == str(path)


def test_pcm_with_unknown_or_short_declared_size_is_not_truncated(tmp_path):
    """A streaming WAV (data size 0xFFFFFFFF) and one with bytes after its data are whole files."""
    x = np.random.default_rng(0).uniform(-0.5, 0.5, 4000).astype(np.float32)
    stream = tmp_path / "stream.wav"
    sf.write(str(stream), x, 8000, subtype="PCM_16")
    raw = bytearray(stream.read_bytes())
    at = raw.index(b"data") + 4
    raw[at : at + 4] = b"\xff\xff\xff\xff"
    stream.write_bytes(bytes(raw))
    assert audio_info(stream).frames == 4000
    padded = tmp_path / "padded.wav"
    sf.write(str(padded), x, 8000, subtype="PCM_16")
    padded.write_bytes(padded.read_bytes() + b"junk" * 10)  # bytes past the declared data
    assert load_audio(padded, None).shape == (4000,)


def test_cut_mp3_is_a_failure_when_decoded(tmp_path):
    sr, seconds = 22050, 6.0
    path = tmp_path / "cut.mp3"
    sf.write(str(path), np.random.default_rng(0).uniform(-0.5, 0.5, int(sr * seconds)).astype(np.float32), sr)
    cut_bytes(path, path.stat().st_size // 3)
    # the Xing header still promises the whole stream: the header check cannot tell...
    assert audio_info(path).frames == int(sr * seconds)
    # ...but decoding can: about a third of the audio is there (constant bit rate)
    with pytest.raises(AudioError) as err:
        load_audio(path, 16000)
    m = re.fullmatch(r"truncated: header says 6\.0 s, file holds (\d\.\d) s", err.value.reason)
    assert m and 1.6 <= float(m.group(1)) <= 2.1
    # a window inside the part that is there still decodes; one past it is a truncation
    assert load_audio(path, None, offset=0.5, duration=1.0).shape == (sr,)
    with pytest.raises(AudioError, match="truncated: header says 6.0 s, nothing decodes from 4.0 s on"):
        load_audio(path, None, offset=4.0, duration=1.0)
