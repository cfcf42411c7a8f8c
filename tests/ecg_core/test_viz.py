"""Tests of :mod:`ecg_core.viz`: the ``views`` CLI writes real PNG files for methods with augmentations
(SimCLR), masks (MAE) and a learned perturbation (Viewmaker) on the demo store, and fails with a one-line
error on a bad recipe path.

Shapes: ``L`` leads, ``T`` time samples.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ecg_core import viz

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Tiny versions of each recipe (as tests/ecg_core/test_method_contract.py's TINY_OVERRIDES): cheap to build.
TINY = {
    "simclr": ["data.window=500", "encoder.params.base_width=4"],
    "viewmaker": ["data.window=500", "encoder.params.base_width=4", "method.params.viewmaker_width=4"],
    "mae": ["data.window=500", "encoder.params.depth=1", "encoder.params.dim=32", "encoder.params.heads=2",
            "method.params.decoder_dim=16", "method.params.decoder_depth=1", "method.params.decoder_heads=2"],
}


def run_cli(name: str, store: Path, out: Path, *extra: str) -> int:
    sets = [a for kv in TINY[name] for a in ("--set", kv)]
    return viz.main(["views", "--recipe", str(ROOT / "experiments" / f"{name}.yaml"), "--store", str(store),
                     "--out", str(out), *sets, *extra])


@pytest.mark.parametrize("name", sorted(TINY))
def test_cli_writes_a_png(name, demo_store, tmp_path, capsys):
    assert run_cli(name, demo_store, tmp_path) == 0
    written = Path(capsys.readouterr().out.strip())
    assert written.parent == tmp_path and written.suffix == ".png"
    data = written.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000   # a real image, not an empty canvas


def test_record_and_seed_options(demo_store, tmp_path, capsys):
    assert run_cli("simclr", demo_store, tmp_path, "--record", "P0000_02", "--seed", "3") == 0
    assert capsys.readouterr().out.strip().endswith("simclr_views_P0000_02.png")


def test_views_per_method_kind():
    """Augmentation methods give input + 2 views; a method without views gives the input and a note."""
    from ecg_core.encoders import build_encoder
    from ecg_core.methods import build_method  # noqa: F401  (the registry must import)
    from ecg_core.methods.random_init import RandomInit
    from ecg_core.methods.simclr import SimCLR, SimCLRConfig
    from jobs.config import EncoderConfig

    torch.manual_seed(0)
    x_BLT = torch.randn(1, 12, 500)
    enc = build_encoder(EncoderConfig(name="xresnet1d50", params={"base_width": 4}), window=500)
    gen = torch.Generator().manual_seed(0)
    panels, note = viz.method_views(SimCLR(SimCLRConfig(), enc, window=500, generator_seed=0), x_BLT, gen)
    assert [p.title for p in panels] == ["input", "view 1", "view 2"] and note == ""
    assert all(p.x_LT.shape == (12, 500) for p in panels)
    method = RandomInit(RandomInit.Config(), enc, window=500, generator_seed=0)
    panels, note = viz.method_views(method, x_BLT, gen)
    assert len(panels) == 1 and "no views" in note


def test_bad_recipe_path_is_a_one_line_error(demo_store, tmp_path, capsys):
    code = viz.main(["views", "--recipe", str(tmp_path / "nope.yaml"), "--store", str(demo_store),
                     "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "recipe not found" in err and "nope.yaml" in err
    assert not list(tmp_path.glob("*.png"))
