"""Tests for medsymmflow.metrics: uncertainty scores, selective prediction and calibration."""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch

from medsymmflow.codes import ClassCodebook, majority_class
from medsymmflow.metrics import (
    UNCERTAINTY_SCORES,
    SelectivePredictionMetrics,
    accuracy_at_coverage,
    accuracy_rejection_curve,
    aurc,
    brier_score,
    calibration_metrics,
    class_entropy,
    combined_uncertainty,
    coverage_key,
    distance_nll,
    distance_uncertainty,
    draw_spread,
    eaurc,
    entropy_uncertainty,
    expected_calibration_error,
    fit_temperature,
    majority_vote,
    margin_uncertainty,
    negative_log_likelihood,
    optimal_aurc,
    reliability_diagram_data,
    risk_coverage_curve,
    score_distances,
    selective_metrics,
    softmax_from_distances,
    spread_uncertainty,
    uncertainty_score,
)

# 10 samples, 3 errors, in a scrambled order.
CORRECT_10 = np.array([1, 0, 1, 1, 0, 1, 1, 0, 1, 1], dtype=bool)


def _perfect_uncertainty(correct: np.ndarray) -> np.ndarray:
    """Every error more uncertain than every correct sample, distinct values."""
    return np.where(correct, 0.0, 10.0) + np.arange(correct.size) * 0.01


def _hand_aurc(ordered_correct: list[int]) -> Fraction:
    """AURC by the definition, in exact fractions: mean over k of errors among the first k divided by k."""
    errors, total = 0, Fraction(0)
    for k, c in enumerate(ordered_correct, start=1):
        errors += 1 - c
        total += Fraction(errors, k)
    return total / len(ordered_correct)


# ---------------------------------------------------------------------------- uncertainty scores
D_HAND = np.array([[0.1, 0.5, 0.9], [0.4, 0.3, 1.0], [0.2, 0.2, 1.0]])


def test_distance_is_the_decisions_own_distance_numpy_and_torch() -> None:
    out = distance_uncertainty(np.array([0.1, 0.3, 0.2]))
    assert out.dtype == np.float64 and out.shape == (3,)
    np.testing.assert_allclose(out, [0.1, 0.3, 0.2])
    np.testing.assert_allclose(distance_uncertainty(torch.tensor([0.1, 0.3, 0.2])), out, atol=1e-7)


def test_distance_matches_codebook_decoding() -> None:
    book = ClassCodebook.rgb(4)
    noise = 0.05 * torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    mask = book.code_mask(torch.tensor([0, 3]), (4, 4)) + noise
    dec = book.decode(mask)
    np.testing.assert_allclose(uncertainty_score("distance", distance=dec.uncertainty), dec.distances.min(1).values.double().numpy())


def test_margin_hand_values_and_tie_is_most_uncertain() -> None:
    out = margin_uncertainty(D_HAND)
    np.testing.assert_allclose(out, [-0.4, -0.1, 0.0], atol=1e-12)
    assert np.argmax(out) == 2  # two equally near codes: the least safe prediction


def test_draws_are_averaged_for_margin() -> None:
    draws = np.stack([D_HAND, D_HAND + np.array([0.2, 0.0, 0.0])])  # second draw pushes class 0 away
    np.testing.assert_allclose(margin_uncertainty(draws), [-0.3, -0.2, -0.1], atol=1e-12)


def _draws_hand() -> np.ndarray:
    """R=4 draws, N=4 samples, K=2 classes, built so each sample's spread is known by hand."""
    d = np.zeros((4, 4, 2))
    d[:, 0] = [[0.1, 1.0]] * 4  # all draws class 0, same distance -> 0
    d[:, 1] = [[0.1, 1.0], [0.3, 1.0], [0.1, 1.0], [0.3, 1.0]]  # agree
    d[:, 2] = [[0.2, 1.0], [0.2, 1.0], [0.2, 1.0], [1.0, 0.2]]  # 3 vs 1 vote
    d[:, 3] = [[1.0, 0.2], [0.2, 1.0], [1.0, 0.2], [0.2, 1.0]]  # 2 vs 2 vote
    return d


def test_draw_spread_on_hand_draws() -> None:
    np.testing.assert_array_equal(draw_spread(_draws_hand()), [0.0, 0.0, 0.25, 0.5])
    np.testing.assert_array_equal(majority_vote(_draws_hand())[:3], [0, 0, 0])


def test_majority_vote_ties_like_the_classifiers_vote() -> None:
    """A 2-2 tie goes to the class with the smaller mean distance (codes.majority_class), not the lower index."""
    d = np.zeros((4, 2, 3))
    d[:, 0] = [[0.9, 0.2, 2.0], [0.3, 0.9, 2.0], [0.9, 0.2, 2.0], [0.3, 0.9, 2.0]]  # class 1 nearer on average
    d[:, 1] = [[0.1, 0.9, 2.0]] * 4  # no tie
    np.testing.assert_array_equal(majority_vote(d), [1, 0])
    votes = torch.tensor([[2, 2, 0], [4, 0, 0]])
    np.testing.assert_array_equal(majority_vote(d), majority_class(votes, torch.from_numpy(d.mean(0))).numpy())
    # the spread counts the draws outside the majority: the same for either tied class
    np.testing.assert_array_equal(draw_spread(d), [0.5, 0.0])


def test_spread_orders_by_disagreement_then_distance() -> None:
    out = spread_uncertainty(spread=[0.5, 0.0, 0.25, 0.0, 0.25], distance=[0.1, 0.9, 0.3, 0.2, 0.05])
    # disagreement dominates; the distance only orders equal spreads, however large it is
    np.testing.assert_array_equal(out, [4, 1, 3, 0, 2])


def test_uncertainty_score_registry_dispatches_by_name() -> None:
    assert list(UNCERTAINTY_SCORES) == ["distance", "margin", "spread", "entropy", "combined"]
    assert {n: s.inputs for n, s in UNCERTAINTY_SCORES.items()} == {
        "distance": ("distance",), "margin": ("distances",), "spread": ("spread", "distance"),
        "entropy": ("scores", "distance"), "combined": ("distance", "distances", "scores"),
    }
    arrays = {"distance": D_HAND.min(1), "distances": D_HAND, "spread": np.array([0.0, 0.5, 0.0])}
    np.testing.assert_array_equal(uncertainty_score("spread", **arrays), spread_uncertainty(arrays["spread"], arrays["distance"]))
    np.testing.assert_array_equal(uncertainty_score("margin", **arrays), margin_uncertainty(D_HAND))
    with pytest.raises(ValueError, match="unknown uncertainty score 'variance'"):
        uncertainty_score("variance", distances=D_HAND)
    with pytest.raises(TypeError, match=r"missing \['distance'\]"):
        uncertainty_score("distance", dist=D_HAND)
    with pytest.raises(TypeError, match=r"missing \['spread'\]"):
        uncertainty_score("spread", distance=D_HAND.min(1), spread=None)


@pytest.mark.parametrize(
    "fn, bad, match",
    [
        (distance_uncertainty, np.array([0.1, np.nan]), "NaN or infinite"),
        (margin_uncertainty, np.array([[0.1, np.inf]]), "NaN or infinite"),
        (distance_uncertainty, np.zeros((0,)), "empty"),
        (distance_uncertainty, D_HAND, r"shape \(N,\)"),
        (margin_uncertainty, np.array([[0.1], [0.2]]), "at least 2 classes"),
        (distance_uncertainty, -D_HAND[:, 0], ">= 0"),
        (margin_uncertainty, -D_HAND, ">= 0"),
        (draw_spread, D_HAND, r"shape \(R, N, K\)"),
        (majority_vote, D_HAND, r"shape \(R, N, K\)"),
    ],
)
def test_uncertainty_bad_inputs(fn, bad, match) -> None:
    with pytest.raises(ValueError, match=match):
        fn(bad)


# ---------------------------------------------------------------------------- selective prediction
def test_aurc_small_hand_example() -> None:
    correct = [1, 0, 1, 1]
    unc = [0.1, 0.2, 0.3, 0.4]
    # risks at coverage 1/4..4/4: 0/1, 1/2, 1/3, 1/4
    cov, risk = risk_coverage_curve(correct, unc)
    np.testing.assert_allclose(cov, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0.0, 0.5, 1 / 3, 0.25])
    assert aurc(correct, unc) == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 4) / 4)


def test_perfect_ranking_has_zero_eaurc() -> None:
    unc = _perfect_uncertainty(CORRECT_10)
    assert eaurc(CORRECT_10, unc) == pytest.approx(0.0, abs=1e-15)
    assert aurc(CORRECT_10, unc) == pytest.approx(optimal_aurc(CORRECT_10))
    # optimal AURC by hand: 7 correct first, then errors at k = 8, 9, 10
    assert optimal_aurc(CORRECT_10) == pytest.approx(float((Fraction(1, 8) + Fraction(2, 9) + Fraction(3, 10)) / 10))


def test_reversed_ranking_gives_the_hand_computed_maximum_eaurc() -> None:
    unc = -_perfect_uncertainty(CORRECT_10)  # every error is the most certain
    worst = Fraction(3) + sum(Fraction(3, k) for k in range(4, 11))  # k=1..3 risk 1, then 3/k
    best = Fraction(1, 8) + Fraction(2, 9) + Fraction(3, 10)
    expected = float((worst - best) / 10)
    assert expected == pytest.approx(0.5639682539682539)
    assert eaurc(CORRECT_10, unc) == pytest.approx(expected, abs=1e-12)
    assert aurc(CORRECT_10, unc) == pytest.approx(float(_hand_aurc([0, 0, 0] + [1] * 7)))
    # no ranking of these predictions can do worse
    rng = np.random.default_rng(0)
    assert all(eaurc(CORRECT_10, rng.random(10)) <= expected + 1e-12 for _ in range(50))


def test_optimal_aurc_approaches_continuous_limit() -> None:
    e, n = 0.3, 100_000
    correct = np.arange(n) >= int(e * n)
    assert optimal_aurc(correct) == pytest.approx(e + (1 - e) * math.log(1 - e), abs=2e-4)


def test_accuracy_rejection_curve_hand_values() -> None:
    unc = _perfect_uncertainty(CORRECT_10)
    rates, acc = accuracy_rejection_curve(CORRECT_10, unc, [0.0, 0.1, 0.2, 0.3, 0.5])
    np.testing.assert_allclose(rates, [0.0, 0.1, 0.2, 0.3, 0.5])
    np.testing.assert_allclose(acc, [0.7, 7 / 9, 7 / 8, 1.0, 1.0])
    _, full = accuracy_rejection_curve(CORRECT_10, unc)
    assert full[0] == pytest.approx(0.7)  # rejecting nothing gives the plain accuracy
    assert np.all(np.diff(full) >= 0) and full[-1] == 1.0
    _, worst = accuracy_rejection_curve(CORRECT_10, -unc)
    assert np.all(np.diff(worst) <= 0) and worst[-1] == 0.0


def test_rejection_uses_floor_with_float_tolerance_and_stable_ties() -> None:
    n = 100
    correct = np.arange(n) < 71  # errors are the last 29 samples
    unc = np.arange(n, dtype=float)
    assert 0.29 * n < 29  # float rounding the tolerance must absorb
    assert accuracy_rejection_curve(correct, unc, [0.29])[1][0] == 1.0
    # floor: rejecting 15% of 10 drops 1 sample, not 2
    assert accuracy_rejection_curve([1] * 8 + [0, 0], np.arange(10.0), [0.15])[1][0] == pytest.approx(8 / 9)
    # equal uncertainty: input order is kept, so the later samples are rejected first
    assert accuracy_rejection_curve([1, 1, 0, 0], [0.5] * 4, [0.5])[1][0] == 1.0
    assert accuracy_rejection_curve([0, 0, 1, 1], [0.5] * 4, [0.5])[1][0] == 0.0


def test_accuracy_at_coverage_hand_values() -> None:
    correct = [1, 1, 1, 1, 1, 1, 1, 0, 1, 0]
    unc = np.arange(10.0)
    assert accuracy_at_coverage(correct, unc, 0.8) == pytest.approx(7 / 8)
    assert accuracy_at_coverage(correct, unc, 0.9) == pytest.approx(8 / 9)
    assert accuracy_at_coverage(correct, unc, 1.0) == pytest.approx(0.8)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="coverage"):
            accuracy_at_coverage(correct, unc, bad)
    assert coverage_key(0.8) == "acc@80" and coverage_key(0.975) == "acc@97.5"


def test_selective_metrics_bundle_matches_the_single_functions() -> None:
    rng = np.random.default_rng(1)
    correct = rng.random(50) < 0.7
    unc = rng.random(50)
    out = selective_metrics(correct, unc)
    assert out["accuracy"] == pytest.approx(correct.mean())
    assert out["aurc"] == pytest.approx(aurc(correct, unc))
    assert out["eaurc"] == pytest.approx(eaurc(correct, unc))
    assert out["acc@80"] == pytest.approx(accuracy_at_coverage(correct, unc, 0.8))
    assert out["acc@90"] == pytest.approx(accuracy_at_coverage(correct, unc, 0.9))
    assert out["rejection_rates"].shape == out["rejection_accuracies"].shape == (20,)


def test_selective_torchmetrics_wrapper_accumulates_batches() -> None:
    rng = np.random.default_rng(2)
    target = rng.integers(0, 3, 40)
    preds = np.where(rng.random(40) < 0.75, target, (target + 1) % 3)
    unc = rng.random(40)
    metric = SelectivePredictionMetrics()
    metric.update(torch.tensor(preds[:25]), torch.tensor(target[:25, None]), torch.tensor(unc[:25]))
    unc_f32 = torch.tensor(unc[25:], dtype=torch.float32)
    metric.update(torch.tensor(preds[25:]), torch.tensor(target[25:, None]), unc_f32)
    got = metric.compute()
    ref = selective_metrics(preds == target, unc)
    for key in ("accuracy", "aurc", "eaurc", "acc@80", "acc@90"):
        assert got[key].item() == pytest.approx(ref[key], abs=1e-6), key
    np.testing.assert_allclose(got["rejection_accuracies"].numpy(), ref["rejection_accuracies"], atol=1e-6)
    metric.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchmetrics' own compute-before-update notice
        with pytest.raises(ValueError, match="before any update"):
            metric.compute()
    with pytest.raises(ValueError, match=r"argmin\(1\)"):
        metric.update(torch.rand(4, 3), torch.zeros(4), torch.rand(4))
    with pytest.raises(ValueError, match="length mismatch"):
        metric.update(torch.zeros(4), torch.zeros(3), torch.rand(4))
    with pytest.raises(ValueError, match="NaN"):
        metric.update(torch.zeros(2), torch.zeros(2), torch.tensor([0.1, float("nan")]))


@pytest.mark.parametrize(
    "correct, unc, match",
    [
        ([1, 0, 1], [0.1, 0.2], "length mismatch"),
        ([1, 0], [0.1, float("nan")], "NaN or infinite"),
        ([1, 0], [0.1, float("inf")], "NaN or infinite"),
        ([], [], "empty"),
        ([1, 2], [0.1, 0.2], "0/1"),
        ([[1, 0]], [[0.1, 0.2]], "1-D"),
    ],
)
def test_selective_bad_inputs(correct, unc, match) -> None:
    for fn in (aurc, eaurc, risk_coverage_curve, accuracy_rejection_curve):
        with pytest.raises(ValueError, match=match):
            fn(correct, unc)


def test_rejection_rate_of_one_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        accuracy_rejection_curve([1, 0], [0.1, 0.2], [0.0, 1.0])


# ---------------------------------------------------------------------------- calibration
def _calibrated_toy(n: int, rng: np.random.Generator, overconfident: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """K=3 probabilities whose top class is right with probability = its confidence (or far less)."""
    k = 3
    conf = rng.uniform(0.4, 1.0, n)
    top = rng.integers(0, k, n)
    probs = np.full((n, k), 0.0)
    probs[:] = ((1 - conf) / (k - 1))[:, None]
    probs[np.arange(n), top] = conf
    p_right = 0.5 * conf if overconfident else conf
    right = rng.random(n) < p_right
    labels = np.where(right, top, (top + rng.integers(1, k, n)) % k)
    return probs, labels


def test_ece_of_a_calibrated_toy_is_near_zero_and_of_an_overconfident_one_large() -> None:
    rng = np.random.default_rng(0)
    probs, labels = _calibrated_toy(20_000, rng)
    assert expected_calibration_error(probs, labels) < 0.015
    probs, labels = _calibrated_toy(20_000, rng, overconfident=True)
    # accuracy is half the confidence, whose mean is 0.7 -> ECE ~ 0.35
    assert expected_calibration_error(probs, labels) == pytest.approx(0.35, abs=0.02)


def test_ece_agrees_with_torchmetrics_top_label_definition() -> None:
    from torchmetrics.functional.classification import multiclass_calibration_error

    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(5) * 0.7, size=2000)
    labels = rng.integers(0, 5, 2000)
    ours = expected_calibration_error(probs, labels, n_bins=15)
    ref = multiclass_calibration_error(torch.tensor(probs), torch.tensor(labels), num_classes=5, n_bins=15, norm="l1")
    assert ours == pytest.approx(float(ref), abs=1e-5)


def test_reliability_bins_hand_example() -> None:
    probs = np.array(
        [
            [0.25, 0.25, 0.25, 0.25],  # conf 0.25 -> bin (0, .25]
            [0.5, 0.5, 0.0, 0.0],  # conf 0.5 on the edge -> bin (.25, .5]; argmax tie -> class 0
            [0.1, 0.7, 0.1, 0.1],  # conf 0.7 -> bin (.5, .75]
            [0.0, 0.0, 0.0, 1.0],  # conf 1.0 -> last bin
            [0.0, 0.0, 0.9, 0.1],  # conf 0.9 -> last bin
        ]
    )
    labels = np.array([0, 1, 1, 3, 0])
    conf, acc, counts = reliability_diagram_data(probs, labels, n_bins=4)
    np.testing.assert_array_equal(counts, [1, 1, 1, 2])
    np.testing.assert_allclose(conf, [0.25, 0.5, 0.7, 0.95])
    np.testing.assert_allclose(acc, [1.0, 0.0, 1.0, 0.5])
    expected = (abs(1 - 0.25) + abs(0 - 0.5) + abs(1 - 0.7) + 2 * abs(0.5 - 0.95)) / 5
    assert expected_calibration_error(probs, labels, n_bins=4) == pytest.approx(expected)
    _, acc10, counts10 = reliability_diagram_data(probs, labels, n_bins=10)
    assert counts10.sum() == 5 and np.isnan(acc10[counts10 == 0]).all()


def test_brier_perfect_uniform_and_binary_forms() -> None:
    labels = np.array([0, 2, 1, 3])
    assert brier_score(np.eye(4)[labels], labels) == 0.0
    assert brier_score(np.full((4, 4), 0.25), labels) == pytest.approx(1 - 1 / 4)  # (K-1)/K^2 + (1-1/K)^2
    assert brier_score(np.eye(4)[(labels + 1) % 4], labels) == pytest.approx(2.0)  # confidently wrong
    # binary P(class 1): unhalved, so twice the usual binary Brier
    assert brier_score(np.array([0.8, 0.3]), np.array([1, 0])) == pytest.approx(2 * (0.2**2 + 0.3**2) / 2)


def test_brier_matches_sklearn_unhalved() -> None:
    import sklearn
    from sklearn.metrics import brier_score_loss

    if tuple(int(x) for x in sklearn.__version__.split(".")[:2]) < (1, 7):
        pytest.skip("multi-class brier_score_loss needs scikit-learn >= 1.7")
    rng = np.random.default_rng(4)
    probs = rng.dirichlet(np.ones(4), size=200)
    labels = rng.integers(0, 4, 200)
    ref = brier_score_loss(labels, probs, labels=np.arange(4), scale_by_half=False)
    assert brier_score(probs, labels) == pytest.approx(ref)


def test_fit_temperature_recovers_generating_tau() -> None:
    rng = np.random.default_rng(5)
    tau, n, k = 0.3, 4000, 5
    d = rng.uniform(0.0, 2.0, (n, k))
    probs = softmax_from_distances(d, tau)
    labels = (rng.random(n)[:, None] > np.cumsum(probs, axis=1)).sum(axis=1)
    fitted = fit_temperature(torch.tensor(d), torch.tensor(labels))
    assert fitted == pytest.approx(tau, rel=0.15)
    nll = distance_nll(d, labels, fitted)
    assert nll <= distance_nll(d, labels, tau) + 1e-9
    assert nll < distance_nll(d, labels, 2 * tau) and nll < distance_nll(d, labels, tau / 2)
    cal = calibration_metrics(softmax_from_distances(d, fitted), labels)
    assert cal["nll"] == pytest.approx(nll, rel=1e-6)
    assert cal["ece"] < 0.05


def test_softmax_from_distances_matches_codebook_scores() -> None:
    d = torch.tensor([[0.1, 0.5, 2.0], [1.0, 0.2, 0.3]])
    ours = softmax_from_distances(d, 0.5)
    ref = ClassCodebook.scores(d, temperature=0.5).double().numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    np.testing.assert_allclose(ours.sum(axis=1), 1.0)


def test_fit_temperature_warns_when_validation_predictions_are_separable() -> None:
    d = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tau = fit_temperature(d, [0, 1, 0, 1])
    assert any(issubclass(w.category, RuntimeWarning) and "no finite minimiser" in str(w.message) for w in caught)
    assert tau == pytest.approx(math.exp(-12.0))  # lower bound: median distance range 1 times e^-12
    # uninformative distances: labels do not follow the codes, so tau runs to the upper bound
    with pytest.warns(RuntimeWarning, match="search bound"):
        tau = fit_temperature(np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]), [0, 1, 0, 1])
    assert tau > 1e4


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: fit_temperature(np.random.rand(6, 3), [1] * 6), ValueError, "at least 2 classes"),
        (lambda: fit_temperature(np.ones((4, 3)), [0, 1, 2, 0]), ValueError, "cannot be identified"),
        (lambda: fit_temperature(np.random.rand(4, 3), [0, 1, 3, 0]), ValueError, "out of range"),
        (lambda: fit_temperature(np.random.rand(4, 3), [0, 1, 2]), ValueError, "length mismatch"),
        (lambda: fit_temperature(np.random.rand(4, 3), [0, 1, 2, 0], bounds=(1.0, 0.1)), ValueError, "low < high"),
        (lambda: softmax_from_distances(np.random.rand(4, 3), 0.0), ValueError, "temperature"),
        (lambda: expected_calibration_error([[0.5, 0.6]], [0]), ValueError, "sum to 1"),
        (lambda: brier_score([[1.5, -0.5]], [0]), ValueError, r"\[0, 1\]"),
        (lambda: brier_score([[0.5, 0.5]], [2]), ValueError, "out of range"),
        (lambda: brier_score([[0.5, 0.5]], [-1]), ValueError, "out of range"),
        (lambda: brier_score([[0.5, 0.5]], [0.5]), ValueError, "whole class indices"),
        (lambda: brier_score([[0.5, 0.5], [0.2, 0.8]], [0]), ValueError, "length mismatch"),
        (lambda: brier_score(np.zeros((0, 2)), []), ValueError, "empty"),
        (lambda: negative_log_likelihood([[np.nan, 0.5]], [0]), ValueError, "NaN or infinite"),
        (lambda: reliability_diagram_data([[0.5, 0.5]], [0], n_bins=0), ValueError, "n_bins"),
        (lambda: expected_calibration_error([[1.0]], [0]), ValueError, "at least 2 classes"),
        (lambda: brier_score([[0.5, 0.5]], [True]), TypeError, "booleans"),
    ],
)
def test_calibration_bad_inputs(call, exc, match) -> None:
    with pytest.raises(exc, match=match):
        call()


def test_entropy_reads_the_scores_as_a_distribution() -> None:
    scores = np.array([[1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1.02, -0.02, 0.0], [2.0, 2.0, 0.0]])
    out = class_entropy(scores)
    # uniform -> log K, certain -> 0, a fair coin -> log 2; a slightly negative posterior estimate holds no
    # mass; unnormalised rows are renormalised
    np.testing.assert_allclose(out, [math.log(3), 0.0, math.log(2), 0.0, math.log(2)], atol=1e-12)
    with pytest.raises(ValueError, match="no positive class score"):
        class_entropy(np.array([[0.5, 0.5], [-0.1, 0.0]]))
    with pytest.raises(ValueError, match=r"shape \(N, K\)"):
        class_entropy(np.ones(3))


def test_entropy_score_orders_its_ties_by_the_distance() -> None:
    # rows 1 and 3 are both certain (entropy 0) and rows 2 and 4 both a fair coin: the distance orders each pair
    scores = np.array([[1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1.02, -0.02, 0.0], [2.0, 2.0, 0.0]])
    distance = np.array([0.1, 0.9, 0.2, 0.3, 0.5])
    np.testing.assert_array_equal(entropy_uncertainty(scores, distance), [4, 1, 2, 0, 3])
    assert uncertainty_score("entropy", scores=scores, distance=distance, distances=None).tolist() == [4, 1, 2, 0, 3]
    with pytest.raises(ValueError, match="distance must have shape"):
        entropy_uncertainty(scores, distance[:4])


def test_combined_score_is_the_mean_rank_of_its_three_parts() -> None:
    # binary fractions, so the three equal margins are exactly equal
    distance = np.array([0.125, 0.5, 0.25, 0.875])
    distances = np.array([[0.125, 0.875], [0.5, 0.625], [0.25, 0.375], [0.875, 1.0]])  # margins -0.75, -0.125 x 3
    scores = np.array([[0.99, 0.01], [0.5, 0.5], [0.6, 0.4], [0.7, 0.3]])
    out = combined_uncertainty(distance, distances, scores)
    # sample 0 is the most certain by all three scores; ranks (0-based, ties averaged) / 3 per part
    ranks = np.array([[0, 2, 1, 3], [0, 2, 2, 2], [0, 3, 2, 1]]) / 3.0
    np.testing.assert_allclose(out, ranks.mean(axis=0))
    assert out.argmin() == 0 and out.min() == 0.0
    # ranks only: a monotone rescaling of one input changes nothing
    np.testing.assert_allclose(combined_uncertainty(distance ** 3 * 100, distances, scores), out)
    with pytest.raises(ValueError, match="same samples"):
        combined_uncertainty(distance[:3], distances, scores)


def test_score_distances_temperature_scale_the_scores() -> None:
    rng = np.random.default_rng(3)
    d = rng.uniform(0.0, 2.0, (50, 4))
    p = softmax_from_distances(d, 0.3)
    # T = 1 gives the scores back; for softmax scores a temperature T is the distance temperature 0.3 T
    np.testing.assert_allclose(softmax_from_distances(score_distances(p), 1.0), p, atol=1e-9)
    np.testing.assert_allclose(softmax_from_distances(score_distances(p), 2.0), softmax_from_distances(d, 0.6), atol=1e-9)
    # a posterior estimate below 0 has no mass (the largest distance), rows are renormalised first
    out = score_distances(np.array([[1.1, -0.1], [1.0, 1.0]]))
    assert out[0, 0] == 0.0 and out[0, 1] == pytest.approx(-math.log(1e-6))
    np.testing.assert_allclose(out[1], [math.log(2), math.log(2)])
