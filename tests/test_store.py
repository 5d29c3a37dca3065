"""The feature store: every test runs against both backends (Zarr v3 directory and HDF5 file)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from embedstore import __version__
from embedstore.errors import ModelError, StoreError
from embedstore.store import (
    SCHEMA_VERSION,
    TrackTable,
    format_info,
    info,
    load_embeddings,
    load_frames,
    open_store,
)

WORKER = Path(__file__).with_name("store_crash_worker.py")
_spec = importlib.util.spec_from_file_location("store_crash_worker", WORKER)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)

META = {"model_name": "mert", "checkpoint": "m-a-p/MERT-v1-95M", "revision": "abc123",
        "weights_sha256": "f" * 64, "sample_rate": 24000, "frame_rate": 75.0, "pooling": "mean",
        "window_rule": {"seconds": 5.0, "hop": 5.0}, "frame_hop": 0.5,
        "preprocessing": {"mono": True, "resample": "soxr_hq", "peak_normalise": True}}


@pytest.fixture(params=["zarr", "h5"])
def store_path(request, tmp_path) -> Path:
    return tmp_path / f"store.{request.param}"


def table(n: int, start: int = 0) -> TrackTable:
    rows = range(start, start + n)
    return TrackTable(ids=[f"id{i}" for i in rows], paths=[f"genre{i % 2}/{i}.wav" for i in rows],
                      labels=[f"genre{i % 2}" for i in rows], splits=[("train", "test")[i % 2] for i in rows],
                      captions=[f"a song numbered {i}" for i in rows], offsets=[0.5 * i for i in rows],
                      durations=[30.0] * n, hashes=[f"{i:040x}" for i in rows])


def values(rows, width: int, layer: int) -> np.ndarray:
    """``[len(rows), width]`` deterministic embeddings, computed independently of the store."""
    return np.stack([np.random.default_rng(100 * r + layer).standard_normal(width) for r in rows]).astype(np.float32)


def fill(path: Path, n: int = 20, widths=(8, 8, 8), rows=None, dtype: str = "float32", chunk_rows: int = 4,
         meta=META, model: str = "mert", dataset: str = "gtzan") -> None:
    with open_store(path, "a") as st:
        if dataset not in st.datasets():
            st.write_tracks(dataset, table(n), {"kind": "gtzan", "root": "/data", "tasks": {"genre": "label"}})
        with st.model_writer(dataset, model, meta, list(widths), storage_dtype=dtype, chunk_rows=chunk_rows) as w:
            todo = np.arange(n) if rows is None else np.asarray(rows)
            w.write(todo, [values(todo, width, l) for l, width in enumerate(widths)])


# ---- round trip ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip_values_dtypes_metadata(store_path, dtype):
    fill(store_path, n=10, dtype=dtype, chunk_rows=4)
    with open_store(store_path) as st:
        assert st.datasets() == ["gtzan"] and st.models("gtzan") == ["mert"]
        root = st.root_attrs()
        assert root["schema_version"] == SCHEMA_VERSION and root["embedstore_version"] == __version__
        assert st.dataset_attrs("gtzan")["tasks"] == {"genre": "label"}
        assert st.find_datasets("genre") == ["gtzan"] and st.find_datasets("caption") == []
        meta = st.model_attrs("gtzan", "mert")
        for key, value in META.items():
            assert meta[key] == value
        assert meta["layer_widths"] == [8, 8, 8] and meta["storage_dtype"] == dtype
        assert meta["layer_names"] == ["layer_0", "layer_1", "layer_2"] and meta["created"]
        t, ref = st.tracks("gtzan"), table(10)
        for column in ("ids", "paths", "labels", "splits", "captions", "offsets", "durations", "hashes"):
            np.testing.assert_array_equal(getattr(t, column), getattr(ref, column))
    for layer in range(3):
        emb = load_embeddings(store_path, layer=layer)
        assert emb.X.dtype == np.dtype(dtype) and emb.X.shape == (10, 8)
        np.testing.assert_array_equal(emb.X, values(range(10), 8, layer).astype(dtype))
        np.testing.assert_array_equal(emb.track_ids, ref.ids)
        np.testing.assert_array_equal(emb.labels, ref.labels)


def test_frames_round_trip(store_path):
    n = 7
    with open_store(store_path, "a") as st:
        st.write_tracks("caps", table(n), {"kind": "musiccaps", "tasks": ["caption"]})
        with st.model_writer("caps", "clap", {**META, "frame_hop": 1.0}, [4, 6], frame_layers=[-1],
                             max_frames=3, chunk_rows=2) as w:
            frames = np.random.default_rng(0).standard_normal((n, 3, 6)).astype(np.float32)
            counts = np.arange(n) % 3 + 1
            w.write(np.arange(n), [values(range(n), 4, 0), values(range(n), 6, 1)], frames=[frames], frame_counts=counts)
    got, got_counts, meta = load_frames(store_path, "caps", "clap", -1)
    np.testing.assert_array_equal(got, frames)
    np.testing.assert_array_equal(got_counts, counts)
    np.testing.assert_array_equal(meta.captions, table(n).captions)
    assert meta.layer_names == ["layer_1"] and meta.frame_counts is got_counts
    with open_store(store_path) as st:
        assert st.dataset_attrs("caps")["tasks"] == {"caption": "caption"}
        with pytest.raises(StoreError, match="no frames for layer 0"):
            st.read_frames("caps", "clap", 0)


# ---- resume, failures, chunked writing -------------------------------------------------------------
def test_resume_writes_only_pending_rows_and_retries_failures(store_path):
    fill(store_path, n=12, rows=[0, 1, 2, 7, 8])
    with open_store(store_path, "a") as st:
        with st.model_writer("gtzan", "mert", META, [8, 8, 8], chunk_rows=4) as w:
            np.testing.assert_array_equal(w.pending(), [3, 4, 5, 6, 9, 10, 11])
            w.fail(4, "genre0/4.wav: truncated\nor corrupt header")
            assert 4 not in w.pending()  # not offered again by the writer that saw it fail
        assert st.failures("gtzan", "mert") == [(4, "id4", "genre0/4.wav: truncated or corrupt header")]
        with st.model_writer("gtzan", "mert", META, [8, 8, 8]) as w:
            assert 4 in w.pending()  # a failed row is retried by the next run
            rest = w.pending()
            w.write(rest, [values(rest, 8, l) for l in range(3)])
            assert w.pending().size == 0
        assert st.failures("gtzan", "mert") == []  # the successful write cleared it
        assert st.done("gtzan", "mert").all()
    emb = load_embeddings(store_path, "gtzan", "mert", layer=1)
    np.testing.assert_array_equal(emb.X, values(range(12), 8, 1))


def test_complete_chunks_are_written_and_marked_done_before_flush(store_path):
    with open_store(store_path, "a") as st:
        st.write_tracks("gtzan", table(12), {"kind": "gtzan"})
        w = st.model_writer("gtzan", "mert", META, [8], chunk_rows=4)
        w.write([5, 4, 6], [values([5, 4, 6], 8, 0)])  # chunk 1 incomplete: stays buffered
        w.write([7], [values([7], 8, 0)])  # chunk 1 complete: written now
        w.write([0], [values([0], 8, 0)])
        with open_store(store_path) as reader:  # another handle sees only durable rows
            np.testing.assert_array_equal(np.flatnonzero(reader.done("gtzan", "mert")), [4, 5, 6, 7])
        np.testing.assert_array_equal(w.pending(), [1, 2, 3, 8, 9, 10, 11])
        w.close()
        np.testing.assert_array_equal(np.flatnonzero(st.done("gtzan", "mert")), [0, 4, 5, 6, 7])


def test_time_bound_makes_partial_chunks_durable(store_path, monkeypatch):
    from embedstore.store import writer as store_writer

    clock = [0.0]
    monkeypatch.setattr(store_writer, "monotonic", lambda: clock[0])
    with open_store(store_path, "a") as st, open_store(store_path) as reader:
        st.write_tracks("gtzan", table(12), {"kind": "gtzan"})
        with pytest.raises(StoreError, match="flush_seconds"):
            st.model_writer("gtzan", "mert", META, [8], flush_seconds=-1.0)
        assert st.models("gtzan") == []  # refused before the entry was made
        w = st.model_writer("gtzan", "mert", META, [8], chunk_rows=64, flush_seconds=10.0)
        w.write([3, 1], [values([3, 1], 8, 0)])  # t=0: the first row waiting
        clock[0] = 9.9
        w.fail(5, "genre1/5.wav: truncated")
        w.write([2], [values([2], 8, 0)])
        assert reader.done("gtzan", "mert").sum() == 0 and reader.failures("gtzan", "mert") == []
        clock[0] = 10.0  # 10 s after the first waiting row: everything waiting is made durable
        w.write([0], [values([0], 8, 0)])
        np.testing.assert_array_equal(np.flatnonzero(reader.done("gtzan", "mert")), [0, 1, 2, 3])
        assert reader.failures("gtzan", "mert") == [(5, "id5", "genre1/5.wav: truncated")]
        np.testing.assert_array_equal(reader.read_layer("gtzan", "mert", 0, np.arange(4)), values(range(4), 8, 0))
        clock[0] = 15.0  # the clock restarts with the next waiting row
        w.write([4], [values([4], 8, 0)])
        clock[0] = 24.9
        w.write([6], [values([6], 8, 0)])
        np.testing.assert_array_equal(np.flatnonzero(reader.done("gtzan", "mert")), [0, 1, 2, 3])
        w.close()
        np.testing.assert_array_equal(np.flatnonzero(reader.done("gtzan", "mert")), [0, 1, 2, 3, 4, 6])
        np.testing.assert_array_equal(reader.read_layer("gtzan", "mert", 0, np.array([4, 6])), values([4, 6], 8, 0))


# ---- growth ------------------------------------------------------------------------------------------
def test_growth_appends_new_tracks_and_keeps_done_rows(store_path):
    fill(store_path, n=6)
    bigger = table(10)
    shuffled = bigger.select(np.array([9, 3, 0, 7, 1, 2, 8, 4, 5, 6]))  # matching is by id, not position
    with open_store(store_path, "a") as st:
        st.write_tracks("gtzan", shuffled, {"kind": "gtzan", "tasks": {"genre": "label"}})
        t = st.tracks("gtzan")
        np.testing.assert_array_equal(t.ids, [f"id{i}" for i in (0, 1, 2, 3, 4, 5, 9, 7, 8, 6)])
        np.testing.assert_array_equal(st.done("gtzan", "mert"), [True] * 6 + [False] * 4)
        with st.model_writer("gtzan", "mert", META, [8, 8, 8]) as w:
            new = w.pending()
            np.testing.assert_array_equal(new, [6, 7, 8, 9])
            ids = [int(s[2:]) for s in t.ids[new]]
            w.write(new, [values(ids, 8, l) for l in range(3)])
        st.write_tracks("gtzan", table(3), {"kind": "gtzan"})  # a subset of stored tracks changes nothing
        assert st.n_tracks("gtzan") == 10
    emb = load_embeddings(store_path, layer=2)
    np.testing.assert_array_equal(emb.X, values([int(s[2:]) for s in emb.track_ids], 8, 2))


# ---- refusals ----------------------------------------------------------------------------------------
def test_refuses_incompatible_writes(store_path):
    fill(store_path, n=6)
    with open_store(store_path, "a") as st:
        with pytest.raises(StoreError, match="checkpoint"):
            st.model_writer("gtzan", "mert", {**META, "checkpoint": "m-a-p/MERT-v1-330M"}, [8, 8, 8])
        with pytest.raises(StoreError, match="weights_sha256"):
            st.model_writer("gtzan", "mert", {**META, "weights_sha256": "0" * 64}, [8, 8, 8])
        with pytest.raises(StoreError, match="layer_widths"):
            st.model_writer("gtzan", "mert", META, [8, 8, 8, 8])
        with pytest.raises(StoreError, match="storage_dtype"):
            st.model_writer("gtzan", "mert", META, [8, 8, 8], storage_dtype="float16")
        # the entry predates the recorded layer convention: rows stating one are not mixed into it
        with pytest.raises(StoreError, match="layer_convention=.*not recorded"):
            st.model_writer("gtzan", "mert", {**META, "layer_convention": "last layer after the final LayerNorm"},
                            [8, 8, 8])
        other = table(6)
        other.labels[2] = "jazz"
        with pytest.raises(StoreError, match="id2.*label.*jazz"):
            st.write_tracks("gtzan", other, {"kind": "gtzan"})
        with pytest.raises(StoreError, match="more than once"):
            st.write_tracks("new", table(3).select(np.array([0, 1, 1])), {})
        with pytest.raises(StoreError, match="no dataset"):
            st.model_writer("nope", "mert", META, [8])
        with pytest.raises(StoreError, match="float64"):
            st.model_writer("gtzan", "x", META, [8], storage_dtype="float64")
        assert st.models("gtzan") == ["mert"]  # nothing was half-created
        # a refused writer released the lock: another process can still write
        with st.model_writer("gtzan", "wav2vec2+random", {"checkpoint": "facebook/wav2vec2-base"}, [4]):
            pass
    with open_store(store_path) as st:
        with pytest.raises(StoreError, match="read-only"):
            st.write_tracks("gtzan", table(6), {})
    with pytest.raises(StoreError, match="no embedstore store"):
        open_store(store_path.with_name("missing" + store_path.suffix))


def test_a_second_writing_process_is_refused(store_path, monkeypatch):
    from embedstore.store import locking

    fill(store_path, n=4)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from embedstore.store import open_store; "
         "st = open_store(sys.argv[1], 'a'); w = st.model_writer('gtzan', 'mert', {}, [8, 8, 8]); "
         "print('holding', flush=True); sys.stdin.readline(); w.close()", str(store_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding", holder.stderr.read()
        monkeypatch.setattr(locking, "LOCK_TIMEOUT", 0.2)
        with open_store(store_path, "a") as st:
            with pytest.raises(StoreError, match="another process is writing"):
                st.write_tracks("gtzan", table(5), {})
            assert len(load_embeddings(st, layer=0)) == 4  # reading needs no lock
    finally:
        holder.communicate("\n", timeout=30)
    with open_store(store_path, "a") as st:  # released with the holder
        st.write_tracks("gtzan", table(5), {})
        assert st.n_tracks("gtzan") == 5


def _bump_schema(path: Path) -> None:
    """Rewrite the root schema_version with the plain libraries, as a newer embedstore would."""
    if path.suffix == ".h5":
        import h5py

        with h5py.File(path, "r+") as f:
            f.attrs["schema_version"] = json.dumps(SCHEMA_VERSION + 1)
    else:
        import zarr

        zarr.open_group(path, mode="r+").attrs["schema_version"] = SCHEMA_VERSION + 1


def test_refuses_newer_schema(store_path):
    fill(store_path, n=4)
    _bump_schema(store_path)
    for mode in ("r", "a"):
        with pytest.raises(StoreError, match="newer"):
            open_store(store_path, mode)


# ---- loading -----------------------------------------------------------------------------------------
def test_load_embeddings_layers_splits_and_choices(store_path):
    fill(store_path, n=10, rows=[0, 1, 2, 3, 4, 5, 6, 7])  # rows 8, 9 not done
    meta = {**META, "layer_names": ["conv", "t1", "t2"]}
    fill(store_path, n=10, widths=(4, 6, 6), model="clap", meta=meta)
    ref = table(10)
    emb = load_embeddings(store_path, model="mert", layer="all", split="train")
    assert emb.X.shape == (4, 3, 8)  # train rows 0, 2, 4, 6 (8 is not done)
    np.testing.assert_array_equal(emb.rows, [0, 2, 4, 6])
    for layer in range(3):
        np.testing.assert_array_equal(emb.X[:, layer], values([0, 2, 4, 6], 8, layer))
    np.testing.assert_array_equal(emb.splits, ["train"] * 4)
    both = load_embeddings(store_path, model="mert", layer=-1, split=["train", "test"], only_done=False)
    np.testing.assert_array_equal(both.rows, np.arange(10))
    assert np.isnan(both.X[8:]).all()  # never written rows read as NaN
    by_name = load_embeddings(store_path, "gtzan", "clap", layer="t1", split="test")
    by_index = load_embeddings(store_path, "gtzan", "clap", layer=-2, split="test")
    np.testing.assert_array_equal(by_name.X, by_index.X)
    np.testing.assert_array_equal(by_name.X, values(range(1, 10, 2), 6, 1))
    np.testing.assert_array_equal(by_name.labels, ref.labels[1::2])
    assert by_name.layer_names == ["t1"] and by_name.model == "clap" and by_name.dataset == "gtzan"
    some = load_embeddings(store_path, model="clap", layer="0", rows=np.array([7, 2, 2]))
    np.testing.assert_array_equal(some.X, values([7, 2, 2], 4, 0))
    with pytest.raises(StoreError, match="differ in width"):
        load_embeddings(store_path, model="clap", layer="all")
    with pytest.raises(StoreError, match="choose a model.*clap, mert|choose a model.*mert, clap"):
        load_embeddings(store_path)
    with pytest.raises(ModelError, match="layer 3: out of range, model 'mert' has 3 layers"):
        load_embeddings(store_path, model="mert", layer=3)
    with pytest.raises(StoreError, match="no split 'valid'.*test, train"):
        load_embeddings(store_path, model="mert", split="valid")
    fill(store_path, n=5, dataset="other", model="clap", widths=(4, 6, 6), meta=meta)
    with pytest.raises(StoreError, match="choose a dataset.*gtzan, other"):
        load_embeddings(store_path, model="clap")
    assert len(load_embeddings(store_path, model="mert", layer=0)) == 8  # the only dataset with "mert"


def test_info_reports_counts_failures_and_size(store_path):
    fill(store_path, n=9, rows=[0, 1, 2, 3, 4])
    with open_store(store_path, "a") as st, st.model_writer("gtzan", "mert", META, [8, 8, 8]) as w:
        w.fail(6, "genre0/6.wav: empty file")
    d = info(store_path)
    json.dumps(d)  # JSON-able
    assert {"path", "backend", "schema_version", "embedstore_version", "size_bytes", "datasets"} <= set(d)
    assert d["backend"] == ("hdf5" if store_path.suffix == ".h5" else "zarr") and d["size_bytes"] > 0
    ds = d["datasets"][0]
    assert ds["name"] == "gtzan" and ds["tracks"] == 9 and ds["splits"] == {"test": 4, "train": 5}
    m = ds["models"][0]
    assert {"name", "layers", "layer_widths", "done", "failed", "failures", "size_bytes", "metadata"} <= set(m)
    assert (m["layers"], m["layer_widths"], m["done"], m["failed"]) == (3, [8, 8, 8], 5, 1)
    assert m["failures"] == [[6, "id6", "genre0/6.wav: empty file"]]
    assert m["metadata"]["checkpoint"] == META["checkpoint"] and 0 < m["size_bytes"] <= d["size_bytes"]
    text = format_info(d)
    assert "gtzan" in text and "3 x 8" in text and "done 5/9" in text and "empty file" in text
    assert m["codec"] == "none" and "3 x 8 float32 (codec none), done 5/9" in text


def test_info_shows_preprocessing_and_versions(store_path):
    versions = {"python": "3.11.7", "embedstore": "0.1.0", "torch": "2.13.0+cpu", "transformers": "5.24.0",
                "numpy": "2.4.6", "soundfile": "0.14.0", "soxr": "1.1.0", "librosa": "0.11.0",
                "libsndfile": "1.2.2", "zarr": "3.1.6"}
    recorded = {**META, "preprocessing": {"do_normalize": False}, "gain": "none", "versions": versions,
                "decoding": {"mono": "mean over channels", "resampler": "soxr", "resample_quality": "HQ"},
                "windowing": {"window_seconds": 10.0}}
    fill(store_path, n=4, model="new", meta=recorded)
    fill(store_path, n=4, model="old")  # made before the gain and versions were recorded
    models = {m["name"]: m for m in info(store_path)["datasets"][0]["models"]}
    assert models["new"]["versions"] == versions
    assert models["old"]["versions"] == {"embedstore": __version__}
    pre = models["new"]["preprocessing"]
    assert (pre["gain"], pre["resampler"], pre["resample_quality"], pre["sample_rate"], pre["window_seconds"],
            pre["do_normalize"]) == ("none", "soxr", "HQ", 24000, 10.0, False)
    assert models["old"]["preprocessing"]["gain"] == "peak"
    text = format_info(info(store_path)).splitlines()
    new = text.index(next(line for line in text if "model new" in line))
    assert text[new + 1] == ("      preprocessing: gain none; mono: mean over channels; resample: soxr HQ to 24000 Hz; "
                             "windows of 10 s; feature extractor do_normalize false")
    assert text[new + 2] == "      versions: " + ", ".join(f"{k} {v}" for k, v in versions.items())
    old = text.index(next(line for line in text if "model old" in line))
    assert text[old + 1] == "      preprocessing: gain peak (not recorded: made before --gain)"
    assert text[old + 2] == f"      versions: embedstore {__version__}"


def test_plain_libraries_read_the_layout(store_path):
    """docs/store-format.md: the store is readable without embedstore."""
    fill(store_path, n=5, rows=[0, 1, 2])
    if store_path.suffix == ".h5":
        import h5py

        with h5py.File(store_path, "r") as f:
            assert json.loads(f.attrs["datasets"]) == ["gtzan"]
            entry = f["gtzan/models/mert"]
            assert json.loads(entry.attrs["checkpoint"]) == META["checkpoint"]
            X, done = entry["layers/2"][:], entry["done"][:]
            ids = f["gtzan/tracks/id"].asstr()[:]
    else:
        import zarr

        root = zarr.open_group(store_path, mode="r")
        assert root.attrs["datasets"] == ["gtzan"]
        entry = root["gtzan/models/mert"]
        assert entry.attrs["checkpoint"] == META["checkpoint"]
        X, done = entry["layers/2"][:], entry["done"][:]
        ids = root["gtzan/tracks/id"][:]
    np.testing.assert_array_equal(done, [True, True, True, False, False])
    np.testing.assert_array_equal(X[done], values(range(3), 8, 2))
    assert list(ids) == [f"id{i}" for i in range(5)]


# ---- codecs, chunking and the read path -----------------------------------------------------------
@pytest.mark.parametrize("codec, cname", [(None, None), ("none", None), ("lz4", "lz4"), ("zstd:1", "zstd")])
def test_codecs_round_trip_and_plain_zarr_sees_them(tmp_path, codec, cname):
    import zarr

    path = tmp_path / "store.zarr"
    with open_store(path, "a") as st:
        st.write_tracks("gtzan", table(10))
        with st.model_writer("gtzan", "mert", META, [8, 8], chunk_rows=4, codec=codec) as w:
            w.write(np.arange(10), [values(range(10), 8, 0), values(range(10), 8, 1)])
        assert st.model_attrs("gtzan", "mert")["codec"] == {None: "none", "lz4": "lz4:5"}.get(codec, codec)
    layer = zarr.open_array(path / "gtzan/models/mert/layers/1", mode="r")
    compressors = layer.compressors
    assert (len(compressors) == 0) if cname is None else (compressors[0].cname.value == cname)
    if cname is not None:
        assert compressors[0].shuffle.value == "shuffle"
    np.testing.assert_array_equal(layer[:], values(range(10), 8, 1))
    np.testing.assert_array_equal(load_embeddings(path, layer=1).X, values(range(10), 8, 1))


def test_store_with_the_old_zstd_default_and_no_codec_key_still_reads_and_resumes(tmp_path):
    path = tmp_path / "store.zarr"
    fill(path, n=10, rows=range(6))
    with open_store(path, "a") as st:  # rewrite it as an older embedstore left it: zstd chunks, no codec key
        st.model_writer("gtzan", "old", META, [8, 8, 8], chunk_rows=4, codec="zstd:3").close()
        node = "gtzan/models/old"
        attrs = {k: v for k, v in st.backend.read_attrs(node).items() if k != "codec"}
        from embedstore.store.backend import SetAttrs

        st.lock()
        st.backend.apply([SetAttrs(node, attrs)])
        st.unlock()
        with st.model_writer("gtzan", "old", META, [8, 8, 8]) as w:
            w.write(np.arange(10), [values(range(10), 8, l) for l in range(3)])
    import zarr

    assert zarr.open_array(path / "gtzan/models/old/layers/0", mode="r").compressors[0].cname.value == "zstd"
    emb = load_embeddings(path, model="old", layer="all", split="test")
    np.testing.assert_array_equal(emb.X[:, 2], values(range(1, 10, 2), 8, 2))
    assert "codec" not in open_store(path).model_attrs("gtzan", "old")


def test_hdf5_is_never_compressed_and_codec_names_are_checked(tmp_path):
    path = tmp_path / "store.h5"
    with open_store(path, "a") as st:
        st.write_tracks("gtzan", table(4))
        with pytest.raises(StoreError, match="HDF5 stores are uncompressed.*'lz4'"):
            st.model_writer("gtzan", "mert", META, [8], codec="lz4")
        st.model_writer("gtzan", "mert", META, [8], codec="none").close()
        assert st.model_attrs("gtzan", "mert")["codec"] == "none"
    from embedstore.store.schema import check_codec

    assert [check_codec(c) for c in ("LZ4", "zstd", "zstd:9", " none ")] == ["lz4:5", "zstd:3", "zstd:9", "none"]
    for bad in ("gzip", "zstd:0", "zstd:10", "none:1", "lz4:x"):
        with pytest.raises(StoreError, match="not one of none, lz4"):
            check_codec(bad)


def test_default_chunk_rows_target_2_mib_and_fit_small_datasets(tmp_path):
    from embedstore.store.store import default_chunk_rows

    # 2 MiB / (768 * 4 bytes) = 682 rows -> the power of two below, 512; 2 MiB / (65 * 4) = 8065 -> capped at 4096
    assert default_chunk_rows([768] * 13, 4) == 512 and default_chunk_rows([20, 65], 4) == 4096
    assert default_chunk_rows([768] * 13, 2) == 1024  # float16: twice the rows
    # no more than the tracks (at least 16): 100 -> 100, 5 -> 16, 5000 -> 512
    assert [default_chunk_rows([768], 4, n) for n in (100, 5, 5000, 0)] == [100, 16, 512, 16]
    path = tmp_path / "store.zarr"
    with open_store(path, "a") as st:
        st.write_tracks("gtzan", table(100))
        st.model_writer("gtzan", "mert", META, [768, 768]).close()
        assert st.model_attrs("gtzan", "mert")["chunk_rows"] == 100


def test_reads_only_the_chunks_holding_the_rows(tmp_path):
    """A chunk none of the asked rows lives in is never read: corrupt it, and reads around it still work."""
    path = tmp_path / "store.zarr"
    with open_store(path, "a") as st:
        st.write_tracks("gtzan", table(40))
        with st.model_writer("gtzan", "mert", META, [8, 8], chunk_rows=4, codec="none") as w:
            w.write(np.arange(40), [values(range(40), 8, 0), values(range(40), 8, 1)])
    for layer in (0, 1):  # chunk 3 holds rows 12..15
        (path / f"gtzan/models/mert/layers/{layer}/c/3/0").write_bytes(b"not a chunk")
    asked = np.array([30, 1, 21, 2, 1, 9, 39])  # chunks 7, 0, 5, 0, 0, 2, 9; any order, a repeat
    emb = load_embeddings(path, layer=[1, 0], rows=asked)
    np.testing.assert_array_equal(emb.rows, asked)
    np.testing.assert_array_equal(emb.X[:, 0], values(asked, 8, 1))
    np.testing.assert_array_equal(emb.X[:, 1], values(asked, 8, 0))
    with pytest.raises(ValueError):  # the corrupt chunk, once a row of it is asked for
        load_embeddings(path, layer=0, rows=np.array([2, 13]))


def test_load_embeddings_several_layers_by_list(store_path):
    fill(store_path, n=10, widths=(4, 6, 6))
    emb = load_embeddings(store_path, layer=[2, "layer_1", -1], split="train")
    assert emb.X.shape == (5, 3, 6) and emb.layers == [2, 1, 2]
    for k, layer in enumerate((2, 1, 2)):
        np.testing.assert_array_equal(emb.X[:, k], values(range(0, 10, 2), 6, layer))
    every = load_embeddings(store_path, layer=[1, 2])  # all rows: one contiguous range per layer
    np.testing.assert_array_equal(every.X, np.stack([values(range(10), 6, 1), values(range(10), 6, 2)], axis=1))
    with pytest.raises(StoreError, match=r"layers \[0, 1\] .*differ in width \(\[4, 6\]\)"):
        load_embeddings(store_path, layer=[0, 1])
    with pytest.raises(StoreError, match="no layer asked for"):
        load_embeddings(store_path, layer=[])


# ---- crash safety and concurrent readers -------------------------------------------------------------
def _spawn_worker(path: Path, n: int, seed: int, max_sleep: float, *options: str) -> subprocess.Popen:
    """Start a worker (``options``: its flags); it imports, prints "started" and waits for :func:`_go`."""
    return subprocess.Popen([sys.executable, str(WORKER), str(path), str(n), str(seed), str(max_sleep), *options],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _go(proc: subprocess.Popen) -> None:
    assert proc.stdout.readline().strip() == "started", proc.stderr.read()
    proc.stdin.write("go\n")
    proc.stdin.flush()


def _finish(proc: subprocess.Popen) -> int:
    """Wait for a worker to end well; returns the number of rows it wrote."""
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "finished" in out, err
    return int(next(line for line in out.splitlines() if line.startswith("wrote ")).split()[1])


def _expected_layer(ids: np.ndarray, layer: int) -> np.ndarray:
    rows = [int(t[5:]) for t in ids]  # "track0042" -> 42
    return np.stack([worker.layer_values(r, layer) for r in rows]) if rows else np.zeros((0, worker.WIDTHS[layer]))


def _check_readable_and_correct(path: Path) -> int:
    """Read every array of the store in full (so every chunk must decode) and check every done row's
    layers and frames against the independently computed values; returns the number of done rows."""
    try:
        st = open_store(path)
    except StoreError:  # killed before the store's root existed
        return 0
    with st:
        arrays = {a: st.backend.read(a) for a in st.backend.arrays_under("")}
        if worker.DATASET not in st.datasets() or worker.MODEL not in st.models(worker.DATASET):
            return 0
        n, node = st.n_tracks(worker.DATASET), f"{worker.DATASET}/models/{worker.MODEL}"
    done = arrays[f"{node}/done"][:n]
    ids = arrays[f"{worker.DATASET}/tracks/id"][:n][done]
    for layer in range(len(worker.WIDTHS)):
        np.testing.assert_array_equal(arrays[f"{node}/layers/{layer}"][:n][done], _expected_layer(ids, layer))
    frames = [worker.frame_values(int(t[5:])) for t in ids]
    if frames:
        np.testing.assert_array_equal(arrays[f"{node}/frames/{worker.FRAME_LAYERS[0]}"][:n][done], [f[0] for f in frames])
        np.testing.assert_array_equal(arrays[f"{node}/frame_counts"][:n][done], [f[1] for f in frames])
    return int(done.sum())


def _snapshot(path: Path) -> dict:
    with open_store(path) as st:
        node = f"{worker.DATASET}/models/{worker.MODEL}"
        out = {a: st.backend.read(a) for a in st.backend.arrays_under(worker.DATASET)}
        out["failures"] = st.failures(worker.DATASET, worker.MODEL)
        out["attrs"] = {k: v for k, v in st.model_attrs(worker.DATASET, worker.MODEL).items() if k != "created"}
        assert st.backend.shape(f"{node}/done") == (st.n_tracks(worker.DATASET),)
    return out


def _assert_same_store(path: Path, reference: Path) -> dict:
    """Every array, the failure list and the metadata of ``path`` equal those of ``reference``;
    returns the reference's snapshot."""
    got, want = _snapshot(path), _snapshot(reference)
    assert got.keys() == want.keys()
    for key in want:
        if isinstance(want[key], np.ndarray):
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
        else:
            assert got[key] == want[key], key
    return want


def test_sigkill_at_random_moments_then_rerun_equals_uninterrupted_run(store_path, tmp_path):
    n, sleep, rng = 64, 0.01, np.random.default_rng(1)
    reference = tmp_path / f"reference{store_path.suffix}"
    proc = _spawn_worker(reference, n, seed=0, max_sleep=sleep)
    upcoming = _spawn_worker(store_path, n, seed=1, max_sleep=sleep)  # imports while the reference runs
    _go(proc)
    start = time.monotonic()
    _finish(proc)
    duration = time.monotonic() - start  # an uninterrupted run's time, to spread the kills over
    kills = 0
    for attempt in range(4):
        proc, upcoming = upcoming, _spawn_worker(store_path, n, seed=2 + attempt, max_sleep=sleep if attempt < 3 else 0.0)
        _go(proc)
        time.sleep(float(rng.uniform(0.05, 0.6)) * duration)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate(timeout=60)
        _check_readable_and_correct(store_path)  # every chunk decodes, every done row is right
    assert kills >= 2
    _go(upcoming)  # the re-run finishes the job
    _finish(upcoming)
    want = _assert_same_store(store_path, reference)
    assert _check_readable_and_correct(store_path) == n - len(want["failures"])
    leftovers = [p for p in store_path.parent.rglob("*") if p.name.endswith((".partial", ".tmp"))]
    assert leftovers == []


def _done_rows(path: Path) -> np.ndarray:
    """Rows of the worker's model entry marked done (none while the store or entry is being made)."""
    try:
        with open_store(path) as st:
            if worker.DATASET in st.datasets() and worker.MODEL in st.models(worker.DATASET):
                return np.flatnonzero(st.done(worker.DATASET, worker.MODEL))
    except StoreError:
        pass
    return np.zeros(0, dtype=np.int64)


def test_sigkill_after_a_time_bound_flush_keeps_those_rows(store_path, tmp_path):
    # One chunk (64 rows) holds the whole table, so no chunk fills before the end: only the time bound
    # (0.2 s) can make rows durable mid-run. Kill the writer right after its first durability point.
    n, flags = 40, ("--chunk-rows", "64", "--flush-seconds", "0.2", "--no-growth")
    good = n - sum(worker.fails(r) for r in range(n))
    proc = _spawn_worker(store_path, n, 6, 0.1, *flags)
    rerun = _spawn_worker(store_path, n, 7, 0.0, *flags)  # imports while the first one runs
    _go(proc)
    while proc.poll() is None and _done_rows(store_path).size == 0:
        time.sleep(0.01)
    assert proc.poll() is None, "the writer finished before any row was durable"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    kept = _done_rows(store_path)
    assert 0 < kept.size < good  # durable before the end, and the kill did lose the rest
    assert _check_readable_and_correct(store_path) == kept.size
    _go(rerun)
    assert _finish(rerun) == good - kept.size  # the re-run wrote only the rows not kept
    assert set(kept) <= set(_done_rows(store_path))
    reference = tmp_path / f"reference{store_path.suffix}"
    assert worker.run(str(reference), n, seed=0, grow=False, chunk_rows=64) == good
    _assert_same_store(store_path, reference)


def test_reader_runs_while_a_writer_appends(store_path):
    n = 48
    proc = _spawn_worker(store_path, n, seed=3, max_sleep=0.02)
    _go(proc)
    seen: list[int] = []
    while proc.poll() is None:
        try:  # what a probe head does: open, read one layer of the done rows, close
            emb = load_embeddings(store_path, worker.DATASET, worker.MODEL, layer=1)
        except StoreError:  # the store or the model entry is still being created
            continue
        np.testing.assert_array_equal(emb.X, _expected_layer(emb.track_ids, 1))
        seen.append(len(emb))
        time.sleep(0.01)
    _finish(proc)
    assert len([s for s in seen if 0 < s < n - 4]) >= 3  # the reader saw partial progress, all of it right
    assert seen == sorted(seen)  # done rows never disappear
    assert _check_readable_and_correct(store_path) == n - sum(worker.fails(r) for r in range(n))
