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

from clipgen.cli.common import emit_json
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
