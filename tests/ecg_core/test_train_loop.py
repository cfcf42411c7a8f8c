"""The shared training loop on real store windows: exact resume, preemption stop, NaN stop, fallback.

One process (a 1-rank gloo group on a HashStore, FSDP2 applied as in the jobs). Shapes: B batch, L leads,
W window samples.
"""
from __future__ import annotations

import math
import warnings
from functools import partial

import pytest
import torch
from torch import nn

from ecg_core import distributed as D
from ecg_core import preemption
from ecg_core.checkpoint import Checkpointer, CheckpointFallbackWarning, NonFiniteLossError
from ecg_core.data.loader import DataConfig, StoreSource, WindowLoader
from ecg_core.schedules import lr_at
from ecg_core.train_loop import train

from .method_utils import full_state


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(12, 8, 5, padding=2)
        self.head = nn.Linear(8, 12)

    def forward(self, x_BLW: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x_BLW)).mean(-1))


def make(store):
    D.seed_everything(0)
    model = D.shard_model(Net(), [])
    D.seed_everything(0, 0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loader = WindowLoader(DataConfig(stores=[StoreSource(path=str(store))], window=256, batch_size=8, seed=3))
    return model, opt, loader


def step_fn(model, batch, step, nan_at=None, stop_at=None):
    x = batch["x"] + 0.01 * torch.randn_like(batch["x"])   # uses the (checkpointed) torch RNG
    loss = ((model(x) - batch["x"].std(-1)) ** 2).mean()
    if step == nan_at:
        loss = loss * float("nan")
    if step == stop_at:
        preemption.request_stop()
    return {"loss": loss, "aux": loss.detach() * 2}


def run(store, run_dir, total=4, **kw):
    model, opt, loader = make(store)
    lr_fn = partial(lr_at, base_lr=1e-2, warmup_steps=1, total_steps=4)
    result = train(model, opt, loader, partial(step_fn, model, **kw), run_dir=run_dir, total_steps=total, lr_fn=lr_fn,
                   grad_clip=1.0, checkpoint_every=2, config_yaml="x: 1\n", log_every=1)
    return model, result


def test_four_steps_equal_two_plus_resume_plus_two(demo_store, tmp_path, job_group):
    straight, result = run(demo_store, tmp_path / "a")
    assert result.step == 4 and result.resumed_from is None and result.samples_seen == 32
    run(demo_store, tmp_path / "b", total=2)
    resumed, result = run(demo_store, tmp_path / "b")
    assert result.resumed_from == 2 and result.step == 4 and result.samples_seen == 16
    a, b = full_state(straight), full_state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and training did something
    fresh, _, _ = make(demo_store)
    assert not torch.equal(full_state(fresh)["head.weight"], a["head.weight"])


def test_stop_request_saves_at_the_next_step_and_resume_is_exact(demo_store, tmp_path, job_group):
    straight, _ = run(demo_store, tmp_path / "a")
    with pytest.raises(preemption.Preempted) as info:
        run(demo_store, tmp_path / "b", stop_at=0)   # flag set during step 0: stop before step 1
    assert info.value.step == 1
    assert Checkpointer(tmp_path / "b").latest().name == "step_0000001"
    preemption.clear()
    resumed, result = run(demo_store, tmp_path / "b")
    assert result.resumed_from == 1
    a, b = full_state(straight), full_state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_loss_stops_without_saving_that_state(demo_store, tmp_path, job_group):
    with pytest.raises(NonFiniteLossError, match="step 2"):
        run(demo_store, tmp_path, total=4, nan_at=2)
    latest = Checkpointer(tmp_path).latest()
    assert latest.name == "step_0000002"
    model, _, _ = make(demo_store)
    Checkpointer(tmp_path).load(model)
    assert all(torch.isfinite(v).all() for v in full_state(model).values())


def test_damaged_newest_checkpoint_falls_back_with_a_warning(demo_store, tmp_path, job_group):
    run(demo_store, tmp_path, total=4)
    ckpts = sorted((tmp_path / "checkpoints").glob("step_*"))
    assert [p.name for p in ckpts] == ["step_0000002", "step_0000004"]
    (ckpts[-1] / ".metadata").write_bytes(b"garbage")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, result = run(demo_store, tmp_path, total=4)
    assert result.resumed_from == 2 and result.step == 4
    assert any(issubclass(w.category, CheckpointFallbackWarning) for w in caught)


def test_metrics_are_logged_with_throughput(demo_store, tmp_path, job_group):
    logged = []

    class Sink:
        def log(self, metrics, step):
            logged.append((step, metrics))

    model, opt, loader = make(demo_store)
    train(model, opt, loader, partial(step_fn, model), run_dir=tmp_path, total_steps=3,
          lr_fn=lambda s: 1e-3, checkpoint_every=10, config_yaml="", tracker=Sink(), log_every=1)
    assert [s for s, _ in logged] == [1, 2, 3]
    for _, m in logged:
        assert set(m) >= {"loss", "aux", "lr", "grad_norm", "samples_per_s"}
        assert math.isfinite(m["loss"]) and m["samples_per_s"] > 0 and m["lr"] == 1e-3
