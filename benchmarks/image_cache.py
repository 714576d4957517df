"""Benchmark: reading model inputs from the image cache vs decoding + preprocessing the JPEGs, on one core.

A synthetic DomainNet whose test images (sketch + real) are 400 x 300 JPEGs (quality 90), as on the real data, and
``clipgen data cache`` of them at ``--size`` (224: RN50's input). Then, on one CPU core (1 torch thread, no loader
workers), best of ``--repeats`` interleaved:

* **JPEG** (baseline): decode + preprocess every image as the evaluation's data loader does (open_clip's evaluation
  transform: bicubic resize, center crop, ToTensor, Normalize), batched;
* **cache**: ``ImageCache.batches`` over the same images: read the uint8 rows and normalise them (on the CPU here;
  on the device in the commands), the same float tensors (checked: equal to the JPEG path's, bit for bit);
* **cache, uint8 only**: the reads without the normalisation (what the host does when the device normalises, i.e.
  in the commands on a GPU): the headline.

Every batch is consumed and dropped, as a forward pass would. Printed: images/s of each and the ratios cache / JPEG
(target >= 10x for the reads), for ``--compression none`` (the default) and ``lzf``; the cache's size and build
time. Defaults: 12 classes x 20 test images x 2 domains = 480 images, batch 64.
Usage: ``python benchmarks/image_cache.py [--size 224] [--per-class 20] [--repeats 3] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from _common import photo_sized_root, set_threads


def measure(size: int, n_classes: int, per_class: int, batch: int, repeats: int, tmp: Path) -> dict:
    import torch
    from open_clip import image_transform

    from clipgen.data.image_cache import CacheConfig, open_cache, run_cache
    from clipgen.datasets import make_loader
    from clipgen.evaluation.protocol import build_eval_set

    root = photo_sized_root(tmp / "dn", n_classes, per_class)
    records = build_eval_set(root, "sketch").records
    transform = image_transform(size, is_train=False)
    caches, build_s = {}, {}
    for comp in ("none", "lzf"):
        t0 = time.perf_counter()
        caches[comp] = run_cache(CacheConfig(out=tmp / f"cache-{comp}.h5", data=root, domains="sketch,real",
                                             size=size, workers=0, compression=comp), progress=False).path
        build_s[comp] = time.perf_counter() - t0

    def jpeg(keep: bool = False):
        out = [x for x, _, _ in make_loader(records, transform, batch_size=batch, workers=0)] if keep else None
        if not keep:
            for _x, _, _ in make_loader(records, transform, batch_size=batch, workers=0):
                pass  # each batch is consumed and dropped, as a forward pass would
        return out

    def cached(comp: str, normalise: bool, keep: bool = False):
        out = []
        with open_cache(caches[comp]) as c:
            if normalise:
                for x, _, _ in c.batches(records, transform, batch_size=batch):
                    if keep:
                        out.append(x)
            else:
                rows = c.rows_of(records)
                for s in range(0, len(rows), batch):
                    x = torch.from_numpy(c.read(rows[s:s + batch]))
                    if keep:
                        out.append(x)
        return out

    ref = torch.cat(jpeg(keep=True))  # the same tensors, bit for bit (checked outside the timings)
    identical = {c: bool(torch.equal(ref, torch.cat(cached(c, True, keep=True)))) for c in caches}
    del ref
    runs = {"jpeg": jpeg, **{f"cache_{c}": (lambda c=c: cached(c, True)) for c in caches},
            **{f"cache_{c}_uint8": (lambda c=c: cached(c, False)) for c in caches}}
    best = {k: float("inf") for k in runs}
    for _ in range(repeats):  # interleaved, so a busy moment of a shared machine hits all alike
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    n = len(records)
    res = {"images": n, "size": size, "batch": batch, "repeats": repeats, "build_s": build_s,
           "cache_mb": {c: p.stat().st_size / 1e6 for c, p in caches.items()},
           "img_per_s": {k: n / v for k, v in best.items()},
           "identical": identical}
    res["ratio"] = {k: res["img_per_s"][k] / res["img_per_s"]["jpeg"] for k in runs if k != "jpeg"}
    return res


def report(r: dict) -> None:
    ips = r["img_per_s"]
    print(f"{r['images']} images of 400x300 px (sketch + real) at {r['size']} px, batch {r['batch']}, one core, "
          f"best of {r['repeats']}")
    print(f"  JPEG decode + preprocess: {ips['jpeg']:,.0f} img/s")
    for c in ("none", "lzf"):
        print(f"  cache ({c:>4}): {ips[f'cache_{c}']:,.0f} img/s normalised ({r['ratio'][f'cache_{c}']:.1f}x), "
              f"{ips[f'cache_{c}_uint8']:,.0f} img/s uint8 reads ({r['ratio'][f'cache_{c}_uint8']:.1f}x); "
              f"{r['cache_mb'][c]:.1f} MB, built in {r['build_s'][c]:.1f} s; identical to the JPEG path: "
              f"{r['identical'][c]}")
    print(f"  ratio cache reads / JPEG decode + preprocess (compression none): {r['ratio']['cache_none_uint8']:.1f}x "
          f"(target >= 10x; the commands normalise on the device); with the normalisation on this core too: "
          f"{r['ratio']['cache_none']:.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=224, help="model input size of the cache (224: RN50)")
    ap.add_argument("--classes", type=int, default=12)
    ap.add_argument("--per-class", type=int, default=20, help="test images per class and domain")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    a = ap.parse_args()

    set_threads(1)  # one core
    with tempfile.TemporaryDirectory() as d:
        res = measure(a.size, a.classes, a.per_class, a.batch, a.repeats, Path(d))
    res["cpu_count"] = os.cpu_count()
    report(res)
    if a.json:
        a.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
