"""``clipgen circuits nodes`` and ``clipgen circuits similarity``: configurations and runners that write the
results (JSON, CSV) and figures of node and circuit similarity across domains (Fig. 6b and 6c).

The library is split along its seams: :mod:`clipgen.circuits.similarity_compute` (the numbers, see its docstring
for the definitions), :mod:`clipgen.circuits.similarity_figures` (the figures) and :mod:`clipgen.circuits.plot`
(``clipgen circuits plot``: one circuit drawn); their public names are importable from here as well.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipgen.circuits.graphs import check_edge_k
from clipgen.circuits.plot import PlotConfig, plot_paths, resolve_class, run_plot
from clipgen.circuits.similarity_compute import (
    CIRCUIT_FIELDS,
    CIRCUIT_FORMAT,
    DEFAULT_METRICS,
    DEFAULT_SUBSETS,
    FORMAT_VERSION,
    INPUT,
    MAX_WL_H,
    NODE_FIELDS,
    NODE_FORMAT,
    PAIR_ORDER,
    ClassPlan,
    OnClass,
    circuit_similarity,
    config_for_source,
    domain_pairs,
    highlight_summary,
    mean_or_none,
    node_similarity,
    opened,
    pair_key,
    parse_highlight,
    parse_metrics,
    parse_subsets,
    plan_classes,
    resolve_domains,
    source_name,
    wl_h,
)
from clipgen.circuits.similarity_figures import (
    jaccard_band,
    node_highlight_figure,
    plot_heatmap,
    plot_node_highlight,
    plot_node_pairs,
)
from clipgen.domainnet import DEFAULT_HIGHLIGHT, SUBSETS, split_names

# ---------------------------------------------------------------------------------------------------------------
# Configurations


@dataclass
class NodeSimilarityConfig:
    """``clipgen circuits nodes CIRCUITS``: written as ``config.json`` in the output folder."""

    circuits: Path
    out: Path
    domains: str = "all"
    subsets: list[str] = field(default_factory=lambda: split_names(DEFAULT_SUBSETS))
    highlight: str = DEFAULT_HIGHLIGHT
    force: bool = False


@dataclass
class CircuitSimilarityConfig:
    """``clipgen circuits similarity CIRCUITS``: written as ``config.json`` in the output folder."""

    circuits: Path
    out: Path
    edge_k: int = 3
    metrics: list[str] = field(default_factory=lambda: split_names(DEFAULT_METRICS))
    domains: str = "all"
    subsets: list[str] = field(default_factory=lambda: split_names(DEFAULT_SUBSETS))
    highlight: str = DEFAULT_HIGHLIGHT
    force: bool = False


# ---------------------------------------------------------------------------------------------------------------
# Writing: CSV, runners


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
        config = config_for_source(cfg, src)
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
        config = config_for_source(cfg, src)
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
            s: {g: mean_or_none(hl[s][g]["mean"]) for g in ("with", "without")} for s in doc["subsets"]}}
    return {"domain": hl["domain"], "metrics": {
        m: {s: {g: hl[m][s][g] for g in ("with", "without")} for s in doc["subsets"]} for m in doc["metrics"]}}


__all__ = [
    "CIRCUIT_FIELDS", "CIRCUIT_FORMAT", "DEFAULT_HIGHLIGHT", "DEFAULT_METRICS", "DEFAULT_SUBSETS", "FORMAT_VERSION",
    "INPUT", "MAX_WL_H", "NODE_FIELDS", "NODE_FORMAT", "PAIR_ORDER", "SUBSETS", "CircuitSimilarityConfig",
    "ClassPlan", "NodeSimilarityConfig", "OnClass", "PlotConfig", "circuit_per_class_csv", "circuit_similarity",
    "domain_pairs", "highlight_means", "highlight_summary", "jaccard_band", "node_highlight_figure",
    "node_per_class_csv", "node_similarity", "opened", "pair_key", "parse_highlight", "parse_metrics",
    "parse_subsets", "plan_classes", "plot_heatmap", "plot_node_highlight", "plot_node_pairs", "plot_paths",
    "resolve_class", "resolve_domains", "rows_csv", "run_circuit_similarity", "run_node_similarity", "run_plot",
    "source_name", "wl_h",
]
