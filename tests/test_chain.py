"""The RN chain as functional stages: equal to the real modules, output/input channel subsets, no in-place damage."""

import pytest
import torch

from clipgen.circuits.attribution_reference import perturbed_visual, reference_clean
from clipgen.circuits.chain import metric, pairs_of
from clipgen.circuits.resnet import ResNetChain, chain_names
from clipgen.errors import ClipgenError


@pytest.fixture(scope="module")
def visual():
    return perturbed_visual("RN-tiny")


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(5))


def _rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def test_names_shapes_and_pairs(visual):
    ch = ResNetChain(visual, "RN-tiny")
    assert ch.names == ["input", "act1", "act2", "act3", "avgpool", "resblock1", "resblock2", "resblock3",
                        "resblock4", "attnpool"] == chain_names(4)
    # RN-tiny: width 16, 64 px: stem at 32x32 (8, 8, 16 channels), pool to 16x16, blocks 64..512, embed 64
    assert [(la.name, la.shape) for la in ch.layers] == [
        ("input", (3, 64, 64)), ("act1", (8, 32, 32)), ("act2", (8, 32, 32)), ("act3", (16, 32, 32)),
        ("avgpool", (16, 16, 16)), ("resblock1", (64, 16, 16)), ("resblock2", (128, 8, 8)),
        ("resblock3", (256, 4, 4)), ("resblock4", (512, 2, 2)), ("attnpool", (64,))]
    assert ch.layers[3].positions == 1024 and ch.layers[-1].positions == 1
    assert ch.pairs == pairs_of(ch.names) and ch.pairs[0] == ("input", "act1") and ch.pairs[-1] == (
        "resblock4", "attnpool") and len(ch.pairs) == 9
    assert ch.module_path("input") == "conv1" and ch.module_path("resblock2") == "layer2.0"
    assert [i for i in range(1, ch.n_stages + 1) if ch.is_linear(i)] == [4]
    with pytest.raises(ClipgenError, match="unknown circuit layer 'layer9'"):
        ch.index("layer9")


@pytest.mark.slow
def test_rn_small_has_two_blocks_per_stage():
    ch = ResNetChain(perturbed_visual("RN-small"), "RN-small")
    assert ch.names == chain_names(8) and ch.module_path("resblock4") == "layer2.1"


@pytest.mark.parametrize("channels_last", [True, False])
def test_every_stage_equals_the_real_modules(visual, images, channels_last):
    ch = ResNetChain(visual, "RN-tiny", channels_last=channels_last)
    ref = reference_clean(ch, images)  # forward hooks on the real modules
    with torch.no_grad():
        ours = ch.activations(images)
        emb = visual(images)
    assert len(ours) == len(ref) == 10
    for name, a, b in zip(ch.names, ours, ref, strict=True):
        assert a.shape == b.shape, name
        assert _rel(a, b) < 1e-5, name
    assert _rel(ours[-1], emb) < 1e-5
    # and stage by stage from the real modules' own inputs (errors do not compound)
    with torch.no_grad():
        for i in range(1, ch.n_stages + 1):
            assert _rel(ch.stage(i, ref[i - 1]), ref[i]) < 1e-5, ch.names[i]


def test_out_channels_equal_slices(visual, images):
    ch = ResNetChain(visual, "RN-tiny")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        acts = ch.activations(images)
        for i in range(1, ch.n_stages + 1):
            full = ch.stage(i, acts[i - 1])
            c = full.shape[1]
            sub = torch.randperm(c, generator=g)[: max(1, c // 3)]  # unsorted
            part = ch.stage(i, acts[i - 1], out_channels=sub)
            assert part.shape == (full.shape[0], len(sub), *full.shape[2:])
            assert _rel(part, full[:, sub]) < 1e-5, ch.names[i]


def test_split_input_gives_the_same_values_and_the_selected_gradients(visual, images):
    ch = ResNetChain(visual, "RN-tiny")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        acts = ch.activations(images)
    for i in range(1, ch.n_stages + 1):
        x = acts[i - 1]
        c_in, c_out = x.shape[1], acts[i].shape[1]
        cols = torch.randperm(c_in, generator=g)[: max(1, c_in // 4)]
        out = torch.randperm(c_out, generator=g)[: max(1, c_out // 4)]
        if i in (4, 5):  # identity-like paths: make some output channels also selected inputs
            out = torch.cat([cols[:1], out])[: max(1, c_out // 4)]
        w = torch.randn(x.shape[0], len(out), *acts[i].shape[2:], generator=g)
        xf = x.clone().requires_grad_()
        yf = ch.stage(i, xf, out)
        (gf,) = torch.autograd.grad((yf * w).sum(), xf)
        rest, xs = ch.split_input(x, cols)
        assert torch.equal(rest[:, cols], torch.zeros_like(rest[:, cols])) and torch.equal(xs, x[:, cols])
        ys = ch.stage(i, rest, out, x_sel=xs, in_channels=cols)
        assert _rel(ys, yf.detach()) < 1e-5, ch.names[i]
        (gs,) = torch.autograd.grad((ys * w).sum(), xs)
        assert gs.shape == (x.shape[0], len(cols), *x.shape[2:])
        assert _rel(gs, gf[:, cols]) < 1e-5, ch.names[i]


def test_held_tensors_survive_in_place_modules(visual, images):
    """The real modules run in-place ReLUs and ``out += identity``; the chain's held activations never change."""
    ch = ResNetChain(visual, "RN-tiny")
    with torch.no_grad():
        acts = ch.activations(images)
        before = [a.clone() for a in acts]
        for i in range(1, ch.n_stages + 1):  # re-run every stage (and the real model) on the held tensors
            ch.stage(i, acts[i - 1])
            ch.stage(i, acts[i - 1], out_channels=torch.tensor([0]))
        visual(acts[0])
        for blk in (visual.layer1[0], visual.layer2[0]):
            blk(acts[4] if blk is visual.layer1[0] else acts[5])
    for name, a, b in zip(ch.names, acts, before, strict=True):
        assert torch.equal(a, b), name
    # the real module does modify its own input-side tensors in place: a hook-held output of bn1 is changed by
    # act1 (inplace=True), which is why the chain never relies on module outputs it did not create
    held = {}

    def grab(_m, _i, o):
        held["bn1"] = (o, o.clone())

    h = visual.bn1.register_forward_hook(grab)
    try:
        with torch.no_grad():
            visual(images)
    finally:
        h.remove()
    o, copy = held["bn1"]
    assert (copy < 0).any() and not torch.equal(o, copy)


def test_metric_is_the_true_class_cosine():
    e = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    t = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    assert torch.allclose(metric(e, t), torch.tensor([0.6, 0.6]))


def test_vit_is_refused_naming_the_supported_architectures():
    from clipgen.models.registry import create_model

    vit, _, _ = create_model("ViT-tiny")
    with pytest.raises(ClipgenError) as e:
        ResNetChain(vit.visual, "ViT-tiny")
    msg = str(e.value)
    assert "ViT-tiny" in msg and "VisionTransformer" in msg and "ModifiedResNet" in msg and "RN50" in msg


def test_a_changed_resnet_is_refused(visual):
    import copy

    v = copy.deepcopy(visual)
    v.attnpool = torch.nn.Identity()
    with pytest.raises(ClipgenError, match="no AttentionPool2d 'attnpool'"):
        ResNetChain(v, "custom")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:FutureWarning")
def test_stage_jvp_equals_autograd_forward_mode(visual, images):
    """The written-out forward-mode derivative of every stage but the attention pool, against torch.func.jvp."""
    import torch.func as tf

    ch = ResNetChain(visual, "RN-tiny")
    plain = ResNetChain(visual, "RN-tiny", channels_last=False)  # functorch has no channels-last inside vmap
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        acts = ch.activations(images[:2])
    assert not ch.has_jvp(ch.n_stages) and all(ch.has_jvp(i) for i in range(1, ch.n_stages))
    for i in range(1, ch.n_stages):
        x = acts[i - 1]
        c_in, c_out = x.shape[1], acts[i].shape[1]
        cols = torch.randperm(c_in, generator=g)[: max(2, c_in // 4)]
        out = torch.cat([cols[:1], torch.randperm(c_out, generator=g)[: max(1, c_out // 4)]]).unique()
        rest, xs = ch.split_input(x, cols)
        xs = xs.detach()
        tang = torch.randn(3, *xs.shape, generator=g)
        y, dy = ch.stage_jvp(i, rest, xs, cols, out, tang)
        assert dy.shape == (3, x.shape[0], len(out), *acts[i].shape[2:])
        assert _rel(y, acts[i][:, out]) < 1e-5, ch.names[i]
        def f(s, i=i, rest=rest, out=out, cols=cols):
            return plain.stage(i, rest, out, x_sel=s, in_channels=cols)

        for k in range(3):
            _, ref = tf.jvp(f, (xs,), (tang[k],))
            assert _rel(dy[k], ref) < 1e-5, (ch.names[i], k)
    with pytest.raises(ValueError, match="reverse mode"):
        ch.stage_jvp(ch.n_stages, acts[-2], acts[-2][:, :1], [0], None, acts[-2][None, :, :1])


def test_make_chain_builds_the_family_chain_behind_one_interface(visual):
    from clipgen.circuits.chain import CircuitChain
    from clipgen.circuits.chains import CHAINS, make_chain
    from clipgen.circuits.vit import ViTChain
    from clipgen.models.registry import create_model

    assert sorted(CHAINS) == ["resnet", "vit"]
    rn = make_chain(visual, "RN-tiny")
    assert type(rn) is ResNetChain and isinstance(rn, CircuitChain) and rn.family == "resnet"
    assert rn.node_kind == "channels" and all(la.channel_axis == 0 for la in rn.layers)
    vit = make_chain(create_model("ViT-tiny")[0].visual, "ViT-tiny")
    assert type(vit) is ViTChain and isinstance(vit, CircuitChain) and vit.family == "vit"
    with pytest.raises(ClipgenError, match="^nodes: unknown node kind 'neurons'"):
        make_chain(visual, "RN-tiny", nodes="neurons")
