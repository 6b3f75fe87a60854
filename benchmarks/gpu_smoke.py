"""GPU smoke test: the paper's 512 px latent setting trained for a few hundred steps on one GPU, then segmentation and synthesis.

    python benchmarks/gpu_smoke.py                                   # 300 steps at batch 8, bf16 where the GPU runs it natively
    python benchmarks/gpu_smoke.py --channels-last --compile         # the same with NHWC weights and a compiled UNet
    python benchmarks/gpu_smoke.py --dataset-dir ../shared/data/celebamask_hq_sample --vae /models/sd-vae-ft-mse
    python benchmarks/gpu_smoke.py --device cpu --tiny               # the seconds-long CPU check the tests run

A randomly initialised ``sd21`` UNet (``medsymmflow.networks.build_network``) learns the flow between Stable
Diffusion VAE latents (``stabilityai/sd-vae-ft-mse`` through ``medsymmflow.networks.load_vae``, or ``--vae`` a
local folder; when it cannot be loaded, a randomly initialised diffusers ``AutoencoderKL`` with that VAE's
configuration stands in, which times the same, and the output says so) of 512 px images and their
CelebAMask-HQ colour masks: random images and label maps made on the GPU, or a CelebAMask-HQ pairs folder
with ``--dataset-dir``. Training runs through ``SymmFlowTrainer`` with the codec (SymmFlow's loss, path and
AdamW at the authors' 8e-5, an EMA updated every step); then the EMA segments one batch at 1 and 25 Euler
steps (VAE encoding and decoding included) and synthesises one batch from its masks at 25 steps
(``medsymmflow.synthesis.synthesise``). Prints a table and writes a JSON (step time, images/s of the three,
peak GPU memory, parameters, versions, GPU) to stdout and ``--output``. Weights do not matter here: it
measures speed and memory, and that the whole path runs.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402

from medsymmflow.precision import AUTOCAST_CHOICES  # noqa: E402

SCRIPT = "benchmarks/gpu_smoke.py"
NUM_CLASSES = 19  # CelebAMask-HQ
# the authors' CelebAMask-HQ setting (DESIGN.md "Natural images")
LEARNING_RATE, BETA, X_WEIGHT, SIGMA_MIN = 8e-5, 10.0, 0.7, 1e-4
SEGMENTATION_STEPS, SYNTHESIS_STEPS = (1, 25), 25
# the full run and the tiny CPU check: preset, image side, batch, training steps, warm-up steps left out of the timing
FULL = {"net_preset": "sd21", "size": 512, "batch_size": 8, "steps": 300, "warmup_steps": 10}
TINY = {"net_preset": "sd21_tiny", "size": 64, "batch_size": 2, "steps": 3, "warmup_steps": 1}
# Stable Diffusion's VAE (the config.json of stabilityai/sd-vae-ft-mse): the stand-in when its weights cannot be loaded
SD_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
# the same layout (4 levels: 8x downsampling, 4 latent channels) at a few thousand parameters, for --tiny
TINY_VAE_CONFIG: dict[str, Any] = {**SD_VAE_CONFIG, "block_out_channels": [8, 8, 16, 16], "layers_per_block": 1,
                                   "norm_num_groups": 4, "sample_size": 64}
POOL_BATCHES = 4  # distinct synthetic batches the training cycles through
GIB = 2.0**30


def fail(message: str) -> None:
    """End the process with one line naming the problem."""
    print(f"medsymmflow: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", default="cuda", help="a CUDA device (cuda, cuda:1); cpu only with --tiny")
    parser.add_argument("--tiny", action="store_true",
                        help=f"the CPU check: {TINY['net_preset']}, a tiny random VAE, {TINY['size']} px, {TINY['steps']} steps")
    parser.add_argument("--steps", type=int, default=None, help=f"training steps (default {FULL['steps']}; --tiny {TINY['steps']})")
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help=f"first steps left out of the step time (compilation, cuDNN autotuning; default {FULL['warmup_steps']})")
    parser.add_argument("--batch-size", type=int, default=None, help=f"images per step (default {FULL['batch_size']}; --tiny {TINY['batch_size']})")
    parser.add_argument("--size", type=int, default=None, help=f"image side in px (default {FULL['size']}; --tiny {TINY['size']})")
    parser.add_argument("--net-preset", default=None, help=f"medsymmflow network preset (default {FULL['net_preset']}; --tiny {TINY['net_preset']})")
    parser.add_argument("--vae", default=None,
                        help="VAE: Hugging Face name, local diffusers folder or package vae.pt (default stabilityai/sd-vae-ft-mse; "
                             "--tiny: a tiny random diffusers AutoencoderKL)")
    parser.add_argument("--dataset-dir", default=None, help="CelebAMask-HQ pairs folder (images/, masks/); default: synthetic data")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers with --dataset-dir")
    parser.add_argument("--autocast", default="auto", choices=AUTOCAST_CHOICES,
                        help="mixed precision of the UNet (auto: bf16 on GPUs of compute capability 8.0+)")
    parser.add_argument("--channels-last", action="store_true", help="NHWC weights and inputs (medsymmflow.networks.prepare_network)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the training UNet (adds minutes of compilation to the first step)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: 1 on --device cpu, where the tiny tensors gain nothing from more; torch's otherwise)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(REPO / "runs" / "bench" / "gpu_smoke" / "results.json"), help="JSON file written")
    args = parser.parse_args(argv)
    preset = TINY if args.tiny else FULL
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("steps", "batch_size", "size"):
        if getattr(args, key) < 1:
            fail(f"--{key.replace('_', '-')} must be at least 1, got {getattr(args, key)}")
    args.warmup_steps = min(max(0, args.warmup_steps), args.steps - 1)
    return args


def check_device(args: argparse.Namespace) -> torch.device:
    """The run's device; one error line when it is not a usable CUDA GPU (or CPU with --tiny)."""
    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError):
        fail(f"{SCRIPT}: --device {args.device!r} is not a torch device; use cuda, cuda:N, or cpu with --tiny")
    if device.type == "cpu":
        if not args.tiny:
            fail(f"{SCRIPT}: --device cpu runs only the tiny check (add --tiny); the {FULL['size']} px {FULL['net_preset']} setting needs a CUDA GPU")
        return device
    if device.type != "cuda" or not torch.cuda.is_available():
        hidden = " (CUDA_VISIBLE_DEVICES hides every GPU)" if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "" else ""
        fail(f"{SCRIPT} needs a CUDA GPU, but torch.cuda.is_available() is False on this machine{hidden}; "
             "run `python benchmarks/gpu_smoke.py --device cpu --tiny` for the CPU check")
    if device.index is not None and device.index >= torch.cuda.device_count():
        fail(f"{SCRIPT}: --device {args.device} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.set_device(device)
    return device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and its wall time in seconds, the GPU's queue drained before and after."""
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


def reset_peak(device: torch.device) -> None:
    """Start a new peak-memory phase."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    """The phase's peak allocated GPU memory in GiB (``torch.cuda.max_memory_allocated``); None on CPU."""
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None


# ----------------------------------------------------------------------------------------------------- models
def build_codec(args: argparse.Namespace, device: torch.device) -> tuple[Any, dict[str, Any]]:
    """The VAE codec and what it is: loaded weights, or a random diffusers AutoencoderKL with SD's (or the tiny) config."""
    from medsymmflow.networks import SD_VAE, LatentCodec, VAELoadError, load_vae

    source = args.vae if args.vae is not None else (None if args.tiny else SD_VAE)
    note = None
    if source is not None:
        try:
            codec = load_vae(source, device=device)
            return codec, {"source": str(source), "pretrained": True, "backend": codec.backend, "note": None}
        except VAELoadError as e:
            what = "a tiny" if args.tiny else "an"
            note = f"could not load {source} ({str(e).split('. To use')[0]}); timing {what} AutoencoderKL with SD's VAE layout and random weights"
            print(f"note: {note}", flush=True)
    from diffusers import AutoencoderKL

    config = TINY_VAE_CONFIG if args.tiny else SD_VAE_CONFIG
    vae = AutoencoderKL(**config)
    name = "tiny AutoencoderKL (random)" if config is TINY_VAE_CONFIG else "AutoencoderKL with SD's VAE config (random)"
    codec = LatentCodec(vae, source=name).to(device)
    return codec, {"source": name, "pretrained": False, "backend": codec.backend, "note": note}


def synthetic_batches(n: int, batch: int, size: int, codebook: Any, device: torch.device, seed: int) -> list[dict[str, torch.Tensor]]:
    """``n`` batches of CelebAMask-style pairs made on ``device``: label maps of random Voronoi cells, images coloured by class plus noise."""
    g = torch.Generator(device=device).manual_seed(seed)
    cells = 24  # about the number of parts a face mask shows
    coords = torch.stack(torch.meshgrid(torch.arange(size, device=device), torch.arange(size, device=device), indexing="ij"), -1)
    coords = coords.reshape(1, 1, -1, 2).float()
    colours = codebook.codes.to(device)  # (K, 3) colour codes in [-1, 1]
    out = []
    for _ in range(n):
        centres = torch.rand(batch, cells, 1, 2, generator=g, device=device) * size
        classes = torch.randint(0, codebook.num_classes, (batch, cells), generator=g, device=device)
        nearest = (coords - centres).square().sum(-1).argmin(1)  # (B, H*W)
        labels = classes.gather(1, nearest).reshape(batch, 1, size, size)
        image = 0.6 * colours[labels[:, 0]].permute(0, 3, 1, 2) + 0.3 * torch.randn(batch, 3, size, size, generator=g, device=device)
        out.append({"image": image.clamp(-1, 1), "label": labels})
    return out


def dataset_loader(args: argparse.Namespace) -> Any:
    """A shuffled DataLoader over the training split of a CelebAMask-HQ pairs folder at ``--size`` px."""
    from monai.data import Dataset
    from torch.utils.data import DataLoader

    from medsymmflow.baselines.segmentation import segmentation_transforms
    from medsymmflow.data import celebamask_hq_dicts

    items = [{"image": p["image"], "label": p["label"]} for p in celebamask_hq_dicts(args.dataset_dir, "train")]
    if len(items) < args.batch_size:
        fail(f"{SCRIPT}: the train split of {args.dataset_dir} holds {len(items)} pairs, fewer than --batch-size {args.batch_size}")
    data = Dataset(items, segmentation_transforms(args.size, train=True))
    return DataLoader(data, batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=args.workers,
                      generator=torch.Generator().manual_seed(args.seed), persistent_workers=args.workers > 0)


# ------------------------------------------------------------------------------------------------------- phases
class StepTimer:
    """Per-iteration wall times (the GPU synchronised at every iteration end) and losses of a trainer."""

    def __init__(self, device: torch.device, warmup: int, total: int) -> None:
        self.device, self.warmup, self.total = device, warmup, total
        self.ends: list[float] = []
        self.losses: list[float] = []
        self.start = 0.0

    def attach(self, engine: Any) -> None:
        """Time from STARTED, one mark per ITERATION_COMPLETED (after the handlers attached before it, the EMA update)."""
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.completed)

    def started(self, engine: Any) -> None:
        """Remember when training began."""
        _sync(self.device)
        self.start = time.perf_counter()

    def completed(self, engine: Any) -> None:
        """Record this iteration's end and loss; after the warm-up, print the projected time left."""
        _sync(self.device)
        self.ends.append(time.perf_counter())
        self.losses.append(float(engine.state.output["loss"]))
        done = len(self.ends)
        if done == min(self.total - 1, self.warmup + 5) and done > self.warmup:  # a few steps past the warm-up
            per_step = statistics.fmean(self.durations[self.warmup:])
            print(f"after {done} steps: {per_step:.3f} s per step, about {per_step * (self.total - done):.0f} s of training left", flush=True)

    @property
    def durations(self) -> list[float]:
        """Seconds of every iteration."""
        marks = [self.start, *self.ends]
        return [b - a for a, b in zip(marks, marks[1:])]


def train(args: argparse.Namespace, device: torch.device, network: torch.nn.Module, codec: Any, codebook: Any, data: Any) -> tuple[Any, dict[str, Any]]:
    """Train ``network`` for ``--steps`` steps through SymmFlowTrainer; return the EMA and the timing."""
    from medsymmflow.engines import EMAUpdate, SymmFlowTrainer
    from medsymmflow.flow import SymmetricPath, SymmFlowLoss
    from medsymmflow.networks import create_ema

    optimizer = torch.optim.AdamW(network.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    ema = create_ema(network, decay=0.9999, warmup=True)
    trainer = SymmFlowTrainer(
        device=device, max_epochs=1, epoch_length=args.steps, train_data_loader=data, network=network, optimizer=optimizer,
        codebook=codebook, beta=BETA, loss_function=SymmFlowLoss(x_weight=X_WEIGHT), path=SymmetricPath(sigma_min=SIGMA_MIN),
        autocast_dtype=args.autocast, codec=codec,
    )
    EMAUpdate(ema, network).attach(trainer)
    timer = StepTimer(device, args.warmup_steps, args.steps)
    timer.attach(trainer)
    reset_peak(device)
    trainer.run()
    durations = timer.durations
    steady = durations[args.warmup_steps:]
    step_time = statistics.fmean(steady)
    result = {
        "steps": len(durations),
        "timed_steps": len(steady),
        "first_step_s": durations[0],
        "step_time_s": step_time,
        "step_time_median_s": statistics.median(steady),
        "images_per_second": args.batch_size / step_time,
        "wall_s": timer.ends[-1] - timer.start,
        "loss_first": timer.losses[0],
        "loss_last": timer.losses[-1],
        "peak_memory_gib": peak_gib(device),
        "autocast_dtype": None if trainer.autocast_dtype is None else str(trainer.autocast_dtype).removeprefix("torch."),
    }
    return ema, result


def segment(args: argparse.Namespace, device: torch.device, network: Any, codec: Any, codebook: Any, images: torch.Tensor) -> dict[str, Any]:
    """Segment ``images`` at each of SEGMENTATION_STEPS (encode, reverse ODE on latents, decode, per-pixel nearest colour)."""
    from medsymmflow.inferers import SymmFlowClassifier

    decode = functools.partial(codec.decode_image, channels=codebook.channels)
    results: dict[str, Any] = {}
    for steps in SEGMENTATION_STEPS:
        inferer = SymmFlowClassifier(codebook, steps=steps, decision="pixel", code_channels=codec.latent_channels, autocast=args.autocast)

        def run(inferer: SymmFlowClassifier = inferer) -> torch.Tensor:
            g = torch.Generator(device=device).manual_seed(args.seed)
            with torch.inference_mode():
                return inferer(codec.encode_image(images, generator=g), network, generator=g, decode=decode).labels

        run()  # warm-up: cuDNN picks its algorithms for these shapes
        reset_peak(device)
        labels, seconds = timed(device, run)
        if tuple(labels.shape) != (images.shape[0], *images.shape[2:]) or int(labels.min()) < 0 or int(labels.max()) >= codebook.num_classes:
            raise RuntimeError(f"segmentation at {steps} steps gave labels of shape {tuple(labels.shape)} in [{int(labels.min())}, {int(labels.max())}]")
        results[str(steps)] = {"seconds": seconds, "images_per_second": images.shape[0] / seconds, "peak_memory_gib": peak_gib(device)}
    return results


def synthesise_batch(args: argparse.Namespace, device: torch.device, network: Any, codec: Any, codebook: Any, label_maps: torch.Tensor) -> dict[str, Any]:
    """Synthesise one image per label map at SYNTHESIS_STEPS Euler steps (``medsymmflow.synthesis.synthesise``) under the run's autocast."""
    from medsymmflow.precision import autocast_context, resolve_autocast
    from medsymmflow.synthesis import synthesise

    dtype = resolve_autocast(args.autocast, device)
    maps = label_maps[:, 0].cpu()

    def run() -> Any:
        # synthesise has no precision setting of its own: the run's autocast wraps it
        with autocast_context(device, dtype):
            return synthesise(network, codebook, 3, maps, samples_per_mask=1, steps=SYNTHESIS_STEPS, seed=args.seed,
                              batch_size=maps.shape[0], beta=BETA, ignore_index=None, codec=codec, progress=False)

    run()
    reset_peak(device)
    images, seconds = timed(device, run)
    if images.shape != (maps.shape[0], 1, args.size, args.size, 3):
        raise RuntimeError(f"synthesis gave images of shape {images.shape}")
    return {str(SYNTHESIS_STEPS): {"seconds": seconds, "images_per_second": maps.shape[0] / seconds, "peak_memory_gib": peak_gib(device)}}


# -------------------------------------------------------------------------------------------------------- report
def versions() -> dict[str, Any]:
    """Library versions the figures depend on."""
    import diffusers
    import monai

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "monai": monai.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "python": sys.version.split()[0]}


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(result: dict[str, Any]) -> str:
    """The phases as a fixed-width table: steps, seconds, images/s, peak GPU memory."""
    s = result["setting"]
    precision = result["train"]["autocast_dtype"] or "float32"
    lines = [
        f"gpu_smoke: {s['net_preset']} on {result['gpu'] or 'cpu'}, {s['size']} px ({s['latent_size']} px latents), batch {s['batch_size']}, "
        f"{precision}, channels-last {'on' if s['channels_last'] else 'off'}, compile {'on' if s['compile'] else 'off'}",
        f"{'phase':<26}{'steps':>7}{'seconds':>10}{'img/s':>9}{'peak GiB':>10}",
    ]
    t = result["train"]
    lines.append(f"{'train (per step)':<26}{t['timed_steps']:>7}{t['step_time_s']:>10.3f}{t['images_per_second']:>9.1f}{_num(t['peak_memory_gib'], '.1f'):>10}")
    lines.append(f"{'train (first step)':<26}{1:>7}{t['first_step_s']:>10.3f}{'-':>9}{'-':>10}")
    for steps, r in result["segmentation"].items():
        name = f"segmentation {steps} step" + ("s" if steps != "1" else "")
        lines.append(f"{name:<26}{steps:>7}{r['seconds']:>10.3f}{r['images_per_second']:>9.1f}{_num(r['peak_memory_gib'], '.1f'):>10}")
    for steps, r in result["synthesis"].items():
        lines.append(f"{f'synthesis {steps} steps':<26}{steps:>7}{r['seconds']:>10.3f}{r['images_per_second']:>9.1f}{_num(r['peak_memory_gib'], '.1f'):>10}")
    v = result["versions"]
    lines.append(f"parameters: {result['model_parameters']:,} (network), {result['vae_parameters']:,} (VAE: {s['vae']['source']}); "
                 f"torch {v['torch']}, diffusers {v['diffusers']}; total {result['total_s']:.0f} s")
    if s["vae"]["note"]:
        lines.append(f"note: {s['vae']['note']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Build, train, segment and synthesise; print the table and the JSON and write ``--output``."""
    started = time.perf_counter()
    args = _parse_args(argv)
    device = check_device(args)
    from baseline_resnet import command_line, machine_info

    from medsymmflow import errors
    from medsymmflow.codes import ClassCodebook
    from medsymmflow.io import atomic_write
    from medsymmflow.networks import build_network, count_parameters, prepare_network

    errors.install_excepthook()
    if args.threads is not None or device.type == "cpu":
        torch.set_num_threads(max(1, args.threads or 1))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN time its algorithms once
        print(f"plan: {args.steps} steps of batch {args.batch_size} at {args.size} px on {torch.cuda.get_device_name(device)}; "
              "a rough expectation for one H100 / H200 in bf16 is 0.2-0.5 s per step, about 3 minutes in all "
              "(--compile adds minutes of compilation); the measured rate follows the warm-up", flush=True)
    torch.manual_seed(args.seed)
    codebook = ClassCodebook.from_kind("celebamask", NUM_CLASSES)

    def build() -> tuple[Any, dict[str, Any], torch.nn.Module]:
        codec, vae_info = build_codec(args, device)
        latent = codec.latent_shape((args.size, args.size))
        try:
            net = build_network(args.net_preset, x_channels=codec.latent_channels, y_channels=codec.latent_channels)
        except (ValueError, TypeError) as e:
            fail(f"{SCRIPT}: --net-preset {args.net_preset}: {e}")
        net = prepare_network(net, device, channels_last=args.channels_last, compile=args.compile)
        return codec, vae_info | {"latent_size": latent[0]}, net

    (codec, vae_info, network), build_s = timed(device, build)
    if args.dataset_dir:
        data = dataset_loader(args)
        first = next(iter(data))
        sample = {k: torch.as_tensor(first[k]).as_subclass(torch.Tensor).to(device) for k in ("image", "label")}  # plain tensors, not MetaTensors
    else:
        data = synthetic_batches(POOL_BATCHES, args.batch_size, args.size, codebook, device, args.seed)
        sample = data[0]
    try:
        ema, train_result = train(args, device, network, codec, codebook, data)
        segmentation = segment(args, device, ema, codec, codebook, sample["image"].float())
        synthesis = synthesise_batch(args, device, ema, codec, codebook, sample["label"])
    except torch.cuda.OutOfMemoryError:
        fail(f"{SCRIPT}: out of GPU memory at batch {args.batch_size} and {args.size} px; lower --batch-size")
    if not all(math.isfinite(train_result[k]) for k in ("loss_first", "loss_last")):
        fail(f"{SCRIPT}: the training loss is not finite ({train_result['loss_first']} -> {train_result['loss_last']})")
    phase_peaks = [r["peak_memory_gib"] for r in (train_result, *segmentation.values(), *synthesis.values()) if r["peak_memory_gib"] is not None]
    result = {
        "setting": {
            "device": str(device), "tiny": args.tiny, "net_preset": args.net_preset, "size": args.size,
            "latent_size": vae_info.pop("latent_size"), "batch_size": args.batch_size, "steps": args.steps,
            "warmup_steps": args.warmup_steps, "autocast": args.autocast, "channels_last": args.channels_last,
            "compile": args.compile, "compiled": "training network only (the EMA that segments and synthesises runs uncompiled)" if args.compile else None,
            "cudnn_benchmark": device.type == "cuda", "threads": torch.get_num_threads(), "data": args.dataset_dir or "synthetic", "vae": vae_info,
            "learning_rate": LEARNING_RATE, "beta": BETA, "x_weight": X_WEIGHT, "seed": args.seed,
            "segmentation_steps": list(SEGMENTATION_STEPS), "synthesis_steps": SYNTHESIS_STEPS,
        },
        "build_s": build_s,
        "train": train_result,
        "segmentation": segmentation,
        "synthesis": synthesis,
        "peak_memory_gib": max(phase_peaks) if phase_peaks else None,
        "peak_host_memory_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB,
        "model_parameters": count_parameters(network),
        "vae_parameters": count_parameters(codec.vae),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "versions": versions(),
        "machine": machine_info(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command_line(),
    }
    result["total_s"] = time.perf_counter() - started
    text = json.dumps(result, indent=2, default=str)
    atomic_write(args.output, text + "\n")
    print(format_table(result))
    print(text)
    print(f"results: {args.output}")
    return result


if __name__ == "__main__":
    main()
