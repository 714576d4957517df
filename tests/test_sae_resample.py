"""clipgen.analysis.sae.resample: evaluation and dead-latent resampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipgen.analysis.sae import (
    FusedStep,
    SAEArch,
    SparseAutoencoder,
    evaluate,
    make_optimizer,
    resample_dead_latents,
    resample_probabilities,
    sae_loss,
)


def test_evaluate_matches_loss():
    m = SparseAutoencoder(SAEArch(d_in=8, d_sae=32, input_scale=1.7), seed=0)
    x = torch.randn(300, 8) + 0.5
    ev = evaluate(m, x, 1e-2, chunk=64)
    loss, parts = sae_loss(m, x, 1e-2)
    assert ev["loss"] == pytest.approx(float(loss.detach()), rel=1e-5)
    assert ev["l0"] == pytest.approx(float(parts["l0"]), rel=1e-6)
    xs = x.double() * 1.7
    with torch.no_grad():
        err = (m.decode_scaled(m.encode(x)).double() - xs).pow(2).sum()
    fve = 1 - float(err) / float((xs - xs.mean(0)).pow(2).sum())
    assert ev["fve"] == pytest.approx(fve, rel=1e-5)


def test_resample_sets_vectors_and_resets_adam():
    m = SparseAutoencoder(SAEArch(d_in=6, d_sae=20), seed=0)
    opt = make_optimizer(m, 1e-3, (0.9, 0.999), 1e-8)
    step = FusedStep(m, opt, l1=1e-3)
    x = torch.randn(50, 6)
    step(x)
    dead = torch.tensor([2, 7])
    # only one input with non-zero loss weight: make every other input perfectly reconstructable is hard, so use
    # a single-row input set
    inp = x[:1]
    n = resample_dead_latents(m, opt, dead, inp, np.random.default_rng(0))
    assert n == 2
    v = (inp[0] - m.b_pre.detach())
    v = v / v.norm()
    for i in (2, 7):
        torch.testing.assert_close(m.W_dec.detach()[i], v)
        assert float(m.b_enc.detach()[i]) == 0.0
        cos = torch.nn.functional.cosine_similarity(m.W_enc.detach()[:, i], v, dim=0)
        assert float(cos) == pytest.approx(1.0, abs=1e-6)
        assert float(opt.state[m.W_dec]["exp_avg"][i].abs().sum()) == 0.0
        assert float(opt.state[m.W_enc]["exp_avg_sq"][:, i].abs().sum()) == 0.0
    alive = [j for j in range(20) if j not in (2, 7)]
    mean_norm = float(m.W_enc.detach()[:, alive].norm(dim=0).mean())
    assert float(m.W_enc.detach()[:, 2].norm()) == pytest.approx(0.2 * mean_norm, rel=1e-5)


def test_published_resample_weights_are_the_squared_total_loss():
    torch.manual_seed(1)
    m = SparseAutoencoder(SAEArch(d_in=4, d_sae=6), seed=2)
    with torch.no_grad():
        m.b_enc.add_(0.3)  # some latents active on every input, so the L1 term matters
    x = torch.randn(9, 4)
    xn = x.double().numpy()
    we, be, wd, bp = (t.detach().double().numpy() for t in (m.W_enc, m.b_enc, m.W_dec, m.b_pre))
    f = np.maximum((xn - bp) @ we + be, 0.0)
    mse = (((f @ wd + bp) - xn) ** 2).mean(axis=1)
    for l1 in (0.0, 0.05):
        loss = mse + l1 * np.abs(f).sum(axis=1)
        want = loss ** 2 / (loss ** 2).sum()
        np.testing.assert_allclose(resample_probabilities(m, x, l1=l1), want, rtol=1e-5)
    assert np.abs(resample_probabilities(m, x, l1=0.05) - resample_probabilities(m, x)).max() > 1e-3
