"""The OMOP tables the ETL reads, read and checked before any work, so bad input fails fast and leaves nothing.

Required: ``person``, ``visit_occurrence``, ``concept`` and the default event tables asked for.
Optional (absent or unusable → skipped with a warning and a report line): the other event tables,
``death`` and ``patient_splits``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cehrgpt.data.events import DEFAULT_DOMAINS, EVENT_DOMAINS
from cehrgpt.omop.cdm import cdm_fields
from cehrgpt.omop.source import OmopSource, OmopSourceError, TableRequest

log = logging.getLogger("cehrgpt.data.prepare")  # the stage's logger: these warnings are prepare's

VOCABULARY_TABLES = ("concept",)  # the only vocabulary table a later stage reads (restore, fidelity)
REQUIRED_DOMAINS = frozenset(DEFAULT_DOMAINS)  # event tables read by default must be there


def _cdm_columns(table: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A CDM table's required and optional columns."""
    fields = cdm_fields(table)
    return tuple(f.name for f in fields if f.required), tuple(f.name for f in fields if not f.required)


@dataclass
class OmopInputs:
    """The tables the ETL reads, checked; optional ones that are absent or unusable are None."""

    person: DataFrame
    visit_occurrence: DataFrame
    concept: DataFrame
    domain_tables: dict[str, DataFrame]
    death: DataFrame | None
    splits: DataFrame | None
    vocabulary: dict[str, DataFrame]
    absent: dict[str, str] = field(default_factory=dict)
    unusable_rows: dict[str, int | None] = field(default_factory=dict)


def read_inputs(
    spark: SparkSession, source: OmopSource, domains: Sequence[str], with_values: bool = False
) -> OmopInputs:
    """Read and check every table before any work, so bad input fails fast and leaves nothing.

    Required: ``person``, ``visit_occurrence``, ``concept`` and the default event tables among
    ``domains``. Optional (absent or unusable → skipped with a warning and a report line): the other
    event tables, ``death``, ``patient_splits``. ``with_values`` also reads each event table's value
    columns (:attr:`~cehrgpt.data.events.EventDomain.value_source_columns`; typed nulls when absent).

    Raises:
        OmopSourceError: a required table or column is missing, a file unreadable, a value mistyped.
    """
    required: dict[str, TableRequest] = {
        "person": TableRequest(
            ("person_id", "gender_concept_id", "year_of_birth", "race_concept_id"),
            ("month_of_birth", "day_of_birth", "birth_datetime"),
        ),
        "visit_occurrence": TableRequest(
            ("visit_occurrence_id", "person_id", "visit_concept_id", "visit_start_date"),
            ("discharged_to_concept_id",),
        ),
    }
    optional: dict[str, TableRequest] = {}
    for name in domains:
        domain = EVENT_DOMAINS[name]
        extra = domain.value_source_columns if with_values else ()
        request = TableRequest(
            ("person_id", domain.concept_column, domain.date_column), ("visit_occurrence_id", *extra)
        )
        (required if name in REQUIRED_DOMAINS else optional)[domain.table] = request
    required["concept"] = TableRequest(*_cdm_columns("concept"))
    optional["death"] = TableRequest(("person_id", "death_date"))
    optional["patient_splits"] = TableRequest(("person_id", "split"))

    absent: dict[str, str] = {}
    unusable_rows: dict[str, int | None] = {}
    present_optional = {}
    for name, request in optional.items():
        if source.has_table(name):
            present_optional[name] = request
        else:
            absent[name] = "not in the source"
    tables = source.read_tables(spark, required | present_optional)
    for name in required:
        error = tables[name]
        if isinstance(error, OmopSourceError):
            raise error
    usable: dict[str, DataFrame] = {}
    for name, table in tables.items():
        if isinstance(table, OmopSourceError):
            log.warning("treating %s as absent: %s", name, table)
            absent[name] = f"unusable: {table}"
            unusable_rows[name] = source.raw_row_count(spark, name)
        else:
            usable[name] = table

    splits = usable.get("patient_splits")
    if splits is not None:
        bad = splits.where(~F.col("split").isin("train", "test") | F.col("split").isNull())
        counted = bad.agg(F.count(F.lit(1)).alias("n"), F.first("split").alias("example")).collect()[0]
        if counted["n"]:
            raise OmopSourceError(
                f"patient_splits.split: {counted['n']} values are not train/test, e.g. {counted['example']!r}"
            )
    return OmopInputs(
        person=usable["person"],
        visit_occurrence=usable["visit_occurrence"],
        concept=usable["concept"],
        domain_tables={
            n: usable[EVENT_DOMAINS[n].table] for n in domains if EVENT_DOMAINS[n].table in usable
        },
        death=usable.get("death"),
        splits=splits,
        vocabulary={n: usable[n] for n in VOCABULARY_TABLES if n in usable},
        absent=absent,
        unusable_rows=unusable_rows,
    )
