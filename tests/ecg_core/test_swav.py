"""SwAV: Sinkhorn-Knopp and the swapped-prediction loss against loop-by-loop references (1 process and 2 gloo
ranks), and the method's properties (unit-norm prototypes, the freeze, the queue and its checkpoint, CPU steps).

The 2-rank checks run this file as a script in two fresh processes (``RANK``/``WORLD_SIZE``/``MASTER_*`` in the
environment, as torchrun or submitit set them): each rank computes the codes of its part of a batch, and trains
a tiny FSDP2-sharded SwAV with a queue for a few steps, writing what the parent compares.

Shapes: ``B`` batch, ``K`` prototypes, ``V`` views, ``A`` assigned views, ``P`` projection, ``L`` leads,
``T`` time.
"""
from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import pytest
import torch

from ecg_core import distributed as D
from ecg_core.checkpoint import Checkpointer
from ecg_core.losses.swav import sinkhorn, swapped_prediction_loss
from ecg_core.methods import METHODS, Method, build_method, validate_method
from ecg_core.methods.swav import SwAV, SwAVConfig
from jobs.config import MethodConfig

from .dist_utils import run_ranks
from .method_utils import assert_scalars, config_error, full, full_state, recipe_config, train_steps, window_batch

B, T = 4, 128
# A small, quick SwAV: 18-layer encoder 4 wide, 16 prototypes in 8 dimensions.
TINY = ["encoder.name=xresnet1d18", "encoder.params.base_width=4", f"data.window={T}", f"data.batch_size={B}",
        "method.params.num_prototypes=16", "method.params.projection_hidden_dim=32",
        "method.params.projection_dim=8", "method.params.freeze_prototypes_steps=0", "method.params.queue_length=0",
        "method.params.queue_start_step=0"]
tiny_config = partial(recipe_config, "swav", *TINY)


# ------------------------------------------------------------------------------------------------
# Loop-by-loop references
# ------------------------------------------------------------------------------------------------

def reference_sinkhorn(scores_BK: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """Caron et al. 2020 Algorithm / reference ``sinkhorn``: one entry of the K x B plan at a time."""
    n, k_count = scores_BK.shape
    Q = [[math.exp(float(scores_BK[b, k]) / epsilon) for b in range(n)] for k in range(k_count)]
    total = sum(Q[k][b] for k in range(k_count) for b in range(n))
    Q = [[Q[k][b] / total for b in range(n)] for k in range(k_count)]
    for _ in range(iterations):
        for k in range(k_count):                 # each prototype's row -> 1/K
            row = sum(Q[k][b] for b in range(n))
            for b in range(n):
                Q[k][b] = Q[k][b] / row / k_count
        for b in range(n):                       # each sample's column -> 1/B
            column = sum(Q[k][b] for k in range(k_count))
            for k in range(k_count):
                Q[k][b] = Q[k][b] / column / n
    return torch.tensor([[Q[k][b] * n for k in range(k_count)] for b in range(n)], dtype=torch.float64)


def reference_swapped_loss(scores_VBK: torch.Tensor, codes_ABK: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 1-2: for each assigned view a, each other view v, each sample b: -sum_k q log softmax(s / tau)."""
    V, n, k_count = scores_VBK.shape
    per_assigned = []
    for a in range(codes_ABK.shape[0]):
        terms = []
        for v in range(V):
            if v == a:
                continue
            for b in range(n):
                logits = [scores_VBK[v, b, k] / temperature for k in range(k_count)]
                log_norm = torch.log(sum(torch.exp(x) for x in logits))
                terms.append(-sum(codes_ABK[a, b, k] * (logits[k] - log_norm) for k in range(k_count)))
        per_assigned.append(sum(terms) / len(terms))
    return sum(per_assigned) / len(per_assigned)


def random_scores(n: int, k: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * (2 * torch.rand(n, k, generator=g, dtype=torch.float64) - 1)   # cosine-like, in [-1, 1]


# ------------------------------------------------------------------------------------------------
# Sinkhorn
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, k", [(1, 3), (5, 4), (3, 7), (8, 8)])
@pytest.mark.parametrize("epsilon, iterations", [(0.05, 3), (0.5, 1), (0.1, 6)])
def test_sinkhorn_matches_the_reference(n, k, epsilon, iterations):
    scores = random_scores(n, k, seed=n * 100 + k)
    q = sinkhorn(scores, epsilon, iterations)
    assert q.dtype == torch.float64 and q.shape == (n, k) and not q.requires_grad
    assert torch.allclose(q, reference_sinkhorn(scores, epsilon, iterations), rtol=1e-10, atol=1e-12)


def test_sinkhorn_marginals():
    scores = random_scores(12, 5, seed=1)
    q = sinkhorn(scores, 0.05, 3)
    # The last step normalises columns: each sample's code is a distribution over prototypes.
    assert torch.allclose(q.sum(dim=1), torch.ones(12, dtype=torch.float64), atol=1e-12)
    assert (q >= 0).all()
    # Equal partition: with enough iterations every prototype receives B / K of the mass.
    q = sinkhorn(scores, 0.5, 500)
    assert torch.allclose(q.sum(dim=0), torch.full((5,), 12 / 5, dtype=torch.float64), atol=1e-8)


def test_sinkhorn_known_values_and_precision():
    # Equal scores: the uniform plan already satisfies both constraints.
    assert torch.allclose(sinkhorn(torch.zeros(3, 4)), torch.full((3, 4), 0.25))
    # A batch as large as K with one clear winner each: the codes are (nearly) one-hot on it.
    q = sinkhorn(torch.eye(4, dtype=torch.float64), 0.05, 3)
    assert torch.allclose(q, torch.eye(4, dtype=torch.float64), atol=1e-7)
    # A constant offset cancels in the first normalisation; in float32 exp(10 / 0.05) would overflow without
    # the max shift (the spread of the scores over epsilon must stay within float32's exp range, as in SwAV's
    # cosine scores: 2 / 0.05 = 40).
    scores = random_scores(6, 5, seed=2)
    assert torch.allclose(sinkhorn((scores + 10.0).float()).double(), reference_sinkhorn(scores, 0.05, 3),
                          rtol=1e-4, atol=1e-6)
    # bf16 scores (autocast) give float32 codes.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = sinkhorn(random_scores(4, 3, seed=3).bfloat16())
    assert q.dtype == torch.float32


def test_sinkhorn_bad_arguments():
    with pytest.raises(ValueError, match="epsilon"):
        sinkhorn(torch.zeros(2, 3), 0.0)
    with pytest.raises(ValueError, match="iterations"):
        sinkhorn(torch.zeros(2, 3), 0.05, 0)
    with pytest.raises(ValueError, match="scores"):
        sinkhorn(torch.zeros(2, 3, 4))


# ------------------------------------------------------------------------------------------------
# Swapped prediction loss
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("V, A", [(2, 2), (3, 2), (4, 1)])
@pytest.mark.parametrize("temperature", [0.1, 1.0])
def test_swapped_loss_matches_the_reference_and_its_gradient(V, A, temperature):
    n, k = 3, 5
    scores = torch.stack([random_scores(n, k, seed=10 + v) for v in range(V)])
    codes = torch.stack([sinkhorn(random_scores(n, k, seed=20 + a)) for a in range(A)])
    a_scores, b_scores = scores.clone().requires_grad_(True), scores.clone().requires_grad_(True)
    loss = swapped_prediction_loss(a_scores, codes, temperature)
    expected = reference_swapped_loss(b_scores, codes, temperature)
    assert loss.shape == () and loss.dtype == torch.float64
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)
    loss.backward()
    expected.backward()
    assert torch.allclose(a_scores.grad, b_scores.grad, atol=1e-12)


def test_swapped_loss_known_values_and_arguments():
    # Uniform codes and equal scores: cross-entropy of two uniform distributions = log K.
    assert swapped_prediction_loss(torch.zeros(2, 3, 6), torch.full((2, 3, 6), 1 / 6)).item() == \
        pytest.approx(math.log(6))
    with pytest.raises(ValueError, match="temperature"):
        swapped_prediction_loss(torch.zeros(2, 3, 6), torch.zeros(2, 3, 6), 0.0)
    with pytest.raises(ValueError):
        swapped_prediction_loss(torch.zeros(1, 3, 6), torch.zeros(1, 3, 6))     # one view: nothing to swap
    with pytest.raises(ValueError):
        swapped_prediction_loss(torch.zeros(2, 3, 6), torch.zeros(3, 3, 6))     # more codes than views


# ------------------------------------------------------------------------------------------------
# The method
# ------------------------------------------------------------------------------------------------

def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    return window_batch(B, T, seed)


def prototypes_of(method: SwAV) -> torch.Tensor:
    return full(method.prototypes.weight).detach().clone()


def _train(method: Method, steps: int, start: int = 0, optimizer=None, hook=None) -> list[float]:
    def each(step: int, out: dict[str, torch.Tensor]) -> None:
        assert_scalars(out, {"loss", "prototypes_used", "queue_in_use"})
        if hook is not None:
            hook(step)

    return train_steps(method, batch, range(start, start + steps), lr=1e-2, weight_decay=0.05, optimizer=optimizer,
                       each=each)


def test_registry_and_recipe():
    assert METHODS["swav"] is SwAV and issubclass(SwAV, Method) and SwAV.Config is SwAVConfig
    cfg = recipe_config("swav")
    config = validate_method(cfg.method)
    assert (config.num_prototypes, config.temperature, config.epsilon) == (3000, 0.1, 0.05)
    assert config.sinkhorn_iterations == 3
    assert (config.freeze_prototypes_steps, config.queue_length, config.queue_start_step) == (27, 16384, 399)
    assert (config.projection_hidden_dim, config.projection_dim, config.num_views) == (2048, 128, 2)
    # The contract test's tiny overrides build the recipe (queue buffer included).
    small = recipe_config("swav", "encoder.params.base_width=4", "data.window=500", "data.batch_size=4")
    method = build_method(small, generator_seed=0)
    assert method.queue_AQP.shape == (2, 16384, 128)
    assert all(k.startswith(("encoder.", "projector.", "prototypes.", "queue_AQP")) for k in method.state_dict())


@pytest.mark.parametrize("params, key", [
    ({"epsilon": 0.0}, "method.params.epsilon"),
    ({"num_prototypes": 0}, "method.params.num_prototypes"),
    ({"queue_length": -1}, "method.params.queue_length"),
    ({"num_views": 1}, "method.params.num_views"),
    ({"freeze_prototypes_epochs": 1}, "method.params.freeze_prototypes_epochs"),
])
def test_invalid_params_name_the_key(params, key):
    assert config_error(validate_method, MethodConfig(name="swav", params=params)).key == key


def test_two_cpu_steps_finite_and_changing_with_unit_norm_prototypes():
    torch.manual_seed(0)
    method = build_method(tiny_config(), generator_seed=0)
    assert torch.allclose(prototypes_of(method).norm(dim=1), torch.ones(16), atol=1e-6)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    losses = _train(method, 2)
    assert all(math.isfinite(x) for x in losses) and losses[0] != losses[1]
    # A cross-entropy against softmax(cos / 0.1): logits within [-10, 10], so at most log K + 20.
    assert 0 < losses[0] < math.log(16) + 20
    after = method.state_dict()
    for name in ("encoder.stem.0.0.weight", "projector.net.0.weight", "prototypes.weight"):
        assert not torch.equal(before[name], after[name]), name
    assert torch.allclose(prototypes_of(method).norm(dim=1), torch.ones(16), atol=1e-6)


def test_prototypes_frozen_for_the_first_steps_then_trained(one_rank_group):
    torch.manual_seed(0)
    method = build_method(tiny_config("method.params.freeze_prototypes_steps=2"), generator_seed=0)
    D.shard_model(method, method.fsdp_blocks())
    initial = prototypes_of(method)
    history = []

    def record(step: int) -> None:
        history.append((step, prototypes_of(method), full(method.prototypes.weight.grad).clone()))
    _train(method, 3, hook=record)   # AdamW with weight decay 0.05
    for step, weight, grad in history:
        # Frozen: zero gradient, so Adam moves them by 0; weight decay's shrinking is undone by the
        # re-normalisation (float rounding only). Then trained, and put back on the unit sphere.
        assert torch.count_nonzero(grad).item() == (0 if step < 2 else grad.numel()), step
        assert torch.allclose(weight, initial, rtol=0, atol=1e-6) == (step < 2), step
        assert torch.allclose(weight.norm(dim=1), torch.ones(16), atol=1e-6)


def test_queue_fills_with_past_projections_and_is_used_once_full():
    torch.manual_seed(0)
    method = build_method(tiny_config("method.params.queue_length=8", "method.params.queue_start_step=1"), 0)
    pushed: list[torch.Tensor] = []
    original_push = method._push_to_queue

    def push(z_ABP: torch.Tensor) -> None:
        pushed.append(z_ABP.clone())
        original_push(z_ABP)
    method._push_to_queue = push
    in_use = []

    def each(step: int, out: dict[str, torch.Tensor]) -> None:
        in_use.append(out["queue_in_use"].item())
        if step == 0:   # before queue_start_step: nothing pushed
            assert not pushed and torch.equal(method.queue_AQP, torch.zeros(2, 8, 8))
    train_steps(method, batch, range(5), lr=1e-2, each=each)
    # Filled from step 1, B = 4 rows a step: full (8 rows) after steps 1 and 2, so used from step 3 on.
    assert in_use == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert len(pushed) == 4
    # Newest first: rows 0-3 = step 4's projections of each assigned view, rows 4-7 = step 3's.
    expected_AQP = torch.cat([pushed[-1], pushed[-2]], dim=1)
    assert torch.equal(method.queue_AQP, expected_AQP)
    assert torch.allclose(method.queue_AQP.norm(dim=2), torch.ones(2, 8), atol=1e-6)


def test_queue_enters_the_codes():
    """Same step and views, queue used or not: only the codes can differ, and they do."""
    torch.manual_seed(0)
    method = build_method(tiny_config("method.params.queue_length=8"), 0)
    method.eval()   # BatchNorm with running statistics: both calls see the same network
    queue = torch.nn.functional.normalize(torch.randn(2, 8, 8), dim=2)
    losses = {}
    for use in (False, True):
        method._queue_in_use = lambda step, batch, use=use: use
        with torch.no_grad():
            method.queue_AQP.copy_(queue)
            out = method(batch(), 3)
        assert out["queue_in_use"].item() == float(use)
        losses[use] = out["loss"].item()
    assert math.isfinite(losses[True]) and losses[True] != losses[False]


def test_resume_across_the_freeze_with_a_queue_is_exact(one_rank_group, tmp_path):
    """4 straight steps == 2 + checkpoint + resume + 2: the queue and the (frozen, then trained)
    prototypes are part of the checkpoint, and the optimizer state of frozen prototypes resumes right."""
    cfg = tiny_config("method.params.queue_length=8", "method.params.freeze_prototypes_steps=3")

    def build():
        torch.manual_seed(0)
        method = build_method(cfg, generator_seed=0)
        D.shard_model(method, method.fsdp_blocks())
        return method, torch.optim.AdamW(method.parameters(), lr=1e-2, weight_decay=0.05)

    straight, opt = build()
    straight_losses = _train(straight, 4, optimizer=opt)

    first, opt = build()
    losses = _train(first, 2, optimizer=opt)
    assert first.queue_AQP.abs().sum() > 0
    Checkpointer(tmp_path).save(2, first, opt, {"step": 2}, {}, "method: swav\n")
    resumed, opt = build()
    assert resumed.queue_AQP.abs().sum() == 0
    assert Checkpointer(tmp_path).load(resumed, opt)["step"] == 2
    assert torch.equal(resumed.queue_AQP, first.queue_AQP)
    losses += _train(resumed, 2, start=2, optimizer=opt)
    assert losses == straight_losses
    expected, got = full_state(straight), full_state(resumed)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


# ------------------------------------------------------------------------------------------------
# Two gloo ranks
# ------------------------------------------------------------------------------------------------

ROWS = (3, 5)          # rank 0 and rank 1 rows of the Sinkhorn batch (unequal on purpose)
K_DIST, QUEUE = 6, 16


def test_two_ranks(tmp_path):
    run_ranks(_on_rank, 2, {"out": str(tmp_path)}, timeout=120)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    # Distributed Sinkhorn on the two parts == 1-process Sinkhorn on the whole batch.
    scores = random_scores(sum(ROWS), K_DIST, seed=5)
    expected = sinkhorn(scores, 0.05, 3)
    assert torch.allclose(torch.cat([r["codes"] for r in results]), expected, rtol=1e-12, atol=1e-14)
    assert not torch.allclose(results[0]["codes"], sinkhorn(scores[:ROWS[0]], 0.05, 3))   # not per rank

    # The queue is the same on both ranks, and rank r's share holds rank r's own last projections.
    queue0, queue1 = results[0]["queue"], results[1]["queue"]
    assert torch.equal(queue0, queue1)
    share = QUEUE // 2
    for rank, result in enumerate(results):
        last, before = result["pushed"][-1], result["pushed"][-2]     # (A, B, P) each
        own_ASP = queue0[:, rank * share:(rank + 1) * share]
        assert torch.equal(own_ASP, torch.cat([last, before], dim=1))
    assert results[0]["losses"] != results[1]["losses"] and all(math.isfinite(x) for x in results[0]["losses"])
    assert results[0]["in_use"] == [0.0, 0.0, 0.0, 1.0]


def _on_rank(info, args) -> None:
    """One rank of the test above (a :func:`dist_utils.run_ranks` scenario); results go to ``args["out"]``."""
    out_dir = Path(args["out"])
    scores = random_scores(sum(ROWS), K_DIST, seed=5)
    start = sum(ROWS[:info.rank])
    codes = sinkhorn(scores[start:start + ROWS[info.rank]], 0.05, 3)

    # Per-rank queue share 8 = 2 batches of 4: filled after steps 0 and 1... used from step 2; here
    # queue_start_step=1 so it is used from step 3.
    torch.manual_seed(0)
    method = build_method(tiny_config(f"method.params.queue_length={QUEUE}", "method.params.queue_start_step=1"),
                          generator_seed=0)
    D.shard_model(method, method.fsdp_blocks())
    pushed = []
    original_push = method._push_to_queue

    def push(z_ABP):
        pushed.append(z_ABP.clone())
        original_push(z_ABP)
    method._push_to_queue = push
    in_use = []
    losses = train_steps(method, lambda step: batch(10 * step + info.rank), range(4), lr=1e-2,
                         each=lambda _, out: in_use.append(out["queue_in_use"].item()))
    torch.save({"codes": codes, "queue": method.queue_AQP.clone(), "pushed": pushed, "losses": losses,
                "in_use": in_use}, out_dir / f"rank{info.rank}.pt")
