"""Restore OMOP CDM 5.4 tables from patient sequences (generated or training), with Spark.

``python -m cehrgpt.omop.restore --patient_sequence_folder P --omop_folder O --source_omop_folder V``
reads ``P/*.parquet`` (``person_id``, ``concept_ids``), decodes every patient
inside ``mapInArrow`` (grammar-valid patients with the vectorised
:func:`cehrgpt.omop.decode.decode_arrow`, the rest with the reference
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
- a repeated ``person_id``: the first row (by file, then row) is restored, the
  later ones are rejected (``duplicate_person``);
- ``O/rejected/``: ``person_id, position, token, reason`` for every token that
  could not be placed (reasons: :class:`cehrgpt.omop.decode.Reason`);
- ``O/restore_report.json``: input patients, patients restored and why the
  others were not, rows per table, rejected tokens per reason, and the token
  accounting ``input == placed + structural + rejected``, checked before the
  output is published.

Output appears only when the job succeeded: tables (and the decoded records
they are cut from) are written under ``O/_tmp_<run>/``, then moved into place with the Hadoop FileSystem API (so
``gs://`` and ``s3a://`` work), and ``O/_SUCCESS`` is written last. A failed
run leaves the previous output as it was; consumers should check ``_SUCCESS``.
A rerun removes every table of the earlier run it does not write again (no stale
``condition_era`` beside the new ``_SUCCESS``), and the job refuses a non-empty
``O`` that no restore wrote. Every input file must be parquet: an empty or
foreign file stops the job with one line naming it (exit 2), before anything is written.
Every path may be a local path or an object-store URI.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from py4j.protocol import Py4JError
from pyspark.errors import PySparkException
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import from_arrow_schema
from tqdm import tqdm

from cehrgpt.generation.sharding import PATIENT_INDEX_BITS
from cehrgpt.grammar import PROMPT_LENGTH
from cehrgpt.omop.cdm import cdm_fields
from cehrgpt.omop.decode import ArrowDecoded, DecodedPatient, Reason, Rejection, decode_arrow, decode_patient
from cehrgpt.omop.source import OmopSourceError, open_omop_source, spark_type
from cehrgpt.spark import (
    HadoopFiles,
    get_spark,
    parquet_file_problem,
    quiet_spark_console,
    spark_error_line,
    spark_failure,
)

log = logging.getLogger(__name__)

EVENT_TABLES = {
    "condition": "condition_occurrence",
    "drug": "drug_exposure",
    "procedure": "procedure_occurrence",
    "measurement": "measurement",
    "observation": "observation",
    "device": "device_exposure",
}
EVENT_TABLE_NAMES = tuple(EVENT_TABLES.values())
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
REJECTED = "rejected"
REPORT = "restore_report.json"
SUCCESS = "_SUCCESS"

EHR = 32817  # the standard Type Concept for records from an EHR: every type field but the period's by default
PERIOD_TYPE_CONCEPT_ID = 44814725

HADOOP_URI_SCHEMES = (
    "file:/",
    "gs://",
    "s3://",
    "s3a://",
    "s3n://",
    "hdfs://",
    "abfs://",
    "abfss://",
    "wasb://",
)


class RestoreError(ValueError):
    """Input the restore job cannot use: one line naming the value and what was expected."""


# --- decoding in Spark ---------------------------------------------------------------------------------------

PERSON, VISIT, EVENT, DEATH, REJECTION, TALLY = range(6)

# id = run << (ROW_BITS + POSITION_BITS) | input row << POSITION_BITS | token position (module docstring)
POSITION_BITS = 18  # tokens per sequence
ROW_BITS = 22  # input rows (patients) per restore
RUN_BITS = 63 - ROW_BITS - POSITION_BITS  # 23: every generation seed (up to sharding.MAX_SEED) is a run

DECODED_SCHEMA = pa.schema(
    [
        ("record", pa.int8()),
        ("person_id", pa.int64()),
        ("position", pa.int32()),
        ("record_id", pa.int64()),  # visit_occurrence_id or event id
        ("concept_id", pa.int64()),  # gender, visit concept or event concept
        ("concept_id_2", pa.int64()),  # race or discharged_to
        ("year_of_birth", pa.int64()),
        ("start_date", pa.date32()),
        ("end_date", pa.date32()),
        ("parent_id", pa.int64()),  # an event's visit, a visit's preceding visit
        ("token", pa.string()),  # a rejected token; an event's token when it is not its concept id
        ("reason", pa.string()),  # a rejection's reason; a tally's patient-level reason
        ("count", pa.int64()),  # a tally's structural tokens
        ("tokens", pa.int64()),  # a tally's input tokens
        ("table", pa.int8()),  # an event's table: an index into EVENT_TABLE_NAMES
    ]
)


def _record_batch(record: int, columns: dict[str, Any]) -> pa.RecordBatch:
    """One kind of record as a batch of :data:`DECODED_SCHEMA`; absent columns are null."""
    n = len(next(iter(columns.values())))
    arrays = []
    for field in DECODED_SCHEMA:
        if field.name == "record":
            arrays.append(pa.array(np.full(n, record, np.int8)))
        elif field.name in columns:
            values = columns[field.name]
            if pa.types.is_date32(field.type):
                arrays.append(pa.array(values, pa.int32()).cast(pa.date32()))
            else:
                arrays.append(pa.array(values, field.type))
        else:
            arrays.append(pa.nulls(n, field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=DECODED_SCHEMA)


def _or_null(values: np.ndarray) -> pa.Array:
    """int64 values with -1 meaning none."""
    return pa.array(values, pa.int64(), mask=values < 0)


NOT_IN_VOCABULARY, UNSUPPORTED = -2, -1


def classify(concept_ids: np.ndarray, vocabulary: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Each concept's event table (index into :data:`EVENT_TABLE_NAMES`), or a negative reason code.

    Args:
        concept_ids: the events' concepts.
        vocabulary: sorted concept ids and, for each, its table index or :data:`UNSUPPORTED`.
    """
    ids, tables = vocabulary
    if len(ids) == 0:
        return np.full(len(concept_ids), NOT_IN_VOCABULARY, np.int8)
    at = np.minimum(np.searchsorted(ids, concept_ids), len(ids) - 1)
    return np.where(ids[at] == concept_ids, tables[at], NOT_IN_VOCABULARY).astype(np.int8)


def _split_events(
    columns: dict[str, Any], tokens: np.ndarray, vocabulary: tuple[np.ndarray, np.ndarray]
) -> Iterator[pa.RecordBatch]:
    """Events as EVENT records with their table, and those the vocabulary cannot place as rejections."""
    concept_ids = np.asarray(columns["concept_id"], np.int64)
    tables = classify(concept_ids, vocabulary)
    placed = tables >= 0
    if placed.any():
        event = {k: np.asarray(v)[placed] for k, v in columns.items()}
        event["token"] = np.where(concept_ids[placed] == 0, tokens[placed], np.array(None, object))
        event["table"] = tables[placed]
        yield _record_batch(EVENT, event)
    if not placed.all():
        reasons = np.where(
            tables[~placed] == NOT_IN_VOCABULARY,
            Reason.CONCEPT_NOT_IN_VOCABULARY.value,
            Reason.UNSUPPORTED_DOMAIN.value,
        )
        yield _record_batch(
            REJECTION,
            {
                "person_id": np.asarray(columns["person_id"])[~placed],
                "position": np.asarray(columns["position"])[~placed],
                "token": tokens[~placed],
                "reason": reasons,
            },
        )


def _fast_records(
    fast: ArrowDecoded,
    person_ids: np.ndarray,
    bases: np.ndarray,
    lengths: np.ndarray,
    vocabulary: tuple[np.ndarray, np.ndarray],
) -> Iterator[pa.RecordBatch]:
    """The records of the patients the vectorised decoder handled."""
    p, v, e, d = fast.person, fast.visit, fast.event, fast.death
    if len(p["row"]):
        yield _record_batch(
            PERSON,
            {
                "person_id": person_ids[p["row"]],
                "concept_id": p["gender_concept_id"],
                "concept_id_2": p["race_concept_id"],
                "year_of_birth": p["year_of_birth"],
            },
        )
        yield _record_batch(
            TALLY,
            {"person_id": person_ids[p["row"]], "count": p["structural"], "tokens": lengths[p["row"]]},
        )
    if len(v["row"]):
        base = bases[v["row"]]
        yield _record_batch(
            VISIT,
            {
                "person_id": person_ids[v["row"]],
                "position": v["position"],
                "record_id": base + v["position"],
                "concept_id": v["visit_concept_id"],
                "concept_id_2": _or_null(v["discharged_to_concept_id"]),
                "start_date": v["start_day"],
                "end_date": v["end_day"],
                "parent_id": _or_null(
                    np.where(v["preceding_position"] < 0, -1, base + v["preceding_position"])
                ),
            },
        )
    if len(e["row"]):
        base = bases[e["row"]]
        yield from _split_events(
            {
                "person_id": person_ids[e["row"]],
                "position": e["position"],
                "record_id": base + e["position"],
                "concept_id": e["concept_id"],
                "start_date": e["day"],
                "parent_id": base + e["visit_position"],
            },
            e["token"],
            vocabulary,
        )
    if len(d["row"]):
        yield _record_batch(
            DEATH, {"person_id": person_ids[d["row"]], "position": d["position"], "start_date": d["day"]}
        )


def _append(columns: dict[str, list[Any]], **values: Any) -> None:
    for name, value in values.items():
        columns[name].append(value)


def _slow_records(
    patients: list[tuple[int | None, list[str] | None, int, bool]],
    vocabulary: tuple[np.ndarray, np.ndarray],
) -> Iterator[pa.RecordBatch]:
    """The records of patients decoded one by one: (person_id, tokens, id base, duplicate)."""
    columns: dict[int, dict[str, list[Any]]] = {
        PERSON: {k: [] for k in ("person_id", "concept_id", "concept_id_2", "year_of_birth")},
        VISIT: {
            k: []
            for k in (
                "person_id",
                "position",
                "record_id",
                "concept_id",
                "concept_id_2",
                "start_date",
                "end_date",
                "parent_id",
            )
        },
        EVENT: {
            k: []
            for k in ("person_id", "position", "record_id", "concept_id", "start_date", "parent_id", "token")
        },
        DEATH: {k: [] for k in ("person_id", "position", "start_date")},
        REJECTION: {k: [] for k in ("person_id", "position", "token", "reason")},
        TALLY: {k: [] for k in ("person_id", "reason", "count", "tokens")},
    }
    for person_id, tokens, base, duplicate in patients:
        tokens = tokens or []
        if len(tokens) >= 1 << POSITION_BITS:
            out = DecodedPatient(
                rejections=[Rejection(i, t, Reason.SEQUENCE_TOO_LONG) for i, t in enumerate(tokens)]
            )
        else:
            out = decode_patient(person_id, tokens, duplicate=duplicate)
        if out.person is not None:
            _append(
                columns[PERSON],
                person_id=person_id,
                concept_id=out.person.gender_concept_id,
                concept_id_2=out.person.race_concept_id,
                year_of_birth=out.person.year_of_birth,
            )
        for visit in out.visits:
            _append(
                columns[VISIT],
                person_id=person_id,
                position=visit.position,
                record_id=base + visit.position,
                concept_id=visit.visit_concept_id,
                concept_id_2=visit.discharged_to_concept_id,
                start_date=visit.start_day,
                end_date=visit.end_day,
                parent_id=None if visit.preceding_position is None else base + visit.preceding_position,
            )
        for event in out.events:
            _append(
                columns[EVENT],
                person_id=person_id,
                position=event.position,
                record_id=base + event.position,
                concept_id=event.concept_id,
                start_date=event.day,
                parent_id=base + event.visit_position,
                token=tokens[event.position],
            )
        if out.death is not None:
            _append(
                columns[DEATH], person_id=person_id, position=out.death.position, start_date=out.death.day
            )
        for rejection in out.rejections:
            _append(
                columns[REJECTION],
                person_id=person_id,
                position=rejection.position,
                token=rejection.token,
                reason=rejection.reason.value,
            )
        patient_reason = None
        if out.person is None:
            patient_reason = out.rejections[0].reason.value if out.rejections else Reason.BAD_PROMPT.value
        _append(
            columns[TALLY],
            person_id=person_id,
            reason=patient_reason,
            count=out.structural,
            tokens=len(tokens),
        )
    events = columns.pop(EVENT)
    if events["person_id"]:
        yield from _split_events(events, np.array(events.pop("token"), object), vocabulary)
    for record, values in columns.items():
        if values["person_id"]:
            yield _record_batch(record, values)


def decode_batches(
    batches: Iterator[pa.RecordBatch],
    first_row: dict[str, int],
    duplicates: frozenset[tuple[str, int]],
    vocabulary: tuple[np.ndarray, np.ndarray],
    run: int = 0,
) -> Iterator[pa.RecordBatch]:
    """Decode Arrow batches of sequences into the long-format records the tables are cut from.

    Grammar-valid patients go through :func:`cehrgpt.omop.decode.decode_arrow` all at
    once; the rest (and any duplicate or id-less row) through :func:`decode_patient`.

    Args:
        batches: ``person_id``, ``concept_ids``, ``file_path``, ``row_index``.
        first_row: each input file's first row among all input rows (files sorted by path).
        duplicates: (file, row) of rows whose person_id an earlier row already has.
        vocabulary: see :func:`classify`.
        run: the ids' run component (module docstring).
    """
    for batch in batches:
        n = batch.num_rows
        sequences = batch.column("concept_ids")
        person_column = batch.column("person_id")
        has_person = ~np.asarray(person_column.is_null().to_numpy(zero_copy_only=False), bool)
        person_ids = pc.fill_null(person_column, 0).to_numpy(zero_copy_only=False).astype(np.int64)
        files = [_file_key(f) for f in batch.column("file_path").to_pylist()]
        rows = batch.column("row_index").to_numpy(zero_copy_only=False).astype(np.int64)
        unknown = set(files) - first_row.keys()
        if unknown:
            raise ValueError(f"input file {sorted(unknown)[0]} was not listed when the job started")
        input_rows = np.array([first_row[f] for f in files], np.int64) + rows
        if n and int(input_rows.max()) >= 1 << ROW_BITS:
            raise ValueError(
                f"more than {1 << ROW_BITS} input rows; restore them in parts with distinct --id_offset"
            )
        bases = (np.int64(run) << (ROW_BITS + POSITION_BITS)) + (input_rows << POSITION_BITS)
        lengths = (
            pc.fill_null(pc.list_value_length(sequences), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        )
        duplicate = (
            np.array([(f, int(r)) in duplicates for f, r in zip(files, rows, strict=True)], bool)
            if (duplicates)
            else np.zeros(n, bool)
        )
        usable = has_person & ~duplicate & (lengths < 1 << POSITION_BITS)
        fast = decode_arrow(sequences, usable)
        yield from _fast_records(fast, person_ids, bases, lengths, vocabulary)
        slow = np.flatnonzero(~fast.decoded)
        if len(slow):
            slow_sequences = sequences.take(pa.array(slow)).to_pylist()
            yield from _slow_records(
                [
                    (int(person_ids[r]) if has_person[r] else None, tokens, int(bases[r]), bool(duplicate[r]))
                    for r, tokens in zip(slow, slow_sequences, strict=True)
                ],
                vocabulary,
            )


# --- reading ------------------------------------------------------------------------------------------------


def check_input_files(spark: SparkSession, folder: str, sequences: DataFrame) -> None:
    """Every file Spark will read is parquet; else one line naming the first that is not (and how many)."""
    problems = [(f, why) for f in sorted(sequences.inputFiles()) if (why := parquet_file_problem(spark, f))]
    if problems:
        path, why = problems[0]
        more = f" (and {len(problems) - 1} other file(s))" if len(problems) > 1 else ""
        raise RestoreError(f"patient_sequence_folder {folder}: {_file_key(path)} {why}{more}")


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


def read_sequences(spark: SparkSession, folder: str) -> DataFrame:
    """``person_id`` (long), ``concept_ids`` (array<string>), ``file_path``, ``row_index`` of every input row."""
    try:
        raw = spark.read.parquet(folder)
        columns = {f.name.lower(): f for f in raw.schema.fields}
    except Exception as error:
        raise RestoreError(
            f"patient_sequence_folder {folder}: cannot read parquet sequences ({spark_error_line(error)})"
        ) from None
    missing = [c for c in ("person_id", "concept_ids") if c not in columns]
    if missing:
        raise RestoreError(
            f"patient_sequence_folder {folder}: column(s) {', '.join(missing)} missing "
            f"(expected person_id and concept_ids; found {', '.join(sorted(columns))})"
        )
    pid, cids = columns["person_id"], columns["concept_ids"]
    if not isinstance(pid.dataType, T.IntegralType):
        raise RestoreError(
            f"patient_sequence_folder {folder}: person_id is {pid.dataType.simpleString()}, expected an integer"
        )
    if not (isinstance(cids.dataType, T.ArrayType) and isinstance(cids.dataType.elementType, T.StringType)):
        raise RestoreError(
            f"patient_sequence_folder {folder}: concept_ids is {cids.dataType.simpleString()}, "
            "expected a list of token strings"
        )
    return raw.select(
        F.col(pid.name).cast(T.LongType()).alias("person_id"),
        F.col(cids.name).alias("concept_ids"),
        F.col("_metadata.file_path").alias("file_path"),
        F.col("_metadata.row_index").alias("row_index"),
    )


def _is_hadoop_uri(spec: str) -> bool:
    return spec.lower().startswith(HADOOP_URI_SCHEMES)


def read_vocabulary(spark: SparkSession, vocabulary: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted concept ids and each one's event table index (:data:`UNSUPPORTED` for other domains).

    The concept table comes from a vocabulary folder, DuckDB file or URL through the
    project's OMOP reader, or, for a Hadoop URI (``gs://``, ``s3a://``, ``file:/`` ...),
    from ``<uri>/concept`` (parquet) read by Spark. One Spark job; a repeated concept id
    keeps its alphabetically first domain.
    """
    try:
        if _is_hadoop_uri(vocabulary):
            raw = spark.read.parquet(vocabulary.rstrip("/") + "/concept")
            names = {c.lower(): c for c in raw.columns}
            missing = [c for c in ("concept_id", "domain_id") if c not in names]
            if missing:
                raise RestoreError(
                    f"source_omop_folder {vocabulary}: concept.{missing[0]}: column not found "
                    f"(columns present: {', '.join(sorted(names))})"
                )
            concepts = raw.select(
                F.col(names["concept_id"]).cast(T.LongType()).alias("concept_id"),
                F.col(names["domain_id"]).cast(T.StringType()).alias("domain_id"),
            )
        else:
            concepts = open_omop_source(vocabulary).read_table(spark, "concept", ["concept_id", "domain_id"])
        arrow = concepts.where(F.col("concept_id").isNotNull()).toArrow()
    except RestoreError:
        raise
    except OmopSourceError as error:
        raise RestoreError(f"source_omop_folder {vocabulary}: {error}") from None
    except Exception as error:
        raise RestoreError(
            f"source_omop_folder {vocabulary}: cannot read the concept table ({spark_error_line(error)})"
        ) from None
    if arrow.num_rows == 0:
        raise RestoreError(f"source_omop_folder {vocabulary}: the concept table is empty")
    ids = arrow.column("concept_id").to_numpy().astype(np.int64)
    domains = np.array([(d or "").strip().lower() for d in arrow.column("domain_id").to_pylist()], object)
    order = np.lexsort((domains, ids))
    ids, domains = ids[order], domains[order]
    first = np.concatenate([[True], ids[1:] != ids[:-1]])
    table_of_domain = {domain: i for i, domain in enumerate(EVENT_TABLES)}
    tables = np.array([table_of_domain.get(d, UNSUPPORTED) for d in domains[first]], np.int8)
    return ids[first], tables


# --- the tables ---------------------------------------------------------------------------------------------


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
    if table == "drug_exposure":  # required; a generated drug has no duration, so it ends the day it starts
        values["drug_exposure_end_date"] = F.col("start_date")
        values["drug_exposure_end_datetime"] = _midnight("start_date")
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


# --- the job ------------------------------------------------------------------------------------------------


def _file_key(path: str) -> str:
    """One spelling of an input file's URI, whichever Spark API reported it."""
    return unquote(path).replace("file:///", "file:/")


def id_run(person_ids: tuple[int, int] | None, id_offset: int | None = None) -> int:
    """The run component of every id (module docstring): ``id_offset``, else the input's generation seed.

    Args:
        person_ids: the smallest and largest input person id (None: no person ids).
        id_offset: an explicit run component, ``0 <= id_offset < 2**RUN_BITS``.

    Raises:
        RestoreError: an offset out of range, or person ids of several runs and no offset.
    """
    if id_offset is not None:
        if not 0 <= id_offset < 1 << RUN_BITS:
            raise RestoreError(f"id_offset must be in [0, {(1 << RUN_BITS) - 1}], got {id_offset}")
        return id_offset
    if person_ids is None:
        return 0
    low, high = person_ids
    if low < 0 or low >> PATIENT_INDEX_BITS != high >> PATIENT_INDEX_BITS:
        raise RestoreError(
            f"person ids {low}..{high} are not from one generation run (person_id >> {PATIENT_INDEX_BITS} "
            "differs); pass --id_offset to give this restore's ids their own run component"
        )
    return low >> PATIENT_INDEX_BITS


def _input_layout(
    sequences: DataFrame,
) -> tuple[dict[str, int], frozenset[tuple[str, int]], tuple[int, int] | None]:
    """Each input file's first row (for ids), the rows whose person_id an earlier row already has,
    and the smallest and largest person id (None when there is none).

    The file list comes from the reader; rows per file, the person-id range and the duplicates from
    two jobs reading only ``person_id``.
    """
    files = sorted({_file_key(f) for f in sequences.inputFiles()})
    per_file = (
        sequences.groupBy("file_path")
        .agg(F.count("*").alias("rows"), F.min("person_id").alias("low"), F.max("person_id").alias("high"))
        .collect()
    )
    rows = {_file_key(r["file_path"]): int(r["rows"]) for r in per_file}
    lows = [int(r["low"]) for r in per_file if r["low"] is not None]
    highs = [int(r["high"]) for r in per_file if r["high"] is not None]
    if sum(rows.values()) > 1 << ROW_BITS:
        raise RestoreError(
            f"{sum(rows.values())} input rows; at most {1 << ROW_BITS} per restore (restore them in parts "
            "with distinct --id_offset)"
        )
    first_row, offset = {}, 0
    for path in files:
        first_row[path] = offset
        offset += rows.get(path, 0)
    repeated = (
        sequences.where(F.col("person_id").isNotNull())
        .groupBy("person_id")
        .agg(F.collect_list(F.struct("file_path", "row_index")).alias("rows"))
        .where(F.size("rows") > 1)
        .collect()
    )
    duplicates: set[tuple[str, int]] = set()
    for r in repeated:
        ordered = sorted((_file_key(row["file_path"]), int(row["row_index"])) for row in r["rows"])
        duplicates.update(ordered[1:])  # the first row (by file, then row) keeps the person
    person_range = (min(lows), max(highs)) if lows else None
    return first_row, frozenset(duplicates), person_range


def _decode(
    spark: SparkSession,
    sequences: DataFrame,
    first_row: dict[str, int],
    duplicates: frozenset[tuple[str, int]],
    vocabulary: tuple[np.ndarray, np.ndarray],
    folder: str,
    run: int,
) -> DataFrame:
    """Decode every input row in Python workers, once, into ``folder`` (by record kind); read it back.

    Parquet, partitioned by record kind, is cheaper than caching here: each table
    then reads only its own kind's files and columns.
    """
    parallelism = spark.sparkContext.defaultParallelism
    if sequences.rdd.getNumPartitions() < parallelism:  # one big file is one partition: use every core
        sequences = sequences.repartition(parallelism * 2)
    shared = spark.sparkContext.broadcast(vocabulary)
    decoded = sequences.mapInArrow(
        lambda batches: decode_batches(batches, first_row, duplicates, shared.value, run),
        from_arrow_schema(DECODED_SCHEMA),
    )
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

    Returns:
        The report also written to ``omop_folder/restore_report.json``.

    Raises:
        RestoreError: unreadable sequences or vocabulary, a non-parquet input file, or an output
            folder that no restore wrote.
    """
    started = time.perf_counter()
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
        for stale in files.children():
            if stale.startswith("_tmp_"):  # a crashed run's partial output
                log.warning("removing %s/%s, left by a run that did not finish", files.root, stale)
                files.delete(stale)
        first_row, duplicates, person_range = _input_layout(sequences)
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
            type_concept_id=type_concept_id,
            id_run=id_run_component,
            seconds=round(time.perf_counter() - started, 3),
            spark_startup_seconds=round(session_started - started, 3),
        )
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
    placed = (
        PROMPT_LENGTH * rows["person"]
        + rows["visit_occurrence"]
        + discharges
        + rows["death"]
        + sum(rows[t] for t in EVENT_TABLES.values())
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
        "rows": rows,
        "rejected_tokens": dict(sorted(rejected.items())),
        "tokens": tokens,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
        help="vocabulary: a folder with concept, a DuckDB file or a SQLAlchemy URL",
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
        "--id_offset",
        "--id-offset",
        type=int,
        default=None,
        help=f"the ids' run component, 0..{(1 << RUN_BITS) - 1} (default: the input's generation seed, "
        "person_id >> 40)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = restore(
            args.patient_sequence_folder,
            args.omop_folder,
            args.source_omop_folder,
            spark_master=args.spark_master,
            shuffle_partitions=args.shuffle_partitions,
            condition_era=args.condition_era,
            type_concept_id=args.type_concept_id,
            id_offset=args.id_offset,
        )
    except RestoreError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (Py4JError, PySparkException) as error:  # a Spark job failed: one line, the trace in a log file
        print(f"error: restore of {args.patient_sequence_folder} failed: {spark_failure(error, 'restore')}",
              file=sys.stderr)  # fmt: skip
        return 2
    print(
        f"restored {report['patients_restored']} of {report['input_patients']} patients "
        f"({report['tokens']['rejected']} tokens rejected) into {args.omop_folder}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
