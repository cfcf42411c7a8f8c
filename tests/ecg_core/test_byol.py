"""BYOL: the normalised-MSE loss against a naive formula, the recipe, the target network (frozen, in the
state, EMA-only, momentum schedule over the run's steps), CPU training steps plain and FSDP2-sharded.

The helpers here (tiny configs, batches, :func:`check_target_moves_only_by_ema`) are shared with
test_moco.py, MoCo v3 having the same online/target frame.

Shapes: ``B`` batch, ``L`` leads, ``T`` time, ``N`` samples, ``D`` features.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from ecg_core.losses import normalized_mse
from ecg_core.methods import METHODS, Method, build_method, validate_method
from ecg_core.methods.byol import BYOL, BYOLConfig
from jobs.config import MethodConfig, PretrainConfig

from .method_utils import (
    assert_scalars, config_error, full, plain_and_sharded, recipe_config, train_steps, window_batch,
)

B, T = 6, 128
TINY = ["encoder.name=xresnet1d18", "encoder.params.base_width=4", f"data.window={T}", "steps=10"]


def tiny_config(name: str, *overrides: str) -> PretrainConfig:
    return recipe_config(name, *TINY, *overrides)


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """What WindowLoader yields (only ``x`` is used)."""
    return window_batch(B, T, seed)


def online_target_pairs(method: Method):
    """(name, online parameter, target parameter) of the two EMA pairs."""
    for online, target in ((method.encoder, method.target_encoder), (method.projector, method.target_projector)):
        for (name, p), (_, xi) in zip(online.named_parameters(), target.named_parameters()):
            yield name, p, xi


def _train(method: Method, steps: int, lr: float = 1e-2) -> list[float]:
    return train_steps(method, batch, range(steps), lr=lr, weight_decay=0.1, each=lambda _, out: assert_scalars(out))


def check_target_moves_only_by_ema(method: Method, steps: int = 2) -> list[float]:
    """Per step: no gradient reaches the target, the optimizer (with weight decay) leaves it alone, and
    ``after_optimizer_step`` applies exactly ``m_k xi + (1 - m_k) theta`` with ``m_k`` of the schedule."""
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-2, weight_decay=0.1)
    losses = []
    for step in range(steps):
        out = method.training_step(batch(step), step)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        assert all(xi.grad is None for _, _, xi in online_target_pairs(method))
        before = [xi.detach().clone() for _, _, xi in online_target_pairs(method)]
        online_before = [p.detach().clone() for _, p, _ in online_target_pairs(method)]
        optimizer.step()
        assert all(torch.equal(xi, b) for (_, _, xi), b in zip(online_target_pairs(method), before))
        assert any(not torch.equal(p, b) for (_, p, _), b in zip(online_target_pairs(method), online_before))
        m = method.momentum(step)
        assert out["momentum"].item() == pytest.approx(m)
        method.after_optimizer_step(step)
        for (name, p, xi), b in zip(online_target_pairs(method), before):
            expected = m * b.double() + (1 - m) * p.detach().double()
            assert torch.allclose(xi.double(), expected, rtol=0, atol=1e-7), name
        losses.append(out["loss"].item())
    return losses


# ------------------------------------------------------------------------------------------------
# Loss
# ------------------------------------------------------------------------------------------------

def naive_normalized_mse(p_ND: torch.Tensor, z_ND: torch.Tensor) -> float:
    """BYOL eq. 2 written out: mean over n of sum_d (p_nd / |p_n| - z_nd / |z_n|)^2."""
    total = 0.0
    for p, z in zip(p_ND.tolist(), z_ND.tolist()):
        p_norm = max(math.sqrt(sum(v * v for v in p)), 1e-12)
        z_norm = max(math.sqrt(sum(v * v for v in z)), 1e-12)
        total += sum((a / p_norm - b / z_norm) ** 2 for a, b in zip(p, z))
    return total / len(p_ND)


@pytest.mark.parametrize("N, D_", [(1, 3), (5, 16), (32, 2)])
def test_normalized_mse_matches_the_naive_formula(N, D_):
    g = torch.Generator().manual_seed(N)
    p, z = torch.randn(N, D_, generator=g, dtype=torch.float64), torch.randn(N, D_, generator=g, dtype=torch.float64)
    assert normalized_mse(p, z).item() == pytest.approx(naive_normalized_mse(p, z), rel=1e-12, abs=1e-12)
    assert normalized_mse(p * 7.5, z * 0.01).item() == pytest.approx(naive_normalized_mse(p, z), rel=1e-12)


def test_normalized_mse_edge_cases():
    v = torch.tensor([[1.0, 2.0, -3.0]], dtype=torch.float64)
    assert normalized_mse(v, 3 * v).item() == pytest.approx(0.0, abs=1e-15)     # aligned: 0
    assert normalized_mse(v, -v).item() == pytest.approx(4.0)                   # opposite: 4
    assert normalized_mse(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])).item() == pytest.approx(2.0)
    zero = torch.zeros(1, 3, dtype=torch.float64)
    assert normalized_mse(zero, v).item() == pytest.approx(2.0)                  # zero vector: cos 0, finite
    assert normalized_mse(v.bfloat16(), v.bfloat16()).dtype == torch.float32    # low precision computed in fp32
    with pytest.raises(ValueError, match="both"):
        normalized_mse(torch.randn(2, 3), torch.randn(3, 3))


def test_normalized_mse_gradient_matches_autograd_of_the_formula():
    g = torch.Generator().manual_seed(3)
    p = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    z = torch.randn(4, 5, generator=g, dtype=torch.float64)
    normalized_mse(p, z).backward()
    q = p.detach().clone().requires_grad_(True)
    (2 - 2 * (q * z).sum(1) / (q.norm(dim=1) * z.norm(dim=1))).mean().backward()
    assert torch.allclose(p.grad, q.grad, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# Registry, recipe, config
# ------------------------------------------------------------------------------------------------

def test_registry_and_recipe():
    assert METHODS["byol"] is BYOL and BYOL.Config is BYOLConfig
    cfg = recipe_config("byol")
    # The recipe spells out the method's defaults, so the two cannot drift apart.
    assert validate_method(cfg.method) == BYOLConfig()
    assert cfg.method.params == dataclasses.asdict(BYOLConfig())
    assert cfg.encoder.name == "xresnet1d50" and cfg.data.window == 2500
    method = build_method(cfg, generator_seed=0)
    assert isinstance(method, BYOL) and method.total_steps == cfg.steps == 53000
    assert [type(t).__name__ for t in method.augment.transforms] == ["RandomResizedCrop", "TimeOut"]
    assert method.momentum(0) == pytest.approx(0.996) and method.momentum(53000) == 1.0


@pytest.mark.parametrize("params, key", [
    ({"base_momentum": 1.5}, "method.params.base_momentum"),
    ({"final_momentum": -0.1}, "method.params.final_momentum"),
    ({"total_steps": -1}, "method.params.total_steps"),
    ({"projection_dim": 0}, "method.params.projection_dim"),
    ({"predictor_hidden_dim": 0}, "method.params.predictor_hidden_dim"),
    ({"temperature": 0.1}, "method.params.temperature"),          # not a BYOL parameter
    ({"augmentations": [{"name": "mixup"}]}, "method.params.augmentations[0].name"),
])
def test_invalid_params_name_the_key(params, key):
    assert config_error(validate_method, MethodConfig(name="byol", params=params)).key == key


def test_schedule_length_from_the_run_or_the_params():
    assert build_method(tiny_config("byol"), 0).total_steps == 10
    method = build_method(tiny_config("byol", "method.params.total_steps=40"), 0)
    assert method.total_steps == 40 and method.momentum(20) == pytest.approx(0.998)
    cfg = tiny_config("byol")
    encoder = build_method(cfg, 0).encoder
    with pytest.raises(ValueError, match="total_steps"):
        BYOL(validate_method(cfg.method), encoder, window=T, generator_seed=0)


# ------------------------------------------------------------------------------------------------
# Target network and training
# ------------------------------------------------------------------------------------------------

def test_target_is_a_frozen_copy_in_the_state():
    torch.manual_seed(0)
    method = build_method(tiny_config("byol"), generator_seed=0)
    state = method.state_dict()
    for online, target in (("encoder.", "target_encoder."), ("projector.", "target_projector.")):
        own = {k[len(online):]: v for k, v in state.items() if k.startswith(online)}
        copy = {k[len(target):]: v for k, v in state.items() if k.startswith(target)}
        assert own.keys() == copy.keys() and all(torch.equal(own[k], copy[k]) for k in own)
    assert not any(k.startswith("target_predictor") for k in state)      # the target has no predictor
    assert all(not p.requires_grad for p in [*method.target_encoder.parameters(),
                                             *method.target_projector.parameters()])
    assert all(p.requires_grad for p in [*method.encoder.parameters(), *method.predictor.parameters()])
    blocks = method.fsdp_blocks()
    assert {id(p) for b in blocks for p in b.parameters()} == {id(p) for p in method.parameters()}


def test_two_cpu_steps_finite_changing_and_target_moves_only_by_ema():
    torch.manual_seed(0)
    method = build_method(tiny_config("byol"), generator_seed=0)
    losses = check_target_moves_only_by_ema(method)
    assert all(math.isfinite(v) for v in losses) and losses[0] != losses[1]
    assert all(0 <= v <= 8 for v in losses)   # two terms of 2 - 2 cos


def test_fsdp2_sharded_steps_match_the_plain_module(one_rank_group):
    cfg = tiny_config("byol")
    plain, sharded = plain_and_sharded(lambda: build_method(cfg, generator_seed=0))
    assert _train(sharded, 2) == pytest.approx(_train(plain, 2), rel=1e-5)
    for (name, a), b in zip(plain.state_dict().items(), sharded.state_dict().values()):
        if name.startswith("target_"):
            assert torch.allclose(a, full(b), atol=1e-6), name
