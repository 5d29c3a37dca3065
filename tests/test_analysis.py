"""Tests of embedstore.analysis: numbers against independent computations, figures, determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import ortho_group

from embedstore.analysis import metrics

# ---- numeric core --------------------------------------------------------------------------------


def _clusters(n_per: int = 30, dim: int = 12, classes: int = 3, spread: float = 4.0, seed: int = 0,
              offset: float = 0.0):
    """Gaussian class clusters: ``X [n, dim]``, ``labels [n]`` (str)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=spread, size=(classes, dim)) + offset
    X = np.concatenate([c + rng.normal(size=(n_per, dim)) for c in centers])
    labels = np.repeat([f"class{k}" for k in range(classes)], n_per).astype(object)
    return X, labels


def test_pca_matches_sklearn():
    from sklearn.decomposition import PCA

    X, _ = _clusters(dim=20)
    p = metrics.pca_project(X, 2)
    ref = PCA(n_components=2, svd_solver="full").fit(X)
    np.testing.assert_allclose(p.explained_variance_ratio, ref.explained_variance_ratio_, rtol=1e-10)
    # same scores up to the sign of each axis
    Z = ref.transform(X)
    for k in range(2):
        s = np.sign(Z[:, k] @ p.coords[:, k])
        np.testing.assert_allclose(p.coords[:, k], s * Z[:, k], atol=1e-8)
    assert p.coords.shape == (X.shape[0], 2)


def _direct_cosines(X):
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    S = U @ U.T
    off = ~np.eye(len(X), dtype=bool)
    return S, off


def test_cosine_stats_match_direct_numpy():
    X, labels = _clusters(offset=5.0)  # a shared offset: strongly anisotropic, like CLAP
    st = metrics.cosine_stats(X, labels)
    S, off = _direct_cosines(X)
    same = labels[:, None] == labels[None, :]
    assert st.mean == pytest.approx(S[off].mean(), abs=1e-12)
    assert st.within == pytest.approx(S[off & same].mean(), abs=1e-12)
    assert st.between == pytest.approx(S[~same].mean(), abs=1e-12)
    Sc, _ = _direct_cosines(X - X.mean(axis=0))
    assert st.mean_centered == pytest.approx(Sc[off].mean(), abs=1e-12)
    assert st.within_centered == pytest.approx(Sc[off & same].mean(), abs=1e-12)
    assert st.between_centered == pytest.approx(Sc[~same].mean(), abs=1e-12)
    # centring removes the anisotropy; classes stay more similar within than between
    assert st.mean > 0.5 and abs(st.mean_centered) < 0.05
    assert st.within_centered > st.between_centered
    vals = metrics.pairwise_cosine_values(X)
    assert vals.shape == (len(X) * (len(X) - 1) // 2,)
    assert vals.mean() == pytest.approx(st.mean, abs=1e-12)


def test_cosine_ignores_unlabelled_rows_for_class_means():
    X, labels = _clusters()
    labels = labels.copy()
    labels[:5] = ""
    w, b = metrics.class_cosines(X, labels)
    w2, b2 = metrics.class_cosines(X[5:], labels[5:])
    assert (w, b) == pytest.approx((w2, b2))


def _cka_direct(X, Y):
    """CKA through the HSIC formula with the centring matrix H (Kornblith et al., eq. 3)."""
    n = X.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    K, L = X @ X.T, Y @ Y.T
    hsic = lambda A, B: np.trace(A @ H @ B @ H)  # noqa: E731
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


@pytest.mark.parametrize("n,d1,d2", [(40, 8, 5), (10, 30, 25)])  # feature-space and Gram paths
def test_linear_cka_properties(n, d1, d2):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(n, d1))
    Y = X[:, : min(d1, d2)] @ rng.normal(size=(min(d1, d2), d2)) + 0.5 * rng.normal(size=(n, d2))
    assert metrics.linear_cka(X, X) == pytest.approx(1.0)
    assert metrics.linear_cka(X, Y) == pytest.approx(_cka_direct(X, Y), rel=1e-10)
    Q = ortho_group.rvs(d1, random_state=3)
    assert metrics.linear_cka(X @ Q * 7.5, Y) == pytest.approx(metrics.linear_cka(X, Y), rel=1e-10)
    assert metrics.linear_cka(X + 3.0, Y) == pytest.approx(metrics.linear_cka(X, Y), rel=1e-10)
    assert 0.0 <= metrics.linear_cka(X, rng.normal(size=(n, d2))) < metrics.linear_cka(X, Y)


def test_cka_matrix_against_pairwise():
    rng = np.random.default_rng(2)
    A = [rng.normal(size=(25, d)) for d in (4, 6, 9)]
    B = [A[0] @ ortho_group.rvs(4, random_state=0), rng.normal(size=(25, 3))]
    M = metrics.cka_matrix(A)
    assert M.shape == (3, 3)
    np.testing.assert_allclose(np.diag(M), 1.0)
    np.testing.assert_allclose(M, M.T)
    C = metrics.cka_matrix(A, B)
    assert C.shape == (3, 2)
    for i in range(3):
        for j in range(2):
            assert C[i, j] == pytest.approx(_cka_direct(A[i], B[j]), rel=1e-10)
    assert C[0, 0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same rows"):
        metrics.cka_matrix(A, [rng.normal(size=(24, 3))])


def test_subsample_is_seeded_sorted_and_unique():
    a = metrics.subsample_indices(1000, 100, seed=5)
    assert np.array_equal(a, metrics.subsample_indices(1000, 100, seed=5))
    assert not np.array_equal(a, metrics.subsample_indices(1000, 100, seed=6))
    assert a.size == 100 and np.all(np.diff(a) > 0) and a.max() < 1000
    assert np.array_equal(metrics.subsample_indices(50, 100), np.arange(50))
    assert np.array_equal(metrics.subsample_indices(50, None), np.arange(50))


def test_separability_orders_clean_above_noisy_and_matches_sklearn():
    from sklearn.metrics import silhouette_score
    from sklearn.preprocessing import StandardScaler

    X, labels = _clusters(spread=4.0)
    noisy, _ = _clusters(spread=0.2, seed=1)
    for method in metrics.SEPARABILITY_METHODS:
        assert metrics.separability(X, labels, method) > metrics.separability(noisy, labels, method)
    ref = silhouette_score(StandardScaler().fit_transform(X), labels, metric="euclidean")
    assert metrics.separability(X, labels, "silhouette", "euclidean", max_points=None) == pytest.approx(ref)
    one_class = np.full(len(X), "a", dtype=object)
    assert np.isnan(metrics.separability(X, one_class))
    with pytest.raises(ValueError, match="unknown separability"):
        metrics.separability(X, labels, "nope")


def test_fisher_ratio_direct():
    X, labels = _clusters(dim=3)
    mu = X.mean(0)
    sb = sum((labels == c).sum() * np.sum((X[labels == c].mean(0) - mu) ** 2) for c in set(labels))
    sw = sum(np.sum((X[labels == c] - X[labels == c].mean(0)) ** 2) for c in set(labels))
    assert metrics.fisher_ratio(X, labels) == pytest.approx(sb / sw)


# ---- the commands, on a small store --------------------------------------------------------------

from pathlib import Path  # noqa: E402

import embedstore.analysis as analysis  # noqa: E402
from embedstore.analysis import layer_curves, projection  # noqa: E402
from embedstore.errors import EmbedstoreError, ModelError, StoreError  # noqa: E402
from embedstore.store.records import save_record  # noqa: E402
from embedstore.store import TrackTable, open_store  # noqa: E402

N_PER, CLASSES = 30, ("blues", "jazz", "rock")
FT_MISSING = 9  # rows the second model entry has not written


def _build_store(path: Path) -> Path:
    """Dataset "toy" (90 tracks, 3 genres, train/test) with two entries:

    - "enc": 3 layers of width 8 whose class separability grows with depth (layer 0 is noise), all
      with a shared offset (anisotropic, like CLAP);
    - "enc+ft": layer 0 noise of width 5, layer 1 an orthogonal rotation of enc's layer 2, written
      for all but ``FT_MISSING`` tracks.
    """
    rng = np.random.default_rng(0)
    n = N_PER * len(CLASSES)
    lab_idx = np.repeat(np.arange(len(CLASSES)), N_PER)
    centers = rng.normal(size=(len(CLASSES), 8))
    layers = [(rng.normal(size=(n, 8)) + s * centers[lab_idx] + 3.0).astype(np.float32) for s in (0.0, 1.5, 6.0)]
    table = TrackTable(ids=[f"t{i:03d}" for i in range(n)], paths=[f"{i}.wav" for i in range(n)],
                       labels=[CLASSES[k] for k in lab_idx],
                       splits=["test" if i % 3 == 0 else "train" for i in range(n)])
    rows = np.arange(n)
    ft_rows = np.sort(rng.permutation(n)[: n - FT_MISSING])
    Q = ortho_group.rvs(8, random_state=1).astype(np.float32)
    with open_store(path, "a") as st:
        st.write_tracks("toy", table, {"kind": "folder", "tasks": {"genre": "label"}})
        with st.model_writer("toy", "enc", {"model_name": "enc", "layer_names": ["conv", "block1", "block2"]},
                             [8, 8, 8]) as w:
            w.write(rows, layers)
        with st.model_writer("toy", "enc+ft", {"model_name": "enc+ft"}, [5, 8]) as w:
            w.write(ft_rows, [rng.normal(size=(ft_rows.size, 5)).astype(np.float32), layers[2][ft_rows] @ Q])
    return path


@pytest.fixture(scope="module")
def built_store(tmp_path_factory):
    return _build_store(tmp_path_factory.mktemp("store") / "toy.zarr")


@pytest.fixture
def store_path(built_store, tmp_path):
    """The module's store, without probe results (results live beside the store, so copy it)."""
    import shutil

    dst = tmp_path / "toy.zarr"
    shutil.copytree(built_store, dst)
    return dst


# validation and test disagree: valid chooses layer 2 (and the mlp head at layer 0), test would choose
# layer 1 (and logreg at layer 0)
PROBE_RESULTS = [
    {"task": "genre", "dataset": "toy", "model": "enc", "layer": k, "head": head, "selection_score": valid,
     "selected_on": "valid",
     "metrics": {"valid": {"accuracy": valid}, "test": {"accuracy": test, "macro_f1": test - 0.01}}}
    for k, head, valid, test in ((0, "logreg", 0.45, 0.40), (0, "mlp", 0.50, 0.30), (1, "logreg", 0.60, 0.90),
                                 (2, "logreg", 0.85, 0.70))
] + [{"task": "genre", "dataset": "toy", "model": "enc", "layer": "weighted", "head": "mlp", "selection_score": 0.8,
      "selected_on": "valid",
      "metrics": {"test": {"accuracy": 0.8, "macro_f1": 0.78, "labels": list(CLASSES),
                           "confusion": [[9, 1, 0], [2, 7, 1], [0, 0, 10]]}}}]


@pytest.fixture
def with_results(store_path):
    for rec in PROBE_RESULTS:
        save_record(store_path, rec)
    return PROBE_RESULTS


@pytest.fixture
def no_results():
    return None


def _load(store_path, model, layer, split=None):
    from embedstore.store import load_embeddings

    emb = load_embeddings(store_path, dataset="toy", model=model, layer=layer, split=split)
    emb.X = emb.X.astype(np.float64)  # the store keeps float32; references are computed in float64
    return emb


def _assert_png(path: Path):
    from PIL import Image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        w, h = im.size
    assert w > 300 and h > 200


def test_pca_numbers_figures_and_determinism(store_path, no_results, tmp_path):
    from sklearn.decomposition import PCA

    formats = ("png", "svg", "pdf")
    res = analysis.pca(store_path, models=["enc", "enc+ft"], layer=-1, out=tmp_path / "a", formats=formats,
                       standardize=False)  # the features as stored (standardising: its own test)
    assert [(p.model, p.layer, p.layer_name) for p in res.panels] == [("enc", 2, "block2"), ("enc+ft", 1, "layer_1")]
    assert all(p.standardized_on is None for p in res.panels)
    for p in res.panels:
        emb = _load(store_path, p.model, p.layer, "train")
        ref = PCA(n_components=2).fit(emb.X)
        np.testing.assert_allclose(p.explained_variance_ratio, ref.explained_variance_ratio_, rtol=1e-8)
        assert p.n == p.n_total == len(emb.X)
        assert set(p.labels) == set(CLASSES)
    assert [f.suffix for f in res.figures] == [".png", ".svg", ".pdf"]
    _assert_png(res.figures[0])
    assert res.figures[2].read_bytes()[:5] == b"%PDF-"
    saved = json.loads(res.json_path.read_text())
    assert saved["panels"][0]["explained_variance_ratio"] == pytest.approx(res.panels[0].explained_variance_ratio)
    again = analysis.pca(store_path, models=["enc", "enc+ft"], layer=-1, out=tmp_path / "b", formats=formats,
                         standardize=False)
    for f1, f2 in zip([*res.figures, res.json_path], [*again.figures, again.json_path]):
        assert f1.name == f2.name and f1.read_bytes() == f2.read_bytes(), f1.suffix
    assert "enc+ft" in analysis.format_projection(res)


def test_pca_default_out_dir_all_layers_and_best(store_path, no_results):
    res = analysis.pca(store_path, models="enc", layer="all", split=None)
    assert [p.layer for p in res.panels] == [0, 1, 2]
    assert res.figures[0].parent == store_path.parent / "toy.zarr.analysis"
    best = analysis.pca(store_path, models="enc", layer="best")  # toy has no valid rows: train chooses
    assert best.panels[0].layer == 2 and best.panels[0].layer_choice == "silhouette on train rows"
    assert best.panels[0].selected_on == "train"


def _titles(fig) -> str:
    """Every axes title, suptitle and legend title of a figure, one text (line breaks as spaces)."""
    parts = [ax.get_title() for ax in fig.axes] + [fig._suptitle.get_text() if fig._suptitle else ""]
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()] + list(fig.legends)
    parts += [leg.get_title().get_text() for leg in legends]
    return " | ".join(" ".join(p.split()) for p in parts)


def test_pca_best_layer_uses_probe_validation_accuracy(store_path, with_results, tmp_path):
    best = analysis.pca(store_path, models="enc", layer="best", out=tmp_path)
    p = best.panels[0]
    assert (p.layer, p.layer_choice, p.selected_on) == (2, "valid accuracy", "valid")  # test would pick 1
    assert json.loads(best.json_path.read_text())["panels"][0]["selected_on"] == "valid"
    assert "[best by valid accuracy]" in analysis.format_projection(best)
    assert "best by valid accuracy" in _titles(projection._figure(best, "genre", 2000))


def test_subsampling_is_seeded(store_path, no_results, tmp_path):
    a = analysis.pca(store_path, models="enc", max_points=25, seed=3, out=tmp_path)
    b = analysis.pca(store_path, models="enc", max_points=25, seed=3, out=tmp_path)
    c = analysis.pca(store_path, models="enc", max_points=25, seed=4, out=tmp_path)
    pa = a.panels[0]
    assert pa.n == 25 and pa.n_total == 60
    assert np.array_equal(pa.track_ids, b.panels[0].track_ids)
    assert not np.array_equal(pa.track_ids, c.panels[0].track_ids)
    np.testing.assert_array_equal(pa.coords, b.panels[0].coords)


@pytest.mark.slow  # umap-learn's numba compilation takes ~40 s on first use
def test_umap_is_seeded(store_path, no_results, tmp_path):
    a = analysis.umap(store_path, models="enc", layer=2, out=tmp_path / "a", n_neighbors=10)
    b = analysis.umap(store_path, models="enc", layer=2, out=tmp_path / "b", n_neighbors=10)
    assert a.panels[0].coords.shape == (60, 2)
    np.testing.assert_array_equal(a.panels[0].coords, b.panels[0].coords)
    assert a.figures[0].read_bytes() == b.figures[0].read_bytes()
    _assert_png(a.figures[0])


def test_cosine_matches_direct_computation(store_path, tmp_path):
    res = analysis.cosine(store_path, models=["enc", "enc+ft"], layer="all", out=tmp_path)
    assert [(r.model, r.layer) for r in res.rows] == [("enc", 0), ("enc", 1), ("enc", 2), ("enc+ft", 0), ("enc+ft", 1)]
    for r in res.rows:
        emb = _load(store_path, r.model, r.layer)
        X = emb.X
        S, off = _direct_cosines(X)
        Sc, _ = _direct_cosines(X - X.mean(0))
        same = emb.labels[:, None] == emb.labels[None, :]
        assert r.mean == pytest.approx(S[off].mean(), abs=1e-10)
        assert r.mean_centered == pytest.approx(Sc[off].mean(), abs=1e-10)
        assert r.within_centered == pytest.approx(Sc[off & same].mean(), abs=1e-10)
        assert r.between == pytest.approx(S[~same].mean(), abs=1e-10)
    h = res.histograms[0]
    assert (h.model, h.layer) == ("enc", 2) and h.raw.sum() == h.centered.sum() == 90 * 89 // 2
    assert len(res.figures) == 2
    for f in res.figures:
        _assert_png(f)
    saved = json.loads(res.json_path.read_text())
    assert saved["rows"][0]["mean"] == pytest.approx(res.rows[0].mean)
    table = analysis.format_cosine(res)
    assert "enc+ft" in table and f"{res.rows[0].mean:.3f}" in table


def test_layers_curves_and_best(store_path, with_results, tmp_path):
    res = analysis.layers(store_path, models=["enc", "enc+ft"], out=tmp_path)
    enc, ft = res.curves
    assert len(enc.separability) == 3 and len(ft.separability) == 2
    assert enc.separability[0] < enc.separability[1] < enc.separability[2]
    assert enc.valid_accuracy == {0: 0.50, 1: 0.60, 2: 0.85}  # per layer the head chosen on valid
    assert enc.mixed_valid_accuracy == {"weighted": 0.8}
    assert (enc.best_layer, enc.choice.by, enc.choice.selected_on, enc.choice.head) == (2, "probe accuracy",
                                                                                        "valid", "logreg")
    assert enc.choice.test_accuracy == 0.70  # the one test number: the chosen layer's
    assert (ft.best_layer, ft.choice.by, ft.choice.selected_on) == (1, "silhouette", "train")
    saved = json.loads(res.json_path.read_text())
    assert saved["models"][0]["best"]["selected_on"] == "valid" and saved["models"][0]["best_layer"] == 2
    assert "valid accuracy" in saved["selection"]
    assert "best layer by silhouette on train rows / valid accuracy" in _titles(layer_curves._figure(res))
    emb = _load(store_path, "enc", 2, "train")
    assert enc.separability[2] == pytest.approx(metrics.separability(emb.X, emb.labels, max_points=None))
    _assert_png(res.figures[0])
    text = analysis.format_layers(res)
    assert "<- best" in text and "enc: best layer 2 (block2) by valid accuracy" in text
    assert "test accuracy 0.700" in text and "0.900" not in text  # other layers' test numbers are not shown
    fisher = analysis.layers(store_path, models="enc", method="fisher", out=tmp_path)
    assert fisher.curves[0].separability[2] > fisher.curves[0].separability[0]


def test_cka_one_model_and_two_models(store_path, tmp_path):
    res = analysis.cka(store_path, "enc", out=tmp_path)
    assert res.matrix.shape == (3, 3)
    np.testing.assert_allclose(np.diag(res.matrix), 1.0)
    np.testing.assert_allclose(res.matrix, res.matrix.T)
    emb = [_load(store_path, "enc", i).X for i in range(3)]
    assert res.matrix[0, 2] == pytest.approx(_cka_direct(emb[0], emb[2]), rel=1e-8)
    _assert_png(res.figures[0])
    # the fine-tuned entry holds a rotated copy of layer 2 on a shuffled subset of the tracks
    both = analysis.cka(store_path, "enc", "enc+ft", out=tmp_path)
    assert both.matrix.shape == (3, 2) and both.n == 81
    assert both.matrix[2, 1] == pytest.approx(1.0)
    assert both.matrix[0, 1] < 0.9
    assert "enc+ft" in analysis.format_cka(both)


def test_confusion_figure(store_path, with_results, tmp_path):
    res = analysis.confusion(store_path, "genre", "enc", "weighted", "mlp", out=tmp_path)
    assert res.labels == list(CLASSES) and res.selected_on == "valid"
    assert json.loads(res.json_path.read_text())["selected_on"] == "valid"
    np.testing.assert_array_equal(res.confusion, [[9, 1, 0], [2, 7, 1], [0, 0, 10]])
    np.testing.assert_allclose(res.row_normalized.sum(1), 1.0)
    _assert_png(res.figures[0])
    assert "0.700" in analysis.format_confusion(res)  # recall of jazz
    with pytest.raises(EmbedstoreError, match="no stored probe result") as err:
        analysis.confusion(store_path, "genre", "enc", 1, "mlp", out=tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(EmbedstoreError, match="no confusion matrix"):
        analysis.confusion(store_path, "genre", "enc", 1, "logreg", out=tmp_path)


def test_bad_options_raise_clear_errors(store_path, no_results, tmp_path):
    with pytest.raises(StoreError, match="--model 'nope': not in dataset"):
        analysis.pca(store_path, models=["nope"], out=tmp_path)
    with pytest.raises(ModelError, match="out of range"):
        analysis.pca(store_path, models="enc", layer=7, out=tmp_path)
    with pytest.raises(ModelError, match="--layer 'middle': model 'enc' has no layer of that name"):
        analysis.cosine(store_path, models="enc", layer="middle", out=tmp_path)
    with pytest.raises(StoreError, match="no such store"):
        analysis.cosine(tmp_path / "missing.zarr")
    with pytest.raises(StoreError, match="dataset 'x'"):
        analysis.layers(store_path, dataset="x")


def test_hdf5_store_gives_the_same_numbers(store_path, tmp_path):
    h5 = _build_store(tmp_path / "toy.h5")
    a = analysis.cosine(store_path, models="enc", layer=-1, out=tmp_path / "z")
    b = analysis.cosine(h5, models="enc", layer=-1, out=tmp_path / "h")
    assert a.rows == b.rows
    assert b.figures[0].parent == tmp_path / "h"


def test_unlabelled_dataset(tmp_path):
    """A caption-only dataset: projections still work (grey, "no label"); label scores are undefined."""
    path = tmp_path / "caps.zarr"
    rng = np.random.default_rng(0)
    n = 20
    with open_store(path, "a") as st:
        st.write_tracks("caps", TrackTable(ids=[f"c{i}" for i in range(n)], paths=[f"{i}.wav" for i in range(n)],
                                           captions=["a song"] * n), {"kind": "musiccaps", "tasks": ["caption"]})
        with st.model_writer("caps", "m", {"model_name": "m"}, [6, 6]) as w:
            w.write(np.arange(n), [rng.normal(size=(n, 6)).astype(np.float32) for _ in range(2)])
    res = analysis.pca(path, split=None, out=tmp_path / "o")
    assert set(res.panels[0].labels) == {""}
    _assert_png(res.figures[0])
    curves = analysis.layers(path, split=None, out=tmp_path / "o")
    assert np.isnan(curves.curves[0].separability).all() and curves.curves[0].best_layer == -1
    assert "no best layer" in analysis.format_layers(curves)
    with pytest.raises(EmbedstoreError, match="cannot choose a best layer"):
        analysis.pca(path, layer="best", split=None, out=tmp_path / "o")
    cos = analysis.cosine(path, out=tmp_path / "o")
    assert np.isnan(cos.rows[0].within) and np.isfinite(cos.rows[0].mean)


def test_every_best_follows_valid_when_valid_and_test_disagree(tmp_path):
    """A store written with the store writer where layer 0 separates the classes on valid rows only
    and layer 1 on test rows only (``disagreeing``): every "best" must be layer 0."""
    from sklearn.metrics import silhouette_score
    from sklearn.preprocessing import StandardScaler
    from test_probe import disagreeing, write_store

    from embedstore.heads.probe import compare_records, run_probe
    from embedstore.store.records import load_records

    X, labels, splits, ids = disagreeing()
    path = tmp_path / "disagree.zarr"
    write_store(path, {"enc": X}, labels, splits, ids)

    def sil(layer, split):  # independent: sklearn on standardised rows of one split
        rows = splits == split
        return silhouette_score(StandardScaler().fit_transform(X[rows, layer]), labels[rows], metric="cosine")

    assert sil(0, "valid") > sil(1, "valid") and sil(1, "test") > sil(0, "test")
    # no probes yet: separability chooses on the valid rows, even when the figure draws the test rows
    shown = analysis.pca(path, layer="best", split="test", out=tmp_path / "o")
    assert (shown.panels[0].layer, shown.panels[0].layer_choice) == (0, "silhouette on valid rows")

    rep = run_probe(path, "genre", layer="all", head="logreg", progress=False)
    acc = {r["layer"]: {s: r["metrics"][s]["accuracy"] for s in ("valid", "test")} for r in rep.records}
    assert acc[0]["valid"] > acc[1]["valid"] and acc[1]["test"] > acc[0]["test"]  # the disagreement
    assert all(r["selected_on"] == "valid" for r in load_records(path))
    rows = compare_records(load_records(path))
    assert [(r["record"]["layer"], r["best"]) for r in rows] == [(0, True), (1, False)]

    curves = analysis.layers(path, split=None, out=tmp_path / "o")
    c = curves.curves[0]
    assert (c.best_layer, c.choice.selected_on, c.choice.test_accuracy) == (0, "valid", acc[0]["test"])
    starred = [line for line in analysis.format_layers(curves).splitlines() if line.endswith("<- best")]
    assert len(starred) == 1 and starred[0].split()[1] == "0"
    assert json.loads(curves.json_path.read_text())["models"][0]["best"]["selected_on"] == "valid"
    assert "best layer by valid accuracy" in _titles(layer_curves._figure(curves))

    best = analysis.pca(path, layer="best", split=None, out=tmp_path / "o")
    p = best.panels[0]
    assert (p.layer, p.layer_choice, p.selected_on) == (0, "valid accuracy", "valid")
    assert json.loads(best.json_path.read_text())["panels"][0]["selected_on"] == "valid"


# ---- figures that read right ---------------------------------------------------------------------

from embedstore.analysis import similarity  # noqa: E402
from embedstore.analysis.plotting import depth_ordered  # noqa: E402


def _hz_store(path: Path):
    """Dataset "hz": 4 labels a-d, one model "feat" with one named layer ("combined") whose column 0 is
    in Hz (x1000 + 5000, as MFCC's spectral centroid) and whose test rows are shifted in scale on
    column 1 (so train and test statistics differ). Test rows have no label "a".

    Returns ``(path, X [n, 5], labels [n], splits [n], ids [n])``.
    """
    rng = np.random.default_rng(7)
    n = 80
    labels = np.array(["a", "b", "c", "d"] * (n // 4))
    splits = np.where((np.arange(n) % 5 == 0) & (labels != "a"), "test", "train")
    centers = rng.normal(scale=2.0, size=(4, 5))
    X = rng.normal(size=(n, 5)) + centers[np.searchsorted(["a", "b", "c", "d"], labels)]
    X[:, 0] = X[:, 0] * 1000 + 5000
    X[splits == "test", 1] *= 3
    X = X.astype(np.float32)
    ids = np.array([f"h{i:03d}" for i in range(n)])
    with open_store(path, "a") as st:
        st.write_tracks("hz", TrackTable(ids=ids, paths=[f"{i}.wav" for i in ids], labels=labels, splits=splits),
                        {"kind": "folder", "tasks": {"genre": "label"}})
        with st.model_writer("hz", "feat", {"model_name": "feat", "layer_names": ["combined"]}, [5]) as w:
            w.write(np.arange(n), [X])
    return path, X.astype(np.float64), labels, splits, ids


def _assert_same_projection(coords, evr, Z):
    """``coords [n, 2]`` / ``evr [2]`` equal sklearn's PCA of ``Z`` (each axis up to its sign)."""
    from sklearn.decomposition import PCA

    ref = PCA(n_components=2).fit(Z)
    np.testing.assert_allclose(evr, ref.explained_variance_ratio_, rtol=1e-5)
    S = ref.transform(Z)
    for k in range(2):
        np.testing.assert_allclose(coords[:, k], np.sign(S[:, k] @ coords[:, k]) * S[:, k], atol=1e-4)


def test_standardize_matches_sklearn():
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    R = rng.normal(size=(30, 4)) * [1, 10, 1000, 1] + [0, 5, 5000, 0]
    R[:, 3] = 2.5  # constant in the reference: centred only, as StandardScaler does
    X = rng.normal(size=(7, 4)) * 50
    np.testing.assert_allclose(metrics.standardize(X, R), StandardScaler().fit(R).transform(X), atol=1e-10)
    np.testing.assert_allclose(metrics.standardize(R), StandardScaler().fit_transform(R), atol=1e-10)
    with pytest.raises(ValueError, match="do not fit"):
        metrics.standardize(X, R[:, :3])


def test_pca_standardises_with_train_statistics(tmp_path):
    from sklearn.preprocessing import StandardScaler

    path, X, labels, splits, ids = _hz_store(tmp_path / "hz.zarr")
    train, test = splits == "train", splits == "test"
    raw = analysis.pca(path, split="test", standardize=False, out=tmp_path / "raw")
    assert raw.panels[0].explained_variance_ratio[0] > 0.99  # the Hz column is all PC1 without scaling
    assert "not standardised" in _titles(projection._figure(raw, "genre", 2000))
    assert raw.json_path.name == "pca_hz_feat_combined_test_raw.json"  # beside, not over, the standardised one

    res = analysis.pca(path, split="test", out=tmp_path / "std")  # standardised by default
    p = res.panels[0]
    assert p.standardized_on == "train" and p.explained_variance_ratio[0] < 0.95
    _assert_same_projection(p.coords, p.explained_variance_ratio, StandardScaler().fit(X[train]).transform(X[test]))
    own = StandardScaler().fit_transform(X[test])  # the drawn rows' own statistics give another picture
    assert not np.allclose(p.coords, projection.pca_project(own).coords, atol=1e-3)
    saved = json.loads(res.json_path.read_text())
    assert saved["standardize"] is True and saved["panels"][0]["standardized_on"] == "train"
    assert "standardised with the train rows' mean and std" in _titles(projection._figure(res, "genre", 2000))
    assert "standardised on train rows" in analysis.format_projection(res)

    # a subsample of the train rows is still scaled by all train rows
    sub = analysis.pca(path, split="train", max_points=15, out=tmp_path / "sub").panels[0]
    assert sub.n == 15
    rows = np.isin(ids, sub.track_ids)
    _assert_same_projection(sub.coords, sub.explained_variance_ratio,
                            StandardScaler().fit(X[train]).transform(X[rows]))


def test_cli_no_standardize(tmp_path):
    from typer.testing import CliRunner

    from embedstore.cli import app

    path, X, *_ = _hz_store(tmp_path / "hz.zarr")
    for flag, expected in (("--no-standardize", False), ("--standardize", True)):
        out = tmp_path / flag
        run = CliRunner().invoke(app, ["analyze", "pca", "--store", str(path), "--split", "all", "--out", str(out),
                                       flag])
        assert run.exit_code == 0, run.output
        saved = json.loads(next(out.glob("*.json")).read_text())
        assert saved["standardize"] is expected
        assert (saved["panels"][0]["explained_variance_ratio"][0] > 0.99) is not expected


def _scatter_colours(fig) -> dict[str, tuple]:
    """label -> RGBA of its points, over every scatter of the figure (one colour per label asserted)."""
    out: dict[str, tuple] = {}
    for ax in fig.axes:
        for coll in ax.collections:
            rgba = tuple(np.round(coll.get_facecolor()[0], 6))
            assert out.setdefault(coll.get_label(), rgba) == rgba
    return out


def test_one_colour_per_label_across_figures_of_a_dataset(tmp_path):
    from matplotlib.colors import to_rgba

    path, *_ = _hz_store(tmp_path / "hz.zarr")
    every = analysis.pca(path, split="train", out=tmp_path / "a")
    no_a = analysis.pca(path, split="test", out=tmp_path / "b")  # the test rows have no "a"
    assert set(no_a.panels[0].labels) == {"b", "c", "d"}
    full, part = _scatter_colours(projection._figure(every, "genre", 2000)), \
        _scatter_colours(projection._figure(no_a, "genre", 2000))
    assert set(full) == {"a", "b", "c", "d"} and set(part) == {"b", "c", "d"}
    assert len(set(full.values())) == 4
    assert all(part[k] == full[k] for k in part)  # a colour ranked by the drawn labels would shift b, c, d
    legend = projection._figure(no_a, "genre", 2000).legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["b", "c", "d"]
    for text, handle in zip(legend.get_texts(), legend.legend_handles):
        assert tuple(np.round(to_rgba(handle.get_color()), 6))[:3] == part[text.get_text()][:3]
    saved = [json.loads(r.json_path.read_text())["label_colors"] for r in (every, no_a)]
    assert saved[0] == saved[1] and set(saved[0]) == {"a", "b", "c", "d", ""}  # "": unlabelled (grey)


def _assert_titles_clear(fig) -> None:
    """After drawing: every title and legend lies inside the figure, and no title meets a legend."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    box = fig.bbox
    titles = [ax.title for ax in fig.axes if ax.get_visible() and ax.get_title()]
    titles += [fig._suptitle] if fig._suptitle is not None and fig._suptitle.get_text() else []
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    for artist in titles + legends:
        b = artist.get_window_extent(r)
        assert box.x0 - 1 <= b.x0 and b.x1 <= box.x1 + 1 and box.y0 - 1 <= b.y0 and b.y1 <= box.y1 + 1, artist
    for t in titles:
        for leg in legends:
            assert not t.get_window_extent(r).overlaps(leg.get_window_extent(r)), (t.get_text(), leg)


def test_titles_never_overlap_legends(store_path, with_results, tmp_path):
    from embedstore.finetune.report import training_curve_figure

    figures = []
    for kw in ({"models": "enc", "max_points": 25}, {"models": ["enc", "enc+ft"]}, {"models": "enc", "layer": "all"}):
        res = analysis.pca(store_path, out=tmp_path, **kw)  # the first: one panel, a long (subsample) title
        figures.append(projection._figure(res, "genre", kw.get("max_points", 2000)))
    for models in ("enc", ["enc", "enc+ft"]):
        cos = analysis.cosine(store_path, models=models, out=tmp_path)
        figures += [similarity._hist_figure(cos), similarity._layer_figure(cos)]
        figures.append(layer_curves._figure(analysis.layers(store_path, models=models, out=tmp_path)))
    figures.append(similarity._cka_figure(analysis.cka(store_path, "enc", "enc+ft", out=tmp_path)))
    from embedstore.analysis import confusion_figure

    figures.append(confusion_figure._figure(analysis.confusion(store_path, "genre", "enc", "weighted", "mlp",
                                                               out=tmp_path)))
    figures.append(training_curve_figure([{"epoch": 1, "train_loss": 2.0, "valid_loss": 1.9, "valid_accuracy": 0.4}],
                                         best_epoch=1))
    for fig in figures:
        _assert_titles_clear(fig)


def _series(ax) -> dict[str, object]:
    """The per-layer lines of an axes by label (the unlabelled best-layer stars and the horizontal
    line of the "weighted" probe left out)."""
    return {line.get_label(): line for line in ax.lines
            if not line.get_label().startswith("_") and not line.get_label().endswith("(weighted)")}


def test_named_layers_are_categories_numbered_layers_a_line(store_path, with_results, tmp_path):
    from embedstore.extract.encoders.mfcc import MfccEncoder

    assert not depth_ordered(MfccEncoder().layer_names)
    assert not depth_ordered(["patch_embed", "stage_1", "stage_2", "stage_3", "stage_4", "projection"])  # CLAP
    assert depth_ordered([f"layer_{i:02d}" for i in range(13)]) and depth_ordered(["layer_0", "layer_1"])
    names = ["conv", "block1", "block2"]  # "enc" has named layers, "enc+ft" the store's numbered ones
    figs = [layer_curves._figure(analysis.layers(store_path, models=["enc", "enc+ft"], out=tmp_path)),
            similarity._layer_figure(analysis.cosine(store_path, models=["enc", "enc+ft"], out=tmp_path))]
    for fig in figs:
        fig.canvas.draw()
        named = [ax for ax in fig.axes if [t.get_text() for t in ax.get_xticklabels()] == names]
        numbered = [ax for ax in fig.axes if ax.get_xlabel() == "layer index"]
        assert len(named) == len(numbered) == 2
        for ax in named:
            lines = _series(ax)
            assert lines and all(k.startswith("enc") and not k.startswith("enc+ft") for k in lines)
            assert all(ln.get_linestyle() == "None" and ln.get_marker() not in ("None", "") for ln in lines.values())
            assert all(list(line.get_xdata()) == [0, 1, 2] for line in lines.values())
        sep = [ax for ax in numbered if _series(ax)]
        assert sep and all(line.get_linestyle() != "None" for ax in sep for line in _series(ax).values())
    cka = similarity._cka_figure(analysis.cka(store_path, "enc", "enc+ft", out=tmp_path))
    cka.canvas.draw()
    ax = cka.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    lo, hi = sorted(ax.get_xlim())
    shown = [t for t in ax.get_xticks() if lo <= t <= hi]  # "enc+ft" has numbered layers: integer ticks
    assert shown == [0, 1] and ax.get_xlabel() == "enc+ft layer"


def test_cka_colour_scale_shows_close_values(store_path, tmp_path):
    assert similarity.cka_color_range(np.array([[1.0, 0.98], [0.98, 1.0]])) == (0.98, 1.0)
    assert similarity.cka_color_range(np.array([[1.0, 0.3], [0.3, 1.0]])) == (0.0, 1.0)
    assert similarity.cka_color_range(np.ones((2, 2))) == (0.99, 1.0)

    rng = np.random.default_rng(3)
    n = 60
    X = rng.normal(size=(n, 6))
    Q = ortho_group.rvs(6, random_state=2)
    layers = [X, X + 0.08 * rng.normal(size=(n, 6)), X @ Q + 0.15 * rng.normal(size=(n, 6))]
    path = tmp_path / "close.zarr"
    with open_store(path, "a") as st:
        st.write_tracks("c", TrackTable(ids=[f"c{i}" for i in range(n)], paths=[f"{i}.wav" for i in range(n)]),
                        {"kind": "folder"})
        with st.model_writer("c", "clap", {"model_name": "clap", "layer_names": ["patch_embed", "stage_1",
                                                                                   "projection"]}, [6, 6, 6]) as w:
            w.write(np.arange(n), [x.astype(np.float32) for x in layers])
    res = analysis.cka(path, "clap", out=tmp_path)
    M = res.matrix
    assert 0.97 < M.min() < 0.99  # every pair of layers looks alike on a 0-1 scale
    fig = similarity._cka_figure(res)
    im = fig.axes[0].images[0]
    assert im.norm.vmin == pytest.approx(M.min()) and im.norm.vmax == pytest.approx(1.0)
    assert f"{M.min():.3f}" in fig.axes[1].get_ylabel()  # the colour bar states the range
    cells = [t.get_text() for t in fig.axes[0].texts]
    assert len(cells) == 9 and all(len(c.split(".")[1]) == 3 for c in cells)  # 0.987, not 0.99
    assert json.loads(res.json_path.read_text())["color_range"] == pytest.approx([M.min(), 1.0])
    wide = similarity._cka_figure(analysis.cka(store_path, "enc", out=tmp_path))
    assert (wide.axes[0].images[0].norm.vmin, wide.axes[0].images[0].norm.vmax) == (0.0, 1.0)


def test_cosine_legend_tells_raw_from_centred(store_path, tmp_path):
    res = analysis.cosine(store_path, models=["enc", "enc+ft"], out=tmp_path)
    legend = similarity._layer_figure(res).legends[0]
    handles = {t.get_text(): h for t, h in zip(legend.get_texts(), legend.legend_handles)}
    for m in ("enc", "enc+ft"):
        raw, centred = handles[f"{m}: raw"], handles[f"{m}: mean-centred"]
        assert raw.get_marker() != centred.get_marker() and raw.get_color() == centred.get_color()
        assert {f"{m}: within class (centred)", f"{m}: between classes (centred)"} <= set(handles)
    for ax in similarity._hist_figure(res).axes:
        texts = [t.get_text() for t in ax.get_legend().get_texts()]
        assert texts[0].startswith("raw (mean ") and texts[1].startswith("mean-centred (mean ")
        raw, centred = ax.get_legend().legend_handles
        assert raw.get_linestyle() != centred.get_linestyle() and raw.get_color() != centred.get_color()


def test_training_curve_ticks_and_named_lines():
    from embedstore.finetune.report import training_curve_figure

    def history(k):
        return [{"epoch": e, "train_loss": 2.0 / e, "valid_loss": 1.9 / e, "valid_accuracy": 0.02 * e}
                for e in range(1, k + 1)]

    for k, best in ((1, 1), (4, 3), (30, 22)):
        fig = training_curve_figure(history(k), best_epoch=best)
        fig.canvas.draw()
        for ax in fig.axes:
            lo, hi = ax.get_xlim()
            ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
            assert ticks == list(range(1, k + 1)) if k <= 12 else all(float(t).is_integer() for t in ticks)
            labels = [line.get_label() for line in ax.lines]
            assert labels and not any(lab.startswith("_") for lab in labels)  # every line is named
            assert [t.get_text() for t in ax.get_legend().get_texts()] == labels
            assert f"best epoch ({best})" in labels


def test_default_layer_in_file_names_is_its_name(store_path, tmp_path):
    one = analysis.pca(store_path, models="enc", out=tmp_path)  # layer -1
    assert [f.name for f in one.figures] == ["pca_toy_enc_block2_train.png"]
    two = analysis.pca(store_path, models=["enc", "enc+ft"], out=tmp_path)
    assert two.json_path.name == "pca_toy_enc_vs_enc+ft_block2+layer_1_train.json"
    by_index = analysis.pca(store_path, models="enc", layer=1, out=tmp_path)
    assert by_index.json_path.name == "pca_toy_enc_block1_train.json"
    cos = analysis.cosine(store_path, models="enc", layer=-1, out=tmp_path)
    assert cos.json_path.name == "cosine_toy_enc_block2_all.json"
    assert not any("layer-1" in p.name for p in tmp_path.iterdir())
