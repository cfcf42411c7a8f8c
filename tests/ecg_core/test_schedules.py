"""Schedules are pure functions of the step: known values, shape, edges, bad arguments."""

import math

import pytest
import torch

from ecg_core.schedules import SCHEDULES, cosine_ramp, lr_at, set_lr

KW = dict(base_lr=1.0, warmup_steps=10, total_steps=110)


def test_warmup_starts_small_and_reaches_base():
    assert lr_at(0, **KW) == pytest.approx(1 / 11)
    assert lr_at(4, **KW) == pytest.approx(5 / 11)
    assert lr_at(9, **KW) == pytest.approx(10 / 11)
    assert lr_at(10, **KW) == pytest.approx(1.0)
    warm = [lr_at(s, **KW) for s in range(11)]
    assert all(b > a for a, b in zip(warm, warm[1:]))


@pytest.mark.parametrize("schedule, mid", [("cosine", 0.5), ("linear", 0.5), ("constant", 1.0)])
def test_decay_known_values(schedule, mid):
    kw = dict(KW, schedule=schedule)
    assert lr_at(60, **kw) == pytest.approx(mid)            # half-way through the decay
    end = 1.0 if schedule == "constant" else 0.0
    assert lr_at(110, **kw) == pytest.approx(end)
    assert lr_at(10_000, **kw) == pytest.approx(end)       # beyond the end: stays at the final value


def test_cosine_quarter_point_and_min_lr():
    assert lr_at(35, **KW) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    kw = dict(KW, min_lr_ratio=0.1, base_lr=2.0)
    assert lr_at(110, **kw) == pytest.approx(0.2)
    assert lr_at(60, **kw) == pytest.approx(0.2 + 1.8 * 0.5)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_monotone_after_warmup(schedule):
    values = [lr_at(s, **KW, schedule=schedule, min_lr_ratio=0.05) for s in range(10, 130)]
    assert all(b <= a for a, b in zip(values, values[1:]))
    assert min(values) == pytest.approx(0.05)


def test_no_warmup_and_all_warmup():
    assert lr_at(0, base_lr=3.0, warmup_steps=0, total_steps=100) == pytest.approx(3.0)
    assert lr_at(5, base_lr=3.0, warmup_steps=10, total_steps=10) == pytest.approx(3.0 * 6 / 11)
    assert lr_at(10, base_lr=3.0, warmup_steps=10, total_steps=10) == pytest.approx(0.0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(schedule="step"), "unknown schedule"),
    (dict(step=-1), "step must be"),
    (dict(total_steps=0), "total_steps"),
    (dict(warmup_steps=200), "warmup_steps"),
    (dict(min_lr_ratio=1.5), "min_lr_ratio"),
])
def test_bad_arguments(kwargs, match):
    args = dict(step=0, base_lr=1.0, warmup_steps=10, total_steps=100) | kwargs
    with pytest.raises(ValueError, match=match):
        lr_at(**args)


def test_cosine_ramp_byol_momentum():
    # BYOL: tau_k = 1 - (1 - 0.996) (cos(pi k / K) + 1) / 2
    K = 1000
    for k in (0, 1, 250, 500, 999, 1000):
        expected = 1 - (1 - 0.996) * (math.cos(math.pi * k / K) + 1) / 2
        assert cosine_ramp(k, K, 0.996, 1.0) == pytest.approx(expected, abs=1e-15)
    assert cosine_ramp(0, K, 0.996, 1.0) == 0.996
    assert cosine_ramp(5000, K, 0.996, 1.0) == 1.0
    values = [cosine_ramp(k, K, 0.996, 1.0) for k in range(K + 1)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert cosine_ramp(500, 1000, 2.0, 0.0) == pytest.approx(1.0)   # decreasing ramps too
    with pytest.raises(ValueError):
        cosine_ramp(1, 0, 0.0, 1.0)


def test_set_lr_honours_lr_scale():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr_scale": 0.1}], lr=1.0)
    set_lr(opt, 0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.5, pytest.approx(0.05)]
    assert set(SCHEDULES) == {"cosine", "linear", "constant"}
