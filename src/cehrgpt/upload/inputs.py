"""The restored OMOP folder: which CDM tables it holds, their parquet files, row counts and schemas.

Everything here reads parquet footers only, so every input problem is found
before the database is touched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cehrgpt.omop.cdm import cdm_fields, cdm_tables
from cehrgpt.upload.conform import check_columns
from cehrgpt.upload.errors import UploadError

#: Fewer persons than this in a release's ``person`` table refuse the upload (``--min_persons``).
DEFAULT_MIN_PERSONS = 1
# What the restore job writes next to the tables and is not a table.
NOT_TABLES = frozenset({"rejected"})


@dataclass(frozen=True)
class TableInput:
    """One restored table: its CDM name, its parquet files (sorted) and their total row count."""

    table: str
    files: tuple[Path, ...]
    rows: int


def find_tables(input_folder: str | os.PathLike[str], tables: list[str] | None = None) -> list[TableInput]:
    """The CDM tables to upload from ``input_folder``, checked against the CDM 5.4 specification.

    Args:
        input_folder: The restore job's output: one parquet folder per CDM table.
        tables: Upload only these (each must be present); None uploads every table folder found.

    Raises:
        UploadError: The folder is missing or holds no table, it is an unfinished restore (no ``_SUCCESS``),
            a folder is not a CDM table,
            a table has no parquet file, a file is unreadable, or its columns or types do not fit the CDM.
    """
    folder = Path(input_folder)
    if not folder.is_dir():
        raise UploadError(
            f"input folder {folder} does not exist; expected the restore job's restored_omop folder "
            "with one parquet folder per CDM table"
        )
    restore_traces = [name for name in ("restore_report.json", "rejected") if (folder / name).exists()]
    if restore_traces and not (folder / "_SUCCESS").exists():
        raise UploadError(
            f"{folder} is restore output without its _SUCCESS marker (found {', '.join(restore_traces)}): "
            "the restore job did not finish; rerun it before uploading"
        )
    present = {
        p.name.lower(): p
        for p in folder.iterdir()
        if p.is_dir() and not p.name.startswith((".", "_")) and p.name.lower() not in NOT_TABLES
    }
    known = set(cdm_tables())
    if tables is None:
        unknown = sorted(set(present) - known)
        if unknown:
            raise UploadError(
                f"{present[unknown[0]]} is not an OMOP CDM 5.4 table; "
                "remove it or choose the tables to upload with --tables"
            )
        wanted = sorted(present)
    else:
        wanted = []
        for name in (t.strip().lower() for t in tables):
            if name not in known:
                raise UploadError(f"--tables: '{name}' is not an OMOP CDM 5.4 table")
            if name not in present:
                raise UploadError(f"--tables: {folder / name} does not exist")
            if name not in wanted:
                wanted.append(name)
    if not wanted:
        raise UploadError(
            f"input folder {folder} holds no table folder; expected e.g. {folder / 'person'}/*.parquet"
        )
    return [_table_input(name, present[name]) for name in wanted]


def check_release_size(
    inputs: list[TableInput], input_folder: str | os.PathLike[str], *, min_persons: int, allow_empty: bool
) -> None:
    """Refuse a ``person`` table of fewer than ``min_persons`` rows (from the parquet footers, before the
    target is touched): a restore that rejected every patient must not empty a database. Tables other
    than ``person`` may be empty; a release without ``person`` does not replace it."""
    person = next((ti for ti in inputs if ti.table == "person"), None)
    if person is None or allow_empty or person.rows >= min_persons:
        return
    raise UploadError(
        f"{Path(input_folder) / 'person'} holds {person.rows} persons, fewer than --min_persons {min_persons}: "
        "an empty release never replaces a database (--allow_empty uploads it anyway); "
        "the target was left unchanged"
    )


def _table_input(table: str, folder: Path) -> TableInput:
    files = tuple(
        sorted(p for p in folder.rglob("*.parquet") if p.is_file() and not p.name.startswith((".", "_")))
    )
    if not files:
        raise UploadError(f"{folder} holds no .parquet file; expected the restored {table} table")
    rows = 0
    for file in files:
        try:
            metadata = pq.read_metadata(file)
            schema = pq.read_schema(file)
        except (OSError, pa.ArrowException) as exc:
            raise UploadError(f"{file} is not a readable parquet file ({str(exc).splitlines()[0]})") from None
        check_columns(table, schema.names, where=str(file))
        check_types(table, schema, where=str(file))
        rows += metadata.num_rows
    return TableInput(table=table, files=files, rows=rows)


def _family(datatype: pa.DataType) -> str:
    if pa.types.is_dictionary(datatype):
        datatype = datatype.value_type
    if pa.types.is_null(datatype):
        return "null"
    if pa.types.is_integer(datatype):
        return "integer"
    if pa.types.is_floating(datatype) or pa.types.is_decimal(datatype):
        return "float"
    if pa.types.is_date(datatype):
        return "date"
    if pa.types.is_timestamp(datatype):
        return "datetime"
    if pa.types.is_string(datatype) or pa.types.is_large_string(datatype):
        return "varchar"
    return str(datatype)


# Which input type families each CDM type accepts: exact families, widened losslessly.
_ACCEPTS = {
    "integer": {"integer"},
    "float": {"float", "integer"},
    "date": {"date"},
    "datetime": {"datetime", "date"},
    "varchar": {"varchar"},
}


def check_types(table: str, schema: pa.Schema, *, where: str) -> None:
    """Refuse a column whose parquet type is not the CDM type's (an integer written as double, a date as text)."""
    fields = {f.name: f for f in cdm_fields(table)}
    for column in schema:
        field = fields[column.name.lower()]
        cdm_family = "varchar" if field.datatype.startswith("varchar") else field.datatype
        family = _family(column.type)
        if family != "null" and family not in _ACCEPTS[cdm_family]:
            raise UploadError(
                f"{where}: {table}.{field.name} is {column.type}; expected a {cdm_family} column (CDM {field.datatype})"
            )
