"""Reports take the evaluator's decided class; the predictions table has one definition for writing and reading."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from medsymmflow.codes import ClassCodebook, decision_scores, majority_class
from medsymmflow.engines import ClassificationReport, InferenceReport, SymmFlowEvaluator
from medsymmflow.inferers import SymmFlowClassifier
from medsymmflow.reports.predictions import SCHEMA_COLUMN, SCHEMA_VERSION, load_predictions, write_predictions

# codes -1 / 0 / +1; predicted codes -0.45, -0.45, -1 (as three draws, or as three pixels of one draw):
# two of three are nearest code 0 (class 1), but their mean -0.63 and the mean distances are nearest class 0
SPLIT = [-0.45, -0.45, -1.0]
IMAGES = torch.tensor([SPLIT, SPLIT, [-1.0, -1.0, -0.45], [0.9, 0.9, 0.9]])
LABELS = torch.tensor([1, 1, 0, 2])


class EndpointNet(torch.nn.Module):
    """A velocity field whose one reverse Euler step lands each draw on a code given by the image.

    ``per_draw``: draw ``r`` of an image lands on the constant ``image[..., r]`` (the classifier batches
    draws draw-major); otherwise the predicted code mask is the image itself, pixel by pixel.
    """

    def __init__(self, num_draws: int, per_draw: bool) -> None:
        super().__init__()
        self.num_draws, self.per_draw = num_draws, per_draw
        self.unused = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.per_draw:
            b = x.shape[0] // self.num_draws
            draw = torch.arange(x.shape[0]) // b
            target = x[torch.arange(x.shape[0]), :, :, draw][..., None].expand_as(y)
        else:
            target = x
        return torch.zeros_like(x), y - target  # y_0 = y_1 - v_y after one step from t=1 to t=0


def _evaluate(decision: str, handler: object, labelled: bool = True, batch_size: int = 4) -> SymmFlowEvaluator:
    draws = 3 if decision == "vote" else 1
    data = [
        {"image": IMAGES[i].reshape(1, 1, 3), "index": i, **({"label": LABELS[i]} if labelled else {})}
        for i in range(len(IMAGES))
    ]
    evaluator = SymmFlowEvaluator(
        device="cpu",
        val_data_loader=DataLoader(data, batch_size=batch_size),
        network=EndpointNet(draws, per_draw=decision == "vote"),
        inferer=SymmFlowClassifier(ClassCodebook.gray(3), num_draws=draws, decision=decision),
        num_runs=2,
        val_handlers=[handler],
    )
    evaluator.run()
    return evaluator


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("decision", ["vote", "mode"])
def test_classification_report_takes_the_decided_class_where_it_differs_from_the_nearest_mean(
    decision: str, tmp_path: Path
) -> None:
    from medmnist.evaluator import getACC

    evaluator = _evaluate(decision, ClassificationReport(tmp_path))
    out = evaluator.state.output
    assert out["preds"].shape == (2, 4) and torch.equal(out["preds"][0], out["pred"])
    # the case of the issue: the decision says class 1 where the mean distances are nearest class 0
    assert out["pred"].tolist() == [1, 1, 0, 2]
    assert out["distances"][0].argmin(1).tolist() == [0, 0, 0, 2]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    rows = _rows(tmp_path / "predictions.csv")
    pred = np.array([int(r["pred"]) for r in rows])
    scores = np.array([[float(r[f"score_{c}"]) for c in range(3)] for r in rows])
    dist = np.array([[float(r[f"dist_{c}"]) for c in range(3)] for r in rows])
    assert pred.tolist() == [1, 1, 0, 2]
    np.testing.assert_array_equal(scores.argmax(1), pred)
    np.testing.assert_allclose(scores.sum(1), 1.0, rtol=1e-6)
    # the uncertainty is the distance to the decided class's code
    np.testing.assert_allclose([float(r["uncertainty"]) for r in rows], dist[np.arange(4), pred], rtol=1e-7)
    assert metrics["runs"][0]["torchmetrics"]["acc"] == 1.0 == float((pred == LABELS.numpy()).mean())
    # medmnist's own ACC on the file's scores is the report's ACC
    assert getACC(LABELS.numpy(), scores, "multi-class") == metrics["runs"][0]["torchmetrics"]["acc"]


@pytest.mark.parametrize("decision", ["vote", "mode"])
def test_inference_report_takes_the_decided_class(decision: str, tmp_path: Path) -> None:
    _evaluate(decision, InferenceReport(tmp_path), labelled=False, batch_size=3)
    payload = json.loads((tmp_path / "predictions.json").read_text())
    assert [p["class"] for p in payload["predictions"]] == [1, 1, 0, 2]
    for p in payload["predictions"]:
        assert int(np.argmax(p["scores"])) == p["class"]
        assert p["uncertainty"] == pytest.approx(p["distances"][p["class"]], rel=1e-6)
    rows = _rows(tmp_path / "predictions.csv")
    assert [int(r["class"]) for r in rows] == [1, 1, 0, 2]


def test_majority_class_breaks_ties_by_the_smaller_distance_then_the_lower_index() -> None:
    counts = torch.tensor([[2, 2, 1], [1, 3, 0], [2, 2, 0]])
    distances = torch.tensor([[0.5, 0.4, 0.1], [0.1, 0.9, 0.2], [0.3, 0.3, 0.0]])
    assert majority_class(counts, distances).tolist() == [1, 1, 0]


def test_mode_decision_ties_follow_the_vote_rule() -> None:
    cb = ClassCodebook.gray(3)
    # two pixels at each of codes -1 and 0 (counts tie); the pixels near 0 sit closer to their code
    mask = torch.tensor([-0.7, -0.7, 0.05, 0.05]).reshape(1, 1, 1, 4)
    out = cb.decode(mask, "mode")
    assert out.counts.tolist() == [[2, 2, 0]]
    assert out.distances[0, 1] < out.distances[0, 0] and out.labels.tolist() == [1]


def test_decision_scores_rank_by_counts_then_score_and_leave_mean_scores_alone() -> None:
    gen = torch.Generator().manual_seed(0)
    base = torch.softmax(torch.randn(500, 4, generator=gen) * 3, dim=1)
    assert torch.equal(decision_scores(base, base.argmax(1)), base)  # the mean decision's scores are untouched
    counts = torch.randint(0, 4, (500, 4), generator=gen)
    labels = majority_class(counts, -base.log())
    scores = decision_scores(base, labels, counts)
    assert torch.equal(scores.argmax(1), labels)
    torch.testing.assert_close(scores.sum(1), torch.ones(500))
    # a posterior that overshoots the codes, and exact ties, still give the decided class as argmax
    odd = torch.tensor([[1.6, -0.3, -0.3], [0.5, 0.5, 0.0], [0.5, 0.5, 0.0]])
    fixed = decision_scores(odd, torch.tensor([1, 1, 0]), torch.tensor([[1, 1, 0], [0, 0, 0], [0, 0, 0]]))
    assert fixed.argmax(1).tolist() == [1, 1, 0]


def _table(tmp_path: Path, **kw: object) -> Path:
    n = 4
    return write_predictions(
        tmp_path / "predictions.csv",
        labels=[0, 1, 1, 0],
        pred=[0, 1, 0, 0],
        uncertainty=np.linspace(0.1, 0.4, n),
        scores=np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]], dtype=np.float32),
        **kw,
    )


def test_predictions_table_round_trips_and_carries_its_version(tmp_path: Path) -> None:
    import pandas as pd

    dist = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.5], [0.2, 0.6]], dtype=np.float32)
    path = _table(tmp_path, distances=dist, pred_mode=[0, 1, 0, 1], uncertainty_mode=[0.1, 0.2, 0.3, 0.6], spread=[0, 0.5, 0, 0])
    frame = pd.read_csv(path)  # a plain CSV: no comment line to skip
    assert list(frame.columns)[-1] == SCHEMA_COLUMN and set(frame[SCHEMA_COLUMN]) == {SCHEMA_VERSION}
    assert frame["pred"].dtype.kind == "i" and frame["score_1"].dtype.kind == "f"
    table = load_predictions(path)
    assert table.schema_version == SCHEMA_VERSION and table.num_classes == 2
    np.testing.assert_array_equal(table.distances.astype(np.float32), dist)  # float32 values come back exactly
    assert table.pred_mode.tolist() == [0, 1, 0, 1] and table.spread.tolist() == [0, 0.5, 0, 0]


def test_predictions_table_reads_version_1_and_refuses_other_layouts(tmp_path: Path) -> None:
    v1 = tmp_path / "v1.csv"
    v1.write_text("index,label,pred,uncertainty,score_0,score_1\n0,0,0,0.1,0.9,0.1\n1,1,1,0.2,0.2,0.8\n")
    assert load_predictions(v1).schema_version == 1
    newer = tmp_path / "v9.csv"
    newer.write_text(f"label,pred,uncertainty,score_0,score_1,{SCHEMA_COLUMN}\n0,0,0.1,0.9,0.1,9\n")
    with pytest.raises(ValueError, match=f"'{SCHEMA_COLUMN}' holds 9; this medsymmflow reads predictions tables of versions 1..{SCHEMA_VERSION}"):
        load_predictions(newer)
    inference = tmp_path / "inference.csv"  # the unlabelled inference table is another layout
    inference.write_text("file,class,class_name,uncertainty,spread,score_0,score_1\na.png,0,normal,0.1,0,0.9,0.1\n")
    with pytest.raises(ValueError) as err:
        load_predictions(inference)
    assert str(err.value) == f"{inference} is missing column(s): label, pred (not a medsymmflow predictions table)"
    assert "\n" not in str(err.value)
