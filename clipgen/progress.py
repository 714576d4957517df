"""Shared rich consoles and progress bar, so every command looks the same.

``out`` prints results to stdout without hard wrapping (paths and numbers stay greppable); ``console`` is
stderr, where progress bars and notes go.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def make_progress(*, transient: bool = False, disable: bool = False) -> Progress:
    """A progress bar on stderr: description, bar, done/total, elapsed and ETA."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=disable,
    )
