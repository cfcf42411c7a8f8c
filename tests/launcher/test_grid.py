"""Grid expansion and the plan, without any cluster: golden expansion, stable ids, DAG order, strict errors."""
from __future__ import annotations

import itertools
import textwrap
from pathlib import Path

import pytest

from ecg_core.methods import METHODS
from launcher.grid import GridError, load_grid
from launcher.plan import AGGREGATE_KEY, make_plan
from launcher.profiles import load_profile

ROOT = Path(__file__).resolve().parents[2]


def write_grid(tmp_path: Path, text: str, name: str = "g.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


BASE = """\
name: t
recipes: [experiments/simclr.yaml]
dataset: demo
overrides:
  steps: 10
  encoder.params.base_width: 8
"""


def own(grid):
    """The grid's own cells (without the random-init baselines appended per encoder)."""
    return [c for c in grid.cells if not c.baseline_for]


def test_demo_grid_golden_expansion():
    grid = load_grid(ROOT / "grids/demo.yaml")
    # every method once (random_init comes as the baselines), then one baseline per distinct encoder
    assert sorted(c.method for c in own(grid)) == sorted(m for m in METHODS if m != "random_init")
    baselines = [c for c in grid.cells if c.baseline_for]
    assert [c.encoder for c in baselines] == ["xresnet1d50", "cpc_encoder", "vit1d_tiny", "image_vit_base"]
    assert {c.cell_id for c in own(grid)} == {cell for b in baselines for cell in b.baseline_for}
    plan = make_plan(grid, load_profile("local"), runs_root=Path("/runs"), store_tasks={"demo": ["labels"]})
    kinds = [job.kind for job in plan.jobs]
    # 16 pretrain; 16 cells x 2 protocols x 1 task x 2 fractions x 1 seed; robustness of the 100 % linear probes
    assert kinds.count("pretrain") == 16 and kinds.count("linear_eval") == 32 and kinds.count("finetune") == 32
    assert kinds.count("robustness") == 16 and kinds[-1] == "aggregate" and len(kinds) == 97
    c0 = grid.cells[0].cell_id
    assert [j.stage for j in plan.jobs if j.cell_id == c0] == [
        "pretrain", "linear_eval-labels-f0.1-s0", "linear_eval-labels-f1-s0", "robustness-linear_eval-labels-f1-s0",
        "finetune-labels-f0.1-s0", "finetune-labels-f1-s0"]
    assert plan.job(f"{c0}/pretrain").run_dir == Path("/runs/demo") / c0 / "pretrain"
    rob = plan.config_for(plan.job(f"{c0}/robustness-linear_eval-labels-f1-s0"))
    assert rob.eval_dir == str(Path("/runs/demo") / c0 / "linear_eval-labels-f1-s0") and rob.severities == [2, 5]
    agg = plan.config_for(plan.job(AGGREGATE_KEY))
    assert len(agg.expected) == 64 and len(agg.robustness) == 16


def test_baselines_one_random_init_per_encoder(tmp_path):
    text = BASE.replace("  encoder.params.base_width: 8\n", "") + (
        "axes:\n"
        "  optim.lr: [0.1, 0.01]\n"
        "include:\n"
        "  - {recipe: experiments/mae.yaml, encoder.name: vit1d_tiny, encoder.params.depth: 2}\n"
        "evaluation:\n"
        "  protocols: [linear]\n"
        "  label_fractions: [1.0]\n"
        "  seeds: [0]\n"
        "  tasks: [labels]\n")
    grid = load_grid(write_grid(tmp_path, text))
    base = [c for c in grid.cells if c.baseline_for]
    assert [(c.method, c.encoder) for c in base] == [("random_init", "xresnet1d50"), ("random_init", "vit1d_tiny")]
    assert base[0].baseline_for == tuple(c.cell_id for c in own(grid)[:2])
    vit = grid.pretrain_config(base[1])
    mae = grid.pretrain_config(own(grid)[2])
    assert vit.encoder == mae.encoder and vit.data.window == mae.data.window and vit.method.name == "random_init"
    assert vit.steps == 1 and vit.optim.lr == 0.0   # the random_init recipe: weights as initialised
    plan = make_plan(grid, load_profile("local"), runs_root=tmp_path, store_tasks={"demo": ["labels"]})
    stages = [j.stage for j in plan.jobs if j.cell_id == base[0].cell_id]
    # the grid's protocol, plus finetune: the supervised-from-scratch baseline of that encoder
    assert stages == ["pretrain", "linear_eval-labels-f1-s0", "finetune-labels-f1-s0"]
    assert not any(j.kind == "finetune" for j in plan.jobs if j.cell_id in {c.cell_id for c in own(grid)})
    # switched off; and a grid with its own random_init cell of that encoder gets no second one
    off = load_grid(write_grid(tmp_path, text.replace("  tasks: [labels]", "  tasks: [labels]\n  baselines: false"),
                               "off.yaml"))
    assert not any(c.baseline_for for c in off.cells)
    mine = load_grid(write_grid(tmp_path, BASE + "include:\n  - {recipe: experiments/random_init.yaml, "
                                "encoder.params.base_width: 8}\n", "mine.yaml"))
    assert not any(c.baseline_for for c in mine.cells)


def test_include_only_grid_and_robustness_errors(tmp_path):
    text = "name: t\ndataset: demo\ninclude:\n  - {recipe: experiments/simclr.yaml, encoder.params.base_width: 8}\n"
    grid = load_grid(write_grid(tmp_path, text))
    assert [c.method for c in own(grid)] == ["simclr"]
    with pytest.raises(GridError, match="include\\[0\\].*recipe"):
        load_grid(write_grid(tmp_path, "name: t\ninclude:\n  - {seed: 1}\n", "bad.yaml"))
    for extra, message in [("    corruptions: [rain]\n", "unknown corruption 'rain'"),
                           ("    severities: [0, 6]\n", "severities are 1..5"),
                           ("    protocols: [frozen_attention]\n", "not evaluated by this grid")]:
        rob = BASE + "evaluation:\n  robustness:\n    enabled: true\n" + extra
        with pytest.raises(GridError, match=message):
            load_grid(write_grid(tmp_path, rob, "rob.yaml"))


def test_all_methods_grid_expands_every_recipe():
    grid = load_grid(ROOT / "grids/all_methods.yaml")
    recipes = {c.recipe for c in own(grid)}
    assert recipes == set(grid.recipes) and len(own(grid)) == len(grid.recipes)
    assert {c.method for c in own(grid)} == set(METHODS)
    assert len({c.cell_id for c in grid.cells}) == len(grid.cells)


def test_ids_are_stable_and_follow_values_not_order_or_clock(tmp_path):
    g1 = load_grid(write_grid(tmp_path, BASE + "axes:\n  optim.lr: [0.1, 0.01]\n  seed: [1, 2]\n"))
    g2 = load_grid(write_grid(tmp_path, BASE + "axes:\n  optim.lr: [0.1, 0.01]\n  seed: [1, 2]\n", "h.yaml"))
    assert [c.cell_id for c in g1.cells] == [c.cell_id for c in g2.cells]
    # product order: last axis fastest
    assert [c.overrides() for c in own(g1)] == [
        {"optim.lr": lr, "seed": s} for lr, s in itertools.product([0.1, 0.01], [1, 2])]
    # a different grid-wide value changes every id; the same cell in a bigger grid keeps its id
    changed = BASE.replace("steps: 10", "steps: 11")
    g3 = load_grid(write_grid(tmp_path, changed + "axes:\n  optim.lr: [0.1]\n  seed: [1]\n"))
    assert g3.cells[0].cell_id not in {c.cell_id for c in g1.cells}
    g4 = load_grid(write_grid(tmp_path, BASE + "axes:\n  optim.lr: [0.1]\n  seed: [1]\n"))
    assert g4.cells[0].cell_id == g1.cells[0].cell_id


def test_zip_include_exclude(tmp_path):
    grid = load_grid(write_grid(tmp_path, BASE + textwrap.dedent("""\
        axes:
          seed: [0, 1]
        zip:
          - optim.lr: [0.1, 0.01]
            optim.warmup_steps: [1, 2]
        exclude:
          - {seed: 1, optim.lr: 0.01}
        include:
          - {seed: 7, optim.lr: 0.5}
        """)))
    assert [c.overrides() for c in own(grid)] == [
        {"seed": 0, "optim.lr": 0.1, "optim.warmup_steps": 1},
        {"seed": 0, "optim.lr": 0.01, "optim.warmup_steps": 2},
        {"seed": 1, "optim.lr": 0.1, "optim.warmup_steps": 1},
        {"seed": 7, "optim.lr": 0.5},
    ]
    cfg = grid.pretrain_config(grid.cells[1])
    assert cfg.optim.lr == 0.01 and cfg.optim.warmup_steps == 2 and cfg.steps == 10 and cfg.seed == 0


def test_command_line_overrides_change_cells_and_grid(tmp_path):
    grid = load_grid(write_grid(tmp_path, BASE), ["steps=3", "evaluation.seeds=[4]", "name=other"])
    assert grid.name == "other" and grid.evaluation.seeds == [4]
    assert grid.pretrain_config(grid.cells[0]).steps == 3


@pytest.mark.parametrize("extra, where, reason", [
    ("axes:\n  optim.lrr: [0.1]\n", "cells[0]", "optim.lrr"),
    ("axes:\n  optim.lr: [fast]\n", "cells[0]", "optim.lr"),
    ("axes:\n  method.params.temprature: [0.1]\n", "cells[0]", "temprature"),
    ("axes:\n  encoder.name: [resnet9000]\n", "cells[0]", "encoder.name"),
    ("axes:\n  method.name: [nosuch]\n", "cells[0]", "method.name"),
    ("axes:\n  seed: 3\n", "axes.seed", "non-empty list"),
    ("zip:\n  - {seed: [1, 2], steps: [1]}\n", "zip[0]", "equal lengths"),
    ("evaluation:\n  protocols: [knn]\n", "evaluation.protocols", "knn"),
    ("evaluation:\n  label_fractions: [0]\n", "evaluation.label_fractions", "(0, 1]"),
    ("evaluation:\n  linear:\n    linear_epoch: 3\n", "linear_epoch", "linear_epoch"),
    ("resources:\n  pretrain: {gpus: 2}\n", "resources.pretrain.gpus", "unknown resource"),
    ("resources:\n  trainer: {nodes: 2}\n", "resources.trainer", "unknown stage"),
    ("colour: blue\n", "colour", "unknown grid key"),
])
def test_invalid_grids_name_file_cell_and_key(tmp_path, extra, where, reason):
    path = write_grid(tmp_path, BASE + extra)
    with pytest.raises(GridError) as info:
        load_grid(path)
    message = str(info.value)
    assert str(path) in message and where in message and reason in message, message
    assert "\n" not in message


def test_invalid_cell_error_names_the_cell_id(tmp_path):
    path = write_grid(tmp_path, BASE + "axes:\n  optim.lr: [0.1, oops]\n")
    with pytest.raises(GridError) as info:
        load_grid(path)
    grid_ok = load_grid(write_grid(tmp_path, BASE + "axes:\n  optim.lr: [0.1, 0.2]\n", "ok.yaml"))
    assert "cells[1] (simclr-" in str(info.value)
    assert grid_ok.cells[1].cell_id.startswith("simclr-")


def test_plan_dag_order_and_dependencies(tmp_path):
    grid = load_grid(write_grid(tmp_path, BASE + textwrap.dedent("""\
        axes:
          seed: [0, 1]
        evaluation:
          protocols: [linear]
          label_fractions: [0.5]
          seeds: [0]
          tasks: [labels]
          baselines: false
        resources:
          pretrain: {tasks_per_node: 2}
        """)))
    plan = make_plan(grid, load_profile("local"), runs_root=tmp_path, store_tasks={"demo": ["labels"]})
    position = {job.key: i for i, job in enumerate(plan.jobs)}
    for job in plan.jobs:
        for dep in job.depends_on:
            assert position[dep] < position[job.key]
    agg = plan.job(AGGREGATE_KEY)
    assert agg.dependency == "afterany" and len(agg.depends_on) == 2
    pre = plan.jobs[0]
    assert dict(pre.resources) == {"tasks_per_node": 2}
    assert plan.dependents({pre.key}) == {pre.key, f"{pre.cell_id}/linear_eval-labels-f0.5-s0", AGGREGATE_KEY}
    ev = plan.config_for(plan.jobs[2])
    assert ev.pretrain_dir == str(pre.run_dir) and ev.label_fraction == 0.5 and ev.protocol == "linear"
    pc = plan.config_for(pre)
    assert pc.data.stores[0].folds == [1, 2, 3, 4, 5, 6, 7, 8] and pc.tracking.group == "t"
    assert pc.tracking.run_id == plan.config_for(pre).tracking.run_id != ev.tracking.run_id


def test_unknown_task_and_dataset_are_errors(tmp_path):
    grid = load_grid(write_grid(tmp_path, BASE + "evaluation:\n  tasks: [rhythm]\n"))
    with pytest.raises(GridError, match="task 'rhythm' is not in the store"):
        make_plan(grid, load_profile("local"), store_tasks={"demo": ["labels"]})
    grid = load_grid(write_grid(tmp_path, BASE.replace("dataset: demo", "dataset: ptbxl"), "p.yaml"))
    with pytest.raises(GridError, match="no store for dataset 'ptbxl'"):
        make_plan(grid, load_profile("local"), store_tasks={})


def test_ids_ignore_recipe_comments_and_follow_recipe_values(tmp_path):
    recipe = (ROOT / "experiments/simclr.yaml").read_text()
    (tmp_path / "r1.yaml").write_text(recipe)
    (tmp_path / "r2.yaml").write_text("# a new comment\n" + recipe.replace("# seed:", "# the seed:"))
    (tmp_path / "r3.yaml").write_text(recipe.replace("temperature: 0.5", "temperature: 0.3"))
    ids = {}
    for name in ("r1", "r2", "r3"):
        text = BASE.replace("experiments/simclr.yaml", str(tmp_path / f"{name}.yaml"))
        ids[name] = load_grid(write_grid(tmp_path, text, f"g_{name}.yaml")).cells[0].cell_id
    assert ids["r1"] == ids["r2"] != ids["r3"]


def test_grid_dataset_reaches_every_cell_and_its_store(tmp_path):
    store = tmp_path / "elsewhere.zarr"
    grid = load_grid(write_grid(tmp_path, BASE.replace("dataset: demo", f"dataset: {store}")))
    plan = make_plan(grid, load_profile("local"), runs_root=tmp_path, store_tasks={str(store): ["labels"]})
    cfg = plan.config_for(plan.jobs[0])
    assert cfg.dataset == str(store) and cfg.data.stores[0].path == str(store)
    first_eval = next(j for j in plan.jobs if j.kind == "linear_eval")
    assert plan.config_for(first_eval).store == str(store)
