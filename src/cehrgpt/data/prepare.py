"""``python -m cehrgpt.data.prepare``: OMOP CDM → CEHR-GPT patient sequences (a PySpark job).

Writes, all at once (into a temporary sibling folder renamed at the end, so a
failed run leaves nothing that looks complete, and a rerun replaces the old output)::

    OUT/patient_sequence/train/*.parquet   OUT/patient_sequence/test/*.parquet
    OUT/omop_vocab/concept/ (+ concept_relationship, concept_ancestor when present)
    OUT/prepare_report.json

Runs on ``local[*]`` by default and unchanged under spark-submit.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from tqdm import tqdm

from cehrgpt.data import events as ev
from cehrgpt.data.events import DEFAULT_DOMAINS, EVENT_DOMAINS, SEQUENCE_COLUMNS
from cehrgpt.omop.cdm import cdm_fields
from cehrgpt.omop.source import OmopSource, OmopSourceError, open_omop_source
from cehrgpt.spark import get_spark

log = logging.getLogger(__name__)

REPORT_NAME = "prepare_report.json"
VOCABULARY_TABLES = ("concept", "concept_relationship", "concept_ancestor")
OPTIONAL_VOCABULARY = ("concept_relationship", "concept_ancestor")
# Event tables read by default are required; the others are optional: absent or unusable → skipped, reported.
REQUIRED_DOMAINS = frozenset(DEFAULT_DOMAINS)


class PrepareError(ValueError):
    """Bad input to the ETL (bad option, missing or malformed OMOP data)."""


def _cdm_columns(table: str) -> tuple[list[str], list[str]]:
    fields = cdm_fields(table)
    return [f.name for f in fields if f.required], [f.name for f in fields if not f.required]


def _optional_table(
    spark: SparkSession,
    source: OmopSource,
    name: str,
    columns: list[str],
    optional_columns: Sequence[str],
    absent: dict[str, str],
) -> DataFrame | None:
    """Read an optional table; absent or unusable → None, with a warning and a line in ``absent``."""
    if not source.has_table(name):
        absent[name] = "not in the source"
        return None
    try:
        return source.read_table(spark, name, columns, optional_columns)
    except OmopSourceError as error:
        log.warning("treating %s as absent: %s", name, error)
        absent[name] = f"unusable: {error}"
        return None


def _counts(df: DataFrame, *keys: str) -> dict[Any, int]:
    rows = df.groupBy(*keys).count().collect()
    if len(keys) == 1:
        return {r[keys[0]]: r["count"] for r in rows}
    return {tuple(r[k] for k in keys): r["count"] for r in rows}


def _parse_domains(domains: Sequence[str] | str) -> tuple[str, ...]:
    names = [d.strip().lower() for d in (domains.split(",") if isinstance(domains, str) else domains)]
    names = [d for d in names if d]
    unknown = [d for d in names if d not in EVENT_DOMAINS]
    if unknown or not names:
        raise PrepareError(
            f"--domains: {','.join(unknown) or '(empty)'} not understood, expected a comma-separated "
            f"subset of {','.join(EVENT_DOMAINS)}"
        )
    return tuple(dict.fromkeys(names))


def _check_options(test_fraction: float, min_event_date: str | None) -> None:
    if not 0.0 <= test_fraction < 1.0:
        raise PrepareError(f"--test_fraction: {test_fraction} is not a fraction in [0, 1)")
    if min_event_date is not None:
        try:
            date.fromisoformat(min_event_date)
        except ValueError:
            raise PrepareError(f"--min_event_date: {min_event_date!r} is not a date YYYY-MM-DD") from None


def prepare(
    omop_source: str,
    output_folder: str,
    *,
    test_fraction: float = 0.1,
    seed: int = 42,
    min_event_date: str | None = None,
    domains: Sequence[str] | str = DEFAULT_DOMAINS,
    spark: SparkSession | None = None,
    spark_master: str | None = None,
    shuffle_partitions: int | None = None,
) -> dict[str, Any]:
    """Turn an OMOP database into patient sequences, the vocabulary and a report, under ``output_folder``.

    Args:
        omop_source: a folder of parquet/CSV tables, a DuckDB file or a SQLAlchemy URL.
        output_folder: where ``patient_sequence/``, ``omop_vocab/`` and ``prepare_report.json`` go
            (replaced as a whole when the run succeeds).
        test_fraction: the share of persons put in ``test`` (unless ``patient_splits`` says otherwise).
        seed: makes the train/test split reproducible.
        min_event_date: ``YYYY-MM-DD``; events before it are dropped and counted.
        domains: event domains to read (see :data:`cehrgpt.data.events.EVENT_DOMAINS`).
        spark: a session to use; by default one from :func:`cehrgpt.spark.get_spark`.
        spark_master: the master for a new session (``local[*]`` when neither this nor spark-submit says).
        shuffle_partitions: ``spark.sql.shuffle.partitions`` for a new session.

    Returns:
        The report, as written to ``prepare_report.json``.

    Raises:
        PrepareError: a bad option.
        OmopSourceError: a missing table or column, an unreadable file, a value of the wrong type.
    """
    started = time.perf_counter()
    chosen = _parse_domains(domains)
    _check_options(test_fraction, min_event_date)
    out = Path(output_folder)
    source = open_omop_source(omop_source)
    if spark is None:
        # Python workers must import cehrgpt: run them on this interpreter unless told otherwise.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        spark = get_spark("cehrgpt-prepare", spark_master, shuffle_partitions)
    staging = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        report = _run(spark, source, staging, chosen, test_fraction, seed, min_event_date)
        report.update(
            omop_source=_describe(omop_source),
            output_folder=str(out),
            options={
                "test_fraction": test_fraction,
                "seed": seed,
                "min_event_date": min_event_date,
                "domains": list(chosen),
            },
            seconds=round(time.perf_counter() - started, 2),
        )
        events_kept = report["events"]["kept"]
        report["events_per_second"] = round(events_kept / max(report["seconds"], 1e-9), 1)
        (staging / REPORT_NAME).write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return report


def _describe(spec: str) -> str:
    if "://" in spec:
        from cehrgpt.omop.source import _redacted

        return _redacted(spec)
    return spec


def _run(
    spark: SparkSession,
    source: OmopSource,
    staging: Path,
    domains: tuple[str, ...],
    test_fraction: float,
    seed: int,
    min_event_date: str | None,
) -> dict[str, Any]:
    absent: dict[str, str] = {}
    steps = tqdm(total=7, desc="prepare", unit="step", file=sys.stderr)

    # Required tables first, so a missing one fails before any work.
    person = source.read_table(
        spark,
        "person",
        ["person_id", "gender_concept_id", "year_of_birth", "race_concept_id"],
        ["month_of_birth", "day_of_birth", "birth_datetime"],
    )
    visit_occurrence = source.read_table(
        spark,
        "visit_occurrence",
        ["visit_occurrence_id", "person_id", "visit_concept_id", "visit_start_date"],
        ["discharged_to_concept_id"],
    )
    concept_required, concept_optional = _cdm_columns("concept")
    concept = source.read_table(spark, "concept", concept_required, concept_optional)
    domain_tables: dict[str, DataFrame] = {}
    unusable_rows: dict[str, int | None] = {}
    for name in domains:
        domain = EVENT_DOMAINS[name]
        columns = ["person_id", domain.concept_column, domain.date_column]
        if name in REQUIRED_DOMAINS:
            domain_tables[name] = source.read_table(spark, domain.table, columns, ["visit_occurrence_id"])
            continue
        table = _optional_table(spark, source, domain.table, columns, ["visit_occurrence_id"], absent)
        if table is None:
            unusable_rows[domain.table] = _raw_count(spark, source, domain.table)
        else:
            domain_tables[name] = table
    death = _optional_table(spark, source, "death", ["person_id", "death_date"], [], absent)
    if death is None:
        unusable_rows["death"] = _raw_count(spark, source, "death")
    splits = _optional_table(spark, source, "patient_splits", ["person_id", "split"], [], absent)
    steps.update()

    # Persons.
    persons = ev.tag_persons(person).persist()
    person_reasons = _counts(persons, "reason")
    kept_persons = persons.where(F.col("reason") == ev.KEPT).drop("reason")
    if splits is not None:
        bad = splits.where(~F.col("split").isin("train", "test") | F.col("split").isNull())
        n_bad = bad.count()
        if n_bad:
            example = bad.select("split").first()[0]
            raise OmopSourceError(
                f"patient_splits.split: {n_bad} values are not train/test, e.g. {example!r}"
            )
        listed = splits.groupBy("person_id").agg(F.first("split").alias("_listed_split"))
        kept_persons = kept_persons.join(listed, on="person_id", how="left").withColumn(
            "split",
            F.coalesce(F.col("_listed_split"), ev.person_split(F.col("person_id"), seed, test_fraction)),
        )
        kept_persons = kept_persons.drop("_listed_split")
    else:
        kept_persons = kept_persons.withColumn(
            "split", ev.person_split(F.col("person_id"), seed, test_fraction)
        )
    steps.update()

    # Visits and events.
    visits = ev.tag_visits(visit_occurrence, kept_persons).persist()
    visit_reasons = _counts(visits, "reason")
    kept_visits = visits.where(F.col("reason") == ev.KEPT).drop("reason")
    union = None
    for name, table in domain_tables.items():
        part = ev.domain_events(table, EVENT_DOMAINS[name])
        union = part if union is None else union.unionByName(part)
    assert union is not None
    tagged = ev.tag_events(union, kept_persons, min_event_date).persist()
    event_reasons = _counts(tagged, "table", "reason")
    steps.update()

    visit_events = ev.attach_visits(tagged.where(F.col("reason") == ev.KEPT), kept_visits).persist()
    orphans = visit_events.where(F.col("visit_id").isNull())
    orphan_stats = orphans.agg(
        F.count(F.lit(1)).alias("events"),
        F.count_distinct("person_id", "event_day").alias("visits"),
    ).first()
    used_visits = visit_events.where(F.col("visit_id").isNotNull()).select("visit_id").distinct()
    empty_visits = kept_visits.join(
        used_visits, kept_visits["visit_occurrence_id"] == used_visits["visit_id"], how="left_anti"
    ).count()
    steps.update()

    deaths = None
    if death is not None:
        deaths = (
            death.where(F.col("death_date").isNotNull())
            .groupBy("person_id")
            .agg(F.min(ev.epoch_day(F.col("death_date"))).alias("death_day"))
        )
    sequences = ev.build_sequences(ev.events_per_person(visit_events), kept_persons, deaths).persist()
    seq_stats = sequences.agg(
        F.count(F.lit(1)).alias("persons"),
        F.sum("num_of_visits").alias("visits"),
        F.sum("num_of_concepts").alias("tokens"),
        F.sum("negative_gaps").alias("negative_gaps"),
        F.sum(F.col("has_death").cast("long")).alias("deaths"),
        F.sum(F.col("death_before_last_visit").cast("long")).alias("deaths_before_last_visit"),
    ).first()
    per_split = _counts(sequences, "split")
    steps.update()

    sequence_folder = staging / "patient_sequence"
    for split in ("train", "test"):
        sequences.where(F.col("split") == split).select(*SEQUENCE_COLUMNS).write.mode("overwrite").parquet(
            str(sequence_folder / split)
        )
    steps.update()

    vocab_rows = {"concept": _write_vocab(concept, staging / "omop_vocab" / "concept")}
    for name in OPTIONAL_VOCABULARY:
        required, optional = _cdm_columns(name)
        table = _optional_table(spark, source, name, required, optional, absent)
        if table is not None:
            vocab_rows[name] = _write_vocab(table, staging / "omop_vocab" / name)
    steps.update()
    steps.close()

    for df in (persons, visits, tagged, visit_events, sequences):
        df.unpersist()

    tables_read: dict[str, int] = {
        "person": sum(person_reasons.values()),
        "visit_occurrence": sum(visit_reasons.values()),
    }
    events_by_table: dict[str, dict[str, int]] = {}
    for (table, reason), n in sorted(event_reasons.items()):
        events_by_table.setdefault(table, {})[reason] = n
    for name in domain_tables:
        table = EVENT_DOMAINS[name].table
        events_by_table.setdefault(table, {})
        tables_read[table] = sum(events_by_table[table].values())
    if death is not None:
        tables_read["death"] = death.count()
    kept_events = sum(r.get(ev.KEPT, 0) for r in events_by_table.values())
    persons_with_visits = seq_stats["persons"] or 0
    return {
        "tables_read": tables_read,
        "tables_treated_as_absent": absent,
        "rows_in_unusable_tables": unusable_rows,
        "persons": {
            "read": sum(person_reasons.values()),
            "kept": person_reasons.get(ev.KEPT, 0),
            "dropped": {k: v for k, v in sorted(person_reasons.items()) if k != ev.KEPT},
            "dropped_without_events": person_reasons.get(ev.KEPT, 0) - persons_with_visits,
            "written": persons_with_visits,
            "per_split": {"train": per_split.get("train", 0), "test": per_split.get("test", 0)},
        },
        "visits": {
            "read": sum(visit_reasons.values()),
            "kept": visit_reasons.get(ev.KEPT, 0) - empty_visits,
            "dropped": {k: v for k, v in sorted(visit_reasons.items()) if k != ev.KEPT},
            "dropped_empty": empty_visits,
            "artificial_visits": orphan_stats["visits"],
            "written": seq_stats["visits"] or 0,
            "negative_gaps_clipped": seq_stats["negative_gaps"] or 0,
        },
        "events": {
            "kept": kept_events,
            "by_table": {
                t: {"read": sum(r.values()), "kept": r.get(ev.KEPT, 0)}
                | {"dropped": {k: v for k, v in r.items() if k != ev.KEPT}}
                for t, r in events_by_table.items()
            },
            "orphans_in_artificial_visits": orphan_stats["events"],
        },
        "deaths": {
            "written": seq_stats["deaths"] or 0,
            "before_last_visit": seq_stats["deaths_before_last_visit"] or 0,
        },
        "tokens_written": seq_stats["tokens"] or 0,
        "vocabulary_rows": vocab_rows,
    }


def _raw_count(spark: SparkSession, source: OmopSource, name: str) -> int | None:
    """Rows in a table that cannot be used (so the report says what was skipped); None if absent."""
    if not source.has_table(name):
        return None
    try:
        return source._raw_table(spark, name, None).count()
    except Exception:  # the table is already known to be broken; the count is informative only
        return None


def _write_vocab(table: DataFrame, path: Path) -> int:
    table.write.mode("overwrite").parquet(str(path))
    return table.sparkSession.read.parquet(str(path)).count()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cehrgpt.data.prepare",
        description="OMOP CDM -> CEHR-GPT patient sequences (train/test parquet), vocabulary and a report.",
    )
    parser.add_argument(
        "--omop_source", required=True, help="folder (parquet/CSV), DuckDB file or SQLAlchemy URL"
    )
    parser.add_argument("--output_folder", required=True)
    parser.add_argument("--test_fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--min_event_date", default=None, help="YYYY-MM-DD; earlier events are dropped")
    parser.add_argument("--spark_master", default=None, help="default: spark-submit's master, else local[*]")
    parser.add_argument(
        "--domains",
        default=",".join(DEFAULT_DOMAINS),
        help=f"comma-separated subset of {','.join(EVENT_DOMAINS)} (default: %(default)s)",
    )
    parser.add_argument("--shuffle_partitions", type=int, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = prepare(
            args.omop_source,
            args.output_folder,
            test_fraction=args.test_fraction,
            seed=args.seed,
            min_event_date=args.min_event_date,
            domains=args.domains,
            spark_master=args.spark_master,
            shuffle_partitions=args.shuffle_partitions,
        )
    except (PrepareError, OmopSourceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    persons = report["persons"]["per_split"]
    print(
        f"wrote {persons['train']} train and {persons['test']} test patients, "
        f"{report['events']['kept']} events, to {args.output_folder}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
