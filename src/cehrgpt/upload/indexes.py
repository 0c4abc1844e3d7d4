"""The CDM 5.4 primary keys and indexes, created after the load (``upload_omop --create_indexes``).

The index list is the CDM 5.4 release's (``OMOPCDM_<dbms>_5.4_indices.sql``) for the
clinical, health-system and derived tables, with its names. Differences, per dialect:

* an index on the table's primary-key column is skipped: the key's own index serves;
* SQL Server: every index NONCLUSTERED (the upload's primary keys are the clustered index);
* PostgreSQL: no ``CLUSTER`` (it rewrites the table under an exclusive lock; a DBA's call);
* a primary key the target lacks is added (``ALTER TABLE ... ADD CONSTRAINT <table>_pkey``),
  except on SQLite, which cannot add one to an existing table;
* an index the target already has (by name) is left as it is.
"""

from __future__ import annotations

from sqlalchemy.engine import Dialect

from cehrgpt.omop.cdm import foreign_keys, primary_key
from cehrgpt.upload.ddl import pk_constraint_name, qualified

# table → [(index name, column)], in the CDM release's order
CDM_INDEXES: dict[str, list[tuple[str, str]]] = {
    "person": [("idx_person_id", "person_id"), ("idx_gender", "gender_concept_id")],
    "observation_period": [("idx_observation_period_id_1", "person_id")],
    "visit_occurrence": [
        ("idx_visit_person_id_1", "person_id"),
        ("idx_visit_concept_id_1", "visit_concept_id"),
    ],
    "visit_detail": [
        ("idx_visit_det_person_id_1", "person_id"),
        ("idx_visit_det_concept_id_1", "visit_detail_concept_id"),
        ("idx_visit_det_occ_id", "visit_occurrence_id"),
    ],
    "condition_occurrence": [
        ("idx_condition_person_id_1", "person_id"),
        ("idx_condition_concept_id_1", "condition_concept_id"),
        ("idx_condition_visit_id_1", "visit_occurrence_id"),
    ],
    "drug_exposure": [
        ("idx_drug_person_id_1", "person_id"),
        ("idx_drug_concept_id_1", "drug_concept_id"),
        ("idx_drug_visit_id_1", "visit_occurrence_id"),
    ],
    "procedure_occurrence": [
        ("idx_procedure_person_id_1", "person_id"),
        ("idx_procedure_concept_id_1", "procedure_concept_id"),
        ("idx_procedure_visit_id_1", "visit_occurrence_id"),
    ],
    "device_exposure": [
        ("idx_device_person_id_1", "person_id"),
        ("idx_device_concept_id_1", "device_concept_id"),
        ("idx_device_visit_id_1", "visit_occurrence_id"),
    ],
    "measurement": [
        ("idx_measurement_person_id_1", "person_id"),
        ("idx_measurement_concept_id_1", "measurement_concept_id"),
        ("idx_measurement_visit_id_1", "visit_occurrence_id"),
    ],
    "observation": [
        ("idx_observation_person_id_1", "person_id"),
        ("idx_observation_concept_id_1", "observation_concept_id"),
        ("idx_observation_visit_id_1", "visit_occurrence_id"),
    ],
    "death": [("idx_death_person_id_1", "person_id")],
    "note": [
        ("idx_note_person_id_1", "person_id"),
        ("idx_note_concept_id_1", "note_type_concept_id"),
        ("idx_note_visit_id_1", "visit_occurrence_id"),
    ],
    "note_nlp": [("idx_note_nlp_note_id_1", "note_id"), ("idx_note_nlp_concept_id_1", "note_nlp_concept_id")],
    "specimen": [
        ("idx_specimen_person_id_1", "person_id"),
        ("idx_specimen_concept_id_1", "specimen_concept_id"),
    ],
    "fact_relationship": [
        ("idx_fact_relationship_id1", "domain_concept_id_1"),
        ("idx_fact_relationship_id2", "domain_concept_id_2"),
        ("idx_fact_relationship_id3", "relationship_concept_id"),
    ],
    "location": [("idx_location_id_1", "location_id")],
    "care_site": [("idx_care_site_id_1", "care_site_id")],
    "provider": [("idx_provider_id_1", "provider_id")],
    "payer_plan_period": [("idx_period_person_id_1", "person_id")],
    "cost": [("idx_cost_event_id", "cost_event_id")],
    "drug_era": [("idx_drug_era_person_id_1", "person_id"), ("idx_drug_era_concept_id_1", "drug_concept_id")],
    "dose_era": [("idx_dose_era_person_id_1", "person_id"), ("idx_dose_era_concept_id_1", "drug_concept_id")],
    "condition_era": [
        ("idx_condition_era_person_id_1", "person_id"),
        ("idx_condition_era_concept_id_1", "condition_concept_id"),
    ],
    "metadata": [("idx_metadata_concept_id_1", "metadata_concept_id")],
}


def index_statements(
    dialect: Dialect, schema: str | None, table: str, *, existing_indexes: set[str], has_primary_key: bool
) -> list[str]:
    """The statements that give ``table`` its CDM 5.4 primary key and indexes (see the module docstring).

    Args:
        existing_indexes: names of the indexes the target already has (lower case).
        has_primary_key: whether the target already has a primary key.
    """
    quote = dialect.identifier_preparer.quote
    key = primary_key(table)
    statements = []
    if key and not has_primary_key and dialect.name != "sqlite":
        statements.append(
            f"ALTER TABLE {qualified(dialect, schema, table)} ADD CONSTRAINT {quote(pk_constraint_name(table))} "
            f"PRIMARY KEY ({quote(key)})"
        )
    keyed = key if (has_primary_key or dialect.name != "sqlite") else None
    for name, column in CDM_INDEXES.get(table, []):
        if column == keyed or name in existing_indexes:
            continue
        if dialect.name == "sqlite":  # SQLite qualifies the index, not the table
            statements.append(
                f"CREATE INDEX {qualified(dialect, schema, name)} ON {quote(table)} ({quote(column)})"
            )
        else:
            kind = "NONCLUSTERED INDEX" if dialect.name == "mssql" else "INDEX"
            statements.append(
                f"CREATE {kind} {quote(name)} ON {qualified(dialect, schema, table)} ({quote(column)})"
            )
    return statements


def foreign_key_name(table: str, field: str) -> str:
    """OHDSI's name for a CDM 5.4 foreign key (``OMOPCDM_<dbms>_5.4_constraints.sql``), lower case."""
    return f"fpk_{table}_{field}"


def foreign_key_statements(
    dialect: Dialect, schema: str | None, table: str, *, parents: set[str], existing: set[str]
) -> list[str]:
    """The statements that give ``table`` the CDM 5.4 foreign keys into ``parents`` it lacks (OHDSI's DDL).

    Args:
        parents: the tables a key may point into (those the schema holds with their primary key).
        existing: names of the foreign keys ``table`` already has (lower case).
    """
    quote = dialect.identifier_preparer.quote
    return [
        f"ALTER TABLE {qualified(dialect, schema, table)} ADD CONSTRAINT {quote(foreign_key_name(table, f.name))} "
        f"FOREIGN KEY ({quote(f.name)}) REFERENCES {qualified(dialect, schema, str(f.foreign_table))} "
        f"({quote(str(f.foreign_field))})"
        for f in foreign_keys(table)
        if f.foreign_table in parents and foreign_key_name(table, f.name) not in existing
    ]
