"""Evaluating an SAE on rows, and dead-latent resampling.

Resampling is Anthropic's recipe ("Towards Monosemanticity", 2023): latents that have not fired for a window are
re-initialised from inputs drawn with probability proportional to their squared loss, and their Adam state is
reset. The published configuration never resamples: ``resample_every=0`` reproduces that.
"""

from __future__ import annotations

import numpy as np
import torch

from clipgen.analysis.sae.model import SparseAutoencoder
from clipgen.errors import ClipgenError


@torch.no_grad()
def evaluate(model: SparseAutoencoder, x: torch.Tensor, l1: float, *, chunk: int = 8192) -> dict[str, float]:
    """Loss parts, L0, fraction of variance explained and never-active latents of ``model`` on rows ``x``."""
    dev = model.W_enc.device
    s = model.arch.input_scale
    d = model.arch.d_in
    sse = l1s = l0s = 0.0
    n = 0
    sum_x = torch.zeros(d, dtype=torch.float64, device=dev)
    sumsq = 0.0
    fired = torch.zeros(model.arch.d_sae, dtype=torch.bool, device=dev)
    for a in range(0, x.shape[0], chunk):
        xb = x[a:a + chunk].to(dev, torch.float32)
        if s != 1.0:
            xb = xb * s
        f = model.activate(model.pre_activations(xb))
        e = model.decode_scaled(f) - xb
        sse += float(e.double().pow(2).sum())
        l1s += float(f.double().sum())
        l0s += float((f > 0).sum())
        fired |= (f > 0).any(dim=0)
        sum_x += xb.double().sum(dim=0)
        sumsq += float(xb.double().pow(2).sum())
        n += xb.shape[0]
    if n == 0:
        raise ClipgenError("no validation rows")
    sst = sumsq - float(sum_x.pow(2).sum()) / n
    mse = sse / (n * d)
    return {"loss": mse + l1 * l1s / n, "mse": mse, "l1": l1s / n, "l1_loss": l1 * l1s / n, "l0": l0s / n,
            "fve": 1.0 - sse / sst if sst > 0 else float("nan"), "dead": int((~fired).sum()),
            "dead_fraction": float((~fired).float().mean()), "rows": n}


@torch.no_grad()
def resample_probabilities(model: SparseAutoencoder, inputs: torch.Tensor, *, l1: float = 0.0,
                           chunk: int = 8192) -> np.ndarray:
    """Probability of each input (raw rows) to be drawn by the resampler: proportional to the square of its loss.

    The loss is ``mean_j (x_s - x_hat_s)_j^2 + l1 * sum_k |f_k|``: with ``l1 = 0`` (the default) the
    reconstruction error alone, with the training coefficient the total loss, as the published library does.
    Uniform when every loss is 0.
    """
    dev, s = model.W_enc.device, model.arch.input_scale
    losses = []
    for a in range(0, inputs.shape[0], chunk):
        xb = inputs[a:a + chunk].to(dev, torch.float32)
        if s != 1.0:
            xb = xb * s
        f = model.activate(model.pre_activations(xb))
        loss = (model.decode_scaled(f) - xb).pow(2).mean(dim=1).double()
        if l1:
            loss = loss + l1 * f.abs().sum(dim=1).double()
        losses.append(loss.cpu())
    p = torch.cat(losses).numpy() ** 2
    total = p.sum()
    return p / total if total > 0 and np.isfinite(total) else np.full(len(p), 1.0 / len(p))


@torch.no_grad()
def resample_dead_latents(model: SparseAutoencoder, optimizer: torch.optim.Optimizer, dead: torch.Tensor,
                          inputs: torch.Tensor, rng: np.random.Generator, *, encoder_scale: float = 0.2,
                          chunk: int = 8192, l1: float = 0.0) -> int:
    """Re-initialise ``dead`` latents (indices) from ``inputs`` (raw rows); returns how many were resampled.

    Anthropic's recipe: each input gets probability proportional to the square of its loss
    (:func:`resample_probabilities`: the reconstruction loss, plus ``l1 * sum |f|`` when ``l1`` is given); one
    input is drawn (with replacement) per dead latent; its centred, unit-normalised vector ``v = (x_s - b_pre)/|.|``
    becomes the latent's dictionary vector, and ``v * encoder_scale * mean |encoder vector of live latents|`` its
    encoder vector; its encoder bias is set to 0 and the Adam moments of all three are reset.
    """
    dead = dead.to(model.W_enc.device).long()
    nd = int(dead.numel())
    if nd == 0 or inputs.shape[0] == 0:
        return 0
    dev, s = model.W_enc.device, model.arch.input_scale
    p = resample_probabilities(model, inputs, l1=l1, chunk=chunk)
    pick = rng.choice(len(p), size=nd, replace=True, p=p)
    x = inputs[torch.from_numpy(pick).to(inputs.device)].to(dev, torch.float32)
    if s != 1.0:
        x = x * s
    v = x - model.b_pre
    v = v / torch.linalg.vector_norm(v, dim=1, keepdim=True).clamp_min(1e-12)
    alive = torch.ones(model.arch.d_sae, dtype=torch.bool, device=dev)
    alive[dead] = False
    enc_norms = torch.linalg.vector_norm(model.W_enc, dim=0)
    mean_norm = float(enc_norms[alive].mean()) if bool(alive.any()) else 1.0
    model.W_dec.index_copy_(0, dead, v)
    model.W_enc.index_copy_(1, dead, (v * (encoder_scale * mean_norm)).t().contiguous())
    model.b_enc.index_fill_(0, dead, 0.0)
    for param, dim in ((model.W_dec, 0), (model.W_enc, 1), (model.b_enc, 0)):
        st = optimizer.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            if key in st:
                st[key].index_fill_(dim, dead, 0.0)
    return nd
