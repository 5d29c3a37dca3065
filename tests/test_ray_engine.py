"""The Ray engine (``extract --engine ray``) against the local engine, on one local Ray for the module."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ray = pytest.importorskip("ray")

from embedstore.errors import EmbedstoreError  # noqa: E402
from embedstore.extract.datasets import discover_dataset  # noqa: E402
from embedstore.extract.encoders import EncoderRequest, load_encoder  # noqa: E402
from embedstore.extract.pipeline import ExtractOptions, extract_dataset  # noqa: E402
from embedstore.extract.writing import ExtractionRun  # noqa: E402
from embedstore.extract.ray_engine import RayOptions, extract_dataset_ray, run_extract_ray  # noqa: E402
from embedstore.extract.synthetic import make_gtzan_like  # noqa: E402
from embedstore.store import load_embeddings, load_frames, open_store  # noqa: E402
from tiny_models import save_tiny_wav2vec2  # noqa: E402

pytestmark = pytest.mark.ray

OPTS = {"workers": 0, "progress": False, "batch_size": 2}


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray (2 CPUs) for the whole module: Ray takes seconds to start."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # inherited by the Ray workers started below
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """4 genres x 2 clips of 1 s plus a NaN-sample wav: readable header, so only decoding fails."""
    root = make_gtzan_like(tmp_path_factory.mktemp("ray_ds"), n_per_class=2, seconds=1.0, broken=False)
    genre_dir = sorted((root / "genres_original").iterdir())[0]
    sf.write(genre_dir / f"{genre_dir.name}.00077.wav", np.full(2205, np.nan, np.float32), 22050, subtype="FLOAT")
    return root


@pytest.fixture(scope="module")
def tiny_w2v(tmp_path_factory) -> Path:
    return save_tiny_wav2vec2(tmp_path_factory.mktemp("ray_w2v"))


def assert_same_entry(a: Path, b: Path, model: str, frames: list[int] = ()) -> None:
    """Two stores hold the same track table, rows, done masks, failures and frames for ``model``."""
    with open_store(a) as sa, open_store(b) as sb:
        assert list(sa.tracks("gtzan").ids) == list(sb.tracks("gtzan").ids)
        assert sa.failures("gtzan", model) == sb.failures("gtzan", model)
        names = sa.model_attrs("gtzan", model)["layer_names"]
    for name in names:
        ea, eb = load_embeddings(a, model=model, layer=name), load_embeddings(b, model=model, layer=name)
        np.testing.assert_array_equal(ea.track_ids, eb.track_ids)  # same rows done, same order
        np.testing.assert_allclose(ea.X, eb.X, rtol=1e-5, atol=1e-6)
    for layer in frames:
        va, ca, _ = load_frames(a, model=model, layer=layer)
        vb, cb, _ = load_frames(b, model=model, layer=layer)
        np.testing.assert_array_equal(ca, cb)
        np.testing.assert_allclose(va, vb, rtol=1e-5, atol=1e-6)


def test_interrupted_run_resumes_to_the_local_store_and_records_the_failing_file(
    ray_cluster, data_dir, tmp_path, monkeypatch
):
    ds = discover_dataset(data_dir)
    local, remote = tmp_path / "local.zarr", tmp_path / "ray.zarr"
    ref = extract_dataset(ds, [("mfcc", load_encoder("mfcc"))], local, ExtractOptions(**OPTS))

    calls = {"n": 0}
    real_write = ExtractionRun.write

    def interrupted_write(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # Ctrl-C on the driver after two batches were handed to the writer
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(ExtractionRun, "write", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        extract_dataset_ray(ds, [EncoderRequest("mfcc")], remote, ExtractOptions(**OPTS))
    monkeypatch.setattr(ExtractionRun, "write", real_write)
    partial = load_embeddings(remote, model="mfcc", layer=0)
    assert 0 < len(partial.track_ids) < 8  # the rows handed over before the interrupt are durable

    summary = run_extract_ray(data_dir, ["mfcc"], remote, options=ExtractOptions(**OPTS),
                              ray_options=RayOptions(concurrency=1))
    assert summary.models[0].already_done == len(partial.track_ids)
    assert summary.models[0].written == 8 - len(partial.track_ids)
    assert_same_entry(remote, local, "mfcc")
    # the NaN file fails on decoding, exactly as in the local engine
    assert summary.failures == ref.failures and len(summary.failures) == 1
    assert summary.failures[0][0].endswith(".00077.wav") and "nan" in summary.failures[0][1].lower()
    with open_store(remote) as st, open_store(local) as ref_store:
        assert [f[1] for f in st.failures("gtzan", "mfcc")] == [Path(summary.failures[0][0]).stem]
        attrs, ref_attrs = (
            {k: v for k, v in x.model_attrs("gtzan", "mfcc").items() if k != "created"} for x in (st, ref_store)
        )
        assert attrs == ref_attrs  # same entry metadata (model identity, pooling, preprocessing)


def test_two_models_limit_then_full_run_with_frames_equals_local(ray_cluster, data_dir, tiny_w2v, tmp_path):
    # wav2vec2 with 0.4 s windows (1 s clips: 3 windows, the last overlapping) and coarse frames
    ds = discover_dataset(data_dir)
    opts = {**OPTS, "frames_hop": 0.25, "frame_layers": [0, -1]}
    w2v = EncoderRequest("wav2vec2", str(tiny_w2v), window_seconds=0.4, key="tiny")
    mfcc = EncoderRequest("mfcc")
    local, remote = tmp_path / "local.h5", tmp_path / "ray.h5"
    extract_dataset(ds, [(r.store_key, r.load()) for r in (w2v, mfcc)], local, ExtractOptions(**opts))

    # first only mfcc on the first 4 clips, then both models on everything: per-model pending rows
    first = extract_dataset_ray(ds, [mfcc], remote, ExtractOptions(**opts, limit=4), RayOptions(concurrency=1))
    done = first.models[0].written
    assert done + len(first.failures) == 4 and done > 0
    second = extract_dataset_ray(ds, [w2v, mfcc], remote, ExtractOptions(**opts), RayOptions(concurrency=1))
    tiny, mf = second.models
    assert (tiny.already_done, tiny.written) == (0, 8)
    assert (mf.already_done, mf.written) == (done, 8 - done)
    assert len(second.failures) == 1
    assert_same_entry(remote, local, "tiny", frames=[0, -1])
    assert_same_entry(remote, local, "mfcc", frames=[0, -1])


def test_without_ray_the_engine_says_how_to_install_it(data_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(EmbedstoreError, match=r"pip install 'embedstore\[ray\]'"):
        run_extract_ray(data_dir, ["mfcc"], tmp_path / "x.zarr")
    assert not (tmp_path / "x.zarr").exists()


def test_bad_ray_options_are_one_line_errors():
    with pytest.raises(EmbedstoreError, match="--concurrency"):
        RayOptions(concurrency=0)
    with pytest.raises(EmbedstoreError, match="--num-gpus-per-worker"):
        RayOptions(num_gpus_per_worker=-1)
