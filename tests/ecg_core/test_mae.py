"""MAE: the recipe, per-sample random masking, the masked-patch loss against a naive loop, CPU training steps
(plain and FSDP2).

Shapes: ``B`` batch, ``L`` leads, ``T`` time, ``N`` patches, ``K`` visible, ``M`` masked, ``P`` patch samples.
"""
from __future__ import annotations

import dataclasses
from functools import partial

import pytest
import torch

from ecg_core.methods import METHODS, build_method, validate_method
from ecg_core.methods.mae import MAE, MAEConfig, masked_patch_mse, patchify, random_masking
from jobs.config import EncoderConfig

from .method_utils import (
    assert_step_depends_only_on_seed_and_step, config_error, plain_and_sharded, recipe_config, train_steps,
    window_batch,
)

B, T = 4, 500
TINY = ["encoder.params.depth=2", "encoder.params.dim=32", "encoder.params.heads=2", f"data.window={T}",
        "method.params.decoder_dim=16", "method.params.decoder_depth=1", "method.params.decoder_heads=2"]
tiny_config = partial(recipe_config, "mae", *TINY)


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    out = window_batch(B, T, seed, start_dtype=torch.int64)
    out["lead_mask"][1, 6:] = False                            # a limb-lead-only record
    out["x"] = out["x"] * out["lead_mask"][..., None]
    return out


def test_recipe_builds_the_documented_method():
    assert METHODS["mae"] is MAE and MAE.Config is MAEConfig
    cfg = recipe_config("mae")
    assert validate_method(cfg.method, window=cfg.data.window) == MAEConfig()
    assert cfg.method.params == dataclasses.asdict(MAEConfig())
    assert cfg.encoder.name == "vit1d_base" and cfg.data.window % cfg.encoder.params["patch_size"] == 0
    with torch.device("meta"):
        method = build_method(cfg, generator_seed=0)
    assert isinstance(method, MAE) and method.n_keep == 12   # 50 patches, 75 % masked


@pytest.mark.parametrize("n_patches, n_keep", [(10, 2), (50, 12), (7, 6), (5, 1)])
def test_random_masking_is_exact_per_sample(n_patches, n_keep):
    g = torch.Generator().manual_seed(0)
    keep_BK, masked_BM = random_masking(64, n_patches, n_keep, g)
    assert keep_BK.shape == (64, n_keep) and masked_BM.shape == (64, n_patches - n_keep)
    for b in range(64):   # the two sets partition the patches in every sample
        assert sorted(keep_BK[b].tolist() + masked_BM[b].tolist()) == list(range(n_patches))
    assert len({tuple(sorted(row)) for row in keep_BK.tolist()}) > 1   # samples are masked differently
    again = random_masking(64, n_patches, n_keep, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], keep_BK) and torch.equal(again[1], masked_BM)


def test_random_masking_is_uniform_over_patches():
    keep_BK, _ = random_masking(4000, 10, 3, torch.Generator().manual_seed(1))
    counts = torch.bincount(keep_BK.flatten(), minlength=10).float() / 4000
    assert torch.allclose(counts, torch.full((10,), 0.3), atol=0.03)


def naive_masked_mse(pred_BMLP, target_BNLP, masked_BM, lead_mask_BL, norm_pix, eps=1e-6):
    """He et al.'s loss written out patch by patch, over present leads only."""
    Bn, M, L, P = pred_BMLP.shape
    errors = []
    for b in range(Bn):
        leads = [i for i in range(L) if lead_mask_BL[b, i]]
        for m in range(M):
            n = int(masked_BM[b, m])
            values = [float(target_BNLP[b, n, i, p]) for i in leads for p in range(P)]
            if not values:
                errors.append(0.0)
                continue
            mean = sum(values) / len(values)
            var = sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)
            total = 0.0
            for i in leads:
                for p in range(P):
                    t = float(target_BNLP[b, n, i, p])
                    if norm_pix:
                        t = (t - mean) / (var + eps) ** 0.5
                    total += (float(pred_BMLP[b, m, i, p]) - t) ** 2
            errors.append(total / len(values))
    return sum(errors) / len(errors)


@pytest.mark.parametrize("norm_pix", [True, False])
def test_masked_patch_mse_matches_the_naive_formula(norm_pix):
    g = torch.Generator().manual_seed(3)
    target_BNLP = torch.randn(3, 6, 4, 5, generator=g) * 2 + 1
    pred_BMLP = torch.randn(3, 4, 4, 5, generator=g)
    _, masked_BM = random_masking(3, 6, 2, g)
    lead_mask_BL = torch.tensor([[True] * 4, [True, False, True, False], [False] * 4])
    got = masked_patch_mse(pred_BMLP, target_BNLP, masked_BM, lead_mask_BL, norm_pix=norm_pix)
    assert got.item() == pytest.approx(naive_masked_mse(pred_BMLP, target_BNLP, masked_BM, lead_mask_BL, norm_pix),
                                       rel=1e-5)
    # Without a lead mask every lead counts.
    full = masked_patch_mse(pred_BMLP, target_BNLP, masked_BM, None, norm_pix=norm_pix)
    ones = torch.ones(3, 4, dtype=torch.bool)
    assert full.item() == pytest.approx(naive_masked_mse(pred_BMLP, target_BNLP, masked_BM, ones, norm_pix), rel=1e-5)


def test_masked_patch_mse_edge_cases():
    target_BNLP = torch.zeros(1, 2, 1, 3)                 # flat patches: norm_pix must not divide by zero
    pred_BMLP = torch.zeros(1, 1, 1, 3)
    assert masked_patch_mse(pred_BMLP, target_BNLP, torch.tensor([[1]]), norm_pix=True).item() == 0.0
    one_BNLP = torch.arange(3.0).reshape(1, 1, 1, 3)        # one patch of one lead: exact value
    loss = masked_patch_mse(torch.zeros(1, 1, 1, 3), one_BNLP, torch.tensor([[0]]), norm_pix=False)
    assert loss.item() == pytest.approx((0 + 1 + 4) / 3)


def test_loss_reads_only_the_masked_patches():
    g = torch.Generator().manual_seed(5)
    target_BNLP = torch.randn(2, 8, 3, 4, generator=g)
    keep_BK, masked_BM = random_masking(2, 8, 3, g)
    pred_BMLP = torch.randn(2, 5, 3, 4, generator=g)
    loss = masked_patch_mse(pred_BMLP, target_BNLP, masked_BM)
    visible_changed = target_BNLP.clone()
    for b in range(2):
        visible_changed[b, keep_BK[b]] = torch.randn(3, 3, 4, generator=g) * 100
    assert torch.equal(masked_patch_mse(pred_BMLP, visible_changed, masked_BM), loss)
    masked_changed = target_BNLP.clone()
    masked_changed[0, masked_BM[0, 0]] += torch.randn(3, 4, generator=g)   # not a shift: norm_pix ignores those
    assert not torch.equal(masked_patch_mse(pred_BMLP, masked_changed, masked_BM), loss)


def test_patchify_matches_the_encoder_patches():
    x_BLT = torch.arange(2 * 3 * 12.0).reshape(2, 3, 12)
    p_BNLP = patchify(x_BLT, 4)
    assert p_BNLP.shape == (2, 3, 3, 4)
    assert torch.equal(p_BNLP[1, 2, 0], x_BLT[1, 0, 8:12])


def test_training_step_depends_only_on_seed_and_step():
    method = build_method(tiny_config(), generator_seed=0)
    first = assert_step_depends_only_on_seed_and_step(method, batch)["loss"]
    assert torch.isfinite(first)


def test_config_errors():
    error = config_error(build_method, tiny_config("method.params.mask_ratio=1.0"), 0)
    assert error.key == "method.params.mask_ratio"
    error = config_error(build_method, tiny_config("method.params.mask_ratio=0.95"), 0)   # 10 patches: 0.95 keeps none
    assert error.key == "method.params.mask_ratio"
    error = config_error(build_method, tiny_config("method.params.decoder_heads=3"), 0)
    assert error.key == "method.params.decoder_heads"
    cfg = dataclasses.replace(tiny_config(), encoder=EncoderConfig("xresnet1d18", {"base_width": 4}))
    assert config_error(build_method, cfg, 0).key == "encoder.name"


def test_training_lowers_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    method = build_method(tiny_config(), generator_seed=0)
    losses = train_steps(method, lambda _: batch(0), [step % 2 for step in range(10)], lr=3e-3)
    assert losses[-1] < 0.95 * losses[0]   # ~0.93 after 10 steps (noise signals, normalised targets)


def test_fsdp2_sharded_steps_match_the_plain_module(one_rank_group):
    cfg = tiny_config()
    plain, sharded = plain_and_sharded(lambda: build_method(cfg, generator_seed=0))
    assert train_steps(sharded, batch, range(2)) == pytest.approx(train_steps(plain, batch, range(2)), rel=1e-5)
