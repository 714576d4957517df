"""``clipgen sae``: train sparse autoencoders on stored activations and measure feature sharing."""

from __future__ import annotations

from pathlib import Path

import typer

from clipgen.analysis.feature_sharing import FeatureSharingConfig
from clipgen.analysis.sae.config import SAETrainConfig
from clipgen.analysis.sae_names import SaeNamesConfig
from clipgen.cli.common import (
    default,
    default_list,
    device_option,
    force_option,
    json_option,
    positive,
    precision_option,
    progress_option,
    split_list,
    writable,
)

app = typer.Typer(help="Sparse autoencoders on an activation store: train, and SAE feature sharing between domains.",
                  no_args_is_help=True)


@app.command("train")
def train(
    store: list[Path] = typer.Argument(..., help="Activation store(s) with the training rows (read only)."),
    out: Path | None = typer.Option(None, "--out", "-o", callback=writable,
                                    help="Output folder (default: first STORE without suffix + '-sae' beside it)."),
    layer: str = typer.Option(default(SAETrainConfig, "layer"), "--layer",
                              help="Stored layer to train on (embedding: the L2-normalised image embedding, as in the "
                                   "paper)."),
    split: str | None = typer.Option(None, "--split", help="Train only on store rows of this split (default: all "
                                                           "rows)."),
    val_store: Path | None = typer.Option(None, "--val-store", help="Store with the validation rows."),
    val_split: str | None = typer.Option(None, "--val-split", help="Split of --val-store to validate on."),
    val_fraction: float = typer.Option(default(SAETrainConfig, "val_fraction"), "--val-fraction",
                                       help="Without --val-store: seeded fraction of the training rows held out "
                                            "for validation (0: none)."),
    val_max_rows: int = typer.Option(default(SAETrainConfig, "val_max_rows"), "--val-max-rows", min=0,
                                     help="At most this many validation rows."),
    expansion: int = typer.Option(default(SAETrainConfig, "expansion"), "--expansion", min=1,
                                  help="Latents per input dimension (paper: 4)."),
    activation: str = typer.Option(default(SAETrainConfig, "activation"), "--activation",
                                   help="relu (paper) or topk."),
    k: int = typer.Option(default(SAETrainConfig, "k"), "--k", min=1,
                          help="Active latents per sample for --activation topk."),
    l1: float | None = typer.Option(None, "--l1", min=0.0, help="L1 coefficient (default: 1e-4 (paper) for relu, 0 for "
                                                                "topk)."),
    lr: float = typer.Option(default(SAETrainConfig, "lr"), "--lr", callback=positive,
                             help="Adam learning rate (paper: 1e-4)."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1,
                                          help="Batch size (default: the paper's 2048, or all training rows when "
                                               "there are fewer)."),
    epochs: int = typer.Option(default(SAETrainConfig, "epochs"), "--epochs", min=1,
                               help="Passes over the training rows (paper: 200)."),
    seed: int = typer.Option(default(SAETrainConfig, "seed"), "--seed",
                             help="Seed of the initialisation and data order (paper: 49)."),
    resample_every: int | None = typer.Option(None, "--resample-every", min=0,
                                              help="Samples between dead-latent resampling checks; 0 never "
                                                   "resamples (default: 10,000,000; 0 with --paper)."),
    resample_max: int = typer.Option(default(SAETrainConfig, "resample_max"), "--resample-max", min=0,
                                     help="Resampling checks at most (0: unlimited)."),
    resample_window: int | None = typer.Option(None, "--resample-window", min=1,
                                               help="A latent is dead after this many samples without firing "
                                                    "(default: --resample-every)."),
    resample_samples: int = typer.Option(default(SAETrainConfig, "resample_samples"), "--resample-samples", min=0,
                                         help="Inputs whose loss decides where dead latents are re-initialised."),
    paper: bool = typer.Option(default(SAETrainConfig, "paper"), "--paper",
                               help="The published computation: no resampling (its resampler never fires), the "
                                    "decoder gradient projected off each dictionary vector before the Adam step, "
                                    "the published initialisation, fp32 with --precision auto (see docs/sae.md)."),
    dead_window: int = typer.Option(default(SAETrainConfig, "dead_window"), "--dead-window", min=0,
                                    help="Samples without firing after which the logs count a latent as dead."),
    log_every: int = typer.Option(default(SAETrainConfig, "log_every"), "--log-every", min=1,
                                  help="Samples between log lines."),
    val_every: int = typer.Option(default(SAETrainConfig, "val_every"), "--val-every", min=0,
                                  help="Samples between validations (0: only at the end)."),
    checkpoint_every: int = typer.Option(default(SAETrainConfig, "checkpoint_every"), "--checkpoint-every", min=0,
                                         help="Samples between checkpoints (0: only at the end)."),
    keep_checkpoints: int = typer.Option(default(SAETrainConfig, "keep_checkpoints"), "--keep-checkpoints", min=1,
                                         help="Checkpoints kept (newest)."),
    buffer_mb: float = typer.Option(default(SAETrainConfig, "buffer_mb"), "--buffer-mb", callback=positive,
                                    help="Training rows up to this size (MiB, float32) are held in memory (on the "
                                         "GPU when it has room); larger sets stream in shuffled buffers."),
    block_rows: int = typer.Option(default(SAETrainConfig, "block_rows"), "--block-rows", min=1,
                                   help="Rows per contiguous read when streaming."),
    scale_inputs: bool = typer.Option(default(SAETrainConfig, "scale_inputs"), "--scale-inputs",
                                      help="Scale inputs so their mean norm is sqrt(width) (useful for raw layers; "
                                           "the paper trains on the unit-norm embedding unscaled)."),
    device: str = device_option(),
    precision: str = precision_option("fp32 or bf16 matrix products (fp32 master weights) (auto: bf16 on GPU)."),
    step_mode: str = typer.Option(default(SAETrainConfig, "step_mode"), "--step-mode",
                                  help="eager, or graph (the whole step captured in a CUDA graph) (auto: graph on "
                                       "GPU)."),
    resume: bool = typer.Option(False, "--resume", help="Accepted for compatibility: the same command continues the "
                                                        "run in --out from its newest checkpoint anyway."),
    force: bool = force_option("Start over, replacing the run in --out (needed when its settings differ)."),
    progress: bool = progress_option(),
    as_json: bool = json_option(),
) -> None:
    """Train a sparse autoencoder on one stored layer (the paper's SAE: tied bias, ReLU, unit-norm decoder, L1).

    Writes OUT/sae.pt, OUT/config.json, OUT/log.jsonl (loss parts, L0, dead latents, variance explained per
    interval), OUT/metrics.json and OUT/checkpoints/. Never loads a CLIP model. Rerun the same command to continue an
    interrupted run (or, with a larger --epochs, to train a finished one further).
    """
    from clipgen.analysis.sae import SAETrainConfig, run_train_sae
    from clipgen.cli.common import emit_json, summary_console
    from clipgen.errors import option_error

    if paper and resample_every not in (None, 0):
        raise option_error("--paper", "cannot be combined with --resample-every (the published run never resamples)")
    if out is None:
        out = store[0].with_name(store[0].stem + "-sae")
    cfg = SAETrainConfig(
        stores=[str(s) for s in store], out=str(out), layer=layer, split=split,
        val_store=str(val_store) if val_store else None, val_split=val_split, val_fraction=val_fraction,
        val_max_rows=val_max_rows, expansion=expansion, activation=activation.strip().lower(), k=k,
        scale_inputs=scale_inputs, l1=l1, lr=lr, batch_size=batch_size, epochs=epochs, seed=seed,
        resample_every=0 if paper else (10_000_000 if resample_every is None else resample_every),
        resample_max=resample_max, resample_window=resample_window, resample_samples=resample_samples,
        dead_window=dead_window, log_every=log_every, val_every=val_every, checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints, buffer_mb=buffer_mb, block_rows=block_rows, device=device,
        precision=precision, step_mode=step_mode, paper=paper, force=force,
    )
    res = run_train_sae(cfg, resume=resume, progress=progress)
    con = summary_console(as_json)
    f = res.final or {}
    if res.already_complete:
        con.print(f"[bold]SAE[/] {res.out} was already complete ({res.steps} steps, {res.epochs} epochs)")
    else:
        con.print(f"[bold]SAE[/] {res.out}: {res.steps} steps ({res.samples:,} samples, {res.samples_per_s:,.0f} "
                  f"samples/s), {res.revived} latents resampled in {res.resample_checks} checks")
    if f:
        con.print(f"train: loss {f['loss']:.4g} (mse {f['mse']:.4g} + l1 {f['l1_loss']:.4g}), L0 {f['l0']:.1f}, "
                  f"dead {f['dead']}, variance explained {f['fve']:.3f}")
    if res.val:
        v = res.val
        con.print(f"val ({v['rows']} rows): loss {v['loss']:.4g}, L0 {v['l0']:.1f}, variance explained "
                  f"{v['fve']:.3f}, never active {v['dead']}")
    con.print(f"sae: {res.out / 'sae.pt'}", markup=False, highlight=False)
    if as_json:
        emit_json({"out": res.out, "sae": res.out / "sae.pt", "already_complete": res.already_complete,
                   "steps": res.steps, "samples": res.samples, "epochs": res.epochs,
                   "samples_per_s": res.samples_per_s, "resample_checks": res.resample_checks,
                   "revived": res.revived, "train": f or None, "val": res.val})


@app.command("features")
def features(
    store: Path = typer.Argument(..., help="Activation store with the images to analyse (read only)."),
    sae: Path = typer.Option(..., "--sae", help="SAE: a 'clipgen sae train' folder, its sae.pt or a checkpoint."),
    out: Path | None = typer.Option(None, "--out", "-o", callback=writable,
                                    help="Output folder (default: 'features' inside the SAE folder)."),
    layer: str | None = typer.Option(None, "--layer", help="Stored layer (default: the SAE's training layer)."),
    test_domain: str | None = typer.Option(None, "--test-domain",
                                           help="Domain whose row is scored against the others (default: the "
                                                "run's mixture test domain recorded in the store)."),
    classes: str | None = typer.Option(None, "--classes",
                                       help="Comma-separated class names (default: the store's held-out classes)."),
    split: str = typer.Option(default(FeatureSharingConfig, "split"), "--split",
                              help="Rows to use: a split name, 'all', or auto (the test split when the store has "
                                   "one, as in the paper)."),
    top: int = typer.Option(default(FeatureSharingConfig, "top"), "--top", min=1,
                            help="Top active latents per image that enter the histograms (paper: 20)."),
    ks: str = typer.Option(default_list(FeatureSharingConfig, "ks"), "--ks",
                           help="k values averaged by mpct (paper: 5,10,15,20)."),
    zero_bins: str = typer.Option(default(FeatureSharingConfig, "zero_bins"), "--zero-bins",
                                  help="include (paper): zero-count latents may fill a top-k set (ties by index); "
                                       "exclude: only latents counted at least once."),
    batch_size: int = typer.Option(default(FeatureSharingConfig, "batch_size"), "--batch-size",
                                   min=1, help="Rows encoded at a time."),
    device: str = device_option(),
    names: Path | None = typer.Option(None, "--names",
                                      help="'sae names' output whose names label the top latents of every class "
                                           "(default: the SAE folder's names/ when it exists)."),
    force: bool = force_option("Overwrite existing results in --out."),
    progress: bool = progress_option(),
    as_json: bool = json_option(),
) -> None:
    """SAE feature sharing between domains (paper App. C.1, Alg. 1-2): per class and domain the histogram of the
    top-20 active latents, mpct for every domain pair, the class mean and the test domain's score.

    Writes OUT/feature-sharing.json, OUT/histograms.npz, OUT/feature-sharing.png, OUT/feature-sharing-classes.png
    and OUT/config.json; with names, also OUT/named-latents.json and OUT/named-latents/CLASS.png.
    """
    from clipgen.analysis.feature_sharing import FeatureSharingConfig, run_feature_sharing
    from clipgen.cli.common import emit_json, summary_console
    from clipgen.errors import option_error

    try:
        k_values = split_list(ks, int) or []
    except ValueError:
        raise option_error("--ks", f"expected comma-separated integers, got {ks!r}") from None
    if out is None:
        out = (sae if sae.is_dir() else sae.parent) / "features"
    cfg = FeatureSharingConfig(store=str(store), sae=str(sae), out=str(out), layer=layer, test_domain=test_domain,
                               classes=split_list(classes), split=split, top=top, ks=k_values,
                               zero_bins=zero_bins.strip().lower(), batch_size=batch_size, device=device,
                               names=str(names) if names else None, force=force)
    res, path = run_feature_sharing(cfg, progress=progress)
    con = summary_console(as_json)
    con.print(f"[bold]feature sharing[/] (mpct over k={','.join(map(str, res.ks))}, top {res.top}), "
              f"{len(res.classes)} classes: {', '.join(res.classes)}")
    for line in res.mean_table():
        con.print(line, markup=False, highlight=False)
    score = res.score
    line = f"score({res.test_domain}) = " + ("undefined" if score is None or score != score else f"{score:.4f}")
    sk = res.scores.get("sketch")
    if res.test_domain != "sketch" and sk is not None and sk == sk:
        line += f"  (the published code would report the sketch row: {sk:.4f})"
    con.print(line, markup=False, highlight=False)
    con.print(f"results: {path / 'feature-sharing.json'}", markup=False, highlight=False)
    if as_json:
        emit_json({"out": path, "results": path / "feature-sharing.json", "classes": res.classes,
                   "domains": res.domains, "ks": res.ks, "top": res.top, "test_domain": res.test_domain,
                   "score": score, "scores": res.scores,
                   "mean": {a: {b: res.mean[i][j] for j, b in enumerate(res.domains)}
                            for i, a in enumerate(res.domains)}})


@app.command("names")
def names(
    sae: Path = typer.Argument(..., help="SAE trained on the 'embedding' layer: a 'clipgen sae train' folder, its "
                                         "sae.pt or a checkpoint."),
    vocab: Path | None = typer.Option(None, "--vocab", help="Vocabulary, one term per line (default: built in: the "
                                                            "DomainNet and ImageNet class names and the captions' "
                                                            "domain terms)."),
    template: str = typer.Option(default(SaeNamesConfig, "template"), "--template",
                                 help="How a term becomes text; '{}' is the term (the "
                                      "published script: the raw term), e.g. 'a photo of a {}.'"),
    top_k: int = typer.Option(default(SaeNamesConfig, "top_k"), "--top-k",
                              help="Names kept per latent (the published script keeps 1)."),
    model_dir: Path | None = typer.Option(None, "--model-dir",
                                          help="Run directory of the CLIP whose text tower names the latents "
                                               "(default: the model recorded in the SAE's training store)."),
    epoch: int | None = typer.Option(None, "--epoch", help="Checkpoint epoch of --model-dir (default: the last)."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="A checkpoint not trained by clipgen (open_clip "
                                                                      "or OpenAI weights file), with --model."),
    model: str | None = typer.Option(None, "--model", help="Model name for --checkpoint (e.g. RN50)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default: 'names' inside the SAE "
                                                              "folder)."),
    batch_size: int = typer.Option(default(SaeNamesConfig, "batch_size"), "--batch-size",
                                   help="Terms encoded at a time."),
    device: str = device_option("auto, cpu, cuda, cuda:N."),
    force: bool = force_option("Replace names made with other settings."),
) -> None:
    """Name every SAE latent with the vocabulary terms whose CLIP text embedding is most similar (cosine) to its
    decoder direction (Discover-then-Name, as the published name_concepts.py).

    Writes OUT/names.json, OUT/names.csv and OUT/config.json, caches the vocabulary's text embeddings in
    OUT/text-embeddings/, and labels existing 'sae features' results in the SAE folder.
    """
    import numpy as np

    from clipgen.analysis.sae_names import SaeNamesConfig, run_sae_names
    from clipgen.progress import out as con

    cfg = SaeNamesConfig(sae=str(sae), out=str(out) if out else None, vocab=str(vocab) if vocab else None,
                         template=template, top_k=top_k, model_dir=str(model_dir) if model_dir else None,
                         epoch=epoch, checkpoint=str(checkpoint) if checkpoint else None, model=model,
                         batch_size=batch_size, device=device)
    res = run_sae_names(cfg)
    m = res.indices.shape[0]
    state = " (already complete)" if res.already_complete else (" (text embeddings from the cache)" if res.cached
                                                                else "")
    con.print(f"[bold]SAE names[/] {m} latents, {res.info['vocabulary']['terms']} terms{state}", highlight=False)
    best = np.argsort(-res.similarities[:, 0], kind="stable")[:5]
    for i in best:
        con.print(f"  latent {int(i)}: {', '.join(res.names(int(i))[:3])} ({res.similarities[i, 0]:.3f})",
                  markup=False, highlight=False)
    con.print(f"names: {res.out / 'names.json'}", markup=False, highlight=False)
