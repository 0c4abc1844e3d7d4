"""Bulk paths that fill one staging table from parquet, the fastest each database offers.

* PostgreSQL (psycopg 3): one ``COPY ... FROM STDIN (FORMAT csv)`` per table, fed chunk by chunk.
* DuckDB: ``INSERT INTO ... SELECT ... FROM read_parquet(file)``, DuckDB reading the parquet itself.
* MySQL/MariaDB (PyMySQL): multi-row ``INSERT ... VALUES (...), (...)`` whose literals Arrow writes column
  by column (PyMySQL's own executemany escapes value by value in Python, several times slower).
* SQLite: the driver's executemany on plain tuples, datetimes pre-formatted by Arrow as SQLAlchemy stores them.
* SQL Server (pyodbc) and anything else: SQLAlchemy executemany in chunks (``fast_executemany`` on SQL Server,
  set on the engine).

Each loader calls ``on_rows(n)`` after every chunk it has handed to the database.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import sqlalchemy as sa

from cehrgpt.omop.cdm import cdm_fields
from cehrgpt.upload.conform import conform_batch
from cehrgpt.upload.ddl import column_type, qualified
from cehrgpt.upload.errors import UploadError

RowsLoaded = Callable[[int], None]


def load_staging(
    conn: sa.Connection,
    table: str,
    staging: sa.Table,
    files: tuple[Path, ...],
    *,
    chunk_size: int,
    on_rows: RowsLoaded,
) -> None:
    """Fill ``staging`` (an empty table shaped like CDM ``table``) from ``files`` inside ``conn``'s transaction."""
    dialect = conn.dialect
    if dialect.name == "postgresql" and dialect.driver == "psycopg":
        copy_postgresql(conn, table, staging, files, chunk_size=chunk_size, on_rows=on_rows)
    elif dialect.name == "duckdb":
        insert_duckdb_parquet(conn, table, staging, files, on_rows=on_rows)
    elif dialect.name in ("mysql", "mariadb") and dialect.driver == "pymysql":
        insert_mysql_values(conn, table, staging, files, chunk_size=chunk_size, on_rows=on_rows)
    elif dialect.name == "sqlite" and dialect.driver == "pysqlite":
        insert_sqlite(conn, table, staging, files, chunk_size=chunk_size, on_rows=on_rows)
    else:
        insert_executemany(conn, table, staging, files, chunk_size=chunk_size, on_rows=on_rows)


def conformed_chunks(table: str, files: tuple[Path, ...], chunk_size: int) -> Iterator[pa.Table]:
    """The rows of ``files`` as CDM-typed Arrow tables of at most ``chunk_size`` rows."""
    for file in files:
        parquet = pq.ParquetFile(file)
        for batch in parquet.iter_batches(batch_size=chunk_size):
            yield conform_batch(table, batch, where=str(file))


def copy_postgresql(
    conn: sa.Connection,
    table: str,
    staging: sa.Table,
    files: tuple[Path, ...],
    *,
    chunk_size: int,
    on_rows: RowsLoaded,
) -> None:
    """PostgreSQL via psycopg 3: CSV written by Arrow, streamed through one COPY.

    Arrow quotes every string and leaves NULL unquoted, so COPY's CSV format
    tells NULL from the empty string; datetimes go out with microseconds.
    """
    raw = conn.connection.dbapi_connection
    assert raw is not None
    columns = ", ".join(conn.dialect.identifier_preparer.quote(f.name) for f in cdm_fields(table))
    sql = f"COPY {qualified(conn.dialect, staging.schema, staging.name)} ({columns}) FROM STDIN (FORMAT csv)"
    options = pacsv.WriteOptions(include_header=False)
    with raw.cursor() as cursor, cursor.copy(sql) as copy:  # type: ignore[attr-defined]
        for chunk in conformed_chunks(table, files, chunk_size):
            buffer = io.BytesIO()
            pacsv.write_csv(chunk, buffer, options)
            copy.write(buffer.getvalue())
            on_rows(chunk.num_rows)


def insert_duckdb_parquet(
    conn: sa.Connection, table: str, staging: sa.Table, files: tuple[Path, ...], *, on_rows: RowsLoaded
) -> None:
    """DuckDB reads each parquet file itself; we only name the columns and cast them to the CDM types.

    The input types were checked against the CDM beforehand
    (:func:`cehrgpt.upload.inputs.check_types`), so these casts only widen;
    zoned timestamps are taken in UTC, like the other loaders do.
    """
    raw = conn.connection.dbapi_connection
    assert raw is not None
    quote = conn.dialect.identifier_preparer.quote
    target_columns = ", ".join(quote(f.name) for f in cdm_fields(table))
    for file in files:
        schema = pq.read_schema(file)
        present = {name.lower(): (name, schema.field(name).type) for name in schema.names}
        select = []
        for field in cdm_fields(table):
            sql_type = column_type(field, "duckdb").compile(dialect=conn.dialect)
            if field.name not in present:
                select.append(f"CAST(NULL AS {sql_type})")
                continue
            name, arrow_type = present[field.name]
            source = quote(name)
            if pa.types.is_timestamp(arrow_type) and arrow_type.tz is not None:
                source = f"timezone('UTC', {source})"
            select.append(f"CAST({source} AS {sql_type})")
        path = str(file).replace("'", "''")
        raw.execute(
            f"INSERT INTO {qualified(conn.dialect, staging.schema, staging.name)} ({target_columns}) "
            f"SELECT {', '.join(select)} FROM read_parquet('{path}')"
        )
        on_rows(pq.read_metadata(file).num_rows)


def insert_executemany(
    conn: sa.Connection,
    table: str,
    staging: sa.Table,
    files: tuple[Path, ...],
    *,
    chunk_size: int,
    on_rows: RowsLoaded,
) -> None:
    """Any SQLAlchemy database: one executemany per chunk (fast_executemany on SQL Server)."""
    insert = staging.insert()
    for chunk in conformed_chunks(table, files, chunk_size):
        if chunk.num_rows:
            conn.execute(insert, chunk.to_pylist())
        on_rows(chunk.num_rows)


MYSQL_STATEMENT_BYTES = 4 * 1024 * 1024  # well under MariaDB's default 16 MiB max_allowed_packet


def mysql_row_literals(chunk: pa.Table, *, where: str) -> list[str]:
    r"""Each row of a conformed chunk as a MySQL ``v1,v2,...`` literal list, built column-wise by Arrow.

    Strings are escaped for MySQL's default backslash-escaping mode (our sessions never set
    NO_BACKSLASH_ESCAPES): ``\\``, ``\'`` and ``\0``.
    """
    columns = []
    for field, column in zip(chunk.schema, chunk.columns, strict=True):
        kind = field.type
        if pa.types.is_floating(kind):
            finite = pc.is_finite(column)
            if pc.any(pc.invert(pc.fill_null(finite, True))).as_py():
                raise UploadError(
                    f"{where}.{field.name} holds NaN or infinity, which MySQL/MariaDB cannot store"
                )
        if pa.types.is_integer(kind) or pa.types.is_floating(kind):
            text = pc.cast(column, pa.string())
        else:
            if pa.types.is_timestamp(kind):
                text = pc.strftime(column, "%Y-%m-%d %H:%M:%S")  # %S carries the microseconds
            elif pa.types.is_date(kind):
                text = pc.cast(column, pa.string())
            else:
                text = pc.replace_substring(column, "\\", "\\\\")
                text = pc.replace_substring(text, "'", "\\'")
                text = pc.replace_substring(text, "\x00", "\\0")
            text = pc.binary_join_element_wise("'", text, "'", "")
        columns.append(pc.fill_null(text, "NULL"))
    rows = pc.binary_join_element_wise(*columns, ",")
    return rows.to_pylist()


def insert_mysql_values(
    conn: sa.Connection,
    table: str,
    staging: sa.Table,
    files: tuple[Path, ...],
    *,
    chunk_size: int,
    on_rows: RowsLoaded,
) -> None:
    """MySQL/MariaDB via PyMySQL: multi-row INSERT statements of at most a few MiB each."""
    raw = conn.connection.dbapi_connection
    assert raw is not None
    columns = ", ".join(conn.dialect.identifier_preparer.quote(f.name) for f in cdm_fields(table))
    head = f"INSERT INTO {qualified(conn.dialect, staging.schema, staging.name)} ({columns}) VALUES "
    with contextlib.closing(raw.cursor()) as cursor:
        for chunk in conformed_chunks(table, files, chunk_size):
            batch: list[str] = []
            size = 0
            for row in mysql_row_literals(chunk, where=table):
                batch.append(row)
                size += len(row) + 3
                if size >= MYSQL_STATEMENT_BYTES:
                    cursor.execute(head + "(" + "),(".join(batch) + ")")  # no parameters: no %-formatting
                    batch, size = [], 0
            if batch:
                cursor.execute(head + "(" + "),(".join(batch) + ")")
            on_rows(chunk.num_rows)


def insert_sqlite(
    conn: sa.Connection,
    table: str,
    staging: sa.Table,
    files: tuple[Path, ...],
    *,
    chunk_size: int,
    on_rows: RowsLoaded,
) -> None:
    """SQLite: executemany on tuples; dates and datetimes as the text SQLAlchemy's SQLite types read back."""
    raw = conn.connection.dbapi_connection
    assert raw is not None
    columns = [f.name for f in cdm_fields(table)]
    quote = conn.dialect.identifier_preparer.quote
    sql = (
        f"INSERT INTO {qualified(conn.dialect, staging.schema, staging.name)} "
        f"({', '.join(quote(c) for c in columns)}) VALUES ({', '.join('?' for _ in columns)})"
    )
    with contextlib.closing(raw.cursor()) as cursor:
        for chunk in conformed_chunks(table, files, chunk_size):
            values = []
            for column in chunk.columns:
                if pa.types.is_timestamp(column.type):
                    column = pc.strftime(column, "%Y-%m-%d %H:%M:%S")  # SQLAlchemy's "... HH:MM:SS.ffffff"
                elif pa.types.is_date(column.type):
                    column = pc.cast(column, pa.string())
                values.append(column.to_pylist())
            cursor.executemany(sql, list(zip(*values, strict=True)))
            on_rows(chunk.num_rows)
