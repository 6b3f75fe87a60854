"""bundles/celebamask_hq end to end on synthetic shapes data: train -> evaluate -> inference, resume, bad input.

One module-scoped training run (the tiny network, 16 px, 2 epochs) feeds every test; the real-data test reads
the 300-pair CelebAMask-HQ sample through the bundle's data sections without training.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from conftest import ONE_THREAD, REPO, SHARED_DATA, parse_bundle, root_cause, run_bundle, segmentation_overrides
from PIL import Image

from medsymmflow.data import celebamask_hq_dicts, write_synthetic_segmentation

if TYPE_CHECKING:
    from monai.bundle import ConfigParser

pytestmark = pytest.mark.slow

BUNDLE = "bundles/celebamask_hq"
SIZE = 16  # the synthetic images' own size: the bundle's resize and crop leave them as written


def overrides(data: Path, out: Path, *extra: str) -> list[str]:
    """A seconds-long CelebAMask-HQ run: the tiny network at 16 px on the CPU."""
    return segmentation_overrides(data, out, SIZE, *extra)


def bundle(name: str, *args: str, check: bool = True):
    return run_bundle(f"{BUNDLE}/{name}.json", *args, env=ONE_THREAD, check=check)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Synthetic pairs (32 train / 4 val / 4 test), a 2-epoch training run with its evaluation, then evaluate.json
    (segmentation + synthesis with a TorchScript baseline segmenter) and inference.json on the test split."""
    root = tmp_path_factory.mktemp("celebamask")
    data = write_synthetic_segmentation(root / "data", n=40, size=SIZE, num_classes=4, seed=0)
    run = root / "run"
    bundle("train", *overrides(data, run, "--epochs", "2", "--warmup_epochs", "0", "--batch_size", "8",
                               "--training#val_interval", "1", "--synthesis#enabled", "false"))
    # an independent segmenter for mask consistency: any TorchScript module images -> class scores
    baseline = root / "baseline.pt"
    torch.jit.script(torch.nn.Conv2d(3, 19, 1)).save(str(baseline))
    evaluated = root / "evaluated"
    bundle("evaluate", *overrides(data, evaluated, "--ckpt_path", str(run / "checkpoints/best.pt"),
                                  "--synthesis#samples_per_mask", "2", "--synthesis#baseline_ckpt", str(baseline),
                                  "--synthesis#reference_split", "val"))
    # inference inputs: the test images plus an unreadable image and a file that is no image
    test = celebamask_hq_dicts(data, "test")
    images, masks = root / "images", root / "masks"
    images.mkdir(), masks.mkdir()
    for pair in test:
        shutil.copy(pair["image"], images)
        shutil.copy(pair["label"], masks)
    (images / "broken.png").write_bytes(b"not a png")
    (images / "notes.txt").write_text("not an image")
    Image.fromarray(np.full((SIZE, SIZE), 30, dtype=np.uint8)).save(masks / "zz_bad_values.png")  # class 30 of 19
    inferred = root / "inferred"
    done = bundle("inference", *overrides(data, inferred, "--ckpt_path", str(run / "checkpoints/best.pt"),
                                          "--input", str(images), "--synthesise", "true", "--label_maps", str(masks),
                                          "--inference#batch_size", "32"), check=False)
    return {"data": data, "run": run, "evaluated": evaluated, "inferred": inferred, "inference": done, "test": test}


def test_training_writes_checkpoints_and_the_evaluation_after_it(trained: dict) -> None:
    run = trained["run"]
    for name in ("best.pt", "last.pt"):
        assert (run / "checkpoints" / name).is_file()
    last = torch.load(run / "checkpoints/last.pt", map_location="cpu", weights_only=True)
    assert last["trainer"]["epoch_length"] == 4 and last["trainer"]["iteration"] == 8  # 2 epochs of 32 pairs in batches of 8
    assert last["run_info"]["flag"] == "celebamask_hq" and last["run_info"]["num_classes"] == 19
    assert last["run_info"]["code_kind"] == "celebamask" and float(last["run_info"]["beta"]) == 10.0
    best = torch.load(run / "checkpoints/best.pt", map_location="cpu", weights_only=True)
    assert set(best) >= {"run_info", "ema"}
    metrics = json.loads((run / "segmentation_metrics.json").read_text())
    assert metrics["steps"] == [1, 5, 25] and metrics["split"] == "test" and metrics["num_classes"] == 19
    for s in ("1", "5", "25"):
        m = metrics["by_steps"][s]
        assert 0.0 <= m["miou_no_background"] <= 1.0 and 0.0 <= m["pixel_accuracy"] <= 1.0
        assert m["labelled_pixels"] == 4 * SIZE * SIZE and m["num_images"] == 4
    assert (run / "segmentation_per_class.csv").is_file() and (run / "segmentation_per_image.csv").is_file()
    # 4 test images, one row each: image | truth | 1, 5, 25 steps | uncertainty, 2 px apart
    montage = np.asarray(Image.open(run / "segmentation_montage.png"))
    assert montage.shape == (4 * SIZE + 5 * 2, 6 * SIZE + 7 * 2, 3)
    assert not (run / "synthesis").exists()  # --synthesis#enabled false


def test_evaluate_writes_segmentation_and_synthesis_metrics(trained: dict) -> None:
    out = trained["evaluated"]
    seg = json.loads((out / "segmentation_metrics.json").read_text())
    assert seg["checkpoint"].endswith("best.pt") and set(seg["by_steps"]) == {"1", "5", "25"}
    # the same checkpoint, data and seed as the evaluation after training: the same numbers
    assert seg["by_steps"] == json.loads((trained["run"] / "segmentation_metrics.json").read_text())["by_steps"]
    syn = json.loads((out / "synthesis/synthesis_metrics.json").read_text())
    assert [r["steps"] for r in syn["results"]] == [25, 1] and syn["num_masks"] == 4 and syn["samples_per_mask"] == 2
    # the real-vs-real row: the 4 val images against the 4 test images
    assert "4 of 4 reference images" in syn["reference"]["source"] and syn["reference"]["num_real"] == 4
    for row in syn["results"]:
        assert row["fid"] >= 0 and np.isfinite(row["kid"])
        assert set(row["mask_consistency"]) == {"baseline", "medsymmflow_1step"}
        for consistency in row["mask_consistency"].values():
            assert 0.0 <= consistency["miou"] <= 1.0 and consistency["num_images"] == 8
        assert len(list(Path(row["samples_dir"]).glob("*.png"))) == 8
        assert Path(row["montage"]).is_file()


def test_inference_pngs_agree_with_the_evaluation_and_name_the_bad_files(trained: dict) -> None:
    done, out = trained["inference"], trained["inferred"] / "inference"
    assert done.returncode == 1, done.stderr[-3000:]
    error = [line for line in done.stderr.splitlines() if line.startswith("medsymmflow: error:")]
    assert len(error) == 1 and "1 of 5 image files could not be segmented" in error[0] and "broken.png" in error[0]
    assert "Traceback" not in done.stderr
    listing = json.loads((out / "segmentations/segmentations.json").read_text())
    assert [Path(f["file"]).name for f in listing["failed"]] == ["broken.png"]
    assert [Path(f).name for f in listing["skipped"]] == ["notes.txt"]
    assert len(listing["segmentations"]) == 4
    # the inference label maps are the evaluation's 1-step segmentation: the same pixel accuracy
    correct = total = 0
    for pair in trained["test"]:
        stem = Path(pair["image"]).stem
        pred = np.asarray(Image.open(out / "segmentations/label_maps" / f"{stem}.png"))
        truth = np.asarray(Image.open(pair["label"]))
        assert pred.shape == truth.shape == (SIZE, SIZE) and pred.max() < 19
        correct += int((pred == truth).sum())
        total += truth.size
        overlay = np.asarray(Image.open(out / "segmentations/overlays" / f"{stem}.png"))
        uncertainty = np.asarray(Image.open(out / "segmentations/uncertainty" / f"{stem}.png"))
        assert overlay.shape == (SIZE, SIZE, 3) and uncertainty.shape == (SIZE, SIZE) and uncertainty.dtype == np.uint8
    metrics = json.loads((trained["run"] / "segmentation_metrics.json").read_text())
    assert correct / total == pytest.approx(metrics["by_steps"]["1"]["pixel_accuracy"], abs=1e-9)
    # synthesis from the label-map folder: every readable map gives an image, the bad one is named
    syntheses = json.loads((out / "syntheses/syntheses.json").read_text())
    assert len(syntheses["syntheses"]) == 4 and syntheses["steps"] == 25
    assert [Path(f["file"]).name for f in syntheses["failed"]] == ["zz_bad_values.png"]
    assert "30" in syntheses["failed"][0]["error"]
    for row in syntheses["syntheses"]:
        assert np.asarray(Image.open(row["samples"][0])).shape == (SIZE, SIZE, 3)


def parsed(config: str, **settings: object) -> "ConfigParser":
    """The bundle file ``config`` as MONAI reads it, with ``settings`` overridden (from the repository root)."""
    return parse_bundle(f"{BUNDLE}/{config}.json", **settings)


def test_an_existing_run_is_refused_without_resume_and_continued_with_it(
    trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained["run"] / "checkpoints", run / "checkpoints")
    monkeypatch.chdir(REPO)
    refused = root_cause(parsed("train", dataset_dir=str(trained["data"]), output_dir=str(run)), "train#resume_from")
    assert "last.pt exists; pass --resume true to continue or choose another --output_dir" in refused
    bundle("train", *overrides(trained["data"], run, "--epochs", "3", "--warmup_epochs", "0", "--batch_size", "8",
                               "--resume", "true", "--training#evaluate_after_training", "false"))
    last = torch.load(run / "checkpoints/last.pt", map_location="cpu", weights_only=True)
    assert last["trainer"]["iteration"] == 12  # epoch 3 of 4 iterations


def test_a_misspelled_override_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from medsymmflow.settings import check_command_line

    monkeypatch.chdir(REPO)
    argv = ["/site-packages/monai/bundle/__main__.py", "run", "--config_file", f"{BUNDLE}/train.json", "--epoch", "3"]
    with pytest.raises(ValueError, match=r"unknown override for bundles/celebamask_hq/train.json: --epoch \(did you mean --epochs"):
        check_command_line(argv)
    for name in ("train", "evaluate", "inference"):  # every override the README names is a key of the files it is for
        check_command_line([*argv[:3], f"{BUNDLE}/{name}.json", "--dataset_dir", "d", "--size", "64", "--device", "cpu",
                            "--output_dir", "o", "--net_preset", "tiny", "--evaluation#steps", "[1]"])
    check_command_line([*argv[:4], "--epochs", "1", "--batch_size", "2", "--resume", "true", "--training#budget_minutes", "5",
                        "--synthesis#enabled", "false", "--synthesis#baseline_ckpt", "u.pt"])
    check_command_line([*argv[:3], f"{BUNDLE}/inference.json", "--input", "i", "--label_maps", "m", "--synthesise", "true",
                        "--segment", "false", "--inference#steps", "5"])


def test_segmentation_settings_are_checked_before_any_work() -> None:
    from medsymmflow.settings import SEGMENTATION_RULES, check_settings

    good = {"dataset_dir": "x", "evaluation": {"steps": [1, 5, 25], "split": "test"}, "synthesis": {"steps": [25, 1], "lpips": "auto"}}
    check_settings(good, SEGMENTATION_RULES)
    with pytest.raises(ValueError, match="evaluation#steps lists a step count twice"):
        check_settings({**good, "evaluation": {"steps": [1, 1]}}, SEGMENTATION_RULES)
    with pytest.raises(ValueError, match="dataset_dir is not set: pass --dataset_dir"):
        check_settings({**good, "dataset_dir": None}, SEGMENTATION_RULES)
    with pytest.raises(ValueError, match="synthesis#baseline_ckpt: file not found"):
        check_settings({**good, "synthesis": {"baseline_ckpt": "/nowhere/unet.pt"}}, SEGMENTATION_RULES)
    with pytest.raises(ValueError, match="inference#overlay_alpha must be a number in"):
        check_settings({"inference": {"overlay_alpha": 2}}, SEGMENTATION_RULES)


def test_a_missing_folder_and_an_image_without_mask_are_named(trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    missing = root_cause(parsed("train", dataset_dir=str(tmp_path / "nowhere")), "train#dicts")
    assert str(tmp_path / "nowhere") in missing and "CelebAMask-HQ folder" in missing
    folder = tmp_path / "pairs"
    shutil.copytree(trained["data"], folder)
    lonely = sorted((folder / "masks").glob("*.png"))[0]
    lonely.unlink()
    out = bundle("evaluate", *overrides(folder, tmp_path / "b", "--ckpt_path", str(trained["run"] / "checkpoints/best.pt")),
                 check=False)
    lines = [line for line in out.stderr.splitlines() if line.startswith("medsymmflow: error:")]
    assert out.returncode != 0 and len(lines) == 1 and lonely.stem in lines[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr and not (tmp_path / "b").exists()


def test_the_real_sample_reads_through_the_bundles_data_sections(monkeypatch: pytest.MonkeyPatch) -> None:
    sample = SHARED_DATA / "celebamask_hq_sample"
    if not sample.is_dir():
        pytest.skip(f"the CelebAMask-HQ sample is not at {sample}")
    monkeypatch.chdir(REPO)  # the bundle's macros name configs/ from the repository root
    parser = parsed("train", dataset_dir=str(sample), size=64, device="cpu")
    train = parser.get_parsed_content("train#dataset")
    item = train[0]
    assert tuple(item["image"].shape) == (3, 64, 64) and tuple(item["label"].shape) == (1, 64, 64)
    assert -1.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    from medsymmflow.data import segmentation_arrays

    test = segmentation_arrays(parser.get_parsed_content("evaluate#dicts"), parser.get_parsed_content("evaluate#preprocessing"))
    sizes = {split: len(parser.get_parsed_content(f"{section}#dicts")) for split, section in
             (("train", "train"), ("val", "validate"), ("test", "evaluate"))}
    assert sizes == {"train": 240, "val": 30, "test": 30}
    assert test.images.shape == (30, 64, 64, 3) and test.images.dtype == np.uint8
    assert test.label_maps.shape == (30, 64, 64) and set(np.unique(test.label_maps)) <= set(range(19))
    # faces: background, skin, nose and hair are in every test split of faces
    present = set(np.unique(test.label_maps))
    assert {0, 1, 2, 13} <= present


def test_the_bundle_metadata_verifies_against_the_schema_in_the_repo() -> None:
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(REPO / BUNDLE / "metadata.json"), filepath=str(REPO / "configs/metadata_schema.json"))
    for name in ("train.json", "evaluate.json", "inference.json", "metadata.json", "logging.conf", "README.md"):
        assert (REPO / BUNDLE / name).is_file(), f"{BUNDLE}/{name} missing"
