"""Segmentation transforms: label maps loaded as indices, the flip that swaps left/right classes, resizing image and
label map together, the COCO-Stuff remap, and the ignore convention of the code mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, RandSpatialCropd, Resized
from PIL import Image

from medsymmflow.codes import ClassCodebook
from medsymmflow.data import CELEBAMASK_HQ_CLASSES, COCOSTUFF_UNUSED_IDS, COCOSTUFF_USED_VALUES, celebamask_hq_dicts
from medsymmflow.transforms import (
    CocoStuffToClasses,
    CocoStuffToClassesd,
    FlipSwap,
    FlipSwapd,
    LabelMapToCodeMaskd,
    LoadImageFiled,
    LoadLabelMap,
    LoadLabelMapd,
    RandFlipSwapd,
    RemapLabels,
    RemapLabelsd,
    ResizeShortSided,
    SwapLabels,
    UniformDequantized,
    ValidPixelMaskd,
    left_right_swap,
)

L_EYE, R_EYE, L_BROW, R_BROW, L_EAR, R_EAR = (CELEBAMASK_HQ_CLASSES.index(n) for n in ("l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear"))


def _face(rows: int = 6, cols: int = 10) -> torch.Tensor:
    """(1, rows, cols) label map: the subject's left eye / brow / ear on the image's right side, hair on the left."""
    lm = torch.ones(1, rows, cols)  # skin
    lm[0, 1, 6:8], lm[0, 1, 2:4] = L_BROW, R_BROW
    lm[0, 2, 6:8], lm[0, 2, 2:4] = L_EYE, R_EYE
    lm[0, 2:4, 9], lm[0, 2:4, 0] = L_EAR, R_EAR
    lm[0, 0, :3] = CELEBAMASK_HQ_CLASSES.index("hair")
    lm[0, 5, 4:6] = CELEBAMASK_HQ_CLASSES.index("l_lip")
    return lm


# ---------------------------------------------------------------- loading


def test_load_label_map_reads_palette_indices_rows_first(tmp_path: Path) -> None:
    label = np.arange(12, dtype=np.uint8).reshape(3, 4) % 5
    img = Image.fromarray(label, mode="P")
    img.putpalette([200, 10, 10, 10, 200, 10, 10, 10, 200, 90, 90, 90, 5, 5, 5] + [0] * 3 * 251)  # colours, not indices
    img.save(tmp_path / "m.png")
    Image.fromarray(np.zeros((3, 4, 3), np.uint8)).save(tmp_path / "i.png")
    out = Compose([LoadImageFiled("image"), LoadLabelMapd("label")])({"image": str(tmp_path / "i.png"), "label": str(tmp_path / "m.png")})
    assert out["label"].shape == (1, 3, 4) and out["image"].shape == (3, 3, 4)  # one grid, rows first
    assert np.array_equal(out["label"][0].numpy(), label)
    assert out["label"].meta["filename_or_obj"] == str(tmp_path / "m.png")


def test_load_label_map_refuses_colour_and_jpeg_labels(tmp_path: Path) -> None:
    colour = np.zeros((3, 4, 3), np.uint8)
    colour[0, 0] = (255, 0, 0)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(ValueError, match="colour image .* not a map of class indices"):
        LoadLabelMap()(str(tmp_path / "colour.png"))
    gray_rgb = np.repeat(np.arange(12, dtype=np.uint8).reshape(3, 4, 1), 3, -1)
    Image.fromarray(gray_rgb).save(tmp_path / "gray.png")
    assert np.array_equal(LoadLabelMap()(str(tmp_path / "gray.png"))[0].numpy(), gray_rgb[..., 0])
    Image.fromarray(gray_rgb[..., 0]).save(tmp_path / "lossy.jpg")
    with pytest.raises(ValueError, match=r"label map .*lossy\.jpg is not in a lossless format"):
        LoadLabelMap()(str(tmp_path / "lossy.jpg"))


# ---------------------------------------------------------------- the flip that swaps left and right


def test_left_right_pairs_come_from_the_class_names() -> None:
    swap = left_right_swap(CELEBAMASK_HQ_CLASSES)
    assert swap == {L_EYE: R_EYE, R_EYE: L_EYE, L_BROW: R_BROW, R_BROW: L_BROW, L_EAR: R_EAR, R_EAR: L_EAR}
    # l_lip is the lower lip, ear_r an earring, neck_l a necklace: none of them is swapped
    assert not {CELEBAMASK_HQ_CLASSES.index(n) for n in ("l_lip", "u_lip", "ear_r", "neck_l")} & set(swap)
    assert left_right_swap(["bg", "left_hand", "right_hand", "l_foot"]) == {1: 2, 2: 1}


def test_flip_swap_keeps_left_classes_on_the_subjects_left() -> None:
    lm = _face()
    flipped = FlipSwap(spatial_axis=1, swap=CELEBAMASK_HQ_CLASSES)(lm)
    plain = torch.flip(lm, dims=[2])
    # pixels move as in a plain mirror image ...
    assert torch.equal(flipped == CELEBAMASK_HQ_CLASSES.index("hair"), plain == CELEBAMASK_HQ_CLASSES.index("hair"))
    # ... but the mirrored face's left eye is the one now on the image's right, so the classes swap
    assert (flipped[0, 2, 6:8] == L_EYE).all() and (flipped[0, 2, 2:4] == R_EYE).all()
    assert (flipped[0, 1, 6:8] == L_BROW).all() and (flipped[0, 2:4, 9] == L_EAR).all()
    assert (plain[0, 2, 6:8] == R_EYE).all()  # what a plain flip (SemFlow's) would teach
    assert torch.equal(flipped[0, 5], plain[0, 5])  # the lower lip stays the lower lip
    assert torch.equal(FlipSwap(1, swap=CELEBAMASK_HQ_CLASSES)(flipped), lm)  # its own inverse
    # numpy in, numpy out
    out = FlipSwap(1, swap={L_EYE: R_EYE})(lm.numpy())
    assert isinstance(out, np.ndarray) and (out[0, 2, 6:8] == L_EYE).all()


def test_swap_mapping_is_completed_and_checked() -> None:
    lm = torch.tensor([[[4.0, 5.0, 255.0, 1.0]]])
    assert SwapLabels({4: 5})(lm).tolist() == [[[5.0, 4.0, 255.0, 1.0]]]
    with pytest.raises(ValueError, match="swap maps class 5 to both 4 and 6"):
        SwapLabels({4: 5, 6: 5})
    with pytest.raises(TypeError, match="swap must be a mapping"):
        SwapLabels("l_eye")


def test_rand_flip_swapd_flips_image_and_label_together_reproducibly() -> None:
    lm = _face()
    image = torch.arange(3 * 6 * 10, dtype=torch.float32).reshape(3, 6, 10)
    flip = RandFlipSwapd(["image", "label"], swap=CELEBAMASK_HQ_CLASSES, prob=0.5)
    flip.set_random_state(7)
    outcomes = []
    for _ in range(20):
        out = flip({"image": image, "label": lm})
        flipped = torch.equal(out["image"], torch.flip(image, dims=[2]))
        assert flipped or torch.equal(out["image"], image)
        assert torch.equal(out["label"], FlipSwap(1, swap=CELEBAMASK_HQ_CLASSES)(lm) if flipped else lm)
        outcomes.append(flipped)
    assert 0 < sum(outcomes) < 20
    flip.set_random_state(7)
    assert [torch.equal(flip({"image": image, "label": lm})["image"], image) for _ in range(20)] == [not o for o in outcomes]
    with pytest.raises(ValueError, match="label_keys .* are not among the keys"):
        FlipSwapd(["image"], swap={4: 5}, label_keys="label")


# ---------------------------------------------------------------- resizing and cropping together


def test_resize_short_side_and_crop_keep_image_and_label_on_one_grid() -> None:
    rows, cols = 30, 45
    lm = torch.zeros(1, rows, cols)
    lm[0, :, 20:] = 7  # a vertical edge at column 20
    image = torch.where(lm.expand(3, -1, -1) == 7, 1.0, -1.0)
    data = {"image": MetaTensor(image), "label": MetaTensor(lm)}
    out = ResizeShortSided(["image", "label"], 12, mode=["area", "nearest-exact"])(data)
    assert out["image"].shape == (3, 12, 18) and out["label"].shape == (1, 12, 18)
    assert set(out["label"].unique().tolist()) == {0.0, 7.0}  # nearest: no blended classes
    edge = (out["label"][0, 0] == 7).float().argmax()
    assert out["image"][0, 0, edge - 1] < 0.5 and out["image"][0, 0, edge + 1] > 0.5  # the edge in the same place
    cropped = RandSpatialCropd(["image", "label"], roi_size=(12, 12), random_size=False)(out)
    assert torch.equal(cropped["image"][0] > 0, cropped["label"][0] == 7)
    with pytest.raises(ValueError, match="differ in size"):
        ResizeShortSided(["image", "label"], 12)({"image": torch.zeros(3, 8, 8), "label": torch.zeros(1, 8, 9)})
    # square images: MONAI's Resized with one mode per key is all that is needed
    sq = Resized(["image", "label"], (16, 16), mode=("area", "nearest-exact"))({"image": image[:, :, :30], "label": lm[:, :, :30]})
    assert sq["label"].shape == (1, 16, 16) and set(sq["label"].unique().tolist()) <= {0.0, 7.0}


# ---------------------------------------------------------------- remaps and the ignore convention


def test_coco_stuff_remap_transform_names_the_file_and_the_value() -> None:
    raw = MetaTensor(torch.tensor([[[0.0, 181.0, 255.0, 91.0]]]), meta={"filename_or_obj": "/data/labels/42.png"})
    out = CocoStuffToClassesd("label")({"label": raw})["label"]
    assert out.tolist() == [[[0.0, 170.0, 255.0, 80.0]]] and isinstance(out, MetaTensor) and out.dtype == torch.float32
    assert out.meta["filename_or_obj"] == "/data/labels/42.png"
    every = torch.tensor(list(COCOSTUFF_USED_VALUES), dtype=torch.uint8)[None, None]
    assert CocoStuffToClasses()(every).flatten().tolist() == list(range(171))
    bad = raw.clone()
    bad[0, 0, 0] = COCOSTUFF_UNUSED_IDS[0] - 1
    with pytest.raises(ValueError, match=r"label map /data/labels/42\.png holds value\(s\) 11 outside the COCO-Stuff"):
        CocoStuffToClasses()(bad)


def test_remap_labels_checks_values_and_the_ignore_index() -> None:
    check = RemapLabelsd("label", range(19), what="CelebAMask-HQ")
    lm = torch.tensor([[[0.0, 18.0]]])
    assert torch.equal(check({"label": lm})["label"], lm)
    with pytest.raises(ValueError, match=r"holds value\(s\) 19 outside the CelebAMask-HQ label values \(19 classes\)"):
        check({"label": torch.tensor([[[19.0]]])})
    assert RemapLabels([10, 20], ignore_index=255)(np.array([[20, 255, 10]])).tolist() == [[1, 255, 0]]
    with pytest.raises(ValueError, match="ignore_index 1 is also a label value or a class index"):
        RemapLabels([10, 20], ignore_index=1)


def test_ignored_pixels_get_code_zero_and_a_zero_in_the_valid_mask() -> None:
    classes = torch.tensor([[[0.0, 170.0], [255.0, 5.0]]])
    book = ClassCodebook.palette(171)
    pipeline = Compose([
        ValidPixelMaskd("label", ignore_index=255),
        LabelMapToCodeMaskd("label", book, ignore_index=255, output_keys="code"),
        UniformDequantized("code", beta=6, codebook=book),
    ])
    pipeline.set_random_state(0)
    out = pipeline({"label": classes})
    assert out["valid"].tolist() == [[[1.0, 1.0], [0.0, 1.0]]]
    code = out["code"]
    assert code.shape == (3, 2, 2)
    assert (code[:, 1, 0].abs() <= 6 / 255 + 1e-6).all()  # code 0 (plus noise) where unlabeled
    for r, c in ((0, 0), (0, 1), (1, 1)):
        assert torch.allclose(code[:, r, c], book.codes[int(classes[0, r, c])], atol=6 / 255 + 1e-6)


def test_real_celebamask_hq_pipeline(shared_data: Path) -> None:
    root = shared_data / "celebamask_hq_sample"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    pair = celebamask_hq_dicts(root, "train")[0]
    pipeline = Compose([
        LoadImageFiled("image"), LoadLabelMapd("label"), RemapLabelsd("label", range(19), what="CelebAMask-HQ"),
        Resized(["image", "label"], (64, 64), mode=("area", "nearest-exact")),
        FlipSwapd(["image", "label"], swap=CELEBAMASK_HQ_CLASSES),
    ])
    out = pipeline(pair)
    raw = LoadLabelMap()(pair["label"])
    assert out["image"].shape == (3, 64, 64) and out["label"].shape == (1, 64, 64)
    assert 0 <= float(out["image"].min()) and float(out["image"].max()) <= 255
    assert set(out["label"].unique().tolist()) <= set(raw.unique().tolist()) | {L_EYE, R_EYE, L_BROW, R_BROW, L_EAR, R_EAR}
    # after the flip the subject's left eye (class 4) still lies on the image's right half
    cols = torch.nonzero(out["label"][0] == L_EYE)[:, 1]
    raw_cols = torch.nonzero(raw[0] == L_EYE)[:, 1]
    if len(cols) and len(raw_cols):
        assert (cols.float().mean() > 31.5) == (raw_cols.float().mean() > 255.5)
