"""The CKA sweep (every layer x domain pair x class subset x kernel x estimator) and ``clipgen cka``'s run.

:func:`cka_sweep` works on any ``means_for(layer, domain)`` source, :func:`compute_cka` on an open activation store,
and :func:`run_cka` writes ``cka.json``, ``cka.csv``, the configuration and the figures (:mod:`.cka_figures`). The
kernels, estimators and class subsets it evaluates are in :mod:`clipgen.analysis.cka`; how the sweep avoids computing
anything twice is described there.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clipgen.analysis.cka import (
    ESTIMATORS,
    FORMAT,
    FORMAT_VERSION,
    KERNELS,
    RBF_MEDIANS,
    RESULT_FIELDS,
    SUBSETS,
    CKAConfig,
    GramTerms,
    check_estimator,
    check_rbf_median,
    cka_from_terms,
    domain_pairs,
    gram_terms,
    linear_gram,
    plan_class_sets,
    rbf_gram_from_distances,
    squared_distances,
)
from clipgen.analysis.cka_figures import plot_highlight, plot_pairs
from clipgen.analysis.selection import (
    class_name_map,
    present_labels,
    resolve_domains,
    resolve_held_out,
    resolve_layers,
)
from clipgen.errors import ClipgenError, ConfigFieldError

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
                raise ConfigFieldError("kernels", f"unknown kernel {kernel!r} (choose from {', '.join(KERNELS)})")
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
        check_estimator(e)
    check_rbf_median(rbf_median)
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



# ---------------------------------------------------------------------------------------------------------------
# From a store, with outputs
# ---------------------------------------------------------------------------------------------------------------

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


def _parse_choices(values: Sequence[str], allowed: Sequence[str], field: str) -> list[str]:
    out: list[str] = []
    for v in values:
        v = v.strip().lower()
        if not v:
            continue
        if v not in allowed:
            raise ConfigFieldError(field, f"unknown value {v!r} (choose from {', '.join(allowed)})")
        if v not in out:
            out.append(v)
    if not out:
        raise ConfigFieldError(field, "needs at least one value")
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
    subsets = _parse_choices(subsets, SUBSETS, "subsets")
    kernels = _parse_choices(kernels, KERNELS, "kernels")
    estimators = _parse_choices(estimators, ESTIMATORS, "estimators")
    rbf_median = _parse_choices([rbf_median], RBF_MEDIANS, "rbf_median")[0]
    layers = resolve_layers(store, layers)
    domains = resolve_domains(store, domains)
    held = resolve_held_out(store, held_out)
    pairs = domain_pairs(domains)
    reference = None
    if classes_from is not None:
        ref_domain = resolve_domains(store, [classes_from], field="classes_from", minimum=1)[0]
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
            raise ConfigFieldError("highlight", f"domain {cfg.highlight!r} is not among the analysed domains "
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
