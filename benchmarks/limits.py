"""Physical limits of the machine a benchmark runs on, measured in the same run (not a test).

* :func:`memcpy_bandwidth`: bytes per second numpy copies between two preallocated arrays (the bound
  of any read that hands the caller ``n`` bytes from memory: ``n / bandwidth`` seconds);
* :func:`matmul_flops`: float32 FLOP/s of a large square matrix product (the bound of a FLOP-bound
  training: ``FLOPs / throughput`` seconds), through numpy's BLAS or torch.

Benchmarks print ``bound / measured`` as "% of limit": 100 % would be the hardware's limit.
"""

from __future__ import annotations

import time
from typing import Callable


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    """The shortest of ``repeats`` wall-clock timings of ``fn()``, in seconds (shared machines are
    noisy; the minimum is the least disturbed run)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def memcpy_bandwidth(nbytes: int = 256 << 20, repeats: int = 5) -> float:
    """Bytes per second of ``np.copyto`` from one ``nbytes`` array into another, both allocated and
    touched beforehand (best of ``repeats``)."""
    import numpy as np

    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.zeros_like(src)
    return nbytes / best_of(repeats, lambda: np.copyto(dst, src))


def matmul_flops(n: int = 2048, repeats: int = 5, library: str = "torch") -> float:
    """float32 FLOP/s (``2 n^3`` per product) of an ``n x n`` matrix product with ``library``'s
    default threads: ``"torch"`` (what the MLP head runs on) or ``"numpy"`` (the BLAS sklearn uses)."""
    if library == "torch":  # the package's own measurement (extract/feeding.py), on the CPU in float32
        import torch

        from embedstore.extract.feeding import matmul_flops_per_second

        return matmul_flops_per_second("cpu", torch.float32, n, repeats)
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    np.matmul(a, b, out=out)  # warm-up
    return 2 * n**3 / best_of(repeats, lambda: np.matmul(a, b, out=out))


def percent_of_limit(bound_s: float, measured_s: float) -> str:
    """``bound / measured`` as a percentage string (``"3.2 %"``, ``"0.041 %"``)."""
    if measured_s <= 0:
        return "-"
    percent = 100 * bound_s / measured_s
    return f"{percent:.1f} %" if percent >= 1 else f"{percent:.2g} %"
