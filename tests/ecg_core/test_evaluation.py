"""The shared evaluation core: label subsets, targets, windows, embeddings, record scores, results."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from ecg_core.checkpoint import CheckpointError
from ecg_core.config import save_config
from ecg_core.data.loader import normalize_windows
from ecg_core.data.store import open_store
from ecg_core.evaluation import (
    RESULT_KEYS,
    better,
    embed_records,
    label_subset,
    load_pretrained_encoder,
    multi_hot,
    prepare_data,
    record_scores,
    sliding_windows,
    window_starts,
    write_result,
)
from jobs.config import EvalConfig, PretrainConfig


@pytest.fixture(scope="module")
def store(demo_store):
    return open_store(demo_store)


@pytest.fixture(scope="module")
def train_df(store):
    rec = store.records
    return rec[rec["fold"] <= 8]


def class_counts(df, ids):
    sub = df[df["record_id"].isin(ids)]
    return pd.Series([c for labels in sub["y_labels"] for c in labels]).value_counts()


# ------------------------------------------------------------------------------------------------
# label_subset
# ------------------------------------------------------------------------------------------------

def test_full_fraction_is_every_record(train_df):
    ids = label_subset(train_df, "labels", 1.0, seed=3)
    assert list(ids) == sorted(train_df["record_id"]) and len(ids) == 250


@pytest.mark.parametrize("fraction", [0.5, 0.1, 0.05])
def test_subset_is_stratified_deterministic_and_order_free(train_df, fraction):
    ids = label_subset(train_df, "labels", fraction, seed=0)
    assert len(ids) == round(fraction * len(train_df)) and len(set(ids)) == len(ids)
    assert set(ids) <= set(train_df["record_id"])
    assert list(ids) == sorted(ids)
    counts, pool = class_counts(train_df, ids), class_counts(train_df, train_df["record_id"])
    assert set(counts.index) == set(pool.index)                     # every class present
    assert (abs(counts - fraction * pool) <= 1).all(), (counts, fraction * pool)   # in proportion (random: ~3-5)
    again = label_subset(train_df, "labels", fraction, seed=0)
    shuffled = label_subset(train_df.sample(frac=1.0, random_state=7), "labels", fraction, seed=0)
    assert list(again) == list(ids) and list(shuffled) == list(ids)
    assert list(label_subset(train_df, "labels", fraction, seed=1)) != list(ids)


def test_too_small_a_subset_still_holds_every_class(train_df):
    ids = label_subset(train_df, "labels", 0.02, seed=0)   # 5 records asked for, 8 classes
    assert set(class_counts(train_df, ids).index) == set(class_counts(train_df, train_df["record_id"]).index)
    assert 5 < len(ids) <= 8


def test_rare_classes_and_unlabelled_records():
    labels = [["A"]] * 40 + [["B"]] * 40 + [["A", "C"]] + [[]] * 19
    df = pd.DataFrame({"record_id": [f"r{i:03d}" for i in range(100)], "y_t": labels})
    ids = set(label_subset(df, "t", 0.1, seed=0))
    assert len(ids) == 10 and "r080" in ids                          # the only C record
    assert sum(int(i[1:]) >= 81 for i in ids) == 2                   # unlabelled records in proportion
    with pytest.raises(ValueError, match=r"label fraction must be in \(0, 1\]"):
        label_subset(df, "t", 0.0, seed=0)
    with pytest.raises(ValueError, match="no label column 'y_x'; tasks with labels: \\['t'\\]"):
        label_subset(df, "x", 0.5, seed=0)


# ------------------------------------------------------------------------------------------------
# targets, windows, record scores
# ------------------------------------------------------------------------------------------------

def test_multi_hot_from_names_or_indices():
    df = pd.DataFrame({"y_t": [np.array(["b", "a"]), np.array([], dtype=str), ["c"]]})
    np.testing.assert_array_equal(multi_hot(df, "t", ["a", "b", "c"]), [[1, 1, 0], [0, 0, 0], [0, 0, 1]])
    assert multi_hot(df, "t", ["a", "b", "c"]).dtype == np.float32
    np.testing.assert_array_equal(multi_hot(pd.DataFrame({"y_t": [[2, 0], []]}), "t", 3), [[1, 0, 1], [0, 0, 0]])
    with pytest.raises(ValueError, match="label 'c' is not one of its classes"):
        multi_hot(df, "t", ["a", "b"])
    with pytest.raises(ValueError, match="class index 3 outside 0..2"):
        multi_hot(pd.DataFrame({"y_t": [[3]]}), "t", 3)


def test_sliding_windows():
    x = np.arange(2 * 10, dtype=np.float32).reshape(2, 10)
    w = sliding_windows(x, 4, 3)
    assert w.shape == (3, 2, 4) and list(window_starts(10, 4, 3)) == [0, 3, 6]
    assert list(window_starts(11, 4, 3)) == [0, 3, 6, 7]              # last window aligned to the end
    for i, s in enumerate([0, 3, 6]):
        np.testing.assert_array_equal(w[i], x[:, s:s + 4])
    np.testing.assert_array_equal(sliding_windows(x, 10, 5)[0], x)
    short = sliding_windows(x, 16, 8)                                 # zero-padded on the right
    assert short.shape == (1, 2, 16)
    np.testing.assert_array_equal(short[0, :, :10], x)
    assert not short[0, :, 10:].any()
    with pytest.raises(ValueError, match="must be >= 1"):
        sliding_windows(x, 4, 0)


def test_record_scores_average_windows():
    scores = np.array([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])
    np.testing.assert_allclose(record_scores(scores, np.array([0, 0, 1])), [[2.0, 1.0], [5.0, 5.0]])
    with pytest.raises(ValueError, match="cover each of the 3 records"):
        record_scores(scores, np.array([0, 0, 1]), n_records=3)


def test_better_prefers_higher_then_earlier_and_numbers_over_nan():
    assert better(0.5, None) and better(0.6, 0.5) and not better(0.5, 0.5) and not better(0.4, 0.5)
    assert better(0.1, math.nan) and not better(math.nan, 0.1) and better(math.nan, math.nan)


# ------------------------------------------------------------------------------------------------
# embeddings
# ------------------------------------------------------------------------------------------------

class _MeanMax(nn.Module):
    """A deterministic stand-in encoder: per-lead mean and max, then a linear layer (z_B4)."""

    def __init__(self):
        super().__init__()
        self.out_dim = 4
        self.linear = nn.Linear(24, 4)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x_BLT):
        return self.bn(self.linear(torch.cat([x_BLT.mean(-1), x_BLT.amax(-1)], dim=1)))


def test_embed_records_matches_a_direct_forward(store):
    torch.manual_seed(0)
    enc = _MeanMax()
    ids = list(store.records["record_id"][:5])
    emb, index = embed_records(enc, store, ids, window=1000, stride=1000, batch_size=7, normalize="per_lead")
    assert emb.shape == (25, 4) and emb.dtype == np.float32 and enc.training   # mode restored
    np.testing.assert_array_equal(index, np.repeat(np.arange(5), 5))
    enc.eval()
    with torch.no_grad():
        x = torch.from_numpy(np.concatenate([sliding_windows(store.read(r), 1000, 1000) for r in ids]))
        direct = enc(normalize_windows(x, "per_lead")).numpy()
    np.testing.assert_allclose(emb, direct, rtol=1e-5, atol=1e-6)
    other, _ = embed_records(enc, store, ids, window=1000, stride=1000, batch_size=64, normalize="per_lead")
    np.testing.assert_allclose(other, emb, rtol=1e-5, atol=1e-6)               # batching does not matter
    assert not enc.training                                                     # eval mode kept as found


# ------------------------------------------------------------------------------------------------
# splits, the pretrained encoder, results
# ------------------------------------------------------------------------------------------------

def test_prepare_data_splits_labelled_records(demo_store):
    data = prepare_data(EvalConfig(pretrain_dir="unused", store=str(demo_store), label_fraction=0.2))
    assert (len(data.train_ids), len(data.val_ids), len(data.test_ids)) == (50, 34, 32)
    folds = data.store.records.set_index("record_id")["fold"]
    assert set(folds[data.train_ids]) <= set(range(1, 9)) and set(folds[data.val_ids]) == {9}
    assert set(folds[data.test_ids]) == {10}
    y = data.targets(data.val_ids)
    assert y.shape == (34, 8) and y.sum(axis=1).min() >= 1


def test_prepare_data_errors(demo_store):
    with pytest.raises(ValueError, match=f"{demo_store}: no task 'diag'; the store's tasks are: labels"):
        prepare_data(EvalConfig(pretrain_dir="unused", store=str(demo_store), task="diag"))
    with pytest.raises(ValueError, match=r"train_folds and test_folds share folds \[8\]"):
        prepare_data(EvalConfig(pretrain_dir="unused", store=str(demo_store), test_folds=[8, 10]))
    with pytest.raises(ValueError, match="no store path"):
        prepare_data(EvalConfig(pretrain_dir="unused", dataset="not-a-store"))


def test_load_pretrained_encoder_errors_name_the_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"pretrain_dir {tmp_path}: no config.yaml"):
        load_pretrained_encoder(tmp_path)
    save_config(PretrainConfig(), tmp_path / "config.yaml")
    with pytest.raises(CheckpointError, match=f"pretrain_dir {tmp_path} has no usable checkpoint"):
        load_pretrained_encoder(tmp_path)


def test_write_result_is_complete_json(tmp_path):
    result = {key: 1 for key in RESULT_KEYS} | {"macro_auroc": math.nan, "per_class_auroc": {"A": np.float64(0.5)}}
    path = write_result(tmp_path, result)
    assert path == tmp_path / "result.json" and [p.name for p in tmp_path.iterdir()] == ["result.json"]
    back = json.loads(path.read_text())
    assert back["macro_auroc"] is None and back["per_class_auroc"] == {"A": 0.5}
    with pytest.raises(ValueError, match=r"result lacks keys \['wall_s'\]"):
        write_result(tmp_path, {k: 1 for k in RESULT_KEYS if k != "wall_s"})
