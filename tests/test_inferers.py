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
