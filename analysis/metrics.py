"""The numeric core of the analyses: plain numpy/sklearn functions on embedding matrices.

Nothing here knows about stores or figures, so every number can be checked against an independent
computation. Shapes: ``X`` is ``[n, dim]`` (one row per track), ``labels`` is ``[n]`` of ``str``
where the empty string means "no label".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SEPARABILITY_METHODS = ("silhouette", "fisher")
SILHOUETTE_METRICS = ("cosine", "euclidean")


def subsample_indices(n: int, max_points: int | None, seed: int = 0) -> np.ndarray:
    """Sorted row indices ``[min(n, max_points)]``: all rows, or a seeded uniform draw without replacement."""
    if max_points is None or max_points <= 0 or n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=max_points, replace=False))


# ---- PCA -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PCAProjection:
    """A 2-D (or k-D) principal-component projection.

    Attributes:
        coords: ``[n, k]`` scores of the centred data on the first k components.
        components: ``[k, dim]`` unit principal axes (sign fixed: largest-|loading| entry positive).
        explained_variance_ratio: ``[k]`` fraction of the total variance on each component.
    """

    coords: np.ndarray
    components: np.ndarray
    explained_variance_ratio: np.ndarray


def pca_project(X: np.ndarray, n_components: int = 2) -> PCAProjection:
    """Project ``X [n, dim]`` on its first ``n_components`` principal axes (exact SVD, float64)."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 2:
        raise ValueError(f"PCA needs a [n>=2, dim] matrix, got shape {X.shape}")
    k = min(n_components, *X.shape)
    Xc = X - X.mean(axis=0)
    _, s, vt = np.linalg.svd(Xc, full_matrices=False)
    comps = vt[:k]
    # deterministic sign: the entry of largest magnitude of each axis is positive
    signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
    signs[signs == 0] = 1.0
    comps = comps * signs[:, None]
    var = s**2
    total = var.sum()
    ratio = var[:k] / total if total > 0 else np.zeros(k)
    return PCAProjection(coords=Xc @ comps.T, components=comps, explained_variance_ratio=ratio)


# ---- cosine similarity ---------------------------------------------------------------------------


def unit_rows(X: np.ndarray) -> np.ndarray:
    """``X [n, dim]`` with every row scaled to unit L2 norm (all-zero rows stay zero), float64."""
    X = np.asarray(X, dtype=np.float64)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return np.divide(X, norms, out=np.zeros_like(X), where=norms > 0)


def _pair_sum(U: np.ndarray) -> tuple[float, float]:
    """Sum of ``u_i . u_j`` over ordered pairs ``i != j`` of the rows of ``U``, and the pair count."""
    n = U.shape[0]
    s = U.sum(axis=0)
    return float(s @ s - np.einsum("ij,ij->", U, U)), float(n * (n - 1))


def mean_pairwise_cosine(X: np.ndarray) -> float:
    """Mean cosine similarity over all pairs ``i != j`` of rows of ``X [n, dim]`` (O(n dim), exact).

    Uses ``sum_{i!=j} u_i.u_j = |sum_i u_i|^2 - sum_i |u_i|^2`` on the unit rows ``u``. NaN for n < 2.
    """
    total, count = _pair_sum(unit_rows(X))
    return total / count if count > 0 else float("nan")


def class_cosines(X: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Mean cosine over within-class pairs and over between-class pairs (``i != j``), pooled over pairs.

    Rows whose label is ``""`` are ignored. Returns ``(within, between)``; NaN where no such pair exists.
    """
    labels = np.asarray(labels).astype(str)
    keep = labels != ""
    U, lab = unit_rows(X)[keep], labels[keep]
    all_sum, all_count = _pair_sum(U)
    w_sum = w_count = 0.0
    for c in np.unique(lab):
        s, k = _pair_sum(U[lab == c])
        w_sum += s
        w_count += k
    b_sum, b_count = all_sum - w_sum, all_count - w_count
    within = w_sum / w_count if w_count > 0 else float("nan")
    between = b_sum / b_count if b_count > 0 else float("nan")
    return within, between


def pairwise_cosine_values(X: np.ndarray) -> np.ndarray:
    """All cosine similarities ``[n (n - 1) / 2]`` of distinct row pairs of ``X [n, dim]`` (upper triangle)."""
    U = unit_rows(X)
    iu = np.triu_indices(U.shape[0], k=1)
    return (U @ U.T)[iu]


@dataclass(frozen=True)
class CosineStats:
    """Cosine-similarity summary of one embedding matrix, raw and after mean-centring.

    ``mean`` is over all distinct pairs; ``within``/``between`` over same-/different-label pairs.
    """

    n: int
    mean: float
    within: float
    between: float
    mean_centered: float
    within_centered: float
    between_centered: float


def cosine_stats(X: np.ndarray, labels: np.ndarray | None = None) -> CosineStats:
    """:class:`CosineStats` of ``X [n, dim]``; centring subtracts the mean row of ``X`` itself."""
    X = np.asarray(X, dtype=np.float64)
    Xc = X - X.mean(axis=0)
    if labels is None:
        labels = np.full(X.shape[0], "", dtype=object)
    w, b = class_cosines(X, labels)
    wc, bc = class_cosines(Xc, labels)
    return CosineStats(
        n=int(X.shape[0]),
        mean=mean_pairwise_cosine(X),
        within=w,
        between=b,
        mean_centered=mean_pairwise_cosine(Xc),
        within_centered=wc,
        between_centered=bc,
    )


# ---- linear CKA ----------------------------------------------------------------------------------


def _centered_gram(X: np.ndarray) -> np.ndarray:
    """``Xc Xc^T [n, n]`` of the column-centred ``X [n, dim]`` (float64)."""
    Xc = np.asarray(X, dtype=np.float64)
    Xc = Xc - Xc.mean(axis=0)
    return Xc @ Xc.T


def linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019) of ``X [n, d1]`` and ``Y [n, d2]`` with rows paired.

    ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` on column-centred matrices, computed in
    feature space or through the ``[n, n]`` Gram matrices, whichever is cheaper. In [0, 1]; NaN if
    either matrix is constant.
    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"CKA needs paired rows, got {X.shape[0]} and {Y.shape[0]}")
    n = X.shape[0]
    if n * n < X.shape[1] * Y.shape[1]:
        K, L = _centered_gram(X), _centered_gram(Y)
        hsic, nx, ny = np.vdot(K, L), np.linalg.norm(K), np.linalg.norm(L)
    else:
        Xc, Yc = X - X.mean(axis=0), Y - Y.mean(axis=0)
        hsic = np.linalg.norm(Yc.T @ Xc) ** 2
        nx, ny = np.linalg.norm(Xc.T @ Xc), np.linalg.norm(Yc.T @ Yc)
    denom = nx * ny
    return float(hsic / denom) if denom > 0 else float("nan")


def cka_matrix(layers_a: Sequence[np.ndarray], layers_b: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """Linear CKA between every pair of layers: ``[len(layers_a), len(layers_b)]``.

    Each layer is ``[n, d_l]`` with the same n rows (tracks) in the same order everywhere. With
    ``layers_b=None`` the matrix is of ``layers_a`` against itself (symmetric, unit diagonal). Each
    layer's centred Gram matrix is normalised once, so a pair costs one ``n^2`` dot product; memory is
    ``8 n^2`` bytes per layer, so keep n to a few thousand (subsample).
    """

    def normed(layers: Sequence[np.ndarray]) -> list[np.ndarray | None]:
        out: list[np.ndarray | None] = []
        for X in layers:
            K = _centered_gram(X)
            norm = np.linalg.norm(K)
            out.append(K / norm if norm > 0 else None)
        return out

    rows = {np.shape(X)[0] for X in [*layers_a, *(layers_b or [])]}
    if len(rows) > 1:
        raise ValueError(f"CKA needs the same rows in every layer, got row counts {sorted(rows)}")
    ga = normed(layers_a)
    gb = ga if layers_b is None else normed(layers_b)
    M = np.full((len(ga), len(gb)), np.nan)
    for i, K in enumerate(ga):
        for j, L in enumerate(gb):
            if layers_b is None and j < i:
                M[i, j] = M[j, i]
            elif K is not None and L is not None:
                M[i, j] = float(np.vdot(K, L))
    return M


# ---- label separability --------------------------------------------------------------------------


def standardize(X: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """``X [n, dim]`` minus the column means, over the column standard deviations (ddof 0), of
    ``reference [m, dim]`` (default: ``X`` itself), float64. Columns constant in ``reference`` (up
    to rounding) are only centred (divided by 1), as sklearn's ``StandardScaler`` does."""
    X = np.asarray(X, dtype=np.float64)
    R = X if reference is None else np.asarray(reference, dtype=np.float64)
    if R.ndim != 2 or R.shape[1] != X.shape[1] or R.shape[0] == 0:
        raise ValueError(f"standardisation rows of shape {R.shape} do not fit data of shape {X.shape}")
    mu, sd = R.mean(axis=0), R.std(axis=0)
    return (X - mu) / np.where(sd > 1e-12 * np.maximum(np.abs(mu), 1.0), sd, 1.0)


def fisher_ratio(X: np.ndarray, labels: np.ndarray) -> float:
    """Between- over within-class scatter, ``tr(S_B) / tr(S_W)``, of ``X [n, dim]`` (higher = more separable)."""
    X = np.asarray(X, dtype=np.float64)
    labels = np.asarray(labels).astype(str)
    mu = X.mean(axis=0)
    sb = sw = 0.0
    for c in np.unique(labels):
        Xi = X[labels == c]
        mc = Xi.mean(axis=0)
        sb += Xi.shape[0] * float(np.sum((mc - mu) ** 2))
        sw += float(np.sum((Xi - mc) ** 2))
    return sb / sw if sw > 0 else float("nan")


def separability(
    X: np.ndarray,
    labels: np.ndarray,
    method: str = "silhouette",
    metric: str = "cosine",
    max_points: int | None = 2000,
    seed: int = 0,
) -> float:
    """Training-free label separability of ``X [n, dim]`` after per-feature standardisation.

    ``method="silhouette"``: mean silhouette (in [-1, 1]) with ``metric`` "cosine" or "euclidean";
    ``method="fisher"``: :func:`fisher_ratio`. Unlabelled rows (``""``) are dropped and a seeded
    subsample of ``max_points`` rows is used. NaN when fewer than two classes (or one row per class).
    """
    if method not in SEPARABILITY_METHODS:
        raise ValueError(f"unknown separability method {method!r}; choose from {SEPARABILITY_METHODS}")
    if metric not in SILHOUETTE_METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {SILHOUETTE_METRICS}")
    labels = np.asarray(labels).astype(str)
    keep = np.flatnonzero(labels != "")
    keep = keep[subsample_indices(keep.size, max_points, seed)]
    lab = labels[keep]
    n_classes = np.unique(lab).size
    if n_classes < 2 or n_classes >= lab.size:
        return float("nan")
    Xs = standardize(np.asarray(X)[keep])
    if method == "fisher":
        return fisher_ratio(Xs, lab)
    from sklearn.metrics import silhouette_score

    return float(silhouette_score(Xs, lab, metric=metric))
