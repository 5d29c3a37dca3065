"""Weight-free baseline: MFCC, deltas, chroma and spectral descriptors with librosa at 22.05 kHz.

Every layer is a frame sequence with hop 512 (``22050 / 512`` = 43.07 frames/s, ``1 + n // 512``
frames for ``n`` samples, librosa's centred framing, n_fft 2048, Hann window):

* ``mfcc`` (20): ``librosa.feature.mfcc`` (power mel spectrogram, 128 mels, dB, DCT-II ortho);
* ``delta`` (20): ``librosa.feature.delta`` of the MFCCs (width 9; ``mode="nearest"`` for clips
  shorter than 9 frames, where librosa's default interpolation is undefined);
* ``chroma`` (12): ``librosa.feature.chroma_stft`` of the power spectrogram;
* ``spectral`` (13): spectral contrast (7 bands), centroid, bandwidth, roll-off (85 %), flatness,
  zero-crossing rate, RMS (time-domain frames of 2048);
* ``combined`` (65): the concatenation of the four above, last.

Each clip is computed on its own valid samples (batching is exact). The encoder does no pooling;
the pipeline pools. The spectrogram is computed once per clip and shared, which gives the same
values as librosa's ``y=`` entry points.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from embedstore.errors import ModelError

from .base import Encoder, EncoderOutput
from .registry import EncoderRequest

SAMPLE_RATE = 22_050
HOP_LENGTH = 512
N_FFT = 2048
N_MFCC = 20
DELTA_WIDTH = 9
DEFAULT_WINDOW_SECONDS = 600.0
LAYERS = (("mfcc", N_MFCC), ("delta", N_MFCC), ("chroma", 12), ("spectral", 13))


def mfcc_features(y: np.ndarray, sr: int = SAMPLE_RATE) -> dict[str, np.ndarray]:
    """All feature groups of one clip.

    Args:
        y: ``[samples]`` float32 mono audio at ``sr``.

    Returns:
        ``{"mfcc": [frames, 20], "delta": [frames, 20], "chroma": [frames, 12],
        "spectral": [frames, 13], "combined": [frames, 65]}`` float32.
    """
    import librosa

    y = np.ascontiguousarray(y, dtype=np.float32)
    with warnings.catch_warnings():
        # Silence is valid audio (tuning estimate from no peaks); tiny clips warn about n_fft.
        warnings.filterwarnings("ignore", message=".*estimate tuning.*")
        warnings.filterwarnings("ignore", message=".*n_fft=.*too large.*")
        magnitude = np.abs(librosa.stft(y, n_fft=N_FFT, hop_length=HOP_LENGTH))
        power = magnitude**2
        mel_db = librosa.power_to_db(librosa.feature.melspectrogram(S=power, sr=sr))
        mfcc = librosa.feature.mfcc(S=mel_db, sr=sr, n_mfcc=N_MFCC)
        frames = mfcc.shape[1]
        mode = "interp" if frames >= DELTA_WIDTH else "nearest"
        delta = librosa.feature.delta(mfcc, width=DELTA_WIDTH, mode=mode)
        chroma = librosa.feature.chroma_stft(S=power, sr=sr, n_fft=N_FFT, hop_length=HOP_LENGTH)
        spectral = np.concatenate(
            [
                librosa.feature.spectral_contrast(S=magnitude, sr=sr, n_fft=N_FFT, hop_length=HOP_LENGTH),
                librosa.feature.spectral_centroid(S=magnitude, sr=sr, n_fft=N_FFT, hop_length=HOP_LENGTH),
                librosa.feature.spectral_bandwidth(S=magnitude, sr=sr, n_fft=N_FFT, hop_length=HOP_LENGTH),
                librosa.feature.spectral_rolloff(S=magnitude, sr=sr, n_fft=N_FFT, hop_length=HOP_LENGTH),
                librosa.feature.spectral_flatness(S=magnitude, n_fft=N_FFT, hop_length=HOP_LENGTH),
                librosa.feature.zero_crossing_rate(y, frame_length=N_FFT, hop_length=HOP_LENGTH),
                librosa.feature.rms(y=y, frame_length=N_FFT, hop_length=HOP_LENGTH),
            ],
            axis=0,
        )
    groups = {"mfcc": mfcc, "delta": delta, "chroma": chroma, "spectral": spectral}
    out = {name: np.ascontiguousarray(v.T, dtype=np.float32) for name, v in groups.items()}
    out["combined"] = np.concatenate([out[name] for name, _ in LAYERS], axis=1)
    return out


class MfccEncoder(Encoder):
    """librosa feature baseline; layers ``mfcc``, ``delta``, ``chroma``, ``spectral``, ``combined``."""

    padding_exact = True

    def __init__(self, *, name: str = "mfcc", window_seconds: float = DEFAULT_WINDOW_SECONDS) -> None:
        widths = [w for _, w in LAYERS]
        super().__init__(
            name=name,
            sample_rate=SAMPLE_RATE,
            layer_names=[n for n, _ in LAYERS] + ["combined"],
            layer_widths=widths + [sum(widths)],
            frame_rate=SAMPLE_RATE / HOP_LENGTH,
            window_seconds=window_seconds,
            autocast_dtype="float32",
        )

    def encode_batch(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        """Per-clip librosa features, zero-padded to ``[batch, max frames, width_l]``."""
        clips = [
            mfcc_features(w[: int(n)].detach().float().cpu().numpy(), self.sample_rate)
            for w, n in zip(waveforms, lengths)
        ]
        frame_lengths = torch.tensor([c["mfcc"].shape[0] for c in clips], dtype=torch.long)
        frames = int(frame_lengths.max())
        states = []
        for name in self.layer_names:
            batch = np.zeros((len(clips), frames, clips[0][name].shape[1]), dtype=np.float32)
            for i, clip in enumerate(clips):
                batch[i, : clip[name].shape[0]] = clip[name]
            states.append(torch.from_numpy(batch).to(self.device))
        return EncoderOutput(tuple(states), frame_lengths.to(self.device))

    def describe_model(self) -> dict[str, Any]:
        """Feature definitions and librosa version (there are no weights)."""
        import librosa

        return {
            "checkpoint": None,
            "revision": None,
            "weights": "none",
            "weights_sha256": None,
            "library": f"librosa {librosa.__version__}",
            "preprocessing": {
                "sample_rate": SAMPLE_RATE, "n_fft": N_FFT, "hop_length": HOP_LENGTH,
                "window": "hann", "center": True, "n_mfcc": N_MFCC, "n_mels": 128,
                "delta_width": DELTA_WIDTH, "rolloff_percent": 0.85,
                "spectral": ["contrast_1..7", "centroid", "bandwidth", "rolloff", "flatness",
                             "zero_crossing_rate", "rms"],
            },
        }


def load(request: EncoderRequest) -> MfccEncoder:
    """The MFCC baseline (no checkpoint; ``weights="random"`` is refused: there are no weights)."""
    if request.weights != "pretrained":
        raise ModelError("mfcc has no weights; --weights random does not apply to it")
    if request.checkpoint:
        raise ModelError(f"mfcc takes no checkpoint (got {request.checkpoint!r})")
    return MfccEncoder(name=request.name, window_seconds=request.window_seconds or DEFAULT_WINDOW_SECONDS)
