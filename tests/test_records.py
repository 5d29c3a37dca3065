"""Result records (store/records.py): typed, schema-tagged, atomic, one reader for tagged and legacy
files, one naming rule."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embedstore.errors import StoreError
from embedstore.store.records import (
    CAPTION_SCHEMA,
    PROBE_SCHEMA,
    CaptionRecord,
    ProbeRecord,
    load_records,
    read_record,
    record_filename,
    results_dir,
    save_record,
)


def _probe(**kw) -> ProbeRecord:
    args = dict(task="genre", dataset="gtzan", model="mert", layer=3, head="mlp", layer_name="layer_3", layers=[3],
                selection_score=0.7, protocol={"splits": "train/valid/test", "valid_source": "inner",
                                               "valid_fraction": 0.15, "class_counts": {"train": [[4, 5]]},
                                               "unassigned": {"": 2}},
                metrics={"test": {"accuracy": 0.6, "labels": ["a", "b"]}},
                predictions={"test": {"track_ids": ["t1"], "y_true": [0], "y_pred": [[1]]}})
    args.update(kw)
    return ProbeRecord(**args)


def _caption(**kw) -> CaptionRecord:
    args = dict(task="caption", dataset="caps", model="mert", layer="weighted", head="t5", layers=[0, 1],
                t5="t5-small", bert="bert-base", inputs="frames", layer_mix="softmax",
                protocol={"splits": "train/valid/test", "valid_source": "split", "valid_fraction": None},
                metrics={"test": {"bleu": 0.1, "n": 3}}, examples=[{"track_id": "c1", "generated": "x",
                                                                     "reference": "y"}])
    args.update(kw)
    return CaptionRecord(**args)


def test_probe_record_round_trip_is_tagged_and_atomic(tmp_path):
    store = tmp_path / "s.zarr"
    rec = _probe(selection_score=np.float32(0.75), seeds=[np.int64(0)], layer_weights=None)
    assert rec.selection_score == 0.75 and type(rec.seeds[0]) is int  # numpy values become JSON ones
    assert rec.selected_on == "train_carveout"  # derived from the protocol: a carve-out of train chose it
    path = save_record(store, rec)
    assert path == results_dir(store) / "genre__gtzan__mert__L3__mlp.json"
    on_disk = json.loads(path.read_text())
    assert on_disk["schema"] == PROBE_SCHEMA and on_disk["model"] == "mert" and on_disk["layer"] == 3
    assert on_disk["protocol"]["class_counts"] == {"train": [[4, 5]]} and on_disk["protocol"]["unassigned"] == {"": 2}
    assert "layer_selection" not in on_disk and "finetune" not in on_disk  # empty optional sections left out
    assert [p.name for p in results_dir(store).iterdir()] == [path.name]  # no temporary file left behind
    back = read_record(path)
    assert isinstance(back, ProbeRecord) and back == rec
    assert back["metrics"]["test"]["accuracy"] == 0.6 and "layer_selection" not in back  # mapping view


def test_nan_scores_are_stored_as_null(tmp_path):
    rec = _probe(selection_score=float("nan"), metrics={"test": {"accuracy": np.float64("nan")}})
    path = save_record(tmp_path / "s.zarr", rec)
    assert '"selection_score": null' in path.read_text()
    assert read_record(path).selection_score is None and read_record(path).metrics["test"]["accuracy"] is None


def test_file_names_keep_every_field_that_tells_two_records_apart(tmp_path):
    store = tmp_path / "s.zarr"
    names = {save_record(store, r).name for r in [
        _probe(), _probe(preset="paper"), _probe(head="logreg"), _probe(layer="weighted"),
        _probe(model="mert+ft-genre"), _probe(model="mert-ft-genre"),
        _caption(), _caption(t5="google/flan-t5-base"), _caption(inputs="pooled"), _caption(preset="conv1x1")]}
    assert len(names) == 10 and len(load_records(store)) == 10
    assert "genre__gtzan__mert+ft-genre__L3__mlp.json" in names
    assert "caption__caps__mert__Lweighted__t5__flan-t5-base__frames.json" in names
    assert record_filename(_caption(inputs="audio crops (10 s, 25 frames per step)")).endswith("__t5-small__audio.json")
    save_record(store, _probe(selection_score=0.9))  # the same key replaces its file
    assert len(load_records(store)) == 10
    assert [r.selection_score for r in load_records(store, task="genre", model="mert", dataset="gtzan")
            if r.head == "mlp" and r.preset == "default" and r.layer == 3] == [0.9]


def test_legacy_untagged_files_are_read_by_their_metrics(tmp_path):
    store = tmp_path / "s.zarr"
    folder = results_dir(store)
    folder.mkdir()
    probe = {"task": "genre", "dataset": "gtzan", "model": "mert", "layer": 2, "head": "logreg", "preset": "default",
             "selection_score": 0.5, "protocol": {"splits": "kfold", "valid_source": "split"},
             "metrics": {"test": {"accuracy": 0.4}}, "created": "2024-01-01T00:00:00+00:00", "from_the_past": 1}
    caption = {"task": "caption", "dataset": "caps", "model": "wav2vec2", "layer": "weighted", "head": "t5-finetune",
               "t5": "/tmp/t5", "inputs": "audio crops (1 s, 25 frames per step)", "hparams": {"weights": "random"},
               "protocol": {"split": "train/valid/test splits", "n": {"train": 4}},
               "metrics": {"test": {"bleu": 0.2, "n": 2}}}
    (folder / "genre__gtzan__mert__L2__logreg.json").write_text(json.dumps(probe))
    (folder / "caption__caps__wav2vec2__Lweighted__t5-finetune.json").write_text(json.dumps(caption))
    caps, genre = load_records(store)
    assert isinstance(genre, ProbeRecord) and genre.schema == PROBE_SCHEMA and genre.layer == 2
    assert genre.selected_on == "valid_fold"  # written before the field: derived from the protocol
    assert genre.created == "2024-01-01T00:00:00+00:00" and genre.extra == {"from_the_past": 1}
    assert isinstance(caps, CaptionRecord) and caps.schema == CAPTION_SCHEMA and caps.t5 == "/tmp/t5"
    assert caps.model == "wav2vec2+random+ft-caption"  # the old caption fine-tune key names its entry again
    assert caps.selected_on is None  # not recorded, and not guessed
    path = save_record(store, genre)  # rewritten in today's format, unknown keys kept
    assert json.loads(path.read_text())["from_the_past"] == 1 and json.loads(path.read_text())["schema"] == PROBE_SCHEMA


def test_a_record_saved_under_the_old_name_is_replaced_not_duplicated(tmp_path):
    store = tmp_path / "s.zarr"
    folder = results_dir(store)
    folder.mkdir()
    old = _probe(model="mert+ft-genre", selection_score=0.1).to_dict()
    (folder / "genre__gtzan__mert-ft-genre__L3__mlp.json").write_text(json.dumps(old))  # "+" was written "-"
    other = _caption().to_dict()
    other["t5"] = "t5-base"  # a different captioner under the old caption name: kept
    (folder / "caption__caps__mert__Lweighted__t5.json").write_text(json.dumps(other))
    save_record(store, _probe(model="mert+ft-genre", selection_score=0.8))
    save_record(store, _caption())
    recs = load_records(store)
    assert [r.selection_score for r in recs if r.task == "genre"] == [0.8]
    assert sorted(r.t5 for r in recs if r.task == "caption") == ["t5-base", "t5-small"]


def test_bad_record_files_are_one_line_errors_naming_the_file(tmp_path):
    store = tmp_path / "s.zarr"
    folder = results_dir(store)
    folder.mkdir()
    bad = folder / "x.json"
    bad.write_text("{not json")
    with pytest.raises(StoreError, match=r"x\.json: unreadable result record") as err:
        load_records(store)
    assert "\n" not in str(err.value)
    bad.write_text(json.dumps({**_probe().to_dict(), "schema": "embedstore.probe/9"}))
    with pytest.raises(StoreError, match=r"x\.json: record schema 'embedstore.probe/9' is not one this"):
        read_record(bad)
    bad.write_text(json.dumps({"task": "genre", "metrics": {"test": {"accuracy": 1.0}}}))
    with pytest.raises(StoreError, match=r"x\.json: embedstore.probe/1 record without dataset, model, layer, head"):
        read_record(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(StoreError, match="not a result record"):
        read_record(bad)
