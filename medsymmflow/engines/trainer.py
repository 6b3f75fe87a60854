"""SymmFlow training engine: a MONAI ``SupervisedTrainer`` whose iteration is one flow-matching step."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents, default_prepare_batch
from monai.utils import CommonKeys as Keys
from torch.optim import Optimizer

from medsymmflow.codes import ClassCodebook
from medsymmflow.flow.loss import SymmFlowLoss, TimeSampler
from medsymmflow.flow.path import SymmetricPath
from medsymmflow.networks.latent import LatentCodec, check_codec
from medsymmflow.precision import autocast_context, resolve_autocast

__all__ = ["SymmFlowTrainer"]


class SymmFlowTrainer(SupervisedTrainer):
    """Trains a joint velocity network on (image, class) batches.

    Each iteration: class index -> code mask (codebook) -> dequantize with ``beta`` -> sample ``t``
    and noise -> symmetric path -> weighted x/y velocity MSE -> backward -> optimizer step.
    Checkpoints, EMA, LR schedules, validation and logging are handlers wired in the bundle.

    With a ``codec`` (:class:`~medsymmflow.networks.LatentCodec`, Latent MedSymmFlow) the image is
    replaced by a posterior sample of its VAE latent and the full-resolution dequantized code mask by
    its posterior mode before the path is sampled, so the network learns the flow between latents
    (``x_channels = y_channels = codec.latent_channels``).
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
        self.batch_augment = batch_augment
        # "auto" turns bf16 on only where the hardware runs it natively (see medsymmflow.precision)
        self.autocast_dtype = resolve_autocast(autocast_dtype, device)
        # float16 gradients underflow without loss scaling (bfloat16 has float32's range and needs none);
        # a disabled scaler passes the loss and the optimizer step through unchanged
        self.grad_scaler = torch.amp.GradScaler(torch.device(device).type, enabled=self.autocast_dtype == torch.float16)
        self.codec = check_codec(codec, codebook)

    def code_targets(self, labels: torch.Tensor, spatial_size: Sequence[int], device: torch.device) -> torch.Tensor:
        """Dequantized code masks ``(B, C_y, *spatial)`` for class indices ``labels``."""
        return self.codebook.dequantized_code_mask(labels, tuple(spatial_size), self.beta, device)

    def _iteration(self, engine: "SymmFlowTrainer", batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        image, label = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)[:2]
        if label is None:
            raise ValueError("SymmFlowTrainer needs a 'label' in every batch")
        image = torch.as_tensor(image).float()
        if engine.batch_augment is not None:
            image = engine.batch_augment(image)
        code = engine.code_targets(label, image.shape[2:], image.device)
        engine.state.output = {Keys.IMAGE: image, Keys.LABEL: label}
        if engine.codec is not None:
            with torch.no_grad():
                image = engine.codec.encode_image(image)
                code = engine.codec.encode_mask(code)
        t = engine.time_sampler(image.shape[0], device=image.device)
        sample = engine.path.sample(image, code, t)

        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with autocast_context(image.device, engine.autocast_dtype):
            v_x, v_y = engine.network(sample.x_t, sample.y_t, sample.t)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        loss = engine.loss_function(v_x.float(), v_y.float(), sample.dx_t, sample.dy_t)
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
