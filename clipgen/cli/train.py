"""``clipgen train``: CLIP through open_clip_train, the supervised baseline, and the paper's grid of runs."""

from __future__ import annotations

from pathlib import Path

import typer

from clipgen.cli.common import (
    default,
    default_list,
    device_option,
    force_option,
    positive,
    precision_option,
    progress_option,
    split_list,
    writable,
)
from clipgen.training.clip_settings import ClipTrainConfig
from clipgen.training.grid import TrainGridConfig
from clipgen.training.supervised import SupervisedTrainConfig

app = typer.Typer(help="Train CLIP (OpenCLIP's own trainer), supervised classifiers, and the paper's grid.",
                  no_args_is_help=True)

_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


@app.command("clip", context_settings=_PASS_THROUGH)
def clip(
    ctx: typer.Context,
    train: Path = typer.Option(..., "--train", help="Training mixture TSV (filepath<TAB>title)."),
    val: Path | None = typer.Option(None, "--val", help="Validation TSV (open_clip's contrastive val metrics)."),
    logs: Path = typer.Option(default(ClipTrainConfig, "logs"), "--logs",
                              callback=writable, help="Folder of run directories."),
    name: str | None = typer.Option(None, "--name",
                                    help="Run name: the run directory is LOGS/NAME (default: TSV-MODEL-sSEED)."),
    preset: str | None = typer.Option(None, "--preset", help="imagenet-captions, ccxm or synthetic (default: chosen "
                                                             "from the training data's base dataset or size)."),
    model: str | None = typer.Option(None, "--model", help="Model name (open_clip's, or RN-tiny, RN-small, "
                                                           "ViT-tiny)."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Epochs (preset)."),
    lr: float | None = typer.Option(None, "--lr", min=0.0, help="Peak learning rate (preset)."),
    warmup: int | None = typer.Option(None, "--warmup", min=0, help="Warm-up steps (preset)."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Batch size per process (preset)."),
    effective_batch: int | None = typer.Option(None, "--effective-batch", min=1,
                                               help="Batch x processes x accumulation; sets --accum-freq (preset)."),
    accum_freq: int | None = typer.Option(None, "--accum-freq", min=1, help="Gradient accumulation steps (derived)."),
    wd: float | None = typer.Option(None, "--wd", min=0.0, help="AdamW weight decay (preset)."),
    precision: str | None = precision_option(default=None, help="open_clip precision (amp, fp32, bf16, ...) "
                                                                "(preset on GPU, fp32 on CPU)."),
    workers: int | None = typer.Option(None, "--workers", min=0, help="Data-loader workers per process (preset)."),
    seed: int = typer.Option(default(ClipTrainConfig, "seed"), "--seed", help="Random seed."),
    device: str = device_option("auto, cpu or cuda."),
    gpus: int | None = typer.Option(None, "--gpus", min=0, help="Number of GPUs (one process each; torchrun or srun)."),
    nproc: int | None = typer.Option(None, "--nproc", min=1,
                                     help="Number of processes on CPU (gloo; for testing DDP)."),
    launcher: str = typer.Option(default(ClipTrainConfig, "launcher"), "--launcher",
                                 help="auto, local, torchrun or srun."),
    resume: bool = typer.Option(default(ClipTrainConfig, "resume"), "--resume",
                                help="Accepted for compatibility: the same command continues an "
                                     "existing run from its last checkpoint anyway."),
    force: bool = force_option("Delete an existing run of this name and start over."),
    log: str = typer.Option(default(ClipTrainConfig, "log"), "--log",
                            help="bar (progress bar + warnings), live (the trainer's whole log) "
                                 "or quiet."),
    check_sample: int = typer.Option(default(ClipTrainConfig, "check_sample"), "--check-sample", min=0,
                                     help="Image paths checked to exist before training."),
    threads: int | None = typer.Option(None, "--threads", min=1,
                                       help="CPU threads of each training process (default: torch's; on a small "
                                            "CPU, several 1-thread runs side by side train faster than one)."),
) -> None:
    """Train CLIP with open_clip_train on a mixture TSV. Unknown options pass through to open_clip_train
    (put them after `--`), e.g. `clipgen train clip --train t.tsv -- --grad-clip-norm 1.0`. Rerun the same command to
    continue an interrupted run; a finished run is skipped."""
    from clipgen.progress import out
    from clipgen.training.clip import ClipTrainConfig, describe_checkpoints, run_train_clip

    cfg = ClipTrainConfig(
        train=train, val=val, logs=logs, name=name, preset=preset, model=model, epochs=epochs, lr=lr, warmup=warmup,
        batch_size=batch_size, effective_batch=effective_batch, accum_freq=accum_freq, wd=wd, precision=precision,
        workers=workers, seed=seed, device=device, gpus=gpus, nproc=nproc, launcher=launcher, resume=resume,
        force=force, extra_args=list(ctx.args), log=log, check_sample=check_sample, threads=threads,
    )
    res = run_train_clip(cfg)
    if not res.skipped and res.train_loss:
        last = max(res.train_loss)
        out.print(f"run {res.run_dir}: {len(res.epochs)} checkpoints, train loss {res.train_loss[last]:.4f} at "
                  f"epoch {last} ({res.seconds:.0f} s)")
    out.print(describe_checkpoints(res))


@app.command("supervised")
def supervised(
    train: Path = typer.Option(..., "--train", help="Training mixture TSV (captions are ignored)."),
    val: Path | None = typer.Option(None, "--val", help="Validation TSV (loss and accuracy after each epoch)."),
    logs: Path = typer.Option(default(SupervisedTrainConfig, "logs"), "--logs",
                              callback=writable, help="Folder of run directories."),
    name: str | None = typer.Option(None, "--name",
                                    help="Run name: the run directory is LOGS/NAME "
                                         "(default: TSV-MODEL-supervised-sSEED, e.g. mix-RN50-supervised-s0)."),
    preset: str | None = typer.Option(None, "--preset", help="imagenet-captions (the paper's) or synthetic "
                                                             "(default: chosen from the training data's size)."),
    model: str | None = typer.Option(None, "--model", help="Image tower of this CLIP model (preset)."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Epochs (preset)."),
    lr: float | None = typer.Option(None, "--lr", min=0.0, help="SGD learning rate (preset)."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1,
                                          help="Global batch size, split over processes (preset)."),
    milestones: str | None = typer.Option(None, "--milestones", help="Epochs after which lr is multiplied by "
                                                                     "--gamma, comma-separated (preset)."),
    gamma: float | None = typer.Option(None, "--gamma", callback=positive,
                                       help="Learning-rate factor at each milestone (0.1)."),
    momentum: float | None = typer.Option(None, "--momentum", min=0.0, help="Nesterov momentum (0.9)."),
    wd: float | None = typer.Option(None, "--wd", min=0.0, help="Weight decay (not on norms, biases, 1-D) (1e-4)."),
    precision: str | None = precision_option(default=None, help="fp32, fp16 or bf16 (mixed) (fp16 on GPU, "
                                                                "fp32 on CPU)."),
    workers: int | None = typer.Option(None, "--workers", min=0, help="Data-loader workers per process (preset)."),
    save_every: int | None = typer.Option(None, "--save-every", min=1, help="Checkpoint every N epochs (5)."),
    seed: int = typer.Option(default(SupervisedTrainConfig, "seed"), "--seed", help="Random seed (0 seeds too)."),
    device: str = device_option("auto, cpu or cuda."),
    gpus: int | None = typer.Option(None, "--gpus", min=0, help="Number of GPUs (one process each; torchrun or srun)."),
    nproc: int | None = typer.Option(None, "--nproc", min=1, help="Number of processes on CPU (gloo)."),
    launcher: str = typer.Option(default(SupervisedTrainConfig, "launcher"), "--launcher",
                                 help="auto, local, torchrun or srun."),
    resume: bool = typer.Option(default(SupervisedTrainConfig, "resume"), "--resume",
                                help="Accepted for compatibility: the same command continues an "
                                     "existing run from checkpoints/latest.pt anyway."),
    force: bool = force_option("Delete an existing run of this name and start over."),
    progress: bool = progress_option(),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar (the same as --no-progress)."),
    check_sample: int = typer.Option(default(SupervisedTrainConfig, "check_sample"), "--check-sample", min=0,
                                     help="Image paths checked to exist before training."),
) -> None:
    """Train the paper's supervised baseline (image tower + ReLU + linear head over 1000 ImageNet + 345 DomainNet
    classes) on a mixture TSV."""
    from clipgen.progress import out
    from clipgen.training.supervised import SupervisedTrainConfig, run_train_supervised

    try:
        ms = split_list(milestones, int)
    except ValueError:
        from clipgen.errors import option_error

        raise option_error("--milestones", f"{milestones!r} is not a comma-separated list of epochs") from None
    cfg = SupervisedTrainConfig(
        train=train, val=val, logs=logs, name=name, preset=preset, model=model, epochs=epochs, lr=lr,
        batch_size=batch_size, milestones=ms, gamma=gamma, momentum=momentum, wd=wd, precision=precision,
        workers=workers, save_every=save_every, seed=seed, device=device, gpus=gpus, nproc=nproc, launcher=launcher,
        resume=resume, force=force, progress=progress and not quiet, check_sample=check_sample,
    )
    res = run_train_supervised(cfg)
    if res.metrics and not res.skipped:
        last = res.metrics[-1]
        val_txt = f", val DomainNet accuracy {last['val_acc_domainnet']:.3f}" if "val_acc_domainnet" in last else ""
        out.print(f"run {res.run_dir}: train loss {last['train_loss']:.4f} at epoch {last['epoch']}{val_txt} "
                  f"({res.seconds:.0f} s)")
    eps = res.epochs
    span = f"epoch_{eps[0]}..epoch_{eps[-1]}.pt ({len(eps)} files)" if eps else "none"
    out.print(f"checkpoints: {res.checkpoint_dir} ({span})")


@app.command("grid", context_settings=_PASS_THROUGH)
def grid(
    ctx: typer.Context,
    index: Path = typer.Option(..., "--index", help="Folder with mixtures.json (written by 'clipgen data mixtures')."),
    logs: Path = typer.Option(default(TrainGridConfig, "logs"), "--logs", callback=writable,
                              help="Folder of the run directories (one per experiment "
                                   "family)."),
    preset: str = typer.Option(default(TrainGridConfig, "preset"), "--preset",
                               help="imagenet-captions, ccxm or synthetic."),
    setups: str = typer.Option(default_list(TrainGridConfig, "setups"), "--setups",
                               help="Comma-separated setups.",
                               show_default="natural-only, cg-low, cg-high, leave-out-domain"),
    test_domains: str = typer.Option(default_list(TrainGridConfig, "test_domains"), "--test-domains",
                                     help="Comma-separated test domains.",
                                     show_default="clipart, infograph, painting, quickdraw, sketch"),
    seeds: str | None = typer.Option(None, "--seeds", help="Comma-separated seeds (preset: 0,1,2; ccxm: 0)."),
    pseudo: bool = typer.Option(default(TrainGridConfig, "pseudo"), "--pseudo",
                                help="Train the upper-bound mixtures (held-out classes kept)."),
    aligned: bool = typer.Option(default(TrainGridConfig, "aligned"), "--aligned",
                                 help="Train the aligned-caption mixtures."),
    base: str | None = typer.Option(None, "--base", help="Base dataset of the mixtures: a base TSV name or part of it "
                                                         "(e.g. cc12m), or 'none' for DomainNet-only TSVs (default: "
                                                         "the mixtures that have a base)."),
    val: Path | None = typer.Option(None, "--val", help="One validation TSV for every run (each mixture's own)."),
    no_val: bool = typer.Option(default(TrainGridConfig, "no_val"), "--no-val", help="Train without validation data."),
    model: str | None = typer.Option(None, "--model", help="Model for every run (preset)."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Epochs for every run (preset)."),
    gpus: int | None = typer.Option(None, "--gpus", min=0, help="GPUs per run (SLURM: the paper's 4 (ccxm 8); --local: "
                                                                "auto)."),
    name_prefix: str = typer.Option(default(TrainGridConfig, "name_prefix"), "--name-prefix",
                                    help="Prefix of every run name."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the task list and write nothing."),
    submit: bool = typer.Option(False, "--submit", help="Write the array job and submit it with sbatch."),
    local: bool = typer.Option(False, "--local", help="Run the pending tasks one after another on this machine."),
    out_dir: Path | None = typer.Option(None, "--out", callback=writable,
                                        help="Where the job script goes (LOGS/grid)."),
    job_name: str = typer.Option(default(TrainGridConfig, "slurm.job_name"), "--job-name",
                                 help="SLURM job name (also the script's name)."),
    partition: str | None = typer.Option(None, "--partition", help="SLURM partition."),
    account: str | None = typer.Option(None, "--account", help="SLURM account."),
    qos: str | None = typer.Option(None, "--qos", help="SLURM QOS."),
    time_limit: str = typer.Option(default(TrainGridConfig, "slurm.time"), "--time", help="SLURM time limit per task."),
    cpus_per_task: int = typer.Option(default(TrainGridConfig, "slurm.cpus_per_task"), "--cpus-per-task",
                                      min=1, help="CPUs per SLURM task (per GPU)."),
    mem: str | None = typer.Option(None, "--mem", help="SLURM memory per node, e.g. 128G."),
    max_parallel: int | None = typer.Option(None, "--max-parallel", min=1,
                                            help="At most this many array tasks at once."),
    setup_cmd: list[str] = typer.Option(default(TrainGridConfig, "slurm.setup"), "--setup-cmd",
                                        help="Shell line run before each task (repeatable), "
                                             "e.g. 'source .venv/bin/activate'."),
) -> None:
    """Train the paper's grid: natural-only + {CG low, CG high, leave-out-domain} x test domains x seeds, as a
    SLURM array job (default: write it), --submit, --dry-run, or --local. Runs whose last checkpoint exists are
    skipped; other arguments are passed to every 'clipgen train clip'."""
    from clipgen.errors import option_error
    from clipgen.progress import out
    from clipgen.slurm import SlurmConfig
    from clipgen.training.grid import TrainGridConfig, describe, run_grid

    if sum((dry_run, submit, local)) > 1:
        raise option_error("--dry-run", "choose one of --dry-run, --submit and --local")
    try:
        seed_list = split_list(seeds, int)
    except ValueError:
        raise option_error("--seeds", f"{seeds!r} is not a comma-separated list of integers") from None
    mode = "dry-run" if dry_run else "submit" if submit else "local" if local else "write"
    cfg = TrainGridConfig(index=index, logs=logs, preset=preset, setups=split_list(setups) or [],
                          test_domains=split_list(test_domains) or [], seeds=seed_list, pseudo=pseudo,
                          aligned=aligned, base=base, val=val, no_val=no_val, model=model, epochs=epochs, gpus=gpus,
                          name_prefix=name_prefix, train_args=list(ctx.args), mode=mode, out=out_dir,
                          slurm=SlurmConfig(job_name=job_name, partition=partition, account=account, qos=qos,
                                            time=time_limit, cpus_per_task=cpus_per_task, mem=mem,
                                            max_parallel=max_parallel, setup=list(setup_cmd)))

    def announce(planned) -> None:
        if dry_run:
            out.print(describe(planned.tasks), markup=False, highlight=False)
        out.print(planned.summary)

    res = run_grid(cfg, on_plan=announce)
    if local:
        out.print(f"runs in {Path(logs).resolve()}")
    elif res.job_id is not None:
        out.print(f"submitted array job {res.job_id}: {res.script}")
    elif res.script is not None:
        out.print(f"job script: {res.script} (submit with 'sbatch {res.script}' or --submit)")
