"""CDM 5.4 tables as each database should hold them, and the statements that swap staging tables in.

Types come from the CDM specification (:mod:`cehrgpt.omop.cdm`), never from
the parquet files:

============ ============ =================== =============== ============ ==========
CDM type     SQL Server   PostgreSQL          MySQL/MariaDB   DuckDB       SQLite
============ ============ =================== =============== ============ ==========
integer *id  BIGINT       BIGINT              BIGINT          BIGINT       BIGINT
integer      INTEGER      INTEGER             INTEGER         INTEGER      INTEGER
float        FLOAT(53)    DOUBLE PRECISION    DOUBLE          DOUBLE       DOUBLE
date         DATE         DATE                DATE            DATE         DATE
datetime     DATETIME2    TIMESTAMP           DATETIME(6)     TIMESTAMP    DATETIME
varchar(n)   VARCHAR(n)   VARCHAR(n)          VARCHAR(n)      VARCHAR(n)   VARCHAR(n)
varchar(MAX) VARCHAR(max) TEXT                LONGTEXT        TEXT         TEXT
============ ============ =================== =============== ============ ==========

Integer fields whose name contains ``_id`` (keys, concept ids, ``fact_id_1``)
are BIGINT: synthetic ids are int64 and may pass 2^31; counts, years and
quantities stay INTEGER. Required fields are NOT NULL; the CDM's primary keys
are declared; foreign keys are not, since the vocabulary tables the synthetic
rows point to usually live elsewhere (a site's own foreign keys are kept: the
final transaction empties and fills the targets in dependency order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mssql, mysql, postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.schema import CreateTable
from sqlalchemy.types import TypeEngine

from cehrgpt.omop.cdm import CdmField, cdm_fields, dependency_order, foreign_keys, primary_key

STAGING_SUFFIX = "__cehrgpt_staging"
RETIRED_SUFFIX = "__cehrgpt_old"  # left by earlier versions' MariaDB swap (RENAME); dropped as stale


def is_bigint(field: CdmField) -> bool:
    return field.datatype == "integer" and "_id" in field.name


def column_type(field: CdmField, dialect_name: str) -> TypeEngine:
    """The SQL type of one CDM field on one dialect (see the module table)."""
    datatype = field.datatype
    if datatype == "integer":
        return sa.BigInteger() if is_bigint(field) else sa.Integer()
    if datatype == "float":
        return sa.Float(53) if dialect_name == "mssql" else sa.Double()
    if datatype == "date":
        # SQLAlchemy's generic Date renders DATETIME on SQL Server until it has seen a 2008+ server.
        return mssql.DATE() if dialect_name == "mssql" else sa.Date()
    if datatype == "datetime":
        if dialect_name == "mssql":
            return mssql.DATETIME2()
        if dialect_name in ("mysql", "mariadb"):
            return mysql.DATETIME(fsp=6)
        if dialect_name == "postgresql":
            return postgresql.TIMESTAMP(timezone=False)
        return sa.DateTime()
    if datatype.startswith("varchar("):
        length = field.varchar_length
        if length is not None:
            return sa.String(length)
        if dialect_name == "mssql":
            return mssql.VARCHAR(None)  # VARCHAR(max)
        if dialect_name in ("mysql", "mariadb"):
            return mysql.LONGTEXT()
        return sa.Text()
    raise ValueError(f"{field.table}.{field.name}: CDM datatype {datatype!r} has no SQL mapping")


def staging_name(table: str) -> str:
    return f"{table}{STAGING_SUFFIX}"


def pk_constraint_name(table_name: str) -> str:
    return f"{table_name}_pkey"


def cdm_table(
    table: str,
    metadata: sa.MetaData,
    *,
    dialect_name: str,
    name: str | None = None,
    schema: str | None = None,
) -> sa.Table:
    """The SQLAlchemy table for CDM ``table``, created under ``name`` (default: the CDM name).

    The primary key constraint is named ``<name>_pkey`` so that the swap can
    rename it with the table where constraint names are schema-wide
    (PostgreSQL, SQL Server).
    """
    name = name or table
    key = primary_key(table)
    columns: list[sa.schema.SchemaItem] = [
        sa.Column(
            field.name,
            column_type(field, dialect_name),
            nullable=not (field.required or field.name == key),
            autoincrement=False,
        )
        for field in cdm_fields(table)
    ]
    constraints: list[sa.schema.SchemaItem] = (
        [sa.PrimaryKeyConstraint(key, name=pk_constraint_name(name))] if key else []
    )
    kwargs: dict[str, Any] = (
        {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"} if dialect_name in ("mysql", "mariadb") else {}
    )
    return sa.Table(name, metadata, *columns, *constraints, schema=schema, **kwargs)


def create_table_sql(
    table: str, dialect: Dialect, *, name: str | None = None, schema: str | None = None
) -> str:
    """The CREATE TABLE statement for CDM ``table`` on ``dialect`` (what a DBA would review)."""
    sa_table = cdm_table(table, sa.MetaData(), dialect_name=dialect.name, name=name, schema=schema)
    return str(CreateTable(sa_table).compile(dialect=dialect)).strip()


@dataclass(frozen=True)
class SwapItem:
    """One table in the final transaction: its CDM name, whether the target exists, whether it has a key."""

    table: str
    target_exists: bool
    has_primary_key: bool


def qualified(dialect: Dialect, schema: str | None, name: str) -> str:
    quote = dialect.identifier_preparer.quote
    return f"{quote(schema)}.{quote(name)}" if schema else quote(name)


def in_dependency_order(items: list[SwapItem]) -> list[SwapItem]:
    """``items`` parents first (:func:`cehrgpt.omop.cdm.dependency_order`), so the CDM's foreign keys
    (``visit_occurrence.person_id`` → ``person``), where a site declared them, hold after every statement."""
    by_table = {item.table: item for item in items}
    return [by_table[table] for table in dependency_order(list(by_table))]


def replace_statements(dialect: Dialect, schema: str | None, items: list[SwapItem]) -> list[str]:
    """The statements that replace every target's rows with its staging table's, in one transaction.

    An existing target is kept and emptied (``DELETE``, which every database runs inside a
    transaction and which leaves grants, indexes, constraints, triggers and dependent views
    alone), then filled with ``INSERT INTO ... SELECT`` from staging; a missing one gets the
    staging table renamed in. Targets are emptied children first and filled parents first, so
    the CDM's foreign keys never see a dangling row (databases check them per statement, not
    per transaction, unless a key was declared deferrable). On MariaDB (whose DDL commits at
    once) every target must exist beforehand (the caller creates the missing ones empty), so
    its transaction is DML only.
    """
    ordered = in_dependency_order(items)
    statements = []
    for item in reversed(ordered):
        if item.target_exists:
            statements.extend(_delete_statements(dialect, schema, item.table))
    return statements + append_statements(dialect, schema, ordered)


def self_references(dialect: Dialect, table: str) -> list[str]:
    """The fields of ``table`` whose foreign key points into the table itself
    (``visit_occurrence.preceding_visit_occurrence_id``) on a database that checks such a key row by row:
    MariaDB/InnoDB. Emptied before the rows are deleted and filled after they are inserted, so no row
    ever points at a row that is gone or not yet there; other databases check at the end of a statement."""
    if dialect.name not in ("mysql", "mariadb"):
        return []
    return [f.name for f in foreign_keys(table) if f.foreign_table == table]


def _delete_statements(dialect: Dialect, schema: str | None, table: str) -> list[str]:
    target = qualified(dialect, schema, table)
    quote = dialect.identifier_preparer.quote
    fields = self_references(dialect, table)
    if not fields:
        return [f"DELETE FROM {target}"]
    unset = ", ".join(f"{quote(f)} = NULL" for f in fields)
    linked = " OR ".join(f"{quote(f)} IS NOT NULL" for f in fields)
    return [f"UPDATE {target} SET {unset} WHERE {linked}", f"DELETE FROM {target}"]


def _insert_statements(dialect: Dialect, schema: str | None, table: str) -> list[str]:
    target = qualified(dialect, schema, table)
    staging = qualified(dialect, schema, staging_name(table))
    quote = dialect.identifier_preparer.quote
    names = [f.name for f in cdm_fields(table)]
    fields = self_references(dialect, table)
    columns = ", ".join(quote(name) for name in names)
    selected = ", ".join("NULL" if name in fields else quote(name) for name in names)
    insert = f"INSERT INTO {target} ({columns}) SELECT {selected} FROM {staging}"
    if not fields:
        return [insert]
    key = quote(str(primary_key(table)))
    link = ", ".join(f"t.{quote(f)} = s.{quote(f)}" for f in fields)
    linked = " OR ".join(f"s.{quote(f)} IS NOT NULL" for f in fields)
    return [
        insert,
        f"UPDATE {target} AS t JOIN {staging} AS s ON t.{key} = s.{key} SET {link} WHERE {linked}",
    ]


def append_statements(dialect: Dialect, schema: str | None, items: list[SwapItem]) -> list[str]:
    """The statements that append every staging table to its target, in one transaction.

    Existing targets get ``INSERT INTO ... SELECT`` (a key conflict aborts the
    whole transaction), parents first; missing ones get the staging table renamed in. On
    MariaDB every target must exist beforehand (the caller creates the missing
    ones empty), since a rename there would commit the transaction; there a table's
    references to itself are filled after its rows (:func:`self_references`).
    """
    statements = []
    for item in in_dependency_order(items):
        if item.target_exists:
            statements.extend(_insert_statements(dialect, schema, item.table))
        elif dialect.name in ("mysql", "mariadb"):
            raise ValueError(f"on MariaDB the target {item.table} must exist before the append transaction")
        else:
            statements.extend(_rename_statements(dialect, schema, item))
    return statements


def _rename_statements(dialect: Dialect, schema: str | None, item: SwapItem) -> list[str]:
    staging = staging_name(item.table)
    if dialect.name == "mssql":
        statements = [
            f"EXEC sp_rename {_nstring(qualified(dialect, schema, staging))}, {_nstring(item.table)}"
        ]
        if item.has_primary_key:
            statements.append(
                f"EXEC sp_rename {_nstring(qualified(dialect, schema, pk_constraint_name(staging)))}, "
                f"{_nstring(pk_constraint_name(item.table))}, N'OBJECT'"
            )
        return statements
    quote = dialect.identifier_preparer.quote
    statements = [f"ALTER TABLE {qualified(dialect, schema, staging)} RENAME TO {quote(item.table)}"]
    if dialect.name == "postgresql" and item.has_primary_key:
        statements.append(
            f"ALTER TABLE {qualified(dialect, schema, item.table)} RENAME CONSTRAINT "
            f"{quote(pk_constraint_name(staging))} TO {quote(pk_constraint_name(item.table))}"
        )
    return statements


def _nstring(text: str) -> str:
    return "N'" + text.replace("'", "''") + "'"
