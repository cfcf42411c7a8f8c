"""Shared test fixtures: paths to the real ECG records copied into tests/data (see tests/data/README.md)."""
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA
