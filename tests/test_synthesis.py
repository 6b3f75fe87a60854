"""Semantic image synthesis: the code-mask sampler, KID / FID, real-vs-real, MS-SSIM / LPIPS diversity,
mask consistency, and ``evaluate_synthesis_checkpoint`` end to end on a tiny untrained network."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from medsymmflow.codes import ClassCodebook
from medsymmflow.inferers import SymmFlowSampler
from medsymmflow.io import RunInfo
from medsymmflow.metrics.synthesis import (
    LPIPSWeightsMissing,
    SynthesisScores,
    kid_subset_size_for,
    lpips_diversity,
    mask_consistency,
    ms_ssim_diversity,
    ms_ssim_settings,
    real_vs_real,
)
from medsymmflow.networks import build_network, create_ema
from medsymmflow.synthesis import SYNTHESIS_METRICS_FILE, evaluate_synthesis, evaluate_synthesis_checkpoint, synthesise

pytestmark = pytest.mark.usefixtures("one_thread")


def _features(channels: int = 3, width: int = 8, seed: int = 0) -> nn.Module:
    """A fixed random conv feature extractor in place of Inception."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, stride=2), nn.Tanh(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * width, width)
    ).eval()


def _images(n: int, seed: int, low: int = 0, high: int = 256, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, (n, size, size, 3), dtype=np.uint8)


def _tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = build_network("tiny", 3, 3).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))  # MONAI zero-initialises the output convolution
    return net


def _label_maps(n: int = 6, size: int = 16) -> np.ndarray:
    """Three classes in bands, one corner unlabeled (255)."""
    maps = np.zeros((n, size, size), dtype=np.int64)
    for i in range(n):
        maps[i, :, (size // 3 + i % 3) :] = 1
        maps[i, size // 2 :, : size // 2] = 2
        maps[i, :2, :2] = 255
    return maps


# ----------------------------------------------------------------------------- sampler
def test_sampler_takes_a_code_mask_and_a_constant_one_equals_the_class_condition() -> None:
    codebook, net = ClassCodebook.palette(3), _tiny_net()
    sampler = SymmFlowSampler(codebook, image_channels=3, steps=2, beta=8.0)
    labels = torch.tensor([0, 2])
    by_class = sampler(labels, net, spatial_size=(16, 16), generator=torch.Generator().manual_seed(3))
    by_mask = sampler(codebook.code_mask(labels, (16, 16)), net, generator=torch.Generator().manual_seed(3))
    assert by_mask.shape == (2, 3, 16, 16)
    assert torch.equal(by_class, by_mask)  # same dequantization noise, same start noise
    maps = torch.as_tensor(_label_maps(2))
    dense = torch.stack([codebook.label_map_to_code_mask(m, ignore_index=255) for m in maps])
    assert sampler(dense, net, generator=torch.Generator().manual_seed(3)).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"shape \(B, 3, \*spatial\)"):
        sampler(torch.zeros(2, 1, 16, 16), net)


# ----------------------------------------------------------------------------- FID / KID
def test_kid_is_zero_for_identical_sets_and_positive_for_different_ones() -> None:
    real = _images(30, 0)
    scores = SynthesisScores(real, _features(), kid_subsets=10)
    same, other = scores(real), scores(_images(30, 1, 0, 90))
    assert other["kid"] > 0.01 and other["fid"] > 0.01
    assert abs(same["kid"]) < 0.05 * other["kid"] and abs(same["fid"]) < 1e-6
    assert same["kid_subset_size"] == 30 and same["num_real"] == same["num_generated"] == 30
    assert scores(_images(30, 1, 0, 90)) == other  # KID's subsets come from the seed
    assert kid_subset_size_for(300, 1500) == 300 and kid_subset_size_for(3000, 1500) == 1000
    with pytest.raises(ValueError, match="KID needs at least 2 real and 2 generated images, got 30 real and 1"):
        scores(real[:1])
    with pytest.raises(ValueError, match="kid_subset_size=50 needs"):
        SynthesisScores(real, _features(), kid_subset_size=50)(real)


def test_real_vs_real_halves_and_reference_draw() -> None:
    real = _images(20, 0)
    scores = SynthesisScores(real, _features(), kid_subsets=5)
    halves = real_vs_real(real, scores=scores)
    assert halves["num_real"] == halves["num_generated"] == 10 and "two disjoint halves" in halves["source"]
    far = real_vs_real(real, _images(40, 2, 0, 90), scores=scores)
    assert far["num_real"] == far["num_generated"] == 20 and "20 of 40 reference images" in far["source"]
    assert halves["kid"] < 0.2 * far["kid"]  # two halves of one distribution vs another distribution
    assert real_vs_real(real, feature_extractor=_features(), kid_subsets=5) == halves  # its own Inception pass, the same row
    with pytest.raises(ValueError, match="at least 4 real images"):
        real_vs_real(real[:3], feature_extractor=_features())


# ----------------------------------------------------------------------------- diversity
def test_ms_ssim_settings_fit_small_images() -> None:
    assert ms_ssim_settings(176)["scales"] == 5 and ms_ssim_settings(175)["scales"] == 4
    small = ms_ssim_settings(64)
    assert (small["scales"], small["kernel_size"]) == (3, 11) and sum(small["betas"]) == pytest.approx(1.0)
    assert ms_ssim_settings(8)["kernel_size"] == 7


def test_ms_ssim_diversity_is_zero_for_identical_samples() -> None:
    image = _images(2, 0, size=64)
    identical = np.repeat(image[:, None], 3, axis=1)  # (2 masks, 3 samples, 64, 64, 3)
    same = ms_ssim_diversity(identical)
    assert same["diversity"] == pytest.approx(0.0, abs=1e-6) and same["pairs"] == 6
    varied = ms_ssim_diversity(_images(6, 1, size=64).reshape(2, 3, 64, 64, 3))
    assert varied["diversity"] > 0.5
    with pytest.raises(ValueError, match="at least 2 samples per mask"):
        ms_ssim_diversity(identical[:, :1])


def test_lpips_without_weights_says_where_to_put_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    samples = np.repeat(_images(1, 0)[:, None], 2, axis=1)
    with pytest.raises(LPIPSWeightsMissing, match=r"LPIPS needs the torchvision alex weights at .*alexnet-.*\.pth; place them there") as e:
        lpips_diversity(samples)
    assert str(tmp_path) in str(e.value)
    net, maps = _tiny_net(), _label_maps(4)
    with pytest.raises(LPIPSWeightsMissing, match="vgg"):  # asked for explicitly: fails before any generation
        evaluate_synthesis(net, ClassCodebook.palette(3), 3, maps, _images(4, 0), lpips="vgg", feature_extractor=_features())


# ----------------------------------------------------------------------------- mask consistency
def test_mask_consistency_perfect_and_constant_segmenters() -> None:
    maps = np.zeros((2, 4, 4), dtype=np.int64)
    maps[0, :, 2:] = 1  # image 0: 8 x class 0, 8 x class 1
    maps[1, :2] = 2  # image 1: 8 x class 2, 4 x class 1, 4 x unlabeled
    maps[1, 2:, :2] = 1
    maps[1, 2:, 2:] = 255
    images = _images(2, 0, size=4)

    def perfect(x: torch.Tensor) -> torch.Tensor:
        return torch.where(torch.as_tensor(maps) == 255, 0, torch.as_tensor(maps))

    def constant(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], x.shape[2], x.shape[3], dtype=torch.long)

    best = mask_consistency(images, maps, perfect, 3)
    assert best["miou"] == best["miou_no_background"] == best["pixel_accuracy"] == 1.0
    # constant 0: class 0 IoU = 8 / (8 + 12 + 8), classes 1 and 2 IoU 0; the 4 unlabeled pixels do not count
    zero = mask_consistency(images, maps, constant, 3)
    assert zero["per_class_iou"] == pytest.approx([8 / 28, 0.0, 0.0])
    assert zero["miou"] == pytest.approx(8 / 28 / 3) and zero["miou_no_background"] == 0.0
    assert zero["pixel_accuracy"] == pytest.approx(8 / 28)
    # another background class, or none (COCO-Stuff): the number without it follows the dataset, never class 0 by default
    assert mask_consistency(images, maps, constant, 3, background=2)["miou_no_background"] == pytest.approx(8 / 28 / 2)
    assert mask_consistency(images, maps, constant, 3, background=None)["miou_no_background"] is None
    # scores (B, K, H, W) are argmaxed; a class neither present nor predicted has no IoU and is left out
    scores = mask_consistency(images, maps, lambda x: nn.functional.one_hot(perfect(x), 4).permute(0, 3, 1, 2), 4)
    assert scores["miou"] == 1.0 and scores["per_class_iou"][3] is None
    with pytest.raises(ValueError, match="label maps"):
        mask_consistency(images, maps[:1], perfect, 3)


# ----------------------------------------------------------------------------- end to end
def _write_checkpoint(path: Path) -> Path:
    info = RunInfo(flag="synthetic", num_classes=3, code_kind="palette", image_channels=3, code_channels=3,
                   size=16, net_preset="tiny")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"run_info": info.state_dict(), "ema": create_ema(_tiny_net()).state_dict()}, path)
    return path


def test_evaluate_synthesis_checkpoint_writes_metrics_pngs_and_montages(tmp_path: Path) -> None:
    ckpt = _write_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    maps, real = _label_maps(6), _images(6, 0)

    def constant(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], x.shape[2], x.shape[3], dtype=torch.long)

    kwargs = dict(segmenters={"constant": constant}, feature_extractor=_features(), steps=(2, 1), samples_per_mask=2,
                  kid_subsets=5, batch_size=8, lpips="none", progress=False, ids=[f"m{i}" for i in range(6)])
    report, path = evaluate_synthesis_checkpoint(ckpt, maps, real, output_dir=tmp_path / "a", **kwargs)
    assert path == tmp_path / "a" / SYNTHESIS_METRICS_FILE
    saved = json.loads(path.read_text())
    assert [r["steps"] for r in saved["results"]] == [2, 1]
    assert {"medsymmflow_1step", "constant"} == set(saved["real_consistency"]) == set(saved["results"][0]["mask_consistency"])
    for row in saved["results"]:
        assert {"fid", "kid", "kid_std", "diversity", "mask_consistency", "montage", "samples_dir"} <= set(row)
        assert row["num_generated"] == 6 and row["kid_subset_size"] == 6  # the first sample of each mask
        assert row["mask_consistency"]["constant"]["num_images"] == 12
        assert row["diversity"]["pairs"] == 6
    assert "two disjoint halves" in saved["reference"]["source"] and saved["reference"]["kid_subset_size"] == 3
    assert len(list((tmp_path / "a" / "synthesis_2steps").glob("m*_*.png"))) == 12
    montage = np.asarray(Image.open(tmp_path / "a" / "synthesis_montage_1steps.png"))
    assert montage.shape == (6 * 16 + 7 * 2, 3 * 16 + 4 * 2, 3)  # rows: mask | 2 samples
    # the same seed repeats everything; another seed changes the samples
    again, _ = evaluate_synthesis_checkpoint(ckpt, maps, real, output_dir=tmp_path / "b", **kwargs)
    for first, second in zip(report["results"], again["results"]):
        assert first["fid"] == second["fid"] and first["kid"] == second["kid"]
        assert first["mask_consistency"] == second["mask_consistency"]
    assert (tmp_path / "a/synthesis_2steps/m3_1.png").read_bytes() == (tmp_path / "b/synthesis_2steps/m3_1.png").read_bytes()
    net, codebook = _tiny_net(), ClassCodebook.palette(3)
    s0 = synthesise(net, codebook, 3, maps[:2], 2, steps=1, seed=0, progress=False)
    assert s0.shape == (2, 2, 16, 16, 3) and not np.array_equal(s0, synthesise(net, codebook, 3, maps[:2], 2, steps=1, seed=1, progress=False))
    with pytest.raises(ValueError, match="trained at 16 px"):
        evaluate_synthesis_checkpoint(ckpt, _label_maps(6, 8), _images(6, 0, size=8), **kwargs)
