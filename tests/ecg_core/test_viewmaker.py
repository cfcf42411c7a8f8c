"""Viewmaker SimCLR: the recipe, the exact L1 budget (per sample, per lead), gradient reversal against a naive
computation, the network's shapes, and CPU training steps.

Shapes: ``B`` batch, ``L`` leads, ``T`` time, ``N`` viewmaker rows, ``C`` channels.
"""
from __future__ import annotations

import dataclasses
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from ecg_core.config import ConfigError
from ecg_core.layers import grad_reverse
from ecg_core.losses import nt_xent
from ecg_core.methods import METHODS, Method, build_method, validate_method
from ecg_core.methods.viewmaker import Viewmaker, Viewmaker1d, ViewmakerConfig, l1_budget, reflect_pad
from jobs.config import MethodConfig

from .method_utils import (
    assert_scalars, assert_step_depends_only_on_seed_and_step, config_error, recipe_config, train_steps, window_batch,
)

B, L, T = 4, 12, 128
# Viewmaker width 4: the seed's 32 costs ~3 s per CPU step at this size (its residual convolutions).
TINY = ["encoder.name=xresnet1d18", "encoder.params.base_width=4", f"data.window={T}",
        "method.params.viewmaker_width=4"]
tiny_config = partial(recipe_config, "viewmaker", *TINY)


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    return window_batch(B, T, seed, L=L, scale=0.3)


def test_registry_and_recipe():
    assert METHODS["viewmaker"] is Viewmaker and issubclass(Viewmaker, Method)
    cfg = recipe_config("viewmaker")
    assert validate_method(cfg.method) == ViewmakerConfig()
    assert cfg.method.params == dataclasses.asdict(ViewmakerConfig())
    assert cfg.data.window == 2500 and cfg.optim.schedule == "constant" and cfg.optim.weight_decay == 0.0


def test_seed_viewmaker_size():
    # The seed's 1-channel network has 582,661 parameters of which res4/res5 (allocated, never used) hold
    # 2 x (2 x (3 * c * c + c) + 2 * 2 * c) for c = 132, 133.
    unused = sum(2 * (3 * c * c + c) + 4 * c for c in (132, 133))
    assert sum(p.numel() for p in Viewmaker1d(1).parameters()) == 582_661 - unused


@pytest.mark.parametrize("params, key", [
    ({"budget": 0.0}, "method.params.budget"),
    ({"temperature": -1.0}, "method.params.temperature"),
    ({"num_res_blocks": 6}, "method.params.num_res_blocks"),
    ({"viewmaker_width": 0}, "method.params.viewmaker_width"),
    ({"per_lead": "maybe"}, "method.params.per_lead"),
    ({"post_augmentations": [{"name": "mixup"}]}, "method.params.post_augmentations[0].name"),
    ({"augmentations": [{"name": "time_mask", "ratio": 2.0}]}, "method.params.augmentations[0].ratio"),
])
def test_invalid_params_name_the_key(params, key):
    assert config_error(validate_method, MethodConfig(name="viewmaker", params=params)).key == key


def test_window_too_short():
    with pytest.raises(ConfigError):
        build_method(tiny_config("data.window=8"), 0)


@pytest.mark.parametrize("T_", [128, 250, 97, 16])
def test_viewmaker_network_keeps_the_shape_and_uses_its_generator(T_):
    vm = Viewmaker1d(3, width=4, num_res_blocks=2)
    x_NCT = torch.randn(2, 3, T_)
    a = vm(x_NCT, torch.Generator().manual_seed(0))
    assert a.shape == x_NCT.shape
    assert torch.equal(a, vm(x_NCT, torch.Generator().manual_seed(0)))
    assert not torch.equal(a, vm(x_NCT, torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("pad", [0, 1, 4])
def test_reflect_pad_is_torchs_reflection_padding(pad):
    x_NCT = torch.randn(2, 3, 9, dtype=torch.float64, requires_grad=True)
    w_NCT = torch.randn(2, 3, 9 + 2 * pad, dtype=torch.float64)
    ours = reflect_pad(x_NCT, pad)
    theirs = F.pad(x_NCT, (pad, pad), mode="reflect")
    assert torch.equal(ours, theirs)
    grad_ours, = torch.autograd.grad((ours * w_NCT).sum(), x_NCT)
    grad_theirs, = torch.autograd.grad((theirs * w_NCT).sum(), x_NCT)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-12, atol=1e-12)


def test_l1_budget_is_exact_per_row():
    g = torch.Generator().manual_seed(0)
    for scale in (1e-6, 1.0, 1e3):   # tiny outputs, ordinary ones, saturated tanh
        y_NCT = scale * torch.randn(5, 3, 40, generator=g)
        delta_NCT = l1_budget(y_NCT, 0.05)
        torch.testing.assert_close(delta_NCT.abs().mean(dim=(1, 2)), torch.full((5,), 0.05), rtol=1e-5, atol=0)
        assert torch.equal(delta_NCT.sign(), y_NCT.sign())
    assert l1_budget(torch.randn(2, 1, 8, dtype=torch.float64), 0.1).dtype == torch.float64


@pytest.mark.parametrize("per_lead", [True, False])
@pytest.mark.parametrize("pre", [[], [{"name": "time_mask", "ratio": 0.25}]])
def test_views_meet_the_budget_exactly(per_lead, pre):
    cfg = tiny_config(f"method.params.per_lead={str(per_lead).lower()}", "method.params.budget=0.02",
                      f"method.params.augmentations={pre}")
    method = build_method(cfg, generator_seed=0)
    x_BLT = batch()["x"]
    inputs_2BLT, views_2BLT = method.make_views(x_BLT, method.step_generator(0, x_BLT.device))
    assert views_2BLT.shape == (2 * B, L, T) and views_2BLT.dtype == torch.float32
    if pre:
        assert not torch.equal(inputs_2BLT[:B], x_BLT)   # the viewmaker perturbs the augmented inputs
    else:
        assert torch.equal(inputs_2BLT, torch.cat([x_BLT, x_BLT]))
    distortion_2BLT = (views_2BLT - inputs_2BLT).abs()
    torch.testing.assert_close(distortion_2BLT.mean(dim=(1, 2)), torch.full((2 * B,), 0.02), rtol=1e-5, atol=0)
    per_lead_2BL = distortion_2BLT.mean(dim=2)
    if per_lead:
        torch.testing.assert_close(per_lead_2BL, torch.full((2 * B, L), 0.02), rtol=1e-5, atol=0)
    else:   # one budget shared by the leads: the viewmaker distributes it
        assert per_lead_2BL.std() > 1e-4
    # The two views of a window differ (own noise channels), and so do different steps.
    assert not torch.allclose(views_2BLT[:B], views_2BLT[B:])


def test_post_augmentations_apply_after_the_budget():
    cfg = tiny_config("method.params.post_augmentations=[{name: lead_mask, ratio: 0.5}]")
    method = build_method(cfg, generator_seed=0)
    x_BLT = batch()["x"]
    inputs_2BLT, views_2BLT = method.make_views(x_BLT, method.step_generator(0, x_BLT.device))
    zeroed_2BL = (views_2BLT == 0).all(dim=2)
    assert (zeroed_2BL.sum(dim=1) == 6).all()
    kept = ~zeroed_2BL[..., None].expand_as(views_2BLT)
    # Within the leads kept, the per-lead budget still holds.
    distortion_NT = (views_2BLT - inputs_2BLT).abs()[kept].reshape(-1, T)
    torch.testing.assert_close(distortion_NT.mean(dim=1), torch.full((distortion_NT.shape[0],), 0.03), rtol=1e-5,
                               atol=0)


def test_grad_reverse_negates_the_gradient_only():
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, dtype=torch.float64)
    y = grad_reverse(x)
    assert torch.equal(y, x)
    (y * w).sum().backward()
    assert torch.equal(x.grad, -w)
    x.grad = None
    (grad_reverse(x, 0.5) * w).sum().backward()
    assert torch.equal(x.grad, -0.5 * w)


def _grads(method: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in method.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("per_lead", [True, False])
def test_gradient_reversal_flips_only_the_viewmakers_gradient(per_lead):
    """The method's gradient vs a naive computation of the same loss without the reversal layer."""
    torch.manual_seed(0)
    method = build_method(tiny_config(f"method.params.per_lead={str(per_lead).lower()}"), generator_seed=0)
    data = batch(1)
    loss = method.training_step(data, 3)["loss"]
    loss.backward()
    reversed_ = _grads(method)
    method.zero_grad(set_to_none=True)

    # Naive: the same views (same step generator), encoder, projector and loss, no reversal.
    _, views_2BLT = method.make_views(data["x"], method.step_generator(3, data["x"].device))
    z_2BP = method.projector(method.encoder(views_2BLT))
    naive_loss = nt_xent(z_2BP[:B], z_2BP[B:], method.cfg.temperature)
    naive_loss.backward()
    naive = _grads(method)

    assert torch.equal(loss, naive_loss)
    assert reversed_.keys() == naive.keys() == {k for k, _ in method.named_parameters()}
    vm_keys = [k for k in naive if k.startswith("viewmaker.")]
    assert vm_keys and all(naive[k].abs().sum() > 0 for k in vm_keys[:3])
    for k in naive:
        expected = -naive[k] if k.startswith("viewmaker.") else naive[k]
        torch.testing.assert_close(reversed_[k], expected, rtol=1e-6, atol=1e-9, msg=k)


def test_state_and_fsdp_blocks():
    method = build_method(tiny_config(), generator_seed=0)
    assert all(k.startswith(("encoder.", "projector.", "viewmaker.")) for k in method.state_dict())
    blocks = method.fsdp_blocks()
    assert method.viewmaker in blocks and method.projector in blocks
    assert {id(p) for b in blocks for p in b.parameters()} == {id(p) for p in method.parameters()}


def test_two_cpu_steps_give_a_finite_changing_loss_and_train_every_part():
    torch.manual_seed(0)
    method = build_method(tiny_config(), generator_seed=0)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-3)   # one optimizer, as the seed
    losses = train_steps(method, batch, range(2), optimizer=optimizer,
                         each=lambda _, out: assert_scalars(out, {"loss", "positive_similarity"}))
    assert all(torch.isfinite(torch.tensor(losses))) and losses[0] != losses[1]
    assert 0 < losses[0] < torch.log(torch.tensor(2.0 * B - 1)).item() + 0.5
    after = method.state_dict()
    for key in ("encoder.stem.0.0.weight", "projector.net.0.weight", "viewmaker.down.0.conv.weight",
                "viewmaker.out.conv.weight"):
        assert not torch.equal(before[key], after[key]), key


def test_views_depend_only_on_seed_and_step():
    torch.manual_seed(0)
    method = build_method(tiny_config(), generator_seed=3)
    assert_step_depends_only_on_seed_and_step(method, batch)
