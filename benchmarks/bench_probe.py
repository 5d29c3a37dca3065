"""Benchmark of the probe heads on CPU: a logreg sweep over 13 layers of 1000 x 768 and the MLP
head per layer, through a real store and :func:`embedstore.heads.probe.run_probe`.

Baselines measured in the same run:
- logreg: a plain per-layer loop, one ``StandardScaler + LogisticRegression()`` fit with sklearn's
  default C (no C search, no bootstrap, no records).
- MLP: the same head trained naively: torch's default threads, mini-batches of 64, a fixed 100
  epochs, no validation or early stopping.

Next to each ratio to its baseline it prints the distance to the machine's FLOP limit: the training's
FLOPs over the float32 matrix-product throughput measured in the same run (numpy's BLAS for the logreg,
which sklearn runs on; torch for the MLP), as "% of limit" = that bound / the measured time. FLOPs are
counted from what the training did, recorded while it runs:

- logreg: per lbfgs fit of ``n x d`` rows to ``k`` classes, ``4 n d k`` per iteration (the logits and
  the gradient; a lower bound, since a line search may evaluate more than once per iteration);
- MLP: per training run, ``(6 n_train + 2 n_valid) P`` per epoch run plus a final ``2 n_valid P``, with
  ``P`` the weights of its Linear layers (forward 2 FLOPs per weight and row, backward 4).

Usage: ``python benchmarks/bench_probe.py [--tracks 1000] [--layers 13] [--dim 768] [--mlp-layers 13]``.
Prints a small table; not a test (tests never assert on time).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from limits import matmul_flops, percent_of_limit

from embedstore.heads import mlp as mlp_module
from embedstore.heads.mlp import MLPHead
from embedstore.heads.probe import format_comparison, run_probe
from embedstore.store import TrackTable, load_embeddings, open_store


def make_store(path: Path, n: int, layers: int, dim: int, classes: int = 10, seed: int = 0) -> None:
    """GTZAN-sized synthetic store: class signal grows then fades across layers (peak at 2/3 depth)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centers = rng.normal(size=(classes, dim)).astype(np.float32)
    peak = 2 * (layers - 1) / 3
    strength = np.exp(-(((np.arange(layers) - peak) / (layers / 3)) ** 2)) * 0.12
    X = rng.normal(size=(n, layers, dim)).astype(np.float32)
    X += strength[None, :, None].astype(np.float32) * centers[y][:, None, :]
    splits = rng.permutation(np.array(["train"] * int(0.6 * n) + ["valid"] * int(0.2 * n)
                                      + ["test"] * (n - int(0.6 * n) - int(0.2 * n))))
    ids = [f"clip{i:05d}" for i in range(n)]
    table = TrackTable(ids=ids, paths=[f"{i}.wav" for i in ids], labels=[f"genre{c}" for c in y], splits=splits)
    with open_store(path, "a") as st:
        st.write_tracks("bench", table, {"kind": "folder", "tasks": {"genre": "label"}})
        meta = {"model_name": "synthetic", "checkpoint": "synthetic",
                "layer_names": [f"layer_{i}" for i in range(layers)]}
        with st.model_writer("bench", "enc", meta, [dim] * layers) as w:
            w.write(np.arange(n), [X[:, i] for i in range(layers)])


def linear_weights(model: torch.nn.Module) -> int:
    """Weights of the model's Linear layers (``in x out`` each)."""
    return sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))


@contextmanager
def count_flops() -> Iterator[list[float]]:
    """Within the block, record the training FLOPs of every logreg fit and MLP training run (see the
    module docstring); yields a list whose one element is the running total."""
    total = [0.0]
    fit, train = LogisticRegression.fit, mlp_module.train_mlp

    def counted_fit(self, X, y, *args, **kwargs):
        out = fit(self, X, y, *args, **kwargs)
        total[0] += 4.0 * X.shape[0] * X.shape[1] * len(self.classes_) * int(np.max(self.n_iter_))
        return out

    def counted_train(model, X_train, y_train, X_valid, y_valid, **kwargs):
        log = train(model, X_train, y_train, X_valid, y_valid, **kwargs)
        P = linear_weights(model)
        total[0] += (log["epochs_run"] * (6.0 * len(X_train) + 2.0 * len(X_valid)) + 2.0 * len(X_valid)) * P
        return log

    LogisticRegression.fit, mlp_module.train_mlp = counted_fit, counted_train
    try:
        yield total
    finally:
        LogisticRegression.fit, mlp_module.train_mlp = fit, train


def baseline_logreg(store: Path, layers: int) -> float:
    t = time.perf_counter()
    for li in range(layers):
        e = load_embeddings(store, "bench", "enc", li)
        tr, te = e.splits == "train", e.splits == "test"
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(e.X[tr], e.labels[tr])
        model.score(e.X[te], e.labels[te])
    return time.perf_counter() - t


def baseline_mlp(store: Path, layer: int, epochs: int = 100, batch: int = 64) -> tuple[float, float]:
    """Seconds and training FLOPs (``6 n P`` per epoch) of the naive fit."""
    e = load_embeddings(store, "bench", "enc", layer)
    tr = e.splits == "train"
    X = torch.as_tensor((e.X[tr] - e.X[tr].mean(0)) / e.X[tr].std(0))
    classes = {c: i for i, c in enumerate(sorted(set(e.labels)))}
    y = torch.as_tensor([classes[c] for c in e.labels[tr]])
    torch.manual_seed(0)
    model = MLPHead(X.shape[1], len(classes), dropout=0.25)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    t = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(X)).split(batch):
            if len(idx) < 2:
                continue
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
    return time.perf_counter() - t, epochs * 6.0 * len(X) * linear_weights(model)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracks", type=int, default=1000)
    ap.add_argument("--layers", type=int, default=13)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--mlp-layers", type=int, default=13, help="layers given to the MLP sweep")
    args = ap.parse_args()
    blas, torch_flops = matmul_flops(library="numpy"), matmul_flops(library="torch")
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "bench.zarr"
        make_store(store, args.tracks, args.layers, args.dim)
        with count_flops() as base_flops:
            t_base = baseline_logreg(store, args.layers)
        with count_flops() as lr_flops:
            t = time.perf_counter()
            rep = run_probe(store, "genre", layer="all", head="logreg", progress=False)
            t_lr = time.perf_counter() - t
        print(format_comparison(rep))
        print()
        mlp_layers = list(range(args.mlp_layers)) if args.mlp_layers < args.layers else ["all"]
        with count_flops() as mlp_flops:
            t = time.perf_counter()
            recs = []
            for li in mlp_layers:
                recs += run_probe(store, "genre", layer=li, head="mlp", progress=False).records
            t_mlp = time.perf_counter() - t
        t_naive, naive_flops = baseline_mlp(store, rep.best_layers[("bench", "enc")])
        epochs = [r["hparams"]["epochs"] for r in recs]
        print(format_comparison(recs))
        print()
        n_mlp = len(recs)
        print(f"data: {args.tracks} tracks x {args.layers} layers x {args.dim} dims, "
              f"torch threads {torch.get_num_threads()}; float32 matmul throughput measured now: "
              f"numpy/BLAS {blas / 1e9:.1f} GFLOP/s, torch {torch_flops / 1e9:.1f} GFLOP/s")
        print(f"logreg sweep ({args.layers} layers, C grid of 6 + bootstrap + records): {t_lr:.1f} s "
              f"({t_lr / args.layers:.2f} s/layer); plain single-C loop {t_base:.1f} s; ratio {t_lr / t_base:.1f}x; "
              f"training {lr_flops[0] / 1e9:.1f} GFLOP, limit {lr_flops[0] / blas:.3g} s, "
              f"{percent_of_limit(lr_flops[0] / blas, t_lr)} of limit "
              f"(plain loop {base_flops[0] / 1e9:.1f} GFLOP, {percent_of_limit(base_flops[0] / blas, t_base)})")
        print(f"mlp default ({n_mlp} layers, 2x2 grid, early stopping, median kept epoch {np.median(epochs):.0f}): "
              f"{t_mlp:.1f} s ({t_mlp / n_mlp:.2f} s/layer); naive 100-epoch single fit {t_naive:.1f} s/layer; "
              f"ratio {t_mlp / n_mlp / t_naive:.2f}x; training {mlp_flops[0] / 1e9:.1f} GFLOP, "
              f"limit {mlp_flops[0] / torch_flops:.3g} s, {percent_of_limit(mlp_flops[0] / torch_flops, t_mlp)} of limit "
              f"(naive fit {naive_flops / 1e9:.1f} GFLOP, {percent_of_limit(naive_flops / torch_flops, t_naive)})")


if __name__ == "__main__":
    main()
