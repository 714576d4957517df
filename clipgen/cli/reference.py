"""The command reference (docs/commands.md), generated from the Typer app itself.

``python -m clipgen.cli.reference > docs/commands.md`` rewrites it; a test checks that the committed file matches,
so the reference can never drift from the commands.
"""

from __future__ import annotations

import sys
from typing import Any

HEADER = """# Command reference

Generated from the CLI by `python -m clipgen.cli.reference > docs/commands.md` (a test keeps it in sync).
Every command also answers `--help`. Errors in the input are one line (`error: ...`) with exit code 2.
"""


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _param_row(p: Any, ctx: Any) -> list[str]:
    names = ", ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
    if p.param_type_name == "argument":
        names = f"`{p.name.upper()}`" + (" ..." if p.nargs == -1 else "")
    kind = _cell(p.display_type(ctx)).strip("<>") if hasattr(p, "display_type") else ""
    if kind.endswith(" range"):  # a bounded number: say the bounds (e.g. "int >= 1")
        lo, hi = getattr(p, "min", None), getattr(p, "max", None)
        bounds = [f">= {lo}" if lo is not None else "", f"<= {hi}" if hi is not None else ""]
        kind = kind[:-len(" range")] + " " + ", ".join(b for b in bounds if b)
    if p.required:
        default = "required"
    elif getattr(p, "is_flag", False):
        default = (f"`{p.opts[0]}`" if p.default else f"`{p.secondary_opts[0]}`") if p.secondary_opts else ""
    elif p.default is None or p.default in ((), []):
        default = ""
    else:
        default = _cell(p.default)
    return [names, kind, default, _cell(getattr(p, "help", "") or "")]


def _commands(group: Any, path: list[str]) -> list[tuple[list[str], Any]]:
    out = []
    for name in sorted(group.commands):
        cmd = group.commands[name]
        if getattr(cmd, "hidden", False):
            continue
        if hasattr(cmd, "commands"):
            out.append((path + [name], cmd))
            out += _commands(cmd, path + [name])
        else:
            out.append((path + [name], cmd))
    return out


def generate_reference() -> str:
    """The whole reference as Markdown."""
    import typer.main

    from clipgen.cli.main import app

    root = typer.main.get_command(app)
    ctx_root = root.make_context("clipgen", [], resilient_parsing=True)
    lines = [HEADER]
    entries = _commands(root, [])
    lines.append("| command | what it does |\n|---|---|")
    for path, cmd in entries:
        if not hasattr(cmd, "commands"):
            first = (cmd.help or "").strip().split("\n\n")[0]
            lines.append(f"| [`clipgen {' '.join(path)}`](#{'-'.join(['clipgen', *path])}) | {_cell(first)} |")
    lines.append("")
    for path, cmd in entries:
        title = "clipgen " + " ".join(path)
        if hasattr(cmd, "commands"):
            lines.append(f"## {title}\n\n{_cell(cmd.help or '')}\n")
            continue
        lines.append(f"### {title}\n")
        ctx = cmd.make_context(title, [], parent=ctx_root, resilient_parsing=True)
        usage = " ".join(cmd.collect_usage_pieces(ctx))
        lines.append(f"```\n{title} {usage}\n```\n")
        paragraphs = [" ".join(p.split()) for p in (cmd.help or "").strip().split("\n\n") if p.strip()]
        lines.append("\n\n".join(paragraphs) + "\n")
        rows = [_param_row(p, ctx) for p in cmd.params if not getattr(p, "hidden", False)
                and p.name not in ("help",)]
        if rows:
            lines.append("| argument / option | type | default | description |\n|---|---|---|---|")
            lines += ["| " + " | ".join(r) + " |" for r in rows]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:  # pragma: no cover - exercised through the test of docs/commands.md
    sys.stdout.write(generate_reference())


if __name__ == "__main__":  # pragma: no cover
    main()
