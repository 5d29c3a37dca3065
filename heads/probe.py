"""Probe heads on frozen embeddings read from the store: the library entry point
:func:`run_probe` and the comparison table :func:`format_comparison` (the study's Table 1).

Layer modes: an int or a layer name (one probe), ``all`` (one probe per layer, every record kept),
``best`` (the sweep, keeping only the layer with the best validation accuracy) and ``weighted``
(the learnable softmax-weighted sum of all layers feeding the MLP).

Every "best" here (layer, reference row of the table) is chosen by the records' validation accuracy:
the dataset's valid split, or without one the train carve-out (MLP) or inner CV on train (logreg);
each record's ``selected_on`` says which. Test metrics are reported, never used to choose.

The table says how many clips each split held and where validation came from
(:func:`split_summary`); :func:`evidence_warnings` (``ProbeReport.warnings``) lists, once each, what
makes a comparison weak evidence: classes missing from a split, too few clips per class, labelled
clips in no split, rows that all tie or none of which differs from the best.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedstore.errors import DatasetError, ModelError, StoreError, did_you_mean, not_one_of
from embedstore.heads.metrics import mcnemar_exact, paired_bootstrap
from embedstore.heads.protocol import HEADS, ProbeResult, probe_arrays
from embedstore.store.records import (SELECTED_ON, ProbeRecord, choose_best, record_from_dict, record_selected_on,
                                      save_record, selection_score)
from embedstore.store.specs import dataset_tasks, resolve_dataset, resolve_layers, resolve_models

CLASS_COLUMN = "label"
#: Fewer clips of a class than this in a split earns a ``few_clips`` :class:`EvidenceWarning`.
MIN_CLIPS_PER_CLASS = 5
#: A row whose paired test against the reference row has p below this differs significantly.
ALPHA = 0.05


@dataclass
class ProbeReport:
    """What :func:`run_probe` did.

    Attributes:
        store_path, task, head, preset: the request.
        records: the saved records (:class:`~embedstore.store.records.ProbeRecord`), in run order.
        paths: the record files written, parallel to ``records``.
        best_layers: ``{(dataset, model): layer}`` with the best validation accuracy among the
            layers probed (single-layer and weighted runs give their own layer; absent when no
            layer has a validation score). Test accuracy never chooses.
    """

    store_path: Path
    task: str
    head: str
    preset: str
    records: list[ProbeRecord] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    best_layers: dict[tuple[str, str], int | str] = field(default_factory=dict)

    @property
    def warnings(self) -> list[EvidenceWarning]:
        """What makes these records weak evidence (:func:`evidence_warnings`), each listed once."""
        return evidence_warnings(self.records)


def _only_label_task(tasks_of: dict[str, dict[str, str]], names: list[str], have: str) -> str:
    """The one class-label task (column ``label``) of the datasets ``names``, for an omitted ``--task``."""
    found = sorted({t for ds in names for t, column in tasks_of[ds].items() if column == CLASS_COLUMN})
    if len(found) == 1:
        return found[0]
    if not found:
        raise StoreError(f"--task: no dataset has class labels to probe (datasets and tasks: {have}); "
                         "use --task caption for captions")
    raise StoreError(f"--task: several label tasks ({', '.join(found)}); choose one with --task "
                     f"(datasets and tasks: {have})")


def _resolve_datasets(st: Any, task: str | None, dataset: str | None) -> tuple[str, list[str]]:
    """``(task, datasets to probe)``: ``dataset`` (checked by
    :func:`~embedstore.store.specs.resolve_dataset`) or every dataset having ``task``;
    ``task=None`` takes the only class-label task there is."""
    names = [resolve_dataset(st, dataset)] if dataset is not None else list(st.datasets())
    tasks_of = {ds: dataset_tasks(st, ds) for ds in st.datasets()}
    have = "; ".join(f"{ds}: {', '.join(t) or 'none'}" for ds, t in tasks_of.items()) or "no datasets"
    if task is None:
        task = _only_label_task(tasks_of, names, have)
    if dataset is not None and task not in tasks_of[dataset]:
        raise StoreError(f"--task {task!r}: dataset {dataset!r} has no such labels"
                         f"{did_you_mean(task, tasks_of[dataset])} (datasets and tasks: {have})")
    names = [ds for ds in names if task in tasks_of[ds]]
    if not names:
        known = {t for tasks in tasks_of.values() for t in tasks}
        raise StoreError(f"--task {task!r}: no dataset in the store has these labels{did_you_mean(task, known)} "
                         f"(datasets and tasks: {have})")
    for ds in names:
        column = tasks_of[ds][task]
        if column != CLASS_COLUMN:
            raise StoreError(f"--task {task!r}: dataset {ds!r} stores it in column {column!r}, "
                             f"not class labels; probes need a {CLASS_COLUMN!r} task")
    return task, names


def run_probe(
    store_path: str | Path,
    task: str | None = None,
    *,
    models: list[str] | None = None,
    dataset: str | None = None,
    layer: int | str = "all",
    head: str = "mlp",
    preset: str = "default",
    seeds: int = 1,
    device: str = "auto",
    progress: bool = True,
) -> ProbeReport:
    """Train probe heads on stored embeddings and save one result record per probe.

    Args:
        store_path: the store (Zarr directory or ``.h5``).
        task: a label task of the datasets (``genre``, ``label``, ...); None = the only class-label
            task of the store (of ``dataset`` when given); with several, the error lists them.
        models: model entries to probe; None = every model of each dataset.
        dataset: one dataset; None = every dataset that has ``task``.
        layer: an index or layer name, ``all`` (sweep), ``best`` (sweep, keep the best on
            validation; the record's ``layer_selection`` gives every layer's score and
            ``selected_on``) or ``weighted`` (softmax-weighted layer sum, MLP only).
        head: ``mlp`` or ``logreg``. preset: ``default`` (converging protocol) or ``paper``.
        seeds: repeats with seeds 0..seeds-1 (mean and std reported).
        device: torch device for the MLP (``auto`` = cuda when available).
        progress: show a tqdm bar over layers.

    Returns:
        A :class:`ProbeReport`; the records are also saved with
        :func:`~embedstore.store.records.save_record` (a re-run replaces them).

    Raises:
        StoreError: missing store/dataset/model, or a task no dataset has (the message lists which
            datasets have which tasks). ModelError: bad layer, head, preset or seeds.
        DatasetError: ``layer="best"`` and no layer has a validation score to choose by.
    """
    from embedstore.store import open_store

    if head not in HEADS:
        raise ModelError(not_one_of("--head", head, HEADS, "head"))
    if seeds < 1:
        raise ModelError(f"--seeds {seeds}: must be at least 1")
    if layer == "weighted" and head != "mlp":
        raise ModelError("--layer weighted: needs --head mlp (the learned layer weights feed the MLP)")
    with open_store(store_path, mode="r") as st:
        task, datasets = _resolve_datasets(st, task, dataset)
        chosen_of = {ds: resolve_models(st, ds, models) for ds in datasets}
        from embedstore.devices import resolve_device  # torch: imported once the names are checked
        from embedstore.heads.mlp import mlp_config

        mlp_config(preset)  # validates the preset name
        dev = str(resolve_device(device))
        report = ProbeReport(Path(store_path), task, head, preset)
        for ds in datasets:
            for model in chosen_of[ds]:
                recs = _probe_entry(st, ds, model, task=task, layer=layer, head=head, preset=preset, seeds=seeds,
                                    device=dev, progress=progress)
                for rec in _keep_best(recs, report, layer, f"{ds}/{model}"):
                    report.records.append(rec)
                    report.paths.append(save_record(store_path, rec))
    return report


def _probe_entry(st: Any, ds: str, model: str, *, task: str, layer: int | str, head: str, preset: str, seeds: int,
                 device: str, progress: bool) -> list[ProbeRecord]:
    """The records of one model entry: one per layer of the ``layer`` spec, or one ``weighted``."""
    from tqdm.auto import tqdm

    from embedstore.store import load_embeddings

    attrs = st.model_attrs(ds, model)
    layer_names = [str(n) for n in attrs["layer_names"]]
    picked = resolve_layers(layer, layer_names, model=model, widths=[int(w) for w in attrs.get("layer_widths", [])])
    common = dict(task=task, dataset=ds, model=model, head=head, preset=preset, checkpoint=attrs.get("checkpoint"))

    def probe(emb_layer: int | str) -> ProbeResult:
        emb = load_embeddings(st, dataset=ds, model=model, layer=emb_layer)
        return probe_arrays(emb.X, emb.labels, emb.splits, head=head, preset=preset, seeds=seeds, device=device,
                            track_ids=emb.track_ids)

    if picked.mode == "weighted":
        return [probe("all").record(layer="weighted", layer_name="weighted", layers=picked.indices, **common)]
    return [probe(li).record(layer=li, layer_name=layer_names[li], layers=[li], **common)
            for li in tqdm(picked.indices, desc=f"{ds}/{model} {head}", unit="layer", disable=not progress)]


def _keep_best(recs: list[ProbeRecord], report: ProbeReport, layer: int | str, entry: str) -> list[ProbeRecord]:
    """Note the layer with the best validation score in ``report.best_layers``; for ``--layer best``
    keep only that record, its ``layer_selection`` giving every layer's score."""
    best = choose_best(recs)
    if best is not None:
        report.best_layers[(best.dataset, best.model)] = best.layer
    if layer != "best":
        return recs
    if best is None:
        raise DatasetError(f"--layer best: no validation score for {entry} to choose a layer "
                           "by (too few clips per class to validate); probe --layer all instead")
    best.layer_selection = {"by": "accuracy", "selected_on": best.selected_on,
                            "scores": {str(r.layer): r.selection_score for r in recs}}
    return [best]


# ---- comparison table --------------------------------------------------------------------------


def _paired_p(a: dict[str, Any], b: dict[str, Any]) -> tuple[float | None, str]:
    """p-value of ``a`` vs ``b`` on their common test clips: exact McNemar for single-seed records,
    paired bootstrap of the seed-mean accuracy otherwise. ``(None, "")`` when not comparable."""
    if (a["task"], a["dataset"]) != (b["task"], b["dataset"]):
        return None, ""
    pa, pb = a.get("predictions", {}).get("test"), b.get("predictions", {}).get("test")
    if not pa or not pb:
        return None, ""
    la, lb = a["metrics"]["test"]["labels"], b["metrics"]["test"]["labels"]
    pos_b = {t: i for i, t in enumerate(pb["track_ids"])}
    common = [(i, pos_b[t]) for i, t in enumerate(pa["track_ids"]) if t in pos_b]
    if not common:
        return None, ""
    ia, ib = np.array(common).T
    # decode to label values so records with different label lists still compare
    y = np.asarray(la, dtype=object)[np.asarray(pa["y_true"])[ia]]
    ya = np.asarray(la, dtype=object)[np.asarray(pa["y_pred"])[:, ia]]
    yb = np.asarray(lb, dtype=object)[np.asarray(pb["y_pred"])[:, ib]]
    if ya.shape[0] == 1 and yb.shape[0] == 1:
        return mcnemar_exact(ya[0] == y, yb[0] == y)["p_value"], "McNemar"
    return paired_bootstrap(y.astype(str), ya.astype(str), yb.astype(str))["p_value"], "paired bootstrap"


def _is_classification(record: Mapping[str, Any]) -> bool:
    """True for classification records (:class:`~embedstore.store.records.ProbeRecord`, by schema;
    caption records share the folder) that have test metrics."""
    return isinstance(record_from_dict(record), ProbeRecord) and "test" in (record.get("metrics") or {})


def compare_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per classification record (caption records are skipped) with the p-value of a paired
    test, on the common test clips, against the reference row of the same task and dataset: the row
    with the highest validation accuracy (:func:`~embedstore.store.records.choose_best`; test
    accuracy never chooses it). A group where no record has a validation score has no reference row.

    Returns rows ``{"record", "best": bool, "p_value": float | None, "test": test name,
    "selected_on": the rows that ranked the record}`` in the records' order.
    """
    records = [r for r in records if _is_classification(r)]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["task"], r["dataset"]), []).append(r)
    best_of = {k: choose_best(group) for k, group in groups.items()}
    rows = []
    for r in records:
        best = best_of[(r["task"], r["dataset"])]
        p, test = (None, "") if best is None or r is best else _paired_p(r, best)
        rows.append({"record": r, "best": r is best, "p_value": p, "test": test,
                     "selected_on": record_selected_on(r)})
    return rows


# ---- weak evidence: clips per split, warnings ----------------------------------------------------

WARNING_KINDS = ("no_clips", "few_clips", "unassigned", "tie", "no_difference")
_NO_CLIPS = {"train": "the probes cannot predict these classes",
             "valid": "validation does not score these classes",
             "test": "their recall is not measured"}
_FEW_CLIPS = {"train": "the probes learn these classes from very few examples",
              "valid": "the choice of the best row rests on very few clips",
              "test": "test accuracy and its CI rest on very few clips"}


@dataclass(frozen=True)
class EvidenceWarning:
    """One reason to distrust a comparison; ``str(warning)`` is its one-line message.

    Attributes:
        kind: one of :data:`WARNING_KINDS`: ``no_clips`` (a class has no clip in a split),
            ``few_clips`` (a split has fewer than :data:`MIN_CLIPS_PER_CLASS` clips of some classes),
            ``unassigned`` (labelled clips in no split, unused), ``tie`` (every row has the same
            validation and test accuracy) or ``no_difference`` (no row differs from the reference row
            at p < :data:`ALPHA`).
        task, dataset: the rows it concerns. split: ``train``/``valid``/``test`` or None.
        message: names the task/dataset, the split, the classes and their counts.
    """

    kind: str
    task: str
    dataset: str
    split: str | None
    message: str

    def __str__(self) -> str:
        return self.message


def _role_counts(record: dict[str, Any]) -> dict[str, np.ndarray]:
    """Clips per class ``[classes]`` of each split a record used (``protocol["class_counts"]``; {} for
    records without it): train as the smallest over folds (what one model learned from), valid and
    test summed over folds. Valid is absent when hyper-parameters were chosen by CV inside train."""
    proto = record.get("protocol") or {}
    out = {}
    for role, per_fold in (proto.get("class_counts") or {}).items():
        if role == "valid" and proto.get("valid_source") == "inner_cv":
            continue
        counts = np.asarray(per_fold, dtype=np.int64).reshape(len(per_fold), -1)
        out[role] = counts.min(axis=0) if role == "train" else counts.sum(axis=0)
    return out


def _span(values: list[int]) -> str:
    return f"{min(values)}" if min(values) == max(values) else f"{min(values)}-{max(values)}"


def split_summary(record: dict[str, Any]) -> str:
    """Clips per split of one record and where its validation came from, as one line: ``train 443,
    test 290; valid: 197 clips (split)``, ``train 340, test 290; valid: carved 15 % of train, 60
    clips``, ``train 96, test 24; valid: none, chosen by cross-validation inside train`` or, k-fold,
    ``5 folds: test 160 (each clip once), train 96 per fold; valid: the next fold, 32 clips``."""
    proto = record.get("protocol") or {}
    per_fold = {role: [int(np.sum(c)) for c in folds] for role, folds in (proto.get("class_counts") or {}).items()}
    n = {role: sum(v) for role, v in per_fold.items()} or {
        role: int(m.get("n", 0)) for role, m in record.get("metrics", {}).items()}
    source = proto.get("valid_source", "split")
    if proto.get("splits") == "kfold" and per_fold:
        text = (f"{len(per_fold['test'])} folds: test {n['test']} (each clip once), train {_span(per_fold['train'])} "
                f"per fold; valid: the next fold, {_span(per_fold['valid'])} clips")
    else:
        text = f"train {n.get('train', 0)}, test {n.get('test', 0)}; valid: "
        if source == "inner":
            fraction = proto.get("valid_fraction")
            share = f"{100 * fraction:g} % of train" if fraction else "from train"
            text += f"carved {share}, {n.get('valid', 0)} clips"
        elif source == "inner_cv":
            text += "none, chosen by cross-validation inside train"
        else:
            text += f"{n.get('valid', 0)} clips (split)"
    unused = sum((proto.get("unassigned") or {}).values())
    return text + (f"; {unused} labelled clips in no split (unused)" if unused else "")


def _data_warnings(record: dict[str, Any]) -> list[tuple[str, str | None, str]]:
    """``(kind, split, message)`` for the classes and clips of one record (see :class:`EvidenceWarning`)."""
    group = f"{record['task']}/{record['dataset']}"
    labels = [str(v) for v in record["metrics"]["test"]["labels"]]
    counts = _role_counts(record)
    out = []
    for role, c in counts.items():
        missing = np.flatnonzero(c == 0)
        if len(missing):
            elsewhere = ["; ".join(f"{r} {int(counts[r][i])}" for r in counts if r != role) for i in missing]
            names = ", ".join(f"{labels[i]!r} ({e})" if e else repr(labels[i]) for i, e in zip(missing, elsewhere))
            out.append(("no_clips", role, f"{group}: no {role} clips of {names}: {_NO_CLIPS[role]}"))
        few = np.flatnonzero((c > 0) & (c < MIN_CLIPS_PER_CLASS))
        if len(few):
            listed = ", ".join(f"{labels[i]} {int(c[i])}" for i in few)
            out.append(("few_clips", role, f"{group}: {role} has fewer than {MIN_CLIPS_PER_CLASS} clips of {len(few)} "
                                           f"of {len(c)} classes ({listed}; {int(c.sum())} {role} clips in all): "
                                           f"{_FEW_CLIPS[role]}"))
    unassigned = (record.get("protocol") or {}).get("unassigned") or {}
    if unassigned:
        detail = ", ".join(f"split {v!r} {k}" if v else f"no split value {k}" for v, k in unassigned.items())
        out.append(("unassigned", None, f"{group}: {sum(unassigned.values())} labelled clips are in no split "
                                        f"({detail}) and were not used"))
    return out


def _comparison_warnings(rows: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], str]]:
    """``(kind, a record of the group, message)`` for each task/dataset whose rows
    (:func:`compare_records`) all tie, or none of which differs from the reference row at p < :data:`ALPHA`."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(f"{row['record']['task']}/{row['record']['dataset']}", []).append(row)
    out = []
    for group, grp in groups.items():
        if len(grp) < 2:
            continue
        valid = {selection_score(row["record"]) for row in grp}
        test = {round(row["record"]["metrics"]["test"]["accuracy"], 12) for row in grp}
        if len(valid) == 1 and len(test) == 1:
            v = valid.pop()
            shown = "-" if v is None else f"{100 * v:.1f} %"
            out.append(("tie", grp[0]["record"], f"{group}: all {len(grp)} rows tie (valid {shown}, test "
                                                 f"{100 * test.pop():.1f} %): nothing to conclude about which "
                                                 "is better"))
            continue
        best = [row["record"] for row in grp if row["best"]]
        p_values = [row["p_value"] for row in grp if not row["best"]]
        if best and None not in p_values and min(p_values) >= ALPHA:
            ref = best[0]
            out.append(("no_difference", ref, f"{group}: no row differs from the best ({ref['model']} layer "
                                              f"{ref['layer']}) at p < {ALPHA:g} on {ref['metrics']['test']['n']} "
                                              "test clips: the table cannot rank them"))
    return out


def evidence_warnings(records: list[dict[str, Any]]) -> list[EvidenceWarning]:
    """Reasons to distrust the comparison of classification ``records``, each message once: a class
    with no train, valid or test clips, a split with fewer than :data:`MIN_CLIPS_PER_CLASS` clips of
    some class, labelled clips in no split, and a task/dataset whose rows all tie or none of which
    differs from the reference row (:func:`compare_records`) at p < :data:`ALPHA`. Records that
    predate ``protocol["class_counts"]`` get only the comparison warnings."""
    records = [r for r in records if _is_classification(r)]
    out: list[EvidenceWarning] = []
    seen: set[str] = set()

    def add(kind: str, record: dict[str, Any], split: str | None, message: str) -> None:
        if message not in seen:
            seen.add(message)
            out.append(EvidenceWarning(kind, record["task"], record["dataset"], split, message))

    for r in records:
        for kind, split, message in _data_warnings(r):
            add(kind, r, split, message)
    for kind, record, message in _comparison_warnings(compare_records(records)):
        add(kind, record, None, message)
    return out


def _clip_lines(records: list[dict[str, Any]], multi: bool) -> list[str]:
    """``clips: ...`` lines of the table (:func:`split_summary`): one per task/dataset, or one per
    distinct summary naming its model/head rows when they differ."""
    groups: dict[str, dict[str, list[str]]] = {}
    for r in records:
        group = groups.setdefault(f"{r['task']}/{r['dataset']}", {})
        group.setdefault(split_summary(r), []).append(f"{r['model']}/{r['head']}")
    out = []
    for name, summaries in groups.items():
        for text, rows in summaries.items():
            who = f" ({', '.join(dict.fromkeys(rows))})" if len(summaries) > 1 else ""
            out.append(f"clips{f' {name}' if multi else ''}{who}: {text}")
    return out


def _fmt_hparams(hp: dict[str, Any]) -> str:
    short = {"weight_decay": "wd", "dropout": "do", "epochs": "ep"}
    parts = []
    for k, v in hp.items():
        if k in ("selected_by", "batch_size"):
            continue
        parts.append(f"{short.get(k, k)}={v:g}" if isinstance(v, (int, float)) else f"{short.get(k, k)}={v}")
    return " ".join(parts)


def format_comparison(report_or_records: ProbeReport | list[dict[str, Any]]) -> str:
    """Render one comparison table across models and layers (rows model/layer; columns the
    validation accuracy that ranks the row, test accuracy with its bootstrap 95% CI, macro-F1, chosen
    hyper-parameters, p-value vs the best row), above it a ``clips:`` line per task/dataset
    (:func:`split_summary`: clips per split, where validation came from), below it a line saying which
    rows chose the best row (``selected on: valid``), and the learned layer weights of weighted probes.
    Warnings are not part of the text: see :func:`evidence_warnings`."""
    records = report_or_records.records if isinstance(report_or_records, ProbeReport) else list(report_or_records)
    records = [r for r in records if _is_classification(r)]
    if not records:
        return "no classification probe results"
    multi = len({(r["task"], r["dataset"]) for r in records}) > 1
    header = (["task/dataset"] if multi else []) + ["model", "layer", "head", "valid acc %",
                                                    "test acc % [95% CI]", "macro-F1 %", "hparams", "p vs best"]
    table, tests, chosen_on = [], set(), set()
    for row in compare_records(records):
        r = row["record"]
        m = r["metrics"]["test"]
        lo, hi = m["ci95"]["accuracy"]
        acc = f"{100 * m['accuracy']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
        if len(r.get("seeds", [])) > 1:
            acc += f" sd {100 * m['accuracy_std']:.1f}"
        layer = str(r["layer"])
        if r.get("layer_name") not in (None, layer, "weighted"):
            layer += f" ({r['layer_name']})"
        head = r["head"] + ("" if r.get("preset", "default") == "default" else f"/{r['preset']}")
        p = "best" if row["best"] else ("-" if row["p_value"] is None else f"{row['p_value']:.3g}")
        tests.add(row["test"])
        if row["best"]:
            chosen_on.add(row["selected_on"])
        score = selection_score(r)
        cells = ([f"{r['task']}/{r['dataset']}"] if multi else []) + [
            r["model"], layer, head, "-" if score is None else f"{100 * score:.1f}", acc,
            f"{100 * m['macro_f1']:.1f}", _fmt_hparams(r.get("hparams", {})), p]
        table.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *table)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = []
    if not multi:
        out.append(f"task {records[0]['task']!r}, dataset {records[0]['dataset']!r}")
    out += _clip_lines(records, multi)
    out += [line(header), line(["-" * w for w in widths]), *map(line, table)]
    if chosen_on:
        how = " / ".join(f"{SELECTED_ON.get(k, k)} (selected on: {k})" for k in sorted(chosen_on))
        out.append(f"best: the row with the highest {how}; test accuracy never chooses")
    else:
        out.append("best: none (no record has a validation score to choose by)")
    tests.discard("")
    if tests:
        out.append(f"p vs best: {' / '.join(sorted(tests))} on the same test clips")
    for r in records:
        if r.get("layer_weights"):
            w = " ".join(f"{x:.3f}" for x in r["layer_weights"])
            out.append(f"layer weights {r['model']} ({r['dataset']}): {w}")
    return "\n".join(out)
