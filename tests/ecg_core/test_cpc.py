"""CPC: the ``cpc_encoder`` (per-step shapes, causality, parameter counts, config checks), the negative
sampler and the InfoNCE loss against a naive loop-by-loop formula, the method (recipe, config errors,
CPU steps with LSTM and GRU, randomness from (seed, rank, step) only, FSDP2).

Shapes: ``B`` batch, ``L`` leads, ``T`` time samples, ``S`` encoder steps, ``F`` / ``H`` encoder /
context features, ``N`` negatives.
"""
from __future__ import annotations

import dataclasses
import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from ecg_core.config import ConfigError
from ecg_core.encoders import ENCODERS, count_parameters, validate_encoder
from ecg_core.encoders.cpc import CPCEncoder, cpc_encoder
from ecg_core.losses.cpc import cpc_infonce, cpc_infonce_step, sample_cpc_negatives
from ecg_core.methods import METHODS, build_method, validate_method
from ecg_core.methods.cpc import CPC, CPCConfig
from jobs.config import EncoderConfig, MethodConfig

from .method_utils import (
    assert_scalars, assert_step_depends_only_on_seed_and_step, config_error, plain_and_sharded, recipe_config,
    train_steps, window_batch,
)

B, T = 4, 300                      # 300 samples / input_pool 5 = 60 steps
TINY = ["encoder.params.base_width=8", f"data.window={T}", "method.params.num_negatives=16"]
tiny_config = partial(recipe_config, "cpc", *TINY)


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    return window_batch(B, T, seed)


# ------------------------------------------------------------------------------------------------
# Encoder
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rnn", ["lstm", "gru"])
@pytest.mark.parametrize("strides, kernels, pool, T_in, S", [
    ([1, 1, 1, 1], [1, 1, 1, 1], 5, 500, 100),      # the seed's fc encoder, 500 Hz -> 100 Hz steps
    ([1, 1, 1, 1], [1, 1, 1, 1], 5, 503, 100),      # the tail shorter than one pool is dropped
    ([2, 2, 2, 2], [10, 4, 4, 4], 1, 256, 16),      # the seed's strided encoder: 256 -> 128 -> 64 -> 32 -> 16
    ([2, 2, 2, 2], [10, 4, 4, 4], 1, 1000, 62),     # the seed's 10 s at 100 Hz
])
def test_encoder_gives_one_z_and_one_c_per_step(rnn, strides, kernels, pool, T_in, S):
    torch.manual_seed(0)
    encoder = cpc_encoder(base_width=8, strides=strides, kernel_sizes=kernels, input_pool=pool, rnn=rnn)
    assert encoder.num_steps(T_in) == S
    z_BSF, c_BSH = encoder(torch.randn(3, 12, T_in), sequences=True)
    assert z_BSF.shape == (3, S, encoder.feature_dim) and c_BSH.shape == (3, S, encoder.context_dim)
    assert z_BSF.shape == (3, S, 8) and (z_BSF >= 0).all()          # after ReLU
    assert encoder.downsampling() == pool * math.prod(strides)


@pytest.mark.parametrize("pool, out_dim", [("concat", 24), ("last", 8), ("mean", 8)])
def test_encoder_pooled_representation(pool, out_dim):
    torch.manual_seed(0)
    encoder = cpc_encoder(base_width=8, pool=pool)
    x_BLT = torch.randn(3, 12, 250)
    z_BD = encoder(x_BLT)
    assert encoder.out_dim == out_dim and z_BD.shape == (3, out_dim) and z_BD.dtype == torch.float32
    _, c_BSH = encoder(x_BLT, sequences=True)
    last, mean, amax = c_BSH[:, -1], c_BSH.mean(1), c_BSH.amax(1)
    expected = {"concat": torch.cat([mean, amax, last], 1), "last": last, "mean": mean}[pool]
    torch.testing.assert_close(z_BD, expected)
    encoder.eval()
    assert encoder(torch.randn(1, 12, 250)).shape == (1, out_dim)   # eval mode, batch of one


@pytest.mark.parametrize("rnn", ["lstm", "gru"])
def test_context_is_causal(rnn):
    """c_t depends on z_0 .. z_t only (Oord et al. g_ar): changing the input after step t leaves c_<=t alone."""
    torch.manual_seed(0)
    encoder = cpc_encoder(base_width=8, rnn=rnn).eval()     # eval: BatchNorm must not mix steps via statistics
    x_BLT = torch.randn(2, 12, 250)
    changed = x_BLT.clone()
    changed[..., 100:] += 1.0                                # from step 20 on (5 samples per step)
    _, c1_BSH = encoder(x_BLT, sequences=True)
    _, c2_BSH = encoder(changed, sequences=True)
    assert torch.equal(c1_BSH[:, :20], c2_BSH[:, :20]) and not torch.allclose(c1_BSH[:, 20], c2_BSH[:, 20])


def test_seed_parameter_counts():
    """seed-methods.md 2.1: fc encoder 796,672, LSTM 4,202,496, projection 262,144; strided model 7,675,904."""
    with torch.device("meta"):
        encoder = cpc_encoder()
        strided = cpc_encoder(strides=[2, 2, 2, 2], kernel_sizes=[10, 4, 4, 4])
    assert count_parameters(encoder.features) == 796_672 and count_parameters(encoder.context) == 4_202_496
    assert encoder.out_dim == 1536
    assert count_parameters(strided) + 512 * 512 == 7_675_904
    gru = cpc_encoder(base_width=8, rnn="gru")
    assert isinstance(gru.context.rnn, torch.nn.GRU)


def test_encoder_blocks_partition_every_parameter():
    encoder = cpc_encoder(base_width=8)
    ids = [id(p) for b in encoder.blocks() for p in b.parameters()]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in encoder.parameters()}


@pytest.mark.parametrize("params, key", [
    ({"base_width": 0}, "encoder.params.base_width"),
    ({"rnn": "transformer"}, "encoder.params.rnn"),
    ({"pool": "max"}, "encoder.params.pool"),
    ({"strides": []}, "encoder.params.strides"),
    ({"strides": [2, 2], "kernel_sizes": [3]}, "encoder.params.strides"),
    ({"kernel_sizes": [1, 0, 1, 1]}, "encoder.params.kernel_sizes"),
    ({"input_pool": 0}, "encoder.params.input_pool"),
    ({"hidden": 8}, "encoder.params.hidden"),
])
def test_bad_encoder_params_name_the_key(params, key):
    assert config_error(validate_encoder, EncoderConfig(name="cpc_encoder", params=params)).key == key


def test_encoder_rejects_a_window_without_steps():
    cfg = EncoderConfig(name="cpc_encoder", params={"base_width": 8})
    validate_encoder(cfg, window=5)
    with pytest.raises(ConfigError, match="window of 4 samples"):
        validate_encoder(cfg, window=4)


# ------------------------------------------------------------------------------------------------
# Negatives and loss
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("same_sequence", [True, False])
def test_negatives_never_include_the_positive(same_sequence):
    Bn, S, k, N = 3, 9, 2, 400
    negatives_BTN = sample_cpc_negatives(Bn, S, k, N, torch.Generator().manual_seed(0), same_sequence=same_sequence)
    assert negatives_BTN.shape == (Bn, S - k, N) and negatives_BTN.dtype == torch.int64
    b_BTN, s_BTN = negatives_BTN // S, negatives_BTN % S
    t_T = torch.arange(S - k).view(1, -1, 1)
    # The seed skips position t + k in every sequence, also in the batch mode (ecg_core.losses.cpc docstring).
    assert not (s_BTN == t_T + k).any()
    if same_sequence:
        assert torch.equal(b_BTN, torch.arange(Bn).view(-1, 1, 1).expand_as(b_BTN))
    else:
        assert (b_BTN != torch.arange(Bn).view(-1, 1, 1)).any() and set(b_BTN.unique().tolist()) == {0, 1, 2}
    # Every other position is drawn (400 draws from 8 positions), past ones included as in the seed.
    for t in range(S - k):
        assert set(s_BTN[:, t].unique().tolist()) == set(range(S)) - {t + k}


def test_negatives_come_from_the_generator_only():
    draw = [sample_cpc_negatives(2, 10, 3, 5, torch.Generator().manual_seed(7)) for _ in range(2)]
    torch.manual_seed(1)
    assert torch.equal(draw[0], draw[1])
    assert not torch.equal(draw[0], sample_cpc_negatives(2, 10, 3, 5, torch.Generator().manual_seed(8)))


@pytest.mark.parametrize("steps, offset", [(5, 5), (5, 7), (5, 0), (1, 1)])
def test_negatives_reject_offsets_without_target(steps, offset):
    with pytest.raises(ValueError, match=f"offset k={offset}"):
        sample_cpc_negatives(2, steps, offset, 3, torch.Generator())


def naive_infonce(preds, z_BSF, offsets, negatives, time_reduction):
    """Eq. 4 loop by loop: per k, per t, per sample, -log softmax of the positive among its negatives."""
    Bn, S, Fz = z_BSF.shape
    flat = z_BSF.reshape(Bn * S, Fz)
    per_k, acc_k = [], []
    for k, pred_BTF, negatives_BTN in zip(offsets, preds, negatives):
        per_t, hits = [], []
        for t in range(S - k):
            per_b = []
            for b in range(Bn):
                c = pred_BTF[b, t]
                scores = [torch.dot(c, z_BSF[b, t + k])] + [torch.dot(c, flat[j]) for j in negatives_BTN[b, t]]
                scores = torch.stack(scores)
                per_b.append(-F.log_softmax(scores, dim=0)[0])
                hits.append(float(scores.argmax() == 0))
            per_t.append(torch.stack(per_b).mean())
        per_t = torch.stack(per_t)
        per_k.append(per_t.sum() if time_reduction == "sum" else per_t.mean())
        acc_k.append(sum(hits) / len(hits))
    return torch.stack(per_k).mean(), sum(acc_k) / len(acc_k)


@pytest.mark.parametrize("same_sequence", [True, False])
@pytest.mark.parametrize("time_reduction", ["sum", "mean"])
def test_infonce_matches_the_naive_formula(same_sequence, time_reduction):
    g = torch.Generator().manual_seed(0)
    Bn, S, Fz, N, offsets = 3, 7, 5, 4, [1, 3, 6]       # k = 6 = S - 1: a single t
    z_BSF = torch.randn(Bn, S, Fz, generator=g, dtype=torch.float64, requires_grad=True)
    preds = [torch.randn(Bn, S - k, Fz, generator=g, dtype=torch.float64, requires_grad=True) for k in offsets]
    negatives = [sample_cpc_negatives(Bn, S, k, N, g, same_sequence=same_sequence) for k in offsets]
    loss, accuracy = cpc_infonce(preds, z_BSF, offsets, negatives, same_sequence=same_sequence,
                                 time_reduction=time_reduction)
    expected, expected_accuracy = naive_infonce(preds, z_BSF, offsets, negatives, time_reduction)
    assert loss.dtype == torch.float32                  # scored in float32 whatever the input precision
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-5)
    assert accuracy.item() == pytest.approx(expected_accuracy)
    grads = torch.autograd.grad(loss, [z_BSF, *preds])
    expected_grads = torch.autograd.grad(expected, [z_BSF, *preds])
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


def test_infonce_edge_values():
    Bn, S, Fz, k = 2, 6, 4, 2
    g = torch.Generator().manual_seed(1)
    negatives_BTN = sample_cpc_negatives(Bn, S, k, 5, g)
    # All scores equal: the positive is one of N + 1 equal candidates, loss log(N + 1) per step.
    loss, accuracy = cpc_infonce_step(torch.zeros(Bn, S - k, Fz), torch.randn(Bn, S, Fz, generator=g), k,
                                      negatives_BTN, time_reduction="mean")
    assert loss.item() == pytest.approx(math.log(6)) and accuracy.item() == 1.0   # ties count as the seed's argmax
    # A prediction equal to a large, orthogonal target: loss -> 0, accuracy 1.
    z_BSF = 50.0 * torch.eye(S).expand(Bn, S, S)[..., :S].clone()
    loss, accuracy = cpc_infonce_step(z_BSF[:, k:].clone(), z_BSF, k, negatives_BTN)
    assert loss.item() == pytest.approx(0.0, abs=1e-6) and accuracy.item() == 1.0
    # Large unnormalised scores stay finite (float32 log-sum-exp).
    big = 1e3 * torch.randn(Bn, S, Fz, generator=g)
    loss, _ = cpc_infonce_step(big[:, :S - k].clone(), big, k, negatives_BTN)
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="shapes"):
        cpc_infonce_step(torch.zeros(Bn, S - k + 1, Fz), torch.zeros(Bn, S, Fz), k, negatives_BTN)


# ------------------------------------------------------------------------------------------------
# Method
# ------------------------------------------------------------------------------------------------

def test_registry():
    assert METHODS["cpc"] is CPC and CPC.Config is CPCConfig and ENCODERS["cpc_encoder"] is cpc_encoder


def test_recipe_builds_the_seed_model():
    cfg = recipe_config("cpc")
    assert validate_method(cfg.method, window=cfg.data.window) == CPCConfig()
    assert cfg.method.params == dataclasses.asdict(CPCConfig())   # the recipe spells out the defaults
    assert cfg.encoder.params == {"base_width": 512, "strides": [1, 1, 1, 1], "kernel_sizes": [1, 1, 1, 1],
                                  "batch_norm": True, "rnn": "lstm", "rnn_layers": 2, "pool": "concat",
                                  "input_pool": 5}
    with torch.device("meta"):
        method = build_method(cfg, generator_seed=0)
    # seed-methods.md 2.1: "CPC fc-encoder model 5,261,312"; 10 s windows -> 1000 steps of 10 ms
    assert isinstance(method.encoder, CPCEncoder) and isinstance(method.encoder.context.rnn, torch.nn.LSTM)
    assert count_parameters(method) == 5_261_312 and method.encoder.out_dim == 1536
    assert method.encoder.num_steps(cfg.data.window) == 1000
    assert cfg.data.window == 5000 and cfg.optim.lr == 1e-4 and cfg.optim.schedule == "constant"


@pytest.mark.parametrize("params, key", [
    ({"prediction_step": [12]}, "method.params.prediction_step"),
    ({"prediction_steps": 12}, "method.params.prediction_steps"),
    ({"prediction_steps": []}, "method.params.prediction_steps"),
    ({"prediction_steps": [0, 1]}, "method.params.prediction_steps"),
    ({"prediction_steps": [2, 2]}, "method.params.prediction_steps"),
    ({"num_negatives": 0}, "method.params.num_negatives"),
    ({"time_reduction": "max"}, "method.params.time_reduction"),
    ({"negatives_from_same_sequence": "maybe"}, "method.params.negatives_from_same_sequence"),
])
def test_invalid_params_name_the_key(params, key):
    assert config_error(validate_method, MethodConfig(name="cpc", params=params)).key == key


def test_offsets_beyond_the_window_fail_at_validation_with_the_window():
    """Without the encoder (dry run) the window in samples bounds k; with it, the encoder's step count."""
    with pytest.raises(ConfigError) as info:
        validate_method(MethodConfig(name="cpc", params={"prediction_steps": [1, 400]}), window=300)
    assert info.value.key == "method.params.prediction_steps" and "data.window=300" in info.value.reason
    # 300 samples at 5 per step are 60 steps: k = 60 has no target, k = 59 has one (t = 0).
    with pytest.raises(ConfigError) as info:
        build_method(tiny_config("method.params.prediction_steps=[60]"), generator_seed=0)
    assert info.value.key == "method.params.prediction_steps"
    assert "data.window=300" in info.value.reason and "S=60" in info.value.reason
    loss = build_method(tiny_config("method.params.prediction_steps=[59]"), 0).training_step(batch(), 0)["loss"]
    assert torch.isfinite(loss)


def test_needs_the_cpc_encoder():
    cfg = dataclasses.replace(tiny_config(), encoder=EncoderConfig(name="xresnet1d18", params={"base_width": 4}))
    with pytest.raises(ConfigError) as info:
        build_method(cfg, generator_seed=0)
    assert info.value.key == "encoder.name" and "cpc_encoder" in info.value.reason


def test_state_and_fsdp_blocks():
    method = build_method(tiny_config("method.params.prediction_steps=[1,2,3]"), generator_seed=0)
    assert len(method.predictors) == 3
    assert all(k.startswith(("encoder.", "predictors.")) for k in method.state_dict())
    assert method.fsdp_blocks() == [method.encoder.features, method.encoder.context]
    # The predictors stay with the FSDP2 root (gathered by the root's own hook).
    in_blocks = {id(p) for b in method.fsdp_blocks() for p in b.parameters()}
    assert in_blocks == {id(p) for p in method.encoder.parameters()}


def _check_step(_, out) -> None:
    assert_scalars(out, {"loss", "accuracy"})
    assert 0.0 <= out["accuracy"].item() <= 1.0


def _train(method, steps: int, lr: float = 1e-2) -> list[float]:
    return train_steps(method, batch, range(steps), lr=lr, each=_check_step)


@pytest.mark.parametrize("overrides", [
    [],                                                                  # the seed: LSTM, k = 12, same sequence
    ["encoder.params.rnn=gru", "method.params.prediction_steps=[1,2,3,4]", "method.params.time_reduction=mean"],
    ["method.params.negatives_from_same_sequence=false", "method.params.predictor_mlp=true",
     "method.params.predictor_bias=true"],
    ["encoder.params.strides=[2,2]", "encoder.params.kernel_sizes=[10,4]", "encoder.params.input_pool=1"],
])
def test_two_cpu_steps_give_a_finite_changing_loss(overrides):
    torch.manual_seed(0)
    method = build_method(tiny_config(*overrides), generator_seed=0)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    losses = _train(method, 2)
    assert all(math.isfinite(v) for v in losses) and losses[0] != losses[1]
    cfg = method.cfg
    S = method.encoder.num_steps(T)
    # Near chance at initialisation: log(N + 1) per step, summed (seed) or averaged over the t's.
    chance = math.log(cfg.num_negatives + 1) * (1 if cfg.time_reduction == "mean" else
                                                sum(S - k for k in cfg.prediction_steps) / len(cfg.prediction_steps))
    assert 0.5 * chance < losses[0] < 2.0 * chance
    after = method.state_dict()
    for key in ("encoder.features.0.weight", "encoder.context.rnn.weight_hh_l1", "predictors.0.weight"):
        key = key if key in after else key.replace("predictors.0.", "predictors.0.0.")
        assert not torch.equal(before[key], after[key]), key


def test_negatives_depend_only_on_seed_and_step():
    torch.manual_seed(0)
    method = build_method(tiny_config(), generator_seed=3)
    assert_step_depends_only_on_seed_and_step(method, batch, other_generator_seed=4)


@pytest.mark.parametrize("rnn", ["lstm", "gru"])
def test_fsdp2_sharded_steps_match_the_plain_module(one_rank_group, rnn):
    """The pretraining job's path; the recurrent network's weights are swapped by FSDP2 around each call."""
    cfg = tiny_config(f"encoder.params.rnn={rnn}", "method.params.prediction_steps=[1,12]")
    plain, sharded = plain_and_sharded(lambda: build_method(cfg, generator_seed=0))
    expected, got = _train(plain, 2), _train(sharded, 2)
    assert got == pytest.approx(expected, rel=1e-5)
