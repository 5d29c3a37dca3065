"""``--model hear:MODULE``: a tiny HEAR 2021 module written here, extracted like a built-in encoder.

The module frames the audio (25 ms frames, 10 ms hop, centred) into RMS, spectral centroid, spectral
flatness and zero-crossing rate computed with torch (timestamp embeddings, width 4); its scene
embedding is their mean and std over frames (width 8). Its ``load_model`` reads a scale factor from the
checkpoint file, so ``--checkpoint`` reaching ``model_file_path`` shows in the values.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from embedstore.errors import ModelError
from embedstore.extract.audio import load_audio
from embedstore.extract.datasets import discover_dataset
from embedstore.extract.encoders import EncoderRequest
from embedstore.extract.pipeline import ExtractOptions, extract_dataset, run_extract
from embedstore.extract.synthetic import make_gtzan_like
from embedstore.store import load_embeddings, load_frames, open_store

MODULE = "embedstore_tinyhear"
NAME = f"hear:{MODULE}"
KEY = f"hear-{MODULE}"  # the store key: no ":" in a folder name
SR, FRAME, HOP = 16_000, 400, 160

SOURCE = f'''
"""A tiny HEAR 2021 API module (test fixture)."""
import torch

SR, FRAME, HOP = {SR}, {FRAME}, {HOP}


class Model(torch.nn.Module):
    sample_rate = SR
    timestamp_embedding_size = 4
    scene_embedding_size = 8

    def __init__(self, scale=1.0):
        super().__init__()
        self.register_buffer("scale", torch.tensor(float(scale)))


def load_model(model_file_path=""):
    return Model(float(open(model_file_path).read()) if model_file_path else 1.0)


def get_timestamp_embeddings(audio, model):
    frames = torch.nn.functional.pad(audio, (FRAME // 2, FRAME // 2)).unfold(1, FRAME, HOP)
    rms = frames.pow(2).mean(-1).sqrt()
    spec = torch.fft.rfft(frames * torch.hann_window(FRAME, device=audio.device), dim=-1).abs() + 1e-6
    freqs = torch.fft.rfftfreq(FRAME, 1 / SR).to(audio.device)
    centroid = (spec * freqs).sum(-1) / spec.sum(-1) / (SR / 2)
    flatness = spec.log().mean(-1).exp() / spec.mean(-1)
    zcr = (frames[..., 1:] * frames[..., :-1] < 0).float().mean(-1)
    emb = torch.stack([rms, centroid, flatness, zcr], -1) * model.scale
    stamps = (torch.arange(emb.shape[1], device=audio.device) * HOP * 1000.0 / SR).expand(audio.shape[0], -1)
    return emb, stamps


def get_scene_embeddings(audio, model):
    emb, _ = get_timestamp_embeddings(audio, model)
    return torch.cat([emb.mean(1), emb.std(1)], -1)
'''


@pytest.fixture(scope="module")
def hear_dir(tmp_path_factory) -> Path:
    """A folder holding the tiny module, on ``sys.path`` for this test module."""
    root = tmp_path_factory.mktemp("hearmods")
    (root / f"{MODULE}.py").write_text(textwrap.dedent(SOURCE))
    (root / "embedstore_halfhear.py").write_text("def load_model(model_file_path=''):\n    return None\n")
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))
    for name in (MODULE, "embedstore_halfhear"):
        sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory) -> Path:
    """4 genres x 2 clips of 2 s, mixed formats and rates."""
    return make_gtzan_like(tmp_path_factory.mktemp("small"), n_per_class=2, seconds=2.0, broken=False)


@pytest.fixture(scope="module")
def scale_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "scale.txt"
    path.write_text("3.0")
    return path


def module_outputs(wave: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The module's own functions on one decoded clip: timestamp embeddings ``[F, 4]``, scene ``[8]``."""
    import importlib

    mod = importlib.import_module(MODULE)
    model = mod.load_model()
    model.scale.fill_(scale)
    audio = torch.from_numpy(wave[None].copy())
    emb, _ = mod.get_timestamp_embeddings(audio, model)
    return emb[0].numpy(), mod.get_scene_embeddings(audio, model)[0].numpy()


def rms_frames(wave: np.ndarray) -> np.ndarray:
    """Centred 25 ms / 10 ms-hop RMS written out with numpy (an independent check of the module)."""
    padded = np.pad(wave, FRAME // 2)
    n = 1 + (padded.shape[0] - FRAME) // HOP
    return np.array([np.sqrt(np.mean(padded[i * HOP : i * HOP + FRAME] ** 2)) for i in range(n)])


def run_cli(*args: str, hear_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(hear_dir), os.environ.get("PYTHONPATH", "")])}
    env.pop("EMBEDSTORE_STORE", None)
    return subprocess.run([sys.executable, "-m", "embedstore.cli", *args], check=False, capture_output=True, text=True, env=env,
                          timeout=600)


def test_cli_extracts_a_hear_module_into_scene_and_timestamp_layers(hear_dir, small_dir, scale_file, tmp_path):
    store = tmp_path / "h.zarr"
    result = run_cli("extract", str(small_dir), "--model", NAME, "--checkpoint", str(scale_file), "--store", str(store),
                     "--workers", "0", "--no-progress", hear_dir=hear_dir)
    assert result.returncode == 0, result.stderr
    scene = load_embeddings(store, model=KEY, layer="scene")
    stamp = load_embeddings(store, model=KEY, layer="timestamp")
    assert scene.X.shape == (8, 8) and stamp.X.shape == (8, 4)
    ds = discover_dataset(small_dir)
    for track in ds.tracks[::3]:
        wave = load_audio(ds.root / track.path, SR)
        emb, expect_scene = module_outputs(wave, scale=3.0)
        row = list(scene.track_ids).index(track.id)
        np.testing.assert_allclose(scene.X[row], expect_scene, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stamp.X[row], emb.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stamp.X[row, 0], 3.0 * rms_frames(wave).mean(), rtol=1e-4)
    meta = open_store(store).model_attrs("gtzan", KEY)
    assert meta["layer_names"] == ["timestamp", "scene"] and meta["encoder_widths"] == [4, 8]
    assert meta["sample_rate"] == SR and meta["frame_rate"] == pytest.approx(SR / HOP)
    assert meta["hear"]["module"] == MODULE and meta["hear"]["timestamp_hop_ms"] == pytest.approx(10.0)
    assert meta["checkpoint"] == str(scale_file) and list(meta["weights_sha256"]) == ["scale.txt"]


def test_frames_store_binned_timestamp_embeddings(hear_dir, small_dir, tmp_path):
    path = tmp_path / "f.zarr"
    run_extract(small_dir, [NAME], path, options=ExtractOptions(workers=0, progress=False, frames_hop=0.5,
                                                               frame_layers=["timestamp"], limit=2))
    values, counts, meta = load_frames(path, model=KEY, layer="timestamp")
    assert values.shape == (2, 4, 4) and list(counts) == [4, 4]  # 2 s at 0.5 s per stored frame
    track = next(t for t in discover_dataset(small_dir).tracks if t.id == meta.track_ids[0])
    emb, _ = module_outputs(load_audio(small_dir / track.path, SR), scale=1.0)
    np.testing.assert_allclose(values[0, 0], emb[:50].mean(0), rtol=1e-5, atol=1e-6)  # 50 frames of 10 ms
    assert emb.shape[0] == 201  # 1 + 2 s / 10 ms centred frames: the 201st lies past the 4 stored bins
    np.testing.assert_allclose(values[0, 3], emb[150:200].mean(0), rtol=1e-5, atol=1e-6)


def test_windows_pool_the_scene_embeddings_of_each_window(hear_dir, small_dir, tmp_path):
    path = tmp_path / "w.zarr"
    run_extract(small_dir, [EncoderRequest(NAME, window_seconds=1.0)], path,
                options=ExtractOptions(workers=0, progress=False, limit=2))
    scene = load_embeddings(path, model=KEY, layer="scene")
    track = next(t for t in discover_dataset(small_dir).tracks if t.id == scene.track_ids[0])
    wave = load_audio(small_dir / track.path, SR)
    assert wave.shape[0] == 2 * SR  # two 1 s windows, no overlap
    halves = [module_outputs(wave[k * SR : (k + 1) * SR], scale=1.0)[1] for k in range(2)]
    np.testing.assert_allclose(scene.X[0], np.mean(halves, axis=0), rtol=1e-5, atol=1e-6)
    assert open_store(path).model_attrs("gtzan", KEY)["windowing"]["window_seconds"] == 1.0


def test_resume_after_interrupted_run_equals_uninterrupted(hear_dir, small_dir, tmp_path, monkeypatch):
    ds = discover_dataset(small_dir)
    enc = EncoderRequest(NAME).load("cpu")
    opts = ExtractOptions(workers=0, progress=False, batch_size=2, flush_seconds=0)
    ref = tmp_path / "ref.zarr"
    extract_dataset(ds, [(KEY, enc)], ref, opts)
    path = tmp_path / "r.zarr"
    calls = {"n": 0}
    real_forward = type(enc).forward

    def flaky_forward(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(type(enc), "forward", flaky_forward)
    with pytest.raises(KeyboardInterrupt):
        extract_dataset(ds, [(KEY, enc)], path, opts)
    monkeypatch.setattr(type(enc), "forward", real_forward)
    kept = len(load_embeddings(path, model=KEY, layer=0).track_ids)
    assert 0 < kept < 8
    summary = extract_dataset(ds, [(KEY, enc)], path, opts)
    assert (summary.models[0].already_done, summary.models[0].written) == (kept, 8 - kept)
    a, b = (load_embeddings(p, model=KEY, layer="scene") for p in (path, ref))
    order_a, order_b = np.argsort(a.track_ids), np.argsort(b.track_ids)
    np.testing.assert_array_equal(a.track_ids[order_a], b.track_ids[order_b])
    np.testing.assert_allclose(a.X[order_a], b.X[order_b], rtol=1e-6)


def test_missing_module_is_a_one_line_error_with_a_suggestion(hear_dir, small_dir, tmp_path):
    with pytest.raises(ModelError, match=f"no installed Python module 'embedstore_tinyhaer'.*did you mean '{MODULE}'"):
        EncoderRequest("hear:embedstore_tinyhaer")
    with pytest.raises(ModelError, match="hear:MODULE"):
        EncoderRequest("hear:not a module")
    result = run_cli("extract", str(small_dir), "--model", "hear:embedstore_tinyhaer", "--store",
                     str(tmp_path / "s.zarr"), hear_dir=hear_dir)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(lines) == 1 and "embedstore_tinyhaer" in lines[0] and f"did you mean '{MODULE}'" in lines[0], result.stderr
    assert not (tmp_path / "s.zarr").exists()


def test_a_module_without_the_api_or_with_random_weights_is_refused(hear_dir):
    with pytest.raises(ModelError, match="embedstore_halfhear.*does not implement the HEAR API: no function "
                                         "get_scene_embeddings, get_timestamp_embeddings"):
        EncoderRequest("hear:embedstore_halfhear").load("cpu")
    with pytest.raises(ModelError, match="--weights random does not apply"):
        EncoderRequest(NAME, weights="random").load("cpu")
    with pytest.raises(ModelError, match="load_model with --checkpoint .*missing.txt failed"):
        EncoderRequest(NAME, "/nonexistent/missing.txt").load("cpu")


def test_a_finetune_checkpoint_naming_a_hear_module_never_imports_it(tmp_path, monkeypatch):
    """Only a name given to --model is imported: a checkpoint file that names a module is refused first."""
    import sys

    from embedstore.finetune.train import load_finetuned
    from embedstore.heads.checkpoint import save_checkpoint

    (tmp_path / "embedstore_planted.py").write_text("raise SystemExit('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = save_checkpoint({"config": {"model": "hear:embedstore_planted", "checkpoint": None}, "model": {}},
                           tmp_path / "best.pt")
    with pytest.raises(ModelError, match="names the HEAR module 'embedstore_planted'.*--model"):
        load_finetuned(path)
    assert "embedstore_planted" not in sys.modules
