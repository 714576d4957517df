"""``clipgen eval grid``: evaluate many runs as a SLURM array job (or one after another here).

One task per run and test domain evaluates the run's missing epochs; with ``per_checkpoint`` one task per
missing checkpoint instead (tasks of the same run add their epoch to the same results.json under a file
lock). Test domains ``auto``: the run mixture's test domain, or all five for runs without one
(natural-only serves every test domain). Work already in a results.json (of an unchanged checkpoint) is skipped
when planning, so re-submitting the grid after a partial failure only runs what is missing. Every task gets
``--workers`` (the task's CPUs but one) and, with ``images``, ``--images`` (an image cache or a folder of them).
By default the job script is written (not submitted), as ``clipgen train grid`` does; ``--dry-run`` only prints the
tasks and writes nothing, ``--submit`` writes and calls sbatch, ``--local`` runs the tasks here.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clipgen import domainnet as dn
from clipgen.artifacts import write_config
from clipgen.errors import ClipgenError, ConfigFieldError
from clipgen.evaluation.results import RESULTS_NAME, read_results
from clipgen.runs import MANIFEST_NAME, RunManifest, list_checkpoints, parse_epochs, read_manifest
from clipgen.slurm import SlurmConfig, run_local, submit, write_array_job

MODES = ("write", "dry-run", "submit", "local")


@dataclass
class EvalGridConfig:
    """Options of ``clipgen eval grid``."""

    runs: list[Path]  # run directories, or folders holding run directories
    data_root: Path
    test_domains: str = "auto"  # "auto", "all" or a list (names or letters)
    epochs: str = "all"
    out_root: Path | None = None  # default: each run's RUN_DIR/eval/<kind>/<test domain>
    templates: str = "paper"
    imagenet: Path | None = None
    stores: list[Path] = field(default_factory=list)
    images: Path | None = None  # image cache, or a folder of them (one per domain and split), for every task
    extra_args: list[str] = field(default_factory=list)  # passed to every task (e.g. --batch-size 500)
    per_checkpoint: bool = False
    jobs_dir: Path = Path("eval-grid")
    name: str = "eval-grid"
    mode: str = "write"
    slurm: SlurmConfig = field(default_factory=lambda: SlurmConfig(job_name="clipgen-eval", time="01:00:00",
                                                                     cpus_per_task=8))


@dataclass
class GridTask:
    run_dir: Path
    kind: str  # "zero-shot" or "supervised"
    test_domain: str
    epochs: list[int]
    out: Path
    argv: list[str]


def discover_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories (holding clipgen-run.json) named directly or found up to two levels below."""
    found: list[Path] = []
    for p in paths:
        p = Path(p)
        if (p / MANIFEST_NAME).is_file():
            found.append(p)
            continue
        if not p.is_dir():
            raise ConfigFieldError("runs", f"{p} is not a directory")
        hits = sorted({m.parent for pat in (f"*/{MANIFEST_NAME}", f"*/*/{MANIFEST_NAME}") for m in p.glob(pat)})
        if not hits:
            raise ConfigFieldError("runs", f"no clipgen run (with {MANIFEST_NAME}) in or under {p}")
        found += hits
    return list(dict.fromkeys(found))


def test_domains_for(manifest: RunManifest, spec: str) -> list[str]:
    s = spec.strip().lower()
    if s == "auto":
        td = (manifest.mixture or {}).get("test_domain")
        return [td] if td else list(dn.TEST_DOMAINS)
    return list(dn.parse_domains(spec, field="test_domains", allowed=dn.TEST_DOMAINS))


def _done_epochs(out: Path, checkpoints: dict[int, Path]) -> list[int]:
    """Epochs in ``out``'s results.json whose checkpoint is still the one evaluated."""
    from clipgen.evaluation.runner import CheckpointRef, changed_epochs

    path = out / RESULTS_NAME
    if not path.exists():
        return []
    try:
        doc = read_results(path)
    except ClipgenError:
        return []  # let the task itself report the problem
    done = [int(e) for e in doc["epochs"]]
    changed = set(changed_epochs(doc, [CheckpointRef(e, checkpoints[e]) for e in done if e in checkpoints]))
    return [e for e in done if e not in changed]


def plan(cfg: EvalGridConfig) -> tuple[list[GridTask], list[str]]:
    """The tasks still to run, and one note per (run, test domain) already complete."""
    if cfg.mode not in MODES:
        raise ConfigFieldError("mode", f"unknown mode {cfg.mode!r} (one of {', '.join(MODES)})")
    tasks: list[GridTask] = []
    notes: list[str] = []
    for run in discover_runs(cfg.runs):
        manifest = read_manifest(run)
        kind = "supervised" if manifest.kind == "supervised" else "zero-shot"
        cks = list_checkpoints(run)
        available = list(cks)
        if not available:
            notes.append(f"{run}: no checkpoints yet, skipped")
            continue
        wanted = parse_epochs(cfg.epochs, available)
        for td in test_domains_for(manifest, cfg.test_domains):
            out = (cfg.out_root / manifest.name / kind / td) if cfg.out_root else run / "eval" / kind / td
            done = set(_done_epochs(out, cks))
            todo = [e for e in wanted if e not in done]
            if not todo:
                notes.append(f"{run} {td}: done ({out / RESULTS_NAME})")
                continue
            chunks = [[e] for e in todo] if cfg.per_checkpoint else [todo]
            for chunk in chunks:
                argv = [sys.executable, "-m", "clipgen.cli.main", "eval", kind, "--model-dir", str(run.resolve()),
                        "--data-root", str(Path(cfg.data_root).resolve()), "--test-domain", td,
                        "--epochs", ",".join(map(str, chunk)), "--out", str(out.resolve()), "--no-progress"]
                if kind == "zero-shot":
                    argv += ["--templates", cfg.templates]
                    if cfg.imagenet is not None:
                        argv += ["--imagenet", str(Path(cfg.imagenet).resolve())]
                    for s in cfg.stores:
                        argv += ["--store", str(Path(s).resolve())]
                if cfg.images is not None:
                    argv += ["--images", str(Path(cfg.images).resolve())]
                if "--workers" not in cfg.extra_args:
                    argv += ["--workers", str(task_workers(cfg))]
                argv += list(cfg.extra_args)
                tasks.append(GridTask(run, kind, td, chunk, out, argv))
    return tasks, notes


def task_workers(cfg: EvalGridConfig) -> int:
    """Data-loading processes of each task: the task's CPUs but one (SLURM), or this machine's usable CPUs but one
    (``--local``)."""
    from clipgen.devices import default_workers

    return default_workers(None if cfg.mode == "local" else cfg.slurm.cpus_per_task)


@dataclass
class GridOutcome:
    tasks: list[GridTask]
    notes: list[str]
    script: Path | None
    job_id: str | None


def run_grid(cfg: EvalGridConfig) -> GridOutcome:
    """Plan the grid, then write the job script (write, submit) and submit it, or run the tasks here (local);
    ``dry-run`` plans only."""
    tasks, notes = plan(cfg)
    if not tasks or cfg.mode == "dry-run":
        return GridOutcome(tasks, notes, None, None)
    if cfg.mode == "local":
        run_local([t.argv for t in tasks], "eval grid")
        return GridOutcome(tasks, notes, None, None)
    script = write_array_job(cfg.jobs_dir, cfg.name, [t.argv for t in tasks], cfg.slurm)
    write_config(script, "eval grid", cfg)
    job = submit(script) if cfg.mode == "submit" else None
    return GridOutcome(tasks, notes, script, job)
