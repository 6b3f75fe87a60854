"""``medsymmflow selective``: selective-prediction and calibration report from a bundle's predictions.csv.

Writes ``selective_metrics.json``, ``accuracy_rejection.png`` and ``reliability.png``; the work is done by
:func:`medsymmflow.reports.selective.make_selective_report`, which the bundles call directly.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``selective`` options on ``parser``."""
    from medsymmflow.metrics.uncertainty import UNCERTAINTY_SCORES

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
    names = ",".join(UNCERTAINTY_SCORES)
    parser.add_argument(
        "--scores", default=names, metavar="LIST",
        help=f"comma-separated uncertainty scores from {names.replace(',', ', ')} (default: all; a score whose "
        "columns the file lacks is skipped with a note)",
    )
    parser.add_argument(
        "--temperature", type=float, default=None, metavar="T",
        help="fixed tau for softmax(-d/tau) when there is no validation file (default: fit on the test file, with a warning)",
    )
    parser.add_argument("--bins", type=int, default=15, metavar="M", help="reliability-diagram / ECE bins (default: 15)")


def run(args: argparse.Namespace) -> int:
    """Build the report, write its three files and print a short summary; returns the exit code."""
    from medsymmflow.reports.selective import make_selective_report

    if args.bins < 1:
        raise ValueError(f"--bins must be >= 1, got {args.bins}")
    report, paths = make_selective_report(
        args.predictions, val_predictions=args.val_predictions, baseline=args.baseline, output_dir=args.output_dir,
        scores=args.scores, temperature=args.temperature, bins=args.bins,
    )

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
    if cal.get("scores"):
        c = cal["scores"]
        print(
            f"calibration MedSymmFlow class scores: T={c['temperature']:.4g} ({c['temperature_source']}) "
            f"ECE={c['ece']:.4f} Brier={c['brier']:.4f} NLL={c['nll']:.4f}"
        )
    if report["baseline"]:
        b = report["baseline"]["calibration"]
        print(f"calibration baseline: ECE={b['ece']:.4f} Brier={b['brier']:.4f} NLL={b['nll']:.4f}")


def main(argv: Sequence[str]) -> int:
    """Run the command from a list of arguments, raising errors (bundles call :func:`~medsymmflow.reports.selective.make_selective_report`)."""
    parser = argparse.ArgumentParser(prog="medsymmflow selective")
    add_arguments(parser)
    return run(parser.parse_args(list(argv)))
