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

The class shapes and the six renderers are in :mod:`clipgen.data.synth_render`; this module picks the classes, plans
the images and writes the dataset.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clipgen.artifacts import atomic_path, write_config
from clipgen.domainnet import DOMAINS, HELD_OUT_CLASSES, DNClass, class_by_name, class_table
from clipgen.errors import ClipgenError, ConfigFieldError
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
    force: bool = False  # replace an existing synthetic dataset in out


def spread(total: int, n: int) -> list[int]:
    """``total`` split over ``n`` slots as evenly as possible, the first ``total mod n`` slots one more."""
    if n <= 0:
        return []
    q, r = divmod(total, n)
    return [q + 1 if i < r else q for i in range(n)]


def parse_split_sizes(text: str, field: str = "split_sizes") -> dict[str, list[int]]:
    """``paper`` (the real DomainNet's) or ``domain=TRAIN/TEST,...`` (names or letters); a malformed text is an error
    of config field ``field``."""
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
            raise ConfigFieldError(field, f"{part!r} is not DOMAIN=TRAIN/TEST (or 'paper')") from None
        if min(counts) < 0:
            raise ConfigFieldError(field, f"{part!r}: sizes must not be negative")
        out[parse_domains([name.strip()], field)[0]] = counts
    if not out:
        raise ConfigFieldError(field, "empty; give 'paper' or DOMAIN=TRAIN/TEST,...")
    return out


# ---------------------------------------------------------------------------------------------------------------
# Class selection


def default_classes(n_classes: int, n_held_out: int | None = None, seed: int = 0) -> list[DNClass]:
    """The default class set: ``n_held_out`` paper held-out classes, the quirky classes, then others by seed."""
    if n_classes < 2:
        raise ConfigFieldError("n_classes", "need at least 2 classes")
    if n_held_out is None:
        n_held_out = max(1, round(n_classes / 3))
    if not 0 <= n_held_out <= min(len(HELD_OUT_ORDER), n_classes - 1):
        raise ConfigFieldError("n_held_out", f"must be between 0 and {min(len(HELD_OUT_ORDER), n_classes - 1)}")
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
            c = class_by_name(name, field="classes")
            if c in out:
                raise ConfigFieldError("classes", f"class {c.name!r} given twice")
            out.append(c)
        if len(out) < 2:
            raise ConfigFieldError("classes", "need at least 2 classes")
        return sorted(out, key=lambda c: c.label)
    return default_classes(cfg.n_classes, cfg.n_held_out, cfg.seed)


# ---------------------------------------------------------------------------------------------------------------
# Generation


@dataclass(frozen=True)
class _Job:
    path: str
    domain: str  # renderer
    label: int
    key: tuple[int, ...]


def _render_chunk(args: tuple[list[_Job], int, str, bool]) -> int:
    from clipgen.data.synth_render import render  # (PIL): not on the CLI's start-up path, which imports the config

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
    from PIL import Image, ImageDraw  # (PIL): not on the CLI's start-up path, which imports the config

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


def run_synth(cfg: SynthConfig, *, progress: bool = True) -> SynthResult:
    """Generate the synthetic DomainNet under ``cfg.out`` (deterministic in ``cfg.seed``).

    An existing non-empty ``cfg.out`` is refused unless ``cfg.force``; it is then replaced only once the new
    dataset is complete.
    """
    from clipgen.progress import make_progress

    if cfg.image_size < 16 or cfg.image_size > 512:
        raise ConfigFieldError("image_size", "must be between 16 and 512")
    if cfg.train_per_class < 1:
        raise ConfigFieldError("train_per_class", "must be at least 1")
    if cfg.test_per_class < 1:
        raise ConfigFieldError("test_per_class", "must be at least 1")
    if not 0 < cfg.base_val_fraction < 1:
        raise ConfigFieldError("base_val_fraction", "must be strictly between 0 and 1")
    if cfg.distinct_images is not None and cfg.distinct_images < 1:
        raise ConfigFieldError("distinct_images", "must be at least 1")
    if cfg.base_rows is not None and cfg.base_rows < 1:
        raise ConfigFieldError("base_rows", "must be at least 1")
    if cfg.split_sizes:
        unknown = sorted(set(cfg.split_sizes) - set(DOMAINS))
        if unknown:
            raise ConfigFieldError("split_sizes", f"unknown domain {unknown[0]!r}")
        if any(len(v) != 2 or min(v) < 0 for v in cfg.split_sizes.values()):
            raise ConfigFieldError("split_sizes", "each domain needs two sizes (train, test), none negative")
    root = Path(cfg.out)
    check_out_dir(root, cfg.force)
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
        raise ConfigFieldError("out", f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise ConfigFieldError("out", f"{out} exists and is not empty (pass --force to replace it)")
        if not (out / "config.json").is_file():
            raise ClipgenError(f"--force: refusing to replace {out}: it does not look like a clipgen synthetic "
                               f"dataset (no config.json)")
