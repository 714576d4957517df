"""Device and precision resolution (pure functions; GPUs faked by their device type)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from clipgen.devices import resolve_precision
from clipgen.errors import ClipgenError

GPU, CPU = SimpleNamespace(type="cuda"), SimpleNamespace(type="cpu")


def test_auto_is_the_published_evaluation_precision_per_model_kind():
    # published: CLIP evaluated in fp16 (nearest: fp16 autocast), the supervised classifier in fp32
    assert resolve_precision("auto", GPU, kind="clip") == "fp16"
    assert resolve_precision("auto", GPU, kind="supervised") == "fp32"
    assert resolve_precision("auto", GPU) == "bf16"  # every other command
    for kind in (None, "clip", "supervised"):
        assert resolve_precision("auto", CPU, kind=kind) == "fp32"
        assert resolve_precision("AUTO", SimpleNamespace(type="mps"), kind=kind) == "fp32"
    with pytest.raises(ValueError, match="unknown model kind"):
        resolve_precision("auto", GPU, kind="vit")


@pytest.mark.parametrize("kind", [None, "clip", "supervised"])
def test_explicit_precisions_win_over_the_kind(kind):
    for p in ("fp32", "bf16", "fp16"):
        assert resolve_precision(p, GPU, kind=kind) == p
    assert resolve_precision("bf16", CPU, kind=kind) == "bf16"
    with pytest.raises(ClipgenError, match="--precision: fp16 autocast is not supported on CPU"):
        resolve_precision("fp16", CPU, kind=kind)
    with pytest.raises(ClipgenError, match="--precision: unknown precision 'fp8'"):
        resolve_precision("fp8", GPU, kind=kind)
