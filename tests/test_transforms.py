"""Tests for the code-mask transforms (array forms, dictionary twins, LoadImaged pipelines)."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, LoadImaged
from monai.utils import TransformBackends
from PIL import Image

from medsymmflow.codes import ClassCodebook, dequantization_noise
from medsymmflow.transforms import (
    ClassToCodeMask,
    ClassToCodeMaskd,
    CodeMaskToClass,
    CodeMaskToClassd,
    LabelMapToCodeMask,
    LabelMapToCodeMaskd,
    UniformDequantize,
    UniformDequantized,
    resolve_codebook,
)

ALL_TRANSFORMS = [
    ClassToCodeMask,
    ClassToCodeMaskd,
    CodeMaskToClass,
    CodeMaskToClassd,
    LabelMapToCodeMask,
    LabelMapToCodeMaskd,
    UniformDequantize,
    UniformDequantized,
]


def _expected_mask(cb: ClassCodebook, labels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Reference code mask built by indexing the codes directly: (C, *labels.shape)."""
    return torch.movedim(cb.codes[torch.as_tensor(np.asarray(labels)).long()], -1, 0)


# ---------------------------------------------------------------------------- codebook resolution
def test_every_transform_declares_torch_and_numpy_backends():
    for cls in ALL_TRANSFORMS:
        assert set(cls.backend) == {TransformBackends.TORCH, TransformBackends.NUMPY}, cls.__name__


def test_resolve_codebook_from_kind_or_instance():
    built = resolve_codebook("rgb", 8)
    assert torch.equal(built.codes, ClassCodebook.rgb(8).codes)
    cb = ClassCodebook.palette(19)
    assert resolve_codebook(cb) is cb
    assert resolve_codebook(cb, 19) is cb
    with pytest.raises(ValueError, match="disagrees"):
        resolve_codebook(cb, 5)
    with pytest.raises(ValueError, match="needs num_classes"):
        resolve_codebook("gray")
    with pytest.raises(ValueError, match="unknown codebook kind"):
        ClassToCodeMask("hsv", (4, 4), num_classes=3)
    with pytest.raises(TypeError, match="ClassCodebook or a kind name"):
        CodeMaskToClass(3)


# ---------------------------------------------------------------------------- ClassToCodeMask
@pytest.mark.parametrize(
    "label, out_type",
    [
        (5, torch.Tensor),
        (np.int64(5), np.ndarray),
        (np.array([5]), np.ndarray),  # MedMNIST's label shape
        (np.array(5, dtype=np.uint8), np.ndarray),
        (torch.tensor(5), torch.Tensor),
        (torch.tensor([5]), torch.Tensor),
        (torch.tensor([5.0]), torch.Tensor),
    ],
)
def test_class_to_code_mask_types_shapes_values(label, out_type):
    cb = ClassCodebook.rgb(8)
    out = ClassToCodeMask(cb, (4, 6))(label)
    assert isinstance(out, out_type)
    assert tuple(out.shape) == (3, 4, 6)
    assert out.dtype in (np.float32, torch.float32)
    expected = cb.codes[5][:, None, None].expand(3, 4, 6)
    assert torch.equal(torch.as_tensor(out), expected)


def test_class_to_code_mask_kind_3d_and_call_time_size():
    t = ClassToCodeMask("gray", num_classes=5)
    out = t(torch.tensor([4]), spatial_size=(2, 3, 4))
    assert out.shape == (1, 2, 3, 4)
    assert torch.all(out == 1.0)  # last gray code is +1
    assert torch.all(t(0, spatial_size=[2, 2]) == -1.0)
    with pytest.raises(ValueError, match="needs a spatial_size"):
        t(1)


def test_class_to_code_mask_bad_input_raises():
    t = ClassToCodeMask("rgb", (4, 4), num_classes=5)
    with pytest.raises(ValueError, match="out of range"):
        t(5)
    with pytest.raises(ValueError, match="out of range"):
        t(np.array([-1]))
    with pytest.raises(ValueError, match="one class per sample"):
        t(np.array([1, 2]))
    with pytest.raises(ValueError, match="fractional"):
        t(torch.tensor([1.5]))
    with pytest.raises(TypeError, match="numpy array, a torch tensor or a number"):
        t("3")
    with pytest.raises(ValueError, match="positive integers"):
        ClassToCodeMask("rgb", (4, 0), num_classes=5)
    with pytest.raises(TypeError, match="sequence of ints"):
        ClassToCodeMask("rgb", 4, num_classes=5)


# ---------------------------------------------------------------------------- LabelMapToCodeMask
def test_label_map_to_code_mask_numpy_torch_2d_3d():
    cb = ClassCodebook.palette(19)
    rng = np.random.default_rng(0)
    lm2 = rng.integers(0, 19, size=(1, 5, 6)).astype(np.uint8)
    out = LabelMapToCodeMask(cb)(lm2)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (3, 5, 6)
    assert torch.equal(torch.from_numpy(out), _expected_mask(cb, lm2[0]))

    lm3 = torch.from_numpy(rng.integers(0, 19, size=(1, 3, 4, 2))).float()  # float with whole values
    out3 = LabelMapToCodeMask("palette", num_classes=19)(lm3)
    assert isinstance(out3, torch.Tensor) and out3.dtype == torch.float32 and out3.shape == (3, 3, 4, 2)
    assert torch.equal(out3, _expected_mask(cb, lm3[0]))


def test_label_map_to_code_mask_keeps_metatensor_meta():
    cb = ClassCodebook.rgb(4)
    affine = torch.diag(torch.tensor([0.5, 0.5, 2.0, 1.0], dtype=torch.float64))
    lm = MetaTensor(torch.tensor([[[0.0, 1.0], [2.0, 3.0]]]), affine=affine, meta={"filename_or_obj": "x.nii"})
    out = LabelMapToCodeMask(cb)(lm)
    assert isinstance(out, MetaTensor) and out.shape == (3, 2, 2)
    assert torch.equal(out.affine, affine)
    assert out.meta["filename_or_obj"] == "x.nii"
    assert torch.equal(out.as_tensor(), _expected_mask(cb, lm[0].long()))


def test_label_map_ignore_index():
    cb = ClassCodebook.rgb(3)
    lm = np.array([[[0, 255], [2, 1]]])
    out = LabelMapToCodeMask(cb, ignore_index=255, ignore_value=-5.0)(lm)
    assert np.all(out[:, 0, 1] == -5.0)
    assert np.array_equal(out[:, 1, 0], cb.codes[2].numpy())
    with pytest.raises(ValueError, match="out of range"):
        LabelMapToCodeMask(cb)(lm)


def test_label_map_bad_input_raises():
    t = LabelMapToCodeMask("gray", num_classes=3)
    with pytest.raises(ValueError, match="channel-first"):
        t(np.zeros((4, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="channel-first"):
        t(np.zeros((1, 2, 2, 2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="single channel"):
        t(np.zeros((3, 4, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="out of range"):
        t(np.full((1, 2, 2), 3))
    with pytest.raises(ValueError, match="fractional"):
        t(torch.full((1, 2, 2), 0.5))


# ---------------------------------------------------------------------------- UniformDequantize
@pytest.mark.parametrize("as_numpy", [True, False])
def test_dequantize_bounded_nonzero_and_type(as_numpy):
    beta = 4.0
    x = np.zeros((3, 32, 32), dtype=np.float32)
    img = x if as_numpy else torch.from_numpy(x)
    t = UniformDequantize(beta).set_random_state(0)
    out = t(img)
    assert type(out) is type(img) and out.dtype == img.dtype and out.shape == img.shape
    noise = np.asarray(out) - x
    assert np.abs(noise).max() <= beta / 255 + 1e-7
    assert np.abs(noise).max() > 0.9 * beta / 255  # the noise fills its range
    assert np.count_nonzero(noise) == noise.size


def test_dequantize_reproducible_with_seed():
    img = torch.zeros(1, 8, 8)
    a = UniformDequantize(4).set_random_state(7)(img)
    b = UniformDequantize(4).set_random_state(7)(img)
    c = UniformDequantize(4).set_random_state(8)(img)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    t = UniformDequantize(4).set_random_state(7)
    assert not torch.equal(t(img), t(img))  # fresh noise on each call


def test_transform_and_codebook_share_one_dequantization_noise():
    """UniformDequantize (MONAI random state) and the trainer's dequantized_code_mask (torch RNG) add the same function of U(0, 1)."""
    beta, shape = 3.3, (1, 4, 4)
    out = UniformDequantize(beta).set_random_state(5)(np.zeros(shape, dtype=np.float64))
    state = np.random.RandomState(5)
    state.rand()  # the draw against prob comes first
    np.testing.assert_array_equal(out, dequantization_noise(state.random_sample(shape), beta))
    cb = ClassCodebook.gray(2)
    mask = cb.dequantized_code_mask([1], (4, 4), beta, generator=torch.Generator().manual_seed(3))
    uniform = torch.rand((1, 1, 4, 4), generator=torch.Generator().manual_seed(3))
    assert torch.equal(mask, cb.code_mask([1], (4, 4)) + dequantization_noise(uniform, beta))


def test_dequantize_metatensor_prob_and_errors():
    img = MetaTensor(torch.zeros(1, 4, 4), affine=torch.diag(torch.tensor([3.0, 3.0, 1.0, 1.0])))
    out = UniformDequantize(2).set_random_state(0)(img)
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, img.affine)
    x = torch.zeros(1, 4, 4)
    assert UniformDequantize(2, prob=0.0)(x) is x
    with pytest.raises(ValueError, match="finite number >= 0"):
        UniformDequantize(-1.0)
    with pytest.raises(ValueError, match="finite number >= 0"):
        UniformDequantize(float("nan"))
    with pytest.raises(ValueError, match="too large"):
        UniformDequantize(4.0, codebook="gray", num_classes=171)  # gray codes 2/170 apart: beta < 1.5
    with pytest.raises(ValueError, match="too large"):
        UniformDequantized("y", beta=200.0, codebook=ClassCodebook.rgb(8))
    with pytest.raises(TypeError, match="floating-point"):
        UniformDequantize(1.0)(np.zeros((1, 2, 2), dtype=np.uint8))


# ---------------------------------------------------------------------------- CodeMaskToClass
@pytest.mark.parametrize("as_numpy", [True, False])
@pytest.mark.parametrize("decision", ["mean", "mode"])
def test_code_mask_to_class_sample_decisions(as_numpy, decision):
    cb = ClassCodebook.rgb(5)
    mask = ClassToCodeMask(cb, (6, 6))(np.array([3]) if as_numpy else 3)
    label, dist = CodeMaskToClass(cb, decision=decision, return_distance=True)(mask)
    assert type(label) is type(mask) and type(dist) is type(mask)
    assert tuple(label.shape) == (1,) and label.dtype in (np.int64, torch.int64)
    assert int(label[0]) == 3
    assert tuple(dist.shape) == (5,)
    dist_t = torch.as_tensor(dist)
    assert float(dist_t[3]) == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(dist_t, torch.linalg.vector_norm(cb.codes - cb.codes[3], dim=1), atol=1e-6)
    only = CodeMaskToClass(cb, decision=decision)(mask)
    assert np.array_equal(np.asarray(only), np.asarray(label))


def test_code_mask_to_class_pixel_round_trips_label_map():
    cb = ClassCodebook.palette(19)
    lm = torch.randint(0, 19, (1, 4, 5, 3), generator=torch.Generator().manual_seed(0))
    noisy = UniformDequantize(4, codebook=cb).set_random_state(1)(LabelMapToCodeMask(cb)(lm))
    labels, dist = CodeMaskToClass(cb, decision="pixel", return_distance=True)(noisy)
    assert labels.shape == (1, 4, 5, 3) and labels.dtype == torch.int64
    assert torch.equal(labels, lm)
    assert dist.shape == (1, 4, 5, 3)
    expected = torch.linalg.vector_norm(noisy - _expected_mask(cb, lm[0]), dim=0, keepdim=True)
    # torch.cdist's matmul path (used in codes.py) loses ~1e-4 on distances this small.
    assert torch.allclose(dist, expected, atol=1e-3)
    assert 0 < float(dist.max()) <= math.sqrt(3) * 4 / 255 + 1e-6


def test_code_mask_to_class_mode_differs_from_mean():
    cb = ClassCodebook.gray(3)  # codes -1, 0, 1
    mask = torch.tensor([[[-1.0, -1.0, 1.0, 1.0, 1.0]]]).reshape(1, 1, 5)
    # 3 of 5 pixels sit on class 2, but the mean (0.2) is nearest class 1.
    assert int(CodeMaskToClass(cb, decision="mode")(mask)[0]) == 2
    assert int(CodeMaskToClass(cb, decision="mean")(mask)[0]) == 1


def test_code_mask_to_class_metatensor_and_half():
    cb = ClassCodebook.rgb(4)
    mask = MetaTensor(ClassToCodeMask(cb, (3, 3))(2), affine=torch.diag(torch.tensor([2.0, 2.0, 1.0, 1.0])))
    label = CodeMaskToClass(cb)(mask)
    assert type(label) is torch.Tensor and int(label[0]) == 2  # a class has no grid: no metadata
    pix = CodeMaskToClass(cb, decision="pixel")(mask)
    assert isinstance(pix, MetaTensor) and torch.equal(pix.affine, mask.affine)
    assert int(CodeMaskToClass(cb)(mask.as_tensor().half())[0]) == 2


def test_code_mask_to_class_bad_input_raises():
    cb = ClassCodebook.rgb(4)
    t = CodeMaskToClass(cb)
    mask = ClassToCodeMask(cb, (3, 3))(1)
    bad = mask.clone()
    bad[0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        t(bad)
    with pytest.raises(ValueError, match="channels"):
        t(torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="channel-first"):
        t(torch.zeros(3))
    with pytest.raises(TypeError, match="floating point"):
        t(torch.zeros(3, 2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="unknown decision"):
        CodeMaskToClass(cb, decision="vote")


# ---------------------------------------------------------------------------- round trip
ROUND_TRIP_CASES = [
    (kind, k, 4.0)
    for kind, ks in (("gray", (2, 5, 8, 19)), ("rgb", (2, 5, 8, 19)), ("palette", (2, 5, 8, 19, 171)))
    for k in ks
] + [("gray", 171, 1.0)]  # gray codes of 171 classes are too close for beta = 4


@pytest.mark.parametrize("kind, num_classes, beta", ROUND_TRIP_CASES)
def test_encode_dequantize_decode_round_trip(kind, num_classes, beta):
    cb = ClassCodebook.from_kind(kind, num_classes)
    encode = ClassToCodeMask(cb, (4, 4))
    dequantize = UniformDequantize(beta, codebook=cb).set_random_state(num_classes)
    decoders = {d: CodeMaskToClass(cb, decision=d) for d in ("mean", "mode", "pixel")}
    for k in range(num_classes):
        label = np.array([k]) if k % 2 else k  # alternate numpy and python labels
        mask = encode(label)
        noisy = dequantize(mask)
        assert not np.array_equal(np.asarray(noisy), np.asarray(mask))
        assert int(np.asarray(decoders["mean"](noisy))[0]) == k
        assert int(np.asarray(decoders["mode"](noisy))[0]) == k
        assert np.all(np.asarray(decoders["pixel"](noisy)) == k)


# ---------------------------------------------------------------------------- dictionary twins
def test_class_to_code_maskd_matches_array_and_keeps_label():
    cb = ClassCodebook.rgb(8)
    image = torch.rand(1, 5, 7)
    data = {"image": image, "label": np.array([6])}
    out = ClassToCodeMaskd("label", cb, spatial_size_from="image", output_keys="code")(data)
    assert np.array_equal(out["label"], [6]) and out["image"] is image
    assert out["code"].shape == (3, 5, 7)
    assert np.array_equal(out["code"], ClassToCodeMask(cb, (5, 7))(np.array([6])))
    fixed = ClassToCodeMaskd("label", "rgb", spatial_size=(2, 2), num_classes=8)(data)
    assert torch.equal(torch.as_tensor(fixed["label"]), cb.codes[6][:, None, None].expand(3, 2, 2))


def test_class_to_code_maskd_errors_and_missing_keys():
    with pytest.raises(ValueError, match="exactly one"):
        ClassToCodeMaskd("label", "rgb", num_classes=3)
    with pytest.raises(ValueError, match="exactly one"):
        ClassToCodeMaskd("label", "rgb", spatial_size=(2, 2), num_classes=3, spatial_size_from="image")
    with pytest.raises(ValueError, match="one key per input key"):
        ClassToCodeMaskd(["a", "b"], "rgb", spatial_size=(2, 2), num_classes=3, output_keys="c")
    t = ClassToCodeMaskd("label", "rgb", num_classes=3, spatial_size_from="image")
    with pytest.raises(KeyError, match="spatial_size_from key 'image'"):
        t({"label": 1})
    with pytest.raises(KeyError, match="missing"):
        t({"image": torch.zeros(1, 2, 2)})
    skip = ClassToCodeMaskd("label", "rgb", num_classes=3, spatial_size_from="image", allow_missing_keys=True)
    assert set(skip({"image": torch.zeros(1, 2, 2)})) == {"image"}


def test_label_map_to_code_maskd_matches_array():
    cb = ClassCodebook.palette(8)
    lm = torch.randint(0, 8, (1, 6, 6), generator=torch.Generator().manual_seed(3))
    out = LabelMapToCodeMaskd("seg", cb, output_keys="code")({"seg": lm})
    assert torch.equal(out["seg"], lm)
    assert torch.equal(out["code"], LabelMapToCodeMask(cb)(lm))


def test_uniform_dequantized_seeded_matches_array_and_propagates():
    img = torch.zeros(3, 6, 6)
    d1 = UniformDequantized("y", beta=4).set_random_state(11)({"y": img})["y"]
    d2 = UniformDequantized("y", beta=4).set_random_state(11)({"y": img})["y"]
    d3 = UniformDequantized("y", beta=4).set_random_state(12)({"y": img})["y"]
    arr = UniformDequantize(4).set_random_state(11)(img)
    assert torch.equal(d1, d2) and torch.equal(d1, arr)
    assert not torch.equal(d1, d3)
    both = UniformDequantized(["a", "b"], beta=4).set_random_state(0)({"a": img, "b": img})
    assert not torch.equal(both["a"], both["b"])  # each key draws its own noise
    skipped = UniformDequantized("y", beta=4, prob=0.0)({"y": img})
    assert skipped["y"] is img


def test_uniform_dequantized_seeded_inside_compose():
    pipe = Compose([UniformDequantized("y", beta=4)]).set_random_state(5)
    again = Compose([UniformDequantized("y", beta=4)]).set_random_state(5)
    img = np.zeros((1, 4, 4), dtype=np.float32)
    assert np.array_equal(pipe({"y": img})["y"], again({"y": img})["y"])


@pytest.mark.parametrize("decision", ["mean", "pixel"])
def test_code_mask_to_classd_keys_and_agreement(decision):
    cb = ClassCodebook.rgb(5)
    mask = UniformDequantize(4, codebook=cb).set_random_state(0)(ClassToCodeMask(cb, (4, 4))(4))
    out = CodeMaskToClassd("pred", cb, decision=decision, return_distance=True)({"pred": mask})
    ref_label, ref_dist = CodeMaskToClass(cb, decision=decision, return_distance=True)(mask)
    assert out["pred"] is mask
    assert torch.equal(out["pred_class"], ref_label)
    assert torch.equal(out["pred_distance"], ref_dist)
    named = CodeMaskToClassd("pred", cb, decision=decision, output_keys="cls")({"pred": mask})
    assert set(named) == {"pred", "cls"} and torch.equal(named["cls"], ref_label)
    with pytest.raises(ValueError, match="one key per input key"):
        CodeMaskToClassd("pred", cb, return_distance=True, distance_keys=["a", "b"])


# ---------------------------------------------------------------------------- LoadImaged pipelines
def test_png_label_map_pipeline(tmp_path):
    cb = ClassCodebook.palette(19)
    lm = np.random.default_rng(0).integers(0, 19, size=(6, 9)).astype(np.uint8)
    Image.fromarray(lm, mode="L").save(tmp_path / "seg.png")
    load = LoadImaged("seg", ensure_channel_first=True)
    loaded = load({"seg": str(tmp_path / "seg.png")})["seg"]
    to_code = LabelMapToCodeMaskd("seg", cb, output_keys="code")
    pipe = Compose([load, to_code, CodeMaskToClassd("code", cb, decision="pixel")])
    out = pipe({"seg": str(tmp_path / "seg.png")})
    assert loaded.shape[0] == 1 and sorted(loaded.shape[1:]) == [6, 9]
    assert isinstance(out["code"], MetaTensor) and out["code"].shape == (3, *loaded.shape[1:])
    assert out["code"].dtype == torch.float32
    assert torch.equal(out["code"].as_tensor(), _expected_mask(cb, loaded[0].long()))
    assert torch.equal(out["code_class"].as_tensor(), loaded.as_tensor().long())
    assert sorted(np.unique(out["code_class"].numpy())) == sorted(np.unique(lm))


def test_rgb_png_label_map_is_rejected(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8), mode="RGB").save(tmp_path / "rgb.png")
    pipe = Compose([LoadImaged("seg", ensure_channel_first=True), LabelMapToCodeMaskd("seg", "rgb", num_classes=3)])
    with pytest.raises(RuntimeError) as info:  # Compose wraps the transform's error
        pipe({"seg": str(tmp_path / "rgb.png")})
    assert isinstance(info.value.__cause__, ValueError) and "single channel" in str(info.value.__cause__)


def test_nifti_label_volume_pipeline(tmp_path):
    cb = ClassCodebook.rgb(5)
    vol = np.random.default_rng(1).integers(0, 5, size=(4, 5, 3)).astype(np.int16)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    nib.save(nib.Nifti1Image(vol, affine), str(tmp_path / "seg.nii.gz"))
    pipe = Compose([LoadImaged("seg", ensure_channel_first=True), LabelMapToCodeMaskd("seg", "rgb", num_classes=5)])
    code = pipe({"seg": str(tmp_path / "seg.nii.gz")})["seg"]
    assert isinstance(code, MetaTensor) and code.shape == (3, 4, 5, 3) and code.dtype == torch.float32
    assert np.allclose(code.affine.numpy(), affine)
    assert torch.equal(code.as_tensor(), _expected_mask(cb, vol))


@pytest.mark.parametrize("fmt", ["png", "nii.gz"])
def test_image_and_class_pipeline(tmp_path, fmt):
    cb = ClassCodebook.rgb(8)
    path = str(tmp_path / f"img.{fmt}")
    if fmt == "png":
        Image.fromarray(np.arange(7 * 10, dtype=np.uint8).reshape(7, 10), mode="L").save(path)
    else:
        nib.save(nib.Nifti1Image(np.random.default_rng(2).random((6, 5, 4)).astype(np.float32), np.eye(4)), path)
    pipe = Compose(
        [
            LoadImaged("image", ensure_channel_first=True),
            ClassToCodeMaskd("label", cb, spatial_size_from="image", output_keys="code"),
            UniformDequantized("code", beta=4, codebook=cb),
            CodeMaskToClassd("code", cb, return_distance=True),
        ]
    ).set_random_state(0)
    out = pipe({"image": path, "label": np.array([6])})
    assert out["code"].shape == (3, *out["image"].shape[1:])
    assert np.array_equal(out["label"], [6])
    assert np.array_equal(out["code_class"], [6])
    assert out["code_distance"].shape == (8,) and int(np.argmin(out["code_distance"])) == 6
    assert 0 < float(np.min(out["code_distance"])) <= math.sqrt(3) * 4 / 255


# --- inference-side helpers: channel matching and 2-D squeezing ---------------------------------


def test_match_channels_gray_rgb_rgba() -> None:
    from medsymmflow.transforms import MatchChannels, MatchChannelsd

    gray = torch.arange(4.0).reshape(1, 2, 2)
    rgb = MatchChannels(3)(gray)
    assert rgb.shape == (3, 2, 2) and torch.equal(rgb[0], rgb[2])
    # luminance of a pure red / green / blue image follows the BT.601 weights
    pure = torch.zeros(3, 1, 3)
    pure[0, 0, 0], pure[1, 0, 1], pure[2, 0, 2] = 1.0, 1.0, 1.0
    torch.testing.assert_close(MatchChannels(1)(pure)[0, 0], torch.tensor([0.299, 0.587, 0.114]))
    rgba = np.concatenate([np.ones((3, 2, 2)), np.zeros((1, 2, 2))]).astype(np.float32)
    out = MatchChannels(1)(rgba)
    assert isinstance(out, np.ndarray) and out.shape == (1, 2, 2) and np.allclose(out, 1.0)
    assert MatchChannelsd("image", 3)({"image": gray})["image"].shape == (3, 2, 2)
    with pytest.raises(ValueError, match="2-channel"):
        MatchChannels(3)(torch.zeros(2, 2, 2))
    with pytest.raises(ValueError, match="1 \\(gray\\) or 3"):
        MatchChannels(2)


def test_ensure_spatial_2d_squeezes_singletons_keeps_meta_and_rejects_volumes() -> None:
    from monai.data import MetaTensor

    from medsymmflow.transforms import EnsureSpatial2D

    img = MetaTensor(torch.rand(1, 5, 6, 1), meta={"filename_or_obj": "case.nii.gz"})
    out = EnsureSpatial2D()(img)
    assert out.shape == (1, 5, 6) and out.meta["filename_or_obj"] == "case.nii.gz"
    torch.testing.assert_close(out.as_tensor(), img.as_tensor()[..., 0])
    same = torch.rand(3, 5, 6)
    assert EnsureSpatial2D()(same) is same
    with pytest.raises(ValueError, match="extract a 2-D slice"):
        EnsureSpatial2D()(torch.zeros(1, 4, 4, 4))
    with pytest.raises(ValueError, match="2-D image"):
        EnsureSpatial2D()(torch.zeros(1, 4, 1))


def test_list_image_files(tmp_path) -> None:
    from medsymmflow.data import list_image_files

    (tmp_path / "a").mkdir()
    for name in ("a/x.png", "a/y.nii.gz", "z.JPG", "notes.txt"):
        (tmp_path / name).write_bytes(b"0")
    found = list_image_files(tmp_path)
    assert [p.split(str(tmp_path))[1] for p in found] == ["/a/x.png", "/a/y.nii.gz", "/z.JPG"]
    assert list_image_files(str(tmp_path / "a" / "*.png")) == [str(tmp_path / "a/x.png")]
    with pytest.raises(FileNotFoundError, match="input not found"):
        list_image_files(tmp_path / "missing")
    with pytest.raises(ValueError, match="not a supported image file"):
        list_image_files(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="no file matches"):
        list_image_files(str(tmp_path / "*.bmp"))
