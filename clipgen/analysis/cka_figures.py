"""The CKA figures: similarity vs layer, one line per domain pair, and the pairs of one domain vs all others.

They plot a :class:`~clipgen.analysis.cka_sweep.CKAResult` (``result``: its ``layers``, ``pairs`` and ``table()``).
:func:`pair_styles` also styles the per-pair plots of the circuit similarity.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


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


def plot_pairs(result: Any, subset: str, kernel: str, estimator: str, path: Path,
               highlight: str | None = None) -> Path:
    """Similarity vs layer, one line per domain pair (the pairs with ``highlight`` stand out)."""
    import matplotlib.pyplot as plt

    fig = pairs_figure(result, subset, kernel, estimator, highlight)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def pairs_figure(result: Any, subset: str, kernel: str, estimator: str, highlight: str | None = None):
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


def plot_highlight(result: Any, subset: str, kernel: str, estimator: str, highlight: str, path: Path) -> Path:
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


def _decorate(ax, result: Any, subset: str, kernel: str, estimator: str) -> None:
    ax.set_xticks(np.arange(len(result.layers)))
    ax.set_xticklabels(result.layers, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(f"{kernel} CKA ({estimator} HSIC)")
    ax.set_title(f"cross-domain CKA of class means, subset '{subset}'", fontsize=10)
    ax.grid(alpha=0.3)
