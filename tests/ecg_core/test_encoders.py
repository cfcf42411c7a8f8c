"""Encoders: shapes and ``out_dim`` of every registry entry, parameter counts, FSDP2 blocks, config checks.

Shapes: ``B`` batch, ``L`` leads, ``T`` time, ``D`` representation.
"""
import pytest
import torch
from torch import nn
from torch.distributed.tensor import DTensor

from ecg_core import distributed as D
from ecg_core.encoders import ENCODERS, build_encoder, count_parameters, validate_encoder
from jobs.config import EncoderConfig

from .method_utils import assert_blocks_partition, config_error


# out_dim at base_width 8: 8 * 8 (basic), 32 * 8 (bottleneck), 2 * 4 * 8 (seed: 8-wide stages x 4, concat pool)
TINY_OUT_DIM = {"xresnet1d18": 64, "xresnet1d34": 64, "xresnet1d50": 256, "xresnet1d101": 256,
                "xresnet1d50_seed": 64}

# Standard widths. xresnet1d50_seed: 886,432 is the count in seed-methods.md section 2.2, obtained there
# by instantiating the seed repository's own module; the others are this implementation's (a 2-D
# ResNet-50 has 25.6 M with 3x3 kernels; 1-D kernels of 5 give fewer).
STANDARD_PARAMS = {"xresnet1d18": 6_302_080, "xresnet1d34": 11_921_024, "xresnet1d50": 18_486_144,
                   "xresnet1d101": 33_021_824, "xresnet1d50_seed": 886_432}
STANDARD_OUT_DIM = {"xresnet1d18": 512, "xresnet1d34": 512, "xresnet1d50": 2048, "xresnet1d101": 2048,
                    "xresnet1d50_seed": 512}


# The xresnet family (``base_width`` parameter); other families have their own test files (test_vit1d.py).
XRESNETS = sorted(name for name in ENCODERS if name.startswith("xresnet"))


def test_every_registered_encoder_is_covered():
    assert set(TINY_OUT_DIM) == set(XRESNETS) == set(STANDARD_PARAMS)


@pytest.mark.parametrize("name", XRESNETS)
@pytest.mark.parametrize("T", [256, 250])   # 250: odd lengths after striding (the seed's 2.5 s at 100 Hz)
def test_tiny_encoder_shapes_and_out_dim(name, T):
    torch.manual_seed(0)
    encoder = ENCODERS[name](in_leads=12, base_width=8)
    assert encoder.out_dim == TINY_OUT_DIM[name]
    z_BD = encoder(torch.randn(3, 12, T))
    assert z_BD.shape == (3, encoder.out_dim) and z_BD.dtype == torch.float32
    assert torch.isfinite(z_BD).all()
    encoder.eval()
    assert encoder(torch.randn(1, 12, T)).shape == (1, encoder.out_dim)   # eval mode, batch of one


@pytest.mark.parametrize("name", XRESNETS)
def test_standard_width_parameter_counts(name):
    with torch.device("meta"):   # no memory, no init cost: only shapes
        encoder = ENCODERS[name](in_leads=12)
    assert count_parameters(encoder) == STANDARD_PARAMS[name]
    assert encoder.out_dim == STANDARD_OUT_DIM[name]


def test_xresnet1d50_is_in_the_resnet50_range_and_scales_with_width():
    with torch.device("meta"):
        full = count_parameters(ENCODERS["xresnet1d50"]())
        half = count_parameters(ENCODERS["xresnet1d50"](base_width=32))
    assert 15e6 < full < 26e6
    assert 0.2 < half / full < 0.3   # conv weights scale with width squared (plus the 12-lead input layer)


@pytest.mark.parametrize("name", XRESNETS)
def test_blocks_partition_every_parameter(name):
    assert_blocks_partition(ENCODERS[name](base_width=8))


def test_residual_branches_start_as_identity():
    """Zero-initialised last BatchNorm of every residual branch (Goyal et al. 2017)."""
    encoder = ENCODERS["xresnet1d50"](base_width=8)
    for stage in encoder.stages:
        for block in stage:
            last_bn = [m for m in block.branch.modules() if isinstance(m, nn.BatchNorm1d)][-1]
            assert torch.equal(last_bn.weight, torch.zeros_like(last_bn.weight))


def test_single_lead_input():
    encoder = ENCODERS["xresnet1d18"](in_leads=1, base_width=8)
    assert encoder(torch.randn(2, 1, 128)).shape == (2, 64)


def test_fsdp2_sharded_forward_backward_without_warnings(one_rank_group):
    """Blocks return no views of their input (FSDP2 warns otherwise; warnings are errors here)."""
    torch.manual_seed(0)
    encoder = ENCODERS["xresnet1d50_seed"](base_width=8)
    D.shard_model(encoder, encoder.blocks())
    assert all(isinstance(p, DTensor) for p in encoder.parameters())
    z_BD = encoder(torch.randn(4, 12, 128))
    z_BD.square().mean().backward()
    assert all(p.grad is not None for p in encoder.parameters())


def test_build_encoder_from_config():
    cfg = EncoderConfig(name="xresnet1d34", params={"base_width": 4, "kernel_size": 3, "pool": "concat"})
    encoder = build_encoder(cfg)
    assert encoder.out_dim == 2 * 8 * 4
    assert build_encoder(EncoderConfig(name="xresnet1d18", params={})).out_dim == 512


def test_count_parameters_counts_every_element():
    assert count_parameters(nn.Linear(3, 4)) == 3 * 4 + 4


def test_unknown_encoder_names_the_key_and_lists_known_ones():
    err = config_error(validate_encoder, EncoderConfig(name="resnet50"))
    assert err.key == "encoder.name"
    assert all(name in err.reason for name in ENCODERS)


@pytest.mark.parametrize("params, key", [
    ({"width": 8}, "encoder.params.width"),            # not a parameter
    ({"in_leads": 1}, "encoder.params.in_leads"),      # fixed by the caller, not configurable
    ({"base_width": 1}, "encoder.params.base_width"),  # rejected value
    ({"base_width": 8.0}, "encoder.params.base_width"),
    ({"kernel_size": 4}, "encoder.params.kernel_size"),
    ({"pool": "max"}, "encoder.params.pool"),
])
def test_bad_params_name_the_key(params, key):
    err = config_error(validate_encoder, EncoderConfig(name="xresnet1d50", params=params))
    assert err.key == key


def test_key_prefix_is_used_in_errors():
    err = config_error(validate_encoder, EncoderConfig(name="xresnet1d50", params={"depth": 3}),
                       key_prefix="eval.encoder")
    assert err.key == "eval.encoder.params.depth" and "base_width" in err.reason   # lists accepted params
    assert config_error(validate_encoder, EncoderConfig(name="x"), key_prefix="eval.encoder").key == "eval.encoder.name"


def test_valid_config_passes():
    validate_encoder(EncoderConfig(name="xresnet1d101", params={"base_width": 16, "kernel_size": 7}))
