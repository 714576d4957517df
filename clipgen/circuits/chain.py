"""The model under study as a chain of stages between consecutive circuit layers: the interface.

The zero-shot classifier of the paper is ``visual -> L2-normalise -> cosine similarity with the template-averaged,
normalised class text embedding`` (no logit scale); the metric of an image is the logit of its true class
(:func:`metric`). A circuit chain cuts the image tower into layers ``input, ..., last`` (the last is the image
embedding before normalisation); stage ``i`` maps layer ``i - 1`` to layer ``i``. The attribution
(:mod:`clipgen.circuits.attribution`) needs nothing but the members of :class:`CircuitChain`:

* the layers (:class:`ChainLayer`: name, channel count, per-sample shape, and the **channel axis** of that shape:
  ``0`` for a ``(C, H, W)`` feature map or a ``(C,)`` vector, ``1`` for ``(L, D)`` tokens, channels last). A node is
  one channel; everything else in the shape (pixels, tokens) is a *position* the scores are summed over;
* ``stage(i, x, out_channels, x_sel=, in_channels=)``: stage ``i``, computing only some output channels, and with
  the input split into a constant part and a part that requires grad (:meth:`CircuitChain.split_input`);
* ``activations``/``run`` for the clean pass and the suffix passes, ``is_linear`` and ``has_jvp``/``linearize``
  for the shortcuts a family may offer.

:func:`clipgen.circuits.chains.make_chain` builds the chain of an image tower, keyed by its family
(:data:`clipgen.circuits.chains.CHAINS`): ``resnet``
(:class:`~clipgen.circuits.resnet.ResNetChain`, open_clip's ``ModifiedResNet``) and ``vit``
(:class:`~clipgen.circuits.vit.ViTChain`, open_clip's ``VisionTransformer``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from clipgen.errors import ClipgenError

INPUT = "input"
#: Node kinds: every chain has ``channels``; a ViT also offers ``heads`` (its attention heads).
NODE_KINDS = ("channels", "heads")


@dataclass(frozen=True)
class ChainLayer:
    """One layer of the chain: its name, channel count, per-sample shape (``(C, H, W)``, ``(C,)`` or tokens
    ``(L, D)``) and the axis of that shape that holds the channels (the nodes)."""

    name: str
    channels: int
    shape: tuple[int, ...]
    channel_axis: int = 0

    @property
    def positions(self) -> int:
        """Positions the attribution sums over per channel: pixels, tokens (1 for an embedding vector)."""
        n = 1
        for k, s in enumerate(self.shape):
            if k != self.channel_axis:
                n *= int(s)
        return n

    @property
    def axis(self) -> int:
        """The channel axis of a batch of this layer's activations (``channel_axis + 1``)."""
        return self.channel_axis + 1


@runtime_checkable
class CircuitChain(Protocol):
    """What the attribution and ``clipgen circuits compute`` use from a chain (see the module docstring)."""

    visual: Any
    model_name: str
    family: str  # "resnet" | "vit"
    node_kind: str  # "channels" | "heads"
    names: list[str]
    layers: list[ChainLayer]

    @property
    def n_stages(self) -> int: ...

    @property
    def pairs(self) -> list[tuple[str, str]]: ...

    @property
    def device(self) -> Any: ...

    @property
    def dtype(self) -> Any: ...

    def index(self, name: str) -> int: ...

    def module_path(self, name: str) -> str: ...

    def is_linear(self, i: int) -> bool: ...

    def has_jvp(self, i: int) -> bool: ...

    def split_input(self, x, in_channels, axis: int = 1) -> tuple[Any, Any]: ...

    def stage(self, i: int, x, out_channels=None, *, x_sel=None, in_channels=None) -> Any: ...

    def linearize(self, i: int, x_rest, x_sel, in_channels, out_channels=None) -> tuple[Any, Any]: ...

    def run(self, x, start: int = 0, stop: int | None = None) -> Any: ...

    def activations(self, images) -> list: ...

    def hook_replace(self, name: str, value) -> list: ...

    def hook_capture(self, name: str, fn: Callable[[Any], None]) -> list: ...


def split_channels(x, in_channels, axis: int = 1):
    """``(x_rest, x_sel)``: ``x`` with channels ``in_channels`` (along ``axis``) zeroed (no gradient), and those
    channels as a new leaf that requires grad. ``x_rest.index_add(axis, in_channels, x_sel)`` is ``x`` again."""
    import torch

    idx = torch.as_tensor(in_channels, dtype=torch.long, device=x.device)
    with torch.no_grad():
        rest = x.detach().clone()
        rest.index_fill_(axis, idx, 0)
    sel = x.detach().index_select(axis, idx).clone().requires_grad_()
    return rest, sel


class ChainBase:
    """The members every chain shares: names, layers measured by a blank forward pass, running, indexing."""

    visual: Any
    names: list[str]
    layers: list[ChainLayer]
    _paths: dict[str, str]

    @property
    def n_stages(self) -> int:
        return len(self.names) - 1

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """``(upstream, downstream)`` of every stage."""
        return pairs_of(self.names)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise ClipgenError(f"unknown circuit layer {name!r}; the chain is {' '.join(self.names)}") from None

    def module_path(self, name: str) -> str:
        """Dotted path of the module whose output is layer ``name`` ("" for the image tower itself); for
        ``input`` the module whose input it is (for a ViT's heads: the block whose attention they are)."""
        self.index(name)
        return self._paths[name]

    def is_linear(self, i: int) -> bool:
        """Whether stage ``i`` is linear and homogeneous (scaling its input scales its output)."""
        return False

    def _module(self, name: str):
        from clipgen.models.layers import get_module

        path = self.module_path(name)
        return get_module(self.visual, path) if path else self.visual

    def hook_replace(self, name: str, value) -> list:
        """Forward hooks on the real modules that make layer ``name`` (not ``input``) equal ``value`` in the tower's
        own forward pass; returns the handles. The per-channel reference method runs on these."""
        return [self._module(name).register_forward_hook(lambda _m, _i, _o: value)]

    def hook_capture(self, name: str, fn) -> list:
        """Forward hooks that call ``fn(activation)`` with layer ``name`` (not ``input``) during the tower's own
        forward pass; returns the handles."""
        return [self._module(name).register_forward_hook(lambda _m, _i, o: fn(o))]

    def has_jvp(self, i: int) -> bool:
        """Whether :meth:`linearize` covers stage ``i``."""
        return False

    def linearize(self, i: int, x_rest, x_sel, in_channels, out_channels=None):
        raise ValueError(f"stage {i} ({self.names[i]}) has no forward-mode derivative; use reverse mode")

    def stage_jvp(self, i: int, x_rest, x_sel, in_channels, out_channels, tangents):
        """``(y, dy)``: :meth:`linearize` applied to one batch of directions ``tangents``."""
        y, apply = self.linearize(i, x_rest, x_sel, in_channels, out_channels)
        return y, apply(tangents)

    @staticmethod
    def split_input(x, in_channels, axis: int = 1):
        """``(x_rest, x_sel)``, see :func:`split_channels`; ``stage(i, x_rest, x_sel=x_sel,
        in_channels=in_channels)`` equals ``stage(i, x)`` with gradients flowing into ``x_sel`` only."""
        return split_channels(x, in_channels, axis)

    @property
    def image_size(self) -> int:
        s = getattr(self.visual, "image_size", 224)
        return int(s[0] if isinstance(s, (tuple, list)) else s)

    @property
    def device(self):
        return next(self.visual.parameters()).device

    @property
    def dtype(self):
        return next(self.visual.parameters()).dtype

    def stage(self, i: int, x, out_channels=None, *, x_sel=None, in_channels=None):  # pragma: no cover
        raise NotImplementedError

    def _channel_axis(self, i: int, x) -> int:
        """Per-sample channel axis of layer ``i``'s activation ``x`` (a batch)."""
        return 0

    def _measure(self) -> list[ChainLayer]:
        import torch

        x = torch.zeros(1, 3, self.image_size, self.image_size, device=self.device, dtype=self.dtype)
        out = []
        with torch.no_grad():
            for i, name in enumerate(self.names):
                if i:
                    x = self.stage(i, x)
                ax = self._channel_axis(i, x)
                out.append(ChainLayer(name, int(x.shape[ax + 1]), tuple(int(s) for s in x.shape[1:]), ax))
        return out

    def run(self, x, start: int = 0, stop: int | None = None):
        """Layer ``stop`` (default: the last) from layer ``start``'s activation ``x``."""
        stop = self.n_stages if stop is None else stop
        for i in range(start + 1, stop + 1):
            x = self.stage(i, x)
        return x

    def activations(self, images) -> list:
        """Every layer's activation for ``images`` (the first is ``images`` itself), with autograd as the caller
        has it enabled."""
        acts = [images]
        for i in range(1, self.n_stages + 1):
            acts.append(self.stage(i, acts[-1]))
        return acts


def metric(embedding, targets):
    """Cosine similarity of each image embedding (rows of ``embedding``) with its class's normalised text
    embedding (rows of ``targets``): the logit of the true class, without logit scale."""
    import torch.nn.functional as F

    return (F.normalize(embedding.float(), dim=-1) * targets.float()).sum(-1)


def pairs_of(names: Sequence[str]) -> list[tuple[str, str]]:
    """``(upstream, downstream)`` of consecutive names."""
    return [(names[i - 1], names[i]) for i in range(1, len(names))]
