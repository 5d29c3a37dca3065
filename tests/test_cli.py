"""The command line as a user meets it: help, one-line errors with non-zero exits, real runs."""

from __future__ import annotations

import json
import os
import re
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


# ---- exit statuses, Ctrl-C ---------------------------------------------------------------------

STATUSES = {0: "done", 1: "failed", 2: "usage", 130: "interrupted"}


def test_every_exit_status_is_documented_and_returned(tmp_path):
    """0 done, 1 failed, 2 usage are what the commands return (130: the Ctrl-C test below), and
    `--help` of the app and of each command, and the README, say so."""
    for args in ([], ["extract"], ["analyze", "pca"]):
        text = " ".join(run(*args, "--help").stdout.split())  # rich wraps lines
        for status, word in STATUSES.items():
            assert f"{status} {word}" in text, (args, text[-400:])
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for status, word in STATUSES.items():
        assert f"| {status} | {word}" in readme

    assert run("models").returncode == 0
    failed = run("info", str(tmp_path / "none.zarr"))
    assert failed.returncode == 1 and failed.stderr.startswith("error: ")
    for usage in (["extract"], ["extrct"], ["extract", str(tmp_path), "-m", "mfcc", "--batch-size", "zero"],
                  ["probe", "--head", "mpl"], ["info", "--no-such-option"]):
        result = run(*usage)
        assert_one_line_error(result)
        assert result.returncode == 2, (usage, result.stderr)


def _linked_dataset(root: Path, n_per_class: int, seconds: float = 5.0) -> Path:
    """Class folders ``a/`` and ``b/`` of hard links to one clip: many clips, written in no time."""
    import numpy as np
    import soundfile as sf

    root.mkdir()
    source = root / "source.wav"
    t = np.arange(int(22050 * seconds)) / 22050
    sf.write(str(source), (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 22050)
    for cls in ("a", "b"):
        (root / cls).mkdir()
        for i in range(n_per_class):
            os.link(source, root / cls / f"{cls}{i:04d}.wav")
    source.unlink()
    return root


def _done(store: Path, dataset: str, model: str) -> int:
    from embedstore.store import open_store

    try:
        with open_store(store) as st:
            return int(st.done(dataset, model).sum()) if model in st.models(dataset) else 0
    except Exception:  # not created yet, or caught mid-creation
        return 0


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="POSIX process groups")
def test_ctrl_c_during_extract_exits_130_and_says_what_the_store_keeps(tmp_path):
    """Ctrl-C at a terminal (SIGINT to the whole process group, decoding workers included) stops an
    extraction within seconds, exit 130, one line naming the rows kept, and the store holds them."""
    import signal
    import time

    data = _linked_dataset(tmp_path / "many", n_per_class=100)
    store = tmp_path / "s.zarr"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("EMBEDSTORE_STORE", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "embedstore.cli", "extract", str(data), "-m", "mfcc", "--store", str(store),
         "--workers", "1", "--batch-size", "2", "--flush-seconds", "0", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while _done(store, "many", "mfcc") < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1]
        os.killpg(proc.pid, signal.SIGINT)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=60)
        stopped = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    kept = _done(store, "many", "mfcc")
    assert 2 <= kept < 200
    assert lines[0] == (f"interrupted: {store} keeps many/mfcc: {kept} of 200 clips done; "
                        "run the same command again to extract the rest")
    assert stopped < 5.0, f"took {stopped:.1f} s to stop"

    import numpy as np

    from embedstore.store import load_embeddings

    emb = load_embeddings(store, dataset="many", model="mfcc", layer=0)  # the done rows, whole
    assert emb.X.shape[0] == kept and np.isfinite(emb.X).all()


# ---- messages at the terminal ------------------------------------------------------------------


def _store_with_tracks(path: Path) -> Path:
    """A store with dataset ``gtzan`` (task genre) and no model entry: enough to resolve names."""
    from embedstore.store import TrackTable, open_store

    with open_store(path, "a") as st:
        table = TrackTable(ids=["t0", "t1"], paths=["0.wav", "1.wav"], labels=["x", "y"], splits=["train", "test"])
        st.write_tracks("gtzan", table, {"kind": "gtzan", "tasks": {"genre": "label"}})
    return path


def test_misspelled_names_get_did_you_mean(tmp_path):
    root = make_gtzan_like(tmp_path / "ds", n_per_class=2, seconds=0.3, broken=False)
    store = str(_store_with_tracks(tmp_path / "s.zarr"))
    cases = [  # (args, status, words the one line must hold)
        (["extract", str(root), "-m", "merrt"], 2, ["'--model'", "merrt", "did you mean 'mert'?"]),
        (["finetune", str(root), "-m", "wav2vec"], 2, ["did you mean 'wav2vec2'?"]),
        (["datasets", str(root), "--split-scheme", "rndom"], 2, ["'--split-scheme'", "did you mean 'random'?"]),
        (["datasets", str(root), "--dataset-type", "gtzn"], 2, ["'--dataset-type'", "did you mean 'gtzan'?"]),
        (["probe", "--store", store, "--head", "mpl"], 2, ["'--head'", "did you mean 'mlp'?"]),
        (["probe", "--store", store, "--task", "genr"], 1, ["--task 'genr'", "did you mean 'genre'?"]),
        (["probe", "--store", store, "--dataset", "gtza"], 1, ["--dataset 'gtza'", "did you mean 'gtzan'?"]),
        (["analyze", "pca", "--store", store, "--dataset", "gtza"], 1, ["did you mean 'gtzan'?"]),
    ]
    for args, status, words in cases:
        result = run(*args)
        assert_one_line_error(result, *words)
        assert result.returncode == status, (args, result.stderr)


def test_help_shows_flags_without_placeholders_and_escaped_extras():
    env_wide = {"COLUMNS": "250"}
    text = subprocess.run([sys.executable, "-m", "embedstore.cli", "extract", "--help"], capture_output=True,
                          text=True, env={**os.environ, **env_wide}).stdout
    assert "pip install 'embedstore[ray]'" in text
    assert "<bool>" not in text and "--strict" in text and "--no-progress" in text
    assert "<bool>" not in run("--help").stdout
    datasets_help = run("datasets", "--help").stdout
    assert "--dataset-type" in datasets_help
    assert not re.search(r"(?<![\w-])--type\b", datasets_help)  # the old name works but is not shown


def test_old_datasets_type_option_still_works(tmp_path):
    root = make_gtzan_like(tmp_path / "ds", n_per_class=2, seconds=0.3, broken=False)
    for option in ("--type", "--dataset-type"):
        result = run("datasets", str(root), option, "folder", "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["kind"] == "folder"


def test_choices_are_the_librarys_and_listed_in_each_help():
    """The values the CLI accepts are the library's (its constants), and each option's help names them all."""
    import typer.main

    from embedstore import cli
    from embedstore.analysis.metrics import SEPARABILITY_METHODS, SILHOUETTE_METRICS
    from embedstore.extract.audio import GAINS
    from embedstore.extract.datasets import DATASET_KINDS, SPLIT_SCHEMES
    from embedstore.extract.encoders.registry import DTYPE_CHOICES, WEIGHTS_CHOICES
    from embedstore.extract.pooling import POOLINGS
    from embedstore.finetune.train import PRECISIONS
    from embedstore.heads.captioner import LAYER_MIX_MODES
    from embedstore.heads.mlp import MLP_PRESETS
    from embedstore.heads.protocol import HEADS
    from embedstore.store.schema import STORAGE_DTYPES

    library = {
        "--split-scheme": SPLIT_SCHEMES, "--dataset-type": DATASET_KINDS, "--weights": WEIGHTS_CHOICES,
        "--dtype": DTYPE_CHOICES, "--pool": POOLINGS, "--storage-dtype": STORAGE_DTYPES, "--gain": GAINS,
        "--engine": ("local", "ray"), "--head": HEADS, "--preset": tuple(MLP_PRESETS), "--layer-mix": LAYER_MIX_MODES,
        "--precision": PRECISIONS, "--method": SEPARABILITY_METHODS, "--metric": SILHOUETTE_METRICS,
    }
    assert {k: tuple(v) for k, v in cli.CHOICES.items()} == {k: tuple(v) for k, v in library.items()}

    def commands(group):
        for command in group.commands.values():
            yield from commands(command) if hasattr(command, "commands") else [command]

    checked = set()
    for command in commands(typer.main.get_command(cli.app)):
        for param in command.params:
            option = next((o for o in getattr(param, "opts", []) if o in cli.CHOICES), None)
            if option is None or (option == "--metric" and command.name == "umap"):  # UMAP takes any metric
                continue
            checked.add(option)
            for value in cli.CHOICES[option]:
                assert re.search(rf"(?<![\w-]){re.escape(value)}(?![\w-])", param.help), (command.name, option, value)
    assert checked == set(cli.CHOICES)


def test_every_split_scheme_listed_is_accepted_by_some_dataset(tmp_path):
    import csv

    from embedstore.extract.datasets import SPLIT_SCHEMES, discover_dataset
    from embedstore.extract.synthetic import make_musiccaps_like

    gtzan = make_gtzan_like(tmp_path / "gtzan", n_per_class=5, genres=("jazz", "rock"), seconds=0.2, broken=False)
    lists = tmp_path / "lists"
    lists.mkdir()
    for split, genre_clips in (("train", range(3)), ("valid", [3]), ("test", [4])):
        (lists / f"{split}_filtered.txt").write_text(
            "".join(f"{g}/{g}.{i:05d}.wav\n" for g in ("jazz", "rock") for i in genre_clips))
    caps = make_musiccaps_like(tmp_path / "caps", n=6, n_missing=0, n_full_video=0, seconds=0.3)
    manifest = tmp_path / "man"
    make_gtzan_like(manifest, n_per_class=3, genres=("jazz", "rock"), seconds=0.2, broken=False, layout=".")
    with open(manifest / "manifest.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "split"])
        for g in ("jazz", "rock"):
            for i, split in enumerate(("train", "train", "test")):
                writer.writerow([f"{g}/{g}.{i:05d}.wav", g, split])
    from synth import make_class_folders

    folders = tmp_path / "folders"
    for split in ("train", "test"):
        make_class_folders(folders / split, {"calm": "classical", "loud": "metal"}, 2, name=f"{split}{{i}}")
    where = {"auto": gtzan, "fault-filtered": gtzan, "random": gtzan, "random-val": gtzan, "kfold": gtzan,
             "audioset-eval": caps, "manifest": manifest / "manifest.csv", "folders": folders}
    assert set(where) == set(SPLIT_SCHEMES)
    for scheme, root in where.items():
        ds = discover_dataset(root, split=scheme, split_dir=lists if scheme == "fault-filtered" else None, folds=2)
        assert scheme == "auto" or ds.split_scheme == scheme
        assert {t.split for t in ds.tracks} <= {"train", "valid", "test", "fold0", "fold1"}


def test_errors_name_cli_options_and_plain_values(tmp_path):
    """Library errors a user meets name the CLI option (--split-dir, --dataset-name) and print values
    as the user wrote them, never as numpy reprs."""
    from embedstore.errors import DatasetError, StoreError
    from embedstore.extract.datasets import discover_dataset
    from embedstore.store import open_store

    root = make_gtzan_like(tmp_path / "ds", n_per_class=2, seconds=0.3, broken=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError) as info:
        discover_dataset(root, split="fault-filtered", split_dir=tmp_path / "empty")
    assert "--split-dir" in str(info.value) and "split_dir" not in str(info.value)

    from embedstore.extract.writing import track_table

    first = discover_dataset(root)
    other = make_gtzan_like(tmp_path / "other", n_per_class=2, seconds=0.3, broken=False, seed=1)
    second = discover_dataset(other)
    with open_store(tmp_path / "s.zarr", "a") as st:
        st.write_tracks("gtzan", track_table(first, first.tracks))
        with pytest.raises(StoreError) as info:
            st.write_tracks("gtzan", track_table(second, second.tracks))
    message = str(info.value)
    assert "--dataset-name" in message and "np." not in message
    assert re.search(r"track '\w+\.\d{5}' has hash '[0-9a-f]{40}' in the store but '[0-9a-f]{40}'", message), message


def test_store_paths_that_cannot_be_written_are_one_line_naming_the_store(tmp_path, monkeypatch):
    import errno

    from embedstore.errors import StoreError
    from embedstore.store import TrackTable, locking, open_store

    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    for path in (a_file / "s.zarr", a_file / "deeper" / "s.h5"):
        with pytest.raises(StoreError) as info:
            open_store(path, "a")
        assert str(info.value) == f"{path}: cannot create the store here ({a_file} is a file, not a folder)"
    store = tmp_path / "ro.zarr"
    open_store(store, "a").close()
    table = TrackTable(ids=["t"], paths=["t.wav"])
    if os.geteuid() != 0:  # a read-only folder (root writes anywhere)
        for p in [store, *store.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            with pytest.raises(StoreError, match=rf"^{re.escape(str(store))}: cannot write to this store"):
                open_store(store, "a").write_tracks("d", table)
        finally:
            for p in [store, *store.rglob("*")]:
                p.chmod(0o755 if p.is_dir() else 0o644)

    def read_only_fs(*args, **kwargs):  # what a read-only file system answers, root included
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(locking.os, "open", read_only_fs)
    with pytest.raises(StoreError) as info:
        open_store(store, "a").write_tracks("d", table)
    assert str(info.value) == f"{store}: cannot write to this store (Read-only file system)"
    monkeypatch.undo()
    result = run("extract", str(make_gtzan_like(tmp_path / "ds", n_per_class=2, seconds=0.3, broken=False)),
                 "-m", "mfcc", "--workers", "0", "--store", str(a_file / "s.zarr"))
    assert_one_line_error(result, f"{a_file / 's.zarr'}: cannot create the store here")
    assert result.returncode == 1 and "lock" not in result.stderr


def _resolve_with_hub(tmp_path: Path, repo: str) -> tuple[subprocess.CompletedProcess, float]:
    """resolve_checkpoint(repo) in a fresh interpreter whose hub is online but unreachable (a closed
    local port) and whose hub cache is ``tmp_path/hf``; returns the process and its wall time."""
    import time

    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        env.pop(var, None)
    code = ("import sys; from embedstore.extract.encoders.checkpoints import resolve_checkpoint\n"
            "try:\n    c = resolve_checkpoint(sys.argv[1]); print(c.revision, *[p.name for p in c.weight_files])\n"
            "except Exception as e:\n    print(f'{type(e).__name__}: {e}', file=sys.stderr); sys.exit(1)\n")
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code, repo], capture_output=True, text=True, env=env, timeout=120)
    return result, time.monotonic() - start


def test_missing_weights_fail_fast_without_network_and_say_what_to_do(tmp_path):
    """No route to the hub: one line in seconds (huggingface_hub alone retries for ~25 s) that names
    --checkpoint DIR and --weights random; a checkpoint in the local hub cache needs no network."""
    result, seconds = _resolve_with_hub(tmp_path, "someone/absent")
    assert result.returncode == 1 and "Retrying" not in result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith("ModelError: checkpoint 'someone/absent' is not in the local hub cache")
    assert "--checkpoint DIR" in line and "--weights random" in line
    assert seconds < 10, f"{seconds:.1f} s"

    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "hf" / "hub" / "models--someone--cached" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors").write_bytes(b"weights")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(commit)
    result, _ = _resolve_with_hub(tmp_path, "someone/cached")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [commit, "model.safetensors"]


class _Called(Exception):
    """Raised by a stand-in for a library entry point: the command stops there, its arguments kept."""


def _stand_in(monkeypatch, owner, name: str) -> list:
    """Replace ``owner.name`` by a function that records its ``(args, kwargs)`` and raises :class:`_Called`."""
    calls = []

    def record(*args, **kwargs):
        calls.append((args, kwargs))
        raise _Called

    monkeypatch.setattr(owner, name, record)
    return calls


def test_the_cli_builds_the_requests_a_library_user_builds(tmp_path, monkeypatch):
    """Each command's options become one DatasetRequest and EncoderRequest(s), equal to the ones written
    out here by hand, and one library call gets them."""
    from embedstore import cli
    from embedstore.extract import pipeline, ray_engine
    from embedstore.extract.datasets import DatasetRequest
    from embedstore.extract.encoders import EncoderRequest
    from embedstore.finetune import caption, train

    data, lists, store = tmp_path / "data", tmp_path / "lists", tmp_path / "s.zarr"
    data.mkdir()
    lists.mkdir()
    local = _stand_in(monkeypatch, pipeline, "run_extract")
    assert cli.run(["extract", str(data), "-m", "wav2vec2", "--checkpoint", "ckpt/w2v", "--weights", "random",
                    "--as", "control", "--dataset-type", "folder", "--dataset-name", "mine", "--label-name", "mood",
                    "--split-scheme", "random-val", "--split-dir", str(lists), "--dtype", "float16",
                    "--window-seconds", "4", "--trust-remote-code", "--seed", "7", "--device", "cpu",
                    "--store", str(store)]) == 1
    assert cli.run(["extract", str(data), "-m", "mfcc,mert", "-m", "clap", "--store", str(store)]) == 1
    (full, full_kw), (several, _) = local
    assert full == (DatasetRequest(data, "folder", name="mine", label_name="mood", split_scheme="random-val",
                                   split_dir=lists, seed=7),
                    [EncoderRequest("wav2vec2", "ckpt/w2v", weights="random", dtype="float16", seed=7,
                                    trust_remote_code=True, window_seconds=4.0, key="control")], store)
    assert full_kw["device"] == "cpu"
    assert several == (DatasetRequest(data), [EncoderRequest("mfcc"), EncoderRequest("mert"), EncoderRequest("clap")],
                       store)

    ray = _stand_in(monkeypatch, ray_engine, "run_extract_ray")
    assert cli.run(["extract", str(data), "-m", "mfcc", "--engine", "ray", "--ray-address", "auto",
                    "--concurrency", "2", "--store", str(store)]) == 1
    (args, kwargs), = ray
    assert args == (DatasetRequest(data), [EncoderRequest("mfcc")], store)
    assert kwargs["ray_options"] == ray_engine.RayOptions(address="auto", concurrency=2)

    discovered = _stand_in(monkeypatch, DatasetRequest, "discover")
    for kind_option in ("--dataset-type", "--type"):  # --type: the old spelling, hidden
        assert cli.run(["datasets", str(data), kind_option, "gtzan", "--split-scheme", "kfold", "--folds", "3",
                        "--seed", "2", "--label-name", "style"]) == 1
    assert [args for args, _ in discovered] == [(DatasetRequest(data, "gtzan", label_name="style",
                                                                split_scheme="kfold", seed=2, folds=3),)] * 2

    dispatch = train.finetune
    tuned = _stand_in(monkeypatch, train, "finetune")
    assert cli.run(["finetune", str(data), "-m", "mert", "--checkpoint", "ckpt/mert", "--weights", "random",
                    "--task", "genre", "--dataset-type", "gtzan", "--split-scheme", "random", "--seed", "5"]) == 1
    (args, kwargs), = tuned
    assert args == (DatasetRequest(data, "gtzan", split_scheme="random", seed=5),
                    EncoderRequest("mert", "ckpt/mert", weights="random", seed=5))
    assert kwargs["task"] == "genre" and kwargs["seed"] == 5
    assert cli.run(["finetune", str(data), "-m", "wav2vec2", "--task", "caption"]) == 1
    assert tuned[1][0] == (DatasetRequest(data), EncoderRequest("wav2vec2")) and tuned[1][1]["task"] == "caption"
    captioned = _stand_in(monkeypatch, caption, "finetune_caption")
    monkeypatch.setattr(train, "finetune", dispatch)  # the one library call dispatches caption to its path
    assert cli.run(["finetune", str(data), "-m", "wav2vec2", "--task", "caption"]) == 1
    assert captioned[0][0] == (DatasetRequest(data), EncoderRequest("wav2vec2"))
    assert cli.run(["extract", str(data), "-m", "mfcc", "-m", "mert", "--as", "x", "--store", str(store)]) == 1
    assert len(local) == 2  # refused before any library call: --as names one model entry
