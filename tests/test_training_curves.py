"""clipgen.training.curves: the training-loss figure beside a run."""

import pytest

from clipgen.runs import read_manifest
from clipgen.training.curves import training_loss_figure
from tests._fixtures_train import train_mixtures, trained_run_dir

FIXTURES = (train_mixtures, trained_run_dir)


@pytest.mark.slow
def test_training_loss_curves_in_the_run_directory(trained_run_dir):
    png = trained_run_dir / "curves" / "training_loss.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    m = read_manifest(trained_run_dir)
    ax = training_loss_figure(m.extra["train_loss"], m.extra["val_loss"]).axes[0]
    train = next(ln for ln in ax.get_lines() if ln.get_label().startswith("training"))
    assert list(train.get_xdata()) == [1, 2]
    assert list(train.get_ydata()) == pytest.approx([m.extra["train_loss"]["1"], m.extra["train_loss"]["2"]])
    assert list(ax.get_xticks()) == [1.0, 2.0]  # whole epochs only
    assert any(ln.get_label().startswith("validation") for ln in ax.get_lines())
