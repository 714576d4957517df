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
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

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
from clipgen.errors import ClipgenError, option_error

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


def _check_rbf_median(median: str) -> None:
    if median not in RBF_MEDIANS:
        raise option_error("--rbf-median", f"unknown median {median!r} (choose from {', '.join(RBF_MEDIANS)})")


def rbf_sigma2(sq_dists: np.ndarray, median: str = "lower") -> float:
    """σ² for the RBF kernel: the median of the non-zero squared pairwise distances (each pair counted once).

    For an even number m of distances, ``median="lower"`` takes the lower of the two middle values (the
    (m/2)-th smallest), as ``torch.median`` does in the published script, and ``"mean"`` takes the mean of the two
    middle values (``np.median``). The published script takes ``torch.median`` over the non-zero entries of the
    full symmetric matrix, i.e. every pair twice and without the zero diagonal; the lower median of that doubled
    list is the lower median of the pairs counted once, which is what is computed here.
    """
    _check_rbf_median(median)
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
    raise option_error("--kernels", f"unknown kernel {kernel!r} (choose from {', '.join(KERNELS)})")


def _check_estimator(estimator: str) -> None:
    if estimator not in ESTIMATORS:
        raise option_error("--estimators", f"unknown estimator {estimator!r} (choose from {', '.join(ESTIMATORS)})")


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
    _check_estimator(estimator)
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
    raise option_error("--subsets", f"unknown class subset {subset!r} (choose from {', '.join(SUBSETS)})")


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
        raise option_error("--subsets", "'ood' needs held-out classes, but none are known (the store lists none; "
                                        "pass --held-out NAMES or leave 'ood' out of --subsets)")
    ref = None if reference is None else np.unique(np.asarray(list(reference), dtype=np.int64))
    plan: dict[tuple[str, str, str], np.ndarray] = {}
    for a, b in pairs:
        for s in subsets:
            cls = pair_classes(present[a], present[b], s, held)
            if ref is not None:
                cls = np.intersect1d(cls, ref)
            if cls.size < MIN_CLASSES:
                raise option_error("--subsets", f"subset {s!r} of the pair {a}/{b} has {cls.size} classes present "
                                                f"in both domains; CKA needs at least {MIN_CLASSES}")
            plan[(a, b, s)] = cls
    return plan


# ---------------------------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CKARecord:
    layer: str
    domain_a: str
    domain_b: str
    subset: str
    kernel: str
    estimator: str
    n_classes: int
    cka: float

    def as_row(self) -> dict:
        return {f: getattr(self, f) for f in RESULT_FIELDS}


#: ``means_for(layer, domain) -> (labels_present (K,), class means (K, C) float64)``, labels sorted ascending.
MeansFn = Callable[[str, str], tuple[np.ndarray, np.ndarray]]


class _LayerCache:
    """Per-layer cache: class means -> base Gram/distance matrices per domain -> Gram terms per class set."""

    def __init__(self, layer: str, means_for: MeansFn, rbf_median: str = "lower"):
        self.layer = layer
        self.means_for = means_for
        self.rbf_median = rbf_median
        self.base: dict[str, list] = {}
        self.terms: dict[tuple, GramTerms] = {}

    def _base(self, domain: str, need_dist: bool) -> list:
        if domain not in self.base:
            labels, means = self.means_for(self.layer, domain)
            labels = np.asarray(labels, dtype=np.int64)
            means = np.asarray(means, dtype=np.float64)
            if means.ndim != 2 or means.shape[0] != labels.size:
                raise ClipgenError(f"layer {self.layer!r}: class means of {domain!r} have shape {means.shape}, "
                                   f"expected ({labels.size}, C)")
            order = np.argsort(labels, kind="stable")
            # Centring the columns is a translation: linear CKA (either estimator) and RBF distances are invariant
            # to it, and it keeps the Gram entries small, so no precision is lost to cancellation.
            x = means[order] - means.mean(axis=0)
            self.base[domain] = [labels[order], linear_gram(x), None]
        entry = self.base[domain]
        if need_dist and entry[2] is None:
            entry[2] = squared_distances(entry[1])
        return entry

    def gram_terms(self, domain: str, classes: np.ndarray, kernel: str) -> GramTerms:
        key = (domain, classes.tobytes(), kernel)
        if key not in self.terms:
            labels, g, d = self._base(domain, kernel == "rbf")
            if labels.size == classes.size and np.array_equal(labels, classes):
                sub = None  # the domain's own class set: no copy
            else:
                idx = np.searchsorted(labels, classes)
                if np.any(idx >= labels.size) or np.any(labels[np.minimum(idx, labels.size - 1)] != classes):
                    raise ClipgenError(f"layer {self.layer!r}: domain {domain!r} lacks class means for some classes")
                sub = np.ix_(idx, idx)
            if kernel == "linear":
                k = g if sub is None else g[sub]
            elif kernel == "rbf":
                try:
                    k = rbf_gram_from_distances(d if sub is None else d[sub], median=self.rbf_median)
                except ClipgenError as e:
                    raise ClipgenError(f"layer {self.layer!r}, domain {domain!r}: {e}") from None
            else:
                raise option_error("--kernels", f"unknown kernel {kernel!r} (choose from {', '.join(KERNELS)})")
            self.terms[key] = gram_terms(k)
        return self.terms[key]


def cka_layer(layer: str, means_for: MeansFn, plan: Mapping[tuple[str, str, str], np.ndarray],
              kernels: Sequence[str], estimators: Sequence[str], rbf_median: str = "lower") -> list[CKARecord]:
    """Every (pair, subset, kernel, estimator) of one layer.

    Class means are fetched once per domain and Gram terms once per (domain, class set, kernel). The cells that
    share a class set and a kernel (e.g. subset ``all`` of every pair without painting) form one group: the
    flattened Gram matrices of the group's domains are stacked into a matrix F and every cross term
    ``tr(KL)`` of the group is an entry of the single product ``F Fᵀ``, shared by all estimators.
    """
    for e in estimators:
        _check_estimator(e)
    _check_rbf_median(rbf_median)
    cache = _LayerCache(layer, means_for, rbf_median)
    groups: dict[bytes, list[tuple[str, str, str]]] = {}
    for (a, b, s), cls in plan.items():
        groups.setdefault(cls.tobytes(), []).append((a, b, s))
    out: dict[tuple, CKARecord] = {}
    for cells in groups.values():
        cls = plan[cells[0]]
        doms = list(dict.fromkeys(d for a, b, _ in cells for d in (a, b)))
        pos = {d: i for i, d in enumerate(doms)}
        for kernel in kernels:
            terms = {d: cache.gram_terms(d, cls, kernel) for d in doms}
            flat = np.stack([terms[d].mat.reshape(-1) for d in doms])
            traces = flat @ flat.T
            for a, b, s in cells:
                ta, tb = terms[a], terms[b]
                trace = float(traces[pos[a], pos[b]])
                for est in estimators:
                    val = cka_from_terms(ta, tb, est, f"layer {layer!r}, pair {a}/{b}, subset {s!r}, {kernel} "
                                                      f"kernel", trace=trace)
                    out[(a, b, s, kernel, est)] = CKARecord(layer, a, b, s, kernel, est, int(cls.size), val)
    return [out[(a, b, s, k, e)] for (a, b, s) in plan for k in kernels for e in estimators]


def cka_sweep(layers: Sequence[str], means_for: MeansFn, plan: Mapping[tuple[str, str, str], np.ndarray],
              kernels: Sequence[str] = KERNELS, estimators: Sequence[str] = ("unbiased",),
              on_layer: Callable[[str], None] | None = None, rbf_median: str = "lower") -> list[CKARecord]:
    """CKA for every layer x planned (pair, subset) x kernel x estimator."""
    records: list[CKARecord] = []
    for layer in layers:
        records.extend(cka_layer(layer, means_for, plan, kernels, estimators, rbf_median))
        if on_layer is not None:
            on_layer(layer)
    return records


def naive_cka_sweep(layers: Sequence[str], means_for: MeansFn, plan: Mapping[tuple[str, str, str], np.ndarray],
                    kernels: Sequence[str] = KERNELS, estimators: Sequence[str] = ("unbiased",),
                    rbf_median: str = "lower") -> list[CKARecord]:
    """The straightforward loop (benchmark baseline and cross-check): per layer, pair, subset, kernel and estimator,
    fetch both domains' class means, build both Gram matrices and evaluate the estimator with explicit matrix
    products (``H K H`` and ``K̃ L̃``), as a direct transcription of the formulas would."""
    records = []
    for layer in layers:
        for (a, b, s), cls in plan.items():
            la, xa = means_for(layer, a)
            lb, xb = means_for(layer, b)
            xa = np.asarray(xa, dtype=np.float64)[np.searchsorted(np.asarray(la), cls)]
            xb = np.asarray(xb, dtype=np.float64)[np.searchsorted(np.asarray(lb), cls)]
            for kernel in kernels:
                k, l = gram(xa, kernel, rbf_median), gram(xb, kernel, rbf_median)  # noqa: E741
                for est in estimators:
                    f = _naive_hsic_unbiased if est == "unbiased" else _naive_hsic_biased
                    val = f(k, l) / np.sqrt(f(k, k) * f(l, l))
                    records.append(CKARecord(layer, a, b, s, kernel, est, int(cls.size), float(val)))
    return records


def _naive_hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    n = k.shape[0]
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    one = np.ones(n)
    kl = kt @ lt
    return float((np.trace(kl) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
                  - 2.0 / (n - 2) * (one @ kl @ one)) / (n * (n - 3)))


def _naive_hsic_biased(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(k @ h @ l @ h) / (n - 1) ** 2)


# ---------------------------------------------------------------------------------------------------------------
# From a store, with outputs
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


@dataclass
class CKAResult:
    layers: list[str]
    domains: list[str]
    pairs: list[tuple[str, str]]
    subsets: list[str]
    kernels: list[str]
    estimators: list[str]
    held_out_classes: list[str]
    class_counts: dict[str, dict[str, int]]  # subset -> "a/b" -> n classes
    records: list[CKARecord]
    rbf_median: str = "lower"
    out: Path | None = None
    files: list[Path] = field(default_factory=list)

    def table(self) -> dict[tuple[str, str, str, str, str, str], float]:
        return {(r.layer, r.domain_a, r.domain_b, r.subset, r.kernel, r.estimator): r.cka for r in self.records}

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "layers": self.layers,
            "domains": self.domains,
            "pairs": [list(p) for p in self.pairs],
            "subsets": self.subsets,
            "kernels": self.kernels,
            "estimators": self.estimators,
            "rbf_median": self.rbf_median,
            "held_out_classes": self.held_out_classes,
            "n_classes": self.class_counts,
            "fields": list(RESULT_FIELDS),
            "results": [r.as_row() for r in self.records],
        }

    def highlight_means(self, highlight: str, subset: str | None = None, kernel: str | None = None,
                        estimator: str | None = None) -> list[dict]:
        """Per layer, the mean CKA over the pairs with ``highlight`` and over the other pairs (NaN values left out;
        None where a group has no value), for one subset, kernel and estimator (default: the first of each)."""
        subset = subset or self.subsets[0]
        kernel = kernel or self.kernels[0]
        estimator = estimator or self.estimators[0]
        rows = []
        for layer in self.layers:
            groups: dict[str, list[float]] = {"with": [], "without": []}
            for r in self.records:
                if (r.layer, r.subset, r.kernel, r.estimator) == (layer, subset, kernel, estimator) and r.cka == r.cka:
                    groups["with" if highlight in (r.domain_a, r.domain_b) else "without"].append(float(r.cka))
            rows.append({"layer": layer, "subset": subset, "kernel": kernel, "estimator": estimator,
                         **{g: (sum(v) / len(v) if v else None) for g, v in groups.items()},
                         **{f"n_{g}": len(v) for g, v in groups.items()}})
        return rows


def _parse_choices(values: Sequence[str], allowed: Sequence[str], option: str) -> list[str]:
    out: list[str] = []
    for v in values:
        v = v.strip().lower()
        if not v:
            continue
        if v not in allowed:
            raise option_error(option, f"unknown value {v!r} (choose from {', '.join(allowed)})")
        if v not in out:
            out.append(v)
    if not out:
        raise option_error(option, "needs at least one value")
    return out


def store_means_fn(store) -> MeansFn:
    """Class means streamed from the store in float64, labels sorted."""

    def means_for(layer: str, domain: str) -> tuple[np.ndarray, np.ndarray]:
        labels, means = store.class_means(layer, domain, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.int64)
        # an unpooled layer (N, *shape) is compared on its flattened features
        return labels, np.asarray(means, dtype=np.float64).reshape(labels.size, -1)

    return means_for


def compute_cka(store, *, layers: Sequence[str] | None = None, domains: Sequence[str] | None = None,
                subsets: Sequence[str] = SUBSETS, kernels: Sequence[str] = KERNELS,
                estimators: Sequence[str] = ("unbiased",), held_out: Sequence[str] | None = None,
                classes_from: str | None = None, rbf_median: str = "lower", progress: bool = False) -> CKAResult:
    """The full sweep on an open store (see :func:`clipgen.store.open_store`); validates everything before reading.

    ``classes_from`` (a domain of the store) restricts every pair to the classes present in that domain as well:
    ``"painting"`` reproduces the published script, whose class list always came from painting.
    """
    subsets = _parse_choices(subsets, SUBSETS, "--subsets")
    kernels = _parse_choices(kernels, KERNELS, "--kernels")
    estimators = _parse_choices(estimators, ESTIMATORS, "--estimators")
    rbf_median = _parse_choices([rbf_median], RBF_MEDIANS, "--rbf-median")[0]
    layers = resolve_layers(store, layers)
    domains = resolve_domains(store, domains)
    held = resolve_held_out(store, held_out)
    pairs = domain_pairs(domains)
    reference = None
    if classes_from is not None:
        ref_domain = resolve_domains(store, [classes_from], option="--classes-from", minimum=1)[0]
        reference = present_labels(store, [ref_domain])[ref_domain]
    plan = plan_class_sets(present_labels(store, domains), pairs, subsets, held, reference)
    names = class_name_map(store)
    counts = {s: {f"{a}/{b}": int(plan[(a, b, s)].size) for a, b in pairs} for s in subsets}

    means_for = store_means_fn(store)
    if progress:
        from clipgen.progress import make_progress

        with make_progress() as bar:
            task = bar.add_task("CKA", total=len(layers))
            records = cka_sweep(layers, means_for, plan, kernels, estimators,
                                on_layer=lambda layer: bar.update(task, advance=1, description=f"CKA {layer}"),
                                rbf_median=rbf_median)
    else:
        records = cka_sweep(layers, means_for, plan, kernels, estimators, rbf_median=rbf_median)
    return CKAResult(layers=layers, domains=domains, pairs=pairs, subsets=subsets, kernels=kernels,
                     estimators=estimators, held_out_classes=[names.get(h, str(h)) for h in held],
                     class_counts=counts, records=records, rbf_median=rbf_median)


def records_csv(records: Sequence[CKARecord]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(RESULT_FIELDS), lineterminator="\n")
    w.writeheader()
    for r in records:
        row = r.as_row()
        row["cka"] = repr(float(r.cka))
        w.writerow(row)
    return buf.getvalue()


def pair_styles(pairs: Sequence[tuple[str, str]], highlight: str | None) -> list[dict[str, Any]]:
    """Line styles of a one-line-per-pair plot: the pairs with ``highlight`` in strong, distinguishable colours
    (tab10, thick, drawn on top), the other pairs muted (greys of a few lightness levels with dash patterns, thin)."""
    import matplotlib

    strong = matplotlib.colormaps["tab10"]
    dashes = ("-", "--", "-.", ":")
    greys = (0.35, 0.5, 0.65)
    styles, i_hl, i_other = [], 0, 0
    for a, b in pairs:
        if highlight is not None and highlight in (a, b):
            styles.append({"color": strong(i_hl % 10), "lw": 2.0, "alpha": 1.0, "ls": "-", "zorder": 3})
            i_hl += 1
        else:
            g = greys[i_other % len(greys)]
            styles.append({"color": (g, g, g), "lw": 1.0, "alpha": 0.8, "ls": dashes[(i_other // len(greys)) % 4],
                           "zorder": 2})
            i_other += 1
    return styles


def plot_pairs(result: CKAResult, subset: str, kernel: str, estimator: str, path: Path,
               highlight: str | None = None) -> Path:
    """Similarity vs layer, one line per domain pair (the pairs with ``highlight`` stand out)."""
    import matplotlib.pyplot as plt

    fig = pairs_figure(result, subset, kernel, estimator, highlight)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def pairs_figure(result: CKAResult, subset: str, kernel: str, estimator: str, highlight: str | None = None):
    """The figure of :func:`plot_pairs` (a matplotlib Figure, not saved)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = result.table()
    x = np.arange(len(result.layers))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(x) + 2) + 3.5, 4.5))
    pairs = list(result.pairs)
    styles = pair_styles(pairs, highlight)
    # the highlighted pairs first in the legend
    for i in sorted(range(len(pairs)), key=lambda i: styles[i]["zorder"] != 3):
        a, b = pairs[i]
        y = [t[(layer, a, b, subset, kernel, estimator)] for layer in result.layers]
        ax.plot(x, y, marker="o", ms=3, label=f"{a}/{b}", **styles[i])
    _decorate(ax, result, subset, kernel, estimator)
    ax.legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    return fig


def plot_highlight(result: CKAResult, subset: str, kernel: str, estimator: str, highlight: str, path: Path) -> Path:
    """Pairs that include ``highlight`` vs all other pairs: mean line and min-max band per group (Fig. 6a)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = result.table()
    x = np.arange(len(result.layers))
    groups = {f"pairs with {highlight}": [p for p in result.pairs if highlight in p],
              "other pairs": [p for p in result.pairs if highlight not in p]}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(x) + 2), 4.5))
    for (label, pairs), color in zip(groups.items(), ("tab:red", "tab:blue"), strict=True):
        if not pairs:
            continue
        y = np.array([[t[(layer, a, b, subset, kernel, estimator)] for layer in result.layers] for a, b in pairs])
        for row in y:
            ax.plot(x, row, color=color, lw=0.6, alpha=0.35)
        ax.fill_between(x, y.min(axis=0), y.max(axis=0), color=color, alpha=0.12)
        ax.plot(x, y.mean(axis=0), color=color, lw=2.2, marker="o", ms=3, label=f"{label} (n={len(pairs)})")
    _decorate(ax, result, subset, kernel, estimator)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _decorate(ax, result: CKAResult, subset: str, kernel: str, estimator: str) -> None:
    ax.set_xticks(np.arange(len(result.layers)))
    ax.set_xticklabels(result.layers, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(f"{kernel} CKA ({estimator} HSIC)")
    ax.set_title(f"cross-domain CKA of class means, subset '{subset}'", fontsize=10)
    ax.grid(alpha=0.3)


def run_cka(cfg: CKAConfig, *, progress: bool = True) -> CKAResult:
    """``clipgen cka``: compute the sweep from ``cfg.store`` and write ``cfg.out`` (a folder) atomically.

    The folder holds ``cka.json``, ``cka.csv``, ``config.json`` and, with ``cfg.figures``, per subset x kernel x
    estimator ``pairs_<subset>_<kernel>_<estimator>.png`` and ``highlight_<subset>_<kernel>_<estimator>.png``.
    """
    from clipgen.artifacts import atomic_path, ensure_writable_output, write_config, write_json_atomic
    from clipgen.store import open_store

    out = Path(cfg.out)
    ensure_writable_output(out, cfg.force)
    with open_store(cfg.store) as store:
        domains = resolve_domains(store, cfg.domains)
        if cfg.figures and cfg.highlight not in domains:
            raise option_error("--highlight", f"domain {cfg.highlight!r} is not among the analysed domains "
                                              f"({', '.join(domains)})")
        result = compute_cka(store, layers=cfg.layers, domains=domains, subsets=cfg.subsets, kernels=cfg.kernels,
                             estimators=cfg.estimators, held_out=cfg.held_out, classes_from=cfg.classes_from,
                             rbf_median=cfg.rbf_median, progress=progress)
        store_info = {"store": str(cfg.store), "store_fingerprint": store.fingerprint}
    cfg.layers, cfg.domains, cfg.subsets = result.layers, result.domains, result.subsets
    cfg.kernels, cfg.estimators, cfg.rbf_median = result.kernels, result.estimators, result.rbf_median
    with atomic_path(out, force=cfg.force) as tmp:
        tmp.mkdir()
        write_json_atomic(tmp / "cka.json", {**store_info, **result.to_json()})
        (tmp / "cka.csv").write_text(records_csv(result.records), encoding="utf-8")
        names = ["cka.json", "cka.csv"]
        if cfg.figures:
            for s in result.subsets:
                for k in result.kernels:
                    for e in result.estimators:
                        plot_pairs(result, s, k, e, tmp / f"pairs_{s}_{k}_{e}.png", cfg.highlight)
                        plot_highlight(result, s, k, e, cfg.highlight, tmp / f"highlight_{s}_{k}_{e}.png")
                        names += [f"pairs_{s}_{k}_{e}.png", f"highlight_{s}_{k}_{e}.png"]
        write_config(tmp, "cka", cfg)
        names.append("config.json")
    result.out = out
    result.files = [out / n for n in names]
    return result
