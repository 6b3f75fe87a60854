"""Soak test of crash recovery: kill a training at random moments, resume it every time, compare the end.

Trains the pneumoniamnist bundle (or ``--flag`` with ``--dataset-dir``) once without interruption as
the reference, then runs the same training again and kills it ``--kills`` times at seeded random
moments (uniform from the trainer's start over the reference's first-epoch latency plus
``--max-delay-epochs`` epoch durations), resuming
each time with ``--resume true``. After every kill it checks that an intact resumable checkpoint
is on disk and how many finished epochs it lacks; a watcher thread checks every few milliseconds
that ``last.pt`` or ``previous.pt`` exists at every moment after the first was written. The last
resume runs to the end, and its weights are compared with the reference bit for bit.

    python benchmarks/soak_resume.py --kills 10 --output docs/results/soak_resume.json

Default data: tiny synthetic MedMNIST files and the ``tiny`` network. Prints a table and writes the
figures (kills survived, epochs lost, moments without a checkpoint, exact final weights, machine,
date, command) as JSON to ``--output``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from baseline_resnet import command_line, machine_info, now_iso  # noqa: E402

from medsymmflow.io import atomic_write, load_checkpoint

RESUMABLE = ("last.pt", "previous.pt")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--kills", type=int, default=10, help="how many times the training is killed and resumed")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of the training (default: 2 per kill + 2)")
    parser.add_argument("--max-delay-epochs", type=float, default=2.0,
                        help="kill moments are uniform over the first-epoch latency plus this many epoch durations")
    parser.add_argument("--signal", choices=("kill", "term"), default="kill",
                        help="SIGKILL, or SIGTERM (then the checkpoint holds the state within the epoch and the end is not bit-exact)")
    parser.add_argument("--flag", default="pneumoniamnist", help="MedMNIST flag (a bundle of that name, else the pneumoniamnist bundle)")
    parser.add_argument("--dataset-dir", default=None, help="folder with <flag>.npz (default: synthetic data in the work dir)")
    parser.add_argument("--net-preset", default="tiny", help="network preset")
    parser.add_argument("--batch-size", type=int, default=16, help="training batch size")
    parser.add_argument("--work-dir", default=None, help="where the runs go (default: a temporary folder)")
    parser.add_argument("--output", default="docs/results/soak_resume.json", help="JSON file for the results")
    parser.add_argument("--override", action="append", default=[], help="extra bundle override, e.g. --override=--learning_rate=0.001")
    args = parser.parse_args(argv)
    if args.kills < 1:
        parser.error("--kills must be >= 1")
    if args.epochs is None:
        args.epochs = 2 * args.kills + 2
    return args


def _command(args: argparse.Namespace, data_dir: Path, out: Path, resume: bool) -> list[str]:
    bundle = REPO / "bundles" / args.flag
    train = (bundle if bundle.is_dir() else REPO / "bundles" / "pneumoniamnist") / "train.json"
    return [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", str(train.relative_to(REPO)),
        "--flag", args.flag, "--dataset_dir", str(data_dir), "--download", "false", "--device", "cpu",
        "--net_preset", args.net_preset, "--output_dir", str(out), "--epochs", str(args.epochs),
        "--batch_size", str(args.batch_size), "--warmup_epochs", "0", "--training#val_interval", "1",
        "--training#evaluate_after_training", "false", "--resume", str(resume).lower(),
        *[tok for o in args.override for tok in o.split("=", 1)],
    ]


ENV = dict(os.environ, PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1")
TRAINER_STARTED = "SymmFlowTrainer - INFO - Engine run resuming from"
EPOCH_DONE = re.compile(r"^(\S+ \S+) - ignite\.engine\.engine\.SymmFlowTrainer - INFO - Epoch\[(\d+)\] Complete", re.M)
STARTED_AT = re.compile(r"^(\S+ \S+) - ignite\.engine\.engine\.SymmFlowTrainer - INFO - Engine run resuming from", re.M)


def _epochs_done(log: str) -> list[int]:
    """The training epochs a log reports as complete."""
    return [int(m[1]) for m in EPOCH_DONE.findall(log)]


def _timing(log: str) -> tuple[float, float]:
    """Seconds from the trainer's start to its first finished epoch, and the mean epoch after that."""
    def seconds(stamp: str) -> float:
        return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()

    start = seconds(STARTED_AT.search(log)[1])
    done = [seconds(m[0]) for m in EPOCH_DONE.findall(log)]
    later = [b - a for a, b in zip(done, done[1:])]
    return done[0] - start, sum(later) / max(len(later), 1)


def _newest_intact(ckpt_dir: Path) -> tuple[str, int, int] | None:
    """(file, iteration, epoch_length) of the resumable checkpoint furthest on, or None."""
    found = []
    for name in RESUMABLE:
        path = ckpt_dir / name
        if path.is_file():
            try:
                trainer = load_checkpoint(path)["trainer"]
                found.append((name, int(trainer["iteration"]), int(trainer["epoch_length"])))
            except (ValueError, KeyError):
                pass
    return max(found, key=lambda f: f[1]) if found else None


class Watcher(threading.Thread):
    """Counts the moments, after the first checkpoint appeared, at which no resumable file existed."""

    def __init__(self, ckpt_dir: Path, period: float = 0.002) -> None:
        super().__init__(daemon=True)
        self.ckpt_dir, self.period = ckpt_dir, period
        self.polls = self.missing = 0
        self.seen = False
        self._halt = threading.Event()

    def run(self) -> None:
        """Poll until stopped."""
        while not self._halt.is_set():
            present = any((self.ckpt_dir / name).exists() for name in RESUMABLE)
            self.seen |= present
            if self.seen:
                self.polls += 1
                self.missing += not present
            time.sleep(self.period)

    def stop(self) -> None:
        """End the polling."""
        self._halt.set()
        self.join()


def _train(cmd: list[str], log: Path) -> subprocess.CompletedProcess:
    with log.open("w") as f:
        done = subprocess.run(cmd, cwd=REPO, env=ENV, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"training failed (exit {done.returncode}); see {log}")
    return done


def _kill_once(cmd: list[str], log: Path, delay: float, sig: int) -> dict[str, Any]:
    """Start a training, wait until its trainer runs, let it go on for ``delay`` s, send ``sig``."""
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=f, stderr=subprocess.STDOUT)
        while TRAINER_STARTED not in log.read_text() and proc.poll() is None:
            time.sleep(0.01)
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.005)
        finished = proc.poll() is not None
        if not finished:
            proc.send_signal(sig)
        code = proc.wait()
    text = log.read_text()
    resumed = re.search(r"resuming from \S+ \(epoch (\d+)", text)
    return {
        "finished_before_kill": finished, "exit_code": code, "log": text,
        "resumed_from_epoch": int(resumed.group(1)) if resumed else 0,
    }


def _same_weights(a: Path, b: Path, parts: Sequence[str] = ("network", "ema")) -> bool:
    import torch

    x, y = load_checkpoint(a), load_checkpoint(b)
    return all(x[p].keys() == y[p].keys() and all(torch.equal(x[p][k], y[p][k]) for k in x[p]) for p in parts)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Reference run, ``--kills`` killed and resumed segments, final resume; print a table and write JSON."""
    args = _parse_args(argv)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="soak_resume_")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.dataset_dir:
        data_dir = Path(args.dataset_dir).resolve()
    else:
        from medsymmflow.data import write_synthetic_medmnist

        data_dir = work / "data"
        write_synthetic_medmnist(data_dir, args.flag, n_train=96, n_val=24, n_test=24, seed=1)
    sig = signal.SIGKILL if args.signal == "kill" else signal.SIGTERM

    reference, soak = work / "reference", work / "soak"
    for d in (reference, soak):
        if d.exists():
            raise SystemExit(f"soak_resume: error: {d} exists; choose another --work-dir")
    start = time.monotonic()
    _train(_command(args, data_dir, reference, resume=False), work / "reference.log")
    reference_seconds = time.monotonic() - start
    first_epoch_seconds, epoch_seconds = _timing((work / "reference.log").read_text())

    rng = random.Random(args.seed)
    ckpt_dir = soak / "checkpoints"
    watcher = Watcher(ckpt_dir)
    watcher.start()
    rows: list[dict[str, Any]] = []
    completed = 0  # highest epoch any segment reported complete
    try:
        for i in range(1, args.kills + 1):
            delay = rng.uniform(0.0, first_epoch_seconds + args.max_delay_epochs * epoch_seconds)
            seg = _kill_once(_command(args, data_dir, soak, resume=True), work / f"segment_{i}.log", delay, sig)
            if seg["finished_before_kill"]:
                rows.append({"kill": i, "delay_s": round(delay, 2), "note": "training finished before the kill"})
                break
            completed = max([completed, *_epochs_done(seg["log"])])
            newest = _newest_intact(ckpt_dir)
            epoch_on_disk = newest[1] // newest[2] if newest else 0
            rows.append({
                "kill": i, "delay_s": round(delay, 2), "exit_code": seg["exit_code"],
                "resumed_from_epoch": seg["resumed_from_epoch"], "epochs_completed": completed,
                "checkpoint": newest[0] if newest else None, "checkpoint_epoch": epoch_on_disk,
                "checkpoint_iteration": newest[1] if newest else None,
                "epochs_lost": max(0, completed - epoch_on_disk),
                "intact": newest is not None or completed == 0,
            })
        _train(_command(args, data_dir, soak, resume=True), work / "final.log")
    finally:
        watcher.stop()

    kills = [r for r in rows if "exit_code" in r]
    final_equal = _same_weights(reference / "checkpoints/last.pt", ckpt_dir / "last.pt")
    best_equal = _same_weights(reference / "checkpoints/best.pt", ckpt_dir / "best.pt", parts=("ema",))
    result = {
        "kills": len(kills),
        "kills_survived": sum(r["intact"] for r in kills),
        "epochs_lost_total": sum(r["epochs_lost"] for r in kills),
        "epochs_lost_max": max((r["epochs_lost"] for r in kills), default=0),
        "kills_without_intact_checkpoint": sum(not r["intact"] for r in kills),
        "moments_without_checkpoint": watcher.missing,
        "watcher_polls": watcher.polls,
        "final_weights_equal_reference": final_equal,
        "best_pt_equal_reference": best_equal,
        "signal": args.signal, "seed": args.seed, "epochs": args.epochs, "flag": args.flag,
        "data": str(args.dataset_dir) if args.dataset_dir else "synthetic (96 train / 24 val images)",
        "net_preset": args.net_preset, "batch_size": args.batch_size,
        "reference_seconds": round(reference_seconds, 1), "first_epoch_seconds": round(first_epoch_seconds, 2),
        "mean_epoch_seconds": round(epoch_seconds, 2),
        "segments": rows, "work_dir": str(work),
        "machine": machine_info(), "date": now_iso(), "command": command_line(),
    }
    _print_table(result)
    output = Path(args.output)
    atomic_write(output if output.is_absolute() else REPO / output, json.dumps(result, indent=2) + "\n")
    return result


def _print_table(result: dict[str, Any]) -> None:
    print(f"{'kill':>4} {'delay s':>8} {'exit':>5} {'resumed from':>12} {'done':>5} {'on disk':>12} {'lost':>5} {'intact':>6}")
    for r in result["segments"]:
        if "exit_code" not in r:
            print(f"{r['kill']:>4} {r['delay_s']:>8} {r['note']}")
            continue
        disk = f"{r['checkpoint'] or '-'}@{r['checkpoint_epoch']}"
        print(f"{r['kill']:>4} {r['delay_s']:>8} {r['exit_code']:>5} {r['resumed_from_epoch']:>12} "
              f"{r['epochs_completed']:>5} {disk:>12} {r['epochs_lost']:>5} {str(r['intact']):>6}")
    print(
        f"kills survived {result['kills_survived']}/{result['kills']}, epochs lost {result['epochs_lost_total']} "
        f"(max {result['epochs_lost_max']} per kill), moments without a checkpoint {result['moments_without_checkpoint']} "
        f"of {result['watcher_polls']} polls, final weights equal to the reference: {result['final_weights_equal_reference']}, "
        f"best.pt equal: {result['best_pt_equal_reference']}"
    )


if __name__ == "__main__":
    main()
