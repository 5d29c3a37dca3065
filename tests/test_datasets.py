"""extract/datasets.py + extract/splits.py: layouts, splits, skipped files, manifests, MusicCaps."""

from __future__ import annotations

import csv
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
from synth import BROKEN_KINDS, DEFAULT_GENRES, ClipFormat, make_gtzan_like, render_genre, write_broken


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
