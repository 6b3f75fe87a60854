"""The BasicUNet segmentation baseline: masked DiceCE, MONAI engines under the TrainingBudget, the best-val-mIoU
checkpoint, the segmenter loader, the majority-class floor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.losses import DiceCELoss

from medsymmflow.baselines import (
    MaskedDiceCELoss,
    build_basic_unet,
    build_segmentation_engines,
    load_segmentation_baseline,
    load_segmentation_split,
    load_segmenter,
    majority_class_map,
    score_majority_floor,
    train_segmentation_baseline,
)
from medsymmflow.baselines.segmentation import (
    AutocastInferer,
    SegmentationBatch,
    basic_unet_features,
    build_segmentation_evaluator,
    segmentation_dataset,
)
from medsymmflow.data import write_synthetic_segmentation
from medsymmflow.engines import AtomicCheckpointSaver, TrainingBudget

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
NAMES = ["background", "disc", "square", "diamond"]
TINY = (4, 4, 8, 8, 8, 4)
SIZE = 32


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 20 pairs: 16 train / 2 val / 2 test with the package's split fractions
    return write_synthetic_segmentation(tmp_path_factory.mktemp("seg") / "pairs", n=20, size=SIZE, num_classes=4, seed=0)


@pytest.fixture(scope="module")
def splits(data_dir: Path) -> tuple:
    kw = dict(size=SIZE, class_names=NAMES)
    return segmentation_dataset(data_dir, "train", train=True, **kw), segmentation_dataset(data_dir, "val", **kw)


# ---------------------------------------------------------------------------------------------------- loss


def test_masked_dice_ce_leaves_ignored_pixels_out() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 6, 8, generator=g)
    label = torch.randint(0, 4, (2, 1, 6, 8), generator=g)
    loss = MaskedDiceCELoss()
    # without ignored pixels it is MONAI's DiceCELoss (softmax, one-hot targets, batch Dice)
    reference = DiceCELoss(softmax=True, to_onehot_y=True, batch=True)(logits, label)
    assert float(loss(logits, label)) == pytest.approx(float(reference), rel=1e-5)

    ignored = label.clone()
    ignored[..., :3] = 255  # the three left columns are unlabelled
    value = float(loss(logits, ignored))
    # equal to the loss of the labelled columns alone: ignored pixels add to no Dice sum and no CE mean
    assert value == pytest.approx(float(loss(logits[..., 3:], label[..., 3:])), rel=1e-5)
    assert value != pytest.approx(float(loss(logits, label)), rel=1e-3)
    # the logits there do not matter either
    other = logits.clone()
    other[..., :3] = torch.randn(2, 4, 6, 3, generator=g) * 10
    assert float(loss(other, ignored)) == pytest.approx(value, rel=1e-6)
    # nor do the labels of pixels a valid-pixel mask marks unlabelled (SegmentationBatch turns them into 255)
    valid = torch.ones(2, 1, 6, 8)
    valid[..., :3] = 0
    prepare = SegmentationBatch()
    changed = label.clone()
    changed[..., :3] = (changed[..., :3] + 1) % 4
    losses = [float(loss(logits, prepare({"image": logits, "label": lab, "valid": valid}, CPU)[1])) for lab in (label, changed)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-7) == pytest.approx(value, rel=1e-6)
    # a batch without any labelled pixel gives 0, not NaN, and gradients of 0
    empty = logits.clone().requires_grad_(True)
    out = loss(empty, torch.full_like(label, 255))
    out.backward()
    assert float(out.detach()) == 0.0 and float(empty.grad.abs().sum()) == 0.0


def test_masked_dice_ce_refuses_bad_labels_and_fixed_options() -> None:
    with pytest.raises(ValueError, match="outside 0..3 and 255"):
        MaskedDiceCELoss()(torch.zeros(1, 4, 2, 2), torch.full((1, 1, 2, 2), 7))
    with pytest.raises(ValueError, match=r"label maps \(B, 1, \*spatial\)"):
        MaskedDiceCELoss()(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2))
    with pytest.raises(TypeError, match="softmax is not an option"):
        MaskedDiceCELoss(softmax=True)


# ------------------------------------------------------------------------------------------------- engines


def test_the_baseline_trains_on_monai_engines_under_the_training_budget(splits: tuple, tmp_path: Path) -> None:
    # a fake clock: one second per training step, validation free; 16 pairs in batches of 8 = 2 steps per
    # epoch, a 12 s budget (3 % kept back) fits 1 + floor((11.64 - 2) / 2) = 5 epochs, planned after epoch 1
    engines: list = []
    built = build_segmentation_engines(
        build_basic_unet(3, 4, TINY), *splits, tmp_path, CPU, 4, max_epochs=None, budget_minutes=0.2, batch_size=8,
        clock=lambda: float(engines[0].trainer.state.iteration),
    )
    engines.append(built)
    assert isinstance(built.trainer, SupervisedTrainer) and isinstance(built.evaluator, SupervisedEvaluator)
    assert type(built.budget) is TrainingBudget and type(built.saver) is AtomicCheckpointSaver
    assert isinstance(built.trainer.loss_function, MaskedDiceCELoss)
    built.trainer.run()
    state = built.trainer.state
    assert (state.max_epochs, state.epoch, state.iteration) == (5, 5, 10)
    assert built.lr_scheduler.t_total == 10  # the cosine schedule ends with the plan
    assert [it for it, _ in built.history.metrics["val_miou_no_background"]] == [2, 4, 6, 8, 10]


def test_the_saver_keeps_the_epoch_of_the_best_validation_miou(splits: tuple, tmp_path: Path) -> None:
    torch.manual_seed(0)
    network = build_basic_unet(3, 4, TINY)
    # a large learning rate makes the validation mIoU wander, so the last epoch is not the best one
    built = build_segmentation_engines(network, *splits, tmp_path, CPU, 4, max_epochs=6, budget_minutes=None, batch_size=4, lr=0.05)
    built.trainer.run()
    scores = [float(v) for _, v in built.history.metrics["val_miou_no_background"]]
    best = built.saver.state_dict()["best_epoch"]
    assert len(scores) == 6 and best == 1 + scores.index(max(scores))

    def val_score(net: torch.nn.Module) -> float:
        evaluator = build_segmentation_evaluator(splits[1], net, CPU, AutocastInferer(), 4, validation=True)
        evaluator.run()
        return float(evaluator.state.metrics["val_miou_no_background"])

    restored = load_segmentation_baseline(tmp_path / "model.pt")
    assert val_score(restored.network) == pytest.approx(max(scores), abs=1e-9)
    assert val_score(network) == pytest.approx(scores[-1], abs=1e-9)
    if best != 6:  # the saved weights are the best epoch's, not the last
        assert not torch.equal(restored.network.final_conv.weight, network.final_conv.weight)


@pytest.fixture(scope="module")
def trained(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("unet")
    result = train_segmentation_baseline(
        data_dir, size=SIZE, budget_minutes=None, max_epochs=2, batch_size=8, features=TINY, class_names=NAMES,
        output_dir=out, threads=1,
    )
    return result, out


def test_run_writes_the_bundles_report_layout_and_a_loadable_segmenter(trained: tuple[dict, Path], data_dir: Path) -> None:
    result, out = trained
    assert {p.name for p in out.iterdir()} >= {"model.pt", "metrics.json", "segmentation_metrics.json",
                                               "segmentation_per_class.csv", "segmentation_per_image.csv"}
    assert json.loads((out / "metrics.json").read_text()) == result
    report = json.loads((out / "segmentation_metrics.json").read_text())
    assert report["steps"] == [1] and report["class_names"] == NAMES and report["background"] == "background"
    assert result["test"] == {k: v for k, v in report["by_steps"]["1"].items()}
    assert result["splits"] == {"train": 16, "val": 2, "test": 2} and result["training"]["steps"] == 4
    ids = [line.split(",")[0] for line in (out / "segmentation_per_image.csv").read_text().splitlines()[1:]]
    assert ids == sorted(ids) and all(i.startswith("synthetic_") for i in ids)  # the pairs' stems

    segment = load_segmentation_baseline(out / "model.pt")
    assert basic_unet_features(segment.network.state_dict()) == (3, 4, TINY)
    images = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    with torch.inference_mode():
        expected = segment.network(images).argmax(1)
    assert torch.equal(segment(images), expected) and segment(images).shape == (2, SIZE, SIZE)
    # synthesis#baseline_ckpt takes this file or a TorchScript segmenter, told apart by the archive's code/ folder
    assert torch.equal(load_segmenter(out / "model.pt")(images), expected)
    scripted = torch.jit.script(torch.nn.Conv2d(3, 4, 1))
    scripted.save(str(out / "scripted.pt"))
    with torch.inference_mode():
        assert torch.equal(load_segmenter(out / "scripted.pt")(images), scripted(images))
    with pytest.raises(FileNotFoundError, match="segmenter file not found"):
        load_segmenter(out / "none.pt")

    test = load_segmentation_split(data_dir, "test", SIZE)
    assert test.images.dtype == np.uint8 and test.images.shape == (2, SIZE, SIZE, 3) and test.label_maps.shape == (2, SIZE, SIZE)
    assert test.ids == ids and int(test.label_maps.max()) < 4


def test_same_seed_gives_the_same_weights(trained: tuple[dict, Path], data_dir: Path, tmp_path: Path) -> None:
    result, out = trained
    again = train_segmentation_baseline(
        data_dir, size=SIZE, budget_minutes=None, max_epochs=2, batch_size=8, features=TINY, class_names=NAMES,
        output_dir=tmp_path, threads=1,
    )
    first, second = (torch.load(p / "model.pt", weights_only=True) for p in (out, tmp_path))
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert again["test"] == result["test"]


def test_loader_and_trainer_refuse_bad_input(tmp_path: Path, data_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="segmentation baseline weights not found"):
        load_segmentation_baseline(tmp_path / "none.pt")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not the BasicUNet baseline's model.pt"):
        load_segmentation_baseline(tmp_path / "other.pt")
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not be read"):
        load_segmentation_baseline(tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="never stop"):
        train_segmentation_baseline(data_dir, budget_minutes=None, max_epochs=None)
    with pytest.raises(ValueError, match="key_metric must be one of"):
        train_segmentation_baseline(data_dir, max_epochs=1, key_metric="dice")
    # the ResNet-18 baseline's argument rules (medsymmflow.baselines.runs), checked before any data is read
    with pytest.raises(ValueError, match="weight_decay must be"):
        train_segmentation_baseline(data_dir, max_epochs=1, weight_decay=-1.0)
    with pytest.raises(TypeError, match="budget_minutes must be a number"):
        train_segmentation_baseline(data_dir, budget_minutes="10")
    with pytest.raises(ValueError, match="six positive ints"):
        build_basic_unet(3, 4, (4, 4))


# --------------------------------------------------------------------------------------------- the floor


def test_majority_floor_against_a_hand_computed_example() -> None:
    # three 2 x 2 training masks over 3 classes; 255 = unlabelled
    train = torch.tensor([
        [[0, 1], [2, 255]],
        [[0, 2], [2, 255]],
        [[1, 2], [0, 255]],
    ])
    # per pixel: (0,0) 0,0,1 -> 0; (0,1) 1,2,2 -> 2; (1,0) 2,2,0 -> 2; (1,1) never labelled -> 0
    assert majority_class_map(train, 3).tolist() == [[0, 2], [2, 0]]
    # a tie (one 0, one 1) goes to the lower class
    assert majority_class_map(torch.tensor([[[0]], [[1]]]), 2).tolist() == [[0]]
    test = torch.tensor([
        [[0, 2], [1, 0]],
        [[1, 2], [2, 255]],
    ])
    # prediction [[0, 2], [2, 0]] for both; labelled pixels (target -> pred): 0->0, 2->2, 1->2, 0->0, 1->0, 2->2, 2->2
    # confusion rows = target: class 0: [2, 0, 0]; class 1: [1, 0, 1]; class 2: [0, 0, 3]
    out = score_majority_floor(train, test, 3)
    assert out["iou"] == pytest.approx([2 / 3, 0.0, 3 / 4])
    assert out["miou"] == pytest.approx((2 / 3 + 0 + 3 / 4) / 3)
    assert out["miou_no_background"] == pytest.approx(3 / 8)
    assert out["pixel_accuracy"] == pytest.approx(5 / 7) and out["labelled_pixels"] == 7
    with pytest.raises(ValueError, match="outside 0..2"):
        majority_class_map(torch.tensor([[[3]]]), 3)
    with pytest.raises(ValueError, match="like the training masks"):
        score_majority_floor(train, torch.zeros(1, 3, 3, dtype=torch.long), 3)
