"""The pipeline scripts in scripts/: syntax, one-line errors, dry runs on the synthetic data, and real runs.

Every script is run as a subprocess with a minimal environment. The data stage runs for real on the tiny
synthetic DomainNet (captions + mixtures); the SLURM stages run in dry-run mode, and once for real against a
fake ``sbatch`` on PATH that records its arguments and prints job ids, so the submitted job scripts, task
lists and --dependency chains are checked as they would reach SLURM.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clipgen import domainnet as dn

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
STAGES = ["prepare_data.sh", "train.sh", "extract.sh", "analyses.sh", "evaluate.sh", "reproduce.sh"]
ALL_SCRIPTS = sorted(p.relative_to(SCRIPTS).as_posix() for p in [*SCRIPTS.glob("*.sh"), *SCRIPTS.glob("slurm/*")])
CLIPGEN = str(Path(sys.executable).with_name("clipgen"))
LETTERS = "cipqrs"

FAKE_SBATCH = """#!/usr/bin/env bash
# records its arguments (one line, NUL-free) and prints the next job id
log=${FAKE_SBATCH_LOG:?}
n=$(( $( (cat "$log" 2>/dev/null || true) | wc -l) + 500 ))
printf '%s\\n' "$*" >> "$log"
echo "$n"
"""


def base_env(tmp_path: Path, **extra: str | Path) -> dict[str, str]:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "TMPDIR": str(tmp_path), "LANG": "C.UTF-8",
           "OMP_NUM_THREADS": "1", "CLIPGEN": CLIPGEN, "COLUMNS": "200"}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run(script: str, env: dict[str, str], *args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPTS / script), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=env.get("HOME"))


def ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}"
    return r.stdout


def sbatch_lines(out: str) -> list[tuple[list[str], str]]:
    """The dry-run submissions: (sbatch argv, placeholder job id)."""
    found = []
    for line in out.splitlines():
        m = re.match(r"^\+ (sbatch .*)  # -> job (dry-\d+)$", line)
        if m:
            found.append((m.group(1).split(" "), m.group(2)))
    return found


def option(argv: list[str], name: str) -> str | None:
    for a in argv:
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return None


def job_named(subs: list[tuple[list[str], str]], name: str) -> tuple[list[str], str]:
    hits = [s for s in subs if option(s[0], "job-name") == name]
    assert len(hits) == 1, f"{len(hits)} submissions named {name}: {[option(s[0], 'job-name') for s in subs]}"
    return hits[0]


def identifier(setup: str, x: str | None) -> str:
    """The published identifier, computed independently of scripts/lib.sh."""
    if setup == "natural-only":
        return "lso-real-only"
    keep = {"cg-low": lambda d: d in ("real", x), "cg-high": lambda d: True,
            "leave-out-domain": lambda d: d != x}[setup]
    return "lso-" + "".join(d[0] for d in sorted(dn.DOMAINS, key=lambda d: LETTERS.index(d[0])) if keep(d)) \
        + f"-no{x}classes"


def main_grid_names(seeds=(0, 1, 2)) -> list[str]:
    names = []
    for s in seeds:
        names.append(f"natural-only-s{s}")
        for setup in ("cg-low", "cg-high", "leave-out-domain"):
            names += [f"{setup}-{x}-s{s}" for x in dn.TEST_DOMAINS]
    return names


@pytest.fixture(scope="module")
def prepared(synth_root, tmp_path_factory) -> Path:
    """OUT after a real run of scripts/prepare_data.sh on the tiny synthetic DomainNet (read-only)."""
    tmp = tmp_path_factory.mktemp("scripts-data")
    env = base_env(tmp, OUT=tmp / "out", DOMAINNET=synth_root, BASE_TRAIN=synth_root / "base_train.tsv",
                   BASE_VAL=synth_root / "base_val.tsv")
    r = run("prepare_data.sh", env)
    ok(r)
    return tmp / "out"


def data_env(tmp_path: Path, synth_root: Path, prepared: Path, **extra) -> dict[str, str]:
    """A fresh OUT whose data/ is the prepared one (symlinked)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "data").symlink_to(prepared / "data")
    return base_env(tmp_path, OUT=out, DOMAINNET=synth_root, BASE_TRAIN=synth_root / "base_train.tsv",
                    BASE_VAL=synth_root / "base_val.tsv", PRESET="synthetic", **extra)


# ----------------------------------------------------------------------------------------------------------------
# Static checks


@pytest.mark.parametrize("script", ALL_SCRIPTS)
def test_bash_syntax(script):
    r = subprocess.run(["bash", "-n", str(SCRIPTS / script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = (SCRIPTS / script).read_text()
    assert text.startswith("#!/usr/bin/env bash") or script == "lib.sh"
    assert "set -euo pipefail" in text or script == "lib.sh"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck():
    r = subprocess.run(["shellcheck", "-x", *ALL_SCRIPTS], cwd=SCRIPTS, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("script", STAGES)
def test_help_is_the_header(script, tmp_path):
    r = run(script, base_env(tmp_path), "--help")
    out = ok(r)
    assert out.startswith(f"scripts/{script}:")
    assert "Variables:" in out and "Example:" in out and "--dry-run" in out
    assert not r.stderr


# ----------------------------------------------------------------------------------------------------------------
# Bad input: one line, exit code 2, nothing written


@pytest.mark.parametrize("script", STAGES)
def test_missing_out_is_one_line_exit_2(script, tmp_path, synth_root):
    r = run(script, base_env(tmp_path, DOMAINNET=synth_root), "--dry-run")
    assert r.returncode == 2
    assert r.stderr.splitlines() == [f"error: OUT is not set (the output root of the pipeline); see '{script} --help'"]
    assert r.stdout == ""


@pytest.mark.parametrize("script", [s for s in STAGES if s != "train.sh"])
def test_missing_domainnet_path_is_one_line_exit_2(script, tmp_path):
    r = run(script, base_env(tmp_path, OUT=tmp_path / "out", DOMAINNET=tmp_path / "nowhere"), "--dry-run")
    assert r.returncode == 2
    assert r.stderr.splitlines() == [f"error: DOMAINNET={tmp_path / 'nowhere'}: no such directory"]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_other_bad_input(tmp_path, synth_root):
    env = base_env(tmp_path, OUT=tmp_path / "out", DOMAINNET=synth_root)
    cases = [
        ("prepare_data.sh", {}, [], "error: no base dataset: set IMAGENET_TRAIN and IMAGENET_CAPTIONS_JSON"),
        ("prepare_data.sh", {"IMAGENET_TRAIN": synth_root}, [], "error: IMAGENET_CAPTIONS_JSON is not set"),
        ("train.sh", {"SEEDS": "0,x"}, ["--dry-run"], "error: SEEDS=0,x: not a comma-separated list of integers"),
        ("train.sh", {"DRY_RUN": "yes"}, [], "error: DRY_RUN=yes: use 1"),
        ("extract.sh", {"EXTRACT_SHARDS": "0"}, ["--dry-run"], "error: EXTRACT_SHARDS=0: not a positive integer"),
        ("analyses.sh", {"AFTER": "12;rm"}, ["--dry-run"], "error: AFTER=12;rm: not a list of SLURM job ids"),
        ("evaluate.sh", {"CLIPGEN": "no-such-clipgen"}, ["--dry-run"], "error: CLIPGEN: 'no-such-clipgen' not found"),
        ("reproduce.sh", {}, ["--from", "nowhere"], "error: --from nowhere: unknown stage"),
        ("reproduce.sh", {}, ["--bogus"], "error: reproduce.sh: unknown argument '--bogus'"),
        # not dry: the training stage needs the mixtures, the others their runs
        ("train.sh", {}, [], "error: " + str(tmp_path / "out/data/mixtures/mixtures.json") + " not found"),
        ("extract.sh", {"MECH_RUNS": str(tmp_path / "run")}, [], f"error: {tmp_path / 'run'}: not a clipgen run"),
    ]
    for script, extra, args, start in cases:
        r = run(script, {**env, **extra}, *args)
        assert r.returncode == 2, (script, extra, r.stdout, r.stderr)
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(start), (script, extra, r.stderr)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------------------
# Stage 1: data preparation, for real


@pytest.mark.slow
def test_prepare_data_makes_captions_and_mixtures(prepared, synth_root, tmp_path):
    data = prepared / "data"
    for d in dn.DOMAINS:
        for s in dn.SPLITS:
            for sub in ("", "aligned-captions/"):
                rows = (data / "captions" / sub / f"{d}_{s}.tsv").read_text().splitlines()
                split_rows = (synth_root / f"{d}_{s}.txt").read_text().splitlines()
                assert len(rows) == len(split_rows) > 0
    summary = json.loads((data / "captions" / "captions-summary.json").read_text())
    assert summary["seed"] == 42
    assert all(v == 0 for v in summary["domain_term_fraction"]["aligned"].values())

    index = json.loads((data / "mixtures" / "mixtures.json").read_text())["mixtures"]
    combined = {f: e for f, e in index.items() if f.startswith("combined-captions-")}
    main = {(e["setup"], e["test_domain"], e["split"]) for e in combined.values() if not e.get("aligned")}
    expected = {("natural-only", None, sp) for sp in ("train", "val")}
    expected |= {(s, x, sp) for s in ("cg-low", "cg-high", "leave-out-domain") for x in dn.TEST_DOMAINS
                 for sp in ("train", "val")}
    assert main == expected  # the 16 mixtures of the main grid, train and val
    for f, e in combined.items():
        tag = identifier(e["setup"], e["test_domain"]) + ("-aligned" if e.get("aligned") else "")
        assert f == f"combined-captions-{e['split']}-{tag}.tsv" and (data / "mixtures" / f).is_file()
        base = "base_train.tsv" if e["split"] == "train" else "base_val.tsv"
        assert e["base"] == str(synth_root / base) and e["counts"]["base"] > 0
    aligned = [e for e in combined.values() if e.get("aligned")]
    assert sorted((e["setup"], e["test_domain"], e["split"]) for e in aligned) == [
        ("cg-high", "quickdraw", "train"), ("cg-high", "quickdraw", "val")]
    # aligned captions name no domain: only the generic terms
    rows = (data / "mixtures" / "combined-captions-train-lso-cipqrs-noquickdrawclasses-aligned.tsv").read_text()
    dn_captions = [line.split("\t")[1] for line in rows.splitlines() if str(synth_root) + "/quickdraw/" in line]
    assert dn_captions and all(("image" in c or "picture" in c) and "doodle" not in c and "quickdraw" not in c
                               for c in dn_captions)

    # a second run has nothing to do and leaves every file alone
    env = base_env(tmp_path, OUT=prepared, DOMAINNET=synth_root, BASE_TRAIN=synth_root / "base_train.tsv",
                   BASE_VAL=synth_root / "base_val.tsv")
    before = {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()}
    r = run("prepare_data.sh", env, "--check")
    assert r.returncode == 0 and r.stdout.startswith("data: complete (captions mixtures aligned)")
    out = ok(run("prepare_data.sh", env))
    assert "clipgen data" not in out and out.count("done, skipped") == 3
    assert {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()} == before
    r = run("prepare_data.sh", {**env, "UPPER_BOUNDS": "1"}, "--check")
    assert r.returncode == 1 and r.stdout.strip() == "data: to do: upper-bounds"


@pytest.mark.slow
def test_lib_identifiers_match_the_mixture_index(prepared):
    index = json.loads((prepared / "data" / "mixtures" / "mixtures.json").read_text())["mixtures"]
    pairs = sorted({(e["setup"], e["test_domain"] or "") for e in index.values() if not e.get("aligned")})
    script = "; ".join(f"cg_identifier {s} {x}; echo" for s, x in pairs)
    r = subprocess.run(["bash", "-c", f"source {SCRIPTS / 'lib.sh'}; {script}"], capture_output=True, text=True)
    got = r.stdout.split()
    want = [next(e["identifier"] for e in index.values()
                 if (e["setup"], e["test_domain"] or "") == p and not e.get("aligned")) for p in pairs]
    assert got == want and len(got) == 16


def test_prepare_data_dry_run_with_every_input(tmp_path, synth_root):
    (tmp_path / "imagenet" / "n01440764").mkdir(parents=True)
    (tmp_path / "captions.json").write_text("[]")
    (tmp_path / "cc12m-train.tsv").write_text("filepath\ttitle\n")
    out = tmp_path / "out"
    env = base_env(tmp_path, OUT=out, DOMAINNET=synth_root, IMAGENET_TRAIN=tmp_path / "imagenet",
                   IMAGENET_CAPTIONS_JSON=tmp_path / "captions.json", CC12M_TSV=tmp_path / "cc12m-train.tsv",
                   IMAGENET_SKETCH=tmp_path / "imagenet", UPPER_BOUNDS="1", CHECK_FILES="1")
    stdout = ok(run("prepare_data.sh", env, "--dry-run"))
    cmds = [line[2:].split(" ") for line in stdout.splitlines() if line.startswith("+ ")]
    assert [c[1:3] for c in cmds] == [["data", "imagenet-captions"], ["data", "captions"], ["data", "mixtures"],
                                      ["data", "mixtures"], ["data", "mixtures"], ["data", "merge-base"],
                                      ["data", "imagenet-sketch"]]
    assert all(c[0] == CLIPGEN and "--force" in c for c in cmds)
    base = str(out / "data/imagenet-captions/in-captions-train.tsv")
    ic, cap, paper, aligned, pseudo, merge, sketch = cmds
    assert ic[ic.index("--out") + 1] == str(out / "data/imagenet-captions")
    assert cap[cap.index("--seed") + 1] == "42" and "--aligned" in cap and "--check-files" in cap
    assert "--paper" in paper and paper[paper.index("--base") + 1] == base
    assert aligned[aligned.index("--setup") + 1] == "cg-high" and "--aligned" in aligned
    assert aligned[aligned.index("--test-domain") + 1] == "quickdraw"
    assert "--pseudo" in pseudo and pseudo[pseudo.index("--setup") + 1] == "cg-low,cg-high"
    assert merge[merge.index("--identifiers") + 1] == "paper-cc" and merge[merge.index("--name") + 1] == "cc12m"
    assert sketch[sketch.index("--sketch-root") + 1] == str(tmp_path / "imagenet")
    assert not out.exists()  # a dry run writes nothing


# ----------------------------------------------------------------------------------------------------------------
# Stage 2: training arrays


@pytest.mark.slow
def test_train_dry_run_lists_the_grid(tmp_path, synth_root, prepared):
    env = data_env(tmp_path, synth_root, prepared, SUPERVISED="1", AFTER="4242")
    stdout = ok(run("train.sh", env, "--dry-run"))
    assert stdout.count("48 runs, 0 complete, 48 to train") == 1  # the grid's summary, once
    todo = re.findall(r"^#   \[todo\] ([^:]+): (\S+)  \$ (.*)$", stdout, re.M)
    main = [t for t in todo if not t[0].startswith("aligned-")]
    assert sorted(t[0] for t in main) == sorted(main_grid_names())  # 48 runs: 16 mixtures x 3 seeds
    for name, file, argv in main:
        setup, x = re.match(r"(natural-only|cg-low|cg-high|leave-out-domain)-?(\w*)-s\d$", name).groups()
        assert file == f"combined-captions-train-{identifier(setup, x or None)}.tsv"
        assert f"--name {name} " in argv and " train clip " in argv and "--resume" in argv
        assert f"--seed {name[-1]} " in argv and "--preset synthetic" in argv
    aligned = [t for t in todo if t[0].startswith("aligned-")]
    assert [(t[0], t[1]) for t in aligned] == [
        ("aligned-cg-high-quickdraw-s0", "combined-captions-train-lso-cipqrs-noquickdrawclasses-aligned.tsv")]

    subs = sbatch_lines(stdout)
    assert [option(a, "job-name") for a, _ in subs] == ["clipgen-train-clip", "clipgen-train-clip-aligned",
                                                        "clipgen-train-supervised"]
    assert all(option(a, "dependency") == "afterok:4242" for a, _ in subs)
    sup_argv, _ = subs[2]
    assert option(sup_argv, "array") == "0-44" and sup_argv[-2].endswith("scripts/slurm/tasks.sbatch")
    sup = re.findall(r"^#   (\S+ train supervised .*)$", stdout, re.M)
    assert len(sup) == 45  # cg-low, cg-high, leave-out-domain x 5 test domains x 3 seeds
    assert sorted(re.search(r"--name (\S+)", t).group(1) for t in sup) == sorted(
        n for n in main_grid_names() if not n.startswith("natural-only"))
    assert all(re.search(r"--name \S+-s(\d) .*--seed \1 ", t) for t in sup)
    assert not (tmp_path / "out" / "jobs").exists() and not (tmp_path / "out" / "runs").exists()


# ----------------------------------------------------------------------------------------------------------------
# Stages 3 and 4: extraction and analyses


@pytest.mark.slow
def test_extract_and_analyses_dry_run_chain(tmp_path, synth_root, random_run_dir):
    out = tmp_path / "out"
    run_dir = str(random_run_dir)
    env = base_env(tmp_path, OUT=out, DOMAINNET=synth_root, MECH_RUNS=run_dir, SAE_RUNS=run_dir,
                   SAE_BASE_TSV=synth_root / "base_train.tsv", EXTRACT_SHARDS="4", BASE_SHARDS="2",
                   CIRCUIT_SHARDS="3", PARTITION="gpu", CPU_PARTITION="cpu", ACCOUNT="proj")
    stdout = ok(run("reproduce.sh", env, "--dry-run", "--stages", "extract,analyses"))
    subs = sbatch_lines(stdout)
    ids = {option(a, "job-name"): j for a, j in subs}
    tag = f"{random_run_dir.parent.name}-{random_run_dir.name}"
    store_dir = out / "stores" / random_run_dir.parent.name / random_run_dir.name

    stag = random_run_dir.name  # stores are tagged <run>-<store>
    ext, ext_id = job_named(subs, f"clipgen-extract-{stag}-dn-test")
    assert option(ext, "array") == "0-3" and option(ext, "gres") == "gpu:1"
    assert option(ext, "partition") == "gpu" and option(ext, "account") == "proj"
    # the run is trained already: the store waits only for the image cache, one CPU job per domain, submitted once
    caches = {d: job_named(subs, f"clipgen-cache-test-{d}") for d in dn.DOMAINS}
    assert [option(a, "job-name") for a, _ in subs].count("clipgen-cache-test-real") == 1
    cache_ids = {j for _, j in caches.values()}
    assert set(option(ext, "dependency").removeprefix("afterok:").split(":")) == cache_ids
    for d, (a, _) in caches.items():
        ccmd = a[a.index(str(SCRIPTS / "slurm/job.sbatch")) + 1:]
        assert ccmd[1:3] == ["data", "cache"] and ccmd[ccmd.index("--domains") + 1] == d
        assert ccmd[ccmd.index("--split") + 1] == "test" and ccmd[ccmd.index("--size") + 1] == "224"
        assert ccmd[ccmd.index("--out") + 1] == str(out / "cache" / "test-224" / f"{d}.h5")
        assert option(a, "gres") is None and option(a, "partition") == "cpu" and option(a, "cpus-per-task") == "16"
    cmd = ext[ext.index(str(SCRIPTS / "slurm/job.sbatch")) + 1:]
    assert cmd[cmd.index("--images") + 1] == str(out / "cache" / "test-224")
    assert cmd[cmd.index("--workers") + 1] == "15"  # EXTRACT_CPUS (16) but one
    assert cmd[:2] == [CLIPGEN, "extract"] and cmd[cmd.index("--model-dir") + 1] == run_dir
    assert cmd[cmd.index("--out") + 1] == str(store_dir / "dn-test.h5")
    assert cmd[cmd.index("--split") + 1] == "test"
    assert cmd[cmd.index("--layer") + 1] == "all" and cmd[cmd.index("--shard") + 1] == "auto" and "--resume" in cmd
    merge, merge_id = job_named(subs, f"clipgen-merge-{stag}-dn-test")
    assert option(merge, "dependency") == f"afterok:{ext_id}" and option(merge, "gres") is None
    assert option(merge, "partition") == "cpu"
    shards = [a for a in merge if ".shard-" in a]
    assert shards == [str(store_dir / f"dn-test.shard-{i}-of-4.h5") for i in range(4)]
    base_ext, _ = job_named(subs, f"clipgen-extract-{stag}-base-train-embedding")
    assert option(base_ext, "array") == "0-1" and "--tsv" in base_ext
    assert base_ext[base_ext.index("--compression") + 1] == "none"  # SAE training rows: read at memory speed
    assert "--images" not in base_ext  # images read once anyway: not cached
    train_ext, _ = job_named(subs, f"clipgen-extract-{stag}-dn-train-embedding")
    assert "--images" not in train_ext and option(train_ext, "dependency") is None
    test_ext, _ = job_named(subs, f"clipgen-extract-{stag}-dn-test-embedding")
    assert "--images" in test_ext
    assert option(base_ext, "chdir") == str(synth_root)  # relative image paths: from the TSV's folder
    assert option(ext, "chdir") is None

    for name in (f"clipgen-cka-{tag}", f"clipgen-embeddings-{tag}"):
        a, _ = job_named(subs, name)
        assert option(a, "dependency") == f"afterok:{merge_id}" and option(a, "gres") is None
    sae, sae_id = job_named(subs, f"clipgen-sae-{tag}")
    want = {ids[f"clipgen-merge-{stag}-{s}"] for s in ("dn-test-embedding", "dn-train-embedding",
                                                     "base-train-embedding")}
    assert set(option(sae, "dependency").removeprefix("afterok:").split(":")) == want
    feats, _ = job_named(subs, f"clipgen-sae-features-{tag}")
    assert sae_id in option(feats, "dependency").split(":")
    assert "--test-domain" not in feats  # a run without a mixture: sae features decides (and says so)

    circ, circ_id = job_named(subs, f"clipgen-circuits-{tag}")
    assert option(circ, "array") == "0-2"
    assert set(option(circ, "dependency").removeprefix("afterok:").split(":")) == cache_ids
    ccmd = circ[circ.index(str(SCRIPTS / "slurm/job.sbatch")) + 1:]
    assert ccmd[1:3] == ["circuits", "compute"] and ccmd[ccmd.index("--shard") + 1] == "auto"
    assert ccmd[ccmd.index("--images") + 1] == str(out / "cache" / "test-224")
    cmerge, cmerge_id = job_named(subs, f"clipgen-circuits-merge-{tag}")
    assert option(cmerge, "dependency") == f"afterok:{circ_id}" and len([a for a in cmerge if ".shard-" in a]) == 3
    for what in ("nodes", "similarity"):
        a, _ = job_named(subs, f"clipgen-circuits-{what}-{tag}")
        assert option(a, "dependency") == f"afterok:{cmerge_id}"
    assert not out.exists()


# ----------------------------------------------------------------------------------------------------------------
# Stage 5: evaluation


@pytest.mark.slow
def test_evaluate_dry_run(tmp_path, synth_root, random_run_dir):
    out = tmp_path / "out"
    (out / "runs" / "clip").mkdir(parents=True)
    (out / "runs" / "clip" / "natural-only-s0").symlink_to(random_run_dir)
    env = base_env(tmp_path, OUT=out, DOMAINNET=synth_root, EVAL_ARGS="--batch-size 64", EVAL_CPUS="4",
                   PRESET="synthetic")
    stdout = ok(run("evaluate.sh", env, "--dry-run"))
    tasks = re.findall(r"^#   \S+ -m clipgen.cli.main (eval zero-shot .*)$", stdout, re.M)
    # a run without a mixture is evaluated on every test domain, all epochs
    assert sorted(re.search(r"--test-domain (\w+)", t).group(1) for t in tasks) == sorted(dn.TEST_DOMAINS)
    assert all("--epochs 0,1,2" in t and "--batch-size 64" in t and "--templates paper" in t for t in tasks)
    # every task decodes with the task's CPUs but one, and reads the test images from the cache (size 64: synthetic)
    assert all("--workers 3" in t and f"--images {out / 'cache' / 'test-64'}" in t for t in tasks)
    subs = sbatch_lines(stdout)
    (ev, ev_id), = [s for s in subs if option(s[0], "job-name") == "clipgen-eval"]
    assert ev[-1].endswith("/clipgen-eval.sbatch")
    cache_ids = {job_named(subs, f"clipgen-cache-test-{d}")[1] for d in dn.DOMAINS}
    assert set(option(ev, "dependency").removeprefix("afterok:").split(":")) == cache_ids
    for metric in ("ood-acc", "ood-acc-unweighted"):
        a, _ = job_named(subs, f"clipgen-summary-{metric}")
        assert option(a, "dependency") == f"afterok:{ev_id}"
        assert " eval summary " in " ".join(a) and str(out / "runs" / "clip") in a
    assert sorted(p.name for p in out.iterdir()) == ["runs"]  # nothing written
    # IMAGE_CACHE=0: every task decodes the JPEGs, and nothing waits
    stdout = ok(run("evaluate.sh", {**env, "IMAGE_CACHE": "0"}, "--dry-run"))
    assert "--images" not in stdout and "clipgen-cache-test" not in stdout
    (ev, _), = [s for s in sbatch_lines(stdout) if option(s[0], "job-name") == "clipgen-eval"]
    assert option(ev, "dependency") is None


# ----------------------------------------------------------------------------------------------------------------
# The driver


@pytest.mark.slow
def test_reproduce_dry_run_from_scratch_chains_every_stage(tmp_path, synth_root):
    out = tmp_path / "out"
    env = base_env(tmp_path, OUT=out, DOMAINNET=synth_root, BASE_TRAIN=synth_root / "base_train.tsv",
                   PRESET="synthetic", SAE="0")
    stdout = ok(run("reproduce.sh", env, "--dry-run"))
    subs = sbatch_lines(stdout)
    names = [option(a, "job-name") for a, _ in subs]
    dep = {option(a, "job-name"): (option(a, "dependency") or "").removeprefix("afterok:") for a, _ in subs}
    ids = {option(a, "job-name"): j for a, j in subs}
    assert names[:4] == ["clipgen-data", "clipgen-continue-train", "clipgen-train-clip", "clipgen-train-clip-aligned"]
    assert dep["clipgen-data"] == "" and dep["clipgen-continue-train"] == ids["clipgen-data"]
    cont = subs[1][0]
    assert cont[-3:] == [str(SCRIPTS / "reproduce.sh"), "--stages", "train,extract,analyses,eval"]
    assert "--export=ALL,AFTER=,CG_STATE_DIR=,CG_BATCH_DIR=" in cont
    # the mechanistic stages wait for the training job of the run they read (and the test images for the cache)
    caches = {ids[f"clipgen-cache-test-{d}"] for d in dn.DOMAINS}
    assert names.count("clipgen-cache-test-sketch") == 1  # built once for every stage
    assert set(dep["clipgen-extract-aligned-cg-high-quickdraw-s0-dn-test"].split(":")) == \
        {ids["clipgen-train-clip-aligned"], *caches}
    assert set(dep["clipgen-extract-cg-high-quickdraw-s0-dn-test"].split(":")) == {ids["clipgen-train-clip"], *caches}
    assert dep["clipgen-cka-clip-aligned-aligned-cg-high-quickdraw-s0"] == \
        ids["clipgen-merge-aligned-cg-high-quickdraw-s0-dn-test"]
    assert set(dep["clipgen-circuits-clip-aligned-aligned-cg-high-quickdraw-s0"].split(":")) == \
        {ids["clipgen-train-clip-aligned"], *caches}
    # evaluation is planned by a continuation job after every training array
    assert set(dep["clipgen-continue-eval"].split(":")) == {ids["clipgen-train-clip"],
                                                           ids["clipgen-train-clip-aligned"]}
    assert names.index("clipgen-continue-eval") < names.index("clipgen-eval") < names.index("clipgen-summary-ood-acc")
    assert dep["clipgen-summary-ood-acc"] == ids["clipgen-eval"]
    assert not any(n.startswith("clipgen-sae") for n in names)
    assert not out.exists()


@pytest.mark.slow
def test_reproduce_submits_for_real(tmp_path, synth_root, prepared):
    """Against a fake sbatch: job scripts written by clipgen, task-level dependencies, the eval continuation."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text(FAKE_SBATCH)
    (fake / "sbatch").chmod(0o755)
    log = tmp_path / "sbatch.log"
    env = data_env(tmp_path, synth_root, prepared, FAKE_SBATCH_LOG=log, PARTITION="gpu",
                   SETUP="source /opt/venv/bin/activate")
    env["PATH"] = f"{fake}:{env['PATH']}"
    stdout = ok(run("reproduce.sh", env))
    calls = [line.split(" ") for line in log.read_text().splitlines()]
    ids = {option(c, "job-name"): str(500 + i) for i, c in enumerate(calls)}
    dep = {option(c, "job-name"): (option(c, "dependency") or "").removeprefix("afterok:") for c in calls}
    assert "clipgen-data" not in ids  # the data are complete
    assert option(calls[0], "job-name") == "clipgen-train-clip" and dep["clipgen-train-clip"] == ""

    script = Path(calls[0][-1])
    body = script.read_text()
    assert "#SBATCH --array=0-47" in body and "#SBATCH --partition=gpu" in body
    assert "source /opt/venv/bin/activate" in body
    tasks = script.with_suffix(".tasks").read_text().splitlines()
    assert sorted(re.search(r"--name (\S+)", t).group(1) for t in tasks) == sorted(main_grid_names())
    # the standard quickdraw store waits for exactly the array task that trains its run, and for the image cache
    k = next(i for i, t in enumerate(tasks) if "--name cg-high-quickdraw-s0 " in t)
    caches = {ids[f"clipgen-cache-test-{d}"] for d in dn.DOMAINS}
    assert set(dep["clipgen-extract-cg-high-quickdraw-s0-dn-test"].split(":")) == \
        {f"{ids['clipgen-train-clip']}_{k}", *caches}
    assert set(dep["clipgen-extract-aligned-cg-high-quickdraw-s0-dn-test"].split(":")) == \
        {f"{ids['clipgen-train-clip-aligned']}_0", *caches}
    sae_deps = set(dep["clipgen-sae-clip-cg-high-sketch-s0"].split(":"))
    assert sae_deps == {ids[f"clipgen-merge-cg-high-sketch-s0-{s}"]
                        for s in ("dn-test-embedding", "dn-train-embedding", "base-train-embedding")}
    feats = next(c for c in calls if option(c, "job-name") == "clipgen-sae-features-clip-cg-high-sketch-s0")
    assert " sae features " in " ".join(feats) and " --test-domain sketch " in " ".join(feats)  # the score row
    # the run stops at the evaluation: its continuation waits for both training arrays
    assert option(calls[-1], "job-name") == "clipgen-continue-eval"
    assert set(dep["clipgen-continue-eval"].split(":")) == {ids["clipgen-train-clip"],
                                                           ids["clipgen-train-clip-aligned"]}
    assert calls[-1][-3:] == [str(SCRIPTS / "reproduce.sh"), "--stages", "eval"]
    assert "clipgen-eval" not in ids and "submitted job" in stdout
    rows = (tmp_path / "out" / "jobs" / "submitted.tsv").read_text().splitlines()
    assert [r.split("\t")[1] for r in rows] == [str(500 + i) for i in range(len(calls))]


# ----------------------------------------------------------------------------------------------------------------
# The SLURM batch scripts themselves


def test_batch_scripts_run_their_task(tmp_path):
    tasks = tmp_path / "t.tasks"
    tasks.write_text("echo first\nprintf '%s|' 'two words' \"$MARK\"\n")
    env = base_env(tmp_path, SLURM_ARRAY_TASK_ID="1", SLURM_JOB_ID="9", SETUP="MARK=set-by-setup")
    r = subprocess.run(["bash", str(SCRIPTS / "slurm/tasks.sbatch"), str(tasks)], env=env, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "two words|set-by-setup|"
    r = subprocess.run(["bash", str(SCRIPTS / "slurm/tasks.sbatch"), str(tasks)],
                       env={**env, "SLURM_ARRAY_TASK_ID": "2"}, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: tasks.sbatch: no task 2")
    r = subprocess.run(["bash", str(SCRIPTS / "slurm/job.sbatch"), "printf", "%s", "a b"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.endswith("a b")


def _readme_block(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return next(b for b in blocks if marker in b)


@pytest.mark.slow
def test_readme_reproduce_block_works_as_written_in_dry_run(tmp_path):
    """README's block, with its variables pointed at existing folders and without the real (non-dry) run: no CLIPGEN
    variable, clipgen not on PATH (the project's .venv is found) or on it (an activated environment)."""
    block = _readme_block("scripts/reproduce.sh --dry-run")
    lines = [x for x in block.replace("\\\n", " ").splitlines() if x.strip()]
    export = next(x for x in lines if x.startswith("export "))
    names = re.findall(r"(\w+)=\S+", export)
    assert set(names) == {"DOMAINNET", "IMAGENET_TRAIN", "IMAGENET_CAPTIONS_JSON", "OUT", "PARTITION"}
    values = {"DOMAINNET": tmp_path / "domainnet", "IMAGENET_TRAIN": tmp_path / "imagenet" / "train",
              "IMAGENET_CAPTIONS_JSON": tmp_path / "imagenet_captions.json", "OUT": tmp_path / "out",
              "PARTITION": "gpu"}
    values["DOMAINNET"].mkdir()
    values["IMAGENET_TRAIN"].mkdir(parents=True)
    values["IMAGENET_CAPTIONS_JSON"].write_text("{}")
    export = re.sub(r"(\w+)=\S+", lambda m: f"{m.group(1)}={values[m.group(1)]}", export)
    dry = next(x for x in lines if "scripts/reproduce.sh --dry-run" in x)
    script = f"{export}\n{dry}\n"
    env = {k: v for k, v in base_env(tmp_path).items() if k != "CLIPGEN"}
    bindir = str(Path(sys.executable).parent)
    own_venv = (ROOT / ".venv" / "bin" / "clipgen").is_file()
    if own_venv:  # as a user who has not activated it: clipgen is not on PATH
        env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep)
                                      if p and not (Path(p) / "clipgen").exists())
    else:
        env["PATH"] = bindir + os.pathsep + env["PATH"]
    r = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    out = ok(r)
    assert "# === stage data" in out and "# === stage eval" in out
    subs = sbatch_lines(out)
    assert option(job_named(subs, "clipgen-data")[0], "partition") == "gpu"
    assert not values["OUT"].exists()  # a dry run writes nothing
    if own_venv:
        assert str(ROOT / ".venv" / "bin" / "clipgen") in out
