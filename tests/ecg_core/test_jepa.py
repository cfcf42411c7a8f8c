"""JEPA (1-D I-JEPA): multi-block masks, the context encoder sees its context (the seed's zeroing bug is
absent), predictor shapes, the loss, the EMA target encoder, CPU training steps (plain and FSDP2).

Shapes: ``B`` batch, ``L`` leads, ``T`` time, ``N`` patches, ``C`` context, ``M`` blocks, ``K`` block length.
"""
from __future__ import annotations

import dataclasses
import math
from functools import partial

import pytest
import torch

from ecg_core.config import ConfigError
from ecg_core.methods import METHODS, build_method, validate_method
from ecg_core.methods.jepa import JEPA, JEPAConfig, block_length, jepa_loss, sample_jepa_masks

from .method_utils import (
    assert_step_depends_only_on_seed_and_step, plain_and_sharded, recipe_config, train_steps, window_batch,
)

B, T = 4, 500
# 50 patches of 10 samples: the seed's 4 blocks of up to 20 % fit with at least 6 context patches.
TINY = ["encoder.params.depth=2", "encoder.params.dim=32", "encoder.params.heads=2", "encoder.params.patch_size=10",
        f"data.window={T}", "method.params.predictor_dim=16", "method.params.predictor_depth=1",
        "method.params.predictor_heads=2"]
tiny_config = partial(recipe_config, "jepa", *TINY)


def build(*overrides: str, total_steps: int | None = 100) -> JEPA:
    cfg = tiny_config(*overrides)
    method = build_method(cfg, generator_seed=0)
    method.total_steps = total_steps   # build_method passed pretrain_cfg.steps (the recipe's); set it here
    return method


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    return window_batch(B, T, seed, start_dtype=torch.int64)


def test_recipe_builds_the_documented_method():
    assert METHODS["jepa"] is JEPA and JEPA.Config is JEPAConfig
    cfg = recipe_config("jepa")
    assert validate_method(cfg.method, window=cfg.data.window) == JEPAConfig()
    assert cfg.method.params == dataclasses.asdict(JEPAConfig())
    assert cfg.encoder.name == "vit1d_tiny" and cfg.data.window // cfg.encoder.params["patch_size"] == 40
    with torch.device("meta"):
        method = build_method(cfg, generator_seed=0)
    assert isinstance(method, JEPA)
    assert method.encoder is not method.context_encoder
    assert not any(p.requires_grad for p in method.encoder.parameters())


SEED_MASKS = dict(num_target_blocks=4, target_scale=(0.15, 0.2), context_scale=(0.85, 1.0), min_context=6)


@pytest.mark.parametrize("n_patches, kwargs", [
    (40, SEED_MASKS),                                                                   # the seed's geometry
    (20, dict(num_target_blocks=4, target_scale=(0.2, 0.2), context_scale=(0.3, 0.5), min_context=4)),  # fallback
    (10, dict(num_target_blocks=1, target_scale=(0.1, 0.9), context_scale=(1.0, 1.0), min_context=1)),
])
def test_masks_are_disjoint_sized_and_counted_as_configured(n_patches, kwargs):
    lo = block_length(n_patches, kwargs["target_scale"][0])
    hi = block_length(n_patches, kwargs["target_scale"][1])
    sizes = set()
    for seed in range(40):
        context_BC, targets_BMK = sample_jepa_masks(16, n_patches, generator=torch.Generator().manual_seed(seed),
                                                    **kwargs)
        Bn, M, K = targets_BMK.shape
        assert Bn == 16 and M == kwargs["num_target_blocks"] and lo <= K <= hi
        sizes.add(K)
        assert context_BC.shape[0] == 16 and context_BC.shape[1] >= kwargs["min_context"] >= 1
        for b in range(16):
            context = context_BC[b].tolist()
            assert context == sorted(set(context)) and 0 <= context[0] and context[-1] < n_patches
            for m in range(M):
                block = targets_BMK[b, m].tolist()
                assert block == list(range(block[0], block[0] + K)) and block[-1] < n_patches  # contiguous
                assert not set(block) & set(context)
    # int(N s) for s uniform in [low, high): every length from int(N low) to ceil(N high) - 1 occurs.
    assert sizes == set(range(lo, max(lo, math.ceil(n_patches * kwargs["target_scale"][1]) - 1) + 1))


def test_masks_depend_only_on_the_generator():
    first = sample_jepa_masks(8, 40, generator=torch.Generator().manual_seed(3), **SEED_MASKS)
    again = sample_jepa_masks(8, 40, generator=torch.Generator().manual_seed(3), **SEED_MASKS)
    other = sample_jepa_masks(8, 40, generator=torch.Generator().manual_seed(4), **SEED_MASKS)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(first, other))


def test_seed_context_sizes():
    """Seed-methods.md 4.3: int(40 s) = 6-7 (8 only at s = 0.2 exactly) patches per target block."""
    for seed in range(20):
        context_BC, targets_BMK = sample_jepa_masks(32, 40, generator=torch.Generator().manual_seed(seed),
                                                    **SEED_MASKS)
        assert 6 <= targets_BMK.shape[2] <= 7 and 6 <= context_BC.shape[1] <= 39


def test_jepa_loss_matches_the_naive_formula():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 2, 5, generator=g), torch.randn(3, 2, 5, generator=g)
    diffs = [float(pred[i, j, k] - target[i, j, k]) for i in range(3) for j in range(2) for k in range(5)]
    assert jepa_loss(pred, target, "l1").item() == pytest.approx(sum(abs(d) for d in diffs) / 30, rel=1e-6)
    assert jepa_loss(pred, target, "l2").item() == pytest.approx(sum(d * d for d in diffs) / 30, rel=1e-6)
    assert jepa_loss(target, target).item() == 0.0
    target.requires_grad_(True)
    pred.requires_grad_(True)
    jepa_loss(pred, target).backward()
    assert target.grad is None and pred.grad is not None   # stop-gradient on the targets


def test_context_encoder_sees_the_content_of_its_context():
    """The seed zeroed the kept tokens; here the context encoder's output depends on the context patches'
    content and on nothing else."""
    torch.manual_seed(0)
    method = build()
    x_BLT = batch()["x"]
    context_BC, _ = sample_jepa_masks(B, 50, generator=torch.Generator().manual_seed(0), **SEED_MASKS)
    z_BCD = method.context_encoder.tokens(x_BLT, context_BC)
    outside = sorted(set(range(50)) - set(context_BC[0].tolist()))[0]
    x2 = x_BLT.clone()
    x2[0, :, outside * 10:(outside + 1) * 10] = 7.0
    torch.testing.assert_close(method.context_encoder.tokens(x2, context_BC), z_BCD)
    inside = int(context_BC[0, 0])
    x3 = x_BLT.clone()
    x3[0, :, inside * 10:(inside + 1) * 10] = 7.0
    assert not torch.allclose(method.context_encoder.tokens(x3, context_BC)[0], z_BCD[0])
    zeroed = x_BLT.clone()
    zeroed[0] = 0.0
    assert not torch.allclose(method.context_encoder.tokens(zeroed, context_BC)[0], z_BCD[0])


def test_predictor_output_shape():
    torch.manual_seed(0)
    method = build()
    context_BC, targets_BMK = sample_jepa_masks(B, 50, generator=torch.Generator().manual_seed(1), **SEED_MASKS)
    M, K = targets_BMK.shape[1:]
    z_BCD = method.context_encoder.tokens(batch()["x"], context_BC)
    pred = method.predictor(z_BCD.repeat_interleave(M, 0), context_BC.repeat_interleave(M, 0),
                            targets_BMK.reshape(B * M, K), 50)
    assert pred.shape == (B * M, K, 32)


def test_target_encoder_is_moved_by_the_ema_only():
    torch.manual_seed(0)
    method = build()
    assert all(torch.equal(t, o) for t, o in zip(method.encoder.parameters(), method.context_encoder.parameters()))
    opt = torch.optim.AdamW(method.parameters(), lr=1e-2, weight_decay=0.1)
    target_before = [p.detach().clone() for p in method.encoder.parameters()]
    online_before = [p.detach().clone() for p in method.context_encoder.parameters()]
    loss = method.training_step(batch(), 0)["loss"]
    loss.backward()
    assert all(p.grad is None for p in method.encoder.parameters())
    opt.step()
    assert all(torch.equal(p, q) for p, q in zip(method.encoder.parameters(), target_before))
    assert not all(torch.equal(p, q) for p, q in zip(method.context_encoder.parameters(), online_before))
    m = method.momentum(0)
    assert m == pytest.approx(0.996)
    method.after_optimizer_step(0)
    for t, before, o in zip(method.encoder.parameters(), target_before, method.context_encoder.parameters()):
        torch.testing.assert_close(t, m * before + (1 - m) * o, rtol=1e-6, atol=1e-7)


def test_momentum_goes_linearly_from_base_to_final():
    method = build(total_steps=100)
    assert method.momentum(0) == pytest.approx(0.996)
    assert method.momentum(50) == pytest.approx(0.998)
    assert method.momentum(100) == pytest.approx(1.0)
    assert build(total_steps=None).momentum(50) == pytest.approx(0.996)   # no step count: the base value


def test_training_step_depends_only_on_seed_and_step():
    out = assert_step_depends_only_on_seed_and_step(build(), batch)
    assert torch.isfinite(out["loss"]) and out["context_patches"].item() >= 6


def test_config_errors():
    with pytest.raises(ConfigError) as info:   # 10 patches: 4 blocks of 2 leave 2 < 6
        build_method(tiny_config("encoder.params.patch_size=50"), 0)
    assert info.value.key == "method.params.num_target_blocks"
    for override, key in [("method.params.loss=l3", "loss"), ("method.params.target_scale=[0.3, 0.2]", "target_scale"),
                          ("method.params.ema_momentum=[0.9]", "ema_momentum"),
                          ("method.params.predictor_heads=3", "predictor_heads"),
                          ("method.params.min_context=0", "min_context")]:
        with pytest.raises(ConfigError) as info:
            validate_method(tiny_config(override).method)
        assert info.value.key == f"method.params.{key}"


def test_fsdp2_sharded_steps_match_the_plain_module(one_rank_group):
    """Includes the EMA update on DTensor shards (step 1 reads the target updated after step 0)."""
    plain, sharded = plain_and_sharded(build)
    assert train_steps(sharded, batch, range(2)) == pytest.approx(train_steps(plain, batch, range(2)), rel=1e-5)
    for p, q in zip(sharded.encoder.parameters(), plain.encoder.parameters()):
        torch.testing.assert_close(p.full_tensor(), q.detach())
