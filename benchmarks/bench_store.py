"""Benchmark: reading embeddings from the store vs one ``.npy`` per clip (not a test).

The baseline is what MARBLE/HEAR-style pipelines write: one ``<clip>.npy`` of shape ``[layers, dim]``
per clip. For a GTZAN-sized dataset (1000 clips) and two encoder shapes (13 x 768 like MERT-95M /
wav2vec2-base, 25 x 1024 like MERT-330M) it times, in the same run and on the same data:

* one layer for all clips (a layer sweep's inner step),
* all layers of one split (the test split, 30 % of the clips),
* random batches of 64 clips, one layer (a probe's data loader),

and reports the baseline's time divided by the store's (``x faster``), plus bytes on disk for
float32 and float16. Files are read warm (just written, in the page cache), the best of ``--repeats``.

    python benchmarks/bench_store.py [--tracks 1000] [--repeats 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from embedstore.store import TrackTable, load_embeddings, open_store

SHAPES = [(13, 768), (25, 1024)]
BATCH, N_BATCHES = 64, 20


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def disk_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def make_data(n: int, layers: int, dim: int, seed: int = 0) -> np.ndarray:
    """``[n, layers, dim]`` float32 with some structure (a low-rank part plus noise), since pure
    noise is the worst case for compression and real embeddings are correlated across clips."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((layers, 16, dim)).astype(np.float32)
    coef = rng.standard_normal((n, layers, 16)).astype(np.float32)
    return np.einsum("nlk,lkd->nld", coef, basis) + 0.3 * rng.standard_normal((n, layers, dim)).astype(np.float32)


def write_store(path: Path, data: np.ndarray, table: TrackTable, dtype: str) -> float:
    start = time.perf_counter()
    with open_store(path, "a") as st:
        st.write_tracks("gtzan", table, {"kind": "gtzan", "tasks": {"genre": "label"}})
        with st.model_writer("gtzan", "enc", {"model_name": "synthetic"}, [data.shape[2]] * data.shape[1],
                             storage_dtype=dtype) as w:
            step = w.chunk_rows
            for a in range(0, len(data), step):
                rows = np.arange(a, min(a + step, len(data)))
                w.write(rows, [data[rows, l] for l in range(data.shape[1])])
    return time.perf_counter() - start


def write_npy(folder: Path, data: np.ndarray, dtype: str) -> float:
    start = time.perf_counter()
    folder.mkdir(parents=True)
    for i, clip in enumerate(data):
        np.save(folder / f"clip{i:05d}.npy", clip.astype(dtype))
    return time.perf_counter() - start


def bench_shape(root: Path, n: int, layers: int, dim: int, repeats: int) -> list[dict]:
    data = make_data(n, layers, dim)
    splits = np.where(np.arange(n) % 10 < 3, "test", "train")
    table = TrackTable(ids=[f"clip{i:05d}" for i in range(n)], paths=[f"clip{i:05d}.wav" for i in range(n)],
                       labels=[f"g{i % 10}" for i in range(n)], splits=splits)
    test_rows = np.flatnonzero(splits == "test")
    rng = np.random.default_rng(1)
    batches = [np.sort(rng.choice(n, BATCH, replace=False)) for _ in range(N_BATCHES)]
    layer = layers // 2
    results = []
    for dtype in ("float32", "float16"):
        npy = root / f"npy-{layers}x{dim}-{dtype}"
        t_npy_write = write_npy(npy, data, dtype)
        files = [npy / f"clip{i:05d}.npy" for i in range(n)]
        baseline = {
            "one layer, all clips": lambda: np.stack([np.load(f)[layer] for f in files]),
            "all layers, test split": lambda: np.stack([np.load(files[i]) for i in test_rows]),
            f"{N_BATCHES} random batches of {BATCH}, one layer":
                lambda: [np.stack([np.load(files[i])[layer] for i in b]) for b in batches],
        }
        base_times = {k: best_of(repeats, fn) for k, fn in baseline.items()}
        for suffix in (".zarr", ".h5"):
            path = root / f"store-{layers}x{dim}-{dtype}{suffix}"
            t_write = write_store(path, data, table, dtype)
            with open_store(path) as st:
                check = load_embeddings(st, layer=layer)
                np.testing.assert_array_equal(check.X, data[:, layer].astype(dtype))
                store_fns = {
                    "one layer, all clips": lambda: load_embeddings(st, layer=layer).X,
                    "all layers, test split": lambda: load_embeddings(st, layer="all", split="test").X,
                    f"{N_BATCHES} random batches of {BATCH}, one layer":
                        lambda: [load_embeddings(st, layer=layer, rows=b).X for b in batches],
                }
                for task, fn in store_fns.items():
                    t = best_of(repeats, fn)
                    results.append({"shape": f"{layers}x{dim}", "dtype": dtype, "backend": suffix[1:], "task": task,
                                    "store_s": t, "npy_s": base_times[task], "speedup": base_times[task] / t})
            results.append({"shape": f"{layers}x{dim}", "dtype": dtype, "backend": suffix[1:], "task": "write",
                            "store_s": t_write, "npy_s": t_npy_write, "speedup": t_npy_write / t_write})
        for suffix in (".zarr", ".h5"):
            path = root / f"store-{layers}x{dim}-{dtype}{suffix}"
            results.append({"shape": f"{layers}x{dim}", "dtype": dtype, "backend": suffix[1:], "task": "bytes",
                            "store_bytes": disk_bytes(path), "npy_bytes": disk_bytes(npy),
                            "raw_bytes": data.size * np.dtype(dtype).itemsize})
    return results


def format_results(results: list[dict], n: int) -> str:
    lines = [f"{n} clips; times are the best of the repeats, warm page cache; speed-up = npy time / store time", "",
             "| shape | dtype | backend | task | store (s) | one .npy per clip (s) | speed-up |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        if r["task"] != "bytes":
            lines.append(f"| {r['shape']} | {r['dtype']} | {r['backend']} | {r['task']} | {r['store_s']:.3f} | "
                         f"{r['npy_s']:.3f} | {r['speedup']:.1f}x |")
    lines += ["", "| shape | dtype | backend | store bytes | .npy bytes | raw array bytes | store / raw |",
              "|---|---|---|---|---|---|---|"]
    for r in results:
        if r["task"] == "bytes":
            lines.append(f"| {r['shape']} | {r['dtype']} | {r['backend']} | {r['store_bytes']:,} | "
                         f"{r['npy_bytes']:,} | {r['raw_bytes']:,} | {r['store_bytes'] / r['raw_bytes']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_store_", dir=args.out))
    try:
        results = [r for layers, dim in SHAPES for r in bench_shape(root, args.tracks, layers, dim, args.repeats)]
        print(format_results(results, args.tracks))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
