"""Cluster profiles: the shipped YAML files load and validate; bad values name the file and the key."""
import logging
import shutil
from pathlib import Path

import pytest

from ecg_core.config import ConfigError
from launcher.profiles import (
    CLUSTER_CONFIGS,
    ENV_CLUSTER,
    ClusterProfile,
    available_profiles,
    default_profile,
    load_profile,
)

SHIPPED = ("local", "slurm_ci", "example_a100")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def configs(tmp_path):
    """A copy of cluster_configs/ that a test may add files to."""
    directory = tmp_path / "cluster_configs"
    directory.mkdir()
    for name in SHIPPED:
        shutil.copy(CLUSTER_CONFIGS / f"{name}.yaml", directory)
    return directory


@pytest.fixture
def no_sbatch(tmp_path, monkeypatch):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv(ENV_CLUSTER, raising=False)


@pytest.fixture
def fake_sbatch(tmp_path, monkeypatch):
    """An executable named sbatch on PATH: default_profile only asks whether SLURM's client is there."""
    bin_dir = tmp_path / "slurm-bin"
    write(bin_dir / "sbatch", "#!/bin/sh\nexit 1\n").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv(ENV_CLUSTER, raising=False)


# ----------------------------------------------------------------------------------------------------
# the shipped profiles


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profiles_load_and_are_named_after_their_file(name):
    profile = load_profile(name)
    assert isinstance(profile, ClusterProfile)
    assert profile.name == name
    assert load_profile(CLUSTER_CONFIGS / f"{name}.yaml") == profile


def test_shipped_profiles_are_listed():
    assert set(SHIPPED) <= set(available_profiles())


def test_local_profile_is_the_embedded_default():
    local = load_profile("local")
    assert local.executor == "local" and not local.is_slurm
    assert (local.nodes, local.tasks_per_node, local.gpus_per_node) == (1, 1, 0)
    assert local.data_roots["demo"] == "build/demo/demo.zarr"


def test_local_profile_needs_no_cluster_configs_directory(tmp_path):
    profile = load_profile("local", configs_dir=tmp_path / "absent")
    assert profile == ClusterProfile(name="local")


def test_ci_profile_matches_the_ci_cluster():
    ci = load_profile("slurm_ci")
    assert ci.is_slurm and ci.partition == "debug"  # SLURM_CI_PARTITION of tests/slurm/slurm-up.sh
    assert ci.signal_delay_s < ci.time_min * 60
    assert ci.gpus_per_node == 0 and ci.mem_gb is None


def test_example_profile_is_multi_node_a100(monkeypatch):
    monkeypatch.delenv("SCRATCH", raising=False)
    example = load_profile("example_a100")
    assert (example.nodes, example.gpus_per_node, example.tasks_per_node) == (2, 4, 4)
    assert example.constraint == "a100" and example.account and example.qos
    assert example.runs_root == Path("/scratch/my_lab/ecg_ssl/runs")
    assert example.slurm_extra == {"exclusive": True, "requeue": True}
    monkeypatch.setenv("SCRATCH", "/lustre/me")
    assert load_profile("example_a100").runs_root == Path("/lustre/me/ecg_ssl/runs")


def test_overrides_win_over_the_file():
    profile = load_profile("slurm_ci", ["time_min=30", "data_roots.ptbxl=/data/ptbxl.zarr", "setup=[]"])
    assert profile.time_min == 30 and profile.setup == []
    assert profile.data_roots == {"demo": "build/demo/demo.zarr", "ptbxl": "/data/ptbxl.zarr"}


def test_name_defaults_to_the_file_stem(tmp_path):
    path = write(tmp_path / "mycluster.yaml", "executor: slurm\npartition: gpu\n")
    assert load_profile(path).name == "mycluster"
    assert load_profile(str(path)).name == "mycluster"


def test_with_resources_replaces_only_given_values():
    ci = load_profile("slurm_ci")
    stage = ci.with_resources(tasks_per_node=2, time_min=None, mem_gb=4)
    assert (stage.tasks_per_node, stage.time_min, stage.mem_gb) == (2, ci.time_min, 4)
    assert ci.tasks_per_node == 1  # the profile itself is unchanged
    assert ci.with_resources() is ci


@pytest.mark.parametrize(
    "resources, key, reason",
    [
        ({"gpus": 1}, "gpus", "unknown resource"),
        ({"nodes": 0}, "nodes", "must be at least 1"),
        ({"time_min": 1, "signal_delay_s": 60}, "signal_delay_s", "must be shorter than time_min"),
        ({"cpus_per_task": "4"}, "cpus_per_task", "expected a number"),
        ({"tasks_per_node": True}, "tasks_per_node", "expected a number"),
    ],
)
def test_with_resources_rejects_bad_values(resources, key, reason):
    with pytest.raises(ConfigError) as info:
        load_profile("slurm_ci").with_resources(**resources)
    assert (info.value.source, info.value.key) == ("stage resources", key)
    assert reason in info.value.reason


# ----------------------------------------------------------------------------------------------------
# errors name the file and the key


@pytest.mark.parametrize(
    "line, key, reason",
    [
        ("executor: pbs", "executor", "must be one of local, slurm"),
        ("nodes: 0", "nodes", "must be at least 1"),
        ("tasks_per_node: -2", "tasks_per_node", "must be at least 1"),
        ("cpus_per_task: 0", "cpus_per_task", "must be at least 1"),
        ("gpus_per_node: -1", "gpus_per_node", "must be 0 or more"),
        ("time_min: 0", "time_min", "must be at least 1"),
        ("signal_delay_s: 600", "signal_delay_s", "must be shorter than time_min (10 min)"),
        ("mem_gb: 0", "mem_gb", "must be positive"),
        ("max_array_parallelism: 0", "max_array_parallelism", "must be at least 1"),
        ("partition: ''", "partition", "non-empty word"),
        ("account: my lab", "account", "without spaces"),
        ("name: 'bad name'", "name", "letters, digits"),
        ("slurm_extra: {partition: gpu}", "slurm_extra.partition", "set by partition"),
        ("slurm_extra: {dependency: 'afterok:1'}", "slurm_extra.dependency", "set by the submitter"),
        ("slurm_extra: {--exclusive: true}", "slurm_extra.--exclusive", "without leading dashes"),
        ("slurm_extra: {gres: [a, b]}", "slurm_extra.gres", "must be a string, number or true"),
        ("slurm_extra: {exclusive: false}", "slurm_extra.exclusive", "leave the option out"),
        ("data_roots: {ptbxl: ''}", "data_roots.ptbxl", "must be a path"),
        ("data_roots: {ptbxl: [a, b]}", "data_roots.ptbxl", "must be a path"),
        ("setup: [[a, b]]", "setup[0]", "one shell line"),
        ('setup: ["a\\nb"]', "setup[0]", "one shell line"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path, line, key, reason):
    base = {"executor": "slurm", "time_min": 10, "signal_delay_s": 30}
    text = "".join(f"{k}: {v}\n" for k, v in base.items() if not line.startswith(f"{k}:")) + line + "\n"
    path = write(tmp_path / "site.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    assert info.value.source == str(path)
    assert info.value.key == key
    assert reason in info.value.reason
    assert str(info.value).startswith(f"{path}: {key}: ")


def test_local_executor_has_one_node(tmp_path):
    path = write(tmp_path / "laptop.yaml", "executor: local\nnodes: 2\n")
    with pytest.raises(ConfigError, match=r"laptop\.yaml: nodes: the local executor runs on this machine only"):
        load_profile(path)


@pytest.mark.parametrize(
    "text, key",
    [
        ("executor: slurm\npartiton: gpu\n", "partiton"),  # misspelt key
        ("executor: slurm\nnodes: two\n", "nodes"),  # wrong type
        ("executor: slurm\nsetup: export A=1\n", "setup"),
    ],
)
def test_unknown_keys_and_wrong_types_name_file_and_key(tmp_path, text, key):
    path = write(tmp_path / "site.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    assert info.value.source.startswith(str(path))
    assert info.value.key == key


def test_bad_override_names_the_command_line():
    with pytest.raises(ConfigError) as info:
        load_profile("slurm_ci", ["nodes=0"])
    assert info.value.source == "command line ('nodes=0')" and info.value.key == "nodes"
    with pytest.raises(ConfigError, match=r"command line \('qos_name=high'\): qos_name"):
        load_profile("slurm_ci", ["qos_name=high"])


def test_error_in_an_included_file_names_that_file(configs):
    base = write(configs / "site_base.yaml", "executor: slurm\npartition: gpu\nmax_array_parallelism: 0\n")
    site = write(configs / "site.yaml", "defaults: [site_base.yaml]\nnodes: 2\n")
    with pytest.raises(ConfigError) as info:
        load_profile(site)
    assert (info.value.source, info.value.key) == (str(base), "max_array_parallelism")
    write(site, "defaults: [site_base.yaml]\nmax_array_parallelism: 4\ntime_min: 1\nsignal_delay_s: 90\n")
    with pytest.raises(ConfigError) as info:
        load_profile(site)
    assert (info.value.source, info.value.key) == (str(site), "signal_delay_s")
    assert load_profile(site, ["signal_delay_s=30"]).partition == "gpu"


def test_missing_profile_lists_the_known_ones(configs):
    with pytest.raises(ConfigError, match=r"no cluster profile named 'a100'.*example_a100, local, slurm_ci"):
        load_profile("a100", configs_dir=configs)
    with pytest.raises(ConfigError, match="config file not found"):
        load_profile(configs / "absent.yaml")


def test_overrides_must_be_a_list():
    with pytest.raises(TypeError, match="sequence"):
        load_profile("local", "time_min=5")


# ----------------------------------------------------------------------------------------------------
# default_profile


def test_default_is_local_without_slurm(configs, no_sbatch):
    assert default_profile(configs_dir=configs).name == "local"


def test_default_is_local_when_no_slurm_profile_is_configured(configs, fake_sbatch):
    assert default_profile(configs_dir=configs).name == "local"


def test_env_names_the_slurm_profile(configs, fake_sbatch, monkeypatch):
    monkeypatch.setenv(ENV_CLUSTER, "slurm_ci")
    assert default_profile(configs_dir=configs).name == "slurm_ci"
    monkeypatch.setenv(ENV_CLUSTER, str(configs / "example_a100.yaml"))
    assert default_profile(configs_dir=configs).name == "example_a100"


def test_default_yaml_names_the_slurm_profile(configs, fake_sbatch):
    write(configs / "default.yaml", "defaults: [slurm_ci.yaml]\ntime_min: 20\n")
    profile = default_profile(configs_dir=configs)
    assert (profile.name, profile.partition, profile.time_min) == ("slurm_ci", "debug", 20)


def test_env_wins_over_default_yaml(configs, fake_sbatch, monkeypatch):
    write(configs / "default.yaml", "defaults: [slurm_ci.yaml]\n")
    monkeypatch.setenv(ENV_CLUSTER, "example_a100")
    assert default_profile(configs_dir=configs).name == "example_a100"


def test_configured_slurm_profile_without_sbatch_runs_locally(configs, no_sbatch, monkeypatch, caplog):
    monkeypatch.setenv(ENV_CLUSTER, "slurm_ci")
    with caplog.at_level(logging.WARNING, logger="launcher.profiles"):
        assert default_profile(configs_dir=configs).name == "local"
    assert "sbatch is not on PATH" in caplog.text


def test_configured_local_profile_is_used_as_it_is(configs, no_sbatch, monkeypatch):
    write(configs / "laptop.yaml", "executor: local\nruns_root: /tmp/my-runs\n")
    monkeypatch.setenv(ENV_CLUSTER, "laptop")
    profile = default_profile(configs_dir=configs)
    assert (profile.name, profile.runs_root) == ("laptop", Path("/tmp/my-runs"))


def test_a_misconfigured_default_is_an_error_not_a_silent_local_run(configs, fake_sbatch, monkeypatch):
    monkeypatch.setenv(ENV_CLUSTER, "slurm-ci")
    with pytest.raises(ConfigError, match="no cluster profile named 'slurm-ci'"):
        default_profile(configs_dir=configs)
    monkeypatch.delenv(ENV_CLUSTER)
    write(configs / "default.yaml", "executor: slurm\nnodes: 0\n")
    with pytest.raises(ConfigError, match=r"default\.yaml: nodes: must be at least 1"):
        default_profile(configs_dir=configs)
