"""Class codebook: the map between class indices and the continuous codes SymmFlow flows through.

A codebook holds ``K`` code vectors of ``C`` channels in ``[-1, 1]``:

* ``gray``    (SymmFlow): one channel, class ``k`` -> ``scale * (2k / (K - 1) - 1)``.
* ``rgb``     (MedSymmFlow): a 64-colour palette with channel levels {0, 75, 150, 225}
  (R outermost); class ``k`` takes ``palette[round(linspace(0, 63, K))[k]]``, mapped to ``v / 127.5 - 1``.
* ``palette`` (segmentation): an ``n x n x n`` RGB grid with ``n = ceil(K ** (1/3))`` levels spread
  over ``[-1, 1]``; class ``k`` takes grid colour ``round(linspace(0, n^3 - 1, K))[k]``. 19 classes
  use a 3-level grid (spacing 1.0), 171 classes a 6-level grid (spacing 0.4).
* ``celebamask`` (SymmFlow on CelebAMask-HQ): the dataset authors' 19 class colours
  (:data:`CELEBAMASK_HQ_COLOURS`, class ``k`` in their ``g_mask.py`` "list2" order), mapped to ``v / 127.5 - 1``;
  the closest two are 51 grey levels apart, so ``beta`` must stay below ~29.
* ``onehot``  (this package's CPU recipe): ``K`` channels, class ``k`` -> ``+1`` on channel ``k`` and ``-1``
  elsewhere. A one-step prediction is the posterior mean of the codes; with one-hot codes that mean
  is ``2 p - 1`` for the class posterior ``p``, so the nearest code is the most probable class. With
  ``rgb`` codes the mean of two likely classes can sit nearest a third one (5 RGB codes in 3
  channels cannot be told apart from their mixtures).

Decoding takes the predicted code mask, measures the L2 distance to every code and picks the
nearest one: ``mean`` averages the mask over space first (the papers' rule for classification),
``mode`` takes the most common per-pixel nearest class, ``pixel`` keeps the per-pixel decision
(segmentation). The distance to the chosen code is the uncertainty. Counting decisions (``mode`` over
pixels, the classifier's ``vote`` over noise draws) share one rule, :func:`majority_class`: most
counts, then the smaller mean distance, then the lower class index.

Per-class scores for AUC (:meth:`ClassCodebook.class_scores`): ``softmax`` is ``softmax(-d / tau)``
of the distances; ``posterior`` reads the class posterior ``p`` back from the mean code: the code
mean of a one-step prediction estimates ``sum_k p_k c_k``, and when the codes are affinely
independent (``onehot``; ``gray`` with 2 classes; up to ``C + 1`` generic codes) its barycentric
coordinates are ``p``, computable from the distances alone. ``softmax`` ranks an image's score for
class ``k`` partly by how far the code mean sits from the other codes, which blurs the per-class
ranking that AUC measures; ``posterior`` does not. :func:`decision_scores` turns either into the
scores a report writes, whose argmax is the decided class for every decision.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from medsymmflow.checks import nonnegative_float, positive_float

__all__ = [
    "CELEBAMASK_HQ_COLOURS",
    "CODE_KINDS",
    "DECISIONS",
    "SCORES",
    "ClassCodebook",
    "CodebookDecoding",
    "beta_to_amplitude",
    "decision_scores",
    "dequantization_noise",
    "dequantize",
    "distance_logits",
    "distance_softmax",
    "majority_class",
]

CODE_KINDS = ("gray", "rgb", "palette", "celebamask", "onehot")
DECISIONS = ("mean", "mode", "pixel")
SCORES = ("softmax", "posterior")

RGB_LEVELS = (0, 75, 150, 225)

# The CelebAMask-HQ authors' colour of each class (8-bit RGB), indexed like CELEBAMASK_HQ_CLASSES
# (face_parsing/Data_preprocessing/g_color.py of switchablenorms/CelebAMask-HQ; SymmFlow's masks use it)
CELEBAMASK_HQ_COLOURS = (
    (0, 0, 0), (204, 0, 0), (76, 153, 0), (204, 204, 0), (51, 51, 255), (204, 0, 204), (0, 255, 255),
    (255, 204, 204), (102, 51, 0), (255, 0, 0), (102, 204, 0), (255, 255, 0), (0, 0, 153), (0, 0, 204),
    (255, 51, 153), (0, 204, 204), (0, 51, 0), (255, 153, 51), (0, 204, 0),
)

# cdist's matrix-multiply shortcut loses ~1e-4 on small distances, which reorders confident samples
# when distances are used as uncertainty; few channels (C <= K) keep the exact mode cheap.
_EXACT = "donot_use_mm_for_euclid_dist"


def beta_to_amplitude(beta: float) -> float:
    """Half-width in code units of the dequantization noise ``beta * U(-1/2, 1/2) / 127.5``."""
    return float(beta) / 255.0


def dequantization_noise(uniform: torch.Tensor | np.ndarray, beta: float) -> torch.Tensor | np.ndarray:
    """The dequantization noise ``beta * U(-1/2, 1/2) / 127.5`` from draws ``uniform`` of ``U(0, 1)`` (torch or numpy).

    The caller draws ``uniform`` from its own random state (torch's RNG in training and sampling, a MONAI
    transform's ``self.R``), so each stays reproducible by its own seed.
    """
    return (uniform - 0.5) * (2.0 * beta_to_amplitude(beta))


def distance_logits(distances: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits ``-d / tau`` of distances ``(B, K)``: nearer codes score higher (the one definition of the map)."""
    return -torch.as_tensor(distances) / positive_float(temperature, "temperature")


def distance_softmax(distances: torch.Tensor, temperature: float) -> torch.Tensor:
    """Class probabilities ``softmax(-d / tau)`` over the class axis of distances ``(B, K)``, in their dtype."""
    return torch.softmax(distance_logits(distances, temperature), dim=1)


def dequantize(code: torch.Tensor, beta: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``code`` plus the uniform dequantization noise ``beta * U(-1/2, 1/2) / 127.5`` (``code`` itself when ``beta`` is 0)."""
    if beta <= 0:
        return code
    # drawn from torch's RNG (or ``generator``), so per-epoch reseeding of the training RNG covers it
    return code + dequantization_noise(torch.rand(code.shape, generator=generator, device=code.device), beta)


@dataclass
class CodebookDecoding:
    """Result of decoding predicted code masks.

    ``labels``: (B,) for ``mean``/``mode``, (B, *spatial) for ``pixel``.
    ``distances``: (B, K) distance to every code (``pixel``: (B, K, *spatial)).
    ``uncertainty``: distance to the chosen code, same shape as ``labels``.
    ``counts``: (B, K) pixels nearest each code for ``mode`` (what the decision counted), else ``None``.
    """

    labels: torch.Tensor
    distances: torch.Tensor
    uncertainty: torch.Tensor
    counts: torch.Tensor | None = None


def majority_class(counts: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """The class with the most ``counts`` (B, K); ties go to the smaller ``distances`` (B, K), then the lower index.

    The one tie rule of the counting decisions: ``mode`` (pixels per class) and the classifier's
    ``vote`` (noise draws per class).
    """
    counts, distances = torch.as_tensor(counts), torch.as_tensor(distances)
    if counts.shape != distances.shape or counts.ndim != 2:
        raise ValueError(f"counts and distances must both have shape (B, K), got {tuple(counts.shape)} and {tuple(distances.shape)}")
    most = counts == counts.max(dim=1, keepdim=True).values
    return distances.masked_fill(~most, float("inf")).argmin(dim=1)  # argmin returns the first of equal minima


def decision_scores(scores: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor | None = None) -> torch.Tensor:
    """Per-class scores ``(B, K)`` ranked the way the decision ranks the classes, so their argmax is ``labels``.

    ``scores``: the mean-distance scores of :meth:`ClassCodebook.class_scores` (softmax or posterior, rows
    summing to 1); ``labels``: the decided classes; ``counts``: what a counting decision counted per
    class (``vote``: noise draws, ``mode``: pixels), ``None`` for ``mean``. Rule:

    * ``mean`` (no counts): the scores themselves.
    * counting decisions: ``(counts_k + scores_k) / (n + 1)`` with ``n`` the row's total count, i.e. ranked
      first by the counts and then by the mean-distance score, as :func:`majority_class` breaks ties; the
      rows still sum to 1 (medmnist's binary ACC thresholds ``score_1`` at 0.5).

    Where the argmax is then still not the decided class (posterior scores order two classes unlike the
    distances for codes that are not equidistant, an overshooting posterior, or equal values in floating
    point), the decided class's entry is swapped with the row's maximum and, if another class still ties
    it, raised to the next representable value above. The default recipe (``mean``, ``softmax``) comes out
    unchanged.
    """
    scores, labels = torch.as_tensor(scores), torch.as_tensor(labels).long().reshape(-1)
    if scores.ndim != 2 or scores.shape[0] != labels.shape[0]:
        raise ValueError(f"scores (B, K) and labels (B,) disagree: {tuple(scores.shape)} vs {tuple(labels.shape)}")
    if counts is not None:
        counts = torch.as_tensor(counts).to(device=scores.device)
        if counts.shape != scores.shape:
            raise ValueError(f"counts must have the shape of the scores {tuple(scores.shape)}, got {tuple(counts.shape)}")
        total = counts.sum(dim=1, keepdim=True).to(scores.dtype)
        scores = (counts.to(scores.dtype) + scores) / (total + 1)
    # branch-free, so that the traced deployment classifier (medsymmflow.deploy) keeps the fix for every batch
    labels = labels[:, None].to(scores.device)
    top = scores.argmax(dim=1, keepdim=True)
    wrong = top != labels
    decided, best = scores.gather(1, labels), scores.gather(1, top)
    scores = scores.scatter(1, top, torch.where(wrong, decided, best)).scatter(1, labels, best)
    # the decided class now holds the maximum; an equal value at a lower index would still win argmax
    tied = scores.argmax(dim=1, keepdim=True) != labels
    raised = torch.nextafter(best, torch.full_like(best, float("inf")))
    return scores.scatter(1, labels, torch.where(tied, raised, best))


class ClassCodebook:
    """``K`` class codes of ``C`` channels; encodes labels to code masks and decodes them back."""

    def __init__(self, codes: torch.Tensor | np.ndarray, kind: str = "custom") -> None:
        codes_t = torch.as_tensor(np.asarray(codes, dtype=np.float32) if isinstance(codes, np.ndarray) else codes)
        codes_t = codes_t.detach().to(torch.float32).cpu()
        if codes_t.ndim != 2:
            raise ValueError(f"codes must have shape (num_classes, channels), got {tuple(codes_t.shape)}")
        if codes_t.shape[0] < 2:
            raise ValueError(f"a codebook needs at least 2 classes, got {codes_t.shape[0]}")
        if not torch.isfinite(codes_t).all():
            raise ValueError("codes contain NaN or infinite values")
        if codes_t.shape[0] > 1 and torch.cdist(codes_t, codes_t).add(torch.eye(codes_t.shape[0]) * 1e9).min() <= 0:
            raise ValueError("two classes share the same code")
        self.codes = codes_t
        self.kind = kind

    # ------------------------------------------------------------------ constructors
    @classmethod
    def gray(cls, num_classes: int, scale: float = 1.0) -> "ClassCodebook":
        """SymmFlow's one-channel codes ``scale * (2k/(K-1) - 1)`` (the authors' code uses ``scale = beta/2``)."""
        k = _check_num_classes(num_classes)
        values = scale * (2.0 * torch.arange(k, dtype=torch.float64) / (k - 1) - 1.0)
        return cls(values.to(torch.float32)[:, None], kind="gray")

    @classmethod
    def rgb(cls, num_classes: int) -> "ClassCodebook":
        """MedSymmFlow's RGB codes picked evenly from the 64-colour {0,75,150,225}^3 palette."""
        k = _check_num_classes(num_classes)
        if k > 64:
            raise ValueError(f"the rgb codebook has 64 colours; {k} classes need ClassCodebook.palette")
        levels = np.asarray(RGB_LEVELS, dtype=np.float64)
        idx = np.arange(64)
        palette = np.stack([levels[idx // 16], levels[(idx // 4) % 4], levels[idx % 4]], axis=1)
        # np.round rounds half to even, as the authors' numpy code does.
        pick = np.round(np.linspace(0, 63, k)).astype(int)
        return cls(torch.from_numpy(palette[pick] / 127.5 - 1.0).to(torch.float32), kind="rgb")

    @classmethod
    def palette(cls, num_classes: int) -> "ClassCodebook":
        """Evenly spread colours of the smallest RGB grid with at least ``K`` colours (segmentation)."""
        k = _check_num_classes(num_classes)
        n = max(2, math.ceil(round(k ** (1.0 / 3.0), 9)))
        while n**3 < k:
            n += 1
        levels = np.linspace(-1.0, 1.0, n)
        idx = np.arange(n**3)
        grid = np.stack([levels[idx // (n * n)], levels[(idx // n) % n], levels[idx % n]], axis=1)
        pick = np.round(np.linspace(0, n**3 - 1, k)).astype(int)
        return cls(torch.from_numpy(grid[pick]).to(torch.float32), kind="palette")

    @classmethod
    def celebamask(cls, num_classes: int = len(CELEBAMASK_HQ_COLOURS)) -> "ClassCodebook":
        """The CelebAMask-HQ authors' 19 class colours (:data:`CELEBAMASK_HQ_COLOURS`), the codes SymmFlow uses."""
        k = _check_num_classes(num_classes)
        if k != len(CELEBAMASK_HQ_COLOURS):
            raise ValueError(
                f"the celebamask codebook holds CelebAMask-HQ's {len(CELEBAMASK_HQ_COLOURS)} class colours, got num_classes={k}; "
                "use the palette codebook for other class counts"
            )
        colours = torch.tensor(CELEBAMASK_HQ_COLOURS, dtype=torch.float64)
        return cls((colours / 127.5 - 1.0).to(torch.float32), kind="celebamask")

    @classmethod
    def onehot(cls, num_classes: int) -> "ClassCodebook":
        """``K``-channel codes: ``+1`` on the class's own channel, ``-1`` on the others."""
        k = _check_num_classes(num_classes)
        return cls(2.0 * torch.eye(k, dtype=torch.float32) - 1.0, kind="onehot")

    @classmethod
    def from_kind(cls, kind: str, num_classes: int, **kwargs: float) -> "ClassCodebook":
        """Build a codebook by name: ``gray``, ``rgb``, ``palette``, ``celebamask`` or ``onehot``."""
        if isinstance(kind, ClassCodebook):
            return kind
        if kind not in CODE_KINDS:
            raise ValueError(f"unknown codebook kind {kind!r}; choose one of {', '.join(CODE_KINDS)}")
        return getattr(cls, kind)(num_classes, **kwargs)

    # ------------------------------------------------------------------ properties
    @property
    def num_classes(self) -> int:
        """Number of classes ``K``."""
        return int(self.codes.shape[0])

    @property
    def channels(self) -> int:
        """Channels ``C`` of every code (1 for gray, 3 for rgb / palette, K for onehot)."""
        return int(self.codes.shape[1])

    @property
    def min_distance(self) -> float:
        """Smallest L2 distance between two codes."""
        d = torch.cdist(self.codes.double(), self.codes.double())
        d.fill_diagonal_(float("inf"))
        return float(d.min())

    def max_beta(self) -> float:
        """Largest beta (8-bit grey levels) whose worst-case noise keeps every pixel nearest its own code."""
        # Worst case: every channel shifted by the full amplitude, L2 = sqrt(C) * amp < min_distance / 2.
        return self.min_distance / 2.0 / math.sqrt(self.channels) * 255.0

    def check_beta(self, beta: float) -> float:
        """Raise a ValueError when ``beta`` is negative, not finite, or too large for the code spacing."""
        beta = nonnegative_float(beta, "beta")
        if beta >= self.max_beta():
            raise ValueError(
                f"beta={beta:g} grey levels is too large for this {self.kind} codebook of {self.num_classes} classes: "
                f"its codes are {self.min_distance:.4f} apart, so beta must stay below {self.max_beta():.2f}"
            )
        return beta

    def __repr__(self) -> str:
        return f"ClassCodebook(kind={self.kind!r}, num_classes={self.num_classes}, channels={self.channels})"

    # ------------------------------------------------------------------ encoding
    def _check_labels(self, labels: torch.Tensor, ignore_index: int | None = None) -> torch.Tensor:
        if labels.is_floating_point():
            if not torch.isfinite(labels).all():
                raise ValueError("labels contain NaN or infinite values")
            if not torch.equal(labels, labels.round()):
                raise ValueError("labels must hold whole class indices, got fractional values")
        elif labels.dtype == torch.bool or labels.is_complex():
            raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
        labels = labels.long()
        valid = labels if ignore_index is None else labels[labels != ignore_index]
        if valid.numel() and (valid.min() < 0 or valid.max() >= self.num_classes):
            raise ValueError(
                f"label out of range: found values in [{int(valid.min())}, {int(valid.max())}] "
                f"but the codebook has classes 0..{self.num_classes - 1}"
            )
        return labels

    def encode(self, labels: torch.Tensor | np.ndarray | int) -> torch.Tensor:
        """Class indices of any shape -> codes with a trailing channel axis, shape ``(*labels.shape, C)``."""
        labels_t = self._check_labels(torch.as_tensor(labels))
        return self.codes.to(labels_t.device)[labels_t]

    def code_mask(self, labels: torch.Tensor | np.ndarray, spatial_size: tuple[int, ...]) -> torch.Tensor:
        """Per-sample class indices ``(B,)`` -> constant code masks ``(B, C, *spatial_size)``."""
        labels_t = torch.as_tensor(labels).reshape(-1)
        codes = self.encode(labels_t)  # (B, C)
        shape = (codes.shape[0], self.channels) + tuple(int(s) for s in spatial_size)
        return codes.reshape(codes.shape + (1,) * len(spatial_size)).expand(shape).contiguous()

    def dequantized_code_mask(
        self,
        labels: torch.Tensor | np.ndarray,
        spatial_size: tuple[int, ...],
        beta: float,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """:meth:`code_mask` on ``device`` plus the uniform dequantization ``beta * U(-1/2, 1/2) / 127.5``."""
        code = self.code_mask(torch.as_tensor(labels).reshape(-1).cpu(), spatial_size).to(device)
        return dequantize(code, beta, generator)

    def label_map_to_code_mask(
        self, label_map: torch.Tensor | np.ndarray, ignore_index: int | None = None, ignore_value: float = 0.0
    ) -> torch.Tensor:
        """Label map ``(*spatial)`` -> code mask ``(C, *spatial)``; ``ignore_index`` pixels get ``ignore_value``."""
        lm = self._check_labels(torch.as_tensor(label_map), ignore_index=ignore_index)
        if ignore_index is None:
            out = self.codes.to(lm.device)[lm]
        else:
            ignored = lm == ignore_index
            out = self.codes.to(lm.device)[torch.where(ignored, torch.zeros_like(lm), lm)]
            out[ignored] = ignore_value
        return torch.movedim(out, -1, 0).contiguous()

    # ------------------------------------------------------------------ decoding
    def distances(self, code_mask: torch.Tensor, reduction: Literal["mean", "none"] = "mean") -> torch.Tensor:
        """L2 distance of predicted code masks ``(B, C, *spatial)`` to every code.

        ``mean``: distance of the spatial mean, ``(B, K)``. ``none``: per pixel, ``(B, K, *spatial)``.
        """
        y = self._check_code_mask(code_mask)
        codes = self.codes.to(device=y.device, dtype=y.dtype)
        if reduction == "mean":
            pooled = y.flatten(2).mean(-1)  # (B, C)
            return torch.cdist(pooled[None], codes[None], compute_mode=_EXACT)[0]
        if reduction == "none":
            spatial = y.shape[2:]
            flat = y.flatten(2).transpose(1, 2)  # (B, P, C)
            d = torch.cdist(flat, codes[None].expand(y.shape[0], -1, -1), compute_mode=_EXACT)  # (B, P, K)
            return d.transpose(1, 2).reshape((y.shape[0], self.num_classes) + tuple(spatial))
        raise ValueError(f"unknown reduction {reduction!r}; choose 'mean' or 'none'")

    def decode(self, code_mask: torch.Tensor, decision: str = "mean") -> CodebookDecoding:
        """Nearest-code decision for predicted code masks ``(B, C, *spatial)`` (``mean``, ``mode`` or ``pixel``)."""
        if decision not in DECISIONS:
            raise ValueError(f"unknown decision {decision!r}; choose one of {', '.join(DECISIONS)}")
        if decision == "mean":
            d = self.distances(code_mask, "mean")
            unc, labels = d.min(dim=1)
            return CodebookDecoding(labels=labels, distances=d, uncertainty=unc)
        d_pix = self.distances(code_mask, "none")  # (B, K, *spatial)
        pix_unc, pix_labels = d_pix.min(dim=1)
        if decision == "pixel":
            return CodebookDecoding(labels=pix_labels, distances=d_pix, uncertainty=pix_unc)
        counts = torch.nn.functional.one_hot(pix_labels.flatten(1), self.num_classes).sum(1)  # (B, K)
        d = d_pix.flatten(2).mean(-1)  # mean per-pixel distance to each code
        labels = majority_class(counts, d)
        return CodebookDecoding(labels=labels, distances=d, uncertainty=d.gather(1, labels[:, None])[:, 0], counts=counts)

    @functools.cached_property
    def affinely_independent(self) -> bool:
        """Whether no code is an affine mixture of the others (the condition for ``posterior`` scores)."""
        diffs = (self.codes[1:] - self.codes[:1]).double()
        return bool(torch.linalg.matrix_rank(diffs) == self.num_classes - 1)

    def check_score(self, score: str) -> str:
        """Raise a ValueError for an unknown score, or ``posterior`` on codes it cannot invert."""
        if score not in SCORES:
            raise ValueError(f"unknown score {score!r}; choose one of {', '.join(SCORES)}")
        if score == "posterior" and not self.affinely_independent:
            raise ValueError(
                f"score 'posterior' needs affinely independent codes, but the {self.num_classes} codes of this "
                f"{self.kind} codebook in {self.channels} channels are not (a mixture of some classes equals "
                "another class's code); use score 'softmax' or the onehot codebook"
            )
        return score

    def posterior(self, distances: torch.Tensor) -> torch.Tensor:
        """Class posterior ``(B, K)`` read from ``(B, K)`` distances of the mean code: its barycentric coordinates.

        The coordinates of the mean code's projection onto the codes' affine hull; they sum to 1 but
        can leave ``[0, 1]`` when the prediction overshoots the codes.
        """
        self.check_score("posterior")
        d = torch.as_tensor(distances)
        if d.ndim != 2 or d.shape[1] != self.num_classes:
            raise ValueError(f"distances must have shape (B, {self.num_classes}), got {tuple(d.shape)}")
        codes = self.codes.double().to(d.device)
        diffs = codes[1:] - codes[:1]  # (K-1, C)
        gram = diffs @ diffs.T
        # (y - c_0) . (c_k - c_0) = (|c_k - c_0|^2 + d_0^2 - d_k^2) / 2 needs no access to y itself
        sq = d.double().square()
        rhs = (gram.diagonal()[None] + sq[:, :1] - sq[:, 1:]) / 2  # (B, K-1)
        rest = torch.linalg.solve(gram, rhs.T).T
        return torch.cat([1 - rest.sum(1, keepdim=True), rest], dim=1).to(d.dtype if d.is_floating_point() else torch.float64)

    def class_scores(self, distances: torch.Tensor, score: str = "softmax", temperature: float = 0.1) -> torch.Tensor:
        """Per-class scores ``(B, K)`` from mean-code distances: ``softmax(-d / temperature)`` or the ``posterior``."""
        if self.check_score(score) == "posterior":
            return self.posterior(distances)
        return self.scores(torch.as_tensor(distances), temperature)

    @staticmethod
    def scores(distances: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """Per-class scores from distances ``(B, K)``: ``-d`` or, with a temperature, ``softmax(-d / tau)``."""
        if temperature is None:
            return -distances
        return distance_softmax(distances, temperature)

    def _check_code_mask(self, code_mask: torch.Tensor) -> torch.Tensor:
        y = torch.as_tensor(code_mask)
        if not y.is_floating_point():
            raise TypeError(f"a code mask must be floating point, got dtype {y.dtype}")
        if y.ndim < 2:
            raise ValueError(f"a code mask must have shape (B, C, *spatial), got {tuple(y.shape)}")
        if y.shape[1] != self.channels:
            raise ValueError(f"code mask has {y.shape[1]} channels but the {self.kind} codebook has {self.channels}")
        if not torch.isfinite(y).all():
            raise ValueError("code mask contains NaN or infinite values")
        if y.dtype in (torch.float16, torch.bfloat16):
            y = y.float()  # cdist has no half-precision CPU kernel
        if y.ndim == 2:
            y = y[..., None]
        return y


def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or int(num_classes) < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    return int(num_classes)
