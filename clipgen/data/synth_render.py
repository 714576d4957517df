"""The synthetic DomainNet's images: one fixed procedural shape per class, drawn in six domain styles.

Each class is a fixed composition of 2-3 primitives derived from its label (:func:`class_shape`), so the class
identity is the object's *shape* and survives every rendering style; :func:`render` draws one image of a class in
one domain, deterministically in a seed key. :mod:`clipgen.data.synth` plans and writes the dataset.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# ---------------------------------------------------------------------------------------------------------------
# Shapes: a class is a fixed composition of primitives in unit coordinates ([-1, 1]^2).


def _regular(n: int, r: float, phase: float, inner: float | None = None) -> np.ndarray:
    if inner is None:
        t = phase + 2 * np.pi * np.arange(n) / n
        return np.stack([r * np.cos(t), r * np.sin(t)], 1)
    t = phase + np.pi * np.arange(2 * n) / n
    rr = np.where(np.arange(2 * n) % 2 == 0, r, r * inner)
    return np.stack([rr * np.cos(t), rr * np.sin(t)], 1)


def _ellipse(rx: float, ry: float, n: int = 36) -> np.ndarray:
    t = 2 * np.pi * np.arange(n) / n
    return np.stack([rx * np.cos(t), ry * np.sin(t)], 1)


def _rect(w: float, h: float) -> np.ndarray:
    return np.array([[-w, -h], [w, -h], [w, h], [-w, h]], dtype=float)


def _cross(a: float, b: float) -> np.ndarray:
    return np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a], [-b, b], [-a, b],
                     [-a, -b], [-b, -b]], dtype=float)


def _crescent(r: float, cut: float, n: int = 24) -> np.ndarray:
    t1 = np.linspace(-0.5 * np.pi, 0.5 * np.pi, n)
    outer = np.stack([r * np.cos(t1), r * np.sin(t1)], 1)
    t2 = np.linspace(0.5 * np.pi, -0.5 * np.pi, n)
    inner = np.stack([cut * r * np.cos(t2), r * np.sin(t2)], 1)
    return np.concatenate([outer, inner])


def _primitive(rng: np.random.Generator, size: float) -> np.ndarray:
    kind = int(rng.integers(0, 7))
    if kind == 0:
        return _regular(int(rng.integers(3, 8)), size, rng.uniform(0, np.pi))
    if kind == 1:
        return _regular(int(rng.integers(4, 8)), size, rng.uniform(0, np.pi), inner=rng.uniform(0.35, 0.6))
    if kind == 2:
        return _ellipse(size, size * rng.uniform(0.35, 0.8))
    if kind == 3:
        return _rect(size, size * rng.uniform(0.2, 0.55))
    if kind == 4:
        return _cross(size, size * rng.uniform(0.2, 0.4))
    if kind == 5:
        return _crescent(size, rng.uniform(-0.2, 0.5))
    return _regular(3, size, rng.uniform(0, 2 * np.pi))  # triangle


@dataclass(frozen=True)
class ClassShape:
    """The fixed look of one class: polygons in unit coordinates and a characteristic hue."""

    polygons: tuple[np.ndarray, ...]
    hue: float  # 0..1
    hue2: float


def class_shape(label: int) -> ClassShape:
    """Deterministic in the label alone, so a class looks the same whatever the generation seed."""
    rng = np.random.default_rng([label, 104729])
    main = _primitive(rng, rng.uniform(0.45, 0.62))
    rot = rng.uniform(0, 2 * np.pi)
    polys = [_rotate(main, rot)]
    for _ in range(int(rng.integers(1, 3))):
        ang = rng.uniform(0, 2 * np.pi)
        dist = rng.uniform(0.35, 0.6)
        sec = _rotate(_primitive(rng, rng.uniform(0.18, 0.32)), rng.uniform(0, 2 * np.pi))
        polys.append(sec + dist * np.array([np.cos(ang), np.sin(ang)]))
    pts = np.concatenate(polys)
    centre = (pts.max(0) + pts.min(0)) / 2
    extent = np.abs(pts - centre).max()
    polys = [(p - centre) / extent for p in polys]
    return ClassShape(tuple(polys), float(rng.uniform()), float(rng.uniform()))


def _rotate(p: np.ndarray, a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return p @ np.array([[c, s], [-s, c]])


# ---------------------------------------------------------------------------------------------------------------
# Rendering


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0), 1), min(max(v, 0), 1))
    return int(r * 255), int(g * 255), int(b * 255)


def _place(shape: ClassShape, rng: np.random.Generator, size: int, scale: tuple[float, float],
           centre: tuple[float, float] | None = None) -> list[np.ndarray]:
    """Random similarity transform (plus slight anisotropy) of the class polygons into pixel coordinates."""
    s = rng.uniform(*scale) * size / 2
    a = rng.uniform(-0.35, 0.35)
    aspect = rng.uniform(0.9, 1.1)
    if centre is None:
        margin = size / 2 - s
        centre = (size / 2 + rng.uniform(-0.3, 0.3) * margin, size / 2 + rng.uniform(-0.3, 0.3) * margin)
    out = []
    for p in shape.polygons:
        q = _rotate(p, a) * np.array([s * aspect, s / aspect])
        q = q + rng.normal(0, 0.012 * s, q.shape)
        out.append(q + np.asarray(centre))
    return out


def _mask(polys: list[np.ndarray], size: int) -> Image.Image:
    m = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(m)
    for p in polys:
        d.polygon([tuple(x) for x in p], fill=255)
    return m


def _outline(draw: ImageDraw.ImageDraw, polys: list[np.ndarray], fill, width: int, rng: np.random.Generator,
             jitter: float = 0.0, closed: bool = True) -> None:
    for p in polys:
        q = p + (rng.normal(0, jitter, p.shape) if jitter else 0)
        pts = [tuple(x) for x in q] + ([tuple(q[0])] if closed else [])
        draw.line(pts, fill=fill, width=width, joint="curve")


def _noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth value noise in [0, 1] (bilinear upsampling of a coarse random grid)."""
    g = rng.uniform(0, 1, (cells + 1, cells + 1)).astype(np.float32)
    img = Image.fromarray((g * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 255.0


def render_real(shape, rng, S):
    base = np.array(_hsv(rng.uniform(), rng.uniform(0.1, 0.4), rng.uniform(0.35, 0.85)), np.float32)
    other = np.array(_hsv(rng.uniform(), rng.uniform(0.1, 0.5), rng.uniform(0.3, 0.9)), np.float32)
    n = _noise(rng, S, 4)[..., None]
    bg = base * (1 - n) + other * n
    bg += rng.normal(0, 10, (S, S, 1)).astype(np.float32)  # fine texture
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 5))):  # clutter
        c = _hsv(rng.uniform(), rng.uniform(0.2, 0.7), rng.uniform(0.3, 0.9))
        x, y, r = rng.uniform(0, S), rng.uniform(0, S), rng.uniform(0.05, 0.18) * S
        if rng.uniform() < 0.5:
            d.ellipse([x - r, y - r * 0.7, x + r, y + r * 0.7], fill=c)
        else:
            d.rectangle([x - r, y - r / 2, x + r, y + r / 2], fill=c)
    img = img.filter(ImageFilter.GaussianBlur(S / 60))
    polys = _place(shape, rng, S, (0.55, 0.8))
    m = _mask(polys, S)
    col = np.array(_hsv(shape.hue + rng.normal(0, 0.03), rng.uniform(0.55, 0.9), rng.uniform(0.6, 0.95)), np.float32)
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) / S
    ang = rng.uniform(0, 2 * np.pi)
    shade = 0.65 + 0.5 * ((xx - 0.5) * np.cos(ang) + (yy - 0.5) * np.sin(ang))
    hx, hy = rng.uniform(0.3, 0.7, 2)
    spec = np.exp(-((xx - hx) ** 2 + (yy - hy) ** 2) / 0.01)
    obj = col * shade[..., None] + 90 * spec[..., None] + rng.normal(0, 8, (S, S, 1))
    obj_img = Image.fromarray(np.clip(obj, 0, 255).astype(np.uint8))
    # soft shadow, then the object
    shadow = m.filter(ImageFilter.GaussianBlur(S / 30))
    dark = Image.new("RGB", (S, S), (20, 20, 20))
    img = Image.composite(dark, img, shadow.point(lambda v: int(v * 0.45)))
    img.paste(obj_img, (0, 0), m.filter(ImageFilter.GaussianBlur(0.6)))
    return img.filter(ImageFilter.GaussianBlur(S / 160))


def render_clipart(shape, rng, S):
    bgc = (255, 255, 255) if rng.uniform() < 0.6 else _hsv(rng.uniform(), rng.uniform(0.05, 0.2), 1.0)
    img = Image.new("RGB", (S, S), bgc)
    d = ImageDraw.Draw(img)
    polys = _place(shape, rng, S, (0.6, 0.85))
    fills = [_hsv(shape.hue + rng.normal(0, 0.02), rng.uniform(0.75, 1.0), rng.uniform(0.85, 1.0)),
             _hsv(shape.hue2, rng.uniform(0.6, 1.0), rng.uniform(0.8, 1.0))]
    for i, p in enumerate(polys):
        d.polygon([tuple(x) for x in p], fill=fills[min(i, 1)])
    _outline(d, polys, (0, 0, 0), max(2, S // 22), rng)
    return img


def render_painting(shape, rng, S):
    canvas = np.array(_hsv(rng.uniform(), rng.uniform(0.2, 0.5), rng.uniform(0.5, 0.9)), np.float32)
    img = Image.fromarray(np.broadcast_to(canvas, (S, S, 3)).astype(np.uint8).copy())
    d = ImageDraw.Draw(img)
    bh = rng.uniform()
    for _ in range(int(S * 0.9)):  # background brush strokes
        x, y = rng.uniform(0, S, 2)
        ang = rng.uniform(0, np.pi)
        ln = rng.uniform(0.05, 0.2) * S
        c = _hsv(bh + rng.normal(0, 0.08), rng.uniform(0.2, 0.6), rng.uniform(0.4, 0.95))
        d.line([(x, y), (x + ln * np.cos(ang), y + ln * np.sin(ang))], fill=c, width=max(2, S // 18))
    polys = _place(shape, rng, S, (0.55, 0.8))
    m = _mask(polys, S)
    obj = Image.new("RGB", (S, S), _hsv(shape.hue, 0.7, 0.8))
    od = ImageDraw.Draw(obj)
    for _ in range(int(S * 1.2)):  # object strokes in the class colour
        x, y = rng.uniform(0, S, 2)
        ang = rng.uniform(0, np.pi)
        ln = rng.uniform(0.04, 0.14) * S
        c = _hsv(shape.hue + rng.normal(0, 0.04), rng.uniform(0.5, 0.95), rng.uniform(0.45, 1.0))
        od.line([(x, y), (x + ln * np.cos(ang), y + ln * np.sin(ang))], fill=c, width=max(2, S // 20))
    img.paste(obj, (0, 0), m.filter(ImageFilter.GaussianBlur(S / 80)))
    arr = np.asarray(img, np.float32) + rng.normal(0, 12, (S, S, 3))  # colour noise
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.5))


def render_sketch(shape, rng, S):
    paper = rng.uniform(225, 250)
    arr = paper + rng.normal(0, 4, (S, S))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).convert("RGB")
    polys = _place(shape, rng, S, (0.6, 0.85))
    m = _mask(polys, S)
    hatch = Image.new("L", (S, S), 255)
    hd = ImageDraw.Draw(hatch)
    ang = rng.uniform(0.3, 1.2)
    step = max(3, S // 14)
    g = int(rng.uniform(120, 170))
    for k in range(-2 * S, 2 * S, step):  # diagonal hatching, clipped to the object below
        hd.line([(k, 0), (k + S * math.tan(ang), S)], fill=g, width=1)
    img.paste(hatch.convert("RGB"), (0, 0), Image.composite(Image.new("L", (S, S), 200), Image.new("L", (S, S), 0),
                                                            m))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 4))):  # pencil outline, several jittered passes
        c = int(rng.uniform(40, 120))
        _outline(d, polys, (c, c, c), max(1, S // 48), rng, jitter=S * 0.012)
    return img.filter(ImageFilter.GaussianBlur(0.35))


def render_quickdraw(shape, rng, S):
    img = Image.new("RGB", (S, S), (255, 255, 255))
    d = ImageDraw.Draw(img)
    polys = _place(shape, rng, S, (0.6, 0.9))
    for p in polys:  # resample the outline and jitter it like a hand-drawn stroke
        q = np.concatenate([p, p[:1]])
        seg = np.linspace(0, len(q) - 1, 4 * len(q))
        qi = np.stack([np.interp(seg, np.arange(len(q)), q[:, k]) for k in range(2)], 1)
        qi += np.cumsum(rng.normal(0, S * 0.004, qi.shape), 0)
        stop = len(qi) - int(rng.integers(0, 3))  # strokes often do not close
        d.line([tuple(x) for x in qi[:stop]], fill=(0, 0, 0), width=max(1, S // 64))
    return img


def render_infograph(shape, rng, S):
    img = Image.new("RGB", (S, S), _hsv(rng.uniform(), rng.uniform(0, 0.1), rng.uniform(0.93, 1.0)))
    d = ImageDraw.Draw(img)
    # title bar and text-like rows
    d.rectangle([S * 0.05, S * 0.04, S * rng.uniform(0.5, 0.95), S * 0.11], fill=_hsv(rng.uniform(), 0.7, 0.5))
    for row in range(int(rng.integers(4, 8))):
        y = S * (0.18 + row * 0.1)
        x = S * 0.05
        while x < S * 0.95:
            w = rng.uniform(0.04, 0.14) * S
            d.rectangle([x, y, min(x + w, S * 0.95), y + S * 0.035], fill=(90, 90, 90))
            x += w + S * 0.03
    # chart blocks: a bar chart and a pie-like disk
    bx, by = rng.uniform(0.05, 0.55) * S, rng.uniform(0.55, 0.7) * S
    for k in range(int(rng.integers(3, 6))):
        h = rng.uniform(0.05, 0.25) * S
        d.rectangle([bx + k * S * 0.07, by + 0.28 * S - h, bx + k * S * 0.07 + S * 0.05, by + 0.28 * S],
                    fill=_hsv(rng.uniform(), 0.7, 0.85))
    cx, cy, r = rng.uniform(0.2, 0.8) * S, rng.uniform(0.2, 0.5) * S, rng.uniform(0.07, 0.12) * S
    start = rng.uniform(0, 360)
    d.pieslice([cx - r, cy - r, cx + r, cy + r], start, start + rng.uniform(60, 200),
               fill=_hsv(rng.uniform(), 0.8, 0.9))
    # the object: small, in a random quadrant, on a white panel
    q = rng.integers(0, 2, 2)
    centre = (S * (0.27 + 0.46 * q[0]), S * (0.3 + 0.42 * q[1]))
    polys = _place(shape, rng, S, (0.3, 0.42), centre=centre)
    pad = S * 0.2
    d.rectangle([centre[0] - pad, centre[1] - pad, centre[0] + pad, centre[1] + pad], fill=(255, 255, 255))
    fill = _hsv(shape.hue if rng.uniform() < 0.6 else rng.uniform(), rng.uniform(0.6, 1.0), 0.9)
    for p in polys:
        d.polygon([tuple(x) for x in p], fill=fill)
    _outline(d, polys, (40, 40, 40), max(1, S // 64), rng)
    return img


RENDERERS = {
    "real": render_real,
    "clipart": render_clipart,
    "painting": render_painting,
    "sketch": render_sketch,
    "quickdraw": render_quickdraw,
    "infograph": render_infograph,
}
#: The base dataset ("natural images with free captions") is rendered in the real style.
RENDER_SCALE = 2  # draw at twice the size, then downsample: cheap antialiasing


def render(domain: str, label: int, image_size: int, seed_key: Sequence[int], *, fast: bool = False) -> Image.Image:
    """Render one image of class ``label`` in ``domain``; deterministic in ``seed_key``. ``fast`` draws at the
    output size instead of twice it (no antialiasing pass)."""
    rng = np.random.default_rng(list(seed_key))
    if fast:
        return RENDERERS[domain](_class_shape_cached(label), rng, image_size)
    big = RENDERERS[domain](_class_shape_cached(label), rng, image_size * RENDER_SCALE)
    return big.resize((image_size, image_size), Image.LANCZOS)


@functools.lru_cache(maxsize=1024)
def _class_shape_cached(label: int) -> ClassShape:
    return class_shape(label)
