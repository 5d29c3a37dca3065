"""`embedstore export`: npz / parquet / hf files round-trip every value `load_embeddings` returns."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from embedstore import cli
from embedstore.errors import StoreError
from embedstore.store import load_embeddings, open_store
from embedstore.store.export import export_embeddings
from embedstore.store.schema import TrackTable

N, LAYERS, DIM = 7, 3, 5


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A float16 store of 7 clips (one not written), 3 layers of width 5, captions with a comma and unicode."""
    path = tmp_path_factory.mktemp("export") / "s.zarr"
    rng = np.random.default_rng(0)
    ids = [f"t{i}" for i in range(N)]
    table = TrackTable(ids=np.array(ids), paths=np.array([f"{t}.wav" for t in ids]),
                       labels=np.array(["rock", "jazz", "rock", "pop", "jazz", "", "rock"]),
                       splits=np.array(["train", "train", "valid", "test", "test", "train", "test"]),
                       captions=np.array([f"a clip, n°{i}" for i in range(N)]),
                       durations=np.full(N, 1.0), hashes=np.array([f"h{i}" for i in range(N)]))
    X = rng.normal(size=(N, LAYERS, DIM)).astype(np.float16)
    done = np.array([0, 1, 2, 3, 4, 6])
    with open_store(path, "a") as st:
        st.write_tracks("ds", table, {"kind": "folder", "root": "/data", "tasks": {"genre": "label"}})
        meta = {"model_name": "enc", "layer_names": ["a", "b", "c"], "sample_rate": 16000}
        with st.model_writer("ds", "enc", meta, [DIM] * LAYERS, storage_dtype="float16") as w:
            w.write(done, [X[done, i] for i in range(LAYERS)])
    return path, X


def _expected(path, layer, split=None):
    return load_embeddings(path, dataset="ds", model="enc", layer=layer, split=split)


def test_npz_round_trip_every_array(store, tmp_path):
    path, X = store
    out = export_embeddings(path, tmp_path / "e.npz", layer="b", split=["train", "test"])
    emb = _expected(path, "b", ["train", "test"])
    with np.load(out, allow_pickle=False) as z:
        assert z["X"].dtype == np.float16 and z["X"].shape == (5, DIM)
        np.testing.assert_array_equal(z["X"], X[[0, 1, 3, 4, 6], 1])  # row 5 never written
        np.testing.assert_array_equal(z["X"], emb.X)
        for key, want in (("track_ids", emb.track_ids), ("labels", emb.labels), ("splits", emb.splits),
                          ("captions", emb.captions), ("rows", emb.rows)):
            assert z[key].tolist() == [v.item() if hasattr(v, "item") else v for v in want], key
        assert z["captions"][0] == "a clip, n°0"
        assert z["layers"].tolist() == [1] and z["layer_names"].tolist() == ["b"]
        assert str(z["model"]) == "enc" and str(z["dataset"]) == "ds"


def test_npz_all_layers_default_name(store):
    path, X = store
    out = export_embeddings(path, layer="all")
    assert out == path.with_name("s.zarr.enc.Lall.npz")
    with np.load(out) as z:
        np.testing.assert_array_equal(z["X"], X[[0, 1, 2, 3, 4, 6]])
        assert z["layer_names"].tolist() == ["a", "b", "c"]


def test_parquet_round_trip(store, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow not installed (pip install 'embedstore[parquet]')")
    path, X = store
    emb = _expected(path, -1, "test")
    table = pq.read_table(export_embeddings(path, tmp_path / "e.parquet", fmt="parquet", split="test"))
    assert table.column_names == ["track_id", "label", "split", "caption", "row", "embedding"]
    got = np.array(table.column("embedding").to_pylist(), dtype=np.float16)
    np.testing.assert_array_equal(got, emb.X)
    np.testing.assert_array_equal(got, X[[3, 4, 6], 2])
    assert table.column("track_id").to_pylist() == ["t3", "t4", "t6"] == emb.track_ids.tolist()
    assert table.column("label").to_pylist() == emb.labels.tolist()
    assert table.column("split").to_pylist() == ["test"] * 3
    assert table.column("caption").to_pylist() == emb.captions.tolist()
    assert table.column("row").to_pylist() == emb.rows.tolist()
    meta = json.loads(table.schema.metadata[b"embedstore"])
    assert meta["model"] == "enc" and meta["layers"] == [2] and meta["layer_names"] == ["c"]
    assert str(table.schema.field("embedding").type.value_type) == "halffloat"


def test_parquet_several_layers_nested(store, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow not installed")
    path, X = store
    table = pq.read_table(export_embeddings(path, tmp_path / "all.parquet", fmt="parquet", layer="all"))
    got = np.array(table.column("embedding").to_pylist(), dtype=np.float16)
    assert got.shape == (6, LAYERS, DIM)
    np.testing.assert_array_equal(got, X[[0, 1, 2, 3, 4, 6]])


def test_hf_round_trip(store, tmp_path):
    datasets = pytest.importorskip("datasets", reason="datasets not installed (pip install 'embedstore[hf]')")
    path, X = store
    emb = _expected(path, 0)
    ds = datasets.load_from_disk(str(export_embeddings(path, tmp_path / "hf", fmt="hf", layer=0)))
    np.testing.assert_array_equal(np.array(ds["embedding"], dtype=np.float16), emb.X)
    assert ds["track_id"] == emb.track_ids.tolist() and ds["label"] == emb.labels.tolist()
    assert ds["split"] == emb.splits.tolist() and ds["caption"] == emb.captions.tolist()
    assert json.loads(ds.info.description)["layer_names"] == ["a"]


def test_missing_library_names_the_extra(store, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(StoreError, match=r"^--format hf needs datasets: pip install 'embedstore\[hf\]'$"):
        export_embeddings(store[0], tmp_path / "hf", fmt="hf")
    assert not (tmp_path / "hf").exists()


def test_cli_export_and_bad_options(store, tmp_path, capsys):
    path, X = store
    out = tmp_path / "cli.npz"
    assert cli.run(["export", "--store", str(path), "-m", "enc", "--layer", "a", "--split", "valid", "--out", str(out)]) == 0
    with np.load(out) as z:
        np.testing.assert_array_equal(z["X"], X[[2], 0])
    capsys.readouterr()
    assert cli.run(["export", "--store", str(path), "--format", "npy"]) == 2
    assert "--format" in capsys.readouterr().err
    assert cli.run(["export", "--store", str(path), "--split", "nope"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "nope" in err
    assert cli.run(["export", "--store", str(path), "--out", str(tmp_path)]) == 1
    assert "--out" in capsys.readouterr().err
