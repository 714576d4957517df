"""A synthetic DomainNet: deterministic by seed, offline, seconds to generate, laid out like the real dataset.

Each class is a fixed procedural shape (a composition of 2-3 primitives derived from the class label), so the
class identity is the object's *shape* and survives every rendering style. Six renderers mimic DomainNet's
domains:

========== =================================================================================
real        photo-like: shaded object in the class's colour, textured background, clutter, blur
clipart     flat colours, thick black outlines, plain background
painting    brush-like strokes over the canvas and inside the object, colour noise
sketch      grey pencil outlines drawn several times with jitter, hatching inside
quickdraw   thin black jittered strokes of the outline on white, nothing else
infograph   a small object among text-like bars and chart blocks
========== =================================================================================

Layout (the real dataset's)::

    <root>/<domain>/<class_folder>/<domain>_<NNN>_<id:06d>.jpg   NNN = 1-based class number, as in DomainNet
    <root>/<domain>_train.txt, <root>/<domain>_test.txt        lines "relative/path label", sorted by path
    <root>/base/...jpg, base_train.tsv, base_val.tsv            natural-style base dataset with free captions
    <root>/classes.tsv, contact_sheet.png, config.json

Labels are the real DomainNet labels (not 0..K-1), so every real-data code path runs unchanged. With
``quirks`` on (the default), one non-held-out class has no painting test images, as in the real dataset.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from clipgen.artifacts import atomic_path, write_config
from clipgen.domainnet import DOMAINS, HELD_OUT_CLASSES, DNClass, class_by_name, class_table
from clipgen.errors import ClipgenError, option_error
from clipgen.tsv import write_tsv

#: Non-held-out classes the default set starts with: they carry the real dataset's quirks (capitals and
#: hyphens in folder names, labels out of sorted-name order: ``cello`` 66 before ``cell_phone`` 67).
QUIRKY_CLASSES: tuple[str, ...] = ("cello", "cell phone", "teddy-bear", "the eiffel tower")
#: Held-out classes in the order the default set takes them.
HELD_OUT_ORDER: tuple[str, ...] = (
    "axe", "banana", "candle", "penguin", "barn", "bed", "lion", "mountain", "necklace", "pizza", "saxophone",
    "television", "tractor", "traffic light", "aircraft carrier",
)
SPLIT_NAMES = ("train", "test")
#: The real DomainNet's (cleaned) split sizes, images per domain: (train, test). ``--split-sizes paper``.
DOMAINNET_SPLIT_SIZES: dict[str, tuple[int, int]] = {
    "clipart": (33_525, 14_604), "infograph": (36_023, 15_582), "painting": (50_416, 21_850),
    "quickdraw": (120_750, 51_750), "real": (120_906, 52_041), "sketch": (48_212, 20_916),
}
#: Rows of the ImageNet-Captions base dataset the paper's step counts imply (train + val).
IMAGENET_CAPTIONS_ROWS = 425_400

BASE_TEMPLATES: tuple[str, ...] = (
    "a photo of a {c}",
    "my {c} on the table",
    "{c} in the {place}",
    "close-up of a {adj} {c}",
    "a {adj} {c} next to a wall",
    "the {c} we saw in the {place} yesterday",
    "{c}",
    "a {adj} {c}, {place}",
    "look at this {c}!",
    "an old {c} in the {place}",
)
BASE_PLACES = ("kitchen", "garden", "street", "museum", "shop", "park", "office", "living room", "market", "studio")
BASE_ADJECTIVES = ("small", "large", "bright", "dark", "shiny", "old", "new", "colourful", "plain", "lovely")


@dataclass
class SynthConfig:
    """Options of ``clipgen data synth``."""

    out: Path
    classes: list[str] | None = None  # explicit class names; default: n_classes picked as documented
    n_classes: int = 12
    n_held_out: int | None = None  # how many of the paper's held-out classes the default set includes
    train_per_class: int = 30  # images per class and domain in the train split
    test_per_class: int = 15  # ... in the test split
    base_per_class: int = 40  # natural-style base images per class (train + val)
    base_extra_classes: int = 8  # base-only classes, like ImageNet classes absent from DomainNet
    base_val_fraction: float = 0.1
    image_size: int = 64
    seed: int = 0
    quirks: bool = True
    workers: int = 0  # 0: one per CPU core
    domains: list[str] = field(default_factory=lambda: list(DOMAINS))
    # Per-domain split totals {domain: [train, test]}, spread over the classes as evenly as possible (the first
    # classes in label order take the remainder); replaces train/test_per_class for the domains it names.
    split_sizes: dict[str, list[int]] | None = None
    base_rows: int | None = None  # base-dataset rows (train + val); rows cycle over base_per_class images per class
    fast: bool = False  # draw at the output size (no 2x supersampling): about 3x faster, blockier edges
    # At most this many distinct images per (domain, split, class); the others are hard links to them (the files,
    # paths and decoding cost of a large dataset, rendered in a fraction of the time). None: every image distinct.
    distinct_images: int | None = None


def spread(total: int, n: int) -> list[int]:
    """``total`` split over ``n`` slots as evenly as possible, the first ``total mod n`` slots one more."""
    if n <= 0:
        return []
    q, r = divmod(total, n)
    return [q + 1 if i < r else q for i in range(n)]


def parse_split_sizes(text: str, option: str = "--split-sizes") -> dict[str, list[int]]:
    """``paper`` (the real DomainNet's) or ``domain=TRAIN/TEST,...`` (names or letters)."""
    from clipgen.domainnet import parse_domains

    if text.strip() == "paper":
        return {d: list(v) for d, v in DOMAINNET_SPLIT_SIZES.items()}
    out: dict[str, list[int]] = {}
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        name, _, sizes = part.partition("=")
        train, _, test = sizes.partition("/")
        try:
            counts = [int(train), int(test)]
        except ValueError:
            raise option_error(option, f"{part!r} is not DOMAIN=TRAIN/TEST (or 'paper')") from None
        if min(counts) < 0:
            raise option_error(option, f"{part!r}: sizes must not be negative")
        out[parse_domains([name.strip()], option=option)[0]] = counts
    if not out:
        raise option_error(option, "empty; give 'paper' or DOMAIN=TRAIN/TEST,...")
    return out


# ---------------------------------------------------------------------------------------------------------------
# Class selection


def default_classes(n_classes: int, n_held_out: int | None = None, seed: int = 0) -> list[DNClass]:
    """The default class set: ``n_held_out`` paper held-out classes, the quirky classes, then others by seed."""
    if n_classes < 2:
        raise option_error("--n-classes", "need at least 2 classes")
    if n_held_out is None:
        n_held_out = max(1, round(n_classes / 3))
    if not 0 <= n_held_out <= min(len(HELD_OUT_ORDER), n_classes - 1):
        raise option_error("--n-held-out", f"must be between 0 and {min(len(HELD_OUT_ORDER), n_classes - 1)}")
    chosen = [class_by_name(n) for n in HELD_OUT_ORDER[:n_held_out]]
    chosen += [class_by_name(n) for n in QUIRKY_CLASSES[: n_classes - len(chosen)]]
    held = {class_by_name(n).label for n in HELD_OUT_CLASSES}
    pool = [c for c in class_table() if c.label not in held and c not in chosen]
    rng = np.random.default_rng([seed, 7919])
    for i in rng.permutation(len(pool))[: n_classes - len(chosen)]:
        chosen.append(pool[int(i)])
    return sorted(chosen, key=lambda c: c.label)


def resolve_classes(cfg: SynthConfig) -> list[DNClass]:
    if cfg.classes:
        out = []
        for name in cfg.classes:
            c = class_by_name(name, option="--classes")
            if c in out:
                raise option_error("--classes", f"class {c.name!r} given twice")
            out.append(c)
        if len(out) < 2:
            raise option_error("--classes", "need at least 2 classes")
        return sorted(out, key=lambda c: c.label)
    return default_classes(cfg.n_classes, cfg.n_held_out, cfg.seed)


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


# ---------------------------------------------------------------------------------------------------------------
# Generation


@dataclass(frozen=True)
class _Job:
    path: str
    domain: str  # renderer
    label: int
    key: tuple[int, ...]


def _render_chunk(args: tuple[list[_Job], int, str, bool]) -> int:
    jobs, size, root, fast = args
    made: set[Path] = set()
    for job in jobs:
        img = render(job.domain, job.label, size, job.key, fast=fast)
        path = Path(root) / job.path
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        img.save(path, quality=92)
    return len(jobs)


def render_jobs(cfg: SynthConfig, layout: dict) -> tuple[list[_Job], list[tuple[str, str]]]:
    """The images to render, and ``(source, copy)`` pairs of relative paths: with ``distinct_images`` N, image i >= N
    of a (domain, split, class) is a hard link to image i mod N of the same (domain, split, class)."""
    jobs: list[_Job] = []
    links: list[tuple[str, str]] = []
    n = cfg.distinct_images
    for (d, _), items in layout.items():
        sources: dict[int, list[str]] = {}
        for c, rel, key in items:
            own = sources.setdefault(c.label, [])
            if n and len(own) >= n:
                links.append((own[key[-1] % n], rel))
            else:
                own.append(rel)
                jobs.append(_Job(rel, d, c.label, key))
    return jobs, links


def plan(cfg: SynthConfig, classes: list[DNClass]) -> tuple[dict, list[tuple[DNClass, str, int]]]:
    """What to generate: per (domain, split) the ordered (class, file name) list, and the base images."""
    dom_index = {d: i for i, d in enumerate(DOMAINS)}
    held = {class_by_name(n).label for n in HELD_OUT_CLASSES}
    empty_painting = None
    if cfg.quirks:
        ids = [c for c in classes if c.label not in held]
        empty_painting = ids[len(ids) // 2].label if ids else None
    layout: dict[tuple[str, str], list[tuple[DNClass, str, tuple[int, ...]]]] = {}
    for d in cfg.domains:
        per_class = class_counts(cfg, classes, d, empty_painting)
        counter = 0
        for c in classes:
            for si, split in enumerate(SPLIT_NAMES):
                for i in range(per_class[split][c.label]):
                    counter += 1
                    rel = f"{d}/{c.folder}/{d}_{c.label + 1:03d}_{counter:06d}.jpg"
                    layout.setdefault((d, split), []).append((c, rel, (cfg.seed, dom_index[d], c.label, si, i)))
    return layout, empty_painting


def class_counts(cfg: SynthConfig, classes: list[DNClass], domain: str,
                 empty_painting: int | None) -> dict[str, dict[int, int]]:
    """Images per class of each split of ``domain``: the per-class options, or ``split_sizes`` spread over the
    classes (over those with images: the painting test split skips the quirk's class)."""
    out: dict[str, dict[int, int]] = {}
    for si, split in enumerate(SPLIT_NAMES):
        skip = empty_painting if split == "test" and domain == "painting" else None
        kept = [c.label for c in classes if c.label != skip]
        if cfg.split_sizes and domain in cfg.split_sizes:
            counts = dict(zip(kept, spread(cfg.split_sizes[domain][si], len(kept)), strict=True))
        else:
            counts = dict.fromkeys(kept, cfg.train_per_class if split == "train" else cfg.test_per_class)
        out[split] = {c.label: counts.get(c.label, 0) for c in classes}
    return out


def _base_classes(cfg: SynthConfig, classes: list[DNClass]) -> list[DNClass]:
    chosen = {c.label for c in classes}
    held = {class_by_name(n).label for n in HELD_OUT_CLASSES}
    pool = [c for c in class_table() if c.label not in chosen and c.label not in held]
    rng = np.random.default_rng([cfg.seed, 15485863])
    extra = [pool[int(i)] for i in rng.permutation(len(pool))[: cfg.base_extra_classes]]
    return list(classes) + sorted(extra, key=lambda c: c.label)


def plan_base(cfg: SynthConfig, base_classes: list[DNClass]) -> tuple[list[_Job], list[tuple[str, str, bool]]]:
    """The base dataset: ``base_per_class`` rendered images per class, and its rows ``(relative path, caption,
    is validation)``. Without ``base_rows`` every image is one row; with it, ``base_rows`` rows are spread over the
    classes and each class's rows cycle over its images (validation rows over the first images, training rows
    over the others, so no image is in both splits)."""
    jobs: list[_Job] = []
    rows: list[tuple[str, str, bool]] = []
    per_class = spread(cfg.base_rows, len(base_classes)) if cfg.base_rows else [cfg.base_per_class] * len(
        base_classes)
    counter = 0
    for c, n_rows in zip(base_classes, per_class, strict=True):
        rng = np.random.default_rng([cfg.seed, 99, c.label])
        rels = []
        for i in range(cfg.base_per_class):
            counter += 1
            rels.append(f"base/{c.folder}/base_{counter:06d}.jpg")
            jobs.append(_Job(rels[-1], "real", c.label, (cfg.seed, 17, c.label, i)))
        n_val_img = max(1, round(cfg.base_per_class * cfg.base_val_fraction))
        if not cfg.base_rows:
            rows += [(rel, base_caption(c.name, rng), i < n_val_img) for i, rel in enumerate(rels)]
            continue
        n_val = min(n_rows, max(1, round(n_rows * cfg.base_val_fraction)))
        val_imgs, train_imgs = rels[:n_val_img], rels[n_val_img:] or rels[:n_val_img]
        rows += [(val_imgs[i % len(val_imgs)], base_caption(c.name, rng), True) for i in range(n_val)]
        rows += [(train_imgs[i % len(train_imgs)], base_caption(c.name, rng), False) for i in range(n_rows - n_val)]
    return jobs, rows


def base_caption(name: str, rng: np.random.Generator) -> str:
    t = BASE_TEMPLATES[int(rng.integers(len(BASE_TEMPLATES)))]
    return t.format(c=name, place=BASE_PLACES[int(rng.integers(len(BASE_PLACES)))],
                    adj=BASE_ADJECTIVES[int(rng.integers(len(BASE_ADJECTIVES)))])


def contact_sheet(root: Path, layout: dict, domains: Sequence[str], classes: list[DNClass], out: Path,
                  cell: int = 64) -> None:
    """A grid of examples: one row per domain, one column per class (first train image)."""
    cols = classes[:16]
    label_w, head_h = 80, 14
    sheet = Image.new("RGB", (label_w + cell * len(cols), head_h + cell * len(domains)), (255, 255, 255))
    d = ImageDraw.Draw(sheet)
    for j, c in enumerate(cols):
        d.text((label_w + j * cell + 2, 1), c.name[:11], fill=(0, 0, 0))
    for i, dom in enumerate(domains):
        d.text((4, head_h + i * cell + cell // 2 - 5), dom, fill=(0, 0, 0))
        firsts = {}
        for c, rel, _ in layout.get((dom, "train"), []):
            firsts.setdefault(c.label, rel)
        for j, c in enumerate(cols):
            if c.label in firsts:
                im = Image.open(root / firsts[c.label]).convert("RGB").resize((cell, cell))
                sheet.paste(im, (label_w + j * cell, head_h + i * cell))
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")


@dataclass
class SynthResult:
    root: Path
    classes: list[DNClass]
    held_out: list[str]
    counts: dict[str, dict[str, int]]  # domain -> split -> images
    base_counts: dict[str, int]
    empty_painting_test_class: str | None
    contact_sheet: Path


def generate(cfg: SynthConfig, *, force: bool = False, progress: bool = True) -> SynthResult:
    """Generate the synthetic DomainNet under ``cfg.out`` (deterministic in ``cfg.seed``).

    An existing non-empty ``cfg.out`` is refused unless ``force``; it is then replaced only once the new
    dataset is complete.
    """
    from clipgen.progress import make_progress

    if cfg.image_size < 16 or cfg.image_size > 512:
        raise option_error("--image-size", "must be between 16 and 512")
    if cfg.train_per_class < 1:
        raise option_error("--train-per-class", "must be at least 1")
    if cfg.test_per_class < 1:
        raise option_error("--test-per-class", "must be at least 1")
    if not 0 < cfg.base_val_fraction < 1:
        raise option_error("--base-val-fraction", "must be strictly between 0 and 1")
    if cfg.distinct_images is not None and cfg.distinct_images < 1:
        raise option_error("--distinct-images", "must be at least 1")
    if cfg.base_rows is not None and cfg.base_rows < 1:
        raise option_error("--base-rows", "must be at least 1")
    if cfg.split_sizes:
        unknown = sorted(set(cfg.split_sizes) - set(DOMAINS))
        if unknown:
            raise option_error("--split-sizes", f"unknown domain {unknown[0]!r}")
        if any(len(v) != 2 or min(v) < 0 for v in cfg.split_sizes.values()):
            raise option_error("--split-sizes", "each domain needs two sizes (train, test), none negative")
    root = Path(cfg.out)
    check_out_dir(root, force)
    classes = resolve_classes(cfg)
    layout, empty_painting = plan(cfg, classes)
    base_classes = _base_classes(cfg, classes)
    held_names = {class_by_name(n).label for n in HELD_OUT_CLASSES}
    final = root.resolve()
    counts: dict[str, dict[str, int]] = {}
    # Everything is written under a temporary folder that is renamed onto ``root`` when complete.
    with atomic_path(root) as work:
        work.mkdir(parents=True)
        # base dataset plan: real-style renders with free-form captions
        base_jobs, base_rows = plan_base(cfg, base_classes)
        jobs, links = render_jobs(cfg, layout)
        jobs += base_jobs
        workers = cfg.workers or min(8, os.cpu_count() or 1)
        chunks = [jobs[i:i + 64] for i in range(0, len(jobs), 64)]
        with make_progress(disable=not progress) as bar:
            task = bar.add_task("rendering synthetic DomainNet", total=len(jobs) + len(links))
            args = [(ch, cfg.image_size, str(work), cfg.fast) for ch in chunks]
            if workers > 1 and len(jobs) > 256:
                with ProcessPoolExecutor(workers) as ex:
                    for n in ex.map(_render_chunk, args):
                        bar.advance(task, n)
            else:
                for a in args:
                    bar.advance(task, _render_chunk(a))
            made: set[Path] = set()
            for src, dst in links:  # after every source exists
                target = work / dst
                if target.parent not in made:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    made.add(target.parent)
                try:
                    os.link(work / src, target)
                except OSError:  # a file system without hard links
                    shutil.copyfile(work / src, target)
            bar.advance(task, len(links))

        for d in cfg.domains:
            for split in SPLIT_NAMES:
                items = sorted(layout.get((d, split), []), key=lambda t: t[1])
                (work / f"{d}_{split}.txt").write_text("".join(f"{rel} {c.label}\n" for c, rel, _ in items),
                                                       encoding="utf-8")
                counts.setdefault(d, {})[split] = len(items)
        train_rows = [(str(final / rel), cap) for rel, cap, is_val in base_rows if not is_val]
        val_rows = [(str(final / rel), cap) for rel, cap, is_val in base_rows if is_val]
        write_tsv(work / "base_train.tsv", train_rows)
        write_tsv(work / "base_val.tsv", val_rows)
        (work / "classes.tsv").write_text("label\tname\tfolder\theld_out\n" + "".join(
            f"{c.label}\t{c.name}\t{c.folder}\t{int(c.label in held_names)}\n" for c in classes), encoding="utf-8")
        contact_sheet(work, layout, cfg.domains, classes, work / "contact_sheet.png")
        write_config(work, "data synth", cfg)
    sheet = root / "contact_sheet.png"
    return SynthResult(
        root=root,
        classes=classes,
        held_out=[c.name for c in classes if c.label in held_names],
        counts=counts,
        base_counts={"train": len(train_rows), "val": len(val_rows)},
        empty_painting_test_class=class_table()[empty_painting].name if empty_painting is not None else None,
        contact_sheet=sheet,
    )


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse a non-empty output folder unless ``force``, and never replace a folder clipgen did not make."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise option_error("--out", f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise option_error("--out", f"{out} exists and is not empty (pass --force to replace it)")
        if not (out / "config.json").is_file():
            raise ClipgenError(f"--force: refusing to replace {out}: it does not look like a clipgen synthetic "
                               f"dataset (no config.json)")
