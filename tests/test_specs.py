"""Dataset/model/layer specs (store/specs.py) and the one validation carve-out (heads/protocol.py)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from embedstore.errors import DatasetError, ModelError, StoreError
from embedstore.heads.protocol import VALID_FRACTION, carve_valid, probe_arrays
from embedstore.store import TrackTable, open_store
from embedstore.store.specs import (
    best_layer,
    finetuned_key,
    layer_index,
    parse_layer,
    resolve_dataset,
    resolve_entry,
    resolve_layers,
    resolve_models,
)

NAMES = ["conv", "block1", "block2", "block3"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """``gtzan`` (genre) holds mert and mert+ft-genre, ``caps`` (caption) holds mert and clap."""
    path = tmp_path_factory.mktemp("specs") / "s.zarr"
    rng = np.random.default_rng(0)
    with open_store(path, "a") as st:
        for ds, tasks, models in (("gtzan", {"genre": "label"}, ("mert", "mert+ft-genre")),
                                  ("caps", {"caption": "caption"}, ("mert", "clap"))):
            st.write_tracks(ds, TrackTable(ids=["a", "b"], paths=["a.wav", "b.wav"]), {"kind": "x", "tasks": tasks})
            for m in models:
                with st.model_writer(ds, m, {"model_name": m, "layer_names": NAMES}, [4, 4, 4, 4]) as w:
                    w.write(np.arange(2), [rng.normal(size=(2, 4)).astype(np.float32) for _ in NAMES])
    with open_store(path, "r") as st:
        yield st


def test_dataset_defaults_and_errors(store):
    assert resolve_dataset(store, "caps") == "caps"
    assert resolve_dataset(store, models=["mert+ft-genre"]) == "gtzan"  # the one holding the model
    assert resolve_dataset(store, models="clap") == "caps"
    assert resolve_dataset(store, task="caption") == "caps"
    with pytest.raises(StoreError, match=r"--dataset 'gtzn': not in the store; did you mean 'gtzan'\? "
                                         r"\(datasets: gtzan, caps\)"):
        resolve_dataset(store, "gtzn")
    with pytest.raises(StoreError, match=r"--dataset: choose a dataset \(datasets holding model 'mert': gtzan, caps"):
        resolve_dataset(store, models=["mert"])
    with pytest.raises(StoreError, match=r"--model 'mret': in no dataset of the store; did you mean 'mert'\?"):
        resolve_dataset(store, models=["mret"])
    with pytest.raises(StoreError, match=r"choose a dataset \(datasets with task 'mood': none"):
        resolve_dataset(store, task="mood")


def test_model_lists_and_single_entries(store):
    assert resolve_models(store, "gtzan") == ["mert", "mert+ft-genre"]  # default: all, in store order
    assert resolve_models(store, "gtzan", ["mert+ft-genre"]) == ["mert+ft-genre"]  # "+" is part of the key
    assert resolve_models(store, "gtzan", "mert") == ["mert"]
    with pytest.raises(StoreError, match=r"--model 'mert\+ft-gnre': not in dataset 'gtzan'; did you mean "
                                         r"'mert\+ft-genre'\? \(models: mert, mert\+ft-genre\)") as err:
        resolve_models(store, "gtzan", ["mert", "mert+ft-gnre"])
    assert "\n" not in str(err.value)
    assert resolve_entry(store, None, "clap") == ("caps", "clap")
    with pytest.raises(StoreError, match=r"--model: choose a model of dataset 'caps' \(models: mert, clap\)"):
        resolve_entry(store, "caps", None)


def test_layer_index_and_parse():
    assert [parse_layer(v) for v in ("-1", " 3 ", "+2", "block1", "best", 5)] == [-1, 3, 2, "block1", "best", 5]
    assert [layer_index(v, NAMES, model="m") for v in (0, -1, "-4", "block2", np.int64(1))] == [0, 3, 0, 2, 1]
    with pytest.raises(ModelError, match=r"--layer 4: out of range, model 'm' has 4 layers \(0\.\.3, or -4\.\.-1"):
        layer_index(4, NAMES, model="m")
    with pytest.raises(ModelError, match=r"--layers 'blok2': model 'm' has no layer of that name; did you mean "
                                         r"'block2'\? \(names: conv, block1, block2, block3"):
        layer_index("blok2", NAMES, model="m", option="--layers")


def test_layer_words_lists_and_weighted_widths():
    assert resolve_layers("all", NAMES, model="m").mode == "all"
    assert resolve_layers("best", NAMES, model="m").indices == [0, 1, 2, 3]
    assert resolve_layers("-2", NAMES, model="m") == resolve_layers(2, NAMES, model="m")
    picked = resolve_layers(["block3", 0], NAMES, model="m")
    assert (picked.mode, picked.indices) == ("list", [3, 0])
    assert resolve_layers("weighted", NAMES, model="m", widths=[4, 4, 4, 4]).mode == "weighted"
    with pytest.raises(ModelError, match=r"--layer weighted: model 'clap' has layers of different widths \[4, 8\]"):
        resolve_layers("weighted", NAMES, model="clap", widths=[4, 4, 8, 8])
    with pytest.raises(ModelError, match=r"--layer best: not available here \(an index, a layer name or all\)"):
        resolve_layers("best", NAMES, model="m", words=("all",))
    with pytest.raises(ModelError, match=r"--layer 'weigthed': .*; did you mean 'weighted'\?"):
        resolve_layers("weigthed", NAMES, model="m")
    with pytest.raises(ModelError, match="give at least one layer"):
        resolve_layers([], NAMES, model="m")


def test_best_layer_is_chosen_on_validation_only():
    def rec(layer, head, valid, test):
        return {"model": "m", "layer": layer, "head": head, "selection_score": valid,
                "metrics": {"test": {"accuracy": test}}}

    records = [rec(0, "logreg", 0.6, 0.99), rec(1, "logreg", 0.8, 0.10), rec(1, "mlp", 0.7, 0.95),
               rec(2, "mlp", 0.8, 0.50), rec("weighted", "mlp", 0.95, 0.99), rec(3, "mlp", None, 1.0),
               {**rec(0, "mlp", 0.99, 1.0), "model": "other"}]
    layer, chosen = best_layer(records, "m")
    assert layer == 1 and chosen["head"] == "logreg"  # 0.8 ties with layer 2: the lower layer; test never read
    assert best_layer([rec(3, "mlp", None, 1.0)], "m") is None


def test_finetuned_key():
    assert finetuned_key("mert", "genre") == "mert+ft-genre"
    assert finetuned_key("wav2vec2", "caption", "random") == "wav2vec2+random+ft-caption"


# ---- the validation carve-out ----------------------------------------------------------------------


def test_carve_out_is_stratified_seeded_and_sized():
    labels = ["a"] * 20 + ["b"] * 12 + ["c"] * 8  # 40 clips
    train, valid = carve_valid(labels, seed=3)
    assert len(valid) == math.ceil(VALID_FRACTION * 40) == 6 and len(train) == 34
    assert sorted(np.concatenate([train, valid]).tolist()) == list(range(40))
    shares = Counter(labels[i] for i in valid)
    assert all(abs(shares[c] - VALID_FRACTION * n) < 1 for c, n in Counter(labels).items())  # each class its share
    assert carve_valid(labels, seed=3)[1].tolist() == valid.tolist()
    assert any(carve_valid(labels, seed=s)[1].tolist() != valid.tolist() for s in range(4, 8))


def test_carve_out_falls_back_to_random_when_classes_are_too_small():
    ten_pairs = [c for c in "abcdefghij" for _ in range(2)]  # 3 valid clips cannot hold one of 10 classes
    train, valid = carve_valid(ten_pairs, seed=0)
    assert len(valid) == 3 and len(train) == 17
    train, valid = carve_valid(["a"] * 9 + ["b"], seed=0)  # a class of one clip
    assert len(valid) == 2 and len(train) == 8
    train, valid = carve_valid(7, seed=0)  # captions: no classes
    assert len(valid) == 2 and len(train) == 5
    with pytest.raises(DatasetError, match="1 train clip"):
        carve_valid(["a"], seed=0)


def test_probes_use_the_carve_out():
    rng = np.random.default_rng(0)
    labels = ["x", "y", "z"] * 20 + ["x", "y", "z"] * 5  # 60 train clips (20 per class), 15 test
    X = rng.normal(size=(len(labels), 3)).astype(np.float32)
    splits = ["train"] * 60 + ["test"] * 15
    res = probe_arrays(X, labels, splits, head="mlp", n_boot=10, seed=2)
    assert res.protocol["valid_source"] == "inner" and res.protocol["valid_fraction"] == VALID_FRACTION
    # ceil(0.15 * 60) = 9 held out, stratified: 3 of each class
    assert res.protocol["class_counts"]["valid"] == [[3, 3, 3]]
    assert res.protocol["class_counts"]["train"] == [[17, 17, 17]]
