"""Layer catalogues: the paper's layer names mapped to modules of an open_clip image tower.

ResNet family (``ModifiedResNet``: RN50 and clipgen's RN-tiny/RN-small)::

    act1 act2 act3 avgpool resblock1..N attnpool      (RN50: N = 16, 21 layers)

``act1..3`` are the stem ReLUs, ``avgpool`` the stem's AvgPool2d (not a block's), ``resblockK`` the output of
the K-th bottleneck block counted through layer1..layer4, ``attnpool`` the attention-pool output (the image
embedding before normalisation). ViT family (open_clip ``VisionTransformer``)::

    patch_embed resblock1..N ln_post

``embedding`` (the L2-normalised image embedding) is not a module; the extractor adds it.

All hooked modules are module *outputs*: the in-place ReLUs and the ``out += identity`` inside the blocks
modify tensors that are not any listed module's output after it was produced, so a forward hook that pools
(or clones) its output at once sees the right values.
"""

from __future__ import annotations

from dataclasses import dataclass

from clipgen.errors import ClipgenError, ConfigFieldError

SUPPORTED = "ModifiedResNet (RN50, RN101, RN50x4..., clipgen RN-tiny/RN-small) and VisionTransformer (ViT-*)"


@dataclass(frozen=True)
class LayerSpec:
    """One catalogued layer."""

    name: str
    module: str  # dotted path inside the image tower (``model.visual``)
    kind: str  # "conv" (C, H, W), "tokens" (L, D) or "vector" (D,)
    shape: tuple[int, ...]  # per-sample output shape
    channels: int

    @property
    def spatial(self) -> tuple[int, ...]:
        return self.shape[1:] if self.kind == "conv" else (self.shape[0],) if self.kind == "tokens" else ()


def family(visual) -> str:
    """``resnet`` or ``vit``; anything else is refused with the list of supported architectures."""
    names = type(visual).__name__
    if names == "ModifiedResNet":
        return "resnet"
    if names == "VisionTransformer":
        return "vit"
    raise ClipgenError(f"unsupported image tower {names}: clipgen's layer catalogue covers {SUPPORTED}")


def layer_modules(visual) -> list[tuple[str, str]]:
    """``(layer name, module path)`` in forward order."""
    fam = family(visual)
    if fam == "resnet":
        out = [("act1", "act1"), ("act2", "act2"), ("act3", "act3"), ("avgpool", "avgpool")]
        k = 0
        for li in range(1, 5):
            for bi in range(len(getattr(visual, f"layer{li}"))):
                k += 1
                out.append((f"resblock{k}", f"layer{li}.{bi}"))
        out.append(("attnpool", "attnpool"))
        return out
    out = [("patch_embed", "conv1")]
    for i in range(len(visual.transformer.resblocks)):
        out.append((f"resblock{i + 1}", f"transformer.resblocks.{i}"))
    out.append(("ln_post", "ln_post"))
    return out


def get_module(visual, path: str):
    mod = visual
    for part in path.split("."):
        mod = mod[int(part)] if part.isdigit() else getattr(mod, part)
    return mod


def layer_catalogue(visual, image_size: int | None = None) -> list[LayerSpec]:
    """Every layer with its output shape, measured by one forward pass of a blank image."""
    import torch

    mods = layer_modules(visual)
    size = image_size or _image_size(visual)
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, path in mods:
        def hook(_m, _i, out, name=name):
            t = out[0] if isinstance(out, tuple) else out
            shapes[name] = tuple(t.shape[1:])
        handles.append(get_module(visual, path).register_forward_hook(hook))
    was_training = visual.training
    try:
        visual.eval()
        p = next(visual.parameters())
        with torch.no_grad():
            visual(torch.zeros(1, 3, size, size, device=p.device, dtype=p.dtype))
    finally:
        for h in handles:
            h.remove()
        visual.train(was_training)
    specs = []
    for name, path in mods:
        shp = shapes[name]
        if len(shp) == 3:
            kind, ch = "conv", shp[0]
        elif len(shp) == 2:
            kind, ch = "tokens", shp[1]
        else:
            kind, ch = "vector", shp[0]
        specs.append(LayerSpec(name, path, kind, shp, ch))
    return specs


def _image_size(visual) -> int:
    s = getattr(visual, "image_size", 224)
    return s[0] if isinstance(s, (tuple, list)) else int(s)


def select_layers(catalogue: list[LayerSpec], spec: str, field: str = "layer",
                  extra: tuple[str, ...] = ("embedding",)) -> list[str]:
    """Parse ``all`` or a comma list of layer names; an unknown name lists the valid ones."""
    valid = [s.name for s in catalogue] + list(extra)
    if spec.strip().lower() == "all":
        return valid
    names = [n.strip() for n in spec.split(",") if n.strip()]
    bad = [n for n in names if n not in valid]
    if bad:
        raise ConfigFieldError(field, f"unknown layer(s) {', '.join(bad)}; valid: {' '.join(valid)}")
    if not names:
        raise ConfigFieldError(field, "no layer given")
    return [n for n in valid if n in names]
