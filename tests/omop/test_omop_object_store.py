"""The restore job as the Spark operator runs it: ``spark-submit restore.py`` on object-store URIs.

``s3a://`` and ``gs://`` are served from the local disk by the stand-in connector of the
``spark_submit`` fixture, so every read, write, rename and delete the job does goes through a
non-local scheme, which a local-only code path (``os``, ``pathlib``) would fail.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
from omop_restore_data import SEQUENCES, write_sequences, write_vocabulary

import cehrgpt.omop.restore as restore_module
from cehrgpt.omop.restore import REJECTED, restore
from cehrgpt.omop.tables import TABLES


def table_rows(folder: Path, table: str) -> list[dict]:
    rows = pq.read_table(folder / table).to_pylist()
    return sorted(rows, key=lambda r: json.dumps(r, default=str, sort_keys=True))


def restore_submit(spark_submit, sequences: str, omop: str, vocabulary: str, cwd: Path):
    args = ["--patient_sequence_folder", sequences, "--omop_folder", omop, "--source_omop_folder", vocabulary]
    return spark_submit(restore_module.__file__, args, cwd)


def test_spark_submit_restores_from_and_to_object_store_uris(spark, spark_submit, tmp_path):
    seq = write_sequences(tmp_path / "seq", SEQUENCES)
    vocab = write_vocabulary(tmp_path / "vocab")
    expected = restore(str(seq), str(tmp_path / "local"), str(vocab), spark=spark)
    work = tmp_path / "cwd"
    work.mkdir()

    result = restore_submit(
        spark_submit,
        f"s3a://sequences{seq}",
        f"s3a://cdm{tmp_path}/omop",
        f"gs://vocabulary{vocab}",
        cwd=work,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    assert f"restored {expected['patients_restored']} of 7 patients" in result.stdout, result.stdout[-500:]
    out = tmp_path / "omop"
    assert (out / "_SUCCESS").exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith("_tmp_")]
    assert list(work.iterdir()) == []  # nothing written to a local folder named after the URI
    report = json.loads((out / "restore_report.json").read_text())
    assert report["patient_sequence_folder"] == f"s3a://sequences{seq}"
    assert report["source_omop_folder"] == f"gs://vocabulary{vocab}"
    ignored = {
        "seconds",
        "spark_startup_seconds",
        "patient_sequence_folder",
        "omop_folder",
        "source_omop_folder",
    }
    assert {k: v for k, v in report.items() if k not in ignored} == {
        k: v for k, v in expected.items() if k not in ignored
    }
    for table in (*TABLES, REJECTED):
        assert table_rows(out, table) == table_rows(tmp_path / "local", table), table


def test_spark_submit_unreadable_object_store_vocabulary_fails_with_one_line(spark_submit, tmp_path):
    seq = write_sequences(tmp_path / "seq", SEQUENCES[:1])
    result = restore_submit(
        spark_submit,
        f"s3a://sequences{seq}",
        f"s3a://cdm{tmp_path}/omop",
        f"gs://vocabulary{tmp_path}/missing",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    output = result.stdout + result.stderr  # spark-submit merges the Python process's stderr into stdout
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output[-2000:]
    assert errors[0].startswith(f"error: source_omop_folder gs://vocabulary{tmp_path}/missing: ")
    assert not (tmp_path / "omop" / "_SUCCESS").exists()
