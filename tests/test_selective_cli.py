"""Tests for ``medsymmflow selective``: predictions.csv -> selective_metrics.json, accuracy_rejection.png, reliability.png."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from medsymmflow.cli import main
from medsymmflow.metrics import (
    accuracy_rejection_curve,
    expected_calibration_error,
    fit_temperature,
    softmax_from_distances,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
N, K = 200, 3


def _symmflow_rows(
    seed: int, n: int = N, k: int = K, perfect: bool = False, draws: bool = True, acc: float = 0.75
) -> list[dict]:
    """Rows in ClassificationReport's format; wrong predictions get larger distances (fully separated if ``perfect``)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % k  # every class present
    correct = rng.random(n) < acc
    pred = np.where(correct, labels, (labels + rng.integers(1, k, n)) % k)
    if perfect:
        d_pred = np.where(correct, rng.uniform(0.05, 0.2, n), rng.uniform(0.5, 0.8, n))
    else:  # overlapping ranges: informative, not perfect
        d_pred = np.where(correct, rng.uniform(0.05, 0.45, n), rng.uniform(0.3, 0.8, n))
    gaps = np.where(correct[:, None], rng.uniform(0.3, 0.9, (n, k)), rng.uniform(0.01, 0.3, (n, k)))
    dist = d_pred[:, None] + gaps
    dist[np.arange(n), pred] = d_pred
    scores = softmax_from_distances(dist, 0.1)
    # mode decision: agrees with the mean one except on a few samples
    flip = rng.random(n) < 0.05
    pred_mode = np.where(flip, (pred + 1) % k, pred)
    unc_mode = dist[np.arange(n), pred_mode] * 1.05
    spread = np.where(correct, rng.integers(0, 3, n), rng.integers(2, 6, n)) / 8.0 if draws else np.zeros(n)
    rows = []
    for i in range(n):
        row = {"index": i, "label": int(labels[i]), "pred": int(pred[i]), "uncertainty": f"{d_pred[i]:.6g}"}
        row.update({f"dist_{c}": f"{dist[i, c]:.6g}" for c in range(k)})
        row.update({f"score_{c}": f"{scores[i, c]:.6g}" for c in range(k)})
        row.update({"pred_mode": int(pred_mode[i]), "uncertainty_mode": f"{unc_mode[i]:.6g}", "spread": f"{spread[i]:.6g}"})
        rows.append(row)
    return rows


def _baseline_rows(seed: int, n: int = N, k: int = K) -> list[dict]:
    """A softmax classifier's rows: score_k probabilities, uncertainty = 1 - max probability."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % k
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), labels] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    rows = []
    for i in range(n):
        row = {"index": i, "label": int(labels[i]), "pred": int(probs[i].argmax()), "uncertainty": f"{1 - probs[i].max():.6g}"}
        row.update({f"score_{c}": f"{probs[i, c]:.6g}" for c in range(k)})
        rows.append(row)
    return rows


def _write_csv(path: Path, rows: list[dict], fields: list[str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = fields or list(rows[0])
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the PNG signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A bundle output folder: metrics.json with a flag, predictions.csv and val_predictions.csv."""
    out = tmp_path / "eval"
    _write_csv(out / "predictions.csv", _symmflow_rows(seed=1))
    _write_csv(out / "val_predictions.csv", _symmflow_rows(seed=2))
    (out / "metrics.json").write_text(json.dumps({"flag": "pneumoniamnist", "split": "test"}))
    return out


def test_full_report_from_a_bundle_folder(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    baseline = _write_csv(tmp_path / "resnet" / "predictions.csv", _baseline_rows(seed=3))
    assert main(["selective", "--predictions", str(bundle), "--baseline", str(baseline)]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "E-AURC" in printed

    report = json.loads((bundle / "selective_metrics.json").read_text())
    rows = _read(bundle / "predictions.csv")
    labels = np.array([int(r["label"]) for r in rows])
    pred = np.array([int(r["pred"]) for r in rows])
    pred_mode = np.array([int(r["pred_mode"]) for r in rows])
    assert report["dataset"] == "pneumoniamnist"
    assert report["num_samples"] == N and report["num_classes"] == K
    np.testing.assert_allclose(report["rejection_rates"], np.arange(20) * 0.05, atol=1e-9)

    decisions = report["medsymmflow"]["decisions"]
    assert set(decisions) == {"mean", "mode"}
    for decision, decided in (("mean", pred), ("mode", pred_mode)):
        plain = float(np.mean(decided == labels))
        assert set(decisions[decision]) == {"distance", "margin", "spread", "entropy", "combined"}
        for score, entry in decisions[decision].items():
            assert {"accuracy", "aurc", "eaurc", "acc@80", "acc@90", "accuracy_rejection"} <= set(entry)
            assert len(entry["accuracy_rejection"]) == 20
            assert entry["accuracy_rejection"][0] == pytest.approx(plain), (decision, score)
            assert entry["accuracy"] == pytest.approx(plain)
            assert entry["aurc"] >= entry["eaurc"] >= 0
    # errors have larger distances, so rejecting the most distant samples raises accuracy
    curve = np.array(decisions["mean"]["distance"]["accuracy_rejection"])
    assert curve[10] > curve[0] + 0.1 and curve[-1] > 0.95
    assert np.all(np.diff(curve[:15]) > -0.03)
    spread_curve = decisions["mean"]["spread"]["accuracy_rejection"]
    assert spread_curve[10] > spread_curve[0] + 0.1
    # the distance score's curve agrees with the library function on the CSV columns
    unc = np.array([float(r["uncertainty"]) for r in rows])
    np.testing.assert_allclose(curve, accuracy_rejection_curve(pred == labels, unc)[1])

    cal = report["medsymmflow"]["calibration"]
    assert cal["temperature_source"] == "validation"
    assert cal["temperature_file"].endswith("val_predictions.csv")
    val = _read(bundle / "val_predictions.csv")
    val_d = np.array([[float(r[f"dist_{c}"]) for c in range(K)] for r in val])
    tau = fit_temperature(val_d, [int(r["label"]) for r in val])
    assert cal["temperature"] == pytest.approx(tau, rel=1e-6)
    test_d = np.array([[float(r[f"dist_{c}"]) for c in range(K)] for r in rows])
    assert cal["ece"] == pytest.approx(expected_calibration_error(softmax_from_distances(test_d, tau), labels, 15))
    assert sum(cal["reliability"]["counts"]) == N and len(cal["reliability"]["counts"]) == 15
    assert 0 <= cal["brier"] <= 2 and cal["nll"] > 0

    base = report["baseline"]
    assert base is not None and base["notes"] == []
    b_rows = _read(baseline)
    b_acc = np.mean([r["pred"] == r["label"] for r in b_rows])
    msp = base["decisions"]["argmax"]["msp"]
    assert msp["accuracy_rejection"][0] == pytest.approx(b_acc)
    assert {"aurc", "eaurc", "acc@80", "acc@90"} <= set(msp)
    assert base["calibration"]["temperature"] is None and {"ece", "brier", "nll"} <= set(base["calibration"])
    assert report["warnings"] == []

    for name in ("accuracy_rejection.png", "reliability.png"):
        path = bundle / name
        width, height = _png_size(path)
        assert width > 300 and height > 300 and path.stat().st_size > 10_000
    assert _png_size(bundle / "reliability.png")[0] > _png_size(bundle / "accuracy_rejection.png")[0] * 1.1  # 2 panels
    assert not list(bundle.glob(".*.tmp")), "temporary files left behind"


def test_perfect_ranking_and_fixed_temperature(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = _write_csv(tmp_path / "run" / "predictions.csv", _symmflow_rows(seed=4, perfect=True, draws=False))
    _write_csv(tmp_path / "run" / "val_predictions.csv", _symmflow_rows(seed=10))  # an explicit tau wins over it
    out = tmp_path / "report"
    assert main(["selective", "--predictions", str(src), "--temperature", "0.2", "--output-dir", str(out)]) == 0
    report = json.loads((out / "selective_metrics.json").read_text())
    mean = report["medsymmflow"]["decisions"]["mean"]
    assert mean["distance"]["eaurc"] == pytest.approx(0.0, abs=1e-12)
    assert mean["distance"]["aurc"] > 0  # there are errors, so the optimum itself is not 0
    assert mean["distance"]["accuracy_rejection"][-1] == 1.0
    # single draw: spread is skipped with a note, not reported as a flat curve
    assert "spread" not in mean and "spread" not in report["scores"]
    assert any("spread skipped" in n for n in report["medsymmflow"]["notes"])
    cal = report["medsymmflow"]["calibration"]
    assert cal["temperature"] == 0.2 and cal["temperature_source"] == "argument"
    assert any("val_predictions.csv ignored" in n for n in report["medsymmflow"]["notes"])
    assert report["baseline"] is None and report["dataset"] is None
    assert (out / "accuracy_rejection.png").is_file() and not (src.parent / "selective_metrics.json").exists()


def test_tau_falls_back_to_the_test_file_with_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rows = _symmflow_rows(seed=5)
    for r in rows:  # a bundle run without a mode decision leaves uncertainty_mode blank
        r["uncertainty_mode"] = ""
    src = _write_csv(tmp_path / "predictions.csv", rows)
    assert main(["selective", "--predictions", str(src), "--scores", "margin"]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "test predictions" in err
    report = json.loads((tmp_path / "selective_metrics.json").read_text())
    cal = report["medsymmflow"]["calibration"]
    assert cal["temperature_source"] == "test" and cal["temperature_file"] == str(src)
    d = np.array([[float(r[f"dist_{c}"]) for c in range(K)] for r in rows])
    assert cal["temperature"] == pytest.approx(fit_temperature(d, [r["label"] for r in rows]), rel=1e-6)
    assert list(report["medsymmflow"]["decisions"]) == ["mean"]
    assert list(report["medsymmflow"]["decisions"]["mean"]) == ["margin"]
    assert any("mode decision skipped" in n for n in report["medsymmflow"]["notes"])
    assert report["warnings"]


def _bad_case(tmp_path: Path, case: str) -> list[str]:
    """Arguments for one bad input; the files are written under ``tmp_path``."""
    good = _symmflow_rows(seed=6)
    pred = tmp_path / "predictions.csv"
    if case == "missing file":
        return ["--predictions", str(tmp_path / "nope" / "predictions.csv")]
    if case == "empty file":
        pred.write_text("")
    elif case == "header only":
        pred.write_text(",".join(good[0]) + "\n")
    elif case == "missing column":
        _write_csv(pred, good, [f for f in good[0] if f != "dist_1"])
    elif case == "missing label":
        _write_csv(pred, good, [f for f in good[0] if f != "label"])
    elif case == "nan":
        good[7]["dist_2"] = "nan"
        _write_csv(pred, good)
    elif case == "single class":
        for r in good:
            r["label"] = 1
        _write_csv(pred, good)
    elif case == "baseline k":
        _write_csv(pred, good)
        base = _write_csv(tmp_path / "base.csv", _baseline_rows(seed=7, k=4))
        return ["--predictions", str(pred), "--baseline", str(base), "--temperature", "0.1"]
    elif case == "val k":
        _write_csv(pred, good)
        val = _write_csv(tmp_path / "val.csv", _symmflow_rows(seed=8, k=4))
        return ["--predictions", str(pred), "--val-predictions", str(val)]
    elif case == "val single class":
        _write_csv(pred, good)
        val_rows = _symmflow_rows(seed=8)
        for r in val_rows:
            r["label"] = 0
        val = _write_csv(tmp_path / "val_predictions.csv", val_rows)
        return ["--predictions", str(pred)]
    elif case == "baseline as predictions":
        _write_csv(pred, _baseline_rows(seed=9))
    elif case == "unknown score":
        _write_csv(pred, good)
        return ["--predictions", str(pred), "--scores", "distance,variance", "--temperature", "0.1"]
    elif case == "val and temperature":
        _write_csv(pred, good)
        val = _write_csv(tmp_path / "v.csv", _symmflow_rows(seed=8))
        return ["--predictions", str(pred), "--val-predictions", str(val), "--temperature", "0.1"]
    return ["--predictions", str(pred)]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing file", "not found"),
        ("empty file", "is empty"),
        ("header only", "no data rows"),
        ("missing column", "missing column(s): dist_1"),
        ("missing label", "missing column(s): label"),
        ("nan", "column 'dist_2' has 1 NaN"),
        ("single class", "only class 1 is present"),
        ("baseline k", "class count mismatch"),
        ("val k", "class count mismatch"),
        ("val single class", "validation file"),
        ("baseline as predictions", "--baseline"),
        ("unknown score", "unknown uncertainty score(s) variance"),
        ("val and temperature", "not both"),
    ],
)
def test_bad_inputs_exit_1_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture, case: str, message: str) -> None:
    assert main(["selective", *_bad_case(tmp_path, case)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("medsymmflow selective: error: ") and len(err.strip().splitlines()) == 1
    assert message in err, err
    assert not (tmp_path / "selective_metrics.json").exists()


def test_scores_needing_absent_columns_are_skipped_with_a_note(tmp_path: Path) -> None:
    rows = _symmflow_rows(seed=6)
    fields = [f for f in rows[0] if not f.startswith("score_")]
    src = _write_csv(tmp_path / "predictions.csv", rows, fields)
    assert main(["selective", "--predictions", str(src), "--temperature", "0.1"]) == 0
    report = json.loads((tmp_path / "selective_metrics.json").read_text())
    # entropy reads the score_k columns and the combined score needs the entropy: both go, with one note each
    assert report["scores"] == ["distance", "margin", "spread"]
    assert set(report["medsymmflow"]["decisions"]["mean"]) == {"distance", "margin", "spread"}
    notes = report["medsymmflow"]["notes"]
    assert any(n.startswith("entropy skipped") and "score_k" in n for n in notes)
    assert any(n.startswith("combined skipped") for n in notes)


def test_entropy_and_combined_scores_rank_the_errors(tmp_path: Path) -> None:
    # the fixture's wrong predictions have flatter scores: the entropy must rank them above the right ones
    src = _write_csv(tmp_path / "predictions.csv", _symmflow_rows(seed=7))
    assert main(["selective", "--predictions", str(src), "--temperature", "0.1"]) == 0
    mean = json.loads((tmp_path / "selective_metrics.json").read_text())["medsymmflow"]["decisions"]["mean"]
    accuracy = mean["entropy"]["accuracy"]
    for name in ("entropy", "combined"):
        # rejecting the most uncertain first must raise the accuracy of what is kept, and AURC beat chance
        assert mean[name]["accuracy_rejection"][-2] > accuracy
        assert mean[name]["aurc"] < 1 - accuracy


def test_class_scores_are_calibrated_beside_the_distances(tmp_path: Path) -> None:
    run = tmp_path / "run"
    src = _write_csv(run / "predictions.csv", _symmflow_rows(seed=8))
    _write_csv(run / "val_predictions.csv", _symmflow_rows(seed=9))
    assert main(["selective", "--predictions", str(src)]) == 0
    cal = json.loads((run / "selective_metrics.json").read_text())["medsymmflow"]["calibration"]
    scores = cal["scores"]
    assert scores["temperature_source"] == "validation" and 0 <= scores["validation_ece"] <= 1
    # the fixture's scores are softmax(-d / 0.1): scaling them by T is the distance temperature 0.1 T,
    # so both calibrations find the same probabilities (up to the CSV's 6 digits)
    assert scores["temperature"] * 0.1 == pytest.approx(cal["temperature"], rel=1e-2)
    assert scores["ece"] == pytest.approx(cal["ece"], abs=2e-3)
    assert scores["validation_ece"] == pytest.approx(cal["validation_ece"], abs=2e-3)
    # a fixed distance temperature leaves the scores as written (T = 1)
    rows = _symmflow_rows(seed=8)
    assert main(["selective", "--predictions", str(src), "--temperature", "0.5", "--output-dir", str(tmp_path / "fixed")]) == 0
    fixed = json.loads((tmp_path / "fixed" / "selective_metrics.json").read_text())["medsymmflow"]["calibration"]["scores"]
    written = np.array([[float(r[f"score_{c}"]) for c in range(K)] for r in rows])
    labels = np.array([r["label"] for r in rows])
    assert fixed["temperature"] == 1.0 and fixed["temperature_source"] == "none"
    assert fixed["ece"] == pytest.approx(expected_calibration_error(written / written.sum(1, keepdims=True), labels, 15), abs=1e-6)
