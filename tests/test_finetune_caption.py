"""``finetune --task caption``: a tiny wav2vec2 trained end to end with a tiny T5 captioner (CPU, offline)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from embedstore.errors import DatasetError, EmbedstoreError
from embedstore.extract.encoders import EncoderRequest
from embedstore.extract.synthetic import make_musiccaps_like
from embedstore.finetune.caption import (
    block_pool,
    finetune_caption,
    format_caption_finetune_report,
)
from embedstore.heads import caption_metrics as cm
from test_caption import _one_thread, tiny_bert_dir, tiny_t5_dir  # noqa: F401  (shared fixtures)
from tiny_models import save_tiny_wav2vec2

FAST = {"lr_encoder": 1e-3, "lr_head": 3e-3, "batch_size": 4, "crop_seconds": 0.5, "spec_augment": False,
        "patience": None, "workers": 0, "device": "cpu", "progress": False}


def w2v(ckpt) -> EncoderRequest:
    """The encoder of the fast runs: the tiny wav2vec2 checkpoint ``ckpt`` with 0.5 s windows."""
    return EncoderRequest("wav2vec2", str(ckpt), window_seconds=0.5)


@pytest.fixture(scope="module", autouse=True)
def _offline():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_tiny_wav2vec2(tmp_path_factory.mktemp("cap_ckpt") / "w2v")


@pytest.fixture(scope="module")
def caps_dir(tmp_path_factory) -> Path:
    return make_musiccaps_like(tmp_path_factory.mktemp("caps"), n=8, n_missing=0, n_full_video=0, seconds=2.0)


@pytest.fixture(scope="module")
def run(caps_dir, ckpt, tiny_t5_dir, tiny_bert_dir, tmp_path_factory):  # noqa: F811
    from embedstore.extract.encoders import load_encoder

    before = load_encoder("wav2vec2", str(ckpt), device="cpu").state_dict()
    out = tmp_path_factory.mktemp("cap_run")
    store = out / "store.zarr"
    report = finetune_caption(caps_dir, model=w2v(ckpt), t5=tiny_t5_dir, bert=tiny_bert_dir, epochs=4,
                              out=out / "run", store=store, **FAST)
    return report, before, store


def test_training_loss_falls(run):
    report, _, _ = run
    losses = [h["train_loss"] for h in report.history]
    assert len(losses) == 4 and losses[-1] < losses[0]
    best = report.record["hparams"]["best_epoch"]
    valid = [h["valid_loss"] for h in report.history]
    assert valid[best - 1] == min(valid)


def test_transformer_trains_and_conv_stays_frozen(run):
    report, before, _ = run
    after = report.network.encoder.state_dict()
    conv = [k for k in after if "feature_extractor" in k]
    transformer = [k for k in after if ".encoder.layers." in k and k.endswith("weight")]
    assert conv and transformer
    assert all(torch.equal(before[k], after[k]) for k in conv)
    assert all(not torch.equal(before[k], after[k]) for k in transformer)


def test_record_has_caption_metrics_and_is_saved(run, ckpt):
    from embedstore.store.records import load_records

    report, _, store = run
    rec = report.record
    # the model key of a fine-tuned encoder, as the classification fine-tune's (not the frozen "wav2vec2")
    key = (rec["task"], rec["model"], rec["head"], rec["layer"])
    assert key == ("caption", "wav2vec2+ft-caption", "t5-finetune", "weighted")
    assert rec.selected_on == "valid" and rec.checkpoint == str(ckpt)  # the MusicCaps-like folder has a valid split
    test = rec["metrics"]["test"]
    assert set(test) >= {"bert_similarity", "sentence_similarity", "bleu", "distinct_ratio"}
    gen = [p["generated"] for p in report.predictions]
    ref = [p["reference"] for p in report.predictions]
    assert test["n"] == len(gen) == rec["protocol"]["n"]["test"] > 0
    assert test["distinct_ratio"] == cm.distinct_ratio(gen)
    assert test["bleu"] == pytest.approx(cm.bleu(gen, ref))
    assert sum(rec["layer_weights"]) == pytest.approx(1.0)
    saved = load_records(store, task="caption")
    assert len(saved) == 1 and saved[0]["metrics"] == json.loads(json.dumps(rec["metrics"]))
    assert json.loads((report.out / "metrics.json").read_text())["head"] == "t5-finetune"
    text = format_caption_finetune_report(report)
    assert "t5-finetune" in text and "BLEU-4" in text and "epoch 4" in text


def test_block_pool_matches_direct_means():
    rng = np.random.default_rng(0)
    h = torch.from_numpy(rng.normal(size=(2, 7, 3)).astype(np.float32))
    lengths = torch.tensor([7, 4])
    pooled, steps = block_pool(h, lengths, 3)
    assert pooled.shape == (2, 3, 3) and steps.tolist() == [3, 2]
    torch.testing.assert_close(pooled[0, 2], h[0, 6])
    torch.testing.assert_close(pooled[1, 1], h[1, 3])  # only frame 3 of block [3, 6) is valid
    torch.testing.assert_close(pooled[1, 0], h[1, :3].mean(0))


def test_bad_options_are_one_line_errors(caps_dir, ckpt, tiny_t5_dir, tmp_path):  # noqa: F811
    with pytest.raises(DatasetError, match="--task 'genre'") as exc:
        finetune_caption(caps_dir, task="genre", model=w2v(ckpt), t5=tiny_t5_dir, out=tmp_path, **FAST)
    assert "\n" not in str(exc.value)
    with pytest.raises(EmbedstoreError, match="--epochs"):
        finetune_caption(caps_dir, model=w2v(ckpt), epochs=0, out=tmp_path, **FAST)


def test_finetune_dispatches_caption_task(caps_dir, ckpt, tmp_path):
    from embedstore.finetune import finetune

    with pytest.raises(EmbedstoreError, match="--resume"):
        finetune(caps_dir, model=w2v(ckpt), task="caption", resume=True, out=tmp_path,
                 progress=False)
