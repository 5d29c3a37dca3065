"""The extraction pipeline: the one place that joins audio decoding, encoders and the store writer.

Flow for every block of clips (a DataLoader batch)::

    worker processes: load_audio (decode, mono, resample to each encoder's rate, peak-normalise)
    main process, per encoder: cut clips into equal-length windows (extract/windowing) -> batches of
        equal-length windows -> encoder (inference mode, autocast on GPU) -> per-window moments of every
        layer on the device (extract/pooling) -> merged per clip -> pooled rows -> store writer

Decoding runs in ``workers`` processes ahead of the model (``prefetch_factor`` blocks each), so the model
does not wait on I/O; the writer holds at most one chunk of rows, so memory does not grow with the
dataset. Rows already done are skipped, so running the same command again finishes an interrupted run.

Shared with the Ray engine (``extract/ray_engine.py``): :func:`decode_clip` (decoding),
:func:`encode_clips` (encoder + pooling into rows) and :func:`open_extraction` (track table, model
entries and the :class:`ExtractionRun` through which every engine writes rows and records failures).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from embedstore import __version__
from embedstore.devices import resolve_device
from embedstore.errors import AudioError, EmbedstoreError, ModelError
from embedstore.extract.audio import load_audio
from embedstore.extract.datasets import Dataset, Track
from embedstore.extract.encoders import Encoder
from embedstore.extract.pooling import POOLINGS, RunningMoments, bin_frames, pooled_width, window_moments
from embedstore.extract.windowing import WindowRule, frames_to_skip
from embedstore.store import ModelWriter, Store, TrackTable, open_store

log = logging.getLogger(__name__)


@dataclass
class ExtractOptions:
    """How to extract (everything except which dataset and which encoders).

    Attributes:
        batch_size: windows per encoder call.
        pooling: ``"mean"`` or ``"mean+std"`` over time.
        storage_dtype: ``"float32"`` or ``"float16"`` on disk.
        frames_hop: seconds per stored frame for frame-level sequences (None: pooled only).
        frame_layers: layer indices whose frame sequences are stored (None with ``frames_hop``: all).
        workers: decoding processes (None: ``min(4, cpus - 1)``; 0 decodes in the main process).
        limit: extract at most this many clips (the first ones of the track list).
        split: only clips of these splits.
        strict: any failed clip is an error.
        progress: show a progress bar (on a terminal) or log lines (otherwise).
    """

    batch_size: int = 8
    pooling: str = "mean"
    storage_dtype: str = "float32"
    frames_hop: float | None = None
    frame_layers: Sequence[int] | None = None
    workers: int | None = None
    limit: int | None = None
    split: Sequence[str] | None = None
    strict: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise EmbedstoreError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.pooling not in POOLINGS:
            raise EmbedstoreError(f"--pool must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.storage_dtype not in ("float32", "float16"):
            raise EmbedstoreError(f"--storage-dtype must be float32 or float16, got {self.storage_dtype!r}")
        if self.frames_hop is not None and self.frames_hop <= 0:
            raise EmbedstoreError(f"--frames must be a positive hop in seconds, got {self.frames_hop}")
        if self.limit is not None and self.limit < 1:
            raise EmbedstoreError(f"--limit must be at least 1, got {self.limit}")


@dataclass
class ModelSummary:
    """What one extraction run did for one model entry."""

    model: str
    total: int
    written: int = 0
    already_done: int = 0
    failed: int = 0
    silent: int = 0
    audio_seconds: float = 0.0
    model_seconds: float = 0.0


@dataclass
class ExtractSummary:
    """What one extraction run did: per model entry, plus wall time."""

    store: str
    dataset: str
    models: list[ModelSummary] = field(default_factory=list)
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def written(self) -> int:
        return sum(m.written for m in self.models)

    @property
    def failed(self) -> int:
        return len(self.failures)


def default_workers() -> int:
    """Decoding worker processes: one fewer than the CPUs (the main process runs the model), 1..4."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def model_key(encoder: Encoder, weights: str, name: str | None = None) -> str:
    """The store key of a model entry: ``name`` if given, else the encoder name (``+random`` for random weights)."""
    if name:
        return name
    return f"{encoder.name}+random" if weights == "random" else encoder.name


def file_hash(path: Path) -> str:
    """SHA-1 of a file's bytes (hex): identifies a clip's content in the track table."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha1").hexdigest()


def track_table(dataset: Dataset, tracks: Sequence[Track]) -> TrackTable:
    """The store's track table for ``tracks`` of ``dataset`` (content hashes computed here)."""
    return TrackTable(
        ids=np.array([t.id for t in tracks], dtype=object),
        paths=np.array([t.path for t in tracks], dtype=object),
        labels=np.array([t.label or "" for t in tracks], dtype=object),
        splits=np.array([t.split or "" for t in tracks], dtype=object),
        captions=np.array([t.caption or "" for t in tracks], dtype=object),
        offsets=np.array([t.offset for t in tracks], dtype=np.float64),
        durations=np.array([np.nan if t.duration is None else t.duration for t in tracks], dtype=np.float64),
        hashes=np.array([file_hash(dataset.root / t.path) for t in tracks], dtype=object),
    )


def decode_clip(path: Path, rates: Sequence[int], *, offset: float = 0.0, duration: float | None = None) -> dict[int, np.ndarray]:
    """Decode one clip at every sample rate in ``rates``: ``{rate: float32 [samples]}`` (see
    :func:`~embedstore.extract.audio.load_audio`). Raises :class:`AudioError` naming the file."""
    return {sr: load_audio(path, sr, offset=offset, duration=duration) for sr in sorted(set(rates))}


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

    def __init__(self, root: Path, tracks: Sequence[Track], rows: Sequence[int], rates: Sequence[int]):
        self.root, self.tracks, self.rows, self.rates = root, tracks, list(rows), sorted(set(rates))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> _Decoded:
        row = self.rows[i]
        track = self.tracks[row]
        try:
            waves = decode_clip(self.root / track.path, self.rates, offset=track.offset, duration=track.duration)
        except AudioError as exc:
            return _Decoded(row, {}, exc.reason)
        return _Decoded(row, waves)


def _collate(items: list[_Decoded]) -> list[_Decoded]:
    return items


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


class _Progress:
    """A tqdm bar on a terminal; plain log lines every few seconds otherwise."""

    def __init__(self, total: int, enabled: bool, desc: str):
        self.tty = enabled and sys.stderr.isatty()
        self.enabled = enabled
        self.total, self.done, self.audio = total, 0, 0.0
        self.start = self.last = time.perf_counter()
        self.bar = tqdm(total=total, desc=desc, unit="clip", dynamic_ncols=True) if self.tty else None

    def update(self, clips: int, audio_seconds: float) -> None:
        self.done += clips
        self.audio += audio_seconds
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        if self.bar is not None:
            self.bar.update(clips)
            self.bar.set_postfix_str(f"{self.audio / elapsed:.1f} audio-s/s")
        elif self.enabled and (time.perf_counter() - self.last > 10 or self.done == self.total):
            self.last = time.perf_counter()
            rate = self.done / elapsed
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            print(
                f"[extract] {self.done}/{self.total} clips, {rate:.2f} clips/s, "
                f"{self.audio / elapsed:.1f} audio-s/s, ETA {eta:.0f} s",
                file=sys.stderr,
                flush=True,
            )

    def note(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def resolve_frame_layers(encoder: Encoder, options: ExtractOptions) -> list[int]:
    """Sorted layer indices whose frame sequences are stored (empty without ``frames_hop``).

    Raises :class:`ModelError` naming ``--frame-layers`` when an index is out of range.
    """
    if options.frames_hop is None:
        return []
    if options.frame_layers is None:
        return list(range(encoder.num_layers))
    layers = []
    for layer in options.frame_layers:
        index = layer + encoder.num_layers if layer < 0 else layer
        if not 0 <= index < encoder.num_layers:
            raise ModelError(
                f"--frame-layers {layer} is out of range: {encoder.name} has layers 0..{encoder.num_layers - 1}"
            )
        layers.append(index)
    return sorted(set(layers))


def select_tracks(dataset: Dataset, options: ExtractOptions) -> list[Track]:
    """The tracks a run extracts: ``options.split`` filter, then the first ``options.limit``."""
    tracks = list(dataset.tracks)
    if options.split:
        wanted = set(options.split)
        tracks = [t for t in tracks if t.split in wanted]
    if options.limit is not None:
        tracks = tracks[: options.limit]
    if not tracks:
        raise EmbedstoreError(f"{dataset.root}: no clips to extract (check --split / --limit)")
    return tracks


def model_metadata(key: str, encoder: Encoder, options: ExtractOptions, frame_layers: Sequence[int]) -> dict:
    """The JSON-able metadata of a model entry (identity, preprocessing, pooling, windows, frames)."""
    return {
        **encoder.describe(),
        "model": key,
        "encoder": encoder.name,
        "sample_rate": encoder.sample_rate,
        "num_layers": encoder.num_layers,
        "layer_names": list(encoder.layer_names),
        "encoder_widths": list(encoder.layer_widths),
        "frame_rate": encoder.frame_rate,
        "pooling": options.pooling,
        "windowing": WindowRule(encoder.window_seconds, encoder.sample_rate).describe(),
        "frames_hop_seconds": options.frames_hop,
        "frame_layers": list(frame_layers),
        "audio_preprocessing": "decode (soundfile) -> mono (channel mean) -> resample (soxr HQ) "
        "-> peak-normalise to [-1, 1]",
        "embedstore_version": __version__,
    }


@dataclass
class ModelTarget:
    """One model entry being written: its writer, frame settings and the rows it still needs.

    Attributes:
        key: the store key of the entry.
        writer: its :class:`ModelWriter` (owned by the process that opened the extraction).
        frame_layers: layer indices with stored frame sequences.
        max_frames: frames per stored sequence (0 without frames).
        todo: store rows of this run not yet written for this entry.
        summary: what the run did for this entry.
    """

    key: str
    writer: ModelWriter
    frame_layers: list[int]
    max_frames: int
    todo: set[int]
    summary: ModelSummary


class ExtractionRun:
    """The writing side of one extraction: the open store, the run's tracks by store row, and one
    :class:`ModelTarget` per model entry. Every engine feeds results through :meth:`fail`,
    :meth:`warn_silent` and :meth:`write`, so failures, warnings and resume work the same everywhere.
    Get one from :func:`open_extraction`.
    """

    def __init__(self, dataset: Dataset, store: Store, by_row: dict[int, Track], targets: list[ModelTarget],
                 summary: ExtractSummary, options: ExtractOptions, started: float):
        self.dataset, self.store, self.by_row, self.targets = dataset, store, by_row, targets
        self.summary, self.options, self.started = summary, options, started
        self.progress = _Progress(len(self.rows()), options.progress, desc=f"extract {dataset.name}")

    def rows(self) -> list[int]:
        """Store rows that at least one model entry still needs, in increasing order."""
        return sorted(set().union(*(t.todo for t in self.targets)))

    def fail(self, row: int, reason: str) -> None:
        """Record that the clip at ``row`` failed (reported, and kept in each entry's failure list)."""
        track = self.by_row[row]
        self.summary.failures.append((track.path, reason))
        self.progress.note(f"failed: {track.path}: {reason}")
        for target in self.targets:
            if row in target.todo:
                target.writer.fail(row, reason)

    def warn_silent(self, row: int) -> None:
        """Warn that the clip at ``row`` is silent (it is stored all the same)."""
        self.progress.note(f"warning: {self.by_row[row].path}: silent clip (stored; its embedding is that of silence)")
        for target in self.targets:
            target.summary.silent += 1

    def write(self, index: int, rows: np.ndarray, encoded: EncodedClips, audio_seconds: float, model_seconds: float) -> None:
        """Hand the pooled ``encoded`` rows of model entry ``index`` to its writer.

        ``rows`` ``[n]`` are store rows; ``audio_seconds``/``model_seconds`` are their totals.
        """
        target = self.targets[index]
        rows = np.asarray(rows, dtype=np.int64)
        target.writer.write(rows, encoded.layers, frames=encoded.frames, frame_counts=encoded.counts)
        target.summary.written += rows.size
        target.summary.audio_seconds += audio_seconds
        target.summary.model_seconds += model_seconds
        target.todo.difference_update(rows.tolist())

    def close(self) -> None:
        """Close the progress display and every writer (flushing what is buffered)."""
        try:
            self.progress.close()
        finally:
            for target in self.targets:
                target.writer.close()

    def finish(self) -> ExtractSummary:
        """The run's summary, after :meth:`close`. Raises :class:`EmbedstoreError` with ``strict``
        when a clip failed, or when no clip at all could be written."""
        summary, options = self.summary, self.options
        summary.seconds = time.perf_counter() - self.started
        if options.strict and summary.failures:
            raise EmbedstoreError(f"{len(summary.failures)} clip(s) failed and --strict is set; first: {summary.failures[0][0]}: {summary.failures[0][1]}")
        if summary.written == 0 and summary.failures and all(m.already_done == 0 for m in summary.models):
            raise EmbedstoreError(f"no clip could be extracted from {self.dataset.root}: {len(summary.failures)} failed")
        return summary


@contextmanager
def open_extraction(
    dataset: Dataset,
    encoders: Sequence[tuple[str, Encoder]],
    store_path: str | Path,
    options: ExtractOptions,
) -> Iterator[ExtractionRun]:
    """Open ``store_path`` for an extraction and yield its :class:`ExtractionRun`; closes it on exit.

    Writes the track table of the selected tracks (:func:`select_tracks`) and the dataset's
    attributes, opens (or reopens, to resume) one model entry per ``(key, encoder)`` with its
    metadata (:func:`model_metadata`), and works out which rows each entry still needs. Clips found
    unreadable at discovery are reported here.
    """
    started = time.perf_counter()
    tracks = select_tracks(dataset, options)
    summary = ExtractSummary(store=str(store_path), dataset=dataset.name)
    # unreadable files found at discovery never reach the track table: report and record them here
    summary.failures.extend(dataset.skipped)
    for path, reason in dataset.skipped:
        print(f"failed: {path}: {reason}", file=sys.stderr, flush=True)

    with open_store(store_path, mode="a") as store:
        store.write_tracks(
            dataset.name,
            track_table(dataset, tracks),
            {
                "kind": dataset.kind,
                "root": str(dataset.root),
                "tasks": dict(dataset.tasks),
                "split_scheme": dataset.split_scheme,
                "skipped": [list(item) for item in dataset.skipped],
            },
        )
        stored_ids = list(store.tracks(dataset.name).ids)
        row_of = {tid: r for r, tid in enumerate(stored_ids)}
        by_row: dict[int, Track] = {row_of[t.id]: t for t in tracks}

        targets: list[ModelTarget] = []
        max_duration = max((t.duration or 0.0) for t in tracks) or None
        try:
            for key, enc in encoders:
                layers = resolve_frame_layers(enc, options)
                n_frames = 0
                if layers:
                    longest = max_duration or max(_duration_of(dataset.root / t.path) for t in tracks)
                    n_frames = int(np.ceil(longest / options.frames_hop))
                writer = store.model_writer(
                    dataset.name,
                    key,
                    model_metadata(key, enc, options, layers),
                    [pooled_width(w, options.pooling) for w in enc.layer_widths],
                    storage_dtype=options.storage_dtype,
                    frame_layers=layers or None,
                    max_frames=n_frames,
                )
                todo = set(int(r) for r in writer.pending()) & set(by_row)
                model = ModelSummary(model=key, total=len(by_row), already_done=len(by_row) - len(todo))
                summary.models.append(model)
                targets.append(ModelTarget(key, writer, layers, n_frames, todo, model))
        except BaseException:
            for target in targets:
                target.writer.close()
            raise
        run = ExtractionRun(dataset, store, by_row, targets, summary, options, started)
        try:
            yield run
        finally:
            run.close()


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


def _duration_of(path: Path) -> float:
    from embedstore.extract.audio import audio_duration

    return audio_duration(path)


def _decoded_blocks(
    root: Path,
    tracks: Sequence[Track],
    rows: Sequence[int],
    encoders: Sequence[tuple[str, Encoder]],
    options: ExtractOptions,
) -> Iterator[list[_Decoded]]:
    """Blocks of decoded clips, decoded in worker processes ahead of the model."""
    all_tracks: dict[int, Track] = dict(zip(rows, tracks))
    source = _ClipSource(root, _RowView(all_tracks), rows, [enc.sample_rate for _, enc in encoders])
    workers = default_workers() if options.workers is None else options.workers
    loader = DataLoader(
        source,
        batch_size=options.batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False,
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


def format_summary(summary: ExtractSummary) -> str:
    """The end-of-run summary printed by ``embedstore extract``."""
    lines = [f"store {summary.store}, dataset {summary.dataset}, {summary.seconds:.1f} s"]
    for m in summary.models:
        rate = m.audio_seconds / m.model_seconds if m.model_seconds > 0 else 0.0
        lines.append(
            f"  {m.model}: {m.written} written, {m.already_done} already done, "
            f"{m.total - m.written - m.already_done} not written of {m.total}; "
            f"{m.audio_seconds:.0f} audio-s in {m.model_seconds:.1f} model-s ({rate:.1f} audio-s/s)"
        )
    if summary.failures:
        lines.append(f"  {len(summary.failures)} clip(s) failed (recorded in the store's failure list):")
        lines.extend(f"    {path}: {reason}" for path, reason in summary.failures[:20])
        if len(summary.failures) > 20:
            lines.append(f"    ... and {len(summary.failures) - 20} more (see `embedstore info`)")
    return "\n".join(lines)


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

    Returns:
        The run's :class:`ExtractSummary`.
    """
    from embedstore.extract.datasets import discover_dataset
    from embedstore.extract.encoders import load_encoder

    check_model_args(models, checkpoint, model_name)
    dataset = discover_dataset(
        dataset_dir, dataset_type, split=split_scheme, split_dir=split_dir, seed=seed, name=dataset_name
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
