"""Evaluation report handler: metrics.json and predictions.csv from a SymmFlowEvaluator run."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from ignite.engine import Engine, Events

from medsymmflow.engines.distributed import gather_tensor_in_order, is_main_process
from medsymmflow.io import atomic_write
from medsymmflow.metrics.classification import mean_two_sigma, medmnist_metrics, probabilities, torchmetrics_metrics
from medsymmflow.metrics.uncertainty import draw_spread
from medsymmflow.reports.predictions import write_predictions

__all__ = ["ClassificationReport", "EvaluationReport", "InferenceReport"]

logger = logging.getLogger(__name__)


class EvaluationReport:
    """Base of the report handlers: reset when an evaluation starts, collect every iteration's output, write at ``write_event``."""

    write_event = Events.COMPLETED

    def attach(self, engine: Engine) -> None:
        """Collect at every iteration, write at ``write_event``."""
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(self.write_event, self._write)

    def _reset(self, engine: Engine) -> None:
        raise NotImplementedError

    def _collect(self, engine: Engine) -> None:
        raise NotImplementedError

    def _write(self, engine: Engine) -> None:
        raise NotImplementedError


class ClassificationReport(EvaluationReport):
    """Collects a :class:`SymmFlowEvaluator`'s outputs and writes ``metrics.json`` and ``predictions.csv``.

    (File names are settable, e.g. ``val_metrics.json`` / ``val_predictions.csv`` for the validation split
    that the selective-prediction report fits its temperature on.)

    Metrics per inference run: ACC / AUC with torchmetrics and, when ``flag`` and ``dataset_dir`` are
    given, with medmnist's own Evaluator, both from the evaluator's per-class ``scores`` (whose argmax
    is the decided class, see :func:`~medsymmflow.codes.decision_scores`; softmax(-d / temperature) of
    the distances when it gives none); the summary is mean and 2 sigma over runs. ``predictions.csv``
    (the table of :mod:`medsymmflow.reports.predictions`) holds the first run per sample: index, label,
    the class the evaluator's decision chose (``preds``; the nearest code when it gives none), its
    uncertainty, the distance to every code, the scores, the mode decision and its uncertainty, and the
    spread of the prediction over noise draws. A plain classifier's evaluator (the ResNet-18 baseline's,
    see :class:`medsymmflow.baselines.engines.SoftmaxOutputs`) gives ``scores``, ``preds`` and
    ``uncertainty`` but no ``distances``: its table then has no distance, mode or spread columns.
    ``metrics_file=None`` writes no metrics file (``results`` still holds what it would hold).
    Under a sharded torch.distributed evaluation (the evaluator's ``shards``, see
    :mod:`medsymmflow.engines.distributed`) the rows of every rank are gathered in the split's order before
    the metrics are taken, so every rank's ``results`` and ``state.metrics`` are the whole split's; only
    rank 0 writes the files.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        temperature: float = 0.1,
        flag: str | None = None,
        split: str = "test",
        dataset_dir: str | os.PathLike | None = None,
        size: int = 28,
        class_names: Sequence[str] | None = None,
        prefix: str = "",
        extra: dict[str, Any] | None = None,
        metrics_file: str | None = "metrics.json",
        predictions_file: str = "predictions.csv",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.metrics_file, self.predictions_file = metrics_file, predictions_file
        self.temperature = float(temperature)
        self.flag, self.split, self.size = flag, split, int(size)
        self.dataset_dir = None if dataset_dir is None else Path(dataset_dir)
        self.class_names = list(class_names) if class_names is not None else None
        self.prefix = prefix
        self.extra = dict(extra or {})
        self._rows: dict[str, list[torch.Tensor]] = {}
        self.results: dict[str, Any] = {}

    def _reset(self, engine: Engine) -> None:
        self._rows = {}

    def _collect(self, engine: Engine) -> None:
        out = engine.state.output
        for key in ("label", "preds", "distances", "scores", "uncertainty", "draw_distances", "pred_mode", "uncertainty_mode", "index"):
            if key in out:
                self._rows.setdefault(key, []).append(torch.as_tensor(out[key]).detach().cpu())

    def _cat(self, key: str, dim: int, shards: tuple[int, int] | None = None) -> torch.Tensor | None:
        parts = self._rows.get(key)
        local = None if not parts else torch.cat(parts, dim=dim)
        return local if local is None else gather_tensor_in_order(local, dim, shards)

    def _write(self, engine: Engine) -> None:
        shards = getattr(engine, "shards", None)  # a sharded evaluation: every rank's rows, in the split's order
        labels = self._cat("label", 0, shards)
        if labels is None:
            raise ValueError("ClassificationReport needs labelled data: the evaluator produced no 'label'")
        distances = self._cat("distances", 1, shards)  # (runs, N, K); a plain classifier gives none
        scores = self._cat("scores", 1, shards)  # (runs, N, K) when the evaluator scores the classes itself
        if distances is None and scores is None:
            raise ValueError("ClassificationReport needs per-class 'scores' or 'distances' from the evaluator")
        preds = self._cat("preds", 1, shards)  # (runs, N): the classes the evaluator's decision chose
        uncertainty = self._cat("uncertainty", 1, shards)
        draws = self._cat("draw_distances", 2, shards)  # (runs, R, N, K)
        pred_mode, unc_mode = self._cat("pred_mode", 1, shards), self._cat("uncertainty_mode", 1, shards)
        index = self._cat("index", 0, shards)
        num_runs, n, k = (distances if distances is not None else scores).shape
        index = torch.arange(n) if index is None else index

        run_probs = [
            scores[r].double() if scores is not None else probabilities(distances[r], self.temperature)
            for r in range(num_runs)
        ]
        runs = []
        for probs in run_probs:
            run = {"torchmetrics": torchmetrics_metrics(probs, labels)}
            if self.flag is not None and self.dataset_dir is not None:
                run["medmnist"] = medmnist_metrics(self.flag, self.split, probs.numpy(), self.dataset_dir, self.size)
            runs.append(run)
        summary = {
            source: {m: mean_two_sigma([run[source][m] for run in runs]) for m in ("acc", "auc")} for source in runs[0]
        }
        self.results = {
            "flag": self.flag,
            "split": self.split,
            "num_samples": int(n),
            "num_classes": int(k),
            "num_runs": int(num_runs),
            "temperature": self.temperature,
            "score": getattr(engine, "score", "softmax"),  # how the evaluator scored each class
            "class_names": self.class_names or [str(c) for c in range(k)],
            **self.extra,
            "summary": summary,
            "runs": runs,
        }
        for source, metrics in summary.items():
            for name, value in metrics.items():
                engine.state.metrics[f"{self.prefix}{source}_{name}"] = value["mean"]
        if not is_main_process():  # every rank holds the split's numbers; one writes them
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.metrics_file is not None:
            atomic_write(self.output_dir / self.metrics_file, json.dumps(self.results, indent=2) + "\n")

        spread = draw_spread(draws[0]) if draws is not None else None
        if preds is not None:
            pred = preds[0]
        else:  # the nearest code, or the top score of a plain classifier
            pred = distances[0].argmin(1) if distances is not None else run_probs[0].argmax(1)
        write_predictions(
            self.output_dir / self.predictions_file,
            labels=labels,
            pred=pred,
            uncertainty=uncertainty[0],
            scores=run_probs[0],
            index=index,
            distances=None if distances is None else distances[0],
            pred_mode=pred_mode[0] if pred_mode is not None else None,
            uncertainty_mode=unc_mode[0] if unc_mode is not None else None,
            spread=spread,
        )
        logger.info(
            "%s %s: %s -> %s",
            self.flag or "dataset",
            self.split,
            ", ".join(f"{s} {m} {v['mean']:.4f}±{v['two_sigma']:.4f}" for s, ms in summary.items() for m, v in ms.items()),
            self.output_dir,
        )


class InferenceReport(EvaluationReport):
    """Writes each image's class, per-class scores and uncertainty to ``predictions.csv`` and ``.json``.

    The class is the one the evaluator's decision chose (its ``pred``); the scores are its ``scores``
    of the first run, whose argmax is that class.

    For unlabelled images run through :class:`SymmFlowEvaluator` (e.g. files from LoadImage). Files
    that could not be read (the evaluator's ``failed`` records) are listed in ``predictions.json`` under
    ``failed`` (file and reason) and ``skipped`` names the files of the input folders that were not
    images; nothing is written when no image at all could be classified. :meth:`raise_for_failures`,
    called after the run, then ends it with one error naming the failed files.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        temperature: float = 0.1,
        class_names: Sequence[str] | None = None,
        skipped: Sequence[str] | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.temperature = float(temperature)
        self.class_names = list(class_names) if class_names is not None else None
        self.skipped = [str(f) for f in skipped or []]
        self._rows: list[dict[str, Any]] = []
        self.failed: list[dict[str, str]] = []

    def _reset(self, engine: Engine) -> None:
        self._rows.clear()
        self.failed.clear()

    def _collect(self, engine: Engine) -> None:
        out = engine.state.output
        self.failed.extend(dict(f) for f in out.get("failed", []))
        if "distances" not in out:  # a batch of unreadable files only
            return
        d = torch.as_tensor(out["distances"][0]).detach().cpu()
        probs = torch.as_tensor(out["scores"][0]).detach().cpu() if "scores" in out else probabilities(d, self.temperature)
        unc = torch.as_tensor(out["uncertainty"][0]).detach().cpu()
        # the class the evaluator's decision chose (the nearest code when it gives none)
        pred = torch.as_tensor(out["pred"]).detach().cpu() if "pred" in out else d.argmin(1)
        spread = draw_spread(out["draw_distances"][0])
        names = out.get("filename") or [str(len(self._rows) + i) for i in range(d.shape[0])]
        k = d.shape[1]
        class_names = self.class_names or [str(c) for c in range(k)]
        for i in range(d.shape[0]):
            c = int(pred[i])
            self._rows.append(
                {
                    "file": names[i],
                    "class": c,
                    "class_name": class_names[c],
                    "uncertainty": float(unc[i]),
                    "spread": float(spread[i]),
                    "distances": [float(v) for v in d[i]],
                    "scores": [float(v) for v in probs[i]],
                }
            )

    def _write(self, engine: Engine) -> None:
        if not self._rows:
            if self.failed:  # raise_for_failures reports them; an empty table would only look like a result
                return
            raise ValueError("no images were classified: the input list is empty")
        k = len(self._rows[0]["scores"])
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["file", "class", "class_name", "uncertainty", "spread"] + [f"score_{c}" for c in range(k)])
        for r in self._rows:
            writer.writerow(
                [r["file"], r["class"], r["class_name"], f"{r['uncertainty']:.6g}", f"{r['spread']:.6g}"]
                + [f"{v:.6g}" for v in r["scores"]]
            )
        payload = {
            "score": getattr(engine, "score", "softmax"),
            "temperature": self.temperature,
            "class_names": self.class_names,
            "predictions": self._rows,
            "failed": self.failed,
            "skipped": self.skipped,
        }
        # the JSON (with the failures) first: a predictions.csv on disk always has its predictions.json beside it
        atomic_write(self.output_dir / "predictions.json", json.dumps(payload, indent=2) + "\n")
        atomic_write(self.output_dir / "predictions.csv", buf.getvalue())
        logger.info("classified %d images -> %s", len(self._rows), self.output_dir)

    def raise_for_failures(self) -> None:
        """Raise one ValueError naming the files that could not be classified (a no-op when all were)."""
        if not self.failed:
            return
        shown = "; ".join(f"{f['file']} ({f['error']})" for f in self.failed[:3])
        more = f"; and {len(self.failed) - 3} more" if len(self.failed) > 3 else ""
        total = len(self.failed) + len(self._rows)
        if self._rows:
            where = f"the other {len(self._rows)} are in {self.output_dir / 'predictions.csv'}, all failures in predictions.json"
        else:
            where = "no predictions were written"
        raise ValueError(f"{len(self.failed)} of {total} image files could not be classified: {shown}{more}; {where}")
