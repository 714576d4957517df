# Over 500 lines on purpose: the graph arrays, the WL kernel, drawing and export all work on one CircuitGraph.
"""Circuit graphs: the DAG of a circuit, Jaccard overlap, the Weisfeiler-Lehman subtree kernel, drawing and export.

The graph of one circuit (:class:`~clipgen.circuits.attribution.CircuitResult`):

* **nodes** ``"layer/channel"``: the selected channels of every chain layer except ``input``, in chain order and,
  inside a layer, in selection order (best first); attributes ``layer``, ``channel`` and ``score`` (the signed node
  score);
* **edges**: for every selected downstream channel, one edge *from* each of its ``edge_k`` upstream channels with
  the largest **signed** edge score (not ``|score|``), ties broken towards the lower column (= earlier in the
  upstream selection); attribute ``weight`` = the edge score. Upstream ``input`` channels are not nodes, so the
  ``input -> act1`` matrix adds no edge. A layer with fewer than ``edge_k`` selected upstream channels gives each
  downstream node all of them.

The **Weisfeiler-Lehman subtree kernel** (Shervashidze et al. 2011) on these directed graphs: the label of a node at
iteration 0 is its name; at iteration ``i + 1`` it is the pair (its label at ``i``, the sorted multiset of the labels
of its *successors* at ``i``), compressed to a new label shared by every graph compared. ``k_h(G1, G2)`` is the sum
over iterations ``0..h`` of the dot product of the two graphs' label-count vectors, and the similarity is
``k_h(G1, G2) / sqrt(k_h(G1, G1) * k_h(G2, G2))``. (The published ``wl_h2`` score runs ``h = 3``: a copy-paste bug;
here ``h`` is what is asked.) Because node names are unique inside a graph, ``k_h(G, G) = (h + 1) |V|`` and the
similarity can only fall as ``h`` grows (each iteration refines the previous labels).

The similarity sweeps (:mod:`clipgen.circuits.similarity`) use the array form :class:`CircuitGraph` and the batched
:func:`wl_kernel_matrices` (all graphs of a class in one pass, exact label compression with ``numpy.unique``);
:func:`build_dag` turns the same arrays into a ``networkx.DiGraph``.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipgen.errors import ClipgenError, ConfigFieldError

INPUT = "input"
#: Node codes: ``layer index << CHANNEL_BITS | channel`` (unique per (layer, channel) of one chain).
CHANNEL_BITS = 24
#: Edge codes: ``upstream code << NODE_BITS | downstream code``.
NODE_BITS = 31
EXPORT_FORMATS: tuple[str, ...] = ("graphml", "dot")


def check_edge_k(edge_k: int, field: str = "edge_k") -> int:
    if isinstance(edge_k, bool) or not isinstance(edge_k, (int, np.integer)) or edge_k < 1:
        raise ConfigFieldError(field, f"must be a whole number of at least 1, not {edge_k!r}")
    return int(edge_k)


def check_h(h: int, field: str = "metrics") -> int:
    if isinstance(h, bool) or not isinstance(h, (int, np.integer)) or h < 0:
        raise ConfigFieldError(field, f"the Weisfeiler-Lehman iteration count h must be a whole number >= 0, not "
                                      f"{h!r}")
    return int(h)


# ---------------------------------------------------------------------------------------------------------------
# The circuit graph as arrays


@dataclass(frozen=True)
class CircuitGraph:
    """The DAG of one circuit as arrays: ``n`` nodes, ``m`` edges ``src[e] -> dst[e]`` (node indices)."""

    layers: tuple[str, ...]  # the chain, including "input" (node layer indices refer to it)
    node_layer: np.ndarray  # (n,) int64 index into ``layers``
    node_channel: np.ndarray  # (n,) int64
    node_score: np.ndarray  # (n,) float64 signed node score
    src: np.ndarray  # (m,) int64 node index of the upstream end
    dst: np.ndarray  # (m,) int64 node index of the downstream end
    weight: np.ndarray  # (m,) float64 edge score

    @property
    def n_nodes(self) -> int:
        return int(self.node_layer.size)

    @property
    def n_edges(self) -> int:
        return int(self.src.size)

    @property
    def node_codes(self) -> np.ndarray:
        """One int64 per node, equal across graphs of the same chain exactly when the names are equal."""
        return (self.node_layer << CHANNEL_BITS) | self.node_channel

    @property
    def edge_codes(self) -> np.ndarray:
        """One int64 per edge, equal across graphs of the same chain exactly when (upstream, downstream) are."""
        codes = self.node_codes
        return (codes[self.src] << NODE_BITS) | codes[self.dst]

    def names(self) -> list[str]:
        return [f"{self.layers[int(li)]}/{int(c)}" for li, c in zip(self.node_layer, self.node_channel, strict=True)]


def _as_1d(x: Any, dtype, what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ClipgenError(f"circuit: {what} must be one-dimensional, got shape {a.shape}")
    return a.astype(dtype, copy=False)


def circuit_graph(result, edge_k: int = 3) -> CircuitGraph:
    """The graph of ``result`` (a :class:`~clipgen.circuits.attribution.CircuitResult`) as a :class:`CircuitGraph`."""
    edge_k = check_edge_k(edge_k)
    layers = tuple(str(name) for name in result.layers)
    if len(set(layers)) != len(layers):
        raise ClipgenError(f"circuit: repeated layer names in the chain {' '.join(layers)}")
    if len(layers) > (1 << (NODE_BITS - CHANNEL_BITS)):
        raise ClipgenError(f"circuit: a chain of {len(layers)} layers is too long")
    index: dict[str, dict[int, int]] = {}  # layer -> channel -> node index
    n_layer, n_channel, n_score = [], [], []
    base = 0
    for li, name in enumerate(layers):
        if name == INPUT:
            continue
        if name not in result.selected or name not in result.nodes:
            raise ClipgenError(f"circuit: layer {name!r} has no node scores or no selected channels")
        scores = _as_1d(result.nodes[name], np.float64, f"the node scores of {name}")
        sel = _as_1d(result.selected[name], np.int64, f"the selected channels of {name}")
        if sel.size and (sel.min() < 0 or sel.max() >= scores.size):
            raise ClipgenError(f"circuit: selected channels of {name} fall outside 0..{scores.size - 1}")
        if scores.size >= (1 << CHANNEL_BITS):
            raise ClipgenError(f"circuit: layer {name} has too many channels ({scores.size})")
        if np.unique(sel).size != sel.size:
            raise ClipgenError(f"circuit: layer {name} selects a channel twice")
        index[name] = {int(c): base + i for i, c in enumerate(sel)}
        base += sel.size
        n_layer.append(np.full(sel.size, li, dtype=np.int64))
        n_channel.append(sel)
        n_score.append(scores[sel])
    src, dst, wts = [], [], []
    for li in range(1, len(layers)):
        up, down = layers[li - 1], layers[li]
        if up == INPUT or down == INPUT:
            continue
        if down not in result.edges:
            raise ClipgenError(f"circuit: no edge matrix for {up} -> {down}")
        m = np.asarray(result.edges[down], dtype=np.float64)
        k_down, k_up = len(index[down]), len(index[up])
        if m.shape != (k_down, k_up):
            raise ClipgenError(f"circuit: the edge matrix {up} -> {down} has shape {m.shape}, expected "
                               f"({k_down}, {k_up}) = (selected {down}, selected {up})")
        if not np.isfinite(m).all():
            raise ClipgenError(f"circuit: the edge matrix {up} -> {down} has non-finite values")
        if k_down == 0 or k_up == 0:
            continue
        k = min(edge_k, k_up)
        top = np.argsort(-m, axis=1, kind="stable")[:, :k]  # signed, ties: lower column first
        rows = np.repeat(np.arange(k_down), k)
        cols = top.reshape(-1)
        up_nodes = np.fromiter(index[up].values(), dtype=np.int64, count=k_up)
        down_nodes = np.fromiter(index[down].values(), dtype=np.int64, count=k_down)
        src.append(up_nodes[cols])
        dst.append(down_nodes[rows])
        wts.append(m[rows, cols])

    def cat(parts, dtype):
        return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype=dtype)

    return CircuitGraph(layers=layers, node_layer=cat(n_layer, np.int64), node_channel=cat(n_channel, np.int64),
                        node_score=cat(n_score, np.float64), src=cat(src, np.int64), dst=cat(dst, np.int64),
                        weight=cat(wts, np.float64))


def to_networkx(cg: CircuitGraph, **graph_attrs):
    """A :class:`CircuitGraph` as a ``networkx.DiGraph`` (node and edge attributes as plain Python values)."""
    import networkx as nx

    g = nx.DiGraph(**graph_attrs)
    names = cg.names()
    for i, name in enumerate(names):
        g.add_node(name, layer=cg.layers[int(cg.node_layer[i])], channel=int(cg.node_channel[i]),
                   score=float(cg.node_score[i]))
    for s, d, w in zip(cg.src.tolist(), cg.dst.tolist(), cg.weight.tolist(), strict=True):
        g.add_edge(names[s], names[d], weight=float(w))
    return g


def build_dag(result, edge_k: int = 3):
    """The circuit's ``networkx.DiGraph`` (see the module docstring for the exact rules)."""
    cg = circuit_graph(result, edge_k)
    return to_networkx(cg, edge_k=int(edge_k), layers=" ".join(cg.layers))


# ---------------------------------------------------------------------------------------------------------------
# Jaccard and the Weisfeiler-Lehman subtree kernel


def jaccard(a: Iterable[Hashable], b: Iterable[Hashable]) -> float:
    """``|a & b| / |a | b|``; 1.0 when both are empty (two empty sets are identical)."""
    a, b = set(a), set(b)
    union = len(a | b)
    return 1.0 if union == 0 else len(a & b) / union


def jaccard_arrays(a: np.ndarray, b: np.ndarray) -> float:
    """:func:`jaccard` of two arrays of distinct codes (faster for large sets)."""
    inter = np.intersect1d(a, b, assume_unique=True).size
    union = a.size + b.size - inter
    return 1.0 if union == 0 else inter / union


def _wl_refine(labels: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """One WL iteration on a (disjoint union) graph: new label = (own label, sorted successor labels), compressed."""
    n = labels.size
    if n == 0:
        return labels.copy()
    if src.size == 0:
        _, inv = np.unique(labels, return_inverse=True)
        return inv.reshape(-1).astype(np.int64)
    succ = labels[dst]
    order = np.lexsort((succ, src))  # by source node, then successor label
    s_sorted, l_sorted = src[order], succ[order]
    deg = np.bincount(src, minlength=n)
    start = np.concatenate(([0], np.cumsum(deg)[:-1]))
    pos = np.arange(s_sorted.size) - start[s_sorted]
    rows = np.full((n, 1 + int(deg.max())), -1, dtype=np.int64)
    rows[:, 0] = labels
    rows[s_sorted, 1 + pos] = l_sorted
    _, inv = np.unique(rows, axis=0, return_inverse=True)
    return inv.reshape(-1).astype(np.int64)


def wl_kernel_matrices(graphs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], h: int) -> np.ndarray:
    """Per-iteration WL dot products of every pair of graphs: ``(h + 1, G, G)`` int64.

    Each graph is ``(initial_labels (n,) int64, src (m,), dst (m,))`` with node indices local to the graph and
    initial labels comparable across graphs. ``result[:h'+1].sum(0)`` is the kernel matrix ``k_h'`` for any
    ``h' <= h``.
    """
    h = check_h(h)
    n_graphs = len(graphs)
    sizes = np.array([len(g[0]) for g in graphs], dtype=np.int64)
    offsets = np.concatenate(([0], np.cumsum(sizes)[:-1])) if n_graphs else np.zeros(0, dtype=np.int64)
    owner = np.repeat(np.arange(n_graphs), sizes)
    init = np.concatenate([np.asarray(g[0], dtype=np.int64) for g in graphs]) if n_graphs else np.zeros(0, np.int64)
    src = np.concatenate([np.asarray(g[1], np.int64) + o for g, o in zip(graphs, offsets, strict=True)]
                         ) if n_graphs else np.zeros(0, np.int64)
    dst = np.concatenate([np.asarray(g[2], np.int64) + o for g, o in zip(graphs, offsets, strict=True)]
                         ) if n_graphs else np.zeros(0, np.int64)
    _, labels = np.unique(init, return_inverse=True)
    labels = labels.reshape(-1).astype(np.int64)
    out = np.zeros((h + 1, n_graphs, n_graphs), dtype=np.int64)
    for it in range(h + 1):
        if it:
            labels = _wl_refine(labels, src, dst)
        n_labels = int(labels.max()) + 1 if labels.size else 0
        counts = np.bincount(owner * n_labels + labels, minlength=n_graphs * n_labels).reshape(n_graphs, n_labels)
        out[it] = counts @ counts.T
    return out


def normalise_kernel(k: np.ndarray) -> np.ndarray:
    """``k[a, b] / sqrt(k[a, a] k[b, b])``; two empty graphs (zero self-kernels) are 1.0 apart, one empty one 0.0."""
    k = np.asarray(k, dtype=np.float64)
    d = np.diag(k)
    denom = np.sqrt(np.outer(d, d))
    with np.errstate(invalid="ignore", divide="ignore"):
        sim = np.where(denom > 0, k / np.where(denom > 0, denom, 1.0), 0.0)
    empty = d == 0
    sim[np.ix_(empty, empty)] = 1.0
    return sim


def _nx_arrays(graphs: Sequence[Any]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    lookup: dict[Hashable, int] = {}
    out = []
    for g in graphs:
        nodes = list(g.nodes)
        local = {v: i for i, v in enumerate(nodes)}
        init = np.array([lookup.setdefault(v, len(lookup)) for v in nodes], dtype=np.int64)
        succ = g.successors if g.is_directed() else g.neighbors
        pairs = [(local[v], local[w]) for v in nodes for w in succ(v)]
        src = np.array([p[0] for p in pairs], dtype=np.int64)
        dst = np.array([p[1] for p in pairs], dtype=np.int64)
        out.append((init, src, dst))
    return out


def wl_kernel(g1, g2, h: int) -> float:
    """The WL subtree kernel ``k_h(g1, g2)`` of two networkx graphs (directed: successors; labels = node names)."""
    k = wl_kernel_matrices(_nx_arrays([g1, g2]), h).sum(axis=0)
    return float(k[0, 1])


def wl_similarity(g1, g2, h: int) -> float:
    """``k_h(g1, g2) / sqrt(k_h(g1, g1) k_h(g2, g2))`` (1.0 for two empty graphs, 0.0 for one empty graph)."""
    k = wl_kernel_matrices(_nx_arrays([g1, g2]), h).sum(axis=0)
    return float(normalise_kernel(k)[0, 1])


def circuit_wl(graphs: Sequence[CircuitGraph], hs: Sequence[int]) -> dict[int, np.ndarray]:
    """Normalised WL similarity matrices ``{h: (G, G)}`` of circuit graphs of one chain, in one pass."""
    if not hs:
        return {}
    arrays = [(cg.node_codes, cg.src, cg.dst) for cg in graphs]
    per_it = wl_kernel_matrices(arrays, max(check_h(h) for h in hs))
    cum = np.cumsum(per_it, axis=0)
    return {int(h): normalise_kernel(cum[int(h)]) for h in hs}


# ---------------------------------------------------------------------------------------------------------------
# Drawing


def _layout(cg: CircuitGraph) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """x in (0, 1) and a row per node; rows bottom (first graph layer) to top. Inside a row, nodes are ordered by
    the mean x of their upstream neighbours (one barycentre sweep; the first row and ties by channel)."""
    present = sorted(set(cg.node_layer.tolist()))
    row_of = {li: r for r, li in enumerate(present)}
    x = np.zeros(cg.n_nodes)
    rows = np.array([row_of[int(li)] for li in cg.node_layer], dtype=np.int64)
    preds: dict[int, list[int]] = {}
    for s, d in zip(cg.src.tolist(), cg.dst.tolist(), strict=True):
        preds.setdefault(d, []).append(s)
    for li in present:
        idx = np.flatnonzero(cg.node_layer == li)
        n = idx.size
        chan = cg.node_channel[idx]
        bary = np.array([np.mean(x[preds[i]]) if i in preds else np.nan for i in idx.tolist()])
        fallback = (np.argsort(np.argsort(chan, kind="stable"), kind="stable") + 0.5) / n
        key = np.where(np.isnan(bary), fallback, bary)
        order = np.lexsort((chan, key))
        x[idx[order]] = (np.arange(n) + 0.5) / n
    return x, rows, present


def draw_circuit(result, path_png: str | Path, *, edge_k: int = 3, title: str | None = None,
                 dpi: int = 150) -> Path:
    """Draw the circuit as a layered graph PNG: layers bottom (first after ``input``) to top in chain order; node
    colour = signed node score on a diverging colormap centred at 0; edge colour = sign of the edge score (red
    positive, blue negative). Channel numbers are printed in layers with at most 40 selected channels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D

    from clipgen.artifacts import atomic_path

    cg = circuit_graph(result, edge_k)
    x, rows, present = _layout(cg)
    n_rows = max(1, len(present))
    per_row = np.bincount(rows, minlength=n_rows) if cg.n_nodes else np.zeros(n_rows, dtype=np.int64)
    widest = int(per_row.max()) if per_row.size else 1
    width = float(np.clip(0.11 * widest + 3.0, 8.0, 40.0))
    height = float(np.clip(0.5 * n_rows + 2.0, 4.0, 24.0))
    fig, ax = plt.subplots(figsize=(width, height))
    y = rows.astype(np.float64)
    if cg.n_edges:
        segs = np.stack([np.stack([x[cg.src], y[cg.src]], 1), np.stack([x[cg.dst], y[cg.dst]], 1)], 1)
        colors = np.where(cg.weight[:, None] > 0, [[0.80, 0.10, 0.10, 1.0]],
                          np.where(cg.weight[:, None] < 0, [[0.10, 0.25, 0.80, 1.0]], [[0.5, 0.5, 0.5, 1.0]]))
        # opacity grows with |edge score| relative to the strongest edge into the same layer
        mag = np.abs(cg.weight)
        down_layer = cg.node_layer[cg.dst]
        peak = np.zeros(len(cg.layers))
        np.maximum.at(peak, down_layer, mag)
        rel = np.divide(mag, peak[down_layer], out=np.ones_like(mag), where=peak[down_layer] > 0)
        top = 0.8 if cg.n_edges < 300 else 0.5
        colors[:, 3] = 0.08 + (top - 0.08) * rel
        lw = 0.9 if cg.n_edges < 300 else 0.45
        ax.add_collection(LineCollection(segs, colors=colors, linewidths=lw, zorder=1))
    scale = float(np.max(np.abs(cg.node_score))) if cg.n_nodes else 0.0
    scale = scale if scale > 0 else 1.0
    norm = Normalize(vmin=-scale, vmax=scale)
    size = float(np.clip(2500.0 / max(widest, 1), 8.0, 220.0))
    sc = ax.scatter(x, y, c=cg.node_score, cmap="RdBu_r", norm=norm, s=size, edgecolors="0.25",
                    linewidths=0.3, zorder=2)
    for r in range(n_rows):
        if per_row[r] <= 40:
            for i in np.flatnonzero(rows == r):
                ax.annotate(str(int(cg.node_channel[i])), (x[i], y[i]), xytext=(0, 5), textcoords="offset points",
                            ha="center", fontsize=6, zorder=3)
    ax.set_yticks(np.arange(n_rows))
    ax.set_yticklabels([f"{cg.layers[li]} ({per_row[r]})" for r, li in enumerate(present)], fontsize=8)
    ax.set_ylim(-0.6, n_rows - 0.4)
    ax.set_xlim(-0.01, 1.01)
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    fig.colorbar(sc, ax=ax, fraction=0.025, pad=0.01, label="node score (integrated gradients)")
    handles = [Line2D([], [], color=(0.8, 0.1, 0.1), label="positive edge score"),
               Line2D([], [], color=(0.1, 0.25, 0.8), label="negative edge score")]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=8, frameon=False)
    ax.set_title(title or f"circuit: {cg.n_nodes} nodes, {cg.n_edges} edges (top-{edge_k} upstream per node)",
                 fontsize=10)
    fig.tight_layout()
    path = Path(path_png)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Export


def _dot_id(value: Any) -> str:
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


def _dot_value(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return _dot_id(repr(float(value)))
    if isinstance(value, (bool, np.bool_)):
        return _dot_id(str(bool(value)).lower())
    if isinstance(value, (int, np.integer)):
        return _dot_id(int(value))
    return _dot_id(value)


def _dot_key(key: Any) -> str:
    key = str(key)
    return key if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) else _dot_id(key)


def _dot_attrs(attrs: dict[str, Any]) -> str:
    return ", ".join(f"{_dot_key(k)}={_dot_value(v)}" for k, v in attrs.items())


def _fill_colour(score: float, scale: float) -> str:
    """A diverging fill (white at 0, red for positive, blue for negative), as graphviz ``#RRGGBB``."""
    t = 0.0 if scale <= 0 else max(-1.0, min(1.0, score / scale))
    if t >= 0:
        r, g, b = 255, int(round(255 * (1 - t))), int(round(255 * (1 - t)))
    else:
        r, g, b = int(round(255 * (1 + t))), int(round(255 * (1 + t))), 255
    return f"#{r:02X}{g:02X}{b:02X}"


def dot_text(graph) -> str:
    """A graph as graphviz DOT text (written by hand). Every node and edge attribute is kept; the edge attribute
    ``weight`` is written as ``score`` (graphviz reserves ``weight`` for layout and refuses negative values), and
    nodes with a ``layer`` attribute are ranked by layer, bottom to top, with a fill colour from their ``score``."""
    directed = graph.is_directed()
    arrow = "->" if directed else "--"
    lines = [f"{'digraph' if directed else 'graph'} circuit {{"]
    lines.append("  graph [rankdir=BT, newrank=true];")
    for k, v in graph.graph.items():
        lines.append(f"  graph [{_dot_attrs({k: v})}];")
    lines.append("  node [shape=box, style=\"rounded,filled\"];")
    scores = [abs(float(d["score"])) for _, d in graph.nodes(data=True) if isinstance(d.get("score"), (int, float))]
    scale = max(scores) if scores else 0.0
    by_layer: dict[str, list[Any]] = {}
    for v, data in graph.nodes(data=True):
        attrs = dict(data)
        if isinstance(attrs.get("score"), (int, float)) and "fillcolor" not in attrs:
            attrs["fillcolor"] = _fill_colour(float(attrs["score"]), scale)
        lines.append(f"  {_dot_id(v)} [{_dot_attrs(attrs)}];" if attrs else f"  {_dot_id(v)};")
        if "layer" in data:
            by_layer.setdefault(str(data["layer"]), []).append(v)
    for layer, members in by_layer.items():
        lines.append(f"  {{ rank=same; {' '.join(_dot_id(v) + ';' for v in members)} }}  // {layer}")
    for u, v, data in graph.edges(data=True):
        attrs = {("score" if k == "weight" else k): val for k, val in data.items()}
        w = data.get("weight")
        if isinstance(w, (int, float)) and "color" not in attrs:
            attrs["color"] = "red" if w > 0 else ("blue" if w < 0 else "gray")
        lines.append(f"  {_dot_id(u)} {arrow} {_dot_id(v)} [{_dot_attrs(attrs)}];" if attrs
                     else f"  {_dot_id(u)} {arrow} {_dot_id(v)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def export_graph(graph, path: str | Path) -> Path:
    """Write ``graph`` as GraphML (``.graphml``, networkx) or DOT (``.dot``, by hand), atomically."""
    from clipgen.artifacts import atomic_path

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".graphml", ".dot"):
        raise ClipgenError(f"{path}: unknown graph format {path.suffix or '(no suffix)'!r} (use .graphml or .dot)")
    with atomic_path(path) as tmp:
        if suffix == ".graphml":
            import networkx as nx

            nx.write_graphml(graph, tmp)
        else:
            tmp.write_text(dot_text(graph), encoding="utf-8")
    return path


def parse_export(spec: str | Sequence[str], field: str = "export") -> list[str]:
    """``"graphml,dot"`` -> ``["graphml", "dot"]``; ``""`` or ``"none"`` -> no export."""
    parts = spec.replace(",", " ").split() if isinstance(spec, str) else [str(s) for s in spec]
    out: list[str] = []
    for p in (p.strip().lower() for p in parts):
        if not p or p == "none":
            continue
        if p not in EXPORT_FORMATS:
            raise ConfigFieldError(field, f"unknown graph format {p!r} (choose from {', '.join(EXPORT_FORMATS)}, "
                                          "none)")
        if p not in out:
            out.append(p)
    return out

