"""How a training process is started: one process, ``torchrun`` on one node, or one ``srun`` task per GPU.

=========== =====================================================================================================
launcher    when
=========== =====================================================================================================
``local``   one process (CPU, or one GPU)
``torchrun`` ``--gpus N`` (or ``--nproc N`` on CPU, gloo) with N > 1: ``python -m torch.distributed.run
            --standalone --nproc-per-node N --module -- MODULE ARGS``
``srun``    inside a SLURM job step with more than one task (``srun`` already started one process per GPU):
            every task runs clipgen, which runs the trainer with the task's SLURM rank; MASTER_ADDR and
            MASTER_PORT must be set (the scripts written by ``clipgen train grid`` export them)
=========== =====================================================================================================

A GPU requested where none exists is a one-line error, never a silent fall-back to the CPU.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from clipgen.errors import ClipgenError, ConfigFieldError

LAUNCHERS = ("auto", "local", "torchrun", "srun")


@dataclass(frozen=True)
class LaunchPlan:
    """Where and how many training processes run."""

    launcher: str  # "local", "torchrun" or "srun"
    device: str  # "cpu" or "cuda"
    world_size: int
    rank: int = 0  # this process's global rank (non-zero only for srun tasks)

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0


def slurm_step_tasks(env: Mapping[str, str] | None = None) -> int:
    """Number of tasks of the current SLURM job step (0 outside SLURM)."""
    env = os.environ if env is None else env
    if "SLURM_PROCID" not in env:
        return 0
    for key in ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"):
        if env.get(key, "").isdigit():
            return int(env[key])
    return 1


def resolve_launch(device: str = "auto", gpus: int | None = None, nproc: int | None = None,
                   launcher: str = "auto", *, env: Mapping[str, str] | None = None,
                   cuda_count: int | None = None) -> LaunchPlan:
    """Decide launcher, device and world size; checks that requested GPUs exist.

    ``cuda_count`` (number of visible CUDA devices) is looked up with torch when not given.
    """
    env = os.environ if env is None else env
    if launcher not in LAUNCHERS:
        raise ConfigFieldError("launcher", f"unknown launcher {launcher!r} (one of {', '.join(LAUNCHERS)})")
    dev = (device or "auto").strip().lower()
    if dev not in ("auto", "cpu", "cuda"):
        raise ConfigFieldError("device", f"unknown device {device!r} (auto, cpu or cuda; use --gpus N for several)")
    if gpus is not None and gpus < 0:
        raise ConfigFieldError("gpus", "must be >= 0")
    if nproc is not None and nproc < 1:
        raise ConfigFieldError("nproc", "must be >= 1")
    if gpus and dev == "cpu":
        raise ConfigFieldError("gpus", "cannot be combined with --device cpu (use --nproc N for CPU processes)")
    if gpus and nproc and nproc != gpus:
        raise ConfigFieldError("nproc", f"{nproc} differs from --gpus {gpus} (one process per GPU)")

    step_tasks = slurm_step_tasks(env)
    in_srun = launcher == "srun" or (launcher == "auto" and step_tasks > 1)
    if cuda_count is None:
        cuda_count = _cuda_count()

    if gpus == 0:
        dev = "cpu"
    if dev == "auto":
        dev = "cuda" if (gpus or cuda_count > 0) else "cpu"
    if dev == "cuda" and cuda_count == 0:
        raise ConfigFieldError("gpus" if gpus else "device",
                               "a GPU was requested but no CUDA GPU is available here (use --device cpu)")

    if in_srun:
        if step_tasks < 1:
            raise ConfigFieldError("launcher", "srun requested but this is not a SLURM job step (no SLURM_PROCID)")
        want = gpus or nproc
        if want and want != step_tasks:
            raise ConfigFieldError("gpus" if gpus else "nproc",
                                   f"{want} processes requested but this SLURM step has {step_tasks} tasks "
                                   f"(one task per GPU: --ntasks-per-node)")
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not env.get(k)]
        if missing and step_tasks > 1:
            raise ConfigFieldError("launcher", f"srun: {' and '.join(missing)} not set (export them in the job "
                                               f"script, as the scripts of 'clipgen train grid' do)")
        return LaunchPlan("srun", dev, step_tasks, int(env.get("SLURM_PROCID", "0")))

    world = gpus or nproc or 1
    if dev == "cuda" and world > cuda_count:
        raise ConfigFieldError("gpus", f"{world} GPUs requested but only {cuda_count} visible")
    if launcher == "local" and world > 1:
        raise ConfigFieldError("launcher", f"local runs one process; {world} requested (use torchrun)")
    if launcher == "torchrun" or world > 1:
        return LaunchPlan("torchrun", dev, world)
    return LaunchPlan("local", dev, 1)


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def module_command(module: str, args: Sequence[str], plan: LaunchPlan, python: str | None = None) -> list[str]:
    """The command that runs ``python -m module args`` under ``plan``'s launcher."""
    py = python or sys.executable
    if plan.launcher == "torchrun":
        # "--module --" keeps torchrun's own parser away from the trainer's options (it would otherwise
        # reject e.g. "--logs" as an ambiguous abbreviation of its "--logs-specs").
        return [py, "-u", "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={plan.world_size}",
                "--module", "--", module, *args]
    return [py, "-u", "-m", module, *args]


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a training subprocess: unbuffered output; clipgen importable from this checkout."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if here not in paths:
        env["PYTHONPATH"] = os.pathsep.join([here, *paths])
    if extra:
        env.update(extra)
    return env


class Interrupted(ClipgenError):
    """This process received SIGTERM, SIGINT or SIGHUP while a child ran; the child's process group got the same
    signal and has stopped. Exit status 128 + the signal number, as a shell reports a process killed by it."""

    def __init__(self, signum: int, message: str | None = None):
        self.signum = signum
        self.signame = signal.Signals(signum).name
        self.exit_code = 128 + signum
        super().__init__(message or f"interrupted by {self.signame}")


#: Signals forwarded to the child's process group.
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def stream_process(cmd: Sequence[str], on_line: Callable[[str], None], env: Mapping[str, str] | None = None,
                   cwd: str | None = None) -> int:
    """Run ``cmd`` with stdout and stderr merged, calling ``on_line`` for each line; returns the exit code.

    From the main thread, the child runs in a process group of its own and SIGTERM, SIGINT (Ctrl-C) and SIGHUP sent
    to this process are forwarded to that whole group (torchrun and its workers included), so stopping clipgen stops
    the training; once the child has exited (what is left of its group is killed), :class:`Interrupted` is raised.
    From other threads (signal handlers cannot be set there) the child stays in this process's group, where a
    terminal's Ctrl-C reaches it directly.
    """
    forward = threading.current_thread() is threading.main_thread()
    received: list[int] = []
    child: list[int] = []  # the child's pid (its group's id) once it is started

    def relay(signum, _frame):
        received.append(signum)
        if child:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child[0], signum)

    # the handlers are set before the child starts: a signal this process ignored (SIGINT in a background job,
    # SIGHUP under nohup) would stay ignored in the child, and a forwarded one would not stop it; a handled one is
    # reset to its default in the child
    previous = {s: signal.signal(s, relay) for s in FORWARDED_SIGNALS} if forward else {}
    try:
        proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=dict(env or os.environ), cwd=cwd, text=True, encoding="utf-8", errors="replace",
                                bufsize=1, start_new_session=forward)
    except BaseException:
        for s, h in previous.items():
            signal.signal(s, h)
        raise
    child.append(proc.pid)
    assert proc.stdout is not None
    if received:  # a signal that came while the child was starting
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, received[0])
    try:
        for line in proc.stdout:
            on_line(line.rstrip("\n"))
        rc = proc.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM) if forward else proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if received:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group (the child itself has exited)
        raise Interrupted(received[0])
    return rc
