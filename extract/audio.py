"""Audio decoding: any file soundfile/libsndfile reads -> mono float32 at the rate asked.

Formats: WAV (8/16/24/32-bit int and float), FLAC, OGG (Vorbis/Opus), MP3, Sun/NeXT ``.au`` (the
original GTZAN files), AIFF and everything else libsndfile knows. Only the requested window is
decoded: the file is opened with :class:`soundfile.SoundFile`, seeked to ``offset`` and read for
``duration`` seconds, so a 10 s segment of an hour-long file costs 10 s of decoding.

Pipeline of :func:`load_audio` (the exact preprocessing, in this order):

1. decode the window ``[offset, offset + duration)`` as float32 ``[frames, channels]`` (MP3: seek
   8 frames early and drop them, so a window is sample-exact with the full decode);
2. reject NaN/inf samples;
3. mix to mono by the mean over channels -> ``[frames]``;
4. resample with soxr (``quality="HQ"``, soxr's default and librosa's ``soxr_hq``: 20-bit precision,
   linear phase) from the file's rate to ``sample_rate`` (``None`` keeps the native rate);
5. the gain rule (:data:`GAINS`): ``"none"`` (the default) keeps the decoded amplitude, which is what
   every encoder's own feature extractor expects (MERT-v1: ``do_normalize`` false; wav2vec 2.0:
   zero mean / unit variance inside the encoder; CLAP: the waveform as decoded); ``"peak"`` divides
   by ``max|x|`` (to [-1, 1]; an all-zero clip stays all zeros), the rule of stores made before the
   gain was an option.

:func:`stream_audio` gives the same samples block by block at several rates at once (one streaming
soxr resampler per rate), so a long recording is never held whole in memory.

Every failure is an :class:`~embedstore.errors.AudioError` naming the file and a one-line reason.
A file holding less audio than its header promises (a cut download) is such a failure, with the
reason ``truncated: header says 30.0 s, file holds 0.4 s``: uncompressed WAV/AIFF/AU are caught when
opened (so at dataset discovery), any format when decoding falls short of the header's length (see
:mod:`embedstore.extract.truncation`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from embedstore.errors import AudioError, EmbedstoreError
from embedstore.extract.truncation import declared_frames, decode_slack, truncated_reason

__all__ = [
    "AUDIO_EXTENSIONS",
    "DEFAULT_GAIN",
    "GAINS",
    "LEGACY_GAIN",
    "RESAMPLE_QUALITY",
    "STREAM_BLOCK_SECONDS",
    "AudioInfo",
    "audio_duration",
    "audio_info",
    "check_gain",
    "is_audio_path",
    "load_audio",
    "load_audio_rates",
    "preprocessing_description",
    "stream_audio",
]

#: soxr quality preset used for every resampling (see module docstring).
RESAMPLE_QUALITY = "HQ"

#: Native audio read per block by :func:`stream_audio` (seconds).
STREAM_BLOCK_SECONDS = 30.0

#: Gain rules of :func:`load_audio`: the decoded amplitude as is, or peak-normalised to [-1, 1].
GAINS = ("none", "peak")
#: The gain rule unless asked otherwise: what the encoders' own feature extractors expect.
DEFAULT_GAIN = "none"
#: The gain rule of model entries that predate the ``gain`` metadata key (always peak-normalised).
LEGACY_GAIN = "peak"

#: File name suffixes (lower case) treated as audio when scanning a folder.
AUDIO_EXTENSIONS = frozenset(
    {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".au", ".snd", ".aif", ".aiff", ".w64", ".rf64", ".caf"}
)

#: Samples decoded before a seek target and thrown away, per container (8 MPEG layer III frames).
_SEEK_PREROLL = {"MP3": 8 * 1152}


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says: rate, channels, length, container and sample format."""

    path: str
    sample_rate: int
    channels: int
    frames: int
    format: str
    subtype: str

    @property
    def duration(self) -> float:
        """Length in seconds (``frames / sample_rate``)."""
        return self.frames / self.sample_rate


def is_audio_path(path: str | Path) -> bool:
    """True when ``path``'s suffix is one of :data:`AUDIO_EXTENSIONS` and it is not a hidden file."""
    p = Path(path)
    return p.suffix.lower() in AUDIO_EXTENSIONS and not p.name.startswith(".")


def check_gain(gain: str) -> str:
    """Return ``gain`` if it is one of :data:`GAINS`, else raise :class:`EmbedstoreError` naming ``--gain``."""
    if gain not in GAINS:
        raise EmbedstoreError(f"--gain must be one of {', '.join(GAINS)}, got {gain!r}")
    return gain


def preprocessing_description(sample_rate: int | None, gain: str = DEFAULT_GAIN) -> dict:
    """The exact preprocessing :func:`load_audio` applies, as JSON-able metadata for a store.

    Rules only (decoder, window, mono, resampler and its quality, gain, dtype); the library versions
    are recorded separately, so that resuming with an upgraded library is not a different rule.
    """
    return {
        "decoder": "soundfile (libsndfile)",
        "window": "seek to the track offset, read its duration (MP3: 8 frames of pre-roll dropped)",
        "mono": "mean over channels",
        "resampler": "soxr",
        "resample_quality": RESAMPLE_QUALITY,
        "sample_rate": sample_rate,
        "gain": check_gain(gain),
        "gain_rule": "peak-normalise to [-1, 1] (x / max|x|)" if gain == "peak" else "none (decoded amplitude)",
        "dtype": "float32",
    }


def _reason_from_soundfile(exc: Exception) -> str:
    """Turn a libsndfile error into a short human reason (one line)."""
    detail = getattr(exc, "error_string", None) or str(exc)
    detail = " ".join(str(detail).split()).rstrip(".")
    code = getattr(exc, "code", None)
    if code == 1 or "format not recognised" in detail.lower():
        return "not audio or an unsupported format (libsndfile: format not recognised)"
    if code == 2 or "system error" in detail.lower():
        return f"cannot be opened (libsndfile: {detail})"
    return f"corrupt or truncated audio (libsndfile: {detail})"


def _open(path: Path) -> sf.SoundFile:
    """Open ``path`` for reading, translating every failure into :class:`AudioError`."""
    if not path.exists():
        raise AudioError(path, "file not found")
    if path.is_dir():
        raise AudioError(path, "is a directory, not an audio file")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise AudioError(path, f"cannot be read ({exc.strerror or exc})") from exc
    if size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    try:
        return sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(path, _reason_from_soundfile(exc)) from exc
    except OSError as exc:
        raise AudioError(path, f"cannot be read ({exc.strerror or exc})") from exc


def _info_of(path: Path, f: sf.SoundFile) -> AudioInfo:
    info = AudioInfo(
        path=str(path),
        sample_rate=int(f.samplerate),
        channels=int(f.channels),
        frames=int(f.frames),
        format=str(f.format),
        subtype=str(f.subtype),
    )
    if info.sample_rate <= 0 or info.channels <= 0:
        raise AudioError(path, f"invalid header ({info.sample_rate} Hz, {info.channels} channels)")
    if info.frames <= 0:
        raise AudioError(path, "contains no audio samples (zero length)")
    declared = declared_frames(path, info.subtype, info.channels)
    if declared is not None and declared > info.frames:  # libsndfile cut the length to the bytes present
        raise AudioError(path, truncated_reason(declared / info.sample_rate, info.duration))
    return info


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Read ``path``'s header (no decode) and check it describes at least one sample.

    Raises :class:`AudioError` for a missing, empty, non-audio or truncated file and for a header
    that declares zero samples. This is the cheap "is it readable" check used at dataset discovery.
    """
    p = Path(path)
    with _open(p) as f:
        return _info_of(p, f)


def audio_duration(path: str | os.PathLike) -> float:
    """Length of ``path`` in seconds, from the header (no full decode)."""
    return audio_info(path).duration


def _check_rate(path: Path, sample_rate: int | None) -> None:
    if sample_rate is not None and (
        isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0
    ):
        raise AudioError(path, f"invalid target sample rate {sample_rate!r} (need a positive integer or None)")


def _check_request(p: Path, sample_rate: int | None, offset: float, duration: float | None, gain: str) -> None:
    """Raise for a bad gain rule, target rate or window (see :func:`load_audio`)."""
    check_gain(gain)
    _check_rate(p, sample_rate)
    if not math.isfinite(offset) or offset < 0:
        raise AudioError(p, f"invalid offset {offset!r} s (need a finite value >= 0)")
    if duration is not None and (not math.isfinite(duration) or duration <= 0):
        raise AudioError(p, f"invalid duration {duration!r} s (need a finite value > 0)")


def _mono_blocks(
    p: Path, f: sf.SoundFile, info: AudioInfo, offset: float, duration: float | None, block: int | None
) -> Iterator[np.ndarray]:
    """Steps 1-3 of :func:`load_audio` on an open file: the window as consecutive mono float32 blocks
    ``[frames]`` of at most ``block`` frames each (``None``: one block). Raises :class:`AudioError` for
    a window past the end, NaN/inf samples, and (after the last block) a file holding less than its
    header promises."""
    start = int(round(offset * info.sample_rate))
    if start >= info.frames:
        raise AudioError(p, f"offset {offset:g} s is past the end of the audio ({info.duration:.3f} s)")
    n_frames = -1 if duration is None else max(1, int(round(duration * info.sample_rate)))
    # MPEG decoders restart cold after a seek (bit reservoir, overlap-add): the first frames come
    # out as zeros. Seek earlier and drop the pre-roll so a window equals the full decode's slice.
    preroll = min(start, _SEEK_PREROLL.get(info.format, 0))
    left = -1 if n_frames < 0 else n_frames + preroll  # frames still to read (-1: to the end)
    got = 0
    try:
        if start:
            f.seek(start - preroll)
        while left:
            want = left if block is None else (block if left < 0 else min(block, left))
            data = f.read(frames=want, dtype="float32", always_2d=True)  # [frames, channels]
            if data.shape[0] == 0:
                break
            left = left if left < 0 else left - data.shape[0]
            data, preroll = data[preroll:], max(0, preroll - data.shape[0])
            if not np.isfinite(data).all():
                raise AudioError(p, "contains NaN or infinite sample values")
            got += data.shape[0]
            if data.shape[0]:
                yield data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
            if block is None:
                break
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(p, _reason_from_soundfile(exc)) from exc
    promised = info.frames - start if n_frames < 0 else min(n_frames, info.frames - start)
    if promised - got > decode_slack(info.format, promised) or got == 0:
        held = (start + got) / info.sample_rate if got else None
        raise AudioError(p, truncated_reason(info.duration, held, before=offset))


def _apply_gain(mono: np.ndarray, gain: str, peak: float) -> np.ndarray:
    """Step 5 of :func:`load_audio`: ``"peak"`` divides by ``peak`` (the whole clip's ``max|x|``)."""
    if gain == "peak" and peak > 0.0:
        mono = mono / np.float32(peak)
        np.clip(mono, -1.0, 1.0, out=mono)  # guard the last ulp of rounding
    return mono


def load_audio(
    path: str | os.PathLike,
    sample_rate: int | None,
    *,
    offset: float = 0.0,
    duration: float | None = None,
    gain: str = DEFAULT_GAIN,
) -> np.ndarray:
    """Decode a window of an audio file into mono float32 at ``sample_rate``.

    Args:
        path: any file libsndfile reads (see module docstring).
        sample_rate: target rate in Hz; ``None`` keeps the file's native rate.
        offset: start of the window in seconds (>= 0, before the end of the file).
        duration: window length in seconds (> 0); ``None`` reads to the end. A window running past
            the end of the file is cut at the end (the result is shorter, never padded).
        gain: ``"none"`` keeps the decoded amplitude; ``"peak"`` peak-normalises to [-1, 1] (an
            all-zero clip stays zeros). Anything else raises :class:`EmbedstoreError`.

    Returns:
        float32 array ``[samples]``, ``samples ~= round(frames_read * sample_rate / native_rate)``.

    Raises:
        AudioError: the file is missing, empty, not audio, truncated/corrupt, has zero samples,
            contains NaN/inf, or the window is invalid (negative, empty, or past the end).
    """
    return load_audio_rates(path, [sample_rate], offset=offset, duration=duration, gain=gain)[sample_rate]


def load_audio_rates(
    path: str | os.PathLike,
    rates: Sequence[int | None],
    *,
    offset: float = 0.0,
    duration: float | None = None,
    gain: str = DEFAULT_GAIN,
) -> dict[int | None, np.ndarray]:
    """:func:`load_audio` at several rates from one decode of the file: ``{rate: float32 [samples]}``,
    each equal to ``load_audio(path, rate, ...)``. Raises as :func:`load_audio`."""
    p = Path(path)
    for sr in rates:
        _check_request(p, sr, offset, duration, gain)
    with _open(p) as f:
        info = _info_of(p, f)
        (mono,) = _mono_blocks(p, f, info, offset, duration, None)
    out = {}
    for sr in rates:
        wave = mono
        if sr is not None and int(sr) != info.sample_rate:
            wave = soxr.resample(mono, info.sample_rate, int(sr), quality=RESAMPLE_QUALITY)
        wave = np.ascontiguousarray(wave, dtype=np.float32)
        out[sr] = _apply_gain(wave, gain, float(np.max(np.abs(wave))) if gain == "peak" and wave.size else 0.0)
    return out


def _resampled_blocks(
    p: Path, rates: Sequence[int], offset: float, duration: float | None, block_seconds: float
) -> Iterator[dict[int, np.ndarray]]:
    """Steps 1-4 of :func:`load_audio`, block by block, at every rate of ``rates`` at once."""
    with _open(p) as f:
        info = _info_of(p, f)
        block = max(1, int(round(block_seconds * info.sample_rate)))
        streams = {sr: soxr.ResampleStream(info.sample_rate, sr, 1, dtype="float32", quality=RESAMPLE_QUALITY)
                   for sr in rates if sr != info.sample_rate}
        for mono in _mono_blocks(p, f, info, offset, duration, block):
            mono = np.ascontiguousarray(mono, dtype=np.float32)
            yield {sr: streams[sr].resample_chunk(mono) if sr in streams else mono for sr in rates}
    empty = np.zeros(0, dtype=np.float32)
    yield {sr: streams[sr].resample_chunk(empty, last=True) if sr in streams else empty for sr in rates}


def stream_audio(
    path: str | os.PathLike,
    rates: Sequence[int],
    *,
    offset: float = 0.0,
    duration: float | None = None,
    gain: str = DEFAULT_GAIN,
    block_seconds: float = STREAM_BLOCK_SECONDS,
) -> Iterator[dict[int, np.ndarray]]:
    """:func:`load_audio` of a window at several rates, as consecutive blocks: bounded memory for long files.

    The file is read ``block_seconds`` of native audio at a time, mixed to mono and fed to one
    streaming soxr resampler (:class:`soxr.ResampleStream`, same quality) per rate, so that joining
    the blocks of a rate gives exactly ``load_audio(path, rate, offset=..., duration=..., gain=...)``
    (soxr's one-shot call streams internally: the samples are identical). The ``"peak"`` gain needs the
    whole clip's peak first, so it decodes the window twice (a first pass only measures the peaks).

    Args:
        path, offset, duration, gain: as for :func:`load_audio`.
        rates: target sample rates in Hz (positive integers).
        block_seconds: native audio read per block.

    Yields:
        ``{rate: float32 [samples]}`` per block (a block may hold zero samples at a rate: the
        resampler's delay); the last one flushes the resamplers.

    Raises:
        AudioError: as :func:`load_audio`; a truncation shows only once the blocks before it were yielded.
    """
    p = Path(path)
    rates = sorted(set(rates))
    for sr in rates or [None]:
        _check_request(p, sr, offset, duration, gain)
    peaks = dict.fromkeys(rates, 0.0)
    if gain == "peak":
        for blocks in _resampled_blocks(p, rates, offset, duration, block_seconds):
            for sr, x in blocks.items():
                peaks[sr] = max(peaks[sr], float(np.max(np.abs(x))) if x.size else 0.0)
    for blocks in _resampled_blocks(p, rates, offset, duration, block_seconds):
        yield {sr: _apply_gain(x, gain, peaks[sr]) for sr, x in blocks.items()}
