"""``embedstore extract --engine ray``: the extraction pipeline spread over a Ray cluster.

Dataflow (Ray Data, streaming)::

    driver: track table + model entries (pipeline.open_extraction), rows still to do
      -> ray.data.from_items(one item per pending row)
      -> map(_decode_item): CPU tasks decode + resample each clip (pipeline.decode_clip); a clip
         longer than pipeline.STREAM_SECONDS is only marked ``stream`` (no waveforms)
      -> map_batches(EncoderActor, ActorPoolStrategy(size=concurrency), num_gpus=...): each actor loads
         the encoders once (load_encoder) and pools clips into store rows (encoding.encode_clips);
         it decodes and encodes a ``stream`` clip itself, block by block (pipeline.encode_streamed)
      -> driver: iter_batches -> ExtractionRun.write / .fail / .refuse -> ModelWriter (one per model entry)

Why the driver writes: the store allows one writing process (an advisory lock on the store), and
a single writer owns every chunk, so "no two writers per chunk", the ``done``-after-durable rule,
resume and crash safety are exactly those of the local engine (same :class:`ExtractionRun`). What
reaches the driver is pooled rows (a few KB per clip, or the opt-in coarse frames), far less than
the audio the workers decode, so the single writer is not the bottleneck of a GPU cluster. Long clips
never travel whole: the actor that encodes one streams it from the file (the dataset folder is at the
same path on every node), with the local engine's bounded memory.

Ray is an optional extra (``pip install 'embedstore[ray]'``); this module imports it only when a
run starts. Every node needs embedstore installed, and the dataset folder (and a local checkpoint
directory) at the same path; the store only needs to be reachable from the driver.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedstore import errors
from embedstore.errors import AudioError, EmbedstoreError, ModelError
from embedstore.extract.datasets import Dataset, DatasetRequest
from embedstore.extract.encoders import Encoder, EncoderRequest
from embedstore.extract.encoding import EncodedClips, encode_clips
from embedstore.extract.options import ExtractOptions
from embedstore.extract.pipeline import (
    Streamed,
    as_requests,
    check_requests,
    decode_clip,
    encode_streamed,
    is_long_clip,
    is_silent,
    refusals,
)
from embedstore.extract.writing import ExtractionRun, ExtractSummary, open_extraction
from embedstore.extract.pooling import pooled_width
from embedstore.store import IDENTITY_KEYS

INSTALL_HINT = "pip install 'embedstore[ray]'"


@dataclass
class RayOptions:
    """Where and how wide the Ray engine runs.

    Attributes:
        address: Ray cluster to join: None starts a local Ray (or uses the one this process already
            initialised), ``"auto"`` joins the cluster of this node, or ``"ray://host:10001"`` /
            ``"host:6379"``.
        concurrency: encoder actors (model replicas); each holds every requested encoder.
        num_gpus_per_worker: GPUs per encoder actor (fractions share a GPU); None: 1 when the
            cluster has GPUs, else 0 (actors then run on CPU).
        num_cpus_per_worker: CPUs reserved per encoder actor.
        decode_cpus: CPUs reserved per decoding task.
    """

    address: str | None = None
    concurrency: int = 1
    num_gpus_per_worker: float | None = None
    num_cpus_per_worker: float = 1.0
    decode_cpus: float = 1.0

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise EmbedstoreError(f"--concurrency must be at least 1, got {self.concurrency}")
        if self.num_gpus_per_worker is not None and self.num_gpus_per_worker < 0:
            raise EmbedstoreError(f"--num-gpus-per-worker must be >= 0, got {self.num_gpus_per_worker}")
        if self.num_cpus_per_worker <= 0 or self.decode_cpus <= 0:
            raise EmbedstoreError("--num-cpus-per-worker and decode CPUs must be positive")


def import_ray() -> Any:
    """The ``ray`` module with Ray Data; :class:`EmbedstoreError` saying how to install it otherwise."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise EmbedstoreError(
            f"--engine ray needs the optional Ray extra ({exc}); install it with: {INSTALL_HINT}"
        ) from None
    return ray


@contextmanager
def ray_session(address: str | None) -> Iterator[Any]:
    """Yield the ``ray`` module, connected: reuse an initialised Ray, else ``ray.init(address)``
    (shut down again on exit only when started here)."""
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        try:
            ray.init(address=address, logging_level=logging.WARNING)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise EmbedstoreError(f"--ray-address {address}: cannot connect to Ray ({exc})") from None
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def model_identity(encoder: Encoder) -> dict[str, Any]:
    """The part of ``encoder.describe()`` that identifies a store entry (checkpoint, revision, weights
    hash, widths, rates; :data:`~embedstore.store.IDENTITY_KEYS`), without machine-local paths."""
    info = encoder.describe()
    return {k: info[k] for k in IDENTITY_KEYS if k in info}


# ---------------------------------------------------------------------------------- Ray stages
# Column names of the batches that flow from the actors to the driver (all arrays, one row per clip).
def _col(model: int, what: str) -> str:
    return f"m{model}_{what}"


def _decode_item(item: dict[str, Any], rates: Sequence[int], gain: str) -> dict[str, Any]:
    """Ray ``map`` stage: one pending row -> its waveforms ``wave_<rate>`` (float32 ``[samples]``, decoded
    with the ``gain`` rule), ``error`` ("" when decoded), ``silent`` and ``stream`` (a long clip, left to
    the actor to stream: see :func:`~embedstore.extract.pipeline.is_long_clip`); ``path``, ``offset`` and
    ``duration`` pass through. Failed and streamed clips carry empty waveforms."""
    duration = None if math.isnan(item["duration"]) else float(item["duration"])
    keys = ("row", "path", "offset", "duration", *(k for k in item if k.startswith("todo_")))
    out: dict[str, Any] = {k: item[k] for k in keys}
    path, offset = Path(item["path"]), float(item["offset"])
    waves = {sr: np.zeros(0, dtype=np.float32) for sr in rates}
    try:
        stream = is_long_clip(path, offset=offset, duration=duration)
        if not stream:
            waves = decode_clip(path, rates, offset=offset, duration=duration, gain=gain)
        out.update(error="", silent=not stream and is_silent(waves), stream=stream)
    except AudioError as exc:
        out.update(error=exc.reason, silent=False, stream=False)
    for sr, wave in waves.items():
        out[f"wave_{sr}"] = wave
    return out


class EncoderActor:
    """Ray Data actor (``map_batches`` callable class): loads the encoders once, then turns batches
    of decoded clips into pooled store rows.

    Input batch: ``row`` ``[n]``, ``error`` ``[n]`` str, ``silent`` ``[n]``, ``todo_<m>`` ``[n]`` bool
    (model m still needs the row), ``wave_<rate>`` ``[n]`` of float32 ``[samples_i]``, ``stream`` ``[n]``
    bool (a long clip this actor decodes itself from ``path``, ``offset``, ``duration`` ``[n]``).
    Output batch: ``row``, ``error``, ``silent`` and per model m: ``m<m>_refused`` ``[n]`` str (why the
    encoder refused the clip as too short, "" when it did not), ``m<m>_ok`` ``[n]`` (row encoded),
    ``m<m>_layer<l>`` ``[n, pooled_width_l]`` float32 (zeros where not ok), ``m<m>_audio_seconds`` and
    ``m<m>_model_seconds`` ``[n]``, with frames ``m<m>_frames<j>`` ``[n, max_frames, width]`` and
    ``m<m>_counts`` ``[n]``.
    """

    def __init__(
        self,
        loads: Sequence[EncoderRequest],
        expected: Sequence[dict],
        frame_layers: Sequence[Sequence[int]],
        max_frames: Sequence[int],
        options: ExtractOptions,
        device: str,
    ):
        self.frame_layers, self.max_frames, self.options = list(frame_layers), list(max_frames), options
        # An EmbedstoreError (here or in a call) goes back to the driver as a ``fatal`` column: Ray
        # reports a failed actor start only as text, and retries it.
        self.error: EmbedstoreError | None = None
        try:
            self.encoders = [load.load(device) for load in loads]
            for load, enc, want in zip(loads, self.encoders, expected):
                got = model_identity(enc)
                if got != want:
                    diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
                    raise ModelError(
                        f"model {load.name!r} ({load.checkpoint or 'default checkpoint'}) loaded on a Ray worker "
                        f"differs from the driver's in {', '.join(diff)}: every node must see the same checkpoint"
                    )
        except EmbedstoreError as exc:
            self.error = exc

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.error is None:
            try:
                return self._encode(batch)
            except EmbedstoreError as exc:
                self.error = exc
        name = type(self.error).__name__ if type(self.error) is not AudioError else "EmbedstoreError"
        return {"row": np.asarray(batch["row"], dtype=np.int64),
                "fatal": np.asarray([f"{name}: {self.error}"] * len(batch["row"]), dtype=str)}

    def _encode(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["row"])
        errors = np.asarray(batch["error"], dtype=object)
        silent = np.asarray(batch["silent"], dtype=bool)
        streamed = self._stream(batch, errors, silent)
        ok_clip = np.asarray([e == "" for e in errors], dtype=bool) & ~np.asarray(batch["stream"], dtype=bool)
        out: dict[str, np.ndarray] = {"row": np.asarray(batch["row"], dtype=np.int64),
                                      "error": errors.astype(str), "silent": silent}
        refused = np.full((len(self.encoders), n), "", dtype=object)
        for i in np.flatnonzero(ok_clip):
            waves = {enc.sample_rate: batch[f"wave_{enc.sample_rate}"][i] for enc in self.encoders}
            needs = [bool(batch[f"todo_{m}"][i]) for m in range(len(self.encoders))]
            for m, reason in refusals(waves, self.encoders, needs).items():
                refused[m, i] = reason
        for m, enc in enumerate(self.encoders):
            ok = ok_clip & np.asarray(batch[f"todo_{m}"], dtype=bool) & (refused[m] == "")
            out[_col(m, "refused")] = refused[m].astype(str)
            idx = np.flatnonzero(ok)
            waves = [np.asarray(batch[f"wave_{enc.sample_rate}"][i], dtype=np.float32) for i in idx]
            t0 = time.perf_counter()
            layers, n_frames = self.frame_layers[m], self.max_frames[m]
            if waves:
                encoded = encode_clips(enc, waves, self.options, layers, n_frames)
            else:
                encoded = _no_clips(enc, self.options, layers, n_frames)
            seconds = time.perf_counter() - t0
            audio, model = np.zeros(n), np.zeros(n)
            audio[idx] = [w.shape[0] / enc.sample_rate for w in waves]
            model[idx] = seconds / max(len(idx), 1)
            columns = {name: _full(values, n, idx) for name, values in _encoded_columns(encoded).items()}
            for i, result in streamed.items():
                if m in result.rows:
                    ok[i], audio[i], model[i] = True, result.audio_seconds[m], result.model_seconds[m]
                    for name, values in _encoded_columns(result.rows[m]).items():
                        columns[name][i] = values[0]
            out[_col(m, "ok")], out[_col(m, "audio_seconds")], out[_col(m, "model_seconds")] = ok, audio, model
            out.update({_col(m, name): values for name, values in columns.items()})
        return out

    def _stream(self, batch: dict[str, np.ndarray], errors: np.ndarray, silent: np.ndarray) -> dict[int, Streamed]:
        """Decode and encode the batch's ``stream`` clips here, block by block: ``{batch index: result}``;
        a clip that fails to decode gets its reason in ``errors``, a silent one is flagged in ``silent``."""
        results = {}
        for i in np.flatnonzero(np.asarray(batch["stream"], dtype=bool)):
            if errors[i]:
                continue
            duration = None if math.isnan(batch["duration"][i]) else float(batch["duration"][i])
            needs = [bool(batch[f"todo_{m}"][i]) for m in range(len(self.encoders))]
            try:
                results[int(i)] = encode_streamed(
                    Path(str(batch["path"][i])), self.encoders, needs, self.options, self.frame_layers,
                    self.max_frames, offset=float(batch["offset"][i]), duration=duration,
                )
            except AudioError as exc:
                errors[i] = exc.reason
                continue
            silent[i] = results[int(i)].silent
        return results


def _full(values: np.ndarray, n: int, idx: np.ndarray) -> np.ndarray:
    """``[n, ...]`` zeros with ``values`` at the rows ``idx``."""
    full = np.zeros((n, *values.shape[1:]), dtype=values.dtype)
    full[idx] = values
    return full


def _no_clips(enc: Encoder, options: ExtractOptions, frame_layers: Sequence[int], max_frames: int) -> EncodedClips:
    """What :func:`encode_clips` returns for zero clips: ``[0, ...]`` arrays of the same widths."""
    layers = [np.zeros((0, pooled_width(w, options.pooling)), np.float32) for w in enc.layer_widths]
    if not frame_layers:
        return EncodedClips(layers, None, None)
    frames = [np.zeros((0, max_frames, enc.layer_widths[layer]), np.float32) for layer in frame_layers]
    return EncodedClips(layers, frames, np.zeros(0, np.int64))


def _encoded_columns(encoded: EncodedClips) -> dict[str, np.ndarray]:
    """Batch columns (without the model prefix) of :class:`EncodedClips`: ``layer<l>``,
    ``frames<j>`` and ``counts``."""
    columns = {f"layer{layer}": x for layer, x in enumerate(encoded.layers)}
    columns.update({f"frames{j}": f for j, f in enumerate(encoded.frames or [])})
    if encoded.counts is not None:
        columns["counts"] = encoded.counts
    return columns


def _write_batch(run: ExtractionRun, batch: dict[str, np.ndarray]) -> None:
    """Driver side: record one actor output batch in the store (failures, warnings, rows).

    Raises the :class:`EmbedstoreError` an actor reported (a ``fatal`` column).
    """
    if "fatal" in batch:
        name, _, message = str(batch["fatal"][0]).partition(": ")
        cls = getattr(errors, name, EmbedstoreError)
        raise cls(message) if isinstance(cls, type) and issubclass(cls, EmbedstoreError) else EmbedstoreError(message)
    rows = np.asarray(batch["row"], dtype=np.int64)
    for i, (row, error, silent) in enumerate(zip(rows.tolist(), batch["error"], batch["silent"])):
        if error:
            run.fail(row, str(error))
            continue
        refused = {m: str(batch[_col(m, "refused")][i]) for m in range(len(run.targets)) if batch[_col(m, "refused")][i]}
        if refused:
            run.refuse(row, refused)
        if silent and any(batch[_col(m, "ok")][i] for m in range(len(run.targets))):
            run.warn_silent(row)
    audio_seconds = 0.0
    for m, target in enumerate(run.targets):
        ok = np.asarray(batch[_col(m, "ok")], dtype=bool)
        if not ok.any():
            continue
        n_layers = target.encoder.num_layers
        frames = [batch[_col(m, f"frames{j}")][ok] for j in range(len(target.frame_layers))] or None
        encoded = EncodedClips(
            [batch[_col(m, f"layer{layer}")][ok] for layer in range(n_layers)],
            frames,
            batch[_col(m, "counts")][ok] if frames else None,
        )
        seconds = float(batch[_col(m, "audio_seconds")][ok].sum())
        model_seconds = float(batch[_col(m, "model_seconds")][ok].sum())
        run.write(m, rows[ok], encoded, audio_seconds=seconds, model_seconds=model_seconds)
        audio_seconds = max(audio_seconds, seconds)
    run.progress.update(rows.size, audio_seconds)


# ---------------------------------------------------------------------------------- public API
def extract_dataset_ray(
    dataset: Dataset,
    loads: Sequence[EncoderRequest],
    store_path: str | Path,
    options: ExtractOptions | None = None,
    ray_options: RayOptions | None = None,
) -> ExtractSummary:
    """Extract every layer of each encoder over ``dataset`` into a store with Ray, resuming what is done.

    The same store, rows, failures and resume behaviour as
    :func:`~embedstore.extract.pipeline.extract_dataset`; decoding runs in Ray tasks and the encoders
    in ``ray_options.concurrency`` Ray actors, while this process writes the store.

    Args:
        dataset: the clips (from :func:`~embedstore.extract.datasets.discover_dataset`).
        loads: the encoder of each model entry (stored under its ``store_key``; the driver loads them
            on CPU for the entries' metadata; each actor loads them on its device and must get
            identical models).
        store_path: Zarr directory or ``.h5`` file on this machine; created if missing.
        options: as for the local engine (``batch_size`` is clips per actor call and windows per
            encoder call; ``workers`` is unused: Ray schedules the decoding).
        ray_options: cluster address and actor resources.

    Returns:
        The run's :class:`~embedstore.extract.pipeline.ExtractSummary`.
    """
    options = options or ExtractOptions()
    ray_options = ray_options or RayOptions()
    import_ray()
    encoders = [(load.store_key, load.load("cpu")) for load in loads]
    with open_extraction(dataset, encoders, store_path, options) as run:
        if run.rows():  # nothing to do: no Ray start
            with ray_session(ray_options.address) as ray:
                ctx = ray.data.DataContext.get_current()
                progress_bars, ctx.enable_progress_bars = ctx.enable_progress_bars, bool(options.progress)
                try:
                    data = _clip_dataset(ray, run, loads, options, ray_options)
                    for batch in data.iter_batches(batch_size=None, batch_format="numpy"):
                        _write_batch(run, batch)
                finally:
                    ctx.enable_progress_bars = progress_bars
    return run.finish()


def pending_items(run: ExtractionRun) -> list[dict[str, Any]]:
    """One Ray item per store row still to do: ``row``, absolute ``path``, ``offset``, ``duration``
    (NaN: to the end) and ``todo_<m>`` (entry m still needs the row)."""
    root = Path(run.dataset.root).resolve()
    items = []
    for row in run.rows():
        track = run.track(row)
        items.append({
            "row": row,
            "path": str(root / track.path),
            "offset": float(track.offset),
            "duration": math.nan if track.duration is None else float(track.duration),
            **{f"todo_{m}": need for m, need in enumerate(run.needs(row))},
        })
    return items


def actor_arguments(run: ExtractionRun, loads: Sequence[EncoderRequest], options: ExtractOptions,
                    device: str) -> dict[str, Any]:
    """The constructor arguments of :class:`EncoderActor` for ``run``: the requests, the identity of
    the driver's encoders (each actor must load the same models) and each entry's frame settings."""
    return {
        "loads": list(loads),
        "expected": [model_identity(enc) for enc in run.encoders],
        "frame_layers": [t.frame_layers for t in run.targets],
        "max_frames": [t.max_frames for t in run.targets],
        "options": options,
        "device": device,
    }


def _clip_dataset(
    ray: Any,
    run: ExtractionRun,
    loads: Sequence[EncoderRequest],
    options: ExtractOptions,
    ray_options: RayOptions,
) -> Any:
    """The lazy Ray Dataset of pooled rows: pending rows -> decode tasks -> encoder actor pool
    (``run.encoders``: the driver's copies of ``loads``, for the sample rates and model identities)."""
    num_gpus = ray_options.num_gpus_per_worker
    if num_gpus is None:
        num_gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    return (
        ray.data.from_items(pending_items(run))
        .map(
            _decode_item,
            fn_kwargs={"rates": sorted({enc.sample_rate for enc in run.encoders}), "gain": options.gain},
            num_cpus=ray_options.decode_cpus,
        )
        .map_batches(
            EncoderActor,
            fn_constructor_kwargs=actor_arguments(run, loads, options, "cuda" if num_gpus > 0 else "cpu"),
            batch_size=options.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=ray_options.concurrency),
            num_gpus=num_gpus,
            num_cpus=ray_options.num_cpus_per_worker,
        )
    )


def run_extract_ray(
    dataset: DatasetRequest | str | Path,
    encoders: Sequence[EncoderRequest | str],
    store_path: str | Path,
    *,
    options: ExtractOptions | None = None,
    ray_options: RayOptions | None = None,
) -> ExtractSummary:
    """``embedstore extract --engine ray``: :func:`~embedstore.extract.pipeline.run_extract` on a Ray cluster.

    Takes the arguments of ``run_extract`` (except ``device``: actors with GPUs use ``cuda``, others
    the CPU) plus ``ray_options`` (cluster address and actor resources, :class:`RayOptions`).

    Returns:
        The run's :class:`~embedstore.extract.pipeline.ExtractSummary` (print it with ``format_summary``).

    Raises:
        EmbedstoreError: Ray is not installed (with the install command), bad options, or as
            ``run_extract``.
    """
    dataset = DatasetRequest.coerce(dataset)
    requests = as_requests(encoders)
    check_requests(requests)
    import_ray()  # fail fast, before discovering the dataset
    return extract_dataset_ray(dataset.discover(), requests, store_path, options, ray_options)
