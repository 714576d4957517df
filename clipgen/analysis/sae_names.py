"""Named SAE concepts: every latent of an SAE on the image embedding gets the vocabulary words nearest to it.

An SAE trained on the ``embedding`` layer (CLIP's L2-normalised image embedding) decodes into the joint
image-text space, so each latent's dictionary vector (row ``i`` of ``W_dec``) can be compared with CLIP text
embeddings, as Discover-then-Name does and the published ``name_concepts.py`` follows:

* each vocabulary term is encoded by the model's text tower and L2-normalised; the published script encodes the
  raw term (template ``{}``), which is the default here; ``--template "a photo of a {}."`` is one option away;
* each dictionary vector is L2-normalised; ``S[i, j] = cos(w_i, t_j)``;
* latent ``i`` is named by the ``top_k`` terms with the largest ``S[i, j]`` (ties by vocabulary order); the
  published script keeps only the best term (``top_k`` 1).

Layers other than ``embedding`` are refused: their dictionary vectors live in the image tower's channel space,
where text embeddings mean nothing. The text embeddings of a vocabulary are cached per (checkpoint sha256,
vocabulary sha256, template) in ``names/text-embeddings/`` beside the SAE run.

The default vocabulary is built from what clipgen ships (offline): the 345 DomainNet class names, the 1,000 ImageNet
class names and the domain terms of the DomainNet captions, without duplicates.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipgen.errors import ClipgenError, ConfigFieldError, file_error

NAMES_FORMAT = "clipgen-sae-names"
NAMES_VERSION = 1
NAMES_DIR = "names"
NAMES_JSON = "names.json"
NAMES_CSV = "names.csv"
CACHE_DIR = "text-embeddings"
DEFAULT_TEMPLATE = "{}"  # the published script encodes the raw term
EMBEDDING_LAYER = "embedding"
CLASS_FIGURE_DIR = "named-latents"
NAMED_LATENTS_JSON = "named-latents.json"


# ---------------------------------------------------------------------------------------------------------------
# Vocabulary


def default_vocabulary() -> list[str]:
    """DomainNet class names, ImageNet class names and the captions' domain terms, first occurrence kept."""
    from importlib import resources

    from clipgen import domainnet as dn

    terms = [c.name for c in dn.class_table()]
    text = resources.files("clipgen.resources").joinpath("imagenet_classnames.txt").read_text(encoding="utf-8")
    terms += [t.strip() for t in text.splitlines() if t.strip()]
    terms += list(dn.GENERIC_TERMS)
    for d in dn.DOMAINS:
        terms += list(dn.DOMAIN_TERMS.get(d, ()))
    return list(dict.fromkeys(terms))


def read_vocabulary(path: str | Path) -> list[str]:
    """One term per line (blank lines and repeats skipped); an empty or unreadable file is a one-line error."""
    p = Path(path)
    if not p.is_file():
        raise ConfigFieldError("vocab", f"{p}: no such file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise file_error(p, f"unreadable vocabulary ({e.__class__.__name__}); expected UTF-8 text, one term per "
                            "line") from None
    terms = list(dict.fromkeys(t.strip() for t in text.splitlines() if t.strip()))
    if not terms:
        raise file_error(p, "the vocabulary is empty (one term per line)")
    return terms


def vocabulary_sha256(terms: list[str]) -> str:
    return hashlib.sha256("\n".join(terms).encode("utf-8")).hexdigest()


def check_template(template: str) -> str:
    if template.count("{}") != 1 or "{" in template.replace("{}", "") or "}" in template.replace("{}", ""):
        raise ConfigFieldError("template", f"{template!r} must contain '{{}}' exactly once (where the term goes)")
    return template


# ---------------------------------------------------------------------------------------------------------------
# The computation


def similarity_matrix(decoder: np.ndarray, text: np.ndarray) -> np.ndarray:
    """``S[i, j] = cos(decoder[i], text[j])`` (float64): latents by terms."""
    d = np.asarray(decoder, dtype=np.float64)
    t = np.asarray(text, dtype=np.float64)
    d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    return d @ t.T


def top_names(sim: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(indices (m, k), similarities (m, k))``: per latent the ``k`` most similar terms, ties by term order."""
    k = min(k, sim.shape[1])
    idx = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(sim, idx, axis=1)


def encode_terms(loaded: Any, terms: list[str], template: str, *, batch_size: int = 256,
                 device: Any = "cpu") -> np.ndarray:
    """L2-normalised text embeddings (float32, terms x d) of ``template.format(term)``."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(terms), batch_size):
            tok = loaded.tokenizer([template.format(t) for t in terms[i:i + batch_size]]).to(device)
            emb = loaded.model.encode_text(tok).float()
            out.append(torch.nn.functional.normalize(emb, dim=-1).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# The command


@dataclass
class SaeNamesConfig:
    """``clipgen sae names``: every option, resolved; written as ``config.json`` beside the names."""

    sae: str  # a 'clipgen sae train' folder, its sae.pt or a checkpoint
    out: str | None = None  # default: SAE_RUN/names
    vocab: str | None = None  # one term per line; None: the built-in vocabulary
    template: str = DEFAULT_TEMPLATE
    top_k: int = 5
    model_dir: str | None = None
    epoch: int | None = None
    checkpoint: str | None = None
    model: str | None = None
    batch_size: int = 256
    device: str = "auto"
    force: bool = False  # replace names made with other settings


@dataclass
class SaeNames:
    out: Path
    terms: list[str]
    indices: np.ndarray  # (m, k) term indices
    similarities: np.ndarray  # (m, k)
    cached: bool  # the text embeddings came from the cache
    already_complete: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    def names(self, latent: int) -> list[str]:
        return [self.terms[j] for j in self.indices[latent]]


def sae_run_dir(sae_path: Path) -> Path:
    p = Path(sae_path)
    if p.is_dir():
        return p
    return p.parent.parent if p.parent.name == "checkpoints" else p.parent


def _store_provenance(info: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The first training store of the SAE and its provenance ({} when the store is gone or unreadable)."""
    stores = (info.get("train_config") or {}).get("stores") or []
    if not stores:
        return None, {}
    path = stores[0]
    if not Path(path).is_file():
        return path, {}
    from clipgen.store import open_store

    try:
        with open_store(path) as st:
            return path, st.provenance
    except ClipgenError:
        return path, {}


def resolve_model(cfg: SaeNamesConfig, info: dict[str, Any], device: Any):
    """The CLIP whose text tower names the latents: the options, else the model recorded in the store the SAE was
    trained on (its run directory and epoch, else its checkpoint file and model name)."""
    from clipgen.runs import load_clip

    if cfg.model_dir or cfg.checkpoint:
        return load_clip(cfg.model_dir, cfg.epoch, checkpoint=cfg.checkpoint, model_name=cfg.model, device=device)
    store, prov = _store_provenance(info)
    ck = (prov.get("checkpoint") or {}).get("path")
    name = (prov.get("model") or {}).get("name")
    run_dir = prov.get("run_dir")
    if run_dir and Path(run_dir).is_dir():
        return load_clip(run_dir, prov.get("epoch"), checkpoint=ck if ck and Path(ck).is_file() else None,
                         device=device)
    if ck and name and Path(ck).is_file():
        return load_clip(checkpoint=ck, model_name=name, device=device)
    where = f"the store it was trained on ({store}) names no model that is still there" if store else \
        "the SAE records no store it was trained on"
    raise ConfigFieldError("model_dir", f"{where}; pass --model-dir RUN_DIR (or --checkpoint FILE --model NAME)")


def _settings(cfg: SaeNamesConfig, sae_sha: str, ck_sha: str, vocab_sha: str) -> dict[str, Any]:
    return {"sae_sha256": sae_sha, "checkpoint_sha256": ck_sha, "vocabulary_sha256": vocab_sha,
            "template": cfg.template, "top_k": int(cfg.top_k)}


def _cache_key(ck_sha: str, vocab_sha: str, template: str) -> str:
    return hashlib.sha256(f"{ck_sha}\n{vocab_sha}\n{template}".encode()).hexdigest()[:24]


def cached_text_embeddings(cache_dir: Path, loaded: Any, terms: list[str], template: str, *, ck_sha: str,
                           batch_size: int, device: Any) -> tuple[np.ndarray, bool]:
    """The text embeddings of ``terms``, from ``cache_dir`` when this (checkpoint, vocabulary, template) was encoded
    before; else encoded now and cached. Returns ``(embeddings, from_cache)``."""
    from clipgen.artifacts import atomic_path

    vocab_sha = vocabulary_sha256(terms)
    path = Path(cache_dir) / f"{_cache_key(ck_sha, vocab_sha, template)}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                emb = z["embeddings"]
            if (meta.get("checkpoint_sha256"), meta.get("vocabulary_sha256"), meta.get("template")) == \
                    (ck_sha, vocab_sha, template) and emb.shape[0] == len(terms):
                return emb, True
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is recomputed
    emb = encode_terms(loaded, terms, template, batch_size=batch_size, device=device)
    meta = {"checkpoint_sha256": ck_sha, "vocabulary_sha256": vocab_sha, "template": template, "terms": len(terms)}
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, embeddings=emb, meta=np.asarray(json.dumps(meta)))
    return emb, False


def run_sae_names(cfg: SaeNamesConfig) -> SaeNames:
    """Name every latent of the SAE ``cfg.sae``; writes OUT/names.json, OUT/names.csv and OUT/config.json (OUT
    defaults to SAE_RUN/names), and, when ``sae features`` results exist in SAE_RUN/features, the named top latents
    of every class there."""
    from clipgen.analysis.sae import load_sae
    from clipgen.artifacts import sha256_file, write_config, write_json_atomic, write_text_atomic
    from clipgen.devices import resolve_device

    if cfg.top_k < 1:
        raise ConfigFieldError("top_k", f"must be at least 1, got {cfg.top_k}")
    if cfg.batch_size < 1:
        raise ConfigFieldError("batch_size", f"must be at least 1, got {cfg.batch_size}")
    check_template(cfg.template)
    terms = read_vocabulary(cfg.vocab) if cfg.vocab else default_vocabulary()
    sae_model, info = load_sae(cfg.sae)
    layer = info.get("layer") or EMBEDDING_LAYER
    if layer != EMBEDDING_LAYER:
        raise file_error(info["path"], f"this SAE was trained on layer {layer!r}, whose decoder directions live in "
                                       "the image tower's channel space, not in CLIP's joint image-text space; only "
                                       "an SAE trained on the 'embedding' layer can be named with text")
    run_dir = sae_run_dir(Path(info["path"]))
    out = Path(cfg.out) if cfg.out else run_dir / NAMES_DIR
    device = resolve_device(cfg.device)
    loaded = resolve_model(cfg, info, device)
    ck_sha = loaded.checkpoint_sha256()
    _, prov = _store_provenance(info)
    store_sha = (prov.get("checkpoint") or {}).get("sha256")
    if store_sha and store_sha != ck_sha:
        raise ConfigFieldError("model_dir" if not cfg.checkpoint else "checkpoint",
                               f"{loaded.checkpoint} (sha256 {ck_sha[:12]}) is not the checkpoint whose embeddings the "
                               f"SAE was trained on (sha256 {store_sha[:12]}); its text embeddings would not match")
    vocab_sha = vocabulary_sha256(terms)
    sae_sha = sha256_file(info["path"])
    settings = _settings(cfg, sae_sha, ck_sha, vocab_sha)
    if (out / NAMES_JSON).is_file() and not cfg.force:
        try:
            old = json.loads((out / NAMES_JSON).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = {}
        if old.get("settings") == settings:
            res = load_names(out)
            res.already_complete = True
            return res
        raise ConfigFieldError("force", f"{out / NAMES_JSON} holds names made with other settings (SAE, model, "
                                        "vocabulary, template or --top-k); pass --force to replace them")
    text, cached = cached_text_embeddings(out / CACHE_DIR, loaded, terms, cfg.template, ck_sha=ck_sha,
                                          batch_size=cfg.batch_size, device=device)
    decoder = sae_model.W_dec.detach().cpu().numpy()
    if decoder.shape[1] != text.shape[1]:
        raise file_error(info["path"], f"the SAE's inputs are {decoder.shape[1]}-wide, but model {loaded.model_name}"
                                       f" embeds text in {text.shape[1]} dimensions (not the model it was trained "
                                       "on)")
    idx, sims = top_names(similarity_matrix(decoder, text), cfg.top_k)
    doc = {
        "format": NAMES_FORMAT, "version": NAMES_VERSION, "settings": settings,
        "sae": {"path": str(Path(info["path"]).resolve()), "sha256": sae_sha, "layer": layer,
                "latents": int(decoder.shape[0])},
        "model": {"name": loaded.model_name, "epoch": loaded.epoch,
                  "checkpoint": {"path": str(Path(loaded.checkpoint).resolve()), "sha256": ck_sha}},
        "vocabulary": {"source": str(Path(cfg.vocab).resolve()) if cfg.vocab else "built-in",
                       "terms": len(terms), "sha256": vocab_sha},
        "template": cfg.template, "top_k": int(idx.shape[1]),
        "latents": [{"latent": i, "names": [terms[j] for j in idx[i]],
                     "similarities": [round(float(v), 6) for v in sims[i]]} for i in range(idx.shape[0])],
    }
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["latent", "rank", "name", "similarity"])
    for i in range(idx.shape[0]):
        for r, (j, v) in enumerate(zip(idx[i], sims[i], strict=True)):
            w.writerow([i, r + 1, terms[j], f"{float(v):.6f}"])
    write_text_atomic(out / NAMES_CSV, buf.getvalue())
    write_config(out, "sae names", cfg)
    write_json_atomic(out / NAMES_JSON, doc)  # last: its presence means the folder is complete
    res = SaeNames(out, terms, idx, sims, cached, info=doc)
    features = run_dir / "features"
    if (features / "histograms.npz").is_file():
        annotate_features(features, out / NAMES_JSON)
    return res


def load_names(path: str | Path) -> SaeNames:
    """A names folder (or its names.json) as written by :func:`run_sae_names`."""
    p = Path(path)
    p = p / NAMES_JSON if p.is_dir() else p
    if not p.is_file():
        raise file_error(p, "no SAE names here (run 'clipgen sae names' first)")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise file_error(p, f"unreadable names file ({e.__class__.__name__})") from None
    if doc.get("format") != NAMES_FORMAT:
        raise file_error(p, f"not an SAE names file (format {doc.get('format')!r})")
    terms: dict[str, int] = {}
    rows, sims = [], []
    for rec in doc["latents"]:
        rows.append([terms.setdefault(n, len(terms)) for n in rec["names"]])
        sims.append(rec["similarities"])
    k = max((len(r) for r in rows), default=0)
    idx = np.array([r + [r[-1]] * (k - len(r)) for r in rows], dtype=np.int64).reshape(len(rows), k)
    sim = np.array([s + [s[-1]] * (k - len(s)) for s in sims], dtype=np.float64).reshape(len(rows), k)
    return SaeNames(p.parent, list(terms), idx, sim, cached=True, info=doc)


# ---------------------------------------------------------------------------------------------------------------
# Names on the feature-sharing histograms


def shared_and_specific(hist: np.ndarray, images: np.ndarray, *, top: int = 10,
                        shared: int = 6, specific: int = 2) -> tuple[list[int], dict[int, list[int]]]:
    """For one class: histograms ``hist`` (D, m) and image counts ``images`` (D,).

    Each domain with images ranks the latents by the fraction of its images that have them among their top
    latents (ties by index); its ``top`` best with a count > 0 form its set. Shared latents: those in the sets
    of at least two domains, by number of domains then by mean fraction; at most ``shared``. Domain-specific
    latents: those in one domain's set only, by fraction; at most ``specific`` per domain.
    """
    present = np.flatnonzero(np.asarray(images) > 0)
    frac = np.zeros(hist.shape, dtype=np.float64)
    frac[present] = hist[present] / np.asarray(images, dtype=np.float64)[present, None]
    sets: dict[int, list[int]] = {}
    for d in present:
        order = np.argsort(-frac[d], kind="stable")
        sets[int(d)] = [int(i) for i in order[:top] if hist[d, i] > 0]
    count: dict[int, int] = {}
    for s in sets.values():
        for i in s:
            count[i] = count.get(i, 0) + 1
    mean = frac[present].mean(axis=0) if len(present) else np.zeros(hist.shape[1])
    shared_ids = sorted((i for i, c in count.items() if c >= 2), key=lambda i: (-count[i], -mean[i], i))[:shared]
    spec = {d: [i for i in s if count[i] == 1][:specific] for d, s in sets.items()}
    return shared_ids, spec


def annotate_features(features_dir: str | Path, names_path: str | Path, *, top: int = 10) -> Path:
    """Attach names to ``sae features`` output: FEATURES/named-latents.json (per class the top shared and
    domain-specific latents with their names) and one figure per class in FEATURES/named-latents/."""
    from clipgen.artifacts import write_json_atomic

    features_dir = Path(features_dir)
    names = load_names(names_path)
    hp = features_dir / "histograms.npz"
    if not hp.is_file():
        raise file_error(hp, "no histograms here (run 'clipgen sae features' first)")
    with np.load(hp, allow_pickle=False) as z:
        hist, images = z["histograms"], z["images"]
        classes = [str(c) for c in z["classes"]]
        domains = [str(d) for d in z["domains"]]
    if hist.shape[2] != names.indices.shape[0]:
        raise file_error(names_path, f"names {names.indices.shape[0]} latents, but the histograms in {hp} have "
                                     f"{hist.shape[2]} (names of another SAE)")

    def entry(i: int, c: int) -> dict[str, Any]:
        fr = [float(hist[c, d, i] / images[c, d]) if images[c, d] else None for d in range(len(domains))]
        return {"latent": i, "names": names.names(i), "similarity": float(names.similarities[i, 0]),
                "fraction": dict(zip(domains, fr, strict=True))}

    out: dict[str, Any] = {"names": str(Path(names.out / NAMES_JSON).resolve()), "top": top, "classes": {}}
    for c, cls in enumerate(classes):
        sh, sp = shared_and_specific(hist[c], images[c], top=top)
        out["classes"][cls] = {"shared": [entry(i, c) for i in sh],
                               "specific": {domains[d]: [entry(i, c) for i in ids] for d, ids in sp.items()}}
        plot_named_latents(out["classes"][cls], cls, domains,
                           features_dir / CLASS_FIGURE_DIR / f"{_safe(cls)}.png")
    return write_json_atomic(features_dir / NAMED_LATENTS_JSON, out)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name)


def plot_named_latents(rec: dict[str, Any], cls: str, domains: list[str], path: str | Path) -> Path:
    """A heatmap: rows the class's shared then domain-specific latents (labelled with index and best names), columns
    the domains, cells the fraction of the class's images in the domain with the latent among their top latents."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clipgen.artifacts import atomic_path

    rows = [("shared", e) for e in rec["shared"]]
    rows += [(f"{d} only", e) for d, es in rec["specific"].items() for e in es]
    m = np.full((max(len(rows), 1), len(domains)), np.nan)
    labels = []
    for r, (kind, e) in enumerate(rows):
        m[r] = [np.nan if e["fraction"][d] is None else e["fraction"][d] for d in domains]
        labels.append(f"#{e['latent']} {', '.join(e['names'][:2])} ({kind})")
    fig, ax = plt.subplots(figsize=(2.2 + 0.9 * len(domains), 1.2 + 0.35 * max(len(rows), 1)))
    im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(domains)), domains, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_title(f"{cls}: top shared and domain-specific SAE latents", fontsize=9)
    fig.colorbar(im, ax=ax, label="fraction of images", shrink=0.8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
