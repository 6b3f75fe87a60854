"""Shared test fixtures and helpers: seeds, the optional real-data folder, synthetic MedMNIST folders, the
subprocess runner the end-to-end tests start bundles and commands with, and the segmentation bundles' overrides
and config parsing."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pytest
import torch

if TYPE_CHECKING:
    from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[1]


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported as module ``bench_<name>`` (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module
SHARED_DATA = Path(os.environ.get("MEDSYMMFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _seed_and_threads() -> None:
    torch.manual_seed(0)


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread inside the block: tiny networks only lose by a second thread on shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """:func:`single_thread` for one test (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    with single_thread():
        yield


@pytest.fixture
def shared_data() -> Path:
    """The real-data folder (../shared/data); skips the test when it is absent."""
    if not (SHARED_DATA / "medmnist").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set MEDSYMMFLOW_SHARED_DATA to point elsewhere)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synthetic_medmnist(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory: a new folder holding synthetic MedMNIST npz files, e.g. ``synthetic_medmnist(("pneumoniamnist", 48, 24, 40, 1))``.

    Each dataset is ``(flag, n_train, n_val, n_test, seed)``; ``size`` is the image size of them all.
    """
    from medsymmflow.data import write_synthetic_medmnist

    def make(*datasets: tuple[str, int, int, int, int], size: int = 28) -> Path:
        folder = tmp_path_factory.mktemp("medmnist")
        for flag, n_train, n_val, n_test, seed in datasets:
            write_synthetic_medmnist(folder, flag, n_train=n_train, n_val=n_val, n_test=n_test, size=size, seed=seed)
        return folder

    return make


def command_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a command as a user runs it: warnings off, output unbuffered, ``MEDSYMMFLOW_TRACEBACK`` unset unless ``env`` sets it."""
    full = {k: v for k, v in os.environ.items() if k != "MEDSYMMFLOW_TRACEBACK"}
    full.update(PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1", **(env or {}))
    return full


def run_command(cmd: Sequence[str], env: dict[str, str] | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """``cmd`` from the repository root in :func:`command_env`; with ``check`` a non-zero exit fails with the output's tail."""
    out = subprocess.run(list(cmd), cwd=REPO, capture_output=True, text=True, env=command_env(env), timeout=600)
    if check and out.returncode != 0:
        raise AssertionError(f"run failed ({out.returncode}): {' '.join(cmd)}\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
    return out


def bundle_command(configs: str | Sequence[str], *overrides: str) -> list[str]:
    """``python -m monai.bundle run --config_file ...`` with one config file or a list that MONAI merges."""
    files = [configs] if isinstance(configs, str) else list(configs)
    config = files[0] if len(files) == 1 else "[" + ",".join(f"'{c}'" for c in files) + "]"
    return [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, *overrides]


def run_bundle(
    configs: str | Sequence[str], *overrides: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """A bundle run (:func:`bundle_command`) through :func:`run_command`; fails the test on a non-zero exit unless ``check=False``."""
    return run_command(bundle_command(configs, *overrides), env=env, check=check)


def tiny(data_dir: Path, output_dir: Path, *extra: str) -> list[str]:
    """Overrides for a seconds-long run on synthetic data: the tiny network on the CPU."""
    return [
        "--dataset_dir", str(data_dir), "--download", "false", "--net_preset", "tiny",
        "--output_dir", str(output_dir), "--device", "cpu", *extra,
    ]


# ----------------------------------------------------------------------------- the segmentation bundles
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # tiny convolutions only lose from a second thread on shared cores


def segmentation_overrides(data_dir: Path, output_dir: Path, size: int, *extra: str) -> list[str]:
    """Overrides for a seconds-long segmentation bundle run (bundles/celebamask_hq, bundles/cocostuff): the tiny network at ``size`` px on the CPU."""
    return [
        "--dataset_dir", str(data_dir), "--output_dir", str(output_dir), "--size", str(size), "--net_preset", "tiny",
        "--device", "cpu", *extra,
    ]


def parse_bundle(config_file: str | Sequence[str], **settings: object) -> "ConfigParser":
    """``config_file`` (a bundle file or a list MONAI merges) as MONAI reads it, ``settings`` overridden; run from the repository root."""
    from monai.bundle import ConfigParser  # noqa: F811 - the run-time import of the TYPE_CHECKING name

    parser = ConfigParser()
    parser.read_config(config_file)
    parser.update(dict(settings))
    return parser


def root_cause(parser: "ConfigParser", id: str) -> str:
    """The message of the innermost error resolving ``id`` in a ``ConfigParser`` raises (MONAI wraps it in a RuntimeError)."""
    with pytest.raises(RuntimeError) as caught:
        parser.get_parsed_content(id)
    exc: BaseException = caught.value
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return str(exc)
