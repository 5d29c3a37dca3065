"""The extraction pipeline: the one place that joins audio decoding, encoders and the store writer.

Flow for every block of clips (a DataLoader batch)::

    worker processes: load_audio (decode, mono, resample to each encoder's rate, the --gain rule)
    main process: clips an encoder refuses as too short (``Encoder.too_short``) fail for that encoder
    main process, per encoder: cut clips into equal-length windows (extract/windowing) -> batches of
        equal-length windows -> encoder (inference mode, autocast on GPU) -> per-window moments of every
        layer on the device (extract/pooling) -> merged per clip -> pooled rows -> store writer

Decoding runs in ``workers`` processes ahead of the model (``prefetch_factor`` blocks each), so the model
does not wait on I/O; the writer holds at most one chunk of rows, so memory does not grow with the
dataset. Rows already done are skipped, so running the same command again finishes an interrupted run.

Shared with the Ray engine (``extract/ray_engine.py``): :func:`decode_clip` (decoding),
:func:`~embedstore.extract.encoding.encode_clips` (encoder + pooling into rows) and
:func:`~embedstore.extract.writing.open_extraction` (track table, model entries and the
:class:`~embedstore.extract.writing.ExtractionRun` through which every engine writes rows and records
failures). This module keeps the local engine: worker-process decoding and the block loop.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from embedstore.devices import resolve_device
from embedstore.errors import AudioError, EmbedstoreError
from embedstore.extract.audio import DEFAULT_GAIN, load_audio
from embedstore.extract.datasets import Dataset, DatasetRequest, Track
from embedstore.extract.encoders import Encoder, EncoderRequest
from embedstore.extract.encoding import encode_clips
from embedstore.extract.options import ExtractOptions
from embedstore.extract.writing import ExtractionRun, ExtractSummary, format_summary, open_extraction

__all__ = [
    "ExtractOptions",
    "ExtractSummary",
    "as_requests",
    "check_requests",
    "decode_clip",
    "default_workers",
    "extract_dataset",
    "format_summary",
    "is_silent",
    "refusals",
    "run_extract",
]



def leave_interrupts_to_main(_worker_id: int = 0) -> None:
    """``worker_init_fn`` of decoding workers: they ignore Ctrl-C, and the main process (which gets it
    too) stops them in order. A worker stopped by its own KeyboardInterrupt can leave the main process
    waiting seconds for it at shutdown."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def default_workers() -> int:
    """Decoding worker processes: one fewer than the CPUs (the main process runs the model), 1..4."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def decode_clip(path: Path, rates: Sequence[int], *, offset: float = 0.0, duration: float | None = None,
                gain: str = DEFAULT_GAIN) -> dict[int, np.ndarray]:
    """Decode one clip at every sample rate in ``rates`` with the ``gain`` rule: ``{rate: float32 [samples]}``
    (see :func:`~embedstore.extract.audio.load_audio`). Raises :class:`AudioError` naming the file."""
    return {sr: load_audio(path, sr, offset=offset, duration=duration, gain=gain) for sr in sorted(set(rates))}


def is_silent(waves: dict[int, np.ndarray]) -> bool:
    """True when every decoded waveform of a clip is all zeros (stored, with a warning)."""
    return not any(np.any(w) for w in waves.values())


@dataclass
class _Decoded:
    """One decoded clip as it leaves a worker: waveforms at each needed rate, or the error."""

    row: int
    waves: dict[int, np.ndarray]
    error: str | None = None


class _ClipSource(torch.utils.data.Dataset):
    """Map-style dataset that decodes clips at every sample rate the encoders need."""

    def __init__(self, root: Path, tracks: Sequence[Track], rows: Sequence[int], rates: Sequence[int], gain: str):
        self.root, self.tracks, self.rows, self.rates = root, tracks, list(rows), sorted(set(rates))
        self.gain = gain

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> _Decoded:
        row = self.rows[i]
        track = self.tracks[row]
        try:
            waves = decode_clip(self.root / track.path, self.rates, offset=track.offset, duration=track.duration,
                                gain=self.gain)
        except AudioError as exc:
            return _Decoded(row, {}, exc.reason)
        return _Decoded(row, waves)


def _collate(items: list[_Decoded]) -> list[_Decoded]:
    return items


def extract_dataset(
    dataset: Dataset,
    encoders: Sequence[tuple[str, Encoder]],
    store_path: str | Path,
    options: ExtractOptions | None = None,
) -> ExtractSummary:
    """Extract every layer of each encoder over a dataset into a store, resuming what is done.

    Args:
        dataset: the clips (from :func:`embedstore.extract.datasets.discover_dataset`).
        encoders: ``(model key, encoder)`` pairs; all share one decoding pass.
        store_path: Zarr directory or ``.h5`` file; created if missing.
        options: batching, pooling, frames, workers, limits.

    Returns:
        An :class:`ExtractSummary`. Raises :class:`EmbedstoreError` with ``strict`` when a clip fails,
        or when no clip at all could be written.
    """
    options = options or ExtractOptions()
    with open_extraction(dataset, encoders, store_path, options) as run:
        rows = run.rows()
        rates = [enc.sample_rate for enc in run.encoders]
        for block in _decoded_blocks(dataset.root, [run.track(r) for r in rows], rows, rates, options):
            _process_block(block, run, options)
    return run.finish()


def _decoded_blocks(
    root: Path,
    tracks: Sequence[Track],
    rows: Sequence[int],
    rates: Sequence[int],
    options: ExtractOptions,
) -> Iterator[list[_Decoded]]:
    """Blocks of decoded clips (at each sample rate in ``rates``), decoded in worker processes ahead of the model."""
    all_tracks: dict[int, Track] = dict(zip(rows, tracks))
    source = _ClipSource(root, _RowView(all_tracks), rows, rates, options.gain)
    workers = default_workers() if options.workers is None else options.workers
    loader = DataLoader(
        source,
        batch_size=options.batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False,
        worker_init_fn=leave_interrupts_to_main,
    )
    yield from loader


class _RowView:
    """Index tracks by store row (picklable, for worker processes)."""

    def __init__(self, by_row: dict[int, Track]):
        self.by_row = by_row

    def __getitem__(self, row: int) -> Track:
        return self.by_row[row]


def _process_block(block: list[_Decoded], run: ExtractionRun, options: ExtractOptions) -> None:
    good = []
    for item in block:
        if item.error is not None:
            run.fail(item.row, item.error)
            continue
        needs = run.needs(item.row)
        refused = refusals(item.waves, run.encoders, needs)
        if refused:
            run.refuse(item.row, refused)
        if len(refused) < sum(needs):
            if is_silent(item.waves):
                run.warn_silent(item.row)
            good.append(item)
    audio_seconds = 0.0
    for m_index, target in enumerate(run.targets):
        items = [it for it in good if target.needs(it.row)]
        if not items:
            continue
        enc = target.encoder
        waves = [it.waves[enc.sample_rate] for it in items]
        t0 = time.perf_counter()
        encoded = encode_clips(enc, waves, options, target.frame_layers, target.max_frames)
        seconds = sum(w.shape[0] for w in waves) / enc.sample_rate
        rows = np.array([it.row for it in items], dtype=np.int64)
        run.write(m_index, rows, encoded, audio_seconds=seconds, model_seconds=time.perf_counter() - t0)
        audio_seconds = max(audio_seconds, seconds)
    run.progress.update(len(block), audio_seconds)


def refusals(waves: dict[int, np.ndarray], encoders: Sequence[Encoder], needs: Sequence[bool]) -> dict[int, str]:
    """``{model index: reason}`` of the encoders that need a clip (``needs[m]``) but refuse it as too
    short (:meth:`Encoder.too_short`); ``waves`` is the clip at each sample rate, ``{rate: [samples]}``."""
    out = {}
    for m, (enc, need) in enumerate(zip(encoders, needs)):
        reason = enc.too_short(waves[enc.sample_rate].shape[0]) if need else None
        if reason:
            out[m] = reason
    return out


def run_extract(
    dataset: DatasetRequest | str | Path,
    encoders: Sequence[EncoderRequest | str],
    store_path: str | Path,
    *,
    device: str = "auto",
    options: ExtractOptions | None = None,
) -> ExtractSummary:
    """``embedstore extract``: discover a dataset, load the encoders and extract into the store.

    Args:
        dataset: which dataset and how to split it (a folder path means ``DatasetRequest(path)``:
            GTZAN, MusicCaps, class folders or a manifest's folder, detected).
        encoders: one request per model entry (a registry name means ``EncoderRequest(name)``); several
            share one decoding pass. Each entry is stored under the request's ``store_key``.
        store_path: the store to write (created if missing).
        device: ``auto``, ``cpu``, ``cuda[:N]`` or ``mps`` (:func:`~embedstore.devices.resolve_device`).
        options: batching, pooling, frames, workers, limits, gain.

    Returns:
        The run's :class:`ExtractSummary`.
    """
    dataset = DatasetRequest.coerce(dataset)
    requests = as_requests(encoders)
    check_requests(requests)
    found = dataset.discover()
    device = str(resolve_device(device))
    loaded = [(request.store_key, request.load(device)) for request in requests]
    return extract_dataset(found, loaded, store_path, options)


def as_requests(encoders: EncoderRequest | str | Sequence[EncoderRequest | str]) -> list[EncoderRequest]:
    """A list of :class:`EncoderRequest` from one request or name, or a sequence of them."""
    if isinstance(encoders, (str, EncoderRequest)):
        encoders = [encoders]
    return [EncoderRequest.coerce(e) for e in encoders]


def check_requests(requests: Sequence[EncoderRequest]) -> None:
    """One-line :class:`EmbedstoreError` when no encoder is requested, or two would share a store key."""
    if not requests:
        raise EmbedstoreError("--model is required (see `embedstore models`)")
    keys = [r.store_key for r in requests]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise EmbedstoreError(f"two model entries would have the store key {', '.join(twice)}: "
                              "give each model once, each under its own --as")
