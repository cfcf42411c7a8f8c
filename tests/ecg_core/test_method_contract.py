"""Contract tests of every method in ``ecg_core.methods.METHODS`` (DESIGN.md practice 8).

The method list is read when this module is imported, so a method registered in ``METHODS`` gets every
test below without anyone editing this file; its recipe must be ``experiments/<name>.yaml``. Each method:

(a) builds from its recipe (``validate_method`` accepts it; the recipe names the method);
(b) takes 2 CPU steps through ``ecg_core.train_loop.train`` on real demo-store windows with a finite loss
    that changes between the steps;
(c) exports its encoder through the checkpoint: ``load_encoder(<run dir>, fresh encoder)`` gives the trained
    encoder's weights exactly, and the same outputs;
(d) resumes bit-exactly: 4 straight steps == 2 + checkpoint + resume (fresh objects) + 2, with
    ``torch.use_deterministic_algorithms`` on;
(e) runs with 2 gloo ranks under FSDP2 as the pretraining job (separate processes through
    ``launcher.runner.JobRunner('pretrain')``, as tests/jobs/test_pretrain.py does).

(a)-(d) run in-process in a 1-rank gloo group, the method sharded with FSDP2 as in ``jobs.pretrain``;
(b), (c) and (d) share one run of 4 straight deterministic steps per method (:func:`straight_run`).
Recipes are made CPU-cheap by :func:`tiny_overrides`: window 500, batch 4, ``base_width=4`` for encoders
that take it, plus the method's own entries of :data:`TINY_OVERRIDES`.

Shapes: ``B`` batch, ``L`` leads, ``T`` time, ``D`` representation.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
from functools import partial
from pathlib import Path

import pytest
import torch

from ecg_core import distributed as D
from ecg_core.checkpoint import load_encoder
from ecg_core.config import load_config, save_config, to_yaml
from ecg_core.data.config import StoreSource
from ecg_core.data.loader import WindowLoader
from ecg_core.encoders import ENCODERS, build_encoder, validate_encoder
from ecg_core.methods import METHODS, build_method, validate_method
from ecg_core.schedules import lr_at
from ecg_core.train_loop import train
from jobs.config import PretrainConfig

from .dist_utils import run_pretrain_ranks
from .method_utils import full_state, recipe

ROOT = Path(__file__).resolve().parents[2]
TRAIN_FOLDS = [1, 2, 3, 4, 5, 6, 7, 8]

METHOD_NAMES = sorted(METHODS)
"""Every registered method, collected at import: a new method cannot skip these tests."""

# Extra dotted overrides per method, applied after the generic tiny ones of tiny_overrides(). Add your
# method here when its recipe is still too slow for 2 CPU cores at window 500 / batch 4 (e.g. a ViT
# encoder's depth and width, which the generic `encoder.params.base_width=4` does not cover), or does not
# fit the demo store (whose only label task is `labels`). Keep each method's tests under ~15 s on 2 cores.
TINY_OVERRIDES: dict[str, list[str]] = {
    "supervised": ["method.params.task=labels"],   # the recipe's task is PTB-XL's `all`
    "viewmaker": ["method.params.viewmaker_width=4"],   # width 32 costs ~3 s per CPU step (residual convs)
    "mae": ["encoder.params.depth=2", "encoder.params.dim=32", "encoder.params.heads=2", "method.params.decoder_dim=16",
            "method.params.decoder_depth=1", "method.params.decoder_heads=2"],
    # 64 px images of 16 px patches: 16 patches, the recipe's mask ratio 0.25 keeps 12
    "mae_image": ["encoder.params.image_size=64", "encoder.params.depth=2", "encoder.params.dim=32",
                  "encoder.params.heads=2", "method.params.decoder_dim=16", "method.params.decoder_depth=1",
                  "method.params.decoder_heads=2"],
    # patch_size 10: 50 patches, so the recipe's 4 target blocks of <= 20 % leave >= 6 context patches
    "jepa": ["encoder.params.depth=2", "encoder.params.dim=32", "encoder.params.heads=2",
             "encoder.params.patch_size=10", "method.params.predictor_dim=16", "method.params.predictor_depth=1",
             "method.params.predictor_heads=2"],
    "meclip": ["method.params.text_depth=1", "method.params.text_dim=16", "method.params.text_heads=2",
               "method.params.projection_hidden_dim=32", "method.params.projection_dim=16",
               "method.params.vocab_size=300"],
}

# Methods whose loss is constant by design, with why: (b) then checks that it stays exactly 0 instead of
# changing, and (c) that the exported weights are the initial ones.
CONSTANT_LOSS: dict[str, str] = {
    "random_init": "the baseline's loss is 0 * sum(z): the encoder must leave training as initialised",
}


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------

def tiny_overrides(name: str) -> list[str]:
    """The dotted overrides that make ``name``'s recipe cheap on a CPU (see the module docstring)."""
    encoder = load_config(PretrainConfig, [recipe(name)]).encoder.name
    out = ["data.window=500", "data.batch_size=4", "data.block_len=65536", "optim.warmup_steps=0"]
    if "base_width" in inspect.signature(ENCODERS[encoder]).parameters:   # the xresnet family
        out.append("encoder.params.base_width=4")
    return out + TINY_OVERRIDES.get(name, [])


def tiny_config(name: str, store: Path, *extra: str) -> PretrainConfig:
    """``name``'s recipe with the tiny overrides, training on the demo store's folds 1-8."""
    cfg = load_config(PretrainConfig, [recipe(name)], [*tiny_overrides(name), *extra])
    stores = [StoreSource(path=str(store), folds=list(TRAIN_FOLDS))]
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, stores=stores))


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ, e.g. {differ[:3]}"


class Sink:
    """A tracker keeping the logged metrics of each step."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.rows.append((step, metrics))


def build(cfg: PretrainConfig):
    """Method (FSDP2-sharded), optimizer and loader, set up as ``jobs.pretrain.run`` does."""
    D.seed_everything(cfg.seed)                 # the same initial weights on every rank
    method = build_method(cfg, generator_seed=cfg.seed)
    D.shard_model(method, method.fsdp_blocks(), mixed_precision=False)
    D.seed_everything(cfg.seed, D.get_rank())
    optimizer = torch.optim.AdamW(method.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                  weight_decay=cfg.optim.weight_decay)
    return method, optimizer, WindowLoader(cfg.data, rank=D.get_rank(), world_size=D.get_world_size())


def run(cfg: PretrainConfig, run_dir: Path, steps: int, schedule_steps: int = 4):
    """Train fresh objects to ``steps`` in ``run_dir`` (resuming from its checkpoint if any); the lr
    schedule is that of a ``schedule_steps`` run, so a run stopped at 2 and continued to 4 matches one
    that went straight to 4. Returns ``(method, losses by step, TrainResult)``."""
    method, optimizer, loader = build(cfg)
    lr_fn = partial(lr_at, base_lr=cfg.optim.lr, warmup_steps=min(cfg.optim.warmup_steps, schedule_steps),
                    total_steps=schedule_steps, schedule=cfg.optim.schedule, min_lr_ratio=cfg.optim.min_lr_ratio)
    sink = Sink()
    result = train(method, optimizer, loader, method.training_step, run_dir=run_dir, total_steps=steps, lr_fn=lr_fn,
                   grad_clip=cfg.optim.grad_clip, checkpoint_every=2, config_yaml=to_yaml(cfg), tracker=sink,
                   log_every=1, after_step=method.after_optimizer_step, desc=f"contract {cfg.method.name}")
    return method, {step: m["loss"] for step, m in sink.rows}, result


def initial_encoder_state(cfg: PretrainConfig) -> dict[str, torch.Tensor]:
    D.seed_everything(cfg.seed)
    return full_state(build_method(cfg, generator_seed=cfg.seed).encoder)


@contextlib.contextmanager
def deterministic_algorithms():
    """``ecg_core.distributed.set_deterministic`` for a while; the global flags are restored after."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
              torch.backends.cudnn.deterministic)
    D.set_deterministic()
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[1], before[2]


@pytest.fixture
def deterministic():
    with deterministic_algorithms():
        yield


@dataclasses.dataclass
class StraightRun:
    """What (b), (c) and (d) check of one method's 4 straight deterministic steps."""

    cfg: PretrainConfig
    run_dir: Path
    losses: dict[int, float]                  # step -> logged loss
    encoder: dict[str, torch.Tensor]          # the trained encoder's full state
    model: dict[str, torch.Tensor]            # the whole method's full state
    x_BLT: torch.Tensor                       # a batch of real windows
    z_BD: torch.Tensor                        # the trained encoder's output on it (eval mode)


_STRAIGHT: dict[str, StraightRun] = {}


def straight_run(name: str, store: Path, tmp_path_factory) -> StraightRun:
    """4 deterministic steps of ``name``, trained once per session and shared by (b), (c) and (d) (the
    tiny runs are cheap, but the 2-core budget is ~15 s per method). Call it inside a process group."""
    if name not in _STRAIGHT:
        cfg = tiny_config(name, store, "deterministic=true")
        run_dir = tmp_path_factory.mktemp(f"{name}-straight")
        with deterministic_algorithms():
            method, losses, result = run(cfg, run_dir, steps=4)
            assert result.step == 4 and result.resumed_from is None
            x_BLT = WindowLoader(cfg.data).take(1)[0]["x"]
            with torch.no_grad():
                z_BD = method.encoder.eval()(x_BLT)
        _STRAIGHT[name] = StraightRun(cfg, run_dir, losses, full_state(method.encoder), full_state(method),
                                      x_BLT, z_BD)
    return _STRAIGHT[name]


# ------------------------------------------------------------------------------------------------
# (a)-(d): in-process, 1-rank gloo group
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", METHOD_NAMES)
def test_builds_from_its_recipe(name, demo_store, job_group):
    path = recipe(name)
    assert path.is_file(), f"method {name!r} is in METHODS but has no recipe {path.relative_to(ROOT)}"
    cfg = load_config(PretrainConfig, [path])
    assert cfg.method.name == name
    assert isinstance(validate_method(cfg.method, window=cfg.data.window), METHODS[name].Config)
    validate_encoder(cfg.encoder)

    tiny = tiny_config(name, demo_store)
    D.seed_everything(0)
    method = build_method(tiny, generator_seed=0)
    assert type(method) is METHODS[name]
    assert method.encoder.out_dim >= 1
    assert any(k.startswith("encoder.") for k in method.state_dict())
    params = {id(p) for p in method.parameters()}
    assert {id(p) for b in method.fsdp_blocks() for p in b.parameters()} <= params
    batch = WindowLoader(tiny.data).take(1)[0]
    out = method.training_step(batch, 0)
    assert "loss" in out and all(torch.is_tensor(v) and v.shape == () for v in out.values())
    assert out["loss"].requires_grad, "the loss must be connected to the graph (the loop calls backward)"
    with torch.no_grad():
        z_BD = method.encoder.eval()(batch["x"])
    assert z_BD.shape == (tiny.data.batch_size, method.encoder.out_dim)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_two_cpu_steps_give_a_finite_changing_loss(name, demo_store, job_group, tmp_path_factory):
    losses = straight_run(name, demo_store, tmp_path_factory).losses
    assert sorted(losses) == [1, 2, 3, 4]
    assert all(math.isfinite(v) for v in losses.values()), losses
    if name in CONSTANT_LOSS:
        assert set(losses.values()) == {0.0}, CONSTANT_LOSS[name]
    else:
        assert losses[1] != losses[2], f"{name}: the loss did not change between two steps: {losses}"


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_encoder_export_round_trips_through_load_encoder(name, demo_store, job_group, tmp_path_factory):
    trained = straight_run(name, demo_store, tmp_path_factory)
    initial = initial_encoder_state(trained.cfg)
    if name in CONSTANT_LOSS:
        assert_same(trained.encoder, initial)
    else:   # training moved the encoder: the export below is not merely the initialisation
        assert any(not torch.equal(trained.encoder[k], initial[k]) for k in initial)

    D.seed_everything(12345)                     # other random weights, all of which must be overwritten
    fresh = build_encoder(trained.cfg.encoder)
    assert any(not torch.equal(v, trained.encoder[k]) for k, v in fresh.state_dict().items())
    assert load_encoder(trained.run_dir, fresh) is fresh   # the run directory: its newest checkpoint
    assert_same(full_state(fresh), trained.encoder)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(trained.x_BLT), trained.z_BD)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_four_steps_equal_two_plus_resume_plus_two(name, demo_store, job_group, deterministic, tmp_path,
                                                   tmp_path_factory):
    straight = straight_run(name, demo_store, tmp_path_factory)
    run(straight.cfg, tmp_path, steps=2)
    resumed, losses, result = run(straight.cfg, tmp_path, steps=4)   # fresh objects, from the step-2 checkpoint
    assert result.resumed_from == 2 and result.step == 4
    assert losses == {s: straight.losses[s] for s in (3, 4)}
    assert_same(full_state(resumed), straight.model)


# ------------------------------------------------------------------------------------------------
# (e): 2 gloo ranks in separate processes, through the runner (the pretraining job)
# ------------------------------------------------------------------------------------------------

# (e) swaps the deeper standard xresnets for the 18-layer one: process start-up and FSDP2's first DTensor
# dispatches (one per distinct parameter shape) dominate this test, and the method's distributed code paths
# (sharding, gathers, EMA updates of local shards) do not depend on the encoder's depth.
TWO_RANK_ENCODERS = {"xresnet1d34": "xresnet1d18", "xresnet1d50": "xresnet1d18", "xresnet1d101": "xresnet1d18"}


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_two_gloo_ranks_under_fsdp2(name, demo_store, tmp_path):
    cfg = tiny_config(name, demo_store, "steps=2", "checkpoint_every=2", "log_every=1", "deterministic=true",
                      "tracking.mode=disabled")
    if cfg.encoder.name in TWO_RANK_ENCODERS:
        cfg = dataclasses.replace(cfg, encoder=dataclasses.replace(cfg.encoder,
                                                                   name=TWO_RANK_ENCODERS[cfg.encoder.name]))
    save_config(cfg, tmp_path / "config.yaml")
    run_pretrain_ranks(tmp_path, wandb_mode="disabled")
    assert json.loads((tmp_path / "DONE").read_text())["world_size"] == 2
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in rows), rows
    encoder = load_encoder(tmp_path, build_encoder(cfg.encoder))   # what the evaluation jobs read
    assert all(torch.isfinite(v).all() for v in encoder.state_dict().values() if v.is_floating_point())
