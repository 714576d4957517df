"""The circuit-chain factory: :func:`make_chain` builds the :class:`~clipgen.circuits.chain.CircuitChain` of an image
tower, keyed by its model family (:data:`CHAINS`), as timm's ``create_*`` factories are keyed by name. A new
architecture is one more entry in :data:`CHAINS`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from clipgen.circuits.chain import NODE_KINDS, CircuitChain
from clipgen.circuits.resnet import ResNetChain
from clipgen.circuits.vit import ViTChain
from clipgen.errors import ClipgenError, ConfigFieldError


def _resnet(visual, model_name: str, nodes: str) -> CircuitChain:
    if nodes != "channels":
        raise ConfigFieldError("nodes", f"{nodes!r} nodes exist for ViTs only; a ResNet's nodes are its channels "
                                        f"(model {model_name})")
    return ResNetChain(visual, model_name)


def _vit(visual, model_name: str, nodes: str) -> CircuitChain:
    return ViTChain(visual, model_name, nodes=nodes)


#: Chain builders by model family (:func:`clipgen.models.layers.family`): ``(visual, model_name, nodes) -> chain``.
CHAINS: dict[str, Callable[[Any, str, str], CircuitChain]] = {"resnet": _resnet, "vit": _vit}
#: What ``clipgen circuits`` supports, for error messages.
SUPPORTED = ("the ModifiedResNet family (RN50, RN101, RN50x4, ..., clipgen's RN-tiny and RN-small) and open_clip's "
             "VisionTransformer (ViT-B-32, ..., clipgen's ViT-tiny)")


def make_chain(visual: Any, model_name: str = "?", *, nodes: str = "channels") -> CircuitChain:
    """The circuit chain of an image tower, by its family; ``nodes`` is ``channels`` or (ViTs) ``heads``."""
    from clipgen.models.layers import family

    if nodes not in NODE_KINDS:
        raise ConfigFieldError("nodes", f"unknown node kind {nodes!r} (one of {', '.join(NODE_KINDS)})")
    try:
        fam = family(visual)
    except ClipgenError:
        fam = None
    if fam not in CHAINS:
        raise ClipgenError(f"model {model_name}: its image tower is a {type(visual).__name__}; clipgen circuits "
                           f"supports {SUPPORTED}")
    return CHAINS[fam](visual, model_name, nodes)
