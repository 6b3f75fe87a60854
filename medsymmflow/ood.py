"""Out-of-distribution score of a trained SymmFlow network: the image half's velocity-prediction error.

For an image ``x`` and the code ``y`` of its predicted class, :class:`VelocityErrorScorer` draws seeded
noise ``xi_x`` (and ``xi_y``), builds ``(x_t, y_t)`` on the symmetric path at a few fixed times ``t`` and
measures how far the network's image velocity is from the path's target::

    e(x) = mean_t mean_pixels (v_x(x_t, y_t, t) - (x - (1 - s) xi_x))^2

This is the denoising error flow matching minimises on the training data, so it stays near its training
level for images like them and grows for images unlike them: a denoising-likelihood proxy that needs no
extra model (a likelihood by ODE integration would cost hundreds of evaluations per image). Higher means
more out-of-distribution, like every uncertainty score of :mod:`medsymmflow.metrics.uncertainty`.

The coupled path is used (``x`` and ``y`` at the same ``t``); the label half is noised too, starting from
the clean code of the predicted class, so the network sees inputs of the kind it was trained on.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from monai.inferers import Inferer

from medsymmflow.codes import ClassCodebook
from medsymmflow.flow.path import SymmetricPath
from medsymmflow.precision import autocast_context, resolve_autocast

__all__ = ["DEFAULT_OOD_TIMES", "VelocityErrorScorer"]

# mid-path times: near t=0 the image is almost pure noise (large error for every image), at t=1 the
# target holds the image noise the network cannot see; between them the error reflects the image
DEFAULT_OOD_TIMES = (0.25, 0.5, 0.75)


def _check_times(times: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(t) for t in times)
    if not values:
        raise ValueError("times must hold at least one time in [0, 1]")
    bad = [t for t in values if not 0.0 <= t <= 1.0]
    if bad:
        raise ValueError(f"times must lie in [0, 1], got {bad}")
    return values


class VelocityErrorScorer(Inferer):
    """Images ``(B, C, *spatial)`` and their (predicted) classes -> velocity-prediction error ``(B,)``, higher = less like the training data.

    ``times``: the path times averaged over (one noise draw each); ``sigma_min``: the path's ``s`` (the
    bundles' ``training#sigma_min``); ``autocast`` runs the network in mixed precision (the error is
    taken in float32).
    """

    def __init__(
        self,
        codebook: ClassCodebook,
        times: Sequence[float] = DEFAULT_OOD_TIMES,
        sigma_min: float = 1e-4,
        autocast: str | torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(codebook, ClassCodebook):
            raise TypeError(f"codebook must be a ClassCodebook, got {type(codebook).__name__}")
        resolve_autocast(autocast)  # a bad setting fails here, not at the first batch
        self.codebook = codebook
        self.times = _check_times(times)
        self.path = SymmetricPath(sigma_min=sigma_min)
        self.autocast = autocast

    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        network: Callable[..., Any],
        labels: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Mean squared image-velocity error over ``self.times`` for ``inputs`` in [-1, 1], conditioned on ``labels`` ``(B,)``."""
        if not isinstance(inputs, torch.Tensor) or inputs.ndim < 3 or not inputs.is_floating_point():
            raise ValueError(f"inputs must be a float tensor (B, C, *spatial) in [-1, 1], got {getattr(inputs, 'shape', inputs)!r}")
        labels = torch.as_tensor(labels, device=inputs.device).reshape(-1)
        if labels.shape[0] != inputs.shape[0]:
            raise ValueError(f"{inputs.shape[0]} images but {labels.shape[0]} labels")
        x = inputs.float()
        y = self.codebook.code_mask(labels, tuple(x.shape[2:])).to(x.device)
        dtype = resolve_autocast(self.autocast, x.device)
        total = torch.zeros(x.shape[0], device=x.device)
        with torch.inference_mode():
            for t in self.times:
                draw = self.path.sample(
                    x, y, torch.full((x.shape[0],), t, device=x.device),
                    noise_x=torch.randn(x.shape, generator=generator, device=x.device),
                    noise_y=torch.randn(y.shape, generator=generator, device=x.device),
                )
                with autocast_context(x.device, dtype):
                    v_x, _ = network(draw.x_t, draw.y_t, draw.t)
                total += (v_x.float() - draw.dx_t).pow(2).flatten(1).mean(1)
        return total / len(self.times)
