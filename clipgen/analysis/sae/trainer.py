"""Training an SAE run: :func:`run_train_sae` (the entry point) builds an :class:`SAETrainer` and runs it.

The trainer owns one run folder: it starts it (or continues it from its newest checkpoint), feeds batches to the
fused step, and between steps resamples dead latents, logs, validates and checkpoints; at the end it evaluates the
final model and writes ``sae.pt``, ``metrics.json`` and the curves.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipgen.analysis.sae.config import (
    DEFAULT_BATCH_SIZE,
    FINAL_EVAL_ROWS,
    FROZEN_ON_RESUME,
    RNG_FINAL,
    RNG_INIT,
    RNG_RESAMPLE,
    SAETrainConfig,
    check_config,
)
from clipgen.analysis.sae.curves import CURVES_FILE, plot_curves
from clipgen.analysis.sae.data import TrainingData, open_training_data
from clipgen.analysis.sae.io import (
    CHECKPOINT_DIR,
    CHECKPOINT_FORMAT,
    LOG_FILE,
    METRICS_FILE,
    SAE_FILE,
    SAE_VERSION,
    last_log_record,
    list_checkpoints,
    save_sae,
    torch_load,
    truncate_log,
)
from clipgen.analysis.sae.model import SparseAutoencoder, create_sae
from clipgen.analysis.sae.resample import evaluate, resample_dead_latents
from clipgen.analysis.sae.steps import FusedStep, GraphStep, make_optimizer
from clipgen.artifacts import save_torch_atomic, to_jsonable, write_config, write_json_atomic
from clipgen.errors import ConfigFieldError, file_error


@dataclass
class TrainResult:
    out: Path
    steps: int
    samples: int
    epochs: int
    final: dict[str, Any]
    val: dict[str, Any] | None
    resample_checks: int
    revived: int
    seconds: float
    samples_per_s: float
    already_complete: bool = False


def interval_steps(samples: int | None, batch_size: int) -> int:
    """Steps between events every ``samples`` training rows (0: never)."""
    if not samples or samples <= 0:
        return 0
    return max(1, round(samples / batch_size))


def resolve_precision(spec: str, device: torch.device, paper: bool = False) -> torch.dtype:
    s = (spec or "auto").lower()
    if s == "auto":
        s = "bf16" if device.type == "cuda" and not paper else "fp32"
    if s == "fp32":
        return torch.float32
    if s == "bf16":
        return torch.bfloat16
    raise ConfigFieldError("precision", f"{spec!r} is not supported for SAE training (fp32, bf16 or auto; fp16 "
                                        "underflows the gradients)")


def run_files(out: Path) -> list[Path]:
    """The files and folders of a run in ``out`` that exist."""
    return [p for p in (out / "config.json", out / LOG_FILE, out / METRICS_FILE, out / SAE_FILE,
                        out / CURVES_FILE, out / CHECKPOINT_DIR) if p.exists()]


def check_resume(ck: dict, path: Path, cfg: SAETrainConfig, info: dict[str, Any]) -> None:
    """Refuse to continue from checkpoint ``ck`` with other settings (:data:`FROZEN_ON_RESUME`) or other data."""
    if ck.get("format") != CHECKPOINT_FORMAT:
        raise file_error(path, "not a clipgen SAE checkpoint")
    if int(ck.get("version", 0)) > SAE_VERSION:
        raise file_error(path, f"checkpoint version {ck.get('version')} is newer than this clipgen reads")
    old = ck.get("train_config", {})
    new = to_jsonable(cfg)
    defaults = {f.name: f.default for f in dataclasses.fields(SAETrainConfig)}
    for key in FROZEN_ON_RESUME:
        if old.get(key, defaults.get(key)) != new.get(key):  # a setting newer than the checkpoint: its default
            raise ConfigFieldError(key, f"the run in {path.parent.parent} was trained with {old.get(key)!r}, now "
                                        f"{new.get(key)!r}; use the same value to continue it, or pass --force to "
                                        "start over")
    if ck.get("data") != to_jsonable(info):
        raise ConfigFieldError("out", f"the training data differ from those of {path} (other stores, layer or rows); "
                                      "use the same data to continue it, or pass --force to start over")


class SAETrainer:
    """One run in ``cfg.out``: :meth:`run` sets it up (fresh, or from its newest checkpoint), trains and finishes it.

    Between steps it resamples dead latents (:meth:`resample`), logs an interval (:meth:`log_interval`), validates
    and checkpoints (:meth:`save_checkpoint`); every event is a line of ``OUT/log.jsonl`` (:meth:`record`).
    """

    def __init__(self, cfg: SAETrainConfig, data: TrainingData | None = None, *,
                 model: SparseAutoencoder | None = None, progress: bool = True,
                 callback: Callable[[int, dict[str, Any]], None] | None = None):
        self.cfg, self.data, self.model = cfg, data, model
        self.progress, self.callback = progress, callback
        self.out = Path(cfg.out)
        self.step = self.resample_checks = self.revived = self.last_log = self.revived_since_log = 0
        self.last_train: dict[str, Any] = {}
        self.last_val: dict[str, Any] | None = None

    # -- setup ----------------------------------------------------------------------------------------------------

    def _checkpoints(self) -> dict[int, Path]:
        """The run's checkpoints to continue from; a run without any (or ``cfg.force``) starts over in a clean
        folder."""
        out = self.out
        if out.exists() and not out.is_dir():
            raise ConfigFieldError("out", f"{out} exists and is not a folder")
        existing = run_files(out) if out.exists() else []
        # the same command continues the run in OUT (``resume`` is implied and kept for compatibility); a run stopped
        # before its first checkpoint has nothing to continue from and starts over, as does ``force``
        ckpts = {} if self.cfg.force else list_checkpoints(out)
        if existing and not ckpts:
            for p in existing:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        return ckpts

    def _resolve_device(self) -> None:
        from clipgen.devices import resolve_device

        cfg = self.cfg
        self.device = device = resolve_device(cfg.device)
        self.cdt = resolve_precision(cfg.precision, device, cfg.paper)
        self.step_mode = cfg.step_mode if cfg.step_mode != "auto" else ("graph" if device.type == "cuda" else "eager")
        if self.step_mode == "graph" and device.type != "cuda":
            raise ConfigFieldError("step_mode", "'graph' needs a CUDA device")

    def _open_data(self, stack: ExitStack) -> None:
        from clipgen.progress import console

        if self.data is None:
            self.data = open_training_data(self.cfg, stack, device=self.device)
        src = self.src = self.data.source
        b = self.cfg.batch_size
        if b is None:  # the paper's batch, or one batch of every row of a smaller training set
            b = min(DEFAULT_BATCH_SIZE, src.n_rows)
            if b < DEFAULT_BATCH_SIZE:
                console.print(f"note: batch size {b}: all {src.n_rows:,} training rows (the default "
                              f"{DEFAULT_BATCH_SIZE} is more than there are); --batch-size sets another",
                              markup=False, highlight=False)
            self.cfg = dataclasses.replace(self.cfg, batch_size=b)
        self.b = b
        self.spe = src.n_rows // b
        if self.spe == 0:
            raise ConfigFieldError("batch_size", f"{b} is larger than the {src.n_rows} training rows; pass "
                                                 f"--batch-size {src.n_rows} or less (or leave it out: the default "
                                                 f"fits it to the rows)")
        self.total_steps = self.cfg.epochs * self.spe
        self.l1 = self.cfg.resolved_l1()

    def _input_scale(self, ck: dict | None) -> float:
        """1, or (``--scale-inputs``) sqrt(d) over the mean row norm of a seeded sample (a resumed run's own)."""
        if not self.cfg.scale_inputs:
            return 1.0
        if ck is not None:
            return float(ck["arch"]["input_scale"])
        src = self.src
        sample = src.sample(65_536, np.random.default_rng([self.cfg.seed, 0, RNG_INIT]))
        mean_norm = float(torch.linalg.vector_norm(sample.double(), dim=1).mean())
        if not mean_norm > 0:
            raise ConfigFieldError("scale_inputs", "the training rows are all zero")
        return math.sqrt(src.d) / mean_norm

    def _build(self, ckpts: dict[int, Path]) -> None:
        cfg, src = self.cfg, self.src
        ck, ck_path = None, None
        if ckpts:
            _, ck_path = next(reversed(ckpts.items()))
            ck = torch_load(ck_path)
            check_resume(ck, ck_path, cfg, self.data.info)
        model = self.model
        if model is None:
            model = create_sae(cfg.activation, src.d, cfg.expansion * src.d,
                               k=cfg.k if cfg.activation == "topk" else None, input_scale=self._input_scale(ck),
                               seed=cfg.seed, init="published" if cfg.paper else "default")
        elif model.arch.d_in != src.d:
            raise ConfigFieldError("layer", f"the SAE expects width {model.arch.d_in}, the training rows have {src.d}")
        self.model = model = model.to(self.device)
        self.arch = model.arch
        self.opt = make_optimizer(model, cfg.lr, (cfg.beta1, cfg.beta2), cfg.eps)
        self.kernel = FusedStep(model, self.opt, l1=self.l1, compute_dtype=self.cdt, project_decoder_grad=cfg.paper)
        if ck is not None:
            self._resume(ck, ck_path)

    def _resume(self, ck: dict, ck_path: Path) -> None:
        model, kernel = self.model, self.kernel
        model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        for p in model.parameters():  # load_state_dict keeps grads; refresh in case of a dtype/device move
            p.grad = torch.zeros_like(p)
        self.step, self.resample_checks, self.revived = int(ck["step"]), int(ck["resample_checks"]), int(ck["revived"])
        self.last_log, self.revived_since_log = int(ck["last_log_step"]), int(ck.get("revived_since_log", 0))
        kernel.last_fired.copy_(ck["last_fired"])
        kernel.stats.copy_(ck["stats"])
        kernel.step_t.fill_(self.step)
        truncate_log(self.out / LOG_FILE, self.step)
        from clipgen.progress import console

        console.print(f"resuming {self.out} from step {self.step} ({ck_path.name})")

    # -- events between steps ----------------------------------------------------------------------------------

    def record(self, rec: dict[str, Any]) -> None:
        """Append one record to ``OUT/log.jsonl``."""
        with open(self.out / LOG_FILE, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(to_jsonable(rec)) + "\n")

    def save_checkpoint(self, s: int) -> None:
        """``OUT/checkpoints/step_N.pt`` (model, Adam, counters, config, data); only the newest few are kept."""
        kernel = self.kernel
        state = {"format": CHECKPOINT_FORMAT, "version": SAE_VERSION, "arch": dataclasses.asdict(self.arch),
                 "model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "step": s,
                 "resample_checks": self.resample_checks, "revived": self.revived, "last_log_step": self.last_log,
                 "revived_since_log": self.revived_since_log,
                 "last_fired": kernel.last_fired.cpu(), "stats": kernel.stats.cpu(),
                 "train_config": to_jsonable(self.cfg), "data": to_jsonable(self.data.info)}
        save_torch_atomic(state, self.out / CHECKPOINT_DIR / f"step_{s:010d}.pt")
        existing_ckpts = list_checkpoints(self.out)
        for old in list(existing_ckpts)[:-self.cfg.keep_checkpoints]:
            existing_ckpts[old].unlink(missing_ok=True)

    def resample(self, step: int) -> None:
        """A resampling check: latents silent for the resampling window are re-initialised (and logged)."""
        cfg, kernel = self.cfg, self.kernel
        self.resample_checks += 1
        dead = torch.nonzero(step - kernel.last_fired >= self.res_window).flatten()
        rng = np.random.default_rng([cfg.seed, step, RNG_RESAMPLE])
        n = resample_dead_latents(self.model, self.opt, dead, self.src.sample(cfg.resample_samples, rng), rng,
                                  l1=self.l1 if cfg.paper else 0.0)
        if n:
            kernel.last_fired.index_fill_(0, dead, step)
        self.revived += n
        self.revived_since_log += n
        self.record({"kind": "resample", "step": step, "samples": step * self.b, "check": self.resample_checks,
                     "resampled": n})

    def log_interval(self, step: int) -> int:
        """The training record of the interval since the last log (statistics summed on the device); dead count."""
        kernel, arch, b, l1 = self.kernel, self.arch, self.b, self.l1
        st = kernel.stats.tolist()
        kernel.stats.zero_()
        rows = (step - self.last_log) * b
        now = time.perf_counter()
        mse = st[0] / (rows * arch.d_in)
        dead_now = int((step - kernel.last_fired >= self.dead_window).sum())
        self.last_train = {"kind": "train", "step": step, "samples": step * b, "epoch": step / self.spe,
                           "loss": mse + l1 * st[2] / rows, "mse": mse, "l1": st[2] / rows,
                           "l1_loss": l1 * st[2] / rows, "l0": st[3] / rows,
                           "fve": 1.0 - st[0] / st[1] if st[1] > 0 else float("nan"),
                           "dead": dead_now, "dead_fraction": dead_now / arch.d_sae,
                           "resampled": self.revived_since_log,
                           "samples_per_s": (step - self.step_log) * b / max(now - self.t_log, 1e-9)}
        self.record(self.last_train)
        self.last_log, self.t_log, self.step_log, self.revived_since_log = step, now, step, 0
        return dead_now

    # -- the run ------------------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        ckpts = self._checkpoints()
        self._resolve_device()
        with ExitStack() as stack:
            self._open_data(stack)
            self._build(ckpts)
            self.out.mkdir(parents=True, exist_ok=True)
            write_config(self.out, "sae train", self.cfg)
            start_step = self.step
            already = self.step >= self.total_steps
            t0 = time.perf_counter()
            self._train(t0)
            seconds = time.perf_counter() - t0
            return self._finish(start_step, already, seconds)

    def _train(self, t0: float) -> None:
        from clipgen.progress import make_progress

        cfg, b, src, device, kernel, arch = self.cfg, self.b, self.src, self.device, self.kernel, self.arch
        runner: Callable[[torch.Tensor], None] = kernel if self.step_mode == "eager" else GraphStep(kernel, b, src.d)
        static = runner.static_x if isinstance(runner, GraphStep) else None
        log_steps = interval_steps(cfg.log_every, b)
        val_steps = interval_steps(cfg.val_every, b) if self.data.val is not None else 0
        ckpt_steps = interval_steps(cfg.checkpoint_every, b)
        res_steps = interval_steps(cfg.resample_every, b)
        self.res_window = interval_steps(cfg.resample_window or cfg.resample_every, b)
        self.dead_window = interval_steps(cfg.dead_window, b) or 1
        self.t_log, self.step_log = t0, self.step
        total_steps, step = self.total_steps, self.step
        with make_progress(disable=not self.progress) as bar:
            task = bar.add_task(f"sae {cfg.layer} ({arch.d_in}->{arch.d_sae})", total=total_steps, completed=step)
            t_bar = 0.0
            while step < total_steps:
                epoch, within = divmod(step, self.spe)
                for x in src.batches(epoch, within, b, out=static):
                    if x.device != device:
                        x = x.to(device, non_blocking=True)
                    runner(x)
                    step = self.step = step + 1
                    if res_steps and step % res_steps == 0 and (cfg.resample_max == 0
                                                                 or self.resample_checks < cfg.resample_max):
                        self.resample(step)
                    if step % log_steps == 0 or step == total_steps:
                        dead_now = self.log_interval(step)
                        bar.update(task, description=f"sae {cfg.layer} loss {self.last_train['loss']:.4g} "
                                                     f"L0 {self.last_train['l0']:.1f} dead {dead_now}")
                    if val_steps and step % val_steps == 0 and step < total_steps:
                        self.last_val = evaluate(self.model, self.data.val, self.l1)
                        self.record({"kind": "val", "step": step, "samples": step * b, **self.last_val})
                    if ckpt_steps and step % ckpt_steps == 0 and step < total_steps:
                        self.save_checkpoint(step)
                    if self.callback is not None:
                        self.callback(step, {"model": self.model, "optimizer": self.opt, "step": kernel})
                    now = time.perf_counter()
                    if now - t_bar > 0.2 or step == total_steps:
                        bar.update(task, completed=step)
                        t_bar = now
                    if step >= total_steps:
                        break

    def _finish(self, start_step: int, already: bool, seconds: float) -> TrainResult:
        """Last checkpoint and validation, the final model's statistics, ``sae.pt``, ``metrics.json``, curves."""
        cfg, b, step, l1, out, data = self.cfg, self.b, self.step, self.l1, self.out, self.data
        if not already:
            self.save_checkpoint(step)
        if data.val is not None:
            self.last_val = evaluate(self.model, data.val, l1)
            if not already:
                self.record({"kind": "val", "step": step, "samples": step * b, **self.last_val})
        if not self.last_train:
            self.last_train = last_log_record(out / LOG_FILE, "train")
        # the final model's statistics: a pass over (a seeded sample of) the training rows, not the mean of the last
        # log interval (which can span the whole run)
        rows_final = self.src.sample(FINAL_EVAL_ROWS, np.random.default_rng([cfg.seed, step, RNG_FINAL]))
        final = {"kind": "final", "step": step, "samples": step * b, "epoch": step / self.spe,
                 **evaluate(self.model, rows_final, l1)}
        if not already:
            self.record(final)
        trained = (step - start_step) * b
        sps = trained / seconds if seconds > 0 and trained else 0.0
        save_sae(out / SAE_FILE, self.model, layer=cfg.layer, steps=step, samples=step * b, train_config=cfg,
                 data=data.info)
        metrics = {"steps": step, "samples": step * b, "epochs": cfg.epochs, "steps_per_epoch": self.spe,
                   "train_rows": self.src.n_rows, "layer": cfg.layer, "arch": dataclasses.asdict(self.arch), "l1": l1,
                   "final": final, "final_train": self.last_train, "val": self.last_val,
                   "resample_checks": self.resample_checks, "revived": self.revived, "seconds_this_session": seconds,
                   "samples_per_s_this_session": sps, "device": str(self.device),
                   "precision": str(self.cdt).replace("torch.", ""), "step_mode": self.step_mode}
        write_json_atomic(out / METRICS_FILE, metrics)
        plot_curves(out)
        return TrainResult(out=out, steps=step, samples=step * b, epochs=cfg.epochs, final=final, val=self.last_val,
                           resample_checks=self.resample_checks, revived=self.revived, seconds=seconds,
                           samples_per_s=sps, already_complete=already)


def run_train_sae(cfg: SAETrainConfig, data: TrainingData | None = None, *, model: SparseAutoencoder | None = None,
                  resume: bool = False, progress: bool = True,
                  callback: Callable[[int, dict[str, Any]], None] | None = None) -> TrainResult:
    """Train an SAE on ``data`` (default: the stores of ``cfg``) and write the run to ``cfg.out``.

    ``OUT/config.json`` (this config), ``OUT/log.jsonl`` (one JSON object per log interval, validation and
    resampling event), ``OUT/checkpoints/step_N.pt`` (model, Adam, counters; the last ``keep_checkpoints`` kept),
    ``OUT/sae.pt`` (the final SAE, see :func:`load_sae`) and ``OUT/metrics.json``. An existing run in ``OUT``
    continues from its newest checkpoint (``epochs`` may be raised to train longer; other settings are refused) unless
    ``cfg.force`` starts over; ``resume`` is accepted for compatibility and changes nothing. ``model`` replaces the
    freshly initialised SAE (tests use it to plant dead latents). ``callback(step, info)`` runs after every step.
    The run folder is written under an exclusive writer lock (:mod:`clipgen.locks`): a second process is refused.
    """
    from clipgen.locks import output_lock

    check_config(cfg)
    if not cfg.out:
        raise ConfigFieldError("out", "an output folder is required")
    with output_lock(cfg.out):
        return SAETrainer(cfg, data, model=model, progress=progress, callback=callback).run()
