"""The restore job on tiny hand-made sequences: exact rows, the CDM 5.4 schema, rejections, the report."""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omop_restore_data import CONCEPTS, SEQUENCES, write_sequences, write_vocabulary
from pyspark.sql import functions as F

from cehrgpt.generation.sharding import MAX_SEED, person_id
from cehrgpt.omop.cdm import cdm_fields, primary_key
from cehrgpt.omop.inputs import RestoreError, id_run
from cehrgpt.omop.records import POSITION_BITS, ROW_BITS, RUN_BITS
from cehrgpt.omop.restore import REJECTED, main, restore
from cehrgpt.omop.source import spark_type
from cehrgpt.omop.tables import TABLES

# ids are (run << 40) + (input row << 18) + token position; run 0 here (person ids < 2^40)
A1 = 1 << 18  # file a, row 1 (person 2)
B1 = 4 << 18  # file b, row 1 (person 5): input row 3 + 1


@pytest.fixture(scope="module")
def restored(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("restore")
    report = restore(
        str(write_sequences(root / "seq")),
        str(root / "omop"),
        str(write_vocabulary(root / "vocab")),
        spark=spark,
    )
    return root, report


def rows(spark, folder: Path, table: str) -> list[dict]:
    frame = spark.read.parquet(str(folder / table))
    return sorted((r.asDict() for r in frame.collect()), key=lambda r: tuple(str(v) for v in r.values()))


def pick(records: list[dict], *columns: str) -> list[tuple]:
    return sorted(tuple(r[c] for c in columns) for r in records)


def test_report_counts_rows_rejections_and_every_token(restored):
    root, report = restored
    assert report["input_patients"] == 7
    assert report["patients_restored"] == 3
    assert report["patients_not_restored"] == {"bad_prompt": 2, "duplicate_person": 1, "missing_person_id": 1}
    assert report["rows"] == {
        "person": 3,
        "visit_occurrence": 6,
        "condition_occurrence": 3,
        "drug_exposure": 3,
        "procedure_occurrence": 1,
        "measurement": 1,
        "observation": 1,
        "device_exposure": 1,
        "death": 1,
        "observation_period": 3,
    }
    assert report["rejected_tokens"] == {
        "bad_prompt": 8,
        "concept_not_in_vocabulary": 1,
        "duplicate_person": 8,
        "missing_person_id": 8,
        "token_outside_visit": 1,
        "truncated_visit": 3,
        "unsupported_domain": 1,
    }
    # 81 tokens = 30 placed (3 prompts x 4, 6 visit types, 1 discharge, 1 death, 10 events) + 21 structural + 30
    assert report["tokens"] == {"input": 81, "placed": 30, "structural": 21, "rejected": 30}
    assert json.loads((root / "omop" / "restore_report.json").read_text()) == report


def test_output_is_published_with_a_success_marker(restored):
    root, _ = restored
    names = {p.name for p in (root / "omop").iterdir() if not p.name.startswith(".")}
    assert names == {*TABLES, REJECTED, "restore_report.json", "_SUCCESS"}


def test_person_rows(spark, restored):
    root, _ = restored
    assert pick(
        rows(spark, root / "omop", "person"),
        "person_id",
        "gender_concept_id",
        "race_concept_id",
        "ethnicity_concept_id",
        "year_of_birth",
        "month_of_birth",
        "day_of_birth",
    ) == [(1, 8532, 8527, 0, 1989, 1, 1), (2, 8507, 0, 0, 1950, 1, 1), (5, 0, 0, 0, 2010, 1, 1)]


def test_visit_rows_with_dates_discharge_and_preceding_visit(spark, restored):
    root, _ = restored
    visits = rows(spark, root / "omop", "visit_occurrence")
    assert pick(
        visits,
        "visit_occurrence_id",
        "person_id",
        "visit_concept_id",
        "visit_start_date",
        "visit_end_date",
        "discharged_to_concept_id",
        "preceding_visit_occurrence_id",
    ) == [
        (4, 1, 9202, date(2001, 1, 1), date(2001, 1, 1), None, None),
        (11, 1, 9201, date(2001, 1, 6), date(2001, 1, 8), 8536, 4),
        (A1 + 4, 2, 9202, date(1990, 1, 1), date(1990, 1, 1), None, None),
        (A1 + 12, 2, 9202, date(1991, 2, 5), date(1991, 2, 5), None, A1 + 4),
        (B1 + 4, 5, 0, date(2010, 1, 1), date(2010, 1, 1), None, None),
        (B1 + 9, 5, 9202, date(2012, 12, 31), date(2012, 12, 31), None, B1 + 4),
    ]
    assert {v["visit_type_concept_id"] for v in visits} == {32817}


@pytest.mark.parametrize(
    "table,columns,expected",
    [
        (
            "condition_occurrence",
            ("condition_occurrence_id", "person_id", "condition_concept_id", "condition_start_date",
             "condition_type_concept_id", "visit_occurrence_id"),
            [(6, 1, 101, date(2001, 1, 1), 32817, 4), (A1 + 6, 2, 101, date(1990, 1, 1), 32817, A1 + 4),
             (B1 + 6, 5, 101, date(2010, 1, 1), 32817, B1 + 4)],
        ),
        (
            "drug_exposure",
            ("drug_exposure_id", "person_id", "drug_concept_id", "drug_exposure_start_date",
             "drug_exposure_end_date", "drug_type_concept_id", "visit_occurrence_id"),
            [(7, 1, 201, date(2001, 1, 1), date(2001, 1, 1), 32817, 4),
             (A1 + 14, 2, 201, date(1991, 2, 5), date(1991, 2, 5), 32817, A1 + 12),
             (B1 + 11, 5, 201, date(2012, 12, 31), date(2012, 12, 31), 32817, B1 + 9)],
        ),
        (
            "procedure_occurrence",
            ("procedure_occurrence_id", "person_id", "procedure_concept_id", "procedure_date",
             "procedure_type_concept_id", "visit_occurrence_id"),
            [(8, 1, 301, date(2001, 1, 1), 32817, 4)],
        ),
        (
            "measurement",
            ("measurement_id", "person_id", "measurement_concept_id", "measurement_date",
             "measurement_type_concept_id", "visit_occurrence_id"),
            [(13, 1, 401, date(2001, 1, 6), 32817, 11)],
        ),
        (
            "observation",
            ("observation_id", "person_id", "observation_concept_id", "observation_date",
             "observation_type_concept_id", "visit_occurrence_id"),
            [(15, 1, 501, date(2001, 1, 8), 32817, 11)],
        ),
        (
            "device_exposure",
            ("device_exposure_id", "person_id", "device_concept_id", "device_exposure_start_date",
             "device_type_concept_id", "visit_occurrence_id"),
            [(16, 1, 601, date(2001, 1, 8), 32817, 11)],
        ),
        (
            "death",
            ("person_id", "death_date", "death_type_concept_id"),
            [(1, date(2001, 1, 11), 32817)],
        ),
        (
            "observation_period",
            ("observation_period_id", "person_id", "observation_period_start_date",
             "observation_period_end_date", "period_type_concept_id"),
            [(1, 1, date(2001, 1, 1), date(2001, 1, 11), 44814725),
             (2, 2, date(1990, 1, 1), date(1991, 2, 5), 44814725),
             (5, 5, date(2010, 1, 1), date(2012, 12, 31), 44814725)],
        ),
    ],
)  # fmt: skip
def test_each_domain_goes_to_its_table(spark, restored, table, columns, expected):
    root, _ = restored
    assert pick(rows(spark, root / "omop", table), *columns) == expected


def test_rejected_rows_name_patient_position_token_and_reason(spark, restored):
    root, _ = restored
    rejected = rows(spark, root / "omop", REJECTED)
    assert [r for r in rejected if r["person_id"] == 2] == [
        {"person_id": 2, "position": 10, "token": "301", "reason": "token_outside_visit"},
        {"person_id": 2, "position": 17, "token": "[VS]", "reason": "truncated_visit"},
        {"person_id": 2, "position": 18, "token": "9201", "reason": "truncated_visit"},
        {"person_id": 2, "position": 19, "token": "101", "reason": "truncated_visit"},
        {"person_id": 2, "position": 7, "token": "777", "reason": "concept_not_in_vocabulary"},
        {"person_id": 2, "position": 8, "token": "999", "reason": "unsupported_domain"},
    ]
    duplicate = [r for r in rejected if r["reason"] == "duplicate_person"]
    assert {r["person_id"] for r in duplicate} == {1} and [r["position"] for r in duplicate] == list(range(8))
    missing = [r for r in rejected if r["reason"] == "missing_person_id"]
    assert {r["person_id"] for r in missing} == {None} and len(missing) == 8


@pytest.mark.parametrize("table", [*TABLES])
def test_cdm_54_schema_names_order_types_and_required_fields(spark, restored, table):
    root, _ = restored
    frame = spark.read.parquet(str(root / "omop" / table))
    fields = cdm_fields(table)
    assert frame.columns == [f.name for f in fields]
    assert [c.dataType for c in frame.schema.fields] == [spark_type(f.datatype) for f in fields]
    for f in fields:
        if f.required:
            assert frame.where(F.col(f.name).isNull()).count() == 0, f.name
    key = primary_key(table)
    if key:
        assert frame.select(key).distinct().count() == frame.count()


def test_ids_are_unique_across_tables_and_every_foreign_key_exists(spark, restored):
    root, _ = restored
    ids: list[int] = []
    for table in ("visit_occurrence", "condition_occurrence", "drug_exposure", "procedure_occurrence",
                  "measurement", "observation", "device_exposure"):  # fmt: skip
        ids += [
            r[0] for r in spark.read.parquet(str(root / "omop" / table)).select(primary_key(table)).collect()
        ]
    assert len(ids) == len(set(ids)) == 16
    persons = {r.person_id for r in spark.read.parquet(str(root / "omop" / "person")).collect()}
    visits = {
        r.visit_occurrence_id for r in spark.read.parquet(str(root / "omop" / "visit_occurrence")).collect()
    }
    for table in TABLES:
        frame = spark.read.parquet(str(root / "omop" / table))
        assert {r.person_id for r in frame.select("person_id").collect()} <= persons, table
        if "visit_occurrence_id" in frame.columns and table != "visit_occurrence":
            assert {r[0] for r in frame.select("visit_occurrence_id").collect()} <= visits, table


def test_rerun_overwrites_and_gives_identical_output(spark, tmp_path):
    seq = write_sequences(tmp_path / "seq", SEQUENCES[:2])
    vocab = write_vocabulary(tmp_path / "vocab")
    out = tmp_path / "omop"
    first = restore(str(seq), str(out), str(vocab), spark=spark)
    before = {t: rows(spark, out, t) for t in (*TABLES, REJECTED)}
    (out / "_tmp_crashed").mkdir()  # a crashed run's leftovers are cleared
    second = restore(str(seq), str(out), str(vocab), spark=spark)
    assert {t: rows(spark, out, t) for t in (*TABLES, REJECTED)} == before
    timings = {"seconds", "spark_startup_seconds"}
    assert {k: v for k, v in first.items() if k not in timings} == {
        k: v for k, v in second.items() if k not in timings
    }
    assert not (out / "_tmp_crashed").exists()


def test_failed_run_leaves_the_previous_output_untouched(spark, tmp_path, capsys):
    seq = write_sequences(tmp_path / "seq", SEQUENCES[:1])
    vocab = write_vocabulary(tmp_path / "vocab")
    out = tmp_path / "omop"
    restore(str(seq), str(out), str(vocab), spark=spark)
    before = rows(spark, out, "person")
    (tmp_path / "empty").mkdir()
    assert main(["--patient_sequence_folder", str(seq), "--omop_folder", str(out),
                 "--source_omop_folder", str(tmp_path / "empty")]) == 2  # fmt: skip
    assert (out / "_SUCCESS").exists() and rows(spark, out, "person") == before


def test_hadoop_uris_work_for_every_path(spark, tmp_path):
    seq = write_sequences(tmp_path / "seq", SEQUENCES[:1])
    vocab = write_vocabulary(tmp_path / "vocab")
    report = restore(f"file://{seq}", f"file://{tmp_path}/omop", f"file://{vocab}", spark=spark)
    assert report["rows"]["measurement"] == 1
    assert (tmp_path / "omop" / "_SUCCESS").exists()


def test_vocabulary_from_a_duckdb_file_gives_the_same_tables(spark, restored, tmp_path):
    import duckdb

    root, expected = restored
    vocabulary = tmp_path / "vocab.duckdb"
    with duckdb.connect(str(vocabulary)) as db:
        db.execute("CREATE TABLE concept (concept_id BIGINT, concept_name VARCHAR, domain_id VARCHAR)")
        db.executemany("INSERT INTO concept VALUES (?, ?, ?)", [(c, f"c{c}", d) for c, d in CONCEPTS.items()])
    report = restore(str(root / "seq"), str(tmp_path / "omop"), str(vocabulary), spark=spark)
    ignored = {"seconds", "spark_startup_seconds", "omop_folder", "source_omop_folder"}
    assert {k: v for k, v in report.items() if k not in ignored} == {
        k: v for k, v in expected.items() if k not in ignored
    }
    for table in (*TABLES, REJECTED):
        assert rows(spark, tmp_path / "omop", table) == rows(spark, root / "omop", table), table


def _run_main(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize(
    "breakage,message",
    [
        ("no_concept", "concept: table not found"),
        ("no_domain", "concept.domain_id: column not found"),
        ("garbage", "concept: cannot read"),
        ("empty", "the concept table is empty"),
        ("missing", "does not exist"),
    ],
)
def test_missing_or_corrupt_vocabulary_fails_with_one_line(spark, tmp_path, capsys, breakage, message):
    seq = write_sequences(tmp_path / "seq", SEQUENCES[:1])
    vocab = tmp_path / "vocab"
    if breakage == "no_concept":
        (vocab / "person").mkdir(parents=True)
        pq.write_table(pa.table({"person_id": [1]}), vocab / "person" / "p.parquet")
    elif breakage == "no_domain":
        (vocab / "concept").mkdir(parents=True)
        pq.write_table(pa.table({"concept_id": [1]}), vocab / "concept" / "p.parquet")
    elif breakage == "garbage":
        vocab.mkdir()
        (vocab / "concept.parquet").write_bytes(b"this is not parquet")
    elif breakage == "empty":
        write_vocabulary(vocab, {})
    code, err = _run_main(
        [
            "--patient_sequence_folder",
            str(seq),
            "--omop_folder",
            str(tmp_path / "o"),
            "--source_omop_folder",
            str(vocab),
        ],
        capsys,
    )
    assert code == 2
    assert err.startswith(f"error: source_omop_folder {vocab}") and message in err and "\n" not in err
    assert not (tmp_path / "o" / "_SUCCESS").exists()


@pytest.mark.parametrize(
    "breakage,message",
    [
        ("missing", "cannot read parquet sequences"),
        ("empty", "holds no parquet file: no patients to restore (expected the generator's output)"),
        ("no_concept_ids", "column(s) concept_ids missing"),
        ("int_tokens", "concept_ids is array<bigint>, expected a list of token strings"),
        ("string_person", "person_id is string, expected an integer"),
    ],
)
def test_bad_sequences_fail_with_one_line(spark, tmp_path, capsys, breakage, message):
    vocab = write_vocabulary(tmp_path / "vocab")
    seq = tmp_path / "seq"
    if breakage != "missing":
        seq.mkdir()
    if breakage not in ("missing", "empty"):
        columns = {
            "no_concept_ids": {"person_id": [1]},
            "int_tokens": {"person_id": [1], "concept_ids": [[1, 2]]},
            "string_person": {"person_id": ["1"], "concept_ids": [["a"]]},
        }[breakage]
        pq.write_table(pa.table(columns), seq / "x.parquet")
    code, err = _run_main(
        [
            "--patient_sequence_folder",
            str(seq),
            "--omop_folder",
            str(tmp_path / "o"),
            "--source_omop_folder",
            str(vocab),
        ],
        capsys,
    )
    assert code == 2
    assert err.startswith(f"error: patient_sequence_folder {seq}") and message in err and "\n" not in err


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "--patient_sequence_folder" in capsys.readouterr().out


def test_restore_error_is_a_value_error():
    assert issubclass(RestoreError, ValueError)


def test_condition_era_merges_occurrences_at_most_30_days_apart(spark, tmp_path):
    text = (
        "year:2001 age:12 8532 8527 [VS] 9202 101 102 [VE] D10 [VS] 9202 101 [VE] "
        "D31 [VS] 9202 101 [VE] D32 [VS] 9202 101 [VE]"
    )
    seq = write_sequences(tmp_path / "seq", [("a", 1, text)])
    vocab = write_vocabulary(tmp_path / "vocab", {101: "Condition", 102: "Condition", 9202: "Visit"})
    out = tmp_path / "omop"
    assert main(["--patient_sequence_folder", str(seq), "--omop_folder", str(out),
                 "--source_omop_folder", str(vocab), "--condition_era"]) == 0  # fmt: skip
    eras = pick(
        rows(spark, out, "condition_era"),
        "condition_era_id", "condition_concept_id", "condition_era_start_date", "condition_era_end_date",
        "condition_occurrence_count", "person_id",
    )  # fmt: skip
    # 101 on Jan 1, Jan 11, Feb 11 (30 days after Jan 11's end: same era), Mar 15 (31 days: a new era)
    assert eras == [
        (6, 101, date(2001, 1, 1), date(2001, 2, 12), 3, 1),
        (7, 102, date(2001, 1, 1), date(2001, 1, 2), 1, 1),
        (22, 101, date(2001, 3, 15), date(2001, 3, 16), 1, 1),
    ]
    frame = spark.read.parquet(str(out / "condition_era"))
    fields = cdm_fields("condition_era")
    assert [(c.name, c.dataType) for c in frame.schema.fields] == [
        (f.name, spark_type(f.datatype)) for f in fields
    ]
    report = json.loads((out / "restore_report.json").read_text())
    assert report["rows"]["condition_era"] == 3 and report["rows"]["condition_occurrence"] == 5


def test_condition_era_is_not_written_unless_asked(restored):
    root, report = restored
    assert not (root / "omop" / "condition_era").exists()
    assert "condition_era" not in report["rows"]


# --- bad input and stale output (issue 17) -------------------------------------------------------------------


def _restore_argv(seq: Path, out: Path, vocab: Path, *extra: str) -> list[str]:
    return ["--patient_sequence_folder", str(seq), "--omop_folder", str(out), "--source_omop_folder", str(vocab),
            *extra]  # fmt: skip


def test_an_oversized_concept_token_is_rejected_and_counted_not_fatal(spark, tmp_path, capsys):
    text = (
        "year:2001 age:12 8532 8527 [VS] 9202 101 99999999999999999999 [VE] D1 [VS] 9202 2"
        + "9" * 5000
        + " [VE]"
    )
    seq = write_sequences(tmp_path / "seq", [("a", 1, text)])
    out = tmp_path / "omop"
    assert main(_restore_argv(seq, out, write_vocabulary(tmp_path / "vocab"))) == 0
    report = json.loads((out / "restore_report.json").read_text())
    # the token is rejected alone; the second visit has no concept left, so it is rejected whole
    assert report["rejected_tokens"] == {"malformed_visit": 4, "unexpected_token_in_visit": 1}
    assert report["rows"]["condition_occurrence"] == 1 and report["rows"]["visit_occurrence"] == 1
    assert report["tokens"] == {"input": 14, "placed": 6, "structural": 3, "rejected": 5}
    rejected = rows(spark, out, REJECTED)
    assert [(r["position"], r["token"][:6], r["reason"]) for r in rejected if r["position"] == 7] == [
        (7, "999999", "unexpected_token_in_visit")
    ]


def test_a_rerun_without_condition_era_removes_the_earlier_one(spark, tmp_path):
    seq = write_sequences(tmp_path / "seq", SEQUENCES[:1])
    vocab = write_vocabulary(tmp_path / "vocab")
    out = tmp_path / "omop"
    assert main(_restore_argv(seq, out, vocab, "--condition_era")) == 0
    assert (out / "condition_era").exists()
    other = write_sequences(tmp_path / "other", SEQUENCES[3:4])
    assert main(_restore_argv(other, out, vocab)) == 0
    names = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    assert names == {*TABLES, REJECTED, "restore_report.json", "_SUCCESS"}


def test_a_folder_no_restore_wrote_is_refused_and_left_as_it_was(spark, tmp_path, capsys):
    seq = write_sequences(tmp_path / "seq", SEQUENCES[:1])
    out = tmp_path / "cdm"
    (out / "person").mkdir(parents=True)
    (out / "person" / "mine.parquet").write_bytes(b"a source database's table")
    code, err = _run_main(_restore_argv(seq, out, write_vocabulary(tmp_path / "vocab")), capsys)
    assert code == 2
    assert err == (
        f"error: omop_folder {out}: holds person and no restore_report.json: not the output of a restore; "
        "give an empty or new folder"
    )
    assert sorted(p.name for p in out.rglob("*")) == ["mine.parquet", "person"]


@pytest.mark.parametrize(
    "name,content,why",
    [
        ("notes.txt", b"these are my notes, not a table", "is not a parquet file (no PAR1 magic bytes)"),
        ("empty.parquet", b"", "is empty (0 bytes), not a parquet file"),
    ],
)
def test_a_file_that_is_not_parquet_in_the_input_is_named(spark, tmp_path, capsys, name, content, why):
    seq = write_sequences(tmp_path / "seq", SEQUENCES[:1])
    (seq / name).write_bytes(content)
    out = tmp_path / "omop"
    code, err = _run_main(_restore_argv(seq, out, write_vocabulary(tmp_path / "vocab")), capsys)
    assert code == 2
    assert err == f"error: patient_sequence_folder {seq}: file:{seq}/{name} {why}"
    assert not out.exists() or not any(out.iterdir())


def test_a_corrupt_parquet_file_gives_one_line_and_no_stack_dump_on_the_console(tmp_path):
    """A real run in a subprocess: the console (the JVM's stderr included) shows no trace, the log file does."""
    import os
    import subprocess
    import sys

    seq = write_sequences(tmp_path / "seq", SEQUENCES[:1])
    (seq / "z.parquet").write_bytes(b"PAR1" + b"\x00garbage footer" * 8 + b"PAR1")
    out = tmp_path / "omop"
    argv = _restore_argv(seq, out, write_vocabulary(tmp_path / "vocab"), "--spark_master", "local[1]")
    done = subprocess.run(
        [sys.executable, "-m", "cehrgpt.omop.restore", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "CEHRGPT_SPARK_DRIVER_MEMORY": "1g"},
        timeout=600,
    )
    console = done.stdout + done.stderr
    assert done.returncode == 2, console
    assert "Traceback" not in console and "\tat " not in console and "Exception in task" not in console
    errors = [line for line in console.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "z.parquet" in errors[0], console
    assert not (out / "_SUCCESS").exists()


ID_TABLES = ("visit_occurrence", "condition_occurrence", "drug_exposure", "procedure_occurrence", "measurement",
             "observation", "device_exposure")  # fmt: skip
TYPE_FIELDS = {
    "visit_occurrence": "visit_type_concept_id",
    "condition_occurrence": "condition_type_concept_id",
    "drug_exposure": "drug_type_concept_id",
    "procedure_occurrence": "procedure_type_concept_id",
    "measurement": "measurement_type_concept_id",
    "observation": "observation_type_concept_id",
    "device_exposure": "device_type_concept_id",
    "death": "death_type_concept_id",
}


def all_ids(spark, folder: Path) -> list[int]:
    return [
        r[0]
        for table in ID_TABLES
        for r in spark.read.parquet(str(folder / table)).select(primary_key(table)).collect()
    ]


def test_every_type_field_is_ehr_by_default(spark, restored):
    root, report = restored
    for table, field in TYPE_FIELDS.items():
        assert {r[0] for r in spark.read.parquet(str(root / "omop" / table)).select(field).collect()} == {
            32817
        }
    assert report["type_concept_id"] == 32817


def test_type_concept_id_overrides_every_type_field(spark, tmp_path):
    seq = write_sequences(tmp_path / "seq", SEQUENCES[:1])
    vocab = write_vocabulary(tmp_path / "vocab")
    out = tmp_path / "omop"
    assert main(["--patient_sequence_folder", str(seq), "--omop_folder", str(out),
                 "--source_omop_folder", str(vocab), "--type_concept_id", "32879"]) == 0  # fmt: skip
    for table, field in TYPE_FIELDS.items():
        assert {r[0] for r in spark.read.parquet(str(out / table)).select(field).collect()} == {32879}, table
    periods = spark.read.parquet(str(out / "observation_period")).select("period_type_concept_id").collect()
    assert {r[0] for r in periods} == {44814725}


def test_id_layout_holds_every_seed_row_and_position_in_int64():
    assert RUN_BITS + ROW_BITS + POSITION_BITS == 63 and MAX_SEED < 1 << RUN_BITS
    largest = (MAX_SEED << (ROW_BITS + POSITION_BITS)) + (((1 << ROW_BITS) - 1) << POSITION_BITS)
    assert largest + (1 << POSITION_BITS) - 1 == (1 << 63) - 1


@pytest.mark.parametrize(
    "person_ids,id_offset,expected",
    [
        (None, None, 0),
        ((1, 2694), None, 0),
        ((person_id(7, 0), person_id(7, 99)), None, 7),
        ((person_id(MAX_SEED, 0), person_id(MAX_SEED, 5)), None, MAX_SEED),
        ((person_id(7, 0), person_id(8, 0)), 12, 12),
        ((-5, 3), 0, 0),
    ],
)
def test_id_run_is_the_seed_or_the_offset(person_ids, id_offset, expected):
    assert id_run(person_ids, id_offset) == expected


@pytest.mark.parametrize(
    "person_ids,id_offset,message",
    [
        ((person_id(7, 0), person_id(8, 0)), None, "not from one generation run"),
        ((-5, 3), None, "not from one generation run"),
        ((1, 2), -1, "id_offset must be in [0, 8388607], got -1"),
        ((1, 2), 1 << 23, "id_offset must be in [0, 8388607], got 8388608"),
    ],
)
def test_id_run_refuses_mixed_runs_and_offsets_out_of_range(person_ids, id_offset, message):
    with pytest.raises(RestoreError, match=re.escape(message)):
        id_run(person_ids, id_offset)


def _generated(seed: int) -> list[tuple[str, int, str]]:
    """The first two hand-made patients as if generated with ``seed``."""
    return [(f, person_id(seed, i), text) for i, (f, _, text) in enumerate(SEQUENCES[:2])]


def test_two_generation_runs_never_share_an_id(spark, tmp_path):
    vocab = write_vocabulary(tmp_path / "vocab")
    ids = {}
    for seed in (3, 4):
        seq = write_sequences(tmp_path / f"seq{seed}", _generated(seed))
        report = restore(str(seq), str(tmp_path / f"omop{seed}"), str(vocab), spark=spark)
        assert report["id_run"] == seed
        ids[seed] = all_ids(spark, tmp_path / f"omop{seed}")
        assert {i >> 40 for i in ids[seed]} == {seed}
    assert len(ids[3]) == len(ids[4]) == 12 and not set(ids[3]) & set(ids[4])
    # the same run restored again gives the same ids; only the run component differs between runs
    assert sorted(i - (3 << 40) for i in ids[3]) == sorted(i - (4 << 40) for i in ids[4])


def test_id_offset_sets_the_run_and_mixed_runs_need_one(spark, tmp_path, capsys):
    vocab = write_vocabulary(tmp_path / "vocab")
    seq = write_sequences(tmp_path / "seq", [*_generated(3)[:1], ("c", person_id(9, 0), SEQUENCES[0][2])])
    args = ["--patient_sequence_folder", str(seq), "--omop_folder", str(tmp_path / "omop"),
            "--source_omop_folder", str(vocab)]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: person ids ") and "pass --id_offset" in err and "\n" not in err
    assert not (tmp_path / "omop" / "_SUCCESS").exists()
    assert main([*args, "--id_offset", "77"]) == 0
    assert {i >> 40 for i in all_ids(spark, tmp_path / "omop")} == {77}


# --- the end date: a CDM holds no future ---------------------------------------------------------------------


def test_the_end_date_cuts_a_timeline_and_its_rejections_are_counted(spark, tmp_path):
    text = "year:2001 age:12 8532 8527 [VS] 9202 101 [VE] D30 [VS] 9202 201 [VE] D5 [VS] 9202 301 [VE] [END]"
    seq = write_sequences(tmp_path / "seq", [("a", 1, text)])
    out = tmp_path / "omop"
    vocab = write_vocabulary(tmp_path / "vocab")
    assert main(_restore_argv(seq, out, vocab, "--end_date", "2001-02-01")) == 0
    report = json.loads((out / "restore_report.json").read_text())
    assert report["end_date"] == "2001-02-01"
    assert report["rejected_tokens"] == {"after_end_date": 4}
    assert report["rows"]["visit_occurrence"] == 2 and report["rows"]["procedure_occurrence"] == 0
    assert max(r["visit_end_date"] for r in rows(spark, out, "visit_occurrence")).isoformat() == "2001-01-31"
    assert max(
        r["observation_period_end_date"] for r in rows(spark, out, "observation_period")
    ).isoformat() == ("2001-01-31")


def test_an_end_date_before_every_visit_keeps_the_persons_and_counts_them_without_events(spark, tmp_path):
    text = "year:2001 age:12 8532 8527 [VS] 9202 101 [VE] D30 [VS] 9202 201 [VE] [END]"
    seq = write_sequences(tmp_path / "seq", [("a", 1, text)])
    out = tmp_path / "omop"
    assert (
        main(_restore_argv(seq, out, write_vocabulary(tmp_path / "vocab"), "--end_date", "1990-01-01")) == 0
    )
    report = json.loads((out / "restore_report.json").read_text())
    assert report["rows"]["person"] == 1 and report["rows"]["visit_occurrence"] == 0
    assert report["persons_without_events"] == 1


def test_the_end_date_is_today_by_default_and_a_bad_one_is_one_line(spark, tmp_path, capsys):
    import datetime as dt

    seq = write_sequences(tmp_path / "seq", SEQUENCES[:1])
    out = tmp_path / "omop"
    vocab = write_vocabulary(tmp_path / "vocab")
    assert main(_restore_argv(seq, out, vocab)) == 0
    assert json.loads((out / "restore_report.json").read_text())["end_date"] == dt.date.today().isoformat()
    with pytest.raises(SystemExit) as exit_info:
        main(_restore_argv(seq, tmp_path / "other", vocab, "--end_date", "2001-13-01"))
    assert exit_info.value.code == 2
    assert "'2001-13-01' is not a date YYYY-MM-DD" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_a_release_without_persons_is_refused_and_the_previous_output_stays_published(
    spark, tmp_path, capsys
):
    vocab = write_vocabulary(tmp_path / "vocab")
    out = tmp_path / "omop"
    assert main(_restore_argv(write_sequences(tmp_path / "seq", SEQUENCES[:1]), out, vocab)) == 0
    published = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    report = (out / "restore_report.json").read_text()
    before = rows(spark, out, "person")
    bad = write_sequences(tmp_path / "bad", [("a", 7, "not a prompt")])  # its only patient is rejected
    code, err = _run_main(_restore_argv(bad, out, vocab), capsys)
    assert code == 2
    assert err.splitlines()[-1] == (
        "error: restored 0 of 1 patients (not restored: bad_prompt 1), fewer than --min_persons 1; "
        f"nothing was published to {out}"
    )
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == published  # no _tmp_ left either
    assert (out / "restore_report.json").read_text() == report and rows(spark, out, "person") == before


def test_min_persons_sets_the_smallest_release_and_zero_allows_an_empty_one(spark, tmp_path, capsys):
    vocab = write_vocabulary(tmp_path / "vocab")
    seq = write_sequences(tmp_path / "seq", SEQUENCES[:1])
    code, err = _run_main(_restore_argv(seq, tmp_path / "two", vocab, "--min_persons", "2"), capsys)
    assert (code, err.splitlines()[-1]) == (
        2,
        f"error: restored 1 of 1 patients, fewer than --min_persons 2; nothing was published to {tmp_path / 'two'}",
    )
    assert not (tmp_path / "two").exists() or list((tmp_path / "two").iterdir()) == []
    bad = write_sequences(tmp_path / "bad", [("a", 7, "not a prompt")])
    assert main(_restore_argv(bad, tmp_path / "empty", vocab, "--min_persons", "0")) == 0
    assert json.loads((tmp_path / "empty" / "restore_report.json").read_text())["patients_restored"] == 0
    assert (tmp_path / "empty" / "_SUCCESS").exists()
    with pytest.raises(SystemExit):
        main(_restore_argv(seq, tmp_path / "negative", vocab, "--min_persons", "-1"))
