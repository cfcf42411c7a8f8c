"""MECLIP: the CLIP loss modes against naive loop-by-loop formulas, the report tokenizer, CPU training steps.

Shapes: ``N`` batch, ``P`` embedding width, ``B`` batch, ``L`` leads, ``T`` time, ``K`` tokens.
"""
from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ecg_core import distributed as D
from ecg_core.config import ConfigError, load_config
from ecg_core.data.config import StoreSource
from ecg_core.data.store import open_store
from ecg_core.losses.clip import clip_loss
from ecg_core.methods import METHODS, build_method, validate_method
from ecg_core.methods.meclip import (MECLIP, MECLIPConfig, normalize_report, report_id, report_tables,
                                     train_tokenizer)
from jobs.config import MethodConfig, PretrainConfig

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "experiments" / "meclip.yaml"
TINY = ["data.window=500", "data.batch_size=4", "encoder.params.base_width=4", "method.params.text_depth=1",
        "method.params.text_dim=16", "method.params.text_heads=2", "method.params.projection_hidden_dim=32",
        "method.params.projection_dim=16", "method.params.vocab_size=300"]


# ------------------------------------------------------------------------------------------------
# The loss against naive formulas
# ------------------------------------------------------------------------------------------------

def naive_clip(a, b, scale, ids, mode, rows=None):
    """Loop-by-loop: for each anchor and direction, the cross-entropy terms written out with math.exp/log."""
    N = len(a)
    a = [[float(v) for v in r / r.norm()] for r in a.double()]
    b = [[float(v) for v in r / r.norm()] for r in b.double()]
    rows = range(N) if rows is None else [int(r) for r in rows]

    def sim(u, v):
        return scale * sum(x * y for x, y in zip(u, v))

    total = 0.0
    for r in rows:
        for anchor, cands in ((a[r], b), (b[r], a)):
            s = [sim(anchor, cands[j]) for j in range(N)]
            if mode == "clip":
                total += 0.5 * (-s[r] + math.log(sum(math.exp(v) for v in s)))
                continue
            negatives = [j for j in range(N) if ids[j] != ids[r]]
            positives = [r] if mode == "mutually_exclusive" else [j for j in range(N) if ids[j] == ids[r]]
            terms = []
            for p in positives:
                denominator = math.exp(s[p]) + sum(math.exp(s[j]) for j in negatives)
                terms.append(-math.log(math.exp(s[p]) / denominator))
            total += 0.5 * sum(terms) / len(terms)
    return total / len(rows)


@pytest.mark.parametrize("mode", ["clip", "mutually_exclusive", "off_diagonal"])
@pytest.mark.parametrize("ids", [[0, 1, 2, 3, 4, 5], [7, 3, 7, 7, 1, 3], [5, 5, 5, 5, 5, 5]])
def test_loss_matches_naive_formula(mode, ids):
    g = torch.Generator().manual_seed(len(set(ids)))
    a, b = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    id_N = torch.tensor(ids)
    got = clip_loss(a, b, 3.0, id_N=id_N, mode=mode)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(naive_clip(a, b, 3.0, ids, mode), rel=1e-5, abs=1e-6)
    rows = torch.tensor([1, 3, 4])   # one rank's rows of a gathered batch
    got = clip_loss(a, b, torch.tensor(3.0), id_N=id_N, mode=mode, rows=rows)
    assert got.item() == pytest.approx(naive_clip(a, b, 3.0, ids, mode, rows), rel=1e-5, abs=1e-6)


def test_modes_agree_without_duplicates_and_gradients_are_finite():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(8, 4, generator=g, requires_grad=True)
    b = torch.randn(8, 4, generator=g)
    ids = torch.arange(8)
    losses = [clip_loss(a, b, 10.0, id_N=ids, mode=m) for m in ("clip", "mutually_exclusive", "off_diagonal")]
    torch.testing.assert_close(losses[0], losses[1])
    torch.testing.assert_close(losses[0], losses[2])
    # One report for the whole batch: no negatives, loss 0 with finite (zero) gradients in the seed modes.
    loss = clip_loss(a, b, 10.0, id_N=torch.zeros(8, dtype=torch.int64), mode="mutually_exclusive")
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(a.grad).all() and (a.grad == 0).all()
    with pytest.raises(ValueError, match="identities"):
        clip_loss(a, b, 1.0, mode="off_diagonal")
    with pytest.raises(ValueError, match="mode"):
        clip_loss(a, b, 1.0, id_N=ids, mode="nope")


# ------------------------------------------------------------------------------------------------
# Tokenizer
# ------------------------------------------------------------------------------------------------

def _vocab_json(texts):
    return train_tokenizer(texts, 300).to_str()


def test_tokenizer_is_deterministic_and_round_trips_the_demo_reports(demo_store):
    reports = [r for r in open_store(demo_store).records["report"].astype(str) if r]
    assert len(reports) > 100
    tok = train_tokenizer(reports, 300)
    assert tok.token_to_id("<pad>") == 0 and tok.token_to_id("<cls>") == 1
    # Same result in another order and in another process (Rust hash maps are seeded per process).
    assert tok.to_str() == train_tokenizer(reports[::-1], 300).to_str()
    code = ("import json, sys; from ecg_core.methods.meclip import train_tokenizer; "
            "print(train_tokenizer(json.loads(sys.stdin.read()), 300).to_str())")
    other = subprocess.run([sys.executable, "-c", code], input=json.dumps(reports), capture_output=True,
                           text=True, check=True, cwd=ROOT).stdout.strip()
    assert other == tok.to_str()
    for text in reports:
        norm = normalize_report(text)
        ids = tok.encode(norm).ids
        assert tok.decode(ids) == norm
        assert tok.decode(ids).split() == text.lower().split()
        assert len(ids) < len(norm.encode())    # the merges compress
    assert report_id("Sinus  rhythm. ") == report_id("sinus rhythm.") != report_id("sinus rhythm")


def test_report_tables(demo_store):
    cfg = MECLIPConfig(vocab_size=300, max_tokens=12)
    data = load_config(PretrainConfig, [RECIPE]).data
    data = dataclasses.replace(data, stores=[StoreSource(path=str(demo_store), folds=[1, 2])])
    tok, tokens_RK, id_R, offset_S = report_tables(data, cfg)
    rec = open_store(demo_store).records
    assert tokens_RK.shape == (len(rec), 12) and (tokens_RK[:, 0] == 1).all() and list(offset_S) == [0]
    assert tokens_RK.max() < 300
    r = 5
    assert id_R[r] == report_id(rec["report"].iloc[r])
    assert normalize_report(rec["report"].iloc[r]).startswith(tok.decode(list(tokens_RK[r, 1:])))
    with pytest.raises(ValueError, match="store"):
        report_tables(None, cfg)


# ------------------------------------------------------------------------------------------------
# Method
# ------------------------------------------------------------------------------------------------

def test_registry_recipe_and_config():
    assert METHODS["meclip"] is MECLIP
    cfg = load_config(PretrainConfig, [RECIPE])
    assert validate_method(cfg.method) == MECLIPConfig()
    assert cfg.method.params == dataclasses.asdict(MECLIPConfig())
    for key, value in (("mode", "nope"), ("temperature", 0.0), ("text_dim", 15), ("vocab_size", 10)):
        with pytest.raises(ConfigError, match=f"method.params.{key}"):
            validate_method(MethodConfig(name="meclip", params={key: value}))


@pytest.mark.parametrize("mode,learn", [("clip", True), ("off_diagonal", False)])
def test_two_cpu_steps_finite_and_changing(demo_store, one_rank_group, mode, learn):
    """Under FSDP2 on one gloo rank; the second case is the seed's fixed tau = 0.1 (a frozen parameter)."""
    torch.manual_seed(0)
    overrides = [f"method.params.mode={mode}", f"method.params.learn_temperature={str(learn).lower()}",
                 f"method.params.temperature={0.07 if learn else 0.1}"]
    cfg = load_config(PretrainConfig, [RECIPE], [*TINY, *overrides])
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, stores=[StoreSource(path=str(demo_store))]))
    method = build_method(cfg, generator_seed=0)
    method = D.shard_model(method, method.fsdp_blocks(), mixed_precision=False)
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    # Records 0, 1, 2, 0: a duplicate pair (same report) in the batch.
    batch = {"x": torch.randn(4, 12, 500, generator=g), "lead_mask": torch.ones(4, 12, dtype=torch.bool),
             "store": torch.zeros(4, dtype=torch.int64), "record": torch.tensor([0, 1, 2, 0]),
             "start": torch.zeros(4, dtype=torch.int64)}
    losses = []
    for step in range(2):
        out = method.training_step(batch, step)
        assert set(out) >= {"loss", "logit_scale", "positive_similarity", "same_report_pairs"}
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    assert all(math.isfinite(v) for v in losses) and losses[0] != losses[1]
    assert out["same_report_pairs"].item() >= 0.5   # rows 0 and 3 share their report
    if learn:
        assert out["logit_scale"].item() == pytest.approx(1 / 0.07, rel=0.01)
    else:
        assert out["logit_scale"].item() == pytest.approx(10.0, rel=1e-6)
