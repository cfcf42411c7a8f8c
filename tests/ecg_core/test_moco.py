"""MoCo v3: InfoNCE against a naive loop-by-loop formula (temperatures, edge cases, gradients, 2 gloo ranks
with gathered keys), the method's ``2 tau`` symmetric loss, heads, recipe, momentum schedule, the target
moving only by EMA, CPU steps.

Shapes: ``N`` samples per rank, ``D`` features.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from ecg_core.losses import info_nce
from ecg_core.methods import METHODS, build_method, validate_method
from ecg_core.methods.moco import MoCoV3, MoCoV3Config, moco_mlp
from jobs.config import MethodConfig

from .dist_utils import run_ranks
from .method_utils import config_error, recipe_config

N_PER_RANK, TEMPERATURE = 3, 0.2


def pairs(N: int, D_: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N, D_, generator=g, dtype=torch.float64),
            torch.randn(N, D_, generator=g, dtype=torch.float64))


def naive_info_nce(q_ND: torch.Tensor, k_ND: torch.Tensor, tau: float, offset: int = 0,
                   k_all: torch.Tensor | None = None) -> torch.Tensor:
    """Written out: mean over n of -log(exp(s(q_n, k_{offset+n}) / tau) / sum_m exp(s(q_n, k_m) / tau)),
    ``s`` the cosine similarity, ``k_all`` every rank's keys (default: the local ones). Differentiable."""
    keys = k_ND if k_all is None else k_all
    total = 0
    for n in range(q_ND.shape[0]):
        q = q_ND[n] / q_ND[n].norm()
        sims = [torch.dot(q, keys[m] / keys[m].norm()) / tau for m in range(keys.shape[0])]
        denominator = sum(torch.exp(s) for s in sims)
        total = total - torch.log(torch.exp(sims[offset + n]) / denominator)
    return total / q_ND.shape[0]


# ------------------------------------------------------------------------------------------------
# InfoNCE
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tau", [0.05, 0.2, 1.0, 10.0])
@pytest.mark.parametrize("N", [1, 4, 9])
def test_info_nce_matches_the_naive_formula(tau, N):
    q, k = pairs(N, seed=N)
    assert info_nce(q, k, tau).item() == pytest.approx(naive_info_nce(q, k, tau).item(), rel=1e-10, abs=1e-12)


def test_info_nce_gradients_match_the_naive_formula():
    q, k = pairs(5, seed=4)
    q1, k1 = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
    q2, k2 = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
    info_nce(q1, k1, 0.3).backward()
    naive_info_nce(q2, k2, 0.3).backward()
    assert torch.allclose(q1.grad, q2.grad, atol=1e-12) and torch.allclose(k1.grad, k2.grad, atol=1e-12)


def test_info_nce_temperature_edge_cases():
    q, k = pairs(6, seed=1)
    N = q.shape[0]
    # tau -> infinity: every logit ~0, the loss tends to log N
    assert info_nce(q, k, 1e6).item() == pytest.approx(math.log(N), abs=1e-5)
    # identical keys and queries, tiny tau: the positive dominates, the loss tends to 0, and stays finite
    assert 0 <= info_nce(q, q, 1e-3).item() < 1e-6
    # one sample: the only candidate is the positive, loss exactly 0 whatever tau
    assert info_nce(q[:1], k[:1], 0.07).item() == pytest.approx(0.0, abs=1e-15)
    # tiny tau with a wrong nearest key: large but finite (logsumexp, no overflow)
    loss = info_nce(q, -q, 1e-4)
    assert math.isfinite(loss.item()) and loss.item() > 1e3
    # fp32 for low-precision inputs; scale invariance
    assert info_nce(q.bfloat16(), k.bfloat16(), 0.2).dtype == torch.float32
    assert info_nce(3 * q, 0.5 * k, 0.2).item() == pytest.approx(info_nce(q, k, 0.2).item(), rel=1e-12)


@pytest.mark.parametrize("tau", [0.0, -0.5])
def test_info_nce_rejects_bad_arguments(tau):
    with pytest.raises(ValueError, match="temperature"):
        info_nce(*pairs(3), tau)
    with pytest.raises(ValueError, match="both"):
        info_nce(torch.randn(2, 3), torch.randn(3, 3), 0.2)


def test_info_nce_two_ranks_with_gathered_keys(tmp_path):
    """Each rank: its queries against the keys of both ranks, positives at ``rank * N + n``."""
    run_ranks(_on_rank, 2, {"out": str(tmp_path)}, timeout=120)
    q, k = pairs(2 * N_PER_RANK, seed=11)
    for rank in range(2):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        rows = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
        q_local = q[rows].clone().requires_grad_(True)
        expected = naive_info_nce(q_local, k[rows], TEMPERATURE, offset=rank * N_PER_RANK, k_all=k)
        expected.backward()
        assert result["loss"] == pytest.approx(expected.item(), rel=1e-12)
        assert torch.allclose(torch.tensor(result["grad"], dtype=torch.float64), q_local.grad, atol=1e-12)


def _on_rank(info, args) -> None:
    """One rank of the test above (a :func:`dist_utils.run_ranks` scenario); results go to ``args["out"]``."""
    out_dir = Path(args["out"])
    q, k = pairs(2 * N_PER_RANK, seed=11)
    rows = slice(info.rank * N_PER_RANK, (info.rank + 1) * N_PER_RANK)
    q_local = q[rows].clone().requires_grad_(True)
    loss = info_nce(q_local, k[rows], TEMPERATURE)   # keys without grad, as MoCo's momentum keys
    loss.backward()
    (out_dir / f"rank{info.rank}.json").write_text(json.dumps({"loss": loss.item(),
                                                               "grad": q_local.grad.tolist()}))


# ------------------------------------------------------------------------------------------------
# The method
# ------------------------------------------------------------------------------------------------

def test_registry_recipe_and_heads():
    assert METHODS["moco"] is MoCoV3 and MoCoV3.Config is MoCoV3Config
    cfg = recipe_config("moco")
    assert validate_method(cfg.method) == MoCoV3Config()
    assert cfg.method.params == dataclasses.asdict(MoCoV3Config())
    method = build_method(cfg, generator_seed=0)
    assert method.total_steps == cfg.steps
    assert method.momentum(0) == pytest.approx(0.99) and method.momentum(cfg.steps) == 1.0
    assert method.momentum(cfg.steps // 2) == pytest.approx(0.995)
    # builder.py _build_mlp(2, 2048, 4096, 256): bias-free Linear layers, last batch norm without affine
    linears = [m for m in method.projector.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2048, 4096), (4096, 256)]
    assert all(m.bias is None for m in linears)
    assert isinstance(method.projector[-1], nn.BatchNorm1d) and not method.projector[-1].affine
    assert [m.out_features for m in method.predictor.modules() if isinstance(m, nn.Linear)] == [4096, 256]
    assert len([m for m in moco_mlp(3, 8, 16, 4).modules() if isinstance(m, nn.Linear)]) == 3


@pytest.mark.parametrize("params, key", [
    ({"temperature": 0.0}, "method.params.temperature"),
    ({"base_momentum": 1.01}, "method.params.base_momentum"),
    ({"projection_layers": 0}, "method.params.projection_layers"),
    ({"queue_size": 65536}, "method.params.queue_size"),          # v3 has no queue
])
def test_invalid_params_name_the_key(params, key):
    assert config_error(validate_method, MethodConfig(name="moco", params=params)).key == key


def test_loss_is_two_tau_times_the_symmetric_info_nce():
    from .test_byol import tiny_config

    method = build_method(tiny_config("moco", "method.params.temperature=0.3"), generator_seed=0)
    q1, k1 = pairs(4, seed=5)
    q2, k2 = pairs(4, seed=6)
    expected = 2 * 0.3 * (naive_info_nce(q1, k2, 0.3) + naive_info_nce(q2, k1, 0.3))
    assert method.loss(q1, q2, k1, k2).item() == pytest.approx(expected.item(), rel=1e-10)


def test_two_cpu_steps_finite_changing_and_target_moves_only_by_ema():
    from .test_byol import B, check_target_moves_only_by_ema, tiny_config

    torch.manual_seed(0)
    method = build_method(tiny_config("moco", "method.params.projection_hidden_dim=32",
                                      "method.params.predictor_hidden_dim=32", "method.params.projection_dim=8"),
                          generator_seed=0)
    assert all(not p.requires_grad for p in method.target_encoder.parameters())
    losses = check_target_moves_only_by_ema(method)
    assert all(math.isfinite(v) for v in losses) and losses[0] != losses[1]
    # 2 tau * 2 InfoNCE terms, each at most about log B for a random network
    assert all(0 < v < 2 * 1.0 * 2 * (math.log(B) + 1) for v in losses)
