"""SymmFlow evaluation engine: classifies every batch ``num_runs`` times with a seeded generator."""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import torch
from ignite.engine import Events
from monai.engines import Evaluator
from monai.engines.utils import IterationEvents, default_prepare_batch
from monai.utils import CommonKeys as Keys

from medsymmflow.checks import positive_float, positive_int
from medsymmflow.codes import decision_scores
from medsymmflow.inferers import SymmFlowClassifier
from medsymmflow.networks.latent import LatentCodec, check_codec

__all__ = ["SeededEvaluator", "SymmFlowEvaluator"]


class SeededEvaluator(Evaluator):
    """A MONAI ``Evaluator`` of a ``network`` through an ``inferer`` that draws noise from its own ``generator``.

    The generator (on ``device``) is re-seeded with ``seed`` at the start of every evaluation, so a run is
    reproducible and does not consume the training RNG stream. Batches are not decollated: the subclass's
    ``_iteration`` writes batch-first tensors to ``state.output``.
    """

    def __init__(
        self,
        device: str | torch.device,
        val_data_loader: Any,
        network: torch.nn.Module,
        inferer: Any,
        seed: int = 0,
        prepare_batch: Callable = default_prepare_batch,
        val_handlers: Sequence | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            device=device,
            val_data_loader=val_data_loader,
            prepare_batch=prepare_batch,
            val_handlers=val_handlers,
            decollate=False,
            **kwargs,
        )
        self.network = network
        self.inferer = inferer
        self.seed = int(seed)
        self.generator = torch.Generator(device=torch.device(device))
        self.add_event_handler(Events.STARTED, lambda engine: engine.generator.manual_seed(engine.seed))

    @staticmethod
    def read_batch(engine: "SeededEvaluator", batchdata: Any) -> tuple[torch.Tensor | None, Any, list]:
        """``(image, label, failed)`` of a batch; ``image`` is None when every file of the batch failed to load."""
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        # files of an ImageFileDataset that could not be read arrive as failure records, possibly a whole batch of them
        failed = list(batchdata.get("failed", [])) if isinstance(batchdata, dict) else []
        if isinstance(batchdata, dict) and Keys.IMAGE not in batchdata:
            return None, None, failed
        image, label = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)[:2]
        return torch.as_tensor(image).float(), label, failed

    @staticmethod
    def finish_iteration(engine: "SeededEvaluator", batchdata: Any, out: dict[str, Any], failed: list) -> dict[str, Any]:
        """Add the batch's ``filename`` and ``failed`` records to ``out``, make it ``state.output`` and fire MODEL_COMPLETED."""
        if isinstance(batchdata, dict) and "file" in batchdata:
            names = batchdata["file"]
            out["filename"] = [str(n) for n in (names if isinstance(names, (list, tuple)) else [names])]
        if failed:
            out["failed"] = failed
        engine.state.output = out
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return out


class SymmFlowEvaluator(SeededEvaluator):
    """Runs :class:`SymmFlowClassifier` on each batch and puts decoded predictions in ``state.output``.

    ``state.output`` keys (batch-first tensors): ``image``, ``label`` (B,), ``pred`` (B,) and ``score``
    (B, K) of the first run, ``preds`` (runs, B) and ``scores`` (runs, B, K) of every run. ``pred`` is the
    class the inferer's ``decision`` chose (``mean`` / ``mode`` / ``vote``); the scores rank the classes
    the way that decision does, so their argmax is ``pred`` (:func:`~medsymmflow.codes.decision_scores`
    over ``score="softmax"``: softmax(-d / temperature), or ``"posterior"``: the class posterior read from
    the mean code, see :meth:`ClassCodebook.class_scores`), ``label_onehot`` (B, K),
    ``distances`` (runs, B, K), ``uncertainty`` (runs, B), ``draw_distances`` (runs, R, B, K),
    ``pred_mode`` (runs, B), ``uncertainty_mode`` (runs, B), ``index`` when the batch has one and
    ``filename`` when it has a ``file`` key (the inference bundle copies each image's path there), and
    ``failed`` when the batch carries failure records of unreadable files (see
    :class:`~medsymmflow.data.ImageFileDataset`); a batch of failures only gives ``{"failed": [...]}``.
    The noise generator is re-seeded with ``seed`` at the start of every evaluation (:class:`SeededEvaluator`).

    With a ``codec`` (Latent MedSymmFlow) every run encodes the image to a posterior sample of its
    latent, the inferer predicts code latents (its ``code_channels`` must be the codec's latent
    channels) and they are decoded to code masks of the codebook's channel count before the
    distances are taken; ``code_mean`` (B, C) then holds the first run's decoded code, averaged over
    space.
    """

    def __init__(
        self,
        device: str | torch.device,
        val_data_loader: Any,
        network: torch.nn.Module,
        inferer: SymmFlowClassifier,
        num_runs: int = 1,
        temperature: float = 0.1,
        score: str = "softmax",
        seed: int = 0,
        prepare_batch: Callable = default_prepare_batch,
        val_handlers: Sequence | None = None,
        codec: LatentCodec | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(device, val_data_loader, network, inferer, seed, prepare_batch, val_handlers, **kwargs)
        positive_int(num_runs, "num_runs")
        positive_float(temperature, "temperature")
        inferer.codebook.check_score(score)
        if check_codec(codec, inferer.codebook) is not None:
            if inferer.code_channels != codec.latent_channels:
                raise ValueError(
                    f"the inferer predicts {inferer.code_channels}-channel codes but the VAE's latents have "
                    f"{codec.latent_channels} channels: build it with code_channels={codec.latent_channels}"
                )
        self.codec = codec
        self.num_runs = int(num_runs)
        self.temperature = float(temperature)
        self.score = score

    def _iteration(self, engine: "SymmFlowEvaluator", batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        image, label, failed = engine.read_batch(engine, batchdata)
        if image is None:
            engine.state.output = {"failed": failed}
            return engine.state.output
        engine.network.eval()
        with torch.no_grad():
            if engine.codec is None:
                runs = [engine.inferer(image, engine.network, generator=engine.generator) for _ in range(engine.num_runs)]
            else:
                decode = functools.partial(engine.codec.decode_image, channels=engine.inferer.codebook.channels)
                runs = [
                    engine.inferer(
                        engine.codec.encode_image(image, generator=engine.generator), engine.network,
                        generator=engine.generator, decode=decode,
                    )
                    for _ in range(engine.num_runs)
                ]
            mode = [engine.inferer.codebook.decode(r.code, "mode") for r in runs]
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        codebook = engine.inferer.codebook
        k = codebook.num_classes
        scores = torch.stack(
            [decision_scores(codebook.class_scores(r.distances, engine.score, engine.temperature), r.labels, r.counts) for r in runs]
        )
        out: dict[str, Any] = {
            Keys.IMAGE: image,
            Keys.PRED: runs[0].labels,
            "preds": torch.stack([r.labels for r in runs]),
            "score": scores[0],
            "scores": scores,
            "distances": torch.stack([r.distances for r in runs]),
            "uncertainty": torch.stack([r.uncertainty for r in runs]),
            "draw_distances": torch.stack([r.draw_distances for r in runs]),
            "pred_mode": torch.stack([m.labels for m in mode]),
            "uncertainty_mode": torch.stack([m.uncertainty for m in mode]),
            "code_mean": runs[0].code.flatten(2).mean(-1),
        }
        if label is not None:
            lab = torch.as_tensor(label).reshape(-1).long()
            out[Keys.LABEL] = lab
            out["label_onehot"] = torch.nn.functional.one_hot(lab, k).float()
        if isinstance(batchdata, dict) and "index" in batchdata:
            out["index"] = torch.as_tensor(batchdata["index"]).reshape(-1)
        return engine.finish_iteration(engine, batchdata, out, failed)
