"""prepare_network: channels-last weights and inputs, a compiled forward, and checkpoints that keep the plain keys."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine
from torch import nn

from medsymmflow.engines import AtomicCheckpointSaver
from medsymmflow.io import load_checkpoint
from medsymmflow.networks import SymmFlowMLP, build_network, create_ema, prepare_network, uses_channels_last
from medsymmflow.settings import check_settings

REPO = Path(__file__).resolve().parents[1]
CL = torch.channels_last


def _tiny(seed: int = 0) -> nn.Module:
    """The tiny preset with random weights everywhere (MONAI zero-initialises its output convolutions)."""
    torch.manual_seed(seed)
    net = build_network("tiny", 3, 3)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.2 * torch.randn_like(p))
    return net


def _inputs(batch: int = 2, size: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, 3, size, size, generator=g), torch.randn(batch, 3, size, size, generator=g), torch.rand(batch, generator=g)


def _conv_inputs(net: nn.Module) -> list[bool]:
    """Record, on every call, whether the first convolution's input is in channels-last format."""
    seen: list[bool] = []
    conv = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    conv.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous(memory_format=CL)))
    return seen


def test_channels_last_converts_weights_and_inputs_and_keeps_the_outputs() -> None:
    plain = _tiny()
    net = copy.deepcopy(plain)
    assert prepare_network(net, "cpu", channels_last=True) is net and uses_channels_last(net) and not uses_channels_last(plain)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=CL) for m in convs)
    seen = _conv_inputs(net)
    x, y, t = _inputs()
    with torch.no_grad():
        expected, got = plain(x, y, t), net(x, y, t)
    assert seen == [True]  # the NCHW inputs reached the convolution as NHWC: no layout round trip per layer
    for a, b in zip(expected, got):
        assert torch.allclose(a, b, atol=1e-5)
    assert list(net.state_dict()) == list(plain.state_dict())
    loaded = _tiny(seed=3)
    loaded.load_state_dict(net.state_dict())  # NHWC weights load into a plain (NCHW) network: only strides differ
    with torch.no_grad():
        for a, b in zip(loaded(x, y, t), expected):
            assert torch.allclose(a, b, atol=1e-5)
    prepare_network(net, "cpu", channels_last=True)  # preparing twice adds no second hook
    assert len(net._forward_pre_hooks) == 1
    ema = create_ema(net)  # the EMA copy keeps the layout and the input conversion
    seen_ema = _conv_inputs(ema.module)
    with torch.no_grad():
        ema(x, y, t)
    assert uses_channels_last(ema.module) and seen_ema == [True]


def test_a_compiled_network_trains_and_saves_the_plain_networks_keys(tmp_path: Path) -> None:
    # a real torch.compile (TorchDynamo, eager backend) of a small MLP: about two seconds on CPU, where the tiny
    # UNet takes tens of seconds to trace and the default inductor backend minutes to build its C++ kernels
    torch.manual_seed(0)
    plain = SymmFlowMLP(4, 3, hidden=16, depth=2)
    net = prepare_network(copy.deepcopy(plain), "cpu", compile=True, compile_options={"backend": "eager"})
    assert net._compiled_call_impl is not None
    x, y, t = torch.randn(5, 4), torch.randn(5, 3), torch.rand(5)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    ema = create_ema(net, decay=0.5)
    assert ema.module._compiled_call_impl is None  # the copy runs uncompiled (nn.Module.__getstate__ drops it)

    def step(engine: Engine, batch: object) -> None:
        optimizer.zero_grad()
        v_x, v_y = net(x, y, t)
        (v_x.square().mean() + v_y.square().mean()).backward()
        optimizer.step()
        ema.update_parameters(net)

    engine = Engine(step)
    AtomicCheckpointSaver(str(tmp_path), {"network": net, "ema": ema}, save_final=True, final_filename="last.pt").attach(engine)
    engine.run(range(2), max_epochs=1)
    saved = load_checkpoint(tmp_path / "last.pt")
    assert list(saved["network"]) == list(plain.state_dict())  # no "_orig_mod." prefix
    assert not any("_orig_mod" in k for k in saved["ema"])
    # what wrapping would have saved instead: the reason prepare_network compiles the module's call in place
    assert all(k.startswith("_orig_mod.") for k in torch.compile(copy.deepcopy(plain), backend="eager").state_dict())

    loaded = SymmFlowMLP(4, 3, hidden=16, depth=2)
    loaded.load_state_dict(saved["network"])  # strict: the keys of a plain network
    assert not torch.equal(loaded.state_dict()["net.0.weight"], plain.state_dict()["net.0.weight"])  # the steps changed them
    with torch.no_grad():
        for a, b in zip(loaded(x, y, t), net(x, y, t)):
            assert torch.allclose(a, b, atol=1e-6)
    restored = create_ema(SymmFlowMLP(4, 3, hidden=16, depth=2))
    restored.load_state_dict(saved["ema"])
    assert torch.equal(restored.n_averaged, ema.n_averaged)


def test_the_training_settings_prepare_the_network_the_trainer_and_the_ema_use() -> None:
    # configs/segmentation_train.json holds the same pieces (tests/test_bundle_configs.py)
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    cwd = os.getcwd()
    os.chdir(REPO)  # the bundles' %configs/... macros are relative to the repository root
    try:
        parser.read_config("bundles/pneumoniamnist/train.json")
        assert parser["training"]["channels_last"] is False and parser["training"]["compile"] is False
        parser.update({"device": "cpu", "net_preset": "tiny", "training#channels_last": True, "training#compile": "true"})
        parser.parse()
        network = parser.get_parsed_content("train#network")
        common = parser.get_parsed_content("common#network")
        ema = parser.get_parsed_content("train#ema")
    finally:
        os.chdir(cwd)
    # the trainer's network is the one checkpoints save (train#save_dict#network), prepared in place
    assert network is common and parser.get("train#save_dict#network").replace("::", "#") == "@common#network"
    assert uses_channels_last(network) and network._compiled_call_impl is not None
    assert uses_channels_last(ema.module) and ema.module._compiled_call_impl is None
    assert not any(k.startswith("_orig_mod") for k in common.state_dict())


def test_the_training_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="training#channels_last must be true or false, got 'fast'; training#compile must be"):
        check_settings({"training": {"channels_last": "fast", "compile": 2}})
    check_settings({"training": {"channels_last": "true", "compile": False}})
    with pytest.raises(TypeError, match="prepare_network takes a torch.nn.Module"):
        prepare_network(lambda x: x)  # type: ignore[arg-type]
