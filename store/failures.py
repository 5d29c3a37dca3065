"""The failure list: every file that did not make it into a store, once, with its reason.

Two sources feed it: files skipped while scanning a dataset (kept in the dataset's ``skipped``
attribute, since they never get a row) and rows whose last extraction attempt failed (kept per model
entry, see :meth:`~embedstore.store.store.Store.failures`). :func:`failure_list` joins them, naming
each file once; :func:`group_reasons` and :func:`format_reason_groups` turn any ``(name, reason)``
list into the short report that ``extract``, ``datasets`` and ``info`` print: one line per kind of
reason with its count and a few examples, every file only with ``verbose``.

Reasons are grouped by their *kind*: the reason with numbers replaced by ``<n>``, quoted names by
``'<name>'`` and parenthesised details dropped, so ``truncated: header says 30.0 s, file holds 0.4 s``
and ``truncated: header says 29.9 s, file holds 3.1 s`` are one group.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["ReasonGroup", "failure_list", "format_reason_groups", "group_reasons", "merge_model_reasons", "reason_kind"]

_PARENS = re.compile(r"\s*\([^()]*\)")
_QUOTED = re.compile(r"'[^']*'")
_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:,\d{3})*(?:\.\d+)?(?!\w)")


def reason_kind(reason: str) -> str:
    """The group key of ``reason``: numbers -> ``<n>``, ``'quoted'`` -> ``'<name>'``, ``(details)`` dropped."""
    kind = reason
    while True:  # innermost parentheses first, so nested details go too
        stripped = _PARENS.sub("", kind)
        if stripped == kind:
            break
        kind = stripped
    kind = _NUMBER.sub("<n>", _QUOTED.sub("'<name>'", kind))
    return " ".join(kind.split()) or reason


@dataclass
class ReasonGroup:
    """Files sharing one kind of reason.

    Attributes:
        kind: :func:`reason_kind` of the members' reasons.
        items: ``(name, reason)`` of every member, in input order.
    """

    kind: str
    items: list[tuple[str, str]]

    @property
    def count(self) -> int:
        """Number of files in the group."""
        return len(self.items)

    @property
    def label(self) -> str:
        """The reason itself when every member has the same one, else the :attr:`kind`."""
        reasons = {reason for _, reason in self.items}
        return next(iter(reasons)) if len(reasons) == 1 else self.kind


def group_reasons(items: Iterable[tuple[str, str]]) -> list[ReasonGroup]:
    """``(name, reason)`` pairs grouped by :func:`reason_kind`, largest group first (ties: first seen)."""
    groups: dict[str, ReasonGroup] = {}
    for name, reason in items:
        kind = reason_kind(reason)
        groups.setdefault(kind, ReasonGroup(kind, [])).items.append((str(name), str(reason)))
    return sorted(groups.values(), key=lambda g: -g.count)  # sorted() is stable: ties keep first-seen order


def format_reason_groups(items: Sequence[tuple[str, str]], *, indent: str = "  ", examples: int = 3,
                         verbose: bool = False) -> list[str]:
    """Report lines for ``(name, reason)`` pairs: one line per group, every file only with ``verbose``.

    A group of one file is the line ``name: reason``. A larger group is ``<count> x <label>`` followed
    by ``e.g. a, b, c and N more`` when its members share one reason, or by ``name: reason`` lines
    (``examples`` of them) when they differ; with ``verbose`` every member gets a line of its own
    (``name`` under a shared reason). Returns ``[]`` for no items.
    """
    lines: list[str] = []
    deeper = indent + "    "
    for group in group_reasons(items):
        if group.count == 1:
            name, reason = group.items[0]
            lines.append(f"{indent}{name}: {reason}")
            continue
        shown = group.items if verbose else group.items[:examples]
        more = group.count - len(shown)
        head = f"{indent}{group.count:,} x {group.label}"
        uniform = len({reason for _, reason in group.items}) == 1
        if uniform and not verbose:
            names = ", ".join(name for name, _ in shown)
            lines.append(f"{head}, e.g. {names} and {more:,} more" if more else f"{head}: {names}")
            continue
        lines.append(f"{head}:")
        lines.extend(f"{deeper}{name}" if uniform else f"{deeper}{name}: {reason}" for name, reason in shown)
        if more:
            lines.append(f"{deeper}... and {more:,} more")
    return lines


def merge_model_reasons(reasons: Mapping[str, str]) -> str:
    """One reason for a file that failed in several model entries (``{model: reason}``): the shared
    reason, or the distinct ones joined by ``"; "`` in first-seen order."""
    return "; ".join(dict.fromkeys(reasons.values()))


def failure_list(skipped: Iterable[Sequence[str]], failures: Mapping[str, Sequence[tuple[str, str]]]) -> list[dict]:
    """Every file that is not in a store's model entries, each named once.

    Args:
        skipped: ``(path, reason)`` of the files skipped while scanning the dataset.
        failures: ``{model: [(path, reason), ...]}`` of the rows whose last attempt failed.

    Returns:
        ``[{"path", "stage", "reason", "models"}]``: ``stage`` is ``"scan"`` (``models`` is ``[]``:
        the file never got a row) or ``"extract"`` (``models``: the entries it failed in; their
        reasons merged by :func:`merge_model_reasons`). Scan entries come first, in scan order.
    """
    out: dict[str, dict] = {}
    for path, reason in skipped:
        out.setdefault(str(path), {"path": str(path), "stage": "scan", "reason": str(reason), "models": []})
    per_file: dict[str, dict[str, str]] = {}
    for model, items in failures.items():
        for path, reason in items:
            per_file.setdefault(str(path), {})[model] = str(reason)
    for path, reasons in per_file.items():
        if path not in out:
            out[path] = {"path": path, "stage": "extract", "reason": merge_model_reasons(reasons),
                         "models": list(reasons)}
    return list(out.values())
