"""The ETL job end to end on tiny hand-made OMOP databases, its report, its failures, and Eunomia."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from data_omop_fixtures import (
    PERSON_1_TOKENS,
    PERSON_2_TOKENS,
    concept_rows,
    drop_postgres_schema,
    tiny_omop,
    write_csv,
    write_duckdb,
    write_parquet,
    write_postgres,
)

from cehrgpt import grammar
from cehrgpt.data.prepare import main, prepare

SEQUENCE_SCHEMA = [
    ("person_id", "int64"),
    ("concept_ids", "list<element: string>"),
    ("ages", "list<element: int32>"),
    ("dates", "list<element: int32>"),
    ("visit_concept_ids", "list<element: string>"),
    ("visit_concept_orders", "list<element: int32>"),
    ("num_of_visits", "int32"),
    ("num_of_concepts", "int32"),
    # the original CEHR-GPT's value columns (values are on by default)
    ("concept_value_masks", "list<element: int32>"),
    ("number_as_values", "list<element: float>"),
    ("concept_as_values", "list<element: string>"),
    ("is_numeric_types", "list<element: int32>"),
    ("units", "list<element: string>"),
]


def _rows(out: Path, split: str) -> list[dict]:
    table = pq.read_table(out / "patient_sequence" / split)
    return sorted(table.to_pylist(), key=lambda r: r["person_id"])


def _run(spark, source, out: Path, **options) -> dict:
    options = {"test_fraction": 0.0, "seed": 1, "min_event_date": "2000-01-01"} | options
    return prepare(str(source), str(out), spark=spark, **options)


@pytest.fixture(scope="module")
def tiny_csv_output(spark, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_csv")
    _run(spark, write_csv(root / "omop", tiny_omop()), root / "out")
    return root / "out"


def test_sequences_of_known_patients(tiny_csv_output):
    table = pq.read_table(tiny_csv_output / "patient_sequence" / "train")
    assert [(f.name, str(f.type)) for f in table.schema] == SEQUENCE_SCHEMA
    person_1, person_2 = _rows(tiny_csv_output, "train")
    assert person_1["person_id"] == 1
    assert person_1["concept_ids"] == PERSON_1_TOKENS
    assert person_1["ages"] == [-1] * 4 + [39] * 16 + [42] * 5 + [43] * 4
    assert person_1["dates"] == [-1] * 4 + [2610] * 10 + [2617] * 6 + [2787] * 5 + [2817] * 4
    assert (
        person_1["visit_concept_orders"] == [0] * 4 + [1] * 10 + [0] + [2] * 5 + [0] + [3] * 4 + [0] + [4] * 3
    )
    assert (person_1["num_of_visits"], person_1["num_of_concepts"]) == (3, 29)
    assert person_2["concept_ids"] == PERSON_2_TOKENS
    assert person_2["visit_concept_ids"] == (
        ["0"] * 4 + ["Visit/0"] * 5 + ["0"] + ["Visit/0"] * 4 + ["0"] + ["9201"] * 7 + ["0"] * 4
    )
    assert (person_2["num_of_visits"], person_2["num_of_concepts"]) == (3, 26)
    assert all(grammar.is_valid(r["concept_ids"]) for r in (person_1, person_2))
    assert _rows(tiny_csv_output, "test") == []


def test_report_counts_every_dropped_row(tiny_csv_output):
    report = json.loads((tiny_csv_output / "prepare_report.json").read_text())
    assert report["tables_read"] == {
        "person": 4,
        "visit_occurrence": 6,
        "condition_occurrence": 10,
        "drug_exposure": 4,
        "procedure_occurrence": 3,
        "death": 2,
    }
    assert report["persons"] == {
        "read": 4,
        "kept": 3,
        "dropped": {"no_birth_year": 1},
        "dropped_without_events": 1,
        "written": 2,
        "per_split": {"train": 2, "test": 0},
    }
    assert report["visits"] == {
        "read": 6,
        "kept": 4,
        "dropped": {"unknown_person": 1},
        "dropped_empty": 1,
        "artificial_visits": 2,
        "written": 6,
        "negative_gaps_clipped": 0,
    }
    assert report["events"] == {
        "kept": 13,
        "by_table": {
            "condition_occurrence": {
                "read": 10,
                "kept": 7,
                "dropped": {"concept_0": 1, "null_date": 1, "unknown_person": 1},
            },
            "drug_exposure": {"read": 4, "kept": 3, "dropped": {"before_min_date": 1}},
            "procedure_occurrence": {"read": 3, "kept": 3, "dropped": {}},
        },
        "orphans_in_artificial_visits": 3,
    }
    assert report["deaths"] == {"written": 2, "before_last_visit": 1}
    assert report["empty_tables"] == []
    assert report["tables_treated_as_absent"] == {
        "patient_splits": "not in the source",
    }
    assert report["vocabulary_rows"] == {"concept": 8}
    assert report["tokens_written"] == 29 + 26
    # no end dates, no values in the tiny set: no value tokens
    assert report["values"]["tokens_written"] == {"number": 0, "category": 0, "duration": 0}
    concept = pq.read_table(tiny_csv_output / "omop_vocab" / "concept")
    assert sorted(concept.column("concept_id").to_pylist()) == [
        8527,
        8532,
        9201,
        9202,
        9203,
        201826,
        316139,
        4329847,
    ]


@pytest.mark.parametrize("layout", ["parquet", "duckdb", "csv_upper_case", "csv_cdm53", "postgres_url"])
def test_every_source_layout_gives_identical_output(request, spark, tmp_path, tiny_csv_output, layout):
    if layout == "postgres_url":  # the server from the postgres_url fixture (skipped, saying why, when down)
        postgres_url = request.getfixturevalue("postgres_url")
        source = write_postgres(postgres_url, "data_prepare_test", tiny_omop())
    elif layout == "parquet":
        source = write_parquet(tmp_path / "omop", tiny_omop())
    elif layout == "duckdb":
        source = write_duckdb(tmp_path / "omop.duckdb", tiny_omop())
    elif layout == "csv_upper_case":
        source = write_csv(tmp_path / "omop", tiny_omop(), upper=True)
    else:
        source = write_csv(tmp_path / "omop", tiny_omop(cdm53=True))
    try:
        _run(spark, source, tmp_path / "out")
    finally:
        if layout == "postgres_url":
            drop_postgres_schema(postgres_url, "data_prepare_test")
    assert _rows(tmp_path / "out", "train") == _rows(tiny_csv_output, "train")
    assert _rows(tmp_path / "out", "test") == []


def test_patient_splits_table_is_honoured_and_hash_split_is_deterministic(spark, tmp_path):
    tables = tiny_omop()
    tables["patient_splits"] = [{"person_id": 2, "split": "test"}]
    report = _run(spark, write_csv(tmp_path / "omop", tables), tmp_path / "out")
    assert [r["person_id"] for r in _rows(tmp_path / "out", "test")] == [2]
    assert [r["person_id"] for r in _rows(tmp_path / "out", "train")] == [1]
    assert report["persons"]["per_split"] == {"train": 1, "test": 1}


def test_split_is_a_fixed_function_of_person_and_seed(spark, tmp_path):
    tables = {"concept": concept_rows(1), "death": tiny_omop()["death"][:1]}
    persons, conditions = [], []
    for pid in range(1, 41):
        persons.append(
            {"person_id": pid, "gender_concept_id": 8507, "year_of_birth": 1950, "race_concept_id": 0}
        )
        conditions.append(
            {
                "person_id": pid,
                "condition_concept_id": 1,
                "condition_start_date": "2020-01-01",
                "visit_occurrence_id": "",
            }
        )
    tables |= {"person": persons, "condition_occurrence": conditions}
    tables["visit_occurrence"] = [tiny_omop()["visit_occurrence"][0]]
    tables["drug_exposure"] = tiny_omop()["drug_exposure"][:1]
    tables["procedure_occurrence"] = tiny_omop()["procedure_occurrence"][:1]
    report = _run(spark, write_csv(tmp_path / "omop", tables), tmp_path / "out", test_fraction=0.5, seed=7)
    # xxhash64(person_id, seed): fixed forever, so a rerun or a newer version never moves a person.
    expected_test = [1, 2, 3, 6, 7, 9, 11, 13, 14, 15, 16, 17, 18, 20, 22, 24, 26, 27, 28, 33, 34, 35, 37, 39]
    assert [r["person_id"] for r in _rows(tmp_path / "out", "test")] == expected_test
    assert report["persons"]["per_split"] == {"train": 16, "test": 24}


def test_optional_domains_by_option_and_an_unusable_one_reported_as_absent(spark, tmp_path):
    tables = tiny_omop()
    tables["measurement"] = [
        {
            "person_id": 1,
            "measurement_concept_id": 3004249,
            "measurement_date": "2020-03-01",
            "visit_occurrence_id": 101,
        }
    ]
    tables["device_exposure"] = [{"column0": "PERSON_ID", "column1": "DEVICE_CONCEPT_ID"}]
    out = tmp_path / "out"
    report = _run(spark, write_csv(tmp_path / "omop", tables), out, domains="condition,measurement,device")
    assert report["tables_treated_as_absent"]["device_exposure"].startswith(
        "unusable: device_exposure.person_id: column not found"
    )
    assert report["rows_in_unusable_tables"] == {"device_exposure": 1}
    assert report["events"]["by_table"]["measurement"] == {"read": 1, "kept": 1, "dropped": {}}
    assert report["events"]["kept"] == 8
    person_1 = _rows(out, "train")[0]
    assert person_1["concept_ids"][13:18] == ["[VS]", "9202", "320128", "3004249", "[VE]"]


def test_command_line_run_replaces_the_previous_output(spark, tmp_path, capsys):
    source = write_csv(tmp_path / "omop", tiny_omop())
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("from an older run")
    argv = ["--omop_source", str(source), "--output_folder", str(out), "--test_fraction", "0", "--seed", "1"]
    argv += ["--overwrite"]  # stale.txt was not written by prepare
    assert main([*argv, "--min_event_date", "2000-01-01", "--domains", "condition,drug,procedure"]) == 0
    assert capsys.readouterr().out == f"wrote 2 train and 0 test patients, 13 events, to {out}\n"
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in out.iterdir()) == [
        "omop_vocab",
        "patient_sequence",
        "prepare_report.json",
        "prompts",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["omop", "out"]


def test_prompts_and_vocabulary_as_artifacts_of_their_own(spark, tmp_path):
    """What a generation pod downloads: the prompts alone; the vocabulary has only the table stages read."""
    tables = tiny_omop()
    tables["concept_relationship"] = [
        {"concept_id_1": 8532, "concept_id_2": 8527, "relationship_id": "Maps to",
         "valid_start_date": "1970-01-01", "valid_end_date": "2099-12-31", "invalid_reason": None}
    ]  # fmt: skip
    source = write_csv(tmp_path / "omop", tables)
    argv = [
        "--omop_source",
        str(source),
        "--output_folder",
        str(tmp_path / "sequences"),
        "--test_fraction",
        "0",
    ]
    argv += [
        "--vocabulary_folder",
        str(tmp_path / "vocabulary"),
        "--prompts_folder",
        str(tmp_path / "prompts"),
    ]
    assert main([*argv, "--seed", "1", "--min_event_date", "2000-01-01"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["omop", "prompts", "sequences", "vocabulary"]
    assert sorted(p.name for p in (tmp_path / "sequences").iterdir()) == [
        "patient_sequence",
        "prepare_report.json",
    ]
    assert sorted(p.name for p in (tmp_path / "vocabulary").iterdir()) == ["concept", "value_bins.json"]
    prompts = pq.read_table(tmp_path / "prompts")
    assert prompts.column_names == ["concept_ids"]
    heads = sorted(row["concept_ids"] for row in prompts.to_pylist())
    assert heads == sorted([PERSON_1_TOKENS[:4], PERSON_2_TOKENS[:4]])
    report = json.loads((tmp_path / "sequences" / "prepare_report.json").read_text())
    assert report["vocabulary_rows"] == {"concept": 8}
    assert "concept_relationship" not in report["tables_treated_as_absent"]
    assert (report["vocabulary_folder"], report["prompts_folder"]) == (
        str(tmp_path / "vocabulary"),
        str(tmp_path / "prompts"),
    )


def _broken(tmp_path: Path, breakage: str) -> Path:
    tables = tiny_omop()
    folder = tmp_path / "omop"
    if breakage == "missing_table":
        del tables["person"]
    elif breakage == "missing_column":
        for row in tables["condition_occurrence"]:
            del row["condition_start_date"]
    elif breakage == "bad_split":
        tables["patient_splits"] = [
            {"person_id": 1, "split": "train"},
            {"person_id": 2, "split": "validation"},
        ]
    elif breakage == "wrong_type":
        tables["drug_exposure"][1]["drug_exposure_start_date"] = "yesterday"
    write_csv(folder, tables)
    if breakage == "unreadable_file":
        (folder / "procedure_occurrence.csv").unlink()
        (folder / "procedure_occurrence.parquet").write_bytes(b"PAR1 not really parquet")
    return folder


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("missing_table", "error: person: table not found in "),
        (
            "missing_column",
            "error: condition_occurrence.condition_start_date: column not found (columns present: ",
        ),
        (
            "wrong_type",
            "error: drug_exposure.drug_exposure_start_date: 1 values are not dates, e.g. 'yesterday'",
        ),
        ("unreadable_file", "error: procedure_occurrence: cannot read "),
        ("bad_split", "error: patient_splits.split: 1 values are not train/test, e.g. 'validation'"),
    ],
)
def test_bad_source_fails_with_one_line_and_leaves_the_old_output(spark, tmp_path, capsys, breakage, message):
    source = _broken(tmp_path, breakage)
    out = tmp_path / "out"
    out.mkdir()
    (out / "prepare_report.json").write_text("a previous complete run")
    code = main(["--omop_source", str(source), "--output_folder", str(out), "--seed", "3"])
    err_lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert code == 2
    assert len(err_lines) == 1 and err_lines[0].startswith(message), err_lines
    assert sorted(p.name for p in out.iterdir()) == ["prepare_report.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["omop", "out"]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--test_fraction", "1.5"], "error: --test_fraction: 1.5 is not a fraction in [0, 1)\n"),
        (
            ["--min_event_date", "2020-13-01"],
            "error: --min_event_date: '2020-13-01' is not a date YYYY-MM-DD\n",
        ),
        (
            ["--domains", "condition,labs"],
            (
                "error: --domains: labs not understood, expected a comma-separated subset of "
                "condition,drug,procedure,measurement,observation,device\n"
            ),
        ),
    ],
)
def test_bad_option_fails_with_one_line(tmp_path, capsys, option, message):
    code = main(["--omop_source", str(tmp_path), "--output_folder", str(tmp_path / "out"), *option])
    assert code == 2
    assert capsys.readouterr().err == message
    assert not (tmp_path / "out").exists()


def test_missing_source_fails_with_one_line(tmp_path, capsys):
    code = main(["--omop_source", str(tmp_path / "nowhere"), "--output_folder", str(tmp_path / "out")])
    assert code == 2
    assert capsys.readouterr().err == (
        f"error: omop source: {tmp_path / 'nowhere'} does not exist (expected a folder, DuckDB file or URL)\n"
    )


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "--omop_source" in capsys.readouterr().out


def test_eunomia_report_matches_direct_sql_counts(eunomia_sequences, eunomia_duckdb):
    import duckdb

    report = json.loads((eunomia_sequences / "prepare_report.json").read_text())
    con = duckdb.connect(str(eunomia_duckdb), read_only=True)

    def sql(query: str) -> int:
        return con.execute(query).fetchall()[0][0]

    tables = {
        "condition_occurrence": ("condition_concept_id", "condition_start_date"),
        "drug_exposure": ("drug_concept_id", "drug_exposure_start_date"),
        "procedure_occurrence": ("procedure_concept_id", "procedure_date"),
    }
    events = " union all ".join(
        f"select person_id, {c} as concept_id, {d} as day, visit_occurrence_id from {t}"
        for t, (c, d) in tables.items()
    )
    kept = f"select * from ({events}) where coalesce(concept_id, 0) <> 0 and day is not null"
    orphans = (
        f"select e.* from ({kept}) e left join visit_occurrence v "
        "on e.visit_occurrence_id = v.visit_occurrence_id and e.person_id = v.person_id "
        "where v.visit_occurrence_id is null"
    )
    for table, (concept, day) in tables.items():
        by_table = report["events"]["by_table"][table]
        assert by_table["read"] == sql(f"select count(*) from {table}")
        assert by_table["kept"] == sql(
            f"select count(*) from {table} where coalesce({concept}, 0) <> 0 and {day} is not null"
        )
        assert by_table["dropped"].get("concept_0", 0) == sql(
            f"select count(*) from {table} where coalesce({concept}, 0) = 0"
        )
    assert report["persons"]["read"] == sql("select count(*) from person")
    assert report["visits"]["read"] == sql("select count(*) from visit_occurrence")
    assert report["events"]["kept"] == sql(f"select count(*) from ({kept})")
    assert report["events"]["orphans_in_artificial_visits"] == sql(f"select count(*) from ({orphans})")
    assert report["visits"]["artificial_visits"] == sql(
        f"select count(*) from (select distinct person_id, day from ({orphans}))"
    )
    assert report["persons"]["written"] == sql(f"select count(distinct person_id) from ({kept})")
    assert sum(report["persons"]["per_split"].values()) == report["persons"]["written"]
    assert report["tables_treated_as_absent"]["death"].startswith(
        "unusable: death.person_id: column not found"
    )

    train = pq.read_table(eunomia_sequences / "patient_sequence" / "train").to_pylist()
    test = pq.read_table(eunomia_sequences / "patient_sequence" / "test").to_pylist()
    assert len(train) == report["persons"]["per_split"]["train"]
    assert len(test) == report["persons"]["per_split"]["test"]
    assert all(grammar.is_valid(row["concept_ids"]) for row in train + test)
    assert sum(row["num_of_visits"] for row in train + test) == report["visits"]["written"]
    assert sum(row["num_of_concepts"] for row in train + test) == report["tokens_written"]
    assert (eunomia_sequences / "omop_vocab" / "concept").is_dir()


def test_spark_submit_writes_to_an_object_store_uri_and_replaces_it(spark, spark_submit, tmp_path):
    """As a Spark-operator driver runs it: ``spark-submit prepare.py`` with ``--output_folder s3a://...``."""
    import cehrgpt.data.prepare as prepare_module

    source = write_csv(tmp_path / "omop", tiny_omop())
    options = ["--test_fraction", "0", "--seed", "1", "--domains", "condition,drug,procedure"]
    expected = prepare(str(source), str(tmp_path / "local"), spark=spark, test_fraction=0, seed=1,
                       domains="condition,drug,procedure")  # fmt: skip
    out = tmp_path / "bucket" / "out"
    out.mkdir(parents=True)
    (out / "stale.txt").write_text("from an older run")
    work = tmp_path / "cwd"
    work.mkdir()

    args = ["--omop_source", str(source), "--output_folder", f"s3a://cdm{out}", *options, "--overwrite"]
    result = spark_submit(prepare_module.__file__, args, work)

    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "omop_vocab",
        "patient_sequence",
        "prepare_report.json",
        "prompts",
    ]
    assert sorted(p.name for p in (tmp_path / "bucket").iterdir()) == ["out"]  # no staging left behind
    assert list(work.iterdir()) == []
    for split in ("train", "test"):
        written = pq.read_table(out / "patient_sequence" / split)
        local = pq.read_table(tmp_path / "local" / "patient_sequence" / split)
        assert written.schema == local.schema and written.to_pylist() == local.to_pylist(), split
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["output_folder"] == f"s3a://cdm{out}"
    timings = {"seconds", "events_per_second", "output_folder", "vocabulary_folder", "prompts_folder"}
    assert {k: v for k, v in report.items() if k not in timings} == {
        k: v for k, v in expected.items() if k not in timings
    }
    assert report["vocabulary_rows"]["concept"] == len(pq.read_table(out / "omop_vocab" / "concept"))


def test_bucket_root_as_output_folder_fails_with_one_line(tmp_path, capsys):
    source = write_csv(tmp_path / "omop", tiny_omop())
    assert main(["--omop_source", str(source), "--output_folder", "s3a://bucket"]) == 2
    assert capsys.readouterr().err == (
        "error: --output_folder 's3a://bucket': expected a folder below a root or bucket\n"
    )


def test_the_test_fraction_defaults_to_one_value_everywhere(capsys):
    import inspect

    from cehrgpt.data import DEFAULT_TEST_FRACTION
    from cehrgpt.pipeline.local import LOCAL_DEFAULTS

    assert DEFAULT_TEST_FRACTION == 0.2
    assert inspect.signature(prepare).parameters["test_fraction"].default == DEFAULT_TEST_FRACTION
    assert LOCAL_DEFAULTS["test_fraction"] == DEFAULT_TEST_FRACTION
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "share of persons held out as the test split (default: 0.2, as in the pipelines)" in help_text


# --- output folders it did not write, a killed run's staging, empty tables (issue 17) ------------------------


def test_a_folder_prepare_did_not_write_is_refused_and_left_as_it_was(spark, tmp_path, capsys):
    source = write_csv(tmp_path / "omop", tiny_omop())
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.docx").write_text("years of work")
    assert main(["--omop_source", str(source), "--output_folder", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"error: --output_folder {out}: holds thesis.docx and no prepare_report.json, so prepare did not "
        "write it; give an empty or new folder, or --overwrite to replace it\n"
    )
    assert sorted(p.name for p in out.iterdir()) == ["thesis.docx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["omop", "out"]


def test_a_prepare_output_with_an_extra_file_is_refused_before_anything_is_replaced(spark, tmp_path, capsys):
    source = write_csv(tmp_path / "omop", tiny_omop())
    out = tmp_path / "out"
    _run(spark, source, out)
    (out / "notes.txt").write_text("mine")
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    with pytest.raises(
        ValueError, match=r"holds notes.txt, which this run does not write; remove it or give "
    ):
        _run(spark, source, out)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["omop", "out"]


def test_a_killed_runs_staging_is_removed_by_the_next_run_in_one_line(spark, tmp_path, caplog):
    import logging

    source = write_csv(tmp_path / "omop", tiny_omop())
    for stale in (".out.tmp-dead0001", ".out.tmp-dead0002"):
        (tmp_path / stale / "patient_sequence").mkdir(parents=True)
    (tmp_path / ".other.tmp-keep0001").mkdir()  # another output's staging: not this run's business
    with caplog.at_level(logging.WARNING, logger="cehrgpt.data.prepare"):
        _run(spark, source, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-keep0001", "omop", "out"]
    assert [r.getMessage() for r in caplog.records if "did not finish" in r.getMessage()] == [
        f"removing .out.tmp-dead0001, .out.tmp-dead0002 in {tmp_path}, left by a prepare run that did not finish"
    ]


def test_an_empty_source_table_is_warned_about_and_reported(spark, tmp_path, caplog):
    import logging

    source = write_parquet(tmp_path / "omop", tiny_omop())
    part = source / "procedure_occurrence" / "part-0.parquet"
    pq.write_table(pq.read_table(part).slice(0, 0), part)  # the columns, no rows
    with caplog.at_level(logging.WARNING, logger="cehrgpt.data.prepare"):
        report = _run(spark, source, tmp_path / "out")
    assert report["empty_tables"] == ["procedure_occurrence"]
    assert "source table procedure_occurrence is empty" in [r.getMessage() for r in caplog.records]


def test_a_source_without_persons_fails_with_one_line_naming_it(spark, tmp_path, capsys):
    source = write_parquet(tmp_path / "omop", tiny_omop())
    part = source / "person" / "part-0.parquet"
    pq.write_table(pq.read_table(part).slice(0, 0), part)  # the columns, no rows
    out = tmp_path / "out"
    code = main(["--omop_source", str(source), "--output_folder", str(out)])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert (code, errors) == (
        2,
        [f"error: {source}: no patients to write (the person table has 0 rows, 0 kept); nothing was written"],
    )
    assert not out.exists()


def test_an_empty_test_split_is_warned_about_and_reported(spark, tmp_path, caplog):
    import logging

    source = write_parquet(tmp_path / "omop", tiny_omop())
    with caplog.at_level(logging.WARNING, logger="cehrgpt.data.prepare"):
        report = _run(spark, source, tmp_path / "out", test_fraction=0.01)
    train = report["persons"]["per_split"]["train"]
    assert report["persons"]["per_split"]["test"] == 0
    warning = (
        f"the test split is empty: --test_fraction 0.01 of {train} persons put none in it; the analyses "
        "that compare with held-out patients (fidelity, utility, privacy) need some"
    )
    assert report["warnings"] == [warning]
    assert warning in [r.getMessage() for r in caplog.records]
