"""The EMA of target networks (ecg_core.ema): the momentum schedule, the update against a naive
per-parameter formula, and FSDP2-sharded updates (1 rank in-process, 2 gloo ranks with uneven shards)
equal to the unsharded one.

Shapes: ``B`` batch, ``C`` channels, ``T`` time.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.distributed.tensor import DTensor

from ecg_core import distributed as D
from ecg_core.ema import ema_update, make_target, momentum_at

from .dist_utils import run_ranks
from .method_utils import full


def net(seed: int) -> nn.Module:
    """Conv + batch norm + odd-sized linear (7 rows: uneven shards on 2 ranks), ``x_BCT (B, 3, 8) -> (B, 7)``."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv1d(3, 5, 3, padding=1), nn.BatchNorm1d(5), nn.ReLU(), nn.Flatten(),
                          nn.Linear(40, 7))
    with torch.no_grad():   # non-default batch-norm statistics, so that copying them is visible
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
        model[1].num_batches_tracked.fill_(seed + 3)
    return model


def naive_ema(target: nn.Module, online: nn.Module, m: float) -> dict[str, torch.Tensor]:
    """Reference: ``m * xi + (1 - m) * theta`` parameter by parameter (float64), buffers taken from online."""
    out = {}
    online_params = dict(online.named_parameters())
    for name, xi in target.named_parameters():
        out[name] = m * xi.detach().double() + (1 - m) * online_params[name].detach().double()
    for name, buf in online.named_buffers():
        out[name] = buf.detach().clone()
    return out


# ------------------------------------------------------------------------------------------------
# Schedule
# ------------------------------------------------------------------------------------------------

def test_momentum_schedule_endpoints_and_formula():
    K = 100
    assert momentum_at(0, K, 0.996) == pytest.approx(0.996, abs=1e-15)
    assert momentum_at(K, K, 0.996) == 1.0
    assert momentum_at(K + 50, K, 0.996) == 1.0          # after the run: stays at the final value
    assert momentum_at(K // 2, K, 0.99) == pytest.approx(0.995, abs=1e-15)
    for k in (1, 17, 63, 99):   # BYOL section 3.2: tau_k = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2
        assert momentum_at(k, K, 0.996) == pytest.approx(1 - 0.004 * (math.cos(math.pi * k / K) + 1) / 2, abs=1e-15)
    values = [momentum_at(k, K, 0.9, 0.99) for k in range(K + 1)]
    assert values[0] == pytest.approx(0.9) and values[-1] == pytest.approx(0.99)
    assert all(a <= b for a, b in zip(values, values[1:]))   # monotone


@pytest.mark.parametrize("args", [(0, 0, 0.99), (-1, 10, 0.99), (0, 10, 1.5), (0, 10, 0.99, -0.1)])
def test_momentum_schedule_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        momentum_at(*args)


# ------------------------------------------------------------------------------------------------
# Update, plain modules
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("m", [0.0, 0.5, 0.996, 0.99999])
def test_update_matches_the_naive_formula(m):
    target, online = net(0), net(1)
    expected = naive_ema(target, online, m)
    ema_update(target, online, m)
    for name, value in target.state_dict().items():
        if value.is_floating_point() and name in dict(target.named_parameters()):
            assert torch.allclose(value.double(), expected[name], rtol=0, atol=1e-7), name
        else:   # buffers are copied exactly, integer counters included
            assert torch.equal(value, expected[name]), name


def test_momentum_one_keeps_and_zero_copies_bitwise():
    target, online = net(0), net(1)
    before = {k: v.clone() for k, v in target.named_parameters()}
    ema_update(target, online, 1.0)
    assert all(torch.equal(p, before[k]) for k, p in target.named_parameters())
    ema_update(target, online, 0.0)
    assert all(torch.equal(p, dict(online.named_parameters())[k]) for k, p in target.named_parameters())


def test_update_records_no_autograd_and_leaves_online_alone():
    online = net(1)
    target = make_target(net(0))
    assert all(not p.requires_grad for p in target.parameters())
    online_before = {k: v.clone() for k, v in online.state_dict().items()}
    ema_update(target, online, 0.9)
    assert all(p.grad_fn is None and not p.requires_grad for p in target.parameters())
    assert all(torch.equal(v, online_before[k]) for k, v in online.state_dict().items())


def test_make_target_is_an_equal_independent_copy():
    online = net(2)
    target = make_target(online)
    assert all(torch.equal(a, b) for a, b in zip(online.state_dict().values(), target.state_dict().values()))
    assert all(p.requires_grad for p in online.parameters())
    with torch.no_grad():
        online[0].weight.add_(1.0)
    assert not torch.equal(online[0].weight, target[0].weight)


def test_update_rejects_mismatched_networks_and_momenta():
    with pytest.raises(ValueError, match="momentum"):
        ema_update(net(0), net(1), 1.2)
    with pytest.raises(ValueError, match="architecture|match"):
        ema_update(net(0), nn.Linear(40, 7), 0.9)
    other = net(1)
    other[4] = nn.Linear(40, 6)
    with pytest.raises(ValueError, match="match"):
        ema_update(net(0), other, 0.9)


# ------------------------------------------------------------------------------------------------
# FSDP2
# ------------------------------------------------------------------------------------------------

def _sharded(seed: int) -> nn.Module:
    model = net(seed)
    D.shard_model(model, [model[0], model[4]])
    return model


def test_fsdp2_one_rank_sharded_update_equals_unsharded(one_rank_group):
    plain_target, plain_online = net(0), net(1)
    target, online = _sharded(0), _sharded(1)
    assert all(isinstance(p, DTensor) for p in target.parameters())
    for m in (0.9, 0.5):
        ema_update(plain_target, plain_online, m)
        ema_update(target, online, m)
    for (name, a), b in zip(plain_target.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, full(b)), name
    # The sharded target's forward sees the updated weights (FSDP2 all-gathers from the local shards).
    x_BCT = torch.randn(4, 3, 8)
    assert torch.equal(plain_target(x_BCT), target(x_BCT))


def test_fsdp2_two_ranks_uneven_shards_equal_unsharded(tmp_path):
    run_ranks(_on_rank, 2, {"out": str(tmp_path)}, timeout=120)
    plain_target, plain_online = net(0), net(1)
    ema_update(plain_target, plain_online, 0.7)
    result = torch.load(tmp_path / "rank0.pt")
    assert result.keys() == plain_target.state_dict().keys()
    for name, value in plain_target.state_dict().items():
        assert torch.equal(value, result[name]), name
    shapes = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert shapes[0]["4.weight"] == [4, 40] and shapes[1]["4.weight"] == [3, 40]   # 7 rows: uneven shards


def _on_rank(info, args) -> None:
    """One rank of the test above (a :func:`dist_utils.run_ranks` scenario); results go to ``args["out"]``."""
    out_dir = Path(args["out"])
    target, online = _sharded(0), _sharded(1)
    ema_update(target, online, 0.7)
    local_shapes = {k: list(p.to_local().shape) for k, p in target.named_parameters()}
    state = {k: full(v).clone() for k, v in target.state_dict().items()}   # collective
    if info.rank == 0:
        torch.save(state, out_dir / "rank0.pt")
    (out_dir / f"rank{info.rank}.json").write_text(json.dumps(local_shapes))
