"""The supervised trainer's worker: one training process (one rank of a DistributedDataParallel run, or the only
process on CPU), started in-process by :func:`clipgen.training.supervised.run_train_supervised` or by torchrun as
``python -m clipgen.training.supervised_worker --settings RUN_DIR/train-settings.json``.

It reads everything from :class:`SupervisedSettings` (the parent resolves them), and writes the run's checkpoints
(``checkpoints/epoch_N.pt``, ``checkpoints/latest.pt``), ``metrics.jsonl`` and ``out.log``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clipgen.errors import ClipgenError

METRICS_NAME = "metrics.jsonl"
LATEST_NAME = "latest.pt"


@dataclass
class SupervisedSettings:
    """Everything a worker process needs (written as ``train-settings.json`` for torchrun workers)."""

    run_dir: str
    train: str
    val: str | None
    model: str
    model_config: dict[str, Any]
    num_classes: int
    epochs: int
    lr: float
    batch_size: int  # global
    batch_per_process: int
    milestones: list[int]
    gamma: float
    momentum: float
    nesterov: bool
    wd: float
    precision: str
    workers: int
    save_every: int
    seed: int
    device: str
    world_size: int
    launcher: str
    extra: dict[str, Any] = field(default_factory=dict)

    def hyperparameters(self) -> dict[str, Any]:
        skip = {"run_dir", "train", "val", "model", "model_config", "extra"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def param_groups(model) -> list[dict[str, Any]]:
    """No weight decay on norm layers, biases and other 1-D parameters (as the published learner)."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay}]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch - also for seed 0 (the published script skipped seeding when seed was 0)."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def get_rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) random states, so a resumed run draws the same augmentations."""
    import random

    import numpy as np
    import torch

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class LabeledImages:
    """``(image tensor, label)`` pairs; a missing or corrupt image is a one-line error naming it."""

    def __init__(self, paths: list[str], labels: list[int], transform):
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from clipgen.datasets import load_image

        return self.transform(load_image(self.paths[i])), self.labels[i]


def _records(tsv: str) -> tuple[list[str], list[int]]:
    from clipgen.training.labels import tsv_labels
    from clipgen.tsv import iter_tsv

    paths = [fp for fp, _ in iter_tsv(tsv)]
    return paths, tsv_labels(tsv, paths)


def _init_distributed(s: SupervisedSettings) -> tuple[int, int, Any]:
    """``(rank, local_rank, device)``; initialises the process group when there are several processes."""
    import torch
    import torch.distributed as dist

    rank = local = 0
    if s.world_size > 1:
        env = os.environ
        if "RANK" not in env and "SLURM_PROCID" in env:  # srun task: SLURM variables -> torch.distributed's
            env["RANK"] = env["SLURM_PROCID"]
            env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
            env["WORLD_SIZE"] = str(s.world_size)
        dist.init_process_group("nccl" if s.device == "cuda" else "gloo", init_method="env://")
        rank, local = dist.get_rank(), int(env.get("LOCAL_RANK", "0"))
    if s.device == "cuda":
        idx = local if torch.cuda.device_count() > local else 0  # one visible GPU per task under SLURM binding
        torch.cuda.set_device(idx)
        return rank, local, torch.device("cuda", idx)
    return rank, local, torch.device("cpu")


def run_worker(s: SupervisedSettings, *, show_progress: bool = True) -> None:
    """Train (or continue) the run described by ``s`` in this process (one rank of ``s.world_size``)."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, DistributedSampler, Subset

    from clipgen.artifacts import save_torch_atomic
    from clipgen.devices import autocast
    from clipgen.models.supervised import NUM_IMAGENET, create_supervised
    from clipgen.progress import make_progress

    rank, local, device = _init_distributed(s)
    distributed = s.world_size > 1
    run_dir = Path(s.run_dir)
    ck_dir = run_dir / "checkpoints"
    log_file = run_dir / "out.log"

    def log(msg: str) -> None:
        if rank == 0:
            with open(log_file, "a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%Y-%m-%d,%H:%M:%S')} | {msg}\n")

    try:
        seed_everything(s.seed)
        model, pre_train, pre_val = create_supervised(s.model, num_classes=s.num_classes, model_config=s.model_config)
        if rank == 0 and not (ck_dir / "epoch_0.pt").exists():
            ck_dir.mkdir(parents=True, exist_ok=True)
            save_torch_atomic({"epoch": 0, "step": 0, "kind": "supervised", "model": s.model,
                          "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}},
                         ck_dir / "epoch_0.pt")
        model.to(device)
        opt = torch.optim.SGD(param_groups(model), lr=s.lr, momentum=s.momentum, nesterov=s.nesterov,
                              weight_decay=s.wd)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=s.milestones, gamma=s.gamma)
        scaler = torch.amp.GradScaler("cuda") if (s.precision == "fp16" and device.type == "cuda") else None
        start_epoch, step = 0, 0
        latest = ck_dir / LATEST_NAME
        if latest.is_file():
            ck = torch.load(latest, map_location="cpu", weights_only=False)
            model.load_state_dict(ck["state_dict"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            if scaler is not None and ck.get("scaler"):
                scaler.load_state_dict(ck["scaler"])
            if ck.get("rng"):
                set_rng_state(ck["rng"])
            start_epoch, step = int(ck["epoch"]), int(ck.get("step", 0))
            log(f"resuming from {latest} (epoch {start_epoch})")
        if rank == 0:  # drop metrics of an epoch that was cut short after its line was written
            kept = [r for r in read_metrics(run_dir) if r.get("epoch", 0) <= start_epoch]
            if kept != read_metrics(run_dir):
                from clipgen.artifacts import write_text_atomic

                write_text_atomic(run_dir / METRICS_NAME, "".join(json.dumps(r) + "\n" for r in kept))
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None) if distributed else model

        paths, labels = _records(s.train)
        train_ds = LabeledImages(paths, labels, pre_train)
        sampler = DistributedSampler(train_ds, num_replicas=s.world_size, rank=rank, shuffle=True, seed=s.seed,
                                     drop_last=True)
        loader = DataLoader(train_ds, batch_size=s.batch_per_process, sampler=sampler, num_workers=s.workers,
                            drop_last=True, pin_memory=device.type == "cuda", persistent_workers=s.workers > 0)
        val_loader = None
        if s.val:
            vpaths, vlabels = _records(s.val)
            val_ds = Subset(LabeledImages(vpaths, vlabels, pre_val), list(range(rank, len(vpaths), s.world_size)))
            val_loader = DataLoader(val_ds, batch_size=s.batch_per_process, shuffle=False, num_workers=s.workers,
                                    drop_last=False)
        steps = len(loader)
        if steps == 0:
            raise ClipgenError(f"--batch-size: {s.batch_size} is larger than the training set ({len(train_ds)})")
        log(f"training {s.model} on {len(train_ds)} images, {steps} steps/epoch, epochs {start_epoch}..{s.epochs}, "
            f"world size {s.world_size}, device {device}, precision {s.precision}")

        with make_progress(disable=not (show_progress and rank == 0)) as bar:
            task = bar.add_task(f"{run_dir.name}", total=(s.epochs - start_epoch) * steps)
            for epoch in range(start_epoch, s.epochs):
                sampler.set_epoch(epoch)
                net.train()
                tot = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
                for x, y in loader:
                    x = x.to(device, non_blocking=True)
                    y = y.to(device, non_blocking=True)
                    with autocast(device, s.precision):
                        logits = net(x)
                        loss = F.cross_entropy(logits.float(), y)
                    opt.zero_grad(set_to_none=True)
                    if scaler is not None:
                        scaler.scale(loss).backward()
                        scaler.step(opt)
                        scaler.update()
                    else:
                        loss.backward()
                        opt.step()
                    step += 1
                    with torch.no_grad():
                        tot += torch.stack([loss.detach().double() * len(y),
                                            (logits.argmax(1) == y).sum().double(),
                                            torch.tensor(float(len(y)), dtype=torch.float64, device=device)])
                    bar.update(task, advance=1, description=f"{run_dir.name} epoch {epoch + 1}/{s.epochs} "
                                                            f"loss {loss.item():.3f}")
                lr = opt.param_groups[0]["lr"]
                sched.step()
                if distributed:
                    dist.all_reduce(tot)
                rec: dict[str, Any] = {"epoch": epoch + 1, "step": step, "lr": lr,
                                       "train_loss": float(tot[0] / tot[2]), "train_acc": float(tot[1] / tot[2])}
                if val_loader is not None:
                    rec.update(evaluate(model, val_loader, device, s.precision, distributed, NUM_IMAGENET))
                if rank == 0:
                    with open(run_dir / METRICS_NAME, "a", encoding="utf-8") as f:
                        f.write(json.dumps(rec) + "\n")
                    log(" ".join(f"{k}: {v:.5g}" if isinstance(v, float) else f"{k}: {v}" for k, v in rec.items()))
                    done = epoch + 1
                    sd = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
                    if done % s.save_every == 0 or done == s.epochs:
                        save_torch_atomic({"epoch": done, "step": step, "kind": "supervised", "model": s.model,
                                      "state_dict": sd}, ck_dir / f"epoch_{done}.pt")
                    save_torch_atomic({"epoch": done, "step": step, "state_dict": sd, "optimizer": opt.state_dict(),
                                  "scheduler": sched.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                                  "rng": get_rng_state(), "metrics": rec}, latest)
                if distributed:
                    dist.barrier()
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()


def evaluate(model, loader, device, precision: str, distributed: bool, offset: int) -> dict[str, float]:
    """Validation loss over all 1345 logits, accuracy over all of them, and DomainNet-head accuracy (argmax over
    the last 345 logits, on rows with a DomainNet label). Every row counts (no drop_last)."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from clipgen.devices import autocast

    model.eval()
    tot = torch.zeros(5, dtype=torch.float64, device=device)  # loss sum, correct, n, dn correct, dn n
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            with autocast(device, precision):
                logits = model(x).float()
            dn = y >= offset
            dn_pred = logits[:, offset:].argmax(1) + offset
            tot += torch.stack([F.cross_entropy(logits, y, reduction="sum").double(),
                                (logits.argmax(1) == y).sum().double(), torch.tensor(float(len(y)), device=device,
                                                                                     dtype=torch.float64),
                                (dn_pred[dn] == y[dn]).sum().double(), dn.sum().double()])
    if distributed:
        dist.all_reduce(tot)
    model.train()
    n, dn_n = float(tot[2]), float(tot[4])
    return {"val_loss": float(tot[0]) / n if n else math.nan, "val_acc": float(tot[1]) / n if n else math.nan,
            "val_acc_domainnet": float(tot[3]) / dn_n if dn_n else math.nan, "val_rows": int(n)}


def main(argv: list[str] | None = None) -> int:
    """``python -m clipgen.training.supervised_worker --settings RUN_DIR/train-settings.json`` (torchrun workers)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m clipgen.training.supervised_worker")
    ap.add_argument("--settings", required=True)
    a = ap.parse_args(argv)
    raw = json.loads(Path(a.settings).read_text(encoding="utf-8"))
    s = SupervisedSettings(**{k: v for k, v in raw.items() if k in SupervisedSettings.__dataclass_fields__})
    run_worker(s, show_progress=True)
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through torchrun
    try:
        sys.exit(main())
    except ClipgenError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
