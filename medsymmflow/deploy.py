"""Deployment: a bundle checkpoint -> one TorchScript classifier that runs with plain ``torch.jit.load``.

The exported module maps a float32 image batch ``(B, C, size, size)`` in ``[-1, 1]`` (grey level
``v / 127.5 - 1``, what the inference bundle's preprocessing hands the network) to a tuple

    (class index (B,) int64, per-class scores (B, K) float32, uncertainty (B,) float32)

with the checkpoint's EMA weights, the bundle's ``evaluation`` settings (steps, method, draws,
decision, score, temperature) and its seed. It needs neither medsymmflow nor MONAI at load time.

How it is built, and why:

* The classification itself is the library's own code: :class:`~medsymmflow.inferers.SymmFlowClassifier`
  (reverse ODE steps from ``(image, noise_y)``, nearest-code decoding, distance = uncertainty) and
  :meth:`ClassCodebook.class_scores <medsymmflow.codes.ClassCodebook.class_scores>` (softmax of negative
  distances or the code posterior) ranked as the decision ranks the classes
  (:func:`~medsymmflow.codes.decision_scores`). These are not TorchScript-compilable (MONAI's DiffusionModelUNet,
  a plain-Python codebook), so they are **traced** with the label noise as an explicit input: the
  trace records the tensor operations of exactly the code the bundle runs, with the batch size left
  dynamic (the export checks the file on a batch size other than the trace's).
* A small **scripted** wrapper around the trace checks the input (shape, dtype, range, finite values)
  and draws the label noise: ``torch.randn`` from a ``torch.Generator`` seeded with the bundle's seed
  at every call, as :class:`~medsymmflow.engines.SymmFlowEvaluator` seeds its generator at the start of
  an inference run. One call on the images of one inference batch therefore returns that batch's
  bundle outputs exactly; a bundle run over several batches continues its noise stream from batch to
  batch, so its later batches differ from a fresh call within the effect of the noise.
* Adaptive ODE methods (torchdiffeq) and Latent MedSymmFlow checkpoints (a VAE in the loop) are refused.
  The file runs in float32 on the device it was exported on (``cpu`` by default).

Metadata (class names, code kind and codes, size, channels, score kind, temperature, inference
settings, run identity) travel in the file as the extra file ``metadata.json``::

    extra = {"metadata.json": ""}
    model = torch.jit.load("classifier.ts", _extra_files=extra)
    meta = json.loads(extra["metadata.json"])
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medsymmflow.checks import positive_int
from medsymmflow.codes import DECISIONS, ClassCodebook, decision_scores
from medsymmflow.data.medmnist import medmnist_class_names
from medsymmflow.flow.solver import FIXED_STEP_METHODS
from medsymmflow.generation import load_generator
from medsymmflow.inferers import SymmFlowClassifier, resolve_time_coupling
from medsymmflow.io import atomic_write

__all__ = ["EXPORT_DECISIONS", "METADATA_FILE", "DeployedClassifier", "export_classifier", "read_metadata"]

METADATA_FILE = "metadata.json"
EXPORT_FORMAT = "medsymmflow-classifier/1"
EXPORT_DECISIONS = tuple(d for d in DECISIONS if d != "pixel") + ("vote",)
_TRACE_BATCH = 2  # batch of the trace; the export checks the file on _TRACE_BATCH + 1 images
_RANGE_SLACK = 1e-3  # float rounding around [-1, 1] that the input check lets through


class _TracedClassification(nn.Module):
    """``(image, noise) -> (labels, scores, uncertainty)`` through the library's classifier and codebook."""

    def __init__(self, network: nn.Module, classifier: SymmFlowClassifier, score: str, temperature: float) -> None:
        super().__init__()
        self.network = network
        self.classifier = classifier
        self.score = score
        self.temperature = float(temperature)

    def forward(self, image: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Classify ``image`` starting from the label noise ``noise``."""
        result = self.classifier(image, self.network, noise=noise)
        base = self.classifier.codebook.class_scores(result.distances, self.score, self.temperature)
        scores = decision_scores(base, result.labels, result.counts)
        return result.labels, scores.float(), result.uncertainty.float()


class DeployedClassifier(nn.Module):
    """Scripted entry point: checks an image batch, draws the seeded label noise, runs the traced classifier."""

    def __init__(
        self, traced: torch.jit.ScriptModule, image_channels: int, size: int, code_channels: int, num_draws: int, seed: int
    ) -> None:
        super().__init__()
        self.traced = traced
        self.image_channels = int(image_channels)
        self.size = int(size)
        self.code_channels = int(code_channels)
        self.num_draws = int(num_draws)
        self.seed = int(seed)
        self.max_abs = 1.0 + _RANGE_SLACK

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, C, size, size)`` float in [-1, 1] -> (class (B,), scores (B, K), uncertainty (B,))."""
        if image.dim() != 4 or image.shape[1] != self.image_channels or image.shape[2] != self.size or image.shape[3] != self.size:
            raise ValueError(
                "medsymmflow classifier: expected images of shape (B, "
                + str(self.image_channels) + ", " + str(self.size) + ", " + str(self.size) + "), got " + str(image.shape)
            )
        if image.dtype != torch.float32:
            raise ValueError("medsymmflow classifier: expected float32 images in [-1, 1], got " + str(image.dtype))
        if image.shape[0] == 0:
            raise ValueError("medsymmflow classifier: the image batch is empty")
        if not bool(torch.isfinite(image).all()):
            raise ValueError("medsymmflow classifier: the images contain NaN or infinite values")
        if bool(image.abs().max() > self.max_abs):
            raise ValueError(
                "medsymmflow classifier: expected values in [-1, 1] (8-bit grey level v as v / 127.5 - 1), got ["
                + str(float(image.min())) + ", " + str(float(image.max())) + "]"
            )
        generator = torch.Generator(device=image.device)
        generator.manual_seed(self.seed)
        noise = torch.randn(
            [self.num_draws * image.shape[0], self.code_channels, self.size, self.size],
            generator=generator, device=image.device, dtype=image.dtype,
        )
        return self.traced(image, noise)


def _check_settings(steps: int, method: str, draws: int, decision: str, score: str, temperature: float) -> None:
    """One ValueError naming the setting for anything the export cannot reproduce."""
    positive_int(steps, "steps")
    if method not in FIXED_STEP_METHODS:
        raise ValueError(
            f"method {method!r} cannot be exported: adaptive ODE solvers do not trace; choose one of {', '.join(FIXED_STEP_METHODS)}"
        )
    positive_int(draws, "draws")
    if decision not in EXPORT_DECISIONS:
        raise ValueError(f"unknown decision {decision!r}; choose one of {', '.join(EXPORT_DECISIONS)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    del score  # checked against the codebook by ClassCodebook.check_score


def export_classifier(
    ckpt: str | os.PathLike,
    output: str | os.PathLike,
    steps: int = 1,
    method: str = "euler",
    draws: int = 1,
    decision: str = "mean",
    score: str = "softmax",
    temperature: float = 0.1,
    seed: int = 0,
    device: str | torch.device = "cpu",
    time_coupling: str = "auto",
) -> dict[str, Any]:
    """Write the TorchScript classifier of bundle checkpoint ``ckpt`` to ``output`` atomically; returns its metadata.

    The settings are the inference bundle's ``evaluation#steps``, ``#method``, ``#draws``, ``#decision``,
    ``#score``, ``#temperature``, ``#time_coupling`` and its ``seed`` (the metadata records the resolved
    coupling); pass the values the bundle runs with to get its outputs.
    Raises FileNotFoundError / ValueError (naming the file or setting) for a missing or unusable
    checkpoint, a latent checkpoint, or a setting the export cannot reproduce.
    """
    _check_settings(steps, method, draws, decision, score, temperature)
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} was asked for but torch sees no CUDA GPU; export with device cpu")
    loaded = load_generator(ckpt, device=device)
    if loaded.codec is not None:
        raise ValueError(f"checkpoint {ckpt} is a Latent MedSymmFlow run (VAE {loaded.run_info['vae']}); only pixel-space checkpoints can be exported")
    codebook: ClassCodebook = loaded.codebook
    codebook.check_score(score)
    # the bundle's evaluation#time_coupling: auto follows how the checkpoint was trained
    coupling = resolve_time_coupling(time_coupling, loaded.network)
    info = loaded.run_info
    size, channels = int(info["size"]), int(info["image_channels"])
    classifier = SymmFlowClassifier(
        codebook, steps=int(steps), method=method, num_draws=int(draws), decision=decision, time_coupling=coupling
    )
    core = _TracedClassification(loaded.network, classifier, score, temperature).eval()

    def example(batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.rand((batch, channels, size, size), generator=generator, device=device) * 2 - 1
        return image, torch.randn(classifier.noise_shape(image), generator=generator, device=device)

    gen = torch.Generator(device=device).manual_seed(int(seed))
    with torch.no_grad(), warnings.catch_warnings():
        # the input checks of the traced code are evaluated once, on the example; the scripted wrapper checks every call
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)  # recent torch releases mark TorchScript deprecated; torch.jit.load still reads the file
        traced = torch.jit.trace(core, example(_TRACE_BATCH, gen), check_trace=False)
        module = torch.jit.script(DeployedClassifier(traced, channels, size, codebook.channels, int(draws), int(seed)).eval())

    class_names = medmnist_class_names(str(info["flag"]), codebook.num_classes)
    metadata: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "input": f"float32 (B, {channels}, {size}, {size}) in [-1, 1] (8-bit grey level v as v / 127.5 - 1)",
        "outputs": ["class (B,) int64", f"scores (B, {codebook.num_classes}) float32", "uncertainty (B,) float32"],
        "class_names": class_names,
        "num_classes": codebook.num_classes,
        "code_kind": codebook.kind,
        "codes": codebook.codes.tolist(),
        "size": size,
        "image_channels": channels,
        "score": score,
        "temperature": float(temperature),
        "steps": int(steps),
        "method": method,
        "draws": int(draws),
        "decision": decision,
        "time_coupling": coupling,
        "seed": int(seed),
        "device": str(device),
        "checkpoint": str(Path(ckpt).resolve()),
        "run_info": {k: v for k, v in info.items()},
        "torch_version": torch.__version__,
    }
    _check_export(module, core, classifier, example(_TRACE_BATCH + 1, gen), int(seed), ckpt)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(module, buffer, _extra_files={METADATA_FILE: json.dumps(metadata, indent=2)})
    atomic_write(output, buffer.getvalue())
    return metadata


def _check_export(
    module: torch.jit.ScriptModule,
    core: _TracedClassification,
    classifier: SymmFlowClassifier,
    sample: tuple[torch.Tensor, torch.Tensor],
    seed: int,
    ckpt: str | os.PathLike,
) -> None:
    """The scripted file must give the eager library's outputs on a batch size other than the trace's."""
    image = sample[0]
    noise = torch.randn(classifier.noise_shape(image), generator=torch.Generator(device=image.device).manual_seed(seed), device=image.device)
    with torch.no_grad():
        got = module(image)
        want = core(image, noise)
    if not torch.equal(got[0], want[0]) or not all(torch.allclose(g, w, rtol=1e-4, atol=1e-5) for g, w in zip(got[1:], want[1:])):
        raise ValueError(f"the traced classifier of {ckpt} does not reproduce the library's outputs on a new batch size; it was not written")


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``metadata.json`` embedded in an exported classifier file."""
    extra = {METADATA_FILE: ""}
    torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra[METADATA_FILE])
