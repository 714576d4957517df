"""What a CLIP run is before it starts: the presets (and the choice of one from the data), ``clipgen train clip``'s
configuration, the resolved hyper-parameters, and ``open_clip_train``'s argument list (parsed by its own parser).

The presets, the data-based choice and the run-name rules are shared with the supervised trainer.
"""

from __future__ import annotations

import contextlib
import io
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipgen.errors import ClipgenError, ConfigFieldError


@dataclass(frozen=True)
class ClipPreset:
    """A named set of open_clip_train hyper-parameters.

    ``batch_size`` is per process; ``effective_batch`` (batch x processes x gradient accumulation) is kept
    constant by deriving ``--accum-freq`` from the number of processes, unless ``--accum-freq`` is given.
    ``precision`` applies on GPU; CPU runs use fp32 unless ``--precision`` says otherwise (open_clip_train's
    ``amp`` default is about ten times slower on CPU). Adam betas and epsilon are left to open_clip_train's
    model-dependent defaults (ResNets: 0.9, 0.999, 1e-8) unless given.
    """

    name: str
    description: str
    model: str
    epochs: int
    lr: float
    warmup: int
    batch_size: int
    effective_batch: int | None = None
    wd: float = 0.2
    precision: str = "amp"
    local_loss: bool = True
    gather_with_grad: bool = True
    grad_checkpointing: bool = True
    workers: int = 6
    log_every_n_steps: int = 50
    reference_gpus: int = 1  # the number of GPUs the published scripts used (documentation)
    seeds: tuple[int, ...] = (0,)  # the seeds of the paper's grid


PRESETS: dict[str, ClipPreset] = {
    p.name: p
    for p in (
        ClipPreset("imagenet-captions", "the paper's main runs: RN50 from scratch on ImageNet-Captions + DomainNet",
                   model="RN50", epochs=32, lr=1e-3, warmup=500, batch_size=128, effective_batch=1024,
                   reference_gpus=4, seeds=(0, 1, 2)),
        ClipPreset("ccxm", "the base-dataset ablation: RN50 on CC3M/CC12M + DomainNet (lr: open_clip's default)",
                   model="RN50", epochs=32, lr=5e-4, warmup=2000, batch_size=128, effective_batch=2048,
                   log_every_n_steps=100, reference_gpus=8, seeds=(0,)),
        ClipPreset("synthetic", "small CPU runs on the synthetic DomainNet (tests, demo)", model="RN-tiny",
                   epochs=10, lr=1e-3, warmup=10, batch_size=32, effective_batch=None, precision="fp32",
                   local_loss=False, gather_with_grad=False, grad_checkpointing=False, workers=0,
                   log_every_n_steps=1, reference_gpus=0, seeds=(0, 1, 2)),
    )
}


def get_preset(name: str, presets: dict[str, Any] | None = None, field: str = "preset"):
    """The preset ``name`` of ``presets`` (default: the CLIP presets); an unknown one is an error of ``field``."""
    presets = PRESETS if presets is None else presets
    if name not in presets:
        import difflib

        close = difflib.get_close_matches(name, list(presets), n=2)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ConfigFieldError(field, f"unknown preset {name!r} (one of {', '.join(presets)}){hint}")
    return presets[name]


#: A training TSV with at least this many rows is taken for real data when no mixture metadata says otherwise (the
#: paper's ImageNet-Captions mixtures hold about 450,000 rows, the synthetic DomainNet's mixtures a few thousand).
REAL_DATA_ROWS = 50_000


def data_preset(rows: int, info: Any, presets: dict[str, Any]) -> tuple[str, str]:
    """The preset that fits a training TSV, and why: fewer than ``REAL_DATA_ROWS`` rows is ``synthetic``; a larger
    one is ``ccxm`` when the base dataset recorded by ``clipgen data mixtures`` / ``merge-base`` in
    ``mixtures.json`` next to the TSV is CC3M/CC12M, else ``imagenet-captions``."""
    if rows < REAL_DATA_ROWS:
        return "synthetic", f"{rows:,} rows, fewer than {REAL_DATA_ROWS:,}"
    base = getattr(info, "base", None) if info is not None else None
    stem = Path(str(base)).name.lower() if base else ""
    if any(x in stem for x in ("cc3m", "cc12m", "ccxm")) and "ccxm" in presets:
        return "ccxm", f"{rows:,} rows on the base dataset {Path(str(base)).name}"
    return "imagenet-captions", f"{rows:,} rows" + (f" on the base dataset {Path(str(base)).name}" if base else "")


def choose_preset(given: str | None, train: str | Path, rows: int, info: Any,
                  presets: dict[str, Any] | None = None) -> tuple[str, str | None]:
    """``(preset, message)``: the given preset (a warning when it does not fit the data) or, when none is given,
    the one that fits the data (a note saying which and why)."""
    presets = PRESETS if presets is None else presets
    fits, why = data_preset(rows, info, presets)
    if given is None:
        return fits, f"note: preset {fits} chosen for {train} ({why}); pass --preset to choose another"
    get_preset(given, presets)
    if given != fits:
        return given, (f"warning: preset {given} does not match {train} ({why}: preset {fits} fits it); "
                       f"its epochs, warm-up and batch size are meant for other data")
    return given, None


@dataclass
class ClipTrainConfig:
    """Options of ``clipgen train clip``; ``None`` means "the preset's value"."""

    train: Path
    val: Path | None = None
    logs: Path = Path("logs")
    name: str | None = None
    preset: str | None = None  # None: chosen from the training data (choose_preset)
    model: str | None = None
    epochs: int | None = None
    lr: float | None = None
    warmup: int | None = None
    batch_size: int | None = None
    effective_batch: int | None = None
    accum_freq: int | None = None
    wd: float | None = None
    precision: str | None = None
    workers: int | None = None
    seed: int = 0
    device: str = "auto"
    gpus: int | None = None
    nproc: int | None = None
    launcher: str = "auto"
    resume: bool = False  # accepted for compatibility: an existing run is always continued (unless force)
    force: bool = False
    extra_args: list[str] = field(default_factory=list)
    log: str = "bar"  # "bar": progress bar + warnings; "live": every trainer line; "quiet": nothing but the result
    check_sample: int = 256  # image paths checked to exist before training
    threads: int | None = None  # CPU threads of each training process (OMP_NUM_THREADS); None: torch's default


@dataclass
class ClipHyper:
    """The resolved hyper-parameters (what the manifest records)."""

    model: str
    epochs: int
    lr: float
    warmup: int
    batch_size: int
    accum_freq: int
    world_size: int
    effective_batch: int
    wd: float
    precision: str
    workers: int
    local_loss: bool
    gather_with_grad: bool
    grad_checkpointing: bool
    log_every_n_steps: int
    device: str
    launcher: str
    beta1: float | None = None
    beta2: float | None = None
    eps: float | None = None
    lr_scheduler: str = "cosine"
    extra_args: list[str] = field(default_factory=list)


def default_run_name(train: str | Path, model: str, seed: int) -> str:
    stem = Path(train).name
    for suf in (".tsv", ".csv"):
        stem = stem.removesuffix(suf)
    return f"{stem}-{model}-s{seed}"


_NAME_RE = re.compile(r"^[A-Za-z0-9._+=@-][A-Za-z0-9._+=@/-]*$")


def check_run_name(name: str) -> str:
    if not _NAME_RE.match(name) or ".." in name.split("/") or name.endswith("/"):
        raise ConfigFieldError("name", f"{name!r} is not a usable run name (letters, digits, . _ - + = @, and / for "
                                       f"sub-folders)")
    return name


def resolve_hyper(cfg: ClipTrainConfig, world_size: int, device: str, launcher: str) -> ClipHyper:
    """Preset values overridden by the config; derives gradient accumulation from the effective batch."""
    p = get_preset(cfg.preset or "synthetic")  # no preset and no data read (prepare_clip_run chooses one first)
    model = cfg.model or p.model
    batch = cfg.batch_size or p.batch_size
    for name, v in (("batch_size", batch), ("epochs", cfg.epochs), ("accum_freq", cfg.accum_freq),
                    ("effective_batch", cfg.effective_batch)):
        if v is not None and v < 1:
            raise ConfigFieldError(name, "must be >= 1")
    if cfg.accum_freq is not None:
        accum = cfg.accum_freq
        if cfg.effective_batch is not None and cfg.effective_batch != batch * world_size * accum:
            raise ConfigFieldError("effective_batch", f"{cfg.effective_batch} != batch {batch} x {world_size} "
                                                      f"process(es) x accum {accum}; give only one of them")
    else:
        eff = cfg.effective_batch or p.effective_batch
        if eff is None:
            accum = 1
        else:
            per_step = batch * world_size
            if eff % per_step:
                raise ConfigFieldError("effective_batch", f"{eff} is not a multiple of batch {batch} x {world_size} "
                                                          f"process(es) = {per_step}; adjust --batch-size or pass "
                                                          f"--accum-freq")
            accum = eff // per_step
    if cfg.precision:
        precision = cfg.precision
    else:
        precision = p.precision if device == "cuda" else "fp32"
    workers = p.workers if cfg.workers is None else cfg.workers
    return ClipHyper(
        model=model, epochs=cfg.epochs or p.epochs, lr=p.lr if cfg.lr is None else cfg.lr,
        warmup=p.warmup if cfg.warmup is None else cfg.warmup, batch_size=batch, accum_freq=accum,
        world_size=world_size, effective_batch=batch * world_size * accum, wd=p.wd if cfg.wd is None else cfg.wd,
        precision=precision, workers=workers, local_loss=p.local_loss, gather_with_grad=p.gather_with_grad,
        grad_checkpointing=p.grad_checkpointing, log_every_n_steps=p.log_every_n_steps, device=device,
        launcher=launcher, extra_args=list(cfg.extra_args),
    )


def build_argv(hp: ClipHyper, *, train: str | Path, val: str | Path | None, logs: str | Path, name: str,
               seed: int, resume: bool = False) -> list[str]:
    """open_clip_train's argument list (extra arguments last, so they win over clipgen's values)."""
    argv = [
        "--train-data", str(train),
        *(["--val-data", str(val)] if val else []),
        "--dataset-type", "csv", "--csv-separator", "\t", "--csv-img-key", "filepath", "--csv-caption-key", "title",
        "--logs", str(logs), "--name", name,
        "--model", hp.model,
        "--epochs", str(hp.epochs),
        "--lr", repr(float(hp.lr)),
        "--warmup", str(hp.warmup),
        "--batch-size", str(hp.batch_size),
        "--accum-freq", str(hp.accum_freq),
        "--wd", repr(float(hp.wd)),
        "--precision", hp.precision,
        "--workers", str(hp.workers),
        "--seed", str(seed),
        "--device", hp.device,
        "--save-frequency", "1",
        "--log-every-n-steps", str(hp.log_every_n_steps),
        "--report-to", "",
    ]
    for flag, on in (("--local-loss", hp.local_loss), ("--gather-with-grad", hp.gather_with_grad),
                     ("--grad-checkpointing", hp.grad_checkpointing)):
        if on:
            argv.append(flag)
    if resume:
        argv += ["--resume", "latest"]
    return argv + list(hp.extra_args)


#: ``sys.stderr`` is process-wide: two threads redirecting it at once (the demo prepares its runs side by side)
#: can restore each other's stream, leaving ``sys.stderr`` pointing at a dead buffer. One redirection at a time.
_STDERR_LOCK = threading.Lock()


def parse_open_clip_args(argv: list[str]):
    """Parse with open_clip_train's own parser; an unknown or malformed extra argument is a one-line error.

    Thread-safe: argparse prints its usage to ``sys.stderr``, which is captured under a lock."""
    from open_clip_train.params import parse_args

    err = io.StringIO()
    try:
        with _STDERR_LOCK, contextlib.redirect_stderr(err):
            return parse_args(argv)
    except SystemExit:
        lines = [x for x in err.getvalue().strip().splitlines() if x.strip()]
        msg = lines[-1] if lines else "invalid arguments"
        msg = re.sub(r"^.*?error: ", "", msg)
        raise ClipgenError(f"open_clip_train arguments: {msg}") from None
