"""``clipgen eval summary``: the paper's Figure-2 view over many results.json files.

Runs are grouped by *family* (evaluation kind, model, base dataset, template set), *test domain* and
*setup*; the setup comes from the run manifest's mixture copied into each results.json (natural-only, CG
low-diversity, CG high-diversity, leave-out-domain, upper bounds, allow-pct, aligned captions, domain subsets),
never from file names. For each group the chosen metric at the chosen epoch is averaged over seeds:
mean and sample standard deviation (ddof = 1; empty for a single seed).

Headline metric: ``ood_acc``, the sample-weighted accuracy on the held-out-class images of the test domain.
The paper defines the test set as the set D_X^{C2} of those images, and an accuracy "on a test set" is the
fraction of its images classified correctly; the published scripts compute it as their first metric.
The unweighted mean of per-class accuracies (``ood_acc_unweighted``) is in every CSV row as well and can be
made the headline with ``--metric``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipgen import domainnet as dn
from clipgen.artifacts import atomic_path, write_config, write_text_atomic
from clipgen.data.mixture_info import SETUP_TITLES
from clipgen.errors import ClipgenError, ConfigFieldError, file_error
from clipgen.evaluation.metrics import SCALAR_METRICS
from clipgen.evaluation.results import RESULTS_NAME, read_results

#: Metrics written to the CSV for every group (all of the test domain).
CSV_METRICS: tuple[str, ...] = ("ood_acc", "ood_acc_unweighted", "id_acc", "id_acc_unweighted")
_SETUP_ORDER = ("natural-only", "cg-low", "cg-high", "leave-out-domain", "custom")
OUTPUT_FILES = ("summary.csv", "summary.md", "figure2.png", "curves.png")


@dataclass
class SummaryConfig:
    """Options of ``clipgen eval summary``."""

    inputs: list[Path]
    out: Path = Path("eval-summary")
    metric: str = "ood_acc"
    epoch: str = "last"  # "last" or an epoch number
    domain: str = "test"  # "test" (the test domain) or "real"
    force: bool = False


@dataclass
class RunResult:
    path: Path
    family: str
    test_domain: str
    setup_key: tuple
    setup_label: str
    seed: Any
    run_name: str
    epochs: list[int]
    metrics: dict[str, dict[str, list]]  # domain -> metric -> values over epochs


@dataclass
class Group:
    family: str
    test_domain: str
    setup_key: tuple
    setup_label: str
    runs: list[RunResult] = field(default_factory=list)


def find_results(inputs: Sequence[str | Path]) -> list[Path]:
    """results.json files named directly or found (recursively) under folders."""
    found: list[Path] = []
    for p in inputs:
        p = Path(p)
        if p.is_dir():
            hits = sorted(p.rglob(RESULTS_NAME))
            if not hits:
                raise ConfigFieldError("inputs", f"no {RESULTS_NAME} under {p}")
            found += hits
        elif p.is_file():
            found.append(p)
        else:
            raise ConfigFieldError("inputs", f"{p} does not exist")
    seen, out = set(), []
    for f in found:
        r = f.resolve()
        if r not in seen:
            seen.add(r)
            out.append(f)
    return out


def setup_of(run: dict[str, Any], test_domain: str) -> tuple[tuple, str]:
    """``(sort key, label)`` of a run's setup from its recorded mixture."""
    mix = run.get("mixture")
    if not mix or not mix.get("setup"):
        return (9, 0, 0, run.get("name", "?")), f"run {run.get('name', '?')} (no setup recorded)"
    setup = mix["setup"]
    rank = _SETUP_ORDER.index(setup) if setup in _SETUP_ORDER else len(_SETUP_ORDER)
    label = SETUP_TITLES.get(setup, setup)
    sub = 0
    if mix.get("pseudo"):
        label, sub = label + " (upper bound)", 1
    if mix.get("allow_pct") is not None:
        label, sub = label + f" + {float(mix['allow_pct']):g} held-out", 2
    if mix.get("aligned"):
        label, sub = label + ", aligned captions", sub + 3
    letters = dn.domain_letters(mix.get("domains") or [])
    if setup == "custom":
        label += f" {letters}"
    mtd = mix.get("test_domain")
    elsewhere = bool(mtd and mtd != test_domain)
    if elsewhere:
        label += f" (trained for {mtd})"
    upper = 1 if mix.get("pseudo") else 0
    # the paper's four setups first (in the paper's order), then the variants: upper bounds first, then allow-pct,
    # aligned captions, custom domain subsets and runs trained for another test domain
    variant = int(bool(upper or sub or setup not in _SETUP_ORDER[:4] or elsewhere))
    return (variant, -upper, rank, elsewhere, sub, float(mix.get("allow_pct") or 0.0), letters, mtd or ""), label


def load_run(path: Path) -> RunResult:
    doc = read_results(path)
    run = doc.get("run") or {}
    method = doc.get("method") or {}
    mix = run.get("mixture") or {}
    base = Path(str(mix["base"])).name if mix.get("base") else None
    family = " ".join(x for x in (doc["kind"], run.get("model") or "?", f"base={base}" if base else None,
                                  f"templates={method['templates']}" if method.get("templates") else None) if x)
    key, label = setup_of(run, doc["test_domain"])
    seed = run.get("seed") if run.get("seed") is not None else run.get("name")
    return RunResult(path, family, doc["test_domain"], key, label, seed, run.get("name", "?"),
                     [int(e) for e in doc["epochs"]], doc["metrics"])


def group_runs(runs: Sequence[RunResult]) -> list[Group]:
    groups: dict[tuple, Group] = {}
    for r in runs:
        k = (r.family, r.test_domain, r.setup_key)
        g = groups.setdefault(k, Group(r.family, r.test_domain, r.setup_key, r.setup_label))
        for other in g.runs:
            if other.seed == r.seed:
                raise ClipgenError(f"{r.path}: same family, test domain, setup and seed ({r.seed}) as {other.path}; "
                                   "pass only one of them")
        g.runs.append(r)
    order = sorted(groups, key=lambda k: (k[0], dn.TEST_DOMAINS.index(k[1]) if k[1] in dn.TEST_DOMAINS else 9, k[2]))
    return [groups[k] for k in order]


def value_at(r: RunResult, domain: str, metric: str, epoch: str) -> tuple[float, int]:
    """The metric of run ``r`` at ``epoch`` ("last" or a number); NaN when undefined."""
    if epoch == "last":
        i = len(r.epochs) - 1
    else:
        try:
            e = int(epoch)
        except ValueError:
            raise ConfigFieldError("epoch", f"{epoch!r} is not 'last' or an epoch number") from None
        if e not in r.epochs:
            raise ConfigFieldError("epoch", f"{r.path} has no epoch {e} (evaluated: {r.epochs})")
        i = r.epochs.index(e)
    d = r.test_domain if domain == "test" else domain
    if metric not in (r.metrics.get(d) or {}):
        raise file_error(r.path, f"no metric {metric!r} for domain {d!r} (results of an older clipgen? re-run "
                                 "'clipgen eval' with --force, or choose another --metric)")
    v = r.metrics[d][metric][i]
    return (float("nan") if v is None else float(v)), r.epochs[i]


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean and sample std (ddof = 1) of the finite values, and how many there are."""
    x = np.array([v for v in values if not math.isnan(v)], dtype=float)
    if x.size == 0:
        return float("nan"), float("nan"), 0
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else float("nan"), int(x.size)


def summary_rows(groups: Sequence[Group], metric: str, epoch: str, domain: str) -> list[dict[str, Any]]:
    """One row per group with mean/std of every CSV metric (the headline metric first)."""
    metrics = [metric] + [m for m in CSV_METRICS if m != metric]
    rows = []
    for g in groups:
        row: dict[str, Any] = {"family": g.family, "test_domain": g.test_domain, "setup": g.setup_label}
        for m in metrics:
            vals = [value_at(r, domain, m, epoch) for r in g.runs]
            mu, sd, n = mean_std([v for v, _ in vals])
            row[f"{m}_mean"], row[f"{m}_std"] = mu, sd
            if m == metric:
                row["n_seeds"] = n
                row["epochs"] = " ".join(str(e) for _, e in vals)
        row["seeds"] = " ".join(str(r.seed) for r in g.runs)
        row["runs"] = " ".join(r.run_name for r in g.runs)
        rows.append(row)
    return rows


def _fmt(mu: float, sd: float, n: int, pct: bool = True) -> str:
    if math.isnan(mu):
        return "n/a"
    s = 100.0 if pct else 1.0
    return f"{mu * s:.1f} ± {sd * s:.1f} (n={n})" if not math.isnan(sd) else f"{mu * s:.1f} (n={n})"


def setup_order(groups: Sequence[Group]) -> list[str]:
    """Setup labels in the paper's order (natural-only, CG low, CG high, leave-out-domain, then variants)."""
    return list(dict.fromkeys(g.setup_label for g in sorted(groups, key=lambda g: g.setup_key)))


def _setups(rows: Sequence[dict[str, Any]], order: Sequence[str]) -> list[str]:
    present = {r["setup"] for r in rows}
    return [s for s in order if s in present]


def markdown_table(rows: Sequence[dict[str, Any]], metric: str, domain: str, order: Sequence[str]) -> str:
    """Per family: rows = test domains, columns = setups (in ``order``), cells "mean ± std (n)" in percent."""
    out = []
    for fam in dict.fromkeys(r["family"] for r in rows):
        fr = [r for r in rows if r["family"] == fam]
        setups = _setups(fr, order)
        tds = list(dict.fromkeys(r["test_domain"] for r in fr))
        where = "the test domain" if domain == "test" else domain
        out.append(f"### {fam}: {metric} on {where} (%, mean ± std over seeds)\n")
        out.append("| test domain | " + " | ".join(setups) + " |")
        out.append("|---|" + "---|" * len(setups))
        for td in tds:
            cells = []
            for s in setups:
                hit = [r for r in fr if r["test_domain"] == td and r["setup"] == s]
                cells.append(_fmt(hit[0][f"{metric}_mean"], hit[0][f"{metric}_std"], hit[0]["n_seeds"])
                             if hit else "")
            out.append(f"| {td} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    fields = list(rows[0])
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    return buf.getvalue()


def bar_chart(rows: Sequence[dict[str, Any]], metric: str, order: Sequence[str], path: Path) -> None:
    """Grouped bars: test domains on x, one bar per setup, error bars = std over seeds."""
    _save(bar_figure(rows, metric, order), path)


def bar_figure(rows: Sequence[dict[str, Any]], metric: str, order: Sequence[str]) -> Any:
    """The figure of :func:`bar_chart` (a matplotlib Figure, not saved)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = list(dict.fromkeys(r["family"] for r in rows))
    colours = {s: f"C{i % 10}" for i, s in enumerate(order)}  # one colour per setup across families
    fig, axes = plt.subplots(len(fams), 1, figsize=(11, 3.8 * len(fams)), squeeze=False)
    for ax, fam in zip(axes[:, 0], fams, strict=True):
        fr = [r for r in rows if r["family"] == fam]
        setups = _setups(fr, order)
        tds = list(dict.fromkeys(r["test_domain"] for r in fr))
        width = 0.8 / max(1, len(setups))
        for j, s in enumerate(setups):
            xs, ys, es = [], [], []
            for i, td in enumerate(tds):
                hit = [r for r in fr if r["test_domain"] == td and r["setup"] == s]
                if hit and not math.isnan(hit[0][f"{metric}_mean"]):
                    xs.append(i - 0.4 + width * (j + 0.5))
                    ys.append(100 * hit[0][f"{metric}_mean"])
                    sd = hit[0][f"{metric}_std"]
                    es.append(0.0 if math.isnan(sd) else 100 * sd)
            bars = ax.bar(xs, ys, width, yerr=es, capsize=2, label=s, color=colours[s])
            # every bar carries its value: a 0 bar would otherwise look like a missing one
            ax.bar_label(bars, labels=[f"{y:.1f}" for y in ys], fontsize=6, padding=2)
        ax.set_xticks(range(len(tds)), tds)
        ax.set_ylabel(f"{metric} (%)")
        ax.set_ylim(0, 100)
        ax.set_title(fam, fontsize=9)
        ax.legend(fontsize=7, ncol=2)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def curves(groups: Sequence[Group], metric: str, domain: str, path: Path) -> None:
    """Metric over epochs: one panel per (family, test domain), mean ± std over seeds per setup."""
    _save(curves_figure(groups, metric, domain), path)


def curves_figure(groups: Sequence[Group], metric: str, domain: str) -> Any:
    """The figure of :func:`curves` (a matplotlib Figure, not saved)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys((g.family, g.test_domain) for g in groups))
    ncol = min(3, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5 * ncol, 3.5 * nrow), squeeze=False)
    for ax, (fam, td) in zip(axes.flat, panels, strict=False):
        for g in groups:
            if (g.family, g.test_domain) != (fam, td):
                continue
            common = sorted(set.intersection(*(set(r.epochs) for r in g.runs)))
            if not common:
                continue
            d = td if domain == "test" else domain
            ys = np.array([[np.nan if r.metrics[d][metric][r.epochs.index(e)] is None
                            else r.metrics[d][metric][r.epochs.index(e)] for e in common] for r in g.runs], float)
            mu = np.nanmean(ys, axis=0) * 100
            line = ax.plot(common, mu, marker="o", ms=3, label=g.setup_label)[0]
            if len(g.runs) > 1:
                sd = np.nanstd(ys, axis=0, ddof=1) * 100
                ax.fill_between(common, mu - sd, mu + sd, color=line.get_color(), alpha=0.2)
        ax.set_title(f"{td}\n{fam}", fontsize=8)
        epoch_axis(ax, [e for g in groups if (g.family, g.test_domain) == (fam, td) for r in g.runs for e in r.epochs])
        percent_axis(ax, f"{metric} (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def epoch_axis(ax: Any, epochs: Sequence[int]) -> None:
    """An x axis of epochs: integer ticks only (each epoch when there are few), half an epoch of margin."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    es = sorted({int(e) for e in epochs})
    if es and len(es) <= 12:
        ax.set_xticks(es)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if es:
        ax.set_xlim(es[0] - 0.5, es[-1] + 0.5)


def percent_axis(ax: Any, label: str) -> None:
    """A y axis of percentages: always 0 to 100 (an accuracy is never negative, one epoch included)."""
    ax.set_ylim(0, 100)
    ax.set_ylabel(label)


ACCURACY_FIGURE = "accuracy.png"


def accuracy_figure(doc: dict[str, Any]) -> Any:
    """Zero-shot (or supervised) accuracy over the evaluated epochs of one results.json: held-out (OOD) and other
    (ID) classes of the test domain, and the ID classes of every other evaluated domain (a Figure, not saved)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(e) for e in doc["epochs"]]
    td = doc["test_domain"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    series = [(td, "ood_acc", f"{td}: held-out classes", "-"), (td, "id_acc", f"{td}: other classes", "--")]
    series += [(d, "id_acc", f"{d}: other classes", ":") for d in doc["metrics"] if d != td]
    for d, metric, label, ls in series:
        values = (doc["metrics"].get(d) or {}).get(metric)
        if not values:
            continue
        ys = [np.nan if v is None else 100 * float(v) for v in values]
        ax.plot(epochs, ys, marker="o", ms=4, ls=ls, label=label)
    run = (doc.get("run") or {}).get("name") or ""
    ax.set_title(f"{doc.get('kind', '')} accuracy, test domain {td}" + (f"\n{run}" if run else ""), fontsize=9)
    epoch_axis(ax, epochs)
    percent_axis(ax, "top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def write_accuracy_figure(out_dir: str | Path, doc: dict[str, Any]) -> Path:
    """``OUT_DIR/accuracy.png`` (beside results.json) from a results document."""
    path = Path(out_dir) / ACCURACY_FIGURE
    _save(accuracy_figure(doc), path)
    return path


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


@dataclass
class SummaryOutcome:
    out_dir: Path
    rows: list[dict[str, Any]]
    markdown: str
    files: list[Path]


def run_summary(cfg: SummaryConfig) -> SummaryOutcome:
    """Read the results, group them, and write summary.csv, summary.md, figure2.png and curves.png."""
    if cfg.metric not in SCALAR_METRICS:
        raise ConfigFieldError("metric", f"unknown metric {cfg.metric!r} (one of {', '.join(SCALAR_METRICS)})")
    if cfg.domain not in ("test", "real"):
        raise ConfigFieldError("domain", f"must be 'test' or 'real', not {cfg.domain!r}")
    out = Path(cfg.out)
    existing = [out / f for f in OUTPUT_FILES if (out / f).exists()]
    if existing and not cfg.force:
        raise ConfigFieldError("out", f"{existing[0]} already exists (use --force to replace it)")
    runs = [load_run(p) for p in find_results(cfg.inputs)]
    groups = group_runs(runs)
    rows = summary_rows(groups, cfg.metric, cfg.epoch, cfg.domain)
    order = setup_order(groups)
    md = markdown_table(rows, cfg.metric, cfg.domain, order)
    out.mkdir(parents=True, exist_ok=True)
    files = [write_text_atomic(out / "summary.csv", csv_text(rows)), write_text_atomic(out / "summary.md", md)]
    bar_chart(rows, cfg.metric, order, out / "figure2.png")
    curves(groups, cfg.metric, cfg.domain, out / "curves.png")
    files += [out / "figure2.png", out / "curves.png", write_config(out, "eval summary", cfg)]
    return SummaryOutcome(out, rows, md, files)
