"""Node and circuit similarity across domains (Fig. 6b and 6c), and one circuit drawn.

Sources are a circuits file (a path, opened with :func:`clipgen.circuits.store.open_circuits`) or any object with
its attributes (``path``, ``layers``, ``domains``, ``classes``, ``held_out``, ``settings``, ``provenance``,
``entries()``, ``read(domain, label)``, ``n_images(domain, label)``).

* **Node similarity**, per class, per domain pair and per layer except ``input``: the Jaccard overlap of the two
  domains' selected channel sets (the top ``ceil(fraction * C)`` channels by ``|node score|``, as stored), then
  mean / std / min / max over the classes of a subset (``all``, ``id`` = not held out, ``ood`` = held out).
* **Circuit similarity**, per class: the domain graphs (:func:`clipgen.circuits.graphs.build_dag`, top ``edge_k``
  upstream nodes by signed edge score) compared pairwise with ``jaccard`` (of the edge sets) and/or ``wl_h<N>``
  (the normalised Weisfeiler-Lehman subtree kernel with ``h = N``); averaged over the classes of each subset, with
  the domain x domain matrix, per-domain averages (over the other domains) and the average over the pairs without
  the highlighted domain (plus the published script's version of that number, see docs/circuits-similarity.md).

Pairs are unordered, in the order real, clipart, infograph, painting, quickdraw, sketch restricted to the domains
analysed. A class missing in a domain is left out of that domain's pairs and reported. A subset without classes is
an error when the subsets were asked for explicitly, and skipped with a note when they are the default.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import itertools
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipgen.circuits.graphs import (
    check_edge_k,
    circuit_graph,
    circuit_wl,
    draw_circuit,
    export_graph,
    jaccard_arrays,
    parse_export,
    to_networkx,
)
from clipgen.domainnet import CIRCUIT_PAIR_ORDER, DEFAULT_HIGHLIGHT, SUBSETS, choose_domains, split_list
from clipgen.errors import ClipgenError, option_error

#: The published scripts' domain order for pairs (real first; see clipgen.domainnet for why CKA's differs).
PAIR_ORDER: tuple[str, ...] = CIRCUIT_PAIR_ORDER
DEFAULT_SUBSETS = ",".join(SUBSETS)
DEFAULT_METRICS = "jaccard,wl_h1,wl_h2,wl_h3"
MAX_WL_H = 10
NODE_FORMAT = "clipgen-circuit-node-similarity"
CIRCUIT_FORMAT = "clipgen-circuit-similarity"
FORMAT_VERSION = 1
NODE_FIELDS: tuple[str, ...] = ("layer", "domain_a", "domain_b", "subset", "n_classes", "mean", "std", "min", "max")
CIRCUIT_FIELDS: tuple[str, ...] = ("metric", "domain_a", "domain_b", "subset", "n_classes", "mean", "std", "min",
                                   "max")
INPUT = "input"

OnClass = Callable[[int, str], None]


# ---------------------------------------------------------------------------------------------------------------
# Configurations


@dataclass
class NodeSimilarityConfig:
    """``clipgen circuits nodes CIRCUITS``: written as ``config.json`` in the output folder."""

    circuits: Path
    out: Path
    domains: str = "all"
    subsets: str = DEFAULT_SUBSETS
    highlight: str = DEFAULT_HIGHLIGHT
    force: bool = False


@dataclass
class CircuitSimilarityConfig:
    """``clipgen circuits similarity CIRCUITS``: written as ``config.json`` in the output folder."""

    circuits: Path
    out: Path
    edge_k: int = 3
    metrics: str = DEFAULT_METRICS
    domains: str = "all"
    subsets: str = DEFAULT_SUBSETS
    highlight: str = DEFAULT_HIGHLIGHT
    force: bool = False


@dataclass
class PlotConfig:
    """``clipgen circuits plot CIRCUITS --domain D --class C``: ``out`` is the PNG (or a folder for it)."""

    circuits: Path
    domain: str
    class_name: str
    out: Path
    edge_k: int = 3
    export: str = "graphml,dot"
    force: bool = False


# ---------------------------------------------------------------------------------------------------------------
# Choosing domains, subsets, classes and metrics


@contextlib.contextmanager
def opened(source) -> Iterator[Any]:
    """The source itself, or the circuits file at a path (opened and closed here)."""
    if isinstance(source, (str, Path)):
        from clipgen.circuits.store import open_circuits

        with open_circuits(source) as cf:
            yield cf
    else:
        yield source


def source_name(source) -> str:
    return str(getattr(source, "path", source))


def resolve_domains(source, domains: str | Sequence[str] | None = None, option: str = "--domains",
                    minimum: int = 2) -> list[str]:
    """The domains to compare, in :data:`PAIR_ORDER`; each must be a DomainNet domain present in the source."""
    return choose_domains(source.domains, domains, where=source_name(source), option=option, minimum=minimum,
                          order=PAIR_ORDER, parse=True,
                          too_few="needs at least {minimum} domains to compare, got {n} ({domains}) in {where}")


def domain_pairs(domains: Sequence[str]) -> list[tuple[str, str]]:
    """Unordered pairs in :data:`PAIR_ORDER`."""
    ordered = [d for d in PAIR_ORDER if d in set(domains)]
    return list(itertools.combinations(ordered, 2))


def pair_key(a: str, b: str) -> str:
    return f"{a}/{b}"


def parse_subsets(subsets: str | Sequence[str] | None) -> tuple[list[str], bool]:
    """``(subsets, explicit)``: ``explicit`` is False for the default ``all,id,ood``."""
    parts = split_list(subsets if subsets is not None else DEFAULT_SUBSETS)
    out: list[str] = []
    for p in parts:
        if p not in SUBSETS:
            raise option_error("--subsets", f"unknown class subset {p!r} (choose from {', '.join(SUBSETS)})")
        if p not in out:
            out.append(p)
    if not out:
        raise option_error("--subsets", "needs at least one of " + ", ".join(SUBSETS))
    return out, out != list(SUBSETS)


def parse_metrics(metrics: str | Sequence[str] | None) -> list[str]:
    """``jaccard`` and ``wl_h<N>`` (``0 <= N <= 10``), in the order given, without repeats."""
    out: list[str] = []
    for p in split_list(metrics if metrics is not None else DEFAULT_METRICS):
        m = re.fullmatch(r"wl_h(\d+)", p)
        if p != "jaccard" and not (m and int(m[1]) <= MAX_WL_H):
            raise option_error("--metrics", f"unknown metric {p!r} (jaccard, or wl_h<N> with N in 0..{MAX_WL_H}: "
                                            "the normalised Weisfeiler-Lehman kernel with h = N)")
        if p not in out:
            out.append(p)
    if not out:
        raise option_error("--metrics", "needs at least one metric")
    return out


def wl_h(metric: str) -> int | None:
    m = re.fullmatch(r"wl_h(\d+)", metric)
    return int(m[1]) if m else None


def parse_highlight(highlight: str | None, domains: Sequence[str]) -> tuple[str | None, list[str]]:
    """The highlighted domain (or None) and notes. ``none`` turns it off; the default ``quickdraw`` missing from
    the analysed domains is a note, any other domain missing is an error."""
    h = (highlight or "").strip().lower()
    if h in ("", "none"):
        return None, []
    from clipgen.domainnet import DOMAIN_LETTERS, DOMAINS

    h = DOMAIN_LETTERS.get(h, h)
    if h not in DOMAINS:
        raise option_error("--highlight", f"unknown domain {highlight!r} (one of {', '.join(DOMAINS)}, or none)")
    if h not in domains:
        if h == DEFAULT_HIGHLIGHT:
            return None, [f"the default highlighted domain {h} is not among the analysed domains "
                          f"({', '.join(domains)}): no highlight summary"]
        raise option_error("--highlight", f"domain {h!r} is not among the analysed domains ({', '.join(domains)})")
    return h, []


@dataclass
class ClassPlan:
    """Which classes enter which (pair, subset), and what is missing."""

    domains: list[str]
    pairs: list[tuple[str, str]]
    subsets: list[str]
    skipped_subsets: list[str]
    names: dict[int, str]  # label -> class name, every class considered
    held_out: list[int]
    present: dict[int, list[str]]  # label -> analysed domains where it is complete
    members: dict[str, dict[tuple[str, str], list[int]]]  # subset -> pair -> labels (sorted)
    missing: list[dict[str, Any]]
    notes: list[str]

    def labels(self) -> list[int]:
        return sorted(self.present)


def plan_classes(source, domains: Sequence[str], subsets: str | Sequence[str] | None) -> ClassPlan:
    subsets_list, explicit = parse_subsets(subsets)
    chosen = set(domains)
    names = {int(k): str(v) for k, v in dict(source.classes).items()}
    held = sorted({int(h) for h in source.held_out})
    present: dict[int, list[str]] = {}
    for d, label in source.entries():
        if str(d) in chosen:
            present.setdefault(int(label), []).append(str(d))
    for label in present:
        names.setdefault(label, str(label))
    present = {lab: [d for d in PAIR_ORDER if d in set(ds)] for lab, ds in sorted(present.items())}
    if not present:
        raise ClipgenError(f"{source_name(source)}: no complete circuit in the domains {', '.join(domains)}")
    in_subset = {"all": sorted(present), "ood": [lab for lab in present if lab in set(held)],
                 "id": [lab for lab in present if lab not in set(held)]}
    notes: list[str] = []
    kept: list[str] = []
    skipped: list[str] = []
    for s in subsets_list:
        if not in_subset[s]:
            why = ("no held-out class was computed" if s == "ood" else
                   "every computed class is held out" if s == "id" else "no class was computed")
            if explicit:
                raise option_error("--subsets", f"subset {s!r} has no classes in {source_name(source)} ({why})")
            notes.append(f"subset {s!r} skipped: {why}")
            skipped.append(s)
        else:
            kept.append(s)
    pairs = domain_pairs(domains)
    members = {s: {p: [lab for lab in in_subset[s] if p[0] in present[lab] and p[1] in present[lab]]
                   for p in pairs} for s in kept}
    missing = []
    for lab, ds in present.items():
        gone = [d for d in domains if d not in ds]
        if gone:
            missing.append({"label": lab, "class": names[lab], "missing_domains": gone})
    if missing:
        shown = ", ".join(f"{m['class']} ({'/'.join(m['missing_domains'])})" for m in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        notes.append(f"{len(missing)} class(es) missing in some domain, left out of those pairs: {shown}{more}")
    for s in kept:
        empty = [pair_key(*p) for p in pairs if not members[s][p]]
        if empty:
            notes.append(f"subset {s!r}: no class present in both domains of {', '.join(empty)}")
    return ClassPlan(domains=list(domains), pairs=pairs, subsets=kept, skipped_subsets=skipped, names=names,
                     held_out=[h for h in held if h in names], present=present, members=members, missing=missing,
                     notes=notes)


def _stats(values: Sequence[float] | np.ndarray) -> dict[str, float | None]:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"n_classes": 0, "mean": None, "std": None, "min": None, "max": None}
    return {"n_classes": int(v.size), "mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
            "max": float(v.max())}


def _header(source, plan: ClassPlan) -> dict[str, Any]:
    return {
        "circuits": source_name(source),
        "provenance": dict(getattr(source, "provenance", {}) or {}),
        "settings": dict(getattr(source, "settings", {}) or {}),
        "domains": plan.domains,
        "pairs": [list(p) for p in plan.pairs],
        "subsets": plan.subsets,
        "skipped_subsets": plan.skipped_subsets,
        "classes": {str(lab): plan.names[lab] for lab in plan.labels()},
        "held_out": {str(lab): plan.names[lab] for lab in plan.held_out if lab in plan.present},
        "n_classes": {s: {pair_key(*p): len(plan.members[s][p]) for p in plan.pairs} for s in plan.subsets},
        "missing": plan.missing,
        "notes": plan.notes,
    }


def _read(source, domain: str, label: int, layers: Sequence[str]):
    result = source.read(domain, label)
    if list(result.layers) != list(layers):
        raise ClipgenError(f"{source_name(source)}: the circuit of ({domain}, {label}) has the layers "
                           f"{' '.join(result.layers)}, not the file's {' '.join(layers)}")
    return result


# ---------------------------------------------------------------------------------------------------------------
# Node similarity


def _group_summary(table: dict[tuple[str, str], list[float | None]], pairs: Sequence[tuple[str, str]],
                   n_layers: int) -> dict[str, Any]:
    """Mean and std over ``pairs`` (per position), ignoring pairs without a value there."""
    means, stds, counts = [], [], []
    for i in range(n_layers):
        vals = [table[p][i] for p in pairs if table[p][i] is not None]
        means.append(float(np.mean(vals)) if vals else None)
        stds.append(float(np.std(vals)) if vals else None)
        counts.append(len(vals))
    return {"pairs": [pair_key(*p) for p in pairs], "mean": means, "std": stds, "n_pairs": counts}


def node_similarity(source, domains: str | Sequence[str] | None = None,
                    subsets: str | Sequence[str] = ("all", "id", "ood"), *,
                    highlight: str | None = DEFAULT_HIGHLIGHT, on_class: OnClass | None = None) -> dict:
    """Jaccard of the selected channel sets, per layer (except input) x domain pair x subset (see the module doc).

    Returns a JSON-able dict; ``similarity[subset][layer][pair]`` is the class mean (None without classes),
    ``results`` the rows of the CSV, ``per_class[label][pair]`` the per-layer values of every class.
    """
    with opened(source) as src:
        doms = resolve_domains(src, domains)
        plan = plan_classes(src, doms, subsets)
        hl, hl_notes = parse_highlight(highlight, doms)
        file_layers = [str(x) for x in src.layers]
        layers = [x for x in file_layers if x != INPUT]
        per_class: dict[int, dict[tuple[str, str], np.ndarray]] = {}
        for i, label in enumerate(plan.labels()):
            sets = {}
            for d in (plan.present[label] if len(plan.present[label]) > 1 else ()):  # alone: in no pair
                res = _read(src, d, label, file_layers)
                sets[d] = [np.unique(np.asarray(res.selected[x], dtype=np.int64)) for x in layers]
            per_class[label] = {(a, b): np.array([jaccard_arrays(sa, sb) for sa, sb in
                                                  zip(sets[a], sets[b], strict=True)])
                                for a, b in plan.pairs if a in sets and b in sets}
            if on_class is not None:
                on_class(i + 1, plan.names[label])
        out = {"format": NODE_FORMAT, "format_version": FORMAT_VERSION, **_header(src, plan), "layers": layers}
    out["notes"] = out["notes"] + hl_notes
    results, similarity, std = [], {}, {}
    for s in plan.subsets:
        similarity[s], std[s] = {x: {} for x in layers}, {x: {} for x in layers}
        for p in plan.pairs:
            labs = plan.members[s][p]
            stack = np.stack([per_class[lab][p] for lab in labs]) if labs else np.zeros((0, len(layers)))
            for li, layer in enumerate(layers):
                st = _stats(stack[:, li])
                similarity[s][layer][pair_key(*p)] = st["mean"]
                std[s][layer][pair_key(*p)] = st["std"]
                results.append({"layer": layer, "domain_a": p[0], "domain_b": p[1], "subset": s, **st})
    out.update(similarity=similarity, std=std, results=results, fields=list(NODE_FIELDS))
    out["highlight"] = None
    if hl is not None:
        summary = {}
        for s in plan.subsets:
            table = {p: [similarity[s][x][pair_key(*p)] for x in layers] for p in plan.pairs}
            summary[s] = {"with": _group_summary(table, [p for p in plan.pairs if hl in p], len(layers)),
                          "without": _group_summary(table, [p for p in plan.pairs if hl not in p], len(layers))}
        out["highlight"] = {"domain": hl, **summary}
    out["per_class"] = {str(lab): {pair_key(*p): v.tolist() for p, v in pairs.items()}
                        for lab, pairs in per_class.items()}
    return out


# ---------------------------------------------------------------------------------------------------------------
# Circuit similarity


def circuit_similarity(source, edge_k: int = 3, metrics: str | Sequence[str] = DEFAULT_METRICS,
                       domains: str | Sequence[str] | None = None,
                       subsets: str | Sequence[str] = ("all", "id", "ood"), *,
                       highlight: str | None = DEFAULT_HIGHLIGHT, on_class: OnClass | None = None) -> dict:
    """The domain graphs of every class compared pairwise with ``metrics``, then summarised per subset.

    ``similarity[metric][subset][pair]`` is the class mean (None without classes); ``matrix[metric][subset]`` the
    domain x domain matrix (diagonal 1.0: a graph compared with itself); ``per_domain[metric][subset][domain]``
    the mean of a domain's row over the other domains; ``highlight`` the averages over the pairs with and without
    the highlighted domain and the published script's "excluding" number; ``per_class[metric][label][pair]``.
    """
    edge_k = check_edge_k(edge_k)
    metric_list = parse_metrics(metrics)
    hs = sorted({h for h in map(wl_h, metric_list) if h is not None})
    with opened(source) as src:
        doms = resolve_domains(src, domains)
        plan = plan_classes(src, doms, subsets)
        hl, hl_notes = parse_highlight(highlight, doms)
        file_layers = [str(x) for x in src.layers]
        per_class: dict[str, dict[int, dict[tuple[str, str], float]]] = {m: {} for m in metric_list}
        for i, label in enumerate(plan.labels()):
            ds = plan.present[label] if len(plan.present[label]) > 1 else []  # alone: in no pair
            graphs = {d: circuit_graph(_read(src, d, label, file_layers), edge_k) for d in ds}
            codes = {d: np.unique(g.edge_codes) for d, g in graphs.items()}
            wl = circuit_wl([graphs[d] for d in ds], hs) if len(ds) > 1 else {}
            pos = {d: j for j, d in enumerate(ds)}
            for m in metric_list:
                h = wl_h(m)
                vals = {}
                for a, b in plan.pairs:
                    if a in graphs and b in graphs:
                        vals[(a, b)] = (jaccard_arrays(codes[a], codes[b]) if h is None else
                                        float(wl[h][pos[a], pos[b]]))
                per_class[m][label] = vals
            if on_class is not None:
                on_class(i + 1, plan.names[label])
        out = {"format": CIRCUIT_FORMAT, "format_version": FORMAT_VERSION, **_header(src, plan)}
    out["notes"] = out["notes"] + hl_notes
    out.update(edge_k=edge_k, metrics=metric_list)
    results, similarity, matrix, per_domain, summary = [], {}, {}, {}, {}
    for m in metric_list:
        similarity[m], matrix[m], per_domain[m], summary[m] = {}, {}, {}, {}
        for s in plan.subsets:
            sim: dict[str, float | None] = {}
            for p in plan.pairs:
                st = _stats([per_class[m][lab][p] for lab in plan.members[s][p]])
                sim[pair_key(*p)] = st["mean"]
                results.append({"metric": m, "domain_a": p[0], "domain_b": p[1], "subset": s, **st})
            similarity[m][s] = sim
            mat = [[1.0 if a == b else sim[pair_key(*sorted((a, b), key=PAIR_ORDER.index))] for b in doms]
                   for a in doms]
            matrix[m][s] = mat
            per_domain[m][s] = {a: _mean_or_none([mat[i][j] for j in range(len(doms)) if j != i])
                                for i, a in enumerate(doms)}
            if hl is not None:
                summary[m][s] = highlight_summary(mat, doms, hl)
    out.update(similarity=similarity, matrix=matrix, per_domain=per_domain, results=results,
               fields=list(CIRCUIT_FIELDS))
    out["highlight"] = {"domain": hl, **summary} if hl is not None else None
    out["per_class"] = {m: {str(lab): {pair_key(*p): v for p, v in vals.items()} for lab, vals in by_label.items()}
                        for m, by_label in per_class.items()}
    return out


def _mean_or_none(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def highlight_summary(matrix: Sequence[Sequence[float | None]], domains: Sequence[str], highlight: str) -> dict:
    """Averages of a domain x domain matrix: pairs with / without ``highlight`` (each unordered pair once), and
    ``published_excluding``: the published script's number, the mean of ``M[a][b]`` over every ordered pair
    ``a != b`` with ``b != highlight`` (so the pairs without the highlight count twice and the pairs
    ``(highlight, b)`` once: it does not exclude the highlighted domain)."""
    n = len(domains)
    with_h, without, published = [], [], []
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            v = matrix[i][j]
            if domains[j] != highlight:
                published.append(v)
            if i < j:
                (with_h if highlight in (domains[i], domains[j]) else without).append(v)
    return {"with": _mean_or_none(with_h), "without": _mean_or_none(without),
            "published_excluding": _mean_or_none(published)}


# ---------------------------------------------------------------------------------------------------------------
# Writing: CSV, figures, runners


def rows_csv(rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else repr(float(r[k])) if isinstance(r.get(k), float) else r[k])
                    for k in fields})
    return buf.getvalue()


def node_per_class_csv(result: dict) -> str:
    layers = result["layers"]
    rows = []
    for label, pairs in result["per_class"].items():
        for key, values in pairs.items():
            a, b = key.split("/")
            rows.extend({"label": int(label), "class": result["classes"][label], "domain_a": a, "domain_b": b,
                         "layer": layer, "jaccard": float(v)} for layer, v in zip(layers, values, strict=True))
    return rows_csv(rows, ("label", "class", "domain_a", "domain_b", "layer", "jaccard"))


def circuit_per_class_csv(result: dict) -> str:
    rows = []
    for m, by_label in result["per_class"].items():
        for label, pairs in by_label.items():
            for key, v in pairs.items():
                a, b = key.split("/")
                rows.append({"metric": m, "label": int(label), "class": result["classes"][label], "domain_a": a,
                             "domain_b": b, "value": float(v)})
    return rows_csv(rows, ("metric", "label", "class", "domain_a", "domain_b", "value"))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _nan(v: float | None) -> float:
    return np.nan if v is None else float(v)


def _layer_axis(ax, layers: Sequence[str], subset: str, n: str) -> None:
    ax.set_xticks(np.arange(len(layers)))
    ax.set_xticklabels(layers, rotation=60, ha="right", fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel("Jaccard of the selected channels")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"node sharing across domains, subset '{subset}' ({n} classes)", fontsize=10)
    ax.grid(alpha=0.3)


def _class_range(result: dict, subset: str) -> str:
    counts = list(result["n_classes"][subset].values())
    lo, hi = min(counts), max(counts)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def plot_node_pairs(result: dict, subset: str, path: Path) -> Path:
    """Node similarity vs layer, one line per domain pair (the highlighted domain's pairs stand out)."""
    from clipgen.analysis.cka import pair_styles

    plt = _plt()
    layers = result["layers"]
    x = np.arange(len(layers))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(x) + 2) + 3.0, 4.5))
    pairs = [tuple(p) for p in result["pairs"]]
    styles = pair_styles(pairs, (result.get("highlight") or {}).get("domain"))
    for i in sorted(range(len(pairs)), key=lambda i: styles[i]["zorder"] != 3):
        a, b = pairs[i]
        y = [_nan(result["similarity"][subset][layer][pair_key(a, b)]) for layer in layers]
        ax.plot(x, y, marker="o", ms=3, label=f"{a} vs {b}", **styles[i])
    _layer_axis(ax, layers, subset, _class_range(result, subset))
    ax.legend(fontsize=7, ncol=1, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)
    return path


def jaccard_band(mean: Sequence[float | None], std: Sequence[float | None]) -> tuple[np.ndarray, np.ndarray]:
    """The +-1 std band around a mean Jaccard similarity, clipped to [0, 1] (a Jaccard index never leaves it)."""
    m = np.array([_nan(v) for v in mean])
    sd = np.array([_nan(v) for v in std])
    return np.clip(m - sd, 0.0, 1.0), np.clip(m + sd, 0.0, 1.0)


def plot_node_highlight(result: dict, subset: str, path: Path) -> Path:
    """Pairs with the highlighted domain vs the other pairs: mean over pairs, a +-1 std band (clipped to [0, 1]),
    faint pair lines."""
    plt = _plt()
    fig = node_highlight_figure(result, subset)
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)
    return path


def node_highlight_figure(result: dict, subset: str):
    """The figure of :func:`plot_node_highlight` (a matplotlib Figure, not saved)."""
    plt = _plt()
    layers = result["layers"]
    hl = result["highlight"]
    x = np.arange(len(layers))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(x) + 2), 4.5))
    for group, color in (("with", "tab:red"), ("without", "tab:blue")):
        g = hl[subset][group]
        if not g["pairs"]:
            continue
        for key in g["pairs"]:
            ax.plot(x, [_nan(result["similarity"][subset][layer][key]) for layer in layers], color=color, lw=0.6,
                    alpha=0.3)
        mean = np.array([_nan(v) for v in g["mean"]])
        lo, hi = jaccard_band(g["mean"], g["std"])
        ax.fill_between(x, lo, hi, color=color, alpha=0.15)
        label = (f"pairs with {hl['domain']}" if group == "with" else "other pairs") + f" (n={len(g['pairs'])})"
        ax.plot(x, mean, color=color, lw=2.2, marker="o", ms=3, label=label)
    _layer_axis(ax, layers, subset, _class_range(result, subset))
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def plot_heatmap(result: dict, metric: str, subset: str, path: Path) -> Path:
    """The domain x domain matrix of one metric and subset, annotated; missing pairs grey."""
    plt = _plt()
    doms = result["domains"]
    mat = np.array([[_nan(v) for v in row] for row in result["matrix"][metric][subset]], dtype=np.float64)
    n = len(doms)
    fig, ax = plt.subplots(figsize=(1.0 * n + 2.5, 0.9 * n + 1.6))
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")
    im = ax.imshow(np.ma.masked_invalid(mat), cmap=cmap, vmin=0.0, vmax=1.0)
    for i in range(n):
        for j in range(n):
            v = mat[i, j]
            ax.text(j, i, "n/a" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8,
                    color="black" if np.isnan(v) or v > 0.6 else "white")
    ax.set_xticks(np.arange(n))
    ax.set_xticklabels(doms, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(np.arange(n))
    ax.set_yticklabels(doms, fontsize=8)
    title = f"circuit similarity ({metric}, edge_k={result['edge_k']}), subset '{subset}'"
    title += f"\n{_class_range(result, subset)} classes per pair"
    if result.get("highlight"):
        hl = result["highlight"]
        without = hl[metric][subset]["without"]
        title += f"; mean without {hl['domain']}: {'n/a' if without is None else f'{without:.3f}'}"
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)
    return path


def _with_progress(total: int, description: str, enabled: bool, run: Callable[[OnClass | None], dict]) -> dict:
    if not enabled:
        return run(None)
    from clipgen.progress import make_progress

    with make_progress() as bar:
        task = bar.add_task(description, total=total)
        return run(lambda i, name: bar.update(task, completed=i, description=f"{description} {name}"))


def _count_classes(src, domains: str) -> int:
    chosen = set(resolve_domains(src, domains))
    return len({int(lab) for d, lab in src.entries() if str(d) in chosen})


def _print_notes(notes: Sequence[str]) -> None:
    from clipgen.progress import console

    for n in notes:
        console.print(f"note: {n}", markup=False, highlight=False)


def _json_ready(result: dict, drop: Sequence[str] = ("per_class",)) -> dict:
    return {k: v for k, v in result.items() if k not in drop}


def _config_for_file(cfg, src):
    """The config with ``circuits`` as the source's path (a source object is not JSON)."""
    return dataclasses.replace(cfg, circuits=Path(source_name(src)))


def run_node_similarity(cfg: NodeSimilarityConfig, progress: bool = True) -> Path:
    """``clipgen circuits nodes``: write ``cfg.out`` (a folder) atomically and return it.

    Files: ``node_similarity.json`` (everything but the per-class values), ``node_similarity.csv`` (one row per
    layer x pair x subset), ``node_similarity_per_class.csv``, ``nodes_pairs_<subset>.png``,
    ``nodes_highlight_<subset>.png`` (with a highlighted domain) and ``config.json``.
    """
    from clipgen.artifacts import atomic_path, ensure_writable_output, write_config, write_json_atomic

    out = ensure_writable_output(Path(cfg.out), cfg.force)
    with opened(cfg.circuits) as src:
        total = _count_classes(src, cfg.domains)
        result = _with_progress(total, "node similarity", progress, lambda cb: node_similarity(
            src, cfg.domains, cfg.subsets, highlight=cfg.highlight, on_class=cb))
        config = _config_for_file(cfg, src)
    with atomic_path(out, force=cfg.force) as tmp:
        tmp.mkdir()
        write_json_atomic(tmp / "node_similarity.json", _json_ready(result))
        (tmp / "node_similarity.csv").write_text(rows_csv(result["results"], NODE_FIELDS), encoding="utf-8")
        (tmp / "node_similarity_per_class.csv").write_text(node_per_class_csv(result), encoding="utf-8")
        for s in result["subsets"]:
            plot_node_pairs(result, s, tmp / f"nodes_pairs_{s}.png")
            if result["highlight"]:
                plot_node_highlight(result, s, tmp / f"nodes_highlight_{s}.png")
        write_config(tmp, "circuits nodes", config)
    _print_notes(result["notes"])
    return out


def run_circuit_similarity(cfg: CircuitSimilarityConfig, progress: bool = True) -> Path:
    """``clipgen circuits similarity``: write ``cfg.out`` (a folder) atomically and return it.

    Files: ``circuit_similarity.json`` (everything but the per-class values), ``circuit_similarity.csv`` (one row
    per metric x pair x subset), ``circuit_similarity_per_class.csv``, ``circuits_<metric>_<subset>.png`` heatmaps
    and ``config.json``.
    """
    from clipgen.artifacts import atomic_path, ensure_writable_output, write_config, write_json_atomic

    out = ensure_writable_output(Path(cfg.out), cfg.force)
    check_edge_k(cfg.edge_k)
    parse_metrics(cfg.metrics)
    with opened(cfg.circuits) as src:
        total = _count_classes(src, cfg.domains)
        result = _with_progress(total, "circuit similarity", progress, lambda cb: circuit_similarity(
            src, cfg.edge_k, cfg.metrics, cfg.domains, cfg.subsets, highlight=cfg.highlight, on_class=cb))
        config = _config_for_file(cfg, src)
    with atomic_path(out, force=cfg.force) as tmp:
        tmp.mkdir()
        write_json_atomic(tmp / "circuit_similarity.json", _json_ready(result))
        (tmp / "circuit_similarity.csv").write_text(rows_csv(result["results"], CIRCUIT_FIELDS), encoding="utf-8")
        (tmp / "circuit_similarity_per_class.csv").write_text(circuit_per_class_csv(result), encoding="utf-8")
        for m in result["metrics"]:
            for s in result["subsets"]:
                plot_heatmap(result, m, s, tmp / f"circuits_{m}_{s}.png")
        write_config(tmp, "circuits similarity", config)
    _print_notes(result["notes"])
    return out


def highlight_means(out: Path) -> dict | None:
    """The key numbers of a ``circuits nodes`` or ``circuits similarity`` output folder: the highlighted domain's
    mean similarity to the other domains vs the mean over the other pairs, per subset (nodes: averaged over the
    layers; similarity: per metric). None without a highlight."""
    out = Path(out)
    nodes = out / "node_similarity.json"
    doc = json.loads((nodes if nodes.exists() else out / "circuit_similarity.json").read_text(encoding="utf-8"))
    hl = doc.get("highlight")
    if not hl:
        return None
    if nodes.exists():
        return {"domain": hl["domain"], "subsets": {
            s: {g: _mean_or_none(hl[s][g]["mean"]) for g in ("with", "without")} for s in doc["subsets"]}}
    return {"domain": hl["domain"], "metrics": {
        m: {s: {g: hl[m][s][g] for g in ("with", "without")} for s in doc["subsets"]} for m in doc["metrics"]}}


# ---------------------------------------------------------------------------------------------------------------
# One circuit: drawing and export


def resolve_class(source, spec: str | int, option: str = "--class") -> int:
    """A class of the source by label (digits) or name (case-insensitive, ``_`` or space)."""
    from clipgen.domainnet import class_by_name, normalise_class_name

    names = {int(k): str(v) for k, v in dict(source.classes).items()}
    text = str(spec).strip()
    if re.fullmatch(r"\d+", text):
        label = int(text)
        if label not in names:
            raise option_error(option, f"class label {label} is not in {source_name(source)}")
        return label
    key = normalise_class_name(text)
    for label, name in names.items():
        if normalise_class_name(name) == key:
            return label
    dn = class_by_name(text, option)  # unknown DomainNet names: an error with suggestions
    if dn.label in names:
        return dn.label
    raise option_error(option, f"class {dn.name!r} was not computed in {source_name(source)}")


def _file_stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "class"


def plot_paths(cfg: PlotConfig, domain: str, name: str, formats: Sequence[str]) -> tuple[Path, list[Path]]:
    out = Path(cfg.out)
    png = out if out.suffix.lower() == ".png" else out / f"circuit_{domain}_{_file_stem(name)}.png"
    return png, [png.with_suffix(f".{f}") for f in formats]


def run_plot(cfg: PlotConfig) -> list[Path]:
    """``clipgen circuits plot``: draw one (domain, class) circuit and export its graph next to the PNG.

    ``cfg.out`` ending in ``.png`` is the PNG; anything else is a folder for ``circuit_<domain>_<class>.png``.
    Returns the PNG, the exported graphs (``.graphml``, ``.dot``) and the config (``<stem>.config.json``).
    """
    from clipgen.artifacts import config_path_for, ensure_writable_output, write_config

    edge_k = check_edge_k(cfg.edge_k)
    formats = parse_export(cfg.export)
    with opened(cfg.circuits) as src:
        domain = resolve_domains(src, cfg.domain, option="--domain", minimum=1)
        if len(domain) != 1:
            raise option_error("--domain", f"names one domain, not {cfg.domain!r}")
        domain = domain[0]
        label = resolve_class(src, cfg.class_name)
        name = str(dict(src.classes)[label])
        complete = {(str(d), int(lab)) for d, lab in src.entries()}
        if (domain, label) not in complete:
            where = sorted(d for d, lab in complete if lab == label)
            raise option_error("--class", f"class {name!r} ({label}) has no complete circuit in {domain} in "
                                          f"{source_name(src)} (it has one in: {', '.join(where) or 'no domain'})")
        png, exports = plot_paths(cfg, domain, name, formats)
        for p in [png, *exports, config_path_for(png)]:
            ensure_writable_output(p, cfg.force)
        result = _read(src, domain, label, [str(x) for x in src.layers])
        n_images = src.n_images(domain, label)
        prov = dict(getattr(src, "provenance", {}) or {})
        config = _config_for_file(cfg, src)
    cg = circuit_graph(result, edge_k)
    model = prov.get("model") or prov.get("model_name")
    if isinstance(model, dict):
        model = model.get("name")
    epoch = prov.get("epoch")
    what = ", ".join(str(x) for x in (model, None if epoch is None else f"epoch {epoch}") if x)
    title = (f"{name} ({label}) in {domain}: {n_images} images, {cg.n_nodes} nodes, {cg.n_edges} edges "
             f"(top-{edge_k} upstream per node)" + (f"\n{what}" if what else ""))
    graph = to_networkx(cg, edge_k=edge_k, layers=" ".join(cg.layers), domain=domain, label=label,
                        class_name=name, n_images=int(n_images))
    written: list[Path] = []
    try:  # all or nothing: a failure removes what this call already wrote
        written.append(draw_circuit(result, png, edge_k=edge_k, title=title))
        for p in exports:
            written.append(export_graph(graph, p))
        written.append(write_config(png, "circuits plot", config))
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    return written


__all__ = [
    "CircuitSimilarityConfig", "NodeSimilarityConfig", "PlotConfig", "circuit_similarity", "highlight_summary",
    "node_similarity", "plan_classes", "resolve_class", "resolve_domains", "run_circuit_similarity",
    "run_node_similarity", "run_plot",
]
