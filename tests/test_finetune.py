"""Tests of embedstore.finetune on a tiny random wav2vec2 (CPU): learning, checkpoints, resume,
export into the store, the cost controls (training-split subsample, --limit, checkpoint sizes),
and the pieces (windowed pooling, equal to the rows extract stores and passing gradients; frozen conv,
gradient checkpointing, atomic files, splits, option errors)."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from embedstore.errors import DatasetError, EmbedstoreError, ModelError
from embedstore.extract.audio import load_audio
from embedstore.extract.datasets import discover_dataset
from embedstore.extract.encoders import EncoderRequest, load_encoder
from embedstore.extract.pipeline import ExtractOptions, extract_dataset
from embedstore.extract.pooling import Moments, merge_moments, pooled, window_moments
from embedstore.extract.synthetic import render_genre
from embedstore.finetune import finetune, format_finetune_report, load_finetuned
from embedstore.heads.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from embedstore.finetune.data import CropDataset, stratified_subset, task_splits
from embedstore.finetune.model import FinetuneModel, enable_gradient_checkpointing, freeze_feature_encoder
from embedstore.finetune.train import predict_logits, train_eval_size
from embedstore.store import load_embeddings
from embedstore.store.records import load_records
from tiny_models import save_tiny_wav2vec2

GENRES = ("classical", "hiphop")
SR = 16_000
CLIP_SECONDS = 0.6  # with 0.25 s windows: 3 windows, the last end-aligned (overlap skipped)
PER_SPLIT = {"train": 24, "valid": 8, "test": 4}
N_CLIPS = sum(PER_SPLIT.values()) * len(GENRES)
# An easy, fast setting for the tiny model: short crops, no SpecAugment (its 2 minimum masks would
# hide most of a 25-frame crop), no head dropout, a larger encoder learning rate than for real models.
FAST = dict(task="label", lr_encoder=1e-3, lr_head=3e-3, batch_size=8, crop_seconds=0.25, spec_augment=False,
            head_dropout=0.0, workers=0, progress=False, patience=None)


def w2v(ckpt, name: str = "wav2vec2") -> EncoderRequest:
    """The encoder of the fast runs: the tiny checkpoint ``ckpt`` with 0.25 s windows."""
    return EncoderRequest(name, str(ckpt), window_seconds=0.25)


@pytest.fixture(scope="module", autouse=True)
def _offline_and_threads() -> Iterator[None]:
    """No hub traffic; one torch thread (tiny models are overhead-bound)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_wav2vec2(tmp_path_factory.mktemp("ft_ckpt") / "w2v")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A manifest dataset of the synthetic genres with fixed train/valid/test splits (64 clips)."""
    root = tmp_path_factory.mktemp("ft_data")
    rng = np.random.default_rng(0)
    rows = []
    for genre in GENRES:
        i = 0
        for split, n in PER_SPLIT.items():
            for _ in range(n):
                name = f"{genre}.{i:03d}.wav"
                sf.write(root / name, render_genre(genre, SR, CLIP_SECONDS, rng), SR)
                rows.append((name, genre, split))
                i += 1
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)
    return root


@pytest.fixture(scope="module")
def run(data_dir: Path, ckpt: Path, tmp_path_factory: pytest.TempPathFactory):
    """Three epochs with export into a store (shared by several tests)."""
    base = tmp_path_factory.mktemp("ft_run")
    report = finetune(data_dir, model=w2v(ckpt), epochs=3, out=base / "run", export_to_store=base / "s.zarr",
                      **FAST)
    return report, base / "s.zarr"


# ---- the full run -------------------------------------------------------------------------------


def test_training_learns_and_writes_run_files(run):
    report, _ = run
    hist = report.history
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert hist[-1]["valid_loss"] < hist[0]["valid_loss"]
    chance = 1 / len(GENRES)
    best = max(h["valid_accuracy"] for h in hist)
    assert best >= 1.5 * chance  # well above chance (16 valid clips)
    assert report.best_epoch == max(hist, key=lambda h: (h["valid_accuracy"], -h["valid_loss"]))["epoch"]
    assert json.loads(report.history_path.read_text()) == hist
    assert report.curve_path.name == "training_curve.png" and report.curve_path.stat().st_size > 0
    assert not list(report.out_dir.glob(".*tmp"))  # atomic writes leave no temporary files
    text = format_finetune_report(report)
    assert "wav2vec2+ft-label" in text and "*best" in text


def test_record_has_the_probe_format(run):
    report, store = run
    rec = report.record
    key = (rec["task"], rec["model"], rec["layer"], rec["head"])
    assert key == ("label", "wav2vec2+ft-label", "weighted", "finetune")
    assert json.loads((report.out_dir / "metrics.json").read_text()) == rec.to_dict()
    assert [r for r in load_records(store) if r["head"] == "finetune"] == [rec]
    # valid and test whole; train on the default subsample, as many clips as validation
    sizes = {**PER_SPLIT, "train": PER_SPLIT["valid"]}
    for split, n in sizes.items():
        m = rec["metrics"][split]
        assert m["n"] == n * len(GENRES) and m["labels"] == sorted(GENRES)
        conf = np.array(m["confusion"])
        assert conf.sum() == m["n"] and np.trace(conf) / m["n"] == pytest.approx(m["accuracy"])
        assert m["ci95"]["accuracy"][0] <= m["accuracy"] <= m["ci95"]["accuracy"][1]
    pred = rec["predictions"]["test"]
    test_acc = np.mean(np.array(pred["y_true"]) == np.array(pred["y_pred"][0]))
    assert test_acc == pytest.approx(rec["metrics"]["test"]["accuracy"])
    weights = rec["layer_weights"]
    assert len(weights) == 3 and sum(weights) == pytest.approx(1.0)
    assert rec["selection_score"] == pytest.approx(max(h["valid_accuracy"] for h in report.history))


def test_best_checkpoint_reloads_with_same_predictions(run, data_dir):
    report, _ = run
    loaded = load_finetuned(report.best_path)
    assert loaded.epoch == report.best_epoch and loaded.labels == sorted(GENRES)
    ds = discover_dataset(data_dir)
    test = [t for t in ds.tracks if t.split == "test"]
    ids = report.record["predictions"]["test"]["track_ids"]
    by_id = {t.id: t for t in test}
    from embedstore.finetune.data import ClipDataset

    clips = ClipDataset(ds.root, [by_id[i] for i in ids], [0] * len(ids), SR)
    logits, ok, failed = predict_logits(loaded.model, clips)
    assert ok.all() and not failed
    assert logits.argmax(1).tolist() == report.record["predictions"]["test"]["y_pred"][0]


def test_feature_encoder_frozen_transformer_trained(run, ckpt):
    report, _ = run
    base = load_encoder("wav2vec2", str(ckpt)).state_dict()
    tuned = load_checkpoint(report.best_path)["model"]
    conv = [k for k in base if k.startswith("model.feature_extractor.")]
    layers = [k for k in base if k.startswith("model.encoder.layers.")]
    assert conv and layers
    assert all(torch.equal(base[k], tuned[f"encoder.{k}"]) for k in conv)
    assert any(not torch.equal(base[k], tuned[f"encoder.{k}"]) for k in layers)


def test_export_matches_clip_features_and_feeds_probes(run, data_dir):
    from embedstore.heads.probe import run_probe
    from embedstore.store import load_embeddings, open_store

    report, store = run
    assert report.export.models[0].written == N_CLIPS
    emb = load_embeddings(store, model="wav2vec2+ft-label", layer="all")
    assert emb.X.shape == (N_CLIPS, 3, 32)
    # training, evaluation and the exported entry decode with one gain rule
    with open_store(store) as st:
        assert st.model_attrs(emb.dataset, "wav2vec2+ft-label")["gain"] == report.record["finetune"]["config"]["gain"] == "none"
    # what the store holds is what the fine-tuned network pooled from the full clips
    loaded = load_finetuned(report.best_path)
    ds = discover_dataset(data_dir)
    path_of = {t.id: ds.root / t.path for t in ds.tracks}
    rows = list(range(0, N_CLIPS, 7))
    waves = [load_audio(path_of[emb.track_ids[r]], SR) for r in rows]
    with torch.inference_mode():
        loaded.model.encoder.frozen = True
        feats = loaded.model.clip_features(waves).numpy()
        head_on_store = loaded.model.head_logits(torch.from_numpy(emb.X[rows])).argmax(1)
        head_on_clips = loaded.model.head_logits(torch.from_numpy(feats)).argmax(1)
    np.testing.assert_allclose(emb.X[rows], feats, rtol=1e-4, atol=1e-5)
    assert torch.equal(head_on_store, head_on_clips)
    probe = run_probe(store, "label", models=["wav2vec2+ft-label"], layer=2, head="logreg", progress=False)
    assert probe.records[0]["metrics"]["test"]["n"] == PER_SPLIT["test"] * len(GENRES)
    assert {"finetune", "logreg"} <= {r["head"] for r in load_records(store)}


# ---- cost controls: training-split subsample, --limit --------------------------------------------


def test_train_split_is_evaluated_on_a_seeded_subsample(run):
    report, _ = run
    rec = report.record
    n_train, n_valid = (PER_SPLIT[s] * len(GENRES) for s in ("train", "valid"))
    assert rec["finetune"]["train_eval"] == {"rule": "auto", "clips": n_valid, "of": n_train}
    train = rec["metrics"]["train"]
    assert train["n"] == n_valid and np.array(train["confusion"]).sum(axis=1).tolist() == [n_valid // 2] * 2
    assert f"{n_valid} of {n_train} train clips" in rec["protocol"]["train_eval"]
    assert rec["protocol"]["limit"] == "none" and rec["finetune"]["limit"] is None
    assert f"(n={n_valid} of {n_train}, seeded subsample" in format_finetune_report(report)


def test_limit_caps_each_split_and_train_eval_takes_a_count(data_dir, ckpt, tmp_path, monkeypatch):
    import embedstore.finetune.train as train_module
    import embedstore.heads.training as loop_module

    evaluated: list[tuple[str, list[str]]] = []  # (desc, clip paths) of every evaluation
    trained: list[int] = []  # clips offered per training epoch
    real_predict, real_epoch = train_module.predict_logits, loop_module.train_epoch

    def spy_predict(net, data, **kwargs):
        evaluated.append((kwargs.get("desc", "eval"), [t.path for t in data.tracks]))
        return real_predict(net, data, **kwargs)

    def spy_epoch(net, loader, *args, **kwargs):
        trained.append(len(loader.dataset))
        return real_epoch(net, loader, *args, **kwargs)

    monkeypatch.setattr(train_module, "predict_logits", spy_predict)
    monkeypatch.setattr(loop_module, "train_epoch", spy_epoch)
    report = finetune(data_dir, model=w2v(ckpt), epochs=2, out=tmp_path / "lim", limit=6, train_eval=4,
                      **{**FAST, "batch_size": 4})
    assert trained == [6, 6]
    assert [(desc, len(paths)) for desc, paths in evaluated] == [
        ("eval", 6), ("eval", 6), ("eval train", 4), ("eval valid", 6), ("eval test", 6)]
    manifest = list(csv.DictReader(open(data_dir / "manifest.csv")))
    split_of = {row["path"]: row["split"] for row in manifest}
    genre_of = {row["path"]: row["label"] for row in manifest}
    for (desc, paths), split in zip(evaluated[2:], ("train", "valid", "test")):
        assert {split_of[p] for p in paths} == {split}  # each split's own clips, half of each genre
        assert sorted(genre_of[p] for p in paths) == sorted(list(GENRES) * (len(paths) // 2))
    assert set(evaluated[3][1]) == set(evaluated[0][1])  # the clips validated each epoch are the final ones
    assert set(evaluated[2][1]) < {p for p in split_of if split_of[p] == "train"}
    fin = report.record["finetune"]
    assert fin["limit"] == 6 and fin["config"]["limit"] == 6
    assert fin["train_eval"] == {"rule": "4", "clips": 4, "of": 6}
    assert [report.record["metrics"][s]["n"] for s in ("train", "valid", "test")] == [4, 6, 6]
    assert "--limit 6" in format_finetune_report(report)
    with pytest.raises(EmbedstoreError, match="limit"):  # a different --limit cannot resume this run
        finetune(data_dir, model=w2v(ckpt), epochs=3, out=tmp_path / "lim", resume=True, limit=8,
                 **{**FAST, "batch_size": 4})


@pytest.mark.parametrize(("rule", "n_train", "n_valid", "want"), [
    ("auto", 48, 16, 16), ("auto", 10, 16, 10), ("auto", 400, 200, 64), ("full", 400, 200, 400),
    (5, 48, 16, 5), ("5", 48, 16, 5), (100, 48, 16, 48), ("FULL", 7, 3, 7),
])
def test_train_eval_size_rules(rule, n_train, n_valid, want):
    assert train_eval_size(rule, n_train, n_valid) == want


@pytest.mark.parametrize("rule", ["some", 0, "-3", "1.5"])
def test_train_eval_size_rejects_other_values(rule):
    with pytest.raises(EmbedstoreError, match="--train-eval"):
        train_eval_size(rule, 10, 5)


def test_stratified_subset_keeps_class_shares_and_is_seeded():
    labels = ["a"] * 10 + ["b"] * 4
    rest, picked = stratified_subset(labels, 7, seed=1)
    assert sorted(rest + picked) == list(range(14)) and len(picked) == 7
    assert [labels[i] for i in picked].count("b") == 2  # 7 * 4/14
    assert stratified_subset(labels, 7, seed=1) == (rest, picked)
    assert any(stratified_subset(labels, 7, seed=s)[1] != picked for s in range(2, 6))
    # a class with one clip cannot be stratified: a plain random pick, not an error
    assert len(stratified_subset(["a"] * 5 + ["b"], 3, seed=0)[1]) == 3
    assert stratified_subset(labels, 20) == ([], list(range(14)))


def test_cli_passes_the_cost_options(data_dir, ckpt, tmp_path):
    from typer.testing import CliRunner

    from embedstore.cli import app

    out = tmp_path / "cli"
    result = CliRunner().invoke(app, [
        "finetune", str(data_dir), "--model", "wav2vec2", "--checkpoint", str(ckpt), "--task", "label",
        "--epochs", "1", "--batch-size", "4", "--crop-seconds", "0.25", "--no-spec-augment", "--workers", "0",
        "--no-progress", "--out", str(out), "--limit", "4", "--train-eval", "full", "--keep-optimizer"])
    assert result.exit_code == 0, result.output
    fin = json.loads((out / "metrics.json").read_text())["finetune"]
    assert fin["limit"] == 4 and fin["train_eval"] == {"rule": "full", "clips": 4, "of": 4}
    assert fin["last_has_optimizer"] and "optimizer" in load_checkpoint(out / "last.pt")
    assert "checkpoint sizes: best.pt" in result.output
    refused = CliRunner().invoke(app, ["finetune", str(data_dir), "--task", "caption", "--limit", "4"])
    assert isinstance(refused.exception, EmbedstoreError) and "--limit" in str(refused.exception)


# ---- resume and early stopping ------------------------------------------------------------------


def _trained_weights(ckpt: Path, n_classes: int) -> int:
    """Weights the optimizer updates: the network's parameters minus the frozen conv feature encoder."""
    net = FinetuneModel(load_encoder("wav2vec2", str(ckpt)), n_classes)
    return sum(p.numel() for name, p in net.named_parameters() if ".feature_extractor." not in name)


def test_interrupted_run_resumes_exactly(run, data_dir, ckpt, tmp_path, monkeypatch):
    import embedstore.heads.training as loop_module

    report3, _ = run
    out = tmp_path / "resumed"
    real_epoch, calls = loop_module.train_epoch, []

    def interrupt_in_epoch_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(loop_module, "train_epoch", interrupt_in_epoch_3)
        with pytest.raises(KeyboardInterrupt):
            finetune(data_dir, model=w2v(ckpt), epochs=3, out=out, **FAST)
    saved, best = load_checkpoint(out / "last.pt"), load_checkpoint(out / "best.pt")
    assert saved["epoch"] == 2 and "optimizer" in saved and "optimizer" not in best
    # mid-run, last.pt carries AdamW's two float32 moments per trained weight; best.pt only the weights
    moments = 2 * 4 * _trained_weights(ckpt, len(GENRES))
    grown = (out / "last.pt").stat().st_size - (out / "best.pt").stat().st_size
    assert moments < grown < 1.3 * moments

    resumed = finetune(data_dir, model=w2v(ckpt), epochs=3, out=out, resume=True, **FAST)
    assert resumed.resumed_from == 2 and not any("optimizer" in n for n in resumed.notes)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert resumed.history[:2] == saved["history"]
    # epoch 3 started from the saved weights, optimizer and RNG state: identical to an uninterrupted run
    a, b = load_checkpoint(out / "last.pt"), load_checkpoint(report3.last_path)
    assert a["epoch"] == b["epoch"] == 3
    for k in b["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6)
    assert resumed.history[2]["train_loss"] == pytest.approx(report3.history[2]["train_loss"], rel=1e-5)


def test_finished_run_drops_optimizer_state_unless_kept(data_dir, ckpt, tmp_path):
    quick = {**FAST, "limit": 4, "batch_size": 4}
    plain = finetune(data_dir, model=w2v(ckpt), epochs=1, out=tmp_path / "plain", **quick)
    last, best = load_checkpoint(plain.last_path), load_checkpoint(plain.best_path)
    assert "optimizer" not in last and "optimizer" not in best and not plain.last_has_optimizer
    assert last["epoch"] == best["epoch"] == 1
    assert all(torch.equal(last["model"][k], best["model"][k]) for k in best["model"])
    sizes = {p.name: p.stat().st_size for p in (plain.best_path, plain.last_path)}
    moments = 2 * 4 * _trained_weights(ckpt, len(GENRES))
    assert plain.checkpoint_bytes == sizes and plain.record["finetune"]["checkpoint_bytes"] == sizes
    assert abs(sizes["last.pt"] - sizes["best.pt"]) < 0.2 * moments  # the same weights, a little history
    text = format_finetune_report(plain)
    for name, what in (("best.pt", "weights"), ("last.pt", "weights, no optimizer state")):
        shown = re.search(rf"{re.escape(name)} ([0-9.]+)kB \({what}\)", text)
        assert shown and float(shown.group(1)) * 1000 == pytest.approx(sizes[name], rel=0.01)

    kept = finetune(data_dir, model=w2v(ckpt), epochs=1, out=tmp_path / "kept", keep_optimizer=True, **quick)
    assert "optimizer" in load_checkpoint(kept.last_path) and kept.last_has_optimizer
    assert kept.checkpoint_bytes["last.pt"] - kept.checkpoint_bytes["best.pt"] > moments
    assert "weights + optimizer state" in format_finetune_report(kept)

    # extending a finished run: exact with the kept state, a fresh AdamW (and a note) without it
    extended = finetune(data_dir, model=w2v(ckpt), epochs=2, out=tmp_path / "kept", resume=True,
                        keep_optimizer=True, **quick)
    assert extended.resumed_from == 1 and not any("optimizer" in n for n in extended.notes)
    fresh = finetune(data_dir, model=w2v(ckpt), epochs=2, out=tmp_path / "plain", resume=True, **quick)
    assert fresh.resumed_from == 1 and any("no optimizer state" in n for n in fresh.notes)


def test_resume_refuses_a_different_network(run, data_dir, ckpt):
    report, _ = run
    with pytest.raises(EmbedstoreError, match="layer"):
        finetune(data_dir, model=w2v(ckpt), epochs=4, out=report.out_dir, resume=True, **{**FAST, "layer": 1})


def test_early_stopping_keeps_the_best_epoch(data_dir, ckpt, tmp_path, monkeypatch):
    """Also runs the decoding in worker processes."""
    import embedstore.finetune.train as train_module

    scores = iter([(0.5, 0.7), (0.5, 0.6), (0.5, 0.6), (0.75, 0.1)])  # (accuracy, loss) per epoch
    monkeypatch.setattr(train_module, "_valid_scores", lambda *args: next(scores))
    report = finetune(data_dir, model=w2v(ckpt), epochs=6, out=tmp_path / "stop",
                      **{**FAST, "patience": 1, "batch_size": 16, "workers": 1})
    # epoch 2 improves the loss at equal accuracy; epoch 3 brings no gain -> stop (epoch 4 never runs)
    assert report.stopped_early and report.epochs_run == 3 and report.best_epoch == 2
    assert load_checkpoint(report.best_path)["epoch"] == 2 and load_checkpoint(report.last_path)["epoch"] == 3
    assert report.record["hparams"]["epochs"] == 2


# ---- pieces -------------------------------------------------------------------------------------


def test_clip_features_equal_mean_over_all_frames(ckpt):
    """Windowed pooling = the mean of every frame, the overlapping frames of the last window skipped."""
    enc = load_encoder("wav2vec2", str(ckpt), window_seconds=0.5)
    net = FinetuneModel(enc, 4).eval()
    wave = np.random.default_rng(1).normal(size=int(1.2 * SR)).astype(np.float32)
    with torch.inference_mode():
        got = net.clip_features([wave, wave[:4000]]).numpy()
        w = 8000  # 0.5 s windows at 0.0 s, 0.5 s and an end-aligned one at 0.7 s (overlapping 0.3 s)
        parts = [enc(torch.from_numpy(wave[s : s + w])[None]) for s in (0, 8000, int(1.2 * SR) - w)]
        frames = [[p.hidden_states[layer][0] for p in parts] for layer in range(3)]
        n = frames[0][2].shape[0]
        skip = round(0.6 * n)  # (1.0 s - 0.7 s) / 0.5 s of the last window repeats the second
        want = np.stack([torch.cat([f[0], f[1], f[2][skip:]]).mean(0).numpy() for f in frames])
        short = np.stack([h[0].mean(0).numpy() for h in enc(torch.from_numpy(wave[:4000])[None]).hidden_states])
    np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[1], short, rtol=1e-4, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients(ckpt):
    def grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        enc = load_encoder("wav2vec2", str(ckpt))
        enc.model.config.layerdrop = 0.0
        enc.model.config.apply_spec_augment = False
        freeze_feature_encoder(enc)
        if checkpointing:
            assert enable_gradient_checkpointing(enc)
        net = FinetuneModel(enc, 4, dropout=0.0).train()
        enc.frozen = False
        for m in net.modules():  # no dropout: both passes must compute the same function
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        x = torch.from_numpy(np.random.default_rng(0).normal(size=(3, 8000)).astype(np.float32))
        loss = torch.nn.functional.cross_entropy(net(x, torch.tensor([8000, 8000, 8000])), torch.tensor([0, 1, 2]))
        loss.backward()
        return {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}

    plain, ckpted = grads(False), grads(True)
    assert plain.keys() == ckpted.keys() and not any("feature_extractor" in k for k in plain)
    assert any(k.startswith("encoder.model.encoder.layers.") for k in plain)
    for k in plain:
        torch.testing.assert_close(ckpted[k], plain[k], rtol=1e-4, atol=1e-6)


def test_crops_are_deterministic_per_epoch(data_dir):
    ds = discover_dataset(data_dir)
    splits = task_splits(ds, "label")
    crops = CropDataset(ds.root, splits.tracks["train"], splits.codes("train"), SR, 0.5, seed=3)
    crops.set_epoch(1)
    a = [crops[i].wave for i in range(3)]
    assert all(w.shape == (8000,) for w in a)
    assert all(np.array_equal(x, crops[i].wave) for i, x in enumerate(a))
    crops.set_epoch(2)
    assert not all(np.array_equal(x, crops[i].wave) for i, x in enumerate(a))
    # a crop is a slice of the clip (at the file's own rate: exact samples), at its decoded amplitude, or
    # peak-normalised on its own with gain="peak" (as extraction's --gain)
    full = load_audio(ds.root / splits.tracks["train"][0].path, SR)
    crop = crops[0].wave
    start = int(np.argmax(np.correlate(full, crop, mode="valid")))
    piece = full[start : start + len(crop)]
    np.testing.assert_array_equal(crop, piece)
    peaked = CropDataset(ds.root, splits.tracks["train"], splits.codes("train"), SR, 0.5, seed=3, gain="peak")
    peaked.set_epoch(2)
    np.testing.assert_allclose(peaked[0].wave, crop / np.abs(crop).max(), atol=1e-6)


def test_task_splits_hold_out_validation_when_missing(gtzan_clean_dir):
    ds = discover_dataset(gtzan_clean_dir)  # random 80/20 train/test, no valid
    splits = task_splits(ds, "genre", seed=0)
    assert splits.valid_source == "inner"
    train, valid = splits.tracks["train"], splits.tracks["valid"]
    assert valid and not {t.id for t in train} & {t.id for t in valid}
    assert len(train) + len(valid) == len(ds.split_tracks("train"))
    assert len(valid) == -(-15 * len(ds.split_tracks("train")) // 100)  # the probes' carve-out: 15 %, rounded up
    with pytest.raises(DatasetError, match="no such labels"):
        task_splits(ds, "mood")


def test_checkpoint_files_are_atomic_and_checked(tmp_path):
    torch.manual_seed(5)
    np.random.seed(5)
    state = rng_state()
    x = (torch.rand(3), np.random.rand(3))
    path = save_checkpoint({"epoch": 1, "rng": state, "t": torch.arange(4)}, tmp_path / "last.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    set_rng_state(load_checkpoint(path)["rng"])
    torch.testing.assert_close(torch.rand(3), x[0])
    np.testing.assert_array_equal(np.random.rand(3), x[1])
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="bad.pt"):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(ModelError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"precision": "fp8"}, EmbedstoreError, "--precision"),
        ({"batch_size": 1}, EmbedstoreError, "--batch-size"),
        ({"limit": 1}, EmbedstoreError, "--limit"),
        ({"train_eval": "half"}, EmbedstoreError, "--train-eval"),
        ({"task": "genre"}, DatasetError, "no such labels"),
        ({"layer": 7}, ModelError, "--layer 7"),
        ({"gain": "loud"}, EmbedstoreError, "--gain"),
    ],
)
def test_bad_options_are_clear_errors(data_dir, ckpt, tmp_path, options, error, match):
    with pytest.raises(error, match=match):
        finetune(data_dir, model=w2v(ckpt), epochs=1, out=tmp_path / "bad", **{**FAST, **options})


# ---- clips too short for the encoder --------------------------------------------------------------

#: the tiny conv stack's receptive field (tests/test_encoders.py) and SpecAugment's 10-frame masks
#: at a hop of 320 samples: training with masking needs 345 + 9 * 320 samples
FIELD, TRAIN_MIN = 345, 345 + 9 * 320


@pytest.fixture(scope="module")
def tiny_mert_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import save_tiny_mert

    return save_tiny_mert(tmp_path_factory.mktemp("ft_mert") / "mert")


@pytest.fixture(scope="module")
def short_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A manifest: 4 normal train clips per genre plus train clips of 1, 100 and 400 samples; 2 valid
    and 2 test clips per genre plus a 100-sample test clip (16 kHz)."""
    root = tmp_path_factory.mktemp("ft_short")
    rng = np.random.default_rng(1)
    rows = []
    for genre in GENRES:
        for split, n in (("train", 4), ("valid", 2), ("test", 2)):
            for i in range(n):
                name = f"{genre}.{split}.{i}.wav"
                sf.write(root / name, render_genre(genre, SR, CLIP_SECONDS, rng), SR)
                rows.append((name, genre, split))
    for name, samples, genre, split in (("n1.wav", 1, "classical", "train"), ("n100.wav", 100, "hiphop", "train"),
                                        ("n400.wav", 400, "classical", "train"), ("t100.wav", 100, "hiphop", "test")):
        sf.write(root / name, rng.uniform(-0.5, 0.5, samples).astype(np.float32), SR)
        rows.append((name, genre, split))
    with open(root / "manifest.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("path", "label", "split"), *rows])
    return root


def test_training_minimum_covers_specaugment(ckpt):
    """In training mode with SpecAugment the encoder asks for 10 frames; transformers fails on fewer."""
    from embedstore.finetune.data import Item, usable_items

    encoder = load_encoder("wav2vec2", str(ckpt))
    assert encoder.min_samples == FIELD
    encoder.model.train()
    encoder.frozen = False
    assert encoder.min_samples == TRAIN_MIN
    good, bad = usable_items([Item(0, np.zeros(TRAIN_MIN, np.float32), 0), Item(1, np.zeros(TRAIN_MIN - 1, np.float32), 1),
                              Item(2, None, 0, "empty file (0 bytes)")], encoder)
    assert [it.index for it in good] == [0]
    assert bad == [(1, f"too short for wav2vec2: {TRAIN_MIN - 1} samples (0.202 s at 16000 Hz), needs at least "
                       f"{TRAIN_MIN} (0.202 s)"), (2, "empty file (0 bytes)")]
    assert encoder(torch.randn(1, TRAIN_MIN)).frame_lengths.tolist() == [10]
    with pytest.raises(ValueError, match="mask_length"):  # what the minimum protects against
        encoder.model(torch.randn(1, TRAIN_MIN - 1))


@pytest.mark.parametrize("model", ["wav2vec2", "mert"])
def test_finetune_skips_clips_too_short_for_the_encoder(model, short_data_dir, ckpt, tiny_mert_ckpt, tmp_path):
    from embedstore.store import info as store_info

    checkpoint = str(ckpt if model == "wav2vec2" else tiny_mert_ckpt)
    options = {**FAST, "model": w2v(checkpoint, model), "spec_augment": True, "batch_size": 4}
    report = finetune(short_data_dir, epochs=1, out=tmp_path / "run", train_eval="full",
                      export_to_store=tmp_path / "s.zarr", **options)
    # training (SpecAugment on) refuses all three short crops; evaluation only those under the receptive field
    assert report.history[0]["skipped"] == 3
    notes = " | ".join(report.notes)
    assert "epoch 1: 3 crop(s) failed" in notes and f"too short for {model}" in notes
    assert "train: 2 clip(s) failed" in notes and "test: 1 clip(s) failed" in notes
    assert "t100" not in report.record["predictions"]["test"]["track_ids"]
    assert report.record["metrics"]["test"]["n"] == 2 * len(GENRES)
    # the export names the clips under the receptive field, at the encoder's rate (MERT: 24 kHz)
    scale = 1 if model == "wav2vec2" else 1.5
    failures = {f["path"]: f["reason"] for f in store_info(tmp_path / "s.zarr")["datasets"][0]["failures"]}
    assert sorted(failures) == ["n1.wav", "n100.wav", "t100.wav"]
    assert failures["n100.wav"].startswith(f"too short for {model}: {int(100 * scale)} samples")
    assert report.export.models[0].written == 8 * len(GENRES) + 1  # the normal clips and n400


# ---- the clip pooler shared with extraction (extract/encoding.pool_clips, extract/pooling) ---------


def test_finetune_clip_features_equal_the_rows_extract_stores(ckpt, tmp_path):
    """The fine-tune model pools with extraction's clip pooler: its embeddings are the stored rows."""
    clips_dir = tmp_path / "clips"
    clips_dir.mkdir()
    rng = np.random.default_rng(3)
    for name, seconds in (("long.wav", 1.3), ("one.wav", 0.5), ("short.wav", 0.3)):  # 0.5 s windows
        sf.write(clips_dir / name, rng.uniform(-0.5, 0.5, int(seconds * SR)).astype(np.float32), SR)
    (clips_dir / "manifest.csv").write_text("path,label,split\nlong.wav,a,train\none.wav,b,train\nshort.wav,a,test\n")
    enc = load_encoder("wav2vec2", str(ckpt), window_seconds=0.5)
    torch.manual_seed(0)
    with torch.no_grad():  # weights unlike the checkpoint's, as after fine-tuning
        for p in enc.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ds = discover_dataset(clips_dir)
    path = tmp_path / "s.zarr"
    extract_dataset(ds, [("tiny", enc)], path, ExtractOptions(workers=0, progress=False, batch_size=2))
    emb = load_embeddings(path, model="tiny", layer="all")
    order = [list(emb.track_ids).index(t.id) for t in ds.tracks]
    waves = [load_audio(clips_dir / t.path, SR) for t in ds.tracks]
    assert max(w.shape[0] for w in waves) > enc.window_samples  # a clip longer than one window
    net = FinetuneModel(enc, 2).eval()
    with torch.inference_mode():
        feats = net.clip_features(waves, batch_size=5).numpy()  # other batching than the extraction's
    assert feats.shape == (3, enc.num_layers, enc.layer_widths[0])
    np.testing.assert_allclose(feats, emb.X[order], rtol=1e-5, atol=1e-6)
    single = FinetuneModel(enc, 2, layer=-1).eval()
    with torch.inference_mode():
        last = single.clip_features(waves).numpy()[:, 0]
    np.testing.assert_allclose(last, emb.X[order, -1], rtol=1e-5, atol=1e-6)


def test_gradients_flow_through_the_pooler_in_training(ckpt):
    enc = load_encoder("wav2vec2", str(ckpt), window_seconds=0.5)
    net = FinetuneModel(enc, 3, dropout=0.0).train()
    enc.frozen = False
    wave = np.random.default_rng(1).normal(size=int(1.3 * SR)).astype(np.float32)
    feats = net.clip_features([wave, wave[:5000]])
    assert feats.requires_grad and feats.shape == (2, enc.num_layers, enc.layer_widths[0])
    net.head_logits(feats).logsumexp(1).sum().backward()
    grads = {n: p.grad for n, p in net.named_parameters() if p.requires_grad}
    transformer = [g for n, g in grads.items() if ".encoder.layers." in n]
    assert transformer and all(g is not None and bool(g.abs().sum() > 0) for g in transformer)
    # training crops (single windows) take the same path
    net.zero_grad()
    crops = torch.from_numpy(np.stack([wave[:4000], wave[4000:8000]]))
    net(crops, torch.tensor([4000, 3500])).sum().backward()
    assert all(g is not None and bool(g.abs().sum() > 0) for n, g in
               ((n, p.grad) for n, p in net.named_parameters() if ".encoder.layers." in n))


def test_window_moments_merged_equal_the_joined_frames_with_their_gradients():
    """Two windows of one clip (the second's first 3 frames repeat the first) and a padded window of
    another clip: mean, std and the gradients equal a direct computation on the joined frames."""
    rng = np.random.default_rng(0)
    hidden = torch.tensor(rng.normal(size=(3, 7, 4)), dtype=torch.float32, requires_grad=True)
    first, end = torch.tensor([0, 3, 0]), torch.tensor([7, 7, 5])
    merged = merge_moments(window_moments(hidden, first, end), torch.tensor([0, 0, 1]), 2)
    h = hidden.detach().numpy()
    joined = np.concatenate([h[0], h[1, 3:]])  # 11 frames
    assert merged.count.tolist() == [11.0, 5.0]
    got = pooled(merged, "mean+std").detach().numpy()
    np.testing.assert_allclose(got[0], np.concatenate([joined.mean(0), joined.std(0)]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], np.concatenate([h[2, :5].mean(0), h[2, :5].std(0)]), rtol=1e-5, atol=1e-6)
    merged.mean[0].sum().backward()
    want = np.zeros((3, 7, 4), dtype=np.float32)
    want[0], want[1, 3:] = 1 / 11, 1 / 11  # the frames counted once; repeated and other-clip frames 0
    np.testing.assert_allclose(hidden.grad.numpy(), want, rtol=1e-6)
    # merging the running moments of a clip with a new window equals merging all windows at once
    step = merge_moments(window_moments(hidden[:1], first[:1], end[:1]), torch.tensor([0]), 1)
    parts = Moments.cat([step, window_moments(hidden[1:2], first[1:2], end[1:2])])
    again = merge_moments(parts, torch.tensor([0, 0]), 1)
    np.testing.assert_allclose(again.m2.detach().numpy(), merged.m2[:1].detach().numpy(), rtol=1e-5)
