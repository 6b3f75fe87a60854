"""Benchmark: medsymmflow (CelebAMask-HQ bundle, CPU recipe) against a BasicUNet trained side by side under the same budget.

Both models train at the same time, one CPU thread each, for ``--budget-minutes`` of wall clock on the
same split of a CelebAMask-HQ pairs folder at ``--size`` px, each keeping the checkpoint with the best
validation mIoU (without background); both are scored on the test split from one confusion matrix.
Then, from the two checkpoints: a per-pixel majority-class map of the training masks as the free floor,
segmentation images/s (medsymmflow at 1 and 25 Euler steps against the BasicUNet forward), 25-step
synthesis from the test masks (FID / KID against the real test images, a real-vs-real reference, mask
consistency: the BasicUNet segments the synthesised images) and two montage figures.

    python benchmarks/segmentation.py --dataset-dir ../shared/data/celebamask_hq_sample --budget-minutes 30

Prints a table and writes ``results.json`` (figures, machine, date, exact command) in the output dir.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from baseline_resnet import command_line, machine_info  # noqa: E402
from side_by_side import last_override, run_jobs  # noqa: E402

from medsymmflow.io import atomic_write  # noqa: E402
from medsymmflow.precision import AUTOCAST_CHOICES  # noqa: E402

BUNDLE_TRAIN = Path("bundles") / "celebamask_hq" / "train.json"
RECIPE = Path("configs") / "segmentation_cpu.json"
FLOW, BASELINE = "medsymmflow", "basicunet"
SEGMENTATION_STEPS = (1, 25)
SYNTHESIS_STEPS = 25
MEASUREMENTS_FILE = "measurements.json"
METRICS = ("miou", "miou_no_background", "pixel_accuracy")
DEFAULT_BATCH_SIZE = 16  # the baseline's when no recipe names one
# the targets (mIoU as fractions)
TARGET_25_STEP_MARGIN = 0.02
TARGET_KID_FACTOR = 3.0
TARGET_CONSISTENCY_FRACTION = 0.8


def _recipe() -> dict[str, Any]:
    """The CPU recipe's settings; empty when the file is not there."""
    path = REPO / RECIPE
    return json.loads(path.read_text()) if path.is_file() else {}


def _bundle_settings() -> dict[str, Any]:
    """The bundle's train.json; empty when the bundle is not there."""
    path = REPO / BUNDLE_TRAIN
    return json.loads(path.read_text()) if path.is_file() else {}


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dataset-dir", default=str(REPO.parent / "shared" / "data" / "celebamask_hq_sample"),
                        help="CelebAMask-HQ pairs folder (images/, masks/)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels, both models")
    parser.add_argument("--budget-minutes", type=float, default=30.0, help="wall-clock training budget per model")
    parser.add_argument("--output-dir", default=None, help="default: runs/bench/celebamask_hq")
    parser.add_argument("--figures-dir", default=str(REPO / "docs" / "figures"), help="where the two montages go")
    parser.add_argument("--threads-each", type=int, default=1, help="CPU threads per model while both train (and for the timing)")
    parser.add_argument("--sequential", action="store_true", help="train one model after the other instead of side by side")
    parser.add_argument("--autocast", default=None, choices=AUTOCAST_CHOICES,
                        help="mixed precision for both models, training and inference (default: the recipe's)")
    parser.add_argument("--baseline-batch-size", type=int, default=None,
                        help="BasicUNet batch size (default: medsymmflow's, the recipe's unless an --override sets --batch_size)")
    parser.add_argument("--samples-per-mask", type=int, default=4, help="synthesised images per test mask")
    parser.add_argument("--montage-rows", type=int, default=6, help="test images / masks shown in the montages")
    parser.add_argument("--seed", type=int, default=0, help="noise of the synthesis, timing and montages")
    parser.add_argument("--report-only", action="store_true", help="skip training: report on the runs already in --output-dir")
    parser.add_argument("--remeasure", action="store_true",
                        help="with --report-only: redo the floor, timing, synthesis and figures instead of reading measurements.json")
    parser.add_argument("--override", action="append", default=[], help="extra bundle override, e.g. --override=--training#x_weight=0.5")
    args = parser.parse_args(argv)
    recipe = _recipe()
    if args.autocast is None:  # both models get the recipe's precision, so the comparison stays fair
        args.autocast = str(recipe.get("evaluation#autocast") or "none")
    args.batch_size = int(last_override(args.override, "--batch_size", recipe.get("batch_size", DEFAULT_BATCH_SIZE)))
    if args.baseline_batch_size is None:  # the same number of updates per epoch on both sides
        args.baseline_batch_size = args.batch_size
    return args


def _bundle_command(args: argparse.Namespace, out: Path) -> list[str]:
    """The bundle's training run (it evaluates the test split afterwards) with the CPU recipe and this run's budget."""
    extra = [tok for o in args.override for tok in o.split("=", 1)]
    synthesis = _bundle_settings().get("synthesis")
    # the benchmark synthesises itself, with the BasicUNet as mask-consistency segmenter (not trained yet when the bundle ends)
    no_synthesis = ["--synthesis#enabled", "false"] if isinstance(synthesis, dict) and "enabled" in synthesis else []
    return [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", f"['{BUNDLE_TRAIN.as_posix()}','{RECIPE.as_posix()}']",
        "--dataset_dir", str(Path(args.dataset_dir).resolve()), "--size", str(args.size),
        "--device", "cpu", "--output_dir", str(out), "--training#budget_minutes", str(args.budget_minutes),
        "--evaluation#steps", json.dumps(list(SEGMENTATION_STEPS)),
        "--training#autocast", args.autocast, "--evaluation#autocast", args.autocast,
        *no_synthesis, *extra,
    ]


def _baseline_command(args: argparse.Namespace, out: Path) -> list[str]:
    return [
        sys.executable, str(REPO / "benchmarks" / "baseline_unet.py"),
        "--dataset-dir", str(Path(args.dataset_dir).resolve()), "--size", str(args.size),
        "--budget-minutes", str(args.budget_minutes), "--threads", str(args.threads_each), "--output-dir", str(out),
        "--autocast", args.autocast, "--batch-size", str(args.baseline_batch_size), "--seed", str(args.seed),
    ]


# ------------------------------------------------------------------------------------------ reading the runs


def _flow_segmentation_file(flow_out: Path) -> Path | None:
    """The bundle's test-split segmentation_metrics.json: in its output folder, else the first one below it."""
    direct = flow_out / "segmentation_metrics.json"
    if direct.is_file():
        return direct
    found = sorted(flow_out.rglob("segmentation_metrics.json")) if flow_out.is_dir() else []
    return found[0] if found else None


def read_runs(out: Path, report_only: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The bundle's segmentation metrics and the baseline's metrics.json; SystemExit naming what is missing."""
    flow_file = _flow_segmentation_file(out / FLOW)
    baseline_file = out / BASELINE / "metrics.json"
    missing = [str(p) for p, ok in ((out / FLOW / "segmentation_metrics.json", flow_file is not None),
                                    (baseline_file, baseline_file.is_file())) if not ok]
    if missing:
        raise SystemExit(
            f"segmentation benchmark: no test metrics at {', '.join(missing)}; "
            + ("--report-only needs the --output-dir of a finished run" if report_only else f"see the training logs in {out}")
        )
    assert flow_file is not None
    flow = json.loads(flow_file.read_text())
    lacking = [s for s in SEGMENTATION_STEPS if str(s) not in flow.get("by_steps", {})]
    if lacking:
        raise SystemExit(
            f"segmentation benchmark: {flow_file} has no results at {', '.join(map(str, lacking))} step(s) "
            f"(it has {', '.join(flow.get('by_steps', {})) or 'none'}); evaluate with --evaluation#steps {list(SEGMENTATION_STEPS)}"
        )
    return flow, json.loads(baseline_file.read_text())


# -------------------------------------------------------------------------------------------- measurements


def _colour(maps: np.ndarray, num_classes: int) -> np.ndarray:
    from medsymmflow.codes import ClassCodebook
    from medsymmflow.synthesis import colour_label_maps

    return colour_label_maps(maps, ClassCodebook.from_kind("celebamask", num_classes) if num_classes == 19 else ClassCodebook.palette(num_classes))


def segmentation_montage(
    images: np.ndarray, truth: np.ndarray, pred_1: np.ndarray, pred_25: np.ndarray, uncertainty: np.ndarray
) -> np.ndarray:
    """Rows of ``image | ground truth | 1-step | 25-step | uncertainty`` (uint8 ``(N, H, W, 3)`` each, the last ``(N, H, W)`` float)."""
    from medsymmflow.generation import make_montage

    u = np.asarray(uncertainty, dtype=np.float64)
    top = float(u.max()) if u.size and float(u.max()) > 0 else 1.0
    grey = np.repeat((255.0 * u / top).round().clip(0, 255).astype(np.uint8)[..., None], 3, axis=-1)
    tiles = np.stack([images, truth, pred_1, pred_25, grey], axis=1)  # (N, 5, H, W, 3)
    n, per_row = tiles.shape[:2]
    return make_montage(tiles.reshape((-1,) + tiles.shape[2:]), np.repeat(np.arange(n), per_row), n, per_row)


def _training_steps(ckpt_dir: Path) -> int | None:
    """Optimiser steps the bundle's trainer reached: the iteration in its last resumable checkpoint."""
    import torch

    last = ckpt_dir / "last.pt"
    if not last.is_file():
        return None
    state = torch.load(last, map_location="cpu", weights_only=True)
    trainer = state.get("trainer", {}) if isinstance(state, dict) else {}
    return int(trainer["iteration"]) if "iteration" in trainer else None


def measure(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Floor, timing, synthesis and figures from the finished runs' checkpoints; written to ``measurements.json``."""
    import torch
    from throughput import compare_throughput

    from medsymmflow.baselines import load_segmentation_baseline, load_segmentation_split, score_majority_floor
    from medsymmflow.generation import load_generator, write_png
    from medsymmflow.inferers import SymmFlowSegmenter
    from medsymmflow.io import to_float_images
    from medsymmflow.synthesis import evaluate_synthesis_checkpoint

    torch.set_num_threads(args.threads_each)
    best = out / FLOW / "checkpoints" / "best.pt"
    model = out / BASELINE / "model.pt"
    for path in (best, model):
        if not path.is_file():
            raise SystemExit(f"segmentation benchmark: checkpoint {path} is missing; the measurements need both models")
    train = load_segmentation_split(args.dataset_dir, "train", args.size)
    train_images, train_maps = train.images, train.label_maps
    test = load_segmentation_split(args.dataset_dir, "test", args.size)
    test_images, test_maps, test_ids = test.images, test.label_maps, test.ids
    num_classes = int(json.loads((out / BASELINE / "metrics.json").read_text())["num_classes"])
    floor = score_majority_floor(train_maps, test_maps, num_classes)

    gen = load_generator(best)
    unet = load_segmentation_baseline(model, autocast=args.autocast)
    batch = to_float_images(test_images)
    throughput = {}
    for steps in SEGMENTATION_STEPS:
        segmenter = SymmFlowSegmenter(gen.codebook, steps=steps, autocast=args.autocast)
        generator = torch.Generator().manual_seed(args.seed)
        throughput[f"{steps}"] = compare_throughput(
            lambda x, s=segmenter, g=generator: s(x, gen.network, g), unet, batch, repeats=3, warmup=1
        )

    synthesis, synthesis_file = evaluate_synthesis_checkpoint(
        best, test_maps, test_images, segmenters={BASELINE: unet}, self_segmenter_steps=(1,),
        reference_images=train_images, output_dir=out / "synthesis", generator=gen, progress=False,
        steps=(SYNTHESIS_STEPS,), samples_per_mask=args.samples_per_mask, seed=args.seed, ids=test_ids,
        montage_rows=args.montage_rows,
    )

    figures = Path(args.figures_dir)
    rows = min(args.montage_rows, test_images.shape[0])
    shown = batch[:rows]
    segmenters = {s: SymmFlowSegmenter(gen.codebook, steps=s, autocast=args.autocast) for s in SEGMENTATION_STEPS}
    noise = torch.randn(segmenters[1].noise_shape(shown), generator=torch.Generator().manual_seed(args.seed))
    with torch.inference_mode():
        (p1, _), (p25, u25) = (segmenters[s](shown, gen.network, noise=noise) for s in SEGMENTATION_STEPS)
    montage = segmentation_montage(
        test_images[:rows], _colour(test_maps[:rows], num_classes), _colour(p1.numpy(), num_classes),
        _colour(p25.numpy(), num_classes), u25.float().numpy(),
    )
    seg_figure = write_png(figures / "celebamask_hq_segmentation.png", montage)
    syn_figure = figures / "celebamask_hq_synthesis.png"
    syn_figure.parent.mkdir(parents=True, exist_ok=True)
    row = next(r for r in synthesis["results"] if r["steps"] == SYNTHESIS_STEPS)
    shutil.copyfile(row["montage"], syn_figure)

    result = {
        "majority_floor": floor,
        "training_steps": {FLOW: _training_steps(best.parent)},
        "throughput": throughput,
        "synthesis_file": str(synthesis_file),
        "synthesis": {k: synthesis[k] for k in ("reference", "real_consistency", "samples_per_mask", "num_masks", "lpips")}
        | {"result": {k: v for k, v in row.items() if k not in ("samples_dir", "montage")}},
        "figures": {"segmentation": str(seg_figure), "synthesis": str(syn_figure)},
        "threads": args.threads_each,
        "autocast": args.autocast,
    }
    atomic_write(out / MEASUREMENTS_FILE, json.dumps(result, indent=2, default=str) + "\n")
    return result


# ------------------------------------------------------------------------------------------------ the table


def assemble(flow: dict[str, Any], baseline: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
    """The benchmark's rows, synthesis figures and targets from the runs' metrics and the measurements."""
    speed = measured["throughput"]
    rows: dict[str, dict[str, Any]] = {}
    for s in SEGMENTATION_STEPS:
        rows[f"{FLOW}_{s}step" + ("s" if s > 1 else "")] = {
            **{m: flow["by_steps"][str(s)][m] for m in METRICS},
            "images_per_second": speed[str(s)]["images_per_second"],
            "training_steps": measured["training_steps"][FLOW],
        }
    rows[BASELINE] = {
        **{m: baseline["test"][m] for m in METRICS},
        "images_per_second": speed[str(SEGMENTATION_STEPS[0])]["reference"]["images_per_second"],
        "training_steps": baseline["training"]["steps"],
    }
    rows["majority_floor"] = {**{m: measured["majority_floor"][m] for m in METRICS}, "images_per_second": None, "training_steps": 0}

    syn = measured["synthesis"]
    result = syn["result"]
    consistency = result["mask_consistency"][BASELINE]["miou_no_background"]
    real = syn["real_consistency"][BASELINE]["miou_no_background"]
    reference_kid = syn["reference"]["kid"]
    synthesis = {
        "steps": result["steps"],
        "fid": result["fid"],
        "kid": result["kid"],
        "kid_std": result.get("kid_std"),
        "reference_fid": syn["reference"]["fid"],
        "reference_kid": reference_kid,
        "kid_over_reference": result["kid"] / reference_kid if reference_kid and reference_kid > 0 else None,
        "mask_consistency_baseline": consistency,
        "baseline_miou_real": real,
        "consistency_over_real": consistency / real if real else None,
        "mask_consistency_self_1step": result["mask_consistency"].get(f"{FLOW}_1step", {}).get("miou_no_background"),
        "diversity": result.get("diversity"),
    }
    base = rows[BASELINE]["miou_no_background"]
    kid_ratio = synthesis["kid_over_reference"]
    targets = {
        "1step_miou_no_background_at_least_baseline": rows[f"{FLOW}_1step"]["miou_no_background"] >= base,
        "25steps_miou_no_background_at_least_baseline_plus_2": rows[f"{FLOW}_25steps"]["miou_no_background"] >= base + TARGET_25_STEP_MARGIN,
        "kid_within_3x_reference": kid_ratio is not None and kid_ratio <= TARGET_KID_FACTOR,
        "mask_consistency_at_least_80pct_of_baseline_real": synthesis["consistency_over_real"] is not None
        and synthesis["consistency_over_real"] >= TARGET_CONSISTENCY_FRACTION,
    }
    return {"rows": rows, "synthesis": synthesis, "targets": targets}


def format_table(report: dict[str, Any]) -> str:
    """The rows as a fixed-width table (mIoU and pixel accuracy in percent) and the synthesis line."""
    lines = [f"{'model':<20}{'mIoU':>8}{'mIoU-bg':>9}{'pix acc':>9}{'steps':>8}{'img/s':>9}"]
    for name, r in report["rows"].items():
        ips = "-" if r["images_per_second"] is None else f"{r['images_per_second']:.1f}"
        steps = "-" if r["training_steps"] is None else str(r["training_steps"])
        lines.append(f"{name:<20}{100 * r['miou']:>8.1f}{100 * r['miou_no_background']:>9.1f}"
                     f"{100 * r['pixel_accuracy']:>9.1f}{steps:>8}{ips:>9}")
    s = report["synthesis"]
    lines.append(
        f"synthesis ({s['steps']} steps): FID {s['fid']:.1f} (real vs real {s['reference_fid']:.1f}), KID {s['kid']:.4f} "
        f"(real vs real {s['reference_kid']:.4f}), mask consistency {100 * s['mask_consistency_baseline']:.1f} "
        f"vs the BasicUNet on real images {100 * s['baseline_miou_real']:.1f} (mIoU without background)"
    )
    lines.append("targets: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in report["targets"].items()))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run both trainings, measure, print a table and write results.json."""
    args = _parse_args(argv)
    out = Path(args.output_dir or REPO / "runs" / "bench" / "celebamask_hq").resolve()
    flow_out, baseline_out = out / FLOW, out / BASELINE
    jobs = [
        (FLOW, _bundle_command(args, flow_out), out / f"{FLOW}.log"),
        (BASELINE, _baseline_command(args, baseline_out), out / f"{BASELINE}.log"),
    ]
    wall = run_jobs(jobs, args.threads_each, sequential=args.sequential, report_only=args.report_only)

    flow, baseline = read_runs(out, args.report_only)
    if args.report_only and not args.remeasure and (out / MEASUREMENTS_FILE).is_file():
        measured = json.loads((out / MEASUREMENTS_FILE).read_text())
    else:
        measured = measure(args, out)
    report = assemble(flow, baseline, measured)
    for name in (FLOW, BASELINE):
        for key in [k for k in report["rows"] if k.startswith(name)]:
            report["rows"][key]["wall_minutes"] = wall[name] / 60
    results = {
        "dataset_dir": str(Path(args.dataset_dir).resolve()),
        "size": args.size,
        "budget_minutes": args.budget_minutes,
        "side_by_side": not args.sequential,
        "threads_each": args.threads_each,
        "autocast": args.autocast,
        "batch_size": args.batch_size,
        "baseline_batch_size": args.baseline_batch_size,
        "split": {k: baseline.get("splits", {}).get(k) for k in ("train", "val", "test")},
        **report,
        "measurements": measured,
        "medsymmflow_segmentation_metrics": flow,
        "basicunet_metrics": baseline,
        "machine": machine_info(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command_line(),
    }
    atomic_write(out / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    mode = "side by side" if not args.sequential else "sequential"
    print(f"\nCelebAMask-HQ {args.size} px: {args.budget_minutes:g}-minute budget, {mode}, {args.threads_each} thread(s) each")
    print(format_table(report))
    print(f"results: {out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
