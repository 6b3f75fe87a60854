"""Mixed precision: the autocast settings, and that trainer and classifier run the network in them."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

import medsymmflow.precision as precision
from medsymmflow.codes import ClassCodebook
from medsymmflow.engines import SymmFlowTrainer
from medsymmflow.flow import SymmFlowLoss
from medsymmflow.inferers import SymmFlowClassifier, SymmFlowSegmenter
from medsymmflow.networks import build_network
from medsymmflow.precision import autocast_context, resolve_autocast


def test_resolve_autocast_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_autocast(None) is None and resolve_autocast("none") is None and resolve_autocast(" None ") is None
    assert resolve_autocast("bfloat16") is torch.bfloat16 and resolve_autocast(torch.float16) is torch.float16
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert resolve_autocast("auto", "cpu") is torch.bfloat16
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert resolve_autocast("auto", "cpu") is None  # emulated bf16 is slower than float32: stay in float32
    assert resolve_autocast("auto", "meta") is None
    with pytest.raises(ValueError, match="unknown autocast setting 'bf16'; choose one of none, auto, bfloat16, float16"):
        resolve_autocast("bf16")
    with pytest.raises(ValueError, match="torch.bfloat16 or torch.float16"):
        resolve_autocast(torch.float32)


def test_auto_picks_bf16_only_on_gpus_that_run_it_natively(monkeypatch: pytest.MonkeyPatch) -> None:
    capability = {0: (9, 0), 1: (7, 0)}  # an H100 / H200, a V100
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability[device])
    # torch also says yes where bf16 is only emulated, which is slower than float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.version, "hip", None)
    assert resolve_autocast("auto", "cuda") is torch.bfloat16 and resolve_autocast("AUTO", torch.device("cuda", 0)) is torch.bfloat16
    assert resolve_autocast("auto", "cuda:1") is None  # emulated bf16 is slower than float32: stay in float32
    assert precision.cuda_has_native_bf16("cuda:0") and not precision.cuda_has_native_bf16(torch.device("cuda", 1))
    assert resolve_autocast("bfloat16", "cuda:1") is torch.bfloat16  # forced: the user's choice wins
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert resolve_autocast("auto", "cuda") is None  # "cuda" means the current device
    monkeypatch.setattr(torch.version, "hip", "6.2")
    assert resolve_autocast("auto", "cuda:1") is torch.bfloat16  # ROCm GPUs run bf16 natively
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_autocast("auto", "cuda") is None and resolve_autocast(None, "cuda") is None


def test_cpu_flag_detection_reads_cpuinfo(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import builtins

    real_open = builtins.open
    for flags, expected in (("fpu avx2 avx512f", False), ("fpu avx512_bf16 avx2", True), ("amx_bf16 amx_tile", True)):
        info = tmp_path / f"cpuinfo_{expected}_{len(flags)}"
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(precision.platform, "system", lambda: "Linux")
        monkeypatch.setattr(builtins, "open", lambda p, *a, _i=info, **k: real_open(_i if p == "/proc/cpuinfo" else p, *a, **k))
        precision.cpu_has_native_bf16.cache_clear()
        assert precision.cpu_has_native_bf16() is expected, flags
    monkeypatch.setattr(builtins, "open", real_open)
    precision.cpu_has_native_bf16.cache_clear()


def test_autocast_context_is_a_no_op_for_float32() -> None:
    a = torch.randn(4, 4)
    with autocast_context("cpu", None):
        assert (a @ a).dtype == torch.float32
    with autocast_context("cpu", torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16


def _dtype_probe(net: torch.nn.Module) -> list[torch.dtype]:
    """Record the dtype of the network's first convolution output on every call."""
    seen: list[torch.dtype] = []
    first_conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    return seen


def test_classifier_runs_the_network_in_bf16_and_decides_in_float32() -> None:
    torch.manual_seed(0)
    net = build_network("tiny", 1, 3).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    seen = _dtype_probe(net)
    images = torch.rand(6, 1, 28, 28) * 2 - 1
    codebook = ClassCodebook.onehot(3)
    with torch.no_grad():
        full = SymmFlowClassifier(codebook)(images, net, torch.Generator().manual_seed(1))
        half = SymmFlowClassifier(codebook, autocast="bfloat16")(images, net, torch.Generator().manual_seed(1))
    assert seen == [torch.float32, torch.bfloat16]
    assert half.code.dtype == half.distances.dtype == torch.float32
    assert not torch.equal(half.code, full.code)  # it really ran in lower precision ...
    assert torch.allclose(half.code, full.code, atol=0.05)  # ... and stays close to float32
    with pytest.raises(ValueError, match="unknown autocast setting"):
        SymmFlowClassifier(codebook, autocast="half")
    with pytest.raises(ValueError, match="unknown autocast setting"):
        SymmFlowSegmenter(codebook, autocast="fp8")


def test_trainer_autocast_setting_reaches_the_forward_pass() -> None:
    images = torch.rand(8, 1, 28, 28) * 2 - 1
    loader = DataLoader([{"image": images[i], "label": torch.tensor([i % 2])} for i in range(8)], batch_size=4)
    net = build_network("tiny", 1, 2)
    seen = _dtype_probe(net)

    def trainer(setting: str | None) -> SymmFlowTrainer:
        return SymmFlowTrainer(
            device="cpu", max_epochs=1, train_data_loader=loader, network=net,
            optimizer=torch.optim.SGD(net.parameters(), lr=0.0), codebook=ClassCodebook.onehot(2),
            loss_function=SymmFlowLoss(), autocast_dtype=setting,
        )

    batch = next(iter(loader))
    for setting, expected in ((None, torch.float32), ("bfloat16", torch.bfloat16)):
        engine = trainer(setting)
        out = engine._iteration(engine, batch)
        assert seen[-1] == expected and out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    with pytest.raises(ValueError, match="unknown autocast setting 'fast'"):
        trainer("fast")


def test_float16_training_scales_the_loss_so_small_gradients_survive() -> None:
    # a loss 1e-5 times the flow loss: its float16 output gradients (~1e-9 per pixel) underflow to zero unless scaled
    images = torch.rand(4, 1, 28, 28) * 2 - 1
    batch = {"image": images, "label": torch.tensor([0, 1, 0, 1])}

    def changed(setting: str | None) -> tuple[bool, bool]:
        torch.manual_seed(0)
        net = build_network("tiny", 1, 2)
        before = [p.detach().clone() for p in net.parameters()]
        flow = SymmFlowLoss()
        engine = SymmFlowTrainer(
            device="cpu", max_epochs=1, train_data_loader=[batch], network=net,
            optimizer=torch.optim.SGD(net.parameters(), lr=1e6), codebook=ClassCodebook.onehot(2),
            loss_function=lambda *a: 1e-5 * flow(*a), autocast_dtype=setting,
        )
        engine._iteration(engine, batch)
        return engine.grad_scaler.is_enabled(), any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))

    assert changed("float16") == (True, True)
    assert changed("bfloat16") == (False, True)  # bf16 keeps float32's exponent range: no scaler needed
    assert changed(None) == (False, True)


def test_resnet_baseline_predicts_in_bf16_close_to_float32() -> None:
    from medsymmflow.baselines import build_resnet18, predict_probabilities

    torch.manual_seed(0)
    model = build_resnet18(1, 3)
    images = torch.rand(5, 1, 28, 28) * 2 - 1
    full = predict_probabilities(model, images)
    half = predict_probabilities(model, images, autocast_dtype=torch.bfloat16)
    assert half.dtype == torch.float64 and torch.allclose(half.sum(1), torch.ones(5, dtype=torch.float64))
    assert not torch.equal(half, full) and torch.allclose(half, full, atol=0.05)
