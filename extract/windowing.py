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

:class:`WindowStream` applies the same rule to a clip that arrives in consecutive blocks (a long file
decoded block by block): it holds at most one window plus one block, never the whole clip.
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
        return np.lib.stride_tricks.sliding_window_view(waveform, w)[self.starts(n)]

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


class WindowStream:
    """:meth:`WindowRule.cut` for a clip that arrives as consecutive blocks of samples.

    :meth:`push` returns the full windows (starting at ``0, window, 2*window, ...``) as soon as their
    samples are in; :meth:`finish` returns what the rule adds at the end: the whole clip when it is no
    longer than a window, else the end-aligned last window when the length is not a multiple of the
    window. Together they give exactly the windows of ``rule.cut(joined blocks)``, in order. Memory:
    the last full window (for the end-aligned one) plus the samples not yet in a window.
    """

    def __init__(self, rule: WindowRule):
        self.window = rule.window
        self.samples = 0  #: samples pushed so far
        self._rest = np.zeros(0, dtype=np.float32)  # samples after the last full window
        self._previous: np.ndarray | None = None  # the last full window

    def push(self, block: np.ndarray) -> list[np.ndarray]:
        """Add the next ``block`` (float32 ``[samples]``); returns the windows it completes, ``[window]`` each."""
        self.samples += block.shape[0]
        joined = np.concatenate([self._rest, block]) if self._rest.size else np.asarray(block, dtype=np.float32)
        w = self.window
        n_full = joined.shape[0] // w
        windows = [joined[k * w : (k + 1) * w] for k in range(n_full)]
        self._rest = joined[n_full * w :].copy() if n_full else joined
        if windows:
            self._previous = windows[-1]
        return windows

    def finish(self) -> tuple[np.ndarray, float] | None:
        """The last window and its :meth:`WindowRule.overlap_fraction`, or None when the full windows
        already cover the clip (its length is a multiple of the window, or it is empty)."""
        r = self._rest.shape[0]
        if r == 0:
            return None
        if self._previous is None:  # no longer than one window: fed whole
            return self._rest, 0.0
        w = self.window
        return np.concatenate([self._previous[r:], self._rest]), float(w - r) / w


def frames_to_skip(overlap_fraction: float, n_frames: int) -> int:
    """How many leading frames of an end-aligned last window repeat the window before it.

    Args:
        overlap_fraction: :meth:`WindowRule.overlap_fraction` of the clip.
        n_frames: frames the encoder produced for that window.
    """
    return int(round(overlap_fraction * n_frames))
