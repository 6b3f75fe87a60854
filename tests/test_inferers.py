"""Inferers: draw averaging versus voting, and input checks."""

from __future__ import annotations

import pytest
import torch

from medsymmflow.codes import ClassCodebook
from medsymmflow.inferers import SymmFlowClassifier


def three_draw_network(targets: list[float], batch: int):
    """A velocity field whose one reverse Euler step lands draw r (rows r*B..) exactly on ``targets[r]``."""

    def velocity(x_t: torch.Tensor, y_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        goal = torch.tensor(targets).repeat_interleave(batch).view(-1, 1, 1, 1).expand_as(y_t)
        return torch.zeros_like(x_t), y_t - goal  # y_0 = y_1 - v_y = goal

    return velocity


def test_vote_follows_the_majority_where_the_mean_falls_between_classes() -> None:
    cb = ClassCodebook.gray(3)  # codes -1, 0, +1
    net = three_draw_network([-1.0, -1.0, 1.0], batch=2)
    x = torch.zeros(2, 1, 4, 4)
    mean = SymmFlowClassifier(cb, steps=1, num_draws=3, decision="mean")(x, net)
    vote = SymmFlowClassifier(cb, steps=1, num_draws=3, decision="vote")(x, net)
    assert mean.labels.tolist() == [1, 1]  # the mean code -1/3 is nearest to class 1
    assert vote.labels.tolist() == [0, 0]  # two of three draws say class 0
    assert vote.draw_distances.shape == (3, 2, 3)
    torch.testing.assert_close(vote.distances, vote.draw_distances.mean(0))
    torch.testing.assert_close(vote.uncertainty, vote.distances[:, 0])


def test_classifier_rejects_bad_input() -> None:
    cb = ClassCodebook.rgb(4)
    clf = SymmFlowClassifier(cb)
    net = three_draw_network([0.0], batch=1)
    with pytest.raises(ValueError, match="NaN"):
        clf(torch.full((1, 1, 4, 4), float("nan")), net)
    with pytest.raises(TypeError, match="floating point"):
        clf(torch.zeros(1, 1, 4, 4, dtype=torch.long), net)
    with pytest.raises(ValueError, match="unknown decision"):
        SymmFlowClassifier(cb, decision="median")
    with pytest.raises(ValueError, match="num_draws"):
        SymmFlowClassifier(cb, num_draws=0)


# ----------------------------------------------------------------------------- decoupled times and guidance
class _ToyField(torch.nn.Module):
    """A velocity field with one parameter that records the times and labels it saw.

    ``decoupled_time`` marks it as trained with decoupled times (what ``networks.is_decoupled`` reads);
    v_x = y's channel mean + t_x + offset, v_y = -x, so a label held clean stays visible in the image.
    """

    def __init__(self, decoupled: bool) -> None:
        super().__init__()
        self.offset = torch.nn.Parameter(torch.tensor(0.25))
        self.decoupled_time = decoupled
        self.times: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert (t.ndim == 2) == self.decoupled_time  # a coupled network cannot take (B, 2) times
        self.times.append(t.detach().clone())
        self.labels.append(y.detach().clone())
        t_x = (t[:, 0] if t.ndim == 2 else t).view(-1, *([1] * (x.ndim - 1)))
        v_x = y.mean(1, keepdim=True).expand_as(x) + t_x + self.offset
        return v_x, -x.mean(1, keepdim=True).expand_as(y)


def test_decoupled_classification_keeps_the_image_clean() -> None:
    cb = ClassCodebook.gray(3)
    net = _ToyField(decoupled=True)
    x = torch.full((2, 1, 4, 4), 0.5)
    noise = torch.zeros(2, 1, 4, 4)
    clf = SymmFlowClassifier(cb, steps=4, time_coupling="decoupled")
    code = clf.predict_code(x, net, noise=noise)
    seen = torch.stack(net.times)
    assert seen.shape == (4, 2, 2) and torch.all(seen[:, :, 0] == 1.0)  # t = (1, t_y)
    assert seen[:, 0, 1].tolist() == [1.0, 0.75, 0.5, 0.25]
    # v_y = -x with x held at the image: y(0) = noise + image exactly (coupled, x would drift and y differ)
    torch.testing.assert_close(code[0], noise + 0.5)
    net.times.clear()
    auto = SymmFlowClassifier(cb, steps=4)(x, net, noise=noise)  # auto follows the network
    assert torch.stack(net.times).shape == (4, 2, 2)
    torch.testing.assert_close(auto.code, code[0])
    # the same network on the coupled path sees one time per sample and a moving image
    coupled = _ToyField(decoupled=False)
    with torch.no_grad():
        coupled_code = SymmFlowClassifier(cb, steps=4)(x, coupled, noise=noise).code
    assert torch.stack(coupled.times).shape == (4, 2)
    assert not torch.allclose(coupled_code, code[0])


def test_time_coupling_is_checked_at_construction_and_against_the_network() -> None:
    from medsymmflow.inferers import SymmFlowSegmenter

    cb = ClassCodebook.gray(2)
    with pytest.raises(ValueError, match="unknown time_coupling 'both'"):
        SymmFlowClassifier(cb, time_coupling="both")
    with pytest.raises(ValueError, match="unknown time_coupling"):
        SymmFlowSegmenter(cb, time_coupling="both")
    seg = SymmFlowSegmenter(cb, steps=2, time_coupling="decoupled")
    with pytest.raises(ValueError, match="'decoupled' needs a network trained with decoupled times"):
        seg(torch.zeros(1, 1, 4, 4), _ToyField(decoupled=False))
    net = _ToyField(decoupled=True)
    seg(torch.zeros(1, 1, 4, 4), net)
    assert all(t.shape == (1, 2) and t[0, 0].item() == 1.0 for t in net.times)


def _dequantized(cb: ClassCodebook, labels: torch.Tensor) -> torch.Tensor:
    return cb.dequantized_code_mask(labels, (4, 4), 0.0, torch.device("cpu"))


def test_decoupled_sampler_holds_the_clean_label_and_one_evaluation_per_step() -> None:
    from medsymmflow.inferers import SymmFlowSampler

    cb = ClassCodebook.gray(2)
    labels = torch.tensor([0, 1])
    net = _ToyField(decoupled=True)
    out = SymmFlowSampler(cb, 1, steps=4, time_coupling="decoupled")(
        labels, net, spatial_size=(4, 4), generator=torch.Generator().manual_seed(0)
    )
    assert len(net.times) == 4  # w = 1: the conditional field alone
    seen = torch.stack(net.times)
    assert torch.all(seen[:, :, 1] == 0.0) and seen[:, 0, 0].tolist() == [0.0, 0.25, 0.5, 0.75]
    code = _dequantized(cb, labels)
    assert all(torch.equal(y, code) for y in net.labels)
    noise_x = torch.randn((2, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    # x(1) = noise + code + sum of the left times / 4 + offset
    torch.testing.assert_close(out, noise_x + code + 0.375 + 0.25)


def test_guided_sampler_extrapolates_away_from_the_unconditional_model() -> None:
    from medsymmflow.inferers import SymmFlowSampler

    cb = ClassCodebook.gray(2)
    labels = torch.tensor([0, 1, 1])
    net = _ToyField(decoupled=True)
    sampler = SymmFlowSampler(cb, 1, steps=1, guidance_scale=2.0)
    assert sampler.network_evaluations == 2
    out = sampler(labels, net, spatial_size=(4, 4), generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    noise_x = torch.randn((3, 1, 4, 4), generator=g)
    xi_y = torch.randn((3, 1, 4, 4), generator=g)  # drawn once, after the image noise
    code = _dequantized(cb, labels)
    # one Euler step at t_x = 0: v = 2 * cond - uncond, cond sees the code at t_y = 0, uncond the noise at t_y = 1
    torch.testing.assert_close(out, noise_x + 2 * (code + 0.25) - (xi_y + 0.25))
    assert net.times[0][:, 1].tolist() == [0.0] * 3 + [1.0] * 3
    with pytest.raises(ValueError, match="guidance_scale 2.0 needs the decoupled path .* time_coupling is 'coupled'"):
        SymmFlowSampler(cb, 1, time_coupling="coupled", guidance_scale=2.0)
    with pytest.raises(ValueError, match="guidance_scale 3.0 needs the decoupled path .* the network was trained coupled"):
        SymmFlowSampler(cb, 1, guidance_scale=3.0)(labels, _ToyField(decoupled=False), spatial_size=(4, 4))
    with pytest.raises(ValueError, match="guidance_scale must be a finite number >= 0"):
        SymmFlowSampler(cb, 1, guidance_scale=float("nan"))


def test_coupled_sampler_default_is_the_paper_path_bit_for_bit() -> None:
    from medsymmflow.flow import SymmFlowSolver
    from medsymmflow.inferers import SymmFlowSampler

    cb = ClassCodebook.gray(2)
    labels = torch.tensor([0, 1])
    net = _ToyField(decoupled=False)
    with torch.no_grad():
        default = SymmFlowSampler(cb, 1, steps=3, method="heun")(
            labels, net, spatial_size=(4, 4), generator=torch.Generator().manual_seed(2)
        )
        explicit = SymmFlowSampler(cb, 1, steps=3, method="heun", time_coupling="coupled")(
            labels, net, spatial_size=(4, 4), generator=torch.Generator().manual_seed(2)
        )
        # what the sampler ran before decoupled times: noise from the generator, coupled solver 0 -> 1
        noise_x = torch.randn((2, 1, 4, 4), generator=torch.Generator().manual_seed(2))
        before = SymmFlowSolver(net).sample(noise_x, _dequantized(cb, labels), 0.0, 1.0, steps=3, method="heun").x
    assert torch.equal(default, before) and torch.equal(explicit, before)
    assert all(t.shape == (2,) for t in net.times)
