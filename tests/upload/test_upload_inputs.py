"""The restored folder checked against the CDM, and batches conformed to CDM types (pure, no database)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pytest
from upload_fixtures import PERSON, write_table

from cehrgpt.upload.conform import conform_batch
from cehrgpt.upload.errors import UploadError
from cehrgpt.upload.inputs import find_tables


def test_find_tables_lists_cdm_tables_ignoring_rejected_and_report(restored_omop):
    found = find_tables(restored_omop)
    assert [(t.table, t.rows, [f.name for f in t.files]) for t in found] == [
        ("death", 1, ["part-00000.parquet"]),
        ("measurement", 2, ["part-00000.parquet"]),
        ("observation_period", 3, ["part-00000.parquet"]),
        ("person", 3, ["part-00000.parquet", "part-00001.parquet"]),
    ]


def test_find_tables_with_a_table_list(restored_omop):
    assert [t.table for t in find_tables(restored_omop, ["Person", "death", "person"])] == ["person", "death"]


@pytest.mark.parametrize(
    ("setup", "tables", "message"),
    [
        (lambda f: None, ["visit_occurrence"], r"--tables: .*visit_occurrence does not exist"),
        (lambda f: None, ["patients"], "--tables: 'patients' is not an OMOP CDM 5.4 table"),
        (lambda f: write_table(f, "extras", PERSON), None, r"extras is not an OMOP CDM 5.4 table; remove it"),
        (
            lambda f: (f / "cost").mkdir(),
            None,
            r"cost holds no .parquet file; expected the restored cost table",
        ),
        (
            lambda f: write_table(f, "location", pa.table({"location_id": [1], "planet": ["mars"]})),
            None,
            r"location/part-00000.parquet: column 'planet' is not a CDM 5.4 column of location",
        ),
        (
            lambda f: write_table(f, "location", pa.table({"zip": ["x"]})),
            None,
            r"required column 'location_id' of location is missing",
        ),
        (
            lambda f: write_table(f, "location", pa.table({"location_id": [1.5]})),
            None,
            r"location.location_id is double; expected a integer column \(CDM integer\)",
        ),
        (
            lambda f: (f / "note").mkdir() or (f / "note" / "part-0.parquet").write_text("nope"),
            None,
            r"note/part-0.parquet is not a readable parquet file",
        ),
    ],
)
def test_bad_inputs_are_refused_before_any_database_work(restored_omop, setup, tables, message):
    setup(restored_omop)
    with pytest.raises(UploadError, match=message):
        find_tables(restored_omop, tables)


def test_unfinished_restore_output_is_refused(restored_omop):
    (restored_omop / "_SUCCESS").unlink()
    with pytest.raises(UploadError) as error:
        find_tables(restored_omop)
    assert str(error.value) == (
        f"{restored_omop} is restore output without its _SUCCESS marker (found restore_report.json, "
        "rejected): the restore job did not finish; rerun it before uploading"
    )


def test_missing_or_empty_input_folder(tmp_path):
    with pytest.raises(
        UploadError, match=r"input folder .*nowhere does not exist; expected the restore job's"
    ):
        find_tables(tmp_path / "nowhere")
    with pytest.raises(UploadError, match=r"holds no table folder; expected e.g. .*/person/\*.parquet"):
        find_tables(tmp_path)


def test_conform_orders_casts_and_fills_cdm_columns():
    batch = pa.record_batch(
        {
            "DEATH_DATE": pa.array([dt.date(2020, 1, 1)]),
            "person_id": pa.array([7], pa.int32()),
            "death_datetime": pa.array(
                [dt.datetime(2020, 1, 1, 23, 30, 0, 123456)], pa.timestamp("us", tz="America/New_York")
            ),
        }
    )
    table = conform_batch("death", batch, where="x")
    assert table.schema.names == [
        "person_id",
        "death_date",
        "death_datetime",
        "death_type_concept_id",
        "cause_concept_id",
        "cause_source_value",
        "cause_source_concept_id",
    ]
    assert table.schema.field("person_id").type == pa.int64()
    assert table.schema.field("death_datetime").type == pa.timestamp("us")
    assert table.to_pylist() == [
        {
            "person_id": 7,
            "death_date": dt.date(2020, 1, 1),
            # Arrow keeps zoned timestamps as UTC instants: 23:30 UTC stays 23:30, zone dropped.
            "death_datetime": dt.datetime(2020, 1, 1, 23, 30, 0, 123456),
            "death_type_concept_id": None,
            "cause_concept_id": None,
            "cause_source_value": None,
            "cause_source_concept_id": None,
        }
    ]


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        (
            {"person_id": pa.array([1, None], pa.int64()), "death_date": pa.array([dt.date(2020, 1, 1)] * 2)},
            r"x: death.person_id is required \(NOT NULL\) but has 1 null value\(s\)",
        ),
        (
            {
                "person_id": pa.array([1], pa.int64()),
                "death_date": pa.array([dt.date(2020, 1, 1)]),
                "cause_source_value": pa.array(["x" * 51]),
            },
            r"x: death.cause_source_value holds a value of 51 characters; the CDM declares varchar\(50\)",
        ),
        (
            {
                "person_id": pa.array([1], pa.int64()),
                "death_date": pa.array([dt.date(2020, 1, 1)]),
                "death_datetime": pa.array([1], pa.timestamp("ns")),
            },
            r"x: death.death_datetime: cannot store timestamp\[ns\] values as CDM datetime",
        ),
    ],
)
def test_conform_refuses_what_a_database_would_mangle(columns, message):
    with pytest.raises(UploadError, match=message):
        conform_batch("death", pa.record_batch(columns), where="x")


def test_conform_refuses_integer_overflow():
    batch = pa.record_batch(
        {
            "person_id": pa.array([1], pa.int64()),
            "gender_concept_id": pa.array([0], pa.int64()),
            "year_of_birth": pa.array([2**31], pa.int64()),
            "race_concept_id": pa.array([0], pa.int64()),
            "ethnicity_concept_id": pa.array([0], pa.int64()),
        }
    )
    with pytest.raises(UploadError, match=r"person.year_of_birth: cannot store int64 values as CDM integer"):
        conform_batch("person", batch, where="x")


def test_release_size_counts_the_person_table_only():
    from cehrgpt.upload.inputs import TableInput, check_release_size

    folder = Path("omop")
    person = TableInput("person", (), 0)
    with pytest.raises(UploadError, match=r"^omop/person holds 0 persons, fewer than --min_persons 1: "):
        check_release_size([person], folder, min_persons=1, allow_empty=False)
    check_release_size([person], folder, min_persons=1, allow_empty=True)
    check_release_size([TableInput("person", (), 5)], folder, min_persons=5, allow_empty=False)
    check_release_size([TableInput("death", (), 0)], folder, min_persons=1, allow_empty=False)
