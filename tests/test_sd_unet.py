"""Tests for medsymmflow.networks.sd_unet (SymmFlowSDUNet on diffusers' UNet2DConditionModel) and its presets."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from torch.utils.data import DataLoader

from medsymmflow import ClassCodebook
from medsymmflow.engines import SymmFlowTrainer
from medsymmflow.flow import SymmFlowLoss
from medsymmflow.networks import (
    NET_PRESETS,
    SD_TIME_SCALE,
    SymmFlowSDUNet,
    SymmFlowUNet,
    UNetLoadError,
    build_network,
    count_parameters,
    create_ema,
)

REPO = Path(__file__).resolve().parents[1]
# Stable Diffusion 2.1-base's unet/config.json (the values that shape the network)
SD21_BASE_CONFIG = {
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "attention_head_dim": (5, 10, 20, 20),
    "cross_attention_dim": 1024,
    "use_linear_projection": True,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "sample_size": 64,
    "upcast_attention": False,
}


def tiny_sd_unet(in_channels: int = 4, cross_attention_dim: int = 8) -> torch.nn.Module:
    """A plain diffusers UNet2DConditionModel in the sd21_tiny layout with 4 channels: a stand-in for SD's weights."""
    from diffusers import UNet2DConditionModel

    kwargs = {k: v for k, v in NET_PRESETS["sd21_tiny"].items() if k not in ("network", "context_tokens")}
    torch.manual_seed(1)
    unet = UNet2DConditionModel(
        in_channels=in_channels, out_channels=in_channels, use_linear_projection=True,
        **{**kwargs, "cross_attention_dim": cross_attention_dim},
    )
    with torch.no_grad():  # diffusers starts some layers at zero; random weights make every path count
        for p in unet.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return unet.eval()


@pytest.fixture(scope="module")
def pretrained_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pipeline-style folder (``<dir>/unet/``) written by save_pretrained."""
    folder = tmp_path_factory.mktemp("sd") / "pipeline"
    tiny_sd_unet().save_pretrained(folder / "unet")
    return folder


# ---------------------------------------------------------------- forward
def test_forward_shapes_and_time_handling() -> None:
    net = build_network("sd21_tiny", 3, 5).eval()
    assert isinstance(net, SymmFlowSDUNet) and net.unet.config.in_channels == net.unet.config.out_channels == 8
    x, y = torch.randn(2, 3, 12, 12), torch.randn(2, 5, 12, 12)
    with torch.no_grad():
        v_x, v_y = net(x, y, torch.tensor([0.25, 0.25]))
        assert v_x.shape == x.shape and v_y.shape == y.shape
        torch.testing.assert_close(net(x, y, 0.25)[0], v_x)  # a scalar is broadcast over the batch
        torch.testing.assert_close(net(x, y, torch.tensor([0.25]))[1], v_y)
        assert not torch.allclose(net(x, y, 0.9)[0], v_x)  # t reaches the network
        # an odd latent size runs too (diffusers upsamples to the skip's size)
        assert net(x[:, :, :9, :9], y[:, :, :9, :9], 0.5)[0].shape == (2, 3, 9, 9)
    with pytest.raises(ValueError, match="t must be a scalar or have shape"):
        net(x, y, torch.zeros(3))
    with pytest.raises(ValueError, match="y_t must have 5 channels"):
        net(x, torch.randn(2, 4, 12, 12), 0.5)
    with pytest.raises(ValueError, match="spatial sizes differ"):
        net(x, y[:, :, :8, :8], 0.5)


def test_time_scale_multiplies_t_and_defaults_to_raw_t_for_random_weights() -> None:
    raw = build_network("sd21_tiny", 4, 4).eval()
    assert raw.time_scale == 1.0  # the authors' released code: t in [0, 1] as the timestep
    scaled = build_network("sd21_tiny", 4, 4, time_scale=4.0).eval()
    scaled.load_state_dict(raw.state_dict() | {"_extra_state": {"time_scale": 4.0}})
    x, y = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(scaled(x, y, 0.2)[0], raw(x, y, 0.8)[0])
    with pytest.raises(ValueError, match="time_scale"):
        build_network("sd21_tiny", 4, 4, time_scale=0.0)


def test_state_dict_carries_the_time_scale_and_a_fixed_context(tmp_path: Path) -> None:
    context = torch.randn(1, 4, 8)
    torch.save(context, tmp_path / "empty_prompt.pt")
    fixed = build_network("sd21_tiny", 4, 4, context=str(tmp_path / "empty_prompt.pt"), time_scale=SD_TIME_SCALE).eval()
    assert "context" not in dict(fixed.named_parameters()) and torch.equal(fixed.context, context)
    # what an evaluation does: the plain preset (learned context, raw t) loads the checkpoint's EMA
    torch.save(create_ema(fixed).state_dict(), tmp_path / "ema.pt")
    ema = create_ema(build_network("sd21_tiny", 4, 4))
    ema.load_state_dict(torch.load(tmp_path / "ema.pt", weights_only=True))
    rebuilt = ema.module.eval()
    assert rebuilt.time_scale == SD_TIME_SCALE and torch.equal(rebuilt.context, context)
    x, y = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x, y, 0.3), fixed(x, y, 0.3))
    with pytest.raises(ValueError, match="context has 5 tokens of width 8.*context_tokens=4"):
        build_network("sd21_tiny", 4, 4, context=torch.randn(5, 8))
    with pytest.raises(ValueError, match="context file .*missing.pt cannot be read"):
        build_network("sd21_tiny", 4, 4, context=str(tmp_path / "missing.pt"))


# ---------------------------------------------------------------- pretrained initialisation
def test_doubled_network_on_x_x_equals_the_pretrained_unet_on_x(pretrained_folder: Path) -> None:
    original = tiny_sd_unet()
    net = build_network("sd21_tiny", 4, 4, pretrained=str(pretrained_folder)).eval()
    assert net.time_scale == SD_TIME_SCALE  # pretrained weights: SD's 0-999 timestep range
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([0.1, 0.7])
    with torch.no_grad():
        v_x, v_y = net(x, x, t)
        reference = original(x, t * SD_TIME_SCALE, encoder_hidden_states=net.context.expand(2, -1, -1)).sample
        torch.testing.assert_close(v_x, reference, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(v_y, reference, rtol=1e-4, atol=1e-5)
        # the rule is conv_in = cat([W, W]) / 2: an input of [x, 0] is the original on x / 2, not on x
        assert not torch.allclose(net(x, torch.zeros_like(x), t)[0], reference, atol=1e-3)
    # a folder holding the UNet itself and a loaded module give the same weights
    from_unet_folder = build_network("sd21_tiny", 4, 4, pretrained=str(pretrained_folder / "unet"))
    from_module = build_network("sd21_tiny", 4, 4).init_from_pretrained(original)
    for other in (from_unet_folder, from_module):
        assert all(torch.equal(a, b) for a, b in zip(net.unet.state_dict().values(), other.unet.state_dict().values()))


def test_pretrained_sources_that_cannot_be_loaded_fail_with_one_clear_line(
    tmp_path: Path, pretrained_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fails(source: str, match: str, **overrides: object) -> str:
        with pytest.raises(UNetLoadError, match=match) as info:
            build_network("sd21_tiny", 4, 4, pretrained=source, **overrides)
        message = str(info.value)
        assert "\n" not in message
        return message

    message = fails(str(tmp_path / "nowhere"), "the pretrained UNet folder .*nowhere does not exist")
    assert "hf download stabilityai/stable-diffusion-2-1-base --include 'unet/*'" in message
    (tmp_path / "empty").mkdir()
    fails(str(tmp_path / "empty"), "is not a diffusers UNet: neither .*config.json nor .*unet/config.json exists")
    weightless = tmp_path / "weightless"
    weightless.mkdir()
    (weightless / "config.json").write_text((pretrained_folder / "unet" / "config.json").read_text())
    fails(str(weightless), "cannot load a diffusers UNet2DConditionModel from the local folder .*weightless: ")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fails("nobody-here/no-such-sd-model", "from the Hugging Face name 'nobody-here/no-such-sd-model'.*offline: HF_HUB_OFFLINE")
    # another architecture or channel count
    other = tmp_path / "other"
    tiny_sd_unet(cross_attention_dim=16).save_pretrained(other)
    fails(str(other), "has another architecture than this network .*of another shape")
    with pytest.raises(UNetLoadError, match="needs x_channels = y_channels = 4, but this network has 3 and 5"):
        build_network("sd21_tiny", 3, 5, pretrained=str(pretrained_folder))


# ---------------------------------------------------------------- presets
def test_presets_dispatch_to_their_class_and_check_overrides() -> None:
    assert isinstance(build_network("sd21_tiny", 4, 4), SymmFlowSDUNet)
    assert isinstance(build_network("tiny", 4, 4), SymmFlowUNet)
    assert 1_000 < count_parameters(build_network("sd21_tiny", 4, 4)) < 100_000
    wide = build_network("sd21_tiny", 4, 4, block_out_channels=(8, 8), layers_per_block=2)
    assert tuple(wide.unet.config.block_out_channels) == (8, 8) and wide.unet.config.layers_per_block == 2
    with pytest.raises(TypeError, match=r"unknown SymmFlowSDUNet argument\(s\) \['channels'\] for the preset 'sd21_tiny'; "
                                        r"valid overrides: .*block_out_channels"):
        build_network("sd21_tiny", 4, 4, channels=(8, 16))
    with pytest.raises(TypeError, match=r"unknown SymmFlowUNet argument\(s\) \['block_out_channels'\] for the preset 'tiny'"):
        build_network("tiny", 4, 4, block_out_channels=(8, 16))
    with pytest.raises(ValueError, match="'paper' \\(SymmFlowUNet\\) cannot start from pretrained weights.*: sd21, sd21_tiny"):
        build_network("paper", 4, 4, pretrained="stabilityai/stable-diffusion-2-1-base")
    with pytest.raises(ValueError, match="attention_head_dim \\(heads\\) 3 must divide the width 8 of level 0"):
        build_network("sd21_tiny", 4, 4, attention_head_dim=3)


def test_sd21_preset_is_stable_diffusion_2_1s_unet() -> None:
    defaults = {k: p.default for k, p in inspect.signature(SymmFlowSDUNet.__init__).parameters.items()}
    config = {**defaults, **{k: v for k, v in NET_PRESETS["sd21"].items() if k != "network"}}
    assert {k: config[k] for k in SD21_BASE_CONFIG} == SD21_BASE_CONFIG
    # built on the meta device: every module and shape, no memory, no forward pass
    with torch.device("meta"):
        net = build_network("sd21", 4, 4)
    assert net.unet.config.in_channels == net.unet.config.out_channels == 8
    assert {k: tuple(v) if isinstance(v, list) else v for k, v in net.unet.config.items() if k in SD21_BASE_CONFIG} == SD21_BASE_CONFIG
    # SD 2.1's UNet has 865,910,724 parameters with 4 channels; 8 add 320 * 4 * 9 to conv_in, 4 * 320 * 9 + 4 to conv_out
    assert count_parameters(net.unet) == 865_910_724 + 2 * 320 * 4 * 9 + 4
    assert net.context.shape == (1, 77, 1024)


def test_sd21_monai_preset_has_sd21s_widths_and_depth() -> None:
    preset = NET_PRESETS["sd21_monai"]
    assert preset["network"] == "monai"
    assert preset["channels"] == SD21_BASE_CONFIG["block_out_channels"] and preset["num_res_blocks"] == 2
    # self-attention exactly where SD has cross-attention, 64-channel heads like SD's 5/10/20 heads
    assert preset["attention_levels"] == tuple(b.startswith("CrossAttn") for b in SD21_BASE_CONFIG["down_block_types"])
    assert all(w // preset["num_head_channels"] == h for w, h in zip(preset["channels"], SD21_BASE_CONFIG["attention_head_dim"]))
    with torch.device("meta"):
        net = build_network("sd21_monai", 4, 4)
    assert isinstance(net, SymmFlowUNet) and tuple(net.unet.block_out_channels) == (320, 640, 1280, 1280)


def test_bundles_build_the_sd_network_through_net_preset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # the bundle's %configs/... macros are relative to the repository root
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / "celebamask_hq" / "train.json"))
    parser["net_preset"], parser["device"] = "sd21_tiny", "cpu"
    net = parser.get_parsed_content("common#network")
    assert isinstance(net, SymmFlowSDUNet) and (net.x_channels, net.y_channels) == (3, 3)
    assert json.loads(json.dumps(parser.get_parsed_content("common#run_info").state_dict()))["net_preset"] == "sd21_tiny"


# ---------------------------------------------------------------- training
def test_one_trainer_iteration_trains_the_unet_and_the_learned_context() -> None:
    torch.manual_seed(0)
    net = build_network("sd21_tiny", 3, 3)
    items = [{"image": torch.rand(3, 16, 16) * 2 - 1, "label": torch.tensor([i % 5])} for i in range(4)]
    trainer = SymmFlowTrainer(
        device="cpu", max_epochs=1, train_data_loader=DataLoader(items, batch_size=4), network=net,
        optimizer=torch.optim.AdamW(net.parameters(), lr=1e-3), codebook=ClassCodebook.rgb(5), beta=4.0,
        loss_function=SymmFlowLoss(x_weight=0.7),
    )
    before = {k: v.detach().clone() for k, v in net.state_dict().items() if isinstance(v, torch.Tensor)}
    trainer.run()
    assert trainer.state.iteration == 1 and torch.isfinite(trainer.state.output["loss"])
    after = net.state_dict()
    assert not torch.equal(before["context"], after["context"])
    assert not torch.equal(before["unet.conv_in.weight"], after["unet.conv_in.weight"])
