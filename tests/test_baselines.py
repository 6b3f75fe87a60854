"""The ResNet-18 baseline (engines, files, numbers), the batch augmentation and the throughput timer."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_benchmark
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from torch import nn
from torchmetrics.functional.classification import binary_auroc

import medsymmflow.baselines.resnet as resnet_module
from medsymmflow.baselines import build_baseline_engines, build_resnet18, train_resnet_baseline
from medsymmflow.data import BatchAugment, batch_augment, load_medmnist, write_synthetic_medmnist
from medsymmflow.engines import AtomicCheckpointSaver, TrainingBudget
from medsymmflow.reports.predictions import SCHEMA_VERSION, load_predictions, predictions_columns

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# a short, fixed recipe: two epochs of 3 steps each on 48 synthetic images. One thread: on a CPU
# shared with other jobs, two OpenMP threads on two busy cores run this about 5x slower.
RECIPE = {"budget_minutes": None, "max_epochs": 2, "batch_size": 16, "lr": 3e-4, "seed": 0, "threads": 1}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data_dir(synthetic_medmnist) -> Path:
    return synthetic_medmnist(("pneumoniamnist", 48, 16, 16, 0))


@pytest.fixture(scope="module")
def trained(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("resnet_run")
    return train_resnet_baseline("pneumoniamnist", data_dir, output_dir=out, **RECIPE), out


# ----------------------------------------------------------------------------------------- training


def test_run_writes_consistent_files(trained: tuple[dict, Path], data_dir: Path) -> None:
    result, out = trained
    assert {p.name for p in out.iterdir()} == {"metrics.json", "predictions.csv", "val_predictions.csv", "model.pt"}
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(result))

    npz = np.load(data_dir / "pneumoniamnist.npz")
    for split, name in (("test", "predictions.csv"), ("val", "val_predictions.csv")):
        header = (out / name).read_text().splitlines()[0].split(",")
        assert header == predictions_columns(2, distances=False, mode=False, spread=False)
        table = load_predictions(out / name)  # the one reader of the predictions table
        assert table.schema_version == SCHEMA_VERSION and table.distances is None and table.pred_mode is None
        np.testing.assert_array_equal(table.index, np.arange(16))
        np.testing.assert_array_equal(table.labels, npz[f"{split}_labels"].reshape(-1))
        np.testing.assert_allclose(table.scores.sum(1), 1.0, atol=1e-6)
        np.testing.assert_array_equal(table.pred, table.scores.argmax(1))
        np.testing.assert_allclose(table.uncertainty, 1.0 - table.scores.max(1), atol=1e-8)
        accuracy = float((table.labels == table.pred).mean())
        assert accuracy == pytest.approx(result[split]["torchmetrics"]["acc"], abs=1e-6)  # torchmetrics is float32
        # the (N, 2) softmax makes medmnist's 0.5 threshold on the last column the argmax
        assert result[split]["medmnist"]["acc"] == pytest.approx(accuracy, abs=1e-12)
        assert result[split]["medmnist"]["auc"] == pytest.approx(result[split]["torchmetrics"]["auc"], abs=1e-9)


def test_max_epochs_bounds_the_run_and_every_epoch_is_validated(trained: tuple[dict, Path]) -> None:
    training = trained[0]["training"]
    assert training["epochs_run"] == training["epochs_planned"] == len(training["history"]) == 2
    assert [h["epoch"] for h in training["history"]] == [1, 2]
    assert all(h["complete"] and h["steps"] == 3 for h in training["history"]) and not training["stopped_by_budget"]


def test_model_file_holds_the_best_validation_auc(trained: tuple[dict, Path], data_dir: Path) -> None:
    result, out = trained
    history = result["training"]["history"]
    aucs = [h["val_auc"] for h in history]
    assert result["training"]["best_epoch"] == 1 + aucs.index(max(aucs))  # ties keep the earlier epoch
    # the validation report scores model.pt: its AUC is the best epoch's
    assert result["val"]["torchmetrics"]["auc"] == pytest.approx(max(aucs), abs=1e-6)

    model = build_resnet18(1, 2)
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    images = torch.from_numpy(np.load(data_dir / "pneumoniamnist.npz")["test_images"]).float()[:, None] / 127.5 - 1.0
    with torch.inference_mode():
        probs = torch.softmax(model.eval()(images), 1).numpy()
    np.testing.assert_allclose(probs, load_predictions(out / "predictions.csv").scores, atol=1e-5)


def test_synthetic_task_is_learnt_beyond_chance(trained: tuple[dict, Path]) -> None:
    result, _ = trained
    history = result["training"]["history"]
    assert history[-1]["loss"] < history[0]["loss"]
    assert result["test"]["torchmetrics"]["auc"] > 0.9


def test_same_seed_gives_the_same_model_and_predictions(trained: tuple[dict, Path], data_dir: Path, tmp_path: Path) -> None:
    rng = torch.get_rng_state()
    again = train_resnet_baseline("pneumoniamnist", data_dir, output_dir=tmp_path, **RECIPE)
    torch.testing.assert_close(torch.get_rng_state(), rng, rtol=0, atol=0)  # the caller's RNG is left alone
    first, out = trained
    for name in ("predictions.csv", "val_predictions.csv"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes()
    a, b = (torch.load(d / "model.pt", weights_only=True) for d in (out, tmp_path))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again["training"]["history"] == first["training"]["history"]


def test_a_budget_spent_within_the_first_epoch_still_validates_and_writes(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a fake clock: every training step takes 10 s, so a 15 s budget ends after the second of 3 steps
    real = resnet_module.build_baseline_engines

    def with_fake_clock(*args, **kwargs):
        engines: list = []
        kwargs["clock"] = lambda: 10.0 * engines[0].trainer.state.iteration
        engines.append(real(*args, **kwargs))
        return engines[0]

    monkeypatch.setattr(resnet_module, "build_baseline_engines", with_fake_clock)
    result = train_resnet_baseline(
        "pneumoniamnist", data_dir, output_dir=tmp_path, **(RECIPE | {"budget_minutes": 0.25, "max_epochs": None})
    )
    training = result["training"]
    assert training["stopped_by_budget"] is True
    assert training["epochs_run"] == training["epochs_planned"] == training["best_epoch"] == 1
    assert [(h["epoch"], h["steps"], h["complete"]) for h in training["history"]] == [(1, 2, False)]
    assert (tmp_path / "metrics.json").is_file() and load_predictions(tmp_path).num_samples == 16


def test_multiclass_rgb_run(tmp_path: Path) -> None:
    write_synthetic_medmnist(tmp_path, "retinamnist", n_train=15, n_val=10, n_test=10, seed=1)
    result = train_resnet_baseline(
        "retinamnist",
        tmp_path,
        max_epochs=1,
        budget_minutes=None,
        batch_size=15,
        augment=False,
        threads=1,
        output_dir=tmp_path / "run",
    )
    table = load_predictions(tmp_path / "run")
    assert table.num_classes == 5 and table.distances is None
    np.testing.assert_allclose(table.scores.sum(1), 1.0, atol=1e-6)
    assert result["num_classes"] == 5 and result["config"]["augment"] is None
    assert result["test"]["medmnist"]["acc"] == pytest.approx(float((table.labels == table.pred).mean()), abs=1e-12)


# ------------------------------------------------------------------------- the engines, on a tiny network


def _tiny_network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 2))


@pytest.fixture(scope="module")
def splits(data_dir: Path) -> tuple:
    return tuple(load_medmnist("pneumoniamnist", split, dataset_dir=data_dir) for split in ("train", "val"))


def test_the_baseline_trains_on_monai_engines_under_medsymmflows_training_budget(splits: tuple, tmp_path: Path) -> None:
    # a fake clock: one second per training step, validation free; 3 steps per epoch and a 15 s budget
    # (3 % kept back) fit 1 + floor((14.55 - 3) / 3) = 4 epochs, planned after epoch 1 and kept after
    engines: list = []
    built = build_baseline_engines(
        _tiny_network(), *splits, tmp_path, CPU, max_epochs=None, budget_minutes=0.25, batch_size=16,
        clock=lambda: float(engines[0].trainer.state.iteration),
    )
    engines.append(built)
    assert isinstance(built.trainer, SupervisedTrainer) and isinstance(built.evaluator, SupervisedEvaluator)
    assert type(built.budget) is TrainingBudget and type(built.saver) is AtomicCheckpointSaver
    built.trainer.run()
    state = built.trainer.state
    assert (state.max_epochs, state.epoch, state.iteration) == (4, 4, 12)
    assert built.lr_scheduler.t_total == 12  # the cosine schedule ends with the plan
    assert built.lr_scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)
    assert [it for it, _ in built.history.metrics["val_auc"]] == [3, 6, 9, 12]  # validated every epoch


def test_the_saver_keeps_the_epoch_of_the_best_validation_auc(splits: tuple, tmp_path: Path) -> None:
    train, val = splits
    # random validation labels: the AUC wanders and later epochs are worse than the best one
    val = dataclasses.replace(val, labels=torch.randint(0, 2, (len(val),), generator=torch.Generator().manual_seed(1)))
    built = build_baseline_engines(_tiny_network(), train, val, tmp_path, CPU, max_epochs=6, budget_minutes=None, batch_size=16)
    built.trainer.run()
    aucs = [float(v) for _, v in built.history.metrics["val_auc"]]
    best = built.saver.state_dict()["best_epoch"]
    assert len(aucs) == 6 and best == 1 + aucs.index(max(aucs)) and min(aucs[best:]) < max(aucs)

    restored = _tiny_network()
    restored.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    with torch.inference_mode():
        scores = torch.softmax(restored.eval()(val.images), 1)[:, 1]
        final = torch.softmax(built.trainer.network.eval()(val.images), 1)[:, 1]
    assert float(binary_auroc(scores, val.labels)) == pytest.approx(max(aucs), abs=1e-6)
    assert float(binary_auroc(final, val.labels)) == pytest.approx(aucs[-1], abs=1e-6) != max(aucs)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"budget_minutes": 0}, ValueError, "budget_minutes must be a finite number > 0"),
        ({"budget_minutes": -3.0}, ValueError, "budget_minutes must be a finite number > 0"),
        ({"budget_minutes": "10"}, TypeError, "budget_minutes must be a number"),
        ({"budget_minutes": None, "max_epochs": None}, ValueError, "never stop"),
        ({"max_epochs": 0}, ValueError, "max_epochs must be an integer >= 1"),
        ({"batch_size": 0}, ValueError, "batch_size must be an integer >= 1"),
        ({"lr": 0.0}, ValueError, "lr must be"),
        ({"weight_decay": -1.0}, ValueError, "weight_decay must be"),
        ({"threads": 0}, ValueError, "threads must be an integer >= 1"),
        ({"augment": "flips"}, TypeError, "augment must be"),
    ],
)
def test_bad_arguments_raise(data_dir: Path, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        train_resnet_baseline("pneumoniamnist", data_dir, **kwargs)


def test_unknown_flag_and_missing_file_raise(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="unknown MedMNIST flag"):
        train_resnet_baseline("notamnist", data_dir, max_epochs=1)
    with pytest.raises(FileNotFoundError, match="bloodmnist.npz"):
        train_resnet_baseline("bloodmnist", data_dir, max_epochs=1, download=False)


def test_build_resnet18_stems() -> None:
    small, large = build_resnet18(3, 4), build_resnet18(3, 4, small_input=False)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert large.conv1.kernel_size == (7, 7) and large.conv1.stride == (2, 2)
    assert small(torch.zeros(2, 3, 28, 28)).shape == (2, 4)
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        build_resnet18(1, 1)


# ------------------------------------------------------------------------------------- augmentation


def test_augment_keeps_shape_reproduces_and_changes_images() -> None:
    images = torch.rand(32, 3, 28, 28) * 2 - 1
    kept = images.clone()
    a = batch_augment(images, torch.Generator().manual_seed(7))
    b = batch_augment(images, torch.Generator().manual_seed(7))
    c = batch_augment(images, torch.Generator().manual_seed(8))
    assert a.shape == images.shape and a.dtype == images.dtype
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    torch.testing.assert_close(images, kept, rtol=0, atol=0)  # the input is left alone
    changed = (a != images).flatten(1).any(1)
    assert changed.float().mean() > 0.5  # 1 in 50 keeps both the flip and the shift off


def test_flip_only_gives_each_image_or_its_mirror_with_both_present() -> None:
    images = torch.randn(64, 1, 8, 8)
    out = batch_augment(images, torch.Generator().manual_seed(0), hflip=True, max_shift=0)
    same = (out == images).flatten(1).all(1)
    mirrored = (out == images.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all())
    assert 10 < int(mirrored.sum()) < 54


def test_shift_only_moves_each_image_by_at_most_max_shift() -> None:
    images = torch.randn(40, 2, 10, 10)
    out = batch_augment(images, torch.Generator().manual_seed(0), hflip=False, max_shift=1)
    found = set()
    for i in range(images.shape[0]):
        matches = [
            (dy, dx)
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            # the interior, away from the padded border, is the input moved by (dy, dx)
            if torch.equal(out[i, :, 1:-1, 1:-1], images[i, :, 1 - dy : 9 - dy, 1 - dx : 9 - dx])
        ]
        assert len(matches) == 1
        found.add(matches[0])
    assert len(found) >= 6  # the offsets vary across the batch


def test_constant_padding_fills_uncovered_border() -> None:
    images = torch.ones(50, 1, 6, 6)
    generator = torch.Generator().manual_seed(0)
    out = batch_augment(images, generator, hflip=False, max_shift=2, padding_mode="constant", fill=-1.0)
    assert set(out.unique().tolist()) == {-1.0, 1.0}
    assert bool((out == 1.0).flatten(1).sum(1).ge(16).all())  # at most 2 rows and 2 columns are uncovered


def test_batch_augment_class_matches_function() -> None:
    images = torch.randn(8, 1, 12, 12)
    aug = BatchAugment(vflip=True, max_shift=3, padding_mode="reflect")
    expected = batch_augment(images, torch.Generator().manual_seed(3), vflip=True, max_shift=3, padding_mode="reflect")
    torch.testing.assert_close(aug(images, torch.Generator().manual_seed(3)), expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    "images, kwargs, error, match",
    [
        (torch.zeros(2, 8, 8), {}, ValueError, r"\(B, C, H, W\)"),
        (torch.zeros(2, 1, 8, 8, dtype=torch.uint8), {}, TypeError, "floating point"),
        (np.zeros((2, 1, 8, 8), np.float32), {}, TypeError, "torch.Tensor"),
        (torch.zeros(2, 1, 8, 8), {"max_shift": -1}, ValueError, "max_shift"),
        (torch.zeros(2, 1, 8, 8), {"max_shift": 1.5}, ValueError, "max_shift"),
        (torch.zeros(2, 1, 8, 8), {"padding_mode": "wrap"}, ValueError, "padding_mode"),
        (torch.zeros(2, 1, 4, 4), {"max_shift": 4, "padding_mode": "reflect"}, ValueError, "reflect"),
    ],
)
def test_augment_bad_input_raises(images: object, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        batch_augment(images, **kwargs)  # type: ignore[arg-type]
    if "max_shift" in kwargs or "padding_mode" in kwargs:
        if kwargs.get("padding_mode") != "reflect":
            with pytest.raises(error, match=match):
                BatchAugment(**kwargs)


# ---------------------------------------------------------------------------------------- throughput


def test_throughput_timer_counts_calls_and_reports_the_median() -> None:
    throughput = load_benchmark("throughput")
    calls = []
    images = torch.zeros(10, 1, 4, 4)
    result = throughput.measure_throughput(lambda x: calls.append(x.shape[0]), images, repeats=3, warmup=2)
    assert calls == [10] * 5
    assert len(result["seconds_per_batch"]) == 3
    assert result["images_per_second"] == pytest.approx(10 / sorted(result["seconds_per_batch"])[1])

    order = []
    paired = throughput.compare_throughput(
        lambda x: order.append("f"), lambda x: order.append("r"), images, repeats=2, warmup=1
    )
    assert order == ["r", "f"] * 3  # warm-up, then reference and candidate in turn
    assert paired["ratio"] == pytest.approx(float(np.median(paired["ratio_per_repeat"])))
    with pytest.raises(ValueError, match="repeats"):
        throughput.measure_throughput(lambda x: None, images, repeats=0)
    assert math.isfinite(paired["reference"]["images_per_second"])


def test_benchmark_gives_the_resnet_medsymmflow_batch_size_unless_told_otherwise() -> None:
    bench = load_benchmark("classification")
    recipe = json.loads((BENCHMARKS.parent / "configs" / "cpu.json").read_text())["batch_size"]

    def resnet_batch(*argv: str) -> int:
        args = bench._parse_args(["--flag", "retinamnist", "--dataset-dir", ".", "--autocast", "none", *argv])
        cmd = bench._resnet_command(args, Path("out"))
        return int(cmd[cmd.index("--batch-size") + 1])

    assert resnet_batch() == recipe
    assert resnet_batch("--override=--batch_size=48", "--override=--balanced=true") == 48
    assert resnet_batch("--override=--batch_size=48", "--resnet-batch-size", "100") == 100


def test_benchmark_report_without_finished_runs_names_the_missing_file(tmp_path: Path) -> None:
    bench = load_benchmark("classification")
    argv = ["--flag", "retinamnist", "--dataset-dir", ".", "--report-only", "--output-dir", str(tmp_path)]
    with pytest.raises(SystemExit, match=r"no test metrics at .*medsymmflow/metrics.json.*--report-only needs"):
        bench.main(argv)
    assert not (tmp_path / "results.json").exists()


def test_benchmark_report_reads_the_baselines_metrics(trained: tuple[dict, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # --report-only on a folder holding this baseline's run and a medsymmflow metrics.json
    bench = load_benchmark("classification")
    result, out = trained
    shutil.copytree(out, tmp_path / "resnet18")
    summary = {"medmnist": {m: {"mean": 0.5, "two_sigma": 0.0} for m in ("acc", "auc")}}
    flow = {"summary": summary, "steps": 1, "draws": 1, "num_classes": 2, "code_kind": "onehot", "net_preset": "tiny"}
    (tmp_path / "medsymmflow").mkdir()
    (tmp_path / "medsymmflow" / "metrics.json").write_text(json.dumps(flow))
    monkeypatch.setattr(bench, "_throughput", lambda *args: {"ratio": 1.0})
    report = bench.main(["--flag", "pneumoniamnist", "--dataset-dir", ".", "--report-only", "--output-dir", str(tmp_path)])
    row = report["results"]["resnet18"]
    assert (row["acc"], row["auc"]) == (result["test"]["medmnist"]["acc"], result["test"]["medmnist"]["auc"])
    assert json.loads((tmp_path / "results.json").read_text())["resnet18_metrics"] == result
