"""The ``clipgen`` command line: a thin Typer layer over the library (see :mod:`clipgen.cli.main`)."""
