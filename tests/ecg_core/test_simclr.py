"""SimCLR and the Method registry: config validation, the recipe, CPU training steps (plain and FSDP2),
augmentations that depend only on (seed, rank, step).

Shapes: ``B`` batch, ``L`` leads, ``T`` time.
"""
from __future__ import annotations

import dataclasses
from functools import partial

import pytest
import torch

from ecg_core.encoders import count_parameters
from ecg_core.methods import METHODS, Method, build_method, step_seed, validate_method
from ecg_core.methods.simclr import SimCLR, SimCLRConfig
from jobs.config import MethodConfig

from .method_utils import (
    assert_scalars, assert_step_depends_only_on_seed_and_step, config_error, plain_and_sharded, recipe_config,
    train_steps, window_batch,
)

B, T = 6, 128
TINY = ["encoder.params.base_width=8", f"data.window={T}"]
tiny_config = partial(recipe_config, "simclr", *TINY)


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """What WindowLoader yields (only ``x`` is used by SimCLR)."""
    return window_batch(B, T, seed)


def test_registry():
    assert METHODS["simclr"] is SimCLR and issubclass(SimCLR, Method) and SimCLR.Config is SimCLRConfig


def test_recipe_builds_the_documented_method():
    cfg = recipe_config("simclr")
    # The recipe spells out the method's defaults (the seed's values), so the two cannot drift apart.
    assert validate_method(cfg.method) == SimCLRConfig()
    assert cfg.method.params == dataclasses.asdict(SimCLRConfig())
    assert cfg.encoder.name == "xresnet1d50" and cfg.data.window == 2500
    method = build_method(cfg, generator_seed=0)
    assert isinstance(method, SimCLR)
    assert method.encoder.out_dim == 2048 and count_parameters(method.encoder) == 18_486_144
    assert [type(t).__name__ for t in method.augment.transforms] == ["RandomResizedCrop", "TimeOut"]


@pytest.mark.parametrize("params, key", [
    ({"tempreature": 0.1}, "method.params.tempreature"),
    ({"temperature": "warm"}, "method.params.temperature"),
    ({"temperature": -1.0}, "method.params.temperature"),
    ({"projection_dim": 0}, "method.params.projection_dim"),
    ({"projection_dim": 2.5}, "method.params.projection_dim"),
    ({"augmentations": "time_out"}, "method.params.augmentations"),
    ({"augmentations": [{"name": "time_out"}, {"name": "mixup"}]}, "method.params.augmentations[1].name"),
    ({"augmentations": [{"name": "time_out", "ratio": 0.2}]}, "method.params.augmentations[0].ratio"),
])
def test_invalid_params_name_the_key(params, key):
    assert config_error(validate_method, MethodConfig(name="simclr", params=params)).key == key


def test_unknown_method_lists_the_known_ones():
    error = config_error(validate_method, MethodConfig(name="simsiam"))
    assert error.key == "method.name" and "simclr" in error.reason


def test_augmentations_must_fit_the_window():
    cfg = tiny_config("data.window=48", "method.params.augmentations=[{name: dynamic_time_warp}]")
    assert config_error(build_method, cfg, 0).key == "method.params.augmentations[0]"


def test_state_and_fsdp_blocks():
    method = build_method(tiny_config(), generator_seed=0)
    keys = list(method.state_dict())
    assert any(k.startswith("encoder.") for k in keys)
    assert all(k.startswith(("encoder.", "projector.")) for k in keys)
    blocks = method.fsdp_blocks()
    assert method.projector in blocks
    in_blocks = {id(p) for b in blocks for p in b.parameters()}
    assert in_blocks == {id(p) for p in method.parameters()}


def test_step_seed_mixes_seed_rank_and_step():
    seeds = {step_seed(s, r, k) for s in range(3) for r in range(3) for k in range(3)}
    assert len(seeds) == 27 and all(0 <= s < 2**63 for s in seeds)
    assert step_seed(5, 1, 9) == step_seed(5, 1, 9)


def _train(method: Method, steps: int, lr: float = 1e-2) -> list[float]:
    return train_steps(method, batch, range(steps), lr=lr,
                       each=lambda _, out: assert_scalars(out, {"loss", "positive_similarity"}))


def test_two_cpu_steps_give_a_finite_changing_loss():
    torch.manual_seed(0)
    method = build_method(tiny_config(), generator_seed=0)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    losses = _train(method, 2)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[0] != losses[1]
    # A random encoder already separates most pairs; the loss is below the uniform-guess log(2B - 1).
    assert 0 < losses[0] < torch.log(torch.tensor(2.0 * B - 1)).item() + 0.5
    after = method.state_dict()
    assert not torch.equal(before["encoder.stem.0.0.weight"], after["encoder.stem.0.0.weight"])
    assert not torch.equal(before["projector.net.0.weight"], after["projector.net.0.weight"])


def test_augmentations_depend_only_on_seed_and_step():
    torch.manual_seed(0)
    method = build_method(tiny_config(), generator_seed=3)
    # step 5 twice: the same views, hence the same loss (BatchNorm uses batch statistics)
    assert_step_depends_only_on_seed_and_step(method, batch, other_generator_seed=4)


def test_fsdp2_sharded_steps_match_the_plain_module(one_rank_group):
    """The pretraining job's path: shard fsdp_blocks() then the method, step through training_step."""
    cfg = tiny_config("encoder.name=xresnet1d18")   # fewer layers: 4 steps on 2 cores stay quick
    plain, sharded = plain_and_sharded(lambda: build_method(cfg, generator_seed=0))
    expected, got = _train(plain, 2), _train(sharded, 2)
    assert got == pytest.approx(expected, rel=1e-5)
