"""A rehearsal of the study at the paper's cardinality: 345 classes, DomainNet's split sizes, an ImageNet-Captions
sized base dataset, every stage but long training, driven through the real ``clipgen`` CLI.

    python benchmarks/paper_scale.py --fraction 0.02 --out /tmp/rehearsal       # a minute or two per try
    python benchmarks/paper_scale.py --out /scratch/rehearsal --json full.json  # the full size (see the estimate)
    python benchmarks/paper_scale.py --fraction 0.02 --memory-check            # also at F/4: memory growth

Each stage is one function returning the ``clipgen`` command it runs (a subprocess), what it writes and how many
images or rows it handles; the runner measures wall time, rate, peak resident memory (``os.wait4``: the largest
process of the stage, its workers included) and the bytes it wrote. A finished stage leaves a record in
``OUT/stages/<name>.json`` and is skipped when the command is run again, so a long run continues where it stopped.
Without ``--keep`` the working folder is removed once every requested stage is done. docs/paper-scale.md explains
the stages, the measurements and the extrapolation to the paper's grid.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from clipgen.data.synth import DOMAINNET_SPLIT_SIZES, IMAGENET_CAPTIONS_ROWS  # noqa: E402

N_CLASSES = 345
TEST_DOMAIN = "quickdraw"
MODEL = "RN-tiny"
EPOCHS = 10  # checkpoints evaluated (copies of one random-weight checkpoint)
IMAGE_SIZE = 32  # the rendered images and the model's input (RN-tiny at 32 px: a quarter of its 64 px cost)
BASE_IMAGES_PER_CLASS = 8  # rendered base images per class; the base rows cycle over them
DISTINCT_IMAGES = 8  # rendered images per (domain, split, class); the other files are hard links to them
SAE_EPOCHS = 3
CIRCUIT_CLASSES = ("axe", "banana", "lion")  # x 6 domains = 18 (class, domain) entries
CIRCUIT_SAMPLES = 20
#: Stages whose peak memory should not grow with the number of rows (checked by --memory-check).
MEMORY_STAGES = ("cache", "eval", "extract", "train-store", "cka", "sae", "embeddings")
MEMORY_LIMIT_GB = 8.0

#: Seconds per unit of work, measured on the development machine (2 shared cores, load 5-10, one thread per stage)
#: at --fraction 0.02: the start-up estimate of a run (see docs/paper-scale.md), with ``FIXED_S`` per stage
#: (start-up, model load, the 345-class text classifier).
DEV_SECONDS = {"render": 1 / 400, "link": 1 / 20_000, "caption_row": 1 / 12_000, "mixture_row": 1 / 128_000,
               "extract_image": 1 / 200, "eval_image": 1 / 3_800, "store_row": 1 / 12_000, "cka_row": 1 / 2_000,
               "sae_sample": 1 / 3_800, "umap_point": 1 / 125, "circuit_image": 1 / 25, "cache_image": 1 / 600}
FIXED_S = {"data": 3, "captions": 1, "mixtures": 1, "run": 10, "cache": 5, "eval": 8, "extract": 20,
           "train-store": 0.5,
           "cka": 8, "sae": 4, "embeddings": 40, "circuits": 6}


# ---------------------------------------------------------------------------------------------------------------
# sizes


def scaled(n: int, fraction: float, floor: int = 0) -> int:
    """``n`` scaled by ``fraction`` (at least ``floor``; exactly ``n`` at fraction 1)."""
    return n if fraction == 1 else max(floor, round(n * fraction))


def split_sizes(fraction: float, n_classes: int = N_CLASSES) -> dict[str, list[int]]:
    """DomainNet's split sizes scaled by ``fraction``, with at least one image per class and split (the painting
    test split lacks one class, as in the real dataset)."""
    return {d: [scaled(tr, fraction, n_classes), scaled(te, fraction, n_classes - (d == "painting"))]
            for d, (tr, te) in DOMAINNET_SPLIT_SIZES.items()}


def base_rows(fraction: float, n_classes: int = N_CLASSES) -> int:
    return scaled(IMAGENET_CAPTIONS_ROWS, fraction, 2 * n_classes)


@dataclass
class Plan:
    """What one rehearsal handles (counts of images and rows), derived from the fraction."""

    fraction: float
    n_classes: int = N_CLASSES
    sizes: dict[str, list[int]] = field(default_factory=dict)
    base_rows: int = 0

    def __post_init__(self):
        self.sizes = self.sizes or split_sizes(self.fraction, self.n_classes)
        self.base_rows = self.base_rows or base_rows(self.fraction, self.n_classes)

    @property
    def train_images(self) -> int:
        return sum(v[0] for v in self.sizes.values())

    @property
    def test_images(self) -> int:
        return sum(v[1] for v in self.sizes.values())

    @property
    def base_images(self) -> int:
        return self.n_classes * BASE_IMAGES_PER_CLASS

    def rendered_images(self, distinct: int | None) -> int:
        """Images ``data synth --distinct-images`` renders (the others are links), base images included."""
        n = self.base_images
        for domain, sizes in self.sizes.items():
            for split, total in zip(("train", "test"), sizes, strict=True):
                slots = self.n_classes - (domain == "painting" and split == "test")  # the quirk's class: none
                q, r = divmod(total, slots)
                per = [q + 1] * r + [q] * (slots - r)
                n += sum(min(p, distinct) if distinct else p for p in per)
        return n

    @property
    def eval_images(self) -> int:
        return EPOCHS * (self.sizes[TEST_DOMAIN][1] + self.sizes["real"][1])

    def units(self, stage: str) -> tuple[int, str]:
        """How many images or rows ``stage`` handles, and their name."""
        return {
            "data": (self.train_images + self.test_images + self.base_images, "images"),
            "captions": (self.train_images + self.test_images, "rows"),
            "mixtures": (0, "rows"),  # counted from the written TSVs
            "run": (EPOCHS, "checkpoints"),
            "cache": (self.test_images, "images"),
            "eval": (self.eval_images, "images"),
            "extract": (self.test_images, "images"),
            "train-store": (self.train_images, "rows"),
            "cka": (self.test_images, "rows"),
            "sae": (SAE_EPOCHS * self.train_images, "samples"),
            "embeddings": (self.test_images, "rows"),
            "circuits": (len(CIRCUIT_CLASSES) * 6, "entries"),
        }[stage]


# ---------------------------------------------------------------------------------------------------------------
# stages: each returns (argv, outputs)


@dataclass
class Ctx:
    out: Path
    plan: Plan
    workers: int
    eval_forward: bool = False
    distinct_images: int = DISTINCT_IMAGES

    @property
    def data(self) -> Path:
        return self.out / "data"

    @property
    def run(self) -> Path:
        return self.out / "run"

    @property
    def stores(self) -> Path:
        return self.out / "stores"


def clipgen(*args: object) -> list[str]:
    return [sys.executable, "-m", "clipgen.cli.main", *map(str, args)]


def python(code: str, *args: object) -> list[str]:
    return [sys.executable, "-c", code, *map(str, args)]


def stage_data(c: Ctx):
    spec = ",".join(f"{d}={tr}/{te}" for d, (tr, te) in c.plan.sizes.items())
    argv = clipgen("data", "synth", "--out", c.data, "--n-classes", c.plan.n_classes,
                   "--n-held-out", min(15, max(1, c.plan.n_classes // 3)), "--split-sizes", spec,
                   "--base-rows", c.plan.base_rows, "--base-per-class", BASE_IMAGES_PER_CLASS,
                   "--base-extra-classes", 0, "--image-size", IMAGE_SIZE, "--fast", "--workers", c.workers,
                   "--force")
    if c.distinct_images:
        argv += ["--distinct-images", str(c.distinct_images)]
    return argv, [c.data]


def stage_captions(c: Ctx):
    return clipgen("data", "captions", "--root", c.data, "--force"), [c.data / "captions", c.data / "aligned-captions"]


def stage_mixtures(c: Ctx):
    return clipgen("data", "mixtures", "--root", c.data, "--paper", "--base", c.data / "base_train.tsv",
                   "--base-val", c.data / "base_val.tsv", "--out", c.out / "mixtures", "--force"), [c.out / "mixtures"]


MAKE_RUN = """
import shutil, sys
from pathlib import Path
import torch
from clipgen.models.registry import create_model, model_config
from clipgen.runs import RunManifest, write_manifest
run, name, epochs, size = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cfg = model_config(name)
cfg["vision_cfg"]["image_size"] = size
(run / "checkpoints").mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
model, _, _ = create_model(name, model_config_override=cfg)
first = run / "checkpoints" / "epoch_1.pt"
torch.save({"epoch": 1, "state_dict": model.state_dict()}, first)
for e in range(2, epochs + 1):
    shutil.copyfile(first, run / "checkpoints" / f"epoch_{e}.pt")
write_manifest(run, RunManifest(kind="clip", name=run.name, model=name, model_config=cfg))
"""


def stage_run(c: Ctx):
    return python(MAKE_RUN, c.run, MODEL, EPOCHS, IMAGE_SIZE), [c.run / "checkpoints", c.run / "clipgen-run.json"]


def stage_eval(c: Ctx):
    """Every checkpoint on the test domain's and real's test split. By default the image embeddings come from the
    extract stage's store (the checkpoints are copies of the one it was extracted with), so the stage measures the
    per-checkpoint work at 345 classes (text classifier, metrics, predictions) and the image forward pass is
    measured once, by extract; ``--eval-forward`` runs the forward pass for every checkpoint instead, reading the
    images once per run from the cache stage's image cache (decode-once evaluation)."""
    out = c.out / "eval"
    extra = (["--images", c.stores / "test-images.h5"] if c.eval_forward else ["--store", c.stores / "test.h5"])
    return clipgen("eval", "zero-shot", "--model-dir", c.run, "--data-root", c.data, "--test-domain", TEST_DOMAIN,
                   "--epochs", "all", "--out", out, "--workers", c.workers, "--no-progress", *extra), [out]


def stage_cache(c: Ctx):
    """The six domains' test images decoded once into an image cache at the model's input size (what the SLURM
    scripts build once per domain and split); extract and circuits read it instead of the JPEGs."""
    path = c.stores / "test-images.h5"
    return clipgen("data", "cache", "--data", c.data, "--split", "test", "--domains", "all", "--model-dir", c.run,
                   "--out", path, "--workers", c.workers, "--no-progress"), [path]


def stage_extract(c: Ctx):
    path = c.stores / "test.h5"
    return clipgen("extract", "--model-dir", c.run, "--data", c.data, "--split", "test", "--layer", "all",
                   "--images", c.stores / "test-images.h5", "--out", path, "--workers", c.workers,
                   "--no-progress"), [path]


TRAIN_STORE = """
import sys
import numpy as np
from clipgen import domainnet as dn
from clipgen.store.writer import build_store_from_arrays
root, out, width = sys.argv[1], sys.argv[2], int(sys.argv[3])
samples = [s for d in dn.DOMAINS for s in dn.read_split(root, d, "train")]
rng = np.random.default_rng(0)
emb = np.empty((len(samples), width), np.float32)
for i in range(0, len(samples), 65536):  # unit-norm rows, block by block
    x = rng.standard_normal((min(65536, len(samples) - i), width), dtype=np.float32)
    emb[i:i + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
build_store_from_arrays(out, paths=[s.path for s in samples], labels=[s.label for s in samples],
                        domains=[s.domain for s in samples], splits=["train"] * len(samples),
                        layers={"embedding": emb}, provenance={"source": "paper_scale rehearsal (random rows)"})
"""


def stage_train_store(c: Ctx):
    """The SAE's training store: a store of the DomainNet train split's row count written by the store writer
    (random unit-norm rows of the model's embedding width) instead of extracting ~410k images."""
    path = c.stores / "train.h5"
    return python(TRAIN_STORE, c.data, path, 64), [path]


def stage_cka(c: Ctx):
    out = c.out / "cka"
    return clipgen("cka", c.stores / "test.h5", "--out", out, "--force"), [out]


def stage_sae(c: Ctx):
    out = c.out / "sae"
    return clipgen("sae", "train", c.stores / "train.h5", "--out", out, "--epochs", SAE_EPOCHS, "--device", "cpu",
                   "--force"), [out]


def stage_embeddings(c: Ctx):
    out = c.out / "embeddings"
    return clipgen("embeddings", c.stores / "test.h5", "--out", out, "--force"), [out]


def stage_circuits(c: Ctx):
    path = c.out / "circuits" / "circuits.h5"
    return clipgen("circuits", "compute", "--model-dir", c.run, "--data", c.data, "--out", path,
                   "--images", c.stores / "test-images.h5",
                   "--classes", ",".join(CIRCUIT_CLASSES), "--samples-per-class", CIRCUIT_SAMPLES,
                   "--device", "cpu", "--no-progress"), [path.parent]


#: The stages in order.
STAGES: list[tuple[str, Callable[[Ctx], tuple[list[str], list[Path]]]]] = [
    ("data", stage_data),
    ("captions", stage_captions),
    ("mixtures", stage_mixtures),
    ("run", stage_run),
    ("cache", stage_cache),
    ("extract", stage_extract),
    ("eval", stage_eval),
    ("train-store", stage_train_store),
    ("cka", stage_cka),
    ("sae", stage_sae),
    ("embeddings", stage_embeddings),
    ("circuits", stage_circuits),
]
STAGE_NAMES = [n for n, _ in STAGES]


# ---------------------------------------------------------------------------------------------------------------
# running and accounting


@dataclass
class Measured:
    stage: str
    seconds: float
    units: int
    unit: str
    peak_rss_mb: float
    bytes_written: int
    command: list[str]

    @property
    def rate(self) -> float:
        return self.units / self.seconds if self.seconds > 0 else 0.0


def disk_bytes(paths: list[Path]) -> int:
    """Bytes on disk under ``paths``: allocated blocks (so many small files count what they cost), each inode once
    (hard links are free)."""
    total, seen = 0, set()
    files = [p for p in paths if p.is_file()]
    for p in paths:
        if p.is_dir():
            files += [Path(dirpath, f) for dirpath, _, names in os.walk(p) for f in names]
    for f in files:
        with contextlib.suppress(OSError):
            st = os.lstat(f)
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def run_measured(argv: list[str], log: Path, env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """Run ``argv``; returns (wall seconds, peak RSS of its largest process in MB, exit code). Output goes to
    ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as f:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT / "benchmarks",
                                env=env or child_env())
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return seconds, usage.ru_maxrss / 1024, proc.returncode  # ru_maxrss is in KiB on Linux


#: CPU threads of each stage's torch/OpenMP/numba pool (``--threads``). On a machine whose cores are shared, one
#: thread is the safe choice: an oversubscribed OpenMP pool waits on descheduled threads at every barrier (measured
#: on the 2-core development machine under load: RN-tiny forward 418 img/s on 1 thread, 70 img/s on 2).
THREADS = {"n": 1}


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    if THREADS["n"]:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
            env[var] = str(THREADS["n"])
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "benchmarks"), env.get("PYTHONPATH", "")])
    env.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "numba"))
    return env


def count_rows(folder: Path) -> int:
    n = 0
    for p in folder.glob("*.tsv"):
        with open(p, "rb") as f:
            n += sum(1 for _ in f)
    return n


def run_stage(ctx: Ctx, name: str, fn, *, echo: Callable[[str], None] = print) -> Measured:
    record = ctx.out / "stages" / f"{name}.json"
    if record.is_file():
        m = Measured(**json.loads(record.read_text()))
        echo(f"{name:12s} done earlier: {fmt(m)}")
        return m
    argv, outputs = fn(ctx)
    seconds, rss, rc = run_measured(argv, ctx.out / "logs" / f"{name}.log")
    if rc != 0:
        tail = (ctx.out / "logs" / f"{name}.log").read_text(errors="replace").strip().splitlines()[-5:]
        raise SystemExit(f"error: stage {name} failed (exit {rc}); log {ctx.out / 'logs' / f'{name}.log'}:\n"
                         + "\n".join(tail))
    units, unit = ctx.plan.units(name)
    if name == "mixtures":
        units = count_rows(ctx.out / "mixtures")
    m = Measured(name, round(seconds, 2), units, unit, round(rss, 1), disk_bytes(outputs), argv)
    record.parent.mkdir(parents=True, exist_ok=True)
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(m), indent=1))
    tmp.replace(record)
    echo(f"{name:12s} {fmt(m)}")
    return m


def fmt(m: Measured) -> str:
    return (f"{m.seconds:8.1f} s  {m.units:>10,} {m.unit:11s} {m.rate:>10,.0f}/s  peak {m.peak_rss_mb:7,.0f} MB  "
            f"wrote {m.bytes_written / 2**20:8,.1f} MiB")


def estimate_seconds(plan: Plan, stages: list[str], distinct_images: int = DISTINCT_IMAGES) -> float:
    """Wall time of ``stages`` at ``plan``'s size on the development machine, from :data:`DEV_SECONDS`."""
    k = DEV_SECONDS
    rendered = plan.rendered_images(distinct_images)
    files = plan.train_images + plan.test_images + plan.base_images
    work = {
        "data": rendered * k["render"] + (files - rendered) * k["link"],
        "captions": (plan.train_images + plan.test_images) * k["caption_row"],
        "mixtures": 20 * (plan.train_images + plan.base_rows) * k["mixture_row"],  # ~20 rows per train+base row
        "run": 0.0,
        "cache": plan.test_images * k["cache_image"],
        "extract": plan.test_images * k["extract_image"],
        "eval": plan.eval_images * k["eval_image"],
        "train-store": plan.train_images * k["store_row"],
        "cka": plan.test_images * k["cka_row"],
        "sae": plan.units("sae")[0] * k["sae_sample"],
        "embeddings": min(plan.test_images, 6 * 2000) * k["umap_point"],
        "circuits": len(CIRCUIT_CLASSES) * 6 * CIRCUIT_SAMPLES * k["circuit_image"],
    }
    return sum(FIXED_S[s] + work[s] for s in stages)


def run_rehearsal(out: Path, fraction: float, stages: list[str], *, workers: int = 2, n_classes: int = N_CLASSES,
                  eval_forward: bool = False, distinct_images: int = DISTINCT_IMAGES,
                  echo: Callable[[str], None] = print) -> dict[str, Measured]:
    plan = Plan(fraction, n_classes)
    ctx = Ctx(out, plan, workers, eval_forward, distinct_images)
    out.mkdir(parents=True, exist_ok=True)
    echo(f"rehearsal at fraction {fraction}: {n_classes} classes, {plan.train_images:,} train + "
         f"{plan.test_images:,} test images, {plan.base_rows:,} base rows; output {out}")
    echo(f"estimated wall time on the 2-core development machine: "
         f"{estimate_seconds(plan, stages, distinct_images) / 60:.1f} min")
    fns = dict(STAGES)
    return {name: run_stage(ctx, name, fns[name], echo=echo) for name in STAGE_NAMES if name in stages}


# ---------------------------------------------------------------------------------------------------------------
# memory growth and extrapolation


def memory_growth(small: dict[str, Measured], large: dict[str, Measured], full_units: Plan) -> list[dict]:
    """Per memory-sensitive stage: MB per extra unit between the two sizes, the peak extrapolated to full size,
    and a flag when it grows roughly with the rows (over 1 GB at full size) or would exceed the limit."""
    rows = []
    for s in MEMORY_STAGES:
        if s not in small or s not in large:
            continue
        a, b = small[s], large[s]
        du = b.units - a.units
        per_unit = (b.peak_rss_mb - a.peak_rss_mb) / du if du > 0 else 0.0
        growth_full = max(per_unit, 0.0) * full_units.units(s)[0]
        full = b.peak_rss_mb + max(per_unit, 0.0) * (full_units.units(s)[0] - b.units)
        rows.append({"stage": s, "peak_small_mb": a.peak_rss_mb, "peak_large_mb": b.peak_rss_mb,
                     "kb_per_unit": round(per_unit * 1024, 3), "full_scale_peak_mb": round(full),
                     "grows_with_n": growth_full > 1024, "over_limit": full > MEMORY_LIMIT_GB * 1024})
    return rows


#: Assumptions of the extrapolation (not measured here).
ASSUMED = {
    "rn50_forward_img_s": 9_500,  # RN50 image tower forward, bf16, one H100
    "rn50_train_img_s": 3_000,  # RN50 CLIP training step (image + text tower, forward + backward), one H100
    "jpeg_decode_img_s_per_core": 176,  # decode + resize of a 400x300 JPEG, one core
    "gpus_per_node": 4,
    "cores_per_node": 32,
    "runs": 49,
    "epochs": 33,
}


def extrapolate(measured: dict[str, Measured], fraction: float, mixtures_json: Path | None) -> list[dict]:
    """The paper's grid on one GPU node, from the measured CPU stages and :data:`ASSUMED`."""
    a = ASSUMED
    full = Plan(1.0)
    rows = []
    train_rows = None
    if mixtures_json and mixtures_json.is_file():
        infos = list(json.loads(mixtures_json.read_text()).get("mixtures", {}).values())
        totals = [m["counts"].get("total", 0) for m in infos if m.get("split") == "train"]
        if totals:
            train_rows = sum(totals) / len(totals) / fraction  # mean mixture size, scaled to full
    if train_rows is None:
        train_rows = IMAGENET_CAPTIONS_ROWS + 170_000
    samples = a["runs"] * a["epochs"] * train_rows
    gpu_rate = a["rn50_train_img_s"] * a["gpus_per_node"]
    dec_rate = a["jpeg_decode_img_s_per_core"] * a["cores_per_node"]
    rows.append({"what": f"training: {a['runs']} runs x {a['epochs']} epochs x {train_rows:,.0f} rows",
                 "hours": samples / min(gpu_rate, dec_rate) / 3600,
                 "basis": f"assumed: {a['rn50_train_img_s']:,} img/s per GPU x {a['gpus_per_node']} GPUs, decode "
                          f"{a['jpeg_decode_img_s_per_core']} img/s per core x {a['cores_per_node']} cores "
                          f"(the slower bounds); mixture size measured"})
    per_run = full.sizes[TEST_DOMAIN][1] + full.sizes["real"][1]  # quickdraw; other test domains are smaller
    ev = a["runs"] * (a["epochs"] + 1) * per_run
    fwd = a["rn50_forward_img_s"] * a["gpus_per_node"]
    per_epoch_decode = ev / min(fwd, dec_rate) / 3600
    cache_build = full.test_images / dec_rate / 3600  # the test splits of the six domains, decoded once
    rows.append({"what": f"evaluation: every epoch (+ epoch 0) of {a['runs']} runs on test-domain + real test "
                         f"(<= {per_run:,} images), from image caches decoded once",
                 "hours": cache_build + ev / fwd / 3600,
                 "basis": f"assumed forward and decode rates: {cache_build:.2f} h to build the caches of the six test "
                          f"splits once, then forward-bound; decoding every epoch again (the per-checkpoint loop) "
                          f"would take {per_epoch_decode:.1f} h"})
    stores = full.test_images
    rows.append({"what": f"stores: all layers of {stores:,} test images, per analysed model",
                 "hours": stores / min(fwd, dec_rate) / 3600,
                 "basis": "assumed forward and decode rates (decode-bound)"})
    for s in ("cka", "sae", "embeddings", "circuits"):
        if s in measured:
            note = (f"measured {measured[s].seconds:.0f} s at fraction {fraction} on this machine" +
                    ("" if fraction >= 1 else "; full size from the per-unit costs measured on the 2-core "
                                              "development machine"))
            if s == "sae":
                note += f" ({SAE_EPOCHS} epochs; the paper's 200 epochs x 9.7M rows run on a GPU)"
            if s == "circuits":
                note += f" ({len(CIRCUIT_CLASSES) * 6} entries of RN-tiny; RN50 x 2,070 entries: see docs/circuits.md)"
            hours = measured[s].seconds / 3600 if fraction >= 1 else estimate_seconds(full, [s]) / 3600
            rows.append({"what": f"{s} (one model, CPU)", "hours": hours, "basis": note})
    return rows


# ---------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--fraction", type=float, default=1.0, help="Scale every count by F (default 1: full size).")
    ap.add_argument("--out", type=Path, default=Path("paper-scale-out"), help="Working folder.")
    ap.add_argument("--stages", default="all", help=f"Comma-separated stages (default all): {','.join(STAGE_NAMES)}")
    ap.add_argument("--keep", action="store_true", help="Keep the working folder when done.")
    ap.add_argument("--json", type=Path, help="Write the measurements to this file.")
    ap.add_argument("--memory-check", action="store_true",
                    help="Also run the memory-sensitive stages at F/4 and flag peaks that grow with the rows.")
    ap.add_argument("--workers", type=int, default=2, help="Rendering / image-decoding processes.")
    ap.add_argument("--eval-forward", action="store_true",
                    help="Evaluate with a forward pass per checkpoint instead of the extract stage's store.")
    ap.add_argument("--distinct-images", type=int, default=DISTINCT_IMAGES,
                    help="Rendered images per domain, split and class; the other files are hard links to them "
                         f"(0: render every image) (default {DISTINCT_IMAGES}).")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads per stage (OMP/MKL/numba; 0: the libraries' defaults) (default 1).")
    ap.add_argument("--n-classes", type=int, default=N_CLASSES, help=argparse.SUPPRESS)  # the tests' tiny runs
    args = ap.parse_args(argv)
    if not 0 < args.fraction <= 1:
        print("error: --fraction must be in (0, 1]", file=sys.stderr)
        return 2
    stages = STAGE_NAMES if args.stages == "all" else [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGE_NAMES]
    if unknown:
        print(f"error: --stages: unknown stage {unknown[0]!r} (one of {', '.join(STAGE_NAMES)})", file=sys.stderr)
        return 2
    out = args.out.resolve()
    THREADS["n"] = args.threads
    measured = run_rehearsal(out / "main", args.fraction, stages, workers=args.workers, n_classes=args.n_classes,
                             eval_forward=args.eval_forward, distinct_images=args.distinct_images)
    report: dict = {"fraction": args.fraction, "n_classes": args.n_classes, "cpu_count": os.cpu_count(),
                    "threads": args.threads, "load_average": os.getloadavg(),
                    "stages": {k: asdict(v) | {"rate": v.rate} for k, v in measured.items()}}
    if args.memory_check:
        q = args.fraction / 4
        needed = sorted({"data", "run", *[s for s in MEMORY_STAGES if s in stages],
                         *(["captions", "mixtures"] if "mixtures" in stages else [])}, key=STAGE_NAMES.index)
        print(f"\nmemory check: the same stages at fraction {q}")
        small = run_rehearsal(out / "quarter", q, needed, workers=args.workers, n_classes=args.n_classes,
                              eval_forward=args.eval_forward, distinct_images=args.distinct_images)
        growth = memory_growth(small, measured, Plan(1.0, args.n_classes))
        report["memory"] = growth
        print(f"\n{'stage':12s} {'peak F/4':>9s} {'peak F':>9s} {'KB/unit':>8s} {'full-size peak':>15s}")
        for g in growth:
            flag = " GROWS WITH N" if g["grows_with_n"] else ""
            flag += f" OVER {MEMORY_LIMIT_GB:.0f} GB" if g["over_limit"] else ""
            print(f"{g['stage']:12s} {g['peak_small_mb']:8,.0f}M {g['peak_large_mb']:8,.0f}M "
                  f"{g['kb_per_unit']:8.2f} {g['full_scale_peak_mb']:13,.0f}M{flag}")
    rows = extrapolate(measured, args.fraction, out / "main" / "mixtures" / "mixtures.json")
    report["extrapolation"] = {"assumed": ASSUMED, "rows": rows}
    print("\nthe paper's grid on one GPU node (estimate):")
    for r in rows:
        print(f"  {r['hours']:8.2f} h  {r['what']}  [{r['basis']}]")
    print(f"  {sum(r['hours'] for r in rows):8.2f} h  in all")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if not args.keep and set(stages) == set(STAGE_NAMES):  # only what the script made, never --out's other files
        for sub in ("main", "quarter"):
            shutil.rmtree(out / sub, ignore_errors=True)
        with contextlib.suppress(OSError):
            out.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
