"""What zero-shot and supervised evaluation share: checkpoints to evaluate, run identity, the epoch loop.

:func:`evaluate_checkpoints` evaluates each checkpoint not yet in ``results.json`` (reruns skip finished
epochs, unless the checkpoint file changed since: a retrained run is evaluated again), computes the metrics of
every domain from the top-k predictions a *predictor* returns, and adds the epochs to the results as soon as they
are predicted. The predictor evaluates a *chunk* of checkpoints at once (one pass over the images feeds every
model of the chunk, :func:`plan_chunks`), so an interruption loses at most the chunk in progress.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipgen import domainnet as dn
from clipgen.errors import ClipgenError, ConfigFieldError, file_error
from clipgen.evaluation.metrics import accuracy, domain_metrics, macro_f1, topk_accuracy
from clipgen.evaluation.protocol import EvalImageSet
from clipgen.evaluation.results import LOCK_NAME, EpochResult, ResultsWriter
from clipgen.runs import RunManifest, list_checkpoints, parse_epochs, read_manifest

_EPOCH_IN_NAME = re.compile(r"epoch_(\d+)")


@dataclass(frozen=True)
class CheckpointRef:
    epoch: int
    path: Path


def resolve_checkpoints(model_dir: str | Path | None, epochs: str, checkpoints: Sequence[str | Path] = (),
                        model: str | None = None, kind: str = "clip") -> tuple[RunManifest | None, list[CheckpointRef]]:
    """The checkpoints to evaluate: ``--model-dir RUN_DIR --epochs SPEC``, or explicit files with ``--model``."""
    if model_dir is not None and checkpoints:
        raise ConfigFieldError("model_dir", "pass either --model-dir RUN_DIR or checkpoint files, not both")
    if model_dir is not None:
        manifest = read_manifest(model_dir)
        if manifest.kind != kind:
            other = "supervised" if manifest.kind == "supervised" else "zero-shot"
            raise ConfigFieldError("model_dir", f"{model_dir} is a {manifest.kind} run; evaluate it with "
                                                f"'clipgen eval {other}'")
        cks = list_checkpoints(model_dir)
        if not cks:
            raise ConfigFieldError("model_dir", f"{model_dir} has no checkpoints/epoch_N.pt files")
        return manifest, [CheckpointRef(e, cks[e]) for e in parse_epochs(epochs, list(cks))]
    if not checkpoints:
        raise ConfigFieldError("model_dir", "pass --model-dir RUN_DIR, or checkpoint files together with --model NAME")
    if model is None:
        raise ConfigFieldError("model", "explicit checkpoint files need --model NAME (the architecture); a clipgen run "
                                        "directory names it itself: pass --model-dir RUN_DIR instead")
    refs: dict[int, CheckpointRef] = {}
    for p in checkpoints:
        p = Path(p)
        if not p.is_file():
            raise file_error(p, "checkpoint not found")
        m = _EPOCH_IN_NAME.search(p.name)
        if m is None:
            raise file_error(p, "cannot tell the epoch from the file name (name it epoch_N.pt)")
        e = int(m.group(1))
        if e in refs:
            raise file_error(p, f"epoch {e} given twice (also {refs[e].path})")
        refs[e] = CheckpointRef(e, p)
    return None, [refs[e] for e in sorted(refs)]


def run_info(manifest: RunManifest | None, model_dir: str | Path | None, model: str | None,
             checkpoints: Sequence[CheckpointRef]) -> dict[str, Any]:
    """The run's identity, copied into results.json so summaries never parse file names."""
    if manifest is not None:
        mix = manifest.mixture or {}
        return {
            "name": manifest.name, "dir": str(Path(model_dir).resolve()), "kind": manifest.kind,
            "model": manifest.model, "seed": manifest.seed, "preset": manifest.preset,
            "setup": mix.get("setup"), "mixture_test_domain": mix.get("test_domain"), "mixture": manifest.mixture,
        }
    first = checkpoints[0].path.resolve()
    run_dir = first.parent.parent if first.parent.name == "checkpoints" else first.parent
    return {"name": run_dir.name, "dir": str(run_dir), "kind": None, "model": model, "seed": None, "preset": None,
            "setup": None, "mixture_test_domain": None, "mixture": None}


def default_test_domain(manifest: RunManifest | None, test_domain: str | None) -> str:
    if test_domain:
        return dn.parse_test_domain(test_domain)
    mix = (manifest.mixture or {}) if manifest is not None else {}
    if mix.get("test_domain"):
        return str(mix["test_domain"])
    raise ConfigFieldError("test_domain", "required: the run's mixture names no test domain (natural-only runs serve "
                                          f"every test domain: {', '.join(dn.TEST_DOMAINS)})")


def default_out_dir(out: str | Path | None, model_dir: str | Path | None, kind: str, test_domain: str) -> Path:
    """``--out``, else ``RUN_DIR/eval/<kind>/<test domain>``."""
    if out is not None:
        return Path(out)
    if model_dir is None:
        raise ConfigFieldError("out", "required with explicit checkpoint files")
    return Path(model_dir) / "eval" / kind / test_domain


def class_header(image_set: EvalImageSet) -> dict[str, Any]:
    return {"count": len(image_set.class_labels), "labels": image_set.class_labels,
            "names": image_set.class_names, "folders": image_set.class_folders}


@dataclass
class Prediction:
    """What a predictor returns for one checkpoint."""

    topk: np.ndarray  # (N, k) DomainNet labels, best first; -1 rows for images skipped as unreadable
    checkpoint: dict[str, Any]  # sha256, features, precision, device, ... (path and seconds are added)
    imagenet_topk: np.ndarray | None = None


#: ``predict(chunk, progress)``: the predictions of every checkpoint of ``chunk``, in order.
Predictor = Callable[[list[CheckpointRef], Any], list[Prediction]]


def checkpoint_bytes(path: Path) -> int:
    """Bytes of the weights of a checkpoint (its state dict's tensors): what its model takes on the device."""
    from clipgen.runs import load_state_dict

    return sum(t.numel() * t.element_size() for t in load_state_dict(path).values() if hasattr(t, "numel"))


def open_images(path: str | Path | None, records: Sequence[Any], on_error: str) -> tuple[Any, str | None]:
    """``(open image cache or None, its resolved path or None)`` for ``--images``; a cache that lacks one of
    ``records`` is refused here, before any model runs (its preprocessing is checked against each model's)."""
    if path is None:
        return None, None
    from clipgen.data.image_cache import open_cache

    cache = open_cache(path)
    try:
        cache.rows_of(records, on_error)
    except BaseException:
        cache.close()
        raise
    return cache, str(Path(path).resolve())


@contextlib.contextmanager
def opened_images(path: str | Path | None, records: Sequence[Any], on_error: str) -> Iterator[tuple[Any, str | None]]:
    """:func:`open_images` for the block: the cache is closed when the block ends."""
    cache, resolved = open_images(path, records, on_error)
    try:
        yield cache, resolved
    finally:
        if cache is not None:
            cache.close()


def chunk_planner(per_checkpoint: bool, memory_gb: float) -> Callable[[list[CheckpointRef]], list[list[CheckpointRef]]]:
    """The ``plan`` of :func:`evaluate_checkpoints`: chunks of checkpoints whose weights (the size of the first
    checkpoint file each) fit in ``memory_gb`` GiB, or one checkpoint per chunk with ``per_checkpoint``."""

    def plan(todo: list[CheckpointRef]) -> list[list[CheckpointRef]]:
        if per_checkpoint:
            return plan_chunks(todo, 1, memory_gb, per_checkpoint=True)
        return plan_chunks(todo, checkpoint_bytes(todo[0].path), memory_gb)

    return plan


def plan_chunks(refs: Sequence[CheckpointRef], model_bytes: int, memory_gb: float,
                per_checkpoint: bool = False) -> list[list[CheckpointRef]]:
    """Consecutive chunks of ``refs`` whose models (``model_bytes`` each) fit in ``memory_gb`` GiB together: one
    pass over the images evaluates a chunk. ``per_checkpoint``: one checkpoint per chunk (a pass per checkpoint)."""
    size = 1 if per_checkpoint else max(1, int(memory_gb * 2**30 // max(1, model_bytes)))
    refs = list(refs)
    return [refs[i:i + size] for i in range(0, len(refs), size)]


@dataclass
class EvalOutcome:
    out_dir: Path
    results: dict[str, Any] | None
    evaluated: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # already in results.json


def epoch_metrics(image_set: EvalImageSet, held_out: Sequence[int], topk: np.ndarray) -> dict[str, dict[str, Any]]:
    """Metrics of every evaluated domain from one checkpoint's predictions (unreadable images excluded)."""
    topk = np.asarray(topk)
    ok = topk[:, 0] >= 0
    out = {}
    for d in image_set.domains:
        m = (image_set.domain_ids == dn.DOMAINS.index(d)) & ok
        out[d] = domain_metrics(image_set.labels[m], topk[m], held_out, image_set.class_labels)
    return out


def imagenet_metrics(labels: np.ndarray, topk: np.ndarray) -> dict[str, float | None]:
    """ImageNet-val top-1, top-k and macro-F1 (over the classes present: all 1000 on the full val set, where this
    equals the published ``f1_score(average="macro")``)."""
    return {"acc": accuracy(labels, topk[:, 0]), "top5": topk_accuracy(labels, topk),
            "macro_f1": macro_f1(labels, topk[:, 0])}


def checkpoint_stamp(path: Path) -> dict[str, int]:
    """Size and modification time of a checkpoint file: a cheap test that it is still the one evaluated."""
    st = Path(path).stat()
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def changed_epochs(doc: dict[str, Any] | None, refs: Sequence[CheckpointRef]) -> list[int]:
    """Epochs of ``refs`` that ``doc`` (a results.json) lists although their checkpoint file is no longer the one
    evaluated (a retrained run): same size and modification time, or else the same sha256, counts as unchanged."""
    from clipgen.artifacts import sha256_file

    recs = {int(c["epoch"]): c for c in (doc or {}).get("checkpoints", []) if isinstance(c, dict) and "epoch" in c}
    out = []
    for r in refs:
        c = recs.get(r.epoch)
        if c is None or not r.path.is_file():
            continue
        stamp = checkpoint_stamp(r.path)
        if all(c.get(k) == v for k, v in stamp.items()):
            continue
        if c.get("sha256") and c["sha256"] == sha256_file(r.path):
            continue
        out.append(r.epoch)
    return out


def evaluate_checkpoints(out_dir: Path, header: dict[str, Any], image_set: EvalImageSet, held_out: Sequence[int],
                         refs: Sequence[CheckpointRef], predict: Predictor, *,
                         imagenet_labels: np.ndarray | None = None, force: bool = False, progress: bool = True,
                         plan: Callable[[list[CheckpointRef]], list[list[CheckpointRef]]] | None = None
                         ) -> EvalOutcome:
    """Evaluate the checkpoints of ``refs`` that ``out_dir/results.json`` lacks, in the chunks of ``plan(todo)``
    (default: one checkpoint per chunk); each chunk's epochs are added to the results when it finishes."""
    from clipgen.progress import console, make_progress

    writer = ResultsWriter(out_dir, header, records_paths=image_set.rel_paths, labels=image_set.labels,
                           domain_ids=image_set.domain_ids, imagenet_labels=imagenet_labels, force=force)
    done = set(writer.done_epochs())
    changed = set(changed_epochs(writer.load() if done else None, [r for r in refs if r.epoch in done]))
    todo = [r for r in refs if r.epoch not in done or r.epoch in changed]
    outcome = EvalOutcome(out_dir, None, [], [r.epoch for r in refs if r.epoch in done and r.epoch not in changed])
    if changed:
        console.print(f"{out_dir}: the checkpoint(s) of epoch(s) {', '.join(map(str, sorted(changed)))} changed "
                      "since they were evaluated; evaluating them again", markup=False, highlight=False)
    if outcome.skipped:
        console.print(f"[dim]{out_dir}: epoch(s) {', '.join(map(str, outcome.skipped))} already evaluated; "
                      f"skipping (--force re-evaluates)[/]")
    with make_progress(disable=not progress) as bar:
        task = bar.add_task(f"{header['kind']} {header['test_domain']}", total=len(todo))
        for chunk in (plan(todo) if plan is not None and todo else [[r] for r in todo]):
            t0 = time.perf_counter()
            preds = predict(chunk, bar)
            seconds = (time.perf_counter() - t0) / len(chunk)
            for ref, pred in zip(chunk, preds, strict=True):
                if pred.topk.shape[0] != len(image_set):
                    raise ClipgenError(f"internal: {pred.topk.shape[0]} predictions for {len(image_set)} images")
                metrics = epoch_metrics(image_set, held_out, pred.topk)
                in_metrics = None
                if imagenet_labels is not None and pred.imagenet_topk is not None:
                    itk = np.asarray(pred.imagenet_topk)
                    ok = itk[:, 0] >= 0
                    in_metrics = imagenet_metrics(imagenet_labels[ok], itk[ok])
                info = {"path": str(ref.path.resolve()), **checkpoint_stamp(ref.path), **pred.checkpoint,
                        "seconds": round(seconds, 3), "chunk": len(chunk),
                        "skipped_images": int(np.sum(pred.topk[:, 0] < 0))}
                outcome.results = writer.add(EpochResult(ref.epoch, info, pred.topk, metrics, pred.imagenet_topk,
                                                         in_metrics))
                outcome.evaluated.append(ref.epoch)
                bar.advance(task)
    if outcome.results is None and writer.path.exists():
        from clipgen.evaluation.results import read_results

        outcome.results = read_results(writer.path)
    if outcome.results is not None:
        from clipgen.evaluation.summary import write_accuracy_figure

        write_accuracy_figure(out_dir, outcome.results)
    return outcome


@contextlib.contextmanager
def results_dir(out_dir: Path) -> Iterator[Path]:
    """Create the output folder of an evaluation for the block; if the block fails and the folder did not exist
    before, remove it again when nothing was committed to it (no folder left holding only a lock file)."""
    from clipgen.artifacts import check_writable

    out_dir = Path(out_dir)
    check_writable(out_dir, "out")
    made = [d for d in (out_dir, *out_dir.parents) if not d.exists()]  # folders this run creates, deepest first
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield out_dir
    except BaseException:
        with contextlib.suppress(OSError):
            if made and [p.name for p in out_dir.iterdir()] == [LOCK_NAME]:
                (out_dir / LOCK_NAME).unlink()
            for d in made:
                d.rmdir()  # only if empty
        raise
