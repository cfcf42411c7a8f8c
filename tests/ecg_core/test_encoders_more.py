"""Tests of the plain ResNets (``resnet1d18/34``) and the seed CNNs (``pclr_cnn``, ``seed_cnn``).

Shapes: ``B`` batch, ``L`` leads, ``C`` channels, ``T`` time, ``D`` output features.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributed.tensor import DTensor

from ecg_core import distributed as D
from ecg_core.config import ConfigError
from ecg_core.encoders import ENCODERS, build_encoder, count_parameters, validate_encoder
from ecg_core.encoders.seed_cnns import _SameConv1d
from jobs.config import EncoderConfig

from .method_utils import assert_blocks_partition, config_error

NAMES = ("resnet1d18", "resnet1d34", "pclr_cnn", "seed_cnn")

# out_dim at base_width 4: 8 * 4 (resnets), 320 * 4 // 64 (PCLR), 256 * 4 // 16 (seed CNN).
TINY_OUT_DIM = {"resnet1d18": 32, "resnet1d34": 32, "pclr_cnn": 20, "seed_cnn": 64}

# Standard sizes, (builder kwargs, parameters, out_dim). Counts from seed-methods.md, obtained there by
# instantiating (or, for Keras, counting) the seeds' own modules: resnet1d34 at 12 leads = seed 4's
# ecgresnet_1d34 (section 4.4); resnet1d18 at 1 lead = seed 1's per-lead resnet18 (1.4); pclr_cnn = PCLR's
# encoder, trainable weights (3.2); seed_cnn per lead = seed 1's basic_cnn with C_in 1 (1.4). The rest are
# this implementation's (the seed counts plus the extra input channels of the first convolution).
STANDARD = [
    ("resnet1d34", {}, 7_223_168, 512),
    ("resnet1d18", {"in_leads": 1}, 3_843_904, 512),
    ("resnet1d18", {}, 3_848_832, 512),                 # 3,843,904 + 11 * 64 * 7
    ("pclr_cnn", {}, 6_391_184, 320),
    ("seed_cnn", {"per_lead": True}, 150_224, 256),
    ("seed_cnn", {"in_leads": 1}, 150_224, 256),
    ("seed_cnn", {}, 151_456, 256),                     # 150,224 + 11 * 16 * 7
]


def _tiny(name: str, **kw):
    return ENCODERS[name](base_width=4, **kw)


def test_registered():
    assert set(NAMES) <= set(ENCODERS)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("T", [250, 256])   # 250: odd lengths after striding
def test_tiny_shapes_and_out_dim(name, T):
    torch.manual_seed(0)
    encoder = _tiny(name)
    assert encoder.out_dim == TINY_OUT_DIM[name]
    z_BD = encoder(torch.randn(3, 12, T))
    assert z_BD.shape == (3, encoder.out_dim) and z_BD.dtype == torch.float32
    assert torch.isfinite(z_BD).all()
    encoder.eval()
    assert encoder(torch.randn(1, 12, T)).shape == (1, encoder.out_dim)


@pytest.mark.parametrize("name, kwargs, n_params, out_dim", STANDARD)
def test_standard_parameter_counts(name, kwargs, n_params, out_dim):
    with torch.device("meta"):
        encoder = ENCODERS[name](**kwargs)
    assert count_parameters(encoder) == n_params
    assert encoder.out_dim == out_dim


def test_pclr_batchnorm_running_statistics_match_keras_count():
    """seed-methods.md 3.2: 3,728 BatchNorm moving statistics (means and variances) beside the weights."""
    with torch.device("meta"):
        encoder = ENCODERS["pclr_cnn"]()
    n = sum(b.numel() for name, b in encoder.named_buffers() if name.endswith(("running_mean", "running_var")))
    assert n == 3_728


def test_resnet_concat_pool_and_kernel_size():
    encoder = ENCODERS["resnet1d18"](base_width=4, kernel_size=5, kernel_size_stem=3, pool="concat")
    assert encoder.out_dim == 64 and encoder(torch.randn(2, 12, 128)).shape == (2, 64)
    assert encoder.stem[0].kernel_size == (3,) and encoder.stages[1][0].conv2.kernel_size == (5,)


@pytest.mark.parametrize("name", NAMES)
def test_blocks_partition_every_parameter(name):
    assert_blocks_partition(_tiny(name))


def test_pclr_time_reduction_and_same_padding_lengths():
    """Each unit shortens time 4x as Keras 'same' does (ceil): 1024 -> 4 and 250 -> 63 -> 16 -> 4 -> 1."""
    encoder = _tiny("pclr_cnn")
    for T, lengths in ((1024, [256, 64, 16, 4]), (250, [63, 16, 4, 1])):
        y_BCT = encoder.stem(torch.randn(2, 12, T))
        assert y_BCT.shape[-1] == T
        seen = []
        for unit in encoder.units:
            y_BCT = unit(y_BCT)
            seen.append(y_BCT.shape[-1])
        assert seen == lengths


@pytest.mark.parametrize("T, k, s", [(20, 16, 1), (21, 16, 1), (20, 16, 4), (23, 16, 4), (9, 3, 4), (12, 5, 2)])
def test_same_conv_matches_tensorflow_formula(T, k, s):
    """Naive loop over TensorFlow's 'same' rule: ``T_out = ceil(T / s)``, total padding
    ``max((T_out - 1) s + k - T, 0)``, ``floor(total / 2)`` of it on the left, zeros outside the signal."""
    torch.manual_seed(0)
    conv = _SameConv1d(2, 3, k, stride=s)
    x_BCT = torch.randn(2, 2, T, dtype=torch.float64)
    conv = conv.double()
    T_out = math.ceil(T / s)
    left = max((T_out - 1) * s + k - T, 0) // 2
    w = conv.weight.detach()
    ref = torch.zeros(2, 3, T_out, dtype=torch.float64)
    for b in range(2):
        for o in range(3):
            for t in range(T_out):
                acc = 0.0
                for c in range(2):
                    for j in range(k):
                        i = t * s + j - left
                        if 0 <= i < T:
                            acc += float(w[o, c, j]) * float(x_BCT[b, c, i])
                ref[b, o, t] = acc
    torch.testing.assert_close(conv(x_BCT), ref)


def test_pclr_skip_maxpool_ignores_padding():
    """Keras max-pooling with 'same' padding never sees the padding: an all-negative input stays negative."""
    encoder = _tiny("pclr_cnn")
    unit = encoder.units[1]   # 8 -> 12 channels, with a 1x1 skip convolution
    torch.nn.init.ones_(unit.skip_conv.weight)
    torch.nn.init.zeros_(unit.conv2.weight)   # main path 0: the output is the skip path alone
    y_BCT = -1.0 - torch.rand(1, 8, 10)        # 10 samples: pool 4 pads 2 (one each side)
    out_BCT = unit(y_BCT)
    assert out_BCT.shape == (1, 12, 3)
    padded = F.pad(y_BCT, (1, 1), value=float("-inf"))
    expected = F.max_pool1d(padded, 4).sum(dim=1, keepdim=True).expand(1, 12, 3)
    torch.testing.assert_close(out_BCT, expected)


def test_seed_cnn_per_lead_is_mean_of_lead_embeddings():
    torch.manual_seed(0)
    encoder = _tiny("seed_cnn", per_lead=True).eval()   # eval: BatchNorm does not mix the leads
    x_BLT = torch.randn(2, 12, 300)
    per_lead = [encoder(x_BLT[:, i:i + 1]) for i in range(12)]
    torch.testing.assert_close(encoder(x_BLT), torch.stack(per_lead).mean(dim=0))


def test_seed_cnn_window_check():
    cfg = EncoderConfig(name="seed_cnn", params={"base_width": 4})
    validate_encoder(cfg, window=223)
    with pytest.raises(ConfigError) as info:
        validate_encoder(cfg, window=222)
    assert info.value.key == "encoder.params" and "223" in info.value.reason
    assert _tiny("seed_cnn")(torch.randn(2, 12, 223)).shape == (2, 64)


@pytest.mark.parametrize("name", NAMES)
def test_fsdp2_one_rank_equals_unsharded(name, one_rank_group):
    """Same outputs and gradients sharded (1 gloo rank) and not; no FSDP2 warnings (they are errors here)."""
    torch.manual_seed(0)
    plain = _tiny(name)
    sharded = copy.deepcopy(plain)
    D.shard_model(sharded, sharded.blocks())
    assert all(isinstance(p, DTensor) for p in sharded.parameters())
    x_BLT = torch.randn(4, 12, 240)
    z_plain, z_sharded = plain(x_BLT), sharded(x_BLT)
    torch.testing.assert_close(z_sharded, z_plain)
    z_plain.square().mean().backward()
    z_sharded.square().mean().backward()
    grads = dict(sharded.named_parameters())
    for pname, p in plain.named_parameters():
        q = grads[pname]
        assert q.grad is not None, pname
        torch.testing.assert_close(q.grad.full_tensor(), p.grad, msg=pname)


def test_build_encoder_from_config():
    assert build_encoder(EncoderConfig(name="pclr_cnn", params={"base_width": 4})).out_dim == 20
    assert build_encoder(EncoderConfig(name="resnet1d34", params={"base_width": 4, "pool": "concat"})).out_dim == 64


@pytest.mark.parametrize("name, params, key", [
    ("resnet1d18", {"width": 8}, "encoder.params.width"),
    ("resnet1d18", {"base_width": 0}, "encoder.params.base_width"),
    ("resnet1d34", {"base_width": 8.0}, "encoder.params.base_width"),
    ("resnet1d34", {"kernel_size": 4}, "encoder.params.kernel_size"),
    ("resnet1d18", {"kernel_size_stem": 0}, "encoder.params.kernel_size_stem"),
    ("resnet1d18", {"pool": "max"}, "encoder.params.pool"),
    ("pclr_cnn", {"base_width": 0}, "encoder.params.base_width"),
    ("pclr_cnn", {"kernel_size": 0}, "encoder.params.kernel_size"),
    ("pclr_cnn", {"dropout": 0.2}, "encoder.params.dropout"),
    ("seed_cnn", {"base_width": -1}, "encoder.params.base_width"),
    ("seed_cnn", {"per_lead": "yes"}, "encoder.params.per_lead"),
    ("seed_cnn", {"in_leads": 1}, "encoder.params.in_leads"),
])
def test_bad_params_name_the_key(name, params, key):
    assert config_error(validate_encoder, EncoderConfig(name=name, params=params)).key == key
