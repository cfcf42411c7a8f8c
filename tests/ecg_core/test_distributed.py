"""Process group set-up, collectives (on 2 real gloo ranks), sharding and seeding."""

import json

import pytest
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from ecg_core import distributed as D

from .dist_utils import gather_inputs, gather_loss, run_ranks, tiny_model


def test_single_process_init_twice_without_env(no_dist_env):
    for _ in range(2):
        info = D.init_distributed(prefer_cuda=False)
        assert info == D.DistInfo(0, 1, 0, torch.device("cpu"), "gloo")
        assert dist.is_initialized() and D.info() is info
        assert D.init_distributed(prefer_cuda=False) is info      # idempotent while the group is up
        assert D.is_main() and D.get_rank() == 0 and D.get_world_size() == 1
        D.barrier()
        assert D.broadcast_object({"a": 1}) == {"a": 1}
        assert D.all_gather_object(3) == [3] and D.all_ranks_true(True) and not D.all_ranks_true(False)
        t = torch.ones(2)
        dist.all_reduce(t)                  # a real 1-rank collective works
        assert t.tolist() == [1.0, 1.0]
        D.teardown()
        assert not dist.is_initialized()
        with pytest.raises(RuntimeError, match="init_distributed"):
            D.info()


def test_helpers_without_process_group(no_dist_env):
    assert not dist.is_initialized()
    assert D.get_rank() == 0 and D.get_world_size() == 1 and D.is_main()
    D.barrier()
    x = torch.randn(3, requires_grad=True)
    assert D.all_gather_with_grad(x) is x
    with pytest.raises(RuntimeError, match="process group"):
        D.shard_model(tiny_model(), [])


@pytest.mark.parametrize("env, match", [
    ({"RANK": "0"}, "set together"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "outside"),
    ({"RANK": "0", "WORLD_SIZE": "2"}, "MASTER_ADDR"),
    ({"RANK": "x", "WORLD_SIZE": "2"}, "not an integer"),
])
def test_bad_environment_is_explained(no_dist_env, monkeypatch, env, match):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises((RuntimeError, ValueError), match=match):
        D.init_distributed(prefer_cuda=False)
    assert not dist.is_initialized()


def test_env_world_size_one_needs_no_port(no_dist_env, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    info = D.init_distributed(prefer_cuda=False)
    assert (info.rank, info.world_size, info.backend) == (0, 1, "gloo")


def test_shard_model_single_rank_cpu_keeps_fp32(no_dist_env):
    info = D.init_distributed(prefer_cuda=False)
    D.seed_everything(0)
    model = tiny_model()
    D.shard_model(model, [model.encoder, model.head], mixed_precision=True)
    assert all(isinstance(p, DTensor) and p.dtype == torch.float32 for p in model.parameters())
    with D.autocast(info):                 # a no-op on CPU
        y = model(torch.randn(4, 2, 32))
    assert y.dtype == torch.float32 and y.shape == (4, 4)
    y.pow(2).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_seed_everything_same_init_and_distinct_rank_streams():
    import random

    import numpy as np

    draws = []
    for rank in (None, None, 0, 1):
        D.seed_everything(5, rank)
        draws.append((torch.rand(3).tolist(), np.random.rand(), random.random()))
    assert draws[0] == draws[1]                      # same seed: same init on every rank
    assert draws[2] != draws[3] and draws[0] != draws[2]
    assert D.seed_everything(5) == 5
    assert D.seed_everything(5, 1) == D.seed_everything(5, 1) != D.seed_everything(6, 0)


def test_set_deterministic():
    before = torch.are_deterministic_algorithms_enabled()
    try:
        D.set_deterministic()
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before)


def test_collectives_on_two_gloo_ranks(tmp_path):
    """all_gather_with_grad gradients equal the single-process gradient of the summed rank losses."""
    run_ranks("collectives", 2, {"out": str(tmp_path)})
    results = [json.loads((tmp_path / f"collectives_rank{r}.json").read_text()) for r in range(2)]

    xs = gather_inputs()
    x_full = torch.cat(xs).requires_grad_(True)
    total = sum(gather_loss(x_full[3 * r:3 * (r + 1)], x_full, r) for r in range(2))
    total.backward()
    for rank, res in enumerate(results):
        assert res["info"] == [rank, 2, rank, "cpu", "gloo"]
        assert torch.equal(torch.tensor(res["gathered"], dtype=torch.float64), torch.cat(xs))
        torch.testing.assert_close(torch.tensor(res["grad"], dtype=torch.float64),
                                   x_full.grad[3 * rank:3 * (rank + 1)], rtol=1e-12, atol=1e-12)
        assert res["broadcast"] == {"from": 0}
        assert res["objects"] == [0, 10]
        assert res["all_true"] is True and res["one_false"] is False
        assert "step 9" in res["nonfinite"] and "rank 1: [nan]" in res["nonfinite"]
        assert "rank 0" not in res["nonfinite"]
