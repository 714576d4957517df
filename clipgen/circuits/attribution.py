"""Neuron circuits by integrated gradients: node scores, node selection and edge matrices, computed locally.

Definitions (the paper's; ``a`` = clean activation of a layer, ``g`` = gradient, ``steps`` = S):

* **Node score** of channel ``c`` of layer ``l``: integrated gradients of the true-class logit against a zero
  baseline, ``-(1 / (S * B)) * sum_k sum_{b, p} g_k[b, c, p] * a[b, c, p]`` where ``g_k`` is the gradient of the
  metric at the activation ``(1 - alpha_k) * a`` and ``p`` runs over spatial positions. ``alpha_k = k / S``,
  ``k = 0..S-1`` (``rule="left"``, the paper's left Riemann sum) or ``(k + 1/2) / S`` (``rule="midpoint"``).
* **Node selection**: the top ``ceil(fraction * C)`` channels by ``|score|`` (ties: lower channel index first).
* **Edge** from upstream channel ``u`` (layer ``l-1``) to downstream channel ``j`` (layer ``l``): the same IG
  with the objective ``MSE(clean_down[:, j], down[:, j])`` (a mean over images and positions), where the upstream
  layer is interpolated towards zero and the downstream layer recomputed; one ``(n_down x n_up)`` matrix per pair
  of consecutive layers, over the selected channels.

How (the published code runs one full-model forward and backward per downstream channel):

* one clean pass per batch keeps every layer's activation; with the left rule the same pass, back-propagated
  once, gives every layer's gradient at ``alpha = 0``;
* the node scores of layer ``l`` need the metric's gradient at ``S - 1`` (left) or ``S`` (midpoint) other points:
  one batched pass of the sub-network *after* ``l``, with all steps in the batch (rows chunked to fit memory);
* an edge matrix re-runs only the stage between the two layers (:class:`~clipgen.circuits.resnet.ResNetChain`),
  with all steps in one batch and only the selected downstream channels computed; the per-downstream-channel
  backward passes are one batched ``torch.autograd.grad(..., is_grads_batched=True)`` per chunk of channels.
  ``alpha = 0`` is skipped for edges: the recomputed downstream activation equals the clean one there, so the
  objective's gradient is exactly zero.

:mod:`clipgen.circuits.attribution_reference` implements the published per-channel method (full model, forward hooks
on the real modules, one backward per downstream channel) for the tests and ``benchmarks/circuits.py``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from clipgen.errors import ConfigFieldError

RULES = ("left", "midpoint")


@dataclass(frozen=True)
class IGConfig:
    """Integration settings: ``steps`` points, ``left`` (the paper's) or ``midpoint`` Riemann rule."""

    steps: int = 10
    rule: str = "left"

    def __post_init__(self):
        if self.steps < 1:
            raise ConfigFieldError("steps", f"must be at least 1, not {self.steps}")
        if self.rule not in RULES:
            raise ConfigFieldError("rule", f"unknown rule {self.rule!r} (one of {', '.join(RULES)})")

    @property
    def alphas(self) -> list[float]:
        if self.rule == "left":
            return [k / self.steps for k in range(self.steps)]
        return [(k + 0.5) / self.steps for k in range(self.steps)]


def n_selected(channels: int, fraction: float) -> int:
    """``ceil(fraction * channels)``, at least 1 and at most ``channels``.

    A tiny tolerance keeps exact products exact (``0.1 * 30`` is 3.0000000000000004 in floating point, which the
    published ``math.ceil`` turns into 4).
    """
    if not 0 < fraction <= 1:
        raise ConfigFieldError("node_fraction", f"must be in (0, 1], not {fraction}")
    return max(1, min(channels, math.ceil(fraction * channels - 1e-9)))


def select_channels(scores, fraction: float):
    """Indices of the top ``ceil(fraction * C)`` channels by ``|score|``, best first; ties: lower index first."""
    import numpy as np

    s = np.abs(np.asarray(scores, dtype=np.float64))
    k = n_selected(len(s), fraction)
    order = np.lexsort((np.arange(len(s)), -s))  # primary: -|s|, secondary: index
    return order[:k].astype(np.int64)


@dataclass
class CircuitResult:
    """One circuit: node scores of every layer, the selected channels and the edge matrices.

    ``edges[down]`` is the ``(len(selected[down]), len(selected[up]))`` matrix from the previous chain layer
    ``up`` into ``down``.
    """

    layers: list[str]
    nodes: dict[str, Any]  # name -> (C,) float32 signed scores
    selected: dict[str, Any]  # name -> (k,) int64, best first
    edges: dict[str, Any]  # downstream name -> (k_down, k_up) float32
    metric: Any  # (B,) float32 clean true-class logit per image
    timings: dict[str, float] = field(default_factory=dict)

    def upstream_of(self, down: str) -> str:
        return self.layers[self.layers.index(down) - 1]


# ---------------------------------------------------------------------------------------------------------------
# memory planning


@dataclass
class MemoryPlan:
    """Bytes a stage keeps per row for its backward (measured once), and the budget to chunk rows by."""

    budget: int
    stage_bytes: list[int]  # index i: stage i (0 unused)
    channel_chunk: int | None = None  # fixed channel chunk for edges (None: from the budget)

    def node_rows(self, layer: int, total: int) -> int:
        per_row = 2 * sum(self.stage_bytes[layer + 1:]) + 1
        return max(1, min(total, self.budget // per_row))

    def clean_rows(self, total: int) -> int:
        return max(1, min(total, self.budget // (2 * sum(self.stage_bytes) + 1)))

    def edge_rows(self, stage: int, total: int) -> int:
        return max(1, min(total, self.budget // (4 * self.stage_bytes[stage] + 1)))

    def edge_channels(self, stage: int, rows: int, n: int) -> int:
        if self.channel_chunk:
            return max(1, min(n, self.channel_chunk))
        return max(1, min(n, self.budget // (3 * rows * self.stage_bytes[stage] + 1)))


def default_budget(device) -> int:
    """Half of the free GPU memory on CUDA, 2 GiB elsewhere."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    return 2 << 30


def measure_stage_bytes(chain) -> list[int]:
    """Per-row bytes of the tensors each stage saves for backward, plus its output.

    Measured on batches of 1 and 3 rows and differenced, so what does not grow with the batch (weights, the folded
    and sliced copies of them) is left out.
    """
    import torch

    def run(n: int) -> list[int]:
        sizes = [0]
        x = torch.zeros(n, *chain.layers[0].shape, device=chain.device, dtype=chain.dtype, requires_grad=True)
        for i in range(1, chain.n_stages + 1):
            saved: dict[tuple[int, int], int] = {}

            def pack(t, saved=saved):
                saved[(t.data_ptr(), t.numel())] = t.numel() * t.element_size()
                return t

            with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                y = chain.stage(i, x)
            sizes.append(sum(saved.values()) + y.numel() * y.element_size())
            x = y.detach().requires_grad_()
        return sizes

    one, three = run(1), run(3)
    return [0] + [max(1, (c - a) // 2) for a, c in zip(one[1:], three[1:], strict=True)]


def make_plan(chain, budget: int | None = None, channel_chunk: int | None = None) -> MemoryPlan:
    return MemoryPlan(budget or default_budget(chain.device), measure_stage_bytes(chain), channel_chunk)


@contextlib.contextmanager
def requires_grad(module, flag: bool, *, clear_grads: bool = False) -> Iterator[None]:
    """Every parameter's ``requires_grad`` set to ``flag`` inside the block, restored after it (and the weight
    gradients dropped with ``clear_grads``)."""
    params = list(module.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(flag)
        yield
    finally:
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)
            if clear_grads:
                p.grad = None


def frozen(module):
    """Parameters without ``requires_grad`` inside the block (no weight gradients are computed or kept)."""
    return requires_grad(module, False)


def _chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for s in range(0, total, size):
        yield s, min(total, s + size)


def _interpolated_rows(a, alphas: Sequence[float], r0: int, r1: int):
    """Rows ``r0:r1`` of the stack ``[(1 - alpha) * a for alpha in alphas]`` (step-major), and their image index."""
    import torch

    b = a.shape[0]
    rows = torch.arange(r0, r1, device=a.device)
    img = rows % b
    alpha = torch.tensor(alphas, device=a.device, dtype=a.dtype)[rows // b]
    scale = (1 - alpha).reshape(-1, *([1] * (a.dim() - 1)))
    return scale * a[img], img


def channels_first(t, axis: int, to: int = 1):
    """``t`` with its channel axis ``axis`` moved to ``to`` (a view; ``t`` itself when it is there already)."""
    return t if axis == to else t.movedim(axis, to)


def _reduce_rows(g, a, axis: int = 1):
    """``sum over rows and positions of g * a`` per channel (along ``axis``), in float64: ``(R, ...) -> (C,)``."""
    p = channels_first(g.float() * a.float(), axis)
    return p.reshape(p.shape[0], p.shape[1], -1).sum(dim=(0, 2)).double()


# ---------------------------------------------------------------------------------------------------------------
# the fast method


def clean_pass(chain, images, targets, *, with_grads: bool, plan: MemoryPlan, amp=None):
    """Every layer's clean activation (detached), the clean metric per image and, with ``with_grads``, the
    per-channel sums ``sum_{b,p} g[b,c,p] * a[b,c,p]`` of the metric's gradient at ``alpha = 0`` (one backward)."""
    import torch

    from clipgen.circuits.chain import metric

    amp = amp or contextlib.nullcontext
    n = images.shape[0]
    acts: list[list[Any]] = [[] for _ in chain.names]
    metrics, sums = [], None
    for r0, r1 in _chunks(n, plan.clean_rows(n)):
        x = images[r0:r1]
        if with_grads:
            x = x.detach().requires_grad_()
            with torch.enable_grad(), amp():
                layer_acts = chain.activations(x)
                m = metric(layer_acts[-1], targets[r0:r1])
            grads = torch.autograd.grad(m.sum(), layer_acts)
            part = [_reduce_rows(g, a.detach(), la.axis)
                    for g, a, la in zip(grads, layer_acts, chain.layers, strict=True)]
            sums = part if sums is None else [s + p for s, p in zip(sums, part, strict=True)]
        else:
            with torch.no_grad(), amp():
                layer_acts = chain.activations(x)
                m = metric(layer_acts[-1], targets[r0:r1])
        for i, a in enumerate(layer_acts):
            acts[i].append(a.detach().to(chain.dtype))  # not in the autocast dtype: (1 - alpha) a is formed exactly
        metrics.append(m.detach().float())
    return [torch.cat(a) for a in acts], torch.cat(metrics), sums


def node_scores(chain, acts, targets, ig: IGConfig, plan: MemoryPlan, alpha0_sums=None, amp=None) -> list[Any]:
    """Signed IG node scores ``(C,)`` (float64) of every layer, from one batched suffix pass per layer.

    ``alpha0_sums`` (from :func:`clean_pass`) covers ``alpha = 0``; it is required when the rule includes it. A
    layer whose next stage is linear and homogeneous (the stem's average pool) shares its pass with the next
    layer: interpolating ``act3`` interpolates ``avgpool`` by the same factor, so one backward gives both
    gradients.
    """
    import torch

    from clipgen.circuits.chain import metric

    amp = amp or contextlib.nullcontext
    alphas = [a for a in ig.alphas if a != 0.0]
    with_zero = len(alphas) != len(ig.alphas)
    if with_zero and alpha0_sums is None:
        raise ValueError("the left rule needs the alpha = 0 gradient sums of clean_pass(with_grads=True)")
    b = acts[0].shape[0]
    totals = []
    for la, a, s0 in zip(chain.layers, acts, alpha0_sums or [None] * len(acts), strict=True):
        t = torch.zeros(la.channels, dtype=torch.float64, device=a.device)
        if with_zero:
            t += s0
        totals.append(t)
    n_rows = len(alphas) * b
    i = 0
    while i < len(acts):
        j = i + 1 if i + 1 <= chain.n_stages and chain.is_linear(i + 1) else i  # layers i..j share the pass
        a = acts[i]
        for r0, r1 in _chunks(n_rows, plan.node_rows(i, n_rows)):
            x, img = _interpolated_rows(a, alphas, r0, r1)
            x.requires_grad_()
            with torch.enable_grad(), amp():
                hs = [x]
                for k in range(i + 1, j + 1):
                    hs.append(chain.stage(k, hs[-1]))
                m = metric(chain.run(hs[-1], start=j), targets[img])
            grads = torch.autograd.grad(m.sum(), hs)
            for k, g in zip(range(i, j + 1), grads, strict=True):
                totals[k] += _reduce_rows(g, acts[k][img], chain.layers[k].axis)
            del hs, grads, m, x
        i = j + 1
    return [-t / (ig.steps * b) for t in totals]


EDGE_MODES = ("auto", "reverse", "forward")


def edge_matrix(chain, stage: int, up, down, up_sel, down_sel, ig: IGConfig, plan: MemoryPlan, amp=None,
                mode: str = "auto"):
    """The ``(len(down_sel), len(up_sel))`` IG edge matrix of stage ``stage`` (float64), computed locally.

    Only the stage is re-run, on all integration steps at once, computing only the selected downstream channels,
    with the upstream input split (:meth:`~clipgen.circuits.resnet.ResNetChain.split_input`) so derivatives reach
    only the selected upstream channels. ``E[j, u] = -(1 / (S B)) sum_k <v_kj, J_k (a_u e_u)>`` with ``v_kj`` the
    objective's gradient (non-zero on channel ``j`` only) and ``J_k`` the stage's Jacobian at step ``k``:

    * ``reverse``: one backward pass per selected downstream channel ``j`` (``J^T v_j``), batched with
      ``torch.autograd.grad(..., is_grads_batched=True)`` (one after the other on the CPU for a chain whose
      ``cpu_batched_backward`` is false: a ViT's batched backward through attention and layer norms is slower there);
    * ``forward``: one forward-mode pass per selected upstream channel ``u`` (``J a_u e_u``,
      :meth:`~clipgen.circuits.resnet.ResNetChain.linearize`), the directions batched with the rows (every stage
      but the attention pool; that one stays reverse);
    * ``auto``: forward where the stage has it and there are fewer upstream than downstream channels (a
      stage that widens, e.g. the first block of every residual stage, costs half), reverse otherwise.
    """
    import torch

    if mode not in EDGE_MODES:
        raise ValueError(f"unknown edge mode {mode!r} (one of {', '.join(EDGE_MODES)})")
    amp = amp or contextlib.nullcontext
    b = up.shape[0]
    alphas = [a for a in ig.alphas if a != 0.0]  # the objective's gradient vanishes at alpha = 0
    up_sel = torch.as_tensor(up_sel, dtype=torch.long, device=up.device)
    down_sel = torch.as_tensor(down_sel, dtype=torch.long, device=up.device)
    nj, nu = len(down_sel), len(up_sel)
    total = torch.zeros(nj, nu, dtype=torch.float64, device=up.device)
    if not alphas or nj == 0 or nu == 0:
        return total
    forward = chain.has_jvp(stage) and (mode == "forward" or (mode == "auto" and nu < nj))
    ax_up, ax_down = chain.layers[stage - 1].axis, chain.layers[stage].axis  # channel axes (1: channels first)
    clean = channels_first(down.index_select(ax_down, down_sel), ax_down)
    norm = 2.0 / (b * chain.layers[stage].positions)  # d/dy of mean over (images, positions) of (y - clean)^2
    n_rows = len(alphas) * b
    for r0, r1 in _chunks(n_rows, plan.edge_rows(stage, n_rows)):
        x, img = _interpolated_rows(up, alphas, r0, r1)
        rest, xs = chain.split_input(x, up_sel, ax_up)
        del x
        a_up = channels_first(up[img].index_select(ax_up, up_sel), ax_up)
        if forward:
            xs = xs.detach()
            with torch.no_grad(), amp():
                y, apply = chain.linearize(stage, rest, xs, up_sel, down_sel)
            resid = ((channels_first(y, ax_down).float() - clean[img].float()) * norm).reshape(r1 - r0, nj, -1)
            cu = plan.edge_channels(stage, r1 - r0, nu)
            for u0, u1 in _chunks(nu, cu):
                t = torch.zeros((u1 - u0, *xs.shape), dtype=xs.dtype, device=xs.device)
                idx = torch.arange(u1 - u0, device=xs.device)
                channels_first(t, ax_up + 1, 2)[idx, :, u0 + idx] = a_up[:, u0:u1].transpose(0, 1).to(xs.dtype)
                with torch.no_grad(), amp():
                    dy = channels_first(apply(t), ax_down + 1, 2)
                total[:, u0:u1] += torch.einsum("urjp,rjp->ju", dy.float().reshape(u1 - u0, r1 - r0, nj, -1),
                                                resid).double()
                del t, dy
            del y
        else:
            with torch.enable_grad(), amp():
                y = chain.stage(stage, rest, down_sel, x_sel=xs, in_channels=up_sel)
            if not y.requires_grad:  # no selected downstream channel depends on a selected upstream one
                continue
            resid = (channels_first(y.detach(), ax_down).float() - clean[img].float()) * norm
            a_flat = a_up.float().reshape(r1 - r0, nu, -1)
            one_by_one = not up.is_cuda and not getattr(chain, "cpu_batched_backward", True)
            cc = 1 if one_by_one else plan.edge_channels(stage, r1 - r0, nj)
            for c0, c1 in _chunks(nj, cc):
                v = torch.zeros((c1 - c0, *y.shape), dtype=y.dtype, device=y.device)
                idx = torch.arange(c1 - c0, device=y.device)
                channels_first(v, ax_down + 1, 2)[idx, :, c0 + idx] = resid[:, c0:c1].transpose(0, 1).to(y.dtype)
                if one_by_one:
                    (g,) = torch.autograd.grad(y, xs, v[0], retain_graph=c1 < nj)
                    g = g.unsqueeze(0)
                else:
                    (g,) = torch.autograd.grad(y, xs, v, is_grads_batched=True, retain_graph=c1 < nj)
                g = channels_first(g, ax_up + 1, 2).float()
                total[c0:c1] += torch.einsum("crup,rup->cu", g.reshape(c1 - c0, r1 - r0, nu, -1), a_flat).double()
                del v, g
            del y
        del xs, rest
    return -total / (ig.steps * b)


def compute_circuit(chain, images, targets, *, ig: IGConfig = IGConfig(), node_fraction: float = 0.1,
                    plan: MemoryPlan | None = None, amp=None, selected: Mapping[str, Any] | None = None,
                    edges: bool = True, edge_mode: str = "auto") -> CircuitResult:
    """Nodes, selected channels and edges of one circuit (one batch of images of one class and domain).

    ``images`` ``(B, 3, H, W)`` on the chain's device; ``targets`` ``(B, D)`` the normalised class text embedding
    of each image's true class. ``selected`` overrides the node selection (tests and benchmarks use it).
    """
    import time

    import torch

    plan = plan or make_plan(chain)
    times: dict[str, float] = {}
    sync = torch.cuda.synchronize if images.is_cuda else (lambda: None)
    t0 = time.perf_counter()
    with frozen(chain.visual):
        left = 0.0 in ig.alphas
        acts, m, sums = clean_pass(chain, images, targets, with_grads=left, plan=plan, amp=amp)
        scores = node_scores(chain, acts, targets, ig, plan, alpha0_sums=sums, amp=amp)
        sync()
        times["nodes"] = time.perf_counter() - t0
        nodes = {name: s.float().cpu().numpy() for name, s in zip(chain.names, scores, strict=True)}
        sel = {name: (select_channels(nodes[name], node_fraction) if selected is None else
                      torch.as_tensor(selected[name]).cpu().numpy().astype("int64")) for name in chain.names}
        mats = {}
        if edges:
            for i in range(1, chain.n_stages + 1):
                up, down = chain.names[i - 1], chain.names[i]
                e = edge_matrix(chain, i, acts[i - 1], acts[i], sel[up], sel[down], ig, plan, amp, edge_mode)
                mats[down] = e.float().cpu().numpy()
        sync()
        times["edges"] = time.perf_counter() - t0 - times["nodes"]
    return CircuitResult(list(chain.names), nodes, sel, mats, m.cpu().numpy(), times)
