"""SymmFlow evaluation engines: the seeded base, and the classifier that classifies every batch ``num_runs`` times."""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import numpy as np
import torch
from ignite.engine import Events
from monai.engines import Evaluator
from monai.engines.utils import IterationEvents, default_prepare_batch
from monai.utils import CommonKeys as Keys

from medsymmflow.checks import positive_float, positive_int
from medsymmflow.codes import decision_scores
from medsymmflow.engines.distributed import evaluation_shards
from medsymmflow.inferers import SymmFlowClassifier
from medsymmflow.networks.latent import LatentCodec, check_codec

__all__ = ["SeededEvaluator", "SymmFlowEvaluator", "sample_seed"]


def sample_seed(seed: int, position: int, stream: int = 0) -> int:
    """The seed of one sample's noise generator: a hash of the evaluation ``seed``, the sample's ``position`` in the split and a ``stream`` number.

    numpy's ``SeedSequence`` mixes the three, so neighbouring positions get unrelated streams.
    """
    words = [int(seed) & 0xFFFFFFFFFFFFFFFF, int(position), int(stream)]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0])


class SeededEvaluator(Evaluator):
    """A MONAI ``Evaluator`` of a ``network`` through an ``inferer`` that draws noise from its own ``generator``.

    The generator (on ``device``) is re-seeded with ``seed`` at the start of every evaluation, so a run is
    reproducible and does not consume the training RNG stream. Batches are not decollated: the subclass's
    ``_iteration`` writes batch-first tensors to ``state.output``.

    Under torch.distributed :attr:`shards` (set when the evaluation starts, see
    :func:`~medsymmflow.engines.distributed.evaluation_shards`) says which shard of the split this rank
    evaluates. :meth:`sample_positions` numbers the samples in the split's order and :meth:`sample_noise`
    draws each sample's noise from its own generator seeded with ``seed`` and that position, so a sample
    gets the same noise whatever batches or ranks the split is cut into.
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
        self.shards: tuple[int, int] | None = None
        self._samples_seen = 0
        self._sample_generator = torch.Generator(device=torch.device(device))
        self.add_event_handler(Events.STARTED, SeededEvaluator._start)

    @staticmethod
    def _start(engine: "SeededEvaluator") -> None:
        engine.generator.manual_seed(engine.seed)
        engine.shards = evaluation_shards(engine.data_loader)
        engine._samples_seen = 0

    def sample_positions(self, count: int) -> list[int]:
        """The positions in the split's order of this rank's next ``count`` samples, which are then counted as seen."""
        world, rank = self.shards or (1, 0)
        start, self._samples_seen = self._samples_seen, self._samples_seen + int(count)
        return [(start + i) * world + rank for i in range(int(count))]

    def sample_noise(self, shape: Sequence[int], positions: Sequence[int], stream: int = 0) -> torch.Tensor:
        """``(len(positions), *shape)`` standard normal noise: each sample's from a generator seeded by :func:`sample_seed`."""
        g = self._sample_generator
        return torch.stack(
            [torch.randn(tuple(shape), generator=g.manual_seed(sample_seed(self.seed, p, stream)), device=g.device) for p in positions]
        )

    def label_noise(self, inputs: torch.Tensor, positions: Sequence[int], stream: int = 0) -> torch.Tensor:
        """The inferer's label noise for ``inputs`` (shape ``inferer.noise_shape``, draw-major), each sample's from :meth:`sample_noise`."""
        shape = tuple(self.inferer.noise_shape(inputs))
        draws = shape[0] // inputs.shape[0]
        return self.sample_noise((draws, *shape[1:]), positions, stream).transpose(0, 1).reshape(shape)

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
    ``noise="batch"`` draws the label noise of every batch from the evaluation's generator (re-seeded with
    ``seed`` when it starts; what the exported classifier of :mod:`medsymmflow.deploy` reproduces for one
    batch); ``noise="sample"`` gives each sample's noise of run j its own generator, seeded with ``seed``, the
    sample's position in the split and j (:meth:`SeededEvaluator.sample_noise`), so that it does not depend
    on the batch size or on how many processes share the split (the evaluation workflows use it).

    With a ``codec`` (Latent MedSymmFlow) every run encodes the image to a posterior sample of its
    latent (drawn batch by batch from the evaluation's generator, re-seeded with ``seed`` when it starts),
    the inferer predicts code latents (its ``code_channels`` must be the codec's latent channels) and
    they are decoded to code masks of the codebook's channel count before the distances are taken;
    ``code_mean`` (B, C) then holds the first run's decoded code, averaged over space.
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
        noise: str = "batch",
        **kwargs: Any,
    ) -> None:
        super().__init__(device, val_data_loader, network, inferer, seed, prepare_batch, val_handlers, **kwargs)
        positive_int(num_runs, "num_runs")
        if noise not in ("batch", "sample"):
            raise ValueError(f"noise must be 'batch' or 'sample', got {noise!r}")
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
        self.noise = noise

    def _label_noise(self, inputs: torch.Tensor, positions: Sequence[int], run: int) -> torch.Tensor | None:
        # None: the inferer draws from the generator, as the exported classifier (medsymmflow.deploy) does
        return self.label_noise(inputs, positions, run) if self.noise == "sample" else None

    def _iteration(self, engine: "SymmFlowEvaluator", batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        image, label, failed = engine.read_batch(engine, batchdata)
        if image is None:
            engine.sample_positions(len(failed))
            engine.state.output = {"failed": failed}
            return engine.state.output
        positions = engine.sample_positions(image.shape[0] + len(failed))[: image.shape[0]]
        engine.network.eval()
        with torch.no_grad():
            if engine.codec is None:
                runs = [
                    engine.inferer(image, engine.network, generator=engine.generator, noise=engine._label_noise(image, positions, run))
                    for run in range(engine.num_runs)
                ]
            else:
                decode = functools.partial(engine.codec.decode_image, channels=engine.inferer.codebook.channels)
                runs = []
                for run in range(engine.num_runs):
                    # the VAE posterior sample still comes from the evaluation's one generator, batch by batch
                    latent = engine.codec.encode_image(image, generator=engine.generator)
                    noise = engine._label_noise(latent, positions, run)
                    runs.append(engine.inferer(latent, engine.network, generator=engine.generator, decode=decode, noise=noise))
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
