"""End-to-end MONAI bundle runs on tiny synthetic MedMNIST files: train -> evaluate -> inference, resume, errors."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, bundle_command, run_bundle, run_command, tiny

BUNDLES = ("pneumoniamnist", "bloodmnist", "dermamnist", "retinamnist")

pytestmark = pytest.mark.slow


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def data_dir(synthetic_medmnist) -> Path:
    return synthetic_medmnist(("pneumoniamnist", 48, 24, 40, 1), ("breastmnist", 16, 8, 8, 2))


@pytest.fixture(scope="module")
def trained(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    run_bundle(
        ["bundles/pneumoniamnist/train.json"],
        *tiny(data_dir, out, "--epochs", "2", "--batch_size", "16", "--warmup_epochs", "0", "--training#val_interval", "1"),
    )
    return out


def test_train_writes_checkpoints_metrics_and_predictions(trained: Path) -> None:
    for name in ("checkpoints/best.pt", "checkpoints/last.pt", "metrics.json", "predictions.csv", "val_predictions.csv",
                 "selective_metrics.json", "accuracy_rejection.png", "reliability.png"):
        assert (trained / name).is_file(), name
    selective = json.loads((trained / "selective_metrics.json").read_text())
    assert selective["medsymmflow"]["calibration"]["temperature_source"] == "validation"
    assert selective["num_samples"] == 40 and selective["dataset"] == "pneumoniamnist"
    assert any((trained / "tensorboard").iterdir())
    # the epoch's mean loss reaches the logs (a metric MONAI only registers as key_train_metric)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained / "tensorboard")).Reload()
    losses = [e.value for e in events.Scalars("train_epoch_loss")]
    assert len(losses) == 2 and all(np.isfinite(losses)), losses
    last = torch.load(trained / "checkpoints/last.pt", map_location="cpu", weights_only=True)
    assert set(last) >= {"run_info", "network", "ema", "optimizer", "lr_scheduler", "trainer"}
    assert last["trainer"]["iteration"] == 2 * last["trainer"]["epoch_length"] == 6  # 2 epochs of 48 / 16
    assert last["run_info"]["flag"] == "pneumoniamnist" and last["run_info"]["num_classes"] == 2
    assert not list(trained.glob("**/*.tmp")), "temporary files left behind"


def test_metrics_agree_with_predictions(trained: Path) -> None:
    metrics = json.loads((trained / "metrics.json").read_text())
    rows = read_csv(trained / "predictions.csv")
    assert metrics["num_samples"] == len(rows) == 40 and metrics["num_runs"] == 5
    assert metrics["score"] == "softmax"
    labels = np.array([int(r["label"]) for r in rows])
    pred = np.array([int(r["pred"]) for r in rows])
    dist = np.array([[float(r["dist_0"]), float(r["dist_1"])] for r in rows])
    score = np.array([[float(r["score_0"]), float(r["score_1"])] for r in rows])
    unc = np.array([float(r["uncertainty"]) for r in rows])
    np.testing.assert_array_equal(pred, dist.argmin(1))
    np.testing.assert_allclose(unc, dist.min(1), rtol=1e-4)
    np.testing.assert_allclose(score.sum(1), 1.0, atol=1e-4)
    run0 = metrics["runs"][0]
    assert run0["torchmetrics"]["acc"] == pytest.approx((pred == labels).mean())
    # medmnist's Evaluator and torchmetrics compute the same ACC / AUC from the same scores.
    assert run0["medmnist"]["acc"] == pytest.approx(run0["torchmetrics"]["acc"])
    assert run0["medmnist"]["auc"] == pytest.approx(run0["torchmetrics"]["auc"], abs=1e-6)
    accs = metrics["summary"]["torchmetrics"]["acc"]
    assert accs["mean"] == pytest.approx(np.mean(accs["runs"]))
    assert accs["two_sigma"] == pytest.approx(2 * np.std(accs["runs"], ddof=1))
    assert sorted(map(int, (r["index"] for r in rows))) == list(range(40))


def test_evaluate_alone_reproduces_the_evaluation_after_training(trained: Path, data_dir: Path, tmp_path: Path) -> None:
    after_training = json.loads((trained / "metrics.json").read_text())
    out = tmp_path / "eval"
    run_bundle(
        ["bundles/pneumoniamnist/evaluate.json"],
        *tiny(data_dir, out, "--ckpt_path", str(trained / "checkpoints/best.pt"), "--evaluation#runs", "2"),
    )
    alone = json.loads((out / "metrics.json").read_text())
    assert alone["num_runs"] == 2
    # same checkpoint and seed -> the first inference run is identical
    assert alone["runs"][0] == after_training["runs"][0]
    assert (out / "predictions.csv").read_text() == (trained / "predictions.csv").read_text()


def test_posterior_scores_keep_the_decisions_and_score_each_class_by_its_posterior(
    trained: Path, data_dir: Path, tmp_path: Path
) -> None:
    from medsymmflow.codes import ClassCodebook

    softmax = json.loads((trained / "metrics.json").read_text())
    out = tmp_path / "posterior"
    run_bundle(
        ["bundles/pneumoniamnist/evaluate.json"],
        *tiny(data_dir, out, "--ckpt_path", str(trained / "checkpoints/best.pt"), "--evaluation#score", "posterior"),
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["score"] == "posterior"
    rows, before = read_csv(out / "predictions.csv"), read_csv(trained / "predictions.csv")
    assert [r["pred"] for r in rows] == [r["pred"] for r in before]
    assert [r["dist_0"] for r in rows] == [r["dist_0"] for r in before]
    assert metrics["runs"][0]["medmnist"]["acc"] == softmax["runs"][0]["medmnist"]["acc"]
    dist = torch.tensor([[float(r["dist_0"]), float(r["dist_1"])] for r in rows], dtype=torch.float64)
    score = np.array([[float(r["score_0"]), float(r["score_1"])] for r in rows])
    np.testing.assert_allclose(score, ClassCodebook.rgb(2).posterior(dist).numpy(), atol=1e-4)
    labels = np.array([int(r["label"]) for r in rows])
    from sklearn.metrics import roc_auc_score

    assert metrics["runs"][0]["medmnist"]["auc"] == pytest.approx(roc_auc_score(labels, score[:, 1]), abs=1e-3)


def test_vote_decision_through_the_evaluate_bundle_scores_the_decided_class(
    trained: Path, data_dir: Path, tmp_path: Path
) -> None:
    from medmnist import Evaluator

    out = tmp_path / "vote"
    run_bundle(
        ["bundles/pneumoniamnist/evaluate.json"],
        *tiny(data_dir, out, "--ckpt_path", str(trained / "checkpoints/best.pt"), "--evaluation#decision", "vote",
              "--evaluation#draws", "4", "--evaluation#runs", "2", "--evaluation#selective", "false"),
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["decision"] == "vote" and metrics["draws"] == 4
    rows = read_csv(out / "predictions.csv")
    assert {r["schema_version"] for r in rows} == {"2"}
    labels = np.array([int(r["label"]) for r in rows])
    pred = np.array([int(r["pred"]) for r in rows])
    score = np.array([[float(r["score_0"]), float(r["score_1"])] for r in rows])
    np.testing.assert_array_equal(score.argmax(1), pred)
    # medmnist's Evaluator on the file's scores (binary: score_1 > 0.5) gives metrics.json's ACC and AUC
    from_file = Evaluator("pneumoniamnist", "test", size=28, root=str(data_dir)).evaluate(score)
    run0 = metrics["runs"][0]
    assert from_file.ACC == run0["medmnist"]["acc"] == run0["torchmetrics"]["acc"] == pytest.approx((pred == labels).mean())
    assert from_file.AUC == run0["medmnist"]["auc"]


def test_inference_on_png_and_nifti_files(trained: Path, data_dir: Path, tmp_path: Path) -> None:
    import nibabel as nib
    from PIL import Image

    images = np.load(data_dir / "pneumoniamnist.npz")["test_images"]
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(images[i]).save(folder / f"case{i}.png")
    Image.fromarray(np.stack([images[3]] * 3, -1)).save(folder / "rgb.jpg")
    nib.save(nib.Nifti1Image(images[4].astype(np.float32)[..., None], np.eye(4)), folder / "case4.nii.gz")
    (folder / "notes.txt").write_text("not an image")
    run_bundle(
        ["bundles/pneumoniamnist/inference.json"],
        *tiny(data_dir, trained, "--input", str(folder), "--ckpt_path", str(trained / "checkpoints/best.pt")),
    )
    rows = read_csv(trained / "inference/predictions.csv")
    payload = json.loads((trained / "inference/predictions.json").read_text())
    assert len(rows) == len(payload["predictions"]) == 5 and payload["score"] == "softmax"
    assert {Path(r["file"]).name for r in rows} == {"case0.png", "case1.png", "case2.png", "rgb.jpg", "case4.nii.gz"}
    for r, p in zip(rows, payload["predictions"]):
        assert r["class_name"] == ["normal", "pneumonia"][int(r["class"])]
        assert float(r["score_0"]) + float(r["score_1"]) == pytest.approx(1.0, abs=1e-4)
        assert p["uncertainty"] == pytest.approx(min(p["distances"]), rel=1e-5)
        assert p["class"] == int(np.argmin(p["distances"]))


def test_inference_on_png_gives_the_predictions_of_the_npz_path(trained: Path, data_dir: Path, tmp_path: Path) -> None:
    from PIL import Image

    # the same 40 test images as PNG files, one batch in the npz order: same noise draws as the evaluation
    images = np.load(data_dir / "pneumoniamnist.npz")["test_images"]
    folder = tmp_path / "png"
    folder.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"case{i:02d}.png")
    out = tmp_path / "out"
    run_bundle(
        ["bundles/pneumoniamnist/inference.json"],
        *tiny(data_dir, out, "--input", str(folder), "--ckpt_path", str(trained / "checkpoints/best.pt")),
    )
    npz_rows = read_csv(trained / "predictions.csv")  # the evaluation after training, first run, npz arrays
    payload = json.loads((out / "inference/predictions.json").read_text())
    assert [Path(p["file"]).name for p in payload["predictions"]] == [f"case{i:02d}.png" for i in range(40)]
    npz = {int(r["index"]): r for r in npz_rows}
    expected = np.array([[float(npz[i]["dist_0"]), float(npz[i]["dist_1"])] for i in range(40)])
    # equal up to the CSV's 9 significant digits; the 2-epoch model is nearly constant, so the transposed
    # images of the old reader moved its distances by up to 1.3e-4 (relative), mostly by over 1e-5
    np.testing.assert_allclose([p["distances"] for p in payload["predictions"]], expected, rtol=1e-5, atol=0)
    assert [p["class"] for p in payload["predictions"]] == [int(npz[i]["pred"]) for i in range(40)]
    assert payload["failed"] == [] and payload["skipped"] == []


def test_inference_folder_with_bad_files_classifies_the_rest_and_names_each_failure(
    trained: Path, data_dir: Path, tmp_path: Path
) -> None:
    from PIL import Image

    images = np.load(data_dir / "pneumoniamnist.npz")["test_images"]
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(images[0]).save(folder / "gray.png")
    Image.fromarray(images[1].astype(np.uint16) * 257).save(folder / "deep16.png")
    Image.fromarray(np.stack([images[2], images[2]], -1), "LA").save(folder / "gray_alpha.png")
    Image.fromarray(images[3]).save(folder / "scan.gif")
    (folder / "text.png").write_text("not an image")
    data = (folder / "gray.png").read_bytes()
    (folder / "cut.png").write_bytes(data[: len(data) // 2])
    (folder / "notes.txt").write_text("not an image either")
    out = tmp_path / "out"
    proc = run_bundle(
        ["bundles/pneumoniamnist/inference.json"],
        *tiny(data_dir, out, "--input", str(folder), "--ckpt_path", str(trained / "checkpoints/best.pt")),
        check=False,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("medsymmflow: error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "2 of 6 image files could not be classified" in errors[0]
    assert f"{folder / 'cut.png'} (damaged or truncated image data" in errors[0]
    assert f"{folder / 'text.png'} (not a readable image (unknown format or damaged content))" in errors[0]
    payload = json.loads((out / "inference/predictions.json").read_text())
    assert [Path(p["file"]).name for p in payload["predictions"]] == ["deep16.png", "gray.png", "gray_alpha.png", "scan.gif"]
    assert [Path(f["file"]).name for f in payload["failed"]] == ["cut.png", "text.png"]
    assert payload["skipped"] == [str(folder / "notes.txt")]
    assert "skipped 1 file(s)" in proc.stdout and "notes.txt" in proc.stdout
    assert [Path(r["file"]).name for r in read_csv(out / "inference/predictions.csv")] == ["deep16.png", "gray.png", "gray_alpha.png", "scan.gif"]
    assert not list(out.glob("**/*.tmp"))


def test_an_unreadable_png_ends_with_one_line_naming_it_and_writes_nothing(
    trained: Path, data_dir: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "scan.png"
    bad.write_text("this is a text file")
    out = tmp_path / "out"
    proc = run_bundle(
        ["bundles/pneumoniamnist/inference.json"],
        *tiny(data_dir, out, "--input", str(bad), "--ckpt_path", str(trained / "checkpoints/best.pt")),
        check=False,
    )
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("medsymmflow: error:")]
    assert errors == [
        f"medsymmflow: error: 1 of 1 image files could not be classified: {bad} "
        "(not a readable image (unknown format or damaged content)); no predictions were written"
    ], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert not (out / "inference").exists() or not any((out / "inference").iterdir())


def test_inference_bundle_sampling_section_writes_seeded_samples(trained: Path, data_dir: Path, tmp_path: Path) -> None:
    from PIL import Image

    # --classify false: no --input folder exists, so the run also shows that classification is skipped
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        run_bundle(
            ["bundles/pneumoniamnist/inference.json"],
            *tiny(data_dir, trained, "--ckpt_path", str(trained / "checkpoints/best.pt"), "--classify", "false",
                  "--sampling#enabled", "true", "--sampling#num_per_class", "3", "--sampling#steps", "2",
                  "--sampling#output_dir", str(out)),
        )
        outs.append(out)
    for c in ("0_normal", "1_pneumonia"):  # one folder per class, named by index and class name
        files = sorted(p.name for p in (outs[0] / c).glob("*.png"))
        assert files == ["0.png", "1.png", "2.png"]
        for f in files:  # same seed, same images
            assert np.array_equal(np.asarray(Image.open(outs[0] / c / f)), np.asarray(Image.open(outs[1] / c / f)))
    first = outs[0] / "0_normal"
    assert not np.array_equal(np.asarray(Image.open(first / "0.png")), np.asarray(Image.open(first / "1.png")))
    montage = np.asarray(Image.open(outs[0] / "montage.png"))
    assert montage.shape[0] >= 2 * 28 and montage.shape[1] >= 3 * 28  # one row per class, one column per sample


def test_resume_continues_exactly_like_an_uninterrupted_run(data_dir: Path, tmp_path: Path) -> None:
    common = ["--epochs", "2", "--batch_size", "16", "--warmup_epochs", "1", "--balanced", "true",
              "--training#val_interval", "1", "--training#evaluate_after_training", "false"]
    full, split = tmp_path / "full", tmp_path / "split"
    run_bundle(["bundles/pneumoniamnist/train.json"], *tiny(data_dir, full, *common))
    run_bundle(["bundles/pneumoniamnist/train.json"], *tiny(data_dir, split, *common, "--training#stop_epoch", "1"))
    stopped = torch.load(split / "checkpoints/last.pt", map_location="cpu", weights_only=True)
    assert stopped["trainer"]["iteration"] == stopped["trainer"]["epoch_length"]  # stopped after epoch 1
    out = run_bundle(["bundles/pneumoniamnist/train.json"], *tiny(data_dir, split, *common, "--resume", "true"))
    assert "Restored all variables" in out.stdout + out.stderr
    a = torch.load(full / "checkpoints/last.pt", map_location="cpu", weights_only=True)
    b = torch.load(split / "checkpoints/last.pt", map_location="cpu", weights_only=True)
    assert a["trainer"]["iteration"] == b["trainer"]["iteration"] == 2 * a["trainer"]["epoch_length"]
    for part in ("network", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after resume"
    assert a["lr_scheduler"]["last_epoch"] == b["lr_scheduler"]["last_epoch"]
    exp_avg_a = [s["exp_avg"] for s in a["optimizer"]["state"].values()]
    exp_avg_b = [s["exp_avg"] for s in b["optimizer"]["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(exp_avg_a, exp_avg_b))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["--flag", "foomnist"], "unknown MedMNIST flag 'foomnist'"),
        (["--flag", "chestmnist"], "multi-label"),
        (["--flag", "dermamnist"], "dermamnist.npz not found"),
        (["--evaluation#autocast", "fast"], "unknown autocast setting 'fast'"),
        (["--evaluation#score", "logits"], "unknown evaluation#score 'logits'"),
    ],
)
def test_bad_overrides_end_with_one_clear_message(data_dir: Path, tmp_path: Path, overrides: list[str], message: str) -> None:
    out = run_bundle(["bundles/pneumoniamnist/evaluate.json"], *tiny(data_dir, tmp_path, *overrides), check=False)
    assert out.returncode != 0
    errors = [line for line in out.stderr.splitlines() if line.startswith("medsymmflow: error:")]
    assert len(errors) == 1 and message in errors[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr


def test_checkpoint_of_another_flag_is_refused(trained: Path, data_dir: Path, tmp_path: Path) -> None:
    out = run_bundle(
        ["bundles/pneumoniamnist/evaluate.json"],
        *tiny(data_dir, tmp_path, "--flag", "breastmnist", "--ckpt_path", str(trained / "checkpoints/best.pt")),
        check=False,
    )
    assert out.returncode != 0
    assert "medsymmflow: error: the checkpoint was trained for a different dataset" in out.stderr
    assert "flag: checkpoint 'pneumoniamnist' vs this run 'breastmnist'" in out.stderr
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("bundle", BUNDLES)
def test_bundle_metadata_verifies_against_the_schema_in_the_repo(bundle: str) -> None:
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(REPO / "bundles" / bundle / "metadata.json"), filepath=str(REPO / "configs/metadata_schema.json"))
    for name in ("train.json", "evaluate.json", "inference.json", "metadata.json", "logging.conf", "README.md"):
        assert (REPO / "bundles" / bundle / name).is_file(), f"bundles/{bundle}/{name} missing"


def test_multi_process_training_with_gloo(data_dir: Path, tmp_path: Path) -> None:
    """Two CPU processes (torchrun, gloo, DDP): each trains on half the data, rank 0 writes the results."""
    out = tmp_path / "ddp"
    bundle = bundle_command(
        ["bundles/pneumoniamnist/train.json", "configs/multi_gpu_train.json"],
        *tiny(data_dir, out, "--epochs", "1", "--batch_size", "8", "--warmup_epochs", "0",
              "--training#val_interval", "1", "--evaluation#runs", "1"),
    )
    # torchrun starts `-m monai.bundle run ...` on each rank in place of `python`
    done = run_command([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533", *bundle[1:]])
    assert done.returncode == 0, done.stderr[-4000:]
    last = torch.load(out / "checkpoints/last.pt", map_location="cpu", weights_only=True)
    # 48 training images over 2 ranks in batches of 8 -> 3 iterations per epoch (a single process needs 6)
    assert last["trainer"]["epoch_length"] == 3
    assert (done.stdout + done.stderr).count("Engine run finished") >= 2  # both ranks trained
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_samples"] == 40


def test_real_pneumoniamnist_beats_a_constant_predictor(shared_data: Path, tmp_path: Path) -> None:
    """Two epochs of the CPU recipe on the real PneumoniaMNIST must beat predicting the majority class.

    Bounded by epochs, not by the recipe's wall-clock budget: a loaded machine must reach the same weights.
    """
    out = tmp_path / "real"
    run_bundle(
        ["bundles/pneumoniamnist/train.json", "configs/cpu.json"],
        "--dataset_dir", str(shared_data / "medmnist"), "--download", "false", "--output_dir", str(out),
        "--epochs", "2", "--training#budget_minutes", "None", "--training#plan_epochs", "false",
        "--evaluation#runs", "2",
        # unbalanced batches (74 % pneumonia) leave a short run at the majority class; see docs/results.md
        "--balanced", "true",
    )
    metrics = json.loads((out / "metrics.json").read_text())
    labels = np.load(shared_data / "medmnist/pneumoniamnist.npz")["test_labels"].ravel()
    majority = max(np.mean(labels == 0), np.mean(labels == 1))  # 390 / 624 = 0.625
    summary = metrics["summary"]["medmnist"]
    assert summary["acc"]["mean"] > majority + 0.03, summary
    assert summary["auc"]["mean"] > 0.70, summary
