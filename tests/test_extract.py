"""End-to-end extraction: dataset folder -> encoders -> store, checked against direct computations."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from embedstore.errors import EmbedstoreError, StoreError
from embedstore.extract.audio import load_audio
from embedstore.extract.datasets import discover_dataset, format_dataset_summary
from embedstore.extract.encoders import EncoderRequest, load_encoder
from embedstore.extract.pipeline import ExtractOptions, extract_dataset, format_summary, run_extract
from embedstore.extract.synthetic import make_gtzan_like
from embedstore.extract.writing import ExtractionRun
from embedstore.store import writer as store_writer
from embedstore.store import format_info, load_embeddings, load_frames, open_store
from embedstore.store import info as store_info
from reference_forward import read_checkpoint, reference_layers
from synth import cut_bytes, make_musiccaps_mostly_missing, write_truncated_pcm
from tiny_models import save_tiny_clap, save_tiny_mert, save_tiny_wav2vec2

BACKENDS = ["zarr", "h5"]


def store_path(tmp_path: Path, backend: str) -> Path:
    return tmp_path / ("s.zarr" if backend == "zarr" else "s.h5")


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory) -> Path:
    """4 genres x 3 clips of 2 s, every file readable, mixed formats and rates."""
    return make_gtzan_like(tmp_path_factory.mktemp("small"), n_per_class=3, seconds=2.0, broken=False)


@pytest.fixture(scope="module")
def tiny_w2v(tmp_path_factory) -> Path:
    return save_tiny_wav2vec2(tmp_path_factory.mktemp("w2v"))


def direct_mean(encoder, wave: np.ndarray) -> list[np.ndarray]:
    """Per-layer mean over time computed independently: each window run alone, frames joined by hand."""
    return [frames.mean(axis=0) for frames in direct_frames(encoder, wave)]


def direct_frames(encoder, wave: np.ndarray) -> list[np.ndarray]:
    """Per-layer joined frame sequence ``[frames, dim]``: each window run alone, the end-aligned last
    window's frames inside the previous window dropped, the rest concatenated by hand."""
    w = int(round(encoder.window_seconds * encoder.sample_rate))
    n = wave.shape[0]
    if n <= w:
        pieces, overlap = [wave], 0.0
    else:
        starts = list(range(0, n - w + 1, w))
        if starts[-1] + w < n:
            overlap = (starts[-1] + w - (n - w)) / w
            starts.append(n - w)
        else:
            overlap = 0.0
        pieces = [wave[s : s + w] for s in starts]
    per_layer: list[list[np.ndarray]] = [[] for _ in range(encoder.num_layers)]
    with torch.inference_mode():
        for k, piece in enumerate(pieces):
            out = encoder(torch.from_numpy(piece[None].copy()), torch.tensor([piece.shape[0]]))
            for layer, h in enumerate(out.hidden_states):
                frames = h[0, : int(out.lengths(layer)[0])].numpy()
                if k == len(pieces) - 1 and overlap > 0:
                    frames = frames[int(round(overlap * frames.shape[0])) :]
                per_layer[layer].append(frames)
    return [np.concatenate(f) for f in per_layer]


@pytest.mark.parametrize("backend", BACKENDS)
def test_mfcc_rows_equal_direct_computation(small_dir, tmp_path, backend):
    path = store_path(tmp_path, backend)
    summary = run_extract(small_dir, ["mfcc"], path, options=ExtractOptions(workers=0, progress=False))
    assert summary.models[0].written == 12 and not summary.failures
    enc = load_encoder("mfcc")
    ds = discover_dataset(small_dir)
    with open_store(path) as st:
        ids = list(st.tracks("gtzan").ids)
        assert sorted(ids) == sorted(t.id for t in ds.tracks)
    for layer, name in enumerate(enc.layer_names):
        emb = load_embeddings(path, model="mfcc", layer=name)
        assert emb.X.shape == (12, enc.layer_widths[layer])
        for track in ds.tracks[:3]:
            row = list(emb.track_ids).index(track.id)
            expect = direct_mean(enc, load_audio(ds.root / track.path, enc.sample_rate))[layer]
            np.testing.assert_allclose(emb.X[row], expect, rtol=1e-4, atol=1e-4)


def test_windowed_encoder_rows_equal_direct_computation(small_dir, tiny_w2v, tmp_path):
    # 0.75 s windows on 2 s clips: windows at 0, 0.75 and an end-aligned one at 1.25 s (overlap 1/3)
    enc = load_encoder("wav2vec2", str(tiny_w2v), window_seconds=0.75)
    ds = discover_dataset(small_dir)
    path = tmp_path / "w.zarr"
    extract_dataset(ds, [("tiny", enc)], path, ExtractOptions(workers=0, progress=False, batch_size=4))
    emb = load_embeddings(path, model="tiny", layer="all")
    assert emb.X.shape == (12, enc.num_layers, enc.layer_widths[0])
    for track in ds.tracks[::4]:
        row = list(emb.track_ids).index(track.id)
        expect = direct_mean(enc, load_audio(ds.root / track.path, enc.sample_rate))
        np.testing.assert_allclose(emb.X[row], np.stack(expect), rtol=1e-4, atol=1e-5)
    meta = open_store(path).model_attrs("gtzan", "tiny")
    assert meta["windowing"]["window_seconds"] == 0.75
    assert meta["layer_names"] == list(enc.layer_names)


def test_mean_std_pooling_and_float16(small_dir, tiny_w2v, tmp_path):
    enc = load_encoder("wav2vec2", str(tiny_w2v), window_seconds=0.75)
    ds = discover_dataset(small_dir)
    path = tmp_path / "p.zarr"
    opts = ExtractOptions(workers=0, progress=False, pooling="mean+std", storage_dtype="float16", limit=3)
    extract_dataset(ds, [("tiny", enc)], path, opts)
    emb = load_embeddings(path, model="tiny", layer=-1)
    assert emb.X.dtype == np.float16 and emb.X.shape == (3, 2 * enc.layer_widths[-1])
    # the std half equals the std of the joined frames computed directly
    track = next(t for t in ds.tracks if t.id == emb.track_ids[0])
    wave = load_audio(ds.root / track.path, enc.sample_rate)
    w = enc.window_samples
    starts = [0, w, wave.shape[0] - w]
    frames = []
    with torch.inference_mode():
        for k, s in enumerate(starts):
            out = enc(torch.from_numpy(wave[None, s : s + w].copy()))
            h = out.hidden_states[-1][0].numpy()
            if k == 2:
                h = h[int(round(h.shape[0] * ((2 * w - (wave.shape[0] - w)) / w))) :]
            frames.append(h)
    joined = np.concatenate(frames)
    d = enc.layer_widths[-1]
    np.testing.assert_allclose(emb.X[0, :d].astype(np.float32), joined.mean(0), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(emb.X[0, d:].astype(np.float32), joined.std(0), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_after_interrupted_run_equals_uninterrupted(small_dir, tiny_w2v, tmp_path, backend, monkeypatch):
    ds = discover_dataset(small_dir)
    enc = load_encoder("wav2vec2", str(tiny_w2v), window_seconds=1.0)
    opts = ExtractOptions(workers=0, progress=False, batch_size=2)
    ref = tmp_path / ("ref.zarr" if backend == "zarr" else "ref.h5")
    extract_dataset(ds, [("tiny", enc)], ref, opts)

    path = store_path(tmp_path, backend)
    calls = {"n": 0}
    real_forward = type(enc).forward

    def flaky_forward(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # what Ctrl-C does in the middle of a run
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(type(enc), "forward", flaky_forward)
    with pytest.raises(KeyboardInterrupt):
        extract_dataset(ds, [("tiny", enc)], path, opts)
    monkeypatch.setattr(type(enc), "forward", real_forward)
    partial = load_embeddings(path, model="tiny", layer=0)
    assert 0 < len(partial.track_ids) < 12  # some rows were kept, the rest is missing

    summary = extract_dataset(ds, [("tiny", enc)], path, opts)
    assert summary.models[0].already_done == len(partial.track_ids)
    assert summary.models[0].written == 12 - len(partial.track_ids)
    a = load_embeddings(path, model="tiny", layer="all")
    b = load_embeddings(ref, model="tiny", layer="all")
    order_a, order_b = np.argsort(a.track_ids), np.argsort(b.track_ids)
    np.testing.assert_array_equal(a.track_ids[order_a], b.track_ids[order_b])
    np.testing.assert_allclose(a.X[order_a], b.X[order_b], rtol=1e-5, atol=1e-6)
    # a third run has nothing left to do
    again = extract_dataset(ds, [("tiny", enc)], path, opts)
    assert again.models[0].written == 0 and again.models[0].already_done == 12


@pytest.mark.parametrize("backend", BACKENDS)
def test_time_bound_makes_rows_durable_before_a_chunk_fills(small_dir, tmp_path, backend, monkeypatch):
    # MFCC's chunks hold 4096 rows, so on 12 clips no chunk fills before the end: only the time bound
    # makes rows durable mid-run. A fake clock advances 1 s per block of 2 clips; with
    # --flush-seconds 2.5 the 4th block's write (3 s after the 1st) flushes the 8 rows of blocks 1-4.
    # A copy of the store taken just before the 6th block is what a SIGKILL then would leave behind.
    ds = discover_dataset(small_dir)
    enc = load_encoder("mfcc")
    opts = ExtractOptions(workers=0, progress=False, batch_size=2, flush_seconds=2.5)
    ref = tmp_path / f"ref.{backend}"
    extract_dataset(ds, [("mfcc", enc)], ref, opts)

    path, killed = store_path(tmp_path, backend), tmp_path / f"killed.{backend}"
    clock, real_write = [0.0], ExtractionRun.write

    def timed_write(self, *args, **kwargs):
        clock[0] += 1.0
        if clock[0] == 6.0:
            (shutil.copytree if backend == "zarr" else shutil.copyfile)(path, killed)
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(store_writer, "monotonic", lambda: clock[0])
    monkeypatch.setattr(ExtractionRun, "write", timed_write)
    assert extract_dataset(ds, [("mfcc", enc)], path, opts).models[0].written == 12
    with open_store(killed) as st:
        kept = np.flatnonzero(st.done("gtzan", "mfcc"))
    np.testing.assert_array_equal(kept, np.arange(8))  # rows are run in store order, 2 per block

    resumed = extract_dataset(ds, [("mfcc", enc)], killed, opts).models[0]
    assert (resumed.already_done, resumed.written) == (8, 4)  # the kept rows are not redone
    for layer in range(enc.num_layers):
        a = load_embeddings(killed, model="mfcc", layer=layer)
        b = load_embeddings(ref, model="mfcc", layer=layer)
        np.testing.assert_array_equal(a.track_ids, b.track_ids)
        np.testing.assert_allclose(a.X, b.X, rtol=1e-6, atol=1e-6)
    with pytest.raises(EmbedstoreError, match="--flush-seconds"):
        ExtractOptions(flush_seconds=-1.0)


def test_bad_files_are_recorded_and_the_run_goes_on(tmp_path, capsys):
    root = make_gtzan_like(tmp_path / "ds", n_per_class=2, seconds=1.0, broken=True)
    genre_dir = next((root / "genres_original").iterdir())
    # readable header, unusable samples: discovery keeps it, decoding fails
    nan_file = genre_dir / f"{genre_dir.name}.00077.wav"
    sf.write(nan_file, np.full(2205, np.nan, dtype=np.float32), 22050, subtype="FLOAT")
    silent = genre_dir / f"{genre_dir.name}.00078.wav"
    sf.write(silent, np.zeros(22050, dtype=np.float32), 22050)
    path = tmp_path / "s.zarr"
    summary = run_extract(root, ["mfcc"], path, options=ExtractOptions(workers=0, progress=True))
    err = capsys.readouterr().err
    assert summary.models[0].written == 9  # 8 clips + the silent one
    assert summary.failed == 5  # 4 unreadable at discovery + the NaN file while decoding
    assert f"{nan_file.stem}.wav" in err
    assert "silent" in err
    with open_store(path) as st:
        failures = st.failures("gtzan", "mfcc")
        assert [f[1] for f in failures] == [nan_file.stem]
        assert len(st.dataset_attrs("gtzan")["skipped"]) == 4
    emb = load_embeddings(path, model="mfcc", layer="mfcc")
    assert nan_file.stem not in set(emb.track_ids) and silent.stem in set(emb.track_ids)
    assert np.isfinite(emb.X).all()
    with pytest.raises(EmbedstoreError, match="strict"):
        run_extract(root, ["mfcc"], tmp_path / "strict.zarr", options=ExtractOptions(workers=0, progress=False, strict=True))


def test_two_models_share_one_track_table_and_limit(small_dir, tiny_w2v, tmp_path):
    ds = discover_dataset(small_dir)
    w2v = load_encoder("wav2vec2", str(tiny_w2v))
    mfcc = load_encoder("mfcc")
    path = tmp_path / "two.h5"
    summary = extract_dataset(ds, [("tiny", w2v), ("mfcc", mfcc)], path, ExtractOptions(workers=1, progress=False, limit=5))
    assert [m.written for m in summary.models] == [5, 5]
    with open_store(path) as st:
        assert st.datasets() == ["gtzan"]
        assert sorted(st.models("gtzan")) == ["mfcc", "tiny"]
        assert len(st.tracks("gtzan")) == 5
    a = load_embeddings(path, model="tiny", layer=0)
    b = load_embeddings(path, model="mfcc", layer=0)
    np.testing.assert_array_equal(a.track_ids, b.track_ids)
    np.testing.assert_array_equal(a.labels, b.labels)


@pytest.mark.parametrize("pooling", ["mean", "mean+std"])
def test_frame_sequences_at_a_coarse_hop(small_dir, tmp_path, pooling):
    path = tmp_path / "f.zarr"
    run_extract(small_dir, ["mfcc"], path, options=ExtractOptions(workers=0, progress=False, frames_hop=0.5,
                                                                  frame_layers=[0, -1], limit=2, pooling=pooling))
    values, counts, meta = load_frames(path, model="mfcc", layer=0)
    enc = load_encoder("mfcc")
    # frames are time bins of the layer, never pooled moments: as wide as the layer whatever the pooling
    assert values.shape == (2, 4, enc.layer_widths[0]) and list(counts) == [4, 4]  # 2 s at 0.5 s per frame
    pooled = load_embeddings(path, model="mfcc", layer=0).X
    assert pooled.shape[1] == enc.layer_widths[0] * (2 if pooling == "mean+std" else 1)
    track_path = next(t.path for t in discover_dataset(small_dir).tracks if t.id == meta.track_ids[0])
    wave = load_audio(small_dir / track_path, enc.sample_rate)
    with torch.inference_mode():
        h = enc(torch.from_numpy(wave[None])).hidden_states[0][0].numpy()
    per_bin = int(round(0.5 * enc.frame_rate))
    np.testing.assert_allclose(values[0, 0], h[:per_bin].mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(values[0, 3], h[3 * per_bin :].mean(0), rtol=1e-4, atol=1e-4)


def test_bad_options_are_one_line_errors(small_dir, tmp_path):
    with pytest.raises(EmbedstoreError, match="unknown|known"):
        run_extract(small_dir, ["not-a-model"], tmp_path / "x.zarr")
    with pytest.raises(EmbedstoreError, match="--frame-layers 99"):
        run_extract(small_dir, ["mfcc"], tmp_path / "x.zarr", options=ExtractOptions(workers=0, frames_hop=0.5, frame_layers=[99]))
    with pytest.raises(EmbedstoreError, match="--batch-size"):
        ExtractOptions(batch_size=0)
    copy = tmp_path / "copy"
    shutil.copytree(small_dir, copy)
    run_extract(copy, ["mfcc"], tmp_path / "y.zarr", options=ExtractOptions(workers=0, progress=False, limit=2))
    # the same store entry refuses a different checkpoint
    with pytest.raises(EmbedstoreError):
        run_extract(copy, [EncoderRequest("wav2vec2", str(small_dir), key="mfcc")], tmp_path / "y.zarr")


# ---- input gain: the decoded amplitude reaches the encoders unchanged unless --gain peak ----------------

MERT_SR = 24_000
TINY_MERT_CONV = {"feat_extract_norm": "layer", "conv_bias": True}


@pytest.fixture(scope="module")
def gain_dir(tmp_path_factory) -> Path:
    """A manifest of one 1 s clip ``x`` at MERT's rate and its quiet copy ``0.1 * x`` (float WAV: exact)."""
    root = tmp_path_factory.mktemp("gain")
    t = np.arange(MERT_SR) / MERT_SR
    rng = np.random.default_rng(7)
    x = (0.6 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 1330 * t)
         + 0.1 * rng.standard_normal(t.size)).astype(np.float32)
    sf.write(root / "loud.wav", x, MERT_SR, subtype="FLOAT")
    sf.write(root / "quiet.wav", (np.float32(0.1) * x).astype(np.float32), MERT_SR, subtype="FLOAT")
    (root / "manifest.csv").write_text("path,split\nloud.wav,train\nquiet.wav,train\n", encoding="utf-8")
    return root


# the first conv's bias, set in the checkpoint and the reference alike (transformers initialises it to 0)
FIRST_CONV_BIAS = "feature_extractor.conv_layers.0.conv.bias"


@pytest.fixture(scope="module")
def tiny_mert_dir(tmp_path_factory) -> Path:
    # MERT-v1's feature extractor: do_normalize false. MERT-v1-330M's conv stack (layer norm, trained conv
    # bias) is not gain-invariant; 95M's (group norm over time of a bias-free conv) is, up to the norm's epsilon.
    directory = save_tiny_mert(tmp_path_factory.mktemp("mert"), do_normalize=False, **TINY_MERT_CONV)
    state = torch.load(directory / "pytorch_model.bin", weights_only=True)
    state[FIRST_CONV_BIAS] = torch.linspace(-0.5, 0.5, state[FIRST_CONV_BIAS].numel())
    torch.save(state, directory / "pytorch_model.bin")
    return directory


def reference_layer_means(checkpoint: Path, wave: np.ndarray) -> np.ndarray:
    """``[layers, dim]``: the tiny MERT's forward pass written out (tests/reference_forward.py) on ``wave``,
    each layer's frames averaged."""
    weights, config = read_checkpoint(checkpoint)
    with torch.inference_mode():
        layers = reference_layers(weights, config, torch.from_numpy(wave.astype(np.float32)))
    return np.stack([h.numpy().mean(axis=0) for h in layers])


def _rows(path: Path, model: str) -> dict[str, np.ndarray]:
    """``{track id: [layers, dim]}`` (``[sum of widths]``, layers joined, where the widths differ)."""
    n = len(open_store(path).model_attrs("gain", model)["layer_widths"])
    per_layer = [load_embeddings(path, model=model, layer=i) for i in range(n)]
    join = np.stack if len({e.X.shape[1] for e in per_layer}) == 1 else np.concatenate
    return {tid: join([e.X[i] for e in per_layer]).astype(np.float32) for i, tid in enumerate(per_layer[0].track_ids)}


def _gain_run(gain_dir: Path, path: Path, gain: str, encoders) -> None:
    ds = discover_dataset(gain_dir, name="gain")
    extract_dataset(ds, encoders, path, ExtractOptions(workers=0, progress=False, gain=gain))


def test_quiet_clip_gives_the_reference_models_output_for_its_gain(gain_dir, tiny_mert_dir, tmp_path):
    mert = load_encoder("mert", str(tiny_mert_dir))
    assert mert.describe()["preprocessing"]["do_normalize"] is False
    path = tmp_path / "none.zarr"
    _gain_run(gain_dir, path, "none", [("mert", mert)])
    rows = _rows(path, "mert")
    x, _ = sf.read(gain_dir / "loud.wav", dtype="float32")
    quiet, _ = sf.read(gain_dir / "quiet.wav", dtype="float32")
    np.testing.assert_allclose(rows["quiet"], reference_layer_means(tiny_mert_dir, quiet), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rows["loud"], reference_layer_means(tiny_mert_dir, x), rtol=1e-4, atol=1e-5)
    # the quiet copy is a different input to MERT: its embeddings differ from the loud copy's
    assert np.abs(rows["quiet"] - rows["loud"]).max() > 0.1
    meta = open_store(path).model_attrs("gain", "mert")
    assert meta["gain"] == "none" and meta["decoding"]["gain"] == "none"
    assert meta["decoding"]["resampler"] == "soxr" and meta["decoding"]["resample_quality"] == "HQ"


def test_gain_peak_makes_quiet_and_loud_copies_equal(gain_dir, tiny_mert_dir, tmp_path):
    mert = load_encoder("mert", str(tiny_mert_dir))
    path = tmp_path / "peak.zarr"
    _gain_run(gain_dir, path, "peak", [("mert", mert)])
    rows = _rows(path, "mert")
    x, _ = sf.read(gain_dir / "loud.wav", dtype="float32")
    np.testing.assert_allclose(rows["loud"], reference_layer_means(tiny_mert_dir, x / np.abs(x).max()), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rows["quiet"], rows["loud"], rtol=1e-4, atol=1e-5)
    assert open_store(path).model_attrs("gain", "mert")["gain"] == "peak"


def test_mert_without_preprocessor_config_feeds_the_waveform_as_decoded(gain_dir, tiny_mert_dir, tmp_path):
    # MERT-v1's published preprocessor_config.json has do_normalize false: the built-in default must agree
    bare = shutil.copytree(tiny_mert_dir, tmp_path / "bare")
    (bare / "preprocessor_config.json").unlink()
    mert = load_encoder("mert", str(bare))
    assert mert.describe()["preprocessing"]["do_normalize"] is False
    path = tmp_path / "bare.zarr"
    _gain_run(gain_dir, path, "none", [("mert", mert)])
    quiet, _ = sf.read(gain_dir / "quiet.wav", dtype="float32")
    np.testing.assert_allclose(_rows(path, "mert")["quiet"], reference_layer_means(tiny_mert_dir, quiet), rtol=1e-4, atol=1e-5)


def test_clap_sees_the_decoded_amplitude(gain_dir, tmp_path):
    clap = load_encoder("clap", str(save_tiny_clap(tmp_path / "clap")))
    for gain, equal in (("none", False), ("peak", True)):
        path = tmp_path / f"clap-{gain}.zarr"
        _gain_run(gain_dir, path, gain, [("clap", clap)])
        rows = _rows(path, "clap")
        assert np.allclose(rows["quiet"], rows["loud"], rtol=1e-4, atol=1e-5) == equal, gain


def test_a_different_gain_is_refused_in_an_existing_entry(small_dir, tmp_path, monkeypatch):
    import embedstore.extract.writing as writing

    path = tmp_path / "g.zarr"

    def opts(**changes) -> ExtractOptions:
        return ExtractOptions(**{"workers": 0, "progress": False, "limit": 2, **changes})

    run_extract(small_dir, ["mfcc"], path, options=opts())
    with pytest.raises(StoreError, match=r"extracted with --gain none, not --gain peak") as err:
        run_extract(small_dir, ["mfcc"], path, options=opts(gain="peak", limit=3))
    assert "\n" not in str(err.value)
    with pytest.raises(EmbedstoreError, match="--gain must be one of none, peak"):
        ExtractOptions(gain="loud")

    # an entry written before the gain was recorded: peak-normalised, with the old one-line summary
    real = writing.model_metadata

    def old_metadata(*args, **kwargs):
        meta = real(*args, **kwargs)
        for key in ("gain", "decoding", "versions"):
            meta.pop(key)
        meta["audio_preprocessing"] = ("decode (soundfile) -> mono (channel mean) -> resample (soxr HQ) "
                                       "-> peak-normalise to [-1, 1]")
        return meta

    old = tmp_path / "old.zarr"
    monkeypatch.setattr(writing, "model_metadata", old_metadata)
    run_extract(small_dir, ["mfcc"], old, options=opts(gain="peak"))
    monkeypatch.setattr(writing, "model_metadata", real)
    with pytest.raises(StoreError, match="extracted with --gain peak, not --gain none"):
        run_extract(small_dir, ["mfcc"], old, options=opts(limit=3))
    resumed = run_extract(small_dir, ["mfcc"], old, options=opts(limit=3, gain="peak"))
    assert (resumed.models[0].already_done, resumed.models[0].written) == (2, 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_entry_records_versions_and_info_shows_them(small_dir, tmp_path, backend):
    import importlib.metadata
    import sys

    path = store_path(tmp_path, backend)
    run_extract(small_dir, ["mfcc"], path, options=ExtractOptions(workers=0, progress=False, limit=1))
    versions = open_store(path).model_attrs("gtzan", "mfcc")["versions"]
    store_package = "zarr" if backend == "zarr" else "h5py"
    for package in ("torch", "transformers", "numpy", store_package, "soundfile", "soxr", "librosa", "embedstore"):
        assert versions[package] == importlib.metadata.version(package), package
    assert versions["python"] == "{}.{}.{}".format(*sys.version_info[:3])
    assert f"libsndfile-{versions['libsndfile']}" == sf._ffi.string(sf._snd.sf_version_string()).decode()
    text = format_info(store_info(path))
    assert f"torch {versions['torch']}" in text and f"{store_package} {versions[store_package]}" in text
    assert f"libsndfile {versions['libsndfile']}" in text
    assert "preprocessing: gain none; mono: mean over channels; resample: soxr HQ to 22050 Hz" in text
# ---- bad and unusual files -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_mert(tmp_path_factory) -> Path:
    return save_tiny_mert(tmp_path_factory.mktemp("mert"))


SHORT_SR = 16_000
#: clip name -> samples at 16 kHz; the tiny conv stack's receptive field is 345 samples (see
#: tests/test_encoders.py), so at MERT's 24 kHz the 300-sample clip (450 samples) is long enough
SHORT_CLIPS = {"n1": 1, "n100": 100, "n300": 300, "n400": 400}


@pytest.fixture(scope="module")
def short_dir(tmp_path_factory) -> Path:
    """A manifest dataset: 4 normal 0.5 s clips, one silent 0.5 s clip and the clips of SHORT_CLIPS."""
    root = tmp_path_factory.mktemp("short")
    rng = np.random.default_rng(0)
    sizes = {"a0": 8000, "a1": 8000, "b0": 8000, "b1": 8000, **SHORT_CLIPS}
    for name, n in sizes.items():
        sf.write(root / f"{name}.wav", rng.uniform(-0.5, 0.5, n).astype(np.float32), SHORT_SR)
    sf.write(root / "silent.wav", np.zeros(8000, np.float32), SHORT_SR)
    lines = ["path,label"] + [f"{name}.wav,{'ab'[i % 2]}" for i, name in enumerate([*sizes, "silent"])]
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root


def _failed_paths(st, dataset: str, model: str) -> dict[str, str]:
    table = st.tracks(dataset)
    return {str(table.paths[row]): reason for row, _, reason in st.failures(dataset, model)}


def test_clips_too_short_for_an_encoder_fail_for_that_encoder(short_dir, tiny_w2v, tiny_mert, tmp_path, capsys):
    w2v, mert = load_encoder("wav2vec2", str(tiny_w2v)), load_encoder("mert", str(tiny_mert))
    ds = discover_dataset(short_dir)
    path = tmp_path / "short.zarr"
    summary = extract_dataset(ds, [("w2v", w2v), ("mert", mert)], path, ExtractOptions(workers=0, progress=True))
    err = capsys.readouterr().err
    # each bad file named once; a clip refused by both encoders gives both reasons
    assert sorted(p for p, _ in summary.failures) == ["n1.wav", "n100.wav", "n300.wav"]
    reasons = dict(summary.failures)
    assert re.search(r"too short for wav2vec2: 100 samples .*needs at least 345", reasons["n100.wav"])
    assert re.search(r"too short for mert: 150 samples .*needs at least 345", reasons["n100.wav"])
    assert reasons["n300.wav"].startswith("too short for wav2vec2: 300 samples") and "mert" not in reasons["n300.wav"]
    assert [m.written for m in summary.models] == [6, 7]  # 4 normal + silent + n400 (+ n300 for MERT)
    assert [m.silent for m in summary.models] == [1, 1] and "silent.wav: silent clip" in err
    with open_store(path) as st:
        w2v_failed, mert_failed = _failed_paths(st, ds.name, "w2v"), _failed_paths(st, ds.name, "mert")
        assert sorted(w2v_failed) == ["n1.wav", "n100.wav", "n300.wav"] and sorted(mert_failed) == ["n1.wav", "n100.wav"]
        assert "2 samples" in mert_failed["n1.wav"] and "1 samples" in w2v_failed["n1.wav"]
    listed = {f["path"]: f for f in store_info(path)["datasets"][0]["failures"]}
    assert sorted(listed) == ["n1.wav", "n100.wav", "n300.wav"] and listed["n300.wav"]["models"] == ["w2v"]
    # the 400-sample clip gives one frame: its row is that frame, computed directly
    emb = load_embeddings(path, model="w2v", layer="all")
    row = list(emb.track_ids).index(next(t.id for t in ds.tracks if t.path == "n400.wav"))
    expect = direct_mean(w2v, load_audio(short_dir / "n400.wav", SHORT_SR))
    np.testing.assert_allclose(emb.X[row], np.stack(expect), rtol=1e-4, atol=1e-5)


def _ray_flow(ds, loads, path, options):
    """The Ray engine's stages run in this process, without Ray: decode items -> actor -> driver."""
    from embedstore.extract import ray_engine
    from embedstore.extract.writing import open_extraction

    encoders = [(load.store_key, load.load("cpu")) for load in loads]
    with open_extraction(ds, encoders, path, options) as run:
        rates = sorted({enc.sample_rate for enc in run.encoders})
        decoded = [ray_engine._decode_item(item, rates, options.gain) for item in ray_engine.pending_items(run)]
        batch = {}
        for key in decoded[0]:
            column = np.empty(len(decoded), dtype=object)
            column[:] = [d[key] for d in decoded]
            batch[key] = column if key.startswith("wave_") else np.asarray(list(column))
        actor = ray_engine.EncoderActor(**ray_engine.actor_arguments(run, loads, options, "cpu"))
        ray_engine._write_batch(run, actor(batch))
    return run.finish()


def test_ray_engine_routes_short_clips_like_the_local_engine(short_dir, tiny_w2v, tiny_mert, tmp_path):
    ds = discover_dataset(short_dir)
    options = ExtractOptions(workers=0, progress=False)
    loads = [EncoderRequest("wav2vec2", str(tiny_w2v), key="w2v"), EncoderRequest("mert", str(tiny_mert), key="mert")]
    ray_summary = _ray_flow(ds, loads, tmp_path / "ray.zarr", options)
    local = extract_dataset(ds, [(load.store_key, load.load("cpu")) for load in loads], tmp_path / "local.zarr",
                            options)
    assert sorted(ray_summary.failures) == sorted(local.failures) and len(local.failures) == 3
    assert [m.written for m in ray_summary.models] == [6, 7]
    with open_store(tmp_path / "ray.zarr") as a, open_store(tmp_path / "local.zarr") as b:
        for model in ("w2v", "mert"):
            assert _failed_paths(a, ds.name, model) == _failed_paths(b, ds.name, model)
            np.testing.assert_array_equal(a.done(ds.name, model), b.done(ds.name, model))


def test_one_failure_list_names_every_bad_file_once(tmp_path):
    root = make_gtzan_like(tmp_path / "ds", n_per_class=2, seconds=1.0, broken=True)  # 4 unreadable files
    genre_dir = next((root / "genres_original").iterdir())
    g = genre_dir.name
    write_truncated_pcm(genre_dir / f"{g}.00080.wav", seconds=30.0, keep_seconds=0.4)  # caught while scanning
    mp3 = genre_dir / f"{g}.00081.mp3"  # caught while decoding: the Xing header promises 3 s
    sf.write(mp3, np.random.default_rng(0).uniform(-0.5, 0.5, 3 * 22050).astype(np.float32), 22050)
    cut_bytes(mp3, mp3.stat().st_size // 3)
    sf.write(genre_dir / f"{g}.00082.wav", np.full(2205, np.nan, np.float32), 22050, subtype="FLOAT")
    path = tmp_path / "s.zarr"
    summary = run_extract(root, ["mfcc"], path, options=ExtractOptions(workers=0, progress=False))
    names = [p for p, _ in summary.failures]
    assert len(names) == len(set(names)) == 7 and summary.skipped == 5
    reasons = dict(summary.failures)
    rel = f"genres_original/{g}/{g}"
    assert reasons[f"{rel}.00080.wav"] == "truncated: header says 30.0 s, file holds 0.4 s"
    assert reasons[f"{rel}.00081.mp3"].startswith("truncated: header says 3.0 s, file holds ")
    d = store_info(path)
    listed = {f["path"]: f for f in d["datasets"][0]["failures"]}
    assert sorted(listed) == sorted(names)
    assert sorted(f["stage"] for f in listed.values()) == ["extract"] * 2 + ["scan"] * 5
    assert listed[f"{rel}.00081.mp3"]["models"] == ["mfcc"]
    # the texts name each bad file once
    for text in (format_info(d), format_summary(summary)):
        for name in names:
            assert text.count(name) == 1, (name, text)
    assert "7 file(s) not extracted (5 skipped while scanning, 2 failed" in format_summary(summary)


def test_mostly_missing_musiccaps_gives_short_summaries_grouped_by_reason(tmp_path, capsys):
    root = make_musiccaps_mostly_missing(tmp_path / "mc", n_rows=600, n_present=9, n_wrong_length=3)
    ds = discover_dataset(root)
    assert len(ds.tracks) == 6 and len(ds.skipped) == 594
    wrong = sorted(p for p, r in ds.skipped if not p.startswith("missing"))
    assert len(wrong) == 3
    text = format_dataset_summary(ds)
    groups = text.split("skipped (594):\n")[1].splitlines()
    assert len(groups) == 2  # one line per reason
    assert groups[0].startswith("  591 x ") and "e.g. missing00000, missing00001, missing00002 and 588 more" in groups[0]
    assert groups[1].startswith("  3 x ") and all(p in groups[1] for p in wrong)
    every = format_dataset_summary(ds, verbose=True)
    assert all(p in every for p, _ in ds.skipped)

    path = tmp_path / "mc.zarr"
    summary = extract_dataset(ds, [("mfcc", load_encoder("mfcc"))], path, ExtractOptions(workers=0, progress=False))
    assert len(capsys.readouterr().err.splitlines()) <= 4  # the scan's skipped files, grouped
    report = format_summary(summary)
    assert len(report.splitlines()) == 5 and "594 file(s) not extracted (594 skipped while scanning, 0 failed)" in report
    assert all(p in format_summary(summary, verbose=True) for p, _ in ds.skipped)
    d = store_info(path)
    assert len(d["datasets"][0]["failures"]) == 594
    assert len(format_info(d).splitlines()) <= 8
    assert all(p in format_info(d, verbose=True) for p, _ in ds.skipped)

    from typer.testing import CliRunner

    from embedstore.cli import app

    short = CliRunner().invoke(app, ["datasets", str(root)])
    full = CliRunner().invoke(app, ["datasets", str(root), "--verbose"])
    assert short.exit_code == full.exit_code == 0
    assert len(short.output.splitlines()) < 20 and len(full.output.splitlines()) > 594


def test_reasons_group_by_kind_and_files_are_named_once():
    from embedstore.store.failures import failure_list, format_reason_groups, group_reasons

    items = [("a.wav", "truncated: header says 30.0 s, file holds 0.4 s"),
             ("b.wav", "truncated: header says 29.5 s, file holds 3.1 s"),
             ("c.wav", "corrupt or truncated audio (libsndfile: Malformed 'fmt ' chunk)"),
             ("d.wav", "corrupt or truncated audio (libsndfile: No 'data' chunk marker)"),
             ("e.wav", "duplicate track id 'e' (same clip as x/e.wav)"),
             *[(f"m{i}", "missing on disk") for i in range(5)]]
    groups = group_reasons(items)
    assert [(g.count, g.label) for g in groups] == [
        (5, "missing on disk"), (2, "truncated: header says <n> s, file holds <n> s"),
        (2, "corrupt or truncated audio"), (1, "duplicate track id 'e' (same clip as x/e.wav)")]
    assert format_reason_groups(items) == [
        "  5 x missing on disk, e.g. m0, m1, m2 and 2 more",
        "  2 x truncated: header says <n> s, file holds <n> s:",
        "      a.wav: truncated: header says 30.0 s, file holds 0.4 s",
        "      b.wav: truncated: header says 29.5 s, file holds 3.1 s",
        "  2 x corrupt or truncated audio:",
        "      c.wav: corrupt or truncated audio (libsndfile: Malformed 'fmt ' chunk)",
        "      d.wav: corrupt or truncated audio (libsndfile: No 'data' chunk marker)",
        "  e.wav: duplicate track id 'e' (same clip as x/e.wav)"]
    assert format_reason_groups(items, verbose=True)[:6] == ["  5 x missing on disk:", *[f"      m{i}" for i in range(5)]]
    listed = failure_list([("s.wav", "empty file (0 bytes)")],
                          {"w2v": [("x.wav", "too short for wav2vec2: 1 samples"), ("y.wav", "not audio")],
                           "mert": [("y.wav", "not audio"), ("s.wav", "stale row")]})
    assert listed == [
        {"path": "s.wav", "stage": "scan", "reason": "empty file (0 bytes)", "models": []},
        {"path": "x.wav", "stage": "extract", "reason": "too short for wav2vec2: 1 samples", "models": ["w2v"]},
        {"path": "y.wav", "stage": "extract", "reason": "not audio", "models": ["w2v", "mert"]}]


# ---- long files: decoded and encoded block by block ---------------------------------------------
LONG_SECONDS, LONG_SR = 180.0, 44_100
#: w2v windows of 7 s (25 full windows and an end-aligned last one), MFCC windows of 50 s
LONG_WINDOWS = {"wav2vec2": 7.0, "mfcc": 50.0}


@pytest.fixture(scope="module")
def long_dir(tmp_path_factory) -> Path:
    """A manifest dataset: a 3-minute 44.1 kHz stereo FLAC (a tone sweep over noise, so every
    window differs), a 2 s WAV, and a 2-minute FLAC cut in half (its decoder fails after 1 minute)."""
    root = tmp_path_factory.mktemp("long")
    rng = np.random.default_rng(3)
    t = np.arange(int(LONG_SECONDS * LONG_SR)) / LONG_SR
    tone = 0.3 * np.sin(2 * np.pi * (200 + 5 * t) * t)
    stereo = np.stack([tone, tone * 0.5], axis=1) + rng.normal(0, 0.05, (t.size, 2))
    sf.write(root / "long.flac", stereo.astype(np.float32), LONG_SR)
    sf.write(root / "short.wav", rng.uniform(-0.5, 0.5, 2 * 16_000).astype(np.float32), 16_000)
    sf.write(root / "cut.flac", rng.uniform(-0.5, 0.5, 120 * 8000).astype(np.float32), 8000)
    cut_bytes(root / "cut.flac", (root / "cut.flac").stat().st_size // 2)
    (root / "manifest.csv").write_text("path,label,split\nlong.flac,a,train\nshort.wav,b,test\ncut.flac,a,train\n")
    return root


def _long_encoders(tiny_w2v) -> list[tuple[str, object]]:
    return [("w2v", load_encoder("wav2vec2", str(tiny_w2v), window_seconds=LONG_WINDOWS["wav2vec2"])),
            ("mfcc", load_encoder("mfcc", window_seconds=LONG_WINDOWS["mfcc"]))]


def _binned(frames: np.ndarray, per_bin: int) -> np.ndarray:
    """Means of consecutive runs of ``per_bin`` frames, the last run averaging what remains."""
    return np.stack([frames[i : i + per_bin].mean(axis=0) for i in range(0, frames.shape[0], per_bin)])


@pytest.mark.parametrize(("pooling", "hop"), [("mean", 2.0), ("mean+std", 2.0), ("mean+std", None)])
def test_long_clip_streamed_rows_equal_the_whole_clip_computation(long_dir, tiny_w2v, tmp_path, pooling, hop):
    encoders = _long_encoders(tiny_w2v)
    ds = discover_dataset(long_dir)
    path = tmp_path / "long.zarr"
    opts = ExtractOptions(workers=1, progress=False, batch_size=4, pooling=pooling, frames_hop=hop,
                          frame_layers=[0, -1] if hop else None)
    summary = extract_dataset(ds, encoders, path, opts)
    assert [m.written for m in summary.models] == [2, 2]
    assert [p for p, _ in summary.failures] == ["cut.flac"] and "flac decoder lost sync" in summary.failures[0][1]
    for key, enc in encoders:
        for name in ("long.flac", "short.wav"):
            track_id = next(t.id for t in ds.tracks if t.path == name)
            joined = direct_frames(enc, load_audio(long_dir / name, enc.sample_rate))  # the whole clip
            for layer, frames in enumerate(joined):
                emb = load_embeddings(path, model=key, layer=layer)
                expect = frames.mean(axis=0)
                if pooling == "mean+std":
                    expect = np.concatenate([expect, frames.std(axis=0)])
                np.testing.assert_allclose(emb.X[list(emb.track_ids).index(track_id)], expect, rtol=1e-4, atol=1e-4)
            for layer in (0, enc.num_layers - 1) if hop else ():
                values, counts, meta = load_frames(path, model=key, layer=layer)
                per_bin = int(round(hop * enc.layer_frame_rates[layer]))
                want = _binned(joined[layer], per_bin)[: int(np.ceil(LONG_SECONDS / hop))]
                i = list(meta.track_ids).index(track_id)
                assert counts[i] == want.shape[0] and (name != "long.flac" or counts[i] == 90)
                np.testing.assert_allclose(values[i, : counts[i]], want, rtol=1e-4, atol=1e-4)


def test_long_clip_is_decoded_and_encoded_in_bounded_pieces(long_dir, tiny_w2v, tmp_path, monkeypatch):
    from embedstore.extract import audio, pipeline

    reads, whole, calls = [], [], []
    read = sf.SoundFile.read

    def recording_read(self, *args, **kwargs):
        data = read(self, *args, **kwargs)
        reads.append((Path(self.name).name, data.shape[0]))
        return data

    def recording_load(path, rates, **kwargs):
        whole.append((Path(path).name, tuple(rates)))
        return audio.load_audio_rates(path, rates, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", recording_read)
    monkeypatch.setattr(pipeline, "load_audio_rates", recording_load)
    encoders = _long_encoders(tiny_w2v)
    for key, enc in encoders:
        forward = enc.forward
        monkeypatch.setattr(enc, "forward", lambda w, n, f=forward, k=key: calls.append((k, w.shape)) or f(w, n))
    ds = discover_dataset(long_dir)
    extract_dataset(ds, encoders, tmp_path / "b.zarr", ExtractOptions(workers=0, progress=False, batch_size=4))
    # one decode at 16 and 22.05 kHz; the long files are never decoded whole
    assert whole == [("short.wav", (16_000, 22_050))]
    long_reads = [n for name, n in reads if name == "long.flac"]
    block = int(round(audio.STREAM_BLOCK_SECONDS * LONG_SR))
    assert max(long_reads) == block and sum(long_reads) == int(LONG_SECONDS * LONG_SR)
    # the encoders see at most batch_size windows per call (MFCC: one 50 s window at a time)
    w2v_calls = [shape for k, shape in calls if k == "w2v"]
    assert max(s[0] for s in w2v_calls) == 4 and {s[1] for s in w2v_calls} == {7 * 16_000, 2 * 16_000}
    assert max(s[0] * s[1] for k, s in calls if k == "mfcc") <= 4 * 50 * 22_050


def test_stream_audio_blocks_join_to_the_whole_decode(tmp_path):
    from embedstore.extract.audio import stream_audio

    x = np.random.default_rng(5).normal(0, 0.1, (11 * 44_100, 2)).astype(np.float32)
    for ext in ("wav", "flac", "mp3"):
        sf.write(tmp_path / f"a.{ext}", x, 44_100)
        for offset, duration in ((0.0, None), (2.5, None), (1.25, 6.0)):
            for gain in ("none", "peak"):
                blocks = list(stream_audio(tmp_path / f"a.{ext}", [16_000, 44_100], offset=offset, duration=duration,
                                           gain=gain, block_seconds=0.7))
                assert max(b[44_100].shape[0] for b in blocks) <= round(0.7 * 44_100)
                for sr in (16_000, 44_100):
                    whole = load_audio(tmp_path / f"a.{ext}", sr, offset=offset, duration=duration, gain=gain)
                    joined = np.concatenate([b[sr] for b in blocks])
                    assert joined.shape == whole.shape
                    np.testing.assert_allclose(joined, whole, rtol=0, atol=1e-6)


def test_ray_engine_streams_long_clips_like_the_local_engine(long_dir, tiny_w2v, tmp_path):
    ds = discover_dataset(long_dir)
    options = ExtractOptions(workers=0, progress=False, batch_size=4, pooling="mean+std")
    loads = [EncoderRequest("wav2vec2", str(tiny_w2v), window_seconds=LONG_WINDOWS["wav2vec2"], key="w2v"),
             EncoderRequest("mfcc", window_seconds=LONG_WINDOWS["mfcc"], key="mfcc")]
    ray_summary = _ray_flow(ds, loads, tmp_path / "ray.zarr", options)
    local = extract_dataset(ds, [(load.store_key, load.load("cpu")) for load in loads], tmp_path / "local.zarr", options)
    assert sorted(ray_summary.failures) == sorted(local.failures) and [p for p, _ in local.failures] == ["cut.flac"]
    for model, n_layers in (("w2v", 3), ("mfcc", 5)):
        for layer in range(n_layers):
            a = load_embeddings(tmp_path / "ray.zarr", model=model, layer=layer)
            b = load_embeddings(tmp_path / "local.zarr", model=model, layer=layer)
            assert list(a.track_ids) == list(b.track_ids) and len(a.track_ids) == 2
            np.testing.assert_allclose(a.X, b.X, rtol=1e-5, atol=1e-6)


def test_stream_prefetch_hands_on_errors_and_stops_when_left_early():
    from embedstore.errors import AudioError
    from embedstore.extract.pipeline import _prefetched

    closed = []

    def source(fail_at: int):
        try:
            for i in range(10):
                if i == fail_at:
                    raise AudioError("x.flac", "corrupt")
                yield i
        finally:
            closed.append(fail_at)

    got = []
    with pytest.raises(AudioError, match="x.flac: corrupt"):
        for item in _prefetched(source(3), 2):
            got.append(item)
    assert got == [0, 1, 2]
    blocks = _prefetched(source(99), 2)
    assert [next(blocks), next(blocks)] == [0, 1]
    blocks.close()  # the consumer leaves: the thread stops and closes the source
    assert closed == [3, 99]
# ---- the encoder request, the device rule and ExtractionRun's API ---------------------------------------


def test_encoder_request_is_checked_when_built_and_names_its_store_key():
    assert EncoderRequest("mert").store_key == "mert"
    assert EncoderRequest("mert", weights="random").store_key == "mert+random"
    assert EncoderRequest("mert", weights="random", key="control").store_key == "control"
    assert EncoderRequest("wav2vec2", Path("/ckpt")).checkpoint == "/ckpt"  # a path is kept as text
    assert EncoderRequest.coerce("mfcc", seed=4) == EncoderRequest("mfcc", seed=4)
    given = EncoderRequest("mfcc", window_seconds=3.0)
    assert EncoderRequest.coerce(given, seed=4) is given
    for kwargs, option in (({"name": "mret"}, "did you mean 'mert'"), ({"name": "mfcc", "weights": "imagenet"}, "--weights"),
                           ({"name": "mfcc", "dtype": "int8"}, "--dtype"),
                           ({"name": "mfcc", "window_seconds": -1.0}, "--window-seconds")):
        with pytest.raises(EmbedstoreError, match=option):
            EncoderRequest(**kwargs)
    with pytest.raises(EmbedstoreError, match="--checkpoint and --as apply to a single --model"):
        EncoderRequest.for_models(["mfcc", "wav2vec2"], key="x")
    assert EncoderRequest.for_models(["mfcc", "mert"], weights="random") == [
        EncoderRequest("mfcc", weights="random"), EncoderRequest("mert", weights="random")]


def test_run_extract_refuses_two_entries_with_one_store_key(small_dir, tmp_path):
    with pytest.raises(EmbedstoreError, match="store key mfcc"):
        run_extract(small_dir, ["mfcc", EncoderRequest("mfcc")], tmp_path / "x.zarr")
    with pytest.raises(EmbedstoreError, match="--model is required"):
        run_extract(small_dir, [], tmp_path / "x.zarr")
    assert not (tmp_path / "x.zarr").exists()


def test_one_device_rule_for_every_path():
    """``--device mps`` (or a missing GPU) gets the same answer from the device rule and from loading an
    encoder; before, one accepted what the other refused."""
    from embedstore.devices import resolve_device

    for device in ("mps", "cuda:99", "tpu", "cpu:1"):
        try:
            expected = resolve_device(device)
        except EmbedstoreError as exc:
            with pytest.raises(EmbedstoreError, match=re.escape(str(exc))):
                EncoderRequest("mfcc").load(device)
            assert str(exc).startswith("--device")
        else:
            assert EncoderRequest("mfcc").load(device).device.type == expected.type
    assert resolve_device("cpu") == torch.device("cpu") == EncoderRequest("mfcc").load("cpu").device
    if not torch.backends.mps.is_available():
        with pytest.raises(EmbedstoreError, match="MPS is not available"):
            resolve_device("mps")


def test_extraction_run_api(small_dir, tmp_path):
    """Targets carry their encoders; needs/refuse/fail/write move rows out of one target or all; the summary
    and the store agree with what was fed in."""
    from embedstore.extract.encoding import encode_clips
    from embedstore.extract.writing import open_extraction

    ds = discover_dataset(small_dir)
    enc = load_encoder("mfcc")
    path = tmp_path / "run.zarr"
    extract_dataset(ds, [("a", enc)], path, ExtractOptions(workers=0, progress=False, limit=2))  # rows 0, 1 of "a"
    options = ExtractOptions(workers=0, progress=False, limit=4)
    with open_extraction(ds, [("a", enc), ("b", enc)], path, options) as run:
        assert [t.key for t in run.targets] == ["a", "b"] and run.encoders == [enc, enc]
        assert run.rows() == [0, 1, 2, 3]
        assert [run.track(r) for r in range(4)] == ds.tracks[:4]
        assert run.needs(0) == [False, True] and run.needs(2) == [True, True]
        run.refuse(2, {1: "too short for b"})
        assert run.needs(2) == [True, False]
        run.fail(3, "unreadable")
        assert run.needs(3) == [False, False]
        wave = load_audio(small_dir / ds.tracks[2].path, enc.sample_rate)
        encoded = encode_clips(enc, [wave], options, run.targets[0].frame_layers, run.targets[0].max_frames)
        run.write(0, np.array([2]), encoded, audio_seconds=2.0, model_seconds=0.5)
        assert run.needs(2) == [False, False] and run.rows() == [0, 1]  # "b" still needs rows 0 and 1
    summary = run.finish()
    a, b = summary.models
    assert (a.written, a.already_done, a.audio_seconds, b.written, b.already_done) == (1, 2, 2.0, 0, 0)
    assert summary.failures == [(ds.tracks[2].path, "too short for b"), (ds.tracks[3].path, "unreadable")]
    with open_store(path) as st:
        np.testing.assert_array_equal(st.done(ds.name, "a")[:4], [True, True, True, False])
        assert not st.done(ds.name, "b").any()
        assert sorted(row for row, *_ in st.failures(ds.name, "b")) == [2, 3]
