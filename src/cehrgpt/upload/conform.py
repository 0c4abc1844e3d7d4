"""Restored parquet batches → exactly the CDM 5.4 columns, in CDM order, with the CDM's types.

A pure core (Arrow in, Arrow out) shared by every loader: it refuses what a
database would silently mangle (a too-long string truncated by a lax server, a
nanosecond cut, an id that overflows INTEGER) with a message naming the table,
the column and the value's problem.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from cehrgpt.omop.cdm import CdmField, cdm_fields, primary_key
from cehrgpt.upload.ddl import is_bigint
from cehrgpt.upload.errors import UploadError

DATETIME_UNIT = "us"  # the finest unit SQL Server, PostgreSQL and MariaDB all keep


def arrow_type(field: CdmField) -> pa.DataType:
    """The Arrow type a CDM field is loaded as (timestamps naive, in UTC)."""
    if field.datatype == "integer":
        return pa.int64() if is_bigint(field) else pa.int32()
    if field.datatype == "float":
        return pa.float64()
    if field.datatype == "date":
        return pa.date32()
    if field.datatype == "datetime":
        return pa.timestamp(DATETIME_UNIT)
    return pa.string()


def cdm_arrow_schema(table: str) -> pa.Schema:
    return pa.schema([pa.field(f.name, arrow_type(f), nullable=not f.required) for f in cdm_fields(table)])


def _loading_schema(table: str) -> pa.Schema:
    # Nullability is enforced above with a clear message, and by the database; Arrow need not repeat it.
    return pa.schema([f.with_nullable(True) for f in cdm_arrow_schema(table)])


def check_columns(table: str, columns: list[str], *, where: str) -> None:
    """Refuse columns the CDM does not define for ``table`` and missing required ones.

    Args:
        table: The CDM table.
        columns: The column names found in the input (any case).
        where: The input file, for the message.
    """
    known = {f.name for f in cdm_fields(table)}
    lower = [c.lower() for c in columns]
    unknown = [c for c in lower if c not in known]
    if unknown:
        raise UploadError(f"{where}: column '{unknown[0]}' is not a CDM 5.4 column of {table}")
    duplicated = sorted({c for c in lower if lower.count(c) > 1})
    if duplicated:
        raise UploadError(
            f"{where}: column '{duplicated[0]}' appears twice (column names are case-insensitive)"
        )
    missing = [
        f.name
        for f in cdm_fields(table)
        if (f.required or f.name == primary_key(table)) and f.name not in lower
    ]
    if missing:
        raise UploadError(f"{where}: required column '{missing[0]}' of {table} is missing")


def conform_batch(table: str, batch: pa.RecordBatch | pa.Table, *, where: str) -> pa.Table:
    """``batch`` as the CDM table's columns, in CDM order, cast to the CDM types.

    Optional columns absent from the input become NULL. Time-zone-aware
    timestamps are converted to UTC and stored without a zone (the restore job
    writes UTC).

    Raises:
        UploadError: An unknown or missing required column, a NULL in a required column,
            a value that does not fit its type (lossy cast, overflow), a string longer than its VARCHAR.
    """
    check_columns(table, batch.schema.names, where=where)
    by_name = {name.lower(): batch.column(i) for i, name in enumerate(batch.schema.names)}
    key = primary_key(table)
    arrays = []
    for field in cdm_fields(table):
        target = arrow_type(field)
        column = by_name.get(field.name)
        if column is None:
            arrays.append(pa.nulls(batch.num_rows, target))
            continue
        converted = _cast(column, target, f"{where}: {table}.{field.name}", field.datatype)
        if (field.required or field.name == key) and converted.null_count:
            raise UploadError(
                f"{where}: {table}.{field.name} is required (NOT NULL) but has {converted.null_count} null value(s)"
            )
        limit = field.varchar_length
        if limit is not None and len(converted):
            longest = pc.max(pc.utf8_length(converted)).as_py()
            if longest is not None and longest > limit:
                raise UploadError(
                    f"{where}: {table}.{field.name} holds a value of {longest} characters; "
                    f"the CDM declares {field.datatype}"
                )
        arrays.append(converted)
    return pa.Table.from_arrays(arrays, schema=_loading_schema(table))


def _cast(
    column: pa.Array | pa.ChunkedArray, target: pa.DataType, what: str, datatype: str
) -> pa.ChunkedArray:
    if isinstance(column, pa.Array):
        column = pa.chunked_array([column], type=column.type)
    source = column.type
    if pa.types.is_timestamp(source) and source.tz is not None:
        column = column.cast(pa.timestamp(source.unit))  # Arrow stores zoned timestamps as UTC instants
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    try:
        return column.cast(target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        reason = str(exc).splitlines()[0]
        raise UploadError(f"{what}: cannot store {source} values as CDM {datatype} ({reason})") from None
