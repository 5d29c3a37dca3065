"""Cutting long clips into the fixed-length windows an encoder is fed, and joining them back.

The rule (written into every model entry's metadata as :meth:`WindowRule.describe`):

* A clip no longer than the window is fed whole, as one window of its own length.
* A longer clip is cut into windows of exactly ``window`` samples starting at ``0, window, 2*window,
  ...``; when the clip's length is not a multiple of the window, the last window is aligned to the
  clip's END (so it overlaps the one before it) rather than zero-padded. Every window of a long clip
  therefore has the same length, batches need no padding, and group-norm feature encoders (wav2vec 2.0,
  MERT) never see padding.
* Joining: the frames of each window are concatenated in time order; from the end-aligned last window,
  the frames that lie inside the previous window are dropped, so each moment of audio is counted once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WindowRule:
    """Fixed-length windowing at one sample rate.

    Attributes:
        window_seconds: window length in seconds (the encoder's context).
        sample_rate: sample rate of the waveforms being cut.
    """

    window_seconds: float
    sample_rate: int

    @property
    def window(self) -> int:
        """Window length in samples."""
        return max(1, int(round(self.window_seconds * self.sample_rate)))

    def starts(self, n_samples: int) -> np.ndarray:
        """Start sample of every window of a clip of ``n_samples``: int64 ``[n_windows]``."""
        w = self.window
        if n_samples <= w:
            return np.zeros(1, dtype=np.int64)
        starts = np.arange(0, n_samples - w + 1, w, dtype=np.int64)
        if starts[-1] + w < n_samples:
            starts = np.append(starts, n_samples - w)
        return starts

    def cut(self, waveform: np.ndarray) -> np.ndarray:
        """Cut a clip into windows.

        Args:
            waveform: float32 ``[samples]``.

        Returns:
            float32 ``[n_windows, min(samples, window)]``: equal-length windows.
        """
        n = waveform.shape[0]
        w = min(n, self.window)
        idx = self.starts(n)[:, None] + np.arange(w)[None, :]
        return waveform[idx]

    def overlap_fraction(self, n_samples: int) -> float:
        """Fraction of the last window that repeats audio of the window before it (0 when none)."""
        starts = self.starts(n_samples)
        if len(starts) < 2:
            return 0.0
        previous_end = starts[-2] + self.window
        return float(previous_end - starts[-1]) / self.window

    def describe(self) -> dict:
        """JSON-able description stored in the model entry's metadata."""
        return {
            "window_seconds": self.window_seconds,
            "hop_seconds": self.window_seconds,
            "last_window": "aligned to the clip end; its frames inside the previous window are dropped",
            "short_clips": "fed whole at their own length",
            "join": "frames of all windows concatenated in time order, then pooled",
        }


def frames_to_skip(overlap_fraction: float, n_frames: int) -> int:
    """How many leading frames of an end-aligned last window repeat the window before it.

    Args:
        overlap_fraction: :meth:`WindowRule.overlap_fraction` of the clip.
        n_frames: frames the encoder produced for that window.
    """
    return int(round(overlap_fraction * n_frames))
