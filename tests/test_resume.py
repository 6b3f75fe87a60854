"""Crash recovery: rolling atomic checkpoints, resuming from the newest intact one, SIGKILL / SIGTERM / SIGINT, best metric."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, bundle_command, command_env, run_command, tiny
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

from medsymmflow.engines import AtomicCheckpointSaver, AtomicDiskSaver, SafeCheckpointLoader, StopOnSignal, resume_checkpoint

TRAIN = "bundles/pneumoniamnist/train.json"
# lr 0.2 wrecks the tiny network after the first epoch: every later validation AUC is worse than epoch 1's,
# so a resumed run that forgot the best metric would save a worse best.pt
COMMON = [
    "--epochs", "4", "--batch_size", "16", "--warmup_epochs", "0", "--learning_rate", "0.2",
    "--training#val_interval", "1", "--evaluation#runs", "1", "--evaluation#selective", "false",
]


# ---------------------------------------------------------------- in-process units


def test_a_superseded_checkpoint_is_removed_only_after_the_next_is_written(tmp_path: Path, monkeypatch) -> None:
    net = torch.nn.Linear(2, 2)
    engine = Engine(lambda e, b: None)
    saver = Checkpoint({"network": net}, AtomicDiskSaver(tmp_path), n_saved=1, filename_prefix="epoch")
    engine.add_event_handler(Events.EPOCH_COMPLETED, saver)
    seen: list[list[str]] = []
    real_save = torch.save

    def save(obj, f, *args, **kwargs):  # what is on disk while the new file is being written
        seen.append(sorted(p.name for p in tmp_path.glob("*.pt")))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    engine.run(range(1), max_epochs=3)
    assert seen == [[], ["epoch_network_1.pt"], ["epoch_network_2.pt"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_network_3.pt"]


def test_a_fixed_name_checkpoint_keeps_the_previous_generation(tmp_path: Path) -> None:
    saver = AtomicDiskSaver(tmp_path, "last.pt", previous="previous.pt")
    saver({"step": torch.tensor(1)}, "ignored.pt")
    saver.remove("ignored.pt")  # ignite asks before the next write; the fixed file must survive it
    saver({"step": torch.tensor(2)}, "ignored.pt")
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 2
    assert torch.load(tmp_path / "previous.pt", weights_only=True)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "previous.pt"]


def test_the_best_metric_survives_a_resume(tmp_path: Path) -> None:
    net = torch.nn.Linear(1, 1)

    def saver() -> AtomicCheckpointSaver:
        return AtomicCheckpointSaver(
            str(tmp_path), {"ema": net}, save_key_metric=True, key_metric_name="val_auc", key_metric_filename="best.pt"
        )

    first = saver()
    engine = Engine(lambda e, b: None)
    first.attach(engine)
    aucs = {1: 0.6, 2: 0.9}
    engine.add_event_handler(Events.EPOCH_STARTED, lambda e: e.state.metrics.update(val_auc=aucs[e.state.epoch]))
    engine.run(range(1), max_epochs=2)
    state = first.state_dict()
    assert state["best_metric"] == 0.9 and state["best_epoch"] == 2
    stamp = (tmp_path / "best.pt").read_bytes()

    resumed = saver()
    resumed.load_state_dict(torch.load(_roundtrip(tmp_path, state), weights_only=True))
    engine = Engine(lambda e, b: None)
    resumed.attach(engine)
    later = {3: 0.7, 4: 0.95}
    engine.add_event_handler(Events.EPOCH_STARTED, lambda e: e.state.metrics.update(val_auc=later[e.state.epoch]))
    engine.add_event_handler(Events.STARTED, lambda e: setattr(e.state, "epoch", 2))
    with torch.no_grad():
        net.weight.fill_(5.0)
    engine.run(range(1), max_epochs=3)
    assert (tmp_path / "best.pt").read_bytes() == stamp, "a worse validation replaced best.pt after the resume"
    assert resumed.state_dict()["best_epoch"] == 2
    engine.run(range(1), max_epochs=4)
    assert resumed.state_dict() == {"best_metric": 0.95, "best_epoch": 4, "saved": [(0.95, "ema_key_metric=0.9500.pt")]}
    assert torch.load(tmp_path / "best.pt", weights_only=True)["weight"].item() == 5.0


def _roundtrip(folder: Path, state: dict) -> Path:
    path = folder / "state.pt"
    torch.save(state, path)
    return path


def _checkpoint(path: Path, iteration: int, epoch_length: int = 3) -> None:
    torch.save({"trainer": {"iteration": iteration, "epoch_length": epoch_length, "max_epochs": 9}}, path)


def test_resume_picks_the_newest_intact_checkpoint_and_refuses_to_overwrite(tmp_path: Path, caplog) -> None:
    last, previous, best = tmp_path / "last.pt", tmp_path / "previous.pt", tmp_path / "best.pt"
    assert resume_checkpoint([last, previous], resume=True) is None  # nothing yet: start afresh
    assert resume_checkpoint([last, previous], resume=False, protected=[best]) is None
    best.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"best.pt exists; pass --resume true to continue or choose another --output_dir"):
        resume_checkpoint([last, previous], resume=False, protected=[best])
    _checkpoint(previous, 3)
    _checkpoint(last, 7)
    (tmp_path / ".last.pt.abc.tmp").write_bytes(b"half")  # left by a write killed half-way
    with caplog.at_level("INFO"):
        assert resume_checkpoint([last, previous], resume=True) == str(last)
    assert "resuming from" in caplog.text and "last.pt (epoch 2 + 1 of 3 iterations, iteration 7)" in caplog.text
    assert not list(tmp_path.glob("*.tmp"))
    last.write_bytes(last.read_bytes()[:40])  # damaged newest
    with caplog.at_level("INFO"):
        assert resume_checkpoint([last, previous], resume=True) == str(previous)
    assert f"skipping checkpoint {last}" in caplog.text
    previous.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="no intact checkpoint to resume from"):
        resume_checkpoint([last, previous], resume=True)


def test_a_resume_reads_each_checkpoint_file_once(tmp_path: Path, monkeypatch) -> None:
    """Choosing the checkpoint, checking it and restoring from it share one read of the file."""
    net = torch.nn.Linear(2, 2)
    trainer = Engine(lambda e, b: None)
    trainer.run(range(3), max_epochs=2)
    last, previous = tmp_path / "last.pt", tmp_path / "previous.pt"
    torch.save({"network": net.state_dict(), "trainer": trainer.state_dict()}, last)
    _checkpoint(previous, 3)
    reads: list[str] = []
    real_load = torch.load

    def load(f, *args, **kwargs):
        reads.append(Path(f).name)
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    point = resume_checkpoint([last, previous], resume=True)
    assert point == str(last)
    fresh, resumed = torch.nn.Linear(2, 2), Engine(lambda e, b: None)
    SafeCheckpointLoader(point, {"network": fresh, "trainer": resumed}).attach(resumed)
    resumed.run(range(3), max_epochs=3)
    assert sorted(reads) == ["last.pt", "previous.pt"]  # was: last.pt three times
    assert torch.equal(fresh.weight, net.weight) and resumed.state.iteration == 9
    with pytest.raises(ValueError, match="past --epochs 1"):  # one line, not MONAI's advice on engine construction
        again = Engine(lambda e, b: None)
        SafeCheckpointLoader(str(last), {"network": fresh, "trainer": again}).attach(again)
        again.run(range(3), max_epochs=1)


def test_sigint_stops_after_the_iteration_and_exits_130() -> None:
    stop = StopOnSignal()

    def step(engine: Engine, batch: int) -> None:
        if engine.state.iteration == 2:
            os.kill(os.getpid(), signal.SIGINT)

    engine = Engine(step)
    stop.attach(engine)
    before = signal.getsignal(signal.SIGINT)
    engine.run(range(5), max_epochs=3)
    assert engine.state.iteration == 2 and stop.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is before  # restored after training
    with pytest.raises(SystemExit) as exited:
        stop.exit_if_stopped()
    assert exited.value.code == 130
    StopOnSignal().exit_if_stopped()  # no signal: nothing happens


# ---------------------------------------------------------------- real training processes


def _cmd(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return bundle_command(TRAIN, *tiny(data_dir, out, *COMMON, *extra))


def _run(data_dir: Path, out: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_command(_cmd(data_dir, out, *extra), check=check)


def _start_and_signal(data_dir: Path, out: Path, sig: int, *extra: str) -> tuple[int, str]:
    """Start a training, send ``sig`` as soon as its first epoch checkpoint exists; exit code and output."""
    log = out.with_suffix(".log")
    with log.open("w") as f:
        proc = subprocess.Popen(_cmd(data_dir, out, *extra), cwd=REPO, env=command_env(), stdout=f, stderr=subprocess.STDOUT)
        try:
            while not (out / "checkpoints" / "last.pt").exists():
                assert proc.poll() is None, log.read_text()[-3000:]
                time.sleep(0.02)
            proc.send_signal(sig)
            code = proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
    return code, log.read_text()


def _completed_epochs(output: str) -> list[int]:
    return [int(n) for n in re.findall(r"SymmFlowTrainer - INFO - Epoch\[(\d+)\] Complete", output)]


def _resumed_epoch(output: str) -> tuple[str, int]:
    found = re.search(r"resuming from (\S+) \(epoch (\d+)", output)
    assert found, output[-3000:]
    return found.group(1), int(found.group(2))


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _digest(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` (relative path -> sha256): a new, changed or removed file changes it."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data_dir(synthetic_medmnist) -> Path:
    return synthetic_medmnist(("pneumoniamnist", 48, 24, 40, 1))


@pytest.fixture(scope="module")
def reference(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    _run(data_dir, out)
    return out


@pytest.fixture(scope="module")
def killed(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A training SIGKILLed right after its first epoch checkpoint appeared, then resumed to the end."""
    out = tmp_path_factory.mktemp("killed") / "run"
    code, before = _start_and_signal(data_dir, out, signal.SIGKILL)
    on_disk = sorted(p.name for p in (out / "checkpoints").glob("*.pt"))
    resumed = _run(data_dir, out, "--resume", "true")
    return {"out": out, "code": code, "before": before, "on_disk": on_disk, "after": resumed.stdout + resumed.stderr}


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_ends_like_an_uninterrupted_run(reference: Path, killed: dict) -> None:
    assert killed["code"] == -signal.SIGKILL
    assert "last.pt" in killed["on_disk"]
    path, epoch = _resumed_epoch(killed["after"])
    assert path.endswith("last.pt") and epoch >= 1
    # every epoch the killed run finished is in the checkpoint: at most the epoch in progress is lost
    assert epoch >= max(_completed_epochs(killed["before"]), default=0)
    assert _completed_epochs(killed["after"]) == list(range(epoch + 1, 5)), "the resumed run trained from scratch"
    a, b = _load(reference / "checkpoints/last.pt"), _load(killed["out"] / "checkpoints/last.pt")
    assert a["trainer"]["iteration"] == b["trainer"]["iteration"] == 4 * a["trainer"]["epoch_length"]
    for part in ("network", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after the kill and resume"
    for x, y in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(x["exp_avg_sq"], y["exp_avg_sq"])
    assert not list(killed["out"].glob("**/*.tmp"))


@pytest.mark.slow
def test_a_resumed_run_keeps_the_best_validation_of_before_the_kill(reference: Path, killed: dict) -> None:
    ref = _load(reference / "checkpoints/last.pt")["best_metric"]
    assert ref["best_epoch"] == 1, "the recipe no longer makes epoch 1 the best; the test would not bite"
    assert _load(killed["out"] / "checkpoints/last.pt")["best_metric"] == ref
    a, b = _load(reference / "checkpoints/best.pt"), _load(killed["out"] / "checkpoints/best.pt")
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
    assert (killed["out"] / "predictions.csv").read_text() == (reference / "predictions.csv").read_text()


@pytest.fixture(scope="module")
def terminated(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 50-epoch training sent SIGTERM right after its first epoch checkpoint appeared."""
    out = tmp_path_factory.mktemp("terminated") / "run"
    code, output = _start_and_signal(data_dir, out, signal.SIGTERM, "--epochs", "50")
    return {"out": out, "code": code, "output": output}


@pytest.mark.slow
def test_sigterm_saves_a_resumable_checkpoint_and_exits_143(terminated: dict) -> None:
    out = terminated["out"]
    assert terminated["code"] == 143, terminated["output"][-3000:]
    assert "training stopped by SIGTERM" in terminated["output"]
    last, previous = _load(out / "checkpoints/last.pt"), _load(out / "checkpoints/previous.pt")
    length = last["trainer"]["epoch_length"]
    assert last["trainer"]["iteration"] > length  # the state at the signal, within epoch 2 or later
    assert previous["trainer"]["iteration"] % length == 0 and previous["trainer"]["iteration"] >= length
    assert not (out / "metrics.json").exists(), "evaluation ran after SIGTERM"
    assert not list(out.glob("**/*.tmp"))


@pytest.mark.slow
def test_existing_checkpoints_without_resume_stop_with_one_line(terminated: dict, data_dir: Path) -> None:
    before = _digest(terminated["out"])  # checkpoints and TensorBoard files alike
    done = _run(data_dir, terminated["out"], "--epochs", "2", check=False)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("medsymmflow: error:")]
    assert len(errors) == 1 and "last.pt exists; pass --resume true to continue or choose another --output_dir" in errors[0]
    assert "Traceback" not in done.stderr
    assert _digest(terminated["out"]) == before  # refused before the trainer (and its TensorBoard writer) exists


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_is_skipped_for_the_previous_one(terminated: dict, data_dir: Path) -> None:
    ckpt = terminated["out"] / "checkpoints"
    expected = _load(ckpt / "previous.pt")["trainer"]["iteration"]
    (ckpt / "last.pt").write_bytes((ckpt / "last.pt").read_bytes()[:2000])  # e.g. a copy cut short
    epochs = expected // _load(ckpt / "previous.pt")["trainer"]["epoch_length"] + 1
    done = _run(data_dir, terminated["out"], "--resume", "true", "--epochs", str(epochs))
    output = done.stdout + done.stderr
    assert f"skipping checkpoint {ckpt / 'last.pt'}" in output
    path, _ = _resumed_epoch(output)
    assert path == str(ckpt / "previous.pt")
    last = _load(ckpt / "last.pt")
    assert last["trainer"]["iteration"] == epochs * last["trainer"]["epoch_length"]
