"""Engine handlers: budgets and epoch planning, seeding, atomic checkpoints, run identity, EMA, error hook."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from monai.optimizers import WarmupCosineSchedule

from medsymmflow.engines import (
    AtomicCheckpointSaver,
    EMAUpdate,
    EpochSeedHandler,
    RunInfo,
    TrainingBudget,
    atomic_write,
    load_checkpoint,
)
from medsymmflow.networks import create_ema


def sleeper(seconds: float) -> Engine:
    return Engine(lambda engine, batch: time.sleep(seconds))


def test_budget_plans_epochs_and_shortens_the_lr_schedule() -> None:
    engine = sleeper(0.02)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupCosineSchedule(opt, warmup_steps=0, t_total=1000 * 5)
    TrainingBudget(max_minutes=0.6 / 60, plan_epochs=True, lr_scheduler=sched).attach(engine)
    engine.run(range(5), max_epochs=1000)  # 5 x 20 ms per epoch -> about 6 epochs fit in 0.6 s
    assert 2 <= engine.state.max_epochs <= 8
    assert engine.state.epoch == engine.state.max_epochs
    assert sched.t_total == engine.state.max_epochs * 5


def test_budget_revises_the_plan_when_the_first_epoch_was_slow() -> None:
    # the first epoch pays a one-off 0.3 s (like kernel warm-up); later epochs take 5 x 10 ms
    engine = Engine(lambda e, b: time.sleep(0.3 if e.state.iteration == 1 else 0.01))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupCosineSchedule(opt, warmup_steps=0, t_total=1000 * 5)
    plans: list[int] = []
    TrainingBudget(max_minutes=1.2 / 60, plan_epochs=True, lr_scheduler=sched, reserve_fraction=0.1).attach(engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: plans.append(e.state.max_epochs))
    start = time.monotonic()
    engine.run(range(5), max_epochs=1000)
    took = time.monotonic() - start
    # the first plan (from 0.34 s) fits ~3 epochs; the revision fits ~14 more in the 1.08 s left
    assert plans[0] <= 4 and engine.state.epoch == engine.state.max_epochs >= 10
    assert 0.8 < took < 1.3  # the budget (1.2 s) is used up to the reserve and not overrun by more than a step
    assert sched.t_total == engine.state.max_epochs * 5
    with pytest.raises(ValueError, match="reserve_fraction"):
        TrainingBudget(max_minutes=1, reserve_fraction=1.0)


def test_budget_stops_at_time_and_at_epoch() -> None:
    engine = sleeper(0.01)
    TrainingBudget(max_minutes=0.3 / 60).attach(engine)
    start = time.monotonic()
    engine.run(range(10), max_epochs=1000)
    assert time.monotonic() - start < 1.5 and engine.state.epoch < 1000
    engine = sleeper(0.0)
    TrainingBudget(stop_epoch=3).attach(engine)
    engine.run(range(4), max_epochs=10)
    assert engine.state.epoch == 3
    with pytest.raises(ValueError, match="plan_epochs needs max_minutes"):
        TrainingBudget(plan_epochs=True)
    with pytest.raises(ValueError, match="stop_epoch"):
        TrainingBudget(stop_epoch=0)


def test_epoch_seed_handler_makes_each_epoch_depend_only_on_seed_and_epoch() -> None:
    def draws(start_epoch: int) -> list[float]:
        seen: list[float] = []
        engine = Engine(lambda e, b: seen.append(torch.rand(1).item()))
        EpochSeedHandler(seed=7).attach(engine)
        if start_epoch:  # as a checkpoint restores it
            engine.load_state_dict({"iteration": start_epoch * 2, "epoch_length": 2, "max_epochs": 3})
        engine.run(range(2), max_epochs=3)
        return seen

    full, resumed = draws(0), draws(2)
    assert resumed == full[-2:]  # epoch 3 of a resumed run draws what the uninterrupted run drew
    assert full[:2] != full[2:4]


def test_atomic_checkpoint_saver_and_loader_errors(tmp_path: Path) -> None:
    net = torch.nn.Linear(2, 2)
    engine = Engine(lambda e, b: None)
    save_dict = {"network": net, "trainer": engine}
    AtomicCheckpointSaver(str(tmp_path), save_dict, save_final=True, final_filename="last.pt").attach(engine)
    engine.run(range(2), max_epochs=1)
    path = tmp_path / "last.pt"
    assert path.is_file() and oct(path.stat().st_mode & 0o777) == "0o644"
    assert not [p for p in tmp_path.iterdir() if p.name != "last.pt"], "temporary file left behind"
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["network"]["weight"], net.weight)
    (tmp_path / "torn.pt").write_bytes(path.read_bytes()[:50])
    with pytest.raises(ValueError, match="torn.pt could not be read"):
        load_checkpoint(tmp_path / "torn.pt")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_atomic_write_replaces_whole_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "metrics.json"
    atomic_write(target, "first")
    atomic_write(target, "second")
    assert target.read_text() == "second"
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]


def test_run_info_refuses_another_dataset() -> None:
    info = dict(flag="bloodmnist", num_classes=8, code_kind="rgb", image_channels=3, code_channels=3, size=28, net_preset="cpu")
    run = RunInfo(**info)
    run.load_state_dict(RunInfo(**info).state_dict())  # same run: accepted
    other = RunInfo(**(info | {"flag": "dermamnist", "num_classes": 7})).state_dict()
    with pytest.raises(ValueError, match="flag: checkpoint 'dermamnist' vs this run 'bloodmnist'; num_classes"):
        run.load_state_dict(other)
    with pytest.raises(ValueError, match="needs"):
        RunInfo(flag="x")


def test_ema_update_warms_up_then_follows_decay() -> None:
    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema = create_ema(net, decay=0.99, warmup=True)
    engine = Engine(lambda e, b: net.weight.data.fill_(1.0))
    EMAUpdate(ema, net).attach(engine)
    engine.run(range(1), max_epochs=1)
    # first update after priming: n = 1 -> d = min(0.99, 2 / 11)
    assert ema.module.weight.item() == pytest.approx(1 - 2 / 11)
    assert int(ema.n_averaged) == 2
    with pytest.raises(TypeError, match="AveragedModel"):
        EMAUpdate(net, net)


def test_error_hook_prints_one_line_for_package_errors(tmp_path: Path) -> None:
    code = "\n".join(
        [
            "import medsymmflow.errors, medsymmflow.data",
            "medsymmflow.errors.install_excepthook()",
            "try:",
            "    medsymmflow.data.load_medmnist('nosuchmnist', 'train')",
            "except ValueError as e:",
            "    raise RuntimeError('Failed to evaluate ConfigExpression') from e",
        ]
    )
    env = {k: v for k, v in os.environ.items() if k != "MEDSYMMFLOW_TRACEBACK"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 1
    errors = [line for line in out.stderr.splitlines() if line.startswith("medsymmflow: error:")]
    assert len(errors) == 1 and "unknown MedMNIST flag 'nosuchmnist'" in errors[0]
    assert "Traceback" not in out.stderr
    full = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env | {"MEDSYMMFLOW_TRACEBACK": "1"})
    assert "Traceback" in full.stderr
