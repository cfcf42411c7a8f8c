"""Fixtures shared by the library tests: a process with no distributed environment, a 1-rank gloo group (also
as the jobs run, with no preemption request pending)."""
import pytest

from ecg_core import distributed as D
from ecg_core import preemption

from .dist_utils import DIST_ENV


@pytest.fixture
def no_dist_env(monkeypatch):
    """No torchrun / scheduler variables and no process group; whatever the test starts is torn down after."""
    for name in DIST_ENV:
        monkeypatch.delenv(name, raising=False)
    D.teardown()
    yield
    D.teardown()


@pytest.fixture
def one_rank_group(no_dist_env):
    """A 1-rank gloo group in this process (HashStore, no port); yields its ``DistInfo``."""
    return D.init_distributed(prefer_cuda=False)


@pytest.fixture
def job_group(one_rank_group):
    """:func:`one_rank_group` as the jobs run in-process: no stop request pending before, none left after."""
    preemption.clear()
    yield one_rank_group
    preemption.clear()
