"""Benchmark: the full CKA sweep from a store vs a straightforward per-pair, per-layer loop.

Builds a store with RN50's 21 CKA layers (act1 ... attnpool, widths 32 ... 2048) over 345 classes x 6 domains
(``--per-class`` images per class and domain, one painting class missing as in DomainNet, 15 held-out classes),
then times, in the same run:

* ``clipgen`` sweep: :func:`clipgen.analysis.cka_sweep.compute_cka` on the open store (class means streamed once per
  (layer, domain); Gram matrices once per (layer, domain, class set, kernel); cross terms as one matrix product per
  class set), 21 layers x 15 pairs x 3 subsets x 2 kernels;
* baseline: :func:`clipgen.analysis.cka_reference.naive_cka_sweep` with the same store (class means read for every
  pair and subset, Gram matrices rebuilt per cell, HSIC with explicit n x n matrix products). By default it runs on
  every 3rd layer (all widths represented) and its time is scaled to 21 layers (stated in the output);

and checks that both agree. CKA is CPU/numpy only (n = 345 classes is small), so there is no GPU variant.
Usage: ``python benchmarks/cka.py [--threads 2] [--per-class 2] [--baseline-every 3]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

RN50_CKA_LAYERS = ([("act1", 32), ("act2", 32), ("act3", 64), ("avgpool", 64)]
                   + [(f"resblock{i}", 256) for i in range(1, 4)] + [(f"resblock{i}", 512) for i in range(4, 8)]
                   + [(f"resblock{i}", 1024) for i in range(8, 14)] + [(f"resblock{i}", 2048) for i in range(14, 17)]
                   + [("attnpool", 1024)])


def build_store(path: Path, n_classes: int, per_class: int, dtype: str, seed: int = 0) -> Path:
    import numpy as np

    from clipgen.domainnet import DOMAINS, HELD_OUT_CLASSES, class_by_name
    from clipgen.store import build_store_from_arrays

    rng = np.random.default_rng(seed)
    paths, labels, doms = [], [], []
    for d in DOMAINS:
        for c in range(n_classes):
            if d == "painting" and c == n_classes // 2:  # the painting test split lacks one class
                continue
            for k in range(per_class):
                paths.append(f"{d}/{c}/{k}.jpg")
                labels.append(c)
                doms.append(d)
    n = len(paths)
    lab = np.asarray(labels)
    dom = np.asarray([DOMAINS.index(d) for d in doms])
    layers = {}
    for name, width in RN50_CKA_LAYERS:
        # class structure shared across domains + a domain offset + noise: realistic, non-degenerate CKA values
        cls = rng.standard_normal((n_classes, width), dtype=np.float32)
        off = rng.standard_normal((len(DOMAINS), width), dtype=np.float32)
        x = cls[lab] + 0.5 * off[dom] + rng.standard_normal((n, width), dtype=np.float32)
        layers[name] = np.maximum(x, 0) if name.startswith("act") else x
    held = [class_by_name(h).label for h in HELD_OUT_CLASSES if class_by_name(h).label < n_classes]
    return build_store_from_arrays(path, paths=paths, labels=labels, domains=doms, layers=layers,
                                   held_out_labels=held, dtype=dtype,
                                   provenance={"source": "benchmarks/cka.py", "per_class": per_class})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="BLAS/OpenMP threads (the target is 2 CPU cores).")
    ap.add_argument("--classes", type=int, default=345)
    ap.add_argument("--per-class", type=int, default=2, help="Images per class and domain in the store.")
    ap.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="Store dtype.")
    ap.add_argument("--baseline-every", type=int, default=3,
                    help="The baseline runs every N-th layer (all widths represented) and its time is scaled to "
                         "all layers; 1 runs it on every layer (minutes).")
    ap.add_argument("--repeats", type=int, default=3, help="Repeats of the clipgen sweep (best is reported).")
    ap.add_argument("--store", type=Path, default=None, help="Reuse/keep the benchmark store at this path.")
    args = ap.parse_args()

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    from clipgen.analysis import cka as C
    from clipgen.analysis import cka_reference as R
    from clipgen.analysis import cka_sweep as S
    from clipgen.store import open_store

    tmpdir = None
    path = args.store
    if path is None:
        tmpdir = tempfile.TemporaryDirectory(prefix="clipgen-bench-cka-")
        path = Path(tmpdir.name) / "bench.h5"
    if not path.exists():
        t = time.perf_counter()
        build_store(path, args.classes, args.per_class, args.dtype)
        print(f"built store {path} ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t:.1f} s",
              file=sys.stderr)

    layers = [name for name, _ in RN50_CKA_LAYERS]
    with open_store(path) as st:
        print(f"store: {st.n_samples} rows, {len(st.layers)} layers, {args.classes} classes, dtype {st.dtype}; "
              f"threads={args.threads}; CPU only")
        best, best_cpu = float("inf"), float("inf")
        for _ in range(args.repeats):
            t, c = time.perf_counter(), time.process_time()
            res = S.compute_cka(st, layers=layers, subsets=C.SUBSETS, kernels=C.KERNELS, estimators=["unbiased"])
            best, best_cpu = min(best, time.perf_counter() - t), min(best_cpu, time.process_time() - c)
        n_cells = len(res.records)

        # the same sweep with the class means already in memory: the maths alone
        means = {(layer, d): S.store_means_fn(st)(layer, d) for layer in layers for d in res.domains}
        plan = C.plan_class_sets(C.present_labels(st, res.domains), res.pairs, C.SUBSETS, st.held_out_labels)
        maths = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            S.cka_sweep(layers, lambda la, d: means[(la, d)], plan, C.KERNELS, ["unbiased"])
            maths = min(maths, time.perf_counter() - t)

        base_layers = layers[::max(1, args.baseline_every)]
        t = time.perf_counter()
        naive = R.naive_cka_sweep(base_layers, S.store_means_fn(st), plan, C.KERNELS, ["unbiased"])
        base = (time.perf_counter() - t) * len(layers) / len(base_layers)

    fast = {(r.layer, r.domain_a, r.domain_b, r.subset, r.kernel): r.cka for r in res.records}
    err = max(abs(fast[(r.layer, r.domain_a, r.domain_b, r.subset, r.kernel)] - r.cka) for r in naive)
    assert err < 1e-8, f"sweep and baseline disagree by {err}"
    scaled = "" if len(base_layers) == len(layers) else \
        f" (measured on {len(base_layers)} layers, one in {args.baseline_every}, scaled to {len(layers)})"
    print(f"cells: {n_cells} ({len(layers)} layers x {len(res.pairs)} pairs x 3 subsets x 2 kernels)")
    print(f"clipgen sweep from the store: {best:.2f} s wall, {best_cpu:.2f} s CPU (best of {args.repeats}); maths only "
          f"(class means in memory): {maths:.2f} s")
    print(f"baseline per-pair, per-layer loop: {base:.2f} s{scaled}")
    print(f"ratio baseline / clipgen: {base / best:.1f}x; max |difference| {err:.1e}; "
          f"target < 10 s: {'met' if best < 10 else 'MISSED'}")
    if tmpdir is not None:
        tmpdir.cleanup()


if __name__ == "__main__":
    main()
