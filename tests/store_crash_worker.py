"""A store writer run as a subprocess by tests/test_store.py, to be killed with SIGKILL at random moments.

``python store_crash_worker.py STORE N_TRACKS SEED [MAX_SLEEP]`` imports everything, prints
``started``, waits for a line on stdin, then creates half of the track table,
writes those rows, grows the table to ``N_TRACKS`` and writes the rest, one to three rows at a time
in a shuffled order with random sleeps, failing every row with ``row % 13 == 5``. Every value is a
pure function of (row, layer), so any run, killed or not, must converge to the same store.
"""

from __future__ import annotations

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


def write_rows(store, n_rows: int, rng: np.random.Generator, max_sleep: float) -> None:
    with store.model_writer(DATASET, MODEL, METADATA, WIDTHS, frame_layers=FRAME_LAYERS,
                            max_frames=MAX_FRAMES, chunk_rows=CHUNK_ROWS) as writer:
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
            if max_sleep:
                time.sleep(float(rng.uniform(0, max_sleep)))


def run(path: str, n_tracks: int, seed: int, max_sleep: float = 0.0) -> None:
    """The whole job: half the table, its rows, growth to ``n_tracks``, the remaining rows."""
    from embedstore.store import open_store

    rng = np.random.default_rng(seed)
    table = track_table(n_tracks)
    attrs = {"kind": "manifest", "root": "/data/toy", "tasks": {"genre": "label", "caption": "caption"},
             "split_scheme": "mod3"}
    with open_store(path, "a") as store:
        half = n_tracks // 2
        store.write_tracks(DATASET, table.select(np.arange(half)), attrs)
        write_rows(store, half, rng, max_sleep)
        store.write_tracks(DATASET, table, attrs)
        write_rows(store, n_tracks, rng, max_sleep)


if __name__ == "__main__":
    import importlib

    # import everything first, so the parent's random kill lands in the writing, not in imports
    importlib.import_module("embedstore.store." + ("hdf5" if sys.argv[1].endswith(".h5") else "zarr") + "_backend")
    print("started", flush=True)
    sys.stdin.readline()  # "go": the parent starts the next worker early, then lets it run when needed
    run(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]) if len(sys.argv) > 4 else 0.0)
    print("finished", flush=True)
