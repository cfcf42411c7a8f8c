"""NT-Xent against a loop-by-loop reference of SimCLR eq. 1, and on 2 real gloo ranks against 1 process.

The 2-rank check runs this file as a script in two fresh processes (``RANK``/``WORLD_SIZE``/``MASTER_*``
in the environment, as torchrun or submitit set them); each rank computes the loss of its half of a
batch and writes the loss and the gradients of its rows.

Shapes: ``N`` pairs, ``D`` projection features.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ecg_core import distributed as D
from ecg_core.losses import nt_xent

from .dist_utils import run_ranks


def reference_nt_xent(z1_ND: torch.Tensor, z2_ND: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 1 of Chen et al. 2020, one anchor and one candidate at a time."""
    views = [*z1_ND, *z2_ND]                       # 2N views; view i's partner is (i + N) mod 2N
    n = len(z1_ND)

    def sim(u, v):
        return (u @ v) / (u.norm() * v.norm())

    losses = []
    for i, anchor in enumerate(views):
        partner = (i + n) % (2 * n)
        numerator = torch.exp(sim(anchor, views[partner]) / temperature)
        denominator = sum(torch.exp(sim(anchor, views[k]) / temperature) for k in range(2 * n) if k != i)
        losses.append(-torch.log(numerator / denominator))
    return torch.stack(losses).mean()


def pairs(n: int, d: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64)
    z2 = z1 + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)   # correlated views
    return z1, z2


@pytest.mark.parametrize("temperature", [0.05, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("n", [1, 2, 7])
def test_matches_the_reference_formula_and_its_gradient(temperature, n):
    z1, z2 = pairs(n, seed=n)
    a1, a2 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    b1, b2 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    loss = nt_xent(a1, a2, temperature)
    expected = reference_nt_xent(b1, b2, temperature)
    assert loss.dtype == torch.float64 and loss.shape == ()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10, abs=1e-12)
    loss.backward()
    expected.backward()
    assert torch.allclose(a1.grad, b1.grad, atol=1e-10) and torch.allclose(a2.grad, b2.grad, atol=1e-10)


def test_known_values():
    # One pair: no negatives, so the positive is the only candidate and the loss is 0.
    assert nt_xent(torch.randn(1, 4), torch.randn(1, 4), 0.1).item() == pytest.approx(0.0, abs=1e-6)
    # Identical, mutually orthogonal pairs: each anchor sees its partner at cos 1 and 2N-2 others at 0.
    z = torch.eye(4)
    expected = -math.log(math.exp(1 / 0.5) / (math.exp(1 / 0.5) + 6))
    assert nt_xent(z, z, 0.5).item() == pytest.approx(expected, rel=1e-6)


def test_cosine_similarity_ignores_scale_and_the_loss_is_symmetric():
    z1, z2 = pairs(5)
    base = nt_xent(z1, z2, 0.2)
    assert nt_xent(3.0 * z1, 0.1 * z2, 0.2).item() == pytest.approx(base.item(), rel=1e-12)
    assert nt_xent(z2, z1, 0.2).item() == pytest.approx(base.item(), rel=1e-12)


def test_low_precision_inputs_give_a_float32_loss():
    z1, z2 = pairs(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nt_xent(z1.bfloat16(), z2.bfloat16(), 0.1)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(nt_xent(z1, z2, 0.1).item(), rel=2e-2)


def test_bad_arguments():
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(torch.randn(2, 3), torch.randn(2, 3), 0.0)
    with pytest.raises(ValueError, match="shape|both"):
        nt_xent(torch.randn(2, 3), torch.randn(3, 3), 0.1)


def test_one_rank_process_group_gives_the_same_loss(no_dist_env):
    z1, z2 = pairs(5)
    without = nt_xent(z1, z2, 0.1)
    D.init_distributed(prefer_cuda=False)
    assert torch.equal(nt_xent(z1, z2, 0.1), without)


# ------------------------------------------------------------------------------------------------
# Two gloo ranks, each with half of the batch
# ------------------------------------------------------------------------------------------------

N_PER_RANK, TEMPERATURE = 3, 0.2


def test_two_ranks_with_half_batches_equal_one_process_with_the_full_batch(tmp_path):
    run_ranks(_on_rank, 2, {"out": str(tmp_path)}, timeout=120)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    z1, z2 = (z.requires_grad_(True) for z in pairs(2 * N_PER_RANK, seed=11))
    full = nt_xent(z1, z2, TEMPERATURE)
    full.backward()
    # The global loss is the mean of the ranks' losses (equal numbers of anchors) ...
    assert sum(r["loss"] for r in results) / 2 == pytest.approx(full.item(), rel=1e-12)
    # ... and each rank's gradient is that of the sum of both ranks' losses: 2 x the full-batch gradient.
    for rank, result in enumerate(results):
        rows = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
        assert torch.allclose(torch.tensor(result["grad1"], dtype=torch.float64) / 2, z1.grad[rows], atol=1e-12)
        assert torch.allclose(torch.tensor(result["grad2"], dtype=torch.float64) / 2, z2.grad[rows], atol=1e-12)


def _on_rank(info, args) -> None:
    """One rank of the test above (a :func:`dist_utils.run_ranks` scenario); results go to ``args["out"]``."""
    out_dir = Path(args["out"])
    z1, z2 = pairs(2 * N_PER_RANK, seed=11)
    rows = slice(info.rank * N_PER_RANK, (info.rank + 1) * N_PER_RANK)
    a1, a2 = z1[rows].clone().requires_grad_(True), z2[rows].clone().requires_grad_(True)
    loss = nt_xent(a1, a2, TEMPERATURE)
    loss.backward()
    result = {"loss": loss.item(), "grad1": a1.grad.tolist(), "grad2": a2.grad.tolist()}
    (out_dir / f"rank{info.rank}.json").write_text(json.dumps(result))
