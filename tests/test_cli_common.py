"""The shared options (clipgen.cli.common): one JSON document on stdout, the same flags on every command, and help
that fits an 80-column terminal."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.main import get_command
from typer.testing import CliRunner

from clipgen.cli.common import CONFIGS, default, emit_json, split_list
from clipgen.cli.main import app
from clipgen.cli.reference import _commands

#: Commands that print a result or a summary: each takes --json.
JSON_COMMANDS = ["cka", "embeddings", "sae train", "sae features", "circuits nodes", "circuits similarity",
                 "eval summary", "eval zero-shot", "eval supervised", "data mixtures", "data captions", "data cache",
                 "extract", "extract layers", "extract info", "circuits info"]
#: Commands that show progress bars: each takes --progress/--no-progress.
PROGRESS_COMMANDS = ["cka", "embeddings", "sae train", "sae features", "extract", "eval zero-shot",
                     "eval supervised", "circuits compute", "circuits nodes", "circuits similarity", "data cache",
                     "data captions", "data mixtures", "demo", "train supervised"]


def _all_commands() -> dict[str, object]:
    return {" ".join(path): cmd for path, cmd in _commands(get_command(app), [])}


def _options(cmd) -> dict[str, object]:
    return {o: p for p in cmd.params for o in (*p.opts, *p.secondary_opts)}


def _help(path: str) -> str:
    r = CliRunner().invoke(app, [*path.split(), "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert r.exit_code == 0, r.output
    return r.output


def test_emit_json_is_one_document_with_paths_numpy_values_and_nan_as_null(capsys):
    emit_json({"out": Path("/x/y"), "n": np.int64(3), "v": np.array([0.5, np.nan]), "f": math.inf})
    text = capsys.readouterr().out
    assert json.loads(text) == {"out": "/x/y", "n": 3, "v": [0.5, None], "f": None}
    assert "NaN" not in text and "Infinity" not in text


def test_split_list_of_a_comma_separated_option():
    assert split_list(None) is None
    assert split_list("") == [] and split_list(" , ,") == []
    assert split_list(" a, b ,,c ") == ["a", "b", "c"]
    assert split_list("0, 2", int) == [0, 2]
    with pytest.raises(ValueError):
        split_list("0,x", int)


@pytest.mark.parametrize("path", JSON_COMMANDS)
def test_json_option_everywhere(path):
    opt = _options(_all_commands()[path])["--json"]
    assert opt.is_flag and opt.default is False


@pytest.mark.parametrize("path", PROGRESS_COMMANDS)
def test_progress_option_everywhere(path):
    opts = _options(_all_commands()[path])
    assert opts["--progress"] is opts["--no-progress"] and opts["--progress"].default is True


def test_common_options_are_spelled_the_same_everywhere():
    for path, cmd in _all_commands().items():
        opts = _options(cmd)
        for name in ("--force", "--json"):
            if name in opts:
                assert opts[name].is_flag and opts[name].default is False, (path, name)
        if "--device" in opts:
            assert opts["--device"].default == "auto", path


@pytest.mark.slow
def test_help_fits_80_columns_and_flags_have_no_type():
    """No help line is cut ('…') or wider than 80 columns, and flags show no '<bool>' type (they take no value)."""
    problems = []
    for path in ["", *_all_commands()]:
        text = _help(path)
        problems += [(path, line) for line in text.splitlines() if "…" in line or len(line) > 80]
        problems += [(path, line) for line in text.splitlines() if "<bool>" in line]
    assert not problems, "\n".join(f"{p}: {line}" for p, line in problems)
    force = next(line for line in _help("cka").splitlines() if "--force" in line)
    assert force.split("│")[1].split()[:2] == ["--force", "Replace"]


#: Options whose default is the config field's default spelled for the command line, or left to the command.
SPELLED_OTHERWISE = {
    ("data mixtures", "test_domain"): "'all' = every test domain (the field's None)",
    ("data imagenet-sketch", "modes"): "'all' = every mix mode (the field's default list)",
    ("sae train", "resample_every"): "None = the field's default, or 0 with --paper",
}


def _config(path: str) -> type:
    import importlib

    module, name = CONFIGS[path][0].split(":")
    return getattr(importlib.import_module(module), name)


def test_every_config_command_is_mapped():
    import dataclasses

    commands = _all_commands()
    for path, (_, renames) in CONFIGS.items():
        config = _config(path)
        assert dataclasses.is_dataclass(config), path
        params = {p.name for p in commands[path].params}
        for param, field in renames.items():  # the renames name real parameters and real fields
            assert param in params, (path, param)
            default(config, field) if "." in field else config.__dataclass_fields__[field]


@pytest.mark.parametrize("path", sorted(CONFIGS))
def test_option_defaults_are_the_config_defaults(path):
    """Each option that sets a config field has the field's default (the CLI reads it from the config): the two
    cannot drift apart."""
    config, renames = _config(path), CONFIGS[path][1]
    checked = 0
    for p in _all_commands()[path].params:
        field = renames.get(p.name, p.name)
        try:
            expected = default(config, field)
        except AttributeError:
            continue  # not a field of the config (--json, --dry-run, ...)
        except TypeError:
            expected = ...  # a required field
        if (path, p.name) in SPELLED_OTHERWISE:
            continue
        checked += 1
        given = p.default
        if given is None and (expected is ... or expected in ("", [])):
            continue  # required on the command line, or derived by the command (e.g. --out from the input)
        if isinstance(given, str) and isinstance(expected, list):
            given, expected = split_list(given), [str(x) for x in expected]
        assert given == expected, f"{path} {p.opts or p.name}: CLI default {given!r}, {config.__name__}.{field} " \
                                  f"default {expected!r}"
    assert checked > 0
