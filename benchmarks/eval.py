"""Benchmark: zero-shot evaluation (images/s) with and without a matching activation store, in the same run.

One random-weight checkpoint, the synthetic DomainNet's test split of sketch + real (the images one zero-shot
evaluation reads), and a store of that checkpoint over those images made once by ``clipgen extract`` (every layer,
the embedding and the class text embeddings of the paper's 86 templates). Then, interleaved ``--repeats`` times:

* **forward** (baseline): ``clipgen.evaluation.zeroshot_eval.run_zero_shot`` as ``clipgen eval zero-shot`` runs it:
  load the checkpoint, build the template-averaged classifier, decode every image and run the image tower, predict,
  compute the metrics, write results.json and predictions.npz;
* **store**: the same call with ``--store``: image embeddings and class text embeddings are read from the store, no
  model is loaded, no image decoded.

images/s = evaluated images / wall time of the whole call (end to end, what a user waits for), and also over the
per-checkpoint time results.json records (predictions only). The store path must be faster; the ratio store /
forward is printed, with the agreement of the two paths' top-1 predictions.

Defaults: CPU, RN-tiny (64 px), 12 classes x 40 images x 2 domains, batch 256, fp32. With a GPU (unless
``--no-gpu``): RN50 (224 px), 48 classes x 40 x 2, batch 256, bf16 autocast, 8 loader workers.
Usage: ``python benchmarks/eval.py [--threads 2] [--per-class 40] [--repeats 3] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from _common import make_run, set_threads


def measure(model: str, image_size: int, n_classes: int, per_class: int, device: str, precision: str, batch: int,
            workers: int, repeats: int, tmp: Path) -> dict:
    import numpy as np

    from clipgen.data.synth import SynthConfig, run_synth
    from clipgen.evaluation.results import read_predictions, read_results
    from clipgen.evaluation.zeroshot_eval import ZeroShotConfig, run_zero_shot
    from clipgen.extraction import ExtractConfig, run_extract

    run = make_run(tmp / f"run-{model}", model)
    root = tmp / f"dn-{model}"
    run_synth(SynthConfig(out=root, n_classes=n_classes, train_per_class=1, test_per_class=per_class,
                          base_per_class=1, base_extra_classes=0, image_size=image_size, workers=0,
                          domains=["real", "sketch"]), progress=False)
    store = tmp / f"store-{model}.h5"
    t0 = time.perf_counter()
    run_extract(ExtractConfig(out=store, model_dir=run, data=root, domains="rs", device=device, precision=precision,
                              workers=workers), progress=False)
    t_extract = time.perf_counter() - t0

    def once(tag: str, stores: list[Path]) -> tuple[float, dict, Path]:
        out = tmp / f"eval-{model}-{tag}"
        t0 = time.perf_counter()
        run_zero_shot(ZeroShotConfig(data_root=root, model_dir=run, test_domain="sketch", epochs="1", out=out,
                                     stores=stores, device=device, precision=precision, batch_size=batch,
                                     workers=workers, progress=False))
        return time.perf_counter() - t0, read_results(out), out

    walls: dict[str, list[float]] = {"forward": [], "store": []}
    preds: dict[str, list[float]] = {"forward": [], "store": []}
    outs: dict[str, Path] = {}
    for r in range(repeats):  # interleaved, so a busy moment of a shared machine hits both alike
        for tag, stores in (("forward", []), ("store", [store])):
            wall, doc, out = once(f"{tag}-{r}", stores)
            assert doc["checkpoints"][0]["features"] == tag, doc["checkpoints"][0]
            walls[tag].append(wall)
            preds[tag].append(doc["checkpoints"][0]["seconds"])
            outs[tag] = out
    n = int(read_results(outs["forward"])["data"]["n_images"])
    a = read_predictions(outs["forward"])["predictions"][0]
    b = read_predictions(outs["store"])["predictions"][0]
    res = {"model": model, "image_size": image_size, "classes": n_classes, "images": n, "device": device,
           "precision": precision, "batch": batch, "workers": workers, "repeats": repeats,
           "store_mb": store.stat().st_size / 1e6, "extract_seconds": t_extract,
           "top1_agreement": float(np.mean(a == b))}
    for tag in walls:
        res[f"{tag}_img_per_s"] = n / min(walls[tag])
        res[f"{tag}_img_per_s_median"] = n / statistics.median(walls[tag])
        res[f"{tag}_predict_img_per_s"] = n / min(preds[tag])
        res[f"{tag}_wall_s"] = walls[tag]
    res["ratio"] = res["store_img_per_s"] / res["forward_img_per_s"]
    res["ratio_median"] = res["store_img_per_s_median"] / res["forward_img_per_s_median"]
    res["predict_ratio"] = res["store_predict_img_per_s"] / res["forward_predict_img_per_s"]
    return res


def report(title: str, r: dict) -> None:
    print(f"{title}: {r['model']} {r['image_size']} px, {r['images']} images ({r['classes']} classes, sketch + real), "
          f"batch {r['batch']}, {r['precision']}, {r['workers']} workers, best of {r['repeats']}")
    print(f"  forward {r['forward_img_per_s']:.0f} img/s end to end ({r['forward_predict_img_per_s']:.0f} over the "
          f"predictions); store {r['store_img_per_s']:.0f} img/s ({r['store_predict_img_per_s']:.0f}); "
          f"ratio store/forward {r['ratio']:.1f}x end to end (median {r['ratio_median']:.1f}x), "
          f"{r['predict_ratio']:.1f}x over the predictions; top-1 agreement {100 * r['top1_agreement']:.1f}%")
    print(f"  (the store, {r['store_mb']:.1f} MB with every layer, took {r['extract_seconds']:.1f} s to extract once)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--classes", type=int, default=12)
    ap.add_argument("--per-class", type=int, default=40, help="test images per class and domain")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--gpu-classes", type=int, default=48)
    ap.add_argument("--gpu-workers", type=int, default=8)
    ap.add_argument("--no-gpu", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    a = ap.parse_args()

    import torch

    set_threads(a.threads)
    results: dict = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        results["cpu"] = measure("RN-tiny", 64, a.classes, a.per_class, "cpu", "fp32", a.batch, 0, a.repeats, tmp)
        report(f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)", results["cpu"])
        if torch.cuda.is_available() and not a.no_gpu:
            results["gpu"] = measure("RN50", 256, a.gpu_classes, a.per_class, "cuda", "bf16", a.batch,
                                     a.gpu_workers, a.repeats, tmp)
            results["gpu"]["device_name"] = torch.cuda.get_device_name(0)
            report(f"GPU ({results['gpu']['device_name']})", results["gpu"])
        else:
            print("GPU  none present (or --no-gpu): RN50 not measured")
    if a.json:
        a.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
