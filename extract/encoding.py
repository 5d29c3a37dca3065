"""The clip pooler: windows -> encoder -> per-window moments -> pooled rows, for extraction and fine-tuning.

Clips are cut into equal-length windows (:mod:`embedstore.extract.windowing`), batched, run through
the encoder, and each window's frame moments are merged per clip (:mod:`embedstore.extract.pooling`),
so the pooled rows equal the statistics of each clip's joined frame sequence. The merge is torch
arithmetic on the encoder's device, so the same code runs under ``torch.inference_mode`` (extraction)
and with autograd (fine-tuning).

Entry points sharing that machinery:

* :func:`pool_clips`: pooled moments of whole clips as torch tensors (fine-tuning's evaluation and
  anything that needs gradients through the pooler);
* :func:`encode_clips`: a block of whole clips as store rows (the windows of all of them batched together);
* :class:`ClipStream`: one long clip pushed block by block; its windows are cut as they complete and
  run in groups of at most ``batch_size`` windows (and about :data:`STREAM_GROUP_SAMPLES` samples), so
  memory holds a group of windows, never the clip. Its row equals :func:`encode_clips` of the clip.

Coarse frame sequences are binned as each window's frames arrive (:class:`~embedstore.extract.pooling.FrameBinner`),
so a long clip never holds its full-rate frames either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from embedstore.extract.encoders import Encoder
from embedstore.extract.options import ExtractOptions
from embedstore.extract.pooling import FrameBinner, Moments, merge_moments, pooled, window_moments
from embedstore.extract.windowing import WindowRule, WindowStream, frames_to_skip

#: A streamed clip's windows are run in groups of at most ``batch_size`` windows and at most this many
#: samples (at least one window): an encoder with long windows (MFCC: 600 s) runs one window at a time.
STREAM_GROUP_SAMPLES = 1 << 23


@dataclass(eq=False)
class _ClipAccumulator:
    """One clip's running moments per pooled layer (:class:`Moments` of one row, None before its first
    window) and, for frame layers, the binner of its frames."""

    layers: Sequence[int]
    binners: dict[int, FrameBinner] = field(default_factory=dict)
    moments: dict[int, Moments | None] = field(init=False)

    def __post_init__(self) -> None:
        self.moments = dict.fromkeys(self.layers)
        self._next = dict.fromkeys(self.binners, 0)  # next window index whose frames are expected

    def add_frames(self, layer: int, window: int, frames: np.ndarray) -> None:
        """Bin the kept frames ``[n, dim]`` of window number ``window`` (windows must come in time order)."""
        if window != self._next[layer]:
            raise RuntimeError(f"window {window} of a clip arrived before window {self._next[layer]}")
        self._next[layer] += 1
        self.binners[layer].push(frames)


def _extraction_accumulator(encoder: Encoder, options: ExtractOptions, frame_layers: Sequence[int],
                            max_frames: int) -> _ClipAccumulator:
    binners = {layer: FrameBinner(encoder.layer_frame_rates[layer], options.frames_hop, max_frames)
               for layer in frame_layers}
    return _ClipAccumulator(range(encoder.num_layers), binners)


@dataclass
class _Window:
    """One window of a clip: its accumulator, index in the clip, overlap (last window) and samples."""

    acc: _ClipAccumulator
    index: int
    overlap: float
    samples: np.ndarray


def _clip_windows(rule: WindowRule, accs: Sequence[_ClipAccumulator], waves: Sequence[np.ndarray]) -> list[_Window]:
    """The windows of every clip (:meth:`WindowRule.cut`), longest first; a clip's windows stay in time order."""
    windows: list[_Window] = []
    for acc, wave in zip(accs, waves):
        wave = np.asarray(wave, dtype=np.float32)
        cut = rule.cut(wave)
        overlap = rule.overlap_fraction(wave.shape[0])
        last = cut.shape[0] - 1
        windows.extend(_Window(acc, k, overlap if k == last else 0.0, cut[k]) for k in range(cut.shape[0]))
    windows.sort(key=lambda w: -w.samples.shape[0])  # stable
    return windows


def _run_windows(encoder: Encoder, windows: Sequence[_Window], batch_size: int, spread: bool = True) -> None:
    """Run ``windows`` through the encoder, ``batch_size`` consecutive ones per call (a call's windows of
    another length than its first run as a second group), merging each window into its accumulator
    (``spread``: with the frames' M2, which ``mean+std`` pooling needs)."""
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size]
        length = batch[0].samples.shape[0]
        same = [w for w in batch if w.samples.shape[0] == length]
        other = [w for w in batch if w.samples.shape[0] != length]
        for group in (same, other):
            if group:
                _run_group(encoder, group, spread)


def window_frames(encoder: Encoder, waveforms: torch.Tensor, lengths: torch.Tensor, overlaps: Sequence[float],
                  layers: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Run a batch of windows through ``encoder``; per layer of ``layers``, the hidden states and the frames to pool.

    Args:
        waveforms: float32 ``[batch, samples]`` windows (zero-padded), lengths: int64 ``[batch]``.
        overlaps: per window, the fraction of it that repeats the window before it (0 except for the
            end-aligned last window of a clip, see :meth:`WindowRule.overlap_fraction`).
        layers: layer indices.

    Returns:
        per layer ``(hidden [batch, frames, dim], first [batch], end [batch])``: the frames
        ``first <= t < end`` of each window are its own (not padding, not repeated audio).
    """
    device = encoder.device
    out = encoder(waveforms.to(device), lengths.to(device))
    result = []
    for layer in layers:
        hidden = out.hidden_states[layer]
        end = out.lengths(layer).to(hidden.device)
        first = torch.tensor([frames_to_skip(o, int(n)) for o, n in zip(overlaps, end.tolist())],
                             dtype=torch.long, device=hidden.device)
        result.append((hidden, first, end))
    return result


def _run_group(encoder: Encoder, group: Sequence[_Window], spread: bool = True) -> None:
    lengths = torch.tensor([w.samples.shape[0] for w in group], dtype=torch.long)
    padded = np.zeros((len(group), int(lengths.max())), dtype=np.float32)
    for j, w in enumerate(group):
        padded[j, : w.samples.shape[0]] = w.samples
    accs = list(dict.fromkeys(w.acc for w in group))  # the group's clips, in order
    slot = torch.tensor([accs.index(w.acc) for w in group], dtype=torch.long)
    layers = list(group[0].acc.layers)
    frames = window_frames(encoder, torch.from_numpy(padded), lengths, [w.overlap for w in group], layers)
    for layer, (hidden, first, end) in zip(layers, frames):
        parts, groups = [window_moments(hidden, first, end, spread)], [slot]
        for i, acc in enumerate(accs):  # merge with what the clips already hold
            if acc.moments[layer] is not None:
                parts.append(acc.moments[layer])
                groups.append(torch.tensor([i]))
        merged = merge_moments(Moments.cat(parts), torch.cat(groups), len(accs))
        for i, acc in enumerate(accs):
            acc.moments[layer] = merged.rows(slice(i, i + 1))
        if layer in group[0].acc.binners:
            h = hidden.float().cpu().numpy()
            for j, w in enumerate(group):
                w.acc.add_frames(layer, w.index, h[j, int(first[j]) : int(end[j])])


def pool_clips(encoder: Encoder, waves: Sequence[np.ndarray], layers: Sequence[int], batch_size: int = 8) -> list[Moments]:
    """Frame moments of whole clips per layer: the clip pooler shared by extraction and fine-tuning.

    Runs under the caller's grad mode: under ``torch.inference_mode`` for extraction/evaluation, with
    autograd when the encoder is trained (the moments are differentiable in the encoder's parameters).

    Args:
        encoder: the encoder, on its device.
        waves: clips at ``encoder.sample_rate``, float32 ``[samples_i]`` each, any length (cut into
            the encoder's windows, see :mod:`embedstore.extract.windowing`).
        layers: layer indices to pool.
        batch_size: windows per encoder call.

    Returns:
        per layer of ``layers``, :class:`Moments` of ``len(waves)`` rows (``count [clips]``, ``mean``
        and ``m2`` ``[clips, width]``, float32 on the encoder's device).
    """
    accs = [_ClipAccumulator(list(layers)) for _ in waves]
    _run_windows(encoder, _clip_windows(WindowRule(encoder.window_seconds, encoder.sample_rate), accs, waves),
                 batch_size)
    return [Moments.cat([acc.moments[layer] for acc in accs]) for layer in layers]


class EncodedClips(NamedTuple):
    """Pooled rows of a block of clips for one encoder, ready for :meth:`ModelWriter.write`.

    Attributes:
        layers: one float32 ``[clips, pooled_width_l]`` array per layer (``pooled_width_l`` is the
            layer width, doubled for ``mean+std``).
        frames: one float32 ``[clips, max_frames, width_l]`` array per frame layer (zeros past each
            clip's count), or None when no frames are stored.
        counts: int64 ``[clips]`` valid frames per clip, or None.
    """

    layers: list[np.ndarray]
    frames: list[np.ndarray] | None
    counts: np.ndarray | None


def _pooled_rows(
    encoder: Encoder, accs: Sequence[_ClipAccumulator], options: ExtractOptions,
    frame_layers: Sequence[int], max_frames: int,
) -> EncodedClips:
    """The store rows of finished accumulators (one row per accumulator)."""
    if encoder.device.type == "cuda":
        torch.cuda.synchronize(encoder.device)
    layers = [
        pooled(Moments.cat([acc.moments[layer] for acc in accs]), options.pooling).float().cpu().numpy()
        for layer in range(encoder.num_layers)
    ]
    if not frame_layers:
        return EncodedClips(layers, None, None)
    frames, counts_list = [], []
    for layer in frame_layers:
        seqs = [acc.binners[layer].result() for acc in accs]
        block = np.zeros((len(accs), max_frames, encoder.layer_widths[layer]), dtype=np.float32)
        for i, seq in enumerate(seqs):
            block[i, : seq.shape[0]] = seq
        frames.append(block)
        counts_list.append([seq.shape[0] for seq in seqs])
    # layers at different frame rates (CLAP stages) can differ by a bin: keep the common part
    counts = np.asarray(counts_list, dtype=np.int64).min(axis=0)
    valid = np.arange(max_frames)[None, :] < counts[:, None]
    return EncodedClips(layers, [f * valid[:, :, None] for f in frames], counts)


def encode_clips(
    encoder: Encoder,
    waves: Sequence[np.ndarray],
    options: ExtractOptions,
    frame_layers: Sequence[int] = (),
    max_frames: int = 0,
) -> EncodedClips:
    """Run ``encoder`` over whole clips and pool them into store rows.

    Args:
        encoder: the encoder (in eval mode, on its device).
        waves: clips at ``encoder.sample_rate``, float32 ``[samples_i]`` each; any length (long clips
            are cut into the encoder's windows, see :mod:`embedstore.extract.windowing`).
        options: ``batch_size`` (windows per encoder call), ``pooling`` and ``frames_hop``.
        frame_layers: layer indices whose coarse frame sequences are returned (needs ``frames_hop``).
        max_frames: frames per stored sequence (sequences are cut or zero-padded to it).

    Returns:
        :class:`EncodedClips` with ``layers[l]`` ``[len(waves), pooled_width_l]``.
    """
    rule = WindowRule(encoder.window_seconds, encoder.sample_rate)
    accs = [_extraction_accumulator(encoder, options, frame_layers, max_frames) for _ in waves]
    with torch.inference_mode():
        _run_windows(encoder, _clip_windows(rule, accs, waves), options.batch_size, options.pooling != "mean")
    return _pooled_rows(encoder, accs, options, frame_layers, max_frames)


class ClipStream:
    """One clip fed to one encoder block by block; :meth:`finish` gives its row.

    Equals ``encode_clips(encoder, [joined blocks], ...)`` while holding at most a group of windows
    (``batch_size`` windows, at most about :data:`STREAM_GROUP_SAMPLES` samples, at least one), the
    window cutter's state (:class:`~embedstore.extract.windowing.WindowStream`) and the frame bins.

    Args:
        encoder, options, frame_layers, max_frames: as for :func:`encode_clips`.
    """

    def __init__(self, encoder: Encoder, options: ExtractOptions, frame_layers: Sequence[int] = (),
                 max_frames: int = 0):
        self.encoder, self.options = encoder, options
        self.frame_layers, self.max_frames = list(frame_layers), max_frames
        rule = WindowRule(encoder.window_seconds, encoder.sample_rate)
        self._cutter = WindowStream(rule)
        self._group = max(1, min(options.batch_size, STREAM_GROUP_SAMPLES // rule.window))
        self._acc = _extraction_accumulator(encoder, options, frame_layers, max_frames)
        self._pending: list[_Window] = []
        self._count = 0

    @property
    def samples(self) -> int:
        """Samples pushed so far (at ``encoder.sample_rate``)."""
        return self._cutter.samples

    def _add(self, samples: np.ndarray, overlap: float = 0.0) -> None:
        self._pending.append(_Window(self._acc, self._count, overlap, samples))
        self._count += 1

    def _run_pending(self) -> None:
        with torch.inference_mode():
            _run_windows(self.encoder, self._pending, self._group, self.options.pooling != "mean")
        self._pending = []

    def push(self, block: np.ndarray) -> None:
        """Feed the clip's next samples, float32 ``[samples]`` at ``encoder.sample_rate`` (may be empty)."""
        for window in self._cutter.push(block):
            self._add(window)
            if len(self._pending) >= self._group:
                self._run_pending()

    def finish(self) -> EncodedClips:
        """The clip's row: :class:`EncodedClips` with ``layers[l]`` ``[1, pooled_width_l]``."""
        last = self._cutter.finish()
        if last is not None:
            self._add(*last)
        self._run_pending()
        return _pooled_rows(self.encoder, [self._acc], self.options, self.frame_layers, self.max_frames)
