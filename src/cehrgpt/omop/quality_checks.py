"""The data-quality check definitions: pure SQL text per check, in the spirit of the OHDSI DQD.

Each :class:`Check` is one SQL query over views named after the CDM tables that returns one
row ``(violations, denominator, applicable)``; :func:`define_checks` lists every check that
applies to the tables present and :func:`evaluate` judges a check's counts against its
threshold. Nothing here touches a database: :mod:`cehrgpt.omop.quality` runs them with DuckDB.

The checks (DQD names where DQD has one):

conformance
    ``cdmTable`` a required table (:data:`REQUIRED_TABLES`) is missing; ``cdmField`` a CDM column is missing; ``cdmDatatype`` a column's type is not the
    CDM type's; ``isRequired`` a required field is null; ``isPrimaryKey`` a key value
    repeats; ``isForeignKey`` a ``person_id`` or ``visit_occurrence_id`` not in its
    table (every non-null one when that table is missing), or (with ``--vocab_folder``) a concept id not in ``concept``; ``fkDomain``
    (with the vocabulary) a table's concept outside its domain (a condition concept
    in ``drug_exposure``...).
completeness
    ``measurePersonCompleteness`` persons without an observation period or a visit (all of
    them when that table is missing);
    ``standardConceptRecordCompleteness`` records whose concept is 0;
    ``measureValueCompleteness`` (with the vocabulary's ``value_bins.json``) measurements and
    observations of a concept that has values in training but no ``value_as_number``;
    ``measureUnitCompleteness`` a ``value_as_number`` without a unit.
plausibility
    ``plausibleAfterBirth`` a record before the person's birth; ``plausibleStartBeforeEnd``
    an end before its start; ``plausibleDuringObservation`` a record outside every
    observation period of its person; ``plausibleBeforeDeath`` a record after the
    person's death; ``plausibleAge`` a person older than 120 at their last record;
    ``plausibleNoFutureDate`` a date after today; ``plausibleUniqueDeath`` more than one
    death row per person; ``plausibleValueLow``/``plausibleValueHigh`` (with ``value_bins.json``) a
    ``value_as_number`` outside its concept's robust training range (the outer bin edges).

A concept check on a field with a domain (gender, race, visit, event and type
concepts) is ``not_applicable`` when the concept table holds no concept of that domain (Eunomia's vocabulary,
for one, has no Gender, Race or Type Concept concepts).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

from cehrgpt.omop.cdm import CdmField, cdm_fields, primary_key

#: Tables every CDM of patients holds: a release without them fails ``cdmTable``. The restore writes
#: every table it knows, an empty domain as an empty parquet file, but other CDMs (a site's, Eunomia)
#: may leave an empty domain table out, so only these three are required.
REQUIRED_TABLES = ("observation_period", "person", "visit_occurrence")
#: Foreign keys the checks follow: (field, the table it points into).
FOREIGN_KEYS = (("person_id", "person"), ("visit_occurrence_id", "visit_occurrence"))
# table → (start date, end date or None): the dates a record happens on
RECORD_DATES: dict[str, tuple[str, str | None]] = {
    "visit_occurrence": ("visit_start_date", "visit_end_date"),
    "condition_occurrence": ("condition_start_date", "condition_end_date"),
    "drug_exposure": ("drug_exposure_start_date", "drug_exposure_end_date"),
    "procedure_occurrence": ("procedure_date", "procedure_end_date"),
    "device_exposure": ("device_exposure_start_date", "device_exposure_end_date"),
    "measurement": ("measurement_date", None),
    "observation": ("observation_date", None),
    "death": ("death_date", None),
    "observation_period": ("observation_period_start_date", "observation_period_end_date"),
}
#: Tables of clinical records: they must lie inside an observation period and before death.
CLINICAL_TABLES = (
    "visit_occurrence",
    "condition_occurrence",
    "drug_exposure",
    "procedure_occurrence",
    "device_exposure",
    "measurement",
    "observation",
)
# table → {concept field: the domain its concepts belong to}
CONCEPT_DOMAINS: dict[str, dict[str, str]] = {
    "person": {"gender_concept_id": "Gender", "race_concept_id": "Race", "ethnicity_concept_id": "Ethnicity"},
    "visit_occurrence": {"visit_concept_id": "Visit", "visit_type_concept_id": "Type Concept"},
    "condition_occurrence": {
        "condition_concept_id": "Condition",
        "condition_type_concept_id": "Type Concept",
    },
    "drug_exposure": {"drug_concept_id": "Drug", "drug_type_concept_id": "Type Concept"},
    "procedure_occurrence": {
        "procedure_concept_id": "Procedure",
        "procedure_type_concept_id": "Type Concept",
    },
    "device_exposure": {"device_concept_id": "Device", "device_type_concept_id": "Type Concept"},
    "measurement": {"measurement_concept_id": "Measurement", "measurement_type_concept_id": "Type Concept"},
    "observation": {"observation_concept_id": "Observation", "observation_type_concept_id": "Type Concept"},
    "death": {"death_type_concept_id": "Type Concept"},
    "observation_period": {"period_type_concept_id": "Type Concept"},
}
# table → the field whose concept says what the record is (0: unmapped)
MAIN_CONCEPTS = {
    "person": "gender_concept_id",
    "visit_occurrence": "visit_concept_id",
    "condition_occurrence": "condition_concept_id",
    "drug_exposure": "drug_concept_id",
    "procedure_occurrence": "procedure_concept_id",
    "device_exposure": "device_concept_id",
    "measurement": "measurement_concept_id",
    "observation": "observation_concept_id",
}
MAX_AGE = 120
#: Percent of a check's rows allowed to violate it (DQD-style defaults); 0 for every check not named here.
THRESHOLDS: dict[str, float] = {
    "standardConceptRecordCompleteness": 5.0,
    "plausibleAfterBirth": 1.0,  # sources carry some: Eunomia has a drug six years before its patient's birth
    "plausibleStartBeforeEnd": 1.0,
    "plausibleDuringObservation": 1.0,
    "plausibleBeforeDeath": 1.0,
    "plausibleAge": 1.0,
    "plausibleNoFutureDate": 1.0,
    "measureValueCompleteness": 5.0,  # issue 22's target: >= 95% of a value-taking concept's rows carry one
    "measureUnitCompleteness": 5.0,
    "plausibleValueLow": 1.0,
    "plausibleValueHigh": 1.0,
}
#: Tables whose records carry a number with a unit: (table, its concept field).
VALUED_TABLES = (("measurement", "measurement_concept_id"), ("observation", "observation_concept_id"))
#: The view of the training value ranges (concept_id, low, high) registered from ``value_bins.json``.
VALUE_RANGES = "value_ranges"
_RANGE_SLACK = 1e-9  # relative: a value drawn at a bin's edge may differ from it in the last bit
#: Per (check, field) exceptions. ``visit_concept_id`` 0 is the restore's pseudo-visit (``Visit/0``) that
#: groups a day's events the source gave no visit (99% of Eunomia's): reported, never failed.
FIELD_THRESHOLDS: dict[tuple[str, str], float] = {
    ("standardConceptRecordCompleteness", "visit_concept_id"): 100.0
}
# DuckDB types each CDM type may be read as
DUCKDB_TYPES = {
    "integer": (
        "TINYINT",
        "SMALLINT",
        "INTEGER",
        "BIGINT",
        "HUGEINT",
        "UTINYINT",
        "USMALLINT",
        "UINTEGER",
        "UBIGINT",
    ),
    "float": ("FLOAT", "DOUBLE", "DECIMAL"),
    "date": ("DATE",),
    "datetime": ("TIMESTAMP", "TIMESTAMP_NS", "TIMESTAMP_MS", "TIMESTAMP_S", "TIMESTAMP WITH TIME ZONE"),
    "varchar": ("VARCHAR",),
}


@dataclass(frozen=True)
class Check:
    """One check: ``sql`` returns one row ``(violations, denominator, applicable)``."""

    name: str
    category: str
    table: str
    field: str | None
    threshold: float  # percent of the denominator allowed to violate
    description: str
    sql: str


@dataclass(frozen=True)
class CheckResult:
    name: str
    category: str
    table: str
    field: str | None
    description: str
    violations: int
    denominator: int
    percent: float
    threshold: float
    status: str  # pass | fail | not_applicable


def _check(name: str, category: str, table: str, field: str | None, description: str, sql: str) -> Check:
    threshold = FIELD_THRESHOLDS.get((name, field or ""), THRESHOLDS.get(name, 0.0))
    return Check(name, category, table, field, threshold, description, " ".join(sql.split()))


def _counted(violating: str, source: str) -> str:
    """``(violations, denominator, applicable)`` counting ``source``'s rows that satisfy ``violating``."""
    return f"SELECT count(*) FILTER (WHERE {violating}), count(*), TRUE FROM {source}"


def _unmatched(table: str, other: str, on: str, where: str = "TRUE", applicable: str = "TRUE") -> str:
    """``(violations, denominator, applicable)``: rows of ``table`` (alias t) meeting ``where`` with no row of
    ``other`` (alias x) ``on`` the condition; an anti join, which DuckDB runs as one hash join."""
    return (
        f"SELECT (SELECT count(*) FROM {table} AS t ANTI JOIN {other} AS x ON {on} WHERE {where}), "
        f"(SELECT count(*) FROM {table}), {applicable}"
    )


def _birth(alias: str = "p") -> str:
    return (
        f"coalesce(CAST({alias}.birth_datetime AS DATE), make_date(CAST({alias}.year_of_birth AS BIGINT), "
        f"CAST(coalesce({alias}.month_of_birth, 1) AS BIGINT), CAST(coalesce({alias}.day_of_birth, 1) AS BIGINT)))"
    )


def _required_tables(present: Mapping[str, Mapping[str, str]]) -> list[Check]:
    """One ``cdmTable`` check per required table: a missing one fails (1 violation of 1)."""
    return [
        _check(
            "cdmTable",
            "conformance",
            table,
            None,
            "required CDM table is missing",
            f"SELECT {0 if table in present else 1}, 1, TRUE",
        )
        for table in REQUIRED_TABLES
    ]


def _conformance(table: str, fields: tuple[CdmField, ...], columns: Mapping[str, str]) -> list[Check]:
    checks = []
    expected = ", ".join(f"('{f.name}', '{f.datatype.split('(')[0]}')" for f in fields)
    accepted = " OR ".join(
        f"(s.cdm = '{cdm}' AND (" + " OR ".join(f"c.data_type LIKE '{t}%'" for t in types) + "))"
        for cdm, types in DUCKDB_TYPES.items()
    )
    join = (
        f"(VALUES {expected}) AS s(field, cdm) LEFT JOIN information_schema.columns AS c "
        f"ON c.table_name = '{table}' AND c.column_name = s.field"
    )
    checks.append(
        _check(
            "cdmField",
            "conformance",
            table,
            None,
            "CDM 5.4 columns missing from the table",
            _counted("c.column_name IS NULL", join),
        )
    )
    checks.append(
        _check(
            "cdmDatatype",
            "conformance",
            table,
            None,
            "columns whose type is not the CDM type",
            _counted(f"c.column_name IS NOT NULL AND NOT ({accepted})", join),
        )
    )
    for f in fields:
        if f.required and f.name in columns:
            checks.append(
                _check(
                    "isRequired",
                    "conformance",
                    table,
                    f.name,
                    "required field is null",
                    _counted(f"{f.name} IS NULL", table),
                )
            )
    key = primary_key(table)
    if key and key in columns:
        checks.append(
            _check(
                "isPrimaryKey",
                "conformance",
                table,
                key,
                "primary key value repeats",
                f"SELECT coalesce(sum(n) FILTER (WHERE n > 1), 0), coalesce(sum(n), 0), TRUE FROM "
                f"(SELECT count(*) AS n FROM {table} GROUP BY {key})",
            )
        )
    return checks


def _foreign_keys(
    table: str, columns: Mapping[str, str], present: Mapping[str, Mapping[str, str]]
) -> list[Check]:
    """A reference into a missing table (or one without its key column) points nowhere: every non-null one
    violates, rather than the check being skipped."""
    checks = []
    for field, parent in FOREIGN_KEYS:
        if field not in columns or table == parent:
            continue
        sql = (
            _unmatched(table, parent, f"x.{field} = t.{field}", f"t.{field} IS NOT NULL")
            if field in present.get(parent, {})
            else _counted(f"{field} IS NOT NULL", table)
        )
        checks.append(_check("isForeignKey", "conformance", table, field, f"{field} not in {parent}", sql))
    return checks


def _vocabulary_checks(table: str, columns: Mapping[str, str]) -> list[Check]:
    checks = []
    for f in cdm_fields(table):
        if f.foreign_table != "concept" or f.name not in columns or not f.name.endswith("concept_id"):
            continue
        domain = CONCEPT_DOMAINS.get(table, {}).get(f.name)
        applicable = f"(SELECT count(*) > 0 FROM concept WHERE domain_id = '{domain}')" if domain else "TRUE"
        checks.append(
            _check(
                "isForeignKey",
                "conformance",
                table,
                f.name,
                f"{f.name} not in concept",
                _unmatched(
                    table,
                    "concept",
                    f"x.concept_id = t.{f.name}",
                    f"t.{f.name} IS NOT NULL AND t.{f.name} <> 0",
                    applicable,
                ),
            )
        )
        if domain:
            checks.append(
                _check(
                    "fkDomain",
                    "conformance",
                    table,
                    f.name,
                    f"concept not of domain {domain}",
                    f"SELECT count(*) FILTER (WHERE x.domain_id IS DISTINCT FROM '{domain}'), count(*), "
                    f"{applicable} FROM {table} AS t JOIN concept AS x ON x.concept_id = t.{f.name} "
                    f"WHERE t.{f.name} <> 0",
                )
            )
    return checks


def _completeness(present: Mapping[str, Mapping[str, str]]) -> list[Check]:
    checks = []
    if "person" in present:
        for table in ("observation_period", "visit_occurrence"):
            checks.append(
                _check(
                    "measurePersonCompleteness",
                    "completeness",
                    table,
                    None,
                    f"persons without {table}",
                    _unmatched("person", table, "x.person_id = t.person_id")
                    if "person_id" in present.get(table, {})
                    else _counted("TRUE", "person"),  # no such table: no person has one
                )
            )
    for table, field in MAIN_CONCEPTS.items():
        if field in present.get(table, {}):
            checks.append(
                _check(
                    "standardConceptRecordCompleteness",
                    "completeness",
                    table,
                    field,
                    "concept is 0",
                    _counted(f"{field} = 0", table),
                )
            )
    return checks


def _plausibility(present: Mapping[str, Mapping[str, str]], today: date) -> list[Check]:
    checks = []
    dated = {t: d for t, d in RECORD_DATES.items() if d[0] in present.get(t, {})}
    has_birth = "year_of_birth" in present.get("person", {})
    for table, (start, end) in dated.items():
        if has_birth:
            checks.append(
                _check(
                    "plausibleAfterBirth",
                    "plausibility",
                    table,
                    start,
                    "record before the person's birth",
                    _counted(f"t.{start} < {_birth()}", f"{table} AS t JOIN person AS p USING (person_id)"),
                )
            )
        if end and end in present[table]:
            checks.append(
                _check(
                    "plausibleStartBeforeEnd",
                    "plausibility",
                    table,
                    end,
                    f"{end} before {start}",
                    _counted(f"{end} < {start}", table),
                )
            )
        for field in (start, end):
            if field and field in present[table]:
                checks.append(
                    _check(
                        "plausibleNoFutureDate",
                        "plausibility",
                        table,
                        field,
                        f"{field} after today",
                        _counted(f"{field} > DATE '{today.isoformat()}'", table),
                    )
                )
    periods = dated.get("observation_period")
    for table in CLINICAL_TABLES:
        if table not in dated:
            continue
        start = dated[table][0]
        if periods and periods[1] in present["observation_period"]:
            checks.append(
                _check(
                    "plausibleDuringObservation",
                    "plausibility",
                    table,
                    start,
                    "record outside every observation period of its person",
                    _unmatched(
                        table,
                        "observation_period",
                        f"x.person_id = t.person_id AND t.{start} BETWEEN x.observation_period_start_date "
                        "AND x.observation_period_end_date",
                    ),
                )
            )
        if "death" in dated:
            checks.append(
                _check(
                    "plausibleBeforeDeath",
                    "plausibility",
                    table,
                    start,
                    "record after the person's death",
                    _counted(
                        f"t.{start} > d.death_date",
                        f"{table} AS t JOIN (SELECT person_id, "
                        "min(death_date) AS death_date FROM death GROUP BY person_id) AS d USING (person_id)",
                    ),
                )
            )
    if has_birth and dated:
        last = " UNION ALL ".join(f"SELECT person_id, {d[0]} AS day FROM {t}" for t, d in dated.items())
        checks.append(
            _check(
                "plausibleAge",
                "plausibility",
                "person",
                "year_of_birth",
                f"person younger than 0 or older than {MAX_AGE} at their last record",
                _counted(
                    f"date_diff('year', {_birth()}, r.day) NOT BETWEEN 0 AND {MAX_AGE}",
                    f"person AS p JOIN (SELECT person_id, max(day) AS day FROM ({last}) GROUP BY person_id) "
                    "AS r USING (person_id)",
                ),
            )
        )
    if "death" in present and "person_id" in present["death"]:
        checks.append(
            _check(
                "plausibleUniqueDeath",
                "plausibility",
                "death",
                "person_id",
                "more than one death per person",
                "SELECT coalesce(sum(n) FILTER (WHERE n > 1), 0), coalesce(sum(n), 0), TRUE FROM "
                "(SELECT count(*) AS n FROM death GROUP BY person_id)",
            )
        )
    return checks


def _value_checks(present: Mapping[str, Mapping[str, str]], value_ranges: bool) -> list[Check]:
    """Values: a unit wherever a number is; with the training ranges, a number where the concept takes one
    and within its robust range."""
    checks = []
    for table, concept in VALUED_TABLES:
        columns = present.get(table, {})
        if "value_as_number" not in columns:
            continue
        valued = f"{table} AS t WHERE t.value_as_number IS NOT NULL"
        if "unit_concept_id" in columns:
            checks.append(
                _check(
                    "measureUnitCompleteness",
                    "completeness",
                    table,
                    "unit_concept_id",
                    "value_as_number without a unit",
                    _counted("coalesce(t.unit_concept_id, 0) = 0", valued),
                )
            )
        if not value_ranges or concept not in columns:
            continue
        ranged = f"{table} AS t JOIN {VALUE_RANGES} AS r ON r.concept_id = t.{concept}"
        checks.append(
            _check(
                "measureValueCompleteness",
                "completeness",
                table,
                "value_as_number",
                "no value_as_number for a concept that has values in training",
                _counted("t.value_as_number IS NULL", ranged),
            )
        )
        slack = f"{_RANGE_SLACK} * greatest(abs(r.low), abs(r.high), 1)"
        for name, outside, side in (
            ("plausibleValueLow", f"t.value_as_number < r.low - {slack}", "below"),
            ("plausibleValueHigh", f"t.value_as_number > r.high + {slack}", "above"),
        ):
            checks.append(
                _check(
                    name,
                    "plausibility",
                    table,
                    "value_as_number",
                    f"value_as_number {side} its concept's robust training range",
                    _counted(outside, f"{ranged} WHERE t.value_as_number IS NOT NULL"),
                )
            )
    return checks


def define_checks(
    present: Mapping[str, Mapping[str, str]], *, vocabulary: bool, today: date, value_ranges: bool = False
) -> list[Check]:
    """Every check that applies to the tables and columns present.

    Args:
        present: table → {column: DuckDB type} of the CDM tables found.
        vocabulary: whether a ``concept`` view exists (adds the concept checks).
        today: dates after it are implausible.
        value_ranges: whether a :data:`VALUE_RANGES` view exists (adds the value checks that need it).
    """
    checks = _required_tables(present)
    for table in sorted(present):
        checks += _conformance(table, cdm_fields(table), present[table])
        checks += _foreign_keys(table, present[table], present)
        if vocabulary:
            checks += _vocabulary_checks(table, present[table])
    return (
        checks + _completeness(present) + _plausibility(present, today) + _value_checks(present, value_ranges)
    )


def evaluate(check: Check, violations: int, denominator: int, applicable: bool) -> CheckResult:
    """A check's counts as a result: it fails when more than ``threshold`` percent of its rows violate it."""
    percent = round(100.0 * violations / denominator, 4) if denominator else 0.0
    status = "not_applicable" if not applicable else ("fail" if percent > check.threshold else "pass")
    return CheckResult(
        check.name,
        check.category,
        check.table,
        check.field,
        check.description,
        violations,
        denominator,
        percent,
        check.threshold,
        status,
    )
