"""SymmFlowMLP: a small joint velocity field for vector data (the paper's 2-D spiral toy, tests)."""

from __future__ import annotations

import torch
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch import nn

from medsymmflow.checks import positive_int

__all__ = ["SymmFlowMLP"]


class SymmFlowMLP(nn.Module):
    """MLP velocity field ``(x_t, y_t, t) -> (v_x, v_y)`` for ``x_t`` of shape (B, x_dim), ``y_t`` (B, y_dim).

    The input is ``cat([x_t, y_t, emb(t * time_scale)])`` with MONAI's sinusoidal embedding of
    width ``time_embedding_dim``; ``depth`` hidden layers of width ``hidden`` with SiLU follow.
    """

    def __init__(
        self,
        x_dim: int,
        y_dim: int,
        hidden: int = 128,
        depth: int = 3,
        time_embedding_dim: int = 32,
        time_scale: float = 1.0,
    ) -> None:
        super().__init__()
        x_dim, y_dim, hidden, depth = (positive_int(v, n) for v, n in ((x_dim, "x_dim"), (y_dim, "y_dim"), (hidden, "hidden"), (depth, "depth")))
        time_embedding_dim = positive_int(time_embedding_dim, "time_embedding_dim")
        if not float(time_scale) > 0.0:
            raise ValueError(f"time_scale must be positive, got {time_scale}")
        self.x_dim = x_dim
        self.y_dim = y_dim
        self.time_embedding_dim = time_embedding_dim
        self.time_scale = float(time_scale)
        layers: list[nn.Module] = []
        width = x_dim + y_dim + time_embedding_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, x_dim + y_dim))
        self.net = nn.Sequential(*layers)

    def forward(
        self, x_t: torch.Tensor, y_t: torch.Tensor, t: torch.Tensor | float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Velocities ``(v_x, v_y)`` with the shapes of ``(x_t, y_t)``; ``t`` is (B,) or a scalar."""
        for name, v, d in (("x_t", x_t, self.x_dim), ("y_t", y_t, self.y_dim)):
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"{name} must be a torch tensor, got {type(v).__name__}")
            if v.ndim != 2 or v.shape[1] != d:
                raise ValueError(f"{name} must have shape (B, {d}), got {tuple(v.shape)}")
        batch = x_t.shape[0]
        if y_t.shape[0] != batch:
            raise ValueError(f"x_t and y_t batch sizes differ: {batch} vs {y_t.shape[0]}")
        t = torch.as_tensor(t, device=x_t.device, dtype=x_t.dtype)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"t must be a scalar or have shape ({batch},), got {tuple(t.shape)}")
        emb = get_timestep_embedding(t * self.time_scale, self.time_embedding_dim).to(x_t.dtype)
        out = self.net(torch.cat([x_t, y_t, emb], dim=1))
        return out[:, : self.x_dim], out[:, self.x_dim :]
