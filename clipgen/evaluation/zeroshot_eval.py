"""``clipgen eval zero-shot``: the paper's zero-shot evaluation of a CLIP run over its checkpoints.

For each checkpoint: class text embeddings once (template-averaged, :func:`build_classifier`), image
embeddings once (a forward pass over the test-split images of the test domain and real, or the ``embedding``
layer of a matching activation store; the images are decoded once for all the checkpoints whose models fit in
``memory_gb`` together and each batch is fed to every one of them), cosine-similarity top-k predictions, and
the metrics of :mod:`clipgen.evaluation.metrics` for both domains; optionally 1000-way ImageNet-val accuracy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from clipgen.artifacts import sha256_file, write_config
from clipgen.domainnet import imagenet_classnames
from clipgen.errors import ConfigFieldError
from clipgen.evaluation.protocol import (
    EvalImageSet,
    build_eval_set,
    fingerprint_records,
    imagenet_val_records,
    resolve_held_out,
)
from clipgen.evaluation.runner import (
    CheckpointRef,
    EvalOutcome,
    Prediction,
    chunk_planner,
    class_header,
    default_out_dir,
    default_test_domain,
    evaluate_checkpoints,
    opened_images,
    resolve_checkpoints,
    results_dir,
    run_info,
)
from clipgen.evaluation.zeroshot import predict_topk, topk_many
from clipgen.models.zeroshot_classifier import build_classifier, templates

TOP_K = 5


@dataclass
class StoreHit:
    """Image embeddings (and possibly class text embeddings) of one checkpoint, read from a store."""

    features: Any  # (N, D) float32 torch tensor, NaN rows for images the store skipped
    text: Any  # (K, D) class embeddings in class_labels order, or None (then the model builds them)
    info: dict[str, Any]


def _image_key(path: str) -> str:
    """domain/class_folder/file: the part of an image path that identifies it in any DomainNet root."""
    return "/".join(Path(path).parts[-3:])


def find_stores(paths: Sequence[str | Path], field: str = "stores") -> list[tuple[Path, bool]]:
    """``(store file, named explicitly)`` for every ``--store``: a file as given, a folder searched recursively for
    ``*.h5`` (the part files of extractions in progress excluded)."""
    out: list[tuple[Path, bool]] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            hits = sorted(x for x in p.rglob("*.h5") if not any(q.name.endswith(".parts") for q in x.parents))
            if not hits:
                raise ConfigFieldError(field, f"no *.h5 activation store under {p}")
            out += [(h, False) for h in hits]
        elif p.is_file():
            out.append((p, True))
        else:
            raise ConfigFieldError(field, f"{p} does not exist")
    return list(dict.fromkeys(out))


def store_features(stores: Sequence[Path | tuple[Path, bool]], sha256: str, image_set: EvalImageSet,
                   template_list: Sequence[str], on_error: str = "fail") -> tuple[StoreHit | None, list[str]]:
    """The first store of ``stores`` made from the checkpoint with ``sha256`` that covers every evaluated image.

    Returns ``(hit or None, notes)``; notes say why a store of the same checkpoint was not used. Images are
    matched by ``domain/class_folder/file`` (so a moved DomainNet root still matches) and must carry the same
    label. Images the store skipped as unreadable count as covered only with ``on_error="skip"``. ``stores`` holds
    paths or the pairs of :func:`find_stores`: a file named explicitly that is not a readable, complete store is an
    error; one found in a folder is passed over with a note.
    """
    import torch

    from clipgen.errors import ClipgenError
    from clipgen.store import open_store

    notes: list[str] = []
    for item in stores:
        path, explicit = (item, True) if isinstance(item, (str, Path)) else item
        try:
            st = open_store(path)
        except ClipgenError as e:
            if explicit:
                raise
            notes.append(f"passed over: {e}")
            continue
        with st:
            prov = st.provenance
            if (prov.get("checkpoint") or {}).get("sha256") != sha256:
                continue
            if "embedding" not in st.layers:
                notes.append(f"{path}: same checkpoint but no 'embedding' layer")
                continue
            row_of = {_image_key(p): i for i, p in enumerate(st.samples.paths)}
            skipped = {_image_key(p) for _, p, _ in st.skipped}
            keys = [_image_key(r.path) for r in image_set.records]
            rows = np.array([row_of.get(k, -1) for k in keys], dtype=np.int64)
            missing = [k for k, r in zip(keys, rows, strict=True) if r < 0]
            if missing and (on_error != "skip" or not set(missing) <= skipped):
                notes.append(f"{path}: same checkpoint but {len(missing)} of {len(keys)} evaluated images are "
                             f"missing (first: {missing[0]})")
                continue
            ok = rows >= 0
            if not np.array_equal(st.samples.labels[rows[ok]], image_set.labels[ok]):
                notes.append(f"{path}: same checkpoint but labels differ from the evaluated split files")
                continue
            names = st.class_names
            if names and any(names.get(c, n) != n for c, n in zip(image_set.class_labels, image_set.class_names,
                                                                   strict=True)):
                notes.append(f"{path}: same checkpoint but class names differ from the evaluated data")
                continue
            uniq = np.unique(rows[ok])
            data = st.read_layer("embedding", rows=uniq)
            feats = torch.full((len(keys), data.shape[1]), float("nan"))
            feats[torch.from_numpy(ok)] = torch.from_numpy(data[np.searchsorted(uniq, rows[ok])])
            text = None
            te = st.text_embeddings
            if te is not None and list(te[2]) == list(template_list):
                t_rows = {int(lab): i for i, lab in enumerate(te[0])}
                if all(c in t_rows for c in image_set.class_labels):
                    text = torch.from_numpy(te[1][[t_rows[c] for c in image_set.class_labels]])
            info = {"store": str(Path(path).resolve()), "store_fingerprint": st.fingerprint,
                    "store_precision": prov.get("precision"), "text_from_store": text is not None}
            return StoreHit(feats, text, info), notes
    return None, notes


@dataclass
class ZeroShotConfig:
    """Options of ``clipgen eval zero-shot``."""

    data_root: Path
    model_dir: Path | None = None
    checkpoints: list[Path] = field(default_factory=list)
    model: str | None = None  # with explicit checkpoints
    epochs: str = "all"
    test_domain: str | None = None  # default: the run's mixture test domain
    out: Path | None = None  # default: RUN_DIR/eval/zero-shot/<test domain>
    templates: str = "paper"  # one of TEMPLATE_SETS
    held_out: list[str] | None = None  # default: manifest's mixture, else the paper's 15
    imagenet: Path | None = None
    stores: list[Path] = field(default_factory=list)
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 256
    workers: int | None = None  # None: derived from the CPUs this process may use
    memory_gb: float | None = None  # models of one pass over the images; None: derived from the device
    per_checkpoint: bool = False  # one pass over the images per checkpoint (the old loop; for comparisons)
    images: Path | None = None  # an image cache ('clipgen data cache') of the evaluated images
    on_error: str = "fail"
    force: bool = False
    progress: bool = True


def template_header(name: str) -> dict[str, Any]:
    ts = templates(name)
    return {"classifier": "zero-shot: template-averaged class text embeddings, cosine similarity",
            "templates": name, "n_templates": len(ts),
            "templates_sha256": hashlib.sha256("\n".join(ts).encode()).hexdigest(), "template_list": ts}


def run_zero_shot(cfg: ZeroShotConfig) -> EvalOutcome:
    """Evaluate the checkpoints of ``cfg`` (skipping those already in the output's results.json)."""
    from clipgen.devices import check_memory_gb, resolve_device, resolve_precision, resolve_workers

    method = template_header(cfg.templates)  # an unknown template set is a one-line error
    manifest, refs = resolve_checkpoints(cfg.model_dir, cfg.epochs, cfg.checkpoints, cfg.model, kind="clip")
    test_domain = default_test_domain(manifest, cfg.test_domain)
    out_dir = default_out_dir(cfg.out, cfg.model_dir, "zero-shot", test_domain)
    image_set = build_eval_set(cfg.data_root, test_domain)
    held = resolve_held_out(image_set, cfg.held_out, (manifest.mixture or {}).get("held_out_labels")
                            if manifest is not None else None)
    in_records = imagenet_val_records(cfg.imagenet) if cfg.imagenet is not None else None
    stores = find_stores(cfg.stores)
    seen_notes: set[str] = set()
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device, kind="clip")
    memory_gb = check_memory_gb(cfg.memory_gb, device)
    workers = resolve_workers(cfg.workers)
    header = {
        "kind": "zero-shot",
        "run": run_info(manifest, cfg.model_dir, cfg.model, refs),
        "test_domain": test_domain,
        "domains": list(image_set.domains),
        "data": image_set.describe(),
        "classes": class_header(image_set),
        "held_out": held.describe(),
        "method": method,
        "imagenet": None if in_records is None else {
            "root": str(Path(cfg.imagenet).resolve()), "n_images": len(in_records), "classes": 1000,
            "fingerprint": fingerprint_records(in_records)},
    }
    ts = templates(cfg.templates)

    def predict(chunk: list[CheckpointRef], bar: Any) -> list[Prediction]:
        import torch

        from clipgen.devices import autocast
        from clipgen.progress import console
        from clipgen.runs import load_clip

        shas, hits, loaded, w, w_in = [], [], [], [], []
        hit_topk: dict[int, Any] = {}
        for ref in chunk:
            sha = sha256_file(ref.path)
            hit, notes = store_features(stores, sha, image_set, ts, cfg.on_error) if stores else (None, [])
            for n in notes:
                if n not in seen_notes:
                    seen_notes.add(n)
                    console.print(f"note: {n}", markup=False, highlight=False)
            if stores and hit is None:
                console.print(f"note: no --store holds epoch {ref.epoch}'s embeddings of these images; running the "
                              "model", markup=False, highlight=False)
            lm = None
            if hit is None or hit.text is None or in_records is not None:
                lm = load_clip(cfg.model_dir, ref.epoch, checkpoint=ref.path, model_name=cfg.model, device=device)
            if hit is not None and hit.text is not None:
                w.append(hit.text)
            else:  # the class text embeddings: once per checkpoint
                with autocast(device, precision):
                    w.append(build_classifier(lm.model, lm.tokenizer, image_set.class_names, ts, device=device).cpu())
            if in_records is not None:
                with autocast(device, precision):
                    w_in.append(build_classifier(lm.model, lm.tokenizer, imagenet_classnames(), ts,
                                                 device=device).cpu())
            if hit is not None:  # labels now, so the (N, D) embeddings of the chunk's stores are not all held
                hit_topk[len(hits)] = predict_topk(hit.features, w[-1], image_set.class_labels, TOP_K)
                hit = replace(hit, features=None)
            shas.append(sha)
            hits.append(hit)
            loaded.append(lm)
        # one pass over the images feeds every model of the chunk that needs a forward pass
        fwd = [i for i, h in enumerate(hits) if h is None]
        label = f"epoch {chunk[0].epoch}" if len(chunk) == 1 else f"epochs {chunk[0].epoch}-{chunk[-1].epoch}"
        # top-k labels batch by batch: memory holds (N, k) labels per checkpoint, not (N, D) embeddings
        topk: list[Any] = [hit_topk.get(j) for j in range(len(hits))]
        if fwd:
            for i, t in zip(fwd, topk_many([loaded[i].model for i in fwd], [w[i] for i in fwd],
                                           image_set.class_labels, TOP_K, image_set.records,
                                           loaded[fwd[0]].preprocess, device=device, precision=precision,
                                           batch_size=cfg.batch_size, workers=workers, on_error=cfg.on_error,
                                           progress=bar, description=f"{label} images", images=cache),
                            strict=True):
                topk[i] = t
        in_topk: list[Any] = [None] * len(chunk)
        if in_records is not None:
            in_topk = topk_many([lm.model for lm in loaded], w_in, np.arange(1000), TOP_K, in_records,
                                loaded[0].preprocess, device=device, precision=precision, batch_size=cfg.batch_size,
                                workers=workers, on_error=cfg.on_error, progress=bar,
                                description=f"{label} ImageNet")
        del loaded
        if device.type == "cuda":
            torch.cuda.empty_cache()
        out = []
        for j, hit in enumerate(hits):
            info: dict[str, Any] = {"sha256": shas[j], "features": "forward", "store": None, "precision": precision,
                                    "device": str(device), "image_cache": cache_path if hit is None else None}
            if hit is not None:
                info.update(features="store", precision=hit.info["store_precision"] or "unknown", **hit.info)
            out.append(Prediction(topk[j], info, in_topk[j]))
        return out

    with results_dir(out_dir), opened_images(cfg.images, image_set.records, cfg.on_error) as (cache, cache_path):
        outcome = evaluate_checkpoints(out_dir, header, image_set, held.labels, refs, predict,
                                       imagenet_labels=None if in_records is None else
                                       np.array([r.label for r in in_records]), force=cfg.force,
                                       progress=cfg.progress, plan=chunk_planner(cfg.per_checkpoint, memory_gb))
    write_config(out_dir / "results.json", "eval zero-shot", cfg)
    return outcome
