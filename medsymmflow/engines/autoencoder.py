"""Training the package's small VAE for Latent MedSymmFlow, and exporting it with its scale factor.

Latent MedSymmFlow passes both the images and the constant class code masks through the VAE, and
decodes the predicted mask latents back to colours that the codebook must recognise. The VAE is
therefore trained on both: every batch holds the images (repeated to the VAE's channels when gray)
and code masks of some of the batch's classes, dequantized with ``beta`` as in flow training.

:class:`VAEExport` runs when training ends: it measures the scale factor on training latents
(``1 / std``, Stable Diffusion's recipe) and writes ``vae.pt`` (:func:`~medsymmflow.networks.save_vae`)
plus ``vae_metrics.json`` with the reconstruction error of validation images and whether every
class's code mask survives the encode -> decode round trip.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents, default_prepare_batch
from monai.networks.nets import AutoencoderKL
from monai.utils import CommonKeys as Keys
from torch.optim import Optimizer

from medsymmflow.codes import ClassCodebook
from medsymmflow.io import atomic_write, json_safe
from medsymmflow.networks.latent import LatentCodec, PresetAutoencoderKL, match_vae_channels, measure_scale_factor, save_vae

__all__ = ["AutoencoderTrainer", "VAEExport", "kl_divergence"]

_RECON_LOSSES = ("l1", "mse")


def kl_divergence(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over latent elements, averaged over the batch."""
    kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - 2.0 * torch.log(z_sigma) - 1.0)
    return kl.flatten(1).sum(1).mean()


class AutoencoderTrainer(SupervisedTrainer):
    """Trains a MONAI AutoencoderKL on images and class code masks: reconstruction + ``kl_weight`` * KL.

    ``recon_loss`` is ``"l1"`` or ``"mse"``. With a ``codebook``, the code masks of the first
    ``ceil(mask_fraction * B)`` labels of each batch (image-sized, dequantized with ``beta`` grey levels)
    are appended to the batch, so the VAE learns to return the code colours it will be asked to decode;
    their reconstruction loss is averaged on its own and weighted by ``mask_weight``, because the codes
    sit only ~75 grey levels apart and must come back far more exactly than image detail.
    ``state.output`` holds ``loss``, ``recon_loss``, ``mask_loss`` and ``kl`` (floats), ``image`` and
    ``pred`` (the batch and its reconstruction).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Any,
        network: AutoencoderKL,
        optimizer: Optimizer,
        codebook: ClassCodebook | None = None,
        beta: float = 4.0,
        recon_loss: str = "l1",
        kl_weight: float = 1e-6,
        mask_fraction: float = 0.5,
        mask_weight: float = 1.0,
        epoch_length: int | None = None,
        prepare_batch: Callable = default_prepare_batch,
        train_handlers: Sequence | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(getattr(network, "module", network), AutoencoderKL):
            raise TypeError(f"network must be a MONAI AutoencoderKL (see medsymmflow.networks.build_vae), got {type(network).__name__}")
        if recon_loss not in _RECON_LOSSES:
            raise ValueError(f"unknown recon_loss {recon_loss!r}; choose one of {', '.join(_RECON_LOSSES)}")
        if not (math.isfinite(float(kl_weight)) and float(kl_weight) >= 0):
            raise ValueError(f"kl_weight must be a finite number >= 0, got {kl_weight}")
        if not (math.isfinite(float(mask_weight)) and float(mask_weight) >= 0):
            raise ValueError(f"mask_weight must be a finite number >= 0, got {mask_weight}")
        if not 0.0 <= float(mask_fraction) <= 1.0:
            raise ValueError(f"mask_fraction must lie in [0, 1], got {mask_fraction}")
        if codebook is not None and not isinstance(codebook, ClassCodebook):
            raise TypeError(f"codebook must be a ClassCodebook or None, got {type(codebook).__name__}")
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=torch.nn.L1Loss() if recon_loss == "l1" else torch.nn.MSELoss(),
            epoch_length=epoch_length,
            prepare_batch=prepare_batch,
            train_handlers=train_handlers,
            decollate=False,
            **kwargs,
        )
        self.codebook = codebook
        self.beta = 0.0 if codebook is None else codebook.check_beta(beta)
        self.recon_loss = recon_loss
        self.kl_weight = float(kl_weight)
        self.mask_fraction = float(mask_fraction)
        self.mask_weight = float(mask_weight)
        self.vae_channels = int(getattr(network, "module", network).encoder.in_channels)

    def training_inputs(self, image: torch.Tensor, label: torch.Tensor | None) -> torch.Tensor:
        """The batch the VAE reconstructs: images, then the dequantized code masks of some of their classes."""
        inputs = match_vae_channels(image, self.vae_channels, "image")
        if self.codebook is None or self.mask_fraction == 0:
            return inputs
        if label is None:
            raise ValueError("AutoencoderTrainer with a codebook needs a 'label' in every batch to build code masks")
        labels = torch.as_tensor(label).reshape(-1)
        n = max(1, math.ceil(self.mask_fraction * labels.numel()))
        masks = self.codebook.dequantized_code_mask(labels[:n], tuple(image.shape[2:]), self.beta, image.device)
        return torch.cat([inputs, match_vae_channels(masks, self.vae_channels, "code mask")])

    def _iteration(self, engine: "AutoencoderTrainer", batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        image, label = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)[:2]
        image = torch.as_tensor(image).float()
        inputs = engine.training_inputs(image, label)

        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        recon, z_mu, z_sigma = engine.network(inputs)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        n = image.shape[0]
        rec = engine.loss_function(recon[:n].float(), inputs[:n])
        mask = engine.loss_function(recon[n:].float(), inputs[n:]) if inputs.shape[0] > n else rec.new_zeros(())
        kl = kl_divergence(z_mu.float(), z_sigma.float())
        loss = rec + engine.mask_weight * mask + engine.kl_weight * kl
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"VAE loss became {loss.item()} at epoch {engine.state.epoch}, iteration {engine.state.iteration}: "
                "lower the learning rate or check the input data for NaN"
            )
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: label, Keys.LOSS: loss}
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        loss.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        engine.state.output.update(
            {
                Keys.PRED: recon.detach(), Keys.LOSS: loss.detach(),
                "recon_loss": float(rec.detach()), "mask_loss": float(mask.detach()), "kl": float(kl.detach()),
            }
        )
        return engine.state.output


class VAEExport:
    """At the end of training: measure the scale factor, write ``vae.pt`` and ``vae_metrics.json``.

    ``scale_loader`` yields training batches (``image`` key) for the scale factor (at most
    ``max_batches``); ``val_loader``, when given, is used for the image reconstruction error. The
    mask check encodes (posterior mode) and decodes one clean code mask per class of ``codebook`` at
    the image size and decodes its class with the codebook's ``mean`` rule. The VAE's train/eval mode
    is restored afterwards, so the handler can also run mid-training.
    """

    def __init__(
        self,
        vae: PresetAutoencoderKL,
        path: str | os.PathLike,
        scale_loader: Any,
        codebook: ClassCodebook | None = None,
        val_loader: Any = None,
        metrics_path: str | os.PathLike | None = None,
        max_batches: int | None = 20,
        seed: int = 0,
    ) -> None:
        if not isinstance(getattr(vae, "module", vae), PresetAutoencoderKL):
            raise TypeError(f"vae must be a package VAE (see medsymmflow.networks.build_vae), got {type(vae).__name__}")
        self.vae = getattr(vae, "module", vae)
        self.path = Path(path)
        self.scale_loader = scale_loader
        self.codebook = codebook
        self.val_loader = val_loader
        self.metrics_path = None if metrics_path is None else Path(metrics_path)
        self.max_batches = max_batches
        self.seed = int(seed)
        self.results: dict[str, Any] = {}

    def attach(self, engine: Engine) -> None:
        """Export when ``engine`` completes."""
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine | None = None) -> dict[str, Any]:
        """Measure, write the VAE file and the metrics; return the metrics."""
        was_training = self.vae.training
        device = next(self.vae.parameters()).device
        generator = torch.Generator(device=device).manual_seed(self.seed)
        try:
            self.vae.eval()
            with torch.no_grad():
                scale = measure_scale_factor(self.vae, self.scale_loader, generator=generator, max_batches=self.max_batches)
                results: dict[str, Any] = {"scale_factor": scale, "vae_config": dict(self.vae.config)}
                codec = LatentCodec(self.vae, scale_factor=scale)
                if self.val_loader is not None:
                    results |= self._image_metrics(codec, device)
                if self.codebook is not None:
                    results |= self._mask_metrics(codec, device)
        finally:
            # the codec froze the weights; training continues with them trainable
            self.vae.requires_grad_(True).train(was_training)
        save_vae(self.path, self.vae, scale_factor=scale)
        results["vae_path"] = str(self.path)
        if engine is not None:
            results["epoch"] = int(engine.state.epoch)
        if self.metrics_path is not None:
            atomic_write(self.metrics_path, json.dumps(json_safe(results), indent=2) + "\n")
        self.results = results
        return results

    def _image_metrics(self, codec: LatentCodec, device: torch.device) -> dict[str, Any]:
        abs_err, sq_err, count = 0.0, 0.0, 0
        for i, batch in enumerate(self.val_loader):
            if self.max_batches is not None and i >= int(self.max_batches):
                break
            x = torch.as_tensor(batch["image"] if isinstance(batch, dict) else batch).float().to(device)
            recon = codec.decode_image(codec.encode_image(x, sample=False), x.shape[1])
            abs_err += float((recon - x).abs().double().sum())
            sq_err += float((recon - x).double().pow(2).sum())
            count += x.numel()
        if count == 0:
            return {}
        mse = sq_err / count
        # images live in [-1, 1]: a peak-to-peak range of 2
        psnr = 10.0 * math.log10(4.0 / mse) if mse > 0 else float("inf")
        return {"val_image_l1": abs_err / count, "val_image_mse": mse, "val_image_psnr": psnr}

    def _mask_metrics(self, codec: LatentCodec, device: torch.device) -> dict[str, Any]:
        size = self._image_size()
        labels = torch.arange(self.codebook.num_classes)
        masks = self.codebook.code_mask(labels, size).to(device)
        decoded = codec.decode_image(codec.encode_mask(masks), self.codebook.channels)
        out = self.codebook.decode(decoded.float().cpu(), "mean")
        return {
            "mask_round_trip_accuracy": float((out.labels == labels).float().mean()),
            "mask_round_trip_max_distance": float(out.distances.gather(1, labels[:, None]).max()),
            "code_min_distance": self.codebook.min_distance,
        }

    def _image_size(self) -> tuple[int, ...]:
        for batch in self.scale_loader:
            x = batch["image"] if isinstance(batch, dict) else batch
            return tuple(int(s) for s in torch.as_tensor(x).shape[2:])
        raise ValueError("VAEExport needs at least one batch in scale_loader")
