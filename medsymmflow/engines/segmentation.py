"""SymmFlow segmentation evaluator: segments every batch at several step counts from one seeded noise draw."""

from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

import torch
from monai.engines.utils import IterationEvents, default_prepare_batch
from monai.utils import CommonKeys as Keys
from monai.utils import ensure_tuple

from medsymmflow.checks import positive_int
from medsymmflow.engines.evaluator import SeededEvaluator
from medsymmflow.inferers import SymmFlowSegmenter

__all__ = ["SymmFlowSegmentationEvaluator"]


class SymmFlowSegmentationEvaluator(SeededEvaluator):
    """Runs a :class:`SymmFlowSegmenter` at each of ``steps`` (e.g. ``[1, 5, 25]``) Euler step counts per batch.

    One pass over the data evaluates every step count: each image's label noise is drawn once (from its own
    generator, seeded with ``seed`` and the image's position in the split:
    :meth:`~medsymmflow.engines.evaluator.SeededEvaluator.sample_noise`, so it does not depend on the batch
    size or on how many processes share the split) and every step count integrates from that same noise, so
    the step counts differ only in their integration. ``steps`` defaults to the inferer's own. With a latent segmenter (its
    ``codec``) the image's latent is drawn once per batch as well, and predictions and uncertainty maps are per
    pixel of the image.

    ``state.output`` keys: ``image``; ``label`` (B, 1, *spatial) int64 class maps when the batch has labels;
    ``valid`` (B, 1, *spatial) when the batch has ``valid_key`` (1 = labelled pixel); ``steps`` (the step
    counts); ``preds`` / ``uncertainty_maps``: step count -> (B, *spatial) predicted classes / distance of each
    pixel's code to its nearest class code; ``pred`` / ``uncertainty_map``: those of the first step count;
    ``position``: each image's position in the split's order (:meth:`sample_positions`); ``id`` (a list) when the
    batch has one; ``filename`` (a list) when it has ``file`` (inference on image files);
    ``failed`` when the batch carries failure records of unreadable files
    (:class:`~medsymmflow.data.ImageFileDataset`), and a batch of failures only gives ``{"failed": [...]}``.
    :class:`~medsymmflow.engines.SegmentationReport` turns them into the split's metrics,
    :class:`~medsymmflow.engines.SegmentationWriter` into PNG files.
    """

    def __init__(
        self,
        device: str | torch.device,
        val_data_loader: Any,
        network: torch.nn.Module,
        inferer: SymmFlowSegmenter,
        steps: Sequence[int] | int | None = None,
        seed: int = 0,
        valid_key: str = "valid",
        prepare_batch: Callable = default_prepare_batch,
        val_handlers: Sequence | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(device, val_data_loader, network, inferer, seed, prepare_batch, val_handlers, **kwargs)
        if not isinstance(inferer, SymmFlowSegmenter):
            raise TypeError(f"inferer must be a SymmFlowSegmenter, got {type(inferer).__name__}")
        counts = [positive_int(s, "steps") for s in ensure_tuple(inferer.steps if steps is None else steps)]
        if len(set(counts)) != len(counts):
            raise ValueError(f"steps lists a step count twice: {counts}")
        self.steps = counts
        # one segmenter per step count, sharing the codebook, method, draws and autocast of ``inferer``
        self.segmenters = {s: copy.copy(inferer) for s in counts}
        for s, segmenter in self.segmenters.items():
            segmenter.steps = s
        self.valid_key = valid_key

    def _iteration(self, engine: "SymmFlowSegmentationEvaluator", batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        image, label, failed = engine.read_batch(engine, batchdata)
        if image is None:
            engine.sample_positions(len(failed))
            engine.state.output = {"failed": failed}
            return engine.state.output
        # the readable images take the batch's first positions, its unreadable files the rest
        positions = engine.sample_positions(image.shape[0] + len(failed))[: image.shape[0]]
        noise = engine.label_noise(image, positions)
        preds, maps = {}, {}
        engine.network.eval()
        with torch.no_grad():
            # one image latent per batch too (a posterior sample with a codec), shared by every step count
            encoded = engine.inferer.encode(image, engine.generator)
            for s in engine.steps:
                preds[s], maps[s] = engine.segmenters[s](image, engine.network, noise=noise, encoded=encoded)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        first = engine.steps[0]
        out: dict[str, Any] = {
            Keys.IMAGE: image,
            "steps": list(engine.steps),
            "preds": preds,
            "uncertainty_maps": maps,
            Keys.PRED: preds[first],
            "uncertainty_map": maps[first],
            "position": positions,
        }
        if label is not None:
            lab = torch.as_tensor(label)
            if lab.ndim != image.ndim or lab.shape[1] != 1 or lab.shape[2:] != image.shape[2:]:
                raise ValueError(
                    f"segmentation labels must be label maps (B, 1, {', '.join(map(str, image.shape[2:]))}) on the "
                    f"image grid, got {tuple(lab.shape)}"
                )
            if lab.is_floating_point() and not torch.equal(lab, lab.round()):
                raise ValueError("segmentation label maps hold fractional values: resize them with mode 'nearest'")
            out[Keys.LABEL] = lab.long()
        if isinstance(batchdata, dict) and engine.valid_key in batchdata:
            out["valid"] = torch.as_tensor(batchdata[engine.valid_key]).to(image.device)
        if isinstance(batchdata, dict) and "id" in batchdata:
            ids = batchdata["id"]
            out["id"] = [str(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids])]
        return engine.finish_iteration(engine, batchdata, out, failed)
