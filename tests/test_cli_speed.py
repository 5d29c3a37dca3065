"""The command line answers `--help`, bad options and unknown names before torch loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from embedstore.extract.synthetic import make_gtzan_like


def _seconds(*args: str) -> float:
    """Wall time of ``python ARGS`` (the fastest of two runs: the machine may be busy)."""
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], capture_output=True, check=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
        best = min(best, time.perf_counter() - start)
    return best


def test_help_takes_a_fraction_of_importing_torch():
    """`embedstore --help` against `import torch` in the same interpreter on the same machine: a ratio,
    not an absolute time (before lazy imports, --help took several times as long as torch)."""
    torch_import = _seconds("-c", "import torch")
    help_ = _seconds("-m", "embedstore.cli", "--help")
    assert help_ < 0.5 * torch_import, f"--help {help_:.2f} s vs import torch {torch_import:.2f} s"


def test_parsing_errors_and_unknown_names_leave_torch_unloaded(tmp_path: Path):
    """In one interpreter: --help of every command, usage errors and unknown encoder / task / dataset
    names are all answered, each with its exit status, and torch is still not imported."""
    from embedstore.store import TrackTable, open_store

    root = make_gtzan_like(tmp_path / "ds", n_per_class=2, seconds=0.3, broken=False)
    store = tmp_path / "s.zarr"
    with open_store(store, "a") as st:
        st.write_tracks("gtzan", TrackTable(ids=["t0", "t1"], paths=["0.wav", "1.wav"], labels=["x", "y"],
                                           splits=["train", "test"]), {"tasks": {"genre": "label"}})
    calls = [
        (["--help"], 0), (["extract", "--help"], 0), (["probe", "--help"], 0), (["finetune", "--help"], 0),
        (["analyze", "cka", "--help"], 0), (["models"], 0),
        (["extract", str(root), "-m", "merrt"], 2), (["finetune", str(root), "-m", "wav2vec"], 2),
        (["extract", str(root), "-m", "mfcc", "--batch-size", "0"], 2),
        (["extract", str(root), "-m", "mfcc", "--split-scheme", "rndom"], 2),
        (["extract", str(tmp_path / "missing"), "-m", "mfcc"], 2),
        (["probe", "--store", str(store), "--task", "genr"], 1),
        (["probe", "--store", str(store), "--dataset", "gtza", "--head", "logreg"], 1),
    ]
    code = (
        "import contextlib, io, json, sys\n"
        "from embedstore.cli import run\n"
        "out = []\n"
        "for args in json.loads(sys.argv[1]):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        "        out.append(run(args))\n"
        "print(json.dumps({'statuses': out, 'torch': 'torch' in sys.modules}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, json.dumps([args for args, _ in calls])],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["statuses"] == [status for _, status in calls]
    assert answer["torch"] is False
