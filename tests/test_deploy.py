"""Deployment: the TorchScript classifier (``medsymmflow export``) and MLflow tracking through MONAI's ``--tracking``."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, run_bundle

from medsymmflow.cli import main
from medsymmflow.codes import ClassCodebook, decision_scores
from medsymmflow.deploy import export_classifier, read_metadata
from medsymmflow.inferers import SymmFlowClassifier
from medsymmflow.io import RunInfo
from medsymmflow.networks import build_network, create_ema

HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None

# Loads an exported file in a fresh interpreter that cannot import medsymmflow (nor MONAI): the None
# entries make any such import fail, and -I drops PYTHONPATH and the working directory from sys.path.
STANDALONE = textwrap.dedent(
    """
    import json, sys
    for name in ("medsymmflow", "monai"):
        sys.modules[name] = None
    import torch
    extra = {"metadata.json": ""}
    model = torch.jit.load(sys.argv[1], _extra_files=extra)
    images = torch.load(sys.argv[2], weights_only=True)
    with torch.no_grad():
        label, scores, uncertainty = model(images)
    try:
        import medsymmflow  # noqa: F401
        importable = True
    except ImportError:
        importable = False
    json.dump({"label": label.tolist(), "scores": scores.tolist(), "uncertainty": uncertainty.tolist(),
               "metadata": json.loads(extra["metadata.json"]), "medsymmflow_importable": importable},
              open(sys.argv[3], "w"))
    """
)


def fake_checkpoint(
    path: Path, code_kind: str = "onehot", num_classes: int = 3, seed: int = 0, decoupled: bool = False
) -> ClassCodebook:
    """A bundle-format checkpoint (run_info + ema) of a randomly initialised tiny network."""
    torch.manual_seed(seed)
    codebook = ClassCodebook.from_kind(code_kind, num_classes)
    net = build_network("tiny", 1, codebook.channels, decoupled_time=decoupled)
    if decoupled:  # the label-time embedding starts at zero (the network starts coupled); a trained one is not
        with torch.no_grad():
            for param in net.parameters():
                param.add_(0.05 * torch.randn_like(param))
    info = RunInfo(flag="pneumoniamnist" if num_classes == 2 else "synthetic", num_classes=num_classes, code_kind=code_kind,
                   image_channels=1, code_channels=codebook.channels, size=28, net_preset="tiny", decoupled_time=decoupled)
    torch.save({"run_info": info.state_dict(), "ema": create_ema(net).state_dict()}, path)
    return codebook


def eager_outputs(ckpt: Path, images: torch.Tensor, steps: int, method: str, draws: int, decision: str, score: str,
                  seed: int = 0, time_coupling: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What SymmFlowEvaluator computes for one batch: the classifier with a generator seeded by ``seed``."""
    from medsymmflow.generation import load_generator

    loaded = load_generator(ckpt)
    classifier = SymmFlowClassifier(
        loaded.codebook, steps=steps, method=method, num_draws=draws, decision=decision, time_coupling=time_coupling
    )
    with torch.no_grad():
        result = classifier(images, loaded.network, generator=torch.Generator().manual_seed(seed))
    scores = decision_scores(loaded.codebook.class_scores(result.distances, score, 0.1), result.labels, result.counts)
    return result.labels, scores, result.uncertainty


@pytest.mark.parametrize(
    "steps, method, draws, decision, score",
    [(1, "euler", 1, "mean", "softmax"), (2, "midpoint", 2, "vote", "posterior")],
)
def test_exported_file_reproduces_the_library_classifier_on_other_batch_sizes(
    tmp_path: Path, steps: int, method: str, draws: int, decision: str, score: str
) -> None:
    ckpt = tmp_path / "best.pt"
    codebook = fake_checkpoint(ckpt)
    out = tmp_path / "classifier.ts"
    meta = export_classifier(ckpt, out, steps=steps, method=method, draws=draws, decision=decision, score=score)
    model = torch.jit.load(str(out))
    for batch in (1, 3):  # the trace ran on 2 images
        images = torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch)) * 2 - 1
        with torch.no_grad():
            label, scores, unc = model(images)
        want = eager_outputs(ckpt, images, steps, method, draws, decision, score)
        assert label.dtype == torch.int64 and label.shape == (batch,) and scores.shape == (batch, 3)
        torch.testing.assert_close(label, want[0])
        torch.testing.assert_close(scores, want[1].float(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(unc, want[2], rtol=1e-4, atol=1e-5)
    assert read_metadata(out) == meta
    assert meta["code_kind"] == "onehot" and meta["codes"] == codebook.codes.tolist() and meta["score"] == score
    assert (meta["size"], meta["image_channels"], meta["steps"], meta["draws"]) == (28, 1, steps, draws)
    assert not list(tmp_path.glob("*.tmp")), "temporary file left behind"


def test_a_decoupled_checkpoint_exports_the_path_its_evaluation_takes(tmp_path: Path) -> None:
    fake_checkpoint(tmp_path / "best.pt", decoupled=True)
    meta = export_classifier(tmp_path / "best.pt", tmp_path / "auto.ts", steps=2)
    forced = export_classifier(tmp_path / "best.pt", tmp_path / "coupled.ts", steps=2, time_coupling="coupled")
    assert (meta["time_coupling"], forced["time_coupling"]) == ("decoupled", "coupled")
    images = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(5)) * 2 - 1
    with torch.no_grad():
        auto_scores = torch.jit.load(str(tmp_path / "auto.ts"))(images)[1]
        coupled_scores = torch.jit.load(str(tmp_path / "coupled.ts"))(images)[1]
    # auto is the bundle's default: the image held clean while the label is integrated
    want = eager_outputs(tmp_path / "best.pt", images, 2, "euler", 1, "mean", "softmax", time_coupling="decoupled")
    torch.testing.assert_close(auto_scores, want[1].float(), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(auto_scores, coupled_scores, atol=1e-4)  # the two paths are different classifiers
    # a coupled checkpoint has no decoupled path; nothing is written
    fake_checkpoint(tmp_path / "coupled.pt")
    with pytest.raises(ValueError, match="time_coupling 'decoupled' needs a network trained with decoupled times"):
        export_classifier(tmp_path / "coupled.pt", tmp_path / "none.ts", time_coupling="decoupled")
    assert not (tmp_path / "none.ts").exists()
    assert export_classifier(tmp_path / "coupled.pt", tmp_path / "c.ts")["time_coupling"] == "coupled"


def test_exported_file_refuses_inputs_the_bundle_would_never_produce(tmp_path: Path) -> None:
    fake_checkpoint(tmp_path / "best.pt")
    export_classifier(tmp_path / "best.pt", tmp_path / "c.ts")
    model = torch.jit.load(str(tmp_path / "c.ts"))
    bad = {
        "shape": torch.zeros(2, 1, 32, 32),
        "float32": torch.zeros(2, 1, 28, 28, dtype=torch.float64),
        "in \\[-1, 1\\]": torch.full((2, 1, 28, 28), 255.0),  # raw grey levels instead of v / 127.5 - 1
        "NaN": torch.full((2, 1, 28, 28), float("nan")),
    }
    for message, images in bad.items():
        with pytest.raises(torch.jit.Error, match=message):
            model(images)


def test_export_refuses_settings_it_cannot_reproduce_and_writes_nothing(tmp_path: Path) -> None:
    fake_checkpoint(tmp_path / "rgb.pt", code_kind="rgb", num_classes=5)
    out = tmp_path / "c.ts"
    with pytest.raises(ValueError, match="adaptive ODE solvers"):
        export_classifier(tmp_path / "rgb.pt", out, method="dopri5")
    with pytest.raises(ValueError, match="affinely independent"):
        export_classifier(tmp_path / "rgb.pt", out, score="posterior")
    with pytest.raises(ValueError, match="decision"):
        export_classifier(tmp_path / "rgb.pt", out, decision="pixel")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["rgb.pt"]


def test_export_command_prints_one_error_line_for_a_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["export", "--ckpt", str(tmp_path / "missing.pt")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"medsymmflow export: error: checkpoint not found: {tmp_path / 'missing.pt'}"]


# ---------------------------------------------------------------------------------------------- bundles


@pytest.fixture(scope="module")
def data_dir(synthetic_medmnist) -> Path:
    return synthetic_medmnist(("pneumoniamnist", 32, 16, 8, 1))


@pytest.fixture(scope="module")
def trained(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 2-epoch tiny training, tracked with MLflow in a local file store when mlflow is installed.

    The export test and the tracking test share it, so the suite trains once for both.
    """
    out = tmp_path_factory.mktemp("run")
    tracking: list[str] = []
    if HAS_MLFLOW:
        tracking = ["--tracking", "configs/mlflow.json", "--tracking_uri", (out / "mlruns").as_uri()]
    run_bundle(
        ["bundles/pneumoniamnist/train.json"],
        "--dataset_dir", str(data_dir), "--download", "false", "--net_preset", "tiny", "--output_dir", str(out),
        "--device", "cpu", "--epochs", "2", "--batch_size", "16", "--warmup_epochs", "0",
        "--training#val_interval", "1", "--training#evaluate_after_training", "false", *tracking,
        # MLflow 3 refuses file stores unless this is set (they are in maintenance mode there)
        env={"MLFLOW_ALLOW_FILE_STORE": "true"},
    )
    return out


@pytest.mark.slow
def test_exported_classifier_gives_the_inference_bundle_outputs_without_the_package(
    trained: Path, data_dir: Path, tmp_path: Path
) -> None:
    from monai.bundle import ConfigParser
    from PIL import Image

    images = np.load(data_dir / "pneumoniamnist.npz")["test_images"]
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(6):  # 6 images: not the trace's batch size
        Image.fromarray(images[i]).save(folder / f"case{i}.png")
    ckpt = trained / "checkpoints/best.pt"
    overrides = ["--input", str(folder), "--ckpt_path", str(ckpt), "--output_dir", str(tmp_path), "--net_preset", "tiny",
                 "--device", "cpu", "--dataset_dir", str(data_dir), "--download", "false"]
    run_bundle(["bundles/pneumoniamnist/inference.json"], *overrides)
    bundle = json.loads((tmp_path / "inference/predictions.json").read_text())["predictions"]

    # the same files through the bundle's own preprocessing, as one batch in the bundle's order
    parser = ConfigParser()
    parser.read_config("bundles/pneumoniamnist/inference.json")
    parser.update({k[2:]: v for k, v in zip(overrides[::2], overrides[1::2])})
    cwd = os.getcwd()
    os.chdir(REPO)  # the bundle's % macros name configs/ relative to the repository root
    try:
        preprocessing = parser.get_parsed_content("infer#preprocessing")
        files = parser.get_parsed_content("infer#files")
    finally:
        os.chdir(cwd)
    batch = torch.stack([preprocessing(f)["image"] for f in files])
    assert [Path(f["image"]).name for f in files] == [Path(p["file"]).name for p in bundle]
    torch.save(batch, tmp_path / "batch.pt")

    assert main(["export", "--ckpt", str(ckpt), "--output", str(tmp_path / "classifier.ts")]) == 0
    result_file = tmp_path / "outputs.json"
    proc = subprocess.run(
        [sys.executable, "-I", "-c", STANDALONE, str(tmp_path / "classifier.ts"), str(tmp_path / "batch.pt"), str(result_file)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={"PATH": os.environ.get("PATH", "")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(result_file.read_text())
    assert got["medsymmflow_importable"] is False
    assert got["label"] == [p["class"] for p in bundle]
    np.testing.assert_allclose(got["scores"], [p["scores"] for p in bundle], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["uncertainty"], [p["uncertainty"] for p in bundle], rtol=1e-4, atol=1e-5)
    meta = got["metadata"]
    assert meta["class_names"] == ["normal", "pneumonia"] and meta["score"] == "softmax" and meta["code_kind"] == "rgb"


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MLFLOW, reason="mlflow is not installed (pip install -e '.[tracking]'; the dev extra has it)")
def test_monai_tracking_option_logs_the_training_to_a_local_mlflow_store(trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow.MlflowClient(tracking_uri=(trained / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("medsymmflow_pneumoniamnist")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, "the trainer's and the validator's handlers must log into one run"
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["max_epochs"] == "2"
    val_auc = client.get_metric_history(run.info.run_id, "val_auc")
    assert [m.step for m in val_auc] == [1, 2] and all(0.0 <= m.value <= 1.0 for m in val_auc)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2]
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 4  # 2 epochs x 2 iterations
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_epoch_loss")] == [1, 2]  # the epochs' means
