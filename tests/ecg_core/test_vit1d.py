"""ViT-1D encoder: shapes, ``out_dim``, parameter counts, token access, window checks, FSDP2 equivalence.

Shapes: ``B`` batch, ``L`` leads, ``T`` time, ``N`` patches, ``K`` kept patches, ``D`` width.
"""
import math

import pytest
import torch
from torch.distributed.tensor import DTensor

from ecg_core import distributed as D
from ecg_core.config import ConfigError, load_config
from ecg_core.encoders import ENCODERS, build_encoder, count_parameters, validate_encoder
from ecg_core.encoders.vit1d import MaskTokenPredictor, ViT1d, gather_tokens, sincos_pos_embed
from jobs.config import EncoderConfig, PretrainConfig

VITS = ("vit1d_tiny", "vit1d_small", "vit1d_base")
TINY = {"depth": 2, "dim": 32, "heads": 2}
# Counted here (meta device). Seed 4's ecgt_tiny has 5,404,416 at 25-sample patches: this module's
# 5,396,544 there plus its 41 x 192 sin-cos table, which the seed stores as a frozen parameter.
STANDARD_PARAMS = {"vit1d_tiny": 5_454_144, "vit1d_small": 21_525_120, "vit1d_base": 85_517_568}
STANDARD_OUT_DIM = {"vit1d_tiny": 192, "vit1d_small": 384, "vit1d_base": 768}


def test_registered():
    assert set(VITS) <= set(ENCODERS)


@pytest.mark.parametrize("name", VITS)
@pytest.mark.parametrize("T, patch_size", [(500, 50), (250, 25)])
def test_tiny_shapes_and_out_dim(name, T, patch_size):
    torch.manual_seed(0)
    encoder = ENCODERS[name](in_leads=12, patch_size=patch_size, **TINY)
    assert isinstance(encoder, ViT1d) and encoder.out_dim == 32
    x_BLT = torch.randn(3, 12, T)
    z_BD = encoder(x_BLT)
    assert z_BD.shape == (3, 32) and z_BD.dtype == torch.float32 and torch.isfinite(z_BD).all()
    h_BND = encoder.tokens(x_BLT)
    assert h_BND.shape == (3, T // patch_size, 32)
    torch.testing.assert_close(z_BD, h_BND.mean(dim=1))       # mean-pooled tokens
    encoder.eval()
    assert encoder(torch.randn(1, 12, T)).shape == (1, 32)


@pytest.mark.parametrize("name", VITS)
def test_standard_sizes(name):
    with torch.device("meta"):
        encoder = ENCODERS[name]()
    assert count_parameters(encoder) == STANDARD_PARAMS[name]
    assert encoder.out_dim == STANDARD_OUT_DIM[name] and encoder.patch_size == 50


def test_sincos_positions_match_the_formula():
    pos_ND = sincos_pos_embed(7, 6)
    for n in range(7):
        for i in range(3):
            w = 1.0 / 10000 ** (i / 3)
            assert pos_ND[n, i].item() == pytest.approx(math.sin(n * w), abs=1e-6)
            assert pos_ND[n, 3 + i].item() == pytest.approx(math.cos(n * w), abs=1e-6)


def test_gather_tokens_matches_a_loop():
    h_BND = torch.randn(3, 5, 4)
    index_BK = torch.tensor([[4, 0], [1, 1], [2, 3]])
    got = gather_tokens(h_BND, index_BK)
    for b in range(3):
        for k in range(2):
            assert torch.equal(got[b, k], h_BND[b, index_BK[b, k]])


def test_tokens_of_a_subset_carry_their_positions():
    """Attention without positions in the blocks is permutation-equivariant: encoding the patches in any
    order gives the same tokens, each at its own patch; a subset is encoded without the other patches."""
    torch.manual_seed(0)
    encoder = ENCODERS["vit1d_tiny"](patch_size=50, **TINY)
    x_BLT = torch.randn(2, 12, 500)
    all_BND = encoder.tokens(x_BLT)
    perm_BN = torch.stack([torch.randperm(10), torch.randperm(10)])
    torch.testing.assert_close(encoder.tokens(x_BLT, perm_BN), gather_tokens(all_BND, perm_BN))
    keep_BK = perm_BN[:, :4]
    sub_BKD = encoder.tokens(x_BLT, keep_BK)
    assert sub_BKD.shape == (2, 4, 32)
    # Changing a patch that is not kept leaves the kept tokens unchanged (it is never seen).
    dropped = int(perm_BN[0, 9])
    x2_BLT = x_BLT.clone()
    x2_BLT[0, :, dropped * 50:(dropped + 1) * 50] += 5.0
    torch.testing.assert_close(encoder.tokens(x2_BLT, keep_BK), sub_BKD)
    assert not torch.allclose(encoder.tokens(x2_BLT)[0], all_BND[0])


def test_blocks_partition_every_parameter():
    encoder = ENCODERS["vit1d_tiny"](**TINY)
    blocks = encoder.blocks()
    assert blocks[0] is encoder.patch_embed and blocks[-1] is encoder.norm and len(blocks) == 2 + TINY["depth"]
    ids = [id(p) for b in blocks for p in b.parameters()]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in encoder.parameters()}


def test_lengths_that_are_not_multiples_of_the_patch_fail_clearly():
    encoder = ENCODERS["vit1d_tiny"](**TINY)
    with pytest.raises(ValueError, match="patch_size 50 must divide the window of 510"):
        encoder(torch.randn(1, 12, 510))


def _config_error(cfg, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        validate_encoder(cfg, **kwargs)
    return info.value


def test_window_not_divisible_by_patch_size_is_a_config_error():
    cfg = EncoderConfig(name="vit1d_tiny", params={**TINY, "patch_size": 40})
    err = _config_error(cfg, window=500)
    assert err.key == "encoder.params.patch_size" and "500" in err.reason and "data.window" in err.reason
    err = _config_error(EncoderConfig(name="vit1d_small", params={}), window=2510)   # default patch_size 50
    assert err.key == "encoder.params" and "patch_size 50" in err.reason
    validate_encoder(cfg, window=2000)
    validate_encoder(cfg)                        # no window known: nothing to check
    # build_method passes the training window: the recipe path fails before any model is built.
    from ecg_core.methods import build_method
    with pytest.raises(ConfigError) as info:
        build_method(load_config(PretrainConfig, [], ["encoder.name=vit1d_tiny", "data.window=510",
                                                      "encoder.params.depth=1"]), 0)
    assert info.value.key == "encoder.params"


@pytest.mark.parametrize("params, key", [
    ({"heads": 5}, "encoder.params.heads"),          # 192 is not divisible by 5
    ({"dim": 33, "heads": 3}, "encoder.params.dim"),  # odd width: no sin-cos table
    ({"depth": 0}, "encoder.params.depth"),
    ({"patch_size": 0}, "encoder.params.patch_size"),
    ({"mlp_ratio": -1.0}, "encoder.params.mlp_ratio"),
    ({"base_width": 8}, "encoder.params.base_width"),
])
def test_bad_params_name_the_key(params, key):
    assert _config_error(EncoderConfig(name="vit1d_tiny", params=params)).key == key


def test_build_from_config():
    encoder = build_encoder(EncoderConfig(name="vit1d_base", params=TINY), window=500)
    assert encoder.out_dim == 32 and len(encoder.layers) == 2


def test_mask_token_predictor_shapes():
    torch.manual_seed(0)
    predictor = MaskTokenPredictor(in_dim=32, dim=16, depth=1, heads=2, out_dim=7)
    h_BKD = torch.randn(3, 4, 32)
    src_BK = torch.tensor([[0, 1, 2, 3]] * 3)
    dst_BM = torch.tensor([[5, 6], [4, 9], [8, 7]])
    out_BMO = predictor(h_BKD, src_BK, dst_BM, 10)
    assert out_BMO.shape == (3, 2, 7) and torch.isfinite(out_BMO).all()
    assert not torch.allclose(out_BMO[:, 0], out_BMO[:, 1])   # positions make mask tokens differ


def test_fsdp2_one_rank_equals_unsharded(one_rank_group):
    """Sharded forward/backward/AdamW steps reproduce the plain module (and raise no warnings)."""
    def run(encoder):
        opt = torch.optim.AdamW(encoder.parameters(), lr=1e-3)
        losses = []
        for s in range(3):
            x_BLT = torch.randn(4, 12, 250, generator=torch.Generator().manual_seed(s))
            loss = encoder(x_BLT).square().mean() + encoder.tokens(x_BLT, torch.tensor([[0, 2]] * 4)).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        return losses

    torch.manual_seed(0)
    plain = ENCODERS["vit1d_tiny"](patch_size=25, **TINY)
    torch.manual_seed(0)
    sharded = ENCODERS["vit1d_tiny"](patch_size=25, **TINY)
    D.shard_model(sharded, sharded.blocks())
    assert all(isinstance(p, DTensor) for p in sharded.parameters())
    assert run(sharded) == pytest.approx(run(plain), rel=1e-5)
