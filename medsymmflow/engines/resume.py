"""Crash recovery for training runs: pick the checkpoint to resume from, stop cleanly on SIGTERM / SIGINT."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any, Sequence

import torch
from ignite.engine import Engine, Events

from medsymmflow.io import load_checkpoint

__all__ = ["ResumePoint", "StopOnSignal", "resume_checkpoint"]

logger = logging.getLogger(__name__)


class ResumePoint(str):
    """The path of the checkpoint to resume from (a ``str``), carrying its contents as read while choosing it.

    :class:`~medsymmflow.engines.SafeCheckpointLoader` takes the contents from it instead of reading the
    file again, so a resume reads the checkpoint once.
    """

    def __new__(cls, path: str | os.PathLike, checkpoint: dict[str, Any]) -> "ResumePoint":
        point = super().__new__(cls, os.fspath(path))
        point._checkpoint = checkpoint
        return point

    def take_checkpoint(self) -> dict[str, Any] | None:
        """The contents, once: then released, so that training does not hold a second copy of the weights."""
        checkpoint, self._checkpoint = self._checkpoint, None
        return checkpoint


def resume_checkpoint(
    candidates: Sequence[str | os.PathLike], resume: bool, protected: Sequence[str | os.PathLike] = ()
) -> ResumePoint | None:
    """The newest intact checkpoint of ``candidates`` to resume from, or ``None`` to start from epoch 0.

    "Newest" is the one whose trainer state is furthest on; a file that cannot be read (truncated,
    damaged) is skipped with a warning naming it. Without ``resume``, any existing candidate or
    ``protected`` file (a run's ``best.pt``) stops the run with ValueError instead of overwriting it.
    With ``resume`` and no checkpoint at all the run starts afresh; with checkpoints but none intact it
    stops. Temporary files a killed writer left next to the candidates are removed. The chosen path
    comes as a :class:`ResumePoint` holding the contents read here (each file is read once).
    """
    candidates = [Path(p) for p in candidates]
    existing = [p for p in (*candidates, *map(Path, protected)) if p.exists()]
    if not resume:
        if existing:
            raise ValueError(f"{existing[0]} exists; pass --resume true to continue or choose another --output_dir")
        _remove_stale_temporaries(candidates, protected)
        return None
    best: tuple[int, Path, int, dict[str, Any]] | None = None
    problems = []
    for path in (p for p in candidates if p.exists()):
        try:
            stored = load_checkpoint(path, map_location="cpu")
            trainer = stored["trainer"]
            iteration = int(trainer["iteration"])
        except (ValueError, KeyError, TypeError) as e:
            why = f"no trainer state ({e})" if isinstance(e, (KeyError, TypeError)) else str(e)
            logger.warning("skipping checkpoint %s: %s", path, why)
            problems.append(f"{path.name}: {why}")
            continue
        if best is None or iteration > best[0]:
            best = (iteration, path, int(trainer["epoch_length"]), stored)
    if best is None:
        if problems:
            raise ValueError(
                f"no intact checkpoint to resume from in {candidates[0].parent} ({'; '.join(problems)}); "
                "move the damaged files away to start afresh"
            )
        logger.info("no checkpoint in %s to resume from; starting from epoch 0", candidates[0].parent)
        _remove_stale_temporaries(candidates, protected)
        return None
    iteration, path, epoch_length, stored = best
    epoch, rest = divmod(iteration, max(epoch_length, 1))
    where = f"epoch {epoch}" + (f" + {rest} of {epoch_length} iterations" if rest else "")
    logger.info("resuming from %s (%s, iteration %d)", path, where, iteration)
    _remove_stale_temporaries(candidates, protected)
    return ResumePoint(path, stored)


def _remove_stale_temporaries(*groups: Sequence[str | os.PathLike]) -> None:
    """Delete the ``.<name>.*.tmp`` files an atomic write killed half-way left behind."""
    for group in groups:
        for path in map(Path, group):
            for tmp in path.parent.glob(f".{path.name}.*.tmp"):
                logger.info("removing %s, left by an interrupted checkpoint write", tmp)
                tmp.unlink(missing_ok=True)


class StopOnSignal:
    """Turns SIGTERM and SIGINT during training into a clean stop with a resumable checkpoint.

    At the first signal the trainer terminates after its current iteration without firing ``COMPLETED``
    (so nothing that belongs to a finished training runs, e.g. the VAE export); on ``TERMINATE`` the
    bundles' checkpoint saver writes ``last.pt`` (that state may lie within an epoch; a resume continues
    that epoch with its remaining iterations). :meth:`exit_if_stopped`,
    called right after ``trainer.run()``, then ends the process with exit code 128 + the signal number
    (143 for SIGTERM, 130 for SIGINT) instead of going on to the evaluation. A second signal acts as
    usual. Under ``torch.distributed`` the ranks agree after every iteration, so all stop together.
    """

    def __init__(self, signals: Sequence[str] = ("SIGTERM", "SIGINT")) -> None:
        self.signals = [signal.Signals[name] if isinstance(name, str) else signal.Signals(name) for name in signals]
        self.signum: int | None = None
        self._received: int | None = None
        self._previous: dict[int, Any] = {}
        self._engine: Engine | None = None

    def attach(self, engine: Engine) -> None:
        """Install the signal handlers while ``engine`` runs."""
        self._engine = engine
        engine.add_event_handler(Events.STARTED, self._install)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._check)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._check)
        engine.add_event_handler(Events.COMPLETED, self._restore)
        engine.add_event_handler(Events.TERMINATE, self._restore)

    def _install(self, engine: Engine) -> None:
        if threading.current_thread() is not threading.main_thread():
            logger.debug("not in the main thread: SIGTERM / SIGINT keep their default behaviour")
            return
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._received = signum
        # a second signal acts as without this handler (e.g. Ctrl+C twice interrupts the save)
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
        logger.warning("received %s: stopping after this iteration and saving a resumable checkpoint", signal.Signals(signum).name)

    def _check(self, engine: Engine) -> None:
        received = self._received or 0
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            cuda = torch.distributed.get_backend() == "nccl"
            flag = torch.tensor([received], device=torch.device("cuda", torch.cuda.current_device()) if cuda else "cpu")
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            received = int(flag.item())
        if received and self.signum is None:
            self.signum = received
            engine.terminate(skip_completed=True)

    def _restore(self, engine: Engine) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if self._received and self.signum is None:  # arrived during the last validation
            self.signum = self._received

    def exit_if_stopped(self) -> None:
        """End the process with 128 + the signal number when a signal stopped training."""
        if self.signum is None:
            return
        state = self._engine.state if self._engine is not None else None
        where = f" at epoch {state.epoch}, iteration {state.iteration}" if state is not None else ""
        logger.warning(
            "training stopped by %s%s; the resumable checkpoint is saved: continue with --resume true",
            signal.Signals(self.signum).name, where,
        )
        raise SystemExit(128 + int(self.signum))
