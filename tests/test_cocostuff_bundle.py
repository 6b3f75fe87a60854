"""bundles/cocostuff end to end: train (with its evaluation) -> inference on a synthetic COCO-Stuff folder, and a 1-epoch run
on the 21-pair COCO-Stuff sample when it is there.

The synthetic folder has the sample's layout (``images/*.jpg``, ``labels/*.png`` holding COCO-Stuff ids - 1, 255 =
unlabelled); its 4 shape classes are COCO-Stuff classes spread over the 171 (0, 57, 113, 170), so the remap of the
label values and the 167 classes that never occur are both exercised. One module-scoped run feeds those tests.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ONE_THREAD, REPO, SHARED_DATA, parse_bundle, run_bundle, segmentation_overrides
from PIL import Image

from medsymmflow.data import (
    COCOSTUFF_CLASSES,
    COCOSTUFF_USED_VALUES,
    cocostuff_dicts,
    cocostuff_to_classes,
    read_label_map,
    segmentation_arrays,
    write_synthetic_segmentation,
)
from medsymmflow.transforms import RandFlipSwapd

pytestmark = pytest.mark.slow

BUNDLE = "bundles/cocostuff"
SIZE = 16  # the synthetic images' own size: the bundle's resize and crop leave them as written
SHAPE_CLASSES = (0, 57, 113, 170)  # write_synthetic_segmentation's COCO-Stuff classes for 4 synthetic classes


def bundle(name: str, *args: str, check: bool = True):
    return run_bundle(f"{BUNDLE}/{name}.json", *args, env=ONE_THREAD, check=check)


def truth(pairs: list[dict[str, str]]) -> np.ndarray:
    """The classes (0..170, 255) of the pairs' label PNGs, remapped from COCO-Stuff's label values."""
    return np.stack([cocostuff_to_classes(read_label_map(p["label"])) for p in pairs])


def check_per_class(result: dict, target: np.ndarray, some_absent: bool = True) -> None:
    """171 per-class IoU over the labelled pixels of ``target``: a class without pixels in the targets and the
    predictions is absent (None), never 0, and left out of the mIoU; unlabelled pixels count nowhere.

    ``some_absent``: the split has too few labelled pixels for the predictions to hit all 171 classes (fewer than
    the ~880 a uniform draw would need), so some class must be absent."""
    labelled = target[target != 255]
    assert result["target_pixels"] == np.bincount(labelled, minlength=171).tolist()
    assert result["labelled_pixels"] == labelled.size == sum(result["predicted_pixels"])
    assert list(result["iou_per_class"]) == list(COCOSTUFF_CLASSES) and len(result["iou"]) == 171
    for c, iou in enumerate(result["iou"]):
        absent = result["target_pixels"][c] == 0 and result["predicted_pixels"][c] == 0
        assert (iou is None) == absent, (c, iou)
    present = [v for v in result["iou"] if v is not None]
    if some_absent:
        assert any(v is None for v in result["iou"])
    assert result["miou"] == pytest.approx(float(np.mean(present)))
    assert result["miou_no_background"] is None and result["miou_ignore_background"] is None


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """30 synthetic pairs (24 train / 3 val / 3 test, a 1-px unlabelled frame): 2 epochs and the segmentation evaluation
    after them (1 and 2 steps), then inference.json on the val split (segmentation, and synthesis from label maps).

    Two processes only, each costs ~10 s of imports: evaluate.json runs the same sections as the evaluation after
    training, and tests/test_bundle_configs.py checks that it, the synthesis settings included, is the CelebAMask-HQ
    bundle's file, which tests/test_celebamask_bundle.py runs with synthesis metrics (the Inception alone costs ~10 s)."""
    root = tmp_path_factory.mktemp("cocostuff")
    data = write_synthetic_segmentation(root / "data", n=30, size=SIZE, num_classes=4, seed=0, layout="cocostuff",
                                        unlabelled_border=1)
    run = root / "run"
    bundle("train", *segmentation_overrides(data, run, SIZE, "--epochs", "2", "--warmup_epochs", "0", "--batch_size", "8",
                                            "--training#val_interval", "1", "--evaluation#steps", "[1, 2]", "--synthesis#enabled", "false"))
    val = cocostuff_dicts(data, "val")
    images, labels = root / "images", root / "labels"
    images.mkdir(), labels.mkdir()
    for pair in val:
        shutil.copy(pair["image"], images)
        shutil.copy(pair["label"], labels)
    street_sign = np.full((SIZE, SIZE), 11, dtype=np.uint8)  # COCO-Stuff id 12, one of the 11 never used
    Image.fromarray(street_sign).save(labels / "zz_street_sign.png")
    inferred = root / "inferred"
    done = bundle("inference", *segmentation_overrides(data, inferred, SIZE, "--ckpt_path", str(run / "checkpoints/best.pt"),
                                                       "--input", str(images), "--synthesise", "true", "--label_maps", str(labels),
                                                       "--inference#synthesis_steps", "2"),
                  check=False)
    return {"data": data, "run": run, "inferred": inferred, "inference": done, "val": val}


def test_training_keeps_the_best_checkpoint_on_validation_miou_over_all_classes(trained: dict) -> None:
    last = torch.load(trained["run"] / "checkpoints/last.pt", map_location="cpu", weights_only=True)
    assert last["trainer"]["epoch_length"] == 3 and last["trainer"]["iteration"] == 6  # 2 epochs of 24 pairs in batches of 8
    info = last["run_info"]
    assert info["flag"] == "cocostuff" and info["num_classes"] == 171 and info["code_kind"] == "palette"
    assert float(info["beta"]) == 6.0 and info["code_channels"] == 3  # the 6-level grid: 3 channels, 171 of its 216 colours
    # best.pt is saved on val_miou_1steps: COCO-Stuff has no background class, so no val_miou_no_background_1steps
    best = torch.load(trained["run"] / "checkpoints/best.pt", map_location="cpu", weights_only=True)
    assert set(best) >= {"run_info", "ema"}


def test_the_evaluation_reports_171_classes_with_the_absent_ones_marked(trained: dict) -> None:
    out = trained["run"]
    metrics = json.loads((out / "segmentation_metrics.json").read_text())
    assert metrics["checkpoint"].endswith("best.pt") and metrics["dataset"] == "cocostuff" and metrics["split"] == "val" and metrics["steps"] == [1, 2]
    assert metrics["num_classes"] == 171 and metrics["background"] is None and metrics["ignore_index"] == 255
    target = truth(trained["val"])
    assert set(np.unique(target).tolist()) <= {*SHAPE_CLASSES, 255} and (target == 255).any()
    for s in ("1", "2"):
        result = metrics["by_steps"][s]
        check_per_class(result, target)
        assert result["labelled_pixels"] == 3 * (SIZE - 2) ** 2  # the unlabelled frame is left out


def test_inference_writes_cocostuff_label_values_and_refuses_an_unused_id(trained: dict) -> None:
    done, out = trained["inference"], trained["inferred"] / "inference"
    assert done.returncode == 1, done.stderr[-3000:]
    error = [line for line in done.stderr.splitlines() if line.startswith("medsymmflow: error:")]
    assert len(error) == 1 and "1 of 4 label-map files could not be synthesised from" in error[0] and "zz_street_sign" in error[0]
    assert "Traceback" not in done.stderr
    # the label maps are in COCO-Stuff's own values (id - 1), so they read back as COCO-Stuff label maps; remapped,
    # they are the evaluation's 1-step segmentation: the same pixel accuracy
    correct = total = 0
    for pair in trained["val"]:
        written = np.asarray(Image.open(out / "segmentations/label_maps" / f"{pair['id']}.png"))
        assert set(np.unique(written).tolist()) <= set(COCOSTUFF_USED_VALUES)
        target = truth([pair])[0]
        labelled = target != 255
        correct += int((cocostuff_to_classes(written)[labelled] == target[labelled]).sum())
        total += int(labelled.sum())
    metrics = json.loads((trained["run"] / "segmentation_metrics.json").read_text())
    assert correct / total == pytest.approx(metrics["by_steps"]["1"]["pixel_accuracy"], abs=1e-9)
    syntheses = json.loads((out / "syntheses/syntheses.json").read_text())
    assert len(syntheses["syntheses"]) == 3
    assert [Path(f["file"]).name for f in syntheses["failed"]] == ["zz_street_sign.png"]
    assert "11" in syntheses["failed"][0]["error"] and "COCO-Stuff" in syntheses["failed"][0]["error"]


def test_the_real_sample_trains_and_evaluates_over_171_classes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sample = SHARED_DATA / "cocostuff_sample"
    if not sample.is_dir():
        pytest.skip(f"the COCO-Stuff sample is not at {sample}")
    size = 32
    # no split file: the deterministic split of the 21 pairs
    assert [len(cocostuff_dicts(sample, s)) for s in ("train", "val", "test")] == [17, 2, 2]
    run = tmp_path / "run"
    bundle("train", *segmentation_overrides(sample, run, size, "--epochs", "1", "--warmup_epochs", "0", "--batch_size", "16",
                                            "--evaluation#steps", "[1]", "--synthesis#enabled", "false"))  # no validation: it is every 5 epochs
    metrics = json.loads((run / "segmentation_metrics.json").read_text())
    assert metrics["num_classes"] == 171 and metrics["split"] == "val" and metrics["by_steps"]["1"]["num_images"] == 2
    # the targets as the evaluation sees them: the bundle's own preprocessing (resize, centre crop, remap)
    monkeypatch.chdir(REPO)
    parser = parse_bundle(f"{BUNDLE}/train.json", dataset_dir=str(sample), size=size, device="cpu")
    arrays = segmentation_arrays(parser.get_parsed_content("evaluate#dicts"), parser.get_parsed_content("evaluate#preprocessing"))
    assert arrays.label_maps.shape == (2, size, size) and (arrays.label_maps == 255).any()  # COCO-Stuff's unlabelled pixels
    check_per_class(metrics["by_steps"]["1"], arrays.label_maps, some_absent=False)
    assert metrics["by_steps"]["1"]["labelled_pixels"] < 2 * size * size


def test_the_readme_overrides_are_keys_and_the_cpu_recipe_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    from medsymmflow.settings import check_command_line

    monkeypatch.chdir(REPO)
    argv = ["/site-packages/monai/bundle/__main__.py", "run", "--config_file"]
    for name in ("train", "evaluate", "inference"):
        check_command_line([*argv, f"{BUNDLE}/{name}.json", "--dataset_dir", "d", "--size", "64", "--device", "cpu",
                            "--output_dir", "o", "--net_preset", "tiny", "--code_kind", "onehot", "--beta", "6",
                            "--evaluation#steps", "[1]", "--evaluation#split", "test"])
    with pytest.raises(ValueError, match=r"unknown override for bundles/cocostuff/train.json: --epoch \(did you mean --epochs"):
        check_command_line([*argv, f"{BUNDLE}/train.json", "--epoch", "3"])
    # the shared CPU recipe on COCO-Stuff: one-hot codes of 171 channels, beta 6 well inside their spacing
    parser = parse_bundle([f"{BUNDLE}/train.json", "configs/segmentation_cpu.json"], device="cpu")
    codebook = parser.get_parsed_content("common#codebook")
    assert codebook.kind == "onehot" and codebook.channels == 171 and codebook.check_beta(parser["beta"]) == 6.0
    assert parser["size"] == 64 and parser["net_preset"] == "cpu_segmentation"
    flip = next(t for t in parser.get_parsed_content("train#preprocessing").transforms if isinstance(t, RandFlipSwapd))
    label = torch.arange(12.0).reshape(1, 3, 4)
    assert torch.equal(flip.flip_label(label), label.flip(-1))  # a plain flip: no left/right classes to swap


def test_the_bundle_metadata_verifies_and_names_the_171_classes() -> None:
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(REPO / BUNDLE / "metadata.json"), filepath=str(REPO / "configs/metadata_schema.json"))
    meta = json.loads((REPO / BUNDLE / "metadata.json").read_text())
    assert list(meta["network_data_format"]["outputs"]["pred"]["channel_def"].values()) == list(COCOSTUFF_CLASSES)
    for name in ("train.json", "evaluate.json", "inference.json", "metadata.json", "logging.conf", "README.md"):
        assert (REPO / BUNDLE / name).is_file(), f"{BUNDLE}/{name} missing"
