"""What a study folder holds: run directories, evaluation results, activation stores and analysis outputs.

Everything is found by its marker file, never by folder names: a run directory by ``clipgen-run.json``, evaluation
results by ``results.json`` of the ``clipgen-eval-results`` format, and every other artifact by the configuration
JSON its command writes beside it (``config.json`` in an output folder, ``NAME.config.json`` beside a file) and the
``command`` recorded in it. Artifacts are tied to the run they analyse through those configurations (an analysis
names its store, the store names its run directory). ``clipgen report`` and ``clipgen status`` both read this.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipgen.artifacts import CONFIG_SUFFIX
from clipgen.errors import ConfigFieldError, file_error

#: Commands whose configuration JSON marks an analysis output, in the report's order.
ANALYSIS_COMMANDS = ("eval summary", "cka", "embeddings", "sae train", "sae features", "circuits compute",
                     "circuits merge", "circuits nodes", "circuits similarity", "circuits plot")
#: Short names of the analyses (``clipgen status``).
ANALYSIS_SHORT = {"cka": "cka", "embeddings": "embeddings", "sae train": "sae", "sae features": "sae-features",
                  "circuits compute": "circuits", "circuits merge": "circuits", "circuits nodes": "nodes",
                  "circuits similarity": "circuit-similarity", "circuits plot": "circuit-plot"}


@dataclass
class Artifact:
    """One output of a clipgen command, found by its configuration JSON."""

    command: str
    path: Path  # the artifact: an output folder or a file
    config: dict[str, Any]  # the command's resolved options
    run: str | None = None  # the run directory (resolved path) it derives from, when traceable

    def option(self, name: str, default: Any = None) -> Any:
        return self.config.get(name, default)


@dataclass
class EvalInfo:
    path: Path  # results.json
    kind: str
    test_domain: str
    epochs: list[int]
    run_name: str


@dataclass
class RunInfo:
    """A run directory and what was done with it."""

    path: Path
    name: str
    kind: str
    model: str
    setup: str | None
    test_domain: str | None  # the mixture's test domain (None for natural-only)
    seed: Any
    planned_epochs: int | None
    trained_epochs: list[int]  # checkpoints after epoch 0
    status: str | None
    evals: list[EvalInfo] = field(default_factory=list)
    stores: list[Artifact] = field(default_factory=list)
    analyses: list[Artifact] = field(default_factory=list)


@dataclass
class Study:
    roots: list[Path]
    runs: list[RunInfo]
    results: list[Path]
    stores: list[Artifact]
    analyses: list[Artifact]
    mixtures: list[Path]  # mixtures.json indexes
    synth: list[Artifact]  # synthetic DomainNet roots ('data synth')
    demo: Path | None  # demo.json of a 'clipgen demo' folder

    def by_command(self, *commands: str) -> list[Artifact]:
        return [a for a in self.analyses if a.command in commands]

    def run_of(self, artifact: Artifact) -> RunInfo | None:
        return next((r for r in self.runs if artifact.run is not None and str(r.path) == artifact.run), None)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise file_error(path, f"unreadable JSON ({e.__class__.__name__})") from None


def _artifact_of_config(cfg_path: Path) -> Path:
    """The artifact a configuration JSON describes: its folder, or the sibling file with the same stem."""
    if cfg_path.name == "config.json":
        return cfg_path.parent
    stem = cfg_path.name[: -len(CONFIG_SUFFIX)]
    for sib in sorted(cfg_path.parent.glob(stem + ".*")):
        if sib != cfg_path and sib.name != cfg_path.name and not sib.name.endswith(CONFIG_SUFFIX):
            return sib
    return cfg_path.parent / stem


def _walk(root: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "checkpoints")
        files += [Path(dirpath) / f for f in sorted(filenames) if f.endswith(".json")]
    return files


def _resolve(p: Any, base: Path | None = None) -> str | None:
    if not p:
        return None
    q = Path(str(p))
    if not q.is_absolute() and base is not None and (base / q).exists():
        q = base / q
    return str(q.resolve())


def discover(inputs: Sequence[str | Path], *, runs: Sequence[str | Path] = (), stores: Sequence[str | Path] = (),
             analyses: Sequence[str | Path] = ()) -> Study:
    """Everything under ``inputs``; ``runs`` / ``stores`` / ``analyses`` add folders searched for that kind only."""
    roots = [Path(p) for p in inputs]
    for name, paths in (("inputs", roots), ("runs", runs), ("stores", stores), ("analyses", analyses)):
        for p in paths:
            if not Path(p).is_dir():
                raise ConfigFieldError(name, f"{p} is not a directory")
    scans = [(Path(p), "all") for p in roots] + [(Path(p), "runs") for p in runs] + \
        [(Path(p), "stores") for p in stores] + [(Path(p), "analyses") for p in analyses]
    seen: set[tuple[Path, str]] = set()
    manifests: list[Path] = []
    results: list[Path] = []
    configs: list[tuple[Path, dict[str, Any]]] = []
    mixtures: list[Path] = []
    demo = None
    from clipgen.evaluation.results import RESULTS_FORMAT, RESULTS_NAME
    from clipgen.runs import MANIFEST_NAME

    for root, what in scans:
        for f in _walk(root):
            rf = f.resolve()
            if (rf, what) in seen:
                continue
            seen.add((rf, what))
            name = f.name
            if name == MANIFEST_NAME and what in ("all", "runs"):
                manifests.append(f)
            elif name == RESULTS_NAME and what in ("all", "runs", "analyses"):
                doc = _read_json(f)
                if isinstance(doc, dict) and doc.get("format") == RESULTS_FORMAT:
                    results.append(f)
            elif name == "config.json" or name.endswith(CONFIG_SUFFIX):
                doc = _read_json(f)
                if isinstance(doc, dict) and isinstance(doc.get("command"), str) \
                        and isinstance(doc.get("config"), dict):
                    configs.append((f, doc))
            elif name == "mixtures.json" and what == "all":
                doc = _read_json(f)
                if isinstance(doc, dict) and doc.get("format") == "clipgen-mixtures":
                    mixtures.append(f)
            elif name == "demo.json" and what == "all" and demo is None:
                doc = _read_json(f)
                if isinstance(doc, dict) and "state_version" in doc and "stages" in doc:
                    demo = f
    run_infos = _runs(manifests)
    results = _dedup(results)
    store_arts, analysis_arts, synth = [], [], []
    for cfg_path, doc in configs:
        cmd = doc["command"]
        art = Artifact(cmd, _artifact_of_config(cfg_path), doc["config"])
        if cmd == "extract":
            store_arts.append(art)
        elif cmd in ANALYSIS_COMMANDS:
            analysis_arts.append(art)
        elif cmd == "data synth":
            synth.append(art)
    store_arts = _dedup_art(store_arts)
    analysis_arts = _dedup_art(analysis_arts)
    _link(run_infos, results, store_arts, analysis_arts)
    return Study(roots, run_infos, results, store_arts, analysis_arts, _dedup(mixtures), synth, demo)


def _dedup(paths: list[Path]) -> list[Path]:
    out: dict[Path, Path] = {}
    for p in paths:
        out.setdefault(p.resolve(), p)
    return list(out.values())


def _dedup_art(arts: list[Artifact]) -> list[Artifact]:
    out: dict[tuple[str, Path], Artifact] = {}
    for a in arts:
        out.setdefault((a.command, a.path.resolve()), a)
    return list(out.values())


def _runs(manifests: list[Path]) -> list[RunInfo]:
    from clipgen.runs import list_checkpoints, read_manifest

    runs = []
    for m in _dedup(manifests):
        man = read_manifest(m.parent)
        mix = man.mixture or {}
        planned = man.hyperparameters.get("epochs")
        runs.append(RunInfo(path=m.parent.resolve(), name=man.name, kind=man.kind, model=man.model,
                            setup=mix.get("setup"), test_domain=mix.get("test_domain"), seed=man.seed,
                            planned_epochs=int(planned) if isinstance(planned, (int, float)) else None,
                            trained_epochs=[e for e in list_checkpoints(m.parent) if e > 0],
                            status=(man.extra or {}).get("status")))
    return sorted(runs, key=_run_order)


def _run_order(r: RunInfo) -> tuple:
    from clipgen import domainnet as dn

    order = ("natural-only", "cg-low", "cg-high", "leave-out-domain")
    td = r.test_domain or ""
    return (str(r.seed), dn.TEST_DOMAINS.index(td) if td in dn.TEST_DOMAINS else -1,
            order.index(r.setup) if r.setup in order else len(order), r.name)


def _link(runs: list[RunInfo], results: list[Path], stores: list[Artifact], analyses: list[Artifact]) -> None:
    """Tie results, stores and analyses to their runs (by path first, by run name where paths moved)."""
    from clipgen.evaluation.results import read_results

    by_path = {str(r.path): r for r in runs}
    by_name: dict[str, RunInfo] = {}
    for r in runs:
        by_name.setdefault(r.name, r)
    for p in results:
        doc = read_results(p)
        info = EvalInfo(p, str(doc.get("kind")), str(doc.get("test_domain")), [int(e) for e in doc["epochs"]],
                        str((doc.get("run") or {}).get("name", "?")))
        rp = p.resolve()
        run = next((r for r in runs if r.path in rp.parents), None) or by_name.get(info.run_name)
        if run is not None:
            run.evals.append(info)

    def run_for_model_dir(model_dir: Any, base: Path) -> str | None:
        key = _resolve(model_dir, base)
        if key in by_path:
            return key
        if model_dir and Path(str(model_dir)).name in by_name:
            return str(by_name[Path(str(model_dir)).name].path)
        return None

    store_run: dict[str, str | None] = {}
    for s in stores:
        s.run = run_for_model_dir(s.option("model_dir"), s.path.parent)
        store_run[str(s.path.resolve())] = s.run
        store_run.setdefault(s.path.name, s.run)
    by_run_path = {str(r.path): r for r in runs}
    for s in stores:
        if s.run in by_run_path:
            by_run_path[s.run].stores.append(s)

    circuits_run: dict[str, str | None] = {}
    for a in analyses:
        if a.command in ("circuits compute", "circuits merge"):
            a.run = run_for_model_dir(a.option("model_dir"), a.path.parent)
            circuits_run[str(a.path.resolve())] = a.run
            circuits_run.setdefault(a.path.name, a.run)

    def via(table: dict[str, str | None], p: Any, base: Path) -> str | None:
        if not p:
            return None
        key = _resolve(p, base)
        return table.get(key) if key in table else table.get(Path(str(p)).name)

    for a in analyses:
        if a.command in ("circuits compute", "circuits merge", "eval summary"):
            pass
        elif a.command in ("circuits nodes", "circuits similarity", "circuits plot"):
            a.run = via(circuits_run, a.option("circuits"), a.path.parent)
        else:
            store = a.option("store") or (a.option("stores") or [None])[0]
            a.run = via(store_run, store, a.path.parent)
        if a.run in by_run_path:
            by_run_path[a.run].analyses.append(a)
