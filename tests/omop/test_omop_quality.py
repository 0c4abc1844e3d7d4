"""Data-quality checks: a clean hand-made CDM passes; each planted defect is caught, with exact counts."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cehrgpt.omop.cdm import cdm_fields
from cehrgpt.omop.quality import check_quality, main, run_checks
from cehrgpt.omop.quality_checks import Check, define_checks, evaluate
from cehrgpt.values import NumberBins, ValueBins
from cehrgpt.values import write_value_bins as write_value_bins_file

TODAY = date(2026, 1, 1)
ARROW_TYPES = {
    "integer": pa.int64(),
    "float": pa.float64(),
    "date": pa.date32(),
    "datetime": pa.timestamp("us"),
}
D = date


def clean_tables() -> dict[str, list[dict]]:
    """Two persons, their periods, visits, a condition each, a drug, a measurement, one death."""
    return {
        "person": [
            {"person_id": 1, "gender_concept_id": 8532, "year_of_birth": 1980, "race_concept_id": 8527,
             "ethnicity_concept_id": 0},
            {"person_id": 2, "gender_concept_id": 8507, "year_of_birth": 1950, "race_concept_id": 8527,
             "ethnicity_concept_id": 0},
        ],
        "observation_period": [
            {"observation_period_id": 1, "person_id": 1, "observation_period_start_date": D(2000, 1, 1),
             "observation_period_end_date": D(2010, 12, 31), "period_type_concept_id": 32880},
            {"observation_period_id": 2, "person_id": 2, "observation_period_start_date": D(2000, 1, 1),
             "observation_period_end_date": D(2006, 1, 1), "period_type_concept_id": 32880},
        ],
        "visit_occurrence": [
            {"visit_occurrence_id": 10, "person_id": 1, "visit_concept_id": 9201, "visit_start_date": D(2001, 1, 1),
             "visit_end_date": D(2001, 1, 3), "visit_type_concept_id": 32817},
            {"visit_occurrence_id": 11, "person_id": 2, "visit_concept_id": 9202, "visit_start_date": D(2005, 5, 5),
             "visit_end_date": D(2005, 5, 5), "visit_type_concept_id": 32817},
        ],
        "condition_occurrence": [
            {"condition_occurrence_id": 20, "person_id": 1, "condition_concept_id": 101,
             "condition_start_date": D(2001, 1, 2), "condition_type_concept_id": 32817, "visit_occurrence_id": 10},
            {"condition_occurrence_id": 21, "person_id": 2, "condition_concept_id": 101,
             "condition_start_date": D(2005, 5, 5), "condition_end_date": D(2005, 5, 6),
             "condition_type_concept_id": 32817, "visit_occurrence_id": 11},
        ],
        "drug_exposure": [
            {"drug_exposure_id": 30, "person_id": 1, "drug_concept_id": 201,
             "drug_exposure_start_date": D(2001, 1, 1), "drug_exposure_end_date": D(2001, 1, 1),
             "drug_type_concept_id": 32817, "visit_occurrence_id": 10},
        ],
        "measurement": [
            {"measurement_id": 40, "person_id": 2, "measurement_concept_id": 401, "measurement_date": D(2005, 5, 5),
             "measurement_type_concept_id": 32817, "visit_occurrence_id": 11},
        ],
        "death": [{"person_id": 2, "death_date": D(2006, 1, 1), "death_type_concept_id": 32817}],
    }  # fmt: skip


VOCABULARY = {8532: "Gender", 8507: "Gender", 8527: "Race", 9201: "Visit", 9202: "Visit", 101: "Condition",
              201: "Drug", 401: "Measurement", 32817: "Type Concept", 32880: "Type Concept", 38003564: "Ethnicity"}  # fmt: skip


def write_cdm(folder: Path, tables: dict[str, list[dict]], types: dict[tuple[str, str], pa.DataType] | None = None,
              dropped: tuple[tuple[str, str], ...] = ()) -> Path:  # fmt: skip
    """Every CDM column in order (absent values null), as the restore writes them; part files in folders."""
    for table, rows in tables.items():
        columns = {}
        for f in cdm_fields(table):
            if (table, f.name) in dropped:
                continue
            kind = "varchar" if f.datatype.startswith("varchar") else f.datatype
            arrow = (types or {}).get((table, f.name), ARROW_TYPES.get(kind, pa.string()))
            values = [r.get(f.name) for r in rows]
            if pa.types.is_string(arrow) and kind != "varchar":
                values = [None if v is None else str(v) for v in values]
            columns[f.name] = pa.array(values, arrow)
        (folder / table).mkdir(parents=True)
        pq.write_table(pa.table(columns), folder / table / "part-00000.parquet")
    return folder


def write_vocabulary(folder: Path, concepts: dict[int, str] = VOCABULARY) -> Path:
    (folder / "concept").mkdir(parents=True)
    pq.write_table(
        pa.table({"concept_id": pa.array(list(concepts), pa.int64()), "domain_id": list(concepts.values())}),
        folder / "concept" / "part-0.parquet",
    )
    return folder


def failed(results) -> set[tuple]:
    return {(r.name, r.table, r.field, r.violations, r.denominator) for r in results if r.status == "fail"}


def test_clean_cdm_passes_every_check_and_covers_17_kinds(tmp_path):
    results = run_checks(
        write_cdm(tmp_path / "omop", clean_tables()), write_vocabulary(tmp_path / "v"), today=TODAY
    )
    assert failed(results) == set()
    assert {r.status for r in results} == {"pass"}
    kinds = {(r.name, r.category) for r in results}
    assert len({name for name, _ in kinds}) == 17 and {c for _, c in kinds} == {
        "conformance", "completeness", "plausibility"
    }  # fmt: skip
    assert len({(r.name, r.table, r.field) for r in results}) == len(results)


def _set(table: str, index: int, **values) -> Callable[[dict], None]:
    def plant(tables: dict) -> None:
        tables[table][index].update(values)

    return plant


def _add(table: str, row: dict) -> Callable[[dict], None]:
    return lambda tables: tables[table].append(row)


PERSON_FIELDS = len(cdm_fields("person"))
VISIT_FIELDS = len(cdm_fields("visit_occurrence"))


@pytest.mark.parametrize(
    "plant,expected",
    [
        (_set("person", 0, year_of_birth=None), {("isRequired", "person", "year_of_birth", 1, 2)}),
        (_set("condition_occurrence", 1, condition_occurrence_id=20),
         {("isPrimaryKey", "condition_occurrence", "condition_occurrence_id", 2, 2)}),
        (_set("drug_exposure", 0, person_id=9),
         {("isForeignKey", "drug_exposure", "person_id", 1, 1),
          ("plausibleDuringObservation", "drug_exposure", "drug_exposure_start_date", 1, 1)}),
        (_set("measurement", 0, visit_occurrence_id=99),
         {("isForeignKey", "measurement", "visit_occurrence_id", 1, 1)}),
        (_set("condition_occurrence", 0, condition_concept_id=555),
         {("isForeignKey", "condition_occurrence", "condition_concept_id", 1, 2)}),
        (_set("drug_exposure", 0, drug_concept_id=101), {("fkDomain", "drug_exposure", "drug_concept_id", 1, 1)}),
        (_set("visit_occurrence", 1, visit_type_concept_id=101),
         {("fkDomain", "visit_occurrence", "visit_type_concept_id", 1, 2)}),
        (_add("person", {"person_id": 3, "gender_concept_id": 8532, "year_of_birth": 1990, "race_concept_id": 0,
                         "ethnicity_concept_id": 0}),
         {("measurePersonCompleteness", "observation_period", None, 1, 3),
          ("measurePersonCompleteness", "visit_occurrence", None, 1, 3)}),
        (_set("measurement", 0, measurement_concept_id=0),
         {("standardConceptRecordCompleteness", "measurement", "measurement_concept_id", 1, 1)}),
        (_set("person", 0, year_of_birth=2002),
         {("plausibleAfterBirth", "visit_occurrence", "visit_start_date", 1, 2),
          ("plausibleAfterBirth", "condition_occurrence", "condition_start_date", 1, 2),
          ("plausibleAfterBirth", "drug_exposure", "drug_exposure_start_date", 1, 1),
          ("plausibleAfterBirth", "observation_period", "observation_period_start_date", 1, 2),
          ("plausibleAge", "person", "year_of_birth", 1, 2)}),  # -1 at their last record
        (_set("visit_occurrence", 0, visit_end_date=D(2000, 12, 31)),
         {("plausibleStartBeforeEnd", "visit_occurrence", "visit_end_date", 1, 2)}),
        (_set("drug_exposure", 0, drug_exposure_end_date=D(2000, 12, 31)),
         {("plausibleStartBeforeEnd", "drug_exposure", "drug_exposure_end_date", 1, 1)}),
        (_set("condition_occurrence", 1, condition_end_date=D(2005, 5, 1)),
         {("plausibleStartBeforeEnd", "condition_occurrence", "condition_end_date", 1, 2)}),
        (_set("condition_occurrence", 0, condition_start_date=D(2011, 6, 1)),
         {("plausibleDuringObservation", "condition_occurrence", "condition_start_date", 1, 2)}),
        (_set("death", 0, death_date=D(2005, 1, 1)),
         {("plausibleBeforeDeath", "visit_occurrence", "visit_start_date", 1, 1),
          ("plausibleBeforeDeath", "condition_occurrence", "condition_start_date", 1, 1),
          ("plausibleBeforeDeath", "measurement", "measurement_date", 1, 1)}),
        (_set("person", 0, year_of_birth=1870), {("plausibleAge", "person", "year_of_birth", 1, 2)}),
        (_set("observation_period", 0, observation_period_end_date=D(2030, 1, 1)),
         {("plausibleNoFutureDate", "observation_period", "observation_period_end_date", 1, 2)}),
        (_add("death", {"person_id": 2, "death_date": D(2006, 1, 1), "death_type_concept_id": 32817}),
         {("plausibleUniqueDeath", "death", "person_id", 2, 2)}),
    ],
)  # fmt: skip
def test_each_planted_defect_is_caught(tmp_path, plant, expected):
    tables = clean_tables()
    plant(tables)
    results = run_checks(write_cdm(tmp_path / "omop", tables), write_vocabulary(tmp_path / "v"), today=TODAY)
    assert failed(results) == expected


def test_a_column_of_the_wrong_type_or_missing_is_caught(tmp_path):
    folder = write_cdm(
        tmp_path / "omop",
        clean_tables(),
        types={("person", "year_of_birth"): pa.string()},
        dropped=(("visit_occurrence", "visit_end_date"),),
    )
    assert failed(run_checks(folder, today=TODAY)) == {
        ("cdmDatatype", "person", None, 1, PERSON_FIELDS),
        ("cdmField", "visit_occurrence", None, 1, VISIT_FIELDS),
    }


def test_concept_checks_need_the_vocabulary_and_a_domain_it_holds(tmp_path):
    folder = write_cdm(tmp_path / "omop", clean_tables())
    without = run_checks(folder, today=TODAY)
    assert not {r.name for r in without} & {"fkDomain"}
    assert not [r for r in without if r.name == "isForeignKey" and r.field.endswith("concept_id")]
    no_types = {c: d for c, d in VOCABULARY.items() if d != "Type Concept"}
    results = run_checks(folder, write_vocabulary(tmp_path / "v", no_types), today=TODAY)
    skipped = {(r.name, r.table, r.field) for r in results if r.status == "not_applicable"}
    assert ("isForeignKey", "death", "death_type_concept_id") in skipped
    assert ("fkDomain", "visit_occurrence", "visit_type_concept_id") in skipped
    assert {f for _, _, f in skipped} == {
        "visit_type_concept_id", "condition_type_concept_id", "drug_type_concept_id", "measurement_type_concept_id",
        "death_type_concept_id", "period_type_concept_id",
    }  # fmt: skip
    assert failed(results) == set()


def test_threshold_is_a_percentage_of_the_denominator():
    check = Check("standardConceptRecordCompleteness", "completeness", "t", "f", 5.0, "", "SELECT 1")
    assert evaluate(check, 5, 100, True).status == "pass"
    assert evaluate(check, 6, 100, True).status == "fail" and evaluate(check, 6, 100, True).percent == 6.0
    assert evaluate(check, 0, 0, True).status == "pass"
    assert evaluate(check, 6, 100, False).status == "not_applicable"


def test_checks_are_defined_only_for_what_is_present_and_missing_required_tables_are_checks():
    checks = define_checks({"person": {"person_id": "BIGINT"}}, vocabulary=False, today=TODAY)
    assert [(c.name, c.table, c.field) for c in checks] == [
        ("cdmTable", "observation_period", None), ("cdmTable", "person", None),
        ("cdmTable", "visit_occurrence", None),
        ("cdmField", "person", None), ("cdmDatatype", "person", None),
        ("isRequired", "person", "person_id"), ("isPrimaryKey", "person", "person_id"),
        ("measurePersonCompleteness", "observation_period", None),
        ("measurePersonCompleteness", "visit_occurrence", None),
    ]  # fmt: skip


def test_a_cdm_without_person_or_visits_fails_and_their_foreign_keys_are_checked_not_skipped(
    tmp_path, capsys
):
    tables = clean_tables()
    del tables["person"], tables["visit_occurrence"]
    folder = write_cdm(tmp_path / "omop", tables)
    assert failed(run_checks(folder, today=TODAY)) == {
        ("cdmTable", "person", None, 1, 1),
        ("cdmTable", "visit_occurrence", None, 1, 1),
        ("isForeignKey", "observation_period", "person_id", 2, 2),
        ("isForeignKey", "condition_occurrence", "person_id", 2, 2),
        ("isForeignKey", "drug_exposure", "person_id", 1, 1),
        ("isForeignKey", "measurement", "person_id", 1, 1),
        ("isForeignKey", "death", "person_id", 1, 1),
        ("isForeignKey", "condition_occurrence", "visit_occurrence_id", 2, 2),
        ("isForeignKey", "drug_exposure", "visit_occurrence_id", 1, 1),
        ("isForeignKey", "measurement", "visit_occurrence_id", 1, 1),
    }
    assert main(["--omop_folder", str(folder), "--output_folder", str(tmp_path / "q")]) == 1
    report = json.loads((tmp_path / "q" / "quality_report.json").read_text())
    missing = [c for c in report["checks"] if c["name"] == "cdmTable" and c["status"] == "fail"]
    assert [(c["table"], c["description"]) for c in missing] == [
        ("person", "required CDM table is missing"), ("visit_occurrence", "required CDM table is missing")
    ]  # fmt: skip


def test_persons_without_an_observation_period_table_are_all_incomplete(tmp_path):
    tables = clean_tables()
    del tables["observation_period"]
    assert failed(run_checks(write_cdm(tmp_path / "omop", tables), today=TODAY)) == {
        ("cdmTable", "observation_period", None, 1, 1),
        ("measurePersonCompleteness", "observation_period", None, 2, 2),
    }


def test_cli_writes_the_report_prints_a_table_and_exits_1_on_a_failure(tmp_path, capsys):
    tables = clean_tables()
    _set("drug_exposure", 0, drug_exposure_end_date=D(2000, 12, 31))(tables)
    folder = write_cdm(tmp_path / "omop", tables)
    args = ["--omop_folder", str(folder), "--output_folder", str(tmp_path / "q"), "--vocab_folder",
            str(write_vocabulary(tmp_path / "v"))]  # fmt: skip
    assert main(args) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert [line.split()[:3] for line in lines if line.startswith("fail")] == [
        ["fail", "plausibleStartBeforeEnd", "drug_exposure"]
    ]
    assert lines[0].split()[:2] == ["status", "check"] and "1 failed" in lines[-1]
    report = json.loads((tmp_path / "q" / "quality_report.json").read_text())
    bad = [c for c in report["checks"] if c["status"] == "fail"]
    assert bad == [
        {"name": "plausibleStartBeforeEnd", "category": "plausibility", "table": "drug_exposure",
         "field": "drug_exposure_end_date", "description": "drug_exposure_end_date before drug_exposure_start_date",
         "violations": 1, "denominator": 1, "percent": 100.0, "threshold": 1.0, "status": "fail"}
    ]  # fmt: skip
    assert report["summary"]["failed"] == 1 and report["summary"]["checks"] == len(report["checks"])
    clean = write_cdm(tmp_path / "clean", clean_tables())
    assert main(["--omop_folder", str(clean), "--output_folder", str(tmp_path / "q2")]) == 0


@pytest.mark.parametrize(
    "breakage,message",
    [
        ("missing", "error: omop_folder {omop} is not a folder"),
        ("empty", "error: omop_folder {omop}: no CDM table"),
        ("corrupt", "error: omop_folder {omop}: person: cannot read the parquet"),
        ("no_concept", "error: vocab_folder {vocab}: no concept table"),
        ("no_domain", "error: vocab_folder {vocab}: concept has no domain_id column"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, breakage, message):
    omop, vocab = tmp_path / "omop", tmp_path / "vocab"
    if breakage != "missing":
        omop.mkdir()
    if breakage == "corrupt":
        (omop / "person").mkdir()
        (omop / "person" / "part-0.parquet").write_bytes(b"not parquet")
    if breakage in ("no_concept", "no_domain"):
        write_cdm(omop, clean_tables())
        vocab.mkdir()
    if breakage == "no_domain":
        (vocab / "concept").mkdir()
        pq.write_table(pa.table({"concept_id": [1]}), vocab / "concept" / "part-0.parquet")
    args = ["--omop_folder", str(omop), "--output_folder", str(tmp_path / "q")]
    if breakage in ("no_concept", "no_domain"):
        args += ["--vocab_folder", str(vocab)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(message.format(omop=omop, vocab=vocab)) and err.count("\n") == 1
    assert not (tmp_path / "q").exists()


def test_report_records_the_inputs(tmp_path):
    report = check_quality(write_cdm(tmp_path / "omop", clean_tables()), tmp_path / "q", today=TODAY)
    assert report["today"] == "2026-01-01" and report["vocab_folder"] is None
    assert report["summary"] == {"checks": len(report["checks"]), "passed": len(report["checks"]), "failed": 0,
                                 "not_applicable": 0}  # fmt: skip


def test_a_record_before_birth_in_one_percent_of_rows_passes_and_is_reported(tmp_path):
    tables = clean_tables()
    tables["visit_occurrence"] += [
        {"visit_occurrence_id": 100 + i, "person_id": 2, "visit_concept_id": 9202, "visit_start_date": D(2005, 5, 5),
         "visit_end_date": D(2005, 5, 5), "visit_type_concept_id": 32817}
        for i in range(98)
    ]  # fmt: skip
    tables["visit_occurrence"][0]["visit_start_date"] = D(1979, 12, 31)  # 1 of 100 visits: at the threshold
    tables["visit_occurrence"][0]["visit_end_date"] = D(1979, 12, 31)
    tables["observation_period"][0]["observation_period_start_date"] = D(1979, 12, 31)
    results = run_checks(write_cdm(tmp_path / "omop", tables), write_vocabulary(tmp_path / "v"), today=TODAY)
    (birth,) = [r for r in results if (r.name, r.table) == ("plausibleAfterBirth", "visit_occurrence")]
    assert (birth.violations, birth.denominator, birth.percent, birth.threshold, birth.status) == (
        1, 100, 1.0, 1.0, "pass"
    )  # fmt: skip
    assert failed(results) == {
        ("plausibleAfterBirth", "observation_period", "observation_period_start_date", 1, 2)
    }


def valued_tables(**measurement) -> dict[str, list[dict]]:
    """The clean CDM with its measurement given a value and a unit (then ``measurement`` overrides)."""
    tables = clean_tables()
    tables["measurement"][0].update({"value_as_number": 12.5, "unit_concept_id": 8876, **measurement})
    return tables


def write_value_bins(folder: Path) -> Path:
    """Training bins for measurement 401: robust range 10..20 (the restore draws inside it)."""
    bins = ValueBins(
        numbers={401: NumberBins([10.0, 15.0, 20.0], 8876, patients=12, values=30, other_unit_values=0)}
    )
    write_value_bins_file(bins, folder)
    return folder


VALUE_CHECKS = {
    "measureUnitCompleteness",
    "measureValueCompleteness",
    "plausibleValueLow",
    "plausibleValueHigh",
}


@pytest.mark.parametrize(
    ("measurement", "expected"),
    [
        ({}, set()),
        ({"value_as_number": 20.0}, set()),  # the top edge is inside the range
        ({"value_as_number": None, "unit_concept_id": None},
         {("measureValueCompleteness", "measurement", "value_as_number", 1, 1)}),
        ({"value_as_number": 9.5}, {("plausibleValueLow", "measurement", "value_as_number", 1, 1)}),
        ({"value_as_number": 20.5}, {("plausibleValueHigh", "measurement", "value_as_number", 1, 1)}),
        ({"unit_concept_id": 0}, {("measureUnitCompleteness", "measurement", "unit_concept_id", 1, 1)}),
    ],
)  # fmt: skip
def test_values_are_checked_against_the_training_ranges(tmp_path, measurement, expected):
    vocabulary = write_value_bins(write_vocabulary(tmp_path / "v", {**VOCABULARY, 8876: "Unit"}))
    results = run_checks(write_cdm(tmp_path / "omop", valued_tables(**measurement)), vocabulary, today=TODAY)
    assert failed(results) == expected
    ran = {(r.name, r.table) for r in results if r.name in VALUE_CHECKS}
    assert ran == {(name, "measurement") for name in VALUE_CHECKS}  # the CDM has no observation table


def test_without_value_bins_only_the_unit_is_checked(tmp_path):
    results = run_checks(
        write_cdm(tmp_path / "omop", valued_tables(unit_concept_id=None, value_as_number=99.0)),
        write_vocabulary(tmp_path / "v", {**VOCABULARY, 8876: "Unit"}),
        today=TODAY,
    )
    assert {r.name for r in results if r.name in VALUE_CHECKS} == {"measureUnitCompleteness"}
    assert failed(results) == {("measureUnitCompleteness", "measurement", "unit_concept_id", 1, 1)}


def test_a_broken_value_bins_file_is_one_line_and_exit_2(tmp_path, capsys):
    vocabulary = write_vocabulary(tmp_path / "v")
    (vocabulary / "value_bins.json").write_text("{")
    omop = write_cdm(tmp_path / "omop", valued_tables())
    argv = [
        "--omop_folder",
        str(omop),
        "--output_folder",
        str(tmp_path / "out"),
        "--vocab_folder",
        str(vocabulary),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "value_bins.json: unreadable" in err[0]
    assert not (tmp_path / "out" / "quality_report.json").exists()
