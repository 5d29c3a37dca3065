"""The repository root is the ``embedstore`` package: the wheel holds it, its sub-packages, no tests."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("extract", "extract/datasets", "extract/encoders", "store", "heads", "analysis", "finetune")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # no build isolation: the build backend (setuptools) is already installed, and no network is needed
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (path,) = out.glob("embedstore-*.whl")
    return path


def test_wheel_holds_the_package_and_no_tests(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for sub in ("", *SUBPACKAGES):
        init = f"embedstore/{sub}/__init__.py" if sub else "embedstore/__init__.py"
        assert init in names, init
    assert "embedstore/cli.py" in names and "embedstore/store/writer.py" in names
    top_level = {name.split("/")[0] for name in names}
    # generic names must not be installed as top-level modules
    assert not top_level & {"store", "analysis", "heads", "extract", "tests", "cli.py", "finetune", "benchmarks"}
    assert not any(name.startswith("embedstore/tests/") or "/tests/" in name for name in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "embedstore = embedstore.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_import_and_console_script():
    import embedstore
    import embedstore.store
    from embedstore.extract import datasets  # noqa: F401

    assert Path(embedstore.__file__).resolve().parent == ROOT
    assert callable(embedstore.load_embeddings)
    result = subprocess.run([sys.executable, "-m", "embedstore.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and embedstore.__version__ in result.stdout
