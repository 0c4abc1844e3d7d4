"""What the restore job reads: the patient sequences, the vocabulary, and the input's id layout.

Every check here runs before anything is written; a bad input is a :class:`RestoreError`
(one line naming the value and what was expected, exit 2 from the CLI).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cehrgpt.generation.sharding import PATIENT_INDEX_BITS
from cehrgpt.omop.records import EVENT_TABLES, ROW_BITS, RUN_BITS, UNSUPPORTED, file_key
from cehrgpt.omop.source import OmopSourceError, open_omop_source
from cehrgpt.spark import HadoopFiles, parquet_file_problem, spark_error_line
from cehrgpt.values import VALUE_BINS_FILE, ValueBins, ValueBinsError

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


def check_input_files(spark: SparkSession, folder: str, sequences: DataFrame) -> None:
    """Every file Spark will read is parquet; else one line naming the first that is not (and how many)."""
    problems = [(f, why) for f in sorted(sequences.inputFiles()) if (why := parquet_file_problem(spark, f))]
    if problems:
        path, why = problems[0]
        more = f" (and {len(problems) - 1} other file(s))" if len(problems) > 1 else ""
        raise RestoreError(f"patient_sequence_folder {folder}: {file_key(path)} {why}{more}")


def read_sequences(spark: SparkSession, folder: str) -> DataFrame:
    """``person_id`` (long), ``concept_ids`` (array<string>), ``file_path``, ``row_index`` of every input row."""
    try:
        raw = spark.read.parquet(folder)
        columns = {f.name.lower(): f for f in raw.schema.fields}
    except Exception as error:
        line = spark_error_line(error)
        if "UNABLE_TO_INFER_SCHEMA" in line:  # an existing folder without one parquet file: zero patients
            raise RestoreError(
                f"patient_sequence_folder {folder} holds no parquet file: no patients to restore "
                "(expected the generator's output)"
            ) from None
        raise RestoreError(
            f"patient_sequence_folder {folder}: cannot read parquet sequences ({line})"
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


def read_restore_value_bins(spark: SparkSession, vocabulary: str) -> tuple[ValueBins | None, str | None]:
    """The ETL's value bins (``value_bins.json`` in the vocabulary folder or URI) and where they were read.

    ``(None, None)`` when there is no such file (sequences prepared without values; a DuckDB file or a
    URL vocabulary has none): every value token is then rejected. A malformed file is a RestoreError.
    """
    where = f"{vocabulary.rstrip('/')}/{VALUE_BINS_FILE}"
    try:
        if _is_hadoop_uri(vocabulary):
            if not HadoopFiles(spark, vocabulary).exists(VALUE_BINS_FILE):
                return None, None
            text = spark.read.text(where, wholetext=True).first()
            bins = ValueBins.from_json(json.loads(text[0] if text else ""))
        elif Path(vocabulary).is_dir() and (Path(vocabulary) / VALUE_BINS_FILE).is_file():
            bins = ValueBins.from_json(json.loads((Path(vocabulary) / VALUE_BINS_FILE).read_text()))
        else:
            return None, None
    except (ValueBinsError, json.JSONDecodeError, OSError) as error:
        raise RestoreError(f"source_omop_folder {vocabulary}: {VALUE_BINS_FILE}: {error}") from None
    except Exception as error:  # a Spark read of an object store
        raise RestoreError(
            f"source_omop_folder {vocabulary}: cannot read {VALUE_BINS_FILE} ({spark_error_line(error)})"
        ) from None
    return bins, where


def id_run(person_ids: tuple[int, int] | None, id_offset: int | None = None) -> int:
    """The run component of every id (:mod:`cehrgpt.omop.restore`): ``id_offset``, else the input's generation seed.

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


def input_layout(
    sequences: DataFrame,
) -> tuple[dict[str, int], frozenset[tuple[str, int]], tuple[int, int] | None]:
    """Each input file's first row (for ids), the rows whose person_id an earlier row already has,
    and the smallest and largest person id (None when there is none).

    The file list comes from the reader; rows per file, the person-id range and the duplicates from
    two jobs reading only ``person_id``.
    """
    files = sorted({file_key(f) for f in sequences.inputFiles()})
    per_file = (
        sequences.groupBy("file_path")
        .agg(F.count("*").alias("rows"), F.min("person_id").alias("low"), F.max("person_id").alias("high"))
        .collect()
    )
    rows = {file_key(r["file_path"]): int(r["rows"]) for r in per_file}
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
        ordered = sorted((file_key(row["file_path"]), int(row["row_index"])) for row in r["rows"])
        duplicates.update(ordered[1:])  # the first row (by file, then row) keeps the person
    person_range = (min(lows), max(highs)) if lows else None
    return first_row, frozenset(duplicates), person_range
