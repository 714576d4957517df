"""clipgen.analysis.sae.steps: the fused step (hand-written gradients, the published projection), the graph step."""

from __future__ import annotations

import pytest
import torch

from clipgen.analysis.sae import (
    FusedStep,
    SAEArch,
    SparseAutoencoder,
    make_optimizer,
    sae_loss,
)
from tests._fixtures_sae import (
    planted_fixture,  # noqa: F401 (the `planted` fixture)
    )


@pytest.mark.parametrize("activation,scale", [("relu", 1.0), ("relu", 2.5), ("topk", 1.0)])
def test_fused_gradients_equal_autograd(activation, scale):
    arch = SAEArch(d_in=12, d_sae=40, activation=activation, k=6 if activation == "topk" else None,
                   input_scale=scale)
    m = SparseAutoencoder(arch, seed=1)
    with torch.no_grad():
        m.b_pre.copy_(torch.randn(12) * 0.3)
    x = torch.randn(64, 12)
    l1 = 3e-3
    loss, _ = sae_loss(m, x, l1)
    loss.backward()
    ref = {n: p.grad.clone() for n, p in m.named_parameters()}
    step = FusedStep(m, make_optimizer(m, 1e-3, (0.9, 0.999), 1e-8), l1=l1)
    step.grads(x)
    for n, p in m.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-4, atol=1e-7, msg=n)
    # statistics: squared error and L1 sum agree with the autograd loss
    sse, _, l1_sum, l0 = step.stats.tolist()
    assert sse / (64 * 12) + l1 * l1_sum / 64 == pytest.approx(float(loss.detach()), rel=1e-5)
    if activation == "topk":
        assert l0 <= 64 * 6


def test_bf16_gradients_close_to_fp32():
    m = SparseAutoencoder(SAEArch(d_in=32, d_sae=128), seed=0)
    x = torch.randn(256, 32)
    s32 = FusedStep(m, make_optimizer(m, 1e-3, (0.9, 0.999), 1e-8), l1=1e-3)
    s32.grads(x)
    g32 = {n: p.grad.clone() for n, p in m.named_parameters()}
    s16 = FusedStep(m, make_optimizer(m, 1e-3, (0.9, 0.999), 1e-8), l1=1e-3, compute_dtype=torch.bfloat16)
    s16.grads(x)
    for n, p in m.named_parameters():
        rel = float((p.grad - g32[n]).norm() / g32[n].norm())
        assert rel < 0.05, (n, rel)


def _reference_published_steps(m: SparseAutoencoder, batches, l1, lr, betas, eps) -> dict[str, torch.Tensor]:
    """The published update re-derived step by step: autograd gradients of the loss; from the gradient of every
    dictionary vector w_i (a row of W_dec) its component along w_i/|w_i| is removed; a plain Adam step (written
    out); then every dictionary vector is rescaled to unit norm."""
    params = {n: p.detach().clone() for n, p in m.named_parameters()}
    state = {n: (torch.zeros_like(p), torch.zeros_like(p)) for n, p in params.items()}
    ref = SparseAutoencoder(m.arch, seed=0)
    for t, x in enumerate(batches, start=1):
        with torch.no_grad():
            for n, p in ref.named_parameters():
                p.copy_(params[n])
                p.grad = None
        loss, _ = sae_loss(ref, x, l1)
        loss.backward()
        for n, p in ref.named_parameters():
            g = p.grad.clone()
            if n == "W_dec":
                u = params[n] / params[n].norm(dim=1, keepdim=True)
                g = g - (g * u).sum(dim=1, keepdim=True) * u
            m1, v1 = state[n]
            m1 = betas[0] * m1 + (1 - betas[0]) * g
            v1 = betas[1] * v1 + (1 - betas[1]) * g * g
            state[n] = (m1, v1)
            mhat, vhat = m1 / (1 - betas[0] ** t), v1 / (1 - betas[1] ** t)
            params[n] = params[n] - lr * mhat / (vhat.sqrt() + eps)
        params["W_dec"] = params["W_dec"] / params["W_dec"].norm(dim=1, keepdim=True)
    return params


def test_published_step_projects_the_decoder_gradient_before_adam():
    torch.manual_seed(0)
    arch = SAEArch(d_in=5, d_sae=7)
    batches = [torch.randn(32, 5) for _ in range(3)]
    l1, lr, betas, eps = 1e-2, 1e-2, (0.9, 0.999), 1e-3
    base = SparseAutoencoder(arch, seed=3, init="published")
    with torch.no_grad():
        base.b_pre.copy_(torch.randn(5) * 0.3)
    want = _reference_published_steps(base, batches, l1, lr, betas, eps)
    got = {}
    for project in (True, False):
        m = SparseAutoencoder(arch, seed=0)
        m.load_state_dict(base.state_dict())
        step = FusedStep(m, make_optimizer(m, lr, betas, eps), l1=l1, project_decoder_grad=project)
        for x in batches:
            step(x)
        got[project] = {n: p.detach() for n, p in m.named_parameters()}
    for n in want:
        torch.testing.assert_close(got[True][n], want[n], rtol=1e-5, atol=1e-6, msg=n)
    # renormalising after the step alone (the default) is a different update
    assert float((got[False]["W_dec"] - want["W_dec"]).abs().max()) > 1e-3
    torch.testing.assert_close(got[True]["W_dec"].norm(dim=1), torch.ones(7))


@pytest.mark.gpu
@pytest.mark.parametrize("paper", [False, True])
def test_graph_step_matches_eager_on_gpu(planted, paper):
    x, _ = planted
    torch.manual_seed(0)
    results = []
    for mode in ("eager", "graph"):
        m = SparseAutoencoder(SAEArch(d_in=16, d_sae=64), seed=0, init="published" if paper else "default").cuda()
        opt = make_optimizer(m, 1e-2, (0.9, 0.999), 1e-8)
        step = FusedStep(m, opt, l1=3e-2, project_decoder_grad=paper)
        from clipgen.analysis.sae import GraphStep

        run = step if mode == "eager" else GraphStep(step, 128, 16)
        for i in range(8):
            run(torch.from_numpy(x[i * 128:(i + 1) * 128]).cuda())
        results.append({k: v.detach().cpu() for k, v in m.state_dict().items()})
    for k in results[0]:
        torch.testing.assert_close(results[0][k], results[1][k], rtol=1e-4, atol=1e-6)
