"""benchmarks/gpu_smoke.py: its tiny CPU run (the whole latent path through the package's engines) and its one-line refusals."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_benchmark

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_smoke.py"
BATCH, STEPS, SIZE = 2, 3, 64


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, str]:
    out = tmp_path_factory.mktemp("gpu_smoke") / "results.json"
    missing_vae = out.parent / "no_such_vae"  # the fallback to a random VAE of SD's layout, as on a GPU without the weights
    stdout = io.StringIO()
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(stdout):
            result = load_benchmark("gpu_smoke").main(["--device", "cpu", "--tiny", "--channels-last", "--autocast", "none",
                                          "--vae", str(missing_vae), "--output", str(out)])
    finally:
        torch.set_num_threads(threads)  # the script takes one thread on CPU; the rest of the suite keeps its own
    return result, out, stdout.getvalue()


def test_the_tiny_cpu_run_trains_segments_synthesises_and_reports(tiny_run: tuple[dict, Path, str]) -> None:
    from medsymmflow.networks import build_network, count_parameters

    result, out, printed = tiny_run
    assert json.loads(out.read_text()) == json.loads(json.dumps(result, default=str))
    s = result["setting"]
    assert (s["device"], s["tiny"], s["net_preset"], s["size"], s["latent_size"], s["batch_size"], s["steps"]) == (
        "cpu", True, "sd21_tiny", SIZE, SIZE // 8, BATCH, STEPS)
    assert s["channels_last"] is True and s["compile"] is False and s["data"] == "synthetic" and s["threads"] == 1
    assert s["vae"]["pretrained"] is False and "no_such_vae" in s["vae"]["note"] and s["vae"]["backend"] == "diffusers"

    train = result["train"]
    assert train["steps"] == STEPS and train["timed_steps"] == STEPS - 1  # the first step is the warm-up
    assert train["step_time_s"] > 0 and train["images_per_second"] == pytest.approx(BATCH / train["step_time_s"])
    assert train["first_step_s"] > 0 and train["wall_s"] >= train["step_time_s"] * train["timed_steps"] * (1 - 1e-9)
    assert math.isfinite(train["loss_first"]) and train["loss_first"] > 0 and math.isfinite(train["loss_last"])
    assert train["autocast_dtype"] is None and train["peak_memory_gib"] is None  # float32 on request; no GPU memory on CPU
    assert set(result["segmentation"]) == {"1", "25"} and set(result["synthesis"]) == {"25"}
    for row in (*result["segmentation"].values(), *result["synthesis"].values()):
        assert row["seconds"] > 0 and row["images_per_second"] == pytest.approx(BATCH / row["seconds"])

    assert result["model_parameters"] == count_parameters(build_network("sd21_tiny", 4, 4))
    assert 0 < result["vae_parameters"] < 100_000
    assert result["gpu"] is None and result["peak_memory_gib"] is None and result["peak_host_memory_gib"] > 0
    assert result["versions"]["torch"] == torch.__version__ and result["versions"]["diffusers"]
    assert "medsymmflow: error" not in printed
    table = printed.split("\n{")[0]
    assert "gpu_smoke: sd21_tiny on cpu, 64 px (8 px latents), batch 2, float32, channels-last on, compile off" in table
    assert "after 2 steps:" in table and "note: could not load" in table
    for phase in ("train (per step)", "segmentation 1 step", "segmentation 25 steps", "synthesis 25 steps"):
        assert phase in table
    assert printed.rstrip().endswith(f"results: {out}")


def test_cpu_without_tiny_is_refused_in_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bench = load_benchmark("gpu_smoke")
    with pytest.raises(SystemExit) as stopped:
        bench.main(["--device", "cpu", "--output", str(tmp_path / "r.json")])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["medsymmflow: error: benchmarks/gpu_smoke.py: --device cpu runs only the tiny check (add --tiny); "
                   "the 512 px sd21 setting needs a CUDA GPU"]
    assert not (tmp_path / "r.json").exists()


@pytest.mark.slow
def test_the_default_run_without_a_gpu_fails_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--output", str(out)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("medsymmflow: error: benchmarks/gpu_smoke.py needs a CUDA GPU, but torch.cuda.is_available() is False")
    assert "CUDA_VISIBLE_DEVICES hides every GPU" in lines[0] and "--device cpu --tiny" in lines[0]
    assert not out.exists()
