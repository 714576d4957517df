"""The ViT chain (clipgen.circuits.vit) as functional stages, and its circuits against the per-channel method."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipgen.circuits import attribution as A
from clipgen.circuits import attribution_reference as R
from clipgen.circuits.chain import CircuitChain, metric
from clipgen.circuits.chains import make_chain
from clipgen.circuits.vit import ViTChain
from clipgen.errors import ClipgenError


def _vit(seed: int = 0):
    from clipgen.models.registry import create_model

    torch.manual_seed(seed)
    model, _, _ = create_model("ViT-tiny")
    return model.visual.eval()


@pytest.fixture(scope="module")
def chain():
    return make_chain(_vit(), "ViT-tiny")


def _batch(n=2, seed=5):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 64, 64, generator=g)
    target = F.normalize(torch.randn(1, 64, generator=g), dim=-1).repeat(n, 1)
    return images, target


def _rel(a, b):
    a, b = np.asarray(torch.as_tensor(a).detach(), dtype=np.float64), np.asarray(torch.as_tensor(b).detach(),
                                                                              dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def test_layers_are_the_residual_stream_with_tokens_as_positions(chain):
    assert isinstance(chain, ViTChain) and isinstance(chain, CircuitChain)
    assert chain.family == "vit" and chain.node_kind == "channels"
    # ViT-tiny: 4 blocks, width 128, 64 px in patches of 8: 1 class token + 64 patch tokens; embedding 64
    assert [(la.name, la.shape, la.channel_axis, la.channels, la.positions) for la in chain.layers] == [
        ("input", (3, 64, 64), 0, 3, 4096), ("resblock1", (65, 128), 1, 128, 65), ("resblock2", (65, 128), 1, 128, 65),
        ("resblock3", (65, 128), 1, 128, 65), ("resblock4", (65, 128), 1, 128, 65), ("proj", (64,), 0, 64, 1)]
    assert [la.axis for la in chain.layers] == [1, 2, 2, 2, 2, 1]
    assert chain.module_path("resblock3") == "transformer.resblocks.2" and chain.module_path("proj") == ""
    assert not any(chain.is_linear(i) or chain.has_jvp(i) for i in range(1, chain.n_stages + 1))


def test_every_stage_equals_the_real_modules(chain):
    images, _ = _batch(3)
    ref = R.reference_clean(chain, images)  # forward hooks on the real modules (proj: the tower's output)
    with torch.no_grad():
        ours = chain.activations(images)
        emb = chain.visual(images)
        for i in range(1, chain.n_stages + 1):
            assert _rel(chain.stage(i, ref[i - 1]), ref[i]) < 1e-5, chain.names[i]
    for name, a, b in zip(chain.names, ours, ref, strict=True):
        assert a.shape == b.shape and _rel(a, b) < 1e-5, name
    assert _rel(ours[-1], emb) < 1e-5


def test_out_channels_and_split_input(chain):
    images, _ = _batch(2)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        acts = chain.activations(images)
    for i in range(1, chain.n_stages + 1):
        up, down = chain.layers[i - 1], chain.layers[i]
        x = acts[i - 1]
        cols = torch.randperm(up.channels, generator=g)[: max(1, up.channels // 4)]
        out = torch.randperm(down.channels, generator=g)[: max(1, down.channels // 4)]  # unsorted
        with torch.no_grad():
            assert _rel(chain.stage(i, x, out), acts[i].index_select(down.axis, out)) < 1e-5, down.name
        w = torch.randn(acts[i].index_select(down.axis, out).shape, generator=g)
        xf = x.clone().requires_grad_()
        (gf,) = torch.autograd.grad((chain.stage(i, xf, out) * w).sum(), xf)
        rest, xs = chain.split_input(x, cols, up.axis)
        assert torch.equal(xs, x.index_select(up.axis, cols))
        assert not rest.index_select(up.axis, cols).any()
        ys = chain.stage(i, rest, out, x_sel=xs, in_channels=cols)
        assert _rel(ys, acts[i].index_select(down.axis, out)) < 1e-5, down.name
        (gs,) = torch.autograd.grad((ys * w).sum(), xs)
        assert _rel(gs, gf.index_select(up.axis, cols)) < 1e-5, down.name


@pytest.mark.slow
@pytest.mark.parametrize("rule,steps", [("left", 3), ("midpoint", 2)])
def test_nodes_and_edges_equal_the_per_channel_method(chain, rule, steps):
    images, target = _batch(2)
    ig = A.IGConfig(steps, rule)
    res = A.compute_circuit(chain, images, target, ig=ig, node_fraction=0.1)
    ref_nodes = R.reference_nodes(chain, images, target, ig)
    for la in chain.layers:
        assert res.nodes[la.name].shape == (la.channels,)
        assert _rel(res.nodes[la.name], ref_nodes[la.name]) < 1e-4, la.name
    assert [len(res.selected[la.name]) for la in chain.layers] == [1, 13, 13, 13, 13, 7]
    ref_edges = R.reference_edges(chain, images, target, res.selected, ig)
    scale = max(np.abs(ref_edges[d]).max() for d in chain.names[1:-1])
    for up, down in chain.pairs:
        assert res.edges[down].shape == (len(res.selected[down]), len(res.selected[up]))
        if down == "proj":
            # ln_post is scale-invariant: the interpolated last block gives the same embedding (up to the layer
            # norm's eps), so the edges into proj vanish in both methods (what is left is rounding)
            assert np.abs(res.edges[down]).max() < 1e-3 * scale and np.abs(ref_edges[down]).max() < 1e-3 * scale
        else:
            assert np.abs(ref_edges[down]).max() > 0, down
            assert _rel(res.edges[down], ref_edges[down]) < 1e-4, down


@pytest.mark.slow
def test_completeness_of_the_input_node_scores(chain):
    """Midpoint rule, many steps: the input's scores sum to the metric's change when the image is zeroed.

    (Not so for a residual-stream layer: ``ln_1`` of ``(1 - alpha) x`` stays put until ``(1 - alpha)`` nears the
    layer norm's ``sqrt(eps)``, where it jumps, so the path integral has a spike that a Riemann sum misses.)"""
    images, target = _batch(2, seed=9)
    ig = A.IGConfig(64, "midpoint")
    res = A.compute_circuit(chain, images, target, ig=ig, edges=False)
    with torch.no_grad():
        acts = chain.activations(images)
        clean = metric(acts[-1], target)
        for i in (0,):
            zeroed = metric(chain.run(torch.zeros_like(acts[i]), start=i), target)
            assert abs(res.nodes[chain.names[i]].sum() - float((zeroed - clean).mean())) < 2e-3 * float(
                clean.abs().mean())


@pytest.mark.slow
def test_chunking_by_a_tiny_budget_changes_nothing(chain):
    images, target = _batch(2)
    ig = A.IGConfig(2)
    sel = {la.name: np.arange(min(3, la.channels)) for la in chain.layers}
    a = A.compute_circuit(chain, images, target, ig=ig, selected=sel)
    b = A.compute_circuit(chain, images, target, ig=ig, selected=sel, plan=A.make_plan(chain, budget=1))
    for name in chain.names:
        np.testing.assert_allclose(a.nodes[name], b.nodes[name], rtol=1e-5, atol=1e-7)
    for name in chain.names[1:-1]:
        np.testing.assert_allclose(a.edges[name], b.edges[name], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(a.edges["proj"], b.edges["proj"], atol=1e-6)  # rounding only (see above)



@pytest.mark.slow
def test_batched_and_one_by_one_backward_agree():
    """On the CPU a ViT's edges run one backward per downstream channel; the batched backward gives the same."""
    images, target = _batch(2)
    ig = A.IGConfig(2)
    one = make_chain(_vit(), "ViT-tiny")
    batched = make_chain(_vit(), "ViT-tiny")
    batched.cpu_batched_backward = True
    assert one.cpu_batched_backward is False
    a = A.compute_circuit(one, images, target, ig=ig)
    b = A.compute_circuit(batched, images, target, ig=ig, selected=a.selected)
    for name in one.names[1:-1]:
        np.testing.assert_allclose(a.edges[name], b.edges[name], rtol=1e-5, atol=1e-8)


def test_towers_the_chain_cannot_cut_are_refused():
    v = _vit()
    v.pool_type = "none"
    with pytest.raises(ClipgenError, match=r"model odd: the image tower's pool_type is 'none'.*VisionTransformer"):
        make_chain(v, "odd")
    v = _vit()
    v.transformer.batch_first = False
    with pytest.raises(ClipgenError, match="no batch-first transformer"):
        make_chain(v, "odd")
    with pytest.raises(ClipgenError, match=r"model box: its image tower is a Linear; clipgen circuits supports the "
                                           r"ModifiedResNet family .* and open_clip's VisionTransformer"):
        make_chain(torch.nn.Linear(2, 2), "box")


# -- attention heads as nodes ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def heads():
    return make_chain(_vit(), "ViT-tiny", nodes="heads")


def test_heads_layers(heads):
    assert heads.node_kind == "heads" and heads.names == ["input", "heads1", "heads2", "heads3", "heads4", "proj"]
    # ViT-tiny: width 128, head width 64 -> 2 heads, plus the stream that bypasses them; positions: tokens x width
    assert [(la.shape, la.channels, la.positions) for la in heads.layers[1:-1]] == [((65, 3, 128), 3, 65 * 128)] * 4
    with pytest.raises(ClipgenError, match="^nodes: 'heads' nodes exist for ViTs only"):
        from clipgen.circuits.attribution_reference import perturbed_visual

        make_chain(perturbed_visual("RN-tiny"), "RN-tiny", nodes="heads")


def test_attention_state_splits_the_real_attention_by_head(heads):
    """Each head's write equals the real module with the other heads' out_proj columns zeroed (and no bias); the
    channels sum to the real stream after the attention."""
    import copy

    from clipgen.circuits.vit import attention_state

    images, _ = _batch(2)
    blk = heads.blocks[1]
    with torch.no_grad():
        x = heads.visual.transformer.resblocks[0](heads.visual._embeds(images))
        s = attention_state(blk, x)
        h = blk.ln_1(x)
        real = x + blk.ls_1(blk.attn(h, h, h, need_weights=False)[0])
        assert _rel(s.sum(dim=2), real) < 1e-5
        n_heads, dh = blk.attn.num_heads, 128 // blk.attn.num_heads
        for k in range(n_heads):
            one = copy.deepcopy(blk.attn)
            keep = torch.zeros(128, dtype=torch.bool)
            keep[k * dh:(k + 1) * dh] = True
            one.out_proj.weight[:, ~keep] = 0
            one.out_proj.bias.zero_()
            assert _rel(s[:, :, k], one(h, h, h, need_weights=False)[0]) < 1e-5, k
        assert _rel(s[:, :, n_heads], x + blk.attn.out_proj.bias) < 1e-6


def test_heads_stages_equal_the_real_model(heads):
    images, _ = _batch(3)
    ref = R.reference_clean(heads, images)  # hooks: the block's input and its attention module's input
    with torch.no_grad():
        ours = heads.activations(images)
        for i in range(1, heads.n_stages + 1):
            assert _rel(heads.stage(i, ref[i - 1]), ref[i]) < 1e-5, heads.names[i]
        assert _rel(ours[-1], heads.visual(images)) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("rule,steps", [("left", 3), ("midpoint", 2)])
def test_head_nodes_and_edges_equal_the_per_channel_method(heads, rule, steps):
    images, target = _batch(2, seed=4)
    ig = A.IGConfig(steps, rule)
    res = A.compute_circuit(heads, images, target, ig=ig, node_fraction=0.5)
    ref_nodes = R.reference_nodes(heads, images, target, ig)
    for la in heads.layers:
        assert _rel(res.nodes[la.name], ref_nodes[la.name]) < 1e-4, la.name
    ref_edges = R.reference_edges(heads, images, target, res.selected, ig)
    for _, down in heads.pairs:
        assert res.edges[down].shape == (len(res.selected[down]), len(res.selected[heads.names[heads.index(down) - 1]]))
        assert np.abs(ref_edges[down]).max() > 0, down
        assert _rel(res.edges[down], ref_edges[down]) < 1e-4, down
