"""``clipgen data``: every data preparation step of the paper, for real data and a synthetic stand-in."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Prepare data: synthetic DomainNet, captions, ImageNet-Captions, mixtures, merges.",
                  no_args_is_help=True)


@app.command("synth")
def synth(
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (the synthetic DomainNet root)."),
    n_classes: int = typer.Option(12, "--n-classes", help="Number of classes (ignored with --classes)."),
    classes: str | None = typer.Option(None, "--classes",
                                          help="Explicit comma-separated DomainNet class names."),
    n_held_out: int | None = typer.Option(None, "--n-held-out",
                                             help="How many of the paper's 15 held-out classes the default set "
                                                  "includes [default: a third of --n-classes]."),
    train_per_class: int = typer.Option(30, "--train-per-class", help="Train images per class and domain."),
    test_per_class: int = typer.Option(15, "--test-per-class", help="Test images per class and domain."),
    base_per_class: int = typer.Option(40, "--base-per-class", help="Base-dataset images per class."),
    base_extra_classes: int = typer.Option(8, "--base-extra-classes",
                                           help="Base-only classes (like ImageNet classes absent from DomainNet)."),
    image_size: int = typer.Option(64, "--image-size", help="Image side in pixels."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the output is deterministic in it."),
    quirks: bool = typer.Option(True, "--quirks/--no-quirks",
                                help="Mimic the real dataset's quirks (a class without painting test images)."),
    workers: int = typer.Option(0, "--workers", help="Rendering processes (0: one per core, at most 8)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing synthetic dataset in --out."),
) -> None:
    """Generate a synthetic DomainNet (six rendering styles) plus a natural-style base dataset, offline."""
    from clipgen.data.synth import SynthConfig, generate
    from clipgen.progress import out as con

    cfg = SynthConfig(
        out=out, classes=[c.strip() for c in classes.split(",") if c.strip()] if classes else None,
        n_classes=n_classes, n_held_out=n_held_out, train_per_class=train_per_class, test_per_class=test_per_class,
        base_per_class=base_per_class, base_extra_classes=base_extra_classes, image_size=image_size, seed=seed,
        quirks=quirks, workers=workers,
    )
    res = generate(cfg, force=force)
    total = sum(sum(v.values()) for v in res.counts.values())
    con.print(f"[bold]synthetic DomainNet[/] in {res.root}: {len(res.classes)} classes "
              f"({len(res.held_out)} held-out: {', '.join(res.held_out)}), {total} images in {len(res.counts)} "
              f"domains, base dataset {res.base_counts['train']} train / {res.base_counts['val']} val")
    if res.empty_painting_test_class:
        con.print(f"quirk: class {res.empty_painting_test_class!r} has no painting test images (as in DomainNet)")
    con.print(f"contact sheet: {res.contact_sheet}")
