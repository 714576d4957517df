"""clipgen.analysis.sae.model: the SAE variants: TopK, the published initialisation, create_sae."""

from __future__ import annotations

import pytest
import torch

from clipgen.analysis.sae import (
    ACTIVATIONS,
    SAE_CLASSES,
    ReLUSAE,
    SAEArch,
    SparseAutoencoder,
    TopKSAE,
    create_sae,
)
from clipgen.errors import ConfigFieldError


def test_create_sae_builds_the_variant_named_and_the_interface_dispatches():
    assert set(SAE_CLASSES) == set(ACTIVATIONS)
    relu = create_sae("relu", 8, 32, seed=1)
    topk = create_sae("topk", 8, 32, k=3, seed=1)
    assert type(relu) is ReLUSAE and type(topk) is TopKSAE and isinstance(topk, SparseAutoencoder)
    assert topk.arch == SAEArch(d_in=8, d_sae=32, activation="topk", k=3)
    # every variant has the same parameters (state-dict keys of the files written before the variants existed)
    assert list(relu.state_dict()) == list(topk.state_dict()) == ["b_pre", "W_enc", "b_enc", "W_dec"]
    # SparseAutoencoder(arch) is the registered variant, with the same initial weights as create_sae
    same = SparseAutoencoder(SAEArch(d_in=8, d_sae=32, activation="topk", k=3), seed=1)
    assert type(same) is TopKSAE
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), topk.state_dict().values(), strict=True))
    x = torch.randn(20, 8)
    with torch.no_grad():
        assert int((topk.encode(x) > 0).sum(1).max()) <= 3
        pre = relu.pre_activations(x)
        assert torch.equal(relu.activate(pre), torch.relu(pre))
        assert torch.equal(relu.activate_(pre.clone()), relu.activate(pre))
        _, xh = relu(x)
        assert torch.equal(xh, relu.decode(relu.encode(x)))
    with pytest.raises(ConfigFieldError, match="^activation: unknown activation 'gelu'"):
        create_sae("gelu", 8, 32)
    with pytest.raises(ConfigFieldError, match="^activation: unknown activation 'gelu'"):
        SparseAutoencoder(SAEArch(d_in=8, d_sae=32, activation="gelu"))
    with pytest.raises(ConfigFieldError, match="^k: TopK needs"):
        create_sae("topk", 8, 32)


def test_topk_keeps_exactly_k():
    k = 5
    m = SparseAutoencoder(SAEArch(d_in=10, d_sae=64, activation="topk", k=k), seed=3)
    x = torch.randn(200, 10)
    with torch.no_grad():
        pre = m.pre_activations(x)
        f = m.encode(x)
    n_pos = (pre > 0).sum(1)
    active = (f > 0).sum(1)
    assert bool((n_pos >= k).all())  # random SAE: about half the pre-activations are positive
    assert active.tolist() == [k] * 200
    # the kept latents are the k largest pre-activations, with their values
    top = pre.topk(k, dim=1)
    assert torch.equal(f.gather(1, top.indices), top.values)
    # rows with fewer than k positive pre-activations keep only those (ReLU after TopK)
    with torch.no_grad():
        m.b_enc.fill_(-10.0)
        f2 = m.encode(x)
    assert int((f2 > 0).sum(1).max()) < k


def test_published_initialisation_is_the_library_kaiming_on_a_3d_weight():
    d, m_ = 16, 64
    m = SparseAutoencoder(SAEArch(d_in=d, d_sae=m_), seed=5, init="published")
    # torch's fan-in of the library's (components, d_sae, d_in) weight is d_sae * d_in; ReLU gain sqrt(2):
    # bound = sqrt(3) * sqrt(2) / sqrt(d_sae d_in) = sqrt(6 / 1024) here, sqrt(6 / (4096 * 1024)) at the paper's shape
    assert torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(1, 4096, 1024))[0] == 4096 * 1024
    bound = (6 / (d * m_)) ** 0.5
    w = m.W_enc.detach()
    assert w.shape == (d, m_) and float(w.abs().max()) <= bound and float(w.abs().max()) > 0.95 * bound
    assert float(w.std()) == pytest.approx(bound / 3 ** 0.5, rel=0.1)
    b = m.b_enc.detach()  # bias bound 1/sqrt(weight.size(1)) = 1/sqrt(d_sae) (1/64 at the paper's shape)
    assert float(b.abs().max()) <= 1 / 8 and float(b.abs().max()) > 0.9 / 8
    torch.testing.assert_close(m.W_dec.detach().norm(dim=1), torch.ones(m_))
    assert float(m.b_pre.detach().abs().max()) == 0.0
    # the default is nn.Linear's bound 1/sqrt(d_in), 3.2x wider here
    default = SparseAutoencoder(SAEArch(d_in=d, d_sae=m_), seed=5).W_enc.detach()
    assert float(default.abs().max()) > 0.95 / d ** 0.5 > 3 * bound
    with pytest.raises(ValueError, match="unknown SAE initialisation"):
        SparseAutoencoder(SAEArch(d_in=d, d_sae=m_), init="xavier")
