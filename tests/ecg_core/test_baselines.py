"""The two baselines: ``supervised`` (encoder + linear head, BCE on a store task) and ``random_init`` (the
seeded initial encoder, exported unchanged). The generic method contract is in test_method_contract.py.

Shapes: ``B`` batch, ``L`` leads, ``T`` time, ``C`` classes, ``R`` records.
"""
from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ecg_core import distributed as D
from ecg_core.checkpoint import export_full_state_dict
from ecg_core.config import save_config
from ecg_core.data.config import StoreSource
from ecg_core.data.loader import WindowLoader
from ecg_core.data.store import open_store
from ecg_core.encoders import build_encoder
from ecg_core.evaluation import load_pretrained_encoder, multi_hot, prepare_data
from ecg_core.methods import build_method, validate_method
from ecg_core.methods.random_init import RandomInit, RandomInitConfig
from ecg_core.methods.supervised import Supervised, SupervisedConfig
from jobs.config import EvalConfig, MethodConfig, PretrainConfig
from launcher.runner import JobRunner

from .method_utils import config_error, recipe_config, train_steps

TINY = ["encoder.params.base_width=4", "data.window=500", "data.batch_size=4", "data.block_len=65536"]
TRAIN_FOLDS = [1, 2, 3, 4, 5, 6, 7, 8]
UNLABELLED = 3   # records of the small store whose labels are removed


def config(name: str, stores: list[StoreSource], *overrides: str) -> PretrainConfig:
    cfg = recipe_config(name, *TINY, *overrides)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, stores=stores))


def supervised(stores: list[StoreSource], *overrides: str) -> Supervised:
    torch.manual_seed(0)
    method = build_method(config("supervised", stores, "method.params.task=labels", *overrides), generator_seed=0)
    assert isinstance(method, Supervised)
    return method


@pytest.fixture(scope="module")
def small_store(tmp_path_factory) -> Path:
    """A 2 s-per-record demo store in which the first records have no label, all in fold 1 except the
    last record (fold 10)."""
    from ecg_core.data.demo import generate_demo
    from ecg_core.data.ingest import main as ingest_main

    work = tmp_path_factory.mktemp("small")
    generate_demo(work / "wfdb", seed=1, n_patients=6, records_per_patient=(1, 2), duration_s=2.0)
    headers = sorted((work / "wfdb").rglob("*.hea"))
    for i, header in enumerate(headers):
        text = re.sub(r"# Fold: \d+", f"# Fold: {10 if i == len(headers) - 1 else 1}", header.read_text())
        if i < UNLABELLED:
            text = re.sub(r"# Labels:.*\n", "", text)
        header.write_text(text)
    store = work / "small.zarr"
    assert ingest_main(["--format", "wfdb", "--input", str(work / "wfdb"), "--output", str(store), "--quiet"]) == 0
    return store


@pytest.fixture
def no_group(no_dist_env, monkeypatch):
    """Run as a single process started outside any scheduler (the runner makes its own 1-rank group)."""
    monkeypatch.setenv("WANDB_MODE", "disabled")


# ------------------------------------------------------------------------------------------------
# supervised
# ------------------------------------------------------------------------------------------------

def test_supervised_recipe_spells_out_the_defaults():
    cfg = recipe_config("supervised")
    assert validate_method(cfg.method) == SupervisedConfig()
    assert cfg.method.params == dataclasses.asdict(SupervisedConfig())
    assert cfg.encoder.name == "xresnet1d50" and cfg.data.window == 2500 and cfg.steps == 6800


@pytest.mark.parametrize("params, key", [
    ({"label_fraction": 0.0}, "method.params.label_fraction"),
    ({"label_fraction": 1.5}, "method.params.label_fraction"),
    ({"task": ""}, "method.params.task"),
    ({"tsak": "all"}, "method.params.tsak"),
])
def test_supervised_invalid_params_name_the_key(params, key):
    assert config_error(validate_method, MethodConfig(name="supervised", params=params)).key == key


def test_build_method_passes_the_data_config_only_to_methods_that_take_it(demo_store):
    stores = [StoreSource(path=str(demo_store), folds=TRAIN_FOLDS)]
    method = supervised(stores)
    assert method.data_cfg.stores == stores
    simclr = build_method(config("simclr", stores), generator_seed=0)   # written without a `data` argument
    assert simclr.data_cfg is None


def test_label_tables_follow_the_store_and_the_training_folds(demo_store):
    method = supervised([StoreSource(path=str(demo_store), folds=TRAIN_FOLDS)])
    store = open_store(demo_store)
    assert method.classes == store.tasks["labels"] and method.head.out_features == len(method.classes)
    assert torch.equal(method.targets_RC, torch.from_numpy(multi_hot(store.records, "labels", method.classes)))
    in_folds = store.records["fold"].isin(TRAIN_FOLDS).to_numpy()
    assert torch.equal(method.weight_R, torch.from_numpy(in_folds.astype(np.float32)))
    # derived from the stores: nothing of it goes into checkpoints
    assert not any(k in method.state_dict() for k in ("targets_RC", "weight_R", "store_offset_S"))


@pytest.mark.parametrize("fraction, seed", [(0.25, 0), (0.25, 1), (0.1, 2)])
def test_label_fraction_trains_on_the_records_the_evaluation_trains_on(demo_store, fraction, seed):
    method = supervised([StoreSource(path=str(demo_store), folds=TRAIN_FOLDS)],
                        f"method.params.label_fraction={fraction}", f"method.params.label_seed={seed}")
    store = open_store(demo_store)
    chosen = set(store.records["record_id"][method.weight_R.numpy() == 1])
    data = prepare_data(EvalConfig(store=str(demo_store), task="labels", label_fraction=fraction, seed=seed,
                                   train_folds=TRAIN_FOLDS))
    assert chosen == set(data.train_ids) and 0 < len(chosen) < int(store.records["fold"].isin(TRAIN_FOLDS).sum())


def test_unlabelled_and_held_out_records_do_not_train(small_store):
    method = supervised([StoreSource(path=str(small_store), folds=[1, 10])])   # folds named: all records
    rec = open_store(small_store).records
    labelled = rec["y_labels"].map(len).to_numpy() > 0
    assert (~labelled).sum() == UNLABELLED
    assert torch.equal(method.weight_R, torch.from_numpy(labelled.astype(np.float32)))
    assert not method.targets_RC[torch.from_numpy(~labelled)].any()
    only_fold_1 = supervised([StoreSource(path=str(small_store), folds=[1])])
    assert torch.equal(only_fold_1.weight_R, torch.from_numpy((labelled & (rec["fold"] == 1).to_numpy())
                                                              .astype(np.float32)))
    # A record filter narrows the pool further.
    keep = [str(r) for r in rec["record_id"][labelled][:2]]
    narrowed = supervised([StoreSource(path=str(small_store), folds=[1, 10], records=keep)])
    assert set(rec["record_id"][narrowed.weight_R.numpy() == 1]) == set(keep)


def naive_loss(logits_BC: torch.Tensor, y_BC: torch.Tensor, w_B: torch.Tensor) -> torch.Tensor:
    """Strodthoff et al. 2021's multi-label BCE, window by window and class by class, weighted mean."""
    total, weight = torch.zeros((), dtype=torch.float64), 0.0
    for b in range(logits_BC.shape[0]):
        bce = 0.0
        for c in range(logits_BC.shape[1]):
            p = 1.0 / (1.0 + math.exp(-float(logits_BC[b, c])))
            y = float(y_BC[b, c])
            bce -= y * math.log(p) + (1.0 - y) * math.log(1.0 - p)
        total += float(w_B[b]) * bce / logits_BC.shape[1]
        weight += float(w_B[b])
    return total / max(weight, 1.0)


def test_loss_matches_the_naive_formula_and_skips_unlabelled_windows(demo_store, small_store):
    stores = [StoreSource(path=str(demo_store), folds=TRAIN_FOLDS), StoreSource(path=str(small_store), folds=[1])]
    method = supervised(stores)
    n_demo = len(open_store(demo_store).records)
    assert method.store_offset_S.tolist() == [0, n_demo]
    demo_classes, small_classes = open_store(demo_store).tasks["labels"], open_store(small_store).tasks["labels"]
    assert set(small_classes) < set(demo_classes) and method.classes == demo_classes
    swapped = supervised(stores[::-1])   # one head over the union: first store's classes first
    assert swapped.classes == small_classes + [c for c in demo_classes if c not in small_classes]
    g = torch.Generator().manual_seed(0)
    # windows of: demo fold-1..8 records, a demo fold-9 record, small-store unlabelled and labelled records
    demo_rec = open_store(demo_store).records
    train_row = int(np.flatnonzero(demo_rec["fold"].isin(TRAIN_FOLDS))[0])
    held_out_row = int(np.flatnonzero(demo_rec["fold"] == 9)[0])
    store_B = torch.tensor([0, 0, 0, 1, 1, 1])
    record_B = torch.tensor([train_row, train_row + 1, held_out_row, 0, 1, UNLABELLED])
    batch = {"x": torch.randn(6, 12, 500, generator=g), "store": store_B, "record": record_B}
    rows = method.store_offset_S[store_B] + record_B
    y_BC, w_B = method.targets_RC[rows], method.weight_R[rows]
    assert w_B.tolist() == [1, 1, 0, 0, 0, 1]
    small = open_store(small_store)
    assert torch.equal(y_BC[5], torch.from_numpy(multi_hot(small.records, "labels", method.classes)[UNLABELLED]))

    out = method.training_step(batch, 0)
    with torch.no_grad():
        logits_BC = method.head(method.encoder(batch["x"]))   # train mode: the same batch statistics
    assert out["loss"].item() == pytest.approx(naive_loss(logits_BC, y_BC, w_B).item(), rel=1e-5)
    assert out["labelled_windows"].item() == pytest.approx(0.5)

    # Only unlabelled / held-out windows: loss exactly 0, gradients all zero, nothing non-finite.
    none = {**batch, "store": torch.tensor([0, 1, 1]), "record": torch.tensor([held_out_row, 0, 1]),
            "x": batch["x"][:3]}
    out = method.training_step(none, 1)
    out["loss"].backward()
    assert out["loss"].item() == 0.0
    assert all(p.grad is None or not p.grad.any() for p in method.parameters())


def test_supervised_training_lowers_the_loss_on_a_fixed_batch(demo_store):
    method = supervised([StoreSource(path=str(demo_store), folds=TRAIN_FOLDS)], "encoder.name=xresnet1d18")
    batch = WindowLoader(method.data_cfg).take(1)[0]
    losses = train_steps(method, lambda _: batch, range(4), lr=1e-2)
    assert losses[-1] < losses[0]


def test_supervised_refusals(demo_store):
    with pytest.raises(ValueError, match="training folds"):
        supervised([StoreSource(path=str(demo_store))])
    with pytest.raises(ValueError, match="no task 'all'.*labels"):
        build_method(config("supervised", [StoreSource(path=str(demo_store), folds=TRAIN_FOLDS)]), generator_seed=0)
    with pytest.raises(ValueError, match="data config"):
        Supervised(SupervisedConfig(task="labels"), build_encoder(config("supervised", []).encoder), window=500,
                   generator_seed=0)
    with pytest.raises(ValueError, match="at least 5001 samples"):
        supervised([StoreSource(path=str(demo_store), folds=TRAIN_FOLDS)], "data.window=5001")


# ------------------------------------------------------------------------------------------------
# random_init
# ------------------------------------------------------------------------------------------------

def test_random_init_recipe():
    cfg = recipe_config("random_init")
    assert validate_method(cfg.method) == RandomInitConfig()
    assert cfg.steps == 1 and cfg.optim.lr == 0.0 and cfg.optim.weight_decay == 0.0


def test_random_init_loss_is_exactly_zero_and_connected(demo_store):
    torch.manual_seed(0)
    method = build_method(config("random_init", [StoreSource(path=str(demo_store), folds=TRAIN_FOLDS)]), 0)
    assert isinstance(method, RandomInit)
    method.train()
    assert method.training and not method.encoder.training   # BatchNorm statistics must not move
    out = method.training_step({"x": torch.randn(4, 12, 500)}, 0)
    assert out["loss"].item() == 0.0 and out["loss"].requires_grad
    out["loss"].backward()
    assert all(p.grad is None or not p.grad.any() for p in method.parameters())


def test_random_init_exports_the_seeded_initial_encoder_bit_for_bit(demo_store, tmp_path, no_group):
    cfg = config("random_init", [StoreSource(path=str(demo_store), folds=TRAIN_FOLDS)], "tracking.mode=disabled")
    save_config(cfg, tmp_path / "config.yaml")
    JobRunner("pretrain")(str(tmp_path))
    assert (tmp_path / "DONE").is_file()

    D.seed_everything(cfg.seed)   # what the job did before building the method
    initial = build_method(cfg, generator_seed=cfg.seed).encoder.state_dict()
    exported = export_full_state_dict(tmp_path, "encoder.")
    encoder, _, step, _ = load_pretrained_encoder(tmp_path)   # what the evaluation jobs read
    assert step == 1
    for state in (exported, encoder.state_dict()):
        assert state.keys() == initial.keys()
        assert all(torch.equal(state[k], initial[k]) for k in initial)   # weights and BatchNorm statistics
