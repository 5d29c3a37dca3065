"""The extraction pipeline: the one place that joins audio decoding, encoders and the store writer.

Flow for every block of clips (a DataLoader batch)::

    worker processes: load_audio (decode, mono, resample to each encoder's rate, the --gain rule)
    main process: clips an encoder refuses as too short (``Encoder.too_short``) fail for that encoder
    main process, per encoder: cut clips into equal-length windows (extract/windowing) -> batches of
        equal-length windows -> encoder (inference mode, autocast on GPU) -> per-window moments of every
        layer on the device (extract/pooling) -> merged per clip -> pooled rows -> store writer

Long clips (over :data:`STREAM_SECONDS`, from the file's header) are not decoded whole: the worker
only marks them, and the main process streams each one (:func:`encode_streamed`): blocks of
:data:`~embedstore.extract.audio.STREAM_BLOCK_SECONDS` decoded and resampled to every rate at once
(:func:`~embedstore.extract.audio.stream_audio`, in a background thread a few blocks ahead of the
model), cut into windows as they complete and run in bounded groups
(:class:`~embedstore.extract.encoding.ClipStream`). Their rows equal the whole-clip computation, and
memory stays that of a few blocks and one group of windows per encoder, whatever the clip's length.

Decoding runs in ``workers`` processes ahead of the model (``prefetch_factor`` blocks each), so the model
does not wait on I/O; the writer holds at most one chunk of rows, so memory does not grow with the
dataset. Rows already done are skipped, so running the same command again finishes an interrupted run.

Shared with the Ray engine (``extract/ray_engine.py``): :func:`decode_clip` and :func:`is_long_clip`
(decoding), :func:`~embedstore.extract.encoding.encode_clips` and :func:`encode_streamed` (encoder +
pooling into rows) and :func:`~embedstore.extract.writing.open_extraction` (track table, model entries
and the :class:`~embedstore.extract.writing.ExtractionRun` through which every engine writes rows and
records failures). This module keeps the local engine: worker-process decoding and the block loop.
"""

from __future__ import annotations

import queue
import shutil
import signal
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from embedstore.devices import resolve_device
from embedstore.errors import AudioError, EmbedstoreError
from embedstore.extract.audio import DEFAULT_GAIN, audio_info, load_audio_rates, stream_audio
from embedstore.extract.datasets import Dataset, DatasetRequest, Track
from embedstore.extract.encoders import Encoder, EncoderRequest
from embedstore.extract.encoding import ClipStream, EncodedClips, encode_clips
from embedstore.extract.feeding import default_workers, warn_if_underfed
from embedstore.extract.options import ExtractOptions
from embedstore.extract.writing import ExtractionRun, ExtractSummary, format_summary, open_extraction

__all__ = [
    "ExtractOptions",
    "ExtractSummary",
    "STREAM_SECONDS",
    "Streamed",
    "as_requests",
    "check_requests",
    "decode_clip",
    "default_workers",
    "encode_streamed",
    "extract_dataset",
    "format_summary",
    "is_long_clip",
    "is_silent",
    "refusals",
    "run_extract",
]

#: Blocks each decoding worker prepares ahead of the model.
_PREFETCH = 4
#: Clips longer than this (seconds, from the file's header) are decoded and encoded block by block
#: (:func:`encode_streamed`); shorter ones are decoded whole in the worker processes.
STREAM_SECONDS = 60.0


def leave_interrupts_to_main(_worker_id: int = 0) -> None:
    """``worker_init_fn`` of decoding workers: they ignore Ctrl-C, and the main process (which gets it
    too) stops them in order. A worker stopped by its own KeyboardInterrupt can leave the main process
    waiting seconds for it at shutdown."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)




def decode_clip(path: Path, rates: Sequence[int], *, offset: float = 0.0, duration: float | None = None,
                gain: str = DEFAULT_GAIN) -> dict[int, np.ndarray]:
    """Decode one clip at every sample rate in ``rates`` with the ``gain`` rule: ``{rate: float32 [samples]}``
    from one decode of the file (:func:`~embedstore.extract.audio.load_audio_rates`). Raises :class:`AudioError` naming the file."""
    return load_audio_rates(path, sorted(set(rates)), offset=offset, duration=duration, gain=gain)


def is_long_clip(path: Path, *, offset: float = 0.0, duration: float | None = None) -> bool:
    """True when the clip (the window ``[offset, offset + duration)`` of ``path``) lasts more than
    :data:`STREAM_SECONDS`: it is then streamed (:func:`encode_streamed`), not decoded whole. Reads only
    the header, and not even that when ``duration`` is short; raises :class:`AudioError` naming the file."""
    if duration is not None and duration <= STREAM_SECONDS:
        return False
    seconds = audio_info(path).duration - offset
    return min(seconds, duration if duration is not None else seconds) > STREAM_SECONDS


def is_silent(waves: dict[int, np.ndarray]) -> bool:
    """True when every decoded waveform of a clip is all zeros (stored, with a warning)."""
    return not any(np.any(w) for w in waves.values())


@dataclass
class _Decoded:
    """One decoded clip as it leaves a worker: waveforms at each needed rate, or the error, or
    ``streamed`` (a long clip, left for the main process to stream: no waveforms)."""

    row: int
    waves: dict[int, np.ndarray]
    error: str | None = None
    streamed: bool = False


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
            if is_long_clip(self.root / track.path, offset=track.offset, duration=track.duration):
                return _Decoded(row, {}, streamed=True)
            waves = decode_clip(self.root / track.path, self.rates, offset=track.offset, duration=track.duration,
                                gain=self.gain)
        except AudioError as exc:
            return _Decoded(row, {}, exc.reason)
        return _Decoded(row, waves)


@dataclass
class _Block:
    """A block of decoded clips as it leaves a worker: all their waveforms joined in one tensor in shared
    memory (it crosses to the main process as one file descriptor, where numpy arrays would be pickled
    through a pipe and copied three times on arrival), ``spans[i][rate]`` the slice of item ``i``'s."""

    items: list[_Decoded]
    buffer: torch.Tensor | None = None
    spans: list[dict[int, tuple[int, int]]] | None = None

    def unpack(self) -> list[_Decoded]:
        """The items, their waveforms restored as numpy views of the buffer."""
        if self.buffer is not None:
            flat = self.buffer.numpy()
            for item, span in zip(self.items, self.spans):
                item.waves = {rate: flat[a:b] for rate, (a, b) in span.items()}
        return self.items


def _collate(items: list[_Decoded], shared: bool = True) -> _Block:
    parts = [w for item in items for w in item.waves.values()]
    if not shared or torch.utils.data.get_worker_info() is None or not parts:
        return _Block(items)  # pickled with the waveforms inside, or decoded in this process
    buffer = torch.from_numpy(np.concatenate(parts)).share_memory_()
    spans, at = [], 0
    for item in items:
        span = {}
        for rate, wave in item.waves.items():
            span[rate], at = (at, at + wave.shape[0]), at + wave.shape[0]
        spans.append(span)
        item.waves = {}
    return _Block(items, buffer, spans)


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
        for block in _decoded_blocks(dataset.root, [run.track(r) for r in rows], rows, run.encoders, options):
            _process_block(block, run, options)
    return run.finish()


def _decoded_blocks(
    root: Path,
    tracks: Sequence[Track],
    rows: Sequence[int],
    encoders: Sequence[Encoder],
    options: ExtractOptions,
) -> Iterator[list[_Decoded]]:
    """Blocks of decoded clips (at each encoder's sample rate), decoded in worker processes ahead of the
    model (as many as the encoders' device needs, see :mod:`embedstore.extract.feeding`)."""
    all_tracks: dict[int, Track] = dict(zip(rows, tracks))
    source = _ClipSource(root, _RowView(all_tracks), rows, [enc.sample_rate for enc in encoders], options.gain)
    workers = default_workers(encoders) if options.workers is None else options.workers
    warn_if_underfed(encoders, workers)
    loader = DataLoader(
        source,
        batch_size=options.batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=partial(_collate, shared=_shared_memory_fits(workers, options.batch_size, source.rates)),
        prefetch_factor=_PREFETCH if workers > 0 else None,
        persistent_workers=False,
        worker_init_fn=leave_interrupts_to_main,
    )
    for block in loader:
        yield block.unpack()


def _shared_memory_fits(workers: int, batch_size: int, rates: Sequence[int]) -> bool:
    """True when ``/dev/shm`` can hold the decoded blocks in flight (``prefetch_factor + 1`` per worker,
    clips up to :data:`STREAM_SECONDS`); otherwise blocks are pickled through pipes (slower, but a
    container's small ``/dev/shm``, 64 MB under Docker by default, never kills a worker)."""
    try:
        free = shutil.disk_usage("/dev/shm").free
    except OSError:
        return False
    return free >= workers * (_PREFETCH + 1) * batch_size * STREAM_SECONDS * sum(rates) * 4


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
        if item.streamed:
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
    for item in block:
        if item.streamed and item.error is None:
            audio_seconds += _process_streamed(item.row, run, options)
    run.progress.update(len(block), audio_seconds)


def _process_streamed(row: int, run: ExtractionRun, options: ExtractOptions) -> float:
    """Stream one long clip through every encoder that needs it and write its rows; returns its seconds."""
    track = run.track(row)
    targets = run.targets
    try:
        result = encode_streamed(
            Path(run.dataset.root) / track.path, run.encoders, run.needs(row),
            options, [t.frame_layers for t in targets], [t.max_frames for t in targets],
            offset=track.offset, duration=track.duration,
        )
    except AudioError as exc:
        run.fail(row, exc.reason)
        return 0.0
    if result.silent:
        run.warn_silent(row)
    for m, encoded in result.rows.items():
        run.write(m, np.array([row], dtype=np.int64), encoded, audio_seconds=result.audio_seconds[m],
                  model_seconds=result.model_seconds[m])
    return max(result.audio_seconds.values(), default=0.0)


@dataclass
class Streamed:
    """What :func:`encode_streamed` gives for one clip.

    Attributes:
        rows: ``{model index: EncodedClips of one row}`` for every encoder that needed the clip.
        audio_seconds, model_seconds: ``{model index: seconds}`` of audio encoded and of encoder time.
        silent: every decoded sample was zero.
    """

    rows: dict[int, EncodedClips]
    audio_seconds: dict[int, float]
    model_seconds: dict[int, float]
    silent: bool


def encode_streamed(
    path: Path,
    encoders: Sequence[Encoder],
    needs: Sequence[bool],
    options: ExtractOptions,
    frame_layers: Sequence[Sequence[int]],
    max_frames: Sequence[int],
    *,
    offset: float = 0.0,
    duration: float | None = None,
) -> Streamed:
    """Decode one (long) clip block by block and encode it with every encoder ``m`` where ``needs[m]``.

    The blocks of :func:`~embedstore.extract.audio.stream_audio` (every encoder's rate, ``options.gain``)
    are decoded in a background thread at most :data:`_PREFETCH_BLOCKS` ahead and pushed into one
    :class:`~embedstore.extract.encoding.ClipStream` per encoder, so memory is bounded by the blocks and
    the windows in flight, not by the clip's length. The rows equal
    ``encode_clips(encoder, [decode_clip(...)[rate]], ...)``. No too-short check: a streamed clip is
    longer than :data:`STREAM_SECONDS`.

    Args:
        path: the audio file; ``offset``/``duration`` the window (as for ``load_audio``).
        encoders: the run's encoders, in model order; ``needs`` which of them still need the clip.
        options: batching, pooling, frames hop and gain.
        frame_layers, max_frames: per encoder, as for :func:`~embedstore.extract.encoding.encode_clips`.

    Returns:
        :class:`Streamed`. Raises :class:`AudioError` (naming the file) when decoding fails, even late
        (a truncated file): no row of the clip is then returned.
    """
    streams = {m: ClipStream(enc, options, frame_layers[m], max_frames[m])
               for m, (enc, need) in enumerate(zip(encoders, needs)) if need}
    model_seconds = dict.fromkeys(streams, 0.0)
    silent = True
    blocks = stream_audio(path, sorted({encoders[m].sample_rate for m in streams}), offset=offset,
                          duration=duration, gain=options.gain)
    with closing(_prefetched(blocks, _PREFETCH_BLOCKS)) as prefetched:  # an error here stops the thread
        for block in prefetched:
            silent = silent and not any(np.any(x) for x in block.values())
            for m, stream in streams.items():
                t0 = time.perf_counter()
                stream.push(block[encoders[m].sample_rate])
                model_seconds[m] += time.perf_counter() - t0
    rows = {}
    for m, stream in streams.items():
        t0 = time.perf_counter()
        rows[m] = stream.finish()
        model_seconds[m] += time.perf_counter() - t0
    audio_seconds = {m: stream.samples / encoders[m].sample_rate for m, stream in streams.items()}
    return Streamed(rows, audio_seconds, model_seconds, silent)


#: Decoded blocks a streamed clip's decoding thread runs ahead of the encoders.
_PREFETCH_BLOCKS = 2
_END = object()


def _prefetched(items: Iterable, depth: int) -> Iterator:
    """Iterate ``items`` in a background thread at most ``depth`` items ahead (libsndfile and soxr
    release the GIL, so decoding overlaps the model). An exception of ``items`` is raised here; leaving
    the loop early stops the thread."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not put((item, None)):
                    return
            put((_END, None))
        except BaseException as exc:  # handed to the consumer
            put((_END, exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="embedstore-stream-decode", daemon=True)
    thread.start()
    try:
        while True:
            item, error = slots.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        thread.join()


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
