"""Time pooling of encoder hidden states, done on the encoder's device window by window.

A clip may be fed to the encoder as several windows (see :mod:`embedstore.extract.windowing`). Each
window contributes the count, mean and sum of squared deviations (M2) of its valid frames; windows are
merged with Chan et al.'s parallel update, so the clip's mean and standard deviation equal those of the
concatenated frames exactly, without ever holding the full sequence on the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

POOLINGS = ("mean", "mean+std")


def frame_mask(n_frames: int, first: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Boolean mask ``[batch, n_frames]`` that is true for frames ``first[b] <= t < end[b]``."""
    t = torch.arange(n_frames, device=first.device)[None, :]
    return (t >= first[:, None]) & (t < end[:, None])


def window_moments(
    hidden: torch.Tensor, first: torch.Tensor, end: torch.Tensor, spread: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count, mean and M2 of the frames ``first <= t < end`` of each window.

    The mean is one batched matrix product of the frame weights ``mask / count`` with ``hidden`` (a
    single read of the hidden states, no temporary of their size); M2 is the two-pass sum of squared
    deviations from that mean, computed only when ``spread`` (``mean+std`` pooling needs it, ``mean``
    does not).

    Args:
        hidden: ``[batch, frames, dim]`` hidden states of one layer (any float dtype, any device).
        first: ``[batch]`` first frame to count (frames before it repeat earlier audio).
        end: ``[batch]`` one past the last valid frame.
        spread: compute M2; when False it is returned as zeros.

    Returns:
        ``count [batch]``, ``mean [batch, dim]`` and ``m2 [batch, dim]`` as float64 numpy arrays.
    """
    h = hidden.float()
    mask = frame_mask(h.shape[1], first, end).to(h.dtype)  # [B, F]
    count = mask.sum(dim=1)  # [B]
    weights = (mask / count.clamp_min(1.0)[:, None]).unsqueeze(1)  # [B, 1, F]
    mean = torch.bmm(weights, h).squeeze(1)  # [B, D]
    if spread:
        deviation = h - mean.unsqueeze(1)
        deviation.mul_(deviation)
        m2 = torch.bmm(mask.unsqueeze(1), deviation).squeeze(1)
        m2_out = m2.double().cpu().numpy()
    else:
        m2_out = np.zeros(tuple(mean.shape), dtype=np.float64)
    return count.double().cpu().numpy(), mean.double().cpu().numpy(), m2_out


@dataclass
class RunningMoments:
    """Running count, mean and M2 of one clip's frames for one layer (merged window by window)."""

    count: float = 0.0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None

    def merge(self, count: float, mean: np.ndarray, m2: np.ndarray) -> None:
        """Merge the moments of another block of frames (Chan et al. parallel update)."""
        if count <= 0:
            return
        if self.mean is None or self.count == 0:
            self.count, self.mean, self.m2 = float(count), mean.copy(), m2.copy()
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * count / total)
        self.count = total

    def pooled(self, pooling: str) -> np.ndarray:
        """The pooled vector: ``[dim]`` for ``mean``, ``[2 * dim]`` (mean then std) for ``mean+std``."""
        if self.mean is None or self.count == 0:
            raise ValueError("no frames were merged")
        if pooling == "mean":
            return self.mean
        if pooling == "mean+std":
            std = np.sqrt(np.maximum(self.m2 / self.count, 0.0))
            return np.concatenate([self.mean, std])
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")


def pooled_width(width: int, pooling: str) -> int:
    """Width of a pooled vector of a layer of ``width`` features."""
    return 2 * width if pooling == "mean+std" else width


class FrameBinner:
    """Averages consecutive frames into bins of ``hop_seconds`` as the frames arrive (a clip's windows
    in time order), keeping only the finished bins and the frames of the bin in progress.

    Pushing a sequence in any pieces and calling :meth:`result` equals :func:`bin_frames` of the whole
    sequence cut to ``max_bins``; frames past ``max_bins`` bins are dropped on arrival.
    """

    def __init__(self, frame_rate: float, hop_seconds: float, max_bins: int | None = None):
        self.per_bin = max(1, int(round(hop_seconds * frame_rate)))
        self.max_bins = max_bins
        self._bins: list[np.ndarray] = []  # float32 [k, dim] pieces of finished bins
        self._n_bins = 0
        self._rest: np.ndarray | None = None  # frames of the unfinished bin, [< per_bin, dim]

    def _full(self) -> bool:
        return self.max_bins is not None and self._n_bins >= self.max_bins

    def push(self, frames: np.ndarray) -> None:
        """Add the next frames, ``[n, dim]`` (any float dtype), in time order."""
        if self._full():
            return
        if self._rest is not None and self._rest.shape[0]:
            frames = np.concatenate([self._rest, frames])
        n_done = frames.shape[0] // self.per_bin
        if self.max_bins is not None:
            n_done = min(n_done, self.max_bins - self._n_bins)
        if n_done:
            done = frames[: n_done * self.per_bin].astype(np.float64).reshape(n_done, self.per_bin, -1)
            self._bins.append((done.sum(axis=1) / self.per_bin).astype(np.float32))
            self._n_bins += n_done
        self._rest = frames[n_done * self.per_bin :].copy()

    def result(self) -> np.ndarray:
        """The bins so far plus the last partial bin (the mean of what remains): float32 ``[bins, dim]``."""
        parts = list(self._bins)
        if self._rest is not None and self._rest.shape[0] and not self._full():
            parts.append(self._rest.astype(np.float64).mean(axis=0, keepdims=True).astype(np.float32))
        if not parts:
            dim = self._rest.shape[1] if self._rest is not None else 0
            return np.zeros((0, dim), dtype=np.float32)
        return np.concatenate(parts)
