"""Two trainings of a benchmark under one budget: launched side by side (or one after the other), timed until they exit.

Shared by ``classification.py`` and ``segmentation.py``: each job is ``(name, command, log file)``; every
process gets ``threads`` CPU threads (``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``) and writes its output to
its log; a job that fails ends the benchmark with an error naming its log.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]

Job = tuple[str, list[str], Path]


def last_override(overrides: Sequence[str], key: str, default: Any) -> Any:
    """The value of the last ``--key=value`` override, else ``default``."""
    value = default
    for override in overrides:
        name, _, given = override.partition("=")
        if name == key:
            value = given
    return value


def launch(cmd: list[str], log: Path, threads: int) -> subprocess.Popen:
    """Start ``cmd`` in the repository with ``threads`` CPU threads, its stdout and stderr going to ``log``."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_all(procs: list[tuple[str, subprocess.Popen, Path]], start: float) -> dict[str, float]:
    """Wall-clock seconds from ``start`` until each process exits; raises if one fails."""
    finished: dict[str, float] = {}
    while len(finished) < len(procs):
        for name, proc, log in procs:
            if name not in finished and proc.poll() is not None:
                if proc.returncode != 0:
                    raise RuntimeError(f"{name} failed (exit {proc.returncode}); see {log}")
                finished[name] = time.monotonic() - start
        time.sleep(1.0)
    return finished


def run_jobs(jobs: Sequence[Job], threads: int, sequential: bool = False, report_only: bool = False) -> dict[str, float]:
    """Wall-clock seconds of each job: all started at once, or one after the other; NaN for each with ``report_only``."""
    if report_only:
        return {name: float("nan") for name, _, _ in jobs}
    if sequential:
        wall: dict[str, float] = {}
        for name, cmd, log in jobs:
            wall.update(wait_all([(name, launch(cmd, log, threads), log)], time.monotonic()))
        return wall
    start = time.monotonic()
    return wait_all([(name, launch(cmd, log, threads), log) for name, cmd, log in jobs], start)
