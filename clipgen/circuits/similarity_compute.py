"""Node and circuit similarity across domains (Fig. 6b and 6c): the numbers, from a circuits file.

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
import dataclasses
import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipgen.circuits.graphs import check_edge_k, circuit_graph, circuit_wl, jaccard_arrays
from clipgen.domainnet import CIRCUIT_PAIR_ORDER, DEFAULT_HIGHLIGHT, SUBSETS, choose_domains, split_names
from clipgen.errors import ClipgenError, ConfigFieldError

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
# Sources; choosing domains, subsets, classes and metrics


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


def config_for_source(cfg, src):
    """The config with ``circuits`` as the source's path (a source object is not JSON)."""
    return dataclasses.replace(cfg, circuits=Path(source_name(src)))


def resolve_domains(source, domains: str | Sequence[str] | None = None, field: str = "domains",
                    minimum: int = 2) -> list[str]:
    """The domains to compare, in :data:`PAIR_ORDER`; each must be a DomainNet domain present in the source."""
    return choose_domains(source.domains, domains, where=source_name(source), field=field, minimum=minimum,
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
    parts = split_names(subsets if subsets is not None else DEFAULT_SUBSETS)
    out: list[str] = []
    for p in parts:
        if p not in SUBSETS:
            raise ConfigFieldError("subsets", f"unknown class subset {p!r} (choose from {', '.join(SUBSETS)})")
        if p not in out:
            out.append(p)
    if not out:
        raise ConfigFieldError("subsets", "needs at least one of " + ", ".join(SUBSETS))
    return out, out != list(SUBSETS)


def parse_metrics(metrics: str | Sequence[str] | None) -> list[str]:
    """``jaccard`` and ``wl_h<N>`` (``0 <= N <= 10``), in the order given, without repeats."""
    out: list[str] = []
    for p in split_names(metrics if metrics is not None else DEFAULT_METRICS):
        m = re.fullmatch(r"wl_h(\d+)", p)
        if p != "jaccard" and not (m and int(m[1]) <= MAX_WL_H):
            raise ConfigFieldError("metrics", f"unknown metric {p!r} (jaccard, or wl_h<N> with N in 0..{MAX_WL_H}: "
                                            "the normalised Weisfeiler-Lehman kernel with h = N)")
        if p not in out:
            out.append(p)
    if not out:
        raise ConfigFieldError("metrics", "needs at least one metric")
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
        raise ConfigFieldError("highlight", f"unknown domain {highlight!r} (one of {', '.join(DOMAINS)}, or none)")
    if h not in domains:
        if h == DEFAULT_HIGHLIGHT:
            return None, [f"the default highlighted domain {h} is not among the analysed domains "
                          f"({', '.join(domains)}): no highlight summary"]
        raise ConfigFieldError("highlight", f"domain {h!r} is not among the analysed domains ({', '.join(domains)})")
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
                raise ConfigFieldError("subsets", f"subset {s!r} has no classes in {source_name(source)} ({why})")
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


def read_circuit(source, domain: str, label: int, layers: Sequence[str]):
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
                res = read_circuit(src, d, label, file_layers)
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
            graphs = {d: circuit_graph(read_circuit(src, d, label, file_layers), edge_k) for d in ds}
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
            per_domain[m][s] = {a: mean_or_none([mat[i][j] for j in range(len(doms)) if j != i])
                                for i, a in enumerate(doms)}
            if hl is not None:
                summary[m][s] = highlight_summary(mat, doms, hl)
    out.update(similarity=similarity, matrix=matrix, per_domain=per_domain, results=results,
               fields=list(CIRCUIT_FIELDS))
    out["highlight"] = {"domain": hl, **summary} if hl is not None else None
    out["per_class"] = {m: {str(lab): {pair_key(*p): v for p, v in vals.items()} for lab, vals in by_label.items()}
                        for m, by_label in per_class.items()}
    return out


def mean_or_none(values: Iterable[float | None]) -> float | None:
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
    return {"with": mean_or_none(with_h), "without": mean_or_none(without),
            "published_excluding": mean_or_none(published)}
