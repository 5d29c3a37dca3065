"""The writing side of an extraction: track table, model entries, progress, failures and summary.

:func:`open_extraction` writes the track table and opens one model entry per encoder; the
:class:`ExtractionRun` it yields is what every engine (local or Ray) feeds rows, failures and
silent-clip warnings through, so resume and failure records behave the same everywhere.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from embedstore import __version__
from embedstore.errors import EmbedstoreError, StoreError
from embedstore.extract.audio import LEGACY_GAIN, audio_duration, preprocessing_description
from embedstore.extract.datasets import Dataset, Track
from embedstore.extract.encoders import Encoder
from embedstore.extract.encoding import EncodedClips
from embedstore.extract.options import ExtractOptions
from embedstore.extract.pooling import pooled_width
from embedstore.extract.windowing import WindowRule
from embedstore.store import ModelWriter, Store, TrackTable, open_store
from embedstore.store.failures import format_reason_groups, merge_model_reasons
from embedstore.store.specs import resolve_layers


@dataclass
class ModelSummary:
    """What one extraction run did for one model entry (failures are run-wide: :class:`ExtractSummary`).

    Attributes:
        model: the entry's store key.
        total: clips of this run; ``written`` now, ``already_done`` by earlier runs.
        silent: silent clips among them (stored, with a warning).
        audio_seconds, model_seconds: audio encoded and time spent in the encoder and pooling.
    """

    model: str
    total: int
    written: int = 0
    already_done: int = 0
    silent: int = 0
    audio_seconds: float = 0.0
    model_seconds: float = 0.0


@dataclass
class ExtractSummary:
    """What one extraction run did: per model entry, plus wall time and the files not extracted.

    Attributes:
        failures: ``(path, reason)`` of every file of the dataset that was not extracted, each once:
            first the ``skipped`` files found unreadable while scanning, then the clips that failed
            in this run (a clip refused by some encoders only names them in its reason).
        skipped: how many of ``failures`` (at its head) were skipped while scanning.
    """

    store: str
    dataset: str
    models: list[ModelSummary] = field(default_factory=list)
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    skipped: int = 0

    @property
    def written(self) -> int:
        return sum(m.written for m in self.models)

    @property
    def failed(self) -> int:
        return len(self.failures)


def file_hash(path: Path) -> str:
    """SHA-1 of a file's bytes (hex): identifies a clip's content in the track table."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:  # 1 MiB blocks (not hashlib.file_digest, which is Python 3.11+ only)
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    picked = resolve_layers(list(options.frame_layers), list(encoder.layer_names), model=encoder.name,
                            option="--frame-layers", words=())
    return sorted(set(picked.indices))


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


#: distributions whose versions every model entry records, besides python, embedstore, libsndfile
#: and the store backend's library (:func:`software_versions`)
VERSIONED_PACKAGES = ("torch", "transformers", "numpy", "soundfile", "soxr", "librosa")
_BACKEND_PACKAGE = {"zarr": "zarr", "hdf5": "h5py"}


def _installed(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def software_versions(backend: str) -> dict[str, str | None]:
    """The versions of what computes and writes a model entry's numbers (None: not installed).

    Returns ``{"python", "embedstore", "torch", "transformers", "numpy", "soundfile", "soxr",
    "librosa", "libsndfile", "zarr" | "h5py"}`` (``backend``: ``"zarr"`` or ``"hdf5"``). Read from the
    installed distributions' metadata, so no package is imported for it (librosa only computes the MFCC
    baseline); libsndfile's comes from soundfile, which decoding has loaded already.
    """
    import soundfile

    versions: dict[str, str | None] = {"python": platform.python_version(), "embedstore": __version__}
    versions.update({name: _installed(name) for name in VERSIONED_PACKAGES})
    versions["libsndfile"] = soundfile.__libsndfile_version__  # the C library soundfile decodes with
    package = _BACKEND_PACKAGE.get(backend, backend)
    versions[package] = _installed(package)
    return versions


def _pipeline_summary(gain: str) -> str:
    """One line of the decoding steps (a store identity key: unchanged for stores made before --gain)."""
    last = "peak-normalise to [-1, 1]" if gain == "peak" else "no gain change"
    return f"decode (soundfile) -> mono (channel mean) -> resample (soxr HQ) -> {last}"


def model_metadata(key: str, encoder: Encoder, options: ExtractOptions, frame_layers: Sequence[int],
                   backend: str = "zarr") -> dict:
    """The JSON-able metadata of a model entry: identity, preprocessing (``gain``, ``decoding``: the
    rules of :func:`~embedstore.extract.audio.preprocessing_description`, ``windowing``), pooling,
    frames, and ``versions`` (:func:`software_versions` for the store ``backend``)."""
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
        "gain": options.gain,
        "decoding": preprocessing_description(encoder.sample_rate, options.gain),
        "audio_preprocessing": _pipeline_summary(options.gain),
        "versions": software_versions(backend),
        "embedstore_version": __version__,
    }


def check_gain_matches(store: Store, dataset: str, key: str, gain: str) -> None:
    """Refuse to add rows decoded with ``gain`` to an existing model entry made with another rule.

    An entry without a ``gain`` key predates the option and was peak-normalised
    (:data:`~embedstore.extract.audio.LEGACY_GAIN`). Raises a one-line :class:`StoreError`.
    """
    if key not in store.models(dataset):
        return
    stored = store.model_attrs(dataset, key).get("gain", LEGACY_GAIN)
    if stored != gain:
        raise StoreError(
            f"{store.path}: model entry {key!r} of dataset {dataset!r} was extracted with --gain {stored}, "
            f"not --gain {gain}; rerun with --gain {stored}, or write under another --as name or into another store")


@dataclass
class ModelTarget:
    """One model entry being written: its encoder, writer, frame settings and the rows it still needs.

    Attributes:
        key: the store key of the entry.
        encoder: the encoder whose rows go into it.
        writer: its :class:`ModelWriter` (owned by the process that opened the extraction).
        frame_layers: layer indices with stored frame sequences.
        max_frames: frames per stored sequence (0 without frames).
        todo: store rows of this run not yet written for this entry (read it through :meth:`needs`).
        summary: what the run did for this entry.
    """

    key: str
    encoder: Encoder
    writer: ModelWriter
    frame_layers: list[int]
    max_frames: int
    todo: set[int]
    summary: ModelSummary

    def needs(self, row: int) -> bool:
        """True while the entry still needs store row ``row`` (not written, not failed)."""
        return row in self.todo


class ExtractionRun:
    """The writing side of one extraction: the open store, the run's tracks by store row, and one
    :class:`ModelTarget` per model entry (``targets``, in the order the encoders were given; a
    target's position is its *entry index*, the ``m`` of :meth:`refuse` and :meth:`write`).

    Engines read the work from :meth:`rows`, :meth:`track`, :meth:`needs` and each target's
    ``encoder``, ``frame_layers`` and ``max_frames``, and feed results through :meth:`fail`,
    :meth:`refuse`, :meth:`warn_silent` and :meth:`write`, so failures, warnings and resume work the
    same everywhere. Get one from :func:`open_extraction`.
    """

    def __init__(self, dataset: Dataset, store: Store, by_row: dict[int, Track], targets: list[ModelTarget],
                 summary: ExtractSummary, options: ExtractOptions, started: float):
        self.dataset, self.store, self.by_row, self.targets = dataset, store, by_row, targets
        self.summary, self.options, self.started = summary, options, started
        self.progress = _Progress(len(self.rows()), options.progress, desc=f"extract {dataset.name}")

    @property
    def encoders(self) -> list[Encoder]:
        """The encoder of each target, by entry index."""
        return [t.encoder for t in self.targets]

    def rows(self) -> list[int]:
        """Store rows that at least one model entry still needs, in increasing order."""
        return sorted(set().union(*(t.todo for t in self.targets)))

    def track(self, row: int) -> Track:
        """The track at store row ``row`` (one of this run's)."""
        return self.by_row[row]

    def needs(self, row: int) -> list[bool]:
        """Whether each target (by entry index) still needs store row ``row``."""
        return [t.needs(row) for t in self.targets]

    def fail(self, row: int, reason: str) -> None:
        """Record that the clip at ``row`` failed for every entry that still needs it (reported, and
        kept in each entry's failure list)."""
        self.refuse(row, {m: reason for m, target in enumerate(self.targets) if target.needs(row)})

    def refuse(self, row: int, reasons: dict[int, str]) -> None:
        """Record that the clip at ``row`` failed for the entries ``{entry index: reason}`` only (e.g. too
        short for one encoder): kept in those entries' failure lists, reported once."""
        track = self.by_row[row]
        reason = merge_model_reasons({self.targets[m].key: r for m, r in reasons.items()})
        self.summary.failures.append((track.path, reason))
        self.progress.note(f"failed: {track.path}: {reason}")
        for m, why in reasons.items():
            self.targets[m].writer.fail(row, why)
            self.targets[m].todo.discard(row)

    def warn_silent(self, row: int) -> None:
        """Warn that the clip at ``row`` is silent (it is stored all the same)."""
        self.progress.note(f"warning: {self.by_row[row].path}: silent clip (stored; its embedding is that of silence)")
        for target in self.targets:
            if target.needs(row):
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
    summary = ExtractSummary(store=str(store_path), dataset=dataset.name, skipped=len(dataset.skipped))
    # unreadable files found at discovery never reach the track table: the dataset's "skipped"
    # attribute records them (the store's failure list joins it with the failed rows)
    summary.failures.extend(dataset.skipped)
    if dataset.skipped:
        lines = format_reason_groups(dataset.skipped)
        print(f"skipped while scanning {len(dataset.skipped):,} file(s):", *lines, sep="\n", file=sys.stderr, flush=True)

    with open_store(store_path, mode="a") as store:
        store.write_tracks(
            dataset.name,
            track_table(dataset, tracks),
            {
                "kind": dataset.kind,
                "root": str(dataset.root),
                "tasks": dict(dataset.tasks),
                **({"targets": dataset.targets} if dataset.targets else {}),
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
                    longest = max_duration or max(audio_duration(dataset.root / t.path) for t in tracks)
                    n_frames = int(np.ceil(longest / options.frames_hop))
                check_gain_matches(store, dataset.name, key, options.gain)
                writer = store.model_writer(
                    dataset.name,
                    key,
                    model_metadata(key, enc, options, layers, store.kind),
                    [pooled_width(w, options.pooling) for w in enc.layer_widths],
                    storage_dtype=options.storage_dtype,
                    frame_layers=layers or None,
                    max_frames=n_frames,
                    frame_widths=[enc.layer_widths[i] for i in layers],
                    flush_seconds=options.flush_seconds,
                )
                todo = set(int(r) for r in writer.pending()) & set(by_row)
                model = ModelSummary(model=key, total=len(by_row), already_done=len(by_row) - len(todo))
                summary.models.append(model)
                targets.append(ModelTarget(key, enc, writer, layers, n_frames, todo, model))
        except BaseException:
            for target in targets:
                target.writer.close()
            raise
        run = ExtractionRun(dataset, store, by_row, targets, summary, options, started)
        try:
            yield run
        finally:
            run.close()




def format_summary(summary: ExtractSummary, *, verbose: bool = False) -> str:
    """The end-of-run summary printed by ``embedstore extract``: per model entry, then the files not
    extracted grouped by reason with a few examples each (every file with ``verbose``)."""
    lines = [f"store {summary.store}, dataset {summary.dataset}, {summary.seconds:.1f} s"]
    for m in summary.models:
        rate = m.audio_seconds / m.model_seconds if m.model_seconds > 0 else 0.0
        lines.append(
            f"  {m.model}: {m.written} written, {m.already_done} already done, "
            f"{m.total - m.written - m.already_done} not written of {m.total}; "
            f"{m.audio_seconds:.0f} audio-s in {m.model_seconds:.1f} model-s ({rate:.1f} audio-s/s)"
        )
    if summary.failures:
        failed = len(summary.failures) - summary.skipped
        lines.append(f"  {len(summary.failures):,} file(s) not extracted ({summary.skipped:,} skipped while scanning, "
                     f"{failed:,} failed), recorded in the store (`embedstore info`):")
        lines.extend(format_reason_groups(summary.failures, indent="    ", verbose=verbose))
    return "\n".join(lines)
