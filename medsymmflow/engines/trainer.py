"""SymmFlow training engine: a MONAI ``SupervisedTrainer`` whose iteration is one flow-matching step."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents, default_prepare_batch
from monai.utils import CommonKeys as Keys
from torch.optim import Optimizer

from medsymmflow.codes import ClassCodebook, dequantize
from medsymmflow.flow.loss import SymmFlowLoss, TimeSampler
from medsymmflow.flow.path import SymmetricPath, split_times
from medsymmflow.networks.latent import LatentCodec, check_codec
from medsymmflow.networks.unet import is_decoupled, predicts_data
from medsymmflow.precision import autocast_context, resolve_autocast

__all__ = ["SymmFlowTrainer", "check_label_map", "is_label_map"]


def is_label_map(labels: torch.Tensor) -> bool:
    """Whether a batch's labels are dense label maps ``(B, 1, *spatial)`` rather than one class index per image."""
    return labels.ndim >= 3


def check_label_map(labels: torch.Tensor, spatial_size: Sequence[int]) -> None:
    """Raise a ValueError unless ``labels`` is ``(B, 1, *spatial_size)``: one label map per image, on the image's grid."""
    if labels.shape[1] != 1 or tuple(labels.shape[2:]) != tuple(int(s) for s in spatial_size):
        raise ValueError(
            f"label maps must have shape (B, 1, {', '.join(str(int(s)) for s in spatial_size)}) to match the images, "
            f"got {tuple(labels.shape)}"
        )


class SymmFlowTrainer(SupervisedTrainer):
    """Trains a joint velocity network on (image, class) or (image, label map) batches.

    Each iteration: labels -> code mask (codebook) -> dequantize with ``beta`` -> sample ``t``
    and noise -> symmetric path -> weighted x/y velocity MSE -> backward -> optimizer step.
    Checkpoints, EMA, LR schedules, validation and logging are handlers wired in the bundle.

    The batch's ``label`` is either one class index per image (``(B,)`` or ``(B, 1)``: classification, a
    constant code mask) or a label map ``(B, 1, *spatial)`` on the image's grid (segmentation, one code per
    pixel; pixels equal to ``ignore_index`` get code 0 and are left out of the loss). A batch that carries a
    precomputed dequantized code mask under ``code_key`` (``LabelMapToCodeMaskd`` + ``UniformDequantized`` in
    the data pipeline) uses it as is. A ``valid_key`` entry (``ValidPixelMaskd``: ``(B, 1, *spatial)``,
    1 = labelled) masks the code half of the loss (see :class:`~medsymmflow.flow.SymmFlowLoss`); without
    one, a label map's ``ignore_index`` pixels give the mask. Class-index batches have no mask.

    With a ``codec`` (:class:`~medsymmflow.networks.LatentCodec`, Latent MedSymmFlow) the image is
    replaced by a posterior sample of its VAE latent and the full-resolution dequantized code mask by
    its posterior mode before the path is sampled, so the network learns the flow between latents
    (``x_channels = y_channels = codec.latent_channels``). A valid-pixel mask then goes to the latent
    grid by :meth:`~medsymmflow.networks.LatentCodec.encode_valid` (a latent cell counts only when all
    the pixels under it are labelled; ignored pixels enter the encoder as the fixed code 0).

    A batch from the latent cache (:class:`~medsymmflow.data.LatentCacheDataset`) carries the latents
    instead of pixels: ``image_latent`` / ``image_latent_std`` (the image's scaled posterior mean and
    standard deviation; each iteration draws a fresh sample from them), ``code_latent`` (an encoded
    dequantized code mask) and, with ignored pixels, ``valid_latent`` (the latent-grid valid mask). The
    VAE encoder is not run for such a batch and it needs no ``label``; ``batch_augment`` (a pixel-space
    augmentation) cannot apply to it and is refused.

    A ``time_sampler`` with decoupled rows (``TimeSampler(decoupled=...)``, (B, 2) times ``(t_x, t_y)``)
    needs a network built with ``decoupled_time=True`` (:func:`~medsymmflow.networks.is_decoupled`); the
    times go to the path and the network unchanged.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Any,
        network: torch.nn.Module,
        optimizer: Optimizer,
        codebook: ClassCodebook,
        beta: float = 4.0,
        loss_function: Callable | None = None,
        path: SymmetricPath | None = None,
        time_sampler: TimeSampler | None = None,
        batch_augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
        autocast_dtype: torch.dtype | str | None = None,
        epoch_length: int | None = None,
        prepare_batch: Callable = default_prepare_batch,
        train_handlers: Sequence | None = None,
        codec: LatentCodec | None = None,
        ignore_index: int | None = None,
        code_key: str = "code",
        valid_key: str = "valid",
        image_latent_key: str = "image_latent",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=SymmFlowLoss() if loss_function is None else loss_function,
            epoch_length=epoch_length,
            prepare_batch=prepare_batch,
            train_handlers=train_handlers,
            decollate=False,
            **kwargs,
        )
        self.codebook = codebook
        self.beta = codebook.check_beta(beta)
        self.path = SymmetricPath() if path is None else path
        self.time_sampler = TimeSampler() if time_sampler is None else time_sampler
        if getattr(self.time_sampler, "decoupled", 0.0) > 0 and not is_decoupled(network):
            raise ValueError(
                f"the time sampler draws decoupled image and label times (decoupled={self.time_sampler.decoupled}), "
                "but the network has one time input: build it with decoupled_time=True (in a bundle, "
                "training#time_decoupled > 0 does so) or set the sampler's decoupled to 0"
            )
        self.batch_augment = batch_augment
        # "auto" turns bf16 on only where the hardware runs it natively (see medsymmflow.precision)
        self.autocast_dtype = resolve_autocast(autocast_dtype, device)
        # float16 gradients underflow without loss scaling (bfloat16 has float32's range and needs none);
        # a disabled scaler passes the loss and the optimizer step through unchanged
        self.grad_scaler = torch.amp.GradScaler(torch.device(device).type, enabled=self.autocast_dtype == torch.float16)
        self.codec = check_codec(codec, codebook)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.code_key, self.valid_key = code_key, valid_key
        self.image_latent_key = image_latent_key

    def code_targets(self, labels: torch.Tensor, spatial_size: Sequence[int], device: torch.device) -> torch.Tensor:
        """Dequantized code masks ``(B, C_y, *spatial)`` for class indices ``(B,)`` or label maps ``(B, 1, *spatial)``."""
        labels = torch.as_tensor(labels)
        if not is_label_map(labels):
            return self.codebook.dequantized_code_mask(labels, tuple(spatial_size), self.beta, device)
        check_label_map(labels, spatial_size)
        code = self.codebook.label_map_to_code_mask(labels[:, 0].to(device), ignore_index=self.ignore_index)
        return dequantize(code.movedim(0, 1).contiguous(), self.beta)

    def valid_mask(self, batchdata: Any, labels: torch.Tensor, device: torch.device) -> torch.Tensor | None:
        """The batch's valid-pixel mask ``(B, 1, *spatial)``, from ``valid_key`` or a label map's ``ignore_index``; None for class indices."""
        if isinstance(batchdata, dict) and self.valid_key in batchdata:
            return torch.as_tensor(batchdata[self.valid_key]).to(device=device, dtype=torch.float32)
        if self.ignore_index is not None and is_label_map(torch.as_tensor(labels)):
            return (torch.as_tensor(labels) != self.ignore_index).to(device=device, dtype=torch.float32)
        return None

    def batch_code(self, batchdata: Any, labels: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """The dequantized code mask of a batch: its precomputed ``code_key`` entry, else :meth:`code_targets`."""
        if not (isinstance(batchdata, dict) and self.code_key in batchdata):
            return self.code_targets(labels, image.shape[2:], image.device)
        code = torch.as_tensor(batchdata[self.code_key]).to(device=image.device, dtype=torch.float32)
        expected = (image.shape[0], self.codebook.channels) + tuple(image.shape[2:])
        if tuple(code.shape) != expected:
            raise ValueError(
                f"the batch's '{self.code_key}' must be a code mask of shape {expected} (batch, the {self.codebook.kind} "
                f"codebook's {self.codebook.channels} channels, the image's grid), got {tuple(code.shape)}"
            )
        return code

    def cached_latents(self, batchdata: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(image latent sample, code latent, latent valid mask or None)`` of a latent-cache batch; the encoder is not run."""
        if self.batch_augment is not None:
            raise ValueError("batch_augment works on pixels and cannot apply to cached latents: drop it or train without the latent cache")
        device = self.state.device
        key = self.image_latent_key
        missing = [k for k in (f"{key}_std", "code_latent") if k not in batchdata]
        if missing:
            raise ValueError(f"a latent-cache batch with '{key}' must also hold {missing} (see medsymmflow.data.LatentCacheDataset)")
        mean = torch.as_tensor(batchdata[key]).to(device=device, dtype=torch.float32)
        std = torch.as_tensor(batchdata[f"{key}_std"]).to(device=device, dtype=torch.float32)
        code = torch.as_tensor(batchdata["code_latent"]).to(device=device, dtype=torch.float32)
        if mean.ndim != 4 or std.shape != mean.shape or code.shape != mean.shape:
            raise ValueError(
                f"cached latents must share one shape (B, C, h, w): '{key}' {tuple(mean.shape)}, "
                f"'{key}_std' {tuple(std.shape)}, 'code_latent' {tuple(code.shape)}"
            )
        valid = batchdata.get("valid_latent")
        if valid is not None:
            valid = torch.as_tensor(valid).to(device=device, dtype=torch.float32)
            if tuple(valid.shape) != (mean.shape[0], 1, *mean.shape[2:]):
                raise ValueError(f"'valid_latent' must have shape {(mean.shape[0], 1, *mean.shape[2:])}, got {tuple(valid.shape)}")
        # a fresh posterior sample every iteration, from torch's RNG that EpochSeedHandler re-seeds per epoch
        return mean + std * torch.randn_like(mean), code, valid

    def _iteration(self, engine: "SymmFlowTrainer", batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        if isinstance(batchdata, dict) and engine.image_latent_key in batchdata:
            image, code, valid = engine.cached_latents(batchdata)
            engine.state.output = {Keys.IMAGE: image, Keys.LABEL: batchdata.get(Keys.LABEL)}
        else:
            image, label = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)[:2]
            if label is None:
                raise ValueError("SymmFlowTrainer needs a 'label' in every batch")
            image = torch.as_tensor(image).float()
            if engine.batch_augment is not None:
                image = engine.batch_augment(image)
            code = engine.batch_code(batchdata, label, image)
            valid = engine.valid_mask(batchdata, label, image.device)
            engine.state.output = {Keys.IMAGE: image, Keys.LABEL: label}
            if engine.codec is not None:
                with torch.no_grad():
                    image = engine.codec.encode_image(image)
                    code = engine.codec.encode_mask(code)
                    if valid is not None:
                        valid = engine.codec.encode_valid(valid)
        t = engine.time_sampler(image.shape[0], device=image.device)
        sample = engine.path.sample(image, code, t)

        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with autocast_context(image.device, engine.autocast_dtype):
            v_x, v_y = engine.network(sample.x_t, sample.y_t, sample.t)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        pred_y, target_y = v_y.float(), sample.dy_t
        if predicts_data(engine.network):
            # the loss on the clean code the network predicts, y_hat = y_t - t_y * v_y, against the code itself:
            # the velocity loss weighted by t_y^2, which stays bounded where v_y = (y_t - y_hat) / t_y is large
            t_b = split_times(sample.t)[1].float().reshape((-1,) + (1,) * (pred_y.ndim - 1))
            pred_y, target_y = sample.y_t.float() - t_b * pred_y, code.float()
        if valid is None:
            loss = engine.loss_function(v_x.float(), pred_y, sample.dx_t, target_y)
        else:
            loss = engine.loss_function(v_x.float(), pred_y, sample.dx_t, target_y, mask=valid)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss became {loss.item()} at epoch {engine.state.epoch}, iteration {engine.state.iteration}: "
                "lower the learning rate or check the input data for NaN"
            )
        engine.state.output[Keys.LOSS] = loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        engine.grad_scaler.scale(loss).backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.grad_scaler.step(engine.optimizer)
        engine.grad_scaler.update()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        engine.state.output[Keys.LOSS] = loss.detach()
        return engine.state.output
