"""ImageNet-Sketch mixing experiments (sketch is the test domain).

ImageNet-Sketch images (``<sketch_root>/<wnid>/*.JPEG``, read in ImageFolder order: sorted class folders, sorted
file names) get synthetic captions: a template drawn from :data:`SKETCH_TEMPLATES` (21), its full stop dropped
with probability 0.5, filled with OpenAI's ImageNet class name; ``random.Random(42)``, two draws per image, as in
the published ``generate_sketch_captions.py``. All captions are written to ``in-sketch-captions.tsv``.

Only sketches of the 550 ImageNet classes *without* a DomainNet counterpart are used. clipgen filters by class
index (``filter="class"``, the default). The published scripts test whether any of the 450 shared class names
occurs as a substring of the caption (``filter="substring"``), which also drops 36 non-shared classes whose caption
happens to contain a shared name ("sea lion" holds "lion", "beer glass" holds "bee", "library" holds "bra", ...), so
it keeps fewer sketches; it stays available for paper-faithful numbers.

``add`` (``add_in_sketches.py``): the filtered sketches are added to natural-only, leave-out-domain (``cipqr``) and
CG high-diversity (``cipqrs``) for sketch; as many random DomainNet rows of the mixture are removed
(``random.Random(42).sample`` over row positions, re-seeded per mixture) to keep the size. Output
``combined-captions-train-{identifier}-with-in-sketches.tsv`` = base, remaining DomainNet rows, sketches.

``mix`` (``mix_in_sketches.py``): from sketch CG high-diversity plus all filtered sketches, DomainNet sketches are
kept only for a nested random subset of the C1 sketch classes (50%, 25%, 30% = the 25% plus more of the 50%, 10%,
5%, 1% of the classes, and one class; counts ``floor(p * n)``, at least one: 165, 82, 99, 33, 16, 3, 1 of 330);
random other DomainNet rows are dropped to keep the size. One random stream (seed 42) draws the class subsets and
then the dropped rows mode by mode in the published order, so every mode is computed even when fewer are written.
The published script draws the extra classes of the 30% set from ``list(set(...))``, whose order depends on
Python's string hashing (``PYTHONHASHSEED``), so it is not reproducible across processes; clipgen takes them in the
50% subset's order. Output ``...-with-in-sketches-{mode}.tsv`` = base, other DomainNet rows, kept DomainNet
sketches, ImageNet sketches.

Every training TSV gets a validation twin (``combined-captions-val-...``) = the source mixture's validation set
(ImageNet-Sketch has no split; the evaluation is on DomainNet sketches anyway).
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipgen import domainnet as dn
from clipgen.data.mixture_info import SKETCH_MIX_MODES, MixtureInfo, write_index
from clipgen.errors import ClipgenError, ConfigFieldError

SKETCH_TEMPLATES: tuple[str, ...] = (
    "{}.", "a {}.", "the {}.",
    "{} drawing.", "drawing of a {}.", "drawing of the {}.", "a {} drawing.", "a drawing of a {}.",
    "a drawing of the {}.",
    "{} sketch.", "sketch of a {}.", "sketch of the {}.", "a {} sketch.", "a sketch of a {}.", "a sketch of the {}.",
    "{} image.", "image of a {}.", "image of the {}.", "a {} image.", "an image of a {}.", "an image of the {}.",
)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
FILTERS = ("class", "substring")
VARIANTS = ("add", "mix")
CAPTIONS_NAME = "in-sketch-captions.tsv"
CONFIG_NAME = "in-sketch.config.json"
TEST_DOMAIN = "sketch"
ADD_SETUPS = (("natural-only", "natural-only+in-sketch"), ("leave-out-domain", "leave-out-domain+in-sketch"),
              ("cg-high", "cg-high+in-sketch"))


@dataclass(frozen=True)
class SketchImage:
    path: str  # absolute
    index: int  # ImageNet-1k class index
    caption: str


def scan_sketch_root(root: str | Path) -> list[tuple[str, int]]:
    """``(absolute path, ImageNet index)`` in ImageFolder order; folders must be ImageNet WordNet ids."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigFieldError("sketch_root", f"{root} is not a folder")
    wnid_index = {wnid: i for i, (wnid, _) in dn.imagenet_class_index().items()}
    dirs = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not dirs:
        raise ConfigFieldError("sketch_root", f"{root} has no class folders (expected <root>/<wnid>/*.JPEG)")
    bad = [d for d in dirs if d not in wnid_index]
    if bad:
        raise ConfigFieldError("sketch_root", f"{root / bad[0]}: folder name is not an ImageNet WordNet id "
                                            f"({len(bad)} such folders)")
    out = []
    base = root.resolve()
    for wnid in dirs:
        for dirpath, _, files in sorted(os.walk(base / wnid, followlinks=True)):
            for f in sorted(files):
                if f.lower().endswith(IMG_EXTENSIONS):
                    out.append((os.path.join(dirpath, f), wnid_index[wnid]))
    if not out:
        raise ConfigFieldError("sketch_root", f"{root} holds no images")
    return out


def caption_sketches(images: Sequence[tuple[str, int]], classnames: Sequence[str], seed: int = 42) -> list[SketchImage]:
    rng = random.Random(seed)
    out = []
    for path, idx in images:
        t = rng.choice(SKETCH_TEMPLATES)
        if not rng.random() < 0.5:
            t = t[:-1]
        out.append(SketchImage(path, idx, t.format(classnames[idx])))
    return out


def shared_indices() -> frozenset[int]:
    """The 450 ImageNet classes that map to a DomainNet class."""
    return frozenset(i for v in dn.imagenet_to_domainnet().values() if v for i in v)


def filter_sketches(images: Sequence[SketchImage], classnames: Sequence[str], mode: str = "class") -> list[SketchImage]:
    """Sketches of ImageNet classes without a DomainNet counterpart (by class index, or the published substring
    test on the caption)."""
    shared = shared_indices()
    if mode == "class":
        return [im for im in images if im.index not in shared]
    if mode == "substring":
        names = [classnames[i] for i in sorted(shared)]
        return [im for im in images if not any(n in im.caption for n in names)]
    raise ConfigFieldError("filter", f"unknown filter {mode!r} (one of {', '.join(FILTERS)})")


def mix_class_counts(n: int) -> dict[str, int]:
    """Classes kept per mix mode: ``floor(p * n)``, at least 1 (165, 82, 99, 33, 16, 3, 1 for n = 330)."""
    return {m: (max(1, n * p // 100) if p is not None else 1) for m, p in SKETCH_MIX_MODES.items()}


def mix_class_subsets(classes: Sequence[int], rng: random.Random) -> dict[str, list[int]]:
    """The nested class subsets of the mix experiment, drawn in the published order."""
    k = mix_class_counts(len(classes))
    half = rng.sample(list(classes), k=k["fiftyp"])
    quart = rng.sample(half, k=k["twentyfivep"])
    rest = [c for c in half if c not in set(quart)]
    thirty = quart + rng.sample(rest, k=k["thirtyp"] - k["twentyfivep"])
    ten = rng.sample(quart, k=k["tenp"])
    five = rng.sample(ten, k=k["fivep"])
    onep = rng.sample(five, k=k["onep"])
    one = rng.sample(onep, k=1)
    return {"fiftyp": half, "twentyfivep": quart, "thirtyp": thirty, "tenp": ten, "fivep": five, "onep": onep,
            "one": one}


@dataclass
class SketchConfig:
    """Options of ``clipgen data imagenet-sketch``."""

    root: Path  # DomainNet root
    sketch_root: Path  # ImageNet-Sketch: <root>/<wnid>/*.JPEG
    out: Path
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    modes: list[str] = field(default_factory=lambda: list(SKETCH_MIX_MODES))
    filter: str = "class"
    caption_seed: int = 42  # ImageNet-Sketch captions
    seed: int = 42  # rows removed (add) and classes/rows drawn (mix)
    captions: Path | None = None  # DomainNet caption folder
    held_out: list[str] | None = None
    base: Path | None = None
    base_val: Path | None = None
    size_match: bool = True
    subsample: str = "first-k"
    subsample_seed: int = 0
    check_files: bool = False
    force: bool = False  # overwrite existing TSVs


@dataclass
class SketchResult:
    out: Path
    infos: list[MixtureInfo]
    captions_file: Path
    n_images: int
    n_kept: int
    n_kept_other_filter: int  # what the other filter would keep
    n_classes_kept: int


def _counts(rows: Sequence[tuple[Any, ...]], held: frozenset[int]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        c = out.setdefault(r[3], {"id": 0, "ood": 0})
        c["ood" if r[1] in held else "id"] += 1
    return {d: out[d] for d in dn.DOMAINS if d in out}


def run_sketch_mixtures(cfg: SketchConfig, *, progress: bool = True) -> SketchResult:
    from clipgen.artifacts import config_record, write_json_atomic
    from clipgen.data.mixtures import (
        _caption_seed,
        build_mixture,
        held_out_record,
        load_domainnet,
        make_spec,
        read_base,
        resolve_held_out,
    )
    from clipgen.progress import make_progress
    from clipgen.tsv import write_tsv

    variants = [v.strip() for v in cfg.variants if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            raise ConfigFieldError("variants", f"unknown variant {v!r} (one of {', '.join(VARIANTS)})")
    if not variants:
        raise ConfigFieldError("variants", "no variant given")
    if "mix" in variants and not cfg.modes:
        raise ConfigFieldError("modes", "no mix mode given")
    for m in cfg.modes:
        if m not in SKETCH_MIX_MODES:
            raise ConfigFieldError("modes", f"unknown mix mode {m!r} (one of {', '.join(SKETCH_MIX_MODES)})")
    if cfg.filter not in FILTERS:
        raise ConfigFieldError("filter", f"unknown filter {cfg.filter!r} (one of {', '.join(FILTERS)})")
    kw = dict(size_match=cfg.size_match, subsample=cfg.subsample, seed=cfg.subsample_seed)
    sources = {setup: make_spec(setup, None if setup == "natural-only" else TEST_DOMAIN,
                                **({} if setup == "natural-only" else kw))
               for setup, _ in ADD_SETUPS if "add" in variants or setup == "cg-high"}
    out = Path(cfg.out)
    planned: list[tuple[str, str | None, str]] = []  # (source setup, mode, sketch setup)
    if "add" in variants:
        planned += [(s, None, ss) for s, ss in ADD_SETUPS]
    if "mix" in variants:
        planned += [("cg-high", m, f"in-sketch-mix-{m}") for m in SKETCH_MIX_MODES if m in cfg.modes]

    def fname(split: str, setup: str, mode: str | None) -> str:
        suffix = "-with-in-sketches" + (f"-{mode}" if mode else "")
        return f"combined-captions-{split}-{sources[setup].identifier}{suffix}.tsv"

    targets = [out / CAPTIONS_NAME] + [out / fname(sp, s, m) for s, m, _ in planned for sp in ("train", "val")]
    if not cfg.force:
        for p in targets:
            if p.exists():
                raise ClipgenError(f"{p}: already exists (pass --force to overwrite)")

    classnames = dn.imagenet_classnames()
    images = caption_sketches(scan_sketch_root(cfg.sketch_root), classnames, cfg.caption_seed)
    kept = filter_sketches(images, classnames, cfg.filter)
    other = filter_sketches(images, classnames, "substring" if cfg.filter == "class" else "class")
    if not kept:
        raise ConfigFieldError("sketch_root", f"no ImageNet-Sketch image of a class without a DomainNet counterpart "
                                            f"in {cfg.sketch_root}")
    data = load_domainnet(cfg.root, dn.DOMAINS, captions=cfg.captions, check_files=cfg.check_files)
    held = resolve_held_out(cfg.held_out, data.all_samples())
    base = read_base(cfg.base, "base", cfg.check_files) if cfg.base else []
    base_val = read_base(cfg.base_val, "base_val", cfg.check_files) if cfg.base_val else []
    built = {s: build_mixture(data, spec, held.label_set) for s, spec in sources.items()}
    sketch_rows = [(im.path, -1, im.caption, "imagenet-sketch") for im in kept]

    results: list[tuple[str, str | None, str, list[tuple[Any, ...]], dict[str, Any]]] = []
    if "add" in variants:
        for setup, sketch_setup in ADD_SETUPS:
            b = built[setup]
            dn_rows = [(p, lab, cap, d) for (p, lab, cap), d in zip(b.train, b.train_domains, strict=True)]
            if len(kept) > len(dn_rows):
                raise ClipgenError(f"add: {len(kept)} ImageNet sketches but only {len(dn_rows)} DomainNet rows in "
                                   f"{b.spec.identifier} to replace")
            drop = set(random.Random(cfg.seed).sample(range(len(dn_rows)), k=len(kept)))
            rows = [r for i, r in enumerate(dn_rows) if i not in drop] + sketch_rows
            results.append((setup, None, sketch_setup, rows, {"dn_removed": len(drop)}))
    if "mix" in variants:
        b = built["cg-high"]
        dn_rows = [(p, lab, cap, d) for (p, lab, cap), d in zip(b.train, b.train_domains, strict=True)]
        sketches: dict[int, list[tuple[Any, ...]]] = {}
        for r in dn_rows:
            if r[3] == TEST_DOMAIN:
                sketches.setdefault(r[1], []).append(r)
        others = [r for r in dn_rows if r[3] != TEST_DOMAIN]
        n_dn_sketch = sum(len(v) for v in sketches.values())
        if not sketches:
            raise ClipgenError(f"mix: {b.spec.identifier} holds no DomainNet sketches")
        rng = random.Random(cfg.seed)
        subsets = mix_class_subsets(list(sketches), rng)
        for mode in SKETCH_MIX_MODES:  # all modes, in order: they share the random stream
            remaining = [r for c in subsets[mode] for r in sketches[c]]
            removed = n_dn_sketch - len(remaining)
            if removed > len(kept):
                raise ClipgenError(f"mix {mode}: {removed} DomainNet sketches removed but only {len(kept)} ImageNet "
                                   f"sketches to put in their place")
            drop = set(rng.sample(range(len(others)), k=len(kept) - removed))
            rows = [r for i, r in enumerate(others) if i not in drop] + remaining + sketch_rows
            if mode in cfg.modes:
                results.append(("cg-high", mode, f"in-sketch-mix-{mode}", rows, {
                    "dn_sketch_classes": len(sketches), "dn_sketch_classes_kept": len(subsets[mode]),
                    "dn_sketches_removed": removed, "dn_other_removed": len(drop),
                    "kept_labels": sorted(subsets[mode])}))

    hs = held.label_set
    infos: list[MixtureInfo] = []
    writes: list[tuple[Path, list[tuple[str, str]]]] = []
    caption_seed = _caption_seed(data.captions)
    for setup, mode, sketch_setup, rows, extra in results:
        b = built[setup]
        src = b.spec
        detail = {"variant": "mix" if mode else "add", "mode": mode, "filter": cfg.filter,
                  "images": len(kept), "classes": len({im.index for im in kept}), "caption_seed": cfg.caption_seed,
                  "seed": cfg.seed, **extra}
        for split in ("train", "val"):
            if split == "train":
                dn_counts = _counts([r for r in rows if r[3] in dn.DOMAINS], hs)
                body = [(r[0], r[2]) for r in rows]
                n_sk = len(kept)
                bb = base
            else:
                dn_counts = b.counts["val"]
                body = [(p, c) for p, _, c in b.val]
                n_sk = 0
                bb = base_val
            bpath = cfg.base if split == "train" else cfg.base_val
            info = MixtureInfo(
                file=fname(split, setup, mode), split=split, setup=sketch_setup, domains=list(src.domains),
                test_domain=TEST_DOMAIN, held_out=list(held.names), held_out_labels=list(held.labels),
                aligned=False, size_matched=src.size_match and split == "train",
                subsample=src.subsample if src.size_match and split == "train" else "none", seed=src.seed,
                base=str(Path(bpath).resolve()) if bpath else None,
                counts={"base": len(bb), **dn_counts, "imagenet-sketch": n_sk, "total": len(bb) + len(body)},
                identifier=f"{src.identifier}-with-in-sketches" + (f"-{mode}" if mode else ""),
                caption_seed=caption_seed, reference_size=b.reference_size if split == "train" else None,
                source=src.file(split), in_sketch=detail,
            )
            infos.append(info)
            writes.append((out / info.file, bb + body))
    with make_progress(disable=not progress) as bar:
        task = bar.add_task("writing ImageNet-Sketch mixtures", total=len(writes) + 1)
        write_tsv(out / CAPTIONS_NAME, [(im.path, im.caption) for im in images], force=True)
        bar.advance(task)
        for path, rows in writes:
            write_tsv(path, rows, force=True)
            bar.advance(task)
    write_index(out, infos)
    write_json_atomic(out / CONFIG_NAME, {**config_record("data imagenet-sketch", cfg), "result": {
        "images": len(images), "kept": len(kept), "kept_with_other_filter": len(other),
        "held_out": held_out_record(held)}})
    return SketchResult(out, infos, out / CAPTIONS_NAME, len(images), len(kept), len(other),
                        len({im.index for im in kept}))


def render_sketch_summary(infos: Sequence[MixtureInfo]) -> Any:
    from rich.table import Table

    t = Table(title="ImageNet-Sketch mixtures (train)", title_justify="left")
    t.add_column("setup", no_wrap=True)
    for c in ("base", "DomainNet C1", "DomainNet C2", "DN sketches", "IN sketches", "total"):
        t.add_column(c, justify="right")
    for i in infos:
        if i.split != "train":
            continue
        doms = {k: v for k, v in i.counts.items() if k in dn.DOMAINS}
        t.add_row(i.setup, f"{i.counts.get('base', 0):,}",
                  f"{sum(v['id'] for v in doms.values()):,}", f"{sum(v['ood'] for v in doms.values()):,}",
                  f"{sum(doms.get(TEST_DOMAIN, {}).values()):,}", f"{i.counts.get('imagenet-sketch', 0):,}",
                  f"{i.counts.get('total', 0):,}")
    return t
