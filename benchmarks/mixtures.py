"""Benchmark: building mixtures at real DomainNet sizes, against the published script's data structures.

Builds a text-only DomainNet (split files only, no images) with the real split sizes (``--scale`` 1.0: 586,575
images over 345 classes, uneven classes, one painting test class empty, quickdraw 350/150 per class), writes its
caption files (``clipgen data captions``), then times in the same run:

* ``clipgen`` CG high-diversity for sketch: :func:`clipgen.data.mixtures.build_mixture` (groups by index lists,
  first-k counts, one pass), and the whole ``--paper`` grid (16 mixtures, train + val TSVs written);
* baseline: the published ``subsample_domainnet_lso.py`` structure for the same mixture: groups grown by list
  concatenation (``index[d][c] = index[d].get(c, []) + [sample]``, quadratic in the group size), then the same
  rule; and ``add_in_sketches.py``'s removal of k random rows with list membership (``i not in indices``,
  O(n * k)), timed on a slice and scaled to the full size (stated in the output), against clipgen's set.

Both mixture implementations must give the same rows. Data preparation is CPU-only; there is no GPU variant.
Usage: ``python benchmarks/mixtures.py [--scale 1.0] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from pathlib import Path

SIZES = {"clipart": (33525, 14604), "infograph": (36023, 15582), "painting": (50416, 21850),
         "quickdraw": (120750, 51750), "real": (120906, 52041), "sketch": (48212, 20916)}


def make_root(root: Path, scale: float, seed: int = 0) -> int:
    from clipgen import domainnet as dn

    rng = random.Random(seed)
    classes = dn.class_table()
    empty = classes[100]  # a C1 class without painting test images, as in DomainNet
    total = 0
    for d, (n_train, n_test) in SIZES.items():
        k = 0
        for split, n in (("train", n_train), ("test", n_test)):
            n = max(len(classes), int(n * scale))
            if d == "quickdraw":
                sizes = [n // len(classes)] * len(classes)
            else:
                w = [rng.uniform(0.3, 1.7) for _ in classes]
                sizes = [max(1, int(n * x / sum(w))) for x in w]
            lines = []
            for c, m in zip(classes, sizes, strict=True):
                if split == "test" and d == "painting" and c.label == empty.label:
                    continue
                for _ in range(m):
                    k += 1
                    lines.append(f"{d}/{c.folder}/{d}_{c.label + 1:03d}_{k:06d}.jpg {c.label}")
            lines.sort()
            total += len(lines)
            (root / f"{d}_{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return total


def published_cg_high(data, x: str, held: frozenset[int]) -> list[str]:
    """The published script's structure: list concatenation per sample, then the first-k rule."""
    domains = ["clipart", "infograph", "painting", "quickdraw", "real", "sketch"]
    samples = [r for d in domains for r in data.rows[(d, "train")]
               if not (d == x and r[1] in held)]
    dom_of = {}
    for d in domains:
        for r in data.rows[(d, "train")]:
            dom_of[r[0]] = d
    index = {d: {} for d in domains}
    for s in samples:
        d, cls = dom_of[s[0]], s[0].split("/")[-2]
        index[d][cls] = index[d].get(cls, []) + [s]  # as published: quadratic in the group size
    size = len(data.rows[("real", "train")]) + sum(1 for r in data.rows[(x, "train")] if r[1] not in held)
    f = size / len(samples)
    sub = {d: {c: v[: math.ceil(f * len(v))] for c, v in index[d].items()} for d in domains}
    cur = sum(len(v) for d in domains for v in sub[d].values())
    while cur != size:
        for d in ["real", "quickdraw", "painting", "sketch", "infograph", "clipart"]:
            for c in sub[d]:
                sub[d][c].pop()
                cur -= 1
                if cur == size:
                    break
            if cur == size:
                break
    return [s[0] for d in domains for c in sub[d] for s in sub[d][c]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the real DomainNet sizes")
    ap.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temporary one)")
    args = ap.parse_args(argv)

    from clipgen.data.captions import CaptionConfig, run_captions
    from clipgen.data.mixtures import (
        MixturesConfig,
        build_mixture,
        load_domainnet,
        make_spec,
        resolve_held_out,
        run_mixtures,
    )

    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        root = work / "dn"
        root.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        n = make_root(root, args.scale)
        print(f"text-only DomainNet: {n:,} images (scale {args.scale:g}), made in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        run_captions(CaptionConfig(root=root, force=True), progress=False)
        t_caps = time.perf_counter() - t
        print(f"captions (standard + aligned, 24 files): {t_caps:.1f} s")

        t = time.perf_counter()
        data = load_domainnet(root, ["clipart", "infograph", "painting", "quickdraw", "real", "sketch"])
        held = resolve_held_out(None, data.all_samples()).label_set
        t_load = time.perf_counter() - t
        spec = make_spec("cg-high", "sketch")
        t = time.perf_counter()
        mine = build_mixture(data, spec, held)
        t_mine = time.perf_counter() - t
        t = time.perf_counter()
        ref = published_cg_high(data, "sketch", held)
        t_ref = time.perf_counter() - t
        assert [r[0] for r in mine.train] == ref, "clipgen and the published structure disagree"
        print(f"load split + caption files (all six domains): {t_load:.2f} s")
        print(f"CG high-diversity (sketch), {len(mine.train):,} rows: clipgen {t_mine:.3f} s, published structure "
              f"{t_ref:.3f} s -> {t_ref / max(t_mine, 1e-9):.1f}x")

        t = time.perf_counter()
        res = run_mixtures(MixturesConfig(root=root, out=work / "mix", paper=True, force=True), progress=False)
        t_grid = time.perf_counter() - t
        rows = sum(int(i.counts["total"]) for i in res.infos)
        print(f"--paper grid: 16 mixtures, {len(res.infos)} TSVs, {rows:,} rows written in {t_grid:.1f} s "
              f"({t_grid / 16:.2f} s per mixture, reading included)")

        # add_in_sketches: remove k random rows from n; the published test is list membership
        dn_rows = list(range(len(mine.train)))
        k = 50_000 if args.scale >= 1 else int(50_000 * args.scale)
        drop = random.Random(42).sample(range(len(dn_rows)), k=k)
        t = time.perf_counter()
        s = set(drop)
        kept = [r for i, r in enumerate(dn_rows) if i not in s]
        t_set = time.perf_counter() - t
        part = max(1, len(dn_rows) // 200)
        t = time.perf_counter()
        kept_ref = [r for i, r in enumerate(dn_rows[:part]) if i not in drop]
        t_list = (time.perf_counter() - t) * len(dn_rows) / part
        assert kept_ref == kept[: len(kept_ref)]
        print(f"add_in_sketches removal of {k:,} of {len(dn_rows):,} rows: clipgen (set) {t_set:.3f} s, published "
              f"(list membership) ~{t_list:.0f} s (timed on 1/200 and scaled) -> ~{t_list / max(t_set, 1e-9):,.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
