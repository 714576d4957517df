"""The figures of node and circuit similarity: node sharing per layer (every pair, or the highlighted domain's
pairs against the others) and the domain x domain heatmap of a circuit-similarity metric."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clipgen.circuits.similarity_compute import pair_key


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
    from clipgen.analysis.cka_figures import pair_styles

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
