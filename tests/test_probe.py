"""Tests of embedstore.heads (probes): numbers against independent sklearn/hand computations,
layer sweeps, the weighted head, k-fold, determinism, records and the comparison table."""

from __future__ import annotations

import json
from math import comb

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from embedstore.errors import DatasetError, ModelError
from embedstore.heads.logreg import LogRegConfig
from embedstore.heads.metrics import bootstrap_ci, classification_metrics, mcnemar_exact, paired_bootstrap
from embedstore.heads.mlp import MLP_PRESETS, LayerWeighting, MLPHead, WeightedLayerMLP
from embedstore.heads.probe import compare_records, evidence_warnings, format_comparison
from embedstore.heads.protocol import make_folds, probe_arrays, standardise
from embedstore.store.records import CAPTION_SCHEMA, PROBE_SCHEMA, ProbeRecord, load_records, results_dir, save_record

GENRES = np.array(["blues", "jazz", "metal", "pop"])


def layered(n: int = 200, layers: int = 4, dim: int = 12, informative: int = 2, sep: float = 2.5,
            seed: int = 0, folds: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian class clusters in layer ``informative``, pure noise in the others.

    Returns ``X [n, layers, dim]`` (float32), labels ``[n]`` (genre strings), splits ``[n]``
    (60/20/20 train/valid/test, or ``fold0..`` when ``folds``), track ids ``[n]``.
    """
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(GENRES)
    X = rng.normal(size=(n, layers, dim)) * rng.uniform(0.5, 3.0, size=(1, layers, dim))  # unequal scales
    centers = rng.normal(size=(len(GENRES), dim))
    X[:, informative] += sep * centers[y] * X[:, informative].std(axis=0)
    perm = rng.permutation(n)
    splits = np.empty(n, dtype=object)
    if folds:
        splits[perm] = [f"fold{i % folds}" for i in range(n)]
    else:
        splits[perm] = np.array(["train"] * (n * 3 // 5) + ["valid"] * (n // 5) + ["test"] * (n - n * 4 // 5))
    ids = np.array([f"t{i:04d}" for i in range(n)], dtype=object)
    return X.astype(np.float32), GENRES[y], splits, ids


def disagreeing(n: int = 240, dim: int = 6, sep: float = 3.0, seed: int = 0):
    """Two layers whose best layer differs between valid and test by construction: layer 0 carries
    the class (Gaussian centres) on train and valid rows and is pure noise on test rows; layer 1
    carries it on train and test rows and is noise on valid rows. Returns ``X [n, 2, dim]``
    (float32), labels ``[n]``, splits ``[n]`` (60/20/20 train/valid/test), track ids ``[n]``."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(GENRES)
    splits = np.empty(n, dtype=object)
    splits[rng.permutation(n)] = ["train"] * (n * 3 // 5) + ["valid"] * (n // 5) + ["test"] * (n - n * 4 // 5)
    centers = sep * rng.normal(size=(len(GENRES), dim))
    X = rng.normal(size=(n, 2, dim))
    for layer, blind in ((0, "test"), (1, "valid")):
        rows = splits != blind
        X[rows, layer] += centers[y[rows]]
    ids = np.array([f"d{i:04d}" for i in range(n)], dtype=object)
    return X.astype(np.float32), GENRES[y], splits, ids


# ---- metrics ------------------------------------------------------------------------------------


def test_mcnemar_matches_hand_computation():
    a = np.array([True] * 10 + [True] * 1 + [False] * 6 + [False] * 3)
    b = np.array([True] * 10 + [False] * 1 + [True] * 6 + [False] * 3)
    res = mcnemar_exact(a, b)
    assert (res["b"], res["c"]) == (1, 6)
    assert res["p_value"] == pytest.approx(2 * (comb(7, 0) + comb(7, 1)) / 2**7)  # 0.125
    assert mcnemar_exact(a, a)["p_value"] == 1.0
    balanced = mcnemar_exact([True, False] * 3, [False, True] * 3)  # b = c = 3 -> p capped at 1
    assert balanced["p_value"] == 1.0


def test_bootstrap_ci_matches_loop_with_sklearn():
    rng = np.random.default_rng(3)
    y = rng.choice(GENRES, 60)
    p = np.where(rng.random(60) < 0.7, y, rng.choice(GENRES, 60))
    n_boot, seed = 200, 11
    idx = np.random.default_rng(seed).integers(0, len(y), size=(n_boot, len(y)))
    accs = [accuracy_score(y[i], p[i]) for i in idx]
    f1s = [f1_score(y[i], p[i], average="macro", zero_division=0) for i in idx]
    ci = bootstrap_ci(y, p, n_boot=n_boot, seed=seed)
    assert ci["accuracy"] == pytest.approx(np.percentile(accs, [2.5, 97.5]))
    assert ci["macro_f1"] == pytest.approx(np.percentile(f1s, [2.5, 97.5]))
    assert ci["accuracy"][0] <= accuracy_score(y, p) <= ci["accuracy"][1]
    assert bootstrap_ci(y, p, n_boot=n_boot, seed=seed) == ci  # seeded


def test_paired_bootstrap_sign_and_identity():
    rng = np.random.default_rng(0)
    y = rng.choice(GENRES, 200)
    good = np.where(rng.random(200) < 0.9, y, rng.choice(GENRES, 200))
    bad = np.where(rng.random(200) < 0.4, y, rng.choice(GENRES, 200))
    res = paired_bootstrap(y, good, bad, n_boot=300)
    assert res["diff"] == pytest.approx(accuracy_score(y, good) - accuracy_score(y, bad))
    assert res["ci95"][0] > 0 and res["p_value"] < 0.01
    assert paired_bootstrap(y, good, good, n_boot=300)["p_value"] == 1.0


def test_classification_metrics_fields():
    y = ["a", "a", "b", "b", "c"]
    p = ["a", "b", "b", "b", "a"]
    m = classification_metrics(y, p, labels=["a", "b", "c", "d"])
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))
    assert m["per_class_recall"] == pytest.approx([0.5, 1.0, 0.0, 0.0])
    assert m["confusion"] == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    assert m["labels"] == ["a", "b", "c", "d"]


# ---- heads and protocol -------------------------------------------------------------------------


def test_paper_preset_module_is_exactly_the_reference_head():
    cfg = MLP_PRESETS["paper"]
    assert (cfg.lrs, cfg.max_epochs, cfg.dropout, cfg.weight_decays, cfg.patience) == ((1e-5,), 10, 0.0, (0.0,), None)
    head = MLPHead(768, 10, hidden=cfg.hidden, dropout=cfg.dropout)
    mods = list(head.net)
    assert [type(m) for m in mods] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.BatchNorm1d, torch.nn.Linear]
    assert (mods[0].in_features, mods[0].out_features) == (768, 512)
    assert mods[2].num_features == 512
    assert (mods[3].in_features, mods[3].out_features) == (512, 10)
    assert torch.nn.Dropout in [type(m) for m in MLPHead(768, 10, dropout=0.3).net]


def test_layer_weighting_is_a_softmax_sum():
    lw = LayerWeighting(3)
    with torch.no_grad():
        lw.logits.copy_(torch.tensor([0.0, 1.0, 2.0]))
    x = torch.randn(5, 3, 4)
    w = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0)
    assert torch.allclose(lw(x), (x * w[None, :, None]).sum(1), atol=1e-6)
    assert float(lw.weights.detach().sum()) == pytest.approx(1.0)
    assert WeightedLayerMLP(3, 4, 2)(x).shape == (5, 2)


def test_standardise_uses_train_statistics_only():
    rng = np.random.default_rng(0)
    tr, te = rng.normal(5, 2, (50, 3)), rng.normal(-5, 1, (20, 3))
    ztr, zte = standardise(tr, te)
    assert np.allclose(ztr.mean(0), 0, atol=1e-5) and np.allclose(ztr.std(0), 1, atol=1e-4)
    assert np.allclose(zte, (te - tr.mean(0)) / tr.std(0), atol=1e-4)


def test_logreg_probe_equals_independent_sklearn_pipeline():
    X, labels, splits, ids = layered()
    x = X[:, 2]
    res = probe_arrays(x, labels, splits, head="logreg", track_ids=ids, n_boot=200)
    tr, va, te = (splits == s for s in ("train", "valid", "test"))
    # the C choice, redone independently over the same grid
    scores = {C: make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000)).fit(x[tr], labels[tr])
              .score(x[va], labels[va]) for C in LogRegConfig().Cs}
    best_C = max(scores, key=lambda c: (scores[c], -c))
    assert res.hparams["C"] == best_C
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=best_C, max_iter=1000)).fit(x[tr], labels[tr])
    ref_pred = ref.predict(x[te])
    got = np.asarray(res.labels, dtype=object)[np.asarray(res.predictions["y_pred"][0])]
    order = np.argsort(ids[te])
    assert list(np.sort(res.predictions["track_ids"])) == list(ids[te][order])
    assert list(got[np.argsort(res.predictions["track_ids"])]) == list(ref_pred[order])
    assert res.metrics["test"]["accuracy"] == pytest.approx(accuracy_score(labels[te], ref_pred))
    assert res.metrics["test"]["accuracy"] > 0.8  # chance is 0.25
    assert res.metrics["test"]["macro_f1"] == pytest.approx(f1_score(labels[te], ref_pred, average="macro"))
    assert set(res.metrics) == {"train", "valid", "test"}
    assert sum(map(sum, res.metrics["test"]["confusion"])) == te.sum()


def test_noise_layer_probes_near_chance_and_informative_layer_wins():
    X, labels, splits, ids = layered(n=240)
    accs = [probe_arrays(X[:, li], labels, splits, head="logreg", n_boot=100).metrics["test"]["accuracy"]
            for li in range(X.shape[1])]
    assert int(np.argmax(accs)) == 2
    assert max(a for i, a in enumerate(accs) if i != 2) < 0.55


def test_mlp_default_converges_and_is_deterministic():
    X, labels, splits, ids = layered(n=160, dim=8)
    a = probe_arrays(X[:, 2], labels, splits, head="mlp", seed=3, n_boot=100)
    b = probe_arrays(X[:, 2], labels, splits, head="mlp", seed=3, n_boot=100)
    assert a.metrics["test"]["accuracy"] > 0.75
    assert a.predictions == b.predictions
    assert a.metrics == b.metrics and a.hparams == b.hparams
    assert {"lr", "weight_decay", "dropout", "epochs"} <= set(a.hparams)
    assert len(a.runs[0]["search"]) == len(MLP_PRESETS["default"].lrs) * len(MLP_PRESETS["default"].weight_decays)


def test_paper_preset_underfits_relative_to_default():
    X, labels, splits, ids = layered(n=160, dim=8)
    paper = probe_arrays(X[:, 2], labels, splits, head="mlp", preset="paper", n_boot=50)
    assert paper.hparams["lr"] == 1e-5 and paper.hparams["epochs"] == 10
    assert paper.hparams["dropout"] == 0.0


def test_weighted_head_weights_sum_to_one_and_favour_informative_layer():
    X, labels, splits, ids = layered(n=200, dim=8, informative=1)
    res = probe_arrays(X, labels, splits, head="mlp", n_boot=50)
    w = np.asarray(res.layer_weights)
    assert w.shape == (4,) and w.sum() == pytest.approx(1.0, abs=1e-5)
    assert int(np.argmax(w)) == 1 and w[1] > 1.5 / 4
    assert res.metrics["test"]["accuracy"] > 0.7
    with pytest.raises(ModelError, match="weighted"):
        probe_arrays(X, labels, splits, head="logreg")


def test_seeds_report_mean_and_std():
    X, labels, splits, ids = layered(n=120, dim=6)
    res = probe_arrays(X[:, 2], labels, splits, head="mlp", seeds=2, n_boot=50)
    per = res.metrics["test"]["per_seed"]["accuracy"]
    assert res.seeds == [0, 1] and len(per) == 2 and len(res.predictions["y_pred"]) == 2
    assert res.metrics["test"]["accuracy"] == pytest.approx(np.mean(per))
    assert res.metrics["test"]["accuracy_std"] == pytest.approx(np.std(per, ddof=1))
    assert sum(map(sum, res.metrics["test"]["confusion"])) == 2 * res.metrics["test"]["n"]


def test_make_folds_rotates_test_and_valid():
    splits = np.array([f"fold{i % 4}" for i in range(20)], dtype=object)
    folds = make_folds(splits)
    assert [f.name for f in folds] == ["fold0", "fold1", "fold2", "fold3"]
    for i, f in enumerate(folds):
        assert set(splits[f.test]) == {f"fold{i}"} and set(splits[f.valid]) == {f"fold{(i + 1) % 4}"}
        assert sorted(np.concatenate([f.train, f.valid, f.test])) == list(range(20))
    assert np.array_equal(np.sort(np.concatenate([f.test for f in folds])), np.arange(20))
    with pytest.raises(DatasetError, match="3 folds"):
        make_folds(["fold0", "fold1"])
    with pytest.raises(DatasetError, match="train"):
        make_folds(["train", "valid"])


def test_kfold_probe_tests_every_clip_once():
    X, labels, splits, ids = layered(n=160, folds=4)
    res = probe_arrays(X[:, 2], labels, splits, head="logreg", track_ids=ids, n_boot=50)
    assert sorted(res.predictions["track_ids"]) == sorted(ids)
    assert len(res.folds) == 4 and res.protocol["splits"] == "kfold"
    assert res.metrics["test"]["n"] == 160
    assert res.metrics["test"]["accuracy"] == pytest.approx(np.mean([f["test_accuracy"] for f in res.folds]))
    assert _record(res, 2)["selected_on"] == "valid_fold"


def test_no_valid_split_uses_inner_validation():
    X, labels, splits, ids = layered(n=160, dim=6)
    splits = np.where(splits == "valid", "train", splits)
    lr = probe_arrays(X[:, 2], labels, splits, head="logreg", n_boot=50)
    assert lr.hparams["selected_by"] == "inner_cv" and "valid" not in lr.metrics
    mlp = probe_arrays(X[:, 2], labels, splits, head="mlp", n_boot=50)
    assert mlp.protocol["valid_source"] == "inner" and mlp.metrics["valid"]["n"] > 0
    assert _record(lr, 2)["selected_on"] == "train_cv"
    assert _record(mlp, 2, head="mlp")["selected_on"] == "train_carveout"


def test_unlabelled_rows_are_dropped():
    X, labels, splits, ids = layered(n=120)
    labels = labels.astype(object)
    labels[:10] = ""
    res = probe_arrays(X[:, 2], labels, splits, head="logreg", track_ids=ids, n_boot=50)
    assert not set(ids[:10]) & set(res.predictions["track_ids"])
    assert "" not in res.labels


# ---- records and the comparison table -----------------------------------------------------------


def _record(res, layer, model="m", **kw):
    args = dict(task="genre", dataset="gtzan", model=model, layer=layer, layer_name=f"layer{layer}",
                layers=[layer], head="logreg", preset="default", checkpoint="ckpt")
    args.update(kw)
    return res.record(**args)


def test_records_round_trip_and_replace(tmp_path):
    store = tmp_path / "embedstore.zarr"
    X, labels, splits, ids = layered(n=120)
    res = probe_arrays(X[:, 2], labels, splits, head="logreg", track_ids=ids, n_boot=50)
    rec = _record(res, 2)
    path = save_record(store, rec)
    assert results_dir(store) == tmp_path / "embedstore.zarr.results" and path.parent == results_dir(store)
    on_disk = json.loads(path.read_text())
    for key in ("task", "dataset", "model", "layer", "head", "checkpoint", "hparams", "seeds", "metrics",
                "layer_weights", "created", "embedstore_version"):
        assert key in on_disk
    assert on_disk["schema"] == PROBE_SCHEMA
    for split in ("train", "valid", "test"):
        m = on_disk["metrics"][split]
        assert {"accuracy", "macro_f1", "per_class_recall", "confusion", "labels", "ci95"} <= set(m)
        assert len(m["per_class_recall"]) == len(m["labels"]) == len(m["confusion"])
    save_record(store, dict(rec, created="later"))  # same probe -> replaced
    save_record(store, _record(res, 1))
    save_record(store, _record(res, 2, task="other"))
    loaded = load_records(store, task="genre")
    assert [r["layer"] for r in loaded] == [1, 2] and loaded[1]["created"] == "later"
    assert len(load_records(store)) == 3
    assert load_records(tmp_path / "absent.zarr") == []


def test_format_comparison_pvalues_match_mcnemar():
    X, labels, splits, ids = layered(n=200)
    recs = [_record(probe_arrays(X[:, li], labels, splits, head="logreg", track_ids=ids, n_boot=50), li)
            for li in range(X.shape[1])]
    rows = compare_records(recs)
    assert [r["best"] for r in rows] == [False, False, True, False]
    best = recs[2]["predictions"]["test"]
    other = recs[0]["predictions"]["test"]
    assert other["track_ids"] == best["track_ids"]
    yt = np.array(best["y_true"])
    want = mcnemar_exact(np.array(other["y_pred"][0]) == yt, np.array(best["y_pred"][0]) == yt)["p_value"]
    assert rows[0]["p_value"] == pytest.approx(want) and want < 0.01
    caption_like = dict(recs[0], schema=CAPTION_SCHEMA, head="t5", metrics={"test": {"bleu": 0.1}})  # same folder
    text = format_comparison([*recs, caption_like])
    lines = text.splitlines()
    assert sum(line.startswith("m ") for line in lines) == 4
    assert "best" in text and "McNemar" in text and "C=" in text


def test_reference_row_is_chosen_on_valid_when_test_disagrees():
    from scipy.stats import binomtest

    X, labels, splits, ids = disagreeing()
    recs = [_record(probe_arrays(X[:, li], labels, splits, head="logreg", track_ids=ids, n_boot=50), li)
            for li in range(2)]
    # the construction: layer 0 wins on valid, layer 1 on test
    assert recs[0]["metrics"]["valid"]["accuracy"] > 0.8 > 0.45 > recs[1]["metrics"]["valid"]["accuracy"]
    assert recs[1]["metrics"]["test"]["accuracy"] > 0.6 > 0.45 > recs[0]["metrics"]["test"]["accuracy"]
    assert [r["selected_on"] for r in recs] == ["valid", "valid"]
    rows = compare_records(recs)
    assert [r["best"] for r in rows] == [True, False]
    # the other row is tested against layer 0's test predictions: exact binomial on discordant clips
    y = np.array(recs[0]["predictions"]["test"]["y_true"])
    ok0 = np.array(recs[0]["predictions"]["test"]["y_pred"][0]) == y
    ok1 = np.array(recs[1]["predictions"]["test"]["y_pred"][0]) == y
    b, c = int(np.sum(ok0 & ~ok1)), int(np.sum(~ok0 & ok1))
    assert rows[1]["p_value"] == pytest.approx(binomtest(b, b + c, 0.5).pvalue) and rows[1]["test"] == "McNemar"
    text = format_comparison(recs)
    table = {line.split()[1]: line for line in text.splitlines() if line.startswith("m ")}
    assert table["0"].endswith("best") and not table["1"].endswith("best")
    assert f"{100 * recs[0]['selection_score']:.1f}" in table["0"].split()  # the valid acc % column
    assert "selected on: valid" in text and "valid acc %" in text
    # records without a validation score cannot be chosen: no reference row, no p-values
    blind = [dict(r, selection_score=None) for r in recs]
    assert [(r["best"], r["p_value"]) for r in compare_records(blind)] == [(False, None), (False, None)]
    assert "best: none" in format_comparison(blind)


# ---- through the store --------------------------------------------------------------------------


def write_store(path, models: dict[str, np.ndarray], labels, splits, ids, *, dataset="gtzan",
                tasks=None) -> None:
    """A store with one dataset and a model entry per ``X [n, layers, dim]`` in ``models``."""
    from embedstore.store import TrackTable, open_store

    table = TrackTable(ids=list(ids), paths=[f"{t}.wav" for t in ids], labels=list(labels), splits=list(splits))
    with open_store(path, "a") as st:
        st.write_tracks(dataset, table, {"kind": "gtzan", "tasks": tasks or {"genre": "label"}})
        for name, X in models.items():
            meta = {"model_name": name, "checkpoint": f"ckpt/{name}",
                    "layer_names": [f"layer_{i}" for i in range(X.shape[1])]}
            with st.model_writer(dataset, name, meta, [X.shape[2]] * X.shape[1]) as w:
                w.write(np.arange(len(X)), [X[:, i] for i in range(X.shape[1])])


@pytest.fixture(scope="module")
def probe_store(tmp_path_factory):
    X, labels, splits, ids = layered(n=160, dim=8, informative=2)
    X2, *_ = layered(n=160, dim=8, informative=0, seed=1)
    path = tmp_path_factory.mktemp("probe") / "embedstore.zarr"
    write_store(path, {"enc_a": X, "enc_b": X2}, labels, splits, ids)
    return path


def test_run_probe_sweep_through_store(probe_store):
    from embedstore.heads.probe import run_probe

    rep = run_probe(probe_store, "genre", layer="all", head="logreg", progress=False)
    assert [(r["model"], r["layer"]) for r in rep.records] == [("enc_a", i) for i in range(4)] + [
        ("enc_b", i) for i in range(4)]
    assert rep.best_layers == {("gtzan", "enc_a"): 2, ("gtzan", "enc_b"): 0}
    assert all(p.parent == results_dir(probe_store) for p in rep.paths)
    assert rep.records[0]["checkpoint"] == "ckpt/enc_a" and rep.records[2]["layer_name"] == "layer_2"
    loaded = load_records(probe_store, task="genre")
    assert {(r["model"], r["layer"], r["head"]) for r in loaded} >= {(r["model"], r["layer"], "logreg")
                                                                      for r in rep.records}
    text = format_comparison(rep)
    assert text.count("enc_a") >= 4 and text.count("enc_b") >= 4 and "best" in text


def test_run_probe_best_and_weighted(probe_store):
    from embedstore.heads.probe import run_probe

    last = run_probe(probe_store, "genre", models=["enc_a"], layer=-1, head="logreg", progress=False)
    assert [r["layer"] for r in last.records] == [3]
    best = run_probe(probe_store, "genre", models=["enc_a"], layer="best", head="logreg", progress=False)
    assert len(best.records) == 1 and best.records[0]["layer"] == 2
    assert set(best.records[0]["layer_selection"]["scores"]) == {"0", "1", "2", "3"}
    assert best.records[0]["layer_selection"]["selected_on"] == "valid"
    w = run_probe(probe_store, "genre", models=["enc_b"], layer="weighted", head="mlp", progress=False)
    rec = w.records[0]
    assert rec["layer"] == "weighted" and rec["layers"] == [0, 1, 2, 3]
    assert sum(rec["layer_weights"]) == pytest.approx(1.0, abs=1e-5) and np.argmax(rec["layer_weights"]) == 0
    assert "layer weights enc_b" in format_comparison(w)


def test_run_probe_best_layer_follows_valid_not_test(tmp_path):
    from embedstore.heads.probe import run_probe

    X, labels, splits, ids = disagreeing()
    path = tmp_path / "disagree.zarr"
    write_store(path, {"enc": X}, labels, splits, ids)
    rep = run_probe(path, "genre", layer="best", head="logreg", progress=False)
    assert rep.best_layers == {("gtzan", "enc"): 0} and [r["layer"] for r in rep.records] == [0]
    on_disk = json.loads(rep.paths[0].read_text())
    assert on_disk["selected_on"] == "valid" and on_disk["layer_selection"]["selected_on"] == "valid"
    scores = on_disk["layer_selection"]["scores"]
    assert scores["0"] > scores["1"]  # chosen by these validation scores ...
    assert on_disk["metrics"]["test"]["accuracy"] < 0.45  # ... although its test accuracy is near chance


def test_run_probe_errors(probe_store):
    from embedstore.errors import StoreError
    from embedstore.heads.probe import run_probe

    with pytest.raises(StoreError, match=r"'mood'.*gtzan: genre"):
        run_probe(probe_store, "mood", progress=False)
    with pytest.raises(ModelError, match="--layer 9"):
        run_probe(probe_store, "genre", layer=9, head="logreg", progress=False)
    with pytest.raises(StoreError, match="nope"):
        run_probe(probe_store, "genre", models=["nope"], progress=False)
    with pytest.raises(ModelError, match="--head"):
        run_probe(probe_store, "genre", head="svm", progress=False)


# ---- weak evidence: clips per split and warnings ------------------------------------------------


def test_table_shows_clips_per_split_and_where_validation_came_from():
    X, labels, splits, ids = layered(n=120, dim=6)
    n_train, n_valid, n_test = (int(np.sum(splits == s)) for s in ("train", "valid", "test"))
    with_valid = format_comparison([_record(probe_arrays(X[:, 2], labels, splits, head="logreg", n_boot=20), 2)])
    assert f"clips: train {n_train}, test {n_test}; valid: {n_valid} clips (split)" in with_valid.splitlines()

    merged = np.where(splits == "valid", "train", splits)  # no valid split: carved from train (mlp) or CV (logreg)
    pool = n_train + n_valid
    carved = int(np.ceil(0.15 * pool))  # sklearn's train_test_split(test_size=0.15) rounds the test share up
    mlp = _record(probe_arrays(X[:, 2], labels, merged, head="mlp", n_boot=20), 2, head="mlp")
    lr = _record(probe_arrays(X[:, 2], labels, merged, head="logreg", n_boot=20), 2)
    lines = format_comparison([mlp, lr]).splitlines()
    assert f"clips (m/mlp): train {pool - carved}, test {n_test}; valid: carved 15 % of train, {carved} clips" in lines
    assert f"clips (m/logreg): train {pool}, test {n_test}; valid: none, chosen by cross-validation inside train" in lines

    Xk, labels_k, folds, _ = layered(n=160, dim=6, folds=4)
    kfold = format_comparison([_record(probe_arrays(Xk[:, 2], labels_k, folds, head="logreg", n_boot=20), 2)])
    assert "clips: 4 folds: test 160 (each clip once), train 80 per fold; valid: the next fold, 40 clips" in kfold


def weak_store_arrays(n_layers: int = 2, dim: int = 4, seed: int = 0):
    """Every weakness at once, with the same features in every layer (so every row ties): classes
    blues/jazz/metal with 8 train clips each and pop with none, 5 valid clips per class, one test clip
    per class (4 in all), and 3 labelled clips in no split. Returns ``X [n, layers, dim]``, labels,
    splits, ids."""
    plan = [("train", g, 8) for g in GENRES[:3]] + [("valid", g, 5) for g in GENRES] + [
        ("test", g, 1) for g in GENRES] + [("", g, 1) for g in GENRES[:3]]
    splits = np.array([s for s, _, k in plan for _ in range(k)], dtype=object)
    labels = np.array([g for _, g, k in plan for _ in range(k)], dtype=object)
    rng = np.random.default_rng(seed)
    centers = 4.0 * rng.normal(size=(len(GENRES), dim))
    x = centers[np.searchsorted(GENRES, labels)] + rng.normal(size=(len(labels), dim))
    X = np.repeat(x[:, None], n_layers, axis=1).astype(np.float32)
    return X, labels, splits, np.array([f"w{i:03d}" for i in range(len(labels))], dtype=object)


def test_weak_evidence_warns_once_each(tmp_path):
    from embedstore.heads.probe import run_probe

    X, labels, splits, ids = weak_store_arrays()
    path = tmp_path / "weak.zarr"
    write_store(path, {"enc_a": X, "enc_b": X}, labels, splits, ids)
    rep = run_probe(path, "genre", layer="all", head="logreg", progress=False)
    assert len(rep.records) == 4
    warnings = rep.warnings
    assert sorted(w.kind for w in warnings) == ["few_clips", "no_clips", "tie", "unassigned"]  # once each
    by_kind = {w.kind: w for w in warnings}
    assert by_kind["no_clips"].split == "train"
    assert str(by_kind["no_clips"]) == ("genre/gtzan: no train clips of 'pop' (valid 5; test 1): "
                                        "the probes cannot predict these classes")
    few = str(by_kind["few_clips"])
    assert by_kind["few_clips"].split == "test" and "blues 1, jazz 1, metal 1, pop 1; 4 test clips in all" in few
    assert "3 labelled clips are in no split (no split value 3)" in str(by_kind["unassigned"])
    assert str(by_kind["tie"]).startswith("genre/gtzan: all 4 rows tie")
    assert all(w.dataset == "gtzan" and w.task == "genre" for w in warnings)
    assert "clips: train 24, test 4; valid: 20 clips (split); 3 labelled clips in no split (unused)" in (
        format_comparison(rep).splitlines())


def test_no_warning_for_sound_evidence(probe_store):
    from embedstore.heads.probe import run_probe

    rep = run_probe(probe_store, "genre", models=["enc_a"], layer="all", head="logreg", progress=False)
    assert rep.warnings == []  # >= 5 clips of every class in every split, layer 2 beats the noise layers


def test_no_difference_warning_follows_the_paired_test():
    import copy

    X, labels, splits, ids = layered(n=200, dim=6)
    best = _record(probe_arrays(X[:, 2], labels, splits, head="logreg", track_ids=ids, n_boot=20), 2)
    pred = best["predictions"]["test"]
    right = np.flatnonzero(np.array(pred["y_pred"][0]) == np.array(pred["y_true"]))
    assert len(right) >= 10

    def worse(k: int) -> ProbeRecord:
        """``best`` with its first ``k`` correct test clips made wrong: McNemar b = k, c = 0."""
        rec = copy.deepcopy(best)
        y_pred = np.array(rec["predictions"]["test"]["y_pred"])
        y_pred[0, right[:k]] = (y_pred[0, right[:k]] + 1) % len(GENRES)
        rec.layer, rec.selection_score = k, best.selection_score - 0.1
        rec.predictions["test"]["y_pred"] = y_pred.tolist()
        rec["metrics"]["test"]["accuracy"] -= k / len(y_pred[0])
        return rec

    # exact McNemar with b = k, c = 0: p = 2 * 0.5 ** k -> 0.5 for k = 2, 0.00195 for k = 10
    close = evidence_warnings([best, worse(2)])
    assert [w.kind for w in close] == ["no_difference"] and "(m layer 2) at p < 0.05" in str(close[0])
    assert [w.kind for w in evidence_warnings([best, worse(10)])] == []
    assert [w.kind for w in evidence_warnings([best, worse(2), worse(10)])] == []  # one row does differ
