"""Benchmark: SAE training throughput (samples/s) against the bare matrix products of the same step.

Times, in the same run and at the same shapes and precision:

* ``bare``: the six matrix products of one autograd training step and nothing else (forward: encoder, decoder;
  backward: dW_dec, dF, dW_enc and the input gradient that reaches the tied bias) - the ceiling;
* ``plain``: a straightforward PyTorch step (autograd loss, ``loss.backward()``, ``torch.optim.Adam``, decoder
  renormalisation; bf16 autocast on GPU) - what the issue measured first;
* ``fused``: :class:`clipgen.analysis.sae.FusedStep` (hand-written gradients, five products, fused Adam,
  statistics kept on the device), batches gathered from device-resident data as in training;
* ``graph`` (CUDA only): the fused step captured once in a CUDA graph and replayed (``--step-mode graph``);
* ``train``: :func:`clipgen.analysis.sae.run_train_sae` end to end on in-memory rows (logging and bookkeeping in);
* ``read``: rows/s that the training data source delivers when it streams an HDF5 store (float16; gzip, as
  ``clipgen extract`` writes by default, and uncompressed), through the same code as ``clipgen sae train``
  (:func:`clipgen.analysis.sae.open_training_data`), without training.

Prints samples/s and the ratio of each step to the bare products (1.0 = as fast as the products alone).
CPU defaults are small (``--d-in 256``); on a GPU the defaults are the paper's shapes (1024 -> 4096, batch 2048, bf16).
Usage: ``python benchmarks/sae.py [--device auto] [--d-in N] [--expansion 4] [--batch 2048] [--steps N]
[--precision auto] [--threads N] [--no-read] [--read-compression gzip,none]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def _timer(device):
    import torch

    if device.type == "cuda":
        def run(fn, steps):
            torch.cuda.synchronize()
            t = time.perf_counter()
            fn(steps)
            torch.cuda.synchronize()
            return (time.perf_counter() - t) / steps
    else:
        def run(fn, steps):
            t = time.perf_counter()
            fn(steps)
            return (time.perf_counter() - t) / steps
    return run


def best_of(timer, fn, steps: int, repeats: int = 3, warmup: int = 3) -> float:
    fn(warmup)
    return min(timer(fn, steps) for _ in range(repeats))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--d-in", type=int, default=None, help="input width (default: 256 on CPU, 1024 on GPU)")
    p.add_argument("--expansion", type=int, default=4)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--steps", type=int, default=None, help="timed steps per repeat (default: 10 CPU, 300 GPU)")
    p.add_argument("--precision", default="auto", help="fp32 or bf16 (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-read", action="store_true", help="skip the store-reading measurement")
    p.add_argument("--read-compression", default="gzip,none",
                   help="store compressions whose streaming rate is measured (gzip: what 'clipgen extract' writes)")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from clipgen.analysis.sae import (
        ArraySource,
        FusedStep,
        GraphStep,
        SAEArch,
        SAETrainConfig,
        SparseAutoencoder,
        TrainingData,
        make_optimizer,
        run_train_sae,
        sae_loss,
    )
    from clipgen.devices import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    d = args.d_in or (1024 if cuda else 256)
    m = d * args.expansion
    b = args.batch
    steps = args.steps or (300 if cuda else 10)
    prec = args.precision if args.precision != "auto" else ("bf16" if cuda else "fp32")
    cdt = torch.bfloat16 if prec == "bf16" else torch.float32
    timer = _timer(device)
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"SAE {d} -> {m}, batch {b}, {prec}, {device} ({name}), torch {torch.__version__}")

    n_rows = max(b * 8, 65_536 if cuda else 16_384)
    data = torch.randn(n_rows, d, device=device)
    data = data / data.norm(dim=1, keepdim=True)
    l1 = 1e-4
    results: dict[str, float] = {}

    # bare products: forward 2, backward 4, at the step's shapes
    a_x = torch.randn(b, d, device=device, dtype=cdt)
    a_we = torch.randn(d, m, device=device, dtype=cdt) / d ** 0.5
    a_wd = torch.randn(m, d, device=device, dtype=cdt) / m ** 0.5

    def bare(n):
        for _ in range(n):
            f = a_x @ a_we
            xh = f @ a_wd
            f.t() @ xh  # dW_dec
            g = xh @ a_wd.t()  # dF
            a_x.t() @ g  # dW_enc
            g @ a_we.t()  # dX (what autograd computes for the tied bias)

    results["bare"] = best_of(timer, bare, steps)

    # plain PyTorch step
    model = SparseAutoencoder(SAEArch(d_in=d, d_sae=m), seed=0).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    src = ArraySource(data, seed=0, device=device)
    it = {"i": 0}

    def batch():
        i = it["i"] % (n_rows // b)
        it["i"] += 1
        return data[i * b:(i + 1) * b]

    def plain(n):
        for _ in range(n):
            x = batch()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=prec == "bf16"):
                loss, _ = sae_loss(model, x, l1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            model.normalise_decoder_()

    results["plain"] = best_of(timer, plain, max(2, steps // 2))

    # fused step (eager), batches gathered like training does
    model = SparseAutoencoder(SAEArch(d_in=d, d_sae=m), seed=0).to(device)
    fused = FusedStep(model, make_optimizer(model, 1e-4, (0.9, 0.999), 1e-8), l1=l1, compute_dtype=cdt)
    gen = {"it": None}

    def next_batch(out=None):
        if gen["it"] is None:
            gen["it"] = iter(src.batches(0, 0, b, out=out))
        try:
            return next(gen["it"])
        except StopIteration:
            gen["it"] = iter(src.batches(0, 0, b, out=out))
            return next(gen["it"])

    def fused_run(n):
        for _ in range(n):
            fused(next_batch())

    results["fused"] = best_of(timer, fused_run, steps)

    if cuda:
        model = SparseAutoencoder(SAEArch(d_in=d, d_sae=m), seed=0).to(device)
        gstep = GraphStep(FusedStep(model, make_optimizer(model, 1e-4, (0.9, 0.999), 1e-8), l1=l1,
                                    compute_dtype=cdt), b, d)
        gen["it"] = None

        def graph_run(n):
            for _ in range(n):
                gstep(next_batch(out=gstep.static_x))

        results["graph"] = best_of(timer, graph_run, steps, warmup=GraphStep.WARMUP + 2)

    # end to end: run_train_sae on in-memory rows
    with tempfile.TemporaryDirectory() as tmp:
        epochs = max(1, (steps * 3) // (n_rows // b))
        cfg = SAETrainConfig(out=str(Path(tmp) / "run"), expansion=args.expansion, batch_size=b, epochs=epochs,
                             l1=l1, resample_every=0, log_every=b * 50, val_every=0, checkpoint_every=0,
                             device=str(device), precision=prec)
        res = run_train_sae(cfg, TrainingData(ArraySource(data, seed=0, device=device)), progress=False)
        results["train"] = b / res.samples_per_s if res.samples_per_s else float("nan")

        read_rates: dict[str, float] = {}
        if not args.no_read:
            from contextlib import ExitStack

            from clipgen.analysis.sae import open_training_data
            from clipgen.store import build_store_from_arrays

            n_store = 65_536
            x = data[:min(n_rows, n_store)].float().cpu().numpy()
            x = np.tile(x, (n_store // len(x) + 1, 1))[:n_store]
            for comp in args.read_compression.split(","):
                path = Path(tmp) / f"store-{comp}.h5"
                build_store_from_arrays(path, paths=[f"{i}.jpg" for i in range(n_store)], labels=[0] * n_store,
                                        domains=["real"] * n_store, layers={"act": x}, dtype="float16",
                                        compression=comp)
                # exactly what 'clipgen sae train' streams: 16k-row blocks, buffers of 32k rows (forced streaming)
                cfg = SAETrainConfig(stores=[str(path)], out=str(Path(tmp) / "unused"), layer="act",
                                     val_fraction=0.0, block_rows=16_384, buffer_mb=32_768 * d * 4 / 2**20,
                                     batch_size=b, device="cpu")
                with ExitStack() as stack:
                    src = open_training_data(cfg, stack, device=torch.device("cpu")).source
                    assert type(src).__name__ == "StreamingSource"
                    t = time.perf_counter()
                    rows = sum(len(xb) for xb in src.batches(0, 0, b))
                    read_rates[comp] = rows / (time.perf_counter() - t)

    bare_sps = b / results["bare"]
    print(f"{'step':<8}{'samples/s':>14}{'ms/step':>10}{'vs bare':>9}")
    for k, t in results.items():
        print(f"{k:<8}{b / t:>14,.0f}{t * 1e3:>10.3f}{results['bare'] / t:>9.2f}")
    print(f"fused vs plain: {results['plain'] / results['fused']:.2f}x"
          + (f"; graph vs plain: {results['plain'] / results['graph']:.2f}x" if "graph" in results else ""))
    best = max(b / t for k, t in results.items() if k != "bare")
    for comp, rate in read_rates.items():
        print(f"store streaming (float16, {comp}, 16k-row blocks, shuffled 32k-row buffers): {rate:,.0f} rows/s "
              f"= {rate / best:.1f}x the fastest training step")
    if cuda and d == 1024 and b == 2048 and prec == "bf16":
        top = b / min(results.get("graph", results["fused"]), results["fused"])
        print(f"target: >= 4,000,000 samples/s and >= 0.4 of bare: {top:,.0f} samples/s, "
              f"{top / bare_sps:.2f} of bare -> {'met' if top >= 4e6 and top / bare_sps >= 0.4 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    sys.exit(main())
