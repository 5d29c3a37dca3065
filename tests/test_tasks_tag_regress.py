"""Tagging and regression tasks: metrics against scikit-learn/SciPy, the manifest columns, layer
selection on validation through the store, and the CLI end to end (extract mfcc -> probe)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from scipy.stats import pearsonr
from sklearn.metrics import average_precision_score, mean_absolute_error, r2_score, roc_auc_score

from embedstore.errors import DatasetError
from embedstore.heads.metrics import regression_metrics, tagging_metrics
from embedstore.heads.tagging import tag_matrix


def test_tag_matrix_splits_and_strips():
    Y, tags = tag_matrix(["guitar; slow", "", "slow;female vocal", "guitar"], ";")
    assert tags == ["female vocal", "guitar", "slow"]
    assert Y.tolist() == [[0, 1, 1], [0, 0, 0], [1, 0, 1], [0, 1, 0]]


def test_tagging_metrics_match_sklearn_and_leave_out_tags_without_positives():
    rng = np.random.default_rng(0)
    Y = (rng.random((60, 4)) < 0.4).astype(int)
    Y[:, 2] = 0  # no positive: no AUC, out of the macro averages
    scores = np.clip(Y * 0.3 + rng.random((60, 4)), 0, 1)
    m = tagging_metrics(Y, scores, ["a", "b", "c", "d"], n_boot=200)
    kept = [0, 1, 3]
    assert m["excluded"] == ["c"] and m["per_tag_auc"]["c"] is None
    aucs = [roc_auc_score(Y[:, k], scores[:, k]) for k in kept]
    assert m["macro_auc"] == pytest.approx(np.mean(aucs))
    assert m["macro_ap"] == pytest.approx(np.mean([average_precision_score(Y[:, k], scores[:, k]) for k in kept]))
    assert [m["per_tag_auc"][t] for t in "abd"] == pytest.approx(aucs)
    lo, hi = m["ci95"]["macro_auc"]
    assert lo < m["macro_auc"] < hi and m["n"] == 60


def test_regression_metrics_match_sklearn_and_scipy():
    rng = np.random.default_rng(1)
    y = rng.normal(size=80)
    pred = 0.7 * y + rng.normal(scale=0.5, size=80)
    m = regression_metrics(y, pred, n_boot=200)
    assert m["r2"] == pytest.approx(r2_score(y, pred))
    assert m["mae"] == pytest.approx(mean_absolute_error(y, pred))
    assert m["pearson_r"] == pytest.approx(pearsonr(y, pred)[0])
    for key in ("r2", "mae", "pearson_r"):
        lo, hi = m["ci95"][key]
        assert lo < m[key] < hi


# ---- manifest columns -----------------------------------------------------------------------------


def _clip(path, freq: float, amp: float, sr: int = 16000) -> None:
    t = np.arange(sr) / sr
    noise = np.random.default_rng(int(freq)).normal(scale=0.01, size=sr)
    sf.write(path, (amp * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32), sr)


def _manifest(root, n: int = 40, sep: str = ";"):
    """Clips whose pitch sets the tag ``high`` and the number ``valence``; loudness the tag ``loud``."""
    rng = np.random.default_rng(0)
    rows = ["path,label,tags,valence,note,split"]
    for i in range(n):
        freq, amp = rng.uniform(200, 2000), rng.choice([0.05, 0.6])
        _clip(root / f"c{i:02d}.wav", freq, amp)
        tags = sep.join(t for t, on in (("high", freq > 1100), ("loud", amp > 0.3), ("always", True)) if on)
        split = ("train", "train", "train", "valid", "test")[i % 5]
        rows.append(f"c{i:02d}.wav,{'ab'[i % 2]},{tags},{freq / 1000:.4f},word{i},{split}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def test_manifest_infers_tag_and_number_columns(tmp_path):
    from embedstore.extract.datasets import DatasetRequest

    ds = DatasetRequest(_manifest(tmp_path, n=10), "manifest").discover()
    assert ds.tasks == {"label": "label", "tags": "tags", "valence": "number"}  # "note": plain words, no task
    assert ds.targets["tags"]["kind"] == "tag" and ds.targets["valence"]["kind"] == "regress"
    assert ds.targets["valence"]["values"]["c01"] == next(
        line.split(",")[3] for line in (tmp_path / "manifest.csv").read_text().splitlines() if line.startswith("c01"))
    stated = DatasetRequest(tmp_path, "manifest", task_kinds=(("note", "tag"), ("valence", "classify"))).discover()
    assert stated.tasks["note"] == "tags" and "valence" not in stated.tasks
    with pytest.raises(DatasetError, match="--task-kind note=regress"):
        DatasetRequest(tmp_path, "manifest", task_kinds=(("note", "regress"),)).discover()


# ---- probes through the store: the signal lives in one layer ----------------------------------------


@pytest.fixture(scope="module")
def target_store(tmp_path_factory):
    from embedstore.store import TrackTable, open_store

    rng = np.random.default_rng(0)
    n, layers, dim = 150, 3, 6
    X = rng.normal(size=(n, layers, dim)).astype(np.float32)
    valence = X[:, 1, 0] * 2 + X[:, 1, 1] + rng.normal(scale=0.3, size=n) + 5.0
    # "rare" is on two train clips only: no positive in valid or test
    tags = [";".join(t for t, on in (("a", X[i, 1, 2] > 0), ("b", X[i, 1, 3] > 0.5), ("rare", i in (0, 1))) if on)
            for i in range(n)]
    ids = [f"t{i:03d}" for i in range(n)]
    splits = ["train", "train", "train", "valid", "test"] * (n // 5)
    path = tmp_path_factory.mktemp("targets") / "s.zarr"
    targets = {"tags": {"kind": "tag", "separator": ";", "values": dict(zip(ids, tags))},
               "valence": {"kind": "regress", "separator": ";", "values": {t: str(v) for t, v in zip(ids, valence)}},
               "shuffled": {"kind": "tag", "separator": ";",
                            "values": dict(zip(ids, rng.permutation(np.array(tags, dtype=object)).tolist()))}}
    with open_store(path, "a") as st:
        st.write_tracks("d", TrackTable(ids=ids, paths=[f"{t}.wav" for t in ids], splits=splits),
                        {"kind": "manifest", "targets": targets,
                         "tasks": {"tags": "tags", "valence": "number", "shuffled": "tags"}})
        meta = {"model_name": "m", "layer_names": ["l0", "l1", "l2"]}
        with st.model_writer("d", "m", meta, [dim] * layers) as w:
            w.write(np.arange(n), [X[:, i] for i in range(layers)])
    return path, valence, splits


@pytest.mark.parametrize("head", ["logreg", "mlp"])
def test_tag_probe_picks_the_informative_layer_on_validation(target_store, head):
    from embedstore.heads.target_probe import run_target_probe

    path, _, _ = target_store
    with pytest.warns(UserWarning, match="tag 'rare' has no positive"):
        records, paths, notes = run_target_probe(path, "tags", layer="best", head=head, device="cpu", n_boot=100)
    (rec,) = records
    assert any("'rare'" in note and "left out of the macro averages" in note for note in notes)
    assert rec.metrics["test"]["excluded"] == ["rare"] and rec.metrics["test"]["per_tag_auc"]["rare"] is None
    assert rec.layer == 1 and rec.layer_selection["selected_on"] == "valid"
    scores = rec.layer_selection["scores"]
    assert scores["1"] == max(scores.values()) and scores["1"] == rec.metrics["valid"]["macro_auc"]
    assert rec.tags == ["a", "b", "rare"] and rec.metrics["test"]["macro_auc"] > 0.85
    assert rec.metrics["test"]["per_tag_auc"]["a"] > 0.85
    saved = json.loads(paths[0].read_text())
    assert saved["schema"] == "embedstore.tag/1" and saved["head"] == head


def test_task_for_reads_the_column_kind_from_the_store(target_store):
    from embedstore.errors import EmbedstoreError
    from embedstore.heads.tasks import task_for

    path = target_store[0]
    assert task_for("tags", store=path).name == "tag" and task_for("valence", store=path).name == "regress"
    assert task_for("genre", store=path).name == "classification"
    assert task_for("valence", kind="tag", store=path).name == "tag"
    with pytest.raises(EmbedstoreError, match="--task-kind 'sort'"):
        task_for("valence", kind="sort")


def test_tag_probe_on_shuffled_tags_is_chance(target_store):
    from embedstore.heads.target_probe import run_target_probe

    records, _, _ = run_target_probe(target_store[0], "shuffled", layer=1, head="logreg", device="cpu", n_boot=0)
    assert abs(records[0].metrics["test"]["macro_auc"] - 0.5) < 0.2


@pytest.mark.parametrize("head", ["logreg", "mlp"])
def test_regression_probe_picks_the_layer_and_reports_in_target_units(target_store, head):
    from embedstore.heads.target_probe import run_target_probe

    path, valence, splits = target_store
    records, _, _ = run_target_probe(path, "valence", layer="all", head=head, seeds=2, device="cpu", n_boot=100)
    by_layer = {r.layer: r for r in records}
    best = max(records, key=lambda r: r.selection_score)
    assert best.layer == 1 and best.metrics["test"]["r2"] > 0.7
    assert by_layer[0].metrics["test"]["r2"] < 0.3
    train = valence[np.array(splits) == "train"]
    assert best.target_scaling == pytest.approx({"mean": train.mean(), "std": train.std()})
    assert len(best.metrics["test"]["per_seed"]) == 2 and best.head == ("ridge" if head == "logreg" else "mlp")


# ---- the CLI end to end -------------------------------------------------------------------------------


def test_cli_extract_mfcc_then_probe_tags_and_valence(tmp_path):
    from typer.testing import CliRunner

    from embedstore.cli import app

    root = tmp_path / "data"
    root.mkdir()
    _manifest(root, n=40, sep="|")
    store = tmp_path / "s.zarr"
    runner = CliRunner()
    out = runner.invoke(app, ["extract", str(root), "--model", "mfcc", "--store", str(store), "--workers", "0",
                              "--no-progress", "--tag-separator", "|"])
    assert out.exit_code == 0, out.output
    tags = runner.invoke(app, ["probe", "--store", str(store), "--task", "tags", "--head", "logreg", "--layer", "best",
                               "--no-progress"])
    assert tags.exit_code == 0, tags.output
    assert "macro_auc" in tags.output and "on valid" in tags.output
    from embedstore.store.records import load_records

    (tag_rec,) = load_records(store, task="tags")
    assert tag_rec.tags == ["always", "high", "loud"] and tag_rec.metrics["test"]["excluded"] == ["always"]
    assert tag_rec.metrics["test"]["macro_auc"] > 0.7  # pitch and loudness are audible to MFCCs
    valence = runner.invoke(app, ["probe", "--store", str(store), "--task", "valence", "--head", "logreg",
                                  "--no-progress", "--json"])
    assert valence.exit_code == 0, valence.output
    recs = json.loads(valence.output[valence.output.index("["):])
    assert {r["schema"] for r in recs} == {"embedstore.regress/1"}
    assert max(r["selection_score"] for r in recs) > 0.3  # pitch is audible to MFCCs
    bad = runner.invoke(app, ["probe", "--store", str(store), "--task", "valence", "--task-kind", "sort"])
    assert bad.exit_code == 2 and "--task-kind" in bad.output and "regress" in bad.output
    from embedstore.cli import TASK_KIND_CHOICES
    from embedstore.heads.tasks import TASK_KINDS

    assert TASK_KIND_CHOICES == tuple(TASK_KINDS)
