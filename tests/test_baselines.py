"""The ResNet-18 baseline (training, files, numbers), the batch augmentation and the throughput timer."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from medsymmflow.baselines import build_resnet18, train_resnet_baseline, write_softmax_predictions
from medsymmflow.data import BatchAugment, batch_augment, write_synthetic_medmnist

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# a short, fixed recipe: three epochs of 3 steps each on 48 synthetic images. One thread: on a CPU
# shared with other jobs, two OpenMP threads on two busy cores run this about 5x slower.
RECIPE = {"budget_minutes": None, "max_epochs": 3, "batch_size": 16, "lr": 3e-4, "seed": 0, "threads": 1}


def _read_csv(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], np.asarray(rows[1:], dtype=np.float64)


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
        header, table = _read_csv(out / name)
        assert header == ["index", "label", "pred", "uncertainty", "score_0", "score_1", "schema_version"]
        np.testing.assert_array_equal(table[:, -1], 2)
        scores = table[:, 4:-1]
        np.testing.assert_array_equal(table[:, 0], np.arange(16))
        np.testing.assert_array_equal(table[:, 1], npz[f"{split}_labels"].reshape(-1))
        np.testing.assert_allclose(scores.sum(1), 1.0, atol=1e-6)
        np.testing.assert_array_equal(table[:, 2], scores.argmax(1))
        np.testing.assert_allclose(table[:, 3], 1.0 - scores.max(1), atol=1e-8)
        accuracy = float((table[:, 1] == table[:, 2]).mean())
        assert accuracy == pytest.approx(result[split]["torchmetrics"]["acc"], abs=1e-6)  # torchmetrics is float32
        # the (N, 2) softmax makes medmnist's 0.5 threshold on the last column the argmax
        assert result[split]["medmnist"]["acc"] == pytest.approx(accuracy, abs=1e-12)
        assert result[split]["medmnist"]["auc"] == pytest.approx(result[split]["torchmetrics"]["auc"], abs=1e-9)


def test_model_file_holds_the_best_checkpoint(trained: tuple[dict, Path], data_dir: Path) -> None:
    result, out = trained
    history = result["training"]["history"]
    assert result["training"]["epochs_run"] == result["training"]["epochs_planned"] == len(history) == 3
    assert all(h["complete"] and h["steps"] == 3 for h in history) and not result["training"]["stopped_by_budget"]
    best = history[result["training"]["best_epoch"] - 1]
    assert best["val_auc"] == max(h["val_auc"] for h in history)
    val = result["val"]["torchmetrics"]
    assert (val["acc"], val["auc"]) == (best["val_acc"], best["val_auc"])

    model = build_resnet18(1, 2)
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    images = torch.from_numpy(np.load(data_dir / "pneumoniamnist.npz")["test_images"]).float()[:, None] / 127.5 - 1.0
    with torch.inference_mode():
        probs = torch.softmax(model.eval()(images), 1).numpy()
    _, table = _read_csv(out / "predictions.csv")
    np.testing.assert_allclose(probs, table[:, 4:-1], atol=1e-5)


def test_synthetic_task_is_learnt_beyond_chance(trained: tuple[dict, Path]) -> None:
    result, _ = trained
    history = result["training"]["history"]
    assert history[-1]["loss"] < history[0]["loss"]
    assert result["test"]["torchmetrics"]["acc"] > 0.75
    assert result["test"]["torchmetrics"]["auc"] > 0.9


def test_same_seed_reproduces_the_first_epoch(trained: tuple[dict, Path], data_dir: Path) -> None:
    # epoch 1 runs at the peak learning rate whatever the plan, so a 1-epoch run with the same seed
    # must repeat the first epoch of the 3-epoch run exactly
    result = train_resnet_baseline("pneumoniamnist", data_dir, **(RECIPE | {"max_epochs": 1}))
    first, again = trained[0]["training"]["history"][0], result["training"]["history"][0]
    assert (again["loss"], again["val_acc"], again["val_auc"]) == (first["loss"], first["val_acc"], first["val_auc"])


def test_budget_is_checked_before_every_step(data_dir: Path, tmp_path: Path) -> None:
    # 0.6 s cannot hold a second step plus the evaluations: the run stops after one step of epoch 1
    # and still evaluates and writes everything
    result = train_resnet_baseline(
        "pneumoniamnist", data_dir, output_dir=tmp_path, **(RECIPE | {"budget_minutes": 0.01, "max_epochs": None})
    )
    training = result["training"]
    assert training["stopped_by_budget"] is True
    assert training["epochs_run"] == training["epochs_planned"] == 1
    assert (training["history"][0]["steps"], training["history"][0]["complete"]) == (1, False)
    assert (tmp_path / "metrics.json").is_file() and (tmp_path / "predictions.csv").is_file()


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
    header, table = _read_csv(tmp_path / "run" / "predictions.csv")
    assert header[4:] == [f"score_{k}" for k in range(5)] + ["schema_version"]
    np.testing.assert_allclose(table[:, 4:-1].sum(1), 1.0, atol=1e-6)
    assert result["num_classes"] == 5 and result["config"]["augment"] is None
    assert result["test"]["medmnist"]["acc"] == pytest.approx(float((table[:, 1] == table[:, 2]).mean()), abs=1e-12)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"budget_minutes": 0}, ValueError, "budget_minutes must be > 0"),
        ({"budget_minutes": -3.0}, ValueError, "budget_minutes must be > 0"),
        ({"budget_minutes": "10"}, TypeError, "budget_minutes must be a number"),
        ({"budget_minutes": None, "max_epochs": None}, ValueError, "never stop"),
        ({"max_epochs": 0}, ValueError, "max_epochs must be a positive int"),
        ({"batch_size": 0}, ValueError, "batch_size must be a positive int"),
        ({"lr": 0.0}, ValueError, "lr must be"),
        ({"weight_decay": -1.0}, ValueError, "weight_decay must be"),
        ({"threads": 0}, ValueError, "threads must be a positive int"),
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


def test_prediction_writer_rejects_mismatched_shapes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="disagree"):
        write_softmax_predictions(tmp_path / "p.csv", torch.full((4, 2), 0.5), torch.zeros(3, dtype=torch.long))


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


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_throughput_timer_counts_calls_and_reports_the_median() -> None:
    throughput = _load_script("throughput")
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
    bench = _load_script("classification")
    recipe = json.loads((BENCHMARKS.parent / "configs" / "cpu.json").read_text())["batch_size"]

    def resnet_batch(*argv: str) -> int:
        args = bench._parse_args(["--flag", "retinamnist", "--dataset-dir", ".", "--autocast", "none", *argv])
        cmd = bench._resnet_command(args, Path("out"))
        return int(cmd[cmd.index("--batch-size") + 1])

    assert resnet_batch() == recipe
    assert resnet_batch("--override=--batch_size=48", "--override=--balanced=true") == 48
    assert resnet_batch("--override=--batch_size=48", "--resnet-batch-size", "100") == 100


def test_benchmark_report_without_finished_runs_names_the_missing_file(tmp_path: Path) -> None:
    bench = _load_script("classification")
    argv = ["--flag", "retinamnist", "--dataset-dir", ".", "--report-only", "--output-dir", str(tmp_path)]
    with pytest.raises(SystemExit, match=r"no test metrics at .*medsymmflow/metrics.json.*--report-only needs"):
        bench.main(argv)
    assert not (tmp_path / "results.json").exists()
