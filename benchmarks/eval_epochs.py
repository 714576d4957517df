"""Benchmark: zero-shot evaluation of E epochs, one decode pass for all of them vs one pass per checkpoint.

A run with E random-weight checkpoints and a synthetic DomainNet whose test images (sketch + real) are 400 x 300
JPEGs, as on the real data. Side by side in one run, interleaved ``--repeats`` times:

* **per checkpoint** (baseline, what the evaluation did before): ``run_zero_shot(..., per_checkpoint=True)``, one
  pass over the images per epoch, so every image is decoded and preprocessed E times;
* **decode once**: ``run_zero_shot(...)`` as ``clipgen eval zero-shot`` runs it: the E checkpoints form one chunk,
  every image is decoded once and each batch is fed to the E image towers.

Printed: both wall times (end to end: checkpoint loads, classifiers, images, metrics, files), the images decoded
(``clipgen.datasets.DECODES``), the ratio, and the bound of the decode-once path, measured in the same run: one
decode pass + E times everything else = the per-checkpoint wall time minus (E - 1) decode passes (a decode pass
is the data loader alone over the images, timed separately). Target: decode once <= 1.15 x that bound. Also the
components (decode pass, one forward pass over decoded images, one checkpoint load + classifier). Both paths must
give identical results (checked).

Defaults (under 2 minutes on 2 cores): CPU, RN-tiny, E = 13, 12 classes x 15 test images x 2 domains = 360 images,
batch 64, fp32, 1 torch thread, 0 loader workers (decoding in the main process, so the bound is a plain sum),
template set simple.
With a GPU (``--device cuda``): RN50 (224 px), bf16 autocast.
Usage: ``python benchmarks/eval_epochs.py [--epochs 13] [--per-class 15] [--workers 0] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from _common import make_multi_epoch_run, photo_sized_root, set_threads


def components(run: Path, root: Path, device, precision: str, batch: int, workers: int) -> dict:
    """Seconds of one decode pass, one forward pass over decoded images, and one checkpoint's load + classifier."""
    import torch

    from clipgen.devices import autocast
    from clipgen.evaluation.protocol import build_eval_set
    from clipgen.evaluation.zeroshot import image_batches
    from clipgen.models.zeroshot_classifier import build_classifier, templates
    from clipgen.runs import load_clip

    s = build_eval_set(root, "sketch")
    t0 = time.perf_counter()
    lm = load_clip(run, 1, device=device)
    with autocast(device, precision):
        build_classifier(lm.model, lm.tokenizer, s.class_names, templates("simple"), device=device)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    batches = [x for x, _, _ in image_batches(s.records, lm.preprocess, device=device, batch_size=batch,
                                              workers=workers, on_error="fail")]
    t_decode = time.perf_counter() - t0
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        with torch.no_grad():
            for x in batches:
                with autocast(device, precision):
                    f = lm.model.encode_image(x)
                torch.nn.functional.normalize(f.float(), dim=-1).cpu()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return {"images": len(s), "decode_s": t_decode, "forward_s": best, "load_classifier_s": t_load}


def measure(model: str, epochs: int, n_classes: int, per_class: int, device_spec: str, batch: int, workers: int,
            repeats: int, tmp: Path) -> dict:
    import numpy as np

    from clipgen.datasets import DECODES
    from clipgen.devices import resolve_device, resolve_precision
    from clipgen.evaluation.results import read_predictions, read_results
    from clipgen.evaluation.zeroshot_eval import ZeroShotConfig, run_zero_shot

    device = resolve_device(device_spec)
    precision = resolve_precision("auto", device)
    run = make_multi_epoch_run(tmp / f"run-{model}", model, epochs)
    root = photo_sized_root(tmp / f"dn-{model}", n_classes, per_class)
    comp = components(run, root, device, precision, batch, workers)
    walls: dict[str, list[float]] = {"per_checkpoint": [], "decode_once": []}
    decodes: dict[str, int] = {}
    outs: dict[str, Path] = {}
    for r in range(repeats):  # interleaved, so a busy moment of a shared machine hits both alike
        for tag in ("per_checkpoint", "decode_once"):
            out = tmp / f"eval-{model}-{tag}-{r}"
            DECODES.reset()
            t0 = time.perf_counter()
            run_zero_shot(ZeroShotConfig(data_root=root, model_dir=run, test_domain="sketch", out=out,
                                         templates="simple", device=device_spec, batch_size=batch, workers=workers,
                                         per_checkpoint=tag == "per_checkpoint", progress=False))
            walls[tag].append(time.perf_counter() - t0)
            decodes[tag] = DECODES.reset()
            outs[tag] = out
    a, b = read_results(outs["per_checkpoint"]), read_results(outs["decode_once"])
    pa, pb = read_predictions(outs["per_checkpoint"]), read_predictions(outs["decode_once"])
    identical = a["metrics"] == b["metrics"] and all(np.array_equal(pa[k], pb[k]) for k in pa)
    best = {k: min(v) for k, v in walls.items()}
    bound = best["per_checkpoint"] - (epochs - 1) * comp["decode_s"]
    return {"model": model, "device": str(device), "precision": precision, "epochs": epochs,
            "images": comp["images"], "batch": batch, "workers": workers, "repeats": repeats,
            "components": comp, "walls": walls, "per_checkpoint_s": best["per_checkpoint"],
            "decode_once_s": best["decode_once"], "decodes": decodes, "bound_s": bound,
            "ratio": best["per_checkpoint"] / best["decode_once"], "vs_bound": best["decode_once"] / bound,
            "identical": identical}


def report(r: dict) -> None:
    c = r["components"]
    print(f"{r['model']} on {r['device']} ({r['precision']}), {r['epochs']} epochs, {r['images']} images of 400x300 "
          f"px (sketch + real), batch {r['batch']}, {r['workers']} loader workers, best of {r['repeats']}")
    print(f"  per checkpoint: {r['per_checkpoint_s']:.2f} s, {r['decodes']['per_checkpoint']:,} images decoded")
    print(f"  decode once:    {r['decode_once_s']:.2f} s, {r['decodes']['decode_once']:,} images decoded")
    print(f"  ratio per-checkpoint / decode-once: {r['ratio']:.2f}x; results identical: {r['identical']}")
    print(f"  components: decode pass {c['decode_s']:.2f} s ({1e3 * c['decode_s'] / c['images']:.2f} ms/img), "
          f"forward pass {c['forward_s']:.2f} s ({1e3 * c['forward_s'] / c['images']:.2f} ms/img), checkpoint load + "
          f"classifier {c['load_classifier_s']:.2f} s")
    print(f"  bound (per checkpoint minus {r['epochs'] - 1} decode passes): {r['bound_s']:.2f} s; "
          f"decode once / bound = {r['vs_bound']:.2f} (target <= 1.15)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--epochs", type=int, default=13)
    ap.add_argument("--classes", type=int, default=12)
    ap.add_argument("--per-class", type=int, default=15, help="test images per class and domain")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu (RN-tiny) or cuda (RN50)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    a = ap.parse_args()

    import torch

    set_threads(a.threads or None)
    model = "RN50" if a.device.startswith("cuda") else "RN-tiny"
    with tempfile.TemporaryDirectory() as d:
        res = measure(model, a.epochs, a.classes, a.per_class, a.device, a.batch, a.workers, a.repeats, Path(d))
    res.update(cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads())
    report(res)
    if a.json:
        a.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
