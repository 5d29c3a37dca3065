"""Encoding clips into store rows: windows -> encoder -> per-window moments -> pooled rows.

Clips are cut into equal-length windows (:mod:`embedstore.extract.windowing`), batched, run through
the encoder, and each window's frame moments are merged per clip (:mod:`embedstore.extract.pooling`),
so the pooled rows equal the statistics of each clip's joined frame sequence.

Two entry points share that machinery:

* :func:`encode_clips`: a block of whole clips (the windows of all of them batched together);
* :class:`ClipStream`: one long clip pushed block by block; its windows are cut as they complete and
  run in groups of at most ``batch_size`` windows (and about :data:`STREAM_GROUP_SAMPLES` samples), so
  memory holds a group of windows, never the clip. Its row equals :func:`encode_clips` of the clip.

Coarse frame sequences are binned as each window's frames arrive (:class:`~embedstore.extract.pooling.FrameBinner`),
so a long clip never holds its full-rate frames either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from embedstore.extract.encoders import Encoder
from embedstore.extract.options import ExtractOptions
from embedstore.extract.pooling import FrameBinner, RunningMoments, window_moments
from embedstore.extract.windowing import WindowRule, WindowStream, frames_to_skip

#: A streamed clip's windows are run in groups of at most ``batch_size`` windows and at most this many
#: samples (at least one window): an encoder with long windows (MFCC: 600 s) runs one window at a time.
STREAM_GROUP_SAMPLES = 1 << 23


class _ClipAccumulator:
    """Collects one clip's per-window results for every layer until the clip is complete."""

    def __init__(self, encoder: Encoder, options: ExtractOptions, frame_layers: Sequence[int], max_frames: int):
        self.moments = [RunningMoments() for _ in range(encoder.num_layers)]
        self.binners = {
            layer: FrameBinner(encoder.layer_frame_rates[layer], options.frames_hop, max_frames)
            for layer in frame_layers
        }
        self._next = dict.fromkeys(frame_layers, 0)  # next window index whose frames are expected

    def add_frames(self, layer: int, window: int, frames: np.ndarray) -> None:
        """Bin the kept frames ``[n, dim]`` of window number ``window`` (windows must come in time order)."""
        if window != self._next[layer]:
            raise RuntimeError(f"window {window} of a clip arrived before window {self._next[layer]}")
        self._next[layer] += 1
        self.binners[layer].push(frames)


@dataclass
class _Window:
    """One window of a clip: its accumulator, index in the clip, overlap (last window) and samples."""

    acc: _ClipAccumulator
    index: int
    overlap: float
    samples: np.ndarray


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


def _run_group(encoder: Encoder, group: Sequence[_Window], spread: bool) -> None:
    lengths = torch.tensor([w.samples.shape[0] for w in group], dtype=torch.long)
    padded = np.zeros((len(group), int(lengths.max())), dtype=np.float32)
    for j, w in enumerate(group):
        padded[j, : w.samples.shape[0]] = w.samples
    device = encoder.device
    out = encoder(torch.from_numpy(padded).to(device), lengths.to(device))
    for layer, hidden in enumerate(out.hidden_states):
        n_valid = out.lengths(layer).tolist()
        end = torch.tensor(n_valid, dtype=torch.long, device=hidden.device)
        first = torch.tensor(
            [frames_to_skip(w.overlap, n) for w, n in zip(group, n_valid)], dtype=torch.long, device=hidden.device
        )
        count, mean, m2 = window_moments(hidden, first, end, spread)
        for j, w in enumerate(group):
            w.acc.moments[layer].merge(count[j], mean[j], m2[j])
        if group[0].acc.binners.get(layer) is not None:
            h = hidden.float().cpu().numpy()
            for j, w in enumerate(group):
                w.acc.add_frames(layer, w.index, h[j, int(first[j]) : int(end[j])])


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
        np.stack([acc.moments[layer].pooled(options.pooling) for acc in accs]).astype(np.float32)
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
    accs = [_ClipAccumulator(encoder, options, frame_layers, max_frames) for _ in waves]
    windows: list[_Window] = []
    for acc, wave in zip(accs, waves):
        cut = rule.cut(wave)
        overlap = rule.overlap_fraction(wave.shape[0])
        last = cut.shape[0] - 1
        windows.extend(_Window(acc, k, overlap if k == last else 0.0, cut[k]) for k in range(cut.shape[0]))
    # longest windows first; a clip's windows stay in time order (stable sort)
    windows.sort(key=lambda w: -w.samples.shape[0])
    with torch.inference_mode():
        _run_windows(encoder, windows, options.batch_size, options.pooling != "mean")
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
        self._acc = _ClipAccumulator(encoder, options, frame_layers, max_frames)
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
