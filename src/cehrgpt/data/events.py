"""Spark transforms of the ETL: OMOP tables → tagged events → one row of visit events per person.

Pure ``DataFrame -> DataFrame`` functions; reading and writing live in
:mod:`cehrgpt.data.prepare`. Dates become whole days since 1970-01-01.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cehrgpt.data.sequences import birth_date, patient_sequence, visits_from_events
from cehrgpt.data.value_tokens import (
    DROP_REASONS,
    VALUE_CLASSES,
    VALUE_COLUMNS,
    ValueCoder,
    drug_duration_days,
)


@dataclass(frozen=True)
class EventDomain:
    """An OMOP event table the ETL can read."""

    name: str
    table: str
    concept_column: str
    date_column: str
    value_kind: str | None = None  # "number" (value_as_number, value_as_concept_id, unit) or "duration"

    @property
    def value_source_columns(self) -> tuple[str, ...]:
        """The optional source columns its values come from (read as typed nulls when absent)."""
        if self.value_kind == "number":
            return ("value_as_number", "value_as_concept_id", "unit_concept_id")
        if self.value_kind == "duration":
            return ("drug_exposure_end_date", "days_supply")
        return ()


EVENT_DOMAINS = {
    d.name: d
    for d in (
        EventDomain("condition", "condition_occurrence", "condition_concept_id", "condition_start_date"),
        EventDomain("drug", "drug_exposure", "drug_concept_id", "drug_exposure_start_date", "duration"),
        EventDomain("procedure", "procedure_occurrence", "procedure_concept_id", "procedure_date"),
        EventDomain("measurement", "measurement", "measurement_concept_id", "measurement_date", "number"),
        EventDomain("observation", "observation", "observation_concept_id", "observation_date", "number"),
        EventDomain("device", "device_exposure", "device_concept_id", "device_exposure_start_date"),
    )
}
DEFAULT_DOMAINS = ("condition", "drug", "procedure")

# Drop reasons, in the order they are tested: an event is counted under its first reason only.
KEPT = "kept"
CONCEPT_ZERO = "concept_0"
NULL_DATE = "null_date"
BEFORE_MIN_DATE = "before_min_date"
UNKNOWN_PERSON = "unknown_person"
NO_BIRTH_YEAR = "no_birth_year"
NULL_PERSON_ID = "null_person_id"


def epoch_day(column: Column) -> Column:
    """Whole days since 1970-01-01 (dates are kept as day numbers from here on)."""
    return F.datediff(column, F.lit("1970-01-01").cast(T.DateType()))


def tag_persons(person: DataFrame) -> DataFrame:
    """Persons with a ``reason`` column: kept, or why they cannot be used."""
    reason = (
        F.when(F.col("person_id").isNull(), F.lit(NULL_PERSON_ID))
        .when(F.col("year_of_birth").isNull() & F.col("birth_datetime").isNull(), F.lit(NO_BIRTH_YEAR))
        .otherwise(F.lit(KEPT))
    )
    return person.select(
        "person_id",
        "gender_concept_id",
        "race_concept_id",
        "year_of_birth",
        "month_of_birth",
        "day_of_birth",
        epoch_day(F.to_date("birth_datetime")).alias("birth_day"),
        reason.alias("reason"),
    )


def tag_visits(visit_occurrence: DataFrame, persons: DataFrame) -> DataFrame:
    """Visits with ``visit_start_day`` and a ``reason`` (null start, unknown person or kept)."""
    known = persons.select("person_id", F.lit(True).alias("_known"))
    reason = (
        F.when(F.col("visit_start_date").isNull(), F.lit(NULL_DATE))
        .when(F.col("_known").isNull(), F.lit(UNKNOWN_PERSON))
        .otherwise(F.lit(KEPT))
    )
    return visit_occurrence.join(known, on="person_id", how="left").select(
        "visit_occurrence_id",
        "person_id",
        "visit_concept_id",
        epoch_day(F.col("visit_start_date")).alias("visit_start_day"),
        F.col("discharged_to_concept_id").alias("discharge_concept_id"),
        reason.alias("reason"),
    )


def domain_events(table: DataFrame, domain: EventDomain, with_values: bool = False) -> DataFrame:
    """One event table in the common event shape; ``with_values`` adds :data:`VALUE_COLUMNS` (null where
    the domain has none)."""
    columns = [
        F.lit(domain.table).alias("table"),
        F.col("person_id"),
        F.col(domain.concept_column).alias("concept_id"),
        F.col(domain.date_column).alias("event_date"),
        F.col("visit_occurrence_id"),
    ]
    if with_values:
        present = {
            "value_as_number": T.DoubleType(),
            "value_as_concept_id": T.LongType(),
            "unit_concept_id": T.LongType(),
            "duration_days": T.IntegerType(),
        }
        if domain.value_kind == "number":
            columns += [F.col(c).cast(present[c]).alias(c) for c in VALUE_COLUMNS[:3]]
        else:
            columns += [F.lit(None).cast(present[c]).alias(c) for c in VALUE_COLUMNS[:3]]
        if domain.value_kind == "duration":
            duration = drug_duration_days(
                F.col("drug_exposure_end_date"), F.col(domain.date_column), F.col("days_supply")
            )
        else:
            duration = F.lit(None).cast(T.IntegerType())
        columns.append(duration.alias("duration_days"))
    return table.select(*columns)


def _value_columns(df: DataFrame) -> list[str]:
    return [c for c in VALUE_COLUMNS if c in df.columns]


def tag_events(events: DataFrame, persons: DataFrame, min_event_date: str | None) -> DataFrame:
    """Events with ``event_day`` and a ``reason``: the first of concept 0, null date, early, unknown person."""
    known = persons.select("person_id", F.lit(True).alias("_known"))
    reason = F.when(F.col("concept_id").isNull() | (F.col("concept_id") == 0), F.lit(CONCEPT_ZERO)).when(
        F.col("event_date").isNull(), F.lit(NULL_DATE)
    )
    if min_event_date:
        reason = reason.when(
            F.col("event_date") < F.lit(min_event_date).cast(T.DateType()), F.lit(BEFORE_MIN_DATE)
        )
    reason = reason.when(F.col("_known").isNull(), F.lit(UNKNOWN_PERSON)).otherwise(F.lit(KEPT))
    return events.join(known, on="person_id", how="left").select(
        "table",
        "person_id",
        "concept_id",
        epoch_day(F.col("event_date")).alias("event_day"),
        "visit_occurrence_id",
        *_value_columns(events),
        reason.alias("reason"),
    )


def attach_visits(events: DataFrame, visits: DataFrame) -> DataFrame:
    """Kept events with their visit; an event whose visit is null, absent or another person's gets none."""
    visit_columns = visits.select(
        F.col("visit_occurrence_id").alias("visit_id"),
        F.col("person_id").alias("_visit_person_id"),
        "visit_concept_id",
        "visit_start_day",
        "discharge_concept_id",
    )
    joined = events.join(
        visit_columns,
        on=(events["visit_occurrence_id"] == visit_columns["visit_id"])
        & (events["person_id"] == visit_columns["_visit_person_id"]),
        how="left",
    )
    return joined.select(
        "person_id",
        "visit_id",
        "visit_concept_id",
        "visit_start_day",
        "discharge_concept_id",
        "event_day",
        "concept_id",
        *_value_columns(events),
    )


def person_split(person_id: Column, seed: int, test_fraction: float) -> Column:
    """'train' or 'test', a deterministic function of (person_id, seed)."""
    bucket = F.pmod(F.xxhash64(person_id, F.lit(seed)), F.lit(1_000_000)) / F.lit(1_000_000.0)
    return F.when(bucket < F.lit(float(test_fraction)), F.lit("test")).otherwise(F.lit("train"))


def with_split(persons: DataFrame, splits: DataFrame | None, seed: int, test_fraction: float) -> DataFrame:
    """Persons with ``split``: from ``patient_splits`` where listed, else from (person_id, seed)."""
    hashed = person_split(F.col("person_id"), seed, test_fraction)
    if splits is None:
        return persons.withColumn("split", hashed)
    listed = splits.groupBy("person_id").agg(F.first("split").alias("_listed_split"))
    return (
        persons.join(listed, on="person_id", how="left")
        .withColumn("split", F.coalesce(F.col("_listed_split"), hashed))
        .drop("_listed_split")
    )


def death_days(death: DataFrame) -> DataFrame:
    """One row per person who died: the earliest death date as ``death_day``."""
    return (
        death.where(F.col("death_date").isNotNull())
        .groupBy("person_id")
        .agg(F.min(epoch_day(F.col("death_date"))).alias("death_day"))
    )


def events_per_person(visit_events: DataFrame) -> DataFrame:
    """One row per person holding the list of that person's events with their visits."""
    event = F.struct(
        "visit_id",
        "visit_concept_id",
        "visit_start_day",
        "discharge_concept_id",
        "event_day",
        "concept_id",
        *_value_columns(visit_events),
    )
    return visit_events.groupBy("person_id").agg(F.collect_list(event).alias("events"))


SEQUENCE_SCHEMA = T.StructType(
    [
        T.StructField("person_id", T.LongType()),
        T.StructField("concept_ids", T.ArrayType(T.StringType())),
        T.StructField("ages", T.ArrayType(T.IntegerType())),
        T.StructField("dates", T.ArrayType(T.IntegerType())),
        T.StructField("visit_concept_ids", T.ArrayType(T.StringType())),
        T.StructField("visit_concept_orders", T.ArrayType(T.IntegerType())),
        T.StructField("num_of_visits", T.IntegerType()),
        T.StructField("num_of_concepts", T.IntegerType()),
        T.StructField("split", T.StringType()),
        T.StructField("negative_gaps", T.IntegerType()),
        T.StructField("has_death", T.BooleanType()),
        T.StructField("death_before_last_visit", T.BooleanType()),
        T.StructField("artificial_visits", T.IntegerType()),
        T.StructField("orphan_events", T.IntegerType()),
    ]
)
SEQUENCE_COLUMNS = [f.name for f in SEQUENCE_SCHEMA.fields[:8]]
#: The original CEHR-GPT's value columns, one entry per token (written when values are on).
VALUE_SEQUENCE_FIELDS = [
    T.StructField("concept_value_masks", T.ArrayType(T.IntegerType())),
    T.StructField("number_as_values", T.ArrayType(T.FloatType())),
    T.StructField("concept_as_values", T.ArrayType(T.StringType())),
    T.StructField("is_numeric_types", T.ArrayType(T.IntegerType())),
    T.StructField("units", T.ArrayType(T.StringType())),
]
VALUE_SEQUENCE_COLUMNS = [f.name for f in VALUE_SEQUENCE_FIELDS]
#: Per person: value tokens written per class and values dropped per reason (summed into the report).
VALUE_STAT_COLUMNS = [f"value_tokens_{c}" for c in VALUE_CLASSES] + [f"values_{r}" for r in DROP_REASONS]
VALUED_SEQUENCE_SCHEMA = T.StructType(
    SEQUENCE_SCHEMA.fields[:8]
    + VALUE_SEQUENCE_FIELDS
    + SEQUENCE_SCHEMA.fields[8:]
    + [T.StructField(c, T.IntegerType()) for c in VALUE_STAT_COLUMNS]
)
_ARROW_SCHEMA = pa.schema(
    [
        ("person_id", pa.int64()),
        ("concept_ids", pa.list_(pa.string())),
        ("ages", pa.list_(pa.int32())),
        ("dates", pa.list_(pa.int32())),
        ("visit_concept_ids", pa.list_(pa.string())),
        ("visit_concept_orders", pa.list_(pa.int32())),
        ("num_of_visits", pa.int32()),
        ("num_of_concepts", pa.int32()),
        ("split", pa.string()),
        ("negative_gaps", pa.int32()),
        ("has_death", pa.bool_()),
        ("death_before_last_visit", pa.bool_()),
        ("artificial_visits", pa.int32()),
        ("orphan_events", pa.int32()),
    ]
)
_VALUED_ARROW_SCHEMA = pa.schema(
    list(_ARROW_SCHEMA)[:8]
    + [
        ("concept_value_masks", pa.list_(pa.int32())),
        ("number_as_values", pa.list_(pa.float32())),
        ("concept_as_values", pa.list_(pa.string())),
        ("is_numeric_types", pa.list_(pa.int32())),
        ("units", pa.list_(pa.string())),
    ]
    + list(_ARROW_SCHEMA)[8:]
    + [(c, pa.int32()) for c in VALUE_STAT_COLUMNS]
)


def _sequences_of_batches(
    batches: Iterator[pa.RecordBatch], coder: ValueCoder | None = None
) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: person rows with their events → sequence rows, tokens from the grammar.

    With a ``coder``, each event gets its value token (:meth:`ValueCoder.choose`) and the row its value
    columns and value counts.
    """
    schema = _ARROW_SCHEMA if coder is None else _VALUED_ARROW_SCHEMA
    for batch in batches:
        columns: dict[str, list] = {name: [] for name in schema.names}
        for person in batch.to_pylist():
            birth = birth_date(
                person["year_of_birth"], person["month_of_birth"], person["day_of_birth"], person["birth_day"]
            )
            assert birth is not None  # persons without a birth year were dropped before
            events = person["events"]
            dropped = dict.fromkeys(DROP_REASONS, 0)
            if coder is not None:
                for event in events:
                    event["value"], reasons = coder.choose(
                        event["concept_id"],
                        event["value_as_number"],
                        event["value_as_concept_id"],
                        event["unit_concept_id"],
                        event["duration_days"],
                    )
                    for reason in reasons:
                        dropped[reason] += 1
            visits = visits_from_events(events)
            artificial = [v for v in visits if v.visit_id is None]
            seq = patient_sequence(
                birth, person["gender_concept_id"], person["race_concept_id"], visits, person["death_day"]
            )
            columns["person_id"].append(person["person_id"])
            columns["concept_ids"].append(seq.concept_ids)
            columns["ages"].append(seq.ages)
            columns["dates"].append(seq.dates)
            columns["visit_concept_ids"].append(seq.visit_concept_ids)
            columns["visit_concept_orders"].append(seq.visit_concept_orders)
            columns["num_of_visits"].append(seq.num_of_visits)
            columns["num_of_concepts"].append(len(seq.concept_ids))
            columns["split"].append(person["split"])
            columns["negative_gaps"].append(seq.negative_gaps)
            columns["has_death"].append(person["death_day"] is not None)
            columns["death_before_last_visit"].append(seq.death_before_last_visit)
            columns["artificial_visits"].append(len(artificial))
            columns["orphan_events"].append(sum(len(v.events) for v in artificial))
            if coder is not None:
                for name in VALUE_SEQUENCE_COLUMNS:
                    columns[name].append(getattr(seq, name))
                for value_class in VALUE_CLASSES:
                    columns[f"value_tokens_{value_class}"].append(seq.value_tokens[value_class])
                for reason in DROP_REASONS:
                    columns[f"values_{reason}"].append(dropped[reason])
        yield pa.RecordBatch.from_pydict(columns, schema=schema)


def build_sequences(
    person_events: DataFrame,
    persons: DataFrame,
    deaths: DataFrame | None,
    coder: ValueCoder | None = None,
) -> DataFrame:
    """Join each person's events with demographics, death and split, and build the token sequences.

    Args:
        person_events: from :func:`events_per_person`.
        persons: kept persons with ``split`` (see :func:`tag_persons`).
        deaths: ``person_id``, ``death_day`` (one row per person), or None.
        coder: the value bins, when events carry :data:`VALUE_COLUMNS`: the rows then follow
            :data:`VALUED_SEQUENCE_SCHEMA` (value tokens, value columns and counts); else
            :data:`SEQUENCE_SCHEMA`.
    """
    rows = person_events.join(persons, on="person_id", how="inner")
    if deaths is not None:
        rows = rows.join(deaths, on="person_id", how="left")
    else:
        rows = rows.withColumn("death_day", F.lit(None).cast(T.IntegerType()))
    rows = rows.select(
        "person_id",
        "gender_concept_id",
        "race_concept_id",
        "year_of_birth",
        "month_of_birth",
        "day_of_birth",
        "birth_day",
        "death_day",
        "split",
        "events",
    )
    if coder is None:
        return rows.mapInArrow(_sequences_of_batches, SEQUENCE_SCHEMA)
    return rows.mapInArrow(functools.partial(_sequences_of_batches, coder=coder), VALUED_SEQUENCE_SCHEMA)
