"""Bulk paths that fill one staging table from parquet, the fastest each database offers.

* PostgreSQL (psycopg 3): one ``COPY ... FROM STDIN (FORMAT csv)`` per table, fed chunk by chunk.
* DuckDB: ``INSERT INTO ... SELECT ... FROM read_parquet(file)``, DuckDB reading the parquet itself.
* SQL Server (pyodbc): executemany with ``fast_executemany`` (set on the engine).
* MySQL/MariaDB, SQLite and anything else: executemany in chunks (PyMySQL turns it into multi-row INSERTs).

Each loader calls ``on_rows(n)`` after every chunk it has handed to the database.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import sqlalchemy as sa

from cehrgpt.omop.cdm import cdm_fields
from cehrgpt.upload.conform import conform_batch
from cehrgpt.upload.ddl import column_type, qualified

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
