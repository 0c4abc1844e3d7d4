"""The one OMOP reader: a folder of parquet/CSV, a DuckDB file or a SQLAlchemy URL → Spark DataFrames.

Every stage that reads OMOP goes through :func:`open_omop_source`, so the
accepted layouts, the CDM 5.3 → 5.4 renames and the type checks live here
once. A table comes back with lower-case column names, each cast to its CDM
5.4 type (integer → long, float → double, date → date, datetime → timestamp,
varchar → string). Values that fail their cast raise :class:`OmopSourceError`
naming the table, the column and an example, rather than turning into nulls.
"""

from __future__ import annotations

import csv
import gzip
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cehrgpt.omop.cdm import cdm_fields
from cehrgpt.redaction import redact, redact_url, url_passwords
from cehrgpt.spark import spark_error_line

log = logging.getLogger(__name__)


class OmopSourceError(ValueError):
    """An OMOP source that cannot be read as asked: one line naming the table and column."""


# CDM 5.3 spellings of 5.4 columns; the reader exposes the 5.4 name.
CDM53_NAMES = {
    "discharged_to_concept_id": "discharge_to_concept_id",
    "discharged_to_source_value": "discharge_to_source_value",
    "admitted_from_concept_id": "admitting_source_concept_id",
    "admitted_from_source_value": "admitting_source_value",
}

# Tables outside the CDM that the pipeline understands, with their column types.
EXTRA_TABLE_TYPES = {
    "patient_splits": {"person_id": "integer", "split": "varchar(10)"},
}

DUCKDB_SUFFIXES = (".duckdb", ".db", ".ddb")


def spark_type(cdm_datatype: str) -> T.DataType:
    """The Spark type a CDM datatype is read as."""
    datatype = cdm_datatype.lower()
    if datatype in ("integer", "bigint"):
        return T.LongType()
    if datatype == "float":
        return T.DoubleType()
    if datatype == "date":
        return T.DateType()
    if datatype == "datetime":
        return T.TimestampType()
    return T.StringType()


def column_types(table: str) -> dict[str, T.DataType]:
    """Lower-case column name → Spark type for a CDM table or one of :data:`EXTRA_TABLE_TYPES`."""
    if table in EXTRA_TABLE_TYPES:
        return {name: spark_type(t) for name, t in EXTRA_TABLE_TYPES[table].items()}
    try:
        return {f.name: spark_type(f.datatype) for f in cdm_fields(table)}
    except ValueError:
        return {}


_TYPE_WORDS: dict[T.DataType, str] = {
    T.LongType(): "integers",
    T.DoubleType(): "numbers",
    T.DateType(): "dates",
    T.TimestampType(): "datetimes",
}


class OmopSource(ABC):
    """An OMOP CDM database, read only. Table and column names are case-insensitive."""

    def __init__(self, spec: str) -> None:
        self.spec = spec

    @abstractmethod
    def table_names(self) -> list[str]:
        """The lower-case names of the tables this source holds."""

    @abstractmethod
    def _raw_table(self, spark: SparkSession, name: str, columns: Sequence[str] | None) -> DataFrame:
        """The table as stored, all columns or only ``columns`` (actual spellings), untyped."""

    @abstractmethod
    def _raw_columns(self, spark: SparkSession, name: str) -> list[str]:
        """The table's column names as stored."""

    def has_table(self, name: str) -> bool:
        return name.lower() in self.table_names()

    def raw_row_count(self, spark: SparkSession, name: str) -> int | None:
        """Rows in a table as stored, even one unusable as CDM; None when absent or unreadable."""
        if not self.has_table(name):
            return None
        try:
            return self._raw_table(spark, name.lower(), None).count()
        except Exception:  # the table is already known to be broken: the count is informative only
            return None

    def read_table(
        self,
        spark: SparkSession,
        name: str,
        columns: Sequence[str],
        optional_columns: Sequence[str] = (),
    ) -> DataFrame:
        """Read ``columns`` (required) and ``optional_columns`` of table ``name``, typed as in CDM 5.4.

        Args:
            spark: the session to read with.
            name: the table, any case.
            columns: columns that must exist (any case; a CDM 5.3 spelling is accepted).
            optional_columns: columns returned as typed nulls when the table lacks them.

        Returns:
            A DataFrame with exactly ``columns + optional_columns``, lower-case, cast to CDM types.

        Raises:
            OmopSourceError: missing table or column, unreadable file, a value failing its type.
        """
        result = self.read_tables(spark, {name: TableRequest(tuple(columns), tuple(optional_columns))})
        table = next(iter(result.values()))
        if isinstance(table, OmopSourceError):
            raise table
        return table

    def read_tables(
        self, spark: SparkSession, requests: Mapping[str, TableRequest]
    ) -> dict[str, DataFrame | OmopSourceError]:
        """Read several tables as :meth:`read_table` does, checking every value cast in one Spark job.

        Returns:
            For each requested table (lower-case name, in request order) its DataFrame, or the
            :class:`OmopSourceError` that says why it cannot be used; the caller decides which are fatal.
        """
        results: dict[str, DataFrame | OmopSourceError] = {}
        checks: list[DataFrame] = []
        for name, request in requests.items():
            table = name.lower()
            try:
                results[table], check = self._typed_table(spark, table, request)
            except OmopSourceError as error:
                results[table] = error
                continue
            if check is not None:
                checks.append(check)
        if checks:
            union = checks[0]
            for check in checks[1:]:
                union = union.unionByName(check)
            failures: dict[str, Any] = {}
            for row in union.where(F.col("bad") > 0).collect():
                failures.setdefault(row["table"], row)
            for table, row in failures.items():
                word = _TYPE_WORDS.get(column_types(table).get(row["column"], T.StringType()), "valid")
                results[table] = OmopSourceError(
                    f"{table}.{row['column']}: {row['bad']} values are not {word}, e.g. {row['example']!r}"
                )
        return results

    def _typed_table(
        self, spark: SparkSession, table: str, request: TableRequest
    ) -> tuple[DataFrame, DataFrame | None]:
        """The typed table and a one-job check of its casts (rows: table, column, bad, example)."""
        if not self.has_table(table):
            raise OmopSourceError(f"{table}: table not found in {redact_url(self.spec)}")
        actual = {c.lower(): c for c in self._raw_columns(spark, table)}
        optional = [c.lower() for c in request.optional_columns]
        picked: dict[str, str | None] = {}
        for column in [c.lower() for c in request.columns] + optional:
            source = actual.get(column)
            if source is None and column in CDM53_NAMES:
                source = actual.get(CDM53_NAMES[column])
            if source is None and column not in optional:
                found = ", ".join(sorted(actual)) or "none"
                raise OmopSourceError(f"{table}.{column}: column not found (columns present: {found})")
            picked[column] = source
        raw = self._raw_table(spark, table, [s for s in picked.values() if s is not None])
        return _typed(raw, table, picked)


@dataclass(frozen=True)
class TableRequest:
    """Columns to read from one table: ``columns`` must exist, ``optional_columns`` may be null-filled."""

    columns: tuple[str, ...]
    optional_columns: tuple[str, ...] = ()


def _cast_expression(column: Column, source_type: T.DataType, target: T.DataType) -> Column:
    """A cast that yields null instead of failing, so bad values can be counted and reported."""
    if isinstance(target, T.StringType):
        return column.cast(T.StringType())
    if isinstance(source_type, T.StringType):
        text = F.nullif(F.trim(column), F.lit(""))
        if isinstance(target, T.LongType):
            as_double = text.try_cast(T.DoubleType())
            integral = F.when(as_double == F.floor(as_double), as_double.cast(T.LongType()))
            return F.coalesce(text.try_cast(T.LongType()), integral)
        return text.try_cast(target)
    return column.try_cast(target)


def _compatible(source_type: T.DataType, target: T.DataType) -> bool:
    if isinstance(target, T.StringType) or isinstance(source_type, T.StringType | T.NullType):
        return True
    if isinstance(target, T.LongType | T.DoubleType):
        return isinstance(source_type, T.NumericType | T.BooleanType)
    if isinstance(target, T.DateType | T.TimestampType):
        return isinstance(source_type, T.DateType | T.TimestampType | T.TimestampNTZType)
    return False


def _typed(raw: DataFrame, table: str, picked: dict[str, str | None]) -> tuple[DataFrame, DataFrame | None]:
    """Select, rename to lower case and cast; plus the check of the casts that can fail (None if none)."""
    types = column_types(table)
    source_types = {f.name: f.dataType for f in raw.schema.fields}
    selected: list[Column] = []
    checks: list[tuple[str, Column, Column]] = []
    for column, source in picked.items():
        target = types.get(column, T.StringType())
        if source is None:
            selected.append(F.lit(None).cast(target).alias(column))
            continue
        source_type = source_types[source]
        if not _compatible(source_type, target):
            raise OmopSourceError(
                f"{table}.{column}: stored as {source_type.simpleString()}, "
                f"expected {_TYPE_WORDS.get(target, target.simpleString())}"
            )
        original = F.col(f"`{source}`")
        cast = _cast_expression(original, source_type, target)
        selected.append(cast.alias(column))
        if source_type != target and not isinstance(target, T.StringType):
            present = original.isNotNull()
            if isinstance(source_type, T.StringType):
                present = F.nullif(F.trim(original), F.lit("")).isNotNull()
            checks.append((column, present & cast.isNull(), original.cast(T.StringType())))
    return raw.select(*selected), (_cast_check(raw, table, checks) if checks else None)


def _cast_check(raw: DataFrame, table: str, checks: list[tuple[str, Column, Column]]) -> DataFrame:
    """One row per checked column: how many values fail their cast, and the first of them."""
    aggregates = []
    for i, (_column, failed, text) in enumerate(checks):
        aggregates.append(F.sum(failed.cast("long")).alias(f"n{i}"))
        aggregates.append(F.first(F.when(failed, text), ignorenulls=True).alias(f"e{i}"))
    rows = [
        F.struct(
            F.lit(table).alias("table"),
            F.lit(column).alias("column"),
            F.coalesce(F.col(f"n{i}"), F.lit(0)).alias("bad"),
            F.col(f"e{i}").alias("example"),
        )
        for i, (column, _failed, _text) in enumerate(checks)
    ]
    return raw.agg(*aggregates).select(F.inline(F.array(*rows)))


# --- a folder of parquet / CSV ------------------------------------------------------------------------------


class FolderSource(OmopSource):
    """One file or sub-folder per table, parquet or CSV, names in any case (``PERSON.csv``, ``person/``)."""

    def __init__(self, spec: str) -> None:
        super().__init__(spec)
        self.root = Path(spec)
        self._tables: dict[str, tuple[Path, str]] = {}
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith((".", "_")):
                continue
            fmt = _format_of(entry)
            if fmt is None:
                continue
            name = entry.name.split(".")[0].lower()
            self._tables.setdefault(name, (entry, fmt))
        self._cache: dict[str, DataFrame] = {}

    def table_names(self) -> list[str]:
        return sorted(self._tables)

    def _load(self, spark: SparkSession, name: str) -> DataFrame:
        if name not in self._cache:
            path, fmt = self._tables[name]
            try:
                if fmt == "parquet":
                    df = spark.read.parquet(str(path))
                else:
                    # The header is read here rather than by Spark, which would run a job per table for it.
                    schema = T.StructType([T.StructField(c, T.StringType()) for c in _csv_header(path)])
                    df = spark.read.schema(schema).option("header", True).csv(str(path))
                df.schema  # noqa: B018 - forces the footer/header read so a bad file fails here
            except Exception as error:  # Spark raises several unrelated types for a bad file
                raise OmopSourceError(
                    f"{name}: cannot read {path} as {fmt}: {spark_error_line(error)[:300]}"
                ) from None
            self._cache[name] = df
        return self._cache[name]

    def _raw_columns(self, spark: SparkSession, name: str) -> list[str]:
        return self._load(spark, name).columns

    def _raw_table(self, spark: SparkSession, name: str, columns: Sequence[str] | None) -> DataFrame:
        df = self._load(spark, name)
        return df if columns is None else df.select(*[F.col(f"`{c}`") for c in columns])


def _csv_header(path: Path) -> list[str]:
    """Column names from the first line of a CSV table (the first file of a folder)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*.csv*") if p.is_file())
    first = files[0]
    opener = gzip.open if first.suffix.lower() == ".gz" else open
    with opener(first, "rt", newline="", encoding="utf-8-sig") as handle:
        header = next(csv.reader(handle), None)
    if not header:
        raise ValueError(f"{first.name} has no header line")
    return header


def _format_of(entry: Path) -> str | None:
    """'parquet' or 'csv' for a table file or folder, None for anything else."""
    suffixes = [s.lower() for s in entry.suffixes]
    if entry.is_file():
        if ".parquet" in suffixes or ".pq" in suffixes:
            return "parquet"
        if ".csv" in suffixes:
            return "csv"
        return None
    if entry.is_dir():
        files = [p for p in entry.rglob("*") if p.is_file() and not p.name.startswith((".", "_"))]
        if any(p.suffix.lower() in (".parquet", ".pq") for p in files):
            return "parquet"
        if any(".csv" in [s.lower() for s in p.suffixes] for p in files):
            return "csv"
    return None


# --- DuckDB / SQLAlchemy: read into Arrow, then Spark ---------------------------------------------------------


def _arrow_to_spark(spark: SparkSession, table: pa.Table) -> DataFrame:
    """An Arrow table as a Spark DataFrame; columns Spark cannot hold (all-null) become strings."""
    fields = []
    for field in table.schema:
        if pa.types.is_null(field.type):
            fields.append(pa.field(field.name, pa.string()))
        elif pa.types.is_decimal(field.type):
            fields.append(pa.field(field.name, pa.float64()))
        else:
            fields.append(field)
    return spark.createDataFrame(table.cast(pa.schema(fields)))


class DuckDbSource(OmopSource):
    """A DuckDB database file, opened read only; tables found in any schema (``main`` first)."""

    def __init__(self, spec: str) -> None:
        super().__init__(spec)
        import duckdb

        if not Path(spec).is_file():
            raise OmopSourceError(f"omop source: DuckDB file {spec} does not exist")
        try:
            self._con = duckdb.connect(spec, read_only=True)
            rows = self._con.execute(
                "select table_schema, table_name from information_schema.tables "
                "order by table_schema <> 'main', table_schema, table_name"
            ).fetchall()
        except Exception as error:
            raise OmopSourceError(f"omop source: cannot open {spec} as DuckDB: {error}") from None
        self._tables: dict[str, tuple[str, str]] = {}
        for schema, table in rows:
            self._tables.setdefault(table.lower(), (schema, table))

    def table_names(self) -> list[str]:
        return sorted(self._tables)

    def _qualified(self, name: str) -> str:
        schema, table = self._tables[name]
        return f'"{schema}"."{table}"'

    def _raw_columns(self, spark: SparkSession, name: str) -> list[str]:
        schema, table = self._tables[name]
        rows = self._con.execute(
            "select column_name from information_schema.columns "
            "where table_schema = ? and table_name = ? order by ordinal_position",
            [schema, table],
        ).fetchall()
        return [r[0] for r in rows]

    def _raw_table(self, spark: SparkSession, name: str, columns: Sequence[str] | None) -> DataFrame:
        select = "*" if columns is None else ", ".join(f'"{c}"' for c in columns) or "1 as _"
        arrow = self._con.sql(f"select {select} from {self._qualified(name)}").to_arrow_table()
        if columns is not None and not columns:
            arrow = arrow.drop_columns(["_"])
        return _arrow_to_spark(spark, arrow)


class SqlAlchemySource(OmopSource):
    """Any database SQLAlchemy can reach, read only (Spark JDBC jars are not assumed)."""

    def __init__(self, spec: str) -> None:
        super().__init__(spec)
        import sqlalchemy as sa

        url = _database_url(spec)
        try:
            self._engine = sa.create_engine(url)
            self._inspector = sa.inspect(self._engine)
            names = self._inspector.get_table_names()
        except Exception as error:
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise OmopSourceError(
                f"omop source: cannot connect to {redact_url(spec)}: {redact(message, url_passwords(url))}"
            ) from None
        self._tables: dict[str, str] = {}
        for table in sorted(names):
            self._tables.setdefault(table.lower(), table)

    def table_names(self) -> list[str]:
        return sorted(self._tables)

    def _raw_columns(self, spark: SparkSession, name: str) -> list[str]:
        return [c["name"] for c in self._inspector.get_columns(self._tables[name])]

    def _raw_table(self, spark: SparkSession, name: str, columns: Sequence[str] | None) -> DataFrame:
        import sqlalchemy as sa

        names = list(columns) if columns is not None else self._raw_columns(spark, name)
        statement: Any = sa.select(*[sa.column(c) for c in names]).select_from(sa.table(self._tables[name]))
        with self._engine.connect() as connection:
            rows = connection.execute(statement).fetchall()
        arrays = {c: _arrow_column([row[i] for row in rows]) for i, c in enumerate(names)}
        return _arrow_to_spark(spark, pa.table(arrays) if arrays else pa.table({}))


def _database_url(spec: str) -> Any:
    """The SQLAlchemy URL of ``spec``, refused when its host holds an ``@``: an unencoded ``@`` in the
    password, which SQLAlchemy would take as part of the host (and a driver would echo).

    Raises:
        OmopSourceError: not a SQLAlchemy URL, or an ``@`` in its host.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(spec)
    except (ArgumentError, ValueError):
        raise OmopSourceError(f"omop source: {redact_url(spec)} is not a SQLAlchemy URL") from None
    if url.host and "@" in url.host:
        raise OmopSourceError(
            f"omop source: the host part of {redact_url(spec)} holds an '@'; "
            "an '@' in a user name or password must be written %40"
        )
    return url


def _arrow_column(values: list[Any]) -> pa.Array:
    """Values of one database column as Arrow, falling back to text for mixed types."""
    try:
        array = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        array = pa.array([None if v is None else str(v) for v in values], type=pa.string())
    return array


#: Where the pipeline puts the OMOP source's Secret (keys ``url`` and ``password``; kfp-kubernetes
#: ``use_secret_as_env``), so the URL's password is never a pipeline parameter.
OMOP_URL_ENV_VAR = "CEHRGPT_OMOP_URL"
OMOP_PASSWORD_ENV_VAR = "CEHRGPT_OMOP_PASSWORD"


def resolve_omop_source(spec: str, environ: Mapping[str, str] | None = None) -> str:
    """The source to open: ``spec``, else ``$CEHRGPT_OMOP_URL``; a URL without a password gets ``$CEHRGPT_OMOP_PASSWORD``.

    The result may hold a password: open it, never print it (:func:`cehrgpt.redaction.redact_url` does).

    Raises:
        OmopSourceError: neither ``spec`` nor the variable names a source.
    """
    environ = os.environ if environ is None else environ
    text = str(spec or environ.get(OMOP_URL_ENV_VAR, "")).strip()
    if not text:
        raise OmopSourceError(
            f"omop source: none given; pass --omop_source or set ${OMOP_URL_ENV_VAR} (the Secret's url key)"
        )
    password = environ.get(OMOP_PASSWORD_ENV_VAR)
    if "://" in text and password:
        url = _database_url(text)
        if url.password is None:
            text = url.set(password=password).render_as_string(hide_password=False)
    return text


def open_omop_source(spec: str | os.PathLike[str]) -> OmopSource:
    """Open an OMOP database for reading.

    Args:
        spec: a folder (one file or sub-folder per table, parquet or CSV), a DuckDB
            file (``*.duckdb``, ``*.db``, ``*.ddb``) or a SQLAlchemy URL (contains ``://``).

    Raises:
        OmopSourceError: the spec names nothing readable.
    """
    text = str(spec)
    if "://" in text:
        return SqlAlchemySource(text)
    path = Path(text)
    if path.is_dir():
        return FolderSource(text)
    if path.suffix.lower() in DUCKDB_SUFFIXES:
        return DuckDbSource(text)
    if not path.exists():
        raise OmopSourceError(f"omop source: {text} does not exist (expected a folder, DuckDB file or URL)")
    raise OmopSourceError(f"omop source: {text} is not a folder, a DuckDB file (.duckdb/.db) or a URL")


def missing_tables(source: OmopSource, tables: Iterable[str]) -> list[str]:
    return [t for t in tables if not source.has_table(t)]
