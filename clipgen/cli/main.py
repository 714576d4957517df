"""The root ``clipgen`` app.

Each command group lives in its own module and imports, at module level, only Typer and the config dataclasses its
options take their defaults from (:func:`clipgen.cli.common.default`); the code that does the work (and torch,
open_clip, umap) is imported inside command bodies, so ``clipgen --help`` stays fast.

Errors: a :class:`~clipgen.errors.ClipgenError` (a :class:`~clipgen.errors.ConfigFieldError` shown with the flag
that sets its field), a usage error, or an OSError a user can fix (disk full, permission denied, read-only file
system, a path blocked by a regular file; :func:`~clipgen.errors.os_error_message`) becomes one line on stderr
(``error: ...``) and exit code 2; anything else is a bug and keeps its traceback (exit code 1).
"""

from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

try:  # typer >= 0.24 ships its own copy of click
    from typer._click import exceptions as _cx
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as _cx

from clipgen import __version__
from clipgen.cli.common import hide_flag_metavars
from clipgen.errors import ClipgenError, ConfigFieldError, option_error, os_error_message

hide_flag_metavars()


class ClipgenGroup(TyperGroup):
    """Root group: turns bad input into a single ``error:`` line with exit code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except ConfigFieldError as e:  # the library names a config field: name the flag that sets it
            _fail(str(option_error(_flag_of(self, args, e.field), e.detail)), e.exit_code)
        except ClipgenError as e:
            _fail(str(e), e.exit_code)
        except _cx.NoArgsIsHelpError as e:  # a bare group name: show its help
            e.show()
            sys.exit(0)
        except _cx.UsageError as e:
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            _fail(" ".join(e.format_message().split()) + hint, 2)
        except (typer.Exit, getattr(_cx, "Exit", typer.Exit)) as e:
            sys.exit(e.exit_code)
        except (typer.Abort, getattr(_cx, "Abort", typer.Abort), KeyboardInterrupt):
            typer.echo("aborted", err=True)
            sys.exit(130)
        except _cx.ClickException as e:
            _fail(" ".join(e.format_message().split()), e.exit_code)
        except Exception as e:
            message = os_error_message(e)  # disk full, permission denied, a path blocked by a file: one line
            if message is None:
                raise
            _fail(message, 2)
        sys.exit(rv if isinstance(rv, int) else 0)


def _flag_of(group, args, field: str) -> str:
    """The flag of the invoked command that sets config field ``field`` (the command path is the leading words of
    the command line: the root and the groups take no options but --help and --version)."""
    from clipgen.cli.common import option_for_field

    cmd, path = group, []
    for word in sys.argv[1:] if args is None else args:
        sub = getattr(cmd, "commands", {}).get(str(word))
        if sub is None:
            break
        cmd, path = sub, [*path, str(word)]
    return option_for_field(cmd, " ".join(path), field)


def _fail(message: str, code: int) -> None:
    typer.echo(f"error: {message}", err=True)
    sys.exit(code)


app = typer.Typer(
    name="clipgen",
    cls=ClipgenGroup,
    help="Reproduce and extend 'When and How Does CLIP Enable Domain and Compositional Generalization?' "
    "(ICML 2025): data mixtures, CLIP training, zero-shot evaluation, activation stores and mechanistic analyses.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"clipgen {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """clipgen: the paper's whole study, from data mixtures to circuits."""


def _register() -> None:
    from clipgen.cli import circuits as circuits_cli
    from clipgen.cli import cka as cka_cli
    from clipgen.cli import data
    from clipgen.cli import demo as demo_cli
    from clipgen.cli import embeddings as embeddings_cli
    from clipgen.cli import eval as eval_cli
    from clipgen.cli import extract as extract_cli
    from clipgen.cli import report as report_cli
    from clipgen.cli import sae as sae_cli
    from clipgen.cli import status as status_cli
    from clipgen.cli import train as train_cli

    app.add_typer(circuits_cli.app, name="circuits")
    app.command("cka")(cka_cli.cka)
    app.add_typer(data.app, name="data")
    app.command("demo")(demo_cli.demo)
    app.command("embeddings")(embeddings_cli.embeddings)
    app.add_typer(eval_cli.app, name="eval")
    app.add_typer(extract_cli.app, name="extract")
    app.command("report")(report_cli.report)
    app.add_typer(sae_cli.app, name="sae")
    app.command("status")(status_cli.status)
    app.add_typer(train_cli.app, name="train")


_register()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point; ``argv`` makes it callable from Python and tests."""
    app(args=argv, prog_name="clipgen")


if __name__ == "__main__":  # pragma: no cover
    main()
