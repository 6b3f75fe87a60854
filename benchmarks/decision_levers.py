"""Benchmark: one checkpoint scored with several classification decisions (mean / vote / mode, steps, draws).

Runs the flag's evaluation bundle once per setting on the same checkpoint, reads each run's
``metrics.json`` (whose ACC / AUC are those of the decided class, ``medsymmflow.codes.decision_scores``)
and prints a table; ``--output`` writes the figures, the settings, the machine, the date and this command
as JSON. Example (the checkpoint of a ``benchmarks/classification.py`` run)::

    python benchmarks/decision_levers.py --flag retinamnist --dataset-dir ../shared/data/medmnist \\
        --ckpt runs/bench/retinamnist/medsymmflow/checkpoints/best.pt --output docs/results/retinamnist_decision_levers.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline_resnet import command_line, machine_info, now_iso  # noqa: E402

from medsymmflow.io import atomic_write  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SETTINGS = ("mean:1:1", "vote:10:8", "mode:10:8")


def parse_setting(text: str) -> tuple[str, int, int]:
    """``decision:steps:draws`` -> its three parts (e.g. ``vote:10:8``)."""
    parts = text.split(":")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"a setting is decision:steps:draws, e.g. vote:10:8; got {text!r}")
    return parts[0], int(parts[1]), int(parts[2])


def evaluate(flag: str, ckpt: Path, dataset_dir: Path, output_dir: Path, setting: tuple[str, int, int], runs: int) -> dict[str, Any]:
    """Run the flag's evaluation bundle with the CPU recipe for one setting; return its metrics.json."""
    decision, steps, draws = setting
    config = f"['bundles/{flag}/evaluate.json','configs/cpu.json']"
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", config, "--ckpt_path", str(ckpt),
        "--dataset_dir", str(dataset_dir), "--download", "false", "--output_dir", str(output_dir),
        "--evaluation#decision", decision, "--evaluation#steps", str(steps), "--evaluation#draws", str(draws),
        "--evaluation#runs", str(runs),
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"evaluation {decision}:{steps}:{draws} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads((output_dir / "metrics.json").read_text())


def reused(output_dir: Path, ckpt: Path, setting: tuple[str, int, int], runs: int) -> dict[str, Any] | None:
    """An earlier evaluation's metrics.json in ``output_dir`` if it scored ``ckpt`` with this setting, else None."""
    path = output_dir / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    same = (metrics.get("decision"), metrics.get("steps"), metrics.get("draws"), metrics.get("num_runs")) == (*setting, runs)
    return metrics if same and Path(metrics.get("checkpoint", "")).resolve() == ckpt else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Score one checkpoint under each setting; print the table and optionally write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--flag", required=True, help="2-D MedMNIST flag of the checkpoint")
    parser.add_argument("--dataset-dir", required=True, type=Path, help="folder holding <flag>.npz")
    parser.add_argument("--ckpt", required=True, type=Path, help="a training bundle's checkpoint (best.pt)")
    parser.add_argument("--settings", nargs="+", type=parse_setting, default=[parse_setting(s) for s in DEFAULT_SETTINGS],
                        help="decision:steps:draws per evaluation")
    parser.add_argument("--runs", type=int, default=1, help="inference runs per setting (the bundle's evaluation#runs)")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/decision_levers"), help="evaluation output folders")
    parser.add_argument("--output", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--reuse", action="store_true",
                        help="read a setting's metrics.json already in --work-dir when it was made from --ckpt with that setting")
    args = parser.parse_args(argv)
    if not args.ckpt.is_file():
        raise SystemExit(f"decision_levers: error: no checkpoint at {args.ckpt}")
    rows = []
    for setting in args.settings:
        name = "{}_{}steps_{}draws".format(*setting)
        out = (args.work_dir / name).resolve()
        metrics = reused(out, args.ckpt.resolve(), setting, args.runs) if args.reuse else None
        if metrics is None:
            metrics = evaluate(args.flag, args.ckpt.resolve(), args.dataset_dir.resolve(), out, setting, args.runs)
        summary = metrics["summary"]["medmnist"]
        rows.append({
            "decision": setting[0], "steps": setting[1], "draws": setting[2], "runs": metrics["num_runs"],
            "acc": summary["acc"]["mean"], "auc": summary["auc"]["mean"],
            "network_evaluations_per_image": setting[1] * setting[2],
        })
    print(f"{args.flag}: {args.ckpt}")
    print(f"{'decision':10}{'steps':>6}{'draws':>6}{'ACC':>8}{'AUC':>8}")
    for r in rows:
        print(f"{r['decision']:10}{r['steps']:>6}{r['draws']:>6}{100 * r['acc']:>8.1f}{100 * r['auc']:>8.1f}")
    result = {"flag": args.flag, "checkpoint": str(args.ckpt), "rows": rows, "machine": machine_info(), "date": now_iso(),
              "command": command_line()}
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.output, json.dumps(result, indent=2) + "\n")
        print(f"results: {args.output}")
    return result


if __name__ == "__main__":
    main()
