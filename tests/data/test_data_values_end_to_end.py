"""Values end to end on a small OMOP set with lab numbers, units, categorical values and drug durations made
here (real parquet, real local Spark, a real tiny GPT-2): prepare → train → generate → restore → quality.

Nothing is mocked: the model learns the values from five training patients, the constrained decoder lets a
value follow only a concept that takes it, the restore draws numbers inside the training bins and sets
units and drug end dates, and the data-quality step's value checks pass on what it wrote.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pyarrow.parquet as pq
import pytest
from data_omop_fixtures import concept_rows, valued_omop, write_parquet

from cehrgpt import grammar, values
from cehrgpt.data.prepare import prepare
from cehrgpt.generation import generate_batch_hf_gpt_sequence as generate
from cehrgpt.omop.quality import check_quality
from cehrgpt.omop.restore import restore
from cehrgpt.train import train

pytestmark = pytest.mark.slow
LAB, RARE_LAB, OBSERVATION = 3004249, 3013682, 4275495


def concept_table() -> list[dict]:
    """The set's concepts in their real domains (the restore sends each concept to its domain's table)."""
    domains = {
        8507: "Gender", 8527: "Race", 9202: "Visit", LAB: "Measurement", RARE_LAB: "Measurement",
        OBSERVATION: "Observation", 1127078: "Drug", 1127433: "Drug", 8876: "Unit", 8840: "Unit",
        4181412: "Meas Value", 4328749: "Meas Value",
    }  # fmt: skip
    return [{**row, "domain_id": domains[row["concept_id"]]} for row in concept_rows(*domains)]


@pytest.fixture(scope="module")
def released(spark, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("values_end_to_end")
    tables = valued_omop()
    tables["concept"] = concept_table()
    source = write_parquet(root / "omop", tables)
    prepare(
        str(source), str(root / "out"), spark=spark, seed=1, domains="drug,measurement,observation",
        value_bins=4, min_concept_patients=3,
    )  # fmt: skip
    train(
        root / "out" / "patient_sequence", root / "model", preset="tiny", max_steps=150, n_layer=2, n_embd=64,
        n_head=2, context_window=64, batch_size=5, learning_rate=3e-3, min_concept_patients=1, dropout=0.0,
        eval_steps=0, save_steps=0,
    )  # fmt: skip
    argv = [
        "--model_folder", str(root / "model"), "--output_folder", str(root / "gen"), "--num_of_patients", "40",
        "--batch_size", "8", "--demographic_data_path", str(root / "out" / "patient_sequence" / "train"),
        "--seed", "3", "--no_progress",
    ]  # fmt: skip
    assert generate.main(argv) == 0
    generated = next((root / "gen").glob("*/generated_sequences"))
    vocabulary = root / "out" / "omop_vocab"
    report = restore(str(generated), str(root / "omop_out"), str(vocabulary), spark=spark)
    quality = check_quality(root / "omop_out", root / "quality", vocabulary)
    return {"root": root, "generated": generated, "report": report, "quality": quality, "vocab": vocabulary}


def table(released: dict, name: str) -> list[dict]:
    return pq.read_table(released["root"] / "omop_out" / name).to_pylist()


def test_the_model_writes_values_only_where_they_fit(released):
    rows = pq.read_table(released["generated"], columns=["concept_ids"]).column(0).to_pylist()
    assert len(rows) == 40 and all(grammar.is_valid(r) for r in rows)
    pairs = [(r[i - 1], t) for r in rows for i, t in enumerate(r) if grammar.value_class(t)]
    assert {c for c, t in pairs if t.startswith("v:")} <= {str(LAB)}  # the rare lab got no bins
    assert {c for c, t in pairs if t.startswith("vc:")} <= {str(OBSERVATION)}
    assert {c for c, t in pairs if t.startswith("dur:")} <= {"1127078", "1127433"}
    assert len(pairs) >= 40  # it learned values at all: five training patients carry 35


def test_the_restore_places_every_value_with_its_unit_inside_the_training_bins(released):
    report = released["report"]
    assert report["values_placed"]["number"] > 0 and report["values_placed"]["duration"] > 0
    assert not {r for r in report["rejected_tokens"] if r.startswith("value")}
    bins = values.read_value_bins(released["vocab"])
    assert bins is not None
    low, high = bins.numbers[LAB].edges[0], bins.numbers[LAB].edges[-1]
    labs = [m for m in table(released, "measurement") if m["measurement_concept_id"] == LAB]
    numbers = [m["value_as_number"] for m in labs if m["value_as_number"] is not None]
    assert numbers and all(low <= x <= high for x in numbers)
    assert all(m["unit_concept_id"] == 8876 for m in labs if m["value_as_number"] is not None)
    assert len(numbers) >= 0.9 * len(labs)  # the bar is 95% at scale; 9 in 10 of a few dozen here
    rare = [m for m in table(released, "measurement") if m["measurement_concept_id"] == RARE_LAB]
    assert all(m["value_as_number"] is None for m in rare)
    observations = [o for o in table(released, "observation") if o["value_as_concept_id"]]
    assert observations and {o["value_as_concept_id"] for o in observations} <= {4181412}


def test_drugs_end_after_their_duration(released):
    drugs = table(released, "drug_exposure")
    lasting = [d for d in drugs if d["days_supply"] is not None]
    assert lasting and all(
        d["drug_exposure_end_date"] == d["drug_exposure_start_date"] + timedelta(days=d["days_supply"])
        for d in lasting
    )
    assert all(
        d["drug_exposure_end_date"] == d["drug_exposure_start_date"]
        for d in drugs
        if d["days_supply"] is None
    )


def test_the_quality_step_checks_the_values_and_they_pass(released):
    checks = {(c["name"], c["table"]): c for c in released["quality"]["checks"]}
    for name in (
        "measureValueCompleteness",
        "plausibleValueLow",
        "plausibleValueHigh",
        "measureUnitCompleteness",
    ):
        assert checks[(name, "measurement")]["status"] == "pass", checks[(name, "measurement")]
        assert checks[(name, "measurement")]["denominator"] > 0
    saved = json.loads((released["root"] / "quality" / "quality_report.json").read_text())
    assert saved["summary"] == released["quality"]["summary"]
