"""The maths of the symmetric path, the loss, the time schedules and the ODE solver."""

from __future__ import annotations

import math

import pytest
import torch

from medsymmflow.codes import ClassCodebook
from medsymmflow.flow import (
    ADAPTIVE_METHODS,
    METHODS,
    SymmetricPath,
    SymmFlowLoss,
    SymmFlowSolver,
    TimeSampler,
    split_times,
    time_grid,
)


@pytest.mark.parametrize("sigma", [0.0, 1e-4, 0.1])
def test_path_endpoints_and_targets(sigma: float) -> None:
    path = SymmetricPath(sigma_min=sigma)
    x, y = torch.randn(4, 1, 5, 5), torch.randn(4, 3, 5, 5)
    nx, ny = torch.randn_like(x), torch.randn_like(y)
    s0 = path.sample(x, y, torch.zeros(4), nx, ny)
    s1 = path.sample(x, y, torch.ones(4), nx, ny)
    torch.testing.assert_close(s0.x_t, nx)  # t=0: image is noise
    torch.testing.assert_close(s0.y_t, y)  # t=0: label is clean
    torch.testing.assert_close(s1.x_t, x + sigma * nx)
    torch.testing.assert_close(s1.y_t, ny + sigma * y)
    torch.testing.assert_close(s0.dx_t, x - (1 - sigma) * nx)
    torch.testing.assert_close(s0.dy_t, ny - (1 - sigma) * y)
    # The target is the time derivative of the interpolant (finite difference check).
    t, h = torch.full((4,), 0.3), 1e-3
    xa, ya = path.interpolate(x, y, nx, ny, t + h)
    xb, yb = path.interpolate(x, y, nx, ny, t - h)
    torch.testing.assert_close((xa - xb) / (2 * h), s0.dx_t, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close((ya - yb) / (2 * h), s0.dy_t, atol=1e-3, rtol=1e-3)


def test_endpoint_mean_targets_average_out_the_unseen_noise() -> None:
    sigma = 1e-4
    mean_path, plain = SymmetricPath(sigma, endpoint_targets="mean"), SymmetricPath(sigma)
    x, y = torch.randn(4, 1, 5, 5), torch.randn(4, 3, 5, 5)
    nx, ny = torch.randn_like(x), torch.randn_like(y)
    t = torch.tensor([1.0, 0.0, 0.4, 1.0])
    m, p = mean_path.sample(x, y, t, nx, ny), plain.sample(x, y, t, nx, ny)
    # inputs are untouched; only the targets of the half whose noise is hidden change
    torch.testing.assert_close(m.x_t, p.x_t)
    torch.testing.assert_close(m.y_t, p.y_t)
    torch.testing.assert_close(m.dx_t[[0, 3]], x[[0, 3]])  # t=1: image noise unseen, E[x - a xi_x] = x
    torch.testing.assert_close(m.dy_t[[0, 3]], p.dy_t[[0, 3]])  # label noise is the input there
    torch.testing.assert_close(m.dy_t[1], -(1 - sigma) * y[1])  # t=0: label noise unseen
    torch.testing.assert_close(m.dx_t[1], p.dx_t[1])
    torch.testing.assert_close(m.dx_t[2], p.dx_t[2])
    torch.testing.assert_close(m.dy_t[2], p.dy_t[2])
    # the mean target is the average of the sampled targets over many noise draws
    draws = torch.stack([plain.sample(x, y, t).dx_t[0] for _ in range(4000)])
    torch.testing.assert_close(draws.mean(0), m.dx_t[0], atol=0.08, rtol=0)
    with pytest.raises(ValueError, match="endpoint_targets"):
        SymmetricPath(endpoint_targets="expected")


def test_recover_inverts_interpolation() -> None:
    path = SymmetricPath(1e-4)
    x, y = torch.randn(3, 2, 4, 4), torch.randn(3, 3, 4, 4)
    s = path.sample(x, y, torch.tensor([0.2, 0.5, 0.9]))
    rx, ry = path.recover(s.x_t, s.y_t, s.dx_t, s.dy_t, s.t)
    torch.testing.assert_close(rx, x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ry, y, atol=1e-5, rtol=1e-5)


def test_path_rejects_bad_shapes() -> None:
    path = SymmetricPath()
    with pytest.raises(ValueError, match="batch sizes differ"):
        path.sample(torch.zeros(2, 1, 3, 3), torch.zeros(3, 1, 3, 3), torch.zeros(2))
    with pytest.raises(ValueError, match="t must be"):
        path.sample(torch.zeros(2, 1, 3, 3), torch.zeros(2, 1, 3, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="sigma_min"):
        SymmetricPath(sigma_min=1.0)


def test_loss_weights_halves() -> None:
    vx, vy = torch.ones(2, 1, 2, 2), torch.zeros(2, 3, 2, 2)
    tx, ty = torch.zeros_like(vx), torch.full_like(vy, 2.0)
    assert SymmFlowLoss(x_weight=1.0)(vx, vy, tx, ty).item() == pytest.approx(1.0)
    assert SymmFlowLoss(x_weight=0.0)(vx, vy, tx, ty).item() == pytest.approx(4.0)
    assert SymmFlowLoss(x_weight=0.7)(vx, vy, tx, ty).item() == pytest.approx(0.7 + 0.3 * 4)
    assert SymmFlowLoss(reduction="none")(vx, vy, tx, ty).shape == (2,)
    with pytest.raises(ValueError, match="shapes differ"):
        SymmFlowLoss()(vx, vy, ty, tx)


def test_time_schedules() -> None:
    g = torch.Generator().manual_seed(0)
    u = TimeSampler("uniform")(20000, generator=g)
    assert 0 <= u.min() and u.max() <= 1 and abs(u.mean().item() - 0.5) < 0.01
    ln = TimeSampler("logit_normal", loc=1.0)(20000, generator=g)
    assert ln.mean() > 0.65  # leans toward t=1
    pw = TimeSampler("power", skew=1.0)(20000, generator=g)
    assert abs(pw.mean().item() - 2 / 3) < 0.01  # u ** (1/2) has mean 2/3
    mix = TimeSampler("mixture", p_one=0.25)(20000, generator=g)
    assert abs((mix == 1).float().mean().item() - 0.25) < 0.02
    with pytest.raises(ValueError, match="unknown time schedule"):
        TimeSampler("cosine")


def _endpoints(batch: int = 5) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(batch, 1, 4, 4, generator=gen), torch.randn(batch, 3, 4, 4, generator=gen)
    return x, y, torch.randn(x.shape, generator=gen), torch.randn(y.shape, generator=gen)


@pytest.mark.parametrize("sigma", [0.0, 1e-4, 0.1])
def test_decoupled_path_moves_each_half_with_its_own_time(sigma: float) -> None:
    path = SymmetricPath(sigma_min=sigma)
    x, y, nx, ny = _endpoints()
    u = 0.35
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, u], [u, 0.0], [u, 1.0]])
    s = path.sample(x, y, t, nx, ny)
    a = 1 - sigma
    close = torch.testing.assert_close
    close(s.x_t[0], x[0] + sigma * nx[0])  # (1, 0): clean image (up to s), clean label
    close(s.y_t[0], y[0])
    close(s.x_t[1], nx[1])  # (0, 1): noise on both halves
    close(s.y_t[1], ny[1] + sigma * y[1])
    close(s.x_t[2], x[2] + sigma * nx[2])  # (1, u): the classifier's clean image, the label on its way
    close(s.y_t[2], (1 - a * u) * y[2] + u * ny[2])
    close(s.x_t[3], (1 - a * u) * nx[3] + u * x[3])  # (u, 0): the generator's clean label
    close(s.y_t[3], y[3])
    close(s.y_t[4], ny[4] + sigma * y[4])  # (u, 1): the label is noise (unconditional)
    # each half is the coupled path at its own time; the targets do not depend on time
    coupled_x = path.sample(x, y, t[:, 0], nx, ny)
    coupled_y = path.sample(x, y, t[:, 1], nx, ny)
    assert torch.equal(s.x_t, coupled_x.x_t) and torch.equal(s.y_t, coupled_y.y_t)
    close(s.dx_t, x - a * nx)
    close(s.dy_t, ny - a * y)
    assert s.t is t or torch.equal(s.t, t)
    # the target is the derivative of each half in its own time
    h, base = 1e-3, torch.tensor([[0.4, 0.6]] * 5)
    dx = torch.tensor([[h, 0.0]] * 5)
    xa, ya = path.interpolate(x, y, nx, ny, base + dx)
    xb, yb = path.interpolate(x, y, nx, ny, base - dx)
    close((xa - xb) / (2 * h), s.dx_t, atol=1e-3, rtol=1e-3)
    assert torch.equal(ya, yb)  # moving t_x leaves the label alone
    xa, ya = path.interpolate(x, y, nx, ny, base + dx.flip(1))
    xb, yb = path.interpolate(x, y, nx, ny, base - dx.flip(1))
    close((ya - yb) / (2 * h), s.dy_t, atol=1e-3, rtol=1e-3)
    assert torch.equal(xa, xb)
    # recover inverts the decoupled interpolation too
    rx, ry = path.recover(s.x_t, s.y_t, s.dx_t, s.dy_t, t)
    close(rx, x, atol=1e-4, rtol=1e-4)
    close(ry, y, atol=1e-4, rtol=1e-4)


def test_decoupled_endpoint_means_apply_per_half() -> None:
    sigma = 1e-4
    path = SymmetricPath(sigma, endpoint_targets="mean")
    x, y, nx, ny = _endpoints()
    t = torch.tensor([[1.0, 0.5], [0.5, 0.0], [1.0, 0.0], [0.3, 1.0], [0.0, 1.0]])
    s = path.sample(x, y, t, nx, ny)
    a = 1 - sigma
    x_mean, y_mean = (t[:, 0] == 1).view(-1, 1, 1, 1), (t[:, 1] == 0).view(-1, 1, 1, 1)
    assert torch.equal(s.dx_t, torch.where(x_mean, x, x - a * nx))  # rows 0, 2: t_x = 1
    assert torch.equal(s.dy_t, torch.where(y_mean, -a * y, ny - a * y))  # rows 1, 2: t_y = 0
    assert torch.equal(s.dx_t[1], x[1] - a * nx[1]) and torch.equal(s.dy_t[0], ny[0] - a * y[0])


@pytest.mark.parametrize("endpoint_targets", ["sample", "mean"])
def test_coupled_times_give_the_paper_paths_numbers_exactly(endpoint_targets: str) -> None:
    sigma = 1e-4
    path = SymmetricPath(sigma, endpoint_targets=endpoint_targets)
    x, y, nx, ny = _endpoints()
    t = torch.tensor([0.0, 0.25, 0.5, 1.0, 0.9])
    s = path.sample(x, y, t, nx, ny)
    # the formulas as they stood before decoupled times, written out
    a, tb = 1.0 - sigma, t.view(-1, 1, 1, 1)
    dx, dy = x - a * nx, ny - a * y
    if endpoint_targets == "mean":
        dx, dy = torch.where(tb == 1, x, dx), torch.where(tb == 0, -a * y, dy)
    assert torch.equal(s.x_t, (1.0 - a * tb) * nx + tb * x) and torch.equal(s.y_t, (1.0 - a * tb) * y + tb * ny)
    assert torch.equal(s.dx_t, dx) and torch.equal(s.dy_t, dy) and s.t.shape == (5,)
    rx, ry = path.recover(s.x_t, s.y_t, s.dx_t, s.dy_t, t)
    assert torch.equal(rx, (s.x_t + (1.0 - a * tb) * s.dx_t / a) / (tb + (1.0 - a * tb) / a))
    assert torch.equal(ry, s.y_t - tb * s.dy_t)
    # a (B, 2) time with equal columns is the same path
    same = path.sample(x, y, torch.stack([t, t], 1), nx, ny)
    assert all(torch.equal(getattr(same, k), getattr(s, k)) for k in ("x_t", "y_t", "dx_t", "dy_t"))


def test_path_and_split_times_refuse_other_time_shapes() -> None:
    path = SymmetricPath()
    x, y, nx, ny = _endpoints()
    for bad in (torch.zeros(5, 3), torch.zeros(4, 2), torch.zeros(5, 2, 1)):
        with pytest.raises(ValueError, match=r"\(5, 2\) \(decoupled t_x, t_y\)"):
            path.sample(x, y, bad, nx, ny)
    with pytest.raises(ValueError, match="shape \\(B,\\) \\(coupled\\) or \\(B, 2\\)"):
        split_times(torch.zeros(2, 2, 2))
    t = torch.rand(3)
    assert all(c is t for c in split_times(t))


def test_decoupled_rows_take_the_three_modes_at_their_rates() -> None:
    n = 60000
    sampler = TimeSampler("uniform", decoupled=0.6, decoupled_modes=(5, 3, 2))
    assert sampler.decoupled_modes == (0.5, 0.3, 0.2)  # weights, normalised
    t = sampler(n, generator=torch.Generator().manual_seed(0))
    assert t.shape == (n, 2) and t.dtype == torch.float32 and 0 <= t.min() and t.max() <= 1
    t_x, t_y = t[:, 0], t[:, 1]
    coupled = t_x == t_y
    generate = (t_y == 0) & ~coupled
    classify = (t_x == 1) & ~coupled
    unconditional = (t_y == 1) & ~coupled
    rates = [m.float().mean().item() for m in (coupled, generate, classify, unconditional)]
    assert (coupled | generate | classify | unconditional).all()
    for rate, expected in zip(rates, (0.4, 0.6 * 0.5, 0.6 * 0.3, 0.6 * 0.2)):
        assert abs(rate - expected) < 0.01, (rates, expected)
    # the free time of each mode is U(0, 1)
    for free in (t_x[generate], t_y[classify], t_x[unconditional]):
        assert abs(free.mean().item() - 0.5) < 0.02 and free.min() < 0.05 and free.max() > 0.95
    # a mode of weight 0 never appears; decoupled = 1 leaves no coupled row
    t = TimeSampler(decoupled=1.0, decoupled_modes=(0, 1, 0))(1000, generator=torch.Generator().manual_seed(1))
    assert (t[:, 0] == 1).all() and (t[:, 1] < 1).all()


@pytest.mark.parametrize(
    "kwargs", [{}, {"schedule": "logit_normal", "loc": 0.5}, {"schedule": "power", "skew": 1.0}, {"schedule": "mixture", "p_one": 0.5}]
)
def test_decoupled_zero_keeps_the_coupled_numbers(kwargs: dict) -> None:
    n = 257
    got = TimeSampler(**kwargs)(n, generator=torch.Generator().manual_seed(7))
    # the draws as they stood before decoupled times, written out
    g = torch.Generator().manual_seed(7)
    u = torch.rand(n, generator=g)
    schedule = kwargs.get("schedule", "uniform")
    if schedule == "logit_normal":
        want = torch.sigmoid(0.5 + 1.0 * torch.randn(n, generator=g))
    elif schedule == "power":
        want = u.pow(1.0 / 2.0)
    elif schedule == "mixture":
        want = torch.where(torch.rand(n, generator=g) < 0.5, torch.ones_like(u), u)
    else:
        want = u
    assert got.shape == (n,) and torch.equal(got, want)
    # decoupled > 0 keeps those numbers in the coupled rows
    mixed = TimeSampler(**kwargs, decoupled=0.5)(n, generator=torch.Generator().manual_seed(7))
    rows = mixed[:, 0] == mixed[:, 1]
    assert 0.3 < rows.float().mean() < 0.8 and torch.equal(mixed[rows, 0], want[rows])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"decoupled": 1.5}, "decoupled .* must be a number in \\[0, 1\\], got 1.5"),
        ({"decoupled": -0.1}, "decoupled .* must be a number in \\[0, 1\\]"),
        ({"decoupled": True}, "decoupled .* must be a number in \\[0, 1\\], got True"),
        ({"decoupled": "0.5"}, "decoupled .* must be a number"),
        ({"decoupled_modes": (1, 1)}, "decoupled_modes must be three weights >= 0 with a positive sum \\(generate, classify, unconditional\\)"),
        ({"decoupled_modes": (1, -1, 1)}, "decoupled_modes must be three weights"),
        ({"decoupled_modes": (0, 0, 0)}, "decoupled_modes must be three weights"),
        ({"decoupled_modes": (float("nan"), 1, 1)}, "decoupled_modes must be three weights"),
        ({"decoupled_modes": "abc"}, "decoupled_modes must be three weights"),
    ],
)
def test_time_sampler_refuses_bad_decoupled_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TimeSampler(**kwargs)


def test_euler_exact_on_constant_field_both_directions() -> None:
    solver = SymmFlowSolver(lambda x, y, t: (torch.full_like(x, 2.0), torch.full_like(y, -1.0)))
    x0, y0 = torch.zeros(2, 1, 3, 3), torch.zeros(2, 3, 3, 3)
    fwd = solver.sample(x0, y0, t_start=0.0, t_end=1.0, steps=4)
    torch.testing.assert_close(fwd.x, torch.full_like(x0, 2.0))
    torch.testing.assert_close(fwd.y, torch.full_like(y0, -1.0))
    assert fwd.nfe == 4
    back = solver.sample(fwd.x, fwd.y, t_start=1.0, t_end=0.0, steps=1)
    torch.testing.assert_close(back.x, x0)
    torch.testing.assert_close(back.y, y0)


def test_heun_exact_on_field_linear_in_time_and_second_order() -> None:
    # dx/dt = t, dy/dt = 3 t^2 -> x(1) = 1/2, y(1) = 1 (Heun is exact for the first, 2nd order for the second)
    solver = SymmFlowSolver(lambda x, y, t: (t.view(-1, 1).expand_as(x), 3 * t.view(-1, 1).expand_as(y) ** 2))
    x0, y0 = torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
    out = solver.sample(x0, y0, 0.0, 1.0, steps=3, method="heun")
    assert out.x.item() == pytest.approx(0.5, abs=1e-12)
    assert out.nfe == 6
    errs = [abs(solver.sample(x0, y0, 0.0, 1.0, steps=n, method=m).y.item() - 1.0) for m in ("heun", "midpoint") for n in (4, 8)]
    assert errs[0] / errs[1] == pytest.approx(4.0, rel=0.05)  # error quarters when steps double
    assert errs[2] / errs[3] == pytest.approx(4.0, rel=0.05)
    euler = [abs(solver.sample(x0, y0, 0.0, 1.0, steps=n).y.item() - 1.0) for n in (8, 16)]
    assert euler[0] / euler[1] == pytest.approx(2.0, rel=0.1)


def test_adaptive_dopri5_on_exponential() -> None:
    solver = SymmFlowSolver(lambda x, y, t: (-x, 2 * y))
    x0, y0 = torch.ones(2, 1, dtype=torch.float64), torch.ones(2, 1, dtype=torch.float64)
    out = solver.sample(x0, y0, 0.0, 1.0, method="dopri5", return_intermediates=True)
    assert out.x[0].item() == pytest.approx(math.exp(-1), rel=1e-5)
    assert out.y[0].item() == pytest.approx(math.exp(2), rel=1e-5)
    assert out.nfe > 2 and out.trajectory_x.shape == (2, 2, 1)


def test_rk4_is_fixed_step_whatever_the_tolerances() -> None:
    # dx/dt = x: one 4th-order Runge-Kutta step multiplies by the degree-4 Taylor polynomial of exp(h)
    solver = SymmFlowSolver(lambda x, y, t: (x, -y))
    x0, y0 = torch.ones(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64)
    h = 0.5
    step = 1 + h + h**2 / 2 + h**3 / 6 + h**4 / 24
    for tol in (1e-2, 1e-9):  # an adaptive method would change its steps with the tolerance
        out = solver.sample(x0, y0, 0.0, 1.0, steps=2, method="rk4", atol=tol, rtol=tol)
        assert out.x.item() == pytest.approx(step**2, rel=1e-12)
        assert out.nfe == 8  # four evaluations per step, two steps
    assert "rk4" in METHODS and "rk4" not in ADAPTIVE_METHODS


def test_trajectory_and_errors() -> None:
    solver = SymmFlowSolver(lambda x, y, t: (x * 0, y * 0 + 1))
    out = solver.sample(torch.zeros(1, 1), torch.zeros(1, 1), 1.0, 0.0, steps=5, return_intermediates=True)
    assert out.trajectory_y.shape == (6, 1, 1)
    torch.testing.assert_close(out.trajectory_y[:, 0, 0], torch.linspace(0, -1, 6))
    with pytest.raises(ValueError, match="unknown ODE method"):
        solver.sample(torch.zeros(1, 1), torch.zeros(1, 1), method="rk45")
    with pytest.raises(ValueError, match="NaN"):
        solver.sample(torch.full((1, 1), float("nan")), torch.zeros(1, 1))
    with pytest.raises(ValueError, match="steps"):
        time_grid(1.0, 0.0, 0)
    bad = SymmFlowSolver(lambda x, y, t: (x, y[:, :1]))
    with pytest.raises(ValueError, match="velocity returned shapes"):
        bad.sample(torch.zeros(1, 1), torch.zeros(1, 3))


def test_one_euler_step_with_perfect_velocity_recovers_the_code() -> None:
    """The oracle field of the conditional path maps (x, xi_y) at t=1 to the exact code in one step."""
    path = SymmetricPath(1e-4)
    cb = ClassCodebook.rgb(8)
    labels = torch.arange(8)
    y = cb.code_mask(labels, (4, 4))
    x = torch.randn(8, 1, 4, 4)
    a = 1 - path.sigma_min

    def oracle(x_t: torch.Tensor, y_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tt = t.view(-1, 1, 1, 1)
        xi_y = (y_t - (1 - a * tt) * y) / tt
        return torch.zeros_like(x_t), xi_y - a * y

    noise = torch.randn_like(y)
    _, y1 = path.interpolate(x, y, torch.randn_like(x), noise, torch.ones(8))
    out = SymmFlowSolver(oracle).sample(x, y1, 1.0, 0.0, steps=1)
    torch.testing.assert_close(out.y, y, atol=1e-5, rtol=1e-5)
    assert torch.equal(cb.decode(out.y).labels, labels)


# ----------------------------------------------------------------------------- decoupled times and guidance
class _Recorder:
    """A velocity field that records the times it saw; ``field(x, y, t)`` gives the velocities."""

    def __init__(self, field) -> None:
        self.field, self.times, self.labels = field, [], []

    def __call__(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.times.append(t.clone())
        self.labels.append(y.clone())
        return self.field(x, y, t)


def _column(t: torch.Tensor, k: int, like: torch.Tensor) -> torch.Tensor:
    return t[:, k].reshape((-1,) + (1,) * (like.ndim - 1)).expand_as(like)


@pytest.mark.parametrize("method", ["euler", "heun", "midpoint", "rk4"])
def test_hold_y_integrates_x_alone_at_a_clean_label(method: str) -> None:
    # dx/dt = y + t_x, and y "would" move with dy/dt = 1: held, it stays, and x(1) = x0 + y + 1/2
    # (exact for Heun / midpoint / rk4, linear in t; Euler with 4 steps sums the left times: x0 + y + 3/8)
    field = _Recorder(lambda x, y, t: (y.mean(1, keepdim=True) + _column(t, 0, x), torch.ones_like(y)))
    x0 = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    y0 = torch.randn(3, 2, 2, 2, dtype=torch.float64)
    out = SymmFlowSolver(field).sample(x0, y0, t_start=0.0, t_end=1.0, steps=4, method=method, hold="y")
    assert out.y is y0  # returned unchanged
    expected = x0 + y0.mean(1, keepdim=True) + (0.375 if method == "euler" else 0.5)
    torch.testing.assert_close(out.x, expected, rtol=0, atol=1e-12)
    seen = torch.stack(field.times)
    assert seen.shape[1:] == (3, 2) and torch.all(seen[:, :, 1] == 0.0)  # t = (t_x, 0) at every evaluation
    if method == "euler":
        assert seen[:, 0, 0].tolist() == [0.0, 0.25, 0.5, 0.75]
    if method == "heun":
        assert seen[:, 0, 0].tolist() == [0.0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0]
    assert all(torch.equal(y, y0) for y in field.labels)  # also at the intermediate stages
    assert out.nfe == {"euler": 4, "heun": 8, "midpoint": 8, "rk4": 16}[method]


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_hold_x_integrates_the_label_at_a_clean_image(method: str) -> None:
    # dy/dt = -x (x held at the image): y(0) = y(1) + x, reached exactly from t_y = 1
    field = _Recorder(lambda x, y, t: (torch.ones_like(x), -x.expand_as(y) * (1 + 0 * _column(t, 1, y))))
    x0, y0 = torch.randn(2, 1, 3, 3), torch.randn(2, 3, 3, 3)
    out = SymmFlowSolver(field).sample(x0, y0, t_start=1.0, t_end=0.0, steps=3, method=method, hold="x")
    assert out.x is x0
    torch.testing.assert_close(out.y, y0 + x0.expand_as(y0))
    seen = torch.stack(field.times)
    assert torch.all(seen[:, :, 0] == 1.0) and seen[0, 0, 1].item() == 1.0  # t = (1, t_y), t_y from 1
    assert seen[-1, 0, 1].item() == pytest.approx(0.0 if method == "heun" else 1 / 3)
    custom = _Recorder(field.field)
    SymmFlowSolver(custom).sample(x0, y0, 1.0, 0.0, steps=1, hold="x", held_time=0.5)
    assert custom.times[0][:, 0].tolist() == [0.5, 0.5]
    with pytest.raises(ValueError, match="unknown hold 'z'"):
        SymmFlowSolver(field).sample(x0, y0, hold="z")
    with pytest.raises(ValueError, match="held_time needs hold"):
        SymmFlowSolver(field).sample(x0, y0, held_time=1.0)
    with pytest.raises(ValueError, match=r"held_time must lie in \[0, 1\]"):
        SymmFlowSolver(field).sample(x0, y0, hold="x", held_time=2.0)


def _reference_coupled(velocity, x, y, t0, t1, steps, method):
    """The coupled fixed-step integration as the solver wrote it before decoupled times existed."""
    grid = torch.linspace(float(t0), float(t1), steps + 1, dtype=torch.float64)

    def ev(a, b, t):
        return velocity(a, b, torch.full((a.shape[0],), float(t), dtype=a.dtype))

    for s0, s1 in zip(grid[:-1].tolist(), grid[1:].tolist()):
        dt = s1 - s0
        k1x, k1y = ev(x, y, s0)
        if method == "euler":
            x, y = x + dt * k1x, y + dt * k1y
        elif method == "midpoint":
            k2x, k2y = ev(x + 0.5 * dt * k1x, y + 0.5 * dt * k1y, s0 + 0.5 * dt)
            x, y = x + dt * k2x, y + dt * k2y
        else:
            k2x, k2y = ev(x + dt * k1x, y + dt * k1y, s1)
            x, y = x + 0.5 * dt * (k1x + k2x), y + 0.5 * dt * (k1y + k2y)
    return x, y


@pytest.mark.parametrize("method", ["euler", "midpoint", "heun"])
def test_coupled_integration_is_bit_identical_to_the_paper_path(method: str) -> None:
    def field(x, y, t):
        assert t.shape == (x.shape[0],)  # coupled: one time per sample
        tt = t.view(-1, 1, 1, 1)
        return torch.sin(3 * x * tt) + y.mean(1, keepdim=True), torch.cos(y) * tt - x

    g = torch.Generator().manual_seed(3)
    x0, y0 = torch.randn(4, 1, 3, 3, generator=g), torch.randn(4, 3, 3, 3, generator=g)
    for t0, t1 in ((0.0, 1.0), (1.0, 0.0)):
        out = SymmFlowSolver(field).sample(x0, y0, t0, t1, steps=5, method=method)
        ref_x, ref_y = _reference_coupled(field, x0, y0, t0, t1, 5, method)
        assert torch.equal(out.x, ref_x) and torch.equal(out.y, ref_y)


def test_guided_velocity_is_the_conditional_field_at_scale_one() -> None:
    from medsymmflow.flow import GuidedVelocity

    field = _Recorder(lambda x, y, t: (x * y.mean(1, keepdim=True) + _column(t, 1, x), 2 * y))
    x, y, xi = torch.randn(3, 1, 2, 2), torch.randn(3, 2, 2, 2), torch.randn(3, 2, 2, 2)
    t = torch.stack([torch.full((3,), 0.3), torch.zeros(3)], dim=1)
    cond = field.field(x, y, t)
    guided = GuidedVelocity(field, xi, 1.0)
    out = guided(x, y, t)
    assert torch.equal(out[0], cond[0]) and torch.equal(out[1], cond[1])
    assert len(field.times) == 1 and guided.network_evaluations == 1
    # one Euler step per grid interval, one network evaluation each
    field.times.clear()
    res = SymmFlowSolver(guided).sample(x, y, 0.0, 1.0, steps=4, hold="y")
    assert len(field.times) == 4 and res.nfe == 4


def test_guided_velocity_extrapolates_from_the_unconditional_field() -> None:
    from medsymmflow.flow import GuidedVelocity, guidance_evaluations

    field = _Recorder(lambda x, y, t: (x * y.mean(1, keepdim=True) + _column(t, 1, x), 2 * y))
    x, y, xi = torch.randn(3, 1, 2, 2), torch.randn(3, 2, 2, 2), torch.randn(3, 2, 2, 2)
    t = torch.stack([torch.full((3,), 0.3), torch.zeros(3)], dim=1)
    cond = field.field(x, y, t)[0]
    uncond = field.field(x, xi, torch.stack([t[:, 0], torch.ones(3)], dim=1))[0]  # the label at t_y = 1 is noise
    field.times.clear()
    guided = GuidedVelocity(field, xi, 2.0)
    v_x, v_y = guided(x, y, t)
    torch.testing.assert_close(v_x, 2 * cond - uncond)
    torch.testing.assert_close(v_y, 2 * y)
    assert guided.network_evaluations == 2 and guidance_evaluations(1.0) == 1
    assert torch.equal(field.times[0][:, 0], torch.full((6,), 0.3)) and field.times[0][:, 1].tolist() == [0.0] * 3 + [1.0] * 3
    res = SymmFlowSolver(guided).sample(x, y, 0.0, 1.0, steps=3, method="heun", hold="y")
    assert res.nfe == 12  # two network evaluations per velocity call
    with pytest.raises(ValueError, match=r"decoupled times t of shape \(B, 2\)"):
        guided(x, y, torch.zeros(3))
    with pytest.raises(ValueError, match="guidance_scale must be a finite number >= 0"):
        GuidedVelocity(field, xi, -1.0)
