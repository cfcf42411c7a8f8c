"""MAE on rendered ECG images: the recipe, the image ViT encoder (signals in, representations out), 2-D
positions, patchify, masking ratio, config errors, CPU training steps (plain and FSDP2).

Shapes: ``B`` batch, ``L`` leads, ``T`` time, ``C`` channels, ``H`` image side, ``N`` patches, ``K`` visible,
``M`` masked, ``P`` pixels per patch, ``D`` width.
"""
from __future__ import annotations

import dataclasses
from functools import partial

import pytest
import torch

from ecg_core.config import ConfigError
from ecg_core.encoders import ENCODERS, build_encoder
from ecg_core.encoders.vit1d import sincos_pos_embed
from ecg_core.encoders.vit2d import MaskTokenPredictor2d, sincos_pos_embed_2d
from ecg_core.methods import METHODS, build_method, validate_method
from ecg_core.methods.mae_image import MAEImage, MAEImageConfig, patchify_image
from ecg_core.render import render_ecg_image
from jobs.config import EncoderConfig

from .method_utils import (
    assert_step_depends_only_on_seed_and_step, config_error, plain_and_sharded, recipe_config, train_steps,
    window_batch,
)

B, T = 4, 500
TINY = ["encoder.params.image_size=64", "encoder.params.depth=2", "encoder.params.dim=32", "encoder.params.heads=2",
        f"data.window={T}", "method.params.decoder_dim=16", "method.params.decoder_depth=1",
        "method.params.decoder_heads=2"]
tiny_config = partial(recipe_config, "mae_image", *TINY)


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    return window_batch(B, T, seed, scale=0.4, start_dtype=torch.int64)


def test_recipe_builds_the_documented_method():
    assert METHODS["mae_image"] is MAEImage and MAEImage.Config is MAEImageConfig
    cfg = recipe_config("mae_image")
    assert validate_method(cfg.method, window=cfg.data.window) == MAEImageConfig()
    assert cfg.method.params == dataclasses.asdict(MAEImageConfig())
    assert cfg.encoder.name == "image_vit_base"
    with torch.device("meta"):
        method = build_method(cfg, generator_seed=0)
    assert isinstance(method, MAEImage) and method.encoder.num_patches == 196 and method.n_keep == 147   # 25 % masked
    # ViT-B/16 on 1 channel: the seed's 85,798,656 (counted: 85.6 M + ...) less the RGB patch embedding's
    # extra 2 x 768 x 256 weights, the class token and the frozen 197 x 768 position table (computed here)
    n_encoder = sum(p.numel() for p in method.encoder.parameters())
    assert n_encoder == 85_798_656 - 2 * 768 * 256 - 768 - 197 * 768 == 85_253_376


def test_image_encoder_maps_signals_to_representations():
    enc = ENCODERS["image_vit_tiny"](in_leads=12, image_size=64, dim=32, depth=2, heads=2)
    x_BLT = batch()["x"]
    z_BD = enc(x_BLT)
    assert z_BD.shape == (B, 32) and enc.out_dim == 32 and torch.isfinite(z_BD).all()
    assert torch.equal(enc.render(x_BLT), render_ecg_image(x_BLT, 64, "6x2", 1.5, 0.5))
    assert torch.allclose(z_BD, enc.image_tokens(enc.render(x_BLT)).mean(dim=1))
    # every parameter lives in a block (FSDP2 units), none returns its input
    in_blocks = {id(p) for blk in enc.blocks() for p in blk.parameters()}
    assert in_blocks == {id(p) for p in enc.parameters()}
    enc.check_window(500)
    with pytest.raises(ValueError):
        ENCODERS["image_vit_tiny"](in_leads=12, image_size=60, patch_size=16)
    with pytest.raises(ConfigError) as info:
        build_encoder(EncoderConfig("image_vit_tiny", {"layout": "3x4"}), window=7)
    assert info.value.key == "encoder.params.layout"


def test_sincos_2d_is_row_then_column():
    pos_NE = sincos_pos_embed_2d(3, 8)
    e_GE = sincos_pos_embed(3, 4)
    assert pos_NE.shape == (9, 8)
    for i in range(3):
        for j in range(3):
            assert torch.equal(pos_NE[i * 3 + j], torch.cat([e_GE[i], e_GE[j]]))
    with pytest.raises(ValueError):
        sincos_pos_embed_2d(3, 6)


def test_patchify_image_matches_the_patch_embedding_order():
    img_BCHW = torch.randn(2, 1, 8, 12)
    p_BNCP = patchify_image(img_BCHW, 4)
    assert p_BNCP.shape == (2, 6, 1, 16)
    for n in range(6):
        i, j = divmod(n, 3)
        assert torch.equal(p_BNCP[1, n, 0], img_BCHW[1, 0, 4 * i:4 * i + 4, 4 * j:4 * j + 4].reshape(16))
    # a Conv2d with one-hot kernels reads the same patches in the same (row-major) token order
    conv = torch.nn.Conv2d(1, 16, 4, 4, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(16).reshape(16, 1, 4, 4))
    assert torch.allclose(conv(img_BCHW).flatten(2).transpose(1, 2), p_BNCP[:, :, 0])


def test_decoder_predicts_masked_patches():
    dec = MaskTokenPredictor2d(32, 16, 1, 2, out_dim=256)
    h_BKD = torch.randn(2, 12, 32)
    order = torch.randperm(16).expand(2, 16)
    pred = dec(h_BKD, order[:, :12], order[:, 12:], 16)
    assert pred.shape == (2, 4, 256)
    with pytest.raises(ValueError):
        dec(h_BKD, order[:, :12], order[:, 12:], 15)


@pytest.mark.parametrize("ratio, n_keep", [(0.25, 12), (0.75, 4), (0.5, 8)])
def test_mask_ratio_sets_visible_tokens(ratio, n_keep):
    method = build_method(tiny_config(f"method.params.mask_ratio={ratio}"), generator_seed=0)
    assert method.n_keep == n_keep
    seen = {}
    orig = method.encoder.image_tokens

    def spy(img, keep_BK=None):
        seen["keep"] = keep_BK
        return orig(img, keep_BK)

    method.encoder.image_tokens = spy
    method.training_step(batch(), 0)
    assert seen["keep"].shape == (B, n_keep)
    assert all(len(set(row)) == n_keep for row in seen["keep"].tolist())


def test_training_step_depends_only_on_seed_and_step():
    method = build_method(tiny_config(), generator_seed=0)
    first = assert_step_depends_only_on_seed_and_step(method, batch)["loss"]
    assert torch.isfinite(first)


def test_config_errors():
    error = config_error(build_method, tiny_config("method.params.mask_ratio=1.0"), 0)
    assert error.key == "method.params.mask_ratio"
    error = config_error(build_method, tiny_config("method.params.mask_ratio=0.95"), 0)   # 16 patches: 0.95 keeps none
    assert error.key == "method.params.mask_ratio"
    error = config_error(build_method, tiny_config("method.params.decoder_dim=18", "method.params.decoder_heads=2"), 0)
    assert error.key == "method.params.decoder_dim"
    cfg = dataclasses.replace(tiny_config(), encoder=EncoderConfig("vit1d_tiny", {"depth": 1}))
    assert config_error(build_method, cfg, 0).key == "encoder.name"


def test_two_cpu_steps_are_finite_and_change_the_weights():
    torch.manual_seed(0)
    method = build_method(tiny_config(), generator_seed=0)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    losses = train_steps(method, batch, range(2))
    assert all(torch.isfinite(torch.tensor(losses))) and losses[0] != losses[1]
    after = method.state_dict()
    assert not torch.equal(before["encoder.patch_embed.proj.weight"], after["encoder.patch_embed.proj.weight"])
    assert not torch.equal(before["decoder.mask_token"], after["decoder.mask_token"])


def test_fsdp2_sharded_steps_match_the_plain_module(one_rank_group):
    cfg = tiny_config()
    plain, sharded = plain_and_sharded(lambda: build_method(cfg, generator_seed=0))
    assert train_steps(sharded, batch, range(2)) == pytest.approx(train_steps(plain, batch, range(2)), rel=1e-5)
