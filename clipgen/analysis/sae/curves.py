"""Training curves of an SAE run: ``OUT/curves.png`` from ``OUT/log.jsonl``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipgen.analysis.sae.io import LOG_FILE, read_log

CURVES_FILE = "curves.png"


def curves_figure(records: Sequence[dict[str, Any]]):
    """Loss, L0, dead latents and variance explained over training steps: the training log's intervals (means
    over each interval), validation passes and the final model's pass (a Figure, not saved)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = (("loss", "loss (mse + l1)"), ("l0", "L0 (active latents per row)"), ("dead", "dead latents"),
              ("fve", "variance explained"))
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), squeeze=False)
    for ax, (key, title) in zip(axes.flat, panels, strict=True):
        for kind, style in (("train", {"marker": "o", "ms": 3, "lw": 1.4, "label": "training (interval mean)"}),
                            ("val", {"marker": "s", "ms": 4, "lw": 1.0, "ls": "--", "label": "validation"}),
                            ("final", {"marker": "*", "ms": 11, "lw": 0, "color": "crimson",
                                       "label": "final model (training rows)"})):
            pts = [(r["step"], r[key]) for r in records if r.get("kind") == kind and r.get(key) is not None]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, **style)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_curves(out: str | Path) -> Path:
    """Write ``OUT/curves.png`` from ``OUT/log.jsonl`` (atomically)."""
    import matplotlib.pyplot as plt

    from clipgen.artifacts import atomic_path

    path = Path(out) / CURVES_FILE
    fig = curves_figure(read_log(Path(out) / LOG_FILE))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path

