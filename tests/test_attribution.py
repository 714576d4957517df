"""IG node scores, node selection and edge matrices: the batched/local method against the published per-channel
method, IG completeness, hand-computed closed forms, and chunking by a memory budget."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipgen.circuits import attribution as A
from clipgen.circuits import attribution_reference as R
from clipgen.circuits.attribution_reference import perturbed_visual
from clipgen.circuits.chain import metric
from clipgen.circuits.resnet import ResNetChain
from clipgen.errors import ConfigFieldError


@pytest.fixture(scope="module")
def chain():
    return ResNetChain(perturbed_visual("RN-tiny"), "RN-tiny")


def _batch(chain, n=3, seed=7):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 64, 64, generator=g)
    target = F.normalize(torch.randn(1, chain.layers[-1].channels, generator=g), dim=-1).repeat(n, 1)
    return images, target


def _rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


# -- settings and node selection -------------------------------------------------------------------------------

def test_ig_alphas_by_rule():
    assert A.IGConfig(4, "left").alphas == [0.0, 0.25, 0.5, 0.75]
    assert A.IGConfig(4, "midpoint").alphas == [0.125, 0.375, 0.625, 0.875]
    assert A.IGConfig().steps == 10 and A.IGConfig().alphas[0] == 0.0 and A.IGConfig().alphas[-1] == 0.9
    with pytest.raises(ConfigFieldError, match="^steps"):
        A.IGConfig(0)
    with pytest.raises(ConfigFieldError, match="^rule.*trapezoid"):
        A.IGConfig(10, "trapezoid")


def test_node_selection_by_hand_with_ties():
    s = np.array([0.1, -0.5, 0.5, 0.2, -0.05, 0.0], dtype=np.float32)
    assert A.select_channels(s, 0.5).tolist() == [1, 2, 3]  # ceil(3): |-0.5| = |0.5| -> lower index first
    assert A.select_channels(s, 0.1).tolist() == [1]  # ceil(0.6) = 1
    assert A.select_channels(s, 1.0).tolist() == [1, 2, 3, 0, 4, 5]
    assert A.select_channels(np.zeros(4), 0.5).tolist() == [0, 1]  # all tied
    # ceil(fraction * C): RN50's layers (3 -> 1, 32 -> 4, 64 -> 7, 256 -> 26, 1024 -> 103, 2048 -> 205), and an
    # exact product stays exact (0.1 * 30 is 3.0000000000000004 in floating point)
    assert [A.n_selected(c, 0.1) for c in (3, 32, 64, 256, 512, 1024, 2048, 30, 10)] == [
        1, 4, 7, 26, 52, 103, 205, 3, 1]
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ConfigFieldError, match="^node_fraction"):
            A.n_selected(10, bad)


# -- the batched/local method equals the per-channel method -------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("rule,steps,pairs", [("left", 3, None), ("midpoint", 2, [("input", "act1"),
                                                                               ("resblock3", "resblock4")])])
def test_nodes_and_edges_equal_the_per_channel_method(chain, rule, steps, pairs):
    images, target = _batch(chain, n=2)
    ig = A.IGConfig(steps, rule)
    res = A.compute_circuit(chain, images, target, ig=ig, node_fraction=0.1)
    ref_nodes = R.reference_nodes(chain, images, target, ig)
    assert list(res.nodes) == chain.names
    for name in chain.names:
        assert res.nodes[name].dtype == np.float32 and res.nodes[name].shape == (chain.layers[chain.index(name)]
                                                                                  .channels,)
        assert _rel(res.nodes[name], ref_nodes[name]) < 1e-4, name
        assert res.selected[name].tolist() == A.select_channels(res.nodes[name], 0.1).tolist()
    ref_edges = R.reference_edges(chain, images, target, res.selected, ig, pairs=pairs)
    assert list(res.edges) == chain.names[1:]  # consecutive pairs only: input->act1 .. resblock4->attnpool
    for up, down in pairs or chain.pairs:
        e = res.edges[down]
        assert e.shape == (len(res.selected[down]), len(res.selected[up]))
        assert np.abs(ref_edges[down]).max() > 0, down
        assert _rel(e, ref_edges[down]) < 1e-4, down
    clean = metric(chain.visual(images), target).detach().numpy()
    np.testing.assert_allclose(res.metric, clean, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_edges_of_a_wide_selection_equal_the_per_channel_method(chain):
    """Many selected channels on both sides (identity and downsample paths overlap the selected inputs)."""
    images, target = _batch(chain, n=2, seed=3)
    ig = A.IGConfig(2, "left")
    g = torch.Generator().manual_seed(0)
    sel = {la.name: torch.randperm(la.channels, generator=g)[: max(1, la.channels // 3)].numpy()
           for la in chain.layers}
    pairs = [("avgpool", "resblock1"), ("resblock1", "resblock2")]
    ours = A.compute_circuit(chain, images, target, ig=ig, selected=sel)
    ref = R.reference_edges(chain, images, target, sel, ig, pairs=pairs)
    for _, down in pairs:
        assert _rel(ours.edges[down], ref[down]) < 1e-4, down


# -- closed forms ------------------------------------------------------------------------------------------------

def test_attnpool_node_scores_match_the_closed_form(chain):
    """m = cos(e, t) is scale-invariant: grad m at (1 - a) e is (t - m e/|e|) / ((1 - a)|e|)."""
    images, target = _batch(chain, n=3, seed=11)
    ig = A.IGConfig(5, "left")
    res = A.compute_circuit(chain, images, target, ig=ig, edges=False)
    with torch.no_grad():
        e = chain.visual(images).double()
    t = target.double()
    norm = e.norm(dim=1, keepdim=True)
    m = (e / norm * t).sum(1, keepdim=True)
    g = (t - m * e / norm) / norm
    factor = sum(1 / (1 - a) for a in ig.alphas) / ig.steps
    expected = -(factor * g * e).mean(0).numpy()
    assert _rel(res.nodes["attnpool"], expected) < 1e-4
    assert abs(res.nodes["attnpool"].sum()) < 1e-5 * np.abs(expected).sum()  # Euler: g . e = 0


@pytest.mark.slow
def test_avgpool_edges_match_the_closed_form(chain):
    """act3 -> avgpool is linear: E[j, u] = 0 for u != j and (2 sum(alpha) / S) * sum_{b,p} c_j^2 / (B^2 P) for u = j,
    with c = the clean avgpool activation."""
    images, target = _batch(chain, n=3, seed=12)
    ig = A.IGConfig(10, "left")
    sel = {la.name: np.arange(min(la.channels, 5)) for la in chain.layers}
    res = A.compute_circuit(chain, images, target, ig=ig, selected=sel)
    with torch.no_grad():
        c = chain.activations(images)[4][:, :5].double()
    b, p = c.shape[0], c.shape[2] * c.shape[3]
    diag = 2 * sum(ig.alphas) / ig.steps * (c ** 2).sum(dim=(0, 2, 3)) / (b * b * p)
    expected = np.diag(diag.numpy())
    assert _rel(res.edges["avgpool"], expected) < 1e-5
    assert np.all(res.edges["avgpool"][~np.eye(5, dtype=bool)] == 0)


def test_left_rule_with_one_step_is_gradient_times_activation(chain):
    """steps = 1, left rule: the score is -(grad at the clean point) * activation, summed over positions, averaged
    over images; computed here with plain autograd on the real model."""
    images, target = _batch(chain, n=2, seed=13)
    res = A.compute_circuit(chain, images, target, ig=A.IGConfig(1, "left"), edges=False)
    x = images.clone().requires_grad_()
    m = metric(chain.visual(x), target)
    (gx,) = torch.autograd.grad(m.sum(), x)
    expected = -(gx * images).sum(dim=(2, 3)).mean(0).numpy()
    assert _rel(res.nodes["input"], expected) < 1e-5


@pytest.mark.slow
def test_ig_completeness_with_the_midpoint_rule(chain):
    """The input layer's node effects sum to metric(zero input) - metric(clean) (averaged over images), better
    and better as the number of steps grows."""
    images, _ = _batch(chain, n=2, seed=14)
    with torch.no_grad():  # a target direction along which the clean and the zero input differ
        e_clean, e_zero = chain.visual(images), chain.visual(torch.zeros_like(images))
        target = F.normalize(e_clean.mean(0) - e_zero.mean(0), dim=0).repeat(2, 1)
        clean = metric(e_clean, target).double().mean()
        zero = metric(e_zero, target).double().mean()
    delta = float(zero - clean)
    assert abs(delta) > 1e-3
    errs = []
    for steps in (1, 4, 16, 64):
        res = A.compute_circuit(chain, images, target, ig=A.IGConfig(steps, "midpoint"), edges=False)
        errs.append(abs(float(res.nodes["input"].astype(np.float64).sum()) - delta))
    assert errs[1] < errs[0] and errs[2] < errs[1] and errs[3] < errs[2] + 1e-7
    assert errs[3] < 0.02 * abs(delta)


# -- memory budget -----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_chunking_by_a_tiny_memory_budget_gives_the_same_numbers(chain):
    images, target = _batch(chain, n=3, seed=15)
    ig = A.IGConfig(3, "left")
    full = A.compute_circuit(chain, images, target, ig=ig, plan=A.make_plan(chain, budget=1 << 34))
    tiny_plan = A.make_plan(chain, budget=1)
    assert tiny_plan.node_rows(0, 9) == 1 and tiny_plan.edge_rows(5, 9) == 1 and tiny_plan.clean_rows(3) == 1
    assert tiny_plan.edge_channels(5, 1, 7) == 1
    tiny = A.compute_circuit(chain, images, target, ig=ig, plan=tiny_plan)
    for name in chain.names:
        assert _rel(tiny.nodes[name], full.nodes[name]) < 1e-5, name
        assert tiny.selected[name].tolist() == full.selected[name].tolist()
    for name in chain.names[1:]:
        assert _rel(tiny.edges[name], full.edges[name]) < 1e-5, name
    np.testing.assert_allclose(tiny.metric, full.metric, rtol=1e-6)


def test_memory_plan_rows_follow_the_budget(chain):
    plan = A.make_plan(chain, budget=10 << 20)
    assert plan.stage_bytes[0] == 0
    # per row: at least the stage's output, at most a few copies of input and output (weights do not count)
    io = [4 * math.prod(la.shape) for la in chain.layers]
    for i in range(1, chain.n_stages + 1):
        assert io[i] <= plan.stage_bytes[i] <= 6 * (io[i - 1] + io[i]), chain.names[i]
    suffix = 2 * sum(plan.stage_bytes[1:]) + 1
    assert plan.node_rows(0, 10_000) == (10 << 20) // suffix
    assert plan.node_rows(chain.n_stages, 7) == 7  # the metric alone: everything fits
    assert plan.edge_rows(1, 3) == 3
    assert A.make_plan(chain, budget=10 << 20, channel_chunk=2).edge_channels(5, 100, 7) == 2


def test_circuit_result_helpers(chain):
    images, target = _batch(chain, n=1)
    res = A.compute_circuit(chain, images, target, ig=A.IGConfig(1), edges=False)
    assert res.edges == {} and res.upstream_of("act1") == "input" and res.metric.shape == (1,)
    assert set(res.timings) == {"nodes", "edges"} and math.isfinite(res.timings["nodes"])


@pytest.mark.slow
def test_forward_and_reverse_edges_agree_on_every_pair(chain):
    images, target = _batch(chain, n=2, seed=16)
    ig = A.IGConfig(3, "left")
    g = torch.Generator().manual_seed(4)
    sel = {la.name: torch.randperm(la.channels, generator=g)[: max(1, la.channels // 6)].numpy()
           for la in chain.layers}
    sel["avgpool"] = np.array([sel["act3"][0], (sel["act3"][0] + 1) % 16])  # the pool maps channel c to c only
    rev = A.compute_circuit(chain, images, target, ig=ig, selected=sel, edge_mode="reverse")
    fwd = A.compute_circuit(chain, images, target, ig=ig, selected=sel, edge_mode="forward")
    for name in chain.names[1:]:
        assert np.abs(rev.edges[name]).max() > 0, name
        assert _rel(fwd.edges[name], rev.edges[name]) < 1e-5, name
    with pytest.raises(ValueError, match="unknown edge mode"):
        A.edge_matrix(chain, 1, images, images, [0], [0], ig, A.make_plan(chain), mode="sideways")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_bf16_autocast_runs_every_path_close_to_fp32(chain, mode):
    """The GPU default (bf16 autocast) on the CPU: the same code paths, within bf16 rounding of fp32."""
    from clipgen.devices import autocast

    images, target = _batch(chain, n=2, seed=17)
    ig = A.IGConfig(3, "left")
    ref = A.compute_circuit(chain, images, target, ig=ig)
    low = A.compute_circuit(chain, images, target, ig=ig, selected=ref.selected, edge_mode=mode,
                            amp=lambda: autocast(torch.device("cpu"), "bf16"))
    for name in chain.names:
        assert low.nodes[name].dtype == np.float32 and _rel(low.nodes[name], ref.nodes[name]) < 0.05, name
    for name in chain.names[1:]:
        if np.abs(ref.edges[name]).max() > 0:
            assert _rel(low.edges[name], ref.edges[name]) < 0.05, name


@pytest.mark.gpu
def test_cuda_matches_cpu():
    """On a GPU: fp32 (TF32 off) equals the CPU result; bf16 autocast (the default there) is close to it."""
    from clipgen.devices import autocast

    cpu = ResNetChain(perturbed_visual("RN-tiny"), "RN-tiny")
    dev = torch.device("cuda")
    gpu = ResNetChain(perturbed_visual("RN-tiny").to(dev), "RN-tiny")
    images, target = _batch(cpu, n=4, seed=18)
    ig = A.IGConfig(4, "left")
    ref = A.compute_circuit(cpu, images, target, ig=ig)
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        exact = A.compute_circuit(gpu, images.to(dev), target.to(dev), ig=ig, selected=ref.selected)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
    low = A.compute_circuit(gpu, images.to(dev), target.to(dev), ig=ig, selected=ref.selected,
                            amp=lambda: autocast(dev, "bf16"))
    for name in cpu.names:
        assert _rel(exact.nodes[name], ref.nodes[name]) < 1e-4, name
        assert _rel(low.nodes[name], ref.nodes[name]) < 0.05, name
    for name in cpu.names[1:]:
        if np.abs(ref.edges[name]).max() > 0:
            assert _rel(exact.edges[name], ref.edges[name]) < 1e-4, name
            assert _rel(low.edges[name], ref.edges[name]) < 0.05, name
