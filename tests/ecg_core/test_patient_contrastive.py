"""Patient-contrastive learning (PCLR / SupCon by patient / CLOCS CMSC): the losses against loop-by-loop
reference formulas (one process and two gloo ranks), the recipe, the pairing contract, and training
steps on real paired demo windows in each mode.

Shapes: ``N`` views (rows), ``D`` features, ``B`` batch, ``L`` leads, ``T`` time.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from ecg_core.config import ConfigError
from ecg_core.data.config import StoreSource
from ecg_core.data.loader import WindowLoader
from ecg_core.losses.supcon import clocs_loss, supcon_loss
from ecg_core.methods import METHODS, build_method, validate_method
from ecg_core.methods.patient_contrastive import MODE_PAIRING, PatientContrastive, PatientContrastiveConfig
from jobs.config import MethodConfig, PretrainConfig

from .dist_utils import run_ranks
from .method_utils import (
    assert_scalars, assert_step_depends_only_on_seed_and_step, config_error, recipe_config, train_steps,
)


# ------------------------------------------------------------------------------------------------
# Reference formulas, one anchor and one term at a time (float64 Python arithmetic)
# ------------------------------------------------------------------------------------------------

def _cos(u: list[float], v: list[float]) -> float:
    dot = sum(a * b for a, b in zip(u, v))
    return dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))


def _log_sum_exp(values: list[float]) -> float:
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def naive_supcon(z: torch.Tensor, labels: list[int], tau: float) -> float:
    """Khosla et al. 2020, eq. 2 (L_out), averaged over the anchors that have a positive."""
    rows = z.tolist()
    terms = []
    for i in range(len(rows)):
        others = [a for a in range(len(rows)) if a != i]
        positives = [p for p in others if labels[p] == labels[i]]
        if not positives:
            continue
        denominator = _log_sum_exp([_cos(rows[i], rows[a]) / tau for a in others])
        terms.append(-sum(_cos(rows[i], rows[p]) / tau - denominator for p in positives) / len(positives))
    return sum(terms) / len(terms) if terms else 0.0


def naive_clocs(za: torch.Tensor, zb: torch.Tensor, labels: list[int], tau: float) -> float:
    """CLOCS CMSC: every cross-view same-patient pair (i, k), A->B over row i and B->A over column k."""
    a, b = za.tolist(), zb.tolist()
    n = len(a)
    terms = []
    for i in range(n):
        for k in range(n):
            if labels[i] != labels[k]:
                continue
            row = _log_sum_exp([_cos(a[i], b[j]) / tau for j in range(n)])
            terms.append(-(_cos(a[i], b[k]) / tau - row))
            column = _log_sum_exp([_cos(b[k], a[j]) / tau for j in range(n)])
            terms.append(-(_cos(b[k], a[i]) / tau - column))
    return sum(terms) / len(terms)


def seed_clocs(za: torch.Tensor, zb: torch.Tensor, tau: float) -> float:
    """The CLOCS seed's CMSC loss for a batch without repeated patients: mean of the two diagonal terms."""
    s = torch.nn.functional.normalize(za, dim=1) @ torch.nn.functional.normalize(zb, dim=1).T / tau
    e = torch.exp(s)
    diag = torch.diag(e)
    return float((-torch.mean(torch.log(diag / e.sum(1))) - torch.mean(torch.log(diag / e.sum(0)))) / 2)


LABELS = [0, 0, 1, 2, 2, 2, 3, 4, 4, 5]   # pairs, a triple, and singletons (3, 5: no positive)


@pytest.mark.parametrize("tau", [0.01, 0.1, 0.5, 1.0, 50.0])
def test_supcon_matches_the_reference_formula(tau):
    z = torch.randn(len(LABELS), 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = supcon_loss(z, torch.tensor(LABELS), tau)
    assert got.item() == pytest.approx(naive_supcon(z, LABELS, tau), rel=1e-9, abs=1e-12)


def test_supcon_edge_cases():
    z = torch.randn(6, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64, requires_grad=True)
    # No anchor has a positive: exactly 0, and still part of the graph (the loop calls backward).
    zero = supcon_loss(z, torch.arange(6), 0.1)
    assert zero.item() == 0.0 and zero.requires_grad
    zero.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))
    # Anchors without positives are left out of the mean (2 anchors here), not counted as zeros (over 6).
    labels = torch.tensor([0, 0, 1, 2, 3, 4])
    expected = naive_supcon(z.detach(), labels.tolist(), 0.3)
    assert supcon_loss(z, labels, 0.3).item() == pytest.approx(expected, rel=1e-12)
    assert expected > 0 and supcon_loss(z, labels, 0.3).item() != pytest.approx(expected * 2 / 6)
    # One class: every other view is a positive; with identical views the loss is log(N - 1) at any tau.
    same = torch.ones(5, 3, dtype=torch.float64)
    for tau in (1e-3, 1.0, 1e3):
        assert supcon_loss(same, torch.zeros(5, dtype=torch.int64), tau).item() == pytest.approx(math.log(4))
    # A tiny temperature stays finite (log-softmax, fp32 or wider) and approaches the hard-max limit.
    cold = supcon_loss(torch.randn(8, 4, generator=torch.Generator().manual_seed(3)), torch.arange(8) // 2, 1e-4)
    assert torch.isfinite(cold)
    # bf16 inputs give a float32 loss.
    assert supcon_loss(torch.randn(4, 3).bfloat16(), torch.tensor([0, 0, 1, 1]), 0.1).dtype == torch.float32


def test_supcon_with_pair_labels_is_nt_xent():
    from ecg_core.losses import nt_xent

    z = torch.randn(8, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    pairs = torch.arange(8) // 2   # views 2i and 2i+1
    assert supcon_loss(z, pairs, 0.2).item() == pytest.approx(nt_xent(z[0::2], z[1::2], 0.2).item(), rel=1e-12)


@pytest.mark.parametrize("tau", [0.01, 0.1, 1.0, 20.0])
def test_clocs_matches_the_reference_formula(tau):
    g = torch.Generator().manual_seed(5)
    za, zb = (torch.randn(len(LABELS), 6, generator=g, dtype=torch.float64) for _ in range(2))
    got = clocs_loss(za, zb, torch.tensor(LABELS), tau)
    assert got.item() == pytest.approx(naive_clocs(za, zb, LABELS, tau), rel=1e-9)
    # Without repeated patients it is the seed's CMSC loss exactly.
    unique = clocs_loss(za, zb, torch.arange(len(LABELS)), tau)
    assert unique.item() == pytest.approx(seed_clocs(za, zb, tau), rel=1e-9)


def test_bad_loss_arguments():
    with pytest.raises(ValueError, match="temperature"):
        supcon_loss(torch.randn(4, 3), torch.arange(4), 0.0)
    with pytest.raises(ValueError, match="labels"):
        supcon_loss(torch.randn(4, 3), torch.arange(3), 0.1)
    with pytest.raises(ValueError, match="labels"):
        clocs_loss(torch.randn(4, 3), torch.randn(4, 3), torch.zeros(4), 0.1)   # float labels
    with pytest.raises(ValueError, match="both"):
        clocs_loss(torch.randn(4, 3), torch.randn(5, 3), torch.arange(4), 0.1)


# ------------------------------------------------------------------------------------------------
# Two gloo ranks, each with half of the batch (labels shared across ranks, unequal positives per rank)
# ------------------------------------------------------------------------------------------------

HALF = 5
DIST_LABELS = [0, 1, 1, 2, 3, 0, 4, 5, 3, 3]   # rank 0: rows 0-4, rank 1: rows 5-9; 2, 4, 5 have no positive
DIST_TAU = 0.3


def _dist_inputs():
    g = torch.Generator().manual_seed(7)
    return (torch.randn(2 * HALF, 4, generator=g, dtype=torch.float64),
            torch.randn(2 * HALF, 4, generator=g, dtype=torch.float64), torch.tensor(DIST_LABELS))


def test_two_ranks_equal_one_process_with_the_full_batch(tmp_path):
    run_ranks(_on_rank, 2, {"out": str(tmp_path)}, timeout=120)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    za, zb, labels = _dist_inputs()
    za.requires_grad_(True)
    zb.requires_grad_(True)
    full_sup = supcon_loss(za, labels, DIST_TAU)
    full_clocs = clocs_loss(za, zb, labels, DIST_TAU)
    # The ranks hold different numbers of anchors with positives (4 and 3), yet the mean of their losses is
    # the global loss, and each rank's gradient is that of the ranks' summed losses (2 x the full one).
    assert sum(r["supcon"] for r in results) / 2 == pytest.approx(full_sup.item(), rel=1e-12)
    assert sum(r["clocs"] for r in results) / 2 == pytest.approx(full_clocs.item(), rel=1e-12)
    grad_sup, = torch.autograd.grad(full_sup, za)
    grad_a, grad_b = torch.autograd.grad(full_clocs, (za, zb))
    for rank, result in enumerate(results):
        rows = slice(rank * HALF, (rank + 1) * HALF)
        for key, full in (("grad_supcon", grad_sup), ("grad_clocs_a", grad_a), ("grad_clocs_b", grad_b)):
            assert torch.allclose(torch.tensor(result[key], dtype=torch.float64) / 2, full[rows], atol=1e-12), key


def _on_rank(info, args) -> None:
    """One rank of the test above (a :func:`dist_utils.run_ranks` scenario); results go to ``args["out"]``."""
    out_dir = Path(args["out"])
    za, zb, labels = _dist_inputs()
    rows = slice(info.rank * HALF, (info.rank + 1) * HALF)
    a, b = za[rows].clone().requires_grad_(True), zb[rows].clone().requires_grad_(True)
    sup = supcon_loss(a, labels[rows], DIST_TAU)
    grad_sup, = torch.autograd.grad(sup, a)
    clocs = clocs_loss(a, b, labels[rows], DIST_TAU)
    grad_a, grad_b = torch.autograd.grad(clocs, (a, b))
    result = {"supcon": sup.item(), "clocs": clocs.item(), "grad_supcon": grad_sup.tolist(),
              "grad_clocs_a": grad_a.tolist(), "grad_clocs_b": grad_b.tolist()}
    (out_dir / f"rank{info.rank}.json").write_text(json.dumps(result))


# ------------------------------------------------------------------------------------------------
# The method
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    from .data.test_loader_pairing import small_demo_store

    return small_demo_store(tmp_path_factory)


def tiny_config(store: Path, *overrides: str) -> PretrainConfig:
    """The recipe on the small demo store, CPU-cheap: the smallest xresnet (the method is encoder-agnostic)."""
    tiny = ["encoder.name=xresnet1d18", "encoder.params.base_width=4", "data.window=500", "data.batch_size=8",
            "data.block_len=8192"]
    cfg = recipe_config("patient_contrastive", *tiny, *overrides)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, stores=[StoreSource(path=str(store))]))


def test_registry_and_recipe():
    assert METHODS["patient_contrastive"] is PatientContrastive
    cfg = recipe_config("patient_contrastive")
    # The recipe spells out the defaults (PCLR's values), so the two cannot drift apart.
    assert validate_method(cfg.method, window=cfg.data.window) == PatientContrastiveConfig()
    assert cfg.method.params == dataclasses.asdict(PatientContrastiveConfig())
    assert cfg.data.pairing == PatientContrastiveConfig().data_pairing == "patient"
    assert cfg.data.batch_size % 2 == 0
    assert MODE_PAIRING == {"pclr": "patient", "supcon": "patient", "cmsc": "adjacent"}


@pytest.mark.parametrize("params, key", [
    ({"mode": "clocs"}, "method.params.mode"),
    ({"temperature": 0.0}, "method.params.temperature"),
    ({"projection_dim": 0}, "method.params.projection_dim"),
    ({"augmentations": [{"name": "mixup"}]}, "method.params.augmentations[0].name"),
    ({"pairing": "patient"}, "method.params.pairing"),
])
def test_invalid_params_name_the_key(params, key):
    assert config_error(validate_method, MethodConfig(name="patient_contrastive", params=params)).key == key


def test_the_data_pairing_must_match_the_mode(store):
    with pytest.raises(ConfigError) as info:
        build_method(tiny_config(store, "method.params.mode=cmsc"), generator_seed=0)   # recipe: patient
    assert info.value.key == "data.pairing" and "adjacent" in info.value.reason
    with pytest.raises(ConfigError) as info:
        build_method(tiny_config(store, "data.pairing=none"), generator_seed=0)
    assert info.value.key == "data.pairing"
    # A batch that is not paired as the mode needs is refused at the first step, not trained on.
    method = build_method(tiny_config(store), generator_seed=0)
    plain = WindowLoader(tiny_config(store, "data.pairing=none").data).take(1)[0]
    with pytest.raises(ValueError, match="data.pairing: patient"):
        method.training_step(plain, 0)
    shuffled = WindowLoader(tiny_config(store).data).take(1)[0]
    shuffled["patient"] = torch.arange(8)
    with pytest.raises(ValueError, match="not of one patient"):
        method.training_step(shuffled, 0)
    cmsc = build_method(tiny_config(store, "method.params.mode=cmsc", "data.pairing=adjacent"), generator_seed=0)
    with pytest.raises(ValueError, match="adjacent"):
        cmsc.training_step(WindowLoader(tiny_config(store).data).take(1)[0], 0)   # patient pairs, not segments


MODES = [("pclr", "patient"), ("supcon", "patient"), ("cmsc", "adjacent")]


@pytest.mark.parametrize("mode, pairing", MODES)
def test_two_cpu_steps_give_a_finite_changing_loss(store, mode, pairing):
    cfg = tiny_config(store, f"method.params.mode={mode}", f"data.pairing={pairing}")
    torch.manual_seed(0)
    method = build_method(cfg, generator_seed=0)
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-2)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    batches = WindowLoader(cfg.data).take(2)
    for b in batches:   # real same-patient pairs, from different records wherever the mode asks for it
        assert torch.equal(b["patient"][0::2], b["patient"][1::2])
    if pairing == "patient":
        assert any(not torch.equal(b["record"][0::2], b["record"][1::2]) for b in batches)
    losses = train_steps(method, lambda step: batches[step], range(len(batches)), optimizer=optimizer,
                         each=lambda _, out: assert_scalars(out, {"loss", "positive_similarity"}))
    assert all(math.isfinite(v) for v in losses) and losses[0] != losses[1], losses
    assert 0 < losses[0] < math.log(8) + 1.0   # near the uniform guess over the batch for a random net
    after = method.state_dict()
    assert not torch.equal(before["encoder.stem.0.0.weight"], after["encoder.stem.0.0.weight"])
    assert not torch.equal(before["projector.net.0.weight"], after["projector.net.0.weight"])


def test_augmentations_depend_only_on_seed_and_step(store):
    cfg = tiny_config(store, "method.params.augmentations=[{name: time_out, crop_ratio_range: [0.2, 0.4]}]")
    torch.manual_seed(0)
    method = build_method(cfg, generator_seed=3)
    b = WindowLoader(cfg.data).take(1)[0]
    assert_step_depends_only_on_seed_and_step(method, lambda: b)
