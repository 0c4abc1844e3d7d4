"""The OMOP reader: layouts, case-insensitive names, CDM 5.3 names, types and its error lines."""

from __future__ import annotations

from datetime import date, datetime

import pytest
from data_omop_fixtures import write_csv, write_duckdb, write_parquet

from cehrgpt.omop.source import OmopSourceError, open_omop_source

VISITS = {
    "visit_occurrence": [
        {
            "visit_occurrence_id": 10,
            "person_id": 1,
            "visit_concept_id": 9201,
            "visit_start_date": date(2020, 1, 1),
            "discharge_to_concept_id": 8536,
        },
        {
            "visit_occurrence_id": 11,
            "person_id": 1,
            "visit_concept_id": 9202,
            "visit_start_date": date(2020, 2, 1),
            "discharge_to_concept_id": None,
        },
    ]
}
EXPECTED_VISITS = [(10, 1, 9201, date(2020, 1, 1), 8536, None), (11, 1, 9202, date(2020, 2, 1), None, None)]


def _read_visits(spark, spec):
    df = open_omop_source(str(spec)).read_table(
        spark,
        "VISIT_OCCURRENCE",
        ["visit_occurrence_id", "person_id", "visit_concept_id", "visit_start_date"],
        ["discharged_to_concept_id", "visit_end_datetime"],
    )
    return df


@pytest.mark.parametrize("layout", ["csv", "csv_upper", "parquet", "parquet_upper", "duckdb"])
def test_every_layout_reads_the_same_typed_rows(spark, tmp_path, layout):
    if layout == "duckdb":
        spec = write_duckdb(tmp_path / "omop.duckdb", VISITS)
    elif layout.startswith("csv"):
        spec = write_csv(tmp_path / "omop", VISITS, upper=layout.endswith("upper"))
    else:
        spec = write_parquet(tmp_path / "omop", VISITS, upper=layout.endswith("upper"))
    df = _read_visits(spark, spec)
    assert df.columns == [
        "visit_occurrence_id",
        "person_id",
        "visit_concept_id",
        "visit_start_date",
        "discharged_to_concept_id",
        "visit_end_datetime",
    ]
    assert [f.dataType.simpleString() for f in df.schema.fields] == [
        "bigint",
        "bigint",
        "bigint",
        "date",
        "bigint",
        "timestamp",
    ]
    assert sorted(tuple(r) for r in df.collect()) == EXPECTED_VISITS


def test_sqlalchemy_url_reads_a_postgres_table(spark, postgres_url):
    import sqlalchemy as sa

    base = postgres_url
    engine = sa.create_engine(base)
    with engine.begin() as connection:
        connection.execute(sa.text("drop schema if exists data_src_test cascade"))
        connection.execute(sa.text("create schema data_src_test"))
        connection.execute(
            sa.text("create table data_src_test.person (person_id bigint, birth_datetime timestamp)")
        )
        connection.execute(
            sa.text("insert into data_src_test.person values (7, '1990-05-06 10:00:00'), (8, null)")
        )
    try:
        url = base + "?options=-csearch_path%3Ddata_src_test"
        df = open_omop_source(url).read_table(spark, "person", ["PERSON_ID", "birth_datetime"])
        assert sorted(tuple(r) for r in df.collect()) == [(7, datetime(1990, 5, 6, 10)), (8, None)]
    finally:
        with engine.begin() as connection:
            connection.execute(sa.text("drop schema data_src_test cascade"))


def test_integral_csv_numbers_written_as_floats_read_as_integers(spark, tmp_path):
    (tmp_path / "person.csv").write_text("person_id,year_of_birth\n1.0,1950\n2,\n")
    df = open_omop_source(str(tmp_path)).read_table(spark, "person", ["person_id", "year_of_birth"])
    assert sorted(tuple(r) for r in df.collect()) == [(1, 1950), (2, None)]


def test_missing_table_names_the_table(spark, tmp_path):
    write_csv(tmp_path, VISITS)
    with pytest.raises(OmopSourceError, match=r"^person: table not found in "):
        open_omop_source(str(tmp_path)).read_table(spark, "person", ["person_id"])


def test_missing_column_names_table_and_column(spark, tmp_path):
    write_csv(tmp_path, VISITS)
    with pytest.raises(OmopSourceError, match=r"^visit_occurrence\.visit_end_date: column not found"):
        open_omop_source(str(tmp_path)).read_table(spark, "visit_occurrence", ["visit_end_date"])


def test_value_failing_its_type_names_count_and_example(spark, tmp_path):
    (tmp_path / "condition_occurrence.csv").write_text(
        "person_id,condition_start_date\n1,2020-01-01\n1,abc\n2,xyz\n3,2020-13-45\n4,\n"
    )
    source = open_omop_source(str(tmp_path))
    with pytest.raises(OmopSourceError) as error:
        source.read_table(spark, "condition_occurrence", ["person_id", "condition_start_date"])
    assert str(error.value) == "condition_occurrence.condition_start_date: 3 values are not dates, e.g. 'abc'"


def test_parquet_column_of_the_wrong_type_is_refused(spark, tmp_path):
    write_parquet(tmp_path, {"person": [{"person_id": 1, "birth_datetime": 1990}]})
    with pytest.raises(OmopSourceError) as error:
        open_omop_source(str(tmp_path)).read_table(spark, "person", ["person_id", "birth_datetime"])
    assert str(error.value) == "person.birth_datetime: stored as bigint, expected datetimes"


def test_unreadable_file_names_the_table(spark, tmp_path):
    (tmp_path / "person.parquet").write_text("this is not parquet")
    with pytest.raises(OmopSourceError, match=r"^person: cannot read .*person\.parquet as parquet"):
        open_omop_source(str(tmp_path)).read_table(spark, "person", ["person_id"])


def test_spec_that_is_nothing_readable(tmp_path):
    with pytest.raises(OmopSourceError, match=r"does not exist \(expected a folder, DuckDB file or URL\)"):
        open_omop_source(str(tmp_path / "nowhere"))
