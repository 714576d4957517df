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

import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from clipgen.errors import ConfigFieldError
from clipgen.training.supervised_worker import (
    LATEST_NAME,
    SupervisedSettings,
    read_metrics,
    run_worker,
)

SETTINGS_NAME = "train-settings.json"
WORKER_MODULE = "clipgen.training.supervised_worker"
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
    preset: str | None = None  # None: chosen from the training data (clipgen.training.clip_settings.choose_preset)
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
class SupervisedRunResult:
    run_dir: Path
    checkpoint_dir: Path
    epochs: list[int]
    metrics: list[dict[str, Any]]
    skipped: bool = False
    seconds: float = 0.0


def resolve_settings(cfg: SupervisedTrainConfig, run_dir: Path, plan) -> SupervisedSettings:
    from clipgen.models.registry import model_config
    from clipgen.models.supervised import NUM_JOINT
    from clipgen.training.clip_settings import get_preset

    p = get_preset(cfg.preset or "synthetic", PRESETS)  # no preset and no data read (prepare chooses one first)
    model = cfg.model or p.model
    cfg_model = model_config(model)
    if "embed_dim" not in cfg_model:
        raise ConfigFieldError("model", f"{model}: configuration has no embed_dim")
    batch = cfg.batch_size or p.batch_size
    epochs = cfg.epochs or p.epochs
    for name, v in (("batch_size", batch), ("epochs", epochs), ("save_every", cfg.save_every)):
        if v is not None and v < 1:
            raise ConfigFieldError(name, "must be >= 1")
    if batch % plan.world_size:
        raise ConfigFieldError("batch_size", f"global batch {batch} is not divisible by {plan.world_size} processes")
    milestones = list(p.milestones if cfg.milestones is None else cfg.milestones)
    if milestones != sorted(milestones) or any(m < 1 for m in milestones):
        raise ConfigFieldError("milestones", f"{milestones}: must be increasing positive epochs")
    precision = cfg.precision or (p.precision if plan.device == "cuda" else "fp32")
    if precision not in PRECISIONS:
        raise ConfigFieldError("precision", f"unknown precision {precision!r} (one of {', '.join(PRECISIONS)})")
    if precision == "fp16" and plan.device == "cpu":
        raise ConfigFieldError("precision", "fp16 mixed precision needs a GPU (use fp32 or bf16 on CPU)")
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
    from clipgen.training.clip_settings import check_run_name, choose_preset, default_run_name, get_preset
    from clipgen.training.labels import tsv_labels
    from clipgen.training.launch import resolve_launch

    train = None
    if cfg.preset is None:  # the preset depends on the data: read it first
        train = check_tsv(cfg.train, "train", sample=cfg.check_sample)
        chosen, preset_note = choose_preset(None, cfg.train, train.rows, read_info(cfg.train), PRESETS)
        cfg = replace(cfg, preset=chosen)
    p = get_preset(cfg.preset, PRESETS)
    plan = resolve_launch(cfg.device, cfg.gpus, cfg.nproc, cfg.launcher)
    name = check_run_name(cfg.name or default_run_name(cfg.train, f"{cfg.model or p.model}-supervised", cfg.seed))
    run_dir = Path(cfg.logs) / name
    settings = resolve_settings(cfg, run_dir, plan)

    if train is None:
        train = check_tsv(cfg.train, "train", sample=cfg.check_sample)
        _, preset_note = choose_preset(cfg.preset, cfg.train, train.rows, read_info(cfg.train), PRESETS)
    tsv_labels(cfg.train)
    if train.rows < settings.batch_size:
        raise ConfigFieldError("train", f"{cfg.train} has {train.rows} rows, fewer than one batch "
                                        f"({settings.batch_size}); lower --batch-size")
    data: dict[str, Any] = {"train": train.manifest_entry()}
    if cfg.val is not None:
        data["val"] = check_tsv(cfg.val, "val", sample=cfg.check_sample).manifest_entry()
        tsv_labels(cfg.val)
    info = read_info(cfg.train)

    state = run_state(run_dir)
    if plan.is_rank0:
        check_run_dir(state)
    start_epoch, complete = 0, False
    latest = run_dir / "checkpoints" / LATEST_NAME
    if state.started and not cfg.force:  # the same command continues a run (--resume is implied)
        if state.has_manifest:
            old = read_manifest(run_dir, field="name")
            if old.kind != "supervised":
                raise ConfigFieldError("name", f"{run_dir} is a {old.kind} run, not a supervised run; pass --force "
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
            raise ConfigFieldError("name", f"{latest} is missing, so the optimizer state is lost; start over with "
                                           f"--force")
    return PreparedSupervisedRun(cfg, settings, run_dir, plan, data, asdict(info) if info else None, start_epoch,
                                 complete, preset_note)


def run_train_supervised(cfg: SupervisedTrainConfig) -> SupervisedRunResult:
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
        old = read_manifest(run_dir, field="name") if (not cfg.force and (run_dir / "clipgen-run.json").is_file()) \
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
        m = read_manifest(run_dir, field="name")
        m.extra.update(status="complete", finished=utc_now(), epochs_saved=epochs, seconds=round(seconds, 1))
        if metrics:
            m.extra["final_metrics"] = metrics[-1]
        write_manifest(run_dir, m)
        from clipgen.training.curves import plot_training_curves

        plot_training_curves(run_dir, {r["epoch"]: r.get("train_loss") for r in metrics},
                             {r["epoch"]: r.get("val_loss") for r in metrics if "val_loss" in r},
                             ylabel="cross-entropy loss", val_label="validation")
    return SupervisedRunResult(run_dir, ck_dir, epochs, metrics, False, seconds)
