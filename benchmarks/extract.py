"""Benchmark: activation extraction (img/s) against a model-only forward pass measured in the same run.

Sections, each on the same model, batch, precision and device:

1. **In memory** (the issue's headline ratio). Images decoded once and held in host memory (pinned on GPU), then
   * *model only* (baseline): ``model.visual(x)`` per batch, nothing captured (channels-last on GPU, like the
     extractor);
   * *naive hooks* (reference): forward hooks that pool each layer and copy it to the host at once, one
     synchronous copy per layer, no writing;
   * *full extraction*: clipgen's extractor (pooling on the device, one packed asynchronous copy per batch) and its
     store writer (part files, chunks compressed on a thread pool while the model runs), every layer + the
     embedding, into HDF5, until the store is assembled;
   ratio = full extraction / model only (the issue's target on an H100 with RN50 bf16: >= 0.8).
2. **Writer capacity**: img/s the store writer alone sustains for RN50-shaped rows (21 pooled layers + embedding,
   float16, gzip + shuffle), per number of compression threads, so the GPU target can be judged without a GPU.
3. **From JPEG files**: ``clipgen.extraction.run_extract`` end to end (decoding in the data loader), and the data
   loader alone (decode + transform, no model), for several ``--workers`` settings; the best one is reported.
4. **Memory** (CPU): the RSS ``run_extract`` adds (sampled every 2 ms) in a fresh process, for N and 4N images at the
   same batch size (both at least one block): bounded by the batch/block size, not by the image set.

Defaults: CPU, RN-tiny (64 px), batch 32, fp32 (sections 1, 3, 4; section 2 uses RN50 shapes). With a GPU (unless
``--no-gpu``) sections 1-3 are repeated with RN50 (224 px, random weights), batch 256, bf16 autocast.
Usage: ``python benchmarks/extract.py [--threads 2] [--n 2048] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import make_run, set_threads


def make_images(root: Path, image_size: int, per_class: int, n_classes: int = 12) -> Path:
    from clipgen.data.synth import SynthConfig, run_synth

    run_synth(SynthConfig(out=root, n_classes=n_classes, train_per_class=1, test_per_class=per_class,
                          base_per_class=1, base_extra_classes=0, image_size=image_size, workers=0), progress=False)
    return root


def write_tsv(path: Path, files: list[str], n: int) -> Path:
    rows = [files[i % len(files)] for i in range(n)]
    path.write_text("filepath\ttitle\n" + "".join(f"{f}\tan image\n" for f in rows))
    return path


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- 1. in memory ----------------------------------------------------------------------------------------------

def decoded_images(root: Path, n: int, preprocess, device):
    """``n`` preprocessed images (the synthetic test images, repeated) as one host tensor (pinned on GPU)."""
    import torch

    from clipgen.datasets import domainnet_records, load_image

    recs = domainnet_records(root, split="test")
    base = torch.stack([preprocess(load_image(r.path)) for r in recs[: min(len(recs), 512)]])
    x = base[torch.arange(n) % len(base)].contiguous()
    return x.pin_memory() if device.type == "cuda" else x


def batches_of(x, batch: int):
    import numpy as np

    for s in range(0, len(x), batch):
        e = min(s + batch, len(x))
        yield x[s:e], np.arange(s, e), []


def time_model_only(loaded, x, batch: int, device, precision: str, channels_last: bool, warmup: int = 3) -> float:
    import torch

    from clipgen.devices import autocast

    visual = loaded.model.visual

    def run(xs):
        for b, _, _ in xs:
            xb = b.to(device, non_blocking=True)
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), autocast(device, precision):
                visual(xb)

    run(list(batches_of(x[: warmup * batch], batch)))
    sync(device)
    t0 = time.perf_counter()
    run(batches_of(x, batch))
    sync(device)
    return len(x) / (time.perf_counter() - t0)


def time_naive_hooks(loaded, cat, x, batch: int, device, precision: str, channels_last: bool) -> float:
    """Forward hooks that pool and copy each layer to the host at once (synchronously), nothing written."""
    import torch

    from clipgen.devices import autocast
    from clipgen.models.layers import get_module

    visual = loaded.model.visual
    got: list = []

    def hook(_m, _i, out):
        t = out[0] if isinstance(out, tuple) else out
        got.append((t.float().mean(dim=(2, 3)) if t.ndim == 4 else t.float()).cpu())

    handles = [get_module(visual, s.module).register_forward_hook(hook) for s in cat]
    try:
        def run(xs):
            for b, _, _ in xs:
                xb = b.to(device, non_blocking=True)
                if channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                with torch.inference_mode(), autocast(device, precision):
                    got.append(torch.nn.functional.normalize(visual(xb).float(), dim=-1).cpu())
                got.clear()

        run(list(batches_of(x[: 3 * batch], batch)))
        sync(device)
        t0 = time.perf_counter()
        run(batches_of(x, batch))
        sync(device)
        return len(x) / (time.perf_counter() - t0)
    finally:
        for h in handles:
            h.remove()


def time_full_extraction(loaded, cat, x, batch: int, device, precision: str, channels_last: bool, out: Path,
                         writer_threads: int = 0, dtype: str = "float16") -> dict:
    """clipgen's extractor + store writer over in-memory batches: every layer and the embedding into ``out``."""
    from clipgen.extraction import Extractor, default_block_rows, layer_defs, row_bytes, run_blocks
    from clipgen.models.layers import select_layers
    from clipgen.store import open_store
    from clipgen.store.parts import StorePlan, assemble, write_header
    from clipgen.store.writer import SampleTable

    names = select_layers(cat, "all")
    embed_dim = int(loaded.model_config.get("embed_dim", 0)) or int(loaded.model.visual.output_dim)
    defs = layer_defs(cat, names, "mean", "cls", embed_dim)
    n = len(x)
    plan = StorePlan(out=out, samples=SampleTable([f"memory/{i}" for i in range(n)], [0] * n, [None] * n, [None] * n),
                     layers=defs, dtype=dtype, provenance={"source": "benchmarks/extract.py", "layers": names},
                     block_rows=default_block_rows(batch, row_bytes(defs, dtype)), batch_size=batch)
    ex = Extractor(loaded.model, cat, defs, dtype=dtype, device=device, precision=precision,
                   channels_last=channels_last)
    try:
        for b, _, _ in batches_of(x[: 3 * batch], batch):  # the same warm-up as the baseline
            ex.forward(b)
        sync(device)
        t0 = time.perf_counter()
        write_header(plan)
        run_blocks(plan, ex, batches_of(x, batch), writer_threads=writer_threads)
        t_blocks = time.perf_counter() - t0
        assemble(plan)
        t_all = time.perf_counter() - t0
    finally:
        ex.close()
    with open_store(out) as st:
        assert st.n_samples == n and st.layers == names
    return {"img_per_s": n / t_all, "img_per_s_until_last_block": n / t_blocks, "block_rows": plan.block_rows,
            "store_mb": out.stat().st_size / 1e6, "layers": len(names)}


def in_memory_section(run: Path, root: Path, n: int, batch: int, device, precision: str, tmp: Path,
                      repeats: int) -> dict:
    from clipgen.models.layers import layer_catalogue
    from clipgen.runs import load_clip

    loaded = load_clip(run, device=device)
    cat = layer_catalogue(loaded.model.visual)
    cl = device.type == "cuda" and not hasattr(loaded.model.visual, "transformer")
    if cl:
        import torch

        loaded.model.to(memory_format=torch.channels_last)
    n = max(batch, n // batch * batch)
    x = decoded_images(root, n, loaded.preprocess, device)
    base, naive, full = [], [], []
    for r in range(repeats):  # interleaved, so a busy moment of a shared machine hits all three alike
        base.append(time_model_only(loaded, x, batch, device, precision, cl))
        naive.append(time_naive_hooks(loaded, cat, x, batch, device, precision, cl))
        out = tmp / f"mem-{r}.h5"
        full.append(time_full_extraction(loaded, cat, x, batch, device, precision, cl, out))
        out.unlink()
    best = max(full, key=lambda d: d["img_per_s"])
    res = {"model": loaded.model_name, "images": n, "batch": batch, "precision": precision, "channels_last": cl,
           "layers": best["layers"], "block_rows": best["block_rows"], "store_mb": best["store_mb"],
           "model_only_img_per_s": max(base), "naive_hooks_img_per_s": max(naive),
           "full_extraction_img_per_s": best["img_per_s"],
           "full_until_last_block_img_per_s": best["img_per_s_until_last_block"],
           "repeats": repeats, "all_model_only": base, "all_full": [d["img_per_s"] for d in full]}
    res["ratio"] = res["full_extraction_img_per_s"] / res["model_only_img_per_s"]
    res["naive_ratio"] = res["naive_hooks_img_per_s"] / res["model_only_img_per_s"]
    return res


# -- 2. writer capacity ----------------------------------------------------------------------------------------

RN50_WIDTHS = [32, 32, 64, 64] + [256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 3 + [1024]


def writer_section(tmp: Path, rows: int, threads_list: list[int]) -> dict:
    """img/s of the part-file writer for RN50 rows (float16 pooled layers + float32 embedding), no model."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from clipgen.store.parts import StorePlan, write_part
    from clipgen.store.writer import LayerDef, SampleTable

    rng = np.random.default_rng(0)
    defs = [LayerDef(f"l{i}", (w,), (w, 7, 7), "mean", "conv") for i, w in enumerate(RN50_WIDTHS)]
    defs.append(LayerDef("embedding", (1024,), (1024,), "l2-normalised", "embedding"))
    # pooled post-ReLU activations: positive, smooth magnitudes (compress like real ones, not like noise or zeros)
    arrays = {d.name: (np.abs(rng.standard_normal((rows, *d.shape))) * rng.uniform(0.1, 3.0, d.shape))
              .astype(np.float32 if d.kind == "embedding" else np.float16) for d in defs}
    plan = StorePlan(out=tmp / "writer.h5", samples=SampleTable([""] * rows, [0] * rows, [None] * rows,
                                                                [None] * rows),
                     layers=defs, dtype="float16", provenance={"source": "writer"}, block_rows=rows, batch_size=rows)
    plan.parts.mkdir(parents=True, exist_ok=True)
    out = {"rows_per_block": rows, "bytes_per_row": sum(a[0].nbytes for a in arrays.values())}
    for t in threads_list:
        with ThreadPoolExecutor(max_workers=t) as pool:
            write_part(plan, 0, arrays, [""] * rows, pool)  # warm-up
            t0 = time.perf_counter()
            reps = 3
            for _ in range(reps):
                write_part(plan, 0, arrays, [""] * rows, pool)
            out[f"threads_{t}_img_per_s"] = reps * rows / (time.perf_counter() - t0)
    size = (plan.parts / "block-000000.h5").stat().st_size
    out["compression_ratio"] = out["bytes_per_row"] * rows / size
    return out


# -- 3. from JPEG files ----------------------------------------------------------------------------------------

def loader_only(records, preprocess, batch: int, workers: int, pin: bool) -> float:
    from clipgen.datasets import make_loader

    t0 = time.perf_counter()
    n = 0
    for _images, kept, _ in make_loader(records, preprocess, batch_size=batch, workers=workers, on_error="skip",
                                       pin_memory=pin):
        n += len(kept)
    return n / (time.perf_counter() - t0)


def jpeg_section(run: Path, tsv: Path, batch: int, device_name: str, precision: str, workers_list: list[int],
                 tmp: Path) -> dict:
    from clipgen.datasets import tsv_records
    from clipgen.extraction import ExtractConfig, run_extract
    from clipgen.runs import load_clip

    loaded = load_clip(run)
    recs = tsv_records(tsv)
    res: dict = {"images": len(recs), "batch": batch, "loader_img_per_s": {}, "extract_img_per_s": {}}
    for w in workers_list:
        res["loader_img_per_s"][w] = loader_only(recs, loaded.preprocess, batch, w, device_name == "cuda")
        out = tmp / f"jpeg-{w}.h5"
        t0 = time.perf_counter()
        run_extract(ExtractConfig(out=out, model_dir=run, tsv=tsv, device=device_name, precision=precision,
                                  batch_size=batch, workers=w, text=False), progress=False)
        res["extract_img_per_s"][w] = len(recs) / (time.perf_counter() - t0)
        out.unlink()
    best = max(res["extract_img_per_s"], key=res["extract_img_per_s"].get)
    res["best_workers"] = best
    res["best_img_per_s"] = res["extract_img_per_s"][best]
    return res


# -- 4. memory -------------------------------------------------------------------------------------------------

_CHILD = """
import os, sys, threading, time
from pathlib import Path
from clipgen.extraction import ExtractConfig, run_extract
from clipgen.runs import load_clip
out, run, tsv, batch = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
load_clip(run)  # imports and a first model load happen before the baseline reading
base = rss()
peak, done = [base], threading.Event()
def poll():
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.002)
th = threading.Thread(target=poll, daemon=True)
th.start()
t0 = time.perf_counter()
res = run_extract(ExtractConfig(out=out, model_dir=run, tsv=tsv, device="cpu", batch_size=batch, workers=0, text=False),
                  progress=False)
secs = time.perf_counter() - t0
done.set()
th.join()
print(base, peak[0], res.rows, secs)
"""


def memory_section(run: Path, files: list[str], n: int, batch: int, tmp: Path) -> dict:
    res = {"batch": batch, "runs": []}
    for k in (n, 4 * n):
        tsv = write_tsv(tmp / f"mem-{k}.tsv", files, k)
        r = subprocess.run([sys.executable, "-c", _CHILD, str(tmp / f"mem-{k}.h5"), str(run), str(tsv), str(batch)],
                           capture_output=True, text=True, env=dict(os.environ))
        if r.returncode != 0:
            raise SystemExit(f"memory child failed:\n{r.stderr[-2000:]}")
        base, peak, rows, secs = r.stdout.split()
        res["runs"].append({"images": int(rows), "rss_mb_before": int(base) / 1e6, "peak_rss_mb": int(peak) / 1e6,
                            "extraction_rss_mb": (int(peak) - int(base)) / 1e6, "seconds": float(secs),
                            "store_mb": (tmp / f"mem-{k}.h5").stat().st_size / 1e6})
    a, b = res["runs"]
    res["extraction_rss_growth_mb"] = b["extraction_rss_mb"] - a["extraction_rss_mb"]
    res["store_growth_mb"] = b["store_mb"] - a["store_mb"]
    return res


# -- main ------------------------------------------------------------------------------------------------------

def section_for(model: str, image_size: int, per_class: int, device_name: str, precision: str, batch: int, n: int,
                workers_list: list[int], tmp: Path, repeats: int, jpeg_images: int) -> dict:
    import torch

    device = torch.device(device_name)
    run = make_run(tmp / f"run-{model}", model)
    root = make_images(tmp / f"dn-{model}", image_size, per_class)
    files = [str(p) for p in sorted(root.glob("*/*/*")) if p.suffix.lower() in (".jpg", ".jpeg", ".png")
             and p.parts[-3] != "base"]
    out = {"device": device_name if device.type == "cpu" else torch.cuda.get_device_name(device)}
    out["in_memory"] = in_memory_section(run, root, n, batch, device, precision, tmp, repeats)
    tsv = write_tsv(tmp / f"jpeg-{model}.tsv", files, jpeg_images)
    out["jpeg"] = jpeg_section(run, tsv, batch, device_name, precision, workers_list, tmp)
    out["run"], out["files"] = run, files
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--n", type=int, default=2048, help="images of the in-memory section (CPU)")
    ap.add_argument("--batch", type=int, default=32, help="CPU batch size")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the in-memory timings (best kept)")
    ap.add_argument("--jpeg-images", type=int, default=1536, help="images of the JPEG section (CPU)")
    ap.add_argument("--mem-images", type=int, default=2048, help="N of the memory section (N and 4N are run)")
    ap.add_argument("--writer-rows", type=int, default=2048, help="rows per block of the writer section")
    ap.add_argument("--gpu-n", type=int, default=8192)
    ap.add_argument("--gpu-batch", type=int, default=256)
    ap.add_argument("--gpu-jpeg-images", type=int, default=8192)
    ap.add_argument("--no-gpu", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    a = ap.parse_args()

    import torch

    set_threads(a.threads)
    cores = os.cpu_count() or 1
    results: dict = {"cpu_count": cores, "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        workers = sorted({0, 1, min(2, cores), min(4, cores)} & set(range(cores + 1)))
        cpu = section_for("RN-tiny", 64, 24, "cpu", "fp32", a.batch, a.n, workers, tmp, a.repeats, a.jpeg_images)
        m = cpu["in_memory"]
        print(f"CPU  {cores} cores, {results['torch_threads']} torch threads; RN-tiny 64 px, batch {a.batch}, fp32, "
              f"{m['layers']} layers (all + embedding), float16 store")
        print(f"  in memory ({m['images']} images): model only {m['model_only_img_per_s']:.0f} img/s; naive hooks "
              f"{m['naive_hooks_img_per_s']:.0f} ({m['naive_ratio']:.2f}); full extraction into HDF5 "
              f"{m['full_extraction_img_per_s']:.0f} img/s -> ratio {m['ratio']:.2f}")
        j = cpu["jpeg"]
        print(f"  from JPEG files ({j['images']} images): extract " + ", ".join(
            f"{w} workers {v:.0f}" for w, v in j["extract_img_per_s"].items()) + " img/s; loader alone " + ", ".join(
            f"{w} workers {v:.0f}" for w, v in j["loader_img_per_s"].items()) + f" img/s; best: {j['best_workers']} "
            "workers")
        mem = memory_section(cpu["run"], cpu["files"], a.mem_images, a.batch, tmp)
        r1, r2 = mem["runs"]
        print(f"  memory (batch {a.batch}, RSS sampled every 2 ms): extraction adds {r1['extraction_rss_mb']:.1f} MB "
              f"over the loaded process ({r1['rss_mb_before']:.0f} MB) for {r1['images']} images, "
              f"{r2['extraction_rss_mb']:.1f} MB for {r2['images']} images (stores of {r1['store_mb']:.1f} and "
              f"{r2['store_mb']:.1f} MB)")
        wthreads = sorted({1, min(2, cores), min(4, cores), min(8, cores)})
        w = writer_section(tmp, a.writer_rows, wthreads)
        print(f"  writer alone, RN50 rows ({w['bytes_per_row'] / 1e3:.1f} kB/img, compression "
              f"{w['compression_ratio']:.2f}x): " + ", ".join(f"{t} thread(s) {w[f'threads_{t}_img_per_s']:.0f}"
                                                              for t in wthreads) + " img/s")
        cpu.pop("run")
        cpu.pop("files")
        results["cpu"] = {**cpu, "memory": mem, "writer_rn50": w}
        if torch.cuda.is_available() and not a.no_gpu:
            gw = sorted({4, 8, min(12, cores), cores})
            g = section_for("RN50", 256, 24, "cuda", "bf16", a.gpu_batch, a.gpu_n, gw, tmp, a.repeats,
                            a.gpu_jpeg_images)
            g.pop("run")
            g.pop("files")
            m, j = g["in_memory"], g["jpeg"]
            print(f"GPU  {g['device']}: RN50 224 px, batch {a.gpu_batch}, bf16 autocast, channels-last")
            print(f"  in memory ({m['images']} images): model only {m['model_only_img_per_s']:.0f} img/s; naive "
                  f"hooks {m['naive_hooks_img_per_s']:.0f} ({m['naive_ratio']:.2f}); full extraction "
                  f"{m['full_extraction_img_per_s']:.0f} img/s -> ratio {m['ratio']:.2f} (target >= 0.8)")
            print(f"  from JPEG files ({j['images']} images): extract " + ", ".join(
                f"{k} workers {v:.0f}" for k, v in j["extract_img_per_s"].items()) + " img/s; loader alone "
                + ", ".join(f"{k} workers {v:.0f}" for k, v in j["loader_img_per_s"].items())
                + f" img/s; best: {j['best_workers']} workers")
            results["gpu"] = g
        else:
            print("GPU  none present (or --no-gpu): RN50 not measured")
    if a.json:
        a.json.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
