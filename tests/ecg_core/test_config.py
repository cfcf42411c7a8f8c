"""Tests for ecg_core.config: layered, strict, typed configs (real YAML files under tmp_path, no mocks)."""
import enum
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ecg_core.config import ConfigError, config_hash, from_yaml, load_config, save_config, to_yaml


class Norm(enum.Enum):
    BATCH = "batch"
    LAYER = "layer"


@dataclass
class DataCfg:
    batch_size: int = 32
    sample_rate: int = 500
    window_s: float = 10.0
    root: Path = Path("data/demo")
    sources: list[str] = field(default_factory=lambda: ["ptbxl", "cinc2021"])
    weights: dict[str, float] = field(default_factory=dict)


@dataclass
class OptimCfg:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.05


@dataclass
class HeadCfg:
    dim: int = 128
    norm: Norm = Norm.LAYER


@dataclass
class TrainCfg:
    name: str = MISSING
    seed: int = 0
    amp: bool = False
    notes: Optional[str] = None
    max_steps: Optional[int] = 1000
    norm: Norm = Norm.BATCH
    tag: str = "${name}-s${seed}"
    data: DataCfg = field(default_factory=DataCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    head: Optional[HeadCfg] = None
    heads: list[HeadCfg] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def raises_config_error(*args: Any, **kwargs: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, "ConfigError messages are one line"
    return info.value


# ----------------------------------------------------------------------------------------------------
# Layering and types
# ----------------------------------------------------------------------------------------------------


def test_defaults_and_nested_dataclass_defaults():
    cfg = load_config(TrainCfg, overrides=["name=demo"])
    assert isinstance(cfg, TrainCfg)
    assert isinstance(cfg.data, DataCfg) and isinstance(cfg.optim, OptimCfg)
    assert cfg.data == DataCfg() and cfg.optim == OptimCfg()
    assert cfg.head is None and cfg.heads == []
    assert cfg.norm is Norm.BATCH
    assert cfg.tag == "demo-s0"  # interpolation resolved before returning


def test_precedence_defaults_file1_file2_overrides(tmp_path):
    f1 = write(tmp_path / "one.yaml", "name: one\nseed: 1\ndata:\n  batch_size: 64\noptim:\n  lr: 0.1\n")
    f2 = write(tmp_path / "two.yaml", "seed: 2\ndata:\n  batch_size: 128\n")
    cfg = load_config(TrainCfg, [f1, str(f2)], ["seed=3"])
    assert cfg.name == "one"  # file1 only
    assert cfg.data.batch_size == 128  # file2 beats file1
    assert cfg.seed == 3  # override beats both files
    assert cfg.optim.lr == 0.1 and cfg.data.sample_rate == 500  # untouched keys keep lower layers
    assert cfg.tag == "one-s3"
    # Later overrides beat earlier ones.
    assert load_config(TrainCfg, [f1], ["seed=4", "seed=5"]).seed == 5


def test_base_instance_replaces_dataclass_defaults(tmp_path):
    recipe = TrainCfg(name="recipe", optim=OptimCfg(lr=0.5), data=DataCfg(batch_size=8))
    f = write(tmp_path / "f.yaml", "data:\n  batch_size: 16\n")
    cfg = load_config(TrainCfg, [f], base=recipe)
    assert (cfg.name, cfg.optim.lr, cfg.data.batch_size) == ("recipe", 0.5, 16)
    assert recipe.data.batch_size == 8, "the base instance is not modified"
    with pytest.raises(TypeError):
        load_config(TrainCfg, base=DataCfg())  # type: ignore[arg-type]


def test_values_are_converted_to_declared_types(tmp_path):
    f = write(
        tmp_path / "f.yaml",
        "name: x\nnorm: LAYER\namp: true\n"
        "data:\n  window_s: 5\n  root: /mnt/ecg\noptim:\n  betas: [0.8, 0.9]\n",
    )
    cfg = load_config(TrainCfg, [f])
    assert cfg.norm is Norm.LAYER and cfg.amp is True
    assert isinstance(cfg.data.window_s, float) and cfg.data.window_s == 5.0
    assert cfg.data.root == Path("/mnt/ecg") and isinstance(cfg.data.root, Path)
    assert cfg.optim.betas == (0.8, 0.9) and isinstance(cfg.optim.betas, tuple)


def test_list_dict_and_null_overrides():
    cfg = load_config(
        TrainCfg,
        overrides=[
            "name=x",
            "optim.betas=[0.9,0.95]",
            "data.sources=[a,b,c]",
            "data.weights={ptbxl: 2, georgia: 0.5}",
            "data.weights.cpsc=1.5",
            "max_steps=null",
            "notes=hello world",
            "head={dim: 64}",
            "heads=[{dim: 8}, {dim: 16, norm: BATCH}]",
            "extra={anything: [1, 2]}",
        ],
    )
    assert cfg.optim.betas == (0.9, 0.95)
    assert cfg.data.sources == ["a", "b", "c"]
    assert cfg.data.weights == {"ptbxl": 2.0, "georgia": 0.5, "cpsc": 1.5}
    assert cfg.max_steps is None and cfg.notes == "hello world"
    assert cfg.head == HeadCfg(dim=64)
    assert cfg.heads == [HeadCfg(dim=8), HeadCfg(dim=16, norm=Norm.BATCH)]
    assert cfg.extra == {"anything": [1, 2]}


def test_list_in_a_later_file_replaces_the_earlier_list(tmp_path):
    f1 = write(tmp_path / "a.yaml", "name: x\ndata:\n  sources: [a, b, c]\n  weights: {a: 1}\n")
    f2 = write(tmp_path / "b.yaml", "data:\n  sources: [z]\n  weights: {b: 2}\n")
    cfg = load_config(TrainCfg, [f1, f2])
    assert cfg.data.sources == ["z"]  # lists are replaced
    assert cfg.data.weights == {"a": 1.0, "b": 2.0}  # mappings are merged


def test_interpolations_resolve_across_sources(tmp_path):
    text = "name: run\ndata:\n  sample_rate: ${data.batch_size}\nnotes: ${data.root}/x\n"
    f = write(tmp_path / "f.yaml", text)
    cfg = load_config(TrainCfg, [f], ["data.batch_size=250"])
    assert cfg.data.sample_rate == 250 and cfg.notes == "data/demo/x"


def test_empty_file_changes_nothing(tmp_path):
    f = write(tmp_path / "empty.yaml", "")
    assert load_config(TrainCfg, [f], ["name=x"]) == load_config(TrainCfg, overrides=["name=x"])


# ----------------------------------------------------------------------------------------------------
# Errors name key, source and problem
# ----------------------------------------------------------------------------------------------------


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    good = write(tmp_path / "good.yaml", "name: x\n")
    bad = write(tmp_path / "bad.yaml", "data:\n  batch_sz: 64\n")
    err = raises_config_error(TrainCfg, [good, bad])
    assert err.key == "data.batch_sz" and err.source == str(bad)
    assert "data.batch_sz" in str(err) and str(bad) in str(err)
    assert "unknown key" in str(err) and "batch_size" in str(err)  # suggests the near miss
    assert str(good) not in str(err)


def test_unknown_top_level_key_in_file(tmp_path):
    bad = write(tmp_path / "bad.yaml", "name: x\nnot_a_field: 1\n")
    err = raises_config_error(TrainCfg, [bad])
    assert err.key == "not_a_field" and err.source == str(bad) and "unknown key" in err.reason


def test_unknown_key_on_command_line():
    err = raises_config_error(TrainCfg, overrides=["name=x", "optim.lrr=0.1"])
    assert err.key == "optim.lrr"
    assert "command line" in str(err) and "optim.lrr" in str(err) and "unknown key" in str(err)
    assert "'lr'" in str(err)


@pytest.mark.parametrize(
    "override, key, near",
    [
        ("head={dimm: 3}", "head.dimm", "dim"),  # inside an Optional dataclass that was None
        ("heads=[{dim: 1}, {dimm: 3}]", "heads[1].dimm", "dim"),  # inside a new list element
        ("data.weights={a: 1}", None, None),  # dict-typed fields are open: no error
    ],
)
def test_unknown_keys_in_nested_containers(override, key, near):
    if key is None:
        assert load_config(TrainCfg, overrides=["name=x", override]).data.weights == {"a": 1.0}
        return
    err = raises_config_error(TrainCfg, overrides=["name=x", override])
    assert err.key == key and "unknown key" in err.reason and f"'{near}'" in err.reason


def test_unknown_key_in_list_element_from_file(tmp_path):
    bad = write(tmp_path / "bad.yaml", "name: x\nheads:\n  - dim: 1\n  - {dim: 2, nrom: BATCH}\n")
    err = raises_config_error(TrainCfg, [bad])
    assert err.key == "heads[1].nrom" and err.source == str(bad) and "'norm'" in err.reason


@pytest.mark.parametrize(
    "text, key, expected, got",
    [
        ("data:\n  batch_size: abc\n", "data.batch_size", "int", "'abc'"),
        ("data:\n  batch_size: null\n", "data.batch_size", "int", "None"),
        ("norm: GROUP\n", "norm", "Norm (one of BATCH, LAYER)", "'GROUP'"),
        ("data: 5\n", "data", "DataCfg", "5"),
        ("optim:\n  betas: [0.1, 0.2, 0.3]\n", "optim.betas", "tuple[float, float]", "[0.1, 0.2, 0.3]"),
        ("data:\n  weights: {ptbxl: heavy}\n", "data.weights.ptbxl", "float", "'heavy'"),
        ("amp: maybe\n", "amp", "bool", "'maybe'"),
        ("head: 3\n", "head", "Optional[HeadCfg]", "3"),
        ("heads: [{dim: 1}, 5]\n", "heads[1]", "HeadCfg", "5"),
        ("heads: [{dim: 1}, {dim: x}]\n", "heads[1].dim", "int", "'x'"),
    ],
)
def test_wrong_type_in_file_names_key_file_type_and_value(tmp_path, text, key, expected, got):
    bad = write(tmp_path / "bad.yaml", "name: x\n" + text)
    err = raises_config_error(TrainCfg, [bad])
    assert err.key == key and err.source == str(bad)
    assert "wrong type" in err.reason and expected in err.reason and got in err.reason
    assert key in str(err) and str(bad) in str(err)


def test_wrong_type_on_command_line():
    err = raises_config_error(TrainCfg, overrides=["name=x", "data.batch_size=abc"])
    assert err.key == "data.batch_size" and "command line" in err.source
    assert "data.batch_size=abc" in str(err) and "int" in err.reason and "'abc'" in err.reason
    err = raises_config_error(TrainCfg, overrides=["name=x", "heads=[{dim: 3}]", "heads[0].dim=x"])
    assert err.key == "heads[0].dim" and "int" in err.reason and "'x'" in err.reason
    err = raises_config_error(TrainCfg, overrides=["name=x", "head=3"])
    assert err.key == "head" and "Optional[HeadCfg]" in err.reason


@pytest.mark.parametrize("override", ["name", "=3", ""])
def test_malformed_override(override):
    err = raises_config_error(TrainCfg, overrides=[override])
    assert "command line" in str(err) and "key=value" in str(err)


def test_override_value_with_bad_yaml():
    err = raises_config_error(TrainCfg, overrides=["data.sources=[a,b"])
    assert err.key == "data.sources" and "command line" in err.source


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    bad = write(tmp_path / "bad.yaml", "name: x\nseed: 1\n  amp: true\n")
    err = raises_config_error(TrainCfg, [bad])
    assert err.source == f"{bad}:3" and err.key is None
    assert f"{bad}:3" in str(err) and "YAML syntax error" in str(err)


def test_duplicate_key_is_a_yaml_error(tmp_path):
    bad = write(tmp_path / "dup.yaml", "name: x\nseed: 1\nseed: 2\n")
    err = raises_config_error(TrainCfg, [bad])
    assert err.source.startswith(str(bad)) and "duplicate key" in str(err)


def test_top_level_list_is_rejected(tmp_path):
    bad = write(tmp_path / "list.yaml", "- name\n- seed\n")
    err = raises_config_error(TrainCfg, [bad])
    assert err.source == str(bad) and "mapping" in err.reason


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    err = raises_config_error(TrainCfg, [missing], ["name=x"])
    assert err.source == str(missing) and "not found" in str(err)


def test_missing_required_value_names_it(tmp_path):
    err = raises_config_error(TrainCfg)
    assert err.key == "name" and "name" in str(err) and "???" in str(err) and "missing" in str(err)
    # Explicitly set back to ??? in a file: the file is named as the source.
    f = write(tmp_path / "f.yaml", "name: ???\n")
    err = raises_config_error(TrainCfg, [f], ["seed=1"])
    assert err.key == "name" and err.source == str(f)


def test_unresolvable_interpolation_names_key_and_source(tmp_path):
    f = write(tmp_path / "f.yaml", "name: x\nnotes: ${data.no_such_key}\n")
    err = raises_config_error(TrainCfg, [f])
    assert err.key == "notes" and err.source == str(f) and "interpolation" in err.reason
    bad_syntax = write(tmp_path / "g.yaml", "name: x\nnotes: ${data.root\n")
    err = raises_config_error(TrainCfg, [bad_syntax])
    assert err.key == "notes" and err.source == str(bad_syntax) and "interpolation" in err.reason
    # An interpolation that resolves to a value of the wrong type.
    err = raises_config_error(TrainCfg, overrides=["name=x", "seed=${name}"])
    assert err.key == "seed" and "command line" in err.source


def test_error_chains_the_original_exception(tmp_path):
    bad = write(tmp_path / "bad.yaml", "data:\n  batch_sz: 64\n")
    err = raises_config_error(TrainCfg, [bad])
    assert err.__cause__ is not None and isinstance(err, ValueError)


def test_api_misuse_raises_type_error(tmp_path):
    f = write(tmp_path / "f.yaml", "name: x\n")
    with pytest.raises(TypeError):
        load_config(TrainCfg, str(f))  # a single path instead of a list
    with pytest.raises(TypeError):
        load_config(TrainCfg, overrides="name=x")
    with pytest.raises(TypeError):
        load_config(dict)  # type: ignore[arg-type]

    @dataclass
    class Reserved:
        defaults: list[str] = field(default_factory=list)

    with pytest.raises(TypeError, match="reserved"):
        load_config(Reserved)


# ----------------------------------------------------------------------------------------------------
# `defaults:` composition
# ----------------------------------------------------------------------------------------------------


def test_defaults_composition_merges_includes_first(tmp_path):
    base = "name: base\nseed: 1\ndata:\n  batch_size: 16\n  sample_rate: 250\n"
    write(tmp_path / "common" / "base.yaml", base)
    write(tmp_path / "common" / "big_batch.yaml", "data:\n  batch_size: 512\n")
    write(
        tmp_path / "methods" / "simclr.yaml",
        "defaults: [../common/base.yaml, ../common/big_batch.yaml]\nname: simclr\noptim:\n  lr: 0.3\n",
    )
    top = write(tmp_path / "exp.yaml", "defaults:\n  - methods/simclr.yaml\nseed: 7\n")
    cfg = load_config(TrainCfg, [top], ["optim.lr=0.1"])
    assert cfg.data.sample_rate == 250  # from base, two levels down
    assert cfg.data.batch_size == 512  # later include beats earlier include
    assert cfg.name == "simclr"  # including file beats its includes
    assert cfg.seed == 7  # top file beats everything it includes
    assert cfg.optim.lr == 0.1  # command line beats all files


def test_error_in_included_file_names_that_file(tmp_path):
    inc = write(tmp_path / "inc.yaml", "data:\n  batchsize: 3\n")
    top = write(tmp_path / "top.yaml", "defaults: [inc.yaml]\nname: x\n")
    err = raises_config_error(TrainCfg, [top])
    assert err.source == str(inc) and err.key == "data.batchsize"


def test_missing_included_file_names_includer(tmp_path):
    top = write(tmp_path / "top.yaml", "defaults: [gone.yaml]\nname: x\n")
    err = raises_config_error(TrainCfg, [top])
    assert "gone.yaml" in err.source and str(top) in str(err) and "not found" in str(err)


def test_defaults_must_be_a_list_of_paths(tmp_path):
    top = write(tmp_path / "top.yaml", "defaults: {a: 1}\nname: x\n")
    err = raises_config_error(TrainCfg, [top])
    assert err.key == "defaults" and err.source == str(top)


def test_include_cycle_is_a_clear_error(tmp_path):
    a = write(tmp_path / "a.yaml", "defaults: [sub/b.yaml]\nname: a\n")
    write(tmp_path / "sub" / "b.yaml", "defaults: [../a.yaml]\nseed: 1\n")
    err = raises_config_error(TrainCfg, [a])
    assert "include cycle" in str(err) and "a.yaml" in str(err) and "b.yaml" in str(err)
    selfish = write(tmp_path / "self.yaml", "defaults: [self.yaml]\n")
    assert "include cycle" in str(raises_config_error(TrainCfg, [selfish]))


def test_diamond_include_is_not_a_cycle(tmp_path):
    write(tmp_path / "d.yaml", "name: d\n")
    write(tmp_path / "b.yaml", "defaults: [d.yaml]\nseed: 1\n")
    write(tmp_path / "c.yaml", "defaults: [d.yaml]\namp: true\n")
    top = write(tmp_path / "a.yaml", "defaults: [b.yaml, c.yaml]\n")
    cfg = load_config(TrainCfg, [top])
    assert (cfg.name, cfg.seed, cfg.amp) == ("d", 1, True)


# ----------------------------------------------------------------------------------------------------
# Dump / load / hash / save
# ----------------------------------------------------------------------------------------------------


def _rich_config(tmp_path: Path) -> TrainCfg:
    f = write(
        tmp_path / "rich.yaml",
        "name: rich\nnotes: '\\${not an interpolation}'\nnorm: LAYER\namp: true\n"
        "data:\n  root: /mnt/ecg store\n  sources: ['123', 'true', 'null', '1e-3']\n"
        "  weights: {ptbxl: 1.0e-10, cinc: 3}\n"
        "optim:\n  lr: 3.0e-4\n  betas: [0.9, 0.95]\n"
        "head: {dim: 7}\nheads: [{dim: 1, norm: BATCH}]\nextra: {k: [1, {x: null}], '2': two}\n",
    )
    return load_config(TrainCfg, [f], ["max_steps=null", "seed=42"])


def test_dump_then_load_gives_identical_object(tmp_path):
    cfg = _rich_config(tmp_path)
    assert cfg.notes == "${not an interpolation}"  # a literal, escaped in the file
    assert cfg.data.sources == ["123", "true", "null", "1e-3"]  # strings that look like other types
    text = to_yaml(cfg)
    assert "rich-s42" in text  # resolved
    back = from_yaml(TrainCfg, text)
    assert back == cfg and isinstance(back.data.root, Path) and back.norm is Norm.LAYER
    assert to_yaml(back) == text


def test_save_config_then_from_yaml_path(tmp_path):
    cfg = _rich_config(tmp_path)
    target = tmp_path / "runs" / "grid" / "cell" / "config.yaml"  # parents are created
    save_config(cfg, target)
    assert from_yaml(TrainCfg, target) == cfg  # Path
    assert from_yaml(TrainCfg, str(target)) == cfg  # str naming a file
    # The dumped file is an ordinary config file for load_config as well.
    assert load_config(TrainCfg, [target]) == cfg


def test_from_yaml_is_strict(tmp_path):
    with pytest.raises(ConfigError, match="unknown key"):
        from_yaml(TrainCfg, "name: x\nbogus: 1\n")
    with pytest.raises(ConfigError, match="not found"):
        from_yaml(TrainCfg, tmp_path / "absent.yaml")


def test_to_yaml_accepts_dictconfig_and_mapping():
    node = OmegaConf.create({"a": 1, "b": "${a}"})
    assert OmegaConf.create(to_yaml(node)) == {"a": 1, "b": 1}
    assert OmegaConf.create(to_yaml({"p": Path("x/y"), "e": Norm.BATCH})) == {"p": "x/y", "e": "BATCH"}


def test_config_hash_independent_of_key_order(tmp_path):
    f1 = write(tmp_path / "a.yaml", "name: x\nseed: 3\ndata:\n  batch_size: 8\n  weights: {a: 1, b: 2}\n")
    f2 = write(tmp_path / "b.yaml", "data:\n  weights: {b: 2, a: 1}\n  batch_size: 8\nseed: 3\nname: x\n")
    c1, c2 = load_config(TrainCfg, [f1]), load_config(TrainCfg, [f2])
    assert list(c1.data.weights) != list(c2.data.weights)  # different insertion order...
    assert config_hash(c1) == config_hash(c2)  # ...same hash
    assert config_hash({"a": 1, "b": {"c": 2, "d": 3}}) == config_hash({"b": {"d": 3, "c": 2}, "a": 1})
    h = config_hash(c1)
    assert len(h) == 12 and int(h, 16) >= 0
    assert config_hash(c1) == config_hash(from_yaml(TrainCfg, to_yaml(c1)))  # stable through a dump
    assert len(config_hash(c1, length=20)) == 20


def test_config_hash_changes_with_values():
    base = load_config(TrainCfg, overrides=["name=x"])
    hashes = {
        config_hash(base),
        config_hash(load_config(TrainCfg, overrides=["name=y"])),
        config_hash(load_config(TrainCfg, overrides=["name=x", "optim.lr=0.002"])),
        config_hash(load_config(TrainCfg, overrides=["name=x", "data.weights={a: 1}"])),
        config_hash(load_config(TrainCfg, overrides=["name=x", "norm=LAYER"])),
    }
    assert len(hashes) == 5


def _files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_save_config_is_atomic(tmp_path):
    target = tmp_path / "config.yaml"
    good = load_config(TrainCfg, overrides=["name=good"])
    save_config(good, target)
    before = target.read_bytes()
    assert _files_in(tmp_path) == ["config.yaml"]

    # Serialisation fails (an interpolation that cannot resolve): nothing is written.
    broken = OmegaConf.create({"name": "bad", "ref": "${does.not.exist}"})
    with pytest.raises(OmegaConfBaseException):
        save_config(broken, target)
    assert target.read_bytes() == before
    assert _files_in(tmp_path) == ["config.yaml"], "no temporary file left behind"

    # A value YAML cannot represent fails too, and the old file is still intact.
    @dataclass
    class Unsupported:
        thing: Any = None

    with pytest.raises(OmegaConfBaseException):
        save_config(Unsupported(thing=object()), target)
    assert target.read_bytes() == before
    assert _files_in(tmp_path) == ["config.yaml"]
    assert from_yaml(TrainCfg, target) == good


def test_save_config_failed_replace_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "config.yaml"
    target.mkdir()  # os.replace of a file over a directory fails after the temp file is written
    (target / "keep").write_text("x")
    with pytest.raises(OSError):
        save_config(load_config(TrainCfg, overrides=["name=x"]), target)
    assert (target / "keep").read_text() == "x"
    assert _files_in(tmp_path) == ["config.yaml"]


def test_save_config_keeps_existing_mode(tmp_path):
    target = tmp_path / "config.yaml"
    save_config(load_config(TrainCfg, overrides=["name=a"]), target)
    assert target.stat().st_mode & 0o777 == 0o644
    os.chmod(target, 0o600)
    save_config(load_config(TrainCfg, overrides=["name=b"]), target)
    assert target.stat().st_mode & 0o777 == 0o600
    assert "name: b" in target.read_text()


def test_list_for_a_dict_field_names_file_and_key(tmp_path):
    @dataclass
    class Profile:
        data_roots: dict[str, str] = field(default_factory=dict)

    f = tmp_path / "p.yaml"
    f.write_text("data_roots: [a, b]\n")
    with pytest.raises(ConfigError, match=r"p.yaml: data_roots: wrong type"):
        load_config(Profile, [f])
