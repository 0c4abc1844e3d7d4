"""The OMOP CDM 5.4 specification (tables, fields, types, keys), read from the packaged CSV.

Every stage that writes or checks CDM tables (restore, upload, tests) takes
column names, order, types and keys from here, never from a hand-typed list.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from importlib import resources


@dataclass(frozen=True)
class CdmField:
    table: str
    name: str
    required: bool
    datatype: str  # as in the spec: integer, float, date, datetime, varchar(50), varchar(MAX), ...
    primary_key: bool
    foreign_table: str | None
    foreign_field: str | None

    @property
    def varchar_length(self) -> int | None:
        """The declared length of a varchar field; None for other types and for varchar(MAX)."""
        if not self.datatype.lower().startswith("varchar("):
            return None
        size = self.datatype[len("varchar(") : -1]
        return None if size.upper() == "MAX" else int(size)


@cache
def _spec() -> dict[str, tuple[CdmField, ...]]:
    text = resources.files("cehrgpt.omop").joinpath("resources/OMOP_CDMv5.4_fields.csv").read_text()
    tables: dict[str, list[CdmField]] = {}
    for row in csv.DictReader(text.splitlines()):
        fk_table = row["fkTableName"]
        field = CdmField(
            table=row["cdmTableName"].lower(),
            name=row["cdmFieldName"].strip().strip('"').lower(),  # the spec quotes "offset"
            required=row["isRequired"].strip().lower() == "yes",
            datatype=row["cdmDatatype"].strip().lower().replace("varchar(max)", "varchar(MAX)"),
            primary_key=row["isPrimaryKey"].strip().lower() == "yes",
            foreign_table=None if fk_table in ("", "NA") else fk_table.lower(),
            foreign_field=None if row["fkFieldName"] in ("", "NA") else row["fkFieldName"].lower(),
        )
        tables.setdefault(field.table, []).append(field)
    return {name: tuple(fields) for name, fields in tables.items()}


def cdm_tables() -> list[str]:
    return sorted(_spec())


def cdm_fields(table: str) -> tuple[CdmField, ...]:
    """The fields of ``table`` in CDM order; a clear error for a table the CDM does not define."""
    try:
        return _spec()[table.lower()]
    except KeyError:
        raise ValueError(f"'{table}' is not an OMOP CDM 5.4 table") from None


def cdm_columns(table: str) -> list[str]:
    return [f.name for f in cdm_fields(table)]


def primary_key(table: str) -> str | None:
    keys = [f.name for f in cdm_fields(table) if f.primary_key]
    return keys[0] if keys else None


def foreign_keys(table: str) -> list[CdmField]:
    """The fields of ``table`` the CDM gives a foreign key (into the vocabulary tables too), in CDM order."""
    return [f for f in cdm_fields(table) if f.foreign_table and f.foreign_field]


def dependency_order(tables: list[str]) -> list[str]:
    """``tables`` with every table after the tables its foreign keys point into (parents first), so a
    database that checks foreign keys accepts inserts in this order and deletes in the reverse.

    Only keys among ``tables`` count; a self-reference (``preceding_visit_occurrence_id``) cannot be
    ordered and is left out; ties go by name, and a cycle (the vocabulary tables' ``concept`` ↔ ``domain``)
    is broken at its table with the fewest parents still to come.
    """
    wanted = sorted(set(tables))
    parents = {
        table: {f.foreign_table for f in foreign_keys(table) if f.foreign_table in wanted} - {table}
        for table in wanted
    }
    ordered: list[str] = []
    while len(ordered) < len(wanted):
        left = [t for t in wanted if t not in ordered]
        pending = {t: parents[t] - set(ordered) for t in left}
        ready = [t for t in left if not pending[t]]
        candidates = ready or [t for t in left if _in_cycle(t, pending)]
        ordered.append(min(candidates, key=lambda t: (len(pending[t]), t)))
    return ordered


def _in_cycle(table: str, parents: dict[str, set[str]]) -> bool:
    """Whether ``table`` is among its own ancestors under ``parents``."""
    seen: set[str] = set()
    stack = list(parents[table])
    while stack:
        current = stack.pop()
        if current == table:
            return True
        if current not in seen:
            seen.add(current)
            stack.extend(parents.get(current, ()))
    return False
