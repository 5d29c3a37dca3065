"""A store writer run as a subprocess by tests/test_store.py, to be killed with SIGKILL at random moments.

``python store_crash_worker.py STORE N_TRACKS SEED [MAX_SLEEP] [--chunk-rows R] [--flush-seconds F]
[--no-growth]`` imports everything, prints ``started``, waits for a line on stdin, then creates half of
the track table, writes those rows, grows the table to ``N_TRACKS`` and writes the rest (with
``--no-growth``: the whole table, then all rows), one to three rows at a time in a shuffled order with
random sleeps, failing every row with ``row % 13 == 5``; it ends printing ``wrote K`` (rows it wrote)
and ``finished``. Every value is a pure function of (row, layer), so any run, killed or not, must
converge to the same store.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

WIDTHS = [6, 6, 4]
FRAME_LAYERS = [2]
MAX_FRAMES = 5
CHUNK_ROWS = 8
DATASET, MODEL = "toy", "enc"
METADATA = {"model_name": "toy-encoder", "checkpoint": "local/toy", "weights_sha256": "ab" * 32,
            "sample_rate": 16000, "pooling": "mean", "preprocessing": {"mono": True, "peak_normalise": True}}


def track_table(n: int):
    from embedstore.store import TrackTable

    return TrackTable(ids=[f"track{i:04d}" for i in range(n)], paths=[f"audio/{i}.wav" for i in range(n)],
                      labels=[f"genre{i % 3}" for i in range(n)], splits=[("train", "valid", "test")[i % 3] for i in range(n)],
                      captions=[f"caption {i}" for i in range(n)], durations=[30.0 + i for i in range(n)],
                      hashes=[f"{i:040x}" for i in range(n)])


def layer_values(row: int, layer: int) -> np.ndarray:
    """``[width]`` float32 pooled embedding of (row, layer), independent of any run."""
    return np.random.default_rng(1000 * row + layer).standard_normal(WIDTHS[layer]).astype(np.float32)


def frame_values(row: int) -> tuple[np.ndarray, int]:
    """``([MAX_FRAMES, width], count)`` frames of the frame layer (zero padding after ``count``)."""
    count = row % MAX_FRAMES + 1
    values = np.zeros((MAX_FRAMES, WIDTHS[FRAME_LAYERS[0]]), np.float32)
    values[:count] = np.random.default_rng(7 + row).standard_normal((count, values.shape[1]))
    return values, count


def fails(row: int) -> bool:
    return row % 13 == 5


def write_rows(store, n_rows: int, rng: np.random.Generator, max_sleep: float, **writer_options) -> int:
    """Write the pending rows below ``n_rows``; returns how many were written (failed ones excluded).
    ``writer_options`` go to ``model_writer`` (``chunk_rows``, default :data:`CHUNK_ROWS`; ``flush_seconds``)."""
    written = 0
    with store.model_writer(DATASET, MODEL, METADATA, WIDTHS, frame_layers=FRAME_LAYERS, max_frames=MAX_FRAMES,
                            **{"chunk_rows": CHUNK_ROWS, **writer_options}) as writer:
        todo = writer.pending()
        todo = rng.permutation(todo[todo < n_rows])
        start = 0
        while start < todo.size:
            batch = np.sort(todo[start : start + int(rng.integers(1, 4))])
            start += batch.size
            good = np.array([r for r in batch.tolist() if not fails(r)], dtype=np.int64)
            for row in batch[~np.isin(batch, good)].tolist():
                writer.fail(row, f"audio/{row}.wav: truncated or corrupt header\n(decoder said: no)")
            if good.size:
                frames = [frame_values(r) for r in good.tolist()]
                writer.write(good, [np.stack([layer_values(r, l) for r in good.tolist()]) for l in range(len(WIDTHS))],
                             frames=[np.stack([f[0] for f in frames])], frame_counts=np.array([f[1] for f in frames]))
                written += good.size
            if max_sleep:
                time.sleep(float(rng.uniform(0, max_sleep)))
    return written


def run(path: str, n_tracks: int, seed: int, max_sleep: float = 0.0, grow: bool = True, **writer_options) -> int:
    """The whole job: half the table, its rows, growth to ``n_tracks``, the remaining rows (without
    ``grow``: the whole table, then its rows). Returns the number of rows written."""
    from embedstore.store import open_store

    rng = np.random.default_rng(seed)
    table = track_table(n_tracks)
    attrs = {"kind": "manifest", "root": "/data/toy", "tasks": {"genre": "label", "caption": "caption"},
             "split_scheme": "mod3"}
    written = 0
    with open_store(path, "a") as store:
        if grow:
            half = n_tracks // 2
            store.write_tracks(DATASET, table.select(np.arange(half)), attrs)
            written += write_rows(store, half, rng, max_sleep, **writer_options)
        store.write_tracks(DATASET, table, attrs)
        written += write_rows(store, n_tracks, rng, max_sleep, **writer_options)
    return written


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("store")
    parser.add_argument("n_tracks", type=int)
    parser.add_argument("seed", type=int)
    parser.add_argument("max_sleep", type=float, nargs="?", default=0.0)
    parser.add_argument("--chunk-rows", type=int, default=CHUNK_ROWS)
    parser.add_argument("--flush-seconds", type=float, default=None, help="default: the writer's")
    parser.add_argument("--no-growth", dest="grow", action="store_false")
    return parser.parse_args()


if __name__ == "__main__":
    import importlib

    args = _arguments()
    # import everything first, so the parent's random kill lands in the writing, not in imports
    importlib.import_module("embedstore.store." + ("hdf5" if args.store.endswith(".h5") else "zarr") + "_backend")
    print("started", flush=True)
    sys.stdin.readline()  # "go": the parent starts the next worker early, then lets it run when needed
    options = {"chunk_rows": args.chunk_rows}
    if args.flush_seconds is not None:
        options["flush_seconds"] = args.flush_seconds
    total = run(args.store, args.n_tracks, args.seed, args.max_sleep, grow=args.grow, **options)
    print(f"wrote {total}", flush=True)
    print("finished", flush=True)
