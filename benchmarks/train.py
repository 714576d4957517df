"""Benchmark: training throughput (samples/s) through OpenCLIP's trainer, against a bare training loop.

Measured in the same run, with the same model, batch, precision and optimizer:

* **trainer**: ``clipgen train clip`` (open_clip_train in a subprocess, images decoded from a TSV by its data
  loader); samples/s is the median of the trainer's own per-step figures after the first epoch's warm-up, and the
  end-to-end figure divides all samples by the wall time of the whole command (process start, checks, epoch 0
  checkpoint, validation-free epochs);
* **bare loop** (baseline): the same model's forward + contrastive loss + backward + AdamW step on random tensors
  already in memory - the ceiling for this model and machine.

The ratio trainer / bare loop says how much the data pipeline and the trainer's bookkeeping cost.

On CPU: RN-tiny (64 px), batch 32, fp32, one process, on a synthetic DomainNet mixture; ``--amp`` adds a run with
open_clip_train's default ``amp`` precision on CPU to show why clipgen uses fp32 there. On GPU (when present):
RN50 (224 px), batch 128, AMP, one GPU, with open_clip_train's synthetic dataset (no image decoding) so the figure
is the model-bound rate per GPU; the paper's runs use 4 GPUs x 128 with 2 accumulation steps.

``--side-by-side`` (CPU) also times what ``clipgen demo`` does with its four runs: two trainings side by side with
``--threads 1`` each, against the same two one after the other with torch's default threads (wall time of the whole
commands, start-up included).

Usage: ``python benchmarks/train.py [--threads 2] [--epochs 3] [--amp] [--side-by-side] [--gpu-steps 60]
[--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import set_threads

RATE_RE = re.compile(r"Train Epoch: (\d+) .*?, (\S+)/s, \S+/s/gpu")


def trainer_rates(log: Path, skip_first_epoch: bool = True) -> list[float]:
    rates = []
    for line in log.read_text().splitlines():
        m = RATE_RE.search(line)
        if m and not (skip_first_epoch and m.group(1) == "0"):
            rates.append(float(m.group(2)))
    return rates


def bare_loop(model_name: str, batch: int, steps: int, device: str, precision: str) -> float:
    """samples/s of forward + loss + backward + AdamW step on random tensors (after 3 warm-up steps)."""
    import torch
    from open_clip.loss import ClipLoss

    from clipgen.models.registry import create_model, model_config

    cfg = model_config(model_name)
    size = cfg["vision_cfg"]["image_size"]
    ctx = cfg["text_cfg"].get("context_length", 77)
    torch.manual_seed(0)
    model, _, _ = create_model(model_name, device=device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.2)
    loss_fn = ClipLoss()
    x = torch.randn(batch, 3, size, size, device=device)
    t = torch.randint(1, 49000, (batch, ctx), device=device)
    scaler = torch.amp.GradScaler("cuda") if (precision == "amp" and device == "cuda") else None

    def step():
        with torch.autocast(device_type=device, dtype=torch.float16 if device == "cuda" else torch.bfloat16,
                            enabled=precision == "amp"):
            fi, ft, scale = model(x, t)
            loss = loss_fn(fi, ft, scale)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    for _ in range(3):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0)


def make_mixture(root: Path, per_class: int) -> Path:
    from clipgen import domainnet as dn
    from clipgen.data.synth import SynthConfig, run_synth
    from clipgen.tsv import read_tsv, write_tsv

    run_synth(SynthConfig(out=root / "dn", n_classes=8, train_per_class=per_class, test_per_class=2, base_per_class=24,
                          base_extra_classes=4, workers=1), progress=False)
    dnr = root / "dn"
    rows = read_tsv(dnr / "base_train.tsv")
    for d in ("real", "sketch", "clipart"):
        rows += [(str(dnr / s.path), f"a {dn.DOMAIN_TERMS[d][0]} of a {dn.folder_to_name(s.folder)}.")
                 for s in dn.read_split(dnr, d, "train")]
    write_tsv(root / "mix.tsv", rows)
    return root / "mix.tsv"


def run_trainer(tsv: Path, logs: Path, name: str, epochs: int, precision: str, batch: int) -> dict:
    from clipgen.training.clip import ClipTrainConfig, run_train_clip
    from clipgen.tsv import count_rows

    t0 = time.perf_counter()
    run_train_clip(ClipTrainConfig(train=tsv, logs=logs, name=name, preset="synthetic", epochs=epochs, device="cpu",
                                   precision=precision, batch_size=batch, log="quiet"))
    wall = time.perf_counter() - t0
    rows = count_rows(tsv)
    steps_per_epoch = rows // batch
    rates = trainer_rates(logs / name / "out.log")
    return {"samples_per_s": statistics.median(rates) if rates else float("nan"),
            "end_to_end_samples_per_s": steps_per_epoch * batch * epochs / wall, "wall_s": wall, "rows": rows,
            "epochs": epochs}


def gpu_section(steps: int, tmp: Path) -> dict:
    import subprocess

    from clipgen.training.launch import child_env

    batch = 128
    bare = bare_loop("RN50", batch, steps, "cuda", "amp")
    argv = ["--dataset-type", "synthetic", "--train-num-samples", str(batch * (steps + 10)), "--logs", str(tmp),
            "--name", "gpu", "--model", "RN50", "--epochs", "1", "--lr", "1e-3", "--warmup", "10", "--batch-size",
            str(batch), "--precision", "amp", "--workers", "4", "--device", "cuda", "--log-every-n-steps", "1",
            "--report-to", "", "--grad-checkpointing"]
    r = subprocess.run([sys.executable, "-m", "clipgen.training.open_clip_entry", *argv], env=child_env(),
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"GPU trainer run failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    rates = trainer_rates(tmp / "gpu" / "out.log", skip_first_epoch=False)[10:]
    import torch

    return {"device": torch.cuda.get_device_name(0), "model": "RN50", "image_size": 224, "batch": batch,
            "precision": "amp", "grad_checkpointing": True, "trainer_samples_per_s": statistics.median(rates),
            "bare_loop_samples_per_s": bare, "ratio": statistics.median(rates) / bare,
            "paper_epoch_minutes_4_gpus": 580_000 / (4 * statistics.median(rates)) / 60}


def side_by_side(tsv: Path, logs: Path, epochs: int, batch: int) -> dict:
    """Wall time of two trainings one after the other (default threads) and side by side (1 thread each)."""
    from concurrent.futures import ThreadPoolExecutor

    from clipgen.training.clip import ClipTrainConfig, run_train_clip

    def train(name: str, threads: int | None) -> None:
        run_train_clip(ClipTrainConfig(train=tsv, logs=logs, name=name, preset="synthetic", epochs=epochs, device="cpu",
                                       precision="fp32", batch_size=batch, threads=threads, log="quiet"))

    t0 = time.perf_counter()
    for name in ("seq-a", "seq-b"):
        train(name, None)
    sequential = time.perf_counter() - t0
    t0 = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda n: train(n, 1), ("par-a", "par-b")))
    parallel = time.perf_counter() - t0
    return {"sequential_s": sequential, "side_by_side_s": parallel, "speedup": sequential / parallel}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--epochs", type=int, default=3, help="at least 2: the first epoch (warm-up) is not timed")
    ap.add_argument("--per-class", type=int, default=24, help="synthetic train images per class and domain")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--bare-steps", type=int, default=20)
    ap.add_argument("--amp", action="store_true", help="also time open_clip_train's amp precision on CPU")
    ap.add_argument("--side-by-side", action="store_true",
                    help="also time two 1-thread trainings side by side against two one after the other (CPU)")
    ap.add_argument("--gpu-steps", type=int, default=60)
    ap.add_argument("--no-gpu", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    a = ap.parse_args()
    if a.epochs < 2:
        ap.error("--epochs must be at least 2 (the trainer's rate is read from epochs after the first)")

    import torch

    set_threads(a.threads)
    results: dict = {"cpu": {"model": "RN-tiny", "image_size": 64, "batch": a.batch, "precision": "fp32",
                             "processes": 1, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        tsv = make_mixture(tmp, a.per_class)
        bare = bare_loop("RN-tiny", a.batch, a.bare_steps, "cpu", "fp32")
        tr = run_trainer(tsv, tmp / "logs", "fp32", a.epochs, "fp32", a.batch)
        results["cpu"].update(trainer_samples_per_s=tr["samples_per_s"], bare_loop_samples_per_s=bare,
                              ratio=tr["samples_per_s"] / bare, end_to_end_samples_per_s=tr["end_to_end_samples_per_s"],
                              wall_s=tr["wall_s"], rows=tr["rows"], epochs=a.epochs)
        c = results["cpu"]
        print(f"CPU  RN-tiny 64px batch {a.batch} fp32, 1 process, {c['torch_threads']} threads, {tr['rows']} rows x "
              f"{a.epochs} epochs")
        print(f"     trainer {c['trainer_samples_per_s']:.0f} samples/s (end to end "
              f"{c['end_to_end_samples_per_s']:.0f}, {c['wall_s']:.1f} s); bare loop {bare:.0f} samples/s; "
              f"ratio trainer/bare {c['ratio']:.2f}")
        if a.amp:
            amp = run_trainer(tsv, tmp / "logs", "amp", 2, "amp", a.batch)
            results["cpu"]["amp_trainer_samples_per_s"] = amp["samples_per_s"]
            results["cpu"]["fp32_over_amp"] = tr["samples_per_s"] / amp["samples_per_s"]
            print(f"     with --precision amp: {amp['samples_per_s']:.0f} samples/s; fp32/amp "
                  f"{results['cpu']['fp32_over_amp']:.1f}x")
        if a.side_by_side:
            sb = side_by_side(tsv, tmp / "logs-sbs", a.epochs, a.batch)
            results["cpu"]["side_by_side"] = sb
            print(f"     two runs one after the other: {sb['sequential_s']:.1f} s; side by side with --threads 1: "
                  f"{sb['side_by_side_s']:.1f} s; speedup {sb['speedup']:.2f}x")
        if torch.cuda.is_available() and not a.no_gpu:
            g = gpu_section(a.gpu_steps, tmp)
            results["gpu"] = g
            print(f"GPU  {g['device']}: RN50 224px batch 128 amp, grad checkpointing, 1 GPU, synthetic data")
            print(f"     trainer {g['trainer_samples_per_s']:.0f} samples/s; bare loop "
                  f"{g['bare_loop_samples_per_s']:.0f} samples/s; ratio {g['ratio']:.2f}; one ImageNet-Captions "
                  f"epoch (~580k) on 4 such GPUs ~{g['paper_epoch_minutes_4_gpus']:.0f} min")
        else:
            print("GPU  none present (or --no-gpu): RN50 not measured")
    if a.json:
        a.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
