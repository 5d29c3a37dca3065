"""Benchmark: reading embeddings from the store vs one ``.npy`` per clip, and the codec sweep (not a test).

The baseline is what MARBLE/HEAR-style pipelines write: one ``<clip>.npy`` per clip holding all its
layers (``[layers, dim]``, or the layers concatenated when their widths differ). Data: synthetic
GTZAN-sized embeddings (``--tracks`` clips) of two encoder shapes, 13 x 768 like MERT-95M / wav2vec2-base
and 25 x 1024 like MERT-330M, plus, with ``--real STORE``, every model entry of a store made by
``embedstore extract`` (real embeddings, e.g. MFCC and a random-weight wav2vec2 over 100 GTZAN clips).
Read patterns, timed in the same run on the same data:

* one layer for all clips (a layer sweep's inner step),
* all layers of the test split,
* random batches of 64 clips, one layer (a probe's data loader),

each next to the baseline (``x npy`` = baseline time / store time) and to the memory-bandwidth bound
of the machine (``% of limit`` = (bytes handed to the caller / memcpy bandwidth measured with numpy in
this run) / store time). Files are read warm (just written, in the page cache); every time is the best
of ``--repeats``, since the machine may be shared.

1. ``codec sweep``: Zarr float32 stores written with each of ``--codecs`` at each chunk size of
   ``--chunk-scales`` (times the default rows per chunk): bytes raw / stored, the three reads, the write.
2. ``read patterns``: the default codec and chunking, Zarr and HDF5, float32 and float16, with bytes
   on disk.
3. ``row selection``: the test split's rows of every layer through zarr's orthogonal and coordinate
   selections, a whole-range read picked with numpy, and embedstore's read path.
4. ``training loader``: one shuffled epoch of the train split in batches of 64 through
   :class:`embedstore.heads.torch_data.StoreBatches` vs loading the layer into memory and indexing it.

    python benchmarks/bench_store.py [--tracks 1000] [--repeats 5] [--real STORE] [--out DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from limits import best_of, memcpy_bandwidth, percent_of_limit

from embedstore.store import TrackTable, load_embeddings, open_store
from embedstore.store.schema import DEFAULT_CODEC, check_codec
from embedstore.store.store import default_chunk_rows

SHAPES = [(13, 768), (25, 1024)]
BATCH, N_BATCHES = 64, 20
CODECS = "none,lz4:5,zstd:1,zstd:3,zstd:5"


@dataclass
class Source:
    """Embeddings to benchmark: ``layers[l]`` is ``[n, width_l]`` float32, rows aligned with ``table``."""

    name: str
    layers: list[np.ndarray]
    table: TrackTable

    @property
    def equal_widths(self) -> bool:
        return len({x.shape[1] for x in self.layers}) == 1


def synthetic(n: int, layers: int, dim: int, seed: int = 0) -> Source:
    """``[n, dim]`` x ``layers`` float32 with some structure (a low-rank part plus noise), since pure
    noise is the worst case for compression and real embeddings are correlated across clips; 30 % of
    the clips (every ``i % 10 < 3``) form the test split."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((layers, 16, dim)).astype(np.float32)
    coef = rng.standard_normal((n, layers, 16)).astype(np.float32)
    data = np.einsum("nlk,lkd->nld", coef, basis) + 0.3 * rng.standard_normal((n, layers, dim)).astype(np.float32)
    splits = np.where(np.arange(n) % 10 < 3, "test", "train")
    table = TrackTable(ids=[f"clip{i:05d}" for i in range(n)], paths=[f"clip{i:05d}.wav" for i in range(n)],
                       labels=[f"g{i % 10}" for i in range(n)], splits=splits)
    return Source(f"synthetic {layers}x{dim}", [np.ascontiguousarray(data[:, i]) for i in range(layers)], table)


def real_sources(path: Path) -> list[Source]:
    """One :class:`Source` per model entry of the store at ``path`` (its done rows, float32)."""
    out = []
    with open_store(path) as st:
        for dataset in st.datasets():
            for model in st.models(dataset):
                count = len(st.model_attrs(dataset, model)["layer_widths"])
                first = load_embeddings(st, dataset, model, 0)
                layers = [first.X] + [load_embeddings(st, dataset, model, i).X for i in range(1, count)]
                table = st.tracks(dataset).select(first.rows)
                out.append(Source(f"{dataset}/{model} ({len(first)} real clips)",
                                  [x.astype(np.float32) for x in layers], table))
    return out


def write_store(path: Path, src: Source, dtype: str, codec: str | None = None, chunk_rows: int | None = None) -> float:
    """Write ``src`` into a new store at ``path``; returns the seconds taken."""
    start = time.perf_counter()
    with open_store(path, "a") as st:
        st.write_tracks("d", src.table, {"kind": "folder", "tasks": {"genre": "label"}})
        with st.model_writer("d", "enc", {"model_name": "bench"}, [x.shape[1] for x in src.layers],
                             storage_dtype=dtype, codec=codec, chunk_rows=chunk_rows) as w:
            n = len(src.table)
            for a in range(0, n, w.chunk_rows):
                rows = np.arange(a, min(a + w.chunk_rows, n))
                w.write(rows, [x[rows] for x in src.layers])
    return time.perf_counter() - start


def write_npy(folder: Path, src: Source, dtype: str) -> float:
    start = time.perf_counter()
    folder.mkdir(parents=True)
    stacked = np.stack(src.layers, axis=1) if src.equal_widths else np.concatenate(src.layers, axis=1)
    for i, clip in enumerate(stacked.astype(dtype)):
        np.save(folder / f"clip{i:05d}.npy", clip)
    return time.perf_counter() - start


def disk_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class Patterns:
    """The three read patterns of one source, for the store and for the per-clip files."""

    def __init__(self, src: Source, seed: int = 1) -> None:
        n = len(src.table)
        self.src = src
        self.layer = len(src.layers) // 2
        self.test = np.flatnonzero(src.table.splits == "test")
        rng = np.random.default_rng(seed)
        size = min(BATCH, max(1, n // 2))
        self.batches = [np.sort(rng.choice(n, size, replace=False)) for _ in range(N_BATCHES)]
        self.names = ["one layer, all clips", "all layers, test split",
                      f"{N_BATCHES} random batches of {size}, one layer"]
        starts = np.cumsum([0] + [x.shape[1] for x in src.layers])
        self.columns = slice(int(starts[self.layer]), int(starts[self.layer + 1]))

    def result_bytes(self, itemsize: int) -> list[int]:
        """Bytes each pattern hands to the caller."""
        width = self.src.layers[self.layer].shape[1]
        n = len(self.src.table)
        every = sum(x.shape[1] for x in self.src.layers)
        return [n * width * itemsize, len(self.test) * every * itemsize,
                sum(len(b) for b in self.batches) * width * itemsize]

    def npy(self, folder: Path) -> list[Callable[[], object]]:
        files = [folder / f"clip{i:05d}.npy" for i in range(len(self.src.table))]
        pick = self.layer if self.src.equal_widths else self.columns
        return [lambda: np.stack([np.load(f)[pick] for f in files]),
                lambda: np.stack([np.load(files[i]) for i in self.test]),
                lambda: [np.stack([np.load(files[i])[pick] for i in b]) for b in self.batches]]

    def store(self, st) -> list[Callable[[], object]]:
        if self.src.equal_widths:
            every = lambda: load_embeddings(st, layer="all", split="test").X  # noqa: E731
        else:
            every = lambda: [load_embeddings(st, layer=i, split="test").X for i in range(len(self.src.layers))]  # noqa: E731
        return [lambda: load_embeddings(st, layer=self.layer).X, every,
                lambda: [load_embeddings(st, layer=self.layer, rows=b).X for b in self.batches]]


def time_store(path: Path, pat: Patterns, dtype: str, repeats: int) -> list[float]:
    with open_store(path) as st:
        check = load_embeddings(st, layer=pat.layer)
        np.testing.assert_array_equal(check.X, pat.src.layers[pat.layer].astype(dtype))
        return [best_of(repeats, fn) for fn in pat.store(st)]


def codec_sweep(root: Path, sources: list[Source], codecs: list[str], scales: list[float], repeats: int,
                bandwidth: float) -> list[str]:
    """Table rows of the codec sweep (Zarr, float32)."""
    lines = []
    for si, src in enumerate(sources):
        pat = Patterns(src)
        npy = root / f"sweep-npy-{si}"
        t_npy_write = write_npy(npy, src, "float32")
        base = [best_of(repeats, fn) for fn in pat.npy(npy)]
        bounds = [b / bandwidth for b in pat.result_bytes(4)]
        raw = sum(x.nbytes for x in src.layers)
        default_rows = default_chunk_rows([x.shape[1] for x in src.layers], 4, len(src.table))
        for codec in codecs:
            for scale in scales:
                rows = int(min(4096, max(16, default_rows * scale)))
                path = root / f"sweep-{si}-{codec.replace(':', '')}-{rows}.zarr"
                t_write = write_store(path, src, "float32", codec, rows)
                stored = disk_bytes(path / "d" / "models" / "enc" / "layers")
                times = time_store(path, pat, "float32", repeats)
                cells = [f"{t * 1e3:.1f} ms, {b / t:.1f}x, {percent_of_limit(lim, t)}"
                         for t, b, lim in zip(times, base, bounds)]
                lines.append(f"| {src.name} | {codec} | {rows} | {raw / stored:.3f} | " + " | ".join(cells)
                             + f" | {t_write:.2f} s, {t_npy_write / t_write:.2f}x |")
                shutil.rmtree(path)
        shutil.rmtree(npy)
    head = ["| data | codec | rows/chunk | raw / stored | one layer, all clips | all layers, test split "
            "| random batches, one layer | write |", "|---|---|---|---|---|---|---|---|"]
    return head + lines


def read_patterns(root: Path, sources: list[Source], repeats: int, bandwidth: float) -> tuple[list[str], list[str]]:
    """Rows of the read-pattern table and of the bytes table (default codec and chunking)."""
    reads, sizes = [], []
    for si, src in enumerate(sources):
        pat = Patterns(src)
        for dtype in ("float32", "float16"):
            itemsize = np.dtype(dtype).itemsize
            npy = root / f"npy-{si}-{dtype}"
            t_npy_write = write_npy(npy, src, dtype)
            base = [best_of(repeats, fn) for fn in pat.npy(npy)]
            bounds = [b / bandwidth for b in pat.result_bytes(itemsize)]
            for suffix in (".zarr", ".h5"):
                path = root / f"store-{si}-{dtype}{suffix}"
                t_write = write_store(path, src, dtype)
                for name, t, b, lim in zip(pat.names, time_store(path, pat, dtype, repeats), base, bounds):
                    reads.append(f"| {src.name} | {dtype} | {suffix[1:]} | {name} | {t * 1e3:.2f} | {b * 1e3:.2f} "
                                 f"| {b / t:.1f}x | {lim * 1e3:.3f} | {percent_of_limit(lim, t)} |")
                reads.append(f"| {src.name} | {dtype} | {suffix[1:]} | write | {t_write * 1e3:.0f} | "
                             f"{t_npy_write * 1e3:.0f} | {t_npy_write / t_write:.1f}x | | |")
                raw = sum(x.shape[0] * x.shape[1] for x in src.layers) * itemsize
                sizes.append(f"| {src.name} | {dtype} | {suffix[1:]} | {disk_bytes(path):,} | {disk_bytes(npy):,} "
                             f"| {raw:,} | {disk_bytes(path) / raw:.2f} |")
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            shutil.rmtree(npy)
    return (["| data | dtype | backend | task | store (ms) | one .npy per clip (ms) | x npy | limit (ms) "
             "| % of limit |", "|---|---|---|---|---|---|---|---|---|"] + reads,
            ["| data | dtype | backend | store bytes | .npy bytes | raw array bytes | store / raw |",
             "|---|---|---|---|---|---|---|"] + sizes)


def selection_methods(root: Path, sources: list[Source], repeats: int, bandwidth: float) -> list[str]:
    """Rows of the row-selection table: all layers of the test split of a default Zarr store, read
    through zarr's orthogonal selection, its coordinate selection, and embedstore's read path (the
    chunks holding the rows read as ranges, rows picked with numpy), one zarr call per layer or one
    for all."""
    import zarr

    lines = []
    for si, src in enumerate(sources):
        path = root / f"select-{si}.zarr"
        write_store(path, src, "float32")
        arrays = [zarr.open_array(path / f"d/models/enc/layers/{i}", mode="r") for i in range(len(src.layers))]
        test = np.flatnonzero(src.table.splits == "test")
        coords = (np.repeat(test, src.layers[0].shape[1]), np.tile(np.arange(src.layers[0].shape[1]), len(test)))
        lo, hi = int(test[0]), int(test[-1]) + 1
        methods = {
            "zarr orthogonal (.oindex), per layer": lambda: [a.oindex[test, :] for a in arrays],
            "zarr range + numpy pick, per layer": lambda: [a[lo:hi][test - lo] for a in arrays],
            "embedstore read_layers (one call)": lambda: st.read_layers("d", "enc", list(range(len(arrays))), test),
        }
        if src.equal_widths:
            methods["zarr coordinate (.vindex), per layer"] = lambda: [a.vindex[coords] for a in arrays]
        bound = len(test) * sum(x.shape[1] for x in src.layers) * 4 / bandwidth
        with open_store(path) as st:
            for name, fn in methods.items():
                t = best_of(repeats, fn)
                lines.append(f"| {src.name} | {name} | {t * 1e3:.2f} | {percent_of_limit(bound, t)} |")
        shutil.rmtree(path)
    return ["| data | all layers of the test split through | time (ms) | % of limit |", "|---|---|---|---|"] + lines


def loader_epoch(root: Path, sources: list[Source], repeats: int, bandwidth: float) -> list[str]:
    """Rows of the training-loader table: setting up, then one shuffled epoch of the train split in
    batches of 64, through StoreBatches (reads the store every epoch, holds a few blocks) and by
    loading the layer into memory once and indexing it (holds the whole layer)."""
    import torch

    from embedstore.heads.torch_data import StoreBatches

    lines = []
    for si, src in enumerate(sources):
        path = root / f"loader-{si}.zarr"
        write_store(path, src, "float32")
        layer = len(src.layers) // 2
        n_train = int((src.table.splits == "train").sum())
        bound = n_train * src.layers[layer].shape[1] * 4 / bandwidth

        def load() -> tuple[torch.Tensor, torch.Tensor]:
            e = load_embeddings(path, layer=layer, split="train")
            return torch.from_numpy(e.X), torch.from_numpy(np.unique(e.labels, return_inverse=True)[1])

        def index(X: torch.Tensor, y: torch.Tensor) -> None:
            for idx in torch.randperm(len(X)).split(BATCH):
                X[idx], y[idx]

        t_setup = best_of(repeats, lambda: StoreBatches(path, layers=layer, split="train", batch_size=BATCH))
        data = StoreBatches(path, layers=layer, split="train", batch_size=BATCH, seed=0)
        t_epoch = best_of(repeats, lambda: [b for b in data])
        t_load = best_of(repeats, load)
        X, y = load()
        t_index = best_of(repeats, lambda: index(X, y))
        lines.append(f"| {src.name} | {n_train} | {t_setup * 1e3:.1f} | {t_epoch * 1e3:.1f} | {t_load * 1e3:.1f} "
                     f"| {t_index * 1e3:.1f} | {t_index / t_epoch:.2f}x | {(t_load + t_index) / (t_setup + t_epoch):.2f}x "
                     f"| {bound * 1e3:.3f} | {percent_of_limit(bound, t_epoch)} |")
        shutil.rmtree(path)
    return ["| data | train rows | StoreBatches setup (ms) | StoreBatches epoch (ms) | load layer (ms) "
            "| index epoch (ms) | epoch x in-memory | first epoch x in-memory | limit (ms) | % of limit |",
            "|---|---|---|---|---|---|---|---|---|---|"] + lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=1000, help="clips of the synthetic data")
    parser.add_argument("--repeats", type=int, default=5, help="timings per figure; the best is kept")
    parser.add_argument("--real", type=Path, action="append", default=[],
                        help="a store made by `embedstore extract`; every model entry is benchmarked too")
    parser.add_argument("--codecs", default=CODECS, help=f"codec sweep (default {CODECS}; '' skips it)")
    parser.add_argument("--chunk-scales", default="0.25,1,4", help="rows per chunk of the sweep, times the default")
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    args = parser.parse_args()
    codecs = [check_codec(c) for c in args.codecs.split(",") if c.strip()]
    scales = [float(s) for s in args.chunk_scales.split(",")]
    root = Path(tempfile.mkdtemp(prefix="bench_store_", dir=args.out))
    try:
        sources = [synthetic(args.tracks, layers, dim) for layers, dim in SHAPES]
        sources += [s for path in args.real for s in real_sources(path)]
        bandwidth = memcpy_bandwidth()
        print(f"memcpy bandwidth (numpy, measured now): {bandwidth / 1e9:.1f} GB/s; default codec {DEFAULT_CODEC}; "
              f"times are the best of {args.repeats}, warm page cache\n")
        if codecs:
            print("Codec sweep (Zarr, float32): time, x npy, % of the memory-bandwidth limit\n")
            print("\n".join(codec_sweep(root, sources, codecs, scales, args.repeats, bandwidth)) + "\n")
        reads, sizes = read_patterns(root, sources, args.repeats, bandwidth)
        print("Read patterns (default codec and chunking)\n")
        print("\n".join(reads) + "\n\n" + "\n".join(sizes) + "\n")
        print("Row selection: all layers of the test split (default codec and chunking, Zarr)\n")
        print("\n".join(selection_methods(root, sources, args.repeats, bandwidth)) + "\n")
        print("Training loader: one shuffled epoch of the train split, one layer, batches of 64\n")
        print("\n".join(loader_epoch(root, sources, args.repeats, bandwidth)))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
