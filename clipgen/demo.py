# Over 500 lines on purpose: one Demo method per stage, kept together so the stage order reads top to bottom.
"""``clipgen demo``: the whole study on the embedded synthetic DomainNet, in one command.

Stages (each a call of the library function behind a ``clipgen`` command, so every intermediate artifact is the
same file that command writes, and any single step can be rerun by hand on the demo's folder)::

    data       clipgen data synth + captions          OUT/data (synthetic DomainNet, captions, base dataset)
    mixtures   clipgen data mixtures                   OUT/mixtures (natural-only, CG low/high, leave-out-domain)
    train      clipgen train clip (x4)                 OUT/runs/<setup>[-<domain>]-s<seed>
    eval       clipgen eval zero-shot (x4) + summary   OUT/runs/*/eval/zero-shot/<domain>, OUT/eval-summary
    extract    clipgen extract (test + train split)    OUT/stores/<run>-{test,train}.h5
    cka        clipgen cka                             OUT/cka/<run>
    embeddings clipgen embeddings                      OUT/embeddings/<run>
    sae        clipgen sae train + names + features    OUT/sae/<run> (+ names/, features/)
    circuits   clipgen circuits compute/nodes/similarity/plot   OUT/circuits/<run>...
    report     the study report                        OUT/report.md, OUT/report.html

The analysed models are the CG high-diversity and the leave-out-domain runs of the test domain (the two the paper's
SAE analysis contrasts); CKA, embeddings and circuits use the CG high-diversity run, as the paper's analyses use its
(aligned) quickdraw CG high-diversity model.

Rerunning skips every stage whose inputs and settings are unchanged (recorded in ``OUT/demo.json``); a stage that was
interrupted continues where its command resumes (training, extraction, SAE training, circuits) or starts again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipgen import domainnet as dn
from clipgen.errors import ConfigFieldError

STATE_FILE = "demo.json"
STATE_VERSION = 1

#: The four training setups of Figure 2, in the paper's order.
SETUPS = ("natural-only", "cg-low", "cg-high", "leave-out-domain")
#: The runs the mechanistic analyses look at.
ANALYSED = ("cg-high", "leave-out-domain")


@dataclass(frozen=True)
class DemoScale:
    """Sizes of one demo flavour (``default``: the 10-minute CPU study; ``full``: larger and slower; ``tiny``: the
    test suite's)."""

    name: str
    # synthetic DomainNet
    n_classes: int
    n_held_out: int
    train_per_class: int
    test_per_class: int
    base_per_class: int
    base_extra_classes: int
    image_size: int
    # CLIP training
    model: str
    epochs: int
    # SAE
    sae_epochs: int
    sae_lr: float
    sae_batch: int
    # embeddings
    umap: bool
    umap_per_domain: int
    # circuits
    circuit_id_classes: int  # ID classes analysed besides every held-out class
    circuit_samples: int
    circuit_steps: int


SCALES: dict[str, DemoScale] = {
    "default": DemoScale("default", n_classes=12, n_held_out=4, train_per_class=40, test_per_class=40,
                         base_per_class=40, base_extra_classes=8, image_size=64, model="RN-tiny", epochs=12,
                         sae_epochs=400, sae_lr=1e-3, sae_batch=512, umap=True, umap_per_domain=2000,
                         circuit_id_classes=4, circuit_samples=15, circuit_steps=10),
    "full": DemoScale("full", n_classes=24, n_held_out=8, train_per_class=60, test_per_class=40,
                      base_per_class=60, base_extra_classes=16, image_size=64, model="RN-small", epochs=20,
                      sae_epochs=400, sae_lr=1e-3, sae_batch=1024, umap=True, umap_per_domain=2000,
                      circuit_id_classes=8, circuit_samples=30, circuit_steps=10),
    "tiny": DemoScale("tiny", n_classes=8, n_held_out=4, train_per_class=6, test_per_class=4,
                      base_per_class=6, base_extra_classes=2, image_size=64, model="RN-tiny", epochs=1,
                      sae_epochs=20, sae_lr=1e-3, sae_batch=64, umap=False, umap_per_domain=50,
                      circuit_id_classes=1, circuit_samples=4, circuit_steps=2),
}


@dataclass
class DemoConfig:
    """Options of ``clipgen demo`` (written into ``OUT/demo.json`` and ``OUT/config.json``)."""

    out: Path = Path("demo-out")
    test_domain: str = "sketch"
    seed: int = 0
    full: bool = False
    scale: str | None = None  # overrides --full: "default", "full" or "tiny" (the test suite's)
    device: str = "auto"
    highlight: str = dn.DEFAULT_HIGHLIGHT
    progress: bool = True
    force: bool = False  # redo every stage

    def resolved_scale(self) -> DemoScale:
        name = self.scale or ("full" if self.full else "default")
        if name not in SCALES:
            raise ConfigFieldError("scale", f"unknown scale {name!r} (one of {', '.join(SCALES)})")
        return SCALES[name]


@dataclass
class StageRecord:
    key: str
    seconds: float
    outputs: dict[str, Any] = field(default_factory=dict)
    finished: str = ""


@dataclass
class DemoResult:
    out: Path
    device: str
    stages: dict[str, StageRecord]
    skipped: list[str]
    report_md: Path
    report_html: Path
    seconds: float


def _key(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def describe_device(device: Any) -> str:
    """A line naming the device the demo runs on."""
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


class _State:
    """``OUT/demo.json``: the settings and, per finished stage, its key, time and outputs."""

    def __init__(self, out: Path, header: dict[str, Any], force: bool):
        self.path = out / STATE_FILE
        self.header = header
        self.stages: dict[str, StageRecord] = {}
        if self.path.is_file() and not force:
            try:
                old = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                old = {}
            if old.get("state_version") == STATE_VERSION:
                self.stages = {k: StageRecord(**v) for k, v in old.get("stages", {}).items()}

    def done(self, name: str, key: str) -> bool:
        rec = self.stages.get(name)
        return rec is not None and rec.key == key

    def record(self, name: str, rec: StageRecord) -> None:
        from clipgen.artifacts import write_json_atomic

        self.stages[name] = rec
        write_json_atomic(self.path, {"state_version": STATE_VERSION, **self.header,
                                      "stages": {k: asdict(v) for k, v in self.stages.items()}})


# ---------------------------------------------------------------------------------------------------------------
# the demo


class Demo:
    """The demo's folders and stages; :func:`run_demo` runs them in order."""

    def __init__(self, cfg: DemoConfig):
        from clipgen.devices import resolve_device

        self.cfg = cfg
        self.scale = cfg.resolved_scale()
        self.test_domain = dn.parse_test_domain(cfg.test_domain, field="test_domain")
        self.highlight = dn.parse_domains([cfg.highlight], field="highlight")[0]
        self.device = resolve_device(cfg.device)
        self.device_line = describe_device(self.device)
        self.out = Path(cfg.out).resolve()
        self.data = self.out / "data"
        self.mixtures = self.out / "mixtures"
        self.runs = self.out / "runs"
        self.stores = self.out / "stores"

    # -- naming --------------------------------------------------------------------------------------------------
    def run_name(self, setup: str) -> str:
        from clipgen.training.grid import run_name

        return run_name(setup, None if setup == "natural-only" else self.test_domain, self.cfg.seed)

    def run_dir(self, setup: str) -> Path:
        return self.runs / self.run_name(setup)

    def store(self, setup: str, split: str) -> Path:
        return self.stores / f"{self.run_name(setup)}-{split}.h5"

    @property
    def device_arg(self) -> str:
        return str(self.device)

    # -- stages --------------------------------------------------------------------------------------------------
    def stage_data(self) -> dict[str, Any]:
        from clipgen.data.captions import CaptionConfig, run_captions
        from clipgen.data.synth import SynthConfig, run_synth

        s = self.scale
        synth = SynthConfig(out=self.data, n_classes=s.n_classes, n_held_out=s.n_held_out,
                            train_per_class=s.train_per_class, test_per_class=s.test_per_class,
                            base_per_class=s.base_per_class, base_extra_classes=s.base_extra_classes,
                            image_size=s.image_size, seed=self.cfg.seed, force=True)
        res = run_synth(synth, progress=self.cfg.progress)
        run_captions(CaptionConfig(root=self.data, force=True), progress=self.cfg.progress)
        return {"root": str(self.data), "contact_sheet": str(res.contact_sheet)}

    def stage_mixtures(self) -> dict[str, Any]:
        from clipgen.data.mixtures import MixturesConfig, run_mixtures

        cfg = MixturesConfig(root=self.data, out=self.mixtures, setups=list(SETUPS), test_domains=[self.test_domain],
                             base=self.data / "base_train.tsv", base_val=self.data / "base_val.tsv",
                             seed=self.cfg.seed, force=True)
        if self.mixtures.exists():
            shutil.rmtree(self.mixtures)
        run_mixtures(cfg, progress=self.cfg.progress)
        return {"index": str(self.mixtures / "mixtures.json")}

    def train_parallelism(self) -> tuple[int, int | None]:
        """``(runs trained side by side, CPU threads per run)``. On a GPU the runs train one after another. On a CPU
        they train side by side with the cores split between them: a tiny model gains little from a second thread
        (measured on 2 cores by ``benchmarks/train.py --side-by-side``: two 1-thread runs side by side finish
        1.55-1.68x sooner than the same two runs one after the other)."""
        if self.device.type != "cpu":
            return 1, None
        cores = os.cpu_count() or 1
        parallel = max(1, min(len(SETUPS), cores))
        return parallel, max(1, cores // parallel)

    def stage_train(self) -> dict[str, Any]:
        from concurrent.futures import ThreadPoolExecutor

        from clipgen.progress import make_progress
        from clipgen.runs import list_checkpoints
        from clipgen.training.clip import ClipTrainConfig, run_train_clip
        from clipgen.training.grid import TrainGridConfig, plan_grid

        s = self.scale
        grid = TrainGridConfig(index=self.mixtures, logs=self.runs, preset="synthetic", setups=list(SETUPS),
                          test_domains=[self.test_domain], seeds=[self.cfg.seed], no_val=True, model=s.model,
                          epochs=s.epochs)
        tasks = plan_grid(grid)
        parallel, threads = self.train_parallelism()

        def train(task):
            return run_train_clip(ClipTrainConfig(train=Path(task.train), logs=self.runs, name=task.name,
                                                  preset="synthetic", model=s.model, epochs=s.epochs,
                                                  seed=self.cfg.seed, device=self.device.type, resume=True,
                                                  threads=threads, log="quiet"))

        runs = {}
        with make_progress(disable=not self.cfg.progress) as bar, ThreadPoolExecutor(parallel) as pool:
            bars = {t.name: bar.add_task(f"training {t.name}", total=s.epochs) for t in tasks}
            futures = {t.setup: (t, pool.submit(train, t)) for t in tasks}
            while not all(f.done() for _, f in futures.values()):
                for t, _ in futures.values():
                    done = [e for e in list_checkpoints(t.run_dir) if e > 0] if Path(t.run_dir).is_dir() else []
                    bar.update(bars[t.name], completed=max(done, default=0))
                time.sleep(0.5)
            for setup, (t, f) in futures.items():
                res = f.result()  # a failed run raises here
                bar.update(bars[t.name], completed=s.epochs)
                runs[setup] = {"run_dir": str(res.run_dir), "epochs": res.epochs}
        return {"runs": runs, "parallel": parallel, "threads_per_run": threads}

    def stage_eval(self) -> dict[str, Any]:
        from clipgen.evaluation.summary import SummaryConfig, run_summary
        from clipgen.evaluation.zeroshot_eval import ZeroShotConfig, run_zero_shot

        results = {}
        for setup in SETUPS:
            o = run_zero_shot(ZeroShotConfig(data_root=self.data, model_dir=self.run_dir(setup), epochs="all",
                                             test_domain=self.test_domain, device=self.device_arg,
                                             progress=self.cfg.progress))
            results[setup] = str(Path(o.out_dir) / "results.json")
        summary = run_summary(SummaryConfig(inputs=[self.runs], out=self.out / "eval-summary", force=True))
        return {"results": results, "summary": str(summary.out_dir)}

    def stage_extract(self) -> dict[str, Any]:
        from clipgen.extraction import ExtractConfig, run_extract

        stores = {}
        for setup in ANALYSED:
            for split, layers in (("test", "all"), ("train", "embedding")):
                path = self.store(setup, split)
                run_extract(ExtractConfig(out=path, model_dir=self.run_dir(setup), data=self.data, split=split,
                                          domains="all", layers=layers, device=self.device_arg, resume=True,
                                          text=split == "test"), progress=self.cfg.progress)
                stores[f"{setup}/{split}"] = str(path)
        return {"stores": stores}

    def cka_subsets(self, store_path: Path) -> tuple[list[str], dict[str, int]]:
        """The class subsets every domain pair has at least 4 classes of (the unbiased HSIC needs 4), and the
        smallest class count of each subset over the pairs."""
        from itertools import combinations

        from clipgen.analysis.cka import subset_classes
        from clipgen.analysis.selection import present_labels, resolve_held_out, store_domain_names
        from clipgen.store import open_store

        with open_store(store_path) as st:
            present = present_labels(st, store_domain_names(st))
            held = resolve_held_out(st, None)
        smallest = {}
        for subset in ("all", "id", "ood"):
            counts = [len(subset_classes(np.intersect1d(present[a], present[b]), subset, held))
                      for a, b in combinations(present, 2)]
            smallest[subset] = min(counts)
        return [s for s, n in smallest.items() if n >= 4], smallest

    def stage_cka(self) -> dict[str, Any]:
        from clipgen.analysis.cka import CKAConfig
        from clipgen.analysis.cka_sweep import run_cka

        store = self.store("cg-high", "test")
        subsets, smallest = self.cka_subsets(store)
        out = self.out / "cka" / self.run_name("cg-high")
        run_cka(CKAConfig(store=store, out=out, subsets=subsets, highlight=self.highlight, force=True),
                progress=self.cfg.progress)
        return {"out": str(out), "subsets": subsets, "fewest_classes": smallest}

    def stage_embeddings(self) -> dict[str, Any]:
        from clipgen.analysis.embeddings import EmbeddingsConfig, run_embeddings

        out = self.out / "embeddings" / self.run_name("cg-high")
        run_embeddings(EmbeddingsConfig(store=self.store("cg-high", "test"), out=out, highlight=self.highlight,
                                        per_domain=self.scale.umap_per_domain, umap=self.scale.umap, force=True),
                       progress=self.cfg.progress)
        return {"out": str(out)}

    def stage_sae(self) -> dict[str, Any]:
        from clipgen.analysis.feature_sharing import FeatureSharingConfig, run_feature_sharing
        from clipgen.analysis.sae import SAETrainConfig, run_train_sae
        from clipgen.analysis.sae_names import SaeNamesConfig, run_sae_names

        outs = {}
        for setup in ANALYSED:
            out = self.out / "sae" / self.run_name(setup)
            s = self.scale
            run_train_sae(SAETrainConfig(stores=[str(self.store(setup, "train"))], out=str(out), layer="embedding",
                                         epochs=s.sae_epochs, lr=s.sae_lr, batch_size=s.sae_batch, seed=self.cfg.seed,
                                         device=self.device_arg), resume=True, progress=self.cfg.progress)
            # names from the built-in vocabulary; the features below are labelled with them
            run_sae_names(SaeNamesConfig(sae=str(out), device=self.device_arg, force=True))
            feats = out / "features"
            run_feature_sharing(FeatureSharingConfig(store=str(self.store(setup, "test")), sae=str(out),
                                                     out=str(feats), test_domain=self.test_domain,
                                                     device=self.device_arg, force=True),
                                progress=self.cfg.progress)
            outs[setup] = {"sae": str(out), "names": str(out / "names"), "features": str(feats)}
        return outs


    def classes(self) -> list[tuple[int, bool]]:
        """``(label, held out)`` of every class of the synthetic data (its ``classes.tsv``), in label order."""
        import csv

        with open(self.data / "classes.tsv", encoding="utf-8", newline="") as f:
            return sorted((int(r["label"]), r["held_out"] == "1") for r in csv.DictReader(f, delimiter="\t"))

    def circuit_labels(self) -> list[int]:
        """Every held-out class and the first ``circuit_id_classes`` other classes (label order)."""
        held = [lab for lab, h in self.classes() if h]
        other = [lab for lab, h in self.classes() if not h][: self.scale.circuit_id_classes]
        return sorted(held + other)

    def circuits_dir(self) -> Path:
        return self.out / "circuits" / self.run_name("cg-high")

    def stage_circuits(self) -> dict[str, Any]:
        from clipgen.circuits.compute import CircuitsConfig, run_circuits
        from clipgen.circuits.similarity import (
            CircuitSimilarityConfig,
            NodeSimilarityConfig,
            PlotConfig,
            run_circuit_similarity,
            run_node_similarity,
            run_plot,
        )

        base = self.circuits_dir()
        path = base / "circuits.h5"
        labels = self.circuit_labels()
        s = self.scale
        run_circuits(CircuitsConfig(out=path, model_dir=self.run_dir("cg-high"), data=self.data,
                                        classes=",".join(map(str, labels)), samples_per_class=s.circuit_samples,
                                        steps=s.circuit_steps, device=self.device_arg), progress=self.cfg.progress)
        nodes = run_node_similarity(NodeSimilarityConfig(circuits=path, out=base / "nodes", highlight=self.highlight,
                                                         force=True), progress=self.cfg.progress)
        sim = run_circuit_similarity(CircuitSimilarityConfig(circuits=path, out=base / "similarity",
                                                             highlight=self.highlight, force=True),
                                     progress=self.cfg.progress)
        held = [lab for lab, h in self.classes() if h and lab in labels]
        plot_label = held[0] if held else labels[0]
        plots = run_plot(PlotConfig(circuits=path, domain=self.test_domain, class_name=str(plot_label),
                                    out=base / "plot", force=True))
        return {"circuits": str(path), "classes": labels, "nodes": str(nodes), "similarity": str(sim),
                "plot": [str(p) for p in plots], "plot_class": plot_label}

    def outputs(self, stage: str) -> list[Path]:
        """What a stage writes: removed before the stage runs again with other inputs or settings."""
        names = [self.run_name(s) for s in ANALYSED]
        return {
            "data": [self.data],
            "mixtures": [self.mixtures],
            "train": [self.runs],
            "eval": [self.out / "eval-summary", *[self.run_dir(s) / "eval" for s in SETUPS]],
            "extract": [self.stores],
            "cka": [self.out / "cka"],
            "embeddings": [self.out / "embeddings"],
            "sae": [self.out / "sae" / n for n in names],
            "circuits": [self.out / "circuits"],
        }[stage]


# ---------------------------------------------------------------------------------------------------------------

def _stage_plan(demo: Demo) -> list[tuple[str, Callable[[], dict[str, Any]], list[Any]]]:
    """``(name, function, key parts)`` in order: the settings each stage's outputs depend on. A stage's key also
    includes the key of the stage it reads from (:data:`DEPENDS`), so a change reruns exactly what it affects."""
    s, c = demo.scale, demo.cfg
    data_key = [s.n_classes, s.n_held_out, s.train_per_class, s.test_per_class, s.base_per_class,
                s.base_extra_classes, s.image_size, c.seed]
    return [
        ("data", demo.stage_data, data_key),
        ("mixtures", demo.stage_mixtures, [demo.test_domain]),
        ("train", demo.stage_train, [s.model, s.epochs, demo.device.type]),
        ("eval", demo.stage_eval, []),
        ("extract", demo.stage_extract, []),
        ("cka", demo.stage_cka, [demo.highlight]),
        ("embeddings", demo.stage_embeddings, [demo.highlight, s.umap, s.umap_per_domain]),
        ("sae", demo.stage_sae, [s.sae_epochs, s.sae_lr, s.sae_batch]),
        ("circuits", demo.stage_circuits, [s.circuit_id_classes, s.circuit_samples, s.circuit_steps,
                                           demo.highlight, demo.test_domain]),
    ]


#: Which earlier stage's key each stage depends on (the analyses depend on extract, not on each other).
DEPENDS = {"data": None, "mixtures": "data", "train": "mixtures", "eval": "train", "extract": "train",
           "cka": "extract", "embeddings": "extract", "sae": "extract", "circuits": "train"}


def run_demo(cfg: DemoConfig) -> DemoResult:
    """Run (or continue) the demo in ``cfg.out`` and write the report."""
    from clipgen import __version__
    from clipgen.artifacts import utc_now, write_config
    from clipgen.progress import console
    from clipgen.report import ReportConfig, run_report

    t_start = time.perf_counter()
    demo = Demo(cfg)
    demo.out.mkdir(parents=True, exist_ok=True)
    device_line = demo.device_line
    header = {"clipgen_version": __version__, "config": {k: str(v) if isinstance(v, Path) else v
                                                         for k, v in asdict(cfg).items()},
              "scale": asdict(demo.scale), "device": device_line}
    state = _State(demo.out, header, cfg.force)
    write_config(demo.out, "demo", cfg)
    console.print(f"[bold]clipgen demo[/] ({demo.scale.name}): test domain {demo.test_domain}, seed {cfg.seed}, "
                  f"output {demo.out}")
    console.print(f"device: {device_line}")
    plan = _stage_plan(demo)
    keys: dict[str, str] = {}
    skipped: list[str] = []
    for i, (name, fn, parts) in enumerate(plan, 1):
        dep = DEPENDS[name]
        key = _key(name, parts, keys.get(dep) if dep else None)
        keys[name] = key
        if state.done(name, key):
            console.print(f"[{i}/{len(plan)}] {name}: done earlier ({state.stages[name].seconds:.0f} s), skipped")
            skipped.append(name)
            continue
        console.print(f"[bold][{i}/{len(plan)}] {name}[/]")
        if cfg.force or name in state.stages:  # --force, or finished earlier with other inputs: start afresh
            for path in demo.outputs(name):
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
            state.stages.pop(name, None)
        t0 = time.perf_counter()
        outputs = fn()
        state.record(name, StageRecord(key, round(time.perf_counter() - t0, 1), outputs, utc_now()))
    console.print("[bold]report[/]")
    total = time.perf_counter() - t_start
    md, html = run_report(ReportConfig(inputs=[demo.out], out=demo.out), invocation_seconds=total)
    console.print(f"demo finished in {total:.0f} s on {device_line}; report in {md} and {html.name}")
    return DemoResult(demo.out, device_line, dict(state.stages), skipped, md, html, total)
