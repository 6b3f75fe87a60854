"""The out-of-distribution score (medsymmflow.ood) on a field whose answer is known, and the AUROC functions (metrics.ood)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsymmflow.codes import ClassCodebook
from medsymmflow.metrics import max_softmax_uncertainty, ood_auroc, ood_aurocs
from medsymmflow.ood import DEFAULT_OOD_TIMES, VelocityErrorScorer

SIGMA_MIN = 1e-4
A = 1.0 - SIGMA_MIN


def _pattern(size: int = 8) -> torch.Tensor:
    """The one image of the toy training distribution: a bright disc on a dark background, (1, 1, H, W)."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = ((yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2 <= (size / 3) ** 2).float()
    return (2 * disc - 1)[None, None]


class PointMassField(torch.nn.Module):
    """The exact image velocity of the path when every training image is ``x0``: E[x0 - a xi | x_t] with xi = (x_t - t x0) / (1 - a t)."""

    def __init__(self, x0: torch.Tensor) -> None:
        super().__init__()
        self.x0 = x0

    def forward(self, x_t: torch.Tensor, y_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tt = t.reshape(-1, 1, 1, 1)
        noise = (x_t - tt * self.x0) / (1 - A * tt)
        return self.x0 - A * noise, torch.zeros_like(y_t)


def _images(n: int, seed: int, shift: float = 0.0, noise: float = 0.05) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x0 = _pattern()
    return (x0 + shift * torch.flip(x0, dims=(2,)).roll(3, dims=3) + noise * torch.randn((n,) + x0.shape[1:], generator=g)).clamp(-1, 1)


def _score(images: torch.Tensor, seed: int = 0, times=DEFAULT_OOD_TIMES) -> np.ndarray:
    scorer = VelocityErrorScorer(ClassCodebook.onehot(2), times=times, sigma_min=SIGMA_MIN)
    labels = torch.zeros(images.shape[0], dtype=torch.long)
    return scorer(images, PointMassField(_pattern()), labels, generator=torch.Generator().manual_seed(seed)).numpy()


def test_velocity_error_is_zero_on_the_training_image_and_separates_shifted_images() -> None:
    # the field is exact for x0: no error whatever the noise; for x it is off by (x0 - x) / (1 - a t)
    exact = _score(_pattern().repeat(4, 1, 1, 1))
    assert exact.shape == (4,) and np.all(exact < 1e-8)
    in_a, in_b = _score(_images(200, seed=1), seed=10), _score(_images(200, seed=2), seed=11)
    shifted = _score(_images(200, seed=3, shift=0.5), seed=12)
    assert ood_auroc(in_a, shifted) > 0.99
    # two draws of the same distribution: chance (the null AUROC's standard deviation is ~0.03 here)
    assert 0.4 < ood_auroc(in_a, in_b) < 0.6
    # the error of one time equals the closed form ||x - x0||^2 / (1 - a t)^2 per pixel
    x = _images(3, seed=4, shift=0.5)
    one = _score(x, times=(0.5,))
    expected = ((x - _pattern()) ** 2).flatten(1).mean(1).numpy() / (1 - A * 0.5) ** 2
    np.testing.assert_allclose(one, expected, rtol=1e-4)


def test_velocity_error_is_seeded_and_checks_its_inputs() -> None:
    images = _images(5, seed=0, shift=0.3, noise=0.2)
    scorer = VelocityErrorScorer(ClassCodebook.onehot(3), sigma_min=SIGMA_MIN)

    def noisy_field(x_t: torch.Tensor, y_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return 0.5 * x_t, torch.zeros_like(y_t)  # depends on the noise drawn, so the seed matters

    labels = torch.tensor([0, 1, 2, 0, 1])
    first = scorer(images, noisy_field, labels, generator=torch.Generator().manual_seed(7))
    again = scorer(images, noisy_field, labels, generator=torch.Generator().manual_seed(7))
    other = scorer(images, noisy_field, labels, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)
    with pytest.raises(ValueError, match="5 images but 4 labels"):
        scorer(images, noisy_field, labels[:4])
    with pytest.raises(ValueError, match=r"times must lie in \[0, 1\]"):
        VelocityErrorScorer(ClassCodebook.onehot(3), times=(0.5, 1.5))
    with pytest.raises(ValueError, match="at least one time"):
        VelocityErrorScorer(ClassCodebook.onehot(3), times=())
    with pytest.raises(ValueError, match="unknown autocast"):
        VelocityErrorScorer(ClassCodebook.onehot(3), autocast="fp8")


def test_ood_auroc_perfect_reversed_chance_and_ties() -> None:
    low, high = np.arange(10.0), np.arange(10.0) + 100
    assert ood_auroc(low, high) == 1.0 and ood_auroc(high, low) == 0.0
    assert ood_auroc(np.ones(5), np.ones(7)) == 0.5  # all tied: chance
    assert ood_auroc(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 2.0])) == pytest.approx(0.875)
    both = ood_aurocs({"a": low, "b": high}, {"a": high, "b": low})
    assert both == {"a": 1.0, "b": 0.0}
    with pytest.raises(ValueError, match="scores differ"):
        ood_aurocs({"a": low}, {"b": high})
    with pytest.raises(ValueError, match="NaN"):
        ood_auroc(np.array([0.0, np.nan]), high)
    with pytest.raises(ValueError, match="empty"):
        ood_auroc(np.array([]), high)


def test_max_softmax_uncertainty() -> None:
    probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]])
    np.testing.assert_allclose(max_softmax_uncertainty(probs), [0.1, 0.5, 0.2])
    with pytest.raises(ValueError, match=r"shape \(N, K\)"):
        max_softmax_uncertainty(np.array([0.9, 0.1]))
