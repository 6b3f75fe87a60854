"""Small ignite handlers the bundles wire in: per-epoch seeding, atomic checkpoints, checked checkpoint loading, the training budget, EMA."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.utils import set_determinism

from medsymmflow.engines.resume import ResumePoint
from medsymmflow.io import atomic_open, check_checkpoint, load_checkpoint

__all__ = [
    "EMAUpdate",
    "AtomicCheckpointSaver",
    "AtomicDiskSaver",
    "EpochSeedHandler",
    "SafeCheckpointLoader",
    "TrainingBudget",
]

logger = logging.getLogger(__name__)


class EpochSeedHandler:
    """Re-seeds python, numpy and torch at every epoch start from ``(seed, epoch)``.

    Shuffling, time sampling, noise and dequantization of epoch ``e`` then depend only on the seed and
    ``e``, so a run resumed from a checkpoint continues exactly like an uninterrupted one. ``transforms``
    (e.g. a data pipeline's ``Compose`` with random crops and flips) is re-seeded with the same seed.
    """

    def __init__(self, seed: int = 0, transforms: Any = None) -> None:
        self.seed = int(seed)
        # MONAI's random transforms draw from their own RandomState, not from numpy's global one
        self.transforms = transforms

    def attach(self, engine: Engine) -> None:
        """Register the re-seeding on ``EPOCH_STARTED``."""
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        """Seed every RNG for the epoch that is starting."""
        seed = (self.seed * 100003 + int(engine.state.epoch)) % (2**31)
        set_determinism(seed=seed)
        if self.transforms is not None:
            self.transforms.set_random_state(seed=seed)


class AtomicDiskSaver(DiskSaver):
    """ignite's DiskSaver writing atomically, removing superseded files only once the new one is in place.

    Each file is written to a hidden ``.<name>.*.tmp`` in the same folder, synced and renamed over the
    target, so a killed run never leaves a torn file. ignite's ``Checkpoint`` asks to remove the file it
    supersedes *before* writing the next one (a kill in between left no checkpoint at all); here such
    removals wait until the next file has been written. With a fixed ``filename`` and ``previous``, the
    file being replaced is first kept under ``previous`` (one generation back, a fallback should the
    newer file ever be damaged); the fixed file exists at every moment once first written.
    """

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None, previous: str | None = None) -> None:
        super().__init__(dirname=str(dirname), require_empty=False, atomic=True, create_dir=True)
        self.filename = filename
        self.previous = previous if filename else None
        self._pending: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        """Save ``checkpoint`` (under the fixed filename when one was given), then drop superseded files."""
        name = self.filename or filename
        path = Path(self.dirname) / name
        if self.previous and path.is_file():
            self._keep_previous(path)
        with atomic_open(path, "wb") as f:
            torch.save(checkpoint, f)
        _fsync_dir(self.dirname)
        for old in self._pending:
            if old not in (name, self.previous):
                Path(self.dirname, old).unlink(missing_ok=True)
        self._pending.clear()

    def _keep_previous(self, path: Path) -> None:
        # a hard link costs no copy; the fixed file keeps existing until the new one replaces it
        fd, tmp = tempfile.mkstemp(prefix=f".{self.previous}.", suffix=".tmp", dir=self.dirname)
        os.close(fd)
        os.unlink(tmp)
        try:
            os.link(path, tmp)
        except OSError:  # file systems without hard links
            shutil.copy2(path, tmp)
        os.replace(tmp, path.with_name(self.previous))

    def remove(self, filename: str) -> None:
        """Remove a superseded checkpoint once the next one has been written."""
        self._pending.append(self.filename or filename)


def _fsync_dir(dirname: str | os.PathLike) -> None:
    """Make a rename in ``dirname`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(dirname, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's CheckpointSaver with atomic files, a rolling resumable checkpoint and a resumable best metric.

    ``interval_filename`` gives the every-``save_interval`` checkpoint a fixed name (the bundles use
    ``last.pt``, also their ``final_filename``): it is replaced atomically, the file it replaces kept as
    ``previous_filename``. The final checkpoint is also written on ``TERMINATE`` (a run stopped with
    ``terminate(skip_completed=True)``, as :class:`StopOnSignal` does, never reaches ``COMPLETED``); it
    is written once per state, and not at all when the interval save already wrote this iteration.
    For a key-metric saver, :meth:`state_dict` / :meth:`load_state_dict` carry the best metric and its
    epoch, so that a resumed run only replaces ``best.pt`` with a better validation than the earlier best.
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: dict,
        interval_filename: str | None = None,
        previous_filename: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(save_dir=save_dir, save_dict=save_dict, **kwargs)
        self._interval_filename = interval_filename
        self._saved_iteration: int | None = None
        self._final_iteration: int | None = None
        self._best_epoch: int | None = None
        fixed = {
            "_final_checkpoint": (kwargs.get("final_filename"), previous_filename),
            "_key_metric_checkpoint": (kwargs.get("key_metric_filename"), None),
            "_interval_checkpoint": (interval_filename, previous_filename),
        }
        for attr, (filename, previous) in fixed.items():
            checkpoint = getattr(self, attr, None)
            if checkpoint is not None:
                checkpoint.save_handler = AtomicDiskSaver(save_dir, filename, previous)

    def attach(self, engine: Engine) -> None:
        """Attach MONAI's events, plus the final save on ``TERMINATE``."""
        super().attach(engine)
        if self._final_checkpoint is not None:
            engine.add_event_handler(Events.TERMINATE, self.completed)

    def interval_completed(self, engine: Engine) -> None:
        """Save the interval checkpoint and remember the iteration it holds."""
        super().interval_completed(engine)
        self._saved_iteration = engine.state.iteration

    def completed(self, engine: Engine) -> None:
        """Save the final checkpoint unless this state is already in it (or in the interval file of that name)."""
        iteration = engine.state.iteration
        if self._final_iteration == iteration:
            return
        self._final_iteration = iteration
        if self._interval_filename is not None and self._interval_filename == self._final_filename and self._saved_iteration == iteration:
            self.logger.info(f"Train completed, final checkpoint: {os.path.join(self.save_dir, self._final_filename)}")
            return
        super().completed(engine)

    def metrics_completed(self, engine: Engine) -> None:
        """Compare the key metric with the best so far; remember the epoch of a new best."""
        before = self._key_metric_state()
        super().metrics_completed(engine)
        if self._key_metric_state() != before:
            self._best_epoch = int(engine.state.epoch)

    def _key_metric_state(self) -> list[tuple[float, str]]:
        if self._key_metric_checkpoint is None:
            return []
        return [(float(p), str(f)) for p, f in self._key_metric_checkpoint.state_dict()["_saved"]]

    def state_dict(self) -> dict[str, Any]:
        """The best key metric so far, its epoch and ignite's record of the saved file (plain values)."""
        saved = self._key_metric_state()
        return {"best_metric": saved[-1][0] if saved else None, "best_epoch": self._best_epoch, "saved": saved}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the best key metric of an earlier run, so only a better validation replaces its file."""
        if self._key_metric_checkpoint is None:
            return
        self._key_metric_checkpoint.load_state_dict({"_saved": [tuple(item) for item in state_dict.get("saved", [])]})
        epoch = state_dict.get("best_epoch")
        self._best_epoch = None if epoch is None else int(epoch)


class SafeCheckpointLoader(CheckpointLoader):
    """MONAI's CheckpointLoader with one clear message for a missing, truncated or foreign checkpoint.

    Objects named in ``optional`` may be absent from the file (checkpoints written before they were
    saved); they keep their fresh state and a warning names them.
    """

    def __init__(self, load_path: str, load_dict: dict, optional: tuple[str, ...] | list[str] = (), **kwargs: Any) -> None:
        super().__init__(load_path=load_path, load_dict=load_dict, **kwargs)
        self.optional = tuple(optional)

    def __call__(self, engine: Engine) -> None:
        """Check the checkpoint, then restore every object of ``load_dict`` from it (the file is read once)."""
        if not self.strict_shape:  # MONAI's partial loading for transfer learning, which reads the file itself
            super().__call__(engine)
            return
        # a ResumePoint hands over what resume_checkpoint read; else read here (FileNotFoundError / ValueError naming the file)
        stored = self.load_path.take_checkpoint() if isinstance(self.load_path, ResumePoint) else None
        if stored is None:
            stored = load_checkpoint(self.load_path, self.map_location)
        absent = [k for k in self.optional if k in self.load_dict and isinstance(stored, Mapping) and k not in stored]
        if absent:
            logger.warning("%s holds no %s (written by an older version); starting it afresh", self.load_path, ", ".join(absent))
            self.load_dict = {k: v for k, v in self.load_dict.items() if k not in absent}
        check_checkpoint(stored, self.load_dict, self.load_path)  # entries and network shapes, named
        (key,) = self.load_dict if len(self.load_dict) == 1 else (None,)
        if key is not None and key not in stored:  # a bare state_dict for a single object
            stored = {key: stored}
        max_epochs = engine.state.max_epochs  # the run's setting, not the checkpoint's
        Checkpoint.load_objects(to_load=self.load_dict, checkpoint=stored, strict=self.strict)
        if max_epochs is not None and engine.state.epoch > max_epochs:
            raise ValueError(
                f"{self.load_path} is at epoch {engine.state.epoch}, past --epochs {max_epochs}: "
                "pass a larger --epochs to continue training from it"
            )
        engine.state.max_epochs = max_epochs
        self.logger.info("Restored all variables from %s", self.load_path)


class TrainingBudget:
    """Stops training cleanly after ``stop_epoch`` epochs or once ``max_minutes`` of wall clock have passed.

    The engine then completes normally, so the final checkpoint and the evaluation still run; a later
    run with ``resume`` continues from there. The time check happens after every iteration, counting
    from the engine's start (data loading and validation included).

    With ``plan_epochs``, the first epoch's duration (validation included) sets how many epochs fit in
    ``max_minutes``: ``max_epochs`` is lowered to that number and, when ``lr_scheduler`` has a ``t_total``
    (MONAI's WarmupCosineSchedule, counted in iterations), the schedule is shortened to end with it, so
    the learning rate is annealed within the budget instead of being cut off mid-schedule. After every
    later epoch the plan is revised from the mean duration of the epochs since the first (the first one
    pays one-off costs such as kernel warm-up and overestimated the steady epoch by ~25 % on a CPU, which
    left a fifth of the budget unused; a machine that slows down gets fewer epochs instead of a cut).
    ``reserve_fraction`` of the budget is kept free for what follows training (the test evaluation).
    ``clock`` returns seconds (``time.monotonic`` by default; tests pass a fake clock so that no test
    depends on how fast the machine is).
    """

    def __init__(
        self,
        stop_epoch: int | None = None,
        max_minutes: float | None = None,
        plan_epochs: bool = False,
        lr_scheduler: Any = None,
        reserve_fraction: float = 0.03,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if stop_epoch is not None and int(stop_epoch) < 1:
            raise ValueError(f"stop_epoch must be >= 1, got {stop_epoch}")
        if max_minutes is not None and not float(max_minutes) > 0:
            raise ValueError(f"max_minutes must be > 0, got {max_minutes}")
        if plan_epochs and max_minutes is None:
            raise ValueError("plan_epochs needs max_minutes")
        if not 0.0 <= float(reserve_fraction) < 1.0:
            raise ValueError(f"reserve_fraction must lie in [0, 1), got {reserve_fraction}")
        self.reserve_fraction = float(reserve_fraction)
        self.stop_epoch = None if stop_epoch is None else int(stop_epoch)
        self.max_seconds = None if max_minutes is None else 60.0 * float(max_minutes)
        self.plan_epochs = bool(plan_epochs)
        self.lr_scheduler = lr_scheduler
        self.clock = clock
        self._start = 0.0
        self._start_epoch = 0
        self._requested_epochs = 0
        self._first_epoch_end = 0.0

    def attach(self, engine: Engine) -> None:
        """Register the clock start and the checks."""
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._check_epoch)
        if self.max_seconds is not None:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._check_time)

    def _started(self, engine: Engine) -> None:
        self._start = self.clock()
        self._start_epoch = engine.state.epoch
        self._requested_epochs = int(engine.state.max_epochs)

    def _check_epoch(self, engine: Engine) -> None:
        if self.plan_epochs:
            now = self.clock()
            done = engine.state.epoch - self._start_epoch
            if done == 1:
                self._first_epoch_end = now
                self._plan(engine, now - self._start, "first epoch took %.1f s", tolerance=0)
            elif done > 1 and engine.state.epoch < engine.state.max_epochs:
                # revisions within 1 % of the plan are noise: ignore them to keep the log and the schedule calm
                tolerance = max(1, round(0.01 * engine.state.max_epochs)) - 1
                self._plan(engine, (now - self._first_epoch_end) / (done - 1), "epochs since the first took %.1f s on average", tolerance)
        if self.stop_epoch is not None and engine.state.epoch >= self.stop_epoch:
            logger.info("stopping after epoch %d as asked (stop_epoch)", engine.state.epoch)
            engine.terminate()

    def _plan(self, engine: Engine, epoch_seconds: float, why: str, tolerance: int) -> None:
        """Set ``max_epochs`` (and the LR schedule's length) to the epochs that fit the rest of the budget."""
        elapsed = self.clock() - self._start
        remaining = self.max_seconds * (1.0 - self.reserve_fraction) - elapsed
        fit = engine.state.epoch + max(0, int(remaining // max(epoch_seconds, 1e-6)))
        planned = max(engine.state.epoch, min(self._requested_epochs, fit))
        if abs(planned - engine.state.max_epochs) <= tolerance:
            return
        engine.state.max_epochs = planned
        if self.lr_scheduler is not None and hasattr(self.lr_scheduler, "t_total"):
            self.lr_scheduler.t_total = planned * int(engine.state.epoch_length)
        logger.info(
            why + ": planning %d epochs to fit %.1f min (learning-rate schedule adjusted to match)",
            epoch_seconds, planned, self.max_seconds / 60,
        )

    def _check_time(self, engine: Engine) -> None:
        if self.clock() - self._start >= self.max_seconds:
            logger.info("time budget of %.1f min used up at epoch %d; stopping", self.max_seconds / 60, engine.state.epoch)
            engine.terminate()


class EMAUpdate:
    """Updates an EMA (``torch.optim.swa_utils.AveragedModel``) from the trained network after every iteration."""

    def __init__(self, ema: torch.nn.Module, network: torch.nn.Module) -> None:
        if not hasattr(ema, "update_parameters"):
            raise TypeError(f"ema must be an AveragedModel (see medsymmflow.networks.create_ema), got {type(ema).__name__}")
        self.ema = ema
        # DDP wraps the network; the EMA averages the bare module so its weights load anywhere.
        self.network = getattr(network, "module", network)

    def attach(self, engine: Engine) -> None:
        """Register the update on ``ITERATION_COMPLETED``."""
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """One EMA step."""
        self.ema.update_parameters(self.network)
