"""extract/datasets.py + extract/splits.py: layouts, splits, skipped files, manifests, MusicCaps."""

from __future__ import annotations

import csv
import hashlib
import math
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from embedstore.errors import DatasetError
from embedstore.extract.audio import load_audio
from embedstore.extract.datasets import (
    GTZAN_GENRES,
    discover_dataset,
    format_dataset_summary,
    summarize_dataset,
)
from embedstore.extract.splits import FAULT_FILTERED_FILES, read_fault_filtered
from synth import (
    BROKEN_KINDS,
    DEFAULT_GENRES,
    ClipFormat,
    make_class_folders,
    make_gtzan_like,
    make_musiccaps_like,
    render_genre,
    write_broken,
)


@pytest.fixture(autouse=True)
def _empty_cache(tmp_path, monkeypatch):
    """No test may see a user's cached split lists (or download them)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _list_stems(folder: Path) -> dict[str, set[str]]:
    """Independent read of the split lists: split -> set of stems."""
    out = {}
    for split, name in FAULT_FILTERED_FILES.items():
        lines = [ln.strip() for ln in (folder / name).read_text().splitlines() if ln.strip()]
        out[split] = {ln.rsplit("/", 1)[-1].rsplit(".", 1)[0] for ln in lines}
    return out


# ---- GTZAN -----------------------------------------------------------------------------------


def test_fault_filtered_lists_have_published_counts(fault_filtered_dir):
    by_stem = read_fault_filtered(fault_filtered_dir)
    assert Counter(by_stem.values()) == {"train": 443, "valid": 197, "test": 290}
    stems = _list_stems(fault_filtered_dir)
    assert {s: len(v) for s, v in stems.items()} == {"train": 443, "valid": 197, "test": 290}
    assert not (stems["train"] & stems["valid"]) and not (stems["train"] & stems["test"])
    assert by_stem["jazz.00054"] == "train"  # listed, although corrupt in the Kaggle genres_original


def test_corrupt_listed_clip_is_skipped(tmp_path, fault_filtered_dir):
    """GTZAN's jazz.00054.wav is unreadable in genres_original: skipped, the rest keep their splits."""
    root = make_gtzan_like(tmp_path, n_per_class=2, genres=("jazz",), seconds=0.3,
                           formats=(ClipFormat("wav", 22050, 1, "PCM_16"),), broken=False)
    write_broken(root / "genres_original" / "jazz", "jazz.00054", "truncated-header")
    ds = discover_dataset(root, split_dir=fault_filtered_dir)
    assert ds.split_scheme == "fault-filtered"
    assert [p for p, _ in ds.skipped] == ["genres_original/jazz/jazz.00054.wav"]
    by_stem = read_fault_filtered(fault_filtered_dir)
    assert [(t.id, t.split) for t in ds.tracks] == [(s, by_stem[s]) for s in ("jazz.00000", "jazz.00001")]


def test_real_excerpts_with_fault_filtered_split(gtzan_excerpts_dir, fault_filtered_dir):
    ds = discover_dataset(gtzan_excerpts_dir, split_dir=fault_filtered_dir)
    assert ds.kind == "gtzan" and ds.split_scheme == "fault-filtered"
    assert len(ds.tracks) == 100 and not ds.skipped
    assert Counter(t.label for t in ds.tracks) == {g: 10 for g in GTZAN_GENRES}
    assert ds.tasks == {"genre": "label"}
    stems = _list_stems(fault_filtered_dir)
    for t in ds.tracks:
        assert t.id == Path(t.path).stem and t.path.startswith("genres_original/")
        expected = next((s for s, members in stems.items() if t.id in members), None)
        assert t.split == expected
    assert any(t.split is None for t in ds.tracks)  # clips outside every list stay listed


def test_auto_split_uses_cached_lists_else_random(gtzan_excerpts_dir, fault_filtered_dir, tmp_path, monkeypatch):
    assert discover_dataset(gtzan_excerpts_dir).split_scheme == "random"
    cache = tmp_path / "cache" / "embedstore" / "gtzan-fault-filtered"
    shutil.copytree(fault_filtered_dir, cache)
    assert discover_dataset(gtzan_excerpts_dir).split_scheme == "fault-filtered"


def test_fault_filtered_matches_au_files_by_stem(tmp_path, fault_filtered_dir):
    root = make_gtzan_like(tmp_path, n_per_class=2, genres=("blues", "rock"), seconds=0.3,
                           formats=(ClipFormat("au", 22050, 1, "PCM_16"),), broken=False, layout="genres")
    ds = discover_dataset(root, split="fault-filtered", split_dir=fault_filtered_dir)
    by_stem = read_fault_filtered(fault_filtered_dir)
    assert all(t.path.endswith(".au") for t in ds.tracks)
    assert [t.split for t in ds.tracks] == [by_stem.get(t.id) for t in ds.tracks]
    assert ds.split_tracks("valid")  # blues.00000/1 are in the valid list


@pytest.mark.parametrize("layout,ext", [("genres_original", "wav"), ("genres", "au"), (".", "flac")])
def test_gtzan_layouts(tmp_path, layout, ext):
    fmt = ClipFormat(ext, 22050, 1, "PCM_16")
    root = make_gtzan_like(tmp_path, n_per_class=3, genres=("jazz", "pop"), seconds=0.3, formats=(fmt,),
                           broken=False, layout=layout)
    ds = discover_dataset(root)
    assert ds.kind == "gtzan" and len(ds.tracks) == 6
    prefix = "" if layout == "." else f"{layout}/"
    assert {t.path for t in ds.tracks} == {f"{prefix}{g}/{g}.{i:05d}.{ext}" for g in ("jazz", "pop") for i in range(3)}
    # every listed track decodes (.au included)
    y = load_audio(ds.abspath(ds.tracks[0]), 16000, gain="peak")
    assert y.size == pytest.approx(0.3 * 16000, abs=1) and np.abs(y).max() == pytest.approx(1.0)


def test_broken_files_are_skipped_with_reasons(gtzan_dir):
    ds = discover_dataset(gtzan_dir, split="random")
    assert len(ds.tracks) == 6 * len(DEFAULT_GENRES)
    assert len(ds.skipped) == len(BROKEN_KINDS)
    skipped_stems = {Path(p).stem for p, _ in ds.skipped}
    assert skipped_stems == {f"{DEFAULT_GENRES[j % 4]}.{90 + j:05d}" for j in range(len(BROKEN_KINDS))}
    assert not skipped_stems & {t.id for t in ds.tracks}
    reasons = [r for _, r in ds.skipped]
    assert len(set(reasons)) == len(reasons) and all(r and "\n" not in r for r in reasons)
    for t in ds.tracks:  # everything kept is decodable
        assert np.isfinite(load_audio(ds.abspath(t), 8000)).all()


def test_random_split_is_stratified_and_deterministic(gtzan_clean_dir):
    a = discover_dataset(gtzan_clean_dir, split="random", seed=0)
    b = discover_dataset(gtzan_clean_dir, split="random", seed=0)
    c = discover_dataset(gtzan_clean_dir, split="random", seed=1)
    assert a.tracks == b.tracks
    assert [t.split for t in a.tracks] != [t.split for t in c.tracks]
    n = len(a.tracks)
    assert Counter(t.split for t in a.tracks)["test"] == math.ceil(0.2 * n)
    for label, n_label in Counter(t.label for t in a.tracks).items():
        n_test = sum(t.split == "test" for t in a.tracks if t.label == label)
        assert abs(n_test - 0.2 * n_label) <= 1


def test_random_val_split_proportions(gtzan_clean_dir):
    ds = discover_dataset(gtzan_clean_dir, split="random-val", seed=3)
    counts = Counter(t.split for t in ds.tracks)
    n = len(ds.tracks)
    assert set(counts) == {"train", "valid", "test"}
    assert counts["test"] == math.ceil(0.2 * n)
    assert abs(counts["valid"] - 0.1 * n) <= 1


def test_kfold(gtzan_clean_dir):
    ds = discover_dataset(gtzan_clean_dir, split="kfold", folds=3, seed=0)
    assert ds.split_scheme == "kfold" and ds.split_options == {"seed": 0, "folds": 3}
    assert {t.split for t in ds.tracks} == {"fold0", "fold1", "fold2"}
    for label, n_label in Counter(t.label for t in ds.tracks).items():
        per_fold = Counter(t.split for t in ds.tracks if t.label == label)
        assert max(per_fold.values()) - min(per_fold.values()) <= 1 and sum(per_fold.values()) == n_label
    again = discover_dataset(gtzan_clean_dir, split="kfold", folds=3, seed=0)
    assert [t.split for t in again.tracks] == [t.split for t in ds.tracks]


def test_unknown_split_and_tiny_classes(tmp_path, gtzan_clean_dir):
    with pytest.raises(DatasetError, match="unknown split"):
        discover_dataset(gtzan_clean_dir, split="bogus")
    root = make_gtzan_like(tmp_path, n_per_class=1, genres=("jazz", "pop", "rock"), seconds=0.2,
                           formats=(ClipFormat("wav", 8000),), broken=False)
    with pytest.raises(DatasetError, match="fewer than 2"):
        discover_dataset(root, split="random")


# ---- layouts: GTZAN by structure, wrapper folders, one class, split folders, label names ------

MIXED = (ClipFormat("wav", 22050, 1, "PCM_16"), ClipFormat("flac", 16000, 2, "PCM_16"),
         ClipFormat("ogg", 22050, 1, "VORBIS"), ClipFormat("au", 8000, 1, "PCM_16"))
#: folder name -> the synthetic sound it holds; one standard GTZAN genre, three others
ODD_GENRES = {"ambient": "classical", "drill": "hiphop", "grindcore": "metal", "jazz": "jazz"}


def test_gtzan_by_structure_with_any_genre_names(tmp_path):
    """The issue's case: genres_original/<genre>/<genre>.000NN.<ext>, four genres of which three are
    not GTZAN's; it used to come out as ONE label, 'genres_original'."""
    files = make_class_folders(tmp_path / "genres_original", ODD_GENRES, 5, name="{cls}.{i:05d}", formats=MIXED)
    ds = discover_dataset(tmp_path)
    assert ds.kind == "gtzan" and ds.tasks == {"genre": "label"} and not ds.skipped
    assert Counter(t.label for t in ds.tracks) == {g: 5 for g in ODD_GENRES}
    expected = {f"genres_original/{g}/{p.name}": (p.stem, g) for g, paths in files.items() for p in paths}
    assert {t.path: (t.id, t.label) for t in ds.tracks} == expected
    assert {Path(t.path).suffix for t in ds.tracks} == {".wav", ".flac", ".ogg", ".au"}
    assert ds.layout["genre_root"] == "genres_original"
    assert ds.layout["missing_standard_genres"] == sorted(set(GTZAN_GENRES) - {"jazz"})
    assert ds.layout["extra_genres"] == ["ambient", "drill", "grindcore"]
    text = format_dataset_summary(ds)
    assert "not standard GTZAN genres: ambient, drill, grindcore" in text
    assert "standard GTZAN genres missing: blues, classical, country, disco, hiphop, metal, pop, reggae, rock" in text
    assert summarize_dataset(ds)["layout"]["extra_genres"] == ["ambient", "drill", "grindcore"]


@pytest.mark.parametrize("layout", ["genres", "."])
def test_gtzan_structure_in_every_layout_and_case(tmp_path, layout):
    make_class_folders(tmp_path / layout, {"Trance": "pop", "dub": "reggae"}, 3,
                       name="{cls}.{i:05d}")
    (tmp_path / layout / "Trance" / "Trance.00000.wav").rename(tmp_path / layout / "Trance" / "trance.00000.wav")
    ds = discover_dataset(tmp_path)
    assert ds.kind == "gtzan" and Counter(t.label for t in ds.tracks) == {"Trance": 3, "dub": 3}
    assert ds.layout["genre_root"] == layout


def test_class_folders_not_named_like_gtzan_stay_a_folder_dataset(tmp_path):
    make_class_folders(tmp_path, {"birds": "classical", "frogs": "hiphop"}, 3, name="{cls}_{i}")
    ds = discover_dataset(tmp_path)
    assert ds.kind == "folder" and ds.tasks == {"label": "label"}
    assert Counter(t.label for t in ds.tracks) == {"birds": 3, "frogs": 3}


def test_kaggle_gtzan_download_under_a_wrapper(tmp_path):
    """Kaggle's archive unpacks to Data/{genres_original,images_original,features_30_sec.csv}."""
    data = tmp_path / "download" / "Data"
    make_class_folders(data / "genres_original", {"blues": "blues", "rock": "rock"}, 2, name="{cls}.{i:05d}")
    (data / "images_original" / "blues").mkdir(parents=True)
    (data / "images_original" / "blues" / "blues00000.png").write_bytes(b"\x89PNG")
    (data / "features_30_sec.csv").write_text("filename,length,label\nblues.00000.wav,661794,blues\n")
    ds = discover_dataset(tmp_path / "download")
    assert ds.kind == "gtzan" and ds.root == data
    assert sorted(t.path for t in ds.tracks) == [f"genres_original/{g}/{g}.{i:05d}.wav"
                                                 for g in ("blues", "rock") for i in range(2)]


@pytest.mark.parametrize("wrappers", [("train_audio",), ("mydata-v2", "train_audio")])
def test_class_folders_under_wrapper_folders(tmp_path, wrappers):
    given = tmp_path / "mydata"
    level = given.joinpath(*wrappers)
    files = make_class_folders(level, {"crow": "blues", "owl": "classical", "wren": "pop"}, 3)
    (given / "README.txt").write_text("not audio: a wrapper may hold other files")
    ds = discover_dataset(given)
    assert ds.kind == "folder" and ds.name == "mydata" and ds.root == level
    assert ds.tasks == {"label": "label"} and not ds.skipped
    assert {t.id: t.label for t in ds.tracks} == {f"{c}/{p.stem}": c for c, ps in files.items() for p in ps}
    assert ds.layout == {"class_root": "/".join(wrappers), "classes": ["crow", "owl", "wren"]}
    assert f"class folders: 3 under {'/'.join(wrappers)}/" in format_dataset_summary(ds)
    # pointing at the class level itself gives the same table (same ids, paths, labels, splits)
    direct = discover_dataset(level, name="mydata")
    assert direct.tracks == ds.tracks and direct.layout["class_root"] == "."


@pytest.mark.parametrize("where", ["", "train_audio"])
def test_one_class_folder_is_an_error(tmp_path, where):
    given = tmp_path / "mydata"
    make_class_folders(given / where, {"dog": "metal"}, 4)
    with pytest.raises(DatasetError) as err:
        discover_dataset(given)
    msg = str(err.value)
    dog = given / where / "dog"
    rel = f"{where}/dog" if where else "dog"
    assert msg == (f"{given}: only one class: all 4 audio files sit in one folder, {rel}/; a folder dataset "
                   "needs one sub-folder per class (at least 2): point at the folder that holds all the class "
                   f"folders, or at {dog} to extract its files unlabelled")
    # pointed at the class folder itself, its files are an unlabelled collection, as the error says
    ds = discover_dataset(dog)
    assert ds.tasks == {} and len(ds.tracks) == 4 and all(t.label is None for t in ds.tracks)


def test_one_class_folder_beside_loose_files_is_an_error(tmp_path):
    make_class_folders(tmp_path, {"dog": "metal"}, 2)
    sf.write(str(tmp_path / "stray.wav"), render_genre("pop", 8000, 0.2, np.random.default_rng(0)), 8000)
    with pytest.raises(DatasetError, match=r"only one class: 'dog' \(dog/: 2 audio files\), and 1 loose audio files in "
                                           r"\./; .* or move the loose files into class folders$"):
        discover_dataset(tmp_path)
    # split folders that hold the same single class
    for split in ("train", "test"):
        make_class_folders(tmp_path / "splits" / split, {"cat": "pop"}, 2)
    one_cat = r"only one class: 'cat' \(train/cat/, test/cat/: 4 audio files\); .*folders$"
    with pytest.raises(DatasetError, match=one_cat):
        discover_dataset(tmp_path / "splits")


def test_loose_files_beside_class_folders_are_skipped_with_a_reason(tmp_path):
    make_class_folders(tmp_path, {"a": "pop", "b": "rock"}, 3)
    sf.write(str(tmp_path / "stray.wav"), render_genre("pop", 8000, 0.2, np.random.default_rng(0)), 8000)
    ds = discover_dataset(tmp_path)
    assert Counter(t.label for t in ds.tracks) == {"a": 3, "b": 3}
    assert ds.skipped == [("stray.wav", "not in a class folder")]


def test_split_folders_give_the_splits_and_the_classes_below(tmp_path):
    given = tmp_path / "speech"
    n = {"train": 4, "val": 2, "test": 2}
    for split, k in n.items():
        make_class_folders(given / split, {"yes": "pop", "no": "metal"}, k, seed=k)
    ds = discover_dataset(given)
    assert ds.kind == "folder" and ds.split_scheme == "folders"
    assert Counter((t.label, t.split) for t in ds.tracks) == {
        (c, {"val": "valid"}.get(s, s)): k for s, k in n.items() for c in ("yes", "no")}
    assert all(t.id.startswith(f"{t.path.split('/')[0]}/{t.label}/") for t in ds.tracks)
    assert ds.layout["split_folders"] == {"train": "train", "valid": "val", "test": "test"}
    assert ds.split_reason == "auto: the clips sit in split folders (train, val, test)"
    resplit = discover_dataset(given, split="random", seed=0)
    assert resplit.split_scheme == "random" and Counter(t.split for t in resplit.tracks) == {"train": 12, "test": 4}
    with pytest.raises(DatasetError, match="--split-scheme folders"):
        discover_dataset(tmp_path / "speech" / "train", split="folders")


def test_label_name_names_the_task(tmp_path):
    make_class_folders(tmp_path / "f", {"calm": "classical", "loud": "metal"}, 3)
    assert discover_dataset(tmp_path / "f", label_name="genre").tasks == {"genre": "label"}
    make_gtzan_like(tmp_path / "g", n_per_class=2, genres=("pop", "rock"), seconds=0.2, broken=False)
    assert discover_dataset(tmp_path / "g", label_name="style").tasks == {"style": "label"}
    with pytest.raises(DatasetError, match="--label-name 'two words'"):
        discover_dataset(tmp_path / "f", label_name="two words")
    with pytest.raises(DatasetError, match="--label-name genre: a MusicCaps dataset"):
        discover_dataset(make_musiccaps_like(tmp_path / "mc", n=3, n_missing=0, seconds=0.5), label_name="genre")
    (tmp_path / "loose").mkdir()
    sf.write(str(tmp_path / "loose" / "x.wav"), np.zeros(800, np.float32), 8000)
    with pytest.raises(DatasetError, match="--label-name genre: .* no class folders"):
        discover_dataset(tmp_path / "loose", label_name="genre")


def test_manifest_label_column_named_by_label_name(tmp_path):
    rows = []
    for i, genre in enumerate(["pop", "jazz", "pop", "jazz"]):
        _write_clip(tmp_path / f"{i}.wav", genre, i)
        rows.append({"path": f"{i}.wav", "genre": genre})
    _write_manifest(tmp_path / "manifest.csv", rows, ["path", "genre"])
    ds = discover_dataset(tmp_path, label_name="genre", split="random")
    assert ds.tasks == {"genre": "label"} and [t.label for t in ds.tracks] == ["pop", "jazz", "pop", "jazz"]
    assert discover_dataset(tmp_path).tasks == {}  # no 'label' column: unlabelled unless named
    with pytest.raises(DatasetError, match="--label-name mood: .* neither a 'mood' nor a 'label' column"):
        discover_dataset(tmp_path, label_name="mood")


# ---- why a split scheme ----------------------------------------------------------------------


def test_split_reason_says_where_it_looked(tmp_path, gtzan_clean_dir, fault_filtered_dir):
    cache = tmp_path / "cache" / "embedstore" / "gtzan-fault-filtered"  # the autouse fixture's cache
    ds = discover_dataset(gtzan_clean_dir)
    assert ds.split_scheme == "random"
    assert ds.split_reason == (f"auto: GTZAN's fault-filtered lists not found (looked in {cache}); "
                               "pass --split-dir with train/valid/test_filtered.txt for the published split")
    assert f"split chosen: {ds.split_reason}" in format_dataset_summary(ds)
    listed = discover_dataset(gtzan_clean_dir, split_dir=fault_filtered_dir)
    by_stem = read_fault_filtered(fault_filtered_dir)
    n_unlisted = sum(t.id not in by_stem for t in listed.tracks)
    assert listed.split_reason == (f"auto: GTZAN's fault-filtered lists found in {fault_filtered_dir}; "
                                   f"{n_unlisted} of {len(listed.tracks)} clips are in no list (no split)")
    assert discover_dataset(gtzan_clean_dir, split="kfold").split_reason == "asked for (--split-scheme kfold)"


def test_split_reason_of_folders_and_manifests(tmp_path):
    make_class_folders(tmp_path / "f", {"a": "pop", "b": "rock"}, 5)
    assert discover_dataset(tmp_path / "f").split_reason == "auto: the class folders name no split"
    rows = []
    for i in range(5):
        _write_clip(tmp_path / "m" / f"{i}.wav", "pop", i)
        rows.append({"path": f"{i}.wav", "label": "ab"[i % 2], "split": "train" if i else ""})
    _write_manifest(tmp_path / "m" / "list.csv", rows, ["path", "label", "split"])
    ds = discover_dataset(tmp_path / "m", split="auto")
    assert ds.split_scheme == "random" and ds.split_reason == "auto: list.csv's split column is empty on 1 of 5 clips"


# ---- folder and manifest ---------------------------------------------------------------------


def _write_clip(path: Path, genre: str, seed: int, sr: int = 8000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), render_genre(genre, sr, 0.3, np.random.default_rng(seed)), sr)


def test_folder_of_classes(tmp_path):
    for i in range(5):
        _write_clip(tmp_path / "calm" / f"{i:03d}.wav", "classical", i)
        _write_clip(tmp_path / "loud" / "sub" / f"{i:03d}.flac", "metal", i)
    write_broken(tmp_path / "loud", "bad", "not-audio")
    (tmp_path / "calm" / "notes.txt").write_text("ignored: not an audio suffix")
    ds = discover_dataset(tmp_path, split="random", seed=0)
    assert ds.kind == "folder" and ds.tasks == {"label": "label"} and ds.name == tmp_path.name
    assert Counter(t.label for t in ds.tracks) == {"calm": 5, "loud": 5}
    assert len({t.id for t in ds.tracks}) == 10  # same stems in two classes, distinct ids
    assert [p for p, _ in ds.skipped] == ["loud/bad.wav"]
    assert Counter(t.split for t in ds.tracks) == {"train": 8, "test": 2}


def _write_manifest(path: Path, rows: list[dict], fields: list[str]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def test_manifest_with_split_column(tmp_path):
    rows = []
    for i in range(6):
        rel = f"clips/{i}.wav"
        _write_clip(tmp_path / rel, "pop" if i % 2 else "jazz", i)
        rows.append({"path": rel, "label": "pop" if i % 2 else "jazz", "split": ["train", "val", "test"][i % 3],
                     "caption": f"clip number {i}"})
    rows.append({"path": "clips/missing.wav", "label": "pop", "split": "train", "caption": ""})
    write_broken(tmp_path / "clips", "empty", "empty")
    rows.append({"path": "clips/empty.wav", "label": "jazz", "split": "test", "caption": ""})
    _write_manifest(tmp_path / "manifest.csv", rows, ["path", "label", "split", "caption"])

    ds = discover_dataset(tmp_path)
    assert ds.kind == "manifest" and ds.split_scheme == "manifest"
    assert ds.tasks == {"label": "label", "caption": "caption"}
    assert [(t.path, t.label, t.split, t.caption) for t in ds.tracks] == [
        (r["path"], r["label"], {"val": "valid"}.get(r["split"], r["split"]), r["caption"]) for r in rows[:6]
    ]
    assert dict(ds.skipped) == {"clips/missing.wav": "missing on disk", "clips/empty.wav": "empty file (0 bytes)"}
    # the CSV itself can be passed, and a seeded split overrides the column
    ds2 = discover_dataset(tmp_path / "manifest.csv", split="random")
    assert ds2.split_scheme == "random" and len(ds2.tracks) == 6


def test_manifest_paths_outside_its_folder(tmp_path):
    """Paths resolve relative to the manifest; ids never hold '..' or a leading '/': a file outside
    the manifest's folder is ext/<sha1 of its folder as written, 8 hex>/<stem>."""
    lists = tmp_path / "project" / "lists"
    for rel in ("lists/clips/a.wav", "shared/x.wav", "other/x.wav", "lists/b.wav"):
        _write_clip(tmp_path / "project" / rel, "pop", len(rel))
    outside = tmp_path / "elsewhere" / "y.flac"
    outside.parent.mkdir()
    sf.write(str(outside), render_genre("jazz", 8000, 0.3, np.random.default_rng(1)), 8000)
    written = ["clips/a.wav", "../shared/x.wav", "../other/x.wav", "./clips/../b.wav", str(outside),
               "../shared/gone.wav"]
    rows = [{"path": p, "label": "ab"[i % 2]} for i, p in enumerate(written)]
    _write_manifest(lists / "manifest.csv", rows, ["path", "label"])
    ds = discover_dataset(lists / "manifest.csv", split="random")

    def ext(folder: str, stem: str) -> str:
        return f"ext/{hashlib.sha1(folder.encode()).hexdigest()[:8]}/{stem}"

    assert [(t.id, t.path) for t in ds.tracks] == [
        ("clips/a", "clips/a.wav"), (ext("../shared", "x"), "../shared/x.wav"),
        (ext("../other", "x"), "../other/x.wav"), ("b", "b.wav"), (ext(str(outside.parent), "y"), str(outside)),
    ]
    assert ds.skipped == [("../shared/gone.wav", "missing on disk")]
    for t in ds.tracks:
        assert ".." not in t.id.split("/") and not t.id.startswith("/")
        assert ds.abspath(t).resolve().is_file()
    assert [t.id for t in discover_dataset(lists, split="random").tracks] == [t.id for t in ds.tracks]


def test_manifest_errors(tmp_path):
    _write_clip(tmp_path / "a.wav", "pop", 0)
    row = {"path": "a.wav", "label": "x", "split": "holdout"}
    _write_manifest(tmp_path / "m.csv", [row], list(row))
    with pytest.raises(DatasetError, match="unknown split 'holdout'"):
        discover_dataset(tmp_path / "m.csv")
    _write_manifest(tmp_path / "m.csv", [{"file": "a.wav"}], ["file"])
    with pytest.raises(DatasetError, match="'path' column"):
        discover_dataset(tmp_path / "m.csv", "manifest")


# ---- MusicCaps -------------------------------------------------------------------------------


def _csv_rows(root: Path) -> list[dict]:
    with open(root / "musiccaps-public.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_musiccaps_missing_clips_and_offsets(musiccaps_dir):
    ds = discover_dataset(musiccaps_dir)
    rows = {r["ytid"]: r for r in _csv_rows(musiccaps_dir)}
    on_disk = {p.stem for p in (musiccaps_dir / "audio").iterdir()}
    assert ds.kind == "musiccaps" and ds.tasks == {"caption": "caption"}
    assert {t.id for t in ds.tracks} == on_disk
    assert sorted(ds.skipped) == sorted((y, "missing on disk") for y in set(rows) - on_disk)
    long_clips = 0
    for t in ds.tracks:
        row = rows[t.id]
        start, end = float(row["start_s"]), float(row["end_s"])
        assert t.caption == row["caption"] and t.label is None
        info = sf.info(str(ds.abspath(t)))
        if info.duration > end - start + 1:  # a full video: read the segment
            long_clips += 1
            assert (t.offset, t.duration) == (start, end - start)
        else:
            assert (t.offset, t.duration) == (0.0, None)
        y = load_audio(ds.abspath(t), 8000, offset=t.offset, duration=t.duration)
        assert y.size == pytest.approx((end - start) * 8000, abs=1)
        assert np.sqrt(np.mean(y[:800] ** 2)) > 0.01  # the segment starts with sound, not the silent lead-in
    assert long_clips > 0
    assert Counter(t.split for t in ds.tracks).keys() <= {"train", "valid", "test"}


def test_musiccaps_audioset_eval_split(musiccaps_dir):
    ds = discover_dataset(musiccaps_dir, "musiccaps", split="audioset-eval", seed=0)
    rows = {r["ytid"]: r for r in _csv_rows(musiccaps_dir)}
    for t in ds.tracks:
        if rows[t.id]["is_audioset_eval"] == "True":
            assert t.split == "test"
        else:
            assert t.split in ("train", "valid")
    assert any(t.split == "valid" for t in ds.tracks)


# ---- detection, summaries, errors ------------------------------------------------------------


def test_summary_and_table(gtzan_dir):
    ds = discover_dataset(gtzan_dir, split="random")
    s = summarize_dataset(ds)
    assert s["n_tracks"] == len(ds.tracks) and s["n_skipped"] == len(ds.skipped)
    assert sum(sum(row.values()) for row in s["table"].values()) == len(ds.tracks)
    assert s["labels"] == dict(Counter(t.label for t in ds.tracks))
    text = format_dataset_summary(ds)
    for label in DEFAULT_GENRES:
        assert label in text
    for path, reason in ds.skipped:
        assert f"{path}: {reason}" in text


def test_discovery_errors(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        discover_dataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match="cannot tell"):
        discover_dataset(tmp_path)
    with pytest.raises(DatasetError, match="unknown dataset type"):
        discover_dataset(tmp_path, "librispeech")
    with pytest.raises(DatasetError, match="not a GTZAN folder"):
        discover_dataset(tmp_path, "gtzan")


def test_synthetic_genres_are_learnable(gtzan_clean_dir):
    """Log band energies (mean, std over frames) + logistic regression beat chance by far."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    ds = discover_dataset(gtzan_clean_dir, split="random")
    sr, n_fft = 16000, 512
    edges = np.geomspace(2, n_fft // 2, 17).astype(int)
    feats = []
    for t in ds.tracks:
        y = load_audio(ds.abspath(t), sr)
        frames = np.lib.stride_tricks.sliding_window_view(y, n_fft)[:: n_fft // 2] * np.hanning(n_fft)
        power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
        bands = np.log(np.stack([power[:, a:b].sum(1) for a, b in zip(edges[:-1], edges[1:])], 1) + 1e-8)
        feats.append(np.r_[bands.mean(0), bands.std(0)])
    labels = [t.label for t in ds.tracks]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    acc = cross_val_score(model, np.array(feats), labels, cv=3).mean()
    assert acc >= 0.75  # chance is 0.25


# ---- which label task fine-tuning learns when --task is omitted --------------------------------


def test_finetune_uses_the_only_label_task(tmp_path):
    from embedstore.extract.datasets import Dataset
    from embedstore.finetune.data import label_task

    ds = Dataset("d", "manifest", tmp_path, [], [], {"genre": "label", "caption": "caption"}, "random")
    assert label_task(ds, None) == "genre" and label_task(ds, "caption") == "caption"
    ds.tasks = {"genre": "label", "style": "label"}
    with pytest.raises(DatasetError, match=r"--task: dataset 'd' has several label tasks \(genre, style\)"):
        label_task(ds, None)
    ds.tasks = {"caption": "caption"}
    with pytest.raises(DatasetError, match=r"no class labels to learn \(tasks: caption\); use --task caption"):
        label_task(ds, None)


# ---- the dataset request and the registry of kinds --------------------------------------------------

LINES_KIND = '''
"""A kind for the test: a folder whose labels.txt lists "<file> <label>" lines."""
from embedstore.extract.datasets import Dataset, Track


def marker(folder):
    return (folder / "labels.txt").is_file()


def detect(root):
    return marker(root)


def discover(request, given, level):
    pairs = [line.split() for line in (level / "labels.txt").read_text().splitlines() if line.strip()]
    tracks = [Track(path.rsplit(".", 1)[0], path, label, None, None) for path, label in pairs]
    return Dataset("lines", "lines", level, tracks, [], {request.label_name or "label": "label"}, request.split_scheme)
'''


def test_a_kind_is_one_module_and_one_registry_entry(tmp_path, monkeypatch):
    from embedstore.extract.datasets import KINDS, DatasetKind, DatasetRequest, get_kind

    inner = tmp_path / "wrap" / "inner"  # a wrapper folder above the dataset, and class folders inside it
    files = make_class_folders(inner, {"calm": "classical", "loud": "metal"}, 2)
    listed = {f"{p.parent.name}/{p.name}": f"tag{i}" for i, p in enumerate(files["calm"] + files["loud"])}
    (inner / "labels.txt").write_text("".join(f"{path} {label}\n" for path, label in listed.items()))
    with pytest.raises(DatasetError, match=r"--dataset-type 'lines': unknown dataset type"):
        DatasetRequest(tmp_path / "wrap", "lines")
    assert discover_dataset(tmp_path / "wrap").kind == "folder"  # before the kind is registered

    (tmp_path / "lines_kind.py").write_text(LINES_KIND)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(KINDS, "lines", DatasetKind("lines", "lines_kind", "labels.txt lines", detect_order=-1))
    found = discover_dataset(tmp_path / "wrap")  # detected first; the wrapper descent stops at its marker
    assert (found.kind, found.root) == ("lines", inner)
    assert {t.path: t.label for t in found.tracks} == listed
    assert DatasetRequest(tmp_path / "wrap", "LINES", label_name="mood").discover().tasks == {"mood": "label"}
    with pytest.raises(DatasetError, match=r"--dataset-type 'line': unknown dataset type \(did you mean 'lines'\?\)"):
        DatasetRequest(tmp_path, "line")
    named = DatasetRequest(tmp_path / "wrap", "folder").discover()  # a named kind is not detected
    assert named.kind == "folder" and {t.label for t in named.tracks} == {"calm", "loud"}
    assert get_kind("Folder").adapter().__name__ == "embedstore.extract.datasets.folder"


def test_dataset_request_normalises_what_it_is_given(tmp_path):
    from embedstore.extract.datasets import DatasetRequest

    assert DatasetRequest(str(tmp_path), "GTZAN", split_dir=str(tmp_path / "lists")) == DatasetRequest(
        tmp_path, "gtzan", split_dir=tmp_path / "lists")
    given = DatasetRequest(tmp_path, seed=3)
    assert DatasetRequest.coerce(given, seed=9) is given
    assert DatasetRequest.coerce(str(tmp_path), seed=9) == DatasetRequest(tmp_path, seed=9)
    with pytest.raises(DatasetError, match="--label-name 'caption'"):
        DatasetRequest(tmp_path, label_name="caption")
