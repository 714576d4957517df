"""Benchmark: circuits batched and local against the published per-channel method, on the same model and images.

Measures, in the same run, on one batch of images of one (class, domain):

* **agreement** (fp32): the node scores of every layer and the edge matrix of one layer pair, batched/local
  (:func:`clipgen.circuits.attribution.compute_circuit`) against the per-channel method
  (:func:`~clipgen.circuits.attribution_reference.reference_nodes` /
  :func:`~clipgen.circuits.attribution_reference.reference_edges`:
  the full model with forward hooks on the real modules, one forward over all steps and one backward per
  downstream channel, weight gradients included as in the published script); relative error = max |a - b| / max |b|;
* **one layer pair** (a pair inside layer3 by default, the issue's "layer3 pair"): the per-channel method's time
  for that pair (measured on ``--baseline-channels`` downstream channels and scaled to all of them, said so when
  scaled) against the local edge matrix (auto direction, and reverse mode only), in the timing precision;
* **the whole chain** per (class, domain): nodes of every layer, node selection and every edge matrix
  (``compute_circuit``), best of ``--repeats``, with the per-channel method's time for the same work estimated
  from one measured full-model pass (one pass per layer for the nodes, one per selected downstream channel for the
  edges).

Weights are a randomly initialised model whose batch-norm parameters and statistics are drawn at random (seeded), so
no residual branch is dead; images are random tensors of the model's input size (timing does not depend on their
content). A ViT (``--model ViT-tiny``) runs the same measurements on its chain (residual-stream channels of each
block; the default pair is the one into the block after the middle one). CPU default: RN-small, 50 images, 10
steps, fp32. GPU default: RN50, 50 images, 10 steps, timing in
bf16 autocast (the agreement check in fp32 with TF32 off).
Usage: ``python benchmarks/circuits.py [--device auto] [--model RN-small] [--images 50] [--steps 10]
[--pair resblock5] [--precision auto] [--baseline-channels 4] [--repeats 2] [--threads N] [--no-chain]
[--nodes channels|heads]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _perturbed(name: str, device, seed: int = 0):
    """The image tower with random batch-norm statistics (open_clip zeroes the residual branches' last gain), as
    the circuits tests use it."""
    from clipgen.circuits.attribution_reference import perturbed_visual

    return perturbed_visual(name, seed).to(device)


def _rel(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _default_pair(chain) -> str:
    """The downstream layer of the first pair inside layer3 (RN50: resblock8 -> resblock9, layer3[0] -> layer3[1]);
    for a ViT the pair into the block after the middle one (ViT-tiny: resblock2 -> resblock3)."""
    if chain.family == "vit":
        return chain.names[len(chain.names[1:-1]) // 2 + 1]
    n1, n2, n3 = (len(getattr(chain.visual, f"layer{i}")) for i in (1, 2, 3))
    first = n1 + n2 + 1  # resblock index of layer3[0]
    return f"resblock{first + 1}" if n3 > 1 else f"resblock{first}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--model", default=None, help="model name (default: RN-small on CPU, RN50 on GPU)")
    p.add_argument("--images", type=int, default=50)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--pair", default=None, help="downstream layer of the timed pair (default: the first pair "
                                                "inside layer3)")
    p.add_argument("--precision", default="auto", help="timing precision: fp32, bf16 (default: fp32 on CPU, "
                                                       "bf16 on GPU); agreement is always checked in fp32")
    p.add_argument("--baseline-channels", type=int, default=None,
                   help="downstream channels the per-channel baseline is timed on (default: 4 on CPU, 16 on GPU)")
    p.add_argument("--check-images", type=int, default=None,
                   help="images of the fp32 agreement check (default: 4 on CPU, --images on GPU)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-chain", action="store_true", help="skip the whole-chain timing")
    p.add_argument("--nodes", default="channels", help="channels, or heads (a ViT's attention heads)")
    args = p.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import contextlib

    import numpy as np
    import torch
    import torch.nn.functional as F

    from clipgen.circuits import attribution as A
    from clipgen.circuits import attribution_reference as R
    from clipgen.circuits.chain import metric
    from clipgen.circuits.chains import make_chain
    from clipgen.devices import autocast, resolve_device, resolve_precision

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    precision = resolve_precision(args.precision, device)
    name = args.model or ("RN50" if cuda else "RN-small")
    base_ch = args.baseline_channels or (16 if cuda else 4)
    n_check = args.check_images or (args.images if cuda else 4)
    if cuda:
        torch.backends.cudnn.benchmark = True
    hw = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"circuits benchmark: {name}, {args.images} images, {args.steps} steps, {hw}, torch {torch.__version__}")

    visual = _perturbed(name, device)
    chain = make_chain(visual, name, nodes=args.nodes)
    size = chain.image_size
    g = torch.Generator().manual_seed(3)
    images = torch.randn(args.images, 3, size, size, generator=g).to(device)
    target = F.normalize(torch.randn(1, chain.layers[-1].channels, generator=g), dim=-1).to(device)
    target = target.repeat(args.images, 1)
    down = args.pair or _default_pair(chain)
    stage = chain.index(down)
    up = chain.names[stage - 1]
    ig = A.IGConfig(args.steps, "left")
    plan = A.make_plan(chain)

    def amp():
        return autocast(device, precision)

    # -- agreement, fp32 -----------------------------------------------------------------------------------------
    # the batched/local method in fp32 against the per-channel method in fp32 and in float64 (the exact value: fp32
    # convolutions of the real modules carry their own error, e.g. oneDNN's on CPU)
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) if cuda else None
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    x_c, t_c = images[:n_check], target[:n_check]
    res = A.compute_circuit(chain, x_c, t_c, ig=ig, plan=plan)
    rows = np.asarray(res.selected[down][:base_ch])
    sel = dict(res.selected)
    sel[down] = rows
    exact_chain = make_chain(_perturbed(name, device).double(), name, nodes=args.nodes)
    refs = {}
    for label, ch_, x_, t_ in (("fp32", chain, x_c, t_c), ("float64", exact_chain, x_c.double(), t_c.double())):
        refs[label] = (R.reference_nodes(ch_, x_, t_, ig),
                       R.reference_edges(ch_, x_, t_, sel, ig, pairs=[(up, down)])[down])
    if cuda:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    errs = {}
    for label, (rn, re_) in refs.items():
        errs[label] = (max(_rel(res.nodes[n], rn[n]) for n in chain.names), _rel(res.edges[down][: len(rows)], re_))
    ref_own = max(_rel(refs["fp32"][0][n], refs["float64"][0][n]) for n in chain.names)
    ok = max(errs["float64"]) < 1e-4 and max(errs["fp32"]) < max(1e-4, 2 * ref_own)
    print(f"agreement ({n_check} images; nodes of all {len(chain.names)} layers, edges {up}->{down} on {len(rows)} "
          f"rows), relative error of the batched/local method in fp32:")
    for label in ("fp32", "float64"):
        print(f"  vs the per-channel method in {label:>7}: nodes {errs[label][0]:.2e}, edges {errs[label][1]:.2e}")
    print(f"  (the per-channel method's own fp32 error, vs float64: nodes {ref_own:.2e})  "
          f"[{'ok' if ok else 'FAIL'}: < 1e-4 against the exact value]")

    # -- one layer pair ------------------------------------------------------------------------------------------
    with torch.no_grad(), amp():
        acts = [a.to(chain.dtype) for a in chain.activations(images)]  # as compute_circuit keeps them
    full = A.compute_circuit(chain, images[:2], target[:2], ig=ig, plan=plan, edges=False)  # a realistic selection
    up_sel, down_sel = full.selected[up], full.selected[down]
    k_down = len(down_sel)
    n_base = min(base_ch, k_down)

    def fast(mode):
        _sync(device)
        t0 = time.perf_counter()
        with A.frozen(visual):
            A.edge_matrix(chain, stage, acts[stage - 1], acts[stage], up_sel, down_sel, ig, plan, amp, mode)
        _sync(device)
        return time.perf_counter() - t0

    fast("auto")  # warm-up
    t_fast = min(fast("auto") for _ in range(args.repeats))
    t_rev = min(fast("reverse") for _ in range(args.repeats))
    clean = [a.float() for a in acts]
    sub = {up: up_sel, down: down_sel[:n_base]}

    def baseline():
        _sync(device)
        t0 = time.perf_counter()
        with amp() if cuda else contextlib.nullcontext():
            R.reference_edges(chain, images, target, sub, ig, pairs=[(up, down)], clean=clean)
        _sync(device)
        return time.perf_counter() - t0

    baseline()  # warm-up
    t_base = min(baseline() for _ in range(args.repeats)) * k_down / n_base
    scaled = f" (timed on {n_base} of {k_down} downstream channels, scaled)" if n_base < k_down else ""
    print(f"pair {up} -> {down} ({k_down} x {len(up_sel)} edges, {precision}): per-channel {t_base:.3f} s{scaled}; "
          f"local {t_fast:.3f} s (reverse mode only {t_rev:.3f} s); speedup {t_base / t_fast:.1f}x "
          f"(reverse only {t_base / t_rev:.1f}x)")

    # -- the whole chain -----------------------------------------------------------------------------------------
    if not args.no_chain:
        def chain_once():
            _sync(device)
            t0 = time.perf_counter()
            r = A.compute_circuit(chain, images, target, ig=ig, plan=plan, amp=amp)
            _sync(device)
            return time.perf_counter() - t0, r

        chain_once()
        best = min((chain_once() for _ in range(args.repeats)), key=lambda x: x[0])
        t_chain, r = best
        n_sel = sum(len(r.selected[n]) for n in chain.names[1:])

        def one_full_pass():  # what the per-channel method does per node layer and per downstream channel
            x = images.repeat(args.steps, 1, 1, 1).requires_grad_()
            with R.trainable(visual):
                _sync(device)
                t0 = time.perf_counter()
                with amp() if cuda else contextlib.nullcontext():
                    m = metric(visual(x), target.repeat(args.steps, 1))
                m.sum().backward()
                _sync(device)
                return time.perf_counter() - t0

        one_full_pass()
        t_pass = min(one_full_pass() for _ in range(args.repeats))
        est = t_pass * (len(chain.names) + n_sel)
        print(f"whole chain per (class, domain), {precision}: {t_chain:.3f} s (nodes {r.timings['nodes']:.3f} s, "
              f"edges {r.timings['edges']:.3f} s); per-channel method about {est:.1f} s "
              f"({len(chain.names)} + {n_sel} full passes of {args.steps * args.images} images at {t_pass:.3f} s); "
              f"speedup about {est / t_chain:.0f}x")
        per = t_chain * 345 * 6 / 3600
        print(f"  -> 345 classes x 6 domains at this rate: {per:.1f} h")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
