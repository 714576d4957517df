"""clipgen.analysis.sae.curves: the training curves beside the log."""

from __future__ import annotations

import pytest
import torch

from clipgen.analysis.sae import (
    ArraySource,
    TrainingData,
    run_train_sae,
)
from tests._fixtures_sae import (
    planted_fixture,  # noqa: F401 (the `planted` fixture)
    run_log,
    sae_cfg,
)


@pytest.mark.slow
def test_curves_png_beside_the_log(tmp_path, planted):
    from clipgen.analysis.sae import curves_figure, read_log

    x, _ = planted
    run_train_sae(sae_cfg(tmp_path / "run", epochs=2, val_every=128 * 16),
                  TrainingData(ArraySource(x), val=torch.from_numpy(x[:256])), progress=False)
    assert (tmp_path / "run" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = curves_figure(read_log(tmp_path / "run" / "log.jsonl"))
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["loss (mse + l1)", "L0 (active latents per row)", "dead latents", "variance explained"]
    fve = fig.axes[3]
    train_line = next(ln for ln in fve.get_lines() if ln.get_label().startswith("training"))
    logged = [r for r in run_log(tmp_path / "run") if r["kind"] == "train"]
    assert list(train_line.get_xdata()) == [r["step"] for r in logged]  # 64 steps, logged every 8
    assert list(train_line.get_ydata()) == pytest.approx([r["fve"] for r in logged])
    labels = {ln.get_label() for ln in fve.get_lines()}
    assert {"validation", "final model (training rows)"} <= labels
