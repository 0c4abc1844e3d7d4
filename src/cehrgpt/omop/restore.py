"""Restore OMOP CDM 5.4 tables from patient sequences (generated or training), with Spark.

``python -m cehrgpt.omop.restore --patient_sequence_folder P --omop_folder O --source_omop_folder V``
reads ``P/*.parquet`` (``person_id``, ``concept_ids``), decodes every patient
inside ``mapInArrow`` (grammar-valid patients with the vectorised
:func:`cehrgpt.omop.arrow_decode.decode_arrow`, the rest with the reference
:func:`cehrgpt.omop.decode.decode_patient`), sends each clinical concept to the
table of its vocabulary domain and writes ``O/<table>/`` as parquet, exactly the
CDM 5.4 columns in CDM order:

- integer → ``bigint`` (int64) for every integer field, ids and concept ids
  alike (one rule, and generated ids do not fit ``int``); date → ``date``;
  datetime → ``timestamp`` (midnight UTC); float → ``double``; varchar → ``string``;
- type concepts: 32817 (EHR, Type Concept vocabulary) for the visit, condition,
  drug, procedure, measurement, observation, device and death type fields, or
  ``--type_concept_id``; observation_period 44814725;
- ids (every ``*_occurrence_id``, ``*_exposure_id``, ``measurement_id``,
  ``observation_id``; int64, always positive)::

      bit 62 ........ 40 | 39 ........ 18 | 17 ........ 0
          run (23 bits)  | row (22 bits)  | token position (18 bits)

  ``run`` is the generation run: the seed of the input's person ids
  (``person_id = seed·2^40 + index + 1``, :mod:`cehrgpt.generation.sharding`),
  which every input person must share, or ``--id_offset``; ``row`` numbers the
  input rows in file order (files sorted by path); the position is that of the
  record's token, never 0 (the prompt comes first). So ids are unique across
  tables, files and shards, the same on every rerun, and two restores of
  different generation runs never share one (limits: 2^22 rows per restore,
  2^18 tokens per sequence). ``observation_period_id`` = ``person_id``;
- values (:mod:`cehrgpt.omop.event_values`): with ``value_bins.json`` in the vocabulary
  folder (the ETL's, :mod:`cehrgpt.values`), a value token after a concept fills that row's
  ``value_as_number`` (drawn within its bin, seeded by person id and token position),
  ``unit_concept_id`` and ``value_as_concept_id`` (measurement, observation), or a drug's
  ``drug_exposure_end_date`` and ``days_supply``; a value that does not fit is rejected
  (``value_does_not_fit``), its concept kept. Without the file every value token is rejected;
- a repeated ``person_id``: the first row (by file, then row) is restored, the
  later ones are rejected (``duplicate_person``);
- ``O/rejected/``: ``person_id, position, token, reason`` for every token that
  could not be placed (reasons: :class:`cehrgpt.omop.decode.Reason`);
- ``O/restore_report.json``: input patients, patients restored and why the
  others were not, rows per table, rejected tokens per reason, values placed per
  class (``values_placed``), and the token accounting
  ``input == placed + structural + rejected`` (a value on a row is placed), checked
  before the output is published.

Output appears only when the job succeeded: tables (and the decoded records
they are cut from) are written under ``O/_tmp_<run>/``, then moved into place with the Hadoop FileSystem API (so
``gs://`` and ``s3a://`` work), and ``O/_SUCCESS`` is written last. A failed
run leaves the previous output as it was; consumers should check ``_SUCCESS``.
A rerun removes every table of the earlier run it does not write again (no stale
``condition_era`` beside the new ``_SUCCESS``), and the job refuses a non-empty
``O`` that no restore wrote. Every input file must be parquet: an empty or
foreign file stops the job with one line naming it (exit 2), before anything is written.
Every path may be a local path or an object-store URI.

The job is split by concern: :mod:`cehrgpt.omop.inputs` reads and checks the inputs
(sequences, vocabulary, the ids' run and row layout), :mod:`cehrgpt.omop.records` turns
decoded patients into Arrow records inside ``mapInArrow``, :mod:`cehrgpt.omop.tables`
cuts the CDM tables from those records, and this module stages, reports and publishes
them and holds the CLI (it is also the file ``spark-submit`` runs).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import date
from typing import Any

import numpy as np
import pyarrow as pa
from py4j.protocol import Py4JError
from pyspark.errors import PySparkException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema
from tqdm import tqdm

from cehrgpt.dates import date_to_day
from cehrgpt.exits import CommandParser, run_command
from cehrgpt.grammar import PROMPT_LENGTH
from cehrgpt.omop.event_values import ValueLookup, value_lookup
from cehrgpt.omop.inputs import (
    RestoreError,
    check_input_files,
    id_run,
    input_layout,
    read_restore_value_bins,
    read_sequences,
    read_vocabulary,
)
from cehrgpt.omop.records import (
    DEATH,
    DECODED_SCHEMA,
    EVENT,
    EVENT_TABLE_NAMES,
    EVENT_TABLES,
    PERSON,
    REJECTION,
    RUN_BITS,
    TALLY,
    VISIT,
    decode_batches,
)
from cehrgpt.omop.tables import (
    CONDITION_ERA,
    DERIVED_TABLES,
    EHR,
    TABLES,
    condition_era_table,
    death_table,
    event_table,
    observation_period_table,
    person_table,
    rejected_table,
    visit_table,
)
from cehrgpt.spark import HadoopFiles, get_spark, quiet_spark_console, spark_failure

log = logging.getLogger(__name__)

REJECTED = "rejected"
REPORT = "restore_report.json"
SUCCESS = "_SUCCESS"
DEFAULT_MIN_PERSONS = 1

#: Everything a restore writes into its output folder (besides its ``_tmp_<run>`` staging).
RESTORE_OUTPUTS = frozenset({*TABLES, CONDITION_ERA, REJECTED, REPORT, SUCCESS})


def check_output_folder(files: HadoopFiles) -> None:
    """Refuse a non-empty output folder that no restore wrote (it may be a source database)."""
    present = [name for name in files.children() if not name.startswith(("_tmp_", "."))]
    if present and REPORT not in present and SUCCESS not in present:
        raise RestoreError(
            f"omop_folder {files.root}: holds {sorted(present)[0]} and no {REPORT}: not the output of a "
            "restore; give an empty or new folder"
        )


def check_release_size(report: dict[str, Any], min_persons: int, omop_folder: str) -> None:
    """Refuse to publish a release of fewer than ``min_persons`` persons: an empty or near-empty restore
    (every patient rejected) would otherwise replace good tables downstream with nothing."""
    restored = report["patients_restored"]
    if restored >= min_persons:
        return
    reasons = ", ".join(f"{reason} {count}" for reason, count in report["patients_not_restored"].items())
    raise RestoreError(
        f"restored {restored} of {report['input_patients']} patients"
        + (f" (not restored: {reasons})" if reasons else "")
        + f", fewer than --min_persons {min_persons}; nothing was published to {omop_folder}"
    )


def _decode(
    spark: SparkSession,
    sequences: DataFrame,
    first_row: dict[str, int],
    duplicates: frozenset[tuple[str, int]],
    vocabulary: tuple[np.ndarray, np.ndarray],
    folder: str,
    run: int,
    end_day: int,
    values: ValueLookup | None = None,
) -> DataFrame:
    """Decode every input row in Python workers, once, into ``folder`` (by record kind); read it back.

    Parquet, partitioned by record kind, is cheaper than caching here: each table
    then reads only its own kind's files and columns.
    """
    parallelism = spark.sparkContext.defaultParallelism
    if sequences.rdd.getNumPartitions() < parallelism:  # one big file is one partition: use every core
        sequences = sequences.repartition(parallelism * 2)
    shared = spark.sparkContext.broadcast((vocabulary, values))

    def decode(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        concepts, bins = shared.value
        return decode_batches(batches, first_row, duplicates, concepts, run, end_day, bins)

    decoded = sequences.mapInArrow(decode, from_arrow_schema(DECODED_SCHEMA))
    decoded.write.partitionBy("record").mode("overwrite").parquet(folder)
    return spark.read.parquet(folder)


def restore(
    patient_sequence_folder: str,
    omop_folder: str,
    source_omop_folder: str,
    *,
    spark: SparkSession | None = None,
    spark_master: str | None = None,
    shuffle_partitions: int | None = None,
    condition_era: bool = False,
    type_concept_id: int = EHR,
    id_offset: int | None = None,
    end_date: date | None = None,
    min_persons: int = DEFAULT_MIN_PERSONS,
) -> dict[str, Any]:
    """Restore CDM 5.4 tables from patient sequences; see the module docstring for the layout.

    Args:
        patient_sequence_folder: parquet with ``person_id`` and ``concept_ids`` (path or URI).
        omop_folder: where the tables, ``rejected/`` and ``restore_report.json`` go (path or URI).
        source_omop_folder: the vocabulary: a folder with ``concept``, a DuckDB file or a URL.
        spark: a session to use; by default the active one, else one started (and stopped) here.
        spark_master: e.g. ``local[4]``; None keeps spark-submit's master.
        shuffle_partitions: ``spark.sql.shuffle.partitions`` for a session started here.
        condition_era: also derive ``condition_era`` (:func:`condition_era_table`).
        type_concept_id: the visit, event and death type concept (default 32817, EHR).
        id_offset: the ids' run component; by default the input's generation seed (module docstring).
        end_date: the last date a record may carry (default: today): a generated timeline that runs past
            it is cut there, every later token rejected as ``after_end_date`` (a CDM holds no future).
        min_persons: publish nothing when fewer persons are restored (default 1: an empty release never
            replaces a previous one; 0 allows it).

    Returns:
        The report also written to ``omop_folder/restore_report.json``.

    Raises:
        RestoreError: unreadable sequences or vocabulary, a non-parquet input file, an output
            folder that no restore wrote, or fewer than ``min_persons`` persons restored.
    """
    started = time.perf_counter()
    end = end_date or date.today()
    own_session = spark is None and SparkSession.getActiveSession() is None
    if shuffle_partitions is None and (spark_master or "").startswith("local"):
        shuffle_partitions = 8  # Spark's 200 is for clusters; locally it is mostly task overhead
    session = spark or get_spark(
        "cehrgpt-omop-restore", master=spark_master, shuffle_partitions=shuffle_partitions
    )
    session_started = time.perf_counter()
    if own_session:
        quiet_spark_console(session)
    files = HadoopFiles(session, omop_folder)
    run = f"_tmp_{uuid.uuid4().hex[:12]}"
    try:
        check_output_folder(files)
        sequences = read_sequences(session, patient_sequence_folder)
        check_input_files(session, patient_sequence_folder, sequences)
        vocabulary = read_vocabulary(session, source_omop_folder)
        value_bins, value_bins_file = read_restore_value_bins(session, source_omop_folder)
        for stale in files.children():
            if stale.startswith("_tmp_"):  # a crashed run's partial output
                log.warning("removing %s/%s, left by a run that did not finish", files.root, stale)
                files.delete(stale)
        first_row, duplicates, person_range = input_layout(sequences)
        id_run_component = id_run(person_range, id_offset)
        log.info("inputs read in %.1fs: %d files, %d duplicate rows, id run %d", time.perf_counter() - started,
                 len(first_row), len(duplicates), id_run_component)  # fmt: skip
        decoded = _decode(
            session,
            sequences,
            first_row,
            duplicates,
            vocabulary,
            f"{files.root}/{run}/_decoded",
            id_run_component,
            date_to_day(end),
            value_lookup(value_bins) if value_bins is not None else None,
        )
        log.info("decoded in %.1fs", time.perf_counter() - started)
        outputs: dict[str, DataFrame] = {
            "person": person_table(decoded),
            "visit_occurrence": visit_table(decoded, type_concept_id),
            **{table: event_table(decoded, table, type_concept_id) for table in EVENT_TABLE_NAMES},
            "death": death_table(decoded, type_concept_id),
            "observation_period": observation_period_table(decoded),
            **({CONDITION_ERA: condition_era_table(decoded)} if condition_era else {}),
            REJECTED: rejected_table(decoded),
        }
        _write_all(outputs, f"{files.root}/{run}")
        log.info("tables written in %.1fs", time.perf_counter() - started)
        derived = tuple(table for table in outputs if table in DERIVED_TABLES)
        report = _report(session, decoded, f"{files.root}/{run}", derived)
        report.update(
            patient_sequence_folder=patient_sequence_folder,
            omop_folder=omop_folder,
            source_omop_folder=source_omop_folder,
            value_bins=value_bins_file,
            type_concept_id=type_concept_id,
            id_run=id_run_component,
            end_date=end.isoformat(),
            seconds=round(time.perf_counter() - started, 3),
            spark_startup_seconds=round(session_started - started, 3),
        )
        check_release_size(report, min_persons, omop_folder)
        files.delete(SUCCESS)
        for name in outputs:
            files.move(f"{run}/{name}", name)
        for stale in sorted(RESTORE_OUTPUTS - outputs.keys() - {REPORT, SUCCESS}):
            if files.exists(stale):  # an earlier run's table this run did not write: never publish it
                log.warning(
                    "removing %s/%s, written by an earlier run but not by this one", files.root, stale
                )
                files.delete(stale)
        files.write_text(REPORT, json.dumps(report, indent=2, sort_keys=True) + "\n")
        files.write_text(SUCCESS, "")
        return report
    finally:
        files.delete(run)
        if own_session:
            session.stop()


def _write_all(outputs: dict[str, DataFrame], folder: str) -> None:
    """Write every table as concurrent Spark jobs (one small table alone leaves cores idle)."""
    with (
        tqdm(total=len(outputs), desc="restore: writing tables", unit="table") as progress,
        ThreadPoolExecutor(max_workers=len(outputs)) as pool,
    ):
        jobs = {
            pool.submit(frame.write.mode("overwrite").parquet, f"{folder}/{name}"): name
            for name, frame in outputs.items()
        }
        for job in as_completed(jobs):
            job.result()
            progress.set_postfix_str(jobs[job])
            progress.update()


def _report(spark: SparkSession, decoded: DataFrame, folder: str, derived: tuple[str, ...]) -> dict[str, Any]:
    """Counts per table and reason, and the token and patient accounting, which must add up.

    ``derived`` tables (:data:`DERIVED_TABLES` written by this run) hold no tokens; their rows are
    counted from what was written.
    """
    records: dict[tuple[int, str | None, int | None], Any] = {
        (r["record"], r["reason"], r["table"]): r
        for r in decoded.groupBy("record", "reason", "table")
        .agg(
            F.count("*").alias("rows"),
            F.sum("count").alias("structural"),
            F.count("concept_id_2").alias("discharges"),
            F.sum("tokens").alias("tokens"),
            F.count("value_as_number").alias("numbers"),
            F.count("value_as_concept_id").alias("categories"),
            F.count("days_supply").alias("durations"),
        )
        .collect()
    }

    def rows_of(record: int, table: int | None = None) -> int:
        return sum(
            int(r["rows"])
            for (kind, _, in_table), r in records.items()
            if kind == record and (table is None or in_table == table)
        )

    rows = {
        "person": rows_of(PERSON),
        "visit_occurrence": rows_of(VISIT),
        **{t: rows_of(EVENT, i) for i, t in enumerate(EVENT_TABLE_NAMES)},
        "death": rows_of(DEATH),
        **{table: spark.read.parquet(f"{folder}/{table}").count() for table in derived},
    }
    rejected: dict[str, int] = {}
    not_restored: dict[str, int] = {}
    for (kind, reason, _), r in records.items():
        if kind == REJECTION and reason is not None:
            rejected[reason] = rejected.get(reason, 0) + int(r["rows"])
        elif kind == TALLY and reason is not None:
            not_restored[reason] = not_restored.get(reason, 0) + int(r["rows"])
    structural = sum(int(r["structural"] or 0) for (kind, _, _), r in records.items() if kind == TALLY)
    totals = {
        "patients": rows_of(TALLY),
        "tokens": sum(int(r["tokens"] or 0) for (kind, _, _), r in records.items() if kind == TALLY),
    }
    discharges = sum(int(r["discharges"]) for (kind, _, _), r in records.items() if kind == VISIT)
    values_placed = {
        name: sum(int(r[column]) for (kind, _, _), r in records.items() if kind == EVENT)
        for name, column in (("number", "numbers"), ("category", "categories"), ("duration", "durations"))
    }
    placed = (
        PROMPT_LENGTH * rows["person"]
        + rows["visit_occurrence"]
        + discharges
        + rows["death"]
        + sum(rows[t] for t in EVENT_TABLES.values())
        + sum(values_placed.values())
    )
    tokens = {
        "input": totals["tokens"],
        "placed": placed,
        "structural": structural,
        "rejected": sum(rejected.values()),
    }
    if tokens["input"] != placed + structural + tokens["rejected"]:
        raise RuntimeError(f"token accounting does not add up: {tokens}")  # a defect here, not bad input
    if rows["person"] + sum(not_restored.values()) != totals["patients"]:
        raise RuntimeError(f"patient accounting does not add up: {rows['person']} restored, {not_restored}")
    return {
        "input_patients": totals["patients"],
        "patients_restored": rows["person"],
        "patients_not_restored": dict(sorted(not_restored.items())),
        "persons_without_observation_period": rows["person"] - rows["observation_period"],
        # kept, not dropped (the person table matches the patients restored), but counted: e.g. every
        # visit after --end_date
        "persons_without_events": rows["person"]
        - decoded.where(F.col("record") == VISIT).select("person_id").distinct().count(),
        "rows": rows,
        "rejected_tokens": dict(sorted(rejected.items())),
        "tokens": tokens,
        "values_placed": values_placed,
    }


def _parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="python -m cehrgpt.omop.restore",
        description="Restore OMOP CDM 5.4 tables (parquet) from CEHR-GPT patient sequences.",
    )
    parser.add_argument(
        "--patient_sequence_folder",
        "--patient-sequence-folder",
        required=True,
        help="parquet sequences (person_id, concept_ids): a path or gs:// / s3a:// URI",
    )
    parser.add_argument(
        "--omop_folder",
        "--omop-folder",
        required=True,
        help="output folder for the tables, rejected/ and restore_report.json",
    )
    parser.add_argument(
        "--source_omop_folder",
        "--source-omop-folder",
        required=True,
        help="vocabulary: a folder with concept (and the ETL's value_bins.json), a DuckDB file or a SQLAlchemy URL",
    )
    parser.add_argument(
        "--spark_master",
        "--spark-master",
        default=None,
        help="Spark master, e.g. local[4] (default: spark-submit's, else local[*])",
    )
    parser.add_argument(
        "--shuffle_partitions",
        "--shuffle-partitions",
        type=int,
        default=None,
        help="spark.sql.shuffle.partitions",
    )
    parser.add_argument(
        "--condition_era",
        "--condition-era",
        action="store_true",
        help="also write condition_era (OHDSI eras, 30-day persistence window)",
    )
    parser.add_argument(
        "--type_concept_id",
        "--type-concept-id",
        type=int,
        default=EHR,
        help=f"visit, event and death type concept (default {EHR}, EHR)",
    )
    parser.add_argument(
        "--end_date",
        "--end-date",
        type=_iso_date,
        default=None,
        help="YYYY-MM-DD, the last date a record may carry; later tokens are rejected (default: today)",
    )
    parser.add_argument(
        "--min_persons",
        "--min-persons",
        type=_non_negative,
        default=DEFAULT_MIN_PERSONS,
        help=f"publish nothing (exit 2) when fewer persons are restored (default {DEFAULT_MIN_PERSONS}; "
        "0 allows an empty release)",
    )
    parser.add_argument(
        "--id_offset",
        "--id-offset",
        type=int,
        default=None,
        help=f"the ids' run component, 0..{(1 << RUN_BITS) - 1} (default: the input's generation seed, "
        "person_id >> 40)",
    )
    return parser


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return value


def _iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date YYYY-MM-DD") from None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def body() -> int:
        report = restore(
            args.patient_sequence_folder,
            args.omop_folder,
            args.source_omop_folder,
            spark_master=args.spark_master,
            shuffle_partitions=args.shuffle_partitions,
            condition_era=args.condition_era,
            type_concept_id=args.type_concept_id,
            id_offset=args.id_offset,
            end_date=args.end_date,
            min_persons=args.min_persons,
        )
        print(
            f"restored {report['patients_restored']} of {report['input_patients']} patients "
            f"({report['tokens']['rejected']} tokens rejected) into {args.omop_folder}"
        )
        return 0

    def describe(error: BaseException) -> str:
        if isinstance(
            error, (Py4JError, PySparkException)
        ):  # a Spark job failed: one line, the trace in a log
            return f"restore of {args.patient_sequence_folder} failed: {spark_failure(error, 'restore')}"
        return str(error)

    return run_command(body, RestoreError, Py4JError, PySparkException, describe=describe)


if __name__ == "__main__":
    raise SystemExit(main())
