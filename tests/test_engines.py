"""Engine handlers (budgets and epoch planning, seeding, atomic checkpoints, run identity, EMA, error hook); the trainer's decoupled times."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch
from ignite.engine import Engine, Events
from monai.optimizers import WarmupCosineSchedule

from medsymmflow.codes import ClassCodebook
from medsymmflow.engines import (
    AtomicCheckpointSaver,
    EMAUpdate,
    EpochSeedHandler,
    SymmFlowTrainer,
    TrainingBudget,
)
from medsymmflow.flow import SymmetricPath, SymmFlowLoss, TimeSampler
from medsymmflow.io import RunInfo, atomic_write, load_checkpoint
from medsymmflow.networks import build_network, create_ema


class FakeClock:
    """A clock that advances only when an iteration says so: budget tests never depend on machine speed."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def ticking(clock: FakeClock, seconds: float | Callable[[Engine], float]) -> Engine:
    """An engine whose every iteration takes ``seconds`` of fake time (a number or a function of the engine)."""

    def step(engine: Engine, batch: object) -> None:
        clock.now += seconds(engine) if callable(seconds) else seconds

    return Engine(step)


def test_budget_plans_epochs_and_shortens_the_lr_schedule() -> None:
    clock = FakeClock()
    engine = ticking(clock, 0.02)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupCosineSchedule(opt, warmup_steps=0, t_total=1000 * 5)
    TrainingBudget(max_minutes=0.6 / 60, plan_epochs=True, lr_scheduler=sched, clock=clock).attach(engine)
    engine.run(range(5), max_epochs=1000)
    # 5 x 20 ms per epoch, 3 % of 0.6 s kept in reserve: floor(0.582 / 0.1) = 5 epochs fit
    assert engine.state.max_epochs == engine.state.epoch == 5
    assert sched.t_total == engine.state.max_epochs * 5
    assert clock.now <= 0.6


def test_budget_revises_the_plan_when_the_first_epoch_was_slow() -> None:
    # the first epoch pays a one-off 0.3 s (like kernel warm-up); later epochs take 5 x 10 ms
    clock = FakeClock()
    engine = ticking(clock, lambda e: 0.3 if e.state.iteration == 1 else 0.01)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupCosineSchedule(opt, warmup_steps=0, t_total=1000 * 5)
    plans: list[int] = []
    TrainingBudget(max_minutes=1.2 / 60, plan_epochs=True, lr_scheduler=sched, reserve_fraction=0.1, clock=clock).attach(engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: plans.append(e.state.max_epochs))
    engine.run(range(5), max_epochs=1000)
    # the first plan (from 0.34 s) fits 3 epochs; after epoch 2 (50 ms epochs) 13 more fit in the 0.69 s left
    assert plans[0] == 3 and engine.state.epoch == engine.state.max_epochs == 15
    assert 1.0 < clock.now <= 1.08  # the budget is used up to the reserve and not overrun
    assert sched.t_total == engine.state.max_epochs * 5
    with pytest.raises(ValueError, match="reserve_fraction"):
        TrainingBudget(max_minutes=1, reserve_fraction=1.0)


def test_budget_stops_at_time_and_at_epoch() -> None:
    clock = FakeClock()
    engine = ticking(clock, 0.01)
    TrainingBudget(max_minutes=0.3 / 60, clock=clock).attach(engine)
    engine.run(range(10), max_epochs=1000)
    # the check runs after every iteration: training stops at the first iteration that reaches 0.3 s
    assert engine.state.iteration == 30 and engine.state.epoch == 3
    engine = ticking(clock, 0.0)
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


def test_epoch_seed_handler_reseeds_the_data_transforms() -> None:
    from monai.transforms import Compose, RandSpatialCropd

    crop = Compose([RandSpatialCropd("image", roi_size=(2, 2), random_size=False)])
    image = torch.arange(64.0).reshape(1, 8, 8)

    def crops(start_epoch: int) -> list[float]:
        seen: list[float] = []
        engine = Engine(lambda e, b: seen.append(float(crop({"image": image})["image"][0, 0, 0])))
        EpochSeedHandler(seed=7, transforms=crop).attach(engine)
        if start_epoch:
            engine.load_state_dict({"iteration": start_epoch * 3, "epoch_length": 3, "max_epochs": 3})
        engine.run(range(3), max_epochs=3)
        return seen

    full = crops(0)
    assert crops(2) == full[-3:]  # MONAI's own RandomState follows the epoch seed too
    assert full[:3] != full[3:6]


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


def _decoupled_trainer(net: torch.nn.Module, sampler: TimeSampler, x_weight: float = 0.5, lr: float = 0.0) -> SymmFlowTrainer:
    """A SymmFlowTrainer of ``net`` with mean endpoint targets; one-hot codes of 2 classes."""
    return SymmFlowTrainer(
        device="cpu", max_epochs=1, train_data_loader=[], network=net,
        optimizer=torch.optim.Adam(net.parameters(), lr=lr) if lr else torch.optim.SGD(net.parameters(), lr=0.0),
        codebook=ClassCodebook.onehot(2), loss_function=SymmFlowLoss(x_weight=x_weight),
        path=SymmetricPath(1e-4, endpoint_targets="mean"), time_sampler=sampler,
    )


def _batch(n: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(n, 1, 8, 8, generator=gen) * 2 - 1, "label": torch.arange(n) % 2}


@pytest.mark.parametrize("y_prediction", ["velocity", "data"])
def test_trainer_loss_at_the_decoupled_modes_endpoints(y_prediction: str) -> None:
    # a fresh MONAI UNet outputs zeros (its last convolution starts at zero): the loss is the targets' mean square,
    # which at the modes' fixed ends is the mean target, free of noise, if the path and the loss read the right column
    torch.manual_seed(0)
    net = build_network("tiny", 1, 2, decoupled_time=True, y_prediction=y_prediction)
    batch, a = _batch(), 1 - 1e-4

    def loss(modes: tuple[int, int, int], x_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The iteration's loss and the dequantized code it drew (the same seed draws the same dequantization first)."""
        engine = _decoupled_trainer(net, TimeSampler(decoupled=1.0, decoupled_modes=modes), x_weight=x_weight)
        torch.manual_seed(1)
        code = engine.code_targets(batch["label"], (8, 8), torch.device("cpu"))
        torch.manual_seed(1)
        return engine._iteration(engine, batch)["loss"], code

    classify, generate = (0, 1, 0), (1, 0, 0)
    # classify rows, t_x = 1: the image target is x itself
    torch.testing.assert_close(loss(classify, 1.0)[0], batch["image"].square().mean())
    # generate rows, t_y = 0: the label target is -(1 - s) y; a data prediction's loss is on y_hat = y_t - t_y v_y,
    # here y_t = y at t_y = 0, against the code: zero
    got, code = loss(generate, 0.0)
    torch.testing.assert_close(got, (a * code).square().mean() if y_prediction == "velocity" else torch.tensor(0.0))
    if y_prediction == "data":
        # classify rows, t_y ~ U(0, 1): y_hat = y_t - t_y (y_t - 0) / t_y = 0, so the loss is the code's mean square
        got, code = loss(classify, 0.0)
        torch.testing.assert_close(got, code.square().mean(), atol=1e-6, rtol=1e-5)


def test_trainer_passes_the_two_times_to_the_network_and_learns() -> None:
    torch.manual_seed(0)
    net = build_network("tiny", 1, 2, decoupled_time=True)
    seen: list[torch.Tensor] = []
    net.register_forward_pre_hook(lambda module, args: seen.append(args[2].clone()))
    sampler = TimeSampler(decoupled=0.5)
    engine = _decoupled_trainer(net, sampler, lr=3e-3)
    batch = _batch(16)
    # a fixed probe: one row of each mode and coupled rows, fixed noise
    path, loss_fn = engine.path, engine.loss_function
    code = engine.code_targets(batch["label"], (8, 8), torch.device("cpu"))
    t = torch.tensor([[0.5, 0.0], [1.0, 0.5], [0.5, 1.0], [0.3, 0.3]] * 4)
    probe = path.sample(batch["image"], code, t, generator=torch.Generator().manual_seed(5))

    def probe_loss() -> float:
        with torch.no_grad():
            v_x, v_y = net(probe.x_t, probe.y_t, probe.t)
            return loss_fn(v_x, v_y, probe.dx_t, probe.dy_t).item()

    before = probe_loss()
    for _ in range(30):
        engine._iteration(engine, batch)
    assert all(s.shape == (16, 2) for s in seen[1:]) and any((s[:, 0] != s[:, 1]).any() for s in seen[1:])
    assert probe_loss() < 0.8 * before


def test_trainer_refuses_decoupled_times_for_a_coupled_network() -> None:
    with pytest.raises(ValueError, match="build it with decoupled_time=True .*training#time_decoupled"):
        _decoupled_trainer(build_network("tiny", 1, 2), TimeSampler(decoupled=0.25))
    # wrapped networks (EMA, DDP, compiled) are asked through their module
    _decoupled_trainer(create_ema(build_network("tiny", 1, 2, decoupled_time=True)), TimeSampler(decoupled=0.25))
