"""The import contract of docs/architecture.md, checked on the source (no imports run).

store/ imports no other embedstore folder; extract/, heads/ and analysis/ import only store/ and
themselves; finetune/ may import extract/, heads/ and store/; nothing imports cli. The top-level
modules ``errors``, ``devices`` and ``figures`` (and the package's ``__init__``) sit below every
folder, except that store/ stays free of torch and so of ``devices``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("store", "extract", "heads", "analysis", "finetune")
MAY_IMPORT = {
    "store": set(),
    "extract": {"store"},
    "heads": {"store"},
    "analysis": {"store"},
    "finetune": {"extract", "heads", "store"},
}
SHARED = {"errors", "devices", "figures"}


def embedstore_imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """``(line, module)`` of every ``embedstore.*`` import in ``path`` (lazy ones included; relative ones
    resolved against the file's package, ``root`` being the package ``embedstore``)."""
    package = ["embedstore", *path.resolve().relative_to(root.resolve()).parent.parts]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, node.module)]
        elif isinstance(node, ast.ImportFrom):  # relative: resolved against the file's package
            base = package[: len(package) - node.level + 1]
            found += [(node.lineno, ".".join([*base, *([node.module] if node.module else [])]))]
    return sorted((line, name) for line, name in found if name == "embedstore" or name.startswith("embedstore."))


def violations(folder: str, root: Path = ROOT) -> list[str]:
    out = []
    for path in sorted((root / folder).rglob("*.py")):
        for line, name in embedstore_imports(path, root):
            target = name.split(".")[1] if "." in name else ""
            if target == "cli":
                out.append(f"{path.relative_to(root)}:{line} imports cli")
            elif target in FOLDERS and target != folder and target not in MAY_IMPORT[folder]:
                out.append(f"{path.relative_to(root)}:{line} {folder}/ imports {name}")
            elif folder == "store" and target in SHARED - {"errors"}:
                out.append(f"{path.relative_to(root)}:{line} store/ imports {name}")
    return out


@pytest.mark.parametrize("folder", FOLDERS)
def test_folder_imports_follow_the_contract(folder):
    assert violations(folder) == []


def test_the_checker_sees_lazy_and_relative_imports_and_flags_them(tmp_path):
    (tmp_path / "heads").mkdir()
    (tmp_path / "heads" / "m.py").write_text(
        "def f():\n    from embedstore.cli import app\n    import embedstore.analysis.data\n"
        "from ..extract import audio\nfrom . import probe\nfrom .mlp import MLP\n")
    assert embedstore_imports(tmp_path / "heads" / "m.py", tmp_path) == [
        (2, "embedstore.cli"), (3, "embedstore.analysis.data"), (4, "embedstore.extract"),
        (5, "embedstore.heads"), (6, "embedstore.heads.mlp")]
    assert violations("heads", tmp_path) == [
        "heads/m.py:2 imports cli", "heads/m.py:3 heads/ imports embedstore.analysis.data",
        "heads/m.py:4 heads/ imports embedstore.extract"]


def test_nothing_imports_cli_and_shared_modules_import_no_folder():
    for name in ("errors.py", "devices.py", "figures.py", "__init__.py"):
        for line, module in embedstore_imports(ROOT / name):
            assert module.split(".")[1] not in FOLDERS + ("cli",), f"{name}:{line} imports {module}"
    for path in ROOT.rglob("*.py"):
        if "tests" in path.relative_to(ROOT).parts or path.name == "cli.py" or "build" in path.parts:
            continue
        assert all(not m.startswith("embedstore.cli") for _, m in embedstore_imports(path)), path
