"""clipgen.analysis.sae.io: SAE files: loading errors and the width check."""

from __future__ import annotations

import pytest
import torch

from clipgen.analysis.sae import (
    SAEArch,
    check_width,
    load_sae,
)
from clipgen.errors import ClipgenError


def test_load_sae_errors_and_width_check(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ClipgenError, match="bad.pt: unreadable SAE file"):
        load_sae(bad)
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(ClipgenError, match="not a clipgen SAE"):
        load_sae(tmp_path / "other.pt")
    with pytest.raises(ClipgenError, match="no sae.pt and no checkpoints"):
        load_sae(tmp_path)
    arch = SAEArch(d_in=1024, d_sae=4096)
    with pytest.raises(ClipgenError) as e:
        check_width("run/sae.pt", arch, "store.h5", "embedding", 512)
    assert str(e.value).startswith("run/sae.pt: SAE expects 1024-wide inputs, but layer 'embedding' of store.h5 "
                                   "is 512 wide")
