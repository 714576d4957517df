"""The training-loss figure of a run (CLIP or supervised): ``RUN/curves/training_loss.png``."""

from __future__ import annotations

from pathlib import Path

CURVES_DIR = "curves"
TRAINING_LOSS_FIGURE = "training_loss.png"


def training_loss_figure(train_loss: dict, val_loss: dict, title: str = "", *, ylabel: str = "contrastive loss",
                         val_label: str = "validation (clip_val_loss)"):
    """Training loss (the trainer's running mean over each epoch's logged steps) and validation loss per epoch (a
    Figure, not saved)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clipgen.evaluation.summary import epoch_axis

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    epochs: list[int] = []
    for losses, label, style in ((train_loss, "training (mean over the epoch)", "-"),
                                 (val_loss, val_label, "--")):
        pts = sorted((int(e), float(v)) for e, v in losses.items() if v is not None)
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, marker="o", ms=4, ls=style, label=label)
            epochs += list(xs)
    epoch_axis(ax, epochs)
    ax.set_ylim(bottom=0)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if epochs:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_training_curves(run_dir: Path, train_loss: dict, val_loss: dict, **labels: str) -> Path:
    """``RUN/curves/training_loss.png`` (atomically); ``labels``: see :func:`training_loss_figure`."""
    import matplotlib.pyplot as plt

    from clipgen.artifacts import atomic_path

    path = Path(run_dir) / CURVES_DIR / TRAINING_LOSS_FIGURE
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = training_loss_figure(train_loss, val_loss, f"training loss, {Path(run_dir).name}", **labels)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
