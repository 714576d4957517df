"""Testing hooks of the resumable writers: a simulated crash that dies like a killed process.

``run_extract(..., crash_after_blocks=k)``, ``run_cache(..., crash_after_blocks=k)`` and
``run_circuits(..., crash_after=k)`` stop dead after k whole part files, leaving the header and parts a kill would
leave, so tests can check that the same command resumes to an identical file. Nothing else uses them.
"""

from __future__ import annotations


class SimulatedCrash(RuntimeError):
    """Raised by the ``crash_after`` testing hooks: dies like a killed process, leaving the part files."""


def crash_point(done: int, after: int | None, what: str = "blocks") -> None:
    """Raise :class:`SimulatedCrash` once ``done`` parts are written and a crash ``after`` that many was asked for."""
    if after is not None and done >= after:
        raise SimulatedCrash(f"simulated crash after {done} {what}")
