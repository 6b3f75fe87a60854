"""benchmarks/segmentation.py without a 30-minute run: the commands it launches, the table and results.json
assembled from fake run folders (--report-only), the montage."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import load_benchmark


def _seg(miou: float, no_bg: float, acc: float) -> dict:
    return {"miou": miou, "miou_no_background": no_bg, "pixel_accuracy": acc, "iou": [miou] * 3}


def _consistency(no_bg: float) -> dict:
    return {"miou": no_bg + 0.05, "miou_no_background": no_bg, "pixel_accuracy": 0.9, "per_class_iou": [], "num_images": 8}


def _fake_runs(out: Path) -> None:
    (out / "medsymmflow").mkdir(parents=True)
    flow = {"num_classes": 3, "steps": [1, 25], "by_steps": {"1": _seg(0.61, 0.55, 0.90), "25": _seg(0.66, 0.60, 0.92)}}
    (out / "medsymmflow" / "segmentation_metrics.json").write_text(json.dumps(flow))
    (out / "basicunet").mkdir()
    baseline = {"num_classes": 3, "test": _seg(0.63, 0.57, 0.91), "training": {"steps": 900, "epochs_run": 60},
                "splits": {"train": 240, "val": 30, "test": 30}}
    (out / "basicunet" / "metrics.json").write_text(json.dumps(baseline))
    speed = {s: {"images_per_second": ips, "reference": {"images_per_second": 400.0}} for s, ips in (("1", 200.0), ("25", 10.0))}
    measured = {
        "majority_floor": _seg(0.2, 0.1, 0.5),
        "training_steps": {"medsymmflow": 1200},
        "throughput": speed,
        "synthesis": {
            "reference": {"fid": 40.0, "kid": 0.010},
            "real_consistency": {"basicunet": _consistency(0.57)},
            "samples_per_mask": 4, "num_masks": 30, "lpips": {"net": None},
            "result": {"steps": 25, "fid": 70.0, "kid": 0.025, "kid_std": 0.002, "diversity": 0.3,
                       "mask_consistency": {"basicunet": _consistency(0.50), "medsymmflow_1step": _consistency(0.52)}},
        },
    }
    (out / "measurements.json").write_text(json.dumps(measured))


def test_report_only_assembles_the_table_and_results_from_finished_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bench = load_benchmark("segmentation")
    _fake_runs(tmp_path)
    report = bench.main(["--report-only", "--output-dir", str(tmp_path), "--dataset-dir", "."])
    rows = report["rows"]
    assert list(rows) == ["medsymmflow_1step", "medsymmflow_25steps", "basicunet", "majority_floor"]
    assert (rows["medsymmflow_1step"]["miou_no_background"], rows["medsymmflow_25steps"]["miou"]) == (0.55, 0.66)
    assert (rows["basicunet"]["pixel_accuracy"], rows["basicunet"]["training_steps"]) == (0.91, 900)
    assert rows["medsymmflow_25steps"]["training_steps"] == 1200 and rows["majority_floor"]["miou"] == 0.2
    # images/s: medsymmflow at its step count, the BasicUNet forward from the paired timing
    assert (rows["medsymmflow_1step"]["images_per_second"], rows["medsymmflow_25steps"]["images_per_second"]) == (200.0, 10.0)
    assert rows["basicunet"]["images_per_second"] == 400.0 and rows["majority_floor"]["images_per_second"] is None
    syn = report["synthesis"]
    assert syn["kid_over_reference"] == pytest.approx(2.5) and syn["consistency_over_real"] == pytest.approx(0.50 / 0.57)
    assert syn["mask_consistency_self_1step"] == 0.52
    # 1 step: 0.55 < 0.57; 25 steps: 0.60 >= 0.57 + 0.02; KID 2.5x the reference <= 3x; consistency 0.877 >= 0.8
    assert report["targets"] == {
        "1step_miou_no_background_at_least_baseline": False,
        "25steps_miou_no_background_at_least_baseline_plus_2": True,
        "kid_within_3x_reference": True,
        "mask_consistency_at_least_80pct_of_baseline_real": True,
    }
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["rows"]["basicunet"]["miou"] == 0.63 and written["split"] == {"train": 240, "val": 30, "test": 30}
    assert {"machine", "date", "command"} <= set(written) and written["machine"]["cpu_count"] >= 1
    assert written["basicunet_metrics"]["training"]["steps"] == 900
    assert math.isnan(report["rows"]["basicunet"]["wall_minutes"])  # report-only: no training timed
    table = capsys.readouterr().out
    assert "medsymmflow_25steps" in table and "66.0" in table and "KID 0.0250" in table and "majority_floor" in table


def test_report_only_names_what_is_missing(tmp_path: Path) -> None:
    bench = load_benchmark("segmentation")
    with pytest.raises(SystemExit, match=r"no test metrics at .*medsymmflow/segmentation_metrics.json.*basicunet/metrics.json"):
        bench.main(["--report-only", "--output-dir", str(tmp_path), "--dataset-dir", "."])
    _fake_runs(tmp_path)
    flow = tmp_path / "medsymmflow" / "segmentation_metrics.json"
    flow.write_text(json.dumps({"by_steps": {"1": _seg(0.5, 0.4, 0.8)}}))
    with pytest.raises(SystemExit, match=r"no results at 25 step\(s\) \(it has 1\)"):
        bench.main(["--report-only", "--output-dir", str(tmp_path), "--dataset-dir", "."])
    assert not (tmp_path / "results.json").exists()


def test_both_models_get_the_same_budget_data_size_precision_and_batch_size(tmp_path: Path) -> None:
    bench = load_benchmark("segmentation")
    args = bench._parse_args(["--dataset-dir", str(tmp_path), "--budget-minutes", "7", "--autocast", "none",
                              "--override=--batch_size=24", "--override=--net_preset=tiny"])
    flow = bench._bundle_command(args, tmp_path / "m")
    unet = bench._baseline_command(args, tmp_path / "b")
    assert flow[flow.index("--config_file") + 1] == "['bundles/celebamask_hq/train.json','configs/segmentation_cpu.json']"
    for cmd, budget, size, data in ((flow, "--training#budget_minutes", "--size", "--dataset_dir"),
                                    (unet, "--budget-minutes", "--size", "--dataset-dir")):
        assert cmd[cmd.index(budget) + 1] == "7.0" and cmd[cmd.index(size) + 1] == "64"
        assert cmd[cmd.index(data) + 1] == str(tmp_path.resolve())
    assert flow[flow.index("--evaluation#steps") + 1] == "[1, 25]" and flow[-4:] == ["--batch_size", "24", "--net_preset", "tiny"]
    assert unet[unet.index("--batch-size") + 1] == "24" and unet[unet.index("--autocast") + 1] == "none"
    assert flow[flow.index("--training#autocast") + 1] == "none"


def test_segmentation_montage_rows_hold_image_truth_predictions_and_uncertainty() -> None:
    bench = load_benchmark("segmentation")
    n, h = 2, 4
    tiles = [np.full((n, h, h, 3), v, np.uint8) for v in (10, 20, 30, 40)]
    uncertainty = np.zeros((n, h, h))
    uncertainty[1] = 0.5  # the largest value shown is white
    montage = bench.segmentation_montage(*tiles, uncertainty)
    pad = 2
    assert montage.shape == (n * h + (n + 1) * pad, 5 * h + 6 * pad, 3)
    cells = [[montage[pad + r * (h + pad), pad + c * (h + pad)] for c in range(5)] for r in range(n)]
    assert [int(cell[0]) for cell in cells[0]] == [10, 20, 30, 40, 0]
    assert int(cells[1][4][0]) == 255


@pytest.mark.slow
def test_measure_scores_floor_speed_synthesis_and_writes_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the measurements on real checkpoints: a tiny random SymmFlow checkpoint and a 1-epoch BasicUNet, 32 px
    import functools

    import torch
    from torch import nn

    import medsymmflow.synthesis as synthesis
    from medsymmflow.baselines import train_segmentation_baseline
    from medsymmflow.data import write_synthetic_segmentation
    from medsymmflow.io import RunInfo
    from medsymmflow.networks import build_network, create_ema

    bench = load_benchmark("segmentation")
    data = write_synthetic_segmentation(tmp_path / "pairs", n=20, size=32, num_classes=4, seed=0)
    out = tmp_path / "run"
    train_segmentation_baseline(data, size=32, budget_minutes=None, max_epochs=1, batch_size=8, features=(4, 4, 8, 8, 8, 4),
                                class_names=["background", "a", "b", "c"], output_dir=out / "basicunet", threads=1)
    info = RunInfo(flag="synthetic", num_classes=4, code_kind="palette", image_channels=3, code_channels=3, size=32, net_preset="tiny")
    torch.manual_seed(0)
    ckpt = out / "medsymmflow" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save({"run_info": info.state_dict(), "ema": create_ema(build_network("tiny", 3, 3)).state_dict()}, ckpt / "best.pt")
    torch.save({"trainer": {"iteration": 7, "epoch": 1}}, ckpt / "last.pt")
    features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    monkeypatch.setattr(synthesis, "evaluate_synthesis_checkpoint",
                        functools.partial(synthesis.evaluate_synthesis_checkpoint, feature_extractor=features, kid_subsets=5, lpips="none"))
    args = bench._parse_args(["--dataset-dir", str(data), "--size", "32", "--figures-dir", str(tmp_path / "fig"),
                              "--samples-per-mask", "2", "--montage-rows", "2", "--autocast", "none"])
    measured = bench.measure(args, out)
    assert measured["training_steps"] == {"medsymmflow": 7}
    assert set(measured["throughput"]) == {"1", "25"} and measured["throughput"]["1"]["reference"]["images_per_second"] > 0
    assert 0.0 <= measured["majority_floor"]["miou"] <= 1.0
    assert {"basicunet", "medsymmflow_1step"} == set(measured["synthesis"]["result"]["mask_consistency"])
    assert measured["synthesis"]["result"]["steps"] == 25 and "basicunet" in measured["synthesis"]["real_consistency"]
    for figure in measured["figures"].values():
        assert Path(figure).is_file() and Path(figure).parent == tmp_path / "fig"
    assert json.loads((out / "measurements.json").read_text())["training_steps"] == {"medsymmflow": 7}


def test_side_by_side_jobs_are_timed_and_a_failing_one_names_its_log(tmp_path: Path) -> None:
    import sys

    jobs = load_benchmark("side_by_side")
    ok = [(name, [sys.executable, "-c", f"print('{name}')"], tmp_path / f"{name}.log") for name in ("a", "b")]
    wall = jobs.run_jobs(ok, threads=1)
    assert sorted(wall) == ["a", "b"] and all(s >= 0 for s in wall.values())
    assert (tmp_path / "a.log").read_text().strip() == "a"
    assert all(math.isnan(s) for s in jobs.run_jobs(ok, threads=1, report_only=True).values())
    bad = [("c", [sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "c.log")]
    with pytest.raises(RuntimeError, match=r"c failed \(exit 3\); see .*c\.log"):
        jobs.run_jobs(bad, threads=1, sequential=True)
    assert jobs.last_override(["--batch_size=8", "--x=1", "--batch_size=24"], "--batch_size", 16) == "24"
    assert jobs.last_override([], "--batch_size", 16) == 16
