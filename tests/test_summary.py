import csv
import math

import pytest

from clipgen.errors import ClipgenError, ConfigFieldError
from clipgen.evaluation.summary import SummaryConfig, find_results, run_summary
from tests._fixtures_eval import fake_results

SETUPS = {  # last-epoch values per seed
    ("sketch", "natural-only"): [0.10, 0.20, 0.30],
    ("sketch", "cg-low"): [0.30, 0.50, 0.40],
    ("sketch", "cg-high"): [0.55, 0.65, 0.60],
    ("sketch", "leave-out-domain"): [0.50, 0.52, 0.60],
    ("clipart", "cg-high"): [0.70],
}


@pytest.fixture
def results_dir(tmp_path):
    root = tmp_path / "runs"
    for (td, setup), vals in SETUPS.items():
        for seed, v in enumerate(vals):
            # directory names deliberately mislead: the setup comes from the recorded mixture only
            fake_results(root / f"lso-real-only-{td}-{setup}-s{seed}" / "results.json", setup=setup, test_domain=td,
                         seed=seed, values=[0.0, v], unweighted=[0.0, v / 2])
    fake_results(root / "ub" / "results.json", setup="cg-low", pseudo=True, test_domain="sketch", seed=0,
                 values=[0.9, 0.95])
    return root


def _stats(xs):
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else float("nan")
    return m, sd


@pytest.mark.slow
def test_means_and_stds_by_hand(results_dir, tmp_path):
    res = run_summary(SummaryConfig(inputs=[results_dir], out=tmp_path / "s"))
    rows = {(r["test_domain"], r["setup"]): r for r in res.rows}
    titles = {"natural-only": "Natural-only", "cg-low": "CG low-diversity", "cg-high": "CG high-diversity",
              "leave-out-domain": "Leave-out-domain"}
    assert set(rows) == {(td, titles[s]) for td, s in SETUPS} | {("sketch", "CG low-diversity (upper bound)")}
    for (td, setup), vals in SETUPS.items():
        r = rows[(td, titles[setup])]
        m, sd = _stats(vals)
        assert r["ood_acc_mean"] == pytest.approx(m) and r["n_seeds"] == len(vals)
        assert (math.isnan(r["ood_acc_std"]) and math.isnan(sd)) or r["ood_acc_std"] == pytest.approx(sd)
        assert r["ood_acc_unweighted_mean"] == pytest.approx(m / 2)
        assert r["epochs"] == " ".join(["1"] * len(vals))
    # order: the paper's setups, upper bounds after them
    sketch = [r["setup"] for r in res.rows if r["test_domain"] == "sketch"]
    assert sketch == ["Natural-only", "CG low-diversity", "CG high-diversity", "Leave-out-domain",
                      "CG low-diversity (upper bound)"]
    # files: CSV mirrors the rows, markdown holds "mean ± std (n)" in percent, PNGs exist
    with open(tmp_path / "s" / "summary.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == len(res.rows)
    assert float(csv_rows[0]["ood_acc_mean"]) == pytest.approx(res.rows[0]["ood_acc_mean"])
    md = (tmp_path / "s" / "summary.md").read_text()
    assert "| sketch | 20.0 ± 10.0 (n=3) | 40.0 ± 10.0 (n=3) | 60.0 ± 5.0 (n=3) |" in md
    assert "| clipart |  |  | 70.0 (n=1) |  |  |" in md
    for png in ("figure2.png", "curves.png"):
        assert (tmp_path / "s" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "s" / "config.json").exists()
    # an existing summary needs --force
    with pytest.raises(ConfigFieldError, match=r"^out: .*summary.csv already exists \(use --force to replace it\)"):
        run_summary(SummaryConfig(inputs=[results_dir], out=tmp_path / "s"))


@pytest.mark.slow
def test_epoch_metric_and_domain_choices(results_dir, tmp_path):
    res = run_summary(SummaryConfig(inputs=[results_dir], out=tmp_path / "s", epoch="0",
                                    metric="ood_acc_unweighted"))
    ub = [r for r in res.rows if r["setup"].endswith("(upper bound)")][0]
    assert ub["ood_acc_mean"] == pytest.approx(0.9) and ub["ood_acc_unweighted_mean"] == 0.0
    assert list(res.rows[0])[3:5] == ["ood_acc_unweighted_mean", "ood_acc_unweighted_std"]
    with pytest.raises(ConfigFieldError, match="^epoch: .* has no epoch 5"):
        run_summary(SummaryConfig(inputs=[results_dir], out=tmp_path / "t", epoch="5"))
    with pytest.raises(ConfigFieldError, match="^metric: unknown metric 'acc'"):
        run_summary(SummaryConfig(inputs=[results_dir], out=tmp_path / "t", metric="acc"))
    with pytest.raises(ConfigFieldError, match="^domain: must be 'test' or 'real'"):
        run_summary(SummaryConfig(inputs=[results_dir], out=tmp_path / "t", domain="clipart"))


@pytest.mark.slow
def test_grouping_rules(tmp_path):
    a = fake_results(tmp_path / "a" / "results.json", setup="cg-high", test_domain="sketch", seed=0, values=[0.5])
    b = fake_results(tmp_path / "b" / "results.json", setup="cg-high", test_domain="sketch", seed=0, values=[0.6])
    with pytest.raises(ClipgenError, match="same family, test domain, setup and seed"):
        run_summary(SummaryConfig(inputs=[a, b], out=tmp_path / "s"))
    # other kinds / models are other families; a run evaluated off its own test domain is labelled so
    sup = fake_results(tmp_path / "c" / "results.json", setup="cg-high", test_domain="sketch", seed=0,
                       values=[0.1], kind="supervised")
    off = fake_results(tmp_path / "d" / "results.json", setup="cg-low", test_domain="sketch", seed=0, values=[0.2],
                       mixture_test_domain="clipart")
    none = fake_results(tmp_path / "e" / "results.json", setup=None, test_domain="sketch", seed=None, values=[0.3],
                        name="external")
    res = run_summary(SummaryConfig(inputs=[a, sup, off, none], out=tmp_path / "s"))
    got = {(r["family"], r["setup"]) for r in res.rows}
    assert got == {("zero-shot RN50 templates=paper", "CG high-diversity"),
                   ("supervised RN50 templates=paper", "CG high-diversity"),
                   ("zero-shot RN50 templates=paper", "CG low-diversity (trained for clipart)"),
                   ("zero-shot RN50 templates=paper", "run external (no setup recorded)")}
    assert "### supervised RN50" in res.markdown


def test_find_results(tmp_path, results_dir):
    assert len(find_results([results_dir, results_dir])) == 14  # 13 seeds + 1 upper bound; duplicates dropped
    with pytest.raises(ClipgenError, match="no results.json under"):
        (tmp_path / "empty").mkdir()
        find_results([tmp_path / "empty"])
    with pytest.raises(ClipgenError, match="does not exist"):
        find_results([tmp_path / "nope.json"])


@pytest.mark.slow
def test_paper_setups_come_before_their_variants(tmp_path):
    """A run evaluated off its own test domain ("trained for quickdraw") sorts after every paper setup, whatever the
    alphabetical order of the domains."""
    files = [fake_results(tmp_path / f"{i}" / "results.json", setup=s, test_domain="sketch", seed=0, values=[0.5],
                          mixture_test_domain=mtd)
             for i, (s, mtd) in enumerate([("cg-high", "quickdraw"), ("leave-out-domain", "sketch"),
                                           ("cg-high", "sketch"), ("natural-only", None), ("cg-low", "sketch")])]
    files.append(fake_results(tmp_path / "ub" / "results.json", setup="cg-low", pseudo=True, test_domain="sketch",
                              seed=0, values=[0.9]))
    res = run_summary(SummaryConfig(inputs=files, out=tmp_path / "s"))
    header = next(line for line in res.markdown.splitlines() if line.startswith("| test domain"))
    cols = [c.strip() for c in header.strip("|").split("|")][1:]
    assert cols == ["Natural-only", "CG low-diversity", "CG high-diversity", "Leave-out-domain",
                    "CG low-diversity (upper bound)", "CG high-diversity (trained for quickdraw)"]


def test_figure2_bars_carry_their_values(results_dir, tmp_path):
    from clipgen.evaluation.summary import bar_figure, group_runs, load_run, setup_order, summary_rows

    groups = group_runs([load_run(p) for p in find_results([results_dir])])
    rows = summary_rows(groups, "ood_acc", "last", "test")
    fig = bar_figure(rows, "ood_acc", setup_order(groups))
    labels = [t.get_text() for t in fig.axes[0].texts]
    # one label per bar (4 setups on sketch + cg-high on clipart + the upper bound), natural-only = 20.0 %
    assert len(labels) == 6
    assert "20.0" in labels and "70.0" in labels


def test_curves_have_integer_epoch_ticks_and_a_0_to_100_axis_with_one_epoch(tmp_path):
    from clipgen.evaluation.summary import curves_figure, group_runs, load_run

    f = fake_results(tmp_path / "a" / "results.json", setup="cg-high", test_domain="sketch", seed=0, values=[0.0],
                     epochs=[1])
    fig = curves_figure(group_runs([load_run(f)]), "ood_acc", "test")
    ax = fig.axes[0]
    assert list(ax.get_xticks()) == [1.0]
    assert ax.get_ylim() == (0.0, 100.0)
