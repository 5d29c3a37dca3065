"""Synthetic labelled audio: a GTZAN-like genre folder and a MusicCaps-like CSV + clips.

Used by ``embedstore demo`` (a dataset that needs no download) and by the tests.

Each "genre" is a recipe (pitch, timbre = harmonic spectrum, beat rate, noise colour, distortion)
so that MFCC/chroma statistics separate the classes; every clip adds random variation (pitch and
tempo jitter, phases, noise level, gain), so the task is learnable but not a lookup.

"""

from __future__ import annotations

import csv
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf

__all__ = [
    "BROKEN_KINDS",
    "DEFAULT_FORMATS",
    "DEFAULT_GENRES",
    "MUSICCAPS_COLUMNS",
    "RECIPES",
    "ClipFormat",
    "GenreRecipe",
    "make_gtzan_like",
    "make_musiccaps_like",
    "render_genre",
    "sine",
    "write_broken",
]


@dataclass(frozen=True)
class GenreRecipe:
    """How one synthetic genre sounds; ``description`` is used for MusicCaps-like captions."""

    f0: float  # base pitch, Hz
    n_harmonics: int
    rolloff: float  # harmonic k has amplitude k ** -rolloff
    odd_only: bool
    beat_hz: float  # amplitude pulses per second
    beat_depth: float  # 0: steady tone, 1: fully pulsed
    noise_color: float  # spectral slope exponent: 0 white, 1 pink, 2 brown
    noise_level: float  # noise RMS relative to the tone's
    drive: float  # tanh distortion (1: almost none)
    notes: tuple[int, ...]  # melody, in semitones above f0, one note per beat
    description: str


RECIPES: dict[str, GenreRecipe] = {
    "blues": GenreRecipe(196.0, 8, 1.0, False, 1.5, 0.5, 1.0, 0.05, 1.2, (0, 3, 5, 6, 7, 10),
                         "a mid-range bluesy guitar-like melody with a slow shuffle"),
    "classical": GenreRecipe(440.0, 4, 2.0, False, 0.5, 0.2, 0.0, 0.01, 1.0, (0, 2, 4, 5, 7, 9, 11, 12),
                             "a soft high flute-like melody with no drums"),
    "country": GenreRecipe(330.0, 10, 1.5, False, 2.0, 0.6, 1.0, 0.03, 1.0, (0, 2, 4, 7, 9),
                           "a bright plucked banjo-like melody with a steady beat"),
    "disco": GenreRecipe(130.0, 6, 1.2, False, 4.0, 0.9, 0.0, 0.15, 1.0, (0, 0, 7, 5),
                         "a funky bass line with a fast four-on-the-floor beat and hi-hats"),
    "hiphop": GenreRecipe(55.0, 3, 1.0, False, 1.5, 0.9, 2.0, 0.2, 1.5, (0, 0, 3, 0),
                          "a deep booming bass with a slow heavy beat"),
    "jazz": GenreRecipe(262.0, 6, 2.0, True, 2.5, 0.3, 1.0, 0.02, 1.0, (0, 4, 7, 10, 14, 11),
                        "a mellow clarinet-like melody with a swinging beat"),
    "metal": GenreRecipe(82.0, 20, 0.7, False, 6.0, 0.4, 0.0, 0.3, 4.0, (0, 0, 1, 0, 5, 3),
                         "a low heavily distorted guitar riff with a fast pounding beat"),
    "pop": GenreRecipe(523.0, 5, 1.5, False, 2.0, 0.7, 1.0, 0.05, 1.0, (0, 4, 7, 12, 7, 4),
                       "a high bright synth melody with a bouncy beat"),
    "reggae": GenreRecipe(98.0, 4, 1.3, True, 1.2, 0.8, 2.0, 0.1, 1.0, (0, 5, 7, 5),
                          "a low relaxed bass groove with a laid-back offbeat"),
    "rock": GenreRecipe(147.0, 12, 0.9, False, 2.5, 0.5, 0.0, 0.15, 2.5, (0, 5, 7, 3),
                        "a crunchy distorted guitar melody with a driving beat"),
}

DEFAULT_GENRES = ("classical", "hiphop", "metal", "pop")


@dataclass(frozen=True)
class ClipFormat:
    """How a synthetic clip is written: extension, sample rate, channels, soundfile subtype."""

    ext: str
    sample_rate: int
    channels: int = 1
    subtype: str | None = None


DEFAULT_FORMATS = (
    ClipFormat("wav", 22050, 1, "PCM_16"),
    ClipFormat("flac", 44100, 2, "PCM_16"),
    ClipFormat("ogg", 22050, 1, "VORBIS"),
    ClipFormat("au", 22050, 1, "PCM_16"),
)

#: The broken files ``make_gtzan_like(broken=True)`` adds (one each, numbered 00090 upwards).
BROKEN_KINDS = ("empty", "truncated-header", "not-audio", "zero-length")


def sine(freq: float, sample_rate: int, seconds: float, amplitude: float = 1.0, phase: float = 0.0) -> np.ndarray:
    """A pure tone, float32 ``[round(seconds * sample_rate)]``."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def _colored_noise(n: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise with power spectrum ~ 1/f**alpha, ``[n]``."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spec.size, dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spec / f ** (alpha / 2.0), n)
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def render_genre(genre: str, sample_rate: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """One clip of ``genre`` with random per-clip variation, float32 ``[samples]``, peak in [0.5, 0.9]."""
    r = RECIPES[genre]
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    transpose = rng.uniform(-1.0, 1.0)  # semitones
    beat_hz = r.beat_hz * rng.uniform(0.9, 1.1)
    beat_pos = t * beat_hz + rng.uniform(0, 1)
    notes = np.asarray(r.notes)[(np.floor(beat_pos).astype(int) + rng.integers(len(r.notes))) % len(r.notes)]
    freq = r.f0 * 2.0 ** ((notes + transpose) / 12.0)
    phase = 2 * np.pi * np.cumsum(freq) / sample_rate
    tone = np.zeros(n)
    ks = range(1, 2 * r.n_harmonics, 2) if r.odd_only else range(1, r.n_harmonics + 1)
    for k in ks:
        if k * freq.max() < 0.45 * sample_rate:  # stay below Nyquist
            tone += k ** -r.rolloff * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    tone /= np.sqrt(np.mean(tone**2)) + 1e-12
    pulse = np.exp(-6.0 * (beat_pos % 1.0))
    env = (1.0 - r.beat_depth) + r.beat_depth * pulse
    noise = _colored_noise(n, r.noise_color, rng) * r.noise_level * rng.uniform(0.5, 1.5)
    x = env * (tone + noise * (0.5 + pulse))
    x = np.tanh(r.drive * x / 3.0)
    x /= np.max(np.abs(x)) + 1e-12
    return (x * rng.uniform(0.5, 0.9)).astype(np.float32)


def _write(path: Path, x: np.ndarray, fmt: ClipFormat) -> None:
    data = x if fmt.channels == 1 else np.stack([x * (1.0 - 0.1 * c) for c in range(fmt.channels)], axis=1)
    sf.write(str(path), data, fmt.sample_rate, subtype=fmt.subtype)


def write_broken(folder: Path, stem: str, kind: str) -> Path:
    """Write one deliberately unreadable ``<stem>.wav`` of a :data:`BROKEN_KINDS` kind into ``folder``."""
    path = folder / f"{stem}.wav"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated-header":
        sf.write(str(path), np.zeros(1000, np.float32), 22050, subtype="PCM_16")
        path.write_bytes(path.read_bytes()[:20])  # RIFF header cut inside the fmt chunk
    elif kind == "not-audio":
        path.write_text("this is a text file renamed to .wav\n" * 20)
    elif kind == "zero-length":
        sf.write(str(path), np.zeros((0, 1), np.float32), 22050, subtype="PCM_16")
    else:
        raise ValueError(f"unknown broken kind {kind!r}")
    return path


def make_gtzan_like(
    root: str | Path,
    n_per_class: int = 6,
    genres: Sequence[str] = DEFAULT_GENRES,
    seconds: float = 3.0,
    formats: Sequence[ClipFormat] = DEFAULT_FORMATS,
    broken: bool = True,
    seed: int = 0,
    layout: str = "genres_original",
) -> Path:
    """Write a GTZAN-like folder and return ``root``.

    Clips go to ``root/<layout>/<genre>/<genre>.000NN.<ext>`` (``layout``: ``genres_original``,
    ``genres`` or ``.`` for genre folders directly in ``root``), NN = 00.. ``n_per_class - 1``;
    clip i of a genre uses ``formats[i % len(formats)]``. With ``broken=True`` one file of each
    :data:`BROKEN_KINDS` is added as ``<genre>.000(90+j).wav`` (genres cycled).
    """
    root = Path(root)
    base = root / layout
    rng = np.random.default_rng(seed)
    for genre in genres:
        folder = base / genre
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            fmt = formats[i % len(formats)]
            x = render_genre(genre, fmt.sample_rate, seconds, rng)
            _write(folder / f"{genre}.{i:05d}.{fmt.ext}", x, fmt)
    if broken:
        for j, kind in enumerate(BROKEN_KINDS):
            genre = genres[j % len(genres)]
            write_broken(base / genre, f"{genre}.{90 + j:05d}", kind)
    return root


def _ytid(rng: np.random.Generator) -> str:
    alphabet = np.array(list(string.ascii_letters + string.digits + "-_"))
    return "".join(rng.choice(alphabet[:-2], 1)) + "".join(rng.choice(alphabet, 10))


MUSICCAPS_COLUMNS = ("ytid", "start_s", "end_s", "audioset_positive_labels", "aspect_list", "caption",
                     "author_id", "is_balanced_subset", "is_audioset_eval")


def make_musiccaps_like(
    root: str | Path,
    n: int = 12,
    *,
    n_missing: int = 2,
    n_full_video: int = 3,
    seconds: float = 10.0,
    sample_rate: int = 16000,
    audio_dir: str = "audio",
    genres: Sequence[str] = tuple(RECIPES),
    ext: str = "wav",
    seed: int = 0,
) -> Path:
    """Write ``root/musiccaps-public.csv`` (``n`` rows) and clips ``root/<audio_dir>/<ytid>.<ext>``; return ``root``.

    The last ``n_missing`` rows have no clip on disk. The first ``n_full_video`` clips are "full
    videos": ``start_s`` seconds of near-silence, the ``seconds``-long segment, 2 s of near-silence;
    the others are exactly the segment (``start_s``/``end_s`` still say where it came from).
    Row i renders ``genres[i % len(genres)]`` and its caption describes that sound.
    """
    root = Path(root)
    clips = root / audio_dir
    clips.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        genre = genres[i % len(genres)]
        ytid = _ytid(rng)
        start = float(rng.integers(1, 6) * 5 if i < n_full_video else rng.integers(0, 30) * 10)
        end = start + seconds
        clip = render_genre(genre, sample_rate, seconds, rng)
        if i < n_full_video:
            lead, tail = (0.001 * rng.standard_normal(int(round(s * sample_rate))) for s in (start, 2.0))
            clip = np.concatenate([lead, clip, tail]).astype(np.float32)
        if i < n - n_missing:
            sf.write(str(clips / f"{ytid}.{ext}"), clip, sample_rate)
        recipe = RECIPES[genre]
        tempo = "fast" if recipe.beat_hz >= 3 else "slow" if recipe.beat_hz < 1.8 else "moderate"
        rows.append({
            "ytid": ytid,
            "start_s": f"{start:g}",
            "end_s": f"{end:g}",
            "audioset_positive_labels": "/m/04rlf",
            "aspect_list": str([genre, f"{tempo} tempo", "instrumental"]),
            "caption": f"This is {recipe.description}. The tempo is {tempo}. It sounds like {genre} music.",
            "author_id": str(int(rng.integers(1, 10))),
            "is_balanced_subset": str(bool(rng.integers(2))),
            "is_audioset_eval": str(i % 3 == 0),
        })
    with open(root / "musiccaps-public.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=MUSICCAPS_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return root
