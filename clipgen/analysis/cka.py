"""Centered kernel alignment (CKA) between domains, layer by layer (Fig. 6a).

For every layer and every unordered pair of domains, each domain is represented by its **class-mean activation
matrix** (one row per class, the mean over that domain's images of the class; float64), restricted to the classes
present in *both* domains of the pair and to a class subset (``all``, ``id`` = not held out, ``ood`` = held out).
The two matrices are compared with CKA::

    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) * HSIC(L, L))

with a linear (``K = X Xᵀ``) or RBF kernel (``K_ij = exp(-|x_i - x_j|² / (2σ²))``, σ² = the median of the non-zero
squared pairwise distances of that matrix, separately for X and Y; for an even count the lower of the two middle
values, as ``torch.median`` in the published script, or their mean with ``rbf_median="mean"``), and either the
unbiased HSIC estimator of Song et al. (2012) (the paper's choice, the default) or the biased one
``tr(KHLH) / (n-1)²``.

The sweep is organised so that nothing is computed twice: class means once per (layer, domain); a Gram matrix, its
centred/zero-diagonal form and its self-HSIC once per (layer, domain, class set, kernel, estimator); then, for all
pairs sharing a class set, every cross term ``tr(K̃L̃)`` comes out of a single matrix product of the flattened Gram
matrices. Fewer than :data:`MIN_CLASSES` classes (the unbiased estimator divides by ``n(n-3)``) or a degenerate
(constant) representation is an error, never a NaN in the output.

The published script takes the class list of *every* pair from a leaked loop variable (always painting's classes):
clipgen uses the classes present in both domains of each pair (see docs/analysis-cka-embeddings.md).

This module holds the kernels, estimators and class subsets and the command's configuration; the sweep and
``clipgen cka``'s run are in :mod:`clipgen.analysis.cka_sweep`, the figures in :mod:`clipgen.analysis.cka_figures`,
and a direct transcription of the formulas (for tests and benchmarks) in :mod:`clipgen.analysis.cka_reference`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from clipgen.analysis.selection import (  # noqa: F401 - re-exported: part of this module's store API
    class_name_map,
    domain_name_to_id,
    present_labels,
    resolve_domains,
    resolve_held_out,
    resolve_layers,
    store_domain_names,
)
from clipgen.domainnet import DEFAULT_HIGHLIGHT, SUBSETS
from clipgen.errors import ClipgenError, ConfigFieldError

KERNELS: tuple[str, ...] = ("linear", "rbf")
ESTIMATORS: tuple[str, ...] = ("unbiased", "biased")
#: How σ² of the RBF kernel takes the median of an even number of distances: ``lower`` = the lower of the two middle
#: values (``torch.median``, the published script's), ``mean`` = their mean (``np.median``).
RBF_MEDIANS: tuple[str, ...] = ("lower", "mean")
#: The unbiased HSIC estimator needs n > 3 (it divides by n(n-3)); clipgen requires at least 4 classes for both.
MIN_CLASSES = 4
RESULT_FIELDS: tuple[str, ...] = ("layer", "domain_a", "domain_b", "subset", "kernel", "estimator", "n_classes", "cka")
FORMAT = "clipgen-cka"
FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------------------------
# Kernels and estimators on plain arrays
# ---------------------------------------------------------------------------------------------------------------

def linear_gram(x: np.ndarray) -> np.ndarray:
    """``X Xᵀ`` in float64."""
    x = np.asarray(x, dtype=np.float64)
    return x @ x.T


def squared_distances(gram: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between the rows behind a linear Gram matrix (zero diagonal, no negatives).

    Entries below the rounding noise of the Gram formula (``1e-12 * (|x_i|² + |x_j|²)``) are set to exactly 0, so
    identical rows count as zero distance, as they would with an explicit difference.
    """
    g = np.asarray(gram, dtype=np.float64)
    sq = np.diag(g)
    d = sq[:, None] + sq[None, :] - 2.0 * g
    d[d <= 1e-12 * (sq[:, None] + sq[None, :])] = 0.0
    np.fill_diagonal(d, 0.0)
    return d


@lru_cache(maxsize=16)
def _upper(n: int) -> np.ndarray:
    """Flat indices of the strict upper triangle of an n x n matrix."""
    i, j = np.triu_indices(n, k=1)
    return i * n + j


def check_rbf_median(median: str) -> None:
    if median not in RBF_MEDIANS:
        raise ConfigFieldError("rbf_median", f"unknown median {median!r} (choose from {', '.join(RBF_MEDIANS)})")


def rbf_sigma2(sq_dists: np.ndarray, median: str = "lower") -> float:
    """σ² for the RBF kernel: the median of the non-zero squared pairwise distances (each pair counted once).

    For an even number m of distances, ``median="lower"`` takes the lower of the two middle values (the
    (m/2)-th smallest), as ``torch.median`` does in the published script, and ``"mean"`` takes the mean of the two
    middle values (``np.median``). The published script takes ``torch.median`` over the non-zero entries of the
    full symmetric matrix, i.e. every pair twice and without the zero diagonal; the lower median of that doubled
    list is the lower median of the pairs counted once, which is what is computed here.
    """
    check_rbf_median(median)
    d = np.asarray(sq_dists, dtype=np.float64)
    v = d.ravel()[_upper(d.shape[0])]
    v = v[v > 0]
    if v.size == 0:
        raise ClipgenError("RBF kernel undefined: all rows (class means) are identical")
    if median == "mean":
        return float(np.median(v))
    return float(np.partition(v, (v.size - 1) // 2)[(v.size - 1) // 2])


def rbf_gram_from_distances(sq_dists: np.ndarray, sigma2: float | None = None, median: str = "lower") -> np.ndarray:
    """``exp(-D / (2σ²))`` with σ² from :func:`rbf_sigma2` (with ``median``) unless given."""
    if sigma2 is None:
        sigma2 = rbf_sigma2(sq_dists, median)
    k = np.multiply(sq_dists, -0.5 / sigma2, dtype=np.float64)
    return np.exp(k, out=k)


def rbf_gram(x: np.ndarray, sigma2: float | None = None, median: str = "lower") -> np.ndarray:
    """RBF Gram matrix of the rows of ``x`` (σ² = median non-zero squared distance unless given)."""
    return rbf_gram_from_distances(squared_distances(linear_gram(x)), sigma2, median)


def gram(x: np.ndarray, kernel: str = "linear", rbf_median: str = "lower") -> np.ndarray:
    """The Gram matrix of the rows of ``x`` for ``kernel`` (``linear`` or ``rbf``)."""
    if kernel == "linear":
        return linear_gram(x)
    if kernel == "rbf":
        return rbf_gram(x, median=rbf_median)
    raise ConfigFieldError("kernels", f"unknown kernel {kernel!r} (choose from {', '.join(KERNELS)})")


def check_estimator(estimator: str) -> None:
    if estimator not in ESTIMATORS:
        raise ConfigFieldError("estimators", f"unknown estimator {estimator!r} (choose from {', '.join(ESTIMATORS)})")


@dataclass
class GramTerms:
    """A symmetric Gram matrix K and the sums both HSIC estimators are built from.

    ``diag`` = diag(K), ``rows`` = K1, ``total`` = 1ᵀK1; ``rows_t``/``total_t`` are the same for K̃ (K with a zeroed
    diagonal); ``self_trace`` = tr(KK) = sum(K∘K). With these, for two Gram matrices K, L of size n:

    * biased:   tr(KHLH) = tr(KL) - (2/n)·(K1)ᵀ(L1) + (1ᵀK1)(1ᵀL1)/n², HSIC₀ = tr(KHLH) / (n-1)²;
    * unbiased: tr(K̃L̃) = tr(KL) - diag(K)ᵀdiag(L), and HSIC₁ = [tr(K̃L̃) + (1ᵀK̃1)(1ᵀL̃1)/((n-1)(n-2))
      - (2/(n-2))·(K̃1)ᵀ(L̃1)] / (n(n-3)),

    so the only O(n²) work per pair is one dot product ``tr(KL)``, shared by both estimators.
    """

    mat: np.ndarray
    diag: np.ndarray
    rows: np.ndarray
    total: float
    rows_t: np.ndarray
    total_t: float
    self_trace: float

    @property
    def n(self) -> int:
        return self.mat.shape[0]


def _frobenius(a: np.ndarray, b: np.ndarray) -> float:
    """``sum(A * B)`` (= tr(AB) for symmetric matrices) without a BLAS level-1 call.

    ``np.vdot`` on an n x n matrix is a threaded BLAS ``ddot``; on a loaded machine OpenBLAS threads that spin for
    a core make each such call up to 200x slower (measured: 8 ms instead of 0.04 ms for n = 345 with 2 threads).
    """
    return float(np.einsum("ij,ij->", a, b))


def gram_terms(k: np.ndarray) -> GramTerms:
    """The :class:`GramTerms` of a square Gram matrix (at least :data:`MIN_CLASSES` rows, else an error)."""
    k = np.asarray(k, dtype=np.float64)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"a Gram matrix must be square, got shape {k.shape}")
    n = k.shape[0]
    if n < MIN_CLASSES:
        raise ClipgenError(f"CKA needs at least {MIN_CLASSES} rows (classes), got {n} "
                           f"(the unbiased estimator divides by n(n-3))")
    diag = np.diagonal(k).copy()
    rows = k.sum(axis=1)
    total = float(rows.sum())
    rows_t = rows - diag
    return GramTerms(k, diag, rows, total, rows_t, total - float(diag.sum()), _frobenius(k, k))


def hsic_terms(a: GramTerms, b: GramTerms, estimator: str = "unbiased", trace: float | None = None) -> float:
    """HSIC of two Gram matrices from their terms; ``trace`` = tr(KL) when already known."""
    check_estimator(estimator)
    n = a.n
    if b.n != n:
        raise ValueError(f"Gram matrices differ in size: {a.n} and {b.n}")
    if trace is None:
        trace = _frobenius(a.mat, b.mat)  # both symmetric: tr(KL) = sum(K * L)
    if estimator == "biased":
        return (trace - 2.0 / n * float(a.rows @ b.rows) + a.total * b.total / n**2) / (n - 1) ** 2
    return (trace - float(a.diag @ b.diag) + a.total_t * b.total_t / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * float(a.rows_t @ b.rows_t)) / (n * (n - 3))


def hsic(k: np.ndarray, l: np.ndarray, estimator: str = "unbiased") -> float:  # noqa: E741 - the paper's notation
    return hsic_terms(gram_terms(k), gram_terms(l), estimator)


def hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """The unbiased HSIC estimator of Song et al. (2012) on two n x n Gram matrices (n >= 4)."""
    return hsic(k, l, "unbiased")


def hsic_biased(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """The biased HSIC estimator ``tr(K H L H) / (n-1)²`` with ``H = I - 11ᵀ/n``."""
    return hsic(k, l, "biased")


#: A self-HSIC at or below this fraction of ``mean(K∘K)`` is rounding noise: the representation is degenerate.
DEGENERATE_RTOL = 1e-10


def _cka_value(cross: float, self_a: float, self_b: float, what: str, floor_a: float = 0.0,
               floor_b: float = 0.0) -> float:
    if not (np.isfinite(self_a) and np.isfinite(self_b) and np.isfinite(cross)) or self_a <= floor_a \
            or self_b <= floor_b:
        raise ClipgenError(f"CKA undefined for {what}: a representation is constant or degenerate (self-HSIC "
                           f"{self_a:.3g}, {self_b:.3g}); check the stored activations")
    return float(cross / np.sqrt(self_a * self_b))


def cka_from_terms(a: GramTerms, b: GramTerms, estimator: str = "unbiased", what: str = "these matrices",
                   trace: float | None = None) -> float:
    """CKA from Gram terms. A self-HSIC that is not clearly positive (at most :data:`DEGENERATE_RTOL` times
    ``mean(K∘K)``, e.g. a constant representation, or the unbiased estimator on class means that are all equal
    but one, where it is 0 up to rounding) is an error, never a NaN or a ratio of rounding noise."""
    return _cka_value(hsic_terms(a, b, estimator, trace), hsic_terms(a, a, estimator, a.self_trace),
                      hsic_terms(b, b, estimator, b.self_trace), what,
                      DEGENERATE_RTOL * a.self_trace / a.n ** 2, DEGENERATE_RTOL * b.self_trace / b.n ** 2)


def cka_from_grams(k: np.ndarray, l: np.ndarray, estimator: str = "unbiased") -> float:  # noqa: E741
    """CKA of two Gram matrices of the same n x n size."""
    return cka_from_terms(gram_terms(k), gram_terms(l), estimator)


def cka(x: np.ndarray, y: np.ndarray, kernel: str = "linear", estimator: str = "unbiased",
        rbf_median: str = "lower") -> float:
    """CKA between two representations of the same n items (rows); the widths may differ.

    The columns are centred first (both kernels and both estimators are invariant to a translation; it avoids
    cancellation when the activations sit far from the origin).
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs two 2-D arrays with the same number of rows, got {x.shape} and {y.shape}")
    x, y = x - x.mean(axis=0), y - y.mean(axis=0)
    return cka_from_grams(gram(x, kernel, rbf_median), gram(y, kernel, rbf_median), estimator)


def linear_cka_features(x: np.ndarray, y: np.ndarray) -> float:
    """Biased linear CKA in feature space: ``|Ycᵀ Xc|²_F / (|Xcᵀ Xc|_F |Ycᵀ Yc|_F)`` (columns centred).

    Equal to ``cka(x, y, "linear", "biased")``; cheaper when the widths are smaller than the number of rows.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    cross = np.linalg.norm(y.T @ x) ** 2
    return _cka_value(cross, np.linalg.norm(x.T @ x) ** 2, np.linalg.norm(y.T @ y) ** 2, "these features")


# ---------------------------------------------------------------------------------------------------------------
# Class subsets
# ---------------------------------------------------------------------------------------------------------------

def subset_classes(present: Iterable[int], subset: str, held_out: Iterable[int]) -> np.ndarray:
    """The labels of ``present`` that belong to ``subset`` (``all``, ``id`` = not held out, ``ood`` = held out)."""
    present = np.unique(np.asarray(list(present), dtype=np.int64))
    held = np.asarray(sorted(set(int(h) for h in held_out)), dtype=np.int64)
    if subset == "all":
        return present
    if subset == "id":
        return present[~np.isin(present, held)]
    if subset == "ood":
        return present[np.isin(present, held)]
    raise ConfigFieldError("subsets", f"unknown class subset {subset!r} (choose from {', '.join(SUBSETS)})")


def pair_classes(present_a: Iterable[int], present_b: Iterable[int], subset: str,
                 held_out: Iterable[int]) -> np.ndarray:
    """Sorted labels present in *both* domains of a pair and in ``subset``."""
    both = np.intersect1d(np.asarray(list(present_a), dtype=np.int64), np.asarray(list(present_b), dtype=np.int64))
    return subset_classes(both, subset, held_out)


def domain_pairs(domains: Sequence[str]) -> list[tuple[str, str]]:
    """All unordered pairs, in the order of ``domains``."""
    return list(itertools.combinations(domains, 2))


def plan_class_sets(present: Mapping[str, Iterable[int]], pairs: Sequence[tuple[str, str]], subsets: Sequence[str],
                    held_out: Iterable[int], reference: Iterable[int] | None = None,
                    ) -> dict[tuple[str, str, str], np.ndarray]:
    """The class set of every (domain_a, domain_b, subset): the classes present in both domains and in the subset
    (and, with ``reference``, also in that list: the published script's single class list, see ``--classes-from``).
    Fewer than :data:`MIN_CLASSES` classes is an error naming the pair and the subset."""
    held = sorted(set(int(h) for h in held_out))
    if "ood" in subsets and not held:
        raise ConfigFieldError("subsets", "'ood' needs held-out classes, but none are known (the store lists none; "
                                          "pass --held-out NAMES or leave 'ood' out of --subsets)")
    ref = None if reference is None else np.unique(np.asarray(list(reference), dtype=np.int64))
    plan: dict[tuple[str, str, str], np.ndarray] = {}
    for a, b in pairs:
        for s in subsets:
            cls = pair_classes(present[a], present[b], s, held)
            if ref is not None:
                cls = np.intersect1d(cls, ref)
            if cls.size < MIN_CLASSES:
                raise ConfigFieldError("subsets", f"subset {s!r} of the pair {a}/{b} has {cls.size} classes present "
                                                  f"in both domains; CKA needs at least {MIN_CLASSES}")
            plan[(a, b, s)] = cls
    return plan


# ---------------------------------------------------------------------------------------------------------------
# The command's configuration
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class CKAConfig:
    """``clipgen cka STORE``: the resolved configuration, written as ``config.json`` beside the results."""

    store: Path
    out: Path
    layers: list[str] | None = None  # None: every stored layer, in forward order
    domains: list[str] | None = None  # None: every stored domain, in the store's order
    subsets: list[str] = field(default_factory=lambda: list(SUBSETS))
    kernels: list[str] = field(default_factory=lambda: list(KERNELS))
    estimators: list[str] = field(default_factory=lambda: ["unbiased"])
    held_out: list[str] | None = None  # class names overriding the store's held-out classes
    classes_from: str | None = None  # also restrict every pair to this domain's classes ("painting": as published)
    rbf_median: str = "lower"  # σ² of the RBF kernel for an even count: lower middle value (published) or "mean"
    highlight: str = DEFAULT_HIGHLIGHT
    figures: bool = True
    force: bool = False
