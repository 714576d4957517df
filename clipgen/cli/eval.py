"""``clipgen eval``: zero-shot and supervised evaluation over checkpoint sweeps, the Figure-2 summary, SLURM grids."""

from __future__ import annotations

from pathlib import Path

import typer

from clipgen.cli.common import (
    default,
    device_option,
    force_option,
    json_option,
    precision_option,
    progress_option,
    split_list,
    writable,
)
from clipgen.evaluation.grid import EvalGridConfig
from clipgen.evaluation.summary import SummaryConfig
from clipgen.evaluation.zeroshot_eval import ZeroShotConfig

app = typer.Typer(help="Evaluate checkpoints (zero-shot CLIP, supervised), summarise runs as the paper's Figure 2, "
                       "and run evaluation grids on SLURM.", no_args_is_help=True)

_DATA_ROOT = typer.Option(..., "--data-root", help="DomainNet root (real or synthetic) with {domain}_test.txt files.")
_MODEL_DIR = typer.Option(None, "--model-dir", help="Run directory (clipgen-run.json and its checkpoints "
                                                    "epoch_N.pt).")
_EPOCHS = typer.Option(default(ZeroShotConfig, "epochs"), "--epochs",
                       help="Epochs of --model-dir: all, last, N, A-B or a comma list.")
_TEST_DOMAIN = typer.Option(None, "--test-domain",
                            help="Test domain (default: the run's mixture test domain; required otherwise).")
_HELD_OUT = typer.Option(None, "--held-out", help="Comma-separated held-out classes (default: the run's mixture, "
                                                  "else the paper's 15 present in the data).")
_DEVICE = device_option()
_PRECISION = precision_option("auto (as the published evaluation: on a GPU fp16 autocast for CLIP, fp32 for "
                              "supervised; fp32 on CPU), fp32, bf16, fp16.")
_BATCH = typer.Option(default(ZeroShotConfig, "batch_size"), "--batch-size", min=1, help="Images per forward pass.")
_WORKERS = typer.Option(None, "--workers", min=0, help="Data-loading processes (default: one less than the CPU cores "
                                                       "this process may use, from its affinity and "
                                                       "SLURM_CPUS_PER_TASK; at most 16).", show_default=False)
_MEMORY = typer.Option(None, "--memory-gb", help="Memory (GiB) the models of one pass over the images may take on "
                                                 "the device: each image is decoded once per pass and fed to every "
                                                 "checkpoint of it (default: half the free GPU memory; on CPU a "
                                                 "quarter of the available RAM).", show_default=False)
_IMAGES = typer.Option(None, "--images", help="Image cache of the evaluated images ('clipgen data cache'): read "
                                              "instead of decoding the JPEGs; refused if made for another "
                                              "preprocessing or other images.")
_ON_ERROR = typer.Option(default(ZeroShotConfig, "on_error"), "--on-error",
                         help="Unreadable image: fail, or skip it (reported in results).")
_FORCE = force_option("Discard an existing results.json in the output and start over.")
_PROGRESS = progress_option()
_JSON = json_option()


def _report(outcome, as_json: bool = False) -> None:
    from clipgen.cli.common import emit_json, summary_console

    out = summary_console(as_json)
    doc = outcome.results
    if outcome.skipped:
        out.print(f"already evaluated: epoch(s) {', '.join(map(str, outcome.skipped))}")
    if doc is None:
        out.print(f"nothing evaluated; output {outcome.out_dir}", markup=False, highlight=False)
        if as_json:
            emit_json({"out": outcome.out_dir, "results": None, "evaluated": list(outcome.evaluated),
                       "skipped": list(outcome.skipped)})
        return
    e = doc["epochs"][-1]
    out.print(f"[bold]{doc['kind']}[/] {doc['run']['name']} on {doc['test_domain']}: evaluated epoch(s) "
              f"{', '.join(map(str, outcome.evaluated)) or 'none'}; {len(doc['epochs'])} in {outcome.out_dir}")
    out.print(f"classes {doc['classes']['count']}, held-out {len(doc['held_out']['labels'])} "
              f"({', '.join(doc['held_out']['names'])}), precision {doc['precision']}")
    final: dict[str, dict] = {}
    for d in doc["domains"]:
        m = doc["metrics"][d]
        skipped = doc["counts"][d]["skipped_classes"]
        final[d] = {k: m[k][-1] for k in ("ood_acc", "ood_acc_unweighted", "id_acc", "id_acc_unweighted")}
        final[d].update(n_ood=doc["counts"][d]["ood"], n_id=doc["counts"][d]["id"])
        out.print(f"  epoch {e} {d:<10} OOD {_pct(m['ood_acc'][-1])} (unweighted {_pct(m['ood_acc_unweighted'][-1])})"
                  f"  ID {_pct(m['id_acc'][-1])} (unweighted {_pct(m['id_acc_unweighted'][-1])})"
                  f"  n={doc['counts'][d]['ood']}/{doc['counts'][d]['id']}"
                  + (f"  skipped classes without images: {', '.join(skipped)}" if skipped else ""))
    if "imagenet" in doc["metrics"]:
        final["imagenet"] = {"acc": doc["metrics"]["imagenet"]["acc"][-1]}
        out.print(f"  epoch {e} ImageNet-val top-1 {_pct(doc['metrics']['imagenet']['acc'][-1])}")
    out.print(f"results: {outcome.out_dir / 'results.json'}", markup=False, highlight=False)
    if as_json:
        emit_json({"out": outcome.out_dir, "results": outcome.out_dir / "results.json", "kind": doc["kind"],
                   "run": doc["run"]["name"], "test_domain": doc["test_domain"], "epochs": doc["epochs"],
                   "evaluated": list(outcome.evaluated), "skipped": list(outcome.skipped), "final_epoch": e,
                   "final": final})


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


@app.command("zero-shot")
def zero_shot(
    checkpoints: list[Path] = typer.Argument(None, help="Explicit checkpoint files (epoch_N.pt), with --model.",
                                             show_default=False),
    data_root: Path = _DATA_ROOT,
    model_dir: Path | None = _MODEL_DIR,
    epochs: str = _EPOCHS,
    model: str | None = typer.Option(None, "--model", help="Model name for explicit checkpoint files."),
    test_domain: str | None = _TEST_DOMAIN,
    out: Path | None = typer.Option(None, "--out", "-o", callback=writable,
                                    help="Output folder (default: eval/zero-shot/<test domain> in the run "
                                         "directory)."),
    templates: str = typer.Option(default(ZeroShotConfig, "templates"), "--templates",
                                  help="paper (80 OpenAI + 6 domain = 86), openai (80), named-domain (the published "
                                       "--domain_invariant: the 10 templates naming a domain), simple (1)."),
    held_out: str | None = _HELD_OUT,
    imagenet: Path | None = typer.Option(None, "--imagenet", help="ImageNet val folder (<root>/<wnid>/*.JPEG): "
                                                                  "adds 1000-way zero-shot accuracy."),
    store: list[Path] = typer.Option(None, "--store", help="Activation store(s) of the same checkpoint and images, "
                                                           "or folders searched for *.h5 stores: a matching store's "
                                                           "'embedding' layer replaces the forward pass. Repeatable."),
    device: str = _DEVICE,
    precision: str = _PRECISION,
    batch_size: int = _BATCH,
    workers: int | None = _WORKERS,
    memory_gb: float | None = _MEMORY,
    images: Path | None = _IMAGES,
    on_error: str = _ON_ERROR,
    force: bool = _FORCE,
    progress: bool = _PROGRESS,
    as_json: bool = _JSON,
) -> None:
    """Zero-shot accuracy of a CLIP run on held-out (OOD) and other (ID) classes of a test domain and real."""
    from clipgen.evaluation.zeroshot_eval import ZeroShotConfig, run_zero_shot

    cfg = ZeroShotConfig(data_root=data_root, model_dir=model_dir, checkpoints=list(checkpoints or []), model=model,
                         epochs=epochs, test_domain=test_domain, out=out, templates=templates,
                         held_out=split_list(held_out or None), imagenet=imagenet, stores=list(store or []),
                         device=device,
                         precision=precision, batch_size=batch_size, workers=workers, memory_gb=memory_gb,
                         images=images, on_error=on_error, force=force, progress=progress)
    _report(run_zero_shot(cfg), as_json)


@app.command("supervised")
def supervised(
    checkpoints: list[Path] = typer.Argument(None, help="Explicit checkpoint files (epoch_N.pt), with --model.",
                                             show_default=False),
    data_root: Path = _DATA_ROOT,
    model_dir: Path | None = _MODEL_DIR,
    epochs: str = _EPOCHS,
    model: str | None = typer.Option(None, "--model", help="Image-tower model name for explicit checkpoint files."),
    test_domain: str | None = _TEST_DOMAIN,
    out: Path | None = typer.Option(None, "--out", "-o", callback=writable,
                                    help="Output folder (default: eval/supervised/<test domain> in the run "
                                         "directory)."),
    held_out: str | None = _HELD_OUT,
    device: str = _DEVICE,
    precision: str = _PRECISION,
    batch_size: int = _BATCH,
    workers: int | None = _WORKERS,
    memory_gb: float | None = _MEMORY,
    images: Path | None = _IMAGES,
    on_error: str = _ON_ERROR,
    force: bool = _FORCE,
    progress: bool = _PROGRESS,
    as_json: bool = _JSON,
) -> None:
    """The same metrics for a supervised classifier run (argmax over its DomainNet head)."""
    from clipgen.evaluation.supervised_eval import SupervisedConfig, run_supervised

    cfg = SupervisedConfig(data_root=data_root, model_dir=model_dir, checkpoints=list(checkpoints or []),
                           model=model, epochs=epochs, test_domain=test_domain, out=out,
                           held_out=split_list(held_out or None),
                           device=device, precision=precision, batch_size=batch_size, workers=workers,
                           memory_gb=memory_gb, images=images, on_error=on_error, force=force, progress=progress)
    _report(run_supervised(cfg), as_json)


@app.command("summary")
def summary(
    results: list[Path] = typer.Argument(..., help="results.json files, or folders searched for them."),
    out: Path = typer.Option(default(SummaryConfig, "out"), "--out", "-o", callback=writable, help="Output folder."),
    metric: str = typer.Option(default(SummaryConfig, "metric"), "--metric",
                               help="Headline metric: ood_acc (sample-weighted, default), ood_acc_unweighted, "
                                    "id_acc, id_acc_unweighted, ood_top5, id_top5, ood_top5_unweighted, "
                                    "id_top5_unweighted, ood_macro_f1, id_macro_f1."),
    epoch: str = typer.Option(default(SummaryConfig, "epoch"), "--epoch", help="Epoch of each run: last, or a number."),
    domain: str = typer.Option(default(SummaryConfig, "domain"), "--domain",
                               help="test (the run's test domain) or real."),
    force: bool = force_option("Overwrite an existing summary in --out."),
    as_json: bool = _JSON,
) -> None:
    """The paper's Figure-2 view: held-out-class accuracy per test domain and setup, mean ± std over seeds."""
    from clipgen.cli.common import emit_json, summary_console
    from clipgen.evaluation.summary import SummaryConfig, run_summary

    res = run_summary(SummaryConfig(inputs=list(results), out=out, metric=metric, epoch=epoch, domain=domain,
                                    force=force))
    con = summary_console(as_json)
    con.print(res.markdown, markup=False, highlight=False)
    con.print(f"wrote {', '.join(str(f) for f in res.files)}", markup=False, highlight=False)
    if as_json:
        emit_json({"out": res.out_dir, "files": res.files, "metric": metric, "epoch": epoch, "domain": domain,
                   "rows": res.rows})


@app.command("grid")
def grid(
    runs: list[Path] = typer.Argument(..., help="Run directories, or folders holding run directories."),
    data_root: Path = _DATA_ROOT,
    test_domains: str = typer.Option(default(EvalGridConfig, "test_domains"), "--test-domains",
                                     help="auto (the run's test domain; all five for natural-only), all, or a list."),
    epochs: str = _EPOCHS,
    out_root: Path | None = typer.Option(None, "--out-root",
                                         help="Write OUT_ROOT/<run>/<kind>/<test domain> (default: inside each run)."),
    templates: str = typer.Option(default(EvalGridConfig, "templates"), "--templates",
                                  help="Template set of the zero-shot tasks."),
    imagenet: Path | None = typer.Option(None, "--imagenet", help="ImageNet val folder for the zero-shot tasks."),
    store: list[Path] = typer.Option(None, "--store", help="Activation store(s) or folders of them, passed to every "
                                                           "zero-shot task."),
    images: Path | None = typer.Option(None, "--images", help="Image cache, or a folder of caches (e.g. one per "
                                                              "domain of the test split), passed to every task."),
    per_checkpoint: bool = typer.Option(default(EvalGridConfig, "per_checkpoint"), "--per-checkpoint",
                                        help="One array task per checkpoint instead of one per run and domain."),
    task_args: str | None = typer.Option(None, "--task-args",
                                         help="Extra options for every task, e.g. '--batch-size 500 --workers 6'."),
    jobs_dir: Path = typer.Option(default(EvalGridConfig, "jobs_dir"), "--jobs-dir",
                                  help="Where the .sbatch and .tasks files go."),
    name: str = typer.Option(default(EvalGridConfig, "name"), "--name", help="Job file name stem."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only print the tasks; write nothing (default: write the "
                                                          "job script without submitting it)."),
    submit: bool = typer.Option(False, "--submit", help="Write the job script and submit it with sbatch."),
    local: bool = typer.Option(False, "--local", help="Run the tasks one after another on this machine."),
    partition: str | None = typer.Option(None, "--partition", help="SLURM partition."),
    account: str | None = typer.Option(None, "--account", help="SLURM account."),
    qos: str | None = typer.Option(None, "--qos", help="SLURM QOS."),
    time: str = typer.Option(default(EvalGridConfig, "slurm.time"), "--time", help="Time limit per task."),
    cpus_per_task: int = typer.Option(default(EvalGridConfig, "slurm.cpus_per_task"), "--cpus-per-task",
                                      min=1, help="CPU cores per task (each task decodes images "
                                                  "with --workers = these cores but one)."),
    gpus: int = typer.Option(default(EvalGridConfig, "slurm.gpus_per_node"), "--gpus",
                             min=0, help="GPUs per task (0 for CPU nodes)."),
    mem: str | None = typer.Option(None, "--mem", help="Memory per task, e.g. 32G."),
    max_parallel: int | None = typer.Option(None, "--max-parallel", min=1, help="Array tasks running at once."),
    setup: list[str] = typer.Option(None, "--setup", help="Shell line run before each task (repeatable)."),
) -> None:
    """Evaluate many runs as a SLURM array job; work already in a results.json is skipped."""
    import shlex

    from clipgen.errors import ClipgenError
    from clipgen.evaluation.grid import EvalGridConfig, run_grid
    from clipgen.progress import out as con
    from clipgen.slurm import SlurmConfig

    modes = [m for m, on in (("dry-run", dry_run), ("submit", submit), ("local", local)) if on]
    if len(modes) > 1:
        raise ClipgenError(f"--{modes[0]} and --{modes[1]} exclude each other")
    cfg = EvalGridConfig(runs=list(runs), data_root=data_root, test_domains=test_domains, epochs=epochs,
                     out_root=out_root, templates=templates, imagenet=imagenet, stores=list(store or []), images=images,
                     extra_args=shlex.split(task_args) if task_args else [], per_checkpoint=per_checkpoint,
                     jobs_dir=jobs_dir, name=name, mode=modes[0] if modes else "write",
                     slurm=SlurmConfig(job_name=default(EvalGridConfig, "slurm.job_name"), partition=partition,
                                       account=account, qos=qos, time=time, cpus_per_task=cpus_per_task,
                                       gpus_per_node=gpus, mem=mem, max_parallel=max_parallel,
                                       setup=list(setup or [])))
    res = run_grid(cfg)
    for n in res.notes:
        con.print(f"skip: {n}")
    for t in res.tasks:
        con.print(shlex.join(t.argv))
    if not res.tasks:
        con.print("nothing to do: every requested evaluation is complete")
    elif res.job_id:
        con.print(f"submitted job {res.job_id}: {len(res.tasks)} tasks ({res.script})")
    elif res.script:
        con.print(f"{len(res.tasks)} tasks; job script {res.script} (submit with: sbatch {res.script})")
    elif cfg.mode == "dry-run":
        con.print(f"{len(res.tasks)} tasks (dry run: nothing written)")
    else:
        con.print(f"ran {len(res.tasks)} tasks")
