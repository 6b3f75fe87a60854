"""The class codebook: palette rules, round trips under dequantization noise, decisions, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsymmflow.codes import ClassCodebook, beta_to_amplitude


def test_rgb_palette_rule_matches_design() -> None:
    cb = ClassCodebook.rgb(2)
    # K=2: palette[0] = black, palette[63] = (225, 225, 225)
    expected = torch.tensor([[0, 0, 0], [225, 225, 225]], dtype=torch.float32) / 127.5 - 1
    torch.testing.assert_close(cb.codes, expected)
    cb5 = ClassCodebook.rgb(5)
    # linspace(0, 63, 5) = 0, 15.75, 31.5, 47.25, 63 -> 0, 16, 32 (half to even), 47, 63
    idx = [0, 16, 32, 47, 63]
    levels = np.array([0, 75, 150, 225])
    expected5 = np.array([[levels[i // 16], levels[(i // 4) % 4], levels[i % 4]] for i in idx]) / 127.5 - 1
    np.testing.assert_allclose(cb5.codes.numpy(), expected5, atol=1e-6)
    assert cb5.channels == 3 and cb5.kind == "rgb"


def test_gray_codes_span_minus_one_to_one() -> None:
    cb = ClassCodebook.gray(5)
    torch.testing.assert_close(cb.codes[:, 0], torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))
    scaled = ClassCodebook.gray(3, scale=2.0)
    torch.testing.assert_close(scaled.codes[:, 0], torch.tensor([-2.0, 0.0, 2.0]))


@pytest.mark.parametrize("k", [19, 171])
def test_palette_codes_distinct_and_spaced(k: int) -> None:
    cb = ClassCodebook.palette(k)
    assert cb.num_classes == k and cb.channels == 3
    assert cb.codes.abs().max() <= 1.0
    assert torch.unique(cb.codes, dim=0).shape[0] == k
    assert cb.min_distance >= (1.0 if k == 19 else 0.4) - 1e-6
    # The papers' beta = 4 grey levels must be far inside the allowed range.
    assert cb.max_beta() > 4 * 5


@pytest.mark.parametrize(
    "kind,k",
    [("gray", 2), ("gray", 10), ("rgb", 2), ("rgb", 5), ("rgb", 8), ("rgb", 64), ("palette", 19), ("palette", 171), ("palette", 2),
     ("onehot", 2), ("onehot", 5), ("onehot", 11)],
)
def test_round_trip_under_beta_noise(kind: str, k: int) -> None:
    cb = ClassCodebook.from_kind(kind, k)
    beta = min(4.0, 0.99 * cb.max_beta())
    labels = torch.arange(k).repeat(3)
    masks = cb.code_mask(labels, (6, 5))
    assert masks.shape == (3 * k, cb.channels, 6, 5)
    amp = beta_to_amplitude(beta)
    # Worst case: every element pushed to +-amplitude, the sign chosen adversarially toward the neighbour.
    noisy = masks + amp * (2 * torch.randint(0, 2, masks.shape) - 1).float()
    for decision in ("mean", "mode"):
        out = cb.decode(noisy, decision)
        assert torch.equal(out.labels, labels), decision
        assert (out.uncertainty <= amp * np.sqrt(cb.channels) + 1e-5).all()
    pix = cb.decode(noisy, "pixel")
    assert pix.labels.shape == (3 * k, 6, 5)
    assert torch.equal(pix.labels, labels[:, None, None].expand(-1, 6, 5))


def test_onehot_codes() -> None:
    cb = ClassCodebook.from_kind("onehot", 4)
    assert cb.channels == 4 and cb.kind == "onehot"
    torch.testing.assert_close(cb.codes, 2 * torch.eye(4) - 1)


def test_onehot_mean_code_decodes_to_most_probable_class_where_rgb_does_not() -> None:
    # A one-step prediction is the posterior mean of the codes. Posterior 0.45 / 0.10 / 0.45 / 0 / 0 over
    # RetinaMNIST's 5 grades: the rgb mean of grades 0 and 2 lands exactly on grade 1's code.
    posterior = torch.tensor([[0.45, 0.10, 0.45, 0.0, 0.0], [0.5, 0.0, 0.2, 0.3, 0.0]])
    rgb, onehot = ClassCodebook.rgb(5), ClassCodebook.onehot(5)
    rgb_mean = (posterior @ rgb.codes)[:, :, None, None]
    assert rgb.decode(rgb_mean).labels[0].item() == 1
    onehot_mean = (posterior @ onehot.codes)[:, :, None, None]
    torch.testing.assert_close((onehot_mean[:, :, 0, 0] + 1) / 2, posterior)
    assert onehot.decode(onehot_mean).labels.tolist() == [0, 0]
    # For every posterior, the nearest one-hot code is the arg-max class (squared distance = const - 4 p_k).
    torch.manual_seed(0)
    p = torch.distributions.Dirichlet(torch.ones(5)).sample((500,))
    out = onehot.decode((p @ onehot.codes)[:, :, None])
    assert torch.equal(out.labels, p.argmax(1))


def test_dequantized_code_mask_stays_within_beta_and_follows_the_generator() -> None:
    cb = ClassCodebook.rgb(5)
    labels = torch.tensor([0, 3, 4])
    clean = cb.code_mask(labels, (4, 4))
    noisy = cb.dequantized_code_mask(labels, (4, 4), beta=4.0, generator=torch.Generator().manual_seed(1))
    again = cb.dequantized_code_mask(labels, (4, 4), beta=4.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(noisy, again)
    assert 0 < (noisy - clean).abs().max() <= beta_to_amplitude(4.0)
    assert torch.equal(cb.dequantized_code_mask(labels, (4, 4), beta=0.0), clean)


def test_mean_and_mode_decisions_differ_where_they_should() -> None:
    cb = ClassCodebook.gray(3)  # codes -1, 0, 1
    # 3 of 5 pixels say class 0 (-1), 2 say class 2 (+1): mode -> 0, mean = -0.2 -> class 1 (code 0)
    mask = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0]).reshape(1, 1, 5)
    assert cb.decode(mask, "mode").labels.item() == 0
    mean = cb.decode(mask, "mean")
    assert mean.labels.item() == 1
    torch.testing.assert_close(mean.distances, torch.tensor([[0.8, 0.2, 1.2]]))
    torch.testing.assert_close(mean.uncertainty, torch.tensor([0.2]))


def test_scores_and_temperature() -> None:
    d = torch.tensor([[0.1, 0.5, 2.0]])
    torch.testing.assert_close(ClassCodebook.scores(d), -d)
    p = ClassCodebook.scores(d, temperature=0.5)
    torch.testing.assert_close(p.sum(1), torch.ones(1))
    assert p.argmax().item() == 0
    with pytest.raises(ValueError, match="temperature"):
        ClassCodebook.scores(d, temperature=0.0)


@pytest.mark.parametrize(
    "codebook",
    [ClassCodebook.onehot(5), ClassCodebook.onehot(2), ClassCodebook.gray(2), ClassCodebook.rgb(2),
     ClassCodebook(torch.tensor([[0.0, 0.0], [1.0, 0.2], [0.3, 0.9]]))],
    ids=["onehot5", "onehot2", "gray2", "rgb2", "custom"],
)
def test_posterior_recovers_the_mixture_behind_a_mean_code(codebook: ClassCodebook) -> None:
    torch.manual_seed(0)
    p = torch.distributions.Dirichlet(torch.ones(codebook.num_classes)).sample((64,))
    mean_code = (p @ codebook.codes)[:, :, None, None].expand(-1, -1, 3, 3)
    d = codebook.distances(mean_code)
    torch.testing.assert_close(codebook.posterior(d), p, atol=1e-5, rtol=0)
    torch.testing.assert_close(codebook.class_scores(d, "posterior"), p, atol=1e-5, rtol=0)
    torch.testing.assert_close(codebook.class_scores(d, "softmax", 0.3), ClassCodebook.scores(d, 0.3))
    # a code mean off the codes' affine hull projects onto it: coordinates still sum to 1
    off = codebook.distances(mean_code + 0.3)
    torch.testing.assert_close(codebook.posterior(off).sum(1), torch.ones(64, dtype=torch.float32))


def test_posterior_ranks_a_class_where_softmax_of_distances_does_not() -> None:
    # AUC ranks images by their score for one class: image A is more likely class 0 than image B,
    # but B's code mean sits nearest class 0, so softmax(-d / tau) puts B first
    cb = ClassCodebook.onehot(3)
    p = torch.tensor([[0.45, 0.55, 0.0], [0.40, 0.30, 0.30]])
    d = cb.distances((p @ cb.codes)[:, :, None])
    soft, post = cb.class_scores(d, "softmax", 0.1)[:, 0], cb.class_scores(d, "posterior")[:, 0]
    assert soft[0] < soft[1] and post[0] > post[1]


def test_posterior_refuses_codes_it_cannot_invert_and_unknown_scores() -> None:
    d = torch.rand(2, 5)
    for codebook in (ClassCodebook.rgb(5), ClassCodebook.rgb(4), ClassCodebook.gray(3)):
        assert not codebook.affinely_independent
        with pytest.raises(ValueError, match="affinely independent codes"):
            codebook.posterior(d[:, : codebook.num_classes])
    cb = ClassCodebook.onehot(5)
    assert cb.check_score("posterior") == "posterior"
    with pytest.raises(ValueError, match="unknown score 'logits'; choose one of softmax, posterior"):
        cb.class_scores(d, "logits")
    with pytest.raises(ValueError, match=r"shape \(B, 5\)"):
        cb.posterior(torch.rand(2, 4))


def test_label_map_with_ignore_index() -> None:
    cb = ClassCodebook.palette(19)
    lm = torch.tensor([[0, 18], [255, 3]])
    out = cb.label_map_to_code_mask(lm, ignore_index=255, ignore_value=0.0)
    assert out.shape == (3, 2, 2)
    torch.testing.assert_close(out[:, 0, 1], cb.codes[18])
    torch.testing.assert_close(out[:, 1, 0], torch.zeros(3))
    with pytest.raises(ValueError, match="out of range"):
        cb.label_map_to_code_mask(lm)


@pytest.mark.parametrize(
    "call,err,match",
    [
        (lambda cb: cb.encode(torch.tensor([0, 5])), ValueError, "out of range"),
        (lambda cb: cb.encode(torch.tensor([-1])), ValueError, "out of range"),
        (lambda cb: cb.encode(torch.tensor([0.5])), ValueError, "whole class"),
        (lambda cb: cb.encode(torch.tensor([float("nan")])), ValueError, "NaN"),
        (lambda cb: cb.decode(torch.full((1, 3, 2, 2), float("nan"))), ValueError, "NaN"),
        (lambda cb: cb.decode(torch.zeros(1, 1, 2, 2)), ValueError, "channels"),
        (lambda cb: cb.decode(torch.zeros(1, 3, 2, 2, dtype=torch.long)), TypeError, "floating"),
        (lambda cb: cb.decode(torch.zeros(3)), ValueError, "shape"),
        (lambda cb: cb.decode(torch.zeros(1, 3, 2), "median"), ValueError, "decision"),
        (lambda cb: cb.check_beta(200.0), ValueError, "too large"),
        (lambda cb: cb.check_beta(float("nan")), ValueError, "finite"),
    ],
)
def test_bad_input_raises_clear_errors(call, err, match) -> None:
    cb = ClassCodebook.rgb(5)
    with pytest.raises(err, match=match):
        call(cb)


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="unknown codebook kind"):
        ClassCodebook.from_kind("hsv", 4)
    with pytest.raises(ValueError, match="num_classes"):
        ClassCodebook.rgb(1)
    with pytest.raises(ValueError, match="64 colours"):
        ClassCodebook.rgb(65)
    with pytest.raises(ValueError, match="same code"):
        ClassCodebook(torch.tensor([[0.0], [0.0]]))


def test_beta_limit_is_tight() -> None:
    cb = ClassCodebook.rgb(64)  # levels 75/127.5 apart
    limit = cb.max_beta()
    np.testing.assert_allclose(limit, (75 / 127.5) / 2 / np.sqrt(3) * 255, rtol=1e-6)
    cb.check_beta(0.99 * limit)
    with pytest.raises(ValueError, match="too large"):
        cb.check_beta(limit)
