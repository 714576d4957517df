"""The circuit chain of an open_clip ``VisionTransformer`` image tower (the ``vit`` family).

The layers are the residual stream after each transformer block, with the image first and the image embedding
last::

    input resblock1 .. resblockN proj

============================ ==========================================================================
stage                        sub-network
============================ ==========================================================================
input -> resblock1           patch embedding (``conv1``), class token, positional embedding, ``ln_pre``,
                             then block 1
resblockK -> resblockK+1     block K+1: ``x + ls_1(attn(ln_1(x)))``, then ``+ ls_2(mlp(ln_2(.)))``
resblockN -> proj            ``ln_post``, pooling (the class token, or the mean of the patch tokens), ``@ proj``:
                             the image embedding before normalisation
============================ ==========================================================================

**Nodes.** A node is one *channel* (one dimension of the residual stream, width D) of a layer; the tokens (class
token and patch tokens, ``L = 1 + grid^2``) play the part the spatial positions play in a ResNet: a node's score and
an edge's objective sum (or average) over them. Activations are channels last, ``(N, L, D)``: the layers record
channel axis 1 of their per-sample shape ``(L, D)``; ``input`` is the image ``(3, H, W)`` (channel axis 0) and
``proj`` the embedding ``(E,)``.

**Stages** call the tower's own modules (layer norms, ``nn.MultiheadAttention``, the MLP), so they compute the
modules' numbers. A stage computes only some output channels of the last linear map (the MLP's ``c_proj``, or
``proj``) and the residual path; with a split input (:func:`~clipgen.circuits.chain.split_channels`) the
selected channels are added back into the constant rest before the block. Unlike a ResNet stage, a block starts
with a layer norm, which mixes all channels, so the split saves no work here; it only routes the gradient to the
selected channels. There is no forward-mode shortcut (``has_jvp`` is false): edges run in reverse mode.

**Heads** (``nodes="heads"``): the layers are ``input heads1 .. headsN proj``; ``headsK`` is the stream after block
K's attention split into ``H + 1`` channels (:func:`attention_state`): each head's write into the stream, and the
rest (the block's input and the output bias). A stage sums them, finishes the block (its MLP) and splits the next
block's attention. The per-channel reference reaches these through hooks on the block (its input) and on its
``nn.MultiheadAttention`` module (:meth:`ViTChain.hook_replace`, :meth:`ViTChain.hook_capture`).
"""

from __future__ import annotations

from typing import Any

from clipgen.circuits.chain import INPUT, ChainBase
from clipgen.errors import ClipgenError

SUPPORTED = "open_clip's VisionTransformer with class-token or average pooling (ViT-B-32, ..., clipgen's ViT-tiny)"


def _refuse(model_name: str, what: str) -> ClipgenError:
    return ClipgenError(f"model {model_name}: {what}; clipgen circuits supports {SUPPORTED} and the ModifiedResNet "
                        f"family")


def check_visual(visual: Any, model_name: str = "?") -> None:
    """Refuse a tower whose structure is not the chain's (attention pooling, a sequence-first transformer, ...)."""
    import torch.nn as nn

    if type(visual).__name__ != "VisionTransformer":
        raise _refuse(model_name, f"its image tower is a {type(visual).__name__}, not a VisionTransformer")
    if getattr(visual, "attn_pool", None) is not None:
        raise _refuse(model_name, "the image tower pools with attention (attn_pool)")
    if getattr(visual, "pool_type", None) not in ("tok", "avg"):
        raise _refuse(model_name, f"the image tower's pool_type is {getattr(visual, 'pool_type', None)!r}")
    tr = getattr(visual, "transformer", None)
    if tr is None or not getattr(tr, "batch_first", False) or len(getattr(tr, "resblocks", [])) == 0:
        raise _refuse(model_name, "the image tower has no batch-first transformer with residual blocks")
    for k, blk in enumerate(tr.resblocks):
        ok = all(hasattr(blk, a) for a in ("ln_1", "attn", "ls_1", "ln_2", "mlp", "ls_2"))
        if not ok or not isinstance(blk.attn, nn.MultiheadAttention) or hasattr(blk, "ln_1_kv") or not hasattr(
                blk.mlp, "c_proj") or blk.attn.in_proj_weight is None or blk.attn.bias_k is not None:
            raise _refuse(model_name, f"transformer.resblocks.{k} is a {type(blk).__name__}, not an open_clip "
                                      "ResidualAttentionBlock")


class ViTChain(ChainBase):
    """A ``VisionTransformer`` image tower as the chain of stages between consecutive circuit layers.

    ``visual`` is put in eval mode (no patch dropout). Layer ``0`` is ``input``; ``layers[-1]`` is ``proj``.
    ``nodes`` is ``channels`` (layers ``resblockK``: the residual-stream dimensions) or ``heads`` (layers
    ``headsK``: the attention heads of block K, plus the stream that bypasses them; see :func:`attention_state`).
    """

    family = "vit"
    #: On the CPU, edges run one backward per downstream channel: ``is_grads_batched`` through attention, layer
    #: norms and GELU measured 2x slower than the same backward passes one by one (ViT-tiny, one thread).
    cpu_batched_backward = False

    def __init__(self, visual: Any, model_name: str = "?", *, nodes: str = "channels"):
        check_visual(visual, model_name)
        if nodes not in ("channels", "heads"):
            raise ClipgenError(f"model {model_name}: unknown node kind {nodes!r}")
        visual.eval()
        self.visual = visual
        self.model_name = model_name
        self.node_kind = nodes
        self.blocks = list(visual.transformer.resblocks)
        n = len(self.blocks)
        prefix = "resblock" if nodes == "channels" else "heads"
        self.names = [INPUT] + [f"{prefix}{k + 1}" for k in range(n)] + ["proj"]
        self._paths = {INPUT: "conv1", **{f"{prefix}{k + 1}": f"transformer.resblocks.{k}" for k in range(n)},
                       "proj": ""}
        self.layers = self._measure()

    @property
    def heads(self) -> bool:
        return self.node_kind == "heads"

    def _channel_axis(self, i: int, x) -> int:
        return 0 if i in (0, len(self.names) - 1) else 1

    # -- the per-channel reference's hooks: a heads layer is no module's output ------------------------------------
    def hook_replace(self, name: str, value) -> list:
        """Heads: the block's attention output is replaced so that the stream after it is ``value``'s sum."""
        i = self.index(name)
        if not self.heads or i in (0, self.n_stages):
            return super().hook_replace(name, value)
        blk = self.blocks[i - 1]
        seen: dict[str, Any] = {}

        def keep_input(_m, args):
            seen["x"] = args[0]

        def replace(_m, _i, _o):
            d = value.sum(dim=2) - seen["x"]  # = ls_1(attention output)
            gamma = getattr(blk.ls_1, "gamma", None)
            return (d if gamma is None else d / gamma), None

        return [blk.register_forward_pre_hook(keep_input), blk.attn.register_forward_hook(replace)]

    def hook_capture(self, name: str, fn) -> list:
        i = self.index(name)
        if not self.heads or i in (0, self.n_stages):
            return super().hook_capture(name, fn)
        blk = self.blocks[i - 1]
        seen: dict[str, Any] = {}

        def keep_input(_m, args):
            seen["x"] = args[0]

        def grab(_m, args, _o):
            fn(_state(blk, seen["x"], args[0]))

        return [blk.register_forward_pre_hook(keep_input), blk.attn.register_forward_hook(grab)]

    def stage(self, i: int, x, out_channels=None, *, x_sel=None, in_channels=None):
        """Stage ``i`` (layer ``i-1`` -> layer ``i``) on ``x``; only the ``out_channels`` channels when given.

        With ``x_sel``/``in_channels`` the input is ``x`` with channels ``in_channels`` (along the input layer's
        channel axis) replaced by ``x_sel`` (``x`` must be zero there: see :meth:`split_input`).
        """
        import torch

        out = None if out_channels is None else torch.as_tensor(out_channels, dtype=torch.long, device=x.device)
        if x_sel is not None:
            if in_channels is None:
                raise ValueError("x_sel needs in_channels")
            cols = torch.as_tensor(in_channels, dtype=torch.long, device=x.device)
            x = x.index_add(self.layers[i - 1].axis, cols, x_sel.to(x.dtype))
        n = len(self.blocks)
        if not 1 <= i <= n + 1:
            raise IndexError(f"stage {i} out of range 1..{self.n_stages}")
        if not self.heads:
            if i == 1:
                return _block(self.blocks[0], self.visual._embeds(x), out)
            if i <= n:
                return _block(self.blocks[i - 1], x, out)
            return _head(self.visual, x, out)
        # heads: finish the previous block from the stream after its attention, then the next attention
        if i == 1:
            x = self.visual._embeds(x)
        else:
            x = _finish(self.blocks[i - 2], x.sum(dim=2))
        if i == n + 1:
            return _head(self.visual, x, out)
        s = attention_state(self.blocks[i - 1], x)
        return s if out is None else s.index_select(2, out)


def _block(blk, x, out):
    """An open_clip ``ResidualAttentionBlock`` (batch first), computing only the ``out`` channels of its output."""
    import torch.nn.functional as F

    h = blk.ln_1(x)
    h = x + blk.ls_1(blk.attn(h, h, h, need_weights=False)[0])
    m = blk.mlp.gelu(blk.mlp.c_fc(blk.ln_2(h)))
    cp = blk.mlp.c_proj
    if out is None:
        return h + blk.ls_2(F.linear(m, cp.weight, cp.bias))
    y = F.linear(m, cp.weight[out], None if cp.bias is None else cp.bias[out])
    gamma = getattr(blk.ls_2, "gamma", None)
    if gamma is not None:
        y = y * gamma[out]
    return h[..., out] + y


def _finish(blk, h):
    """The rest of a block after its attention: ``h + ls_2(mlp(ln_2(h)))``."""
    return h + blk.ls_2(blk.mlp(blk.ln_2(h)))


def _state(blk, x, h):
    """:func:`attention_state` from the block input ``x`` and its ``ln_1(x)`` ``h``."""
    import torch
    import torch.nn.functional as F

    attn = blk.attn
    n, length, d = h.shape
    nh = attn.num_heads
    dh = d // nh
    q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(n, length, nh, dh).transpose(1, 2) for t in (q, k, v))  # (N, H, L, dh)
    att = torch.softmax((q * dh ** -0.5) @ k.transpose(-1, -2), dim=-1)
    z = (att @ v).transpose(1, 2)  # (N, L, H, dh): each head's output before out_proj
    w = attn.out_proj.weight.reshape(d, nh, dh)
    writes = torch.einsum("nlhk,dhk->nlhd", z, w)  # (N, L, H, D)
    bias = attn.out_proj.bias
    gamma = getattr(blk.ls_1, "gamma", None)  # LayerScale (an elementwise gain) or Identity
    if gamma is not None:
        writes = writes * gamma
        bias = None if bias is None else bias * gamma
    rest = x if bias is None else x + bias
    return torch.cat([writes, rest.unsqueeze(2)], dim=2)


def attention_state(blk, x):
    """The stream after a block's attention, ``x + ls_1(attn(ln_1(x)))``, split into ``(N, L, H + 1, D)``: channel
    ``h < H`` is head ``h``'s write into the stream (its output through its slice of ``out_proj``, and the layer
    scale), channel ``H`` everything else (``x`` and the output bias). The channels sum to the stream; scaling
    channel ``h`` scales head ``h``'s output (the map is linear)."""
    return _state(blk, x, blk.ln_1(x))


def _head(visual, x, out):
    """``ln_post``, pooling and projection (``VisionTransformer._pool`` without attention pooling)."""
    if visual.final_ln_after_pool:
        pooled, _ = visual._global_pool(x)
        pooled = visual.ln_post(pooled)
    else:
        pooled, _ = visual._global_pool(visual.ln_post(x))
    if visual.proj is None:
        return pooled if out is None else pooled[:, out]
    return pooled @ (visual.proj if out is None else visual.proj[:, out])
