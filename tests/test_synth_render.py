"""The synthetic DomainNet's shapes and renderers."""

import numpy as np
from PIL import ImageFilter

from clipgen import domainnet as dn
from clipgen.data import synth_render as R
from clipgen.data.synth_render import class_shape, render


def test_every_style_draws_the_class_shape(monkeypatch):
    """In every domain the image differs from its background where the class polygons were placed."""
    placed = []
    orig = R._place
    monkeypatch.setattr(R, "_place", lambda *a, **k: placed.append(orig(*a, **k)) or placed[-1])
    for d in dn.DOMAINS:
        ratios = []
        for label in (11, 13, 66):
            for k in range(4):
                img = np.asarray(render(d, label, 64, (0, k)).convert("L"), float)
                m = R._mask(placed[-1], 128).filter(ImageFilter.MaxFilter(5)).resize((64, 64))
                m = np.asarray(m) > 127
                dev = np.abs(img - np.median(np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])))
                ratios.append(dev[m].mean() / max(dev[~m].mean(), 1e-3))
        assert np.mean(ratios) > 1.5, d


def test_class_shapes_are_fixed_and_distinct():
    a, b = class_shape(11), class_shape(13)
    assert all(np.array_equal(x, y) for x, y in zip(a.polygons, class_shape(11).polygons, strict=True))
    assert [p.shape for p in a.polygons] != [p.shape for p in b.polygons] or not all(
        np.allclose(x, y) for x, y in zip(a.polygons, b.polygons, strict=False))
