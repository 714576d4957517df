"""``clipgen circuits compute``: the circuit of every (domain, class) of a model, into a circuits file.

For each planned (domain, class): up to ``samples_per_class`` DomainNet *test* images of that class and domain (a
seeded draw, independent per entry), one batch through :func:`clipgen.circuits.attribution.compute_circuit` (IG
node scores of every chain layer, node selection, edge matrices between consecutive layers), written as one whole
entry of the circuits file (:mod:`clipgen.circuits.store`). Interrupted runs resume at the next missing entry;
``shard="i/n"`` computes a contiguous part of the entry list for a SLURM array task.

Order of the entries: class by class (the held-out classes first, then the others, each by label), and for each
class every domain in the order c i p q r s. A finished prefix therefore holds complete classes, which the
similarity analyses need (the published script goes domain by domain).

The image draw: the test images of (domain, class) in split-file order; ``numpy.random.default_rng([seed,
domain id, label]).permutation(n)[:k]`` chooses ``k = min(samples_per_class, n)`` of them, kept in split-file
order. The published script instead shuffles each class with Python's ``random`` (seed 42) in one stream over
all domains and classes, so its choice for one (domain, class) depends on everything computed before it.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipgen import __version__
from clipgen import domainnet as dn
from clipgen.circuits.store import (
    CircuitsHeader,
    assemble,
    fingerprint_diff,
    parts_dir,
    parts_on_disk,
    plan_sha256,
    read_header,
    verified_entries,
    write_entry,
    write_header,
)
from clipgen.errors import ClipgenError, ConfigFieldError, file_error
from clipgen.store.testing import SimulatedCrash, crash_point

SPLIT = "test"
SAMPLING = ("numpy default_rng([seed, domain id, label]).permutation(n)[:k] of the (domain, class) test images in "
            "split-file order, kept in split-file order")


@dataclass
class CircuitsConfig:
    """``clipgen circuits compute``: the resolved options (written beside the file as ``OUT.config.json`` when the
    file is complete)."""

    out: Path
    model_dir: Path | None  # the run directory; or None with ``checkpoint`` + ``model``
    data: Path  # DomainNet root (real or synthetic) with {domain}_test.txt split files
    epoch: int | None = None
    checkpoint: Path | None = None  # a checkpoint file not trained by clipgen (open_clip, OpenAI format), with model
    model: str | None = None  # the architecture of ``checkpoint`` (e.g. RN50)
    classes: str = "all"  # all | ood | id | comma list of names or labels
    domains: str = "all"
    samples_per_class: int = 50
    seed: int = 42
    steps: int = 10
    rule: str = "left"  # left (the paper's) | midpoint
    node_fraction: float = 0.1
    nodes: str = "channels"  # channels | heads (ViTs: their attention heads)
    templates: str = "paper"
    device: str = "auto"
    precision: str = "auto"  # auto: fp32 on CPU, bf16 autocast on GPU
    memory_gb: float | None = None  # working-memory budget for the batched passes (default: half the free GPU
    # memory, 2 GiB on CPU)
    shard: str | None = None  # "i/n" (0-based) or "auto" (SLURM array / torchrun environment)
    images: Path | None = None  # an image cache ('clipgen data cache') holding the test images
    force: bool = False


@dataclass
class CircuitsRun:
    path: Path
    planned: int
    computed: int
    already_complete: bool = False
    resumed_from: int = 0
    fingerprint: str = ""
    seconds: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class EntryImages:
    domain: str
    label: int
    paths: list[str]
    lines: list[int]


# -- what to compute -------------------------------------------------------------------------------------------

def _check_settings(cfg: CircuitsConfig) -> None:
    from clipgen.circuits.attribution import IGConfig, n_selected
    from clipgen.circuits.chain import NODE_KINDS

    IGConfig(cfg.steps, cfg.rule)
    if cfg.nodes not in NODE_KINDS:
        raise ConfigFieldError("nodes", f"unknown node kind {cfg.nodes!r} (one of {', '.join(NODE_KINDS)})")
    n_selected(10, cfg.node_fraction)
    if cfg.samples_per_class < 1:
        raise ConfigFieldError("samples_per_class", f"must be at least 1, not {cfg.samples_per_class}")
    if cfg.memory_gb is not None and not cfg.memory_gb > 0:
        raise ConfigFieldError("memory_gb", f"must be positive, not {cfg.memory_gb}")


def read_test_splits(root: Path, domains: Sequence[str]) -> dict[str, list[dn.Sample]]:
    root = Path(root)
    if not root.is_dir():
        raise ConfigFieldError("data", f"{root} is not a directory")
    return {d: dn.read_split(root, d, SPLIT) for d in domains}


def parse_classes(spec: str, folders: dict[int, str], held_out: Sequence[int],
                  field: str = "classes") -> tuple[list[int], bool]:
    """``(labels, explicit)``: ``all`` / ``ood`` / ``id`` / a comma list of names or labels, held-out first.

    ``explicit`` (a list, or ``ood``) means every class must have images in every domain."""
    held = [h for h in held_out if h in folders]
    s = (spec or "").strip()
    low = s.lower()
    if low == "all":
        labels, explicit = sorted(folders), False
    elif low == "ood":
        if not held:
            raise ConfigFieldError(field, "'ood': the data has none of the held-out classes")
        labels, explicit = list(held), True
    elif low == "id":
        labels, explicit = [lab for lab in sorted(folders) if lab not in held], False
        if not labels:
            raise ConfigFieldError(field, "'id': every class of the data is held out")
    else:
        by_folder = {f: lab for lab, f in folders.items()}
        labels, explicit = [], True
        for part in [p.strip() for p in s.split(",") if p.strip()]:
            if part.isdigit():
                lab = int(part)
                if not 0 <= lab < dn.NUM_CLASSES:
                    raise ConfigFieldError(field, f"class label {lab} is out of range 0..{dn.NUM_CLASSES - 1}")
                if lab not in folders:
                    raise ConfigFieldError(field, f"class label {lab} ({dn.class_by_label(lab).name}) has no test "
                                                   f"images in the chosen domains")
            else:
                c = dn.class_by_name(part, field)
                if c.folder not in by_folder:
                    raise ConfigFieldError(field, f"class {c.name!r} has no test images in the chosen domains")
                lab = by_folder[c.folder]
            if lab not in labels:
                labels.append(lab)
        if not labels:
            raise ConfigFieldError(field, "no class given (all, ood, id, or a comma list of names or labels)")
    hs = set(held)
    return [lab for lab in labels if lab in hs] + [lab for lab in labels if lab not in hs], explicit


def plan_entries(splits: dict[str, list[dn.Sample]], labels: Sequence[int], explicit: bool,
              root: Path) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """``(plan, absent)``: class-major (domain, label) entries, and the pairs without images (an error when
    ``explicit``)."""
    have = {(d, s.label) for d, ss in splits.items() for s in ss}
    plan, absent = [], []
    for lab in labels:
        for d in splits:
            if (d, lab) in have:
                plan.append((d, lab))
            elif explicit:
                name = dn.class_by_label(lab).name if 0 <= lab < dn.NUM_CLASSES else str(lab)
                raise ConfigFieldError("classes", f"class {name!r} ({lab}) has no test images in {d} "
                                                f"({dn.split_file(root, d, SPLIT)})")
            else:
                absent.append((d, lab))
    if not plan:
        raise ConfigFieldError("classes", "nothing to compute: no (domain, class) with test images")
    return plan, absent


def draw_images(samples: Sequence[dn.Sample], root: Path, domain: str, label: int, k: int,
                seed: int) -> EntryImages:
    """The seeded draw of up to ``k`` test images of (domain, class) (see the module docstring)."""
    mine = [s for s in samples if s.label == label]
    if not mine:
        raise ClipgenError(f"{dn.split_file(root, domain, SPLIT)}: no test images of class {label}")
    rng = np.random.default_rng([int(seed), dn.DOMAINS.index(domain) if domain in dn.DOMAINS else 99, int(label)])
    pick = np.sort(rng.permutation(len(mine))[: min(k, len(mine))])
    chosen = [mine[int(i)] for i in pick]
    root = Path(root).resolve()
    return EntryImages(domain, int(label), [str(root / s.path) for s in chosen], [int(s.line) for s in chosen])


def load_batch(entry: EntryImages, transform, cache: Any = None) -> Any:
    """The model inputs of an entry's images: decoded, or read from an image cache (the same tensors)."""
    import torch

    from clipgen.datasets import load_image

    if cache is not None:
        return cache.load(entry.paths, transform)
    return torch.stack([transform(load_image(p)) for p in entry.paths])


# -- provenance ------------------------------------------------------------------------------------------------

def _settings(cfg: CircuitsConfig, precision: str, n_templates: int, chain=None) -> dict[str, Any]:
    kind = {} if chain is None else {"family": chain.family, "nodes": chain.node_kind}
    return {**kind, "steps": cfg.steps, "rule": cfg.rule, "node_fraction": cfg.node_fraction,
            "samples_per_class": cfg.samples_per_class, "seed": cfg.seed, "sampling": SAMPLING, "split": SPLIT,
            "templates": cfg.templates, "n_templates": n_templates, "precision": precision, "baseline": "zero",
            "metric": "cosine similarity of the image embedding with the true class's template-averaged, "
                      "normalised text embedding (no logit scale)",
            "edge_objective": "MSE(clean downstream channel, recomputed) over images and positions"}


def _provenance(cfg: CircuitsConfig, loaded, root: Path, splits, device, budget: int) -> dict[str, Any]:
    import torch

    from clipgen.artifacts import command_line, sha256_file, utc_now

    files = [dn.split_file(root, d, SPLIT) for d in splits]
    return {
        "model": loaded.model_name,
        "model_config": loaded.model_config,
        "checkpoint": {"path": str(Path(loaded.checkpoint).resolve()), "sha256": sha256_file(loaded.checkpoint)},
        "epoch": loaded.epoch,
        "run_dir": str(Path(cfg.model_dir).resolve()) if cfg.model_dir else None,
        "data": {"root": str(Path(root).resolve()), "split": SPLIT,
                 "sources": [{"domain": d, "sha256": sha256_file(p)} for d, p in zip(splits, files, strict=True)],
                 "files": [str(Path(p).resolve()) for p in files]},
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "memory_budget_bytes": int(budget),
        "clipgen_version": __version__,
        "torch_version": torch.__version__,
        "command_line": command_line(),
        "started": utc_now(),
    }


def _existing(out: Path, header: CircuitsHeader, force: bool) -> tuple[CircuitsHeader, bool] | None:
    """What to do with an existing output: ``(its header, complete)`` to resume or skip, None to start fresh."""
    import shutil

    pdir = parts_dir(out)
    if not out.exists():
        if pdir.exists():
            shutil.rmtree(pdir)  # leftovers without a header: nothing to resume
        return None
    try:
        old = read_header(out)
        complete = old.complete
    except ClipgenError:
        if not force:
            raise file_error(out, "exists and is not a readable circuits file; pass --force to overwrite it") from None
        old, complete = None, False
    if force or old is None:
        out.unlink(missing_ok=True)
        shutil.rmtree(pdir, ignore_errors=True)
        return None
    if old.fingerprint != header.fingerprint:
        diff = fingerprint_diff(old, header)
        raise file_error(out, f"fingerprint mismatch: it was computed with a different {', '.join(diff) or 'setup'}; "
                              f"pass --force to start over (or choose another --out)")
    if old.plan != header.plan or (old.shard or {}).get("plan_sha256") != (header.shard or {}).get("plan_sha256"):
        raise file_error(out, f"was computed for a different list of (domain, class) entries ({len(old.plan)} "
                              f"entries, this command plans {len(header.plan)}); pass --force to start over (or "
                              f"choose another --out)")
    return old, complete


# -- the run ---------------------------------------------------------------------------------------------------

def run_circuits(cfg: CircuitsConfig, progress: bool = True, *, note: Callable[[str], None] | None = None,
                 crash_after: int | None = None) -> CircuitsRun:
    """Compute (or resume, or finish) a circuits file and return where it is.

    The file is written under an exclusive writer lock (:mod:`clipgen.locks`); temporary files a killed final
    assembly left beside it are removed first; a run that fails before finishing any entry leaves nothing behind.
    """
    from clipgen.locks import writing_output
    from clipgen.store.shards import parse_shard, shard_path

    _check_settings(cfg)
    shard = parse_shard(cfg.shard)
    out = shard_path(Path(cfg.out), *shard) if shard is not None else Path(cfg.out)
    with writing_output(out, _discard_unstarted, keep=(SimulatedCrash,)):
        return _compute_circuits(cfg, progress, note=note, crash_after=crash_after)


def _discard_unstarted(out: Path) -> None:
    """Remove a circuits file (and its parts folder) that holds no finished entry: nothing to resume."""
    if not parts_on_disk(out):
        with contextlib.suppress(OSError):
            out.unlink(missing_ok=True)
            shutil.rmtree(parts_dir(out), ignore_errors=True)


def _compute_circuits(cfg: CircuitsConfig, progress: bool = True, *, note: Callable[[str], None] | None = None,
                      crash_after: int | None = None) -> CircuitsRun:
    import torch

    from clipgen.artifacts import config_path_for, utc_now, write_config
    from clipgen.circuits.attribution import IGConfig, compute_circuit, default_budget, make_plan
    from clipgen.circuits.chains import make_chain
    from clipgen.datasets import ImageRecord, folders_of
    from clipgen.devices import autocast, resolve_device, resolve_precision
    from clipgen.models.zeroshot_classifier import build_classifier, classnames_from_folders, templates
    from clipgen.progress import make_progress
    from clipgen.runs import load_clip
    from clipgen.store.shards import parse_shard, shard_path, shard_range

    say = note or (lambda _m: None)
    _check_settings(cfg)
    ig = IGConfig(cfg.steps, cfg.rule)
    template_list = templates(cfg.templates)
    shard = parse_shard(cfg.shard)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    root = Path(cfg.data)
    domains = dn.parse_domains(cfg.domains)
    splits = read_test_splits(root, domains)
    records = [ImageRecord(str(root / s.path), s.label, d, SPLIT, s.path) for d, ss in splits.items() for s in ss]
    folders = folders_of(records)
    if cfg.model_dir is None and cfg.checkpoint is None:
        raise ConfigFieldError("model_dir",
                               "missing: the run directory of the model (or --checkpoint FILE --model NAME)")
    loaded = load_clip(cfg.model_dir, cfg.epoch, checkpoint=cfg.checkpoint, model_name=cfg.model, device=device)
    chain = make_chain(loaded.model.visual, loaded.model_name, nodes=cfg.nodes)
    held = dn.run_held_out_labels(getattr(loaded.manifest, "mixture", None), folders)
    labels, explicit = parse_classes(cfg.classes, folders, held)
    plan, absent = plan_entries(splits, labels, explicit, root)
    budget = int(cfg.memory_gb * (1 << 30)) if cfg.memory_gb else default_budget(device)
    names = dict(zip(sorted(folders), classnames_from_folders([folders[k] for k in sorted(folders)]), strict=True))
    classes = {lab: names[lab] for lab in labels}
    full_plan = plan
    shard_info = None
    out = Path(cfg.out)
    if shard is not None:
        i, n = shard
        a, b = shard_range(len(plan), i, n)
        if a == b:
            raise ConfigFieldError("shard", f"shard {i}/{n} of {len(plan)} entries is empty; use fewer shards")
        plan = plan[a:b]
        shard_info = {"index": i, "count": n, "start": a, "stop": b, "total": len(full_plan),
                      "plan_sha256": plan_sha256(full_plan), "full_plan": [[d, lab] for d, lab in full_plan]}
        out = shard_path(out, i, n)
    header = CircuitsHeader(
        provenance=_provenance(cfg, loaded, root, splits, device, budget),
        settings=_settings(cfg, precision, len(template_list), chain),
        layers=[{"name": la.name, "channels": la.channels, "shape": list(la.shape)} for la in chain.layers],
        domains=list(domains), classes=classes, held_out=[h for h in held if h in classes], plan=plan,
        absent=absent, shard=shard_info)
    state = _existing(out, header, cfg.force)
    if state is not None and state[1]:
        say(f"{out}: already complete ({len(state[0].plan)} entries); nothing to do")
        if not config_path_for(out).exists():
            write_config(out, "circuits compute", cfg)
        return CircuitsRun(out, len(plan), 0, already_complete=True, fingerprint=header.fingerprint)
    if state is not None:
        header = state[0]
        header.provenance = dict(header.provenance, resumed=[*header.provenance.get("resumed", []), utc_now()])
        done = verified_entries(out, header)
        say(f"{out}: resuming, {len(done)} of {len(plan)} entries already computed")
    else:
        with torch.no_grad():
            emb = build_classifier(loaded.model, loaded.tokenizer, [classes[lab] for lab in labels], template_list,
                                   device=device)
        header.text = ([int(x) for x in labels], emb.float().cpu().numpy(), template_list)
        write_header(out, header)
        done = set()
    text = {int(lab): torch.as_tensor(e) for lab, e in zip(header.text[0], header.text[1], strict=True)}
    todo = [k for k in plan if k not in done]
    notes: list[str] = []
    for d, lab in todo:
        n_have = sum(1 for s in splits[d] if s.label == lab)
        if n_have < cfg.samples_per_class:
            notes.append(f"{d}/{classes[lab]}: only {n_have} test image(s) (--samples-per-class "
                         f"{cfg.samples_per_class}); using them all")
    for m in notes[:5]:
        say(m)
    if len(notes) > 5:
        say(f"... and {len(notes) - 5} more (domain, class) entries with fewer images (counts are recorded)")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    mem_plan = make_plan(chain, budget)

    def amp():
        return autocast(device, precision)

    run = CircuitsRun(out, len(plan), 0, resumed_from=len(done), fingerprint=header.fingerprint, notes=notes)
    entries = [draw_images(splits[d], root, d, lab, cfg.samples_per_class, cfg.seed) for d, lab in todo]
    cache = None
    if cfg.images is not None:  # checked against every image to be used before any is computed
        from clipgen.datasets import ImageRecord
        from clipgen.evaluation.runner import open_images

        cache, _ = open_images(cfg.images, [ImageRecord(p, -1) for e in entries for p in e.paths], "fail")
    with contextlib.ExitStack() as stack, make_progress(disable=not progress) as bar, \
            ThreadPoolExecutor(max_workers=1) as pool:
        if cache is not None:
            stack.enter_context(cache)
            cache.check_transform(loaded.preprocess)
        task = bar.add_task(f"circuits {out.name}", total=len(plan), completed=len(done))
        nxt = pool.submit(load_batch, entries[0], loaded.preprocess, cache) if entries else None
        for k, entry in enumerate(entries):
            images = nxt.result()
            nxt = (pool.submit(load_batch, entries[k + 1], loaded.preprocess, cache) if k + 1 < len(entries)
                   else None)
            bar.update(task, description=f"circuits {entry.domain}/{classes[entry.label]}")
            t0 = time.perf_counter()
            target = text[entry.label].to(device).reshape(1, -1).repeat(len(images), 1)
            res = compute_circuit(chain, images.to(device), target, ig=ig, node_fraction=cfg.node_fraction,
                                  plan=mem_plan, amp=amp)
            write_entry(out, header, entry.domain, entry.label, res, image_paths=entry.paths, image_line=entry.lines)
            run.seconds.append(time.perf_counter() - t0)
            run.computed += 1
            bar.advance(task)
            crash_point(run.computed, crash_after, "entries")
    assemble(out, header)
    write_config(out, "circuits compute", cfg)
    return run
