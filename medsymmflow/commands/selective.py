"""``medsymmflow selective``: selective-prediction and calibration report from a bundle's predictions.csv.

Writes ``selective_metrics.json``, ``accuracy_rejection.png`` and ``reliability.png``; the work is done by
:mod:`medsymmflow.metrics.report` so bundles can produce the same report without the CLI.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``selective`` options on ``parser``."""
    parser.add_argument(
        "--predictions", required=True, metavar="PATH",
        help="predictions.csv of an evaluation bundle, or the bundle output folder holding it",
    )
    parser.add_argument(
        "--val-predictions", metavar="FILE", default=None,
        help="validation-split predictions to fit the temperature tau of softmax(-d/tau) "
        "(default: val_predictions.csv next to the predictions, when present and --temperature is not given)",
    )
    parser.add_argument(
        "--baseline", metavar="FILE", default=None,
        help="a baseline classifier's predictions.csv (index,label,pred,uncertainty,score_k softmax probabilities)",
    )
    parser.add_argument("--output-dir", metavar="DIR", default=None, help="where to write (default: the predictions' folder)")
    parser.add_argument(
        "--scores", default="distance,margin,spread", metavar="LIST",
        help="comma-separated uncertainty scores from distance, margin, spread (default: all three)",
    )
    parser.add_argument(
        "--temperature", type=float, default=None, metavar="T",
        help="fixed tau for softmax(-d/tau) when there is no validation file (default: fit on the test file, with a warning)",
    )
    parser.add_argument("--bins", type=int, default=15, metavar="M", help="reliability-diagram / ECE bins (default: 15)")


def run(args: argparse.Namespace) -> int:
    """Build the report, write its three files and print a short summary; returns the exit code."""
    from medsymmflow.metrics.report import dataset_name, selective_report, write_selective_report
    from medsymmflow.reports.predictions import VAL_PREDICTIONS_FILE, load_predictions, resolve_predictions_path

    if args.bins < 1:
        raise ValueError(f"--bins must be >= 1, got {args.bins}")
    pred_path = resolve_predictions_path(args.predictions)
    val_path = Path(args.val_predictions) if args.val_predictions else None
    notes = []
    if val_path is None and (pred_path.parent / VAL_PREDICTIONS_FILE).is_file():
        if args.temperature is None:
            val_path = pred_path.parent / VAL_PREDICTIONS_FILE
        else:  # an explicit --temperature is the user's choice over a file found by convention
            notes.append(f"{pred_path.parent / VAL_PREDICTIONS_FILE} ignored: --temperature {args.temperature:g} was given")
    if val_path is not None and val_path.resolve() == pred_path.resolve():
        raise ValueError(f"the validation file is the predictions file itself: {val_path}")

    report = selective_report(
        load_predictions(pred_path),
        val_predictions=load_predictions(val_path) if val_path is not None else None,
        baseline=load_predictions(args.baseline) if args.baseline else None,
        scores=args.scores.split(","),
        temperature=args.temperature,
        n_bins=args.bins,
        dataset=dataset_name(pred_path),
    )
    report["medsymmflow"]["notes"].extend(notes)
    out_dir = Path(args.output_dir) if args.output_dir else pred_path.parent
    paths = write_selective_report(report, out_dir)

    for w in report["warnings"]:
        print(f"medsymmflow selective: warning: {w}", file=sys.stderr)
    for note in report["medsymmflow"]["notes"] + (report["baseline"] or {}).get("notes", []):
        print(f"note: {note}")
    _print_summary(report)
    for path in paths.values():
        print(f"wrote {path}")
    return 0


def _print_summary(report: dict) -> None:
    """One line per (model, decision, score): accuracy, AURC, E-AURC, acc@80, acc@90; then calibration."""
    rows = [
        (f"MedSymmFlow {decision}", score, entry)
        for decision, by_score in report["medsymmflow"]["decisions"].items()
        for score, entry in by_score.items()
    ]
    if report["baseline"]:
        rows.append(("baseline", "msp", report["baseline"]["decisions"]["argmax"]["msp"]))
    print(f"{'model':<18} {'score':<9} {'acc':>7} {'AURC':>7} {'E-AURC':>7} {'acc@80':>7} {'acc@90':>7}")
    for model, score, e in rows:
        print(
            f"{model:<18} {score:<9} {e['accuracy']:7.4f} {e['aurc']:7.4f} {e['eaurc']:7.4f} "
            f"{e.get('acc@80', float('nan')):7.4f} {e.get('acc@90', float('nan')):7.4f}"
        )
    cal = report["medsymmflow"]["calibration"]
    print(
        f"calibration MedSymmFlow: tau={cal['temperature']:.4g} ({cal['temperature_source']}) "
        f"ECE={cal['ece']:.4f} Brier={cal['brier']:.4f} NLL={cal['nll']:.4f}"
    )
    if report["baseline"]:
        b = report["baseline"]["calibration"]
        print(f"calibration baseline: ECE={b['ece']:.4f} Brier={b['brier']:.4f} NLL={b['nll']:.4f}")


def main(argv: Sequence[str]) -> int:
    """Run the command from a list of arguments, raising errors (for bundles: ``$...selective.main([...])``)."""
    parser = argparse.ArgumentParser(prog="medsymmflow selective")
    add_arguments(parser)
    return run(parser.parse_args(list(argv)))
