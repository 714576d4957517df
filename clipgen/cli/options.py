"""Checks of numeric options shared by the command modules (integers use Typer's ``min=``; these cover what
``min=`` cannot say, such as a float that must be strictly positive). A failed check is a usage error: one line
naming the option, exit code 2."""

from __future__ import annotations

import typer


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

        check_writable(value, param.opts[0] if param.opts else "--out")
    return value
