"""The one way a Spark failure becomes one line (``cehrgpt.spark``), on real failing Spark jobs."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cehrgpt.spark import parquet_file_problem, spark_error_line, spark_failure


def _failing_frame(spark):
    def raise_in_worker(batches):  # nested, so it is pickled by value: workers cannot import this module
        for _ in batches:
            raise OverflowError("Python int too large to convert to C long")
        yield from ()

    return spark.range(3).mapInArrow(raise_in_worker, "id long")


def _failure(action) -> BaseException:
    with pytest.raises(Exception) as caught:
        action()
    return caught.value


def test_a_python_worker_error_is_its_last_traceback_line(spark):
    frame = _failing_frame(spark)
    line = spark_error_line(_failure(frame.collect))
    assert "\n" not in line and "Traceback" not in line and "\tat " not in line
    assert (
        line
        == "An exception was thrown from the Python worker: OverflowError: Python int too large to convert to C long"
    )


def test_a_jvm_error_names_the_file_and_its_root_cause(spark, tmp_path):
    pq.write_table(pa.table({"x": [1]}), tmp_path / "a.parquet")
    (tmp_path / "notes.txt").write_text("these are my notes, not a table")
    line = spark_error_line(_failure(spark.read.parquet(str(tmp_path)).collect))
    assert "\n" not in line and "\tat " not in line
    assert f"{tmp_path}/notes.txt" in line and "SQLSTATE" not in line, line
    assert re.search(r"\(caused by: .*not a Parquet file", line), line


def test_spark_failure_names_a_log_file_holding_the_whole_trace(spark, tmp_path):
    frame = _failing_frame(spark)
    line = spark_failure(_failure(frame.collect), "restore")
    log = re.search(r"\(full trace: (\S+cehrgpt-restore-\S+\.log)\)$", line)
    assert log, line
    with open(log.group(1), encoding="utf-8") as handle:
        trace = handle.read()
    assert "Traceback (most recent call last)" in trace and "OverflowError" in trace
    assert "\tat org.apache.spark" in trace


def test_parquet_file_problem_reads_the_magic_bytes(spark, tmp_path):
    pq.write_table(pa.table({"x": [1]}), tmp_path / "a.parquet")
    (tmp_path / "b.parquet").write_bytes(b"")
    (tmp_path / "c.parquet").write_bytes(b"PAR1 and then something else")
    (tmp_path / "d").write_bytes(b"PAR1")
    assert [
        parquet_file_problem(spark, f"file://{tmp_path}/{n}")
        for n in ("a.parquet", "b.parquet", "c.parquet", "d")
    ] == [
        None,
        "is empty (0 bytes), not a parquet file",
        "is not a parquet file (no PAR1 magic bytes)",
        "is 4 bytes, too short for a parquet file",
    ]
