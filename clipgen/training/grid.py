"""The paper's grid of CLIP runs as tasks: natural-only + {CG low, CG high, leave-out-domain} x test domains x seeds.

Mixtures are found through the ``mixtures.json`` index that ``clipgen data mixtures`` writes next to the TSVs
(:mod:`clipgen.data.mixture_info`), never by parsing file names. Each task is one ``clipgen train clip``
command (the same command continues its run, so a requeued or re-submitted task continues where it stopped; the
``--resume`` it carries changes nothing and keeps the task lines valid for older clipgen versions); tasks whose last
checkpoint exists are skipped. :func:`run_grid` plans the tasks, then, by the config's ``mode``, writes them as a SLURM
array job (:mod:`clipgen.slurm`; ``write``, the default), writes and submits it (``submit``), runs them one after
another on this machine (``local``), or only plans (``dry-run``), as ``clipgen eval grid`` does.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from clipgen import domainnet as dn
from clipgen.errors import ClipgenError, ConfigFieldError, file_error
from clipgen.slurm import SlurmConfig

#: The main grid of the paper (Figure 2).
MAIN_SETUPS: tuple[str, ...] = ("natural-only", "cg-low", "cg-high", "leave-out-domain")
#: What :func:`run_grid` does with the planned tasks.
MODES = ("write", "dry-run", "submit", "local")


@dataclass
class TrainGridConfig:
    """Options of ``clipgen train grid``."""

    index: Path  # folder with mixtures.json (or the mixtures.json file itself)
    logs: Path = Path("logs")
    preset: str = "imagenet-captions"
    setups: list[str] = field(default_factory=lambda: list(MAIN_SETUPS))
    test_domains: list[str] = field(default_factory=lambda: list(dn.TEST_DOMAINS))
    seeds: list[int] | None = None  # default: the preset's seeds
    pseudo: bool = False  # upper-bound mixtures (held-out classes kept) instead of the main ones
    aligned: bool = False  # aligned-caption mixtures
    base: str | None = None  # base dataset: None = the mixtures with one (if any); "none" = DomainNet-only TSVs;
    #                          else a base TSV path, file name or part of it (e.g. "cc12m")
    val: Path | None = None  # one validation TSV for every run (default: each mixture's val TSV from the index)
    no_val: bool = False
    model: str | None = None
    epochs: int | None = None
    gpus: int | None = None  # per task; default: the preset's reference GPU count for SLURM, auto for --local
    name_prefix: str = ""
    train_args: list[str] = field(default_factory=list)  # extra arguments for every 'clipgen train clip'
    mode: str = "write"  # one of MODES
    out: Path | None = None  # where the job script goes (default: LOGS/grid)
    slurm: SlurmConfig = field(default_factory=lambda: SlurmConfig(job_name="clipgen-train", time="24:00:00",
                                                                     cpus_per_task=6))
    #  (slurm.job_name also names the script; its GPUs per node, tasks per node and srun come from ``gpus``)


@dataclass
class GridTask:
    name: str
    setup: str
    test_domain: str | None
    seed: int
    train: str
    val: str | None
    run_dir: str
    done: bool
    argv: list[str]


def _index_path(index: Path) -> Path:
    from clipgen.data.mixture_info import INDEX_NAME

    p = Path(index)
    if p.is_dir():
        p = p / INDEX_NAME
    if not p.is_file():
        raise ConfigFieldError("index", f"{p} not found (run 'clipgen data mixtures' first; it writes mixtures.json "
                                        f"next to the TSVs)")
    return p


def load_index(index: Path) -> tuple[Path, list[dict[str, Any]]]:
    """``(folder, entries)`` of a mixtures.json index; each entry is a MixtureInfo dict."""
    p = _index_path(index)
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise file_error(p, f"unreadable mixture index ({e})") from None
    if raw.get("format") != "clipgen-mixtures" or not isinstance(raw.get("mixtures"), dict):
        raise file_error(p, "not a clipgen mixture index (format 'clipgen-mixtures' with a 'mixtures' mapping)")
    entries = []
    for fname, e in raw["mixtures"].items():
        if not isinstance(e, dict):
            raise file_error(p, f"entry {fname!r} is not an object")
        entries.append({**e, "file": e.get("file", fname)})
    return p.parent, entries


def _matches(e: dict[str, Any], setup: str, domain: str | None, split: str, cfg: TrainGridConfig) -> bool:
    return (e.get("setup") == setup and e.get("split") == split
            and (domain is None or e.get("test_domain") == domain)
            and bool(e.get("pseudo", False)) == cfg.pseudo and bool(e.get("aligned", False)) == cfg.aligned
            and e.get("allow_pct") is None and not e.get("in_sketch"))


def select_base(found: list[dict[str, Any]], base: str | None) -> list[dict[str, Any]]:
    """Keep the candidates of the wanted base dataset (``clipgen data mixtures`` writes the DomainNet-only TSVs,
    without a base, next to the ones with a base; ``merge-base`` adds CC3M/CC12M ones)."""
    if base is None:
        with_base = [e for e in found if e.get("base")]
        return with_base or found
    if base.lower() == "none":
        return [e for e in found if not e.get("base")]
    return [e for e in found if e.get("base") and (e["base"] == base or base in Path(e["base"]).name)]


def find_mixture(entries: list[dict[str, Any]], setup: str, domain: str | None, split: str, cfg: TrainGridConfig,
                 index_file: Path, required: bool = True) -> dict[str, Any] | None:
    found = select_base([e for e in entries if _matches(e, setup, domain, split, cfg)], cfg.base)
    what = f"{setup}" + (f" / {domain}" if domain else "") + f" ({split})"
    if not found:
        if required:
            raise file_error(index_file, f"no {what} mixture in the index; create it with 'clipgen data mixtures' "
                                         f"or restrict --setups / --test-domains")
        return None
    if len(found) > 1:
        files = ", ".join(sorted(e["file"] for e in found))
        bases = sorted({Path(e["base"]).name if e.get("base") else "none" for e in found})
        hint = f"choose one with --base ({', '.join(bases)})" if len(bases) > 1 else "keep one family per index folder"
        raise file_error(index_file, f"{len(found)} {what} mixtures ({files}); {hint}")
    return found[0]


def clipgen_command() -> list[str]:
    """How tasks call clipgen: the console script beside this Python, else ``python -m clipgen.cli.main``."""
    exe = Path(sys.executable).with_name("clipgen")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("clipgen")
    return [found] if found else [sys.executable, "-m", "clipgen.cli.main"]


def run_name(setup: str, domain: str | None, seed: int, prefix: str = "") -> str:
    return f"{prefix}{setup}" + (f"-{domain}" if domain else "") + f"-s{seed}"


def plan_grid(cfg: TrainGridConfig, *, log_mode: str = "bar") -> list[GridTask]:
    """All tasks of the grid, in a fixed order (seed, then setup, then test domain, each in the paper's order),
    with their status."""
    from clipgen.training.clip import get_preset

    preset = get_preset(cfg.preset)
    for s in cfg.setups:
        if s not in MAIN_SETUPS:
            raise ConfigFieldError("setups", f"unknown setup {s!r} (one of {', '.join(MAIN_SETUPS)})")
    chosen = {dn.parse_test_domain(d, field="test_domains") for d in cfg.test_domains}
    domains = [d for d in dn.TEST_DOMAINS if d in chosen]  # canonical order, no repeats
    setups = [s for s in MAIN_SETUPS if s in cfg.setups]
    if not domains or not setups:
        raise ConfigFieldError("setups" if not setups else "test_domains", "nothing selected")
    seeds = list(preset.seeds if cfg.seeds is None else cfg.seeds)
    if not seeds:
        raise ConfigFieldError("seeds", "no seed given")
    epochs = cfg.epochs or preset.epochs
    folder, entries = load_index(cfg.index)
    index_file = _index_path(cfg.index)
    logs = Path(os.path.abspath(cfg.logs))
    val_fixed = None
    if cfg.val is not None:
        if not Path(cfg.val).is_file():
            raise ConfigFieldError("val", f"{cfg.val}: TSV file not found")
        val_fixed = os.path.abspath(cfg.val)

    combos: list[tuple[str, str | None]] = []
    for setup in setups:
        if setup == "natural-only":
            combos.append((setup, None))
        else:
            combos += [(setup, d) for d in domains]
    tasks = []
    base = clipgen_command()
    for seed in seeds:
        for setup, domain in combos:
            tr = find_mixture(entries, setup, domain, "train", cfg, index_file)
            train = os.path.abspath(folder / tr["file"])
            if not Path(train).is_file():
                raise file_error(index_file, f"lists {tr['file']}, which does not exist in {folder}")
            val = None
            if not cfg.no_val:
                if val_fixed:
                    val = val_fixed
                else:
                    ve = find_mixture(entries, setup, domain, "val", cfg, index_file, required=False)
                    if ve is not None and (folder / ve["file"]).is_file():
                        val = os.path.abspath(folder / ve["file"])
            name = run_name(setup, domain, seed, cfg.name_prefix)
            run_dir = logs / name
            done = (run_dir / "checkpoints" / f"epoch_{epochs}.pt").is_file()
            argv = [*base, "train", "clip", "--train", train, *(["--val", val] if val else []), "--logs", str(logs),
                    "--name", name, "--preset", cfg.preset, "--seed", str(seed), "--resume", "--log", log_mode]
            if cfg.model:
                argv += ["--model", cfg.model]
            if cfg.epochs:
                argv += ["--epochs", str(cfg.epochs)]
            if cfg.gpus is not None:
                argv += ["--gpus", str(cfg.gpus)]
            argv += list(cfg.train_args)
            tasks.append(GridTask(name, setup, domain, seed, train, val, str(run_dir), done, argv))
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):  # pragma: no cover - names are unique by construction
        raise ClipgenError("grid: duplicate run names")
    return tasks


def describe(tasks: list[GridTask]) -> str:
    """The task list as text (``--dry-run``)."""
    return "\n".join(f"[{'done' if t.done else 'todo'}] {t.name}: {Path(t.train).name}  $ {shlex.join(t.argv)}"
                     for t in tasks)


def write_grid(tasks: list[GridTask], out_dir: Path, job_name: str, slurm_cfg) -> Path:
    """Write the SLURM array job of the pending tasks plus ``<job>.grid.json`` (all tasks and their status)."""
    from clipgen.artifacts import write_json_atomic
    from clipgen.slurm import write_array_job

    pending = [t for t in tasks if not t.done]
    if not pending:
        raise ClipgenError("every run of the grid is complete already; nothing to submit")
    script = write_array_job(out_dir, job_name, [t.argv for t in pending], slurm_cfg)
    write_json_atomic(Path(out_dir) / f"{job_name}.grid.json",
                      {"tasks": [asdict(t) for t in tasks], "array": [t.name for t in pending]})
    return script


@dataclass
class TrainGridOutcome:
    tasks: list[GridTask]  # every run of the grid, complete or not
    script: Path | None  # the array job (write, submit)
    job_id: str | None  # (submit)

    @property
    def pending(self) -> list[GridTask]:
        return [t for t in self.tasks if not t.done]

    @property
    def summary(self) -> str:
        n, todo = len(self.tasks), len(self.pending)
        return f"{n} runs, {n - todo} complete, {todo} to train"


def run_grid(cfg: TrainGridConfig, on_plan: Callable[[TrainGridOutcome], None] | None = None) -> TrainGridOutcome:
    """Plan the grid, then by ``cfg.mode`` write its array job (write), write and submit it (submit), train the
    pending runs one after another here (local), or stop (dry-run). ``on_plan`` sees the planned grid, with its
    job script written, before any run starts or the job is submitted (to report it first). Without ``cfg.gpus``
    a SLURM task gets the preset's reference GPU count, a local run chooses by itself."""
    from clipgen.slurm import run_local, submit
    from clipgen.training.clip import get_preset

    if cfg.mode not in MODES:
        raise ConfigFieldError("mode", f"unknown mode {cfg.mode!r} (one of {', '.join(MODES)})")
    local = cfg.mode == "local"
    if not local and cfg.gpus is None:
        cfg = replace(cfg, gpus=get_preset(cfg.preset).reference_gpus or None)
    outcome = TrainGridOutcome(plan_grid(cfg, log_mode="bar" if local else "live"), None, None)
    if not local and cfg.mode != "dry-run":
        n_gpus = cfg.gpus or 0
        scfg = replace(cfg.slurm, gpus_per_node=n_gpus, ntasks_per_node=max(1, n_gpus), use_srun=n_gpus > 1)
        outcome.script = write_grid(outcome.tasks, cfg.out or Path(cfg.logs) / "grid", scfg.job_name, scfg)
    if on_plan is not None:
        on_plan(outcome)
    if local and outcome.pending:
        run_local([t.argv for t in outcome.pending], description="grid runs")
    if cfg.mode == "submit":
        outcome.job_id = submit(outcome.script)
    return outcome
