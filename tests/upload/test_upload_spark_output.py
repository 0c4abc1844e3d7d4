"""The interface with the restore job: tables as Spark writes them (part files, _SUCCESS, .crc, UTC timestamps)."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from pyspark.sql import types as T
from upload_fixtures import select_rows

from cehrgpt.upload import upload_omop


def test_spark_written_tables_upload_with_their_microseconds(spark, tmp_path):
    schema = T.StructType(
        [
            T.StructField("person_id", T.LongType(), False),
            T.StructField("death_date", T.DateType(), False),
            T.StructField("death_datetime", T.TimestampType(), True),
            T.StructField("death_type_concept_id", T.IntegerType(), True),
        ]
    )
    moment = dt.datetime(2021, 3, 4, 5, 6, 7, 890123)
    rows = [
        (1, dt.date(2021, 3, 4), moment.replace(tzinfo=dt.UTC), 32817),
        (2, dt.date(2022, 1, 1), None, None),
    ]
    folder = tmp_path / "restored_omop"
    spark.createDataFrame(rows, schema).repartition(2).write.parquet(str(folder / "death"))
    target = f"duckdb:///{tmp_path / 'omop.duckdb'}"
    summary = upload_omop(folder, target)
    assert summary["tables"]["death"]["rows_in_target"] == 2
    engine = sa.create_engine(target)
    try:
        # Spark stores instants; the upload writes them as UTC wall-clock time.
        assert select_rows(
            engine, "death", "person_id, death_date, death_datetime, death_type_concept_id"
        ) == [
            (1, dt.date(2021, 3, 4), moment, 32817),
            (2, dt.date(2022, 1, 1), None, None),
        ]
    finally:
        engine.dispose()
