"""The options every command shares, defined once, their checks, and how a command prints its result.

Each option is a factory (a fresh ``typer.Option`` per use, so a command may word its help for what it replaces or
where it computes) with the same flag names, defaults and metavars everywhere: ``--progress/--no-progress``,
``--device``, ``--precision``, ``--force`` and ``--json``.

With ``--json`` a command prints exactly one JSON document on stdout (its key numbers and output paths) and
everything else (progress bars, notes, the human summary) goes to stderr; without it, the human summary goes to
stdout.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import typer

DEVICE_HELP = "auto, cpu, cuda or cuda:N."


def progress_option(help: str = "Show progress bars (on stderr).") -> Any:
    """``--progress/--no-progress`` (default on)."""
    return typer.Option(True, "--progress/--no-progress", help=help)


def device_option(help: str = DEVICE_HELP, default: str = "auto") -> Any:
    """``--device`` (auto, cpu, cuda, cuda:N)."""
    return typer.Option(default, "--device", help=help)


def precision_option(help: str, default: str | None = "auto") -> Any:
    """``--precision``; each command says which precisions it offers and what auto means there."""
    return typer.Option(default, "--precision", help=help)


def force_option(help: str = "Replace an existing output.") -> Any:
    """``--force`` (a flag, default off): it sets the ``force`` field of the command's config (library entry points
    take no separate ``force`` argument); config.json records it like every other field."""
    return typer.Option(False, "--force", help=help)


def json_option(help: str = "Print one JSON document (key numbers and output paths) on stdout; the summary, "
                            "notes and progress go to stderr.") -> Any:
    """``--json`` (a flag, default off)."""
    return typer.Option(False, "--json", help=help)


def split_list(value: str | None, cast: Callable[[str], Any] = str) -> list | None:
    """A comma-separated option value as a list (items stripped, empty items dropped, each passed through
    ``cast``, whose ValueError the caller words for its option); None stays None."""
    if value is None:
        return None
    return [cast(v.strip()) for v in value.split(",") if v.strip()]


# -- checks of option values that Typer's ``min=`` cannot say: a failed check is a usage error (one line, exit 2)

def positive(value: float | None) -> float | None:
    """Callback of a float option that must be > 0 (a learning rate, a size)."""
    if value is not None and not value > 0:
        raise typer.BadParameter(f"{value:g} is not positive (must be > 0)")
    return value


def writable(ctx: typer.Context, param, value):
    """Callback of an output option (``--out``, ``--logs``): refuse, before any work, a path under a regular file
    or in a folder this process may not write in (one line naming the option and the path)."""
    if value is not None and not ctx.resilient_parsing:
        from clipgen.artifacts import check_writable
        from clipgen.errors import ConfigFieldError, option_error

        try:
            check_writable(value, param.name)
        except ConfigFieldError as e:  # this option, whatever config field it sets
            raise option_error(param.opts[0] if param.opts else "--out", e.detail) from None
    return value


def summary_console(as_json: bool):
    """Where the human summary goes: stdout, or stderr when stdout carries the JSON document."""
    from clipgen.progress import console, out

    return console if as_json else out


def emit_json(doc: Any) -> None:
    """Print ``doc`` as one JSON document on stdout (paths, numpy values and dataclasses converted; NaN as null)."""
    from clipgen.artifacts import to_jsonable

    typer.echo(json.dumps(_finite(to_jsonable(doc)), indent=2))


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def hide_flag_metavars() -> None:
    """Show flags (``--force``, ``--x/--no-x``, ``--help``) without a value type in the rich help, and bounded
    numbers as ``<int>`` / ``<float>`` (their bounds are printed in the help text, e.g. ``[x>=1]``).

    Typer's rich help prints a type column for every option, ``<bool>`` for flags too, although a flag takes no
    value; the plain help already leaves it out. ``<int range>`` widens that column so much that help texts are cut
    at 80 columns. Idempotent.
    """
    from typer.core import TyperOption

    if getattr(TyperOption.display_type_rich, "_clipgen_flags", False):
        return
    original = TyperOption.display_type_rich

    def display_type_rich(self, ctx):
        if getattr(self, "is_flag", False) and self.metavar is None:
            return None
        shown = original(self, ctx)
        return shown.replace(" range>", ">") if isinstance(shown, str) and self.metavar is None else shown

    display_type_rich._clipgen_flags = True
    TyperOption.display_type_rich = display_type_rich

    # A bounded number's range moves from the narrow type column to the help text ("[x>=1]" after the default).
    from rich.text import Text
    from typer import rich_utils

    rich_utils.RANGE_STRING = ""
    original_help = rich_utils._get_parameter_help

    def parameter_help(*, param, ctx, markup_mode):
        columns = original_help(param=param, ctx=ctx, markup_mode=markup_mode)
        describe = getattr(param, "_get_number_range_help_str", None)
        shown = describe() if describe is not None else None
        if shown:
            columns.renderables.append(Text(f"[{shown}]", style=rich_utils.STYLE_OPTION_DEFAULT))
        return columns

    rich_utils._get_parameter_help = parameter_help


# -- which config dataclass each command fills, and the options whose parameter is named otherwise than the field it
#    sets (a dotted field is one of a nested config's). The CLI's error mapping names a field's flag from this, and
#    a test checks every mapped option's default against its field's.

#: command path -> ("module:ConfigClass", {parameter: field})
CONFIGS: dict[str, tuple[str, dict[str, str]]] = {
    "circuits compute": ("clipgen.circuits.compute:CircuitsConfig", {}),
    "circuits merge": ("clipgen.circuits.merge:MergeConfig", {}),
    "circuits nodes": ("clipgen.circuits.similarity:NodeSimilarityConfig", {}),
    "circuits similarity": ("clipgen.circuits.similarity:CircuitSimilarityConfig", {}),
    "circuits plot": ("clipgen.circuits.plot:PlotConfig", {}),
    "cka": ("clipgen.analysis.cka:CKAConfig", {}),
    "data synth": ("clipgen.data.synth:SynthConfig", {}),
    "data captions": ("clipgen.data.captions:CaptionConfig", {}),
    "data mixtures": ("clipgen.data.mixtures:MixturesConfig",
                      {"captions_dir": "captions", "setup": "setups", "domains": "domain_sets",
                       "test_domain": "test_domains"}),
    "data imagenet-captions": ("clipgen.data.imagenet_captions:ImageNetCaptionsConfig", {}),
    "data merge-base": ("clipgen.data.base:MergeBaseConfig", {"mixtures_dir": "mixtures"}),
    "data imagenet-sketch": ("clipgen.data.imagenet_sketch:SketchConfig",
                             {"variant": "variants", "filter_": "filter", "captions_dir": "captions"}),
    "data cache": ("clipgen.data.image_cache:CacheConfig", {}),
    "demo": ("clipgen.demo:DemoConfig", {}),
    "embeddings": ("clipgen.analysis.embeddings:EmbeddingsConfig", {}),
    "eval zero-shot": ("clipgen.evaluation.zeroshot_eval:ZeroShotConfig", {"store": "stores"}),
    "eval supervised": ("clipgen.evaluation.supervised_eval:SupervisedConfig", {}),
    "eval summary": ("clipgen.evaluation.summary:SummaryConfig", {"results": "inputs"}),
    "eval grid": ("clipgen.evaluation.grid:EvalGridConfig",
                  {"store": "stores", "task_args": "extra_args", "partition": "slurm.partition",
                   "account": "slurm.account", "qos": "slurm.qos", "time": "slurm.time",
                   "cpus_per_task": "slurm.cpus_per_task", "gpus": "slurm.gpus_per_node", "mem": "slurm.mem",
                   "max_parallel": "slurm.max_parallel", "setup": "slurm.setup"}),
    "extract": ("clipgen.extraction:ExtractConfig", {"layer": "layers"}),
    "extract layers": ("clipgen.extraction:ExtractConfig", {}),
    "extract merge": ("clipgen.store.merge:MergeConfig", {}),
    "report": ("clipgen.report:ReportConfig", {"study": "inputs"}),
    "sae train": ("clipgen.analysis.sae.config:SAETrainConfig", {"store": "stores"}),
    "sae features": ("clipgen.analysis.feature_sharing:FeatureSharingConfig", {}),
    "sae names": ("clipgen.analysis.sae_names:SaeNamesConfig", {}),
    "status": ("clipgen.status:StatusConfig", {"study": "inputs"}),
    "train clip": ("clipgen.training.clip_settings:ClipTrainConfig", {}),
    "train supervised": ("clipgen.training.supervised:SupervisedTrainConfig", {}),
    "train grid": ("clipgen.training.grid:TrainGridConfig",
                   {"out_dir": "out", "job_name": "slurm.job_name", "partition": "slurm.partition",
                    "account": "slurm.account", "qos": "slurm.qos", "time_limit": "slurm.time",
                    "cpus_per_task": "slurm.cpus_per_task", "mem": "slurm.mem", "max_parallel": "slurm.max_parallel",
                    "setup_cmd": "slurm.setup"}),
}


def default(config: type, name: str) -> Any:
    """The default of field ``name`` of the config dataclass ``config``: an option's default lives in one place,
    the config (``typer.Option(default(CKAConfig, "batch_size"), "--batch-size")``). A dotted name reaches into a
    nested config's default (``"slurm.time"``); a list default comes as a fresh list."""
    import dataclasses

    head, _, rest = name.partition(".")
    f = next((f for f in dataclasses.fields(config) if f.name == head), None)
    if f is None:
        raise AttributeError(f"{config.__name__} has no field {head!r}")
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        raise TypeError(f"{config.__name__}.{head} has no default")
    for part in rest.split(".") if rest else ():
        value = getattr(value, part)
    return list(value) if isinstance(value, list) else value


def default_list(config: type, name: str) -> str:
    """A list field's default as the comma-separated text of its option (``"linear,rbf"``)."""
    return ",".join(map(str, default(config, name)))


def option_for_field(command: Any, path: str, field: str) -> str:
    """The flag (or argument name) of ``command`` (a Click command at ``path``, e.g. ``"train grid"``) that sets
    config field ``field``; ``--`` + the field with dashes where no option sets it."""
    renames = CONFIGS.get(path, ("", {}))[1]
    for p in getattr(command, "params", ()):
        if renames.get(p.name, p.name) == field:
            longs = [o for o in p.opts if o.startswith("--")]
            return longs[0] if longs else (getattr(p, "metavar", None) or p.name.upper())
    return "--" + field.replace("_", "-")
