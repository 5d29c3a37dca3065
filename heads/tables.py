"""The probe comparison table in the formats papers and tools read: text, Markdown, LaTeX, CSV, JSON.

:func:`table_rows` turns classification records into one typed row each (numbers as fractions, not
rounded); :func:`format_table` renders them. ``text`` is :func:`~embedstore.heads.probe.format_comparison`
(the terminal table); ``markdown`` and ``latex`` show percentages with the test accuracy's bootstrap
95 % CI (and ± std over seeds where there are several) and mark the best value of each column per
task/dataset in bold, the row chosen on validation with a dagger; ``csv`` and ``json`` give every
number unrounded. Every numeric column names its split (``valid_acc``, ``test_acc``...).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from embedstore.errors import ModelError, not_one_of
from embedstore.heads.probe import _fmt_hparams, _is_classification, compare_records, format_comparison
from embedstore.store.records import SELECTED_ON, selection_score

TABLE_FORMATS = ("text", "markdown", "latex", "csv", "json")


@dataclass
class TableRow:
    """One row of the comparison table; accuracies are fractions in [0, 1].

    ``valid_acc`` is the validation accuracy that ranks the row (from ``selected_on``'s rows; None
    when the record has none); ``test_*`` are on the test split, ``test_acc_ci`` its bootstrap 95 %
    CI ``[low, high]``; ``*_std`` the std over seeds (None for one seed); ``p_value`` of the paired
    test (``test_name``) against the ``best`` row of the task/dataset, None for the best row itself.
    """

    task: str
    dataset: str
    model: str
    layer: int | str
    layer_name: str | None
    head: str
    preset: str
    valid_acc: float | None
    selected_on: str
    test_acc: float
    test_acc_ci: list[float]
    test_acc_std: float | None
    test_macro_f1: float
    test_macro_f1_std: float | None
    test_n: int
    seeds: int
    hparams: dict[str, Any] = field(default_factory=dict)
    best: bool = False
    p_value: float | None = None
    test_name: str = ""


def table_rows(records: Sequence[Any]) -> list[TableRow]:
    """One :class:`TableRow` per classification record (caption records skipped), in order, with the
    best row of each task/dataset chosen on validation (:func:`~embedstore.heads.probe.compare_records`)."""
    out = []
    for row in compare_records([r for r in records if _is_classification(r)]):
        r = row["record"]
        m = r["metrics"]["test"]
        several = len(r.get("seeds") or []) > 1
        out.append(TableRow(
            task=r["task"], dataset=r["dataset"], model=r["model"], layer=r["layer"], layer_name=r.get("layer_name"),
            head=r["head"], preset=r.get("preset") or "default", valid_acc=selection_score(r),
            selected_on=row["selected_on"], test_acc=m["accuracy"], test_acc_ci=list(m["ci95"]["accuracy"]),
            test_acc_std=m.get("accuracy_std") if several else None, test_macro_f1=m["macro_f1"],
            test_macro_f1_std=m.get("macro_f1_std") if several else None, test_n=int(m.get("n", 0)),
            seeds=len(r.get("seeds") or []) or 1, hparams=dict(r.get("hparams") or {}), best=row["best"],
            p_value=row["p_value"], test_name=row["test"]))
    return out


def check_table_format(fmt: str) -> str:
    """``fmt`` if it is one of :data:`TABLE_FORMATS`, else :class:`ModelError` naming ``--format``."""
    if fmt not in TABLE_FORMATS:
        raise ModelError(not_one_of("--format", fmt, TABLE_FORMATS, "table format"))
    return fmt


def format_table(records: Sequence[Any], fmt: str = "text") -> str:
    """The comparison table of ``records`` as ``fmt`` (one of :data:`TABLE_FORMATS`).

    Raises:
        ModelError: an unknown ``fmt`` (the message names ``--format``).
    """
    renderers: dict[str, Callable[[Sequence[Any]], str]] = {
        "text": format_comparison, "markdown": lambda recs: to_markdown(table_rows(recs)),
        "latex": lambda recs: to_latex(table_rows(recs)), "csv": lambda recs: to_csv(table_rows(recs)),
        "json": lambda recs: json.dumps([asdict(r) for r in table_rows(recs)], indent=1)}
    return renderers[check_table_format(fmt)](list(records))


# ---- cells shared by the Markdown and LaTeX tables ---------------------------------------------

_COLUMNS = ("model", "layer", "head", "valid acc %", "test acc % [95% CI]", "test macro-F1 %", "p vs best")


def column_names(rows: list[TableRow]) -> list[str]:
    """:data:`_COLUMNS`, the validation column named by the rows it comes from when all rows share them
    (``inner-CV accuracy on train %``)."""
    chosen = {r.selected_on for r in rows}
    valid = f"{SELECTED_ON.get(chosen.pop(), 'valid accuracy')} %" if len(chosen) == 1 else _COLUMNS[3]
    return [*_COLUMNS[:3], valid, *_COLUMNS[4:]]


def _pct(x: float | None, std: float | None = None) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.1f}" + ("" if std is None else f" ± {100 * std:.1f}")


def best_values(rows: list[TableRow]) -> dict[tuple[str, str], dict[str, float]]:
    """The highest valid acc, test acc and macro-F1 of each task/dataset (what ``best per column`` bolds)."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    for r in rows:
        top = out.setdefault((r.task, r.dataset), {})
        for name, value in (("valid", r.valid_acc), ("test", r.test_acc), ("f1", r.test_macro_f1)):
            if value is not None:
                top[name] = max(top.get(name, -math.inf), round(value, 3))
    return out


def row_cells(row: TableRow, top: dict[str, float]) -> list[tuple[str, bool]]:
    """The :data:`_COLUMNS` cells of ``row`` as ``(text, is the best value of its column in top)``."""
    lo, hi = row.test_acc_ci
    layer = str(row.layer) + (f" ({row.layer_name})" if row.layer_name not in (None, str(row.layer), "weighted") else "")
    head = row.head + ("" if row.preset == "default" else f"/{row.preset}")
    p = "best" if row.best else ("-" if row.p_value is None else f"{row.p_value:.3g}")

    def best(name: str, value: float | None) -> bool:
        return value is not None and round(value, 3) == top.get(name)

    return [(row.model, False), (layer, False), (head, False),
            (_pct(row.valid_acc), best("valid", row.valid_acc)),
            (f"{_pct(row.test_acc, row.test_acc_std)} [{100 * lo:.1f}, {100 * hi:.1f}]", best("test", row.test_acc)),
            (_pct(row.test_macro_f1, row.test_macro_f1_std), best("f1", row.test_macro_f1)), (p, False)]


def group_rows(rows: list[TableRow]) -> dict[tuple[str, str], list[TableRow]]:
    out: dict[tuple[str, str], list[TableRow]] = {}
    for r in rows:
        out.setdefault((r.task, r.dataset), []).append(r)
    return out


def table_legend(rows: list[TableRow]) -> str:
    chosen = sorted({r.selected_on for r in rows if r.best})
    how = " / ".join(SELECTED_ON.get(k, k) for k in chosen) or "no validation score (no best row)"
    tests = " / ".join(sorted({r.test_name for r in rows} - {""}))
    return (f"best row (marked †): the highest {how}; test accuracy never chooses. Bold: the best value of each "
            f"column. Test accuracy: mean{' ± std over seeds' if any(r.seeds > 1 for r in rows) else ''} with its "
            f"bootstrap 95% CI over test clips." + (f" p vs best: {tests} on the same test clips." if tests else ""))


def to_markdown(rows: list[TableRow]) -> str:
    """A GitHub-flavoured Markdown table per task/dataset (a heading line above each), legend below."""
    if not rows:
        return "no classification probe results"
    out = []
    for (task, dataset), grp in group_rows(rows).items():
        top = best_values(grp)[(task, dataset)]
        out += [f"**task {task}, dataset {dataset}** (test n = {grp[0].test_n})", "",
                "| " + " | ".join(column_names(grp)) + " |", "|" + "---|" * 3 + "---:|" * 4]
        for r in grp:
            cells = [f"**{text}**" if bold else text for text, bold in row_cells(r, top)]
            cells[0] += " †" if r.best else ""
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        out.append("")
    return "\n".join(out + [table_legend(rows)])


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (``_`` -> ``\\_``, ``%`` -> ``\\%``...)."""
    return "".join(_LATEX_SPECIAL.get(c, c) for c in str(text))


def _latex_cell(text: str, bold: bool) -> str:
    text = latex_escape(text).replace("±", r"$\pm$")
    return rf"\textbf{{{text}}}" if bold else text


def to_latex(rows: list[TableRow]) -> str:
    """A booktabs ``table`` (``\\toprule``/``\\midrule``/``\\bottomrule``; needs ``\\usepackage{booktabs}``),
    one block per task/dataset, mean ± std (over seeds) with the 95 % CI, the best of each column in
    bold, the row chosen on validation with ``$^\\dagger$``."""
    if not rows:
        return "% no classification probe results"
    cols = [latex_escape(c) for c in column_names(rows)]
    out = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{lllrrrr}", r"\toprule", " & ".join(cols) + r" \\"]
    groups = group_rows(rows)
    for (task, dataset), grp in groups.items():
        out.append(r"\midrule")
        if len(groups) > 1:
            out.append(rf"\multicolumn{{7}}{{l}}{{\emph{{{latex_escape(task)} / {latex_escape(dataset)}}}}} \\")
        top = best_values(grp)[(task, dataset)]
        for r in grp:
            cells = [_latex_cell(text, bold) for text, bold in row_cells(r, top)]
            cells[0] += r"$^\dagger$" if r.best else ""
            out.append(" & ".join(cells) + r" \\")
    caption = latex_escape(table_legend(rows)).replace("†", r"$^\dagger$").replace("±", r"$\pm$")
    out += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", r"\end{table}"]
    return "\n".join(out)


_CSV_FIELDS = ("task", "dataset", "model", "layer", "layer_name", "head", "preset", "valid_acc", "selected_on",
               "test_acc", "test_acc_ci_low", "test_acc_ci_high", "test_acc_std", "test_macro_f1",
               "test_macro_f1_std", "test_n", "seeds", "best", "p_value", "test_name", "hparams")


def to_csv(rows: list[TableRow]) -> str:
    """CSV with a header (:data:`_CSV_FIELDS`): fractions unrounded, empty cells for None, the
    hyper-parameters as ``name=value`` words."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        d = asdict(r)
        d["test_acc_ci_low"], d["test_acc_ci_high"] = d.pop("test_acc_ci")
        d["hparams"] = _fmt_hparams(d["hparams"])
        writer.writerow({k: "" if d[k] is None else d[k] for k in _CSV_FIELDS})
    return buf.getvalue()
