"""MONAI inferers that run a trained SymmFlow velocity network: classify, segment, sample.

All three integrate the same network with :class:`~medsymmflow.flow.SymmFlowSolver`:

* :class:`SymmFlowClassifier` starts at t=1 from ``(image, noise_y)`` and integrates to t=0 (one
  Euler step by default, as the authors do), then decodes the predicted code mask with the codebook.
  ``num_draws`` independent label-noise draws are run as one batch; their predicted masks are averaged
  before decoding and their per-draw distances are kept for the spread uncertainty.
* :class:`SymmFlowSegmenter` does the same with a per-pixel decision (25 steps by default).
* :class:`SymmFlowSampler` starts at t=0 from ``(noise_x, code_mask)`` and integrates to t=1 (25 steps); the
  code mask is a class's constant code or a label map's code mask (semantic image synthesis).

For Latent MedSymmFlow the classifier takes the image's latent and a ``decode`` callable that maps the
predicted code latents back to code masks (``LatentCodec.decode_image``); the segmenter takes a ``codec``,
encodes the image, integrates in latent space and decodes the predicted code latent to a pixel code mask
before the per-pixel decision; the sampler takes a ``codec``, encodes the code mask, integrates in latent
space and decodes the generated image.

``time_coupling`` chooses the path each inferer integrates: ``coupled`` (the paper's: one time ``t`` of
shape (B,) for both halves, both halves move), ``decoupled`` (a network trained with decoupled times, see
:class:`~medsymmflow.networks.SymmFlowUNet`: the other half is held clean while one half is integrated,
``t = (1, t_y)`` for classification / segmentation, ``t = (t_x, 0)`` for generation) or ``auto`` (the
default: ``decoupled`` exactly when the network was trained decoupled, so a paper checkpoint runs the
paper's path). :class:`SymmFlowSampler`'s ``guidance_scale`` ``w`` adds classifier-free guidance
(:mod:`medsymmflow.flow.guidance`); it needs the decoupled path and doubles the network evaluations per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from monai.inferers import Inferer

from medsymmflow.checks import one_of, positive_int
from medsymmflow.codes import ClassCodebook, beta_to_amplitude, majority_class
from medsymmflow.flow.guidance import GuidedVelocity, check_guidance_scale, guidance_evaluations
from medsymmflow.flow.solver import SymmFlowSolver, check_method
from medsymmflow.networks.latent import LatentCodec, check_codec
from medsymmflow.networks.unet import is_decoupled
from medsymmflow.precision import autocast_context, resolve_autocast

__all__ = [
    "INFERER_DECISIONS", "TIME_COUPLINGS", "ClassificationResult", "SymmFlowClassifier", "SymmFlowSampler",
    "SymmFlowSegmenter", "check_guidance", "resolve_time_coupling",
]

# mean / mode decode the draw-averaged code, vote lets the draws vote (classification), pixel decides per pixel
INFERER_DECISIONS = ("mean", "mode", "vote", "pixel")
TIME_COUPLINGS = ("auto", "coupled", "decoupled")


def resolve_time_coupling(time_coupling: str, network: Any) -> str:
    """``coupled`` or ``decoupled`` for ``network``: ``auto`` follows how it was trained; ``decoupled`` needs a decoupled network."""
    one_of(time_coupling, TIME_COUPLINGS, "time_coupling")
    decoupled = is_decoupled(network)
    if time_coupling == "auto":
        return "decoupled" if decoupled else "coupled"
    if time_coupling == "decoupled" and not decoupled:
        raise ValueError(
            "time_coupling 'decoupled' needs a network trained with decoupled times (SymmFlowUNet(decoupled_time=True)); "
            "this one was trained coupled: use 'coupled' or 'auto'"
        )
    return time_coupling


@dataclass
class ClassificationResult:
    """Decoded predictions for a batch of ``B`` images over ``K`` classes and ``R`` noise draws."""

    labels: torch.Tensor  # (B,) the decided class (mean: nearest code of the draw-averaged code)
    distances: torch.Tensor  # (B, K) distance to every class code (vote: mean over draws; mode: mean over pixels)
    uncertainty: torch.Tensor  # (B,) distance to the decided class's code
    draw_distances: torch.Tensor  # (R, B, K) distances of each draw on its own
    code: torch.Tensor  # (B, C, *spatial) draw-averaged predicted code mask
    counts: torch.Tensor | None = None  # (B, K) what a counting decision counted: vote draws, mode pixels


def _check_image(inputs: torch.Tensor) -> None:
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    if inputs.ndim < 3:
        raise ValueError(f"inputs must have shape (B, C, *spatial), got {tuple(inputs.shape)}")
    if not inputs.is_floating_point():
        raise TypeError(f"inputs must be floating point in [-1, 1], got dtype {inputs.dtype}")
    if not torch.isfinite(inputs).all():
        raise ValueError("inputs contain NaN or infinite values")


class _ReverseInferer(Inferer):
    """Shared part of classification and segmentation: integrate t 1 -> 0 from (image, noise_y).

    ``time_coupling="decoupled"`` keeps the image clean (t_x = 1) while the label runs t_y: 1 -> 0.
    """

    def __init__(
        self,
        codebook: ClassCodebook,
        steps: int = 1,
        method: str = "euler",
        num_draws: int = 1,
        decision: str = "mean",
        code_channels: int | None = None,
        autocast: str | torch.dtype | None = None,
        time_coupling: str = "auto",
    ) -> None:
        super().__init__()
        # every setting fails here, at construction, not at the first batch after a whole training
        resolve_autocast(autocast)
        self.time_coupling = one_of(time_coupling, TIME_COUPLINGS, "time_coupling")
        self.num_draws = positive_int(num_draws, "num_draws")
        one_of(decision, INFERER_DECISIONS, "decision")
        self.steps = positive_int(steps, "steps")
        self.method = check_method(method)
        self.codebook = codebook
        self.decision = decision
        self.code_channels = codebook.channels if code_channels is None else int(code_channels)
        self.autocast = autocast

    def predict_code(
        self,
        inputs: torch.Tensor,
        network: Callable[..., Any],
        generator: torch.Generator | None = None,
        code_shape: tuple[int, ...] | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predicted code masks of every draw, shape ``(R, B, C_y, *spatial)``.

        ``noise`` is the label noise at t=1 of shape :meth:`noise_shape` (draw-major); without it the
        noise is drawn from ``generator`` (the deployment export passes it in, see :mod:`medsymmflow.deploy`).
        """
        _check_image(inputs)
        r = self.num_draws
        shape = self.noise_shape(inputs, code_shape)
        if noise is None:
            noise_y = torch.randn(shape, generator=generator, device=inputs.device, dtype=inputs.dtype)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape {shape} ({r} draws x batch, code channels, *spatial), got {tuple(noise.shape)}")
        else:
            noise_y = noise.to(device=inputs.device, dtype=inputs.dtype)
        x = inputs.repeat((r,) + (1,) * (inputs.ndim - 1)) if r > 1 else inputs
        hold = "x" if resolve_time_coupling(self.time_coupling, network) == "decoupled" else None
        with autocast_context(inputs.device, resolve_autocast(self.autocast, inputs.device)):
            out = SymmFlowSolver(network).sample(
                x, noise_y, t_start=1.0, t_end=0.0, steps=self.steps, method=self.method, hold=hold
            )
        y = out.y.float()  # distances and decisions are taken in float32 whatever the network ran in
        return y.reshape((r, inputs.shape[0]) + y.shape[1:])

    def noise_shape(self, inputs: torch.Tensor, code_shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
        """Shape ``(R * B, C_y, *spatial)`` of the label noise one call draws for ``inputs`` (B, C, *spatial)."""
        return (self.num_draws * inputs.shape[0], self.code_channels) + tuple(code_shape or inputs.shape[2:])


class SymmFlowClassifier(_ReverseInferer):
    """Image -> class with ``steps`` reverse ODE steps averaged over ``num_draws`` label-noise draws.

    ``decision``: ``mean`` / ``mode`` decode the draw-averaged code (the papers' rule); ``vote`` decodes
    every draw and takes the majority class (ties by :func:`~medsymmflow.codes.majority_class`: the smaller
    mean distance). The result's ``counts`` (votes, or pixels for ``mode``) rank the classes for
    :func:`~medsymmflow.codes.decision_scores`. ``autocast`` (``none`` / ``auto`` / ``bfloat16`` /
    ``float16``, see :mod:`medsymmflow.precision`) runs the network in mixed precision.
    ``time_coupling`` (``auto`` / ``coupled`` / ``decoupled``, see the module docstring): ``decoupled``
    keeps the image clean at t_x = 1 while the label is integrated, the network seeing ``t = (1, t_y)``.
    """

    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        network: Callable[..., Any],
        generator: torch.Generator | None = None,
        decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
        noise: torch.Tensor | None = None,
    ) -> ClassificationResult:
        """Classify ``inputs`` (B, C, *spatial); ``decode`` maps predicted (latent) codes to code masks first.

        ``noise``: the label noise to start from instead of drawing it from ``generator`` (see :meth:`predict_code`).
        """
        codes = self.predict_code(inputs, network, generator, noise=noise)
        if decode is not None:
            codes = torch.stack([decode(c) for c in codes])
        mean_code = codes.mean(0)
        if self.decision == "vote":
            # Each draw decodes on its own and the draws vote: with several Euler steps every draw lands
            # near one class code, so the vote follows the most likely class, whereas the mean of the
            # draws (like a one-step prediction) is the posterior mean of the codes, which can sit
            # nearest to a class between two likely ones.
            per_draw = torch.stack([self.codebook.decode(c, "mean").distances for c in codes])
            votes = torch.nn.functional.one_hot(per_draw.argmin(-1), self.codebook.num_classes).sum(0)
            distances = per_draw.mean(0)
            labels = majority_class(votes, distances)
            uncertainty = distances.gather(1, labels[:, None])[:, 0]
            return ClassificationResult(labels, distances, uncertainty, per_draw, mean_code, counts=votes)
        summary = self.codebook.decode(mean_code, self.decision)
        per_draw = torch.stack([self.codebook.decode(c, self.decision).distances for c in codes])
        return ClassificationResult(
            labels=summary.labels,
            distances=summary.distances,
            uncertainty=summary.uncertainty,
            draw_distances=per_draw,
            code=mean_code,
            counts=summary.counts,
        )


class SymmFlowSegmenter(_ReverseInferer):
    """Image -> per-pixel class map and distance map with ``steps`` reverse ODE steps (25 by default).

    With a ``codec`` (Latent MedSymmFlow) the image is encoded to a posterior sample of its latent
    (:meth:`encode`), the flow runs on latents, and the draw-averaged predicted code latent is decoded to
    a code mask of the image's size before every pixel takes its nearest class code: labels and
    uncertainty maps are per pixel at the image's resolution, as in pixel space. ``time_coupling`` as
    for :class:`SymmFlowClassifier` (``decoupled``: the image held clean, ``t = (1, t_y)``).
    """

    def __init__(
        self,
        codebook: ClassCodebook,
        steps: int = 25,
        method: str = "euler",
        num_draws: int = 1,
        autocast: str | torch.dtype | None = None,
        codec: LatentCodec | None = None,
        time_coupling: str = "auto",
    ) -> None:
        codec = check_codec(codec, codebook)
        super().__init__(
            codebook, steps=steps, method=method, num_draws=num_draws, decision="pixel", autocast=autocast,
            code_channels=None if codec is None else codec.latent_channels, time_coupling=time_coupling,
        )
        self.codec = codec

    def encode(self, inputs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The flow's image state for ``inputs`` (B, C, H, W): a posterior sample of the latent with a codec, the image itself without."""
        _check_image(inputs)
        return inputs if self.codec is None else self.codec.encode_image(inputs, generator=generator)

    def noise_shape(self, inputs: torch.Tensor, code_shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
        """Shape of the label noise for images ``inputs`` (B, C, *spatial); with a codec it lies on the latent grid."""
        if self.codec is not None and code_shape is None:
            code_shape = self.codec.latent_shape(inputs.shape[2:])
        return super().noise_shape(inputs, code_shape)

    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        network: Callable[..., Any],
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        encoded: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(labels (B, *spatial), distance to the chosen code (B, *spatial))`` for images ``inputs``.

        ``noise``: the label noise at t=1 (shape :meth:`noise_shape`) instead of a draw from ``generator``, so
        that several step counts can start from the same noise; ``encoded``: :meth:`encode` of ``inputs``
        drawn once for all of them (with a codec; drawn from ``generator`` when not given).
        """
        x = self.encode(inputs, generator) if encoded is None else encoded
        code = self.predict_code(x, network, generator, code_shape=tuple(x.shape[2:]), noise=noise).mean(0)
        if self.codec is not None:
            code = self.codec.decode_image(code, channels=self.codebook.channels).float()
        out = self.codebook.decode(code, "pixel")
        return out.labels, out.uncertainty


_COUPLED_GUIDANCE = (
    "guidance_scale {w} needs the decoupled path (the label at t_y = 1 is the unconditional model), but {how}: "
    "use guidance_scale 1 or a network trained with decoupled times"
)


def check_guidance(time_coupling: str, guidance_scale: float) -> tuple[str, float]:
    """``(time_coupling, guidance_scale)`` of a sampler; ValueError for an unknown path, a scale < 0 or guidance on the coupled path."""
    one_of(time_coupling, TIME_COUPLINGS, "time_coupling")
    scale = check_guidance_scale(guidance_scale)
    if time_coupling == "coupled" and scale != 1.0:
        raise ValueError(_COUPLED_GUIDANCE.format(w=scale, how="time_coupling is 'coupled'"))
    return time_coupling, scale


class SymmFlowSampler(Inferer):
    """Conditional generation: ``(noise_x, code_mask)`` at t=0 integrated to t=1.

    The condition is either one class index per sample (a constant code mask, class-conditional
    generation) or a full code mask per sample, e.g. a label map encoded with
    :meth:`~medsymmflow.codes.ClassCodebook.label_map_to_code_mask` (semantic image synthesis); both
    are dequantized with ``beta`` as in training.
    With a ``codec`` (:class:`~medsymmflow.networks.LatentCodec`) the code mask of the image size is
    encoded (posterior mode), the latents are integrated and the generated latent is decoded to
    ``image_channels`` channels; ``spatial_size`` stays the image size.

    ``time_coupling`` (``auto`` / ``coupled`` / ``decoupled``, see the module docstring): ``decoupled``
    holds the code mask clean and integrates the image alone, the network seeing ``t = (t_x, 0)``.
    ``guidance_scale`` ``w`` != 1 adds classifier-free guidance (:class:`~medsymmflow.flow.GuidedVelocity`,
    label noise drawn once per sample from the generator after the image noise): it needs the decoupled
    path (a ``coupled`` sampler refuses it here, ``auto`` when the network turns out coupled) and costs
    two network evaluations per velocity call, so the NFE per step doubles; ``w = 1`` is the conditional
    field itself at one evaluation.
    """

    def __init__(
        self,
        codebook: ClassCodebook,
        image_channels: int,
        steps: int = 25,
        method: str = "euler",
        beta: float = 0.0,
        codec: LatentCodec | None = None,
        time_coupling: str = "auto",
        guidance_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.codebook = codebook
        self.image_channels = int(image_channels)
        self.steps = positive_int(steps, "steps")
        self.method = check_method(method)
        self.beta = codebook.check_beta(beta)
        self.codec = check_codec(codec, codebook)
        self.time_coupling, self.guidance_scale = check_guidance(time_coupling, guidance_scale)

    @property
    def network_evaluations(self) -> int:
        """Network evaluations per velocity call: 2 with guidance (``guidance_scale`` != 1), else 1."""
        return guidance_evaluations(self.guidance_scale)

    def resolve_time_coupling(self, network: Callable[..., Any]) -> str:
        """The path this sampler integrates with ``network``: ``coupled`` or ``decoupled`` (guidance checked)."""
        coupling = resolve_time_coupling(self.time_coupling, network)
        if coupling == "coupled" and self.guidance_scale != 1.0:
            raise ValueError(_COUPLED_GUIDANCE.format(w=self.guidance_scale, how="the network was trained coupled"))
        return coupling

    def _integrate(
        self, noise_x: torch.Tensor, y: torch.Tensor, network: Callable[..., Any], generator: torch.Generator | None
    ) -> torch.Tensor:
        """The image state at t_x = 1 from ``(noise_x, y)`` at 0, on the path :meth:`resolve_time_coupling` picks."""
        if self.resolve_time_coupling(network) == "coupled":
            return SymmFlowSolver(network).sample(noise_x, y, t_start=0.0, t_end=1.0, steps=self.steps, method=self.method).x
        velocity: Callable[..., Any] = network
        if self.guidance_scale != 1.0:
            xi_y = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
            velocity = GuidedVelocity(network, xi_y, self.guidance_scale)
        out = SymmFlowSolver(velocity).sample(
            noise_x, y, t_start=0.0, t_end=1.0, steps=self.steps, method=self.method, hold="y"
        )
        return out.x

    def condition(
        self,
        inputs: torch.Tensor,
        spatial_size: tuple[int, ...],
        device: torch.device,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The dequantized start code ``(B, C_y, *spatial)`` of class indices ``(B,)`` or clean code masks ``(B, C_y, *spatial)``."""
        inputs = torch.as_tensor(inputs)
        if not (inputs.is_floating_point() and inputs.ndim >= 3):
            labels = inputs.reshape(-1)
            return self.codebook.dequantized_code_mask(labels, tuple(spatial_size), self.beta, device, generator=generator)
        if inputs.shape[1] != self.codebook.channels:
            raise ValueError(
                f"a code mask condition must have shape (B, {self.codebook.channels}, *spatial) for this "
                f"{self.codebook.kind} codebook, got {tuple(inputs.shape)}"
            )
        if not torch.isfinite(inputs).all():
            raise ValueError("the code mask condition contains NaN or infinite values")
        code = inputs.to(device=device, dtype=torch.float32)
        if self.beta > 0:
            # the noise class-conditional masks get (ClassCodebook.dequantized_code_mask), drawn the same way
            noise = torch.rand(code.shape, generator=generator, device=code.device)
            code = code + (noise - 0.5) * (2.0 * beta_to_amplitude(self.beta))
        return code

    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        network: Callable[..., Any],
        spatial_size: tuple[int, ...] = (28, 28),
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Generate one image per class index ``(B,)`` or per code mask ``(B, C_y, *spatial)`` in ``inputs``.

        Returns ``(B, C_x, *spatial)`` in [-1, 1]-ish; a code mask sets ``spatial`` itself (``spatial_size`` is
        then not used).
        """
        inputs = torch.as_tensor(inputs)
        device = next(network.parameters()).device if isinstance(network, torch.nn.Module) else inputs.device
        y = self.condition(inputs, tuple(spatial_size), device, generator)
        batch, spatial = y.shape[0], tuple(y.shape[2:])
        self.resolve_time_coupling(network)  # before any noise is drawn or a codec runs
        if self.codec is None:
            noise_x = torch.randn((batch, self.image_channels) + spatial, generator=generator, device=device)
            return self._integrate(noise_x, y, network, generator)
        y = self.codec.encode_mask(y)
        noise_x = torch.randn((batch, self.codec.latent_channels) + tuple(y.shape[2:]), generator=generator, device=device)
        return self.codec.decode_image(self._integrate(noise_x, y, network, generator), self.image_channels)
