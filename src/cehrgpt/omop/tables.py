"""CDM table builders of the restore job: Spark column expressions over the decoded records.

Each builder selects one record kind of :data:`cehrgpt.omop.records.DECODED_SCHEMA` and
returns exactly the CDM 5.4 columns of its table in CDM order, cast to their types
(:func:`cdm_select`); ``observation_period`` and ``condition_era`` are derived from the
placed rows.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cehrgpt.omop.cdm import cdm_fields
from cehrgpt.omop.records import DEATH, EVENT, EVENT_TABLE_NAMES, EVENT_TABLES, PERSON, REJECTION, VISIT
from cehrgpt.omop.source import spark_type

TABLES = (
    "person",
    "visit_occurrence",
    *EVENT_TABLES.values(),
    "death",
    "observation_period",
)
CONDITION_ERA = "condition_era"
#: Tables derived from the placed rows: they hold no tokens, so the report counts what was written.
DERIVED_TABLES = ("observation_period", CONDITION_ERA)
ERA_PERSISTENCE_DAYS = 30  # OHDSI's persistence window between conditions of one era

EHR = 32817  # the standard Type Concept for records from an EHR: every type field but the period's by default
PERIOD_TYPE_CONCEPT_ID = 44814725


def cdm_select(table: str, values: dict[str, Column]) -> list[Column]:
    """Every column of ``table`` in CDM order, cast to its type; columns not in ``values`` are null."""
    fields = cdm_fields(table)
    unknown = set(values) - {f.name for f in fields}
    if unknown:
        raise ValueError(f"{table} has no column(s) {sorted(unknown)}")
    return [values.get(f.name, F.lit(None)).cast(spark_type(f.datatype)).alias(f.name) for f in fields]


def _midnight(column: str) -> Column:
    return F.col(column).cast(T.TimestampType())


def person_table(decoded: DataFrame) -> DataFrame:
    return decoded.where(F.col("record") == PERSON).select(
        *cdm_select(
            "person",
            {
                "person_id": F.col("person_id"),
                "gender_concept_id": F.col("concept_id"),
                "year_of_birth": F.col("year_of_birth"),
                "month_of_birth": F.lit(1),
                "day_of_birth": F.lit(1),
                "birth_datetime": F.make_date(F.col("year_of_birth").cast("int"), F.lit(1), F.lit(1)).cast(
                    T.TimestampType()
                ),
                "race_concept_id": F.col("concept_id_2"),
                "ethnicity_concept_id": F.lit(0),
            },
        )
    )


def visit_table(decoded: DataFrame, type_concept_id: int = EHR) -> DataFrame:
    return decoded.where(F.col("record") == VISIT).select(
        *cdm_select(
            "visit_occurrence",
            {
                "visit_occurrence_id": F.col("record_id"),
                "person_id": F.col("person_id"),
                "visit_concept_id": F.col("concept_id"),
                "visit_start_date": F.col("start_date"),
                "visit_start_datetime": _midnight("start_date"),
                "visit_end_date": F.col("end_date"),
                "visit_end_datetime": _midnight("end_date"),
                "visit_type_concept_id": F.lit(type_concept_id),
                "discharged_to_concept_id": F.col("concept_id_2"),
                "preceding_visit_occurrence_id": F.col("parent_id"),
            },
        )
    )


# table → (id, concept, date, datetime, type concept column)
EVENT_COLUMNS = {
    "condition_occurrence": (
        "condition_occurrence_id",
        "condition_concept_id",
        "condition_start_date",
        "condition_start_datetime",
        "condition_type_concept_id",
    ),
    "drug_exposure": (
        "drug_exposure_id",
        "drug_concept_id",
        "drug_exposure_start_date",
        "drug_exposure_start_datetime",
        "drug_type_concept_id",
    ),
    "procedure_occurrence": (
        "procedure_occurrence_id",
        "procedure_concept_id",
        "procedure_date",
        "procedure_datetime",
        "procedure_type_concept_id",
    ),
    "measurement": (
        "measurement_id",
        "measurement_concept_id",
        "measurement_date",
        "measurement_datetime",
        "measurement_type_concept_id",
    ),
    "observation": (
        "observation_id",
        "observation_concept_id",
        "observation_date",
        "observation_datetime",
        "observation_type_concept_id",
    ),
    "device_exposure": (
        "device_exposure_id",
        "device_concept_id",
        "device_exposure_start_date",
        "device_exposure_start_datetime",
        "device_type_concept_id",
    ),
}


def event_table(events: DataFrame, table: str, type_concept_id: int = EHR) -> DataFrame:
    """The rows of one event table, from the decoded records."""
    id_column, concept, date, datetime, type_column = EVENT_COLUMNS[table]
    values: dict[str, Column] = {
        id_column: F.col("record_id"),
        "person_id": F.col("person_id"),
        concept: F.col("concept_id"),
        date: F.col("start_date"),
        datetime: _midnight("start_date"),
        type_column: F.lit(type_concept_id),
        "visit_occurrence_id": F.col("parent_id"),
    }
    if table == "drug_exposure":  # required: start + its duration token's days, else the day it starts
        end = F.coalesce(F.col("end_date"), F.col("start_date"))
        values["drug_exposure_end_date"] = end
        values["drug_exposure_end_datetime"] = end.cast(T.TimestampType())
        values["days_supply"] = F.col("days_supply")
    if table in ("measurement", "observation"):  # a value token after the concept (event_values)
        values["value_as_number"] = F.col("value_as_number")
        values["unit_concept_id"] = F.col("unit_concept_id")
        values["value_as_concept_id"] = F.col("value_as_concept_id")
    rows = events.where((F.col("record") == EVENT) & (F.col("table") == EVENT_TABLE_NAMES.index(table)))
    return rows.select(*cdm_select(table, values))


def death_table(decoded: DataFrame, type_concept_id: int = EHR) -> DataFrame:
    return decoded.where(F.col("record") == DEATH).select(
        *cdm_select(
            "death",
            {
                "person_id": F.col("person_id"),
                "death_date": F.col("start_date"),
                "death_datetime": _midnight("start_date"),
                "death_type_concept_id": F.lit(type_concept_id),
            },
        )
    )


def observation_period_table(decoded: DataFrame) -> DataFrame:
    """Per person, from the first to the last date of any visit or death."""
    dated = decoded.where(F.col("record").isin(VISIT, DEATH)).select(
        "person_id", "start_date", F.coalesce("end_date", "start_date").alias("end_date")
    )
    periods = dated.groupBy("person_id").agg(
        F.min("start_date").alias("start_date"), F.max("end_date").alias("end_date")
    )
    return periods.select(
        *cdm_select(
            "observation_period",
            {
                "observation_period_id": F.col("person_id"),
                "person_id": F.col("person_id"),
                "observation_period_start_date": F.col("start_date"),
                "observation_period_end_date": F.col("end_date"),
                "period_type_concept_id": F.lit(PERIOD_TYPE_CONCEPT_ID),
            },
        )
    )


def condition_era_table(decoded: DataFrame) -> DataFrame:
    """OHDSI condition eras: per person and condition concept, occurrences at most 30 days apart.

    An occurrence lasts from its start date to the day after (a generated condition has no end
    date, which OHDSI's era script also fills with start + 1 day). An era starts where an
    occurrence starts more than :data:`ERA_PERSISTENCE_DAYS` after every earlier one has ended,
    and ends on its last end; ``condition_era_id`` is the era's smallest occurrence id.
    """
    conditions = decoded.where(
        (F.col("record") == EVENT) & (F.col("table") == EVENT_TABLE_NAMES.index("condition_occurrence"))
    ).select(
        "person_id",
        "concept_id",
        "record_id",
        F.col("start_date").alias("start"),
        F.date_add("start_date", 1).alias("end"),
    )
    order = Window.partitionBy("person_id", "concept_id").orderBy("start", "record_id")
    ended_before = F.max("end").over(order.rowsBetween(Window.unboundedPreceding, -1))
    opens = F.when(
        ended_before.isNull() | (F.col("start") > F.date_add(ended_before, ERA_PERSISTENCE_DAYS)), 1
    ).otherwise(0)
    numbered = conditions.withColumn("opens", opens).withColumn(
        "era", F.sum("opens").over(order.rowsBetween(Window.unboundedPreceding, Window.currentRow))
    )
    eras = numbered.groupBy("person_id", "concept_id", "era").agg(
        F.min("record_id").alias("id"),
        F.min("start").alias("start"),
        F.max("end").alias("end"),
        F.count("*").alias("occurrences"),
    )
    return eras.select(
        *cdm_select(
            CONDITION_ERA,
            {
                "condition_era_id": F.col("id"),
                "person_id": F.col("person_id"),
                "condition_concept_id": F.col("concept_id"),
                "condition_era_start_date": F.col("start"),
                "condition_era_end_date": F.col("end"),
                "condition_occurrence_count": F.col("occurrences"),
            },
        )
    )


REJECTED_SCHEMA = T.StructType(
    [
        T.StructField("person_id", T.LongType()),
        T.StructField("position", T.IntegerType()),
        T.StructField("token", T.StringType()),
        T.StructField("reason", T.StringType()),
    ]
)


def rejected_table(decoded: DataFrame) -> DataFrame:
    columns = [F.col(f.name).cast(f.dataType).alias(f.name) for f in REJECTED_SCHEMA.fields]
    return decoded.where(F.col("record") == REJECTION).select(*columns)
