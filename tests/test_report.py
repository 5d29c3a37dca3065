"""`embedstore report` (HTML and Markdown, rendered in headless Chromium) and the probe table formats."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from embedstore import cli
from embedstore.extract.synthetic import make_gtzan_like
from embedstore.heads.tables import format_table
from embedstore.store.records import load_records

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A small generated study: mfcc of 24 generated clips (4 broken files), a logreg probe of every
    layer, and one PCA figure (SVG and PNG)."""
    base = tmp_path_factory.mktemp("study")
    root = make_gtzan_like(base / "ds", n_per_class=6, seconds=0.5)
    store = base / "s.zarr"
    assert cli.run(["extract", str(root), "-m", "mfcc", "--store", str(store), "--workers", "0", "--no-progress"]) == 0
    assert cli.run(["probe", "--store", str(store), "--head", "logreg", "--no-progress"]) == 0
    assert cli.run(["analyze", "pca", "--store", str(store), "--format", "svg", "--format", "png"]) == 0
    return store


# ---- table formats -------------------------------------------------------------------------------


def test_csv_and_json_give_every_record_value_unrounded(study):
    records = load_records(study)
    rows = list(csv.DictReader(io.StringIO(format_table(records, "csv"))))
    data = json.loads(format_table(records, "json"))
    assert len(rows) == len(data) == len(records) == 5
    for rec, row, js in zip(records, rows, data):
        test = rec["metrics"]["test"]
        assert float(row["test_acc"]) == js["test_acc"] == test["accuracy"]
        assert [float(row["test_acc_ci_low"]), float(row["test_acc_ci_high"])] == js["test_acc_ci"] == test["ci95"]["accuracy"]
        assert float(row["valid_acc"]) == js["valid_acc"] == rec["selection_score"]
        assert row["selected_on"] == js["selected_on"] == "train_cv"  # no valid split: inner CV chose
    # the best row is the highest selection score, whatever the test accuracy
    scores = [r["selection_score"] for r in records]
    assert [r["best"] for r in data] == [i == int(np.argmax(scores)) for i in range(5)]
    assert [row["best"] for row in rows] == [str(r["best"]) for r in data]


def test_markdown_and_latex_mark_best_per_column(study):
    records = load_records(study)
    best_test = max(round(100 * r["metrics"]["test"]["accuracy"], 1) for r in records)
    md = format_table(records, "markdown").splitlines()
    table = [line for line in md if line.startswith("| mfcc")]
    assert len(table) == 5 and sum("†" in line for line in table) == 1
    for line in table:  # the test column is bold exactly where it holds the column's best value
        cell = line.split(" | ")[4]
        assert cell.startswith("**") == cell.strip("*").startswith(f"{best_test:.1f} ["), line
    assert "inner-CV accuracy on train %" in md[2]  # the column says which rows it comes from
    tex = format_table(records, "latex")
    for needle in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}{lllrrrr}", r"$^\dagger$",
                   rf"\textbf{{{best_test:.1f} ["):
        assert needle in tex
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    assert len(body) == 5 and all(line.count(" & ") == 6 and line.endswith(r"\\") for line in body)
    assert "%" not in tex.replace(r"\%", "")  # every percent sign escaped


def test_unknown_table_format_is_one_line(study, capsys):
    assert cli.run(["probe", "--store", str(study), "--head", "logreg", "--format", "tex"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--format" in err and "latex" in err


# ---- the report --------------------------------------------------------------------------------


class _Refs(HTMLParser):
    """Every src/href/xlink:href of a page, the <img> sources and the <svg> elements' count."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.images: list[str] = []
        self.svgs = 0
        self.tables = 0

    def handle_starttag(self, tag, attrs):
        d = dict(attrs)
        self.refs += [v for k, v in attrs if k in ("src", "href", "xlink:href") and v is not None]
        self.images += [d["src"]] if tag == "img" else []
        self.svgs += tag == "svg"
        self.tables += tag == "table"


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _check_page(text: str) -> _Refs:
    """No external or relative reference; every image an inline PNG of non-trivial size; SVGs parse."""
    refs = _Refs()
    refs.feed(text)
    assert all(r.startswith(("data:", "#")) for r in refs.refs), [r for r in refs.refs if not r.startswith("data:")][:3]
    for src in refs.images:
        w, h = _png_size(base64.b64decode(src.split(",", 1)[1]))
        assert w > 100 and h > 100
    for svg in re.findall(r"<svg.*?</svg>", text, flags=re.S):
        root = ET.fromstring(svg)
        assert float(root.get("width").rstrip("pt")) > 100 and len(list(root.iter())) > 50
    return refs


def test_report_html_self_contained(study, tmp_path):
    out = cli_report(study, tmp_path / "r.html")
    text = out.read_text()
    refs = _check_page(text)
    assert refs.svgs == 2  # the layer curve from the records and the PCA figure (SVG preferred to PNG)
    assert refs.tables >= 4  # clips per label/split, failures, model entries, comparison
    for needle in ("Dataset gtzan", "empty file (0 bytes)", "Model entries", "inner-CV accuracy on train %",
                   "mfcc †", "Accuracy per layer", "PCA", "split train", "soxr"):
        assert needle in text, needle
    assert "Captions" not in text and "Fine-tuned versus frozen" not in text  # no data: no section


def cli_report(store: Path, out: Path, *extra: str) -> Path:
    assert cli.run(["report", "--store", str(store), "--out", str(out), *extra]) == 0
    return out


def test_report_markdown_links_existing_figures(study, tmp_path):
    out = cli_report(study, tmp_path / "sub" / "r.md", "--format", "md")
    text = out.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == 2 and all((out.parent / link).is_file() for link in links)
    assert "| mfcc † |" in text.replace("**", "") and "## PCA" in text


def test_report_without_records_or_figures_leaves_sections_out(study, tmp_path):
    bare = tmp_path / "bare.zarr"
    shutil.copytree(study, bare)
    text = cli_report(bare, tmp_path / "bare.html").read_text()
    assert "Dataset gtzan" in text and "Model entries" in text
    assert "Comparison" not in text and "<svg" not in text and "PCA" not in text


def test_report_missing_store_one_line(tmp_path, capsys):
    assert cli.run(["report", "--store", str(tmp_path / "nope.zarr")]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "nope.zarr" in err


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (.ci/run installs it: apt-get install chromium)")
def test_report_renders_in_headless_chromium(study, tmp_path):
    page = cli_report(study, tmp_path / "r.html")
    shot = tmp_path / "shot.png"
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr", "--v=0", "--window-size=1200,3000"]
    url = page.resolve().as_uri()
    result = subprocess.run([*args, f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    assert _png_size(shot.read_bytes()) == (1200, 3000)
    pixels = _decode_png(shot)
    assert (pixels.std(axis=(0, 1)) > 10).all()  # not a blank page: text, tables and figures drew
    dom = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    refs = _check_page(dom.stdout)  # the DOM the browser built: the same figures and tables, nothing external
    assert refs.svgs == 2 and refs.tables >= 4 and "mfcc †" in dom.stdout


def _decode_png(path: Path) -> np.ndarray:
    from matplotlib.image import imread

    return np.asarray(imread(path))[..., :3] * 255
