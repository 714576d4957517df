"""The paper's supervised baseline: an open_clip image tower (random init) + ReLU + linear head over 1345 classes.

Plain PyTorch (DistributedDataParallel through torchrun or one srun task per GPU; one process on CPU for tiny
models). The paper's settings (preset ``imagenet-captions``): RN50, SGD with Nesterov momentum 0.9,
lr 0.01, weight decay 1e-4 except on norm layers, biases and other 1-D parameters, lr x0.1 after epochs 30, 50
and 70, 90 epochs, global batch 256 split over the processes, fp16 mixed precision on GPU. Labels: see
:mod:`clipgen.training.labels`.

Run directory ``<logs>/<name>/``::

    checkpoints/epoch_0.pt            the untrained model (the paper's step-0 checkpoint)
    checkpoints/epoch_5.pt, ...       every ``save_every`` completed epochs and the last epoch: {"epoch",
                                      "step", "state_dict", "kind", "model"}; the paper's Lightning files
                                      ``epoch=4``, ``epoch=9``, ... ``epoch=89`` are our epoch_5 ... epoch_90
    checkpoints/latest.pt             full training state after the last completed epoch (to resume from)
    metrics.jsonl                     one line per epoch: train loss/accuracy, val loss/accuracy, lr
    out.log, clipgen-run.json (kind "supervised"), config.json, train-settings.json

Load a checkpoint with ``create_supervised(manifest.model, model_config=manifest.model_config)`` and
``clipgen.runs.load_state_dict``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from clipgen.errors import ClipgenError, option_error

SETTINGS_NAME = "train-settings.json"
METRICS_NAME = "metrics.jsonl"
LATEST_NAME = "latest.pt"
WORKER_MODULE = "clipgen.training.supervised"
PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class SupervisedPreset:
    name: str
    description: str
    model: str
    epochs: int
    lr: float
    batch_size: int  # global, split over the processes
    milestones: tuple[int, ...]
    gamma: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    wd: float = 1e-4
    precision: str = "fp16"  # on GPU; CPU runs use fp32 unless told otherwise
    workers: int = 6  # per process
    save_every: int = 5
    seeds: tuple[int, ...] = (0, 1, 2)


PRESETS: dict[str, SupervisedPreset] = {
    p.name: p
    for p in (
        SupervisedPreset("imagenet-captions", "the paper's supervised baseline (RN50, 90 epochs, SGD)", model="RN50",
                         epochs=90, lr=0.01, batch_size=256, milestones=(30, 50, 70)),
        SupervisedPreset("synthetic", "small CPU runs on the synthetic DomainNet (tests, demo)", model="RN-tiny",
                         epochs=10, lr=0.01, batch_size=32, milestones=(6, 8), precision="fp32", workers=0),
    )
}


@dataclass
class SupervisedTrainConfig:
    """Options of ``clipgen train supervised``; ``None`` means "the preset's value"."""

    train: Path
    val: Path | None = None
    logs: Path = Path("logs")
    name: str | None = None
    preset: str | None = None  # None: chosen from the training data (clipgen.training.clip.choose_preset)
    model: str | None = None
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    milestones: list[int] | None = None
    gamma: float | None = None
    momentum: float | None = None
    wd: float | None = None
    precision: str | None = None
    workers: int | None = None
    save_every: int | None = None
    seed: int = 0
    device: str = "auto"
    gpus: int | None = None
    nproc: int | None = None
    launcher: str = "auto"
    resume: bool = False  # accepted for compatibility: an existing run is always continued (unless force)
    force: bool = False
    progress: bool = True
    check_sample: int = 256


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


@dataclass
class SupervisedRunResult:
    run_dir: Path
    checkpoint_dir: Path
    epochs: list[int]
    metrics: list[dict[str, Any]]
    skipped: bool = False
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------------------------------
# Preparation (parent process)


def resolve_settings(cfg: SupervisedTrainConfig, run_dir: Path, plan) -> SupervisedSettings:
    from clipgen.models.registry import model_config
    from clipgen.models.supervised import NUM_JOINT
    from clipgen.training.clip import get_preset

    p = get_preset(cfg.preset or "synthetic", PRESETS)  # no preset and no data read (prepare chooses one first)
    model = cfg.model or p.model
    cfg_model = model_config(model)
    if "embed_dim" not in cfg_model:
        raise option_error("--model", f"{model}: configuration has no embed_dim")
    batch = cfg.batch_size or p.batch_size
    epochs = cfg.epochs or p.epochs
    for opt, v in (("--batch-size", batch), ("--epochs", epochs), ("--save-every", cfg.save_every)):
        if v is not None and v < 1:
            raise option_error(opt, "must be >= 1")
    if batch % plan.world_size:
        raise option_error("--batch-size", f"global batch {batch} is not divisible by {plan.world_size} processes")
    milestones = list(p.milestones if cfg.milestones is None else cfg.milestones)
    if milestones != sorted(milestones) or any(m < 1 for m in milestones):
        raise option_error("--milestones", f"{milestones}: must be increasing positive epochs")
    precision = cfg.precision or (p.precision if plan.device == "cuda" else "fp32")
    if precision not in PRECISIONS:
        raise option_error("--precision", f"unknown precision {precision!r} (one of {', '.join(PRECISIONS)})")
    if precision == "fp16" and plan.device == "cpu":
        raise option_error("--precision", "fp16 mixed precision needs a GPU (use fp32 or bf16 on CPU)")
    return SupervisedSettings(
        run_dir=str(run_dir), train=str(Path(cfg.train).resolve()),
        val=str(Path(cfg.val).resolve()) if cfg.val else None, model=model, model_config=cfg_model,
        num_classes=NUM_JOINT, epochs=epochs, lr=p.lr if cfg.lr is None else cfg.lr, batch_size=batch,
        batch_per_process=batch // plan.world_size, milestones=milestones,
        gamma=p.gamma if cfg.gamma is None else cfg.gamma,
        momentum=p.momentum if cfg.momentum is None else cfg.momentum,
        nesterov=p.nesterov, wd=p.wd if cfg.wd is None else cfg.wd, precision=precision,
        workers=p.workers if cfg.workers is None else cfg.workers,
        save_every=cfg.save_every or p.save_every, seed=cfg.seed, device=plan.device, world_size=plan.world_size,
        launcher=plan.launcher,
    )


@dataclass
class PreparedSupervisedRun:
    cfg: SupervisedTrainConfig
    settings: SupervisedSettings
    run_dir: Path
    plan: Any
    data: dict[str, Any]
    mixture: dict[str, Any] | None
    start_epoch: int
    complete: bool
    preset_note: str | None = None  # which preset was chosen for the data, or a warning that it does not fit


#: Settings a resumed run must share with the original. ``epochs`` may grow: the step schedule does not depend on it.
_RESUME_KEYS = ("lr", "batch_size", "milestones", "gamma", "momentum", "wd", "seed")


def prepare_supervised_run(cfg: SupervisedTrainConfig) -> PreparedSupervisedRun:
    """All checks and decisions, without side effects."""
    from clipgen.data.mixture_info import read_info
    from clipgen.runs import read_manifest
    from clipgen.training.checks import check_run_dir, check_tsv, load_checkpoint, refuse_other_settings, run_state
    from clipgen.training.clip import check_run_name, choose_preset, default_run_name, get_preset
    from clipgen.training.labels import tsv_labels
    from clipgen.training.launch import resolve_launch

    train = None
    if cfg.preset is None:  # the preset depends on the data: read it first
        train = check_tsv(cfg.train, "--train", sample=cfg.check_sample)
        chosen, preset_note = choose_preset(None, cfg.train, train.rows, read_info(cfg.train), PRESETS)
        cfg = replace(cfg, preset=chosen)
    p = get_preset(cfg.preset, PRESETS)
    plan = resolve_launch(cfg.device, cfg.gpus, cfg.nproc, cfg.launcher)
    name = check_run_name(cfg.name or default_run_name(cfg.train, f"{cfg.model or p.model}-supervised", cfg.seed))
    run_dir = Path(cfg.logs) / name
    settings = resolve_settings(cfg, run_dir, plan)

    if train is None:
        train = check_tsv(cfg.train, "--train", sample=cfg.check_sample)
        _, preset_note = choose_preset(cfg.preset, cfg.train, train.rows, read_info(cfg.train), PRESETS)
    tsv_labels(cfg.train)
    if train.rows < settings.batch_size:
        raise option_error("--train", f"{cfg.train} has {train.rows} rows, fewer than one batch "
                                      f"({settings.batch_size}); lower --batch-size")
    data: dict[str, Any] = {"train": train.manifest_entry()}
    if cfg.val is not None:
        data["val"] = check_tsv(cfg.val, "--val", sample=cfg.check_sample).manifest_entry()
        tsv_labels(cfg.val)
    info = read_info(cfg.train)

    state = run_state(run_dir)
    if plan.is_rank0:
        check_run_dir(state)
    start_epoch, complete = 0, False
    latest = run_dir / "checkpoints" / LATEST_NAME
    if state.started and not cfg.force:  # the same command continues a run (--resume is implied)
        if state.has_manifest:
            old = read_manifest(run_dir, option="--name")
            if old.kind != "supervised":
                raise option_error("--name", f"{run_dir} is a {old.kind} run, not a supervised run; pass --force "
                                             f"to replace it or choose another --name")
            new = settings.hyperparameters()
            diff = [f"{k} {old.hyperparameters.get(k)!r} -> {new[k]!r}" for k in _RESUME_KEYS
                    if k in old.hyperparameters and old.hyperparameters[k] != new[k]]
            if old.model != settings.model:
                diff.append(f"model {old.model} -> {settings.model}")
            old_sha = (old.data.get("train") or {}).get("sha256")
            if old_sha and old_sha != train.sha256:
                diff.append("train data sha256 changed")
            refuse_other_settings(run_dir, diff)
        if latest.is_file():
            ck = load_checkpoint(latest, required=("epoch", "state_dict", "optimizer", "scheduler"))
            start_epoch = int(ck["epoch"])
            complete = start_epoch >= settings.epochs
        elif any(e >= 1 for e in state.checkpoints):
            raise option_error("--name", f"{latest} is missing, so the optimizer state is lost; start over with "
                                         f"--force")
    return PreparedSupervisedRun(cfg, settings, run_dir, plan, data, asdict(info) if info else None, start_epoch,
                                 complete, preset_note)


def train_supervised(cfg: SupervisedTrainConfig) -> SupervisedRunResult:
    """Check, write the manifest, train (in this process, under torchrun, or as one srun task)."""
    import subprocess

    from clipgen.artifacts import utc_now, write_config, write_json_atomic
    from clipgen.progress import console
    from clipgen.runs import RunManifest, list_checkpoints, read_manifest, write_manifest
    from clipgen.training.launch import child_env, module_command

    t0 = time.perf_counter()
    prep = prepare_supervised_run(cfg)
    cfg = prep.cfg  # the preset resolved
    s, run_dir = prep.settings, prep.run_dir
    if prep.preset_note and prep.plan.is_rank0 and cfg.progress and not prep.complete:
        console.print(prep.preset_note, markup=False, highlight=False)
    ck_dir = run_dir / "checkpoints"
    if prep.complete:
        if prep.plan.is_rank0 and cfg.progress:
            console.print(f"run {run_dir} is complete (epoch {s.epochs} trained); nothing to do")
        return SupervisedRunResult(run_dir, ck_dir, sorted(list_checkpoints(run_dir)), read_metrics(run_dir),
                                   skipped=True)
    if prep.plan.is_rank0:
        if cfg.force and run_dir.exists():
            from clipgen.training.clip import force_note

            note = force_note(run_dir)
            if note and cfg.progress:
                console.print(note, markup=False, highlight=False)
            shutil.rmtree(run_dir)
        ck_dir.mkdir(parents=True, exist_ok=True)
        old = read_manifest(run_dir, option="--name") if (not cfg.force and (run_dir / "clipgen-run.json").is_file()) \
            else None
        m = RunManifest(kind="supervised", name=run_dir.name, model=s.model, model_config=s.model_config,
                        preset=cfg.preset, hyperparameters=s.hyperparameters(), data=prep.data, seed=s.seed,
                        mixture=prep.mixture,
                        extra={"status": "running", "started": utc_now(), "num_classes": s.num_classes,
                               "checkpoint_epochs": "completed epochs (paper's Lightning epoch=K is epoch_{K+1})",
                               "run_name": str(run_dir.relative_to(cfg.logs))})
        if old is not None:
            m.created, m.command = old.created, old.command
            m.extra["history"] = [*old.extra.get("history", []), {"resumed": utc_now(), "from_epoch": prep.start_epoch}]
        write_manifest(run_dir, m)
        write_config(run_dir, "train supervised", cfg)
        write_json_atomic(run_dir / SETTINGS_NAME, asdict(s))

    if prep.plan.launcher == "torchrun":
        cmd = module_command(WORKER_MODULE, ["--settings", str(run_dir / SETTINGS_NAME)], prep.plan)
        rc = subprocess.run(cmd, env=child_env()).returncode
        if rc != 0:
            from clipgen.training.clip import TrainingFailed

            raise TrainingFailed(f"supervised training failed with exit code {rc} (see {run_dir / 'out.log'})")
    else:
        run_worker(s, show_progress=cfg.progress and prep.plan.is_rank0)

    epochs = sorted(list_checkpoints(run_dir))
    metrics = read_metrics(run_dir)
    seconds = time.perf_counter() - t0
    if prep.plan.is_rank0:
        m = read_manifest(run_dir, option="--name")
        m.extra.update(status="complete", finished=utc_now(), epochs_saved=epochs, seconds=round(seconds, 1))
        if metrics:
            m.extra["final_metrics"] = metrics[-1]
        write_manifest(run_dir, m)
        from clipgen.training.clip import plot_training_curves

        plot_training_curves(run_dir, {r["epoch"]: r.get("train_loss") for r in metrics},
                             {r["epoch"]: r.get("val_loss") for r in metrics if "val_loss" in r},
                             ylabel="cross-entropy loss", val_label="validation")
    return SupervisedRunResult(run_dir, ck_dir, epochs, metrics, False, seconds)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


# ---------------------------------------------------------------------------------------------------------------
# The worker (every training process)


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


def _save_atomic(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


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
            _save_atomic({"epoch": 0, "step": 0, "kind": "supervised", "model": s.model,
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
                        _save_atomic({"epoch": done, "step": step, "kind": "supervised", "model": s.model,
                                      "state_dict": sd}, ck_dir / f"epoch_{done}.pt")
                    _save_atomic({"epoch": done, "step": step, "state_dict": sd, "optimizer": opt.state_dict(),
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
    """``python -m clipgen.training.supervised --settings RUN_DIR/train-settings.json`` (torchrun workers)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m clipgen.training.supervised")
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
