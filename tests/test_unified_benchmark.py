"""benchmarks/unified.py without an hour-long run: the targets logic on hand-made figures, and --report-only on a
tiny finished run (synthetic PneumoniaMNIST, tiny network, one epoch each; a random feature extractor stands in
for Inception, which costs seconds per image on a CPU)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import load_benchmark
from torch import nn


def _figures(**flow_changes: float | None) -> dict:
    flow = {"acc": 0.92, "auc": 0.97, "aurc": 0.030, "eaurc": 0.010, "ece": 0.02, "ood_auroc": 0.95, "cas": 0.80,
            "fid": 50.0, "images_per_second": 400.0, "generation_seconds_per_image": 0.05}
    flow.update(flow_changes)
    resnet = {"acc": 0.90, "auc": 0.96, "aurc": 0.031, "eaurc": 0.012, "ece": 0.05, "ood_auroc": 0.82, "cas": 0.90,
              "fid": None, "images_per_second": 1000.0, "generation_seconds_per_image": None}
    return {"medsymmflow": flow, "resnet18": resnet, "reference_fid": 30.0}


def _met(rows: list[dict]) -> dict:
    return {r["key"]: r["met"] for r in rows}


def test_targets_met_and_not_met_on_hand_made_figures() -> None:
    bench = load_benchmark("unified")
    rows = bench.target_rows(_figures(), "pneumoniamnist")
    assert [r["key"] for r in rows] == [
        "acc", "auc", "aurc", "eaurc", "ece", "ood_auroc", "cas", "fid", "images_per_second", "generation_seconds_per_image",
    ]
    # 92 >= max(90, 91); 97 >= max(96, 96.5); AURC 0.030 <= 0.031; ECE 0.02 <= 0.03; OOD 95 >= 82 + 10;
    # CAS 0.80 >= 0.85 * 0.90 = 0.765; FID 50 <= 2 x 30; 400 img/s >= 1000 / 3
    assert _met(rows) == {"acc": True, "auc": True, "aurc": True, "eaurc": None, "ece": True, "ood_auroc": True,
                          "cas": True, "fid": True, "images_per_second": True, "generation_seconds_per_image": None}
    by_key = {r["key"]: r for r in rows}
    assert by_key["acc"]["threshold"] == pytest.approx(0.91) and by_key["ood_auroc"]["threshold"] == pytest.approx(0.92)
    assert by_key["fid"]["threshold"] == 60.0 and by_key["cas"]["threshold"] == pytest.approx(0.765)
    assert by_key["eaurc"]["target"] == "" and by_key["aurc"]["resnet18"] == 0.031

    # each target missed by a little: beating the ResNet's ACC is not enough below issue 4's floor
    worse = bench.target_rows(
        _figures(acc=0.905, auc=0.961, aurc=0.032, ece=0.031, ood_auroc=0.91, cas=0.76, fid=61.0, images_per_second=333.0),
        "pneumoniamnist",
    )
    assert {k for k, v in _met(worse).items() if v is False} == {
        "acc", "auc", "aurc", "ece", "ood_auroc", "cas", "fid", "images_per_second",
    }
    # a dataset without issue-4 floors compares with the ResNet-18 alone
    assert _met(bench.target_rows(_figures(acc=0.905), "breastmnist"))["acc"] is True


def test_missing_pieces_are_reported_not_crashed() -> None:
    bench = load_benchmark("unified")
    figures = _figures(cas=None, fid=None)
    figures["resnet18"]["acc"] = None
    figures["reference_fid"] = None
    rows = bench.target_rows(figures, "retinamnist")
    by_key = {r["key"]: r for r in rows}
    assert by_key["acc"]["met"] is None and by_key["acc"]["missing"] == ["resnet18 acc"]
    assert by_key["fid"]["met"] is None and by_key["fid"]["missing"] == ["medsymmflow fid", "reference FID"]
    assert by_key["cas"]["missing"] == ["medsymmflow cas"] and by_key["auc"]["met"] is True
    table = bench.format_table(rows)
    assert table.splitlines()[1].split()[-1] == "missing"  # the ACC row
    assert "FID" in table and "<= 2 x reference" in table
    # no measurements at all: every row from them is missing, none raises
    empty = bench.collect_figures({}, {}, {})
    assert all(r["met"] is None for r in bench.target_rows(empty, "retinamnist"))


def _random_features() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, stride=2), nn.Tanh(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 8)).eval()


ARGS = [
    "--flag", "pneumoniamnist", "--budget-minutes", "20", "--autocast", "none", "--ood-draws", "3",
    "--throughput-batch", "8", "--generation-batch", "4", "--timing-repeats", "1", "--measure-threads", "1",
    "--override=--epochs=1", "--override=--net_preset=tiny", "--override=--evaluation#runs=1",
]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Both trainings of the benchmark's own commands, one epoch each, on synthetic data (retinamnist: the OOD set)."""
    from medsymmflow.data import write_synthetic_medmnist

    root = tmp_path_factory.mktemp("unified")
    data, out = root / "data", root / "run"
    write_synthetic_medmnist(data, "pneumoniamnist", n_train=32, n_val=16, n_test=16, seed=0)
    write_synthetic_medmnist(data, "retinamnist", n_train=5, n_val=5, n_test=12, seed=1)
    bench = load_benchmark("unified")
    classification = load_benchmark("classification")
    side_by_side = load_benchmark("side_by_side")
    args = bench._parse_args([*ARGS, "--dataset-dir", str(data)])
    jobs = [
        ("medsymmflow", classification._bundle_command(args, out / "medsymmflow"), out / "medsymmflow.log"),
        # the budget does not bind here: one epoch each, whatever the machine's speed
        ("resnet18", classification._resnet_command(args, out / "resnet18") + ["--max-epochs", "1"], out / "resnet18.log"),
    ]
    side_by_side.run_jobs(jobs, threads=1)
    return data, out


@pytest.mark.slow
def test_report_only_measures_a_finished_run_and_then_rereads_it(
    finished_run: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import medsymmflow.generation_metrics as generation_metrics

    monkeypatch.setattr(generation_metrics, "find_inception_file", lambda path=None: Path("fake_inception.pt"))
    monkeypatch.setattr(generation_metrics, "load_inception", lambda path=None, device="cpu": _random_features())
    data, out = finished_run
    bench = load_benchmark("unified")
    argv = [*ARGS, "--dataset-dir", str(data), "--output-dir", str(out), "--report-only"]
    results = bench.main(argv)
    printed = capsys.readouterr().out
    assert "OOD AUROC (velocity_error)" in printed and "met?" in printed and "(headline)" in printed

    flow_metrics = json.loads((out / "medsymmflow" / "metrics.json").read_text())
    figures = results["figures"]
    assert figures["medsymmflow"]["acc"] == flow_metrics["summary"]["medmnist"]["acc"]["mean"]
    assert figures["resnet18"]["auc"] == json.loads((out / "resnet18" / "metrics.json").read_text())["test"]["medmnist"]["auc"]
    # the AURC score is the validation split's best, read on test
    sel = results["selective"]
    chosen = sel["score_chosen_on_validation"]
    assert sel["validation_aurc"][chosen] == min(sel["validation_aurc"].values())
    assert figures["medsymmflow"]["aurc"] == sel["test_by_score"][chosen]["aurc"]
    assert sel["resnet18"]["temperature"] > 0 and sel["medsymmflow"]["temperature_source"] == "validation"
    # the ECE shown is the calibration (distances or class scores) with the lower VALIDATION ECE
    by_cal = sel["medsymmflow"]["ece_by_calibration"]
    assert set(by_cal) == {"distances", "scores"}
    cal = sel["medsymmflow"]["calibration_chosen_on_validation"]
    assert by_cal[cal]["validation_ece"] == min(v["validation_ece"] for v in by_cal.values())
    assert figures["medsymmflow"]["ece"] == by_cal[cal]["ece"]
    assert 0 <= figures["resnet18"]["ece"] <= 1 and (out / "selective" / "accuracy_rejection.png").is_file()
    # OOD: every candidate scored, RGB retinamnist turned gray for the gray model, 16 in / 12 out
    ood = results["measurements"]["ood"]
    assert set(ood["medsymmflow"]) == {"velocity_error", "distance", "margin", "spread", "entropy", "combined"}
    assert all(0 <= v <= 1 for v in ood["medsymmflow"].values()) and 0 <= ood["resnet18"]["msp"] <= 1
    assert (ood["num_in"], ood["num_out"], ood["channels"], ood["draws"]) == (16, 12, "3 -> 1", 3)
    assert figures["medsymmflow"]["ood_auroc"] == ood["medsymmflow"]["velocity_error"]
    # generation: as many images as the test split holds, a reference row of the same count
    gen = results["measurements"]["generation"]
    assert (gen["num_generated"], gen["num_real"], gen["num_reference"], gen["steps"]) == (16, 16, 16, 25)
    assert gen["fid"] > 0 and gen["reference_fid"] > 0 and 0 <= gen["cas"] <= 1
    assert figures["medsymmflow"]["generation_seconds_per_image"] > 0
    assert results["measurements"]["throughput"]["batch_size"] == 8
    assert {r["key"] for r in results["table"]} >= {"acc", "aurc", "ece", "ood_auroc", "cas", "fid", "images_per_second"}
    written = json.loads((out / "results.json").read_text())
    assert written["ood_headline"] == "velocity_error" and {"machine", "date", "command"} <= set(written)
    assert set(written["targets_met"]) == {"acc", "auc", "aurc", "ece", "ood_auroc", "cas", "fid", "images_per_second"}

    # a second --report-only reads measurements.json instead of measuring again
    measured = json.loads((out / "measurements.json").read_text())
    measured["ood"]["medsymmflow"]["velocity_error"] = 0.123
    (out / "measurements.json").write_text(json.dumps(measured))
    again = bench.main(argv)
    assert again["figures"]["medsymmflow"]["ood_auroc"] == 0.123
    assert math.isnan(again["classification"]["medsymmflow"]["wall_minutes"])


def test_report_only_without_a_finished_run_names_the_missing_file(tmp_path: Path) -> None:
    bench = load_benchmark("unified")
    with pytest.raises(SystemExit, match=r"unified benchmark: no test metrics at .*medsymmflow/metrics.json"):
        bench.main(["--flag", "retinamnist", "--dataset-dir", ".", "--report-only", "--output-dir", str(tmp_path)])
    assert not (tmp_path / "results.json").exists()
    with pytest.raises(SystemExit):
        bench._parse_args(["--flag", "retinamnist", "--dataset-dir", ".", "--ood-flag", "retinamnist"])
    assert bench._parse_args(["--flag", "retinamnist", "--dataset-dir", "."]).ood_flag == "pneumoniamnist"
