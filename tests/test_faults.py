"""Faults and bad input through the real command lines: one ``medsymmflow: error:`` line, no traceback, nothing left behind.

Every case runs ``python -m monai.bundle run`` or ``medsymmflow`` in a subprocess on tiny synthetic data
and fails at start-up, before any training; the functions behind the checks are tested in-process too.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_bundle, run_command, tiny

from medsymmflow.data import write_synthetic_medmnist

TRAIN = "bundles/pneumoniamnist/train.json"
EVALUATE = "bundles/pneumoniamnist/evaluate.json"
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def bundle(config: str, data_dir: Path, output_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    """A tiny bundle run that is expected to fail (its exit code is the test's to check)."""
    return run_bundle(config, *tiny(data_dir, output_dir, *overrides), check=False)


def the_error(out: subprocess.CompletedProcess, prefix: str = "medsymmflow: error:") -> str:
    """The single error line of a failed run; asserts the rest of the contract (exit code, no traceback)."""
    assert out.returncode != 0, out.stdout[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "Traceback" not in out.stdout, (out.stdout + out.stderr)[-4000:]
    assert "weights_only" not in out.stderr  # never relay torch's advice to unpickle code
    return lines[0]


@pytest.fixture(scope="module")
def data_dir(synthetic_medmnist) -> Path:
    return synthetic_medmnist(("pneumoniamnist", 16, 4, 4, 1))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A valid tiny pneumoniamnist checkpoint and broken variants of it (written in-process, no training)."""
    from medsymmflow.io import RunInfo
    from medsymmflow.networks import build_network, create_ema

    d = tmp_path_factory.mktemp("ckpt")
    info = RunInfo(flag="pneumoniamnist", num_classes=2, code_kind="rgb", image_channels=1, code_channels=3,
                   size=28, net_preset="tiny").state_dict()
    ema = create_ema(build_network("tiny", 1, 3)).state_dict()
    paths = {name: d / f"{name}.pt" for name in ("good", "shapes", "no_info", "random", "pickle")}
    torch.save({"run_info": info, "ema": ema}, paths["good"])
    shrunk = {k: (v[..., :1] if v.ndim == 4 else v) for k, v in ema.items()}
    torch.save({"run_info": info, "ema": shrunk}, paths["shapes"])
    torch.save({"ema": ema}, paths["no_info"])
    paths["random"].write_bytes(bytes(range(256)) * 3)

    class Code:
        def __reduce__(self):  # noqa: ANN204 - what a malicious checkpoint does
            return (print, ("this must never run",))

    torch.save({"run_info": info, "ema": Code()}, paths["pickle"])
    return paths


# ----------------------------------------------------------------------------- bundle command lines

@pytest.mark.slow
def test_misspelled_top_level_overrides_are_refused_with_the_nearest_keys(data_dir: Path, tmp_path: Path) -> None:
    out = bundle(TRAIN, data_dir, tmp_path / "run", "--epoch", "3", "--batchsize", "8")
    line = the_error(out)
    assert "--epoch (did you mean --epochs?)" in line and "--batchsize (did you mean --batch_size" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_misspelled_section_gets_one_line_not_monais_key_error(data_dir: Path, tmp_path: Path) -> None:
    out = bundle(TRAIN, data_dir, tmp_path / "run", "--trainng#val_interval", "1")
    line = the_error(out)
    assert "--trainng#val_interval (did you mean --training#val_interval" in line and "KeyError" not in out.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_bad_plain_settings_are_named_together_before_anything_is_written(data_dir: Path, tmp_path: Path) -> None:
    out = bundle(TRAIN, data_dir, tmp_path / "run", "--epochs", "0", "--batch_size", "0", "--learning_rate", "nan")
    line = the_error(out)
    assert "epochs must be an integer >= 1, got 0" in line
    assert "batch_size must be an integer >= 1, got 0" in line
    assert "learning_rate must be a finite number > 0, got 'nan'" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_evaluation_settings_fail_before_the_first_epoch(data_dir: Path, tmp_path: Path) -> None:
    out = bundle(TRAIN, data_dir, tmp_path / "run", "--epochs", "1", "--evaluation#steps", "0",
                 "--evaluation#method", "bogus", "--evaluation#runs", "0")
    line = the_error(out)
    assert "evaluation#steps must be an integer >= 1, got 0" in line
    assert "unknown evaluation#method 'bogus'; choose one of euler" in line
    assert "evaluation#runs must be an integer >= 1, got 0" in line
    assert "Epoch" not in out.stdout and not (tmp_path / "run").exists()  # no training happened


@NO_GPU
@pytest.mark.slow
def test_cuda_without_a_gpu_is_one_line(data_dir: Path, tmp_path: Path) -> None:
    out = bundle(TRAIN, data_dir, tmp_path / "run", "--device", "cuda")
    assert "device is 'cuda' but CUDA is not available" in the_error(out)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_an_output_dir_that_is_a_file_is_named(data_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "a_file"
    target.write_text("keep me")
    line = the_error(bundle(TRAIN, data_dir, target / "run"))
    assert f"output_dir '{target / 'run'}' is not a folder ({target} is a file)" in line
    assert target.read_text() == "keep me"


@pytest.mark.slow
def test_a_validation_split_without_every_class_is_refused_up_front(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_synthetic_medmnist(data, "pneumoniamnist", n_train=16, n_val=1, n_test=4, seed=0)
    line = the_error(bundle(TRAIN, data, tmp_path / "run"))
    assert "pneumoniamnist.npz (val split) is too small for validation" in line and "1 image(s)" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,message",
    [
        ("random", "could not be read: it is not a torch checkpoint"),
        ("pickle", "holds pickled Python objects ("),
        ("shapes", "ema.module."),
        ("no_info", "has no run identity (run_info"),
    ],
)
def test_bad_checkpoints_are_named_without_torchs_advice(
    name: str, message: str, checkpoints: dict[str, Path], data_dir: Path, tmp_path: Path
) -> None:
    out = bundle(EVALUATE, data_dir, tmp_path / "eval", "--ckpt_path", str(checkpoints[name]))
    line = the_error(out)
    assert str(checkpoints[name]) in line and message in line
    assert "this must never run" not in out.stdout + out.stderr
    assert not (tmp_path / "eval").exists()


@pytest.mark.slow
@pytest.mark.parametrize("config", [EVALUATE, "bundles/pneumoniamnist/inference.json"])
def test_evaluation_and_inference_check_the_training_settings_they_read(
    config: str, checkpoints: dict[str, Path], data_dir: Path, tmp_path: Path
) -> None:
    # training#time_decoupled decides the network's kind there too: a bad value is named, not taken as "on"
    out = bundle(config, data_dir, tmp_path / "eval", "--ckpt_path", str(checkpoints["good"]), "--training#time_decoupled", "1.5")
    assert "training#time_decoupled must be a number in [0, 1], got 1.5" in the_error(out)
    assert not (tmp_path / "eval").exists()


@pytest.mark.slow
def test_an_engine_failure_logs_no_traceback_and_leaves_no_empty_tensorboard_files(
    checkpoints: dict[str, Path], data_dir: Path, tmp_path: Path
) -> None:
    """Resuming from a checkpoint that does not fit fails inside the running trainer (after its writers exist)."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    last = run_dir / "checkpoints" / "last.pt"
    # a trainer state lets resume pick the file; the loader, running inside the engine, then finds the rest missing
    stored = torch.load(checkpoints["shapes"], weights_only=True)
    torch.save(stored | {"trainer": {"iteration": 3, "epoch_length": 3, "max_epochs": 2}}, last)
    out = bundle(TRAIN, data_dir, run_dir, "--resume", "true", "--epochs", "2")
    line = the_error(out)
    assert f"checkpoint {last} lacks 'network'" in line  # a best.pt-style file cannot resume a training
    assert "Exception:" in out.stdout  # StatsHandler still logs the message, without the traceback
    assert sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*")) == ["checkpoints", "checkpoints/last.pt"]


@pytest.mark.slow
def test_tracebacks_on_request(data_dir: Path, tmp_path: Path) -> None:
    out = run_command([
        sys.executable, "-m", "monai.bundle", "run", "--config_file", TRAIN, "--dataset_dir", str(data_dir),
        "--download", "false", "--device", "cpu", "--output_dir", str(tmp_path / "run"), "--epochs", "0",
    ], env={"MEDSYMMFLOW_TRACEBACK": "1"})
    assert out.returncode != 0 and "Traceback" in out.stderr and "epochs must be an integer >= 1" in out.stderr


@NO_GPU
@pytest.mark.slow
def test_sample_on_cuda_without_a_gpu_blames_the_device_not_the_checkpoint(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    out = run_command([sys.executable, "-m", "medsymmflow.cli", "sample", "--ckpt", str(checkpoints["good"]), "--device", "cuda",
               "--output-dir", str(tmp_path / "samples")])
    line = the_error(out, prefix="medsymmflow sample: error:")
    assert "device is 'cuda' but CUDA is not available" in line and "checkpoint" not in line
    assert not (tmp_path / "samples").exists()


# ----------------------------------------------------------------------------- the functions behind them
def test_mixed_case_flag_reaches_every_consumer_in_lower_case() -> None:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    cwd = os.getcwd()
    os.chdir(REPO)  # the bundles' %configs/... macros are relative to the repository root
    try:
        parser.read_config(TRAIN)
        parser.update({"flag": "PneumoniaMNIST", "dataset_dir": "/nonexistent"})
        parser.parse()
        assert parser.get_parsed_content("common#flag") == "pneumoniamnist"
        assert parser.get_parsed_content("output_dir") == os.path.join("runs", "pneumoniamnist")
        assert parser.get_parsed_content("common#run_info").info["flag"] == "pneumoniamnist"
        # the reports (medmnist's Evaluator, metrics.json) take the same normalised flag
        for report in ("evaluate#handlers#3", "selective#report"):
            assert parser.get(f"{report}#flag").replace("::", "#") == "@common#flag"
    finally:
        os.chdir(cwd)


def test_parse_bundle_command_follows_fire() -> None:
    from medsymmflow.settings import parse_bundle_command

    main = str(Path("site-packages/monai/bundle/__main__.py"))
    cmd = parse_bundle_command([main, "run", "--config_file", "['a.json','b.json']", "--epochs=3", "--batch-size", "8",
                                "--training#val_interval", "-1", "--resume", "--tracking", "mlflow"])
    assert cmd.config_file == ["a.json", "b.json"] and cmd.tracking == "mlflow"
    assert cmd.overrides == ["epochs", "batch_size", "training#val_interval", "resume"]
    assert parse_bundle_command(["pytest", "run", "--config_file", "a.json"]) is None


def test_unknown_overrides_suggest_the_nearest_keys() -> None:
    from medsymmflow.settings import unknown_overrides

    config = {"epochs": 3, "training": {"val_interval": 1, "save_interval": 1}, "evaluation": {"runs": 5}}
    found = unknown_overrides(config, ["epochs", "epoch", "trainng#val_interval", "training#val_interval", "tracking_uri",
                                       "zzz"], extra=["tracking_uri"])
    assert found == {"epoch": ["epochs"], "trainng#val_interval": ["training#val_interval", "training#save_interval"],
                     "zzz": []}


def test_check_settings_uses_the_library_checks() -> None:
    from medsymmflow.codes import ClassCodebook
    from medsymmflow.inferers import SymmFlowClassifier
    from medsymmflow.settings import check_settings

    check_settings({"epochs": 2, "learning_rate": 1e-3, "device": "cpu", "evaluation": {"steps": 1, "method": "heun"}})
    with pytest.raises(ValueError) as err:
        check_settings({"evaluation": {"draws": 0, "score": "logits", "autocast": "fast"}})
    message = str(err.value)  # every problem in one message
    assert "evaluation#draws must be an integer >= 1, got 0" in message
    assert "unknown evaluation#score 'logits'; choose one of softmax, posterior" in message
    assert "evaluation#autocast: unknown autocast setting 'fast'" in message
    with pytest.raises(ValueError, match="unknown evaluation#decision 'best'"):
        check_settings({"evaluation": {"decision": "best"}})
    with pytest.raises(ValueError, match="download must be true or false, got 'maybe'"):
        check_settings({"download": "maybe"})
    with pytest.raises(ValueError) as err:
        check_settings({"training": {"time_decoupled": 1.5, "time_decoupled_modes": [1, 1]}})
    assert "training#time_decoupled must be a number in [0, 1], got 1.5" in str(err.value)
    assert "training#time_decoupled_modes: decoupled_modes must be three weights" in str(err.value)
    check_settings({"training": {"time_decoupled": 0.25, "time_decoupled_modes": [1, 0, 2]}})
    # the inferer refuses the same values at construction (not at its first batch)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        SymmFlowClassifier(ClassCodebook.rgb(2), steps=0)
    with pytest.raises(ValueError, match="unknown ODE method 'bogus'"):
        SymmFlowClassifier(ClassCodebook.rgb(2), method="bogus")


def test_load_checkpoint_messages(checkpoints: dict[str, Path]) -> None:
    from medsymmflow.io import load_checkpoint
    from medsymmflow.networks import build_network, create_ema

    load_dict = {"run_info": object(), "ema": create_ema(build_network("tiny", 1, 3))}
    assert set(load_checkpoint(checkpoints["good"], load_dict=load_dict)) == {"run_info", "ema"}
    with pytest.raises(ValueError, match="has shape") as shapes:
        load_checkpoint(checkpoints["shapes"], load_dict=load_dict)
    with pytest.raises(ValueError, match="no run identity"):
        load_checkpoint(checkpoints["no_info"], load_dict=load_dict)
    for name in ("random", "pickle"):
        with pytest.raises(ValueError) as err:
            load_checkpoint(checkpoints[name])
        assert "weights_only" not in str(err.value) and str(checkpoints[name]) in str(err.value)
    assert str(checkpoints["shapes"]) in str(shapes.value)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            load_checkpoint(checkpoints["good"], map_location="cuda")


def test_clean_up_on_failure_removes_only_empty_outputs_of_this_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.utils.tensorboard import SummaryWriter

    from medsymmflow import errors, settings

    monkeypatch.setattr(errors, "_failure_callbacks", [])
    keep = tmp_path / "old.txt"
    keep.write_text("x")
    settings.clean_up_on_failure(tmp_path)
    empty = SummaryWriter(str(tmp_path / "tensorboard"))
    empty.flush()
    used = SummaryWriter(str(tmp_path / "tensorboard_used"))
    used.add_scalar("loss", 1.0, 1)
    used.flush()
    (tmp_path / "checkpoints").mkdir()
    for callback in errors._failure_callbacks:
        callback()
    empty.close()
    used.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.txt", "tensorboard_used"]


def test_formatter_drops_tracebacks_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    from medsymmflow.errors import OneLineFormatter

    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    formatter = OneLineFormatter("%(levelname)s %(message)s")
    assert sys.excepthook is not sys.__excepthook__  # building it installs the hook
    try:
        raise ValueError("bad value")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "Exception: bad value", None, sys.exc_info())
    monkeypatch.delenv("MEDSYMMFLOW_TRACEBACK", raising=False)
    assert formatter.format(record) == "ERROR Exception: bad value"
    monkeypatch.setenv("MEDSYMMFLOW_TRACEBACK", "1")
    record.exc_text = None
    assert "Traceback" in formatter.format(record)
