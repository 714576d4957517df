"""SLURM array jobs shared by ``train grid``, ``eval grid``, ``extract --shard`` pipelines and the scripts.

A grid is a list of tasks (each an argv list). :func:`write_array_job` writes ``<name>.sbatch`` plus
``<name>.tasks`` (one shell-quoted command per line); array task ``i`` runs line ``i + 1``. ``--dry-run``
prints the tasks, ``--submit`` calls ``sbatch``, ``--local`` runs them one after another here.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clipgen.artifacts import write_text_atomic
from clipgen.errors import ClipgenError


@dataclass
class SlurmConfig:
    """Resources of one array task (sbatch options); ``setup`` lines run before the task (module load ...)."""

    job_name: str = "clipgen"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str = "24:00:00"
    nodes: int = 1
    gpus_per_node: int = 1
    ntasks_per_node: int = 1  # one task per GPU for multi-GPU training with srun
    cpus_per_task: int = 6
    mem: str | None = None
    max_parallel: int | None = None  # the %N of --array
    log_dir: str = "slurm-logs"
    setup: list[str] = field(default_factory=list)
    extra_sbatch: list[str] = field(default_factory=list)
    use_srun: bool = False  # prefix each task with srun (one process per task/GPU, MASTER_ADDR/PORT set)


def render_array_script(tasks_file: str | Path, n_tasks: int, cfg: SlurmConfig,
                        log_dir: str | Path | None = None) -> str:
    if n_tasks < 1:
        raise ClipgenError("no tasks to submit (everything is done already?)")
    array = f"0-{n_tasks - 1}" + (f"%{cfg.max_parallel}" if cfg.max_parallel else "")
    lines = ["#!/usr/bin/env bash", f"#SBATCH --job-name={cfg.job_name}", f"#SBATCH --array={array}",
             f"#SBATCH --time={cfg.time}", f"#SBATCH --nodes={cfg.nodes}",
             f"#SBATCH --ntasks-per-node={cfg.ntasks_per_node}", f"#SBATCH --cpus-per-task={cfg.cpus_per_task}",
             f"#SBATCH --output={Path(log_dir or cfg.log_dir).resolve()}/%x-%A_%a.out"]
    if cfg.gpus_per_node:
        lines.append(f"#SBATCH --gres=gpu:{cfg.gpus_per_node}")
    for opt, val in (("partition", cfg.partition), ("account", cfg.account), ("qos", cfg.qos), ("mem", cfg.mem)):
        if val:
            lines.append(f"#SBATCH --{opt}={val}")
    lines += [f"#SBATCH {x}" if not x.startswith("#SBATCH") else x for x in cfg.extra_sbatch]
    lines += ["set -euo pipefail", *cfg.setup,
              f"TASKS={shlex.quote(str(Path(tasks_file).resolve()))}",
              'CMD=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" "$TASKS")',
              'if [ -z "$CMD" ]; then echo "no task $SLURM_ARRAY_TASK_ID in $TASKS" >&2; exit 2; fi',
              'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
              'export MASTER_PORT=$((12000 + ${SLURM_ARRAY_TASK_ID:-0} % 20000))',
              'echo "task $SLURM_ARRAY_TASK_ID: $CMD"']
    lines.append('eval "srun --cpu_bind=v --accel-bind=gn $CMD"' if cfg.use_srun else 'eval "$CMD"')
    return "\n".join(lines) + "\n"


def write_array_job(out_dir: str | Path, name: str, tasks: Sequence[Sequence[str]], cfg: SlurmConfig) -> Path:
    """Write ``<out_dir>/<name>.tasks`` and ``<out_dir>/<name>.sbatch``; returns the sbatch path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_dir = Path(cfg.log_dir) if Path(cfg.log_dir).is_absolute() else out_dir / cfg.log_dir
    log_dir.mkdir(parents=True, exist_ok=True)
    tasks_file = out_dir / f"{name}.tasks"
    write_text_atomic(tasks_file, "".join(shlex.join(list(t)) + "\n" for t in tasks))
    script = out_dir / f"{name}.sbatch"
    write_text_atomic(script, render_array_script(tasks_file, len(tasks), cfg, log_dir))
    script.chmod(0o755)
    return script


def submit(script: str | Path) -> str:
    """``sbatch script``; returns the job id. No sbatch on this machine is a one-line error."""
    if shutil.which("sbatch") is None:
        raise ClipgenError("--submit: sbatch not found (not on a SLURM login node?); the job script is at "
                           f"{script}")
    r = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True)
    if r.returncode != 0:
        raise ClipgenError(f"sbatch failed for {script}: {' '.join(r.stderr.split())}")
    return r.stdout.strip().split(";")[0]


def run_local(tasks: Sequence[Sequence[str]], description: str = "tasks") -> None:
    """Run tasks one after another in this machine; stops at the first failing task."""
    from clipgen.progress import console, make_progress

    with make_progress() as bar:
        t = bar.add_task(description, total=len(tasks))
        for argv in tasks:
            console.print(f"[dim]$ {shlex.join(list(argv))}[/]")
            r = subprocess.run(list(argv))
            if r.returncode != 0:
                raise ClipgenError(f"task failed with exit code {r.returncode}: {shlex.join(list(argv))}")
            bar.advance(t)
