"""Encoding whole clips into store rows: windows -> encoder -> per-window moments -> pooled rows.

Clips are cut into equal-length windows (:mod:`embedstore.extract.windowing`), batched, run through
the encoder, and each window's frame moments are merged per clip (:mod:`embedstore.extract.pooling`),
so the pooled rows equal the statistics of each clip's joined frame sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from embedstore.extract.encoders import Encoder
from embedstore.extract.options import ExtractOptions
from embedstore.extract.pooling import RunningMoments, bin_frames, window_moments
from embedstore.extract.windowing import WindowRule, frames_to_skip


class _ClipAccumulator:
    """Collects one clip's per-window results for every layer until the clip is complete."""

    def __init__(self, n_layers: int, frame_layers: Sequence[int]):
        self.moments = [RunningMoments() for _ in range(n_layers)]
        # layer -> [(window index, frames [n, dim])], joined in window order at the end
        self.frames: dict[int, list[tuple[int, np.ndarray]]] = {layer: [] for layer in frame_layers}


def _encode_block(
    encoder: Encoder,
    waves: list[np.ndarray],
    options: ExtractOptions,
    frame_layers: Sequence[int],
) -> list[_ClipAccumulator]:
    """Run the encoder over every window of ``waves`` (clips at the encoder's rate).

    Returns one accumulator per clip, holding the moments of every layer (and the frames of
    ``frame_layers``) over all of the clip's windows.
    """
    rule = WindowRule(encoder.window_seconds, encoder.sample_rate)
    accs = [_ClipAccumulator(encoder.num_layers, frame_layers) for _ in waves]
    # (clip, window index, is last window with overlap, samples) for every window, grouped by length
    windows: list[tuple[int, int, float, np.ndarray]] = []
    for c, wave in enumerate(waves):
        cut = rule.cut(wave)
        overlap = rule.overlap_fraction(wave.shape[0])
        for k in range(cut.shape[0]):
            windows.append((c, k, overlap if k == cut.shape[0] - 1 else 0.0, cut[k]))
    # clips' windows are processed in time order within each length group (stable sort)
    order = sorted(range(len(windows)), key=lambda i: -windows[i][3].shape[0])
    device = encoder.device
    for start in range(0, len(order), options.batch_size):
        idx = order[start : start + options.batch_size]
        length = windows[idx[0]][3].shape[0]
        same = [i for i in idx if windows[i][3].shape[0] == length]
        groups = [same] + ([[i for i in idx if windows[i][3].shape[0] != length]] if len(same) < len(idx) else [])
        for group in groups:
            batch = [windows[i][3] for i in group]
            lengths = torch.tensor([w.shape[0] for w in batch], dtype=torch.long)
            padded = np.zeros((len(batch), int(lengths.max())), dtype=np.float32)
            for j, w in enumerate(batch):
                padded[j, : w.shape[0]] = w
            out = encoder(torch.from_numpy(padded).to(device), lengths.to(device))
            for layer, hidden in enumerate(out.hidden_states):
                n_valid = out.lengths(layer).tolist()
                end = torch.tensor(n_valid, dtype=torch.long, device=hidden.device)
                first = torch.tensor(
                    [frames_to_skip(windows[i][2], n) for i, n in zip(group, n_valid)],
                    dtype=torch.long,
                    device=hidden.device,
                )
                count, mean, m2 = window_moments(hidden, first, end)
                for j, i in enumerate(group):
                    accs[windows[i][0]].moments[layer].merge(count[j], mean[j], m2[j])
                if layer in frame_layers:
                    h = hidden.float().cpu().numpy()
                    for j, i in enumerate(group):
                        clip, k = windows[i][0], windows[i][1]
                        accs[clip].frames[layer].append((k, h[j, int(first[j]) : int(end[j])]))
    return accs


def _frames_of(acc: _ClipAccumulator, layer: int, frame_rate: float, hop: float, max_frames: int) -> tuple[np.ndarray, int]:
    """The coarse frame sequence of one clip's layer, padded to ``[max_frames, dim]``, and its length."""
    parts = [f for _, f in sorted(acc.frames[layer], key=lambda kf: kf[0])]
    binned = bin_frames(np.concatenate(parts, axis=0), frame_rate, hop)[:max_frames]
    out = np.zeros((max_frames, binned.shape[1]), dtype=np.float32)
    out[: binned.shape[0]] = binned
    return out, binned.shape[0]


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
    with torch.inference_mode():
        accs = _encode_block(encoder, list(waves), options, frame_layers)
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
        seqs = [_frames_of(acc, layer, encoder.layer_frame_rates[layer], options.frames_hop, max_frames) for acc in accs]
        frames.append(np.stack([s for s, _ in seqs]))
        counts_list.append([n for _, n in seqs])
    # layers at different frame rates (CLAP stages) can differ by a bin: keep the common part
    counts = np.asarray(counts_list, dtype=np.int64).min(axis=0)
    valid = np.arange(max_frames)[None, :] < counts[:, None]
    return EncodedClips(layers, [f * valid[:, :, None] for f in frames], counts)
