"""The command line as a user meets it: help, one-line errors with non-zero exits, real runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from embedstore.extract.synthetic import make_gtzan_like


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``embedstore ARGS`` in a fresh interpreter, offline, as a user runs it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    env.pop("EMBEDSTORE_STORE", None)
    return subprocess.run(
        [sys.executable, "-m", "embedstore.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_help_lists_the_commands():
    result = run("--help")
    assert result.returncode == 0
    for command in ("extract", "info", "probe", "analyze", "datasets", "models", "demo"):
        assert command in result.stdout


def test_models_lists_rates_layers_and_widths():
    result = run("models", "--json")
    assert result.returncode == 0
    specs = {spec["name"]: spec for spec in json.loads(result.stdout)}
    assert specs["mert"]["num_layers"] == 13 and specs["mert"]["width"] == 768 and specs["mert"]["sample_rate"] == 24000
    assert specs["wav2vec2"]["sample_rate"] == 16000 and specs["mert-330m"]["num_layers"] == 25
    assert specs["clap"]["sample_rate"] == 48000


def test_user_errors_are_one_line(tmp_path):
    assert_one_line_error(run("datasets", str(tmp_path / "missing")), "missing")
    assert_one_line_error(run("info", str(tmp_path / "none.zarr")), "none.zarr")
    root = make_gtzan_like(tmp_path / "ds", n_per_class=2, seconds=0.5, broken=False)
    assert_one_line_error(run("extract", str(root), "--model", "nope", "--store", str(tmp_path / "s.zarr")), "nope")
    assert_one_line_error(
        run("extract", str(root), "--model", "mfcc", "--batch-size", "0", "--store", str(tmp_path / "s.zarr")), "--batch-size"
    )
    # a missing checkpoint with the hub offline says how to get it, without a traceback
    assert_one_line_error(
        run("extract", str(root), "--model", "wav2vec2", "--store", str(tmp_path / "s.zarr")), "wav2vec2-base"
    )


def test_extract_info_probe_round_trip(tmp_path):
    root = make_gtzan_like(tmp_path / "ds", n_per_class=5, seconds=1.0, broken=True)
    store = tmp_path / "s.zarr"
    result = run("extract", str(root), "--model", "mfcc", "--store", str(store), "--workers", "0")
    assert result.returncode == 0, result.stderr
    assert "mfcc: 20 written" in result.stdout
    assert "skipped while scanning 4 file(s)" in result.stderr  # the broken files, each reported once
    assert sum(line.endswith(".wav: empty file (0 bytes)") for line in result.stderr.splitlines()) == 1
    again = run("extract", str(root), "--model", "mfcc", "--store", str(store), "--workers", "0")
    assert "0 written, 20 already done" in again.stdout

    info = json.loads(run("info", str(store), "--json").stdout)
    model = info["datasets"][0]["models"][0]
    assert model["name"] == "mfcc" and model["done"] == 20 and model["failed"] == 0

    probe = run("probe", "--store", str(store), "--task", "genre", "--head", "logreg", "--layer", "combined", "--json")
    assert probe.returncode == 0, probe.stderr
    records = json.loads(probe.stdout)
    assert len(records) == 1 and records[0]["model"] == "mfcc" and records[0]["head"] == "logreg"
    assert 0.0 <= records[0]["metrics"]["test"]["accuracy"] <= 1.0

    missing = run("probe", "--store", str(store), "--task", "mood")
    assert_one_line_error(missing, "mood", "genre")


@pytest.mark.skipif(sys.platform != "linux", reason="byte-for-byte PNG header check only")
def test_analyze_pca_writes_a_png(tmp_path):
    root = make_gtzan_like(tmp_path / "ds", n_per_class=4, seconds=1.0, broken=False)
    store = tmp_path / "s.zarr"
    assert run("extract", str(root), "-m", "mfcc", "--store", str(store), "--workers", "0").returncode == 0
    result = run("analyze", "pca", "--store", str(store), "--split", "all", "--out", str(tmp_path / "fig"))
    assert result.returncode == 0, result.stderr
    pngs = list((tmp_path / "fig").glob("*.png"))
    assert len(pngs) == 1 and pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- layouts: labels from folders, the task resolved when --task is omitted ---------------------

ODD_GENRES = {"ambient": "classical", "drill": "hiphop", "grindcore": "metal", "jazz": "jazz"}


def test_any_genre_names_and_a_named_folder_label_answer_to_task_genre(tmp_path):
    """A GTZAN-layout folder with non-standard genre names is labelled by genre folder, a folder of
    genres under a wrapper answers to --task genre with --label-name genre, and probe without
    --task uses the one label task both have."""
    from synth import ClipFormat, make_class_folders

    gtzan = tmp_path / "gtzan"
    mixed = (ClipFormat("wav", 22050), ClipFormat("flac", 16000, 2), ClipFormat("ogg", 22050, 1, "VORBIS"))
    make_class_folders(gtzan / "genres_original", ODD_GENRES, 5, name="{cls}.{i:05d}", formats=mixed, seconds=0.5)
    mine = tmp_path / "mine"
    make_class_folders(mine / "train_audio", {"calm": "classical", "loud": "metal"}, 5, seconds=0.5)
    store = str(tmp_path / "s.zarr")

    summary = json.loads(run("datasets", str(gtzan), "--json").stdout)
    assert summary["kind"] == "gtzan" and summary["tasks"] == {"genre": "label"}
    assert summary["labels"] == {g: 5 for g in ODD_GENRES}
    assert summary["layout"]["extra_genres"] == ["ambient", "drill", "grindcore"]
    assert len(summary["layout"]["missing_standard_genres"]) == 9
    for args in ([str(gtzan)], [str(mine), "--label-name", "genre"]):
        result = run("extract", *args, "-m", "mfcc", "--store", store, "--workers", "0", "--no-progress")
        assert result.returncode == 0, result.stderr

    records = json.loads(run("probe", "--store", store, "--task", "genre", "--head", "logreg", "--layer", "0",
                             "--json", "--no-progress").stdout)
    labels = {r["dataset"]: r["metrics"]["test"]["labels"] for r in records}
    assert labels == {"gtzan": sorted(ODD_GENRES), "mine": ["calm", "loud"]}
    untold = run("probe", "--store", store, "--head", "logreg", "--layer", "0", "--json", "--no-progress")
    assert untold.returncode == 0, untold.stderr
    assert [(r["task"], r["dataset"]) for r in json.loads(untold.stdout)] == [("genre", "gtzan"), ("genre", "mine")]


def test_omitted_task_with_several_or_no_label_tasks_is_a_one_line_error(tmp_path):
    import numpy as np

    from embedstore.store import TrackTable, open_store

    store = tmp_path / "s.zarr"
    with open_store(store, "a") as st:
        for name, task in (("a", "genre"), ("b", "mood")):
            table = TrackTable(ids=["t0", "t1"], paths=["0.wav", "1.wav"], labels=["x", "y"], splits=["train", "test"])
            st.write_tracks(name, table, {"kind": "folder", "tasks": {task: "label"}})
    assert_one_line_error(run("probe", "--store", str(store)), "--task", "several label tasks (genre, mood)",
                          "a: genre; b: mood")
    # fine-tuning a folder of loose files: nothing to learn, said before any model loads
    loose = tmp_path / "loose"
    loose.mkdir()
    import soundfile as sf

    for i in range(5):
        sf.write(str(loose / f"{i}.wav"), np.zeros(800, np.float32), 8000)
    assert_one_line_error(run("finetune", str(loose), "-m", "wav2vec2"), "--task", "no class labels", "loose")
def test_probe_prints_each_weak_evidence_warning_once(tmp_path):
    from test_probe import weak_store_arrays, write_store

    X, labels, splits, ids = weak_store_arrays()
    store = tmp_path / "weak.zarr"
    write_store(store, {"enc_a": X, "enc_b": X}, labels, splits, ids)
    result = run("probe", "--store", str(store), "--head", "logreg", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "clips: train 24, test 4; valid: 20 clips (split); 3 labelled clips in no split (unused)" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 4 and len(set(warnings)) == 4, result.stderr
    for needle in ("no train clips of 'pop'", "fewer than 5 clips", "in no split", "all 4 rows tie"):
        assert sum(needle in w for w in warnings) == 1, (needle, warnings)
    assert "warning" not in result.stdout  # the table on stdout stays clean for pipes


def test_demo_conclusions_come_from_the_records():
    import numpy as np
    from test_probe import _record, layered

    from embedstore.demo import conclusions
    from embedstore.heads.metrics import mcnemar_exact
    from embedstore.heads.protocol import probe_arrays

    X, labels, splits, ids = layered(n=200, dim=6, informative=1)
    layered_recs = [_record(probe_arrays(X[:, li], labels, splits, head="logreg", track_ids=ids, n_boot=50), li,
                            model="enc") for li in range(4)]
    same = [_record(probe_arrays(X[:, 1], labels, splits, head="logreg", track_ids=ids, n_boot=50), li,
                    model="flat") for li in range(3)]  # every layer the same features: nothing to rank
    enc, flat, across = conclusions(layered_recs + same)

    best = max(layered_recs, key=lambda r: r["selection_score"])  # chosen on validation: the informative layer
    assert best["layer"] == 1
    test = best["metrics"]["test"]
    lo, hi = test["ci95"]["accuracy"]
    assert enc.startswith(f"enc: validation (valid accuracy {100 * best['selection_score']:.1f} %) picks layer 1 (layer1),")
    assert f"{100 * test['accuracy']:.1f} % [{100 * lo:.1f} %, {100 * hi:.1f} %] on the {test['n']} test clips" in enc
    y = np.array(best["predictions"]["test"]["y_true"])
    ok = np.array(best["predictions"]["test"]["y_pred"][0]) == y
    p = [mcnemar_exact(np.array(r["predictions"]["test"]["y_pred"][0]) == y, ok)["p_value"]
         for r in layered_recs if r is not best]
    worst = min(r["metrics"]["test"]["accuracy"] for r in layered_recs)
    assert sum(v < 0.05 for v in p) == 3
    assert "3 of its 3 other layers differ from it significantly (p < 0.05), 3 of them lower, " \
           f"down to {100 * worst:.1f} %" in enc
    assert flat.startswith("flat: validation (valid accuracy") and "picks layer 0 (layer0)," in flat and "none of its 2 other layers differ" in flat
    assert across.startswith("Across models, validation prefers ") and "p = 1" in across  # same clips, same features
