"""What ``embedstore datasets`` prints: counts per label and split, where the labels were read, skipped files."""

from __future__ import annotations

from collections import Counter

from embedstore.store.failures import format_reason_groups

from .base import Dataset
from .common import split_key


def summarize_dataset(ds: Dataset) -> dict:
    """Counts for a report: clips per label, per split, per (label, split), and the skipped files.

    Returns a JSON-able dict with keys ``name, kind, root, split_scheme, split_options,
    split_reason, layout, tasks, n_tracks, n_skipped, labels {label: n}, splits {split: n},
    table {label: {split: n}}, skipped [{"path", "reason"}]``; a missing label or split is the key
    ``null``/``None``. ``layout`` is :attr:`Dataset.layout`.
    """
    labels = Counter(t.label for t in ds.tracks)
    splits = Counter(t.split for t in ds.tracks)
    table: dict = {}
    for t in ds.tracks:
        row = table.setdefault(t.label, {})
        row[t.split] = row.get(t.split, 0) + 1
    split_names = sorted(splits, key=split_key)
    return {
        "name": ds.name,
        "kind": ds.kind,
        "root": str(ds.root),
        "split_scheme": ds.split_scheme,
        "split_options": dict(ds.split_options),
        "split_reason": ds.split_reason,
        "layout": dict(ds.layout),
        "tasks": dict(ds.tasks),
        "n_tracks": len(ds.tracks),
        "n_skipped": len(ds.skipped),
        "labels": dict(sorted(labels.items(), key=lambda kv: (kv[0] is None, kv[0] or ""))),
        "splits": {s: splits[s] for s in split_names},
        "table": {lab: {s: table[lab].get(s, 0) for s in split_names}
                  for lab in sorted(table, key=lambda k: (k is None, k or ""))},
        "skipped": [{"path": p, "reason": r} for p, r in ds.skipped],
    }


def _layout_lines(layout: dict) -> list[str]:
    """Header lines of :func:`format_dataset_summary` on where the labels were read."""
    lines = []
    if "genres" in layout:
        lines.append(f"genre folders: {len(layout['genres'])} under {layout['genre_root']}/")
        if layout["missing_standard_genres"]:
            lines.append(f"standard GTZAN genres missing: {', '.join(layout['missing_standard_genres'])}")
        if layout["extra_genres"]:
            lines.append(f"not standard GTZAN genres: {', '.join(layout['extra_genres'])}")
    if "classes" in layout:
        where = ", ".join(f"{d}/" for d in layout.get("split_folders", {}).values()) or f"{layout['class_root']}/"
        lines.append(f"class folders: {len(layout['classes'])} under {where}")
    return lines


def format_dataset_summary(ds: Dataset, *, verbose: bool = False) -> str:
    """A terminal table of :func:`summarize_dataset`: labels x splits with totals, then the skipped
    files grouped by reason with a few examples each (every file with ``verbose``)."""
    s = summarize_dataset(ds)
    opts = ", ".join(f"{k}={v}" for k, v in s["split_options"].items())
    lines = [
        f"dataset {s['name']} ({s['kind']}) at {s['root']}",
        f"tasks: {', '.join(s['tasks']) or 'none'}   split: {s['split_scheme']}" + (f" ({opts})" if opts else ""),
        *([f"split chosen: {s['split_reason']}"] if s["split_reason"] else []),
        *_layout_lines(s["layout"]),
        f"{s['n_tracks']} tracks, {s['n_skipped']} skipped",
    ]
    if s["n_tracks"]:
        cols = [("-" if k is None else k) for k in s["splits"]] + ["total"]
        rows = []
        for lab, counts in s["table"].items():
            vals = list(counts.values())
            rows.append(["(no label)" if lab is None else str(lab), *map(str, vals), str(sum(vals))])
        rows.append(["total", *map(str, s["splits"].values()), str(s["n_tracks"])])
        head = ["label", *cols]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

        def fmt(r: list[str]) -> str:
            return "  ".join([r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:]))])

        lines += ["", fmt(head), *(fmt(r) for r in rows[:-1]), "-" * len(fmt(head)), fmt(rows[-1])]
    if s["skipped"]:
        lines += ["", f"skipped ({s['n_skipped']:,}):"]
        lines += format_reason_groups([(e["path"], e["reason"]) for e in s["skipped"]], verbose=verbose)
    return "\n".join(lines)
