"""Values through the ETL: a hand-made OMOP set with lab numbers, units, a categorical observation and drug
durations, written as parquet and prepared by real local Spark; and the per-event choice on its own."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from data_omop_fixtures import VALUED_TOKENS, valued_omop, write_parquet

from cehrgpt import grammar, values
from cehrgpt.data import value_tokens as vt
from cehrgpt.data.prepare import main, prepare

DOMAINS = "drug,measurement,observation"


def _rows(out: Path, split: str) -> list[dict]:
    return sorted(pq.read_table(out / "patient_sequence" / split).to_pylist(), key=lambda r: r["person_id"])


@pytest.fixture(scope="module")
def valued(spark, tmp_path_factory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("valued")
    source = write_parquet(root / "omop", valued_omop())
    report = prepare(
        str(source),
        str(root / "out"),
        spark=spark,
        seed=1,
        domains=DOMAINS,
        value_bins=4,
        min_concept_patients=3,
    )
    return source, root / "out", report


def test_each_value_follows_its_concept_and_the_sequences_stay_grammatical(valued):
    _, out, _ = valued
    rows = _rows(out, "train") + _rows(out, "test")
    assert {r["person_id"]: r["concept_ids"] for r in rows} == VALUED_TOKENS
    assert [r["person_id"] for r in _rows(out, "test")] == [6]
    assert all(grammar.is_valid(r["concept_ids"]) for r in rows)
    for row in rows:  # the value token has its concept's age, date and visit
        for column in ("ages", "dates", "visit_concept_ids", "visit_concept_orders"):
            assert len(row[column]) == len(row["concept_ids"]) == row["num_of_concepts"]
        assert set(row["ages"][4:]) == {40} and set(row["visit_concept_ids"][4:]) == {"9202"}


def test_value_columns_record_the_source_value_on_the_concepts_entry(valued):
    _, out, _ = valued
    table = pq.read_table(out / "patient_sequence" / "train")
    assert [(f.name, str(f.type)) for f in table.schema][8:] == [
        ("concept_value_masks", "list<element: int32>"),
        ("number_as_values", "list<element: float>"),
        ("concept_as_values", "list<element: string>"),
        ("is_numeric_types", "list<element: int32>"),
        ("units", "list<element: string>"),
    ]
    person_1 = _rows(out, "train")[0]
    n = len(person_1["concept_ids"])
    lab = {10: (1.0, "8876"), 12: (6.0, "8876"), 14: (11.0, "8876"), 16: (16.0, "8840")}
    assert person_1["concept_value_masks"] == [int(i in lab or i == 19) for i in range(n)]
    assert person_1["is_numeric_types"] == [int(i in lab) for i in range(n)]
    assert person_1["number_as_values"] == [lab[i][0] if i in lab else None for i in range(n)]
    assert person_1["units"] == [lab[i][1] if i in lab else None for i in range(n)]
    assert person_1["concept_as_values"] == ["4181412" if i == 19 else None for i in range(n)]


def test_bins_are_learned_on_the_training_split_only(valued):
    _, out, _ = valued
    bins = values.read_value_bins(out / "omop_vocab")
    assert bins is not None
    # training values 1..20 (person 6's 1000 is in the test split, the NaN is not finite):
    # quantiles 0.01, 0.25, 0.5, 0.75, 0.99 of 20 values are the 1st, 5th, 10th, 15th and 20th
    assert bins.numbers == {
        3004249: values.NumberBins(
            edges=[1.0, 5.0, 10.0, 15.0, 20.0],
            unit_concept_id=8876,
            patients=5,
            values=20,
            other_unit_values=1,
        )
    }  # 3013682: two patients, fewer than 3: no bins
    assert bins.categories == {4275495: [4181412]}  # 4328749: one patient; (3004249, 4181412): one
    assert bins.duration_days == {"dur:7": 8}  # 7, 8, 10 days from 3 patients; other bins 1 patient each
    assert (bins.num_bins, bins.min_concept_patients) == (4, 3)


def test_report_counts_values_per_class_and_per_reason(valued):
    _, out, report = valued
    assert json.loads((out / "prepare_report.json").read_text())["values"] == report["values"]
    assert report["values"] == {
        "enabled": True,
        "num_bins": 4,
        "min_concept_patients": 3,
        "tokens_written": {"number": 21, "category": 3, "duration": 7},
        "concepts_with_bins": 1,
        "concepts_without_bins": 1,
        "categories_with_token": 1,
        "categories_without_token": 2,
        "duration_bins_with_median": 1,
        "dropped": {
            "rare_concept": 2,
            "rare_category": 1,
            "non_finite": 1,
            "negative_duration": 1,
            "category_after_number": 1,
        },
        "training_values_with_another_unit": 1,
    }
    assert report["options"]["values"] is True


def test_no_values_gives_the_sequences_without_value_tokens(valued, tmp_path, capsys):
    source, _, _ = valued
    out, vocabulary = tmp_path / "out", tmp_path / "vocabulary"
    argv = ["--omop_source", str(source), "--output_folder", str(out), "--domains", DOMAINS, "--seed", "1"]
    assert main([*argv, "--vocabulary_folder", str(vocabulary), "--no_values"]) == 0
    rows = _rows(out, "train") + _rows(out, "test")
    assert {r["person_id"]: r["concept_ids"] for r in rows} == {
        pid: [t for t in tokens if grammar.value_class(t) == grammar.ValueClass.NONE]
        for pid, tokens in VALUED_TOKENS.items()
    }
    assert pq.read_table(out / "patient_sequence" / "train").column_names == [
        "person_id",
        "concept_ids",
        "ages",
        "dates",
        "visit_concept_ids",
        "visit_concept_orders",
        "num_of_visits",
        "num_of_concepts",
    ]
    assert [p.name for p in vocabulary.iterdir()] == ["concept"]  # no value_bins.json
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["values"] == {"enabled": False}


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--value_bins", "0"], "error: --value_bins: 0 is not a number of bins in 1..99\n"),
        (["--min_concept_patients", "0"], "error: --min_concept_patients: 0 is not a count of 1 or more\n"),
    ],
)
def test_bad_value_options_fail_with_one_line(tmp_path, capsys, option, message):
    assert main(["--omop_source", str(tmp_path), "--output_folder", str(tmp_path / "out"), *option]) == 2
    assert capsys.readouterr().err == message


def test_the_default_small_cell_threshold_is_the_tokenizers():
    from cehrgpt.models.tokenizer import DEFAULT_MIN_CONCEPT_PATIENTS

    assert values.DEFAULT_MIN_CONCEPT_PATIENTS == DEFAULT_MIN_CONCEPT_PATIENTS == 10


CODER = vt.ValueCoder(
    values.ValueBins(
        numbers={1: values.NumberBins([0.0, 1.0, 2.0], 8876, 10, 10, 0)},
        categories={1: [5], 2: [5]},
    )
)


@pytest.mark.parametrize(
    ("event", "token", "dropped"),
    [
        ((1, 1.5, None, 8876, None), "v:2", []),
        ((1, 99.0, 5, 0, None), "v:2", ["category_after_number"]),  # a number before a category
        ((1, math.inf, 5, None, None), "vc:5", ["non_finite"]),  # falls back to the category
        ((3, 1.0, None, None, None), None, ["rare_concept"]),
        ((2, None, 6, None, None), None, ["rare_category"]),
        ((2, None, 0, None, None), None, []),  # value_as_concept_id 0: no value
        ((7, None, None, None, 0), None, []),  # ends the day it starts
        ((7, None, None, None, -1), None, ["negative_duration"]),
        ((7, None, None, None, 29), "dur:28", []),
    ],
)
def test_one_value_token_per_event_at_most(event, token, dropped):
    value, reasons = CODER.choose(*event)
    assert (value.token if value else None, reasons) == (token, dropped)
    if value is not None:
        assert value.unit_concept_id is None or value.unit_concept_id == 8876
