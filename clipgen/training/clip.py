"""CLIP training with OpenCLIP's own trainer (``open_clip_train``): the run.

clipgen does not re-implement the training loop. It checks the inputs, builds ``open_clip_train``'s argument
list from a mixture TSV and a named preset (:mod:`clipgen.training.clip_settings`: every value overridable, extra
arguments passed through untouched), writes the run manifest, and runs :mod:`clipgen.training.open_clip_entry` in a
subprocess - one process, ``torchrun`` for several GPUs, or one ``srun`` task per GPU - while showing a progress bar.

Run directory ``<logs>/<name>/``::

    checkpoints/epoch_0.pt ... epoch_N.pt   open_clip's checkpoints ({"epoch", "name", "state_dict",
                                            "optimizer"}); epoch 0 = the untrained model
    checkpoints/results.jsonl               open_clip's validation metrics per epoch (with --val)
    params.txt, out.log                     open_clip's resolved arguments and log
    clipgen-run.json                        the clipgen manifest (clipgen.runs.RunManifest, kind "clip")
    config.json                             the resolved ClipTrainConfig of the command
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from clipgen.errors import ClipgenError, ConfigFieldError
from clipgen.training.clip_settings import (
    PRESETS,
    REAL_DATA_ROWS,
    ClipHyper,
    ClipPreset,
    ClipTrainConfig,
    build_argv,
    check_run_name,
    choose_preset,
    data_preset,
    default_run_name,
    get_preset,
    parse_open_clip_args,
    resolve_hyper,
)
from clipgen.training.curves import CURVES_DIR, TRAINING_LOSS_FIGURE, plot_training_curves, training_loss_figure

#: Names of :mod:`clipgen.training.clip_settings` and :mod:`clipgen.training.curves` kept importable from here.
__all__ = [
    "CURVES_DIR", "PRESETS", "REAL_DATA_ROWS", "TRAINING_LOSS_FIGURE", "ClipHyper", "ClipPreset", "ClipRunResult",
    "ClipTrainConfig", "PreparedClipRun", "TrainingFailed", "build_argv", "check_run_name", "choose_preset",
    "data_preset", "default_run_name", "describe_checkpoints", "force_note", "get_preset", "parse_open_clip_args",
    "plot_training_curves", "prepare_clip_run", "resolve_hyper", "run_train_clip", "training_loss_figure",
]

ENTRY_MODULE = "clipgen.training.open_clip_entry"


class TrainingFailed(ClipgenError):
    """The training process itself failed (its log tail has been shown): exit status 1."""

    exit_code = 1


@dataclass
class ClipRunResult:
    run_dir: Path
    checkpoint_dir: Path
    epochs: list[int]
    train_loss: dict[int, float]
    val_loss: dict[int, float]
    skipped: bool = False  # the run was already complete
    seconds: float = 0.0


@dataclass
class PreparedClipRun:
    """Everything decided before launching: validated inputs, hyper-parameters, argv, command."""

    cfg: ClipTrainConfig
    hyper: ClipHyper
    run_dir: Path
    argv: list[str]
    command: list[str]
    plan: Any
    data: dict[str, Any]
    mixture: dict[str, Any] | None
    start_epoch: int
    complete: bool
    discard: list[Path] = field(default_factory=list)  # unreadable last checkpoints, set aside before resuming
    resuming: bool = False  # the run directory holds an earlier start of this run, which is continued
    preset_note: str | None = None  # which preset was chosen for the data, or a warning that it does not fit
    extended_from: int | None = None  # a complete run of this many epochs, extended to hyper.epochs


_RESUME_KEYS = ("model", "epochs", "lr", "warmup", "effective_batch", "wd")


def prepare_clip_run(cfg: ClipTrainConfig) -> PreparedClipRun:
    """All checks and decisions of a run, without side effects (nothing written, nothing launched)."""
    from clipgen.data.mixture_info import read_info
    from clipgen.models.registry import model_config
    from clipgen.runs import read_manifest
    from clipgen.training.checks import (
        UnreadableCheckpoint,
        check_run_dir,
        check_tsv,
        load_checkpoint,
        refuse_other_settings,
        run_state,
    )
    from clipgen.training.launch import module_command, resolve_launch

    if cfg.log not in ("bar", "live", "quiet"):
        raise ConfigFieldError("log", f"unknown mode {cfg.log!r} (bar, live or quiet)")
    train = None
    if cfg.preset is None:  # the preset depends on the data: read it first
        train = check_tsv(cfg.train, "train", sample=cfg.check_sample)
        chosen, preset_note = choose_preset(None, cfg.train, train.rows, read_info(cfg.train))
        cfg = replace(cfg, preset=chosen)
    get_preset(cfg.preset)
    plan = resolve_launch(cfg.device, cfg.gpus, cfg.nproc, cfg.launcher)
    hp = resolve_hyper(cfg, plan.world_size, plan.device, plan.launcher)
    model_config(hp.model)  # unknown model: one line, before anything else
    name = check_run_name(cfg.name or default_run_name(cfg.train, hp.model, cfg.seed))
    logs = Path(cfg.logs)
    run_dir = logs / name

    if train is None:
        train = check_tsv(cfg.train, "train", sample=cfg.check_sample)
        _, preset_note = choose_preset(cfg.preset, cfg.train, train.rows, read_info(cfg.train))
    if train.rows < hp.effective_batch:
        raise ConfigFieldError("train", f"{cfg.train} has {train.rows} rows, fewer than one optimizer step "
                                        f"(effective batch {hp.effective_batch}); lower --batch-size")
    data: dict[str, Any] = {"train": train.manifest_entry()}
    if cfg.val is not None:
        data["val"] = check_tsv(cfg.val, "val", sample=cfg.check_sample).manifest_entry()
    info = read_info(cfg.train)
    mixture = asdict(info) if info is not None else None

    state = run_state(run_dir)
    if plan.is_rank0:
        check_run_dir(state)
    start_epoch, complete = 0, False
    discard: list[Path] = []
    resuming = state.started and not cfg.force  # the same command continues a run (--resume is implied)
    extended_from: int | None = None
    if resuming:
        if state.has_manifest:
            old = read_manifest(run_dir, field="name")
            if old.kind != "clip":
                raise ConfigFieldError("name", f"{run_dir} is a {old.kind} run, not a CLIP run; pass --force to "
                                               f"replace it or choose another --name")
            old_hp = dict(old.hyperparameters, model=old.model)
            old_epochs = old_hp.get("epochs")
            # more epochs on a complete run extend it (every other setting as it was); fewer stay refused
            if isinstance(old_epochs, int) and hp.epochs > old_epochs and old_epochs in state.checkpoints:
                extended_from = old_epochs
            diff = [f"{k} {old_hp.get(k)!r} -> {getattr(hp, k)!r}" for k in _RESUME_KEYS
                    if k in old_hp and old_hp.get(k) != getattr(hp, k)
                    and not (k == "epochs" and extended_from is not None)]
            old_sha = (old.data.get("train") or {}).get("sha256")
            if old_sha and old_sha != train.sha256:
                diff.append(f"train data sha256 {old_sha[:12]}... -> {train.sha256[:12]}...")
            if old.seed != cfg.seed:
                diff.append(f"seed {old.seed} -> {cfg.seed}")
            refuse_other_settings(run_dir, diff)
        resumable = {e: p for e, p in state.checkpoints.items() if e >= 1}
        for e in sorted(resumable, reverse=True):
            try:
                load_checkpoint(resumable[e], required=("epoch", "state_dict", "optimizer"))
            except UnreadableCheckpoint:  # cut off by a kill while it was saved: resume from the one before
                discard.append(resumable[e])
                continue
            start_epoch = e
            complete = e >= hp.epochs
            break

    # "--resume latest" whenever the run was started: open_clip_train refuses an existing out.log otherwise, and
    # the entry module's checkpoint pick starts afresh when only epoch_0.pt exists
    argv = build_argv(hp, train=cfg.train, val=cfg.val, logs=logs, name=name, seed=cfg.seed,
                      resume=resuming)
    ns = parse_open_clip_args(argv)
    owned = {"--name": (ns.name, name), "--logs": (str(ns.logs), str(logs)), "--seed": (ns.seed, cfg.seed),
             "--train-data": (ns.train_data, str(cfg.train)), "--val-data": (ns.val_data, cfg.val and str(cfg.val))}
    clash = [k for k, (got, want) in owned.items() if got != want]
    if clash:
        # an open_clip_train argument among the pass-through ones (not a clipgen option): the message names it
        raise ClipgenError(f"{clash[0]}: is set by clipgen (the run directory and manifest depend on it); use "
                           "clipgen's own option instead of passing it through to open_clip_train")
    hp = replace(hp, beta1=ns.beta1, beta2=ns.beta2, eps=ns.eps, lr_scheduler=ns.lr_scheduler, lr=ns.lr,
                 epochs=ns.epochs, warmup=ns.warmup, wd=ns.wd, precision=ns.precision, model=ns.model)
    model_config(hp.model)  # extra arguments may name another model
    command = module_command(ENTRY_MODULE, argv, plan)
    return PreparedClipRun(cfg, hp, run_dir, argv, command, plan, data, mixture, start_epoch, complete, discard,
                           resuming, preset_note, extended_from)


def _manifest(prep: PreparedClipRun, *, status: str, extra: dict[str, Any] | None = None):
    from clipgen.models.registry import model_config
    from clipgen.runs import RunManifest

    hyper = asdict(prep.hyper)
    hyper["open_clip_argv"] = prep.argv
    return RunManifest(kind="clip", name=prep.run_dir.name, model=prep.hyper.model,
                       model_config=model_config(prep.hyper.model), preset=prep.cfg.preset, hyperparameters=hyper,
                       data=prep.data, seed=prep.cfg.seed, mixture=prep.mixture,
                       extra={**(extra or {}), "status": status,
                              "run_name": str(prep.run_dir.relative_to(prep.cfg.logs))})


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("open_clip_torch", "torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:  # pragma: no cover
            out[pkg] = "unknown"
    return out


def run_train_clip(cfg: ClipTrainConfig) -> ClipRunResult:
    """Check, write the manifest, run open_clip_train, and summarise. The library function behind the CLI."""
    from clipgen.artifacts import command_line, utc_now, write_config
    from clipgen.progress import console, make_progress
    from clipgen.runs import list_checkpoints, read_manifest, write_manifest
    from clipgen.training.launch import Interrupted, child_env, stream_process
    from clipgen.training.trainer_log import TrainLogMonitor

    t0 = time.perf_counter()
    prep = prepare_clip_run(cfg)
    run_dir, hp = prep.run_dir, prep.hyper
    if prep.preset_note and prep.plan.is_rank0 and cfg.log != "quiet" and not prep.complete:
        console.print(prep.preset_note, markup=False, highlight=False)
    ck_dir = run_dir / "checkpoints"
    if prep.plan.is_rank0:
        for p in ck_dir.glob(".epoch_*.pt.*.tmp"):  # a save cut off by a kill (never renamed into place)
            p.unlink(missing_ok=True)
        for p in prep.discard:
            aside = p.with_name(p.name + ".unreadable")
            p.replace(aside)
            console.print(f"note: {p} is unreadable (cut off while it was saved?); set aside as {aside.name}, "
                          f"resuming from epoch {prep.start_epoch}", markup=False, highlight=False)
    if prep.complete:
        if prep.plan.is_rank0:
            _repair_complete_manifest(run_dir, hp.epochs)
            if cfg.log != "quiet":
                console.print(f"run {run_dir} is complete (epoch {hp.epochs} exists); nothing to do")
        return ClipRunResult(run_dir, ck_dir, sorted(list_checkpoints(run_dir)), {}, {}, skipped=True)

    if prep.plan.is_rank0:
        if prep.extended_from is not None and cfg.log != "quiet":
            console.print(f"note: extending {run_dir} from {prep.extended_from} to {hp.epochs} epochs (the cosine "
                          f"schedule is recomputed over {hp.epochs} epochs; see docs/train.md)",
                          markup=False, highlight=False)
        if cfg.force and run_dir.exists():
            note = force_note(run_dir)
            if note and cfg.log != "quiet":
                console.print(note, markup=False, highlight=False)
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        extra: dict[str, Any] = {"versions": _versions(), "started": utc_now()}
        if prep.resuming and (run_dir / "clipgen-run.json").is_file():
            old = read_manifest(run_dir, field="name")
            entry: dict[str, Any] = {"resumed": utc_now(), "from_epoch": prep.start_epoch, "command": command_line()}
            if prep.extended_from is not None:
                entry.update(extended_from_epochs=prep.extended_from, extended_to_epochs=hp.epochs)
            history = [*old.extra.get("history", []), entry]
            m = _manifest(prep, status="running", extra={**old.extra, **extra, "history": history})
            m.created, m.command = old.created, old.command
        else:
            m = _manifest(prep, status="running", extra=extra)
        write_manifest(run_dir, m)
        write_config(run_dir, "train clip", prep.cfg)

    monitor = TrainLogMonitor(hp.epochs, start_epoch=prep.start_epoch)
    show_bar = cfg.log == "bar" and prep.plan.is_rank0
    with make_progress(disable=not show_bar) as bar:
        task = bar.add_task(f"training {run_dir.name}", total=hp.epochs, completed=prep.start_epoch)

        def on_line(line: str) -> None:
            important = monitor.feed(line)
            if cfg.log == "live":
                console.print(line, markup=False, highlight=False)
            elif cfg.log == "bar" and important:
                bar.console.print(line, markup=False, highlight=False)
            loss = f" loss {monitor.last_loss:.3f}" if monitor.last_loss is not None else ""
            ep = (prep.start_epoch if monitor.epoch is None else monitor.epoch) + 1
            bar.update(task, completed=monitor.progress, description=f"{run_dir.name} epoch {ep}/{hp.epochs}{loss}")

        threads = {"OMP_NUM_THREADS": str(cfg.threads)} if cfg.threads else None
        try:
            rc = stream_process(prep.command, on_line, env=child_env(threads))
        except Interrupted as e:  # the trainer got the signal too and has stopped
            last = max(list_checkpoints(run_dir), default=0)
            if prep.plan.is_rank0:
                _update_manifest(run_dir, status="interrupted", interrupted=utc_now(), signal=e.signame,
                                 epochs_saved=sorted(list_checkpoints(run_dir)))
            raise Interrupted(e.signum, f"training of {run_dir} interrupted by {e.signame} (the trainer was stopped; "
                                        f"checkpoints up to epoch {last}); rerun the same command to continue it"
                              ) from None
    if rc != 0:
        if prep.plan.is_rank0:
            _update_manifest(run_dir, status="failed", failed=utc_now(), exit_code=rc,
                             epochs_saved=sorted(list_checkpoints(run_dir)))
        if cfg.log != "live":
            console.print("\n".join(list(monitor.tail)[-25:]), markup=False, highlight=False)
        raise TrainingFailed(f"training process failed with exit code {rc} (log tail above; full log: "
                             f"{run_dir / 'out.log'})")

    epochs = sorted(list_checkpoints(run_dir))
    seconds = time.perf_counter() - t0
    result = ClipRunResult(run_dir, ck_dir, epochs, dict(monitor.train_loss), dict(monitor.val_loss), False, seconds)
    if prep.plan.is_rank0:
        if hp.epochs not in epochs:
            raise TrainingFailed(f"training ended without {ck_dir / f'epoch_{hp.epochs}.pt'} (see {run_dir}/out.log)")
        _finalise_manifest(run_dir, epochs, result.train_loss, result.val_loss, seconds, add_seconds=prep.resuming)
    return result


def force_note(run_dir: Path) -> str | None:
    """The line ``--force`` prints before deleting a run directory that holds evaluation results (they belong to
    the weights being deleted): the evaluation folders it deletes with it."""
    ev = Path(run_dir) / "eval"
    found = sorted(str(p.parent.relative_to(run_dir)) for p in ev.rglob("results.json")) if ev.is_dir() else []
    if not found:
        return None
    return f"note: --force deletes {run_dir} with its evaluation results: {', '.join(found)}"


def _update_manifest(run_dir: Path, **fields: Any) -> None:
    """Set ``fields`` in the manifest's ``extra`` (when the run has a manifest)."""
    from clipgen.runs import manifest_path, read_manifest, write_manifest

    if manifest_path(run_dir).is_file():
        m = read_manifest(run_dir, field="name")
        m.extra.update(fields)
        write_manifest(run_dir, m)


def _finalise_manifest(run_dir: Path, epochs: list[int], train_loss: dict[int, float], val_loss: dict[int, float],
                       seconds: float, *, add_seconds: bool) -> None:
    """Mark the run complete: epochs saved, the losses of every epoch (earlier sessions' kept), time spent."""
    from clipgen.artifacts import utc_now
    from clipgen.runs import read_manifest, write_manifest

    m = read_manifest(run_dir, field="name")
    prev_train = {int(k): v for k, v in m.extra.get("train_loss", {}).items()}
    prev_val = {int(k): v for k, v in m.extra.get("val_loss", {}).items()}
    m.extra.update(status="complete", finished=utc_now(), epochs_saved=epochs,
                   train_loss={str(k): v for k, v in sorted({**prev_train, **train_loss}.items())},
                   val_loss={str(k): v for k, v in sorted({**prev_val, **val_loss}.items())},
                   seconds=round(seconds + float(m.extra.get("seconds", 0.0) if add_seconds else 0.0), 1))
    write_manifest(run_dir, m)
    plot_training_curves(run_dir, m.extra["train_loss"], m.extra["val_loss"])


def _repair_complete_manifest(run_dir: Path, epochs: int) -> None:
    """A run whose last checkpoint exists but whose manifest is not ``complete`` (clipgen was stopped while the
    trainer finished, or before it wrote the result): mark it complete, with the losses read back from ``out.log``."""
    from clipgen.progress import console
    from clipgen.runs import list_checkpoints, manifest_path, read_manifest
    from clipgen.training.trainer_log import TrainLogMonitor

    if not manifest_path(run_dir).is_file():
        return
    status = read_manifest(run_dir, field="name").extra.get("status")
    if status == "complete":
        return
    monitor = TrainLogMonitor(epochs)
    log = run_dir / "out.log"
    if log.is_file():
        with open(log, encoding="utf-8", errors="replace") as f:
            for line in f:
                monitor.feed(line.rstrip("\n"))
    _finalise_manifest(run_dir, sorted(list_checkpoints(run_dir)), monitor.train_loss, monitor.val_loss, 0.0,
                       add_seconds=True)
    console.print(f"note: every epoch of {run_dir} exists but its manifest said {status!r}; marked complete (losses "
                  f"read from out.log)", markup=False, highlight=False)


def describe_checkpoints(result: ClipRunResult) -> str:
    """The final line of a run: where the checkpoints are."""
    eps = result.epochs
    span = f"epoch_{eps[0]}..epoch_{eps[-1]}.pt" if len(eps) > 1 else (f"epoch_{eps[0]}.pt" if eps else "none")
    return f"checkpoints: {result.checkpoint_dir} ({span})"
