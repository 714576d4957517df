"""The circuit chain of a ``ModifiedResNet`` image tower (the :class:`~clipgen.circuits.chain.CircuitChain` of the
``resnet`` family).

The chain of RN50 and clipgen's RN-tiny/RN-small is::

    input act1 act2 act3 avgpool resblock1 .. resblockN attnpool

and stage ``i`` maps layer ``i - 1`` to layer ``i``:

================ =====================================================================================
stage            sub-network
================ =====================================================================================
input -> act1    ``relu(bn1(conv1(x)))``
act1 -> act2     ``relu(bn2(conv2(x)))``
act2 -> act3     ``relu(bn3(conv3(x)))``
act3 -> avgpool  the stem's ``AvgPool2d(2)`` (linear: the only stage that commutes with scaling)
avgpool -> rb1   ``layer1[0]`` (a Bottleneck)
rbK -> rbK+1     the next Bottleneck (through layer1..layer4)
rbN -> attnpool  the attention pool (its output is the image embedding before normalisation)
================ =====================================================================================

The stages are written functionally (``F.conv2d``, ``F.relu`` out of place) from the modules' weights, read when
the chain is built: batch norm in eval mode is an affine map per channel, folded into the convolution before it
(``w * gamma / sqrt(var + eps)``, bias ``beta - mean * gamma / sqrt(var + eps)``, computed in float64), which
gives the modules' numbers up to float rounding. Nothing is modified in place (the modules' in-place ReLUs and
``out += identity`` never touch a tensor we hold), and a stage can compute

* *only some output channels*: ``stage(i, x, out_channels=J)`` equals ``stage(i, x)[:, J]`` but runs the last
  convolution, the identity / downsample path and the attention pool's output projection for those channels only;
* *gradients for only some input channels*: ``stage(i, x_rest, out_channels=J, x_sel=xs, in_channels=U)`` is the
  stage applied to ``x_rest`` with channels ``U`` replaced by ``xs`` (``x_rest`` has zeros there, see
  :func:`~clipgen.circuits.chain.split_channels`). Every stage starts with a linear map of its input (a convolution, the
  downsample path, the identity, the attention pool's projections), which is split into the constant part from
  ``x_rest`` and the part from ``xs``, so back-propagation into the input only touches the ``U`` columns of those
  weights. This is what makes per-downstream-channel edge attributions cheap: the backward pass costs the
  sub-network's interior plus ``len(U)`` input channels instead of all of them.

The attention pool computes only the query of the pooled token (the only output the module returns). Convolutions
run in channels-last memory format (``channels_last=True``, the default), which is faster on CPU and on GPU.
Tests check every stage against the real modules.
"""

from __future__ import annotations

from typing import Any

from clipgen.circuits.chain import INPUT, ChainBase
from clipgen.errors import ClipgenError

#: What ``ResNetChain`` supports, for error messages.
SUPPORTED = "the ModifiedResNet family (RN50, RN101, RN50x4, ..., clipgen's RN-tiny and RN-small)"
#: Stage index of the stem's average pool (linear and homogeneous: avgpool((1-a) x) = (1-a) avgpool(x)).
AVGPOOL_STAGE = 4


def _refuse(model_name: str, what: str) -> ClipgenError:
    return ClipgenError(f"model {model_name}: {what}; clipgen circuits supports {SUPPORTED}")


def check_visual(visual: Any, model_name: str = "?") -> None:
    """Refuse an image tower whose structure is not the chain's (a ViT, or a changed ResNet), naming the model."""
    import torch.nn as nn

    from clipgen.models.layers import family

    name = type(visual).__name__
    try:
        fam = family(visual)
    except ClipgenError:
        fam = None
    if fam != "resnet":
        raise _refuse(model_name, f"its image tower is a {name}, which has no act1..act3/avgpool/resblock/attnpool "
                                  "chain")
    for attr, kind in (("conv1", nn.Conv2d), ("bn1", nn.BatchNorm2d), ("act1", nn.ReLU), ("conv2", nn.Conv2d),
                       ("bn2", nn.BatchNorm2d), ("act2", nn.ReLU), ("conv3", nn.Conv2d), ("bn3", nn.BatchNorm2d),
                       ("act3", nn.ReLU), ("avgpool", nn.AvgPool2d)):
        if not isinstance(getattr(visual, attr, None), kind):
            raise _refuse(model_name, f"the image tower has no {kind.__name__} '{attr}'")
    for li in range(1, 5):
        layer = getattr(visual, f"layer{li}", None)
        if layer is None or len(layer) == 0:
            raise _refuse(model_name, f"the image tower has no residual stage 'layer{li}'")
        for bi, blk in enumerate(layer):
            if type(blk).__name__ != "Bottleneck" or not all(hasattr(blk, a) for a in (
                    "conv1", "bn1", "conv2", "bn2", "avgpool", "conv3", "bn3", "downsample")):
                raise _refuse(model_name, f"layer{li}[{bi}] is a {type(blk).__name__}, not an open_clip Bottleneck")
    if type(getattr(visual, "attnpool", None)).__name__ != "AttentionPool2d":
        raise _refuse(model_name, "the image tower has no AttentionPool2d 'attnpool'")


# ---------------------------------------------------------------------------------------------------------------
# folded convolutions


class FoldedConv:
    """A convolution with the eval-mode batch norm after it folded in: ``bn(conv(x)) == conv'(x) + b'``."""

    def __init__(self, conv, bn):
        import torch

        w = conv.weight.detach().double()
        scale = bn.weight.detach().double() / (bn.running_var.detach().double() + bn.eps).sqrt()
        bias = bn.bias.detach().double() - bn.running_mean.detach().double() * scale
        if conv.bias is not None:
            bias = bias + conv.bias.detach().double() * scale
        dtype = conv.weight.dtype
        self.weight = (w * scale.reshape(-1, 1, 1, 1)).to(dtype).contiguous()
        self.bias = bias.to(dtype).contiguous()
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        if conv.groups != 1:
            raise ValueError("grouped convolutions are not part of the ModifiedResNet chain")
        self._torch = torch

    def __call__(self, x, out=None, cols=None, bias: bool = True, channels_last: bool = True):
        import torch.nn.functional as F

        w, b = self.weight, self.bias
        if out is not None:
            w, b = w[out], b[out]
        if cols is not None:
            w = w[:, cols]
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=self._torch.channels_last)
        return F.conv2d(x, w, b if bias else None, self.stride, self.padding, self.dilation)


class _Block:
    """One Bottleneck, folded."""

    def __init__(self, blk):
        self.c1 = FoldedConv(blk.conv1, blk.bn1)
        self.c2 = FoldedConv(blk.conv2, blk.bn2)
        self.c3 = FoldedConv(blk.conv3, blk.bn3)
        self.pool = int(blk.stride) if int(blk.stride) > 1 else 0
        self.ds = None
        if blk.downsample is not None:
            ds = blk.downsample
            self.ds = FoldedConv(ds[1], ds[2])
            self.ds_pool = int(ds[0].kernel_size if isinstance(ds[0].kernel_size, int) else ds[0].kernel_size[0])


class ResNetChain(ChainBase):
    """A ``ModifiedResNet`` image tower as the chain of stages between consecutive circuit layers.

    ``visual`` is put in eval mode (batch norm uses its running statistics, so samples never interact). The
    weights are read once, here: build a new chain after changing them. Layer ``0`` is ``input``; ``layers[-1]``
    is ``attnpool``.
    """

    family = "resnet"
    node_kind = "channels"

    def __init__(self, visual: Any, model_name: str = "?", *, channels_last: bool = True):
        check_visual(visual, model_name)
        visual.eval()
        self.visual = visual
        self.model_name = model_name
        self.channels_last = channels_last
        from clipgen.models.layers import layer_modules

        catalogue = layer_modules(visual)  # the paper's names: act1 act2 act3 avgpool resblock1..N attnpool
        self._paths = {INPUT: "conv1", **dict(catalogue)}
        self.names = [INPUT] + [name for name, _ in catalogue]
        self.stem = [FoldedConv(visual.conv1, visual.bn1), FoldedConv(visual.conv2, visual.bn2),
                     FoldedConv(visual.conv3, visual.bn3)]
        k = visual.avgpool.kernel_size
        self.stem_pool = int(k if isinstance(k, int) else k[0])
        self.blocks = [_Block(blk) for li in range(1, 5) for blk in getattr(visual, f"layer{li}")]
        self.attnpool = visual.attnpool
        self.layers = self._measure()

    def is_linear(self, i: int) -> bool:
        """Whether stage ``i`` is linear and homogeneous (scaling its input scales its output)."""
        return i == AVGPOOL_STAGE

    def stage(self, i: int, x, out_channels=None, *, x_sel=None, in_channels=None):
        """Stage ``i`` (layer ``i-1`` -> layer ``i``) on ``x``; only the ``out_channels`` rows when given.

        With ``x_sel``/``in_channels`` the input is ``x`` with channels ``in_channels`` replaced by ``x_sel``
        (``x`` must be zero there: see :meth:`split_input`).
        """
        import torch

        out = None if out_channels is None else torch.as_tensor(out_channels, dtype=torch.long, device=x.device)
        cols = None
        if x_sel is not None:
            if in_channels is None:
                raise ValueError("x_sel needs in_channels")
            cols = torch.as_tensor(in_channels, dtype=torch.long, device=x.device)
        cl = self.channels_last
        if 1 <= i <= 3:
            return _conv_relu(self.stem[i - 1], x, out, x_sel, cols, cl)
        if i == AVGPOOL_STAGE:
            return _avgpool(x, self.stem_pool, out, x_sel, cols)
        if 5 <= i < 5 + len(self.blocks):
            return _bottleneck(self.blocks[i - 5], x, out, x_sel, cols, cl)
        if i == 5 + len(self.blocks):
            return _attnpool(x, self.attnpool, out, x_sel, cols)
        raise IndexError(f"stage {i} out of range 1..{self.n_stages}")

    def has_jvp(self, i: int) -> bool:
        """Whether :meth:`stage_jvp` covers stage ``i`` (every stage but the attention pool)."""
        return 1 <= i < self.n_stages

    def linearize(self, i: int, x_rest, x_sel, in_channels, out_channels=None):
        """Stage ``i`` with the split input and its forward-mode derivative: ``(y, apply)``.

        ``y`` is ``stage(i, x_rest, out_channels, x_sel=x_sel, in_channels=in_channels)`` ``(R, J, ...)``;
        ``apply(tangents)`` maps directions of ``x_sel`` (``(T, R, len(in_channels), ...)``) to the derivatives of
        ``y`` in those directions (``(T, R, J, ...)``). The forward pass runs once; ``apply`` can be called for any
        number of chunks of directions.

        Written out (no autograd): linear maps carry the tangent without their bias, a ReLU multiplies it by
        ``pre-activation > 0`` (autograd's convention at 0). The directions ride in the batch dimension of the same
        convolutions, so ``T`` directions cost ``T`` passes through the sub-network's interior.
        """
        import torch

        if not self.has_jvp(i):
            raise ValueError(f"stage {i} ({self.names[i]}) has no forward-mode derivative; use reverse mode")
        out = None if out_channels is None else torch.as_tensor(out_channels, dtype=torch.long, device=x_rest.device)
        cols = torch.as_tensor(in_channels, dtype=torch.long, device=x_rest.device)
        cl = self.channels_last
        if 1 <= i <= 3:
            y, lin = _lin_conv_relu(self.stem[i - 1], x_rest, x_sel, out, cols, cl)
        elif i == AVGPOOL_STAGE:
            y, lin = _lin_avgpool(x_rest, x_sel, out, cols, self.stem_pool)
        else:
            y, lin = _lin_bottleneck(self.blocks[i - 5], x_rest, x_sel, out, cols, cl)

        def apply(tangents):
            n_t, r = tangents.shape[0], tangents.shape[1]
            dy = lin(tangents.reshape(n_t * r, *tangents.shape[2:]), n_t)
            return dy.reshape(n_t, r, *dy.shape[1:])

        return y, apply


# ---------------------------------------------------------------------------------------------------------------
# functional stages (eval mode); ``out`` selects output channels, ``xs``/``cols`` is the split input


def _overlap(out, cols):
    """Positions ``(in out, in cols)`` of the channels both select (``out`` None: every channel)."""
    import torch

    if out is None:
        return cols, torch.arange(len(cols), device=cols.device)
    hit = (out[:, None] == cols[None, :]).nonzero()
    return hit[:, 0], hit[:, 1]


def _pass_through(x, out, xs, cols):
    """``x[:, out]`` with the split-off channels added back (an identity path)."""
    y = x if out is None else x[:, out]
    if xs is None:
        return y
    pos_out, pos_in = _overlap(out, cols)
    if len(pos_out) == 0:
        return y
    return y.index_add(1, pos_out, xs[:, pos_in].to(y.dtype))


def _linear_in(conv: FoldedConv, x, out, xs, cols, cl):
    y = conv(x, out, channels_last=cl)
    if xs is not None:
        y = y + conv(xs, out, cols, bias=False, channels_last=cl)
    return y


def _conv_relu(conv: FoldedConv, x, out, xs, cols, cl):
    import torch.nn.functional as F

    return F.relu(_linear_in(conv, x, out, xs, cols, cl))


def _avgpool(x, k, out, xs, cols):
    import torch.nn.functional as F

    y = F.avg_pool2d(x if out is None else x[:, out], k)
    if xs is None:
        return y
    pos_out, pos_in = _overlap(out, cols)
    if len(pos_out) == 0:
        return y
    return y.index_add(1, pos_out, F.avg_pool2d(xs[:, pos_in], k).to(y.dtype))


def _bottleneck(blk: _Block, x, out, xs, cols, cl):
    import torch.nn.functional as F

    h = F.relu(_linear_in(blk.c1, x, None, xs, cols, cl))
    h = F.relu(blk.c2(h, channels_last=cl))
    if blk.pool:
        h = F.avg_pool2d(h, blk.pool)
    h = blk.c3(h, out, channels_last=cl)
    if blk.ds is None:
        identity = _pass_through(x, out, xs, cols)
    else:
        p = blk.ds_pool
        xp = F.avg_pool2d(x, p) if p > 1 else x
        xsp = None if xs is None else (F.avg_pool2d(xs, p) if p > 1 else xs)
        identity = _linear_in(blk.ds, xp, out, xsp, cols, cl)
    return F.relu(h + identity)


def _masked(d, mask, n_t):
    """The tangent ``d`` ``(T*R, C, ...)`` times the ReLU's derivative ``mask`` ``(R, C, ...)``."""
    shape = d.shape
    return (d.reshape(n_t, *mask.shape) * mask.to(d.dtype)).reshape(shape)


def _lin_conv_relu(conv: FoldedConv, x, xs, out, cols, cl):
    import torch.nn.functional as F

    pre = _linear_in(conv, x, out, xs, cols, cl)
    mask = pre > 0

    def lin(t, n_t):
        return _masked(conv(t, out, cols, bias=False, channels_last=cl), mask, n_t)

    return F.relu(pre), lin


def _lin_avgpool(x, xs, out, cols, k):
    import torch
    import torch.nn.functional as F

    y = _avgpool(x, k, out, xs, cols)
    pos_out, pos_in = _overlap(out, cols)

    def lin(t, n_t):
        d = torch.zeros((t.shape[0], y.shape[1], *y.shape[2:]), dtype=t.dtype, device=t.device)
        if len(pos_out):
            d = d.index_add(1, pos_out, F.avg_pool2d(t[:, pos_in], k))
        return d

    return y, lin


def _lin_bottleneck(blk: _Block, x, xs, out, cols, cl):
    import torch.nn.functional as F

    pre1 = _linear_in(blk.c1, x, None, xs, cols, cl)
    pre2 = blk.c2(F.relu(pre1), channels_last=cl)
    h = F.relu(pre2)
    if blk.pool:
        h = F.avg_pool2d(h, blk.pool)
    h = blk.c3(h, out, channels_last=cl)
    p = blk.ds_pool if blk.ds is not None else 1
    if blk.ds is None:
        identity = _pass_through(x, out, xs, cols)
        pos_out, pos_in = _overlap(out, cols)
    else:
        xp = F.avg_pool2d(x, p) if p > 1 else x
        xsp = F.avg_pool2d(xs, p) if p > 1 else xs
        identity = _linear_in(blk.ds, xp, out, xsp, cols, cl)
    pre = h + identity
    m1, m2, m3 = pre1 > 0, pre2 > 0, pre > 0
    del pre1, pre2, h, identity

    def lin(t, n_t):
        d = _masked(blk.c1(t, None, cols, bias=False, channels_last=cl), m1, n_t)
        d = _masked(blk.c2(d, bias=False, channels_last=cl), m2, n_t)
        if blk.pool:
            d = F.avg_pool2d(d, blk.pool)
        d = blk.c3(d, out, bias=False, channels_last=cl)
        if blk.ds is None:
            if len(pos_out):
                d = d.index_add(1, pos_out, t[:, pos_in].to(d.dtype))
        else:
            d = d + blk.ds(F.avg_pool2d(t, p) if p > 1 else t, out, cols, bias=False, channels_last=cl)
        return _masked(d, m3, n_t)

    return F.relu(pre), lin


def _tokens(x):
    """``(N, C, H, W) -> (N, 1 + HW, C)``: the mean token, then the spatial tokens."""
    import torch

    n, c = x.shape[0], x.shape[1]
    t = x.reshape(n, c, -1).permute(0, 2, 1)
    return torch.cat([t.mean(dim=1, keepdim=True), t], dim=1)


def _proj(x, w, b, xs=None, cols=None):
    import torch.nn.functional as F

    y = F.linear(x, w, b)
    if xs is not None:
        y = y + F.linear(xs, w[:, cols])
    return y


def _attnpool(x, ap, out, xs, cols):
    """``AttentionPool2d`` for the pooled (mean) token only; ``out`` selects output channels."""
    import torch

    n, c = x.shape[0], x.shape[1]
    tokens = _tokens(x) + ap.positional_embedding[None].to(x.dtype)  # (N, L, C)
    ts = None if xs is None else _tokens(xs)  # (N, L, len(cols)), no positional part (it is in ``tokens``)
    h = ap.num_heads
    d = c // h
    q = _proj(tokens[:, :1], ap.q_proj.weight, ap.q_proj.bias, None if ts is None else ts[:, :1], cols)
    k = _proj(tokens, ap.k_proj.weight, ap.k_proj.bias, ts, cols)
    v = _proj(tokens, ap.v_proj.weight, ap.v_proj.bias, ts, cols)
    q = q.reshape(n, 1, h, d).transpose(1, 2)  # (N, h, 1, d)
    k = k.reshape(n, -1, h, d).transpose(1, 2)  # (N, h, L, d)
    v = v.reshape(n, -1, h, d).transpose(1, 2)
    att = torch.softmax((q * d ** -0.5) @ k.transpose(-1, -2), dim=-1)  # (N, h, 1, L)
    o = (att @ v).transpose(1, 2).reshape(n, c)  # (N, C)
    w, b = ap.c_proj.weight, ap.c_proj.bias
    if out is not None:
        w, b = w[out], b[out]
    return torch.nn.functional.linear(o, w, b)


def chain_names(n_blocks: int) -> list[str]:
    """The chain's layer names for a tower with ``n_blocks`` bottlenecks."""
    return [INPUT, "act1", "act2", "act3", "avgpool"] + [f"resblock{k + 1}" for k in range(n_blocks)] + ["attnpool"]


