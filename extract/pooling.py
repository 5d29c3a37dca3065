"""Time pooling of encoder hidden states: per-window frame moments merged exactly per clip.

A clip may be fed to the encoder as several windows (see :mod:`embedstore.extract.windowing`). Each
window contributes the count, mean and sum of squared deviations (M2) of its valid frames
(:func:`window_moments`); windows are merged per clip with the parallel (Chan et al.) update
(:func:`merge_moments`), so a clip's mean and standard deviation equal those of its concatenated frames
exactly, without ever holding the full sequence. Everything here is plain torch arithmetic on the
encoder's device: extraction calls it under ``torch.inference_mode``, fine-tuning with autograd on
(gradients flow from the pooled vector back into the hidden states).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

POOLINGS = ("mean", "mean+std")


class Moments(NamedTuple):
    """Frame moments of ``n`` windows or clips of one layer (float32 torch tensors).

    Attributes:
        count: ``[n]`` frames counted. mean: ``[n, dim]`` their mean. m2: ``[n, dim]`` their sum of
            squared deviations from the mean.
    """

    count: torch.Tensor
    mean: torch.Tensor
    m2: torch.Tensor

    def rows(self, index: int | slice | torch.Tensor) -> Moments:
        """The moments of the rows ``index`` (a slice keeps the leading axis)."""
        return Moments(self.count[index], self.mean[index], self.m2[index])

    @staticmethod
    def cat(parts: list[Moments]) -> Moments:
        """The rows of ``parts`` one after another."""
        return Moments(*(torch.cat([getattr(p, f) for p in parts]) for f in Moments._fields))


def frame_mask(n_frames: int, first: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Boolean mask ``[batch, n_frames]`` that is true for frames ``first[b] <= t < end[b]``."""
    t = torch.arange(n_frames, device=first.device)[None, :]
    return (t >= first[:, None]) & (t < end[:, None])


def window_moments(hidden: torch.Tensor, first: torch.Tensor, end: torch.Tensor, spread: bool = True) -> Moments:
    """Count, mean and M2 of the frames ``first <= t < end`` of each window (differentiable).

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
        :class:`Moments` with ``count [batch]``, ``mean`` and ``m2`` ``[batch, dim]``, float32 on
        ``hidden``'s device.
    """
    h = hidden.float()
    mask = frame_mask(h.shape[1], first.to(h.device), end.to(h.device)).to(h.dtype)  # [B, F]
    count = mask.sum(dim=1)  # [B]
    weights = (mask / count.clamp_min(1.0)[:, None]).unsqueeze(1)  # [B, 1, F]
    mean = torch.bmm(weights, h).squeeze(1)  # [B, D]
    if not spread:
        return Moments(count, mean, torch.zeros_like(mean))
    deviation = h - mean.unsqueeze(1)
    # squared in place when no gradient is recorded (no second temporary the size of the hidden states)
    squared = deviation.square() if deviation.requires_grad else deviation.mul_(deviation)
    m2 = torch.bmm(mask.unsqueeze(1), squared).squeeze(1)  # [B, D]
    return Moments(count, mean, m2)


def merge_moments(parts: Moments, group: torch.Tensor, n_groups: int) -> Moments:
    """Merge the moments of ``parts`` (windows, or running clip moments and new windows) by ``group``.

    The exact parallel update: with ``N = sum n_i``, ``mean = sum n_i mean_i / N`` and
    ``M2 = sum (M2_i + n_i (mean_i - mean)^2)``. Differentiable; parts with no frames add nothing.

    Args:
        parts: :class:`Moments` of ``k`` rows. group: int64 ``[k]``, the group (clip) of each row.
        n_groups: number of groups.

    Returns:
        :class:`Moments` of ``n_groups`` rows (a group without frames has count 0 and zeros).
    """
    group = group.to(parts.mean.device)
    count = torch.zeros(n_groups, dtype=parts.count.dtype, device=parts.count.device).index_add(0, group, parts.count)
    weighted = parts.mean * parts.count[:, None]
    total = torch.zeros(n_groups, parts.mean.shape[1], dtype=parts.mean.dtype, device=parts.mean.device)
    mean = total.index_add(0, group, weighted) / count.clamp_min(1.0)[:, None]
    spread = parts.m2 + parts.count[:, None] * (parts.mean - mean[group]) ** 2
    return Moments(count, mean, total.index_add(0, group, spread))


def pooled(moments: Moments, pooling: str) -> torch.Tensor:
    """The pooled vectors: ``[n, dim]`` for ``mean``, ``[n, 2 * dim]`` (mean then std) for ``mean+std``."""
    if pooling == "mean":
        return moments.mean
    if pooling == "mean+std":
        std = (moments.m2 / moments.count.clamp_min(1.0)[:, None]).clamp_min(0.0).sqrt()
        return torch.cat([moments.mean, std], dim=1)
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
