"""Reference code for the circuits: the published per-channel method and test models with live residual branches.

No command uses this module. The tests check :mod:`clipgen.circuits.attribution` against it, and
``benchmarks/circuits.py`` measures the batched computation against it:

* :func:`reference_nodes` and :func:`reference_edges` implement the published per-channel method: the full model,
  forward hooks on the real modules, one backward per downstream channel; :func:`reference_clean` gives the clean
  activations the same way;
* :func:`perturbed_model` / :func:`perturbed_visual`: open_clip initialises every Bottleneck's last batch-norm gain to
  zero, so a freshly created ResNet's residual branches are dead and half of what the circuit code does would go
  untested; these draw every batch-norm parameter and running statistic at random (seeded) instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from clipgen.circuits.attribution import IGConfig, channels_first, requires_grad


@contextlib.contextmanager
def _hooks(chain, replace: tuple[str, Any] | None = None, capture: str | None = None) -> Iterator[dict]:
    """Forward hooks on the real modules: replace a layer's output, capture another's."""
    store: dict[str, Any] = {}
    handles = []
    if replace is not None and replace[0] != "input":
        handles += chain.hook_replace(replace[0], replace[1])
    if capture is not None:
        handles += chain.hook_capture(capture, lambda o: store.__setitem__(capture, o))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def _full_model(chain, images, targets, alphas, layer, value, capture=None):
    """Run the whole classifier on ``len(alphas)`` copies of ``images`` with ``layer`` replaced by ``value``."""
    import torch

    from clipgen.circuits.chain import metric

    k = len(alphas)
    x_in = value if layer == "input" else images.repeat(k, *([1] * (images.dim() - 1)))
    with _hooks(chain, replace=(layer, value), capture=capture) as store:
        z = chain.visual(x_in)
    m = metric(z, targets.repeat(k, 1))
    return m, store.get(capture) if capture else None, torch


def reference_clean(chain, images):
    """Clean activations of every chain layer from the real modules (forward hooks)."""
    import torch

    acts = {"input": images}
    handles = [h for n in chain.names[1:] for h in chain.hook_capture(n, lambda o, n=n: acts.__setitem__(n, o.clone()))]
    try:
        with torch.no_grad():
            chain.visual(images)
    finally:
        for h in handles:
            h.remove()
    return [acts[n] for n in chain.names]


def trainable(module):
    """Parameters with ``requires_grad`` (as in the published scripts, whose backward also fills weight grads)."""
    return requires_grad(module, True, clear_grads=True)


def reference_nodes(chain, images, targets, ig: IGConfig = IGConfig(), layers: Sequence[str] | None = None,
                    clean=None) -> dict[str, Any]:
    """Node scores by the published method: per layer, one full-model pass over all steps and one backward."""
    import torch

    clean = clean or reference_clean(chain, images)
    b = images.shape[0]
    out = {}
    with trainable(chain.visual):
        for name in layers or chain.names:
            la = chain.layers[chain.index(name)]
            a = clean[chain.index(name)]
            x = torch.cat([(1 - al) * a for al in ig.alphas]).requires_grad_()
            m, _, _ = _full_model(chain, images, targets, ig.alphas, name, x)
            m.sum().backward()
            g = x.grad.double().reshape(len(ig.alphas), *a.shape).mean(0)  # reductions in float64
            eff = channels_first(g * -a.double(), la.axis).reshape(b, la.channels, -1).sum(2).mean(0)
            out[name] = eff.detach().cpu().numpy()
    return out


def reference_edges(chain, images, targets, selected: Mapping[str, Any], ig: IGConfig = IGConfig(),
                    pairs: Sequence[tuple[str, str]] | None = None, clean=None) -> dict[str, Any]:
    """Edge matrices by the published method: per downstream channel, one full-model forward over all steps
    (the upstream module's output replaced by the interpolation) and one backward of the MSE objective."""
    import torch
    import torch.nn.functional as F

    clean = clean or reference_clean(chain, images)
    b = images.shape[0]
    out = {}
    with trainable(chain.visual):
        for up, down in pairs or chain.pairs:
            a_up, a_down = clean[chain.index(up)], clean[chain.index(down)]
            l_up, l_down = chain.layers[chain.index(up)], chain.layers[chain.index(down)]
            u_sel = torch.as_tensor(selected[up], dtype=torch.long)
            mat = torch.zeros(len(selected[down]), len(u_sel), dtype=torch.float64)
            for row, j in enumerate(selected[down]):
                x = torch.cat([(1 - al) * a_up for al in ig.alphas]).requires_grad_()
                _, d, _ = _full_model(chain, images, targets, ig.alphas, up, x, capture=down)
                d = channels_first(d.reshape(len(ig.alphas), *a_down.shape), l_down.axis + 1, 2).reshape(
                    len(ig.alphas), b, l_down.channels, -1)
                c = channels_first(a_down, l_down.axis).reshape(b, l_down.channels, -1)
                loss = sum(F.mse_loss(c[:, int(j)], d[k, :, int(j)]) for k in range(len(ig.alphas)))
                loss.backward()
                g = x.grad.double().reshape(len(ig.alphas), *a_up.shape).mean(0)
                eff = channels_first(g * -a_up.double(), l_up.axis).reshape(b, l_up.channels, -1).sum(2).mean(0)
                mat[row] = eff[u_sel].detach().cpu().double()
            out[down] = mat.numpy()
    return out


# ---------------------------------------------------------------------------------------------------------------
# test models with live residual branches


def perturb_batchnorm(model, seed: int = 1) -> None:
    """Draw every batch-norm gain, bias and running statistic of ``model`` at random (seeded), in place."""
    import torch

    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            n = mod.num_features
            mod.weight.data = 0.5 + torch.rand(n, generator=g)
            mod.bias.data = 0.2 * torch.randn(n, generator=g)
            mod.running_mean.data = 0.2 * torch.randn(n, generator=g)
            mod.running_var.data = 0.5 + torch.rand(n, generator=g)


def perturbed_model(name: str = "RN-tiny", seed: int = 0):
    """A freshly created model ``name`` (seeded) with :func:`perturb_batchnorm` applied, in eval mode."""
    import torch

    from clipgen.models.registry import create_model

    torch.manual_seed(seed)
    model, _, _ = create_model(name)
    perturb_batchnorm(model, seed + 1)
    return model.eval()


def perturbed_visual(name: str = "RN-tiny", seed: int = 0):
    """The image tower of :func:`perturbed_model`."""
    return perturbed_model(name, seed).visual
