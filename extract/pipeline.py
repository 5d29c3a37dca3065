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
from embedstore.extract.datasets import Dataset, Track
from embedstore.extract.encoders import Encoder
from embedstore.extract.encoding import encode_clips
from embedstore.extract.options import ExtractOptions
from embedstore.extract.writing import ExtractionRun, ExtractSummary, format_summary, open_extraction

__all__ = [
    "ExtractOptions",
    "ExtractSummary",
    "check_model_args",
    "decode_clip",
    "default_workers",
    "extract_dataset",
    "format_summary",
    "is_silent",
    "model_key",
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


def model_key(encoder: Encoder, weights: str, name: str | None = None) -> str:
    """The store key of a model entry: ``name`` if given, else the encoder name (``+random`` for random weights)."""
    if name:
        return name
    return f"{encoder.name}+random" if weights == "random" else encoder.name


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
        for block in _decoded_blocks(dataset.root, [run.by_row[r] for r in rows], rows, encoders, options):
            _process_block(block, encoders, run, options)
    return run.finish()


def _decoded_blocks(
    root: Path,
    tracks: Sequence[Track],
    rows: Sequence[int],
    encoders: Sequence[tuple[str, Encoder]],
    options: ExtractOptions,
) -> Iterator[list[_Decoded]]:
    """Blocks of decoded clips, decoded in worker processes ahead of the model."""
    all_tracks: dict[int, Track] = dict(zip(rows, tracks))
    source = _ClipSource(root, _RowView(all_tracks), rows, [enc.sample_rate for _, enc in encoders], options.gain)
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


def _process_block(
    block: list[_Decoded],
    encoders: Sequence[tuple[str, Encoder]],
    run: ExtractionRun,
    options: ExtractOptions,
) -> None:
    good = []
    for item in block:
        if item.error is not None:
            run.fail(item.row, item.error)
            continue
        needs = [item.row in t.todo for t in run.targets]
        refused = refusals(item.waves, [enc for _, enc in encoders], needs)
        if refused:
            run.refuse(item.row, refused)
        if len(refused) < sum(needs):
            if is_silent(item.waves):
                run.warn_silent(item.row)
            good.append(item)
    audio_seconds = 0.0
    for m_index, ((key, enc), target) in enumerate(zip(encoders, run.targets)):
        items = [it for it in good if it.row in target.todo]
        if not items:
            continue
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
    dataset_dir: str | Path,
    models: Sequence[str],
    store_path: str | Path,
    *,
    checkpoint: str | None = None,
    weights: str = "pretrained",
    model_name: str | None = None,
    dataset_type: str | None = None,
    dataset_name: str | None = None,
    label_name: str | None = None,
    split_scheme: str = "auto",
    split_dir: str | Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    window_seconds: float | None = None,
    trust_remote_code: bool = False,
    seed: int = 0,
    options: ExtractOptions | None = None,
) -> ExtractSummary:
    """``embedstore extract``: discover a dataset, load the encoders and extract into the store.

    Args:
        dataset_dir: the dataset folder (GTZAN, MusicCaps, class folders or a manifest's folder).
        models: encoder names from the registry (``embedstore models``); several share one decoding pass.
        store_path: the store to write (created if missing).
        checkpoint: hub id or local path for the (single) model, instead of its default checkpoint.
        weights: ``"pretrained"`` or ``"random"`` (same architecture, seeded random initialisation).
        model_name: the store key for the (single) model entry (default: the encoder name).
        label_name: name of the dataset's class-label task (e.g. ``genre`` for a folder of genres;
            see :func:`~embedstore.extract.datasets.discover_dataset`).

    Returns:
        The run's :class:`ExtractSummary`.
    """
    from embedstore.extract.datasets import discover_dataset
    from embedstore.extract.encoders import load_encoder

    check_model_args(models, checkpoint, model_name)
    dataset = discover_dataset(
        dataset_dir, dataset_type, split=split_scheme, split_dir=split_dir, seed=seed, name=dataset_name,
        label_name=label_name,
    )
    device = str(resolve_device(device))
    encoders = []
    for name in models:
        enc = load_encoder(
            name,
            checkpoint,
            weights=weights,
            device=device,
            dtype=dtype,
            seed=seed,
            trust_remote_code=trust_remote_code,
            window_seconds=window_seconds,
        )
        encoders.append((model_key(enc, weights, model_name), enc))
    return extract_dataset(dataset, encoders, store_path, options)


def check_model_args(models: Sequence[str], checkpoint: str | None, model_name: str | None) -> None:
    """One-line :class:`EmbedstoreError` for ``--model`` missing, or ``--checkpoint``/``--as`` with several models."""
    if not models:
        raise EmbedstoreError("--model is required (see `embedstore models`)")
    if len(models) > 1 and (checkpoint or model_name):
        raise EmbedstoreError("--checkpoint and --as apply to a single --model; run one command per model")
