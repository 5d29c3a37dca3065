"""``embedstore report``: one page of a study, as a self-contained HTML file or as Markdown.

Built from what the store already holds, with no recomputation: the store's :func:`~embedstore.store.info`
(datasets, clips per label and split, failures, model entries), its result records
(:func:`~embedstore.store.records.load_records`: the comparison table of :mod:`embedstore.heads.tables`,
per-layer accuracy, fine-tuned versus frozen, caption samples) and the figures the ``analyze``
commands wrote into ``<store>.analysis/`` (SVG inlined, else PNG as a data URI; each captioned with the
split its JSON names). A section without data is left out. The HTML page references nothing outside
itself (no scripts, no network); the Markdown links its figures by relative path. This module sits at
the package root because it joins store/, heads/ and analysis/ (analysis/ may import store/ only).
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedstore.errors import StoreError
from embedstore.heads.tables import best_values, column_names, group_rows, row_cells, table_legend, table_rows
from embedstore.store import info as store_info
from embedstore.store import open_store
from embedstore.store.records import CaptionRecord, ProbeRecord, choose_best, load_records, results_dir

REPORT_FORMATS = ("html", "md")
#: analysis figure prefixes (file-name stems of embedstore.analysis) -> section titles, in page order
FIGURE_SECTIONS = {"layers": "Per-layer curves (analysis)", "pca": "PCA", "umap": "UMAP",
                   "cosine": "Cosine similarity (raw and centred)", "cka": "CKA between layers",
                   "confusion": "Confusion matrices"}


@dataclass
class Table:
    """A table block: ``header`` ``[cols]``, ``rows`` ``[n][cols]`` of ``(text, bold)``; ``note`` below it."""

    header: list[str]
    rows: list[list[tuple[str, bool]]]
    note: str = ""


@dataclass
class Figure:
    """A figure block: ``path`` of an image file, or ``svg`` text made here; ``caption`` names its split."""

    caption: str
    path: Path | None = None
    svg: str | None = None


@dataclass
class Section:
    """A titled section: ``blocks`` are paragraphs (str), :class:`Table` and :class:`Figure`."""

    title: str
    blocks: list[Any] = field(default_factory=list)


def _plain(header: list[str], rows: list[list[Any]], note: str = "") -> Table:
    return Table(header, [[(str(c), False) for c in row] for row in rows], note)


def dataset_sections(store: Path) -> list[Section]:
    """One section per dataset: clips per label and split, then the files not extracted and why."""
    d = store_info(store)
    out = []
    with open_store(store, "r") as st:
        for ds in d["datasets"]:
            table = st.tracks(ds["name"])
            counts = Counter(zip(table.labels.tolist(), table.splits.tolist()))
            splits = sorted({s for _, s in counts})
            labels = sorted({lab for lab, _ in counts})
            rows = [[lab or "(no label)", *[counts.get((lab, s), 0) for s in splits], sum(
                counts.get((lab, s), 0) for s in splits)] for lab in labels]
            sec = Section(f"Dataset {ds['name']}", [f"{ds['tracks']} clips; source {ds['attrs'].get('root', '?')} "
                                                     f"({ds['attrs'].get('kind', '?')})",
                                                     _plain(["label", *[s or "(no split)" for s in splits], "all"], rows)])
            if ds["failures"]:
                sec.blocks.append(_plain(["file not extracted", "stage", "reason"],
                                         [[f["path"], f["stage"], f["reason"]] for f in ds["failures"]]))
            out.append(sec)
    return out


def model_section(store: Path) -> Section | None:
    """The model entries: checkpoint, weights hash, layers, rows done, preprocessing, versions."""
    rows = []
    for ds in store_info(store)["datasets"]:
        for m in ds["models"]:
            meta, pre = m["metadata"], m["preprocessing"]
            digest = meta.get("weights_sha256") or meta.get("weights_hash") or "-"
            if isinstance(digest, dict):  # {weights file or "state_dict": sha256}
                digest = ", ".join(f"{name}: {value[:12]}" for name, value in digest.items())
            steps = ", ".join(f"{k} {v}" for k, v in pre.items() if v not in (None, "", False) and k != "gain_recorded")
            rows.append([ds["name"], m["name"], meta.get("checkpoint") or meta.get("encoder") or meta.get("model_name") or "-", str(digest),
                         f"{m['layers']} x {max(m['layer_widths'])} {m['storage_dtype']}",
                         f"{m['done']}/{ds['tracks']}", steps,
                         ", ".join(f"{k} {v}" for k, v in m["versions"].items())])
    if not rows:
        return None
    return Section("Model entries", [_plain(["dataset", "model", "checkpoint", "weights sha256", "layers", "done",
                                             "preprocessing", "versions"], rows)])


def comparison_section(records: list[Any]) -> Section | None:
    """The comparison table across models x layers x heads (best chosen on validation), one per task/dataset."""
    rows = table_rows(records)
    if not rows:
        return None
    sec = Section("Comparison (probes on frozen embeddings and fine-tunes)")
    for (task, dataset), grp in group_rows(rows).items():
        top = best_values(grp)[(task, dataset)]
        cells = []
        for r in grp:
            c = row_cells(r, top)
            c[0] = (c[0][0] + (" †" if r.best else ""), False)
            cells.append(c)
        sec.blocks += [f"Task {task}, dataset {dataset}: {grp[0].test_n} test clips.",
                       Table(column_names(grp), cells)]
    sec.blocks.append(table_legend(rows))
    return sec


def layer_curve_svg(records: list[Any]) -> list[Figure]:
    """Selection-split and test accuracy per layer, one marker pair per model/head with an integer-layer
    record, drawn from the records (nothing retrained). Layers follow the analysis figures' axis rule
    (:func:`~embedstore.analysis.plotting.layer_axis_groups`): depth-ordered layers share a numeric,
    joined axis; named layers (MFCC's groups, CLAP's stages) are categories, one panel per set of names."""
    from embedstore.analysis.plotting import layer_axis_groups, plot_layers, set_layer_axis
    from embedstore.figures import new_figure

    series: dict[tuple[str, str, str, str], list[Any]] = {}
    for r in records:
        if isinstance(r, ProbeRecord) and isinstance(r.layer, int) and "test" in r.metrics:
            series.setdefault((r.task, r.dataset, r.model, r.head), []).append(r)
    out = []
    for (task, dataset), keys in _by_group(series).items():
        recs_of = {key: sorted(series[key], key=lambda r: r.layer) for key in keys}
        names_of = {key: [str(r.layer_name) for r in recs] for key, recs in recs_of.items()}
        groups = layer_axis_groups(names_of)
        fig, axes = new_figure(len(groups), panel_size=(5.2, 3.6))
        chosen: set[str] = set()
        for ax, (names, group) in zip(axes, groups):
            for key in group:
                recs = recs_of[key]
                scored = [r for r in recs if r.selection_score is not None]
                plot_layers(ax, names, [r.layer for r in recs], [100 * r.metrics["test"]["accuracy"] for r in recs],
                            marker="o", label=f"{key[2]}/{key[3]} test")
                color = ax.get_lines()[-1].get_color()
                plot_layers(ax, names, [r.layer for r in scored], [100 * r.selection_score for r in scored],
                            linestyle="--", marker="s", markerfacecolor="none", color=color,
                            label=f"{key[2]}/{key[3]} {scored[0].selected_on if scored else 'valid'}")
                chosen |= {r.selected_on for r in scored}
            set_layer_axis(ax, names)
            ax.set(ylabel="accuracy %", title=f"{task} / {dataset}")
            ax.legend(fontsize=7)
        buf = io.StringIO()
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
        out.append(Figure(f"Accuracy per layer, {task}/{dataset}: filled = test split, open = the rows that "
                          f"select ({', '.join(sorted(chosen)) or 'none'}); named layers are categories, "
                          "numbered layers are joined in depth order.", svg=buf.getvalue()))
    return out


def _by_group(series: dict[tuple[str, str, str, str], list[Any]]) -> dict[tuple[str, str], list[tuple]]:
    out: dict[tuple[str, str], list[tuple]] = {}
    for key, recs in series.items():
        if len(recs) > 1:
            out.setdefault(key[:2], []).append(key)
    return out


def finetune_section(records: list[Any]) -> Section | None:
    """Each fine-tune record beside the frozen probe of its base model chosen on validation."""
    rows = []
    for ft in (r for r in records if isinstance(r, ProbeRecord) and r.head == "finetune" and "test" in r.metrics):
        base = ft.model.split("+ft-")[0]
        frozen = choose_best(r for r in records if isinstance(r, ProbeRecord) and r.head != "finetune"
                             and (r.model, r.task, r.dataset) == (base, ft.task, ft.dataset))
        rows.append([ft.task, ft.dataset, base, f"{100 * ft.metrics['test']['accuracy']:.1f}",
                     "-" if frozen is None else f"{100 * frozen.metrics['test']['accuracy']:.1f} "
                                                f"(layer {frozen.layer} {frozen.head})"])
    if not rows:
        return None
    return Section("Fine-tuned versus frozen", [_plain(
        ["task", "dataset", "encoder", "fine-tuned: test acc %", "frozen, best on validation: test acc %"], rows)])


def caption_section(records: list[Any]) -> Section | None:
    """Caption records: their test metrics and a few generated captions beside the references."""
    caps = [r for r in records if isinstance(r, CaptionRecord)]
    if not caps:
        return None
    sec = Section("Captions")
    for r in caps:
        m = r.metrics.get("test", {})
        scores = ", ".join(f"{k} {v:.3f}" for k, v in m.items() if isinstance(v, float))
        sec.blocks.append(f"{r.model} layer {r.layer} {r.head} ({r.inputs or 'inputs'}): test split, "
                          f"{m.get('n', '?')} clips: {scores}")
        if r.examples:
            sec.blocks.append(_plain(["track (test)", "generated", "reference"],
                                     [[e.get("track_id", ""), e.get("generated", ""), e.get("reference", "")]
                                      for e in r.examples[:5]]))
    return sec


def figure_sections(store: Path) -> list[Section]:
    """The figures in ``<store>.analysis/`` grouped by :data:`FIGURE_SECTIONS` (SVG preferred over PNG)."""
    folder = store.with_name(store.name + ".analysis")
    out = []
    for prefix, title in FIGURE_SECTIONS.items():
        figures = []
        for numbers in sorted(folder.glob(f"{prefix}_*.json")):
            image = next((p for p in (numbers.with_suffix(".svg"), numbers.with_suffix(".png")) if p.is_file()), None)
            if image is not None:
                figures.append(Figure(_figure_caption(numbers), path=image))
        if figures:
            out.append(Section(title, figures))
    return out


def _figure_caption(numbers: Path) -> str:
    try:
        meta = json.loads(numbers.read_text())
    except (OSError, json.JSONDecodeError):
        meta = {}
    split = meta.get("split") or meta.get("splits") or "see file name"
    return f"{numbers.stem}: {meta.get('analysis', numbers.stem.split('_')[0])}, split {split}"


def build_sections(store: str | Path) -> list[Section]:
    """Every section of the report of ``store`` that has data, in page order."""
    store = Path(store)
    if not store.exists():
        raise StoreError(f"--store {store}: no such store")
    records = load_records(store) if results_dir(store).is_dir() else []
    sections: list[Section | None] = [*dataset_sections(store), model_section(store), comparison_section(records)]
    curves = layer_curve_svg(records)
    sections.append(Section("Accuracy per layer (from the probe records)", curves) if curves else None)
    sections += [*figure_sections(store), finetune_section(records), caption_section(records)]
    return [s for s in sections if s is not None]


# ---- rendering ---------------------------------------------------------------------------------

_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .5em;
text-align:left}th{background:#f2f2f2}figure{margin:1em 0}figure svg,figure img{max-width:100%;height:auto}
figcaption{font-size:.85em;color:#555}.note{font-size:.85em;color:#444}"""


def _svg_inline(text: str) -> str:
    """SVG text without its XML prolog and DOCTYPE, to sit inside HTML."""
    start = text.find("<svg")
    return text[start:] if start >= 0 else text


def _html_figure(fig: Figure) -> str:
    if fig.svg is not None:
        body = _svg_inline(fig.svg)
    elif fig.path.suffix == ".svg":
        body = _svg_inline(fig.path.read_text(encoding="utf-8"))
    else:
        data = base64.b64encode(fig.path.read_bytes()).decode("ascii")
        body = f'<img alt="{html.escape(fig.caption)}" src="data:image/png;base64,{data}">'
    return f"<figure>{body}<figcaption>{html.escape(fig.caption)}</figcaption></figure>"


def _html_table(t: Table) -> str:
    cell = lambda text, bold: f"<td>{'<b>' if bold else ''}{html.escape(text)}{'</b>' if bold else ''}</td>"  # noqa: E731
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.header)
    body = "".join("<tr>" + "".join(cell(*c) for c in row) + "</tr>" for row in t.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_html(sections: list[Section], title: str) -> str:
    """One self-contained HTML page: inline CSS, SVG inlined, PNG as data URIs; no script, no link."""
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    for sec in sections:
        parts.append(f"<section><h2>{html.escape(sec.title)}</h2>")
        for block in sec.blocks:
            if isinstance(block, Table):
                parts.append(_html_table(block))
            elif isinstance(block, Figure):
                parts.append(_html_figure(block))
            else:
                parts.append(f'<p class="note">{html.escape(block)}</p>')
        parts.append("</section>")
    return "\n".join(parts + ["</body></html>\n"])


def _md_cell(text: str, bold: bool) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return f"**{text}**" if bold and text else text


def to_markdown(sections: list[Section], title: str, out: Path) -> str:
    """The report as Markdown; figures are linked relative to ``out`` (figures made here are written to
    ``<out stem>_figures/`` beside it)."""
    lines = [f"# {title}", ""]
    made = 0
    for sec in sections:
        lines += [f"## {sec.title}", ""]
        for block in sec.blocks:
            if isinstance(block, Table):
                lines += ["| " + " | ".join(block.header) + " |", "|" + "---|" * len(block.header)]
                lines += ["| " + " | ".join(_md_cell(*c) for c in row) + " |" for row in block.rows]
            elif isinstance(block, Figure):
                path = block.path
                if path is None:
                    made += 1
                    path = out.with_name(f"{out.stem}_figures") / f"figure{made}.svg"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(block.svg, encoding="utf-8")
                lines.append(f"![{block.caption}]({Path(os.path.relpath(path, out.parent)).as_posix()})  ")
                lines.append(f"*{block.caption}*")
            else:
                lines.append(block)
            lines.append("")
    return "\n".join(lines)


def write_report(store: str | Path, out: str | Path | None = None, *, fmt: str = "html") -> Path:
    """Write the report of ``store`` as ``fmt`` (``html`` or ``md``) to ``out`` (default
    ``<store>.report.html`` / ``.md`` beside the store); returns its path.

    Raises:
        StoreError: no store at ``store`` or an unknown ``fmt`` (naming ``--format``).
    """
    if fmt not in REPORT_FORMATS:
        raise StoreError(f"--format {fmt!r}: use {' or '.join(REPORT_FORMATS)}")
    store = Path(store)
    out = Path(out) if out is not None else store.with_name(f"{store.name}.report.{fmt}")
    sections = build_sections(store)
    title = f"embedstore report: {store.name}"
    out.parent.mkdir(parents=True, exist_ok=True)
    text = to_html(sections, title) if fmt == "html" else to_markdown(sections, title, out.resolve())
    out.write_text(text, encoding="utf-8")
    return out
