"""Tests for medsymmflow.networks: SymmFlowUNet, presets, EMA, SymmFlowMLP."""

from __future__ import annotations

import copy
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medsymmflow.networks import (
    NET_PRESETS,
    SymmFlowMLP,
    SymmFlowUNet,
    build_network,
    count_parameters,
    create_ema,
    is_decoupled,
    predicts_data,
)
from medsymmflow.networks.unet import DATA_PREDICTION_MIN_T


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter random values: MONAI zero-initialises the output convolutions, which
    would make every output exactly zero and hide wiring mistakes."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model


def _inputs(batch: int, cx: int, cy: int, size: tuple[int, ...], seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, cx, *size, generator=gen), torch.randn(batch, cy, *size, generator=gen)


def _padded_reference(h: torch.Tensor, multiple: int, run: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Pad ``h`` by hand (replicate, centred, odd pixel after) to a multiple of ``multiple``, ``run`` it, crop back."""
    (height, width), (ph, pw) = h.shape[2:], ((-h.shape[2]) % multiple, (-h.shape[3]) % multiple)
    top, left = ph // 2, pw // 2
    out = run(F.pad(h, (left, pw - left, top, ph - top), mode="replicate"))
    return out[:, :, top : top + height, left : left + width]


# ---------------------------------------------------------------- SymmFlowUNet: shapes and padding


@pytest.mark.parametrize("cx, cy", [(1, 3), (3, 3)])
@pytest.mark.parametrize("size", [28, 32])
@pytest.mark.parametrize("channels", [(8, 16), (8, 16, 16, 16)])
def test_unet_output_shapes(cx: int, cy: int, size: int, channels: tuple[int, ...]) -> None:
    model = build_network("tiny", cx, cy, channels=channels)
    x, y = _inputs(2, cx, cy, (size, size))
    v_x, v_y = model(x, y, torch.rand(2))
    assert v_x.shape == x.shape and v_y.shape == y.shape


def test_plain_monai_unet_fails_on_28px_which_is_why_we_pad() -> None:
    model = build_network("tiny", 1, 3, channels=(8, 16, 16, 16))
    x, y = _inputs(1, 1, 3, (28, 28))
    with pytest.raises(RuntimeError):
        model.unet(torch.cat([x, y], 1), timesteps=torch.rand(1))


@pytest.mark.parametrize("size", [(28, 28), (27, 30), (33, 25)])
def test_padding_is_centred_replicate_and_cropped_exactly(size: tuple[int, int]) -> None:
    model = _randomize(build_network("tiny", 1, 3, channels=(8, 16, 16, 16))).eval()
    x, y = _inputs(2, 1, 3, size)
    t = torch.tensor([0.2, 0.9])
    v_x, v_y = model(x, y, t)
    assert v_x.shape == x.shape and v_y.shape == y.shape

    # reference: pad by hand to the next multiple of 8, centred (odd pixel after), crop the centre
    ref = _padded_reference(torch.cat([x, y], 1), 8, lambda h: model.unet(h, timesteps=t))
    torch.testing.assert_close(torch.cat([v_x, v_y], 1), ref)


def test_zero_padding_mode_differs_from_replicate() -> None:
    model = _randomize(build_network("tiny", 1, 1, channels=(8, 16, 16)))
    zero = build_network("tiny", 1, 1, channels=(8, 16, 16), padding_mode="constant")
    zero.load_state_dict(model.state_dict())
    x, y = _inputs(1, 1, 1, (30, 30))
    assert not torch.allclose(model(x, y, 0.5)[0], zero(x, y, 0.5)[0])
    x, y = _inputs(1, 1, 1, (32, 32))  # no padding needed: both modes agree
    torch.testing.assert_close(model(x, y, 0.5)[0], zero(x, y, 0.5)[0])


def test_unet_3d() -> None:
    model = _randomize(build_network("tiny", 1, 2, spatial_dims=3))
    x, y = _inputs(1, 1, 2, (5, 6, 7))
    v_x, v_y = model(x, y, 0.5)
    assert v_x.shape == x.shape and v_y.shape == y.shape


@pytest.mark.parametrize("size", [(28, 28), (27, 30)])
def test_patch_stem_folds_patches_into_channels_around_the_unet(size: tuple[int, int]) -> None:
    model = _randomize(build_network("tiny", 1, 3, patch_size=2)).eval()
    assert model.unet.in_channels == model.unet.out_channels == 16 and model.size_multiple == 4
    x, y = _inputs(2, 1, 3, size)
    t = torch.tensor([0.2, 0.9])
    v_x, v_y = model(x, y, t)
    assert v_x.shape == x.shape and v_y.shape == y.shape

    # reference: pad to a multiple of 4 as usual, then torch's pixel (un)shuffle around the UNet
    ref = _padded_reference(
        torch.cat([x, y], 1), 4, lambda h: F.pixel_shuffle(model.unet(F.pixel_unshuffle(h, 2), timesteps=t), 2)
    )
    torch.testing.assert_close(torch.cat([v_x, v_y], 1), ref)


def test_patch_stem_3d_orders_channels_like_pixel_unshuffle() -> None:
    model = _randomize(build_network("tiny", 1, 2, spatial_dims=3, patch_size=2))
    x, y = _inputs(1, 1, 2, (4, 6, 7))
    v_x, v_y = model(x, y, 0.5)
    assert v_x.shape == x.shape and v_y.shape == y.shape
    x, y = _inputs(1, 1, 2, (4, 8, 8))  # a multiple of 4: no size padding around the probe

    class Probe(nn.Module):
        """Stands in for the UNet: records its input and returns it unchanged."""

        def forward(self, h: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
            self.seen = h
            return h

    model.unet = Probe()
    v_x, v_y = model(x, y, 0.5)
    torch.testing.assert_close(torch.cat([v_x, v_y], 1), torch.cat([x, y], 1))  # exact round trip
    # folded channel c * 8 + 4 i + 2 j + k holds voxel offset (i, j, k) of each 2 x 2 x 2 patch
    folded = model.unet.seen
    assert folded.shape == (1, 24, 2, 4, 4)
    torch.testing.assert_close(folded[0, 8 * 1 + 4 * 1 + 2 * 0 + 1], y[0, 0, 1::2, 0::2, 1::2])


# ---------------------------------------------------------------- SymmFlowUNet: time handling


def test_scalar_t_equals_batch_t() -> None:
    model = _randomize(build_network("tiny", 1, 3)).eval()
    x, y = _inputs(3, 1, 3, (16, 16))
    ref = model(x, y, torch.full((3,), 0.3))
    for t in (0.3, torch.tensor(0.3), torch.tensor([0.3])):
        for a, b in zip(model(x, y, t), ref):
            torch.testing.assert_close(a, b)
    # and t actually matters
    assert not torch.allclose(model(x, y, 0.9)[0], ref[0])


def test_per_sample_t_is_per_sample() -> None:
    model = _randomize(build_network("tiny", 1, 3)).eval()
    x, y = _inputs(2, 1, 3, (16, 16))
    t = torch.tensor([0.1, 0.8])
    v_x, _ = model(x, y, t)
    for i in range(2):
        torch.testing.assert_close(v_x[i : i + 1], model(x[i : i + 1], y[i : i + 1], t[i])[0])


def test_time_scale_multiplies_t() -> None:
    base = _randomize(build_network("tiny", 1, 1))
    scaled = build_network("tiny", 1, 1, time_scale=1000.0)
    scaled.load_state_dict(base.state_dict())
    x, y = _inputs(2, 1, 1, (8, 8))
    torch.testing.assert_close(scaled(x, y, torch.tensor([0.25, 0.5]))[1], base(x, y, torch.tensor([250.0, 500.0]))[1])


# ---------------------------------------------------------------- SymmFlowUNet: errors


@pytest.mark.parametrize(
    "x_shape, y_shape, t, match",
    [
        ((2, 3, 8, 8), (2, 3, 8, 8), 0.5, "x_t must have 1 channels"),
        ((2, 1, 8, 8), (2, 1, 8, 8), 0.5, "y_t must have 3 channels"),
        ((2, 1, 8), (2, 3, 8), 0.5, "spatial_dims=2"),
        ((2, 1, 8, 8), (3, 3, 8, 8), 0.5, "batch sizes differ"),
        ((2, 1, 8, 8), (2, 3, 8, 6), 0.5, "spatial sizes differ"),
        ((2, 1, 8, 8), (2, 3, 8, 8), torch.rand(3), r"t must be a scalar or have shape \(2,\)"),
    ],
)
def test_unet_input_errors(x_shape, y_shape, t, match) -> None:
    model = build_network("tiny", 1, 3)
    with pytest.raises(ValueError, match=match):
        model(torch.zeros(x_shape), torch.zeros(y_shape), t)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"channels": (8, 12), "norm_num_groups": 8}, r"divisible by norm_num_groups=8; \[12\]"),
        ({"channels": (8, 16), "attention_levels": (True,)}, "attention_levels needs one entry per level"),
        ({"channels": (8, 24), "num_head_channels": 16}, "middle block has width 24"),
        ({"num_res_blocks": (1, 1, 1)}, "num_res_blocks needs one entry per level"),
        ({"dropout": 1.0}, "dropout"),
        ({"time_scale": 0.0}, "time_scale"),
        ({"padding_mode": "reflect"}, "padding_mode"),
        ({"spatial_dims": 1}, "spatial_dims"),
        ({"patch_size": 0}, "patch_size must be an integer >= 1"),
        ({"patch_size": True}, "patch_size must be an integer >= 1"),
    ],
)
def test_unet_constructor_errors(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        SymmFlowUNet(1, 3, **{"channels": (8, 16), "norm_num_groups": 4, "num_head_channels": 8, **kwargs})


def test_unet_channel_arguments_validated() -> None:
    with pytest.raises(ValueError, match="y_channels must be an integer >= 1"):
        SymmFlowUNet(1, 0, channels=(8, 16), norm_num_groups=4, num_head_channels=8)


# ---------------------------------------------------------------- SymmFlowUNet: gradients, dropout


def test_gradient_reaches_every_parameter() -> None:
    model = build_network("tiny", 1, 3, attention_levels=(False, True))
    x, y = _inputs(2, 1, 3, (12, 12))
    # at MONAI's init the zero output conv blocks every other gradient, but none may be None (DDP)
    sum(v.sum() for v in model(x, y, torch.rand(2))).backward()
    assert all(p.grad is not None for p in model.parameters())

    _randomize(model)
    model.zero_grad(set_to_none=True)
    v_x, v_y = model(x, y, torch.rand(2))
    (v_x.square().mean() + v_y.square().mean()).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert dead == []


def test_dropout_is_active_in_train_only_and_keeps_state_dict() -> None:
    plain = _randomize(build_network("tiny", 1, 1))
    drop = build_network("tiny", 1, 1, dropout=0.5)
    assert drop.state_dict().keys() == plain.state_dict().keys()
    drop.load_state_dict(plain.state_dict())
    x, y = _inputs(2, 1, 1, (8, 8))
    drop.train()
    assert not torch.allclose(drop(x, y, 0.5)[0], drop(x, y, 0.5)[0])
    drop.eval()
    torch.testing.assert_close(drop(x, y, 0.5)[0], plain.eval()(x, y, 0.5)[0])


# ---------------------------------------------------------------- presets


def test_paper_preset_matches_table_4() -> None:
    model = build_network("paper", 1, 3)
    unet = model.unet
    assert tuple(unet.block_out_channels) == (64, 128, 128, 128)
    assert tuple(unet.num_res_blocks) == (2, 2, 2, 2)
    assert tuple(unet.attention_levels) == (False, True, False, False)
    assert tuple(unet.num_head_channels) == (64, 64, 64, 64)
    assert unet.in_channels == unet.out_channels == 4
    assert model.size_multiple == 8
    # 128-wide attention with 64 head channels -> 2 heads
    assert unet.down_blocks[1].attentions[0].attn.num_heads == 2
    assert 5e6 < count_parameters(model) < 15e6


def test_cpu_and_tiny_presets_sizes() -> None:
    cpu, tiny = build_network("cpu", 1, 3), build_network("tiny", 1, 3)
    assert tuple(cpu.unet.block_out_channels) == NET_PRESETS["cpu"]["channels"] == (32, 64, 64)
    assert tuple(tiny.unet.block_out_channels) == (8, 16)
    assert 0.5e6 <= count_parameters(cpu) <= 2e6
    assert 1e3 <= count_parameters(tiny) <= 1e5
    assert cpu.size_multiple == 4  # 28 px runs unpadded
    fast = build_network("cpu_patch", 1, 3)
    # 2 x 2 patches of 4 channels: the first level runs at 14 px, 28 px stays unpadded
    assert fast.unet.in_channels == 16 and fast.size_multiple == 4
    assert 0.5e6 <= count_parameters(fast) <= 2e6
    # the width lever: the same layout 1.5x wider, about 2.2x the parameters
    wide = build_network("cpu_patch_wide", 1, 3)
    assert NET_PRESETS["cpu_patch_wide"] == {**NET_PRESETS["cpu_patch"], "channels": (96, 96)}
    assert 2.0 < count_parameters(wide) / count_parameters(fast) < 2.5 and wide.size_multiple == 4


def test_paper_segmentation_preset_is_the_paper_unet_with_coarse_attention() -> None:
    seg, paper = build_network("paper_segmentation", 3, 19), build_network("paper", 3, 19)
    assert tuple(seg.unet.block_out_channels) == tuple(paper.unet.block_out_channels) == (64, 128, 128, 128)
    assert tuple(seg.unet.attention_levels) == (False, False, True, True)  # 16 and 8 px of a 64 px image
    assert seg.size_multiple == 8
    with torch.no_grad():
        v_x, v_y = seg(torch.zeros(1, 3, 64, 64), torch.zeros(1, 19, 64, 64), torch.full((1,), 0.5))
    assert v_x.shape == (1, 3, 64, 64) and v_y.shape == (1, 19, 64, 64)


def test_data_prediction_turns_the_clean_code_into_the_velocity_it_implies() -> None:
    torch.manual_seed(0)
    net = _randomize(build_network("tiny", 3, 4, y_prediction="data")).eval()
    velocity = build_network("tiny", 3, 4).eval()
    velocity.load_state_dict(net.state_dict())  # the same weights: only the reading of the code channels differs
    x, y_t, t = torch.randn(3, 3, 16, 16), torch.randn(3, 4, 16, 16), torch.tensor([1.0, 0.5, 1e-5])
    with torch.no_grad():
        _, y_hat = velocity(x, y_t, t)  # what the shared UNet puts on the code channels
        v_x, v_y = net(x, y_t, t)
        assert torch.equal(v_x, velocity(x, y_t, t)[0])
    floor = t.clamp_min(DATA_PREDICTION_MIN_T).view(-1, 1, 1, 1)
    assert torch.allclose(v_y, (y_t - y_hat) / floor, atol=1e-5)
    # one Euler step from t = 1 to 0 lands on the predicted code: the input noise cancels exactly
    assert torch.allclose(y_t[0] - v_y[0], y_hat[0], atol=1e-5)
    assert net.predicts_data and not velocity.predicts_data
    assert predicts_data(create_ema(net)) and not predicts_data(create_ema(velocity))
    with pytest.raises(ValueError, match="y_prediction must be one of velocity, data"):
        build_network("tiny", 3, 4, y_prediction="noise")
    assert NET_PRESETS["cpu_segmentation"] == {**NET_PRESETS["cpu_patch"], "y_prediction": "data"}


def test_build_network_overrides_and_errors() -> None:
    model = build_network("tiny", 1, 1, channels=(4, 8, 8), num_head_channels=4)
    assert tuple(model.unet.block_out_channels) == (4, 8, 8)
    valid = "cpu, cpu_patch, cpu_patch_wide, cpu_segmentation, paper, paper_latent, paper_segmentation, sd21, sd21_monai, sd21_tiny, tiny"
    with pytest.raises(ValueError, match=f"unknown network preset .huge.*{valid}"):
        build_network("huge", 1, 1)
    with pytest.raises(TypeError, match="unknown SymmFlowUNet argument"):
        build_network("tiny", 1, 1, width=3)
    with pytest.raises(ValueError, match="norm_num_groups"):
        build_network("cpu", 1, 1, norm_num_groups=7)


def test_count_parameters_trainable_only() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))  # 16 + 10 parameters
    model[0].requires_grad_(False)
    assert count_parameters(model) == 26
    assert count_parameters(model, trainable_only=True) == 10


# ---------------------------------------------------------------- EMA


def test_ema_update_is_torch_ema_step() -> None:
    decay = 0.9
    model = _randomize(build_network("tiny", 1, 3))
    ema = create_ema(model, decay=decay)
    old = copy.deepcopy(model.state_dict())
    for name, p in ema.module.named_parameters():
        torch.testing.assert_close(p, old[name])

    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    new = model.state_dict()
    ema.update_parameters(model)
    for name, p in ema.module.named_parameters():
        torch.testing.assert_close(p, decay * old[name] + (1 - decay) * new[name])
        assert not p.requires_grad


def test_ema_averages_buffers() -> None:
    model = nn.BatchNorm1d(2)
    ema = create_ema(model, decay=0.5)
    model.running_mean.fill_(4.0)
    ema.update_parameters(model)
    torch.testing.assert_close(ema.module.running_mean, torch.full((2,), 2.0))


def test_ema_has_forward_contract() -> None:
    model = _randomize(build_network("tiny", 1, 3, dropout=0.1)).eval()
    ema = create_ema(model).eval()
    x, y = _inputs(2, 1, 3, (28, 28))
    v_x, v_y = ema(x, y, torch.full((2,), 0.4))
    assert v_x.shape == x.shape and v_y.shape == y.shape
    torch.testing.assert_close(v_x, model(x, y, 0.4)[0])


def test_ema_errors() -> None:
    with pytest.raises(ValueError, match="decay"):
        create_ema(nn.Linear(1, 1), decay=1.5)
    with pytest.raises(TypeError, match="nn.Module"):
        create_ema(lambda x: x)  # type: ignore[arg-type]


# ---------------------------------------------------------------- SymmFlowMLP


def test_mlp_shapes_time_and_gradients() -> None:
    model = SymmFlowMLP(2, 1, hidden=32, depth=2, time_embedding_dim=16)
    x, y = torch.randn(5, 2), torch.randn(5, 1)
    v_x, v_y = model(x, y, torch.full((5,), 0.7))
    assert v_x.shape == (5, 2) and v_y.shape == (5, 1)
    torch.testing.assert_close(model(x, y, 0.7)[0], v_x)
    assert not torch.allclose(model(x, y, 0.1)[0], v_x)
    (v_x.sum() + v_y.sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 3


@pytest.mark.parametrize(
    "x, y, t, match",
    [
        (torch.zeros(4, 3), torch.zeros(4, 1), 0.5, r"x_t must have shape \(B, 2\)"),
        (torch.zeros(4, 2), torch.zeros(4, 1, 1), 0.5, r"y_t must have shape \(B, 1\)"),
        (torch.zeros(4, 2), torch.zeros(3, 1), 0.5, "batch sizes differ"),
        (torch.zeros(4, 2), torch.zeros(4, 1), torch.zeros(2), "t must be a scalar"),
    ],
)
def test_mlp_errors(x, y, t, match) -> None:
    with pytest.raises(ValueError, match=match):
        SymmFlowMLP(2, 1)(x, y, t)
    with pytest.raises(ValueError, match="depth"):
        SymmFlowMLP(2, 1, depth=0)


def test_a_fresh_decoupled_network_is_the_coupled_one_and_learns_the_label_time() -> None:
    torch.manual_seed(0)
    coupled = build_network("tiny", 1, 3).eval()
    torch.manual_seed(0)
    net = build_network("tiny", 1, 3, decoupled_time=True).eval()
    assert is_decoupled(net) and not is_decoupled(coupled) and is_decoupled(create_ema(net))
    # the UNet's weights are drawn first, the label-time branch after them: same UNet, zero extra embedding
    assert all(torch.equal(a, net.state_dict()[k]) for k, a in coupled.state_dict().items())
    _randomize(coupled.unet)
    net.unet.load_state_dict(coupled.unet.state_dict())
    x, y = _inputs(4, 1, 3, (8, 8))
    t_x = torch.tensor([0.2, 0.5, 1.0, 0.7])
    with torch.no_grad():
        reference = coupled(x, y, t_x)
        for t_y in (t_x, torch.zeros(4), torch.ones(4)):
            out = net(x, y, torch.stack([t_x, t_y], 1))
            assert all(torch.equal(a, b) for a, b in zip(out, reference))
    # the t_y branch gets a gradient at once (its zero last layer sees a nonzero hidden activation)
    net.train()
    v_x, v_y = net(x, y, torch.stack([t_x, torch.rand(4)], 1))
    (v_x.square().mean() + v_y.square().mean()).backward()
    assert net.time_embed_y[2].weight.grad.abs().sum() > 0


def test_decoupled_network_reads_t_y_and_takes_coupled_times() -> None:
    torch.manual_seed(0)
    net = _randomize(build_network("tiny", 1, 3, decoupled_time=True)).eval()
    x, y = _inputs(3, 1, 3, (8, 8))
    t_x = torch.full((3,), 0.4)
    with torch.no_grad():
        a = net(x, y, torch.stack([t_x, torch.full((3,), 0.1)], 1))
        b = net(x, y, torch.stack([t_x, torch.full((3,), 0.9)], 1))
        assert not torch.allclose(a[0], b[0]) and not torch.allclose(a[1], b[1])
        # a (B,) or scalar t is t_x = t_y = t
        same = net(x, y, torch.stack([t_x, t_x], 1))
        for t in (t_x, 0.4):
            assert all(torch.equal(u, v) for u, v in zip(net(x, y, t), same))
        # per row: a row's output depends on its own (t_x, t_y) only
        mixed = net(x, y, torch.tensor([[0.4, 0.1], [0.4, 0.9], [0.4, 0.1]]))
        torch.testing.assert_close(mixed[0][1], b[0][1])
        torch.testing.assert_close(mixed[1][2], a[1][2])
    with pytest.raises(ValueError, match=r"shape \(3,\) or \(3, 2\), got \(3, 3\)"):
        net(x, y, torch.zeros(3, 3))


def test_a_coupled_network_refuses_two_times() -> None:
    net = build_network("tiny", 1, 3)
    x, y = _inputs(2, 1, 3, (8, 8))
    with pytest.raises(ValueError, match="only a network built with decoupled_time=True takes"):
        net(x, y, torch.rand(2, 2))
    with pytest.raises(ValueError, match="decoupled_time must be true or false"):
        build_network("tiny", 1, 3, decoupled_time="yes")
    with pytest.raises(ValueError, match="SymmFlowSDUNet has one time input"):
        build_network("sd21_tiny", 4, 4, decoupled_time=True)


def test_decoupled_state_dict_round_trip_and_its_ema_copy() -> None:
    torch.manual_seed(0)
    net = _randomize(build_network("tiny", 1, 3, decoupled_time=True)).eval()
    assert any(k.startswith("time_embed_y.") for k in net.state_dict())
    assert not any("time_embed_y" in k for k in build_network("tiny", 1, 3).state_dict())
    again = build_network("tiny", 1, 3, decoupled_time=True).eval()
    again.load_state_dict(net.state_dict())
    x, y = _inputs(2, 1, 3, (8, 8))
    t = torch.tensor([[0.3, 0.8], [1.0, 0.2]])
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(net(x, y, t), again(x, y, t)))
        # the EMA's deep copy embeds t_y with its own branch, not with the original network's
        ema = create_ema(net)
        want = net(x, y, t)
        nn.init.zeros_(net.time_embed_y[2].weight)
        assert all(torch.equal(a, b) for a, b in zip(ema(x, y, t), want))
    with pytest.raises(RuntimeError, match="Unexpected key"):
        build_network("tiny", 1, 3).load_state_dict(net.state_dict())


def test_decoupled_data_prediction_divides_by_the_label_time() -> None:
    torch.manual_seed(0)
    net = _randomize(build_network("tiny", 3, 4, y_prediction="data", decoupled_time=True)).eval()
    velocity = build_network("tiny", 3, 4, decoupled_time=True).eval()
    velocity.load_state_dict(net.state_dict())
    x, y_t = torch.randn(3, 3, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([[1.0, 0.5], [0.2, 1e-5], [0.5, 1.0]])
    with torch.no_grad():
        _, y_hat = velocity(x, y_t, t)
        _, v_y = net(x, y_t, t)
    floor = t[:, 1].clamp_min(DATA_PREDICTION_MIN_T).view(-1, 1, 1, 1)
    torch.testing.assert_close(v_y, (y_t - y_hat) / floor, atol=1e-5, rtol=1e-5)
