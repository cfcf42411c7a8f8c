"""The real single-host SLURM cluster of tests/slurm/slurm-up.sh, for the tests in this directory.

Without a reachable cluster the tests here are skipped with the reason, unless ``REQUIRE_SLURM=1``
(set by CI), which turns the same reason into a failure: CI must not pass without having run them.
"""
import os
import shutil
import subprocess

import pytest

from launcher.profiles import ClusterProfile, load_profile

REQUIRE_SLURM = "REQUIRE_SLURM"
BRING_UP = "bring it up with: sudo bash tests/slurm/slurm-up.sh"


def pytest_configure(config):
    config.addinivalue_line("markers", "slurm: needs the real SLURM cluster of tests/slurm/slurm-up.sh")


def _run(*command: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(command, 124, "", f"{command[0]} timed out after 20 s")


def cluster_problem(profile: ClusterProfile) -> str | None:
    """Why the CI cluster cannot run the tests, or None when it can."""
    missing = [tool for tool in ("sbatch", "srun", "squeue", "sinfo", "sacct", "scancel") if shutil.which(tool) is None]
    if missing:
        return f"SLURM client tools not on PATH: {', '.join(missing)}"
    ping = _run("scontrol", "ping")
    if "is UP" not in ping.stdout:
        answer = (ping.stdout + ping.stderr).strip().splitlines() or ["no answer"]
        return f"slurmctld does not answer (scontrol ping: {answer[0]})"
    states = _run("sinfo", "-h", "-p", str(profile.partition), "-o", "%T")
    usable = {"idle", "mixed", "allocated", "completing"}
    if states.returncode != 0 or not usable & set(states.stdout.split()):
        return (f"no usable node in partition {profile.partition!r} "
                f"(sinfo: {(states.stdout + states.stderr).strip() or 'no nodes'})")
    # submitit learns job states from sacct: without accounting, cancelled jobs look pending forever
    sacct = _run("sacct", "-n", "-X", "-j", "1", "-o", "State")
    if sacct.returncode != 0:
        return f"sacct does not work (accounting disabled?): {sacct.stderr.strip()}"
    return None


@pytest.fixture(scope="session")
def slurm_profile() -> ClusterProfile:
    """The ``slurm_ci`` profile, once the cluster it describes is known to answer."""
    profile = load_profile("slurm_ci")
    problem = cluster_problem(profile)
    if problem is not None:
        if os.environ.get(REQUIRE_SLURM) == "1":
            pytest.fail(f"{REQUIRE_SLURM}=1 but the CI SLURM cluster is not usable: {problem} ({BRING_UP})",
                        pytrace=False)
        pytest.skip(f"no SLURM cluster: {problem} ({BRING_UP}; REQUIRE_SLURM=1 makes this a failure)")
    return profile
