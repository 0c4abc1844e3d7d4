"""The utility analysis (TSTR against TRTR): task derivation by hand, then the CLI on seeded sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from analysis_sequences import write_patients

from cehrgpt import grammar
from cehrgpt.analysis import utility

VS, VE, END = grammar.VISIT_START, grammar.VISIT_END, grammar.END


def prompt(age: int = 40, gender: int = 8507, race: int = 8527) -> list[str]:
    return ["year:2000", f"age:{age}", str(gender), str(race)]


# Day 0 is the first visit; the first year is days 0..364, the follow-up day 365 on.
HAND_MADE = [
    # history {101, 102, 103} (days 0 and 100), follow-up {101, 201} (day 400)
    [
        *prompt(),
        VS,
        "9202",
        "101",
        "102",
        VE,
        "D100",
        VS,
        "9202",
        "103",
        VE,
        "D300",
        VS,
        "9202",
        "201",
        "101",
        VE,
        END,
    ],
    # one visit only: no follow-up
    [*prompt(), VS, "9202", "101", VE, END],
    # day 365 is already follow-up
    [*prompt(50, 8532), VS, "9202", "101", VE, "D365", VS, "9202", "202", VE, END],
    # an inpatient stay crossing the boundary: 101 on day 0, 102 on day 364, 103 on day 365 (8536 is the discharge)
    [*prompt(30, 8532, 8516), VS, "9201", "101", "i-D364", "102", "i-D1", "103", "8536", VE, END],
    # not a whole patient: excluded
    [*prompt(), VS, "9202", "101"],
    # a follow-up holding only the unknown concept: in the cohort, negative for every task
    [*prompt(60), VS, "9202", "101", VE, "M11", VS, "9202", "101", VE, "D40", VS, "9202", "0", VE, END],
]


def cohort_of(patients: list[list[str]], first_id: int = 1) -> utility.TaskCohort:
    ids = range(first_id, first_id + len(patients))
    return utility.split_first_year(pd.DataFrame({"person_id": list(ids), "concept_ids": patients}))


def concept_lists(patients) -> list[list[int]]:
    return [patients.concepts_of(i).tolist() for i in range(len(patients))]


def test_first_year_and_follow_up_are_split_at_day_365():
    cohort = cohort_of(HAND_MADE)
    assert cohort.history.person_ids.tolist() == [1, 3, 4, 6]
    assert concept_lists(cohort.history) == [[101, 102, 103], [101], [101, 102], [101]]
    assert concept_lists(cohort.follow_up) == [[101, 201], [202], [103], []]
    assert cohort.history.ages.tolist() == [40, 50, 30, 60]
    assert cohort.history.genders.tolist() == [8507, 8532, 8532, 8507]
    assert cohort.history.races.tolist() == [8527, 8527, 8516, 8527]
    assert (cohort.rows_read, cohort.without_follow_up, cohort.excluded) == (6, 1, 1)
    assert cohort.exclusion_reasons == {"sequence ends": 1}


def test_rows_flagged_invalid_are_excluded():
    frame = pd.DataFrame(
        {"person_id": [1, 3], "concept_ids": [HAND_MADE[0], HAND_MADE[2]], "is_valid": [True, False]}
    )
    cohort = utility.split_first_year(frame)
    assert cohort.history.person_ids.tolist() == [1]
    assert (cohort.rows_read, cohort.excluded, cohort.exclusion_reasons) == (2, 1, {"is_valid is false": 1})


def test_new_onset_counts_and_labels():
    cohort = cohort_of(HAND_MADE)
    counts = utility.onset_counts(cohort)
    # 101 recurs (every patient has it in the first year); 103 is new only for patient 4 (patient 1 had it)
    assert counts.to_dict("list") == {
        "concept_id": [103, 201, 202],
        "positives": [1, 1, 1],
        "negatives": [2, 3, 3],
    }
    rows, labels = utility.task_labels(cohort, 103)
    assert rows.tolist() == [1, 2, 3]
    assert labels.tolist() == [False, True, False]


def test_tasks_rank_by_training_positives_and_count_those_the_synthetic_set_lacks():
    real = cohort_of(HAND_MADE)
    synthetic = cohort_of([HAND_MADE[2], HAND_MADE[3]])  # no 201: that task cannot be trained on it
    cohorts = {"training": real, "evaluation": real, "synthetic": synthetic}
    tasks, skipped = utility.choose_tasks(cohorts, num_tasks=10, min_task_patients=1)
    assert tasks["concept_id"].tolist() == [103, 202]
    assert skipped == 1
    assert tasks.iloc[0].to_dict() == {
        "concept_id": 103,
        "training_positives": 1,
        "training_patients": 3,
        "synthetic_positives": 1,
        "synthetic_patients": 2,
        "evaluation_positives": 1,
        "evaluation_patients": 3,
    }
    first, skipped = utility.choose_tasks(cohorts, num_tasks=1, min_task_patients=1)
    assert (first["concept_id"].tolist(), skipped) == ([103], 0)
    none, _ = utility.choose_tasks(cohorts, num_tasks=10, min_task_patients=2)
    assert none.empty


# --- the CLI on seeded sets in which the first year predicts the follow-up -------------------------------------


def signal_patients(n: int, seed: int, scrambled: bool = False) -> list[list[str]]:
    """Concept 101 in the first year makes 500 likely later, 102 makes 501 likely; ``scrambled`` swaps the labels.

    (Swapped rather than shuffled: with shuffled labels a model's noise coefficients pick the sign of
    its test AUROC's distance from 0.5 by chance, so the gap would be a coin toss.)
    """
    rng = np.random.default_rng(seed)
    patients = []
    for _ in range(n):
        exposed = bool(rng.random() < 0.5)
        driver = exposed != scrambled
        follow = ["600"]
        if rng.random() < (0.85 if driver else 0.15):
            follow.append("500")
        if rng.random() < (0.15 if driver else 0.85):
            follow.append("501")
        history = ["101" if exposed else "102", str(300 + int(rng.integers(5)))]
        age = int(rng.integers(20, 80))
        gender = 8507 if rng.random() < 0.5 else 8532
        patients.append(
            [*prompt(age, gender), VS, "9202", *history, VE, "D400", VS, "9202", *follow, VE, END]
        )
    return patients


@pytest.fixture
def sets(tmp_path: Path) -> dict[str, Path]:
    training = signal_patients(200, seed=1)
    return {
        "training": write_patients(tmp_path / "train", training),
        "evaluation": write_patients(tmp_path / "test", signal_patients(100, seed=2), first_id=1000),
        "copy": write_patients(tmp_path / "copy", training),
        "scrambled": write_patients(tmp_path / "scrambled", signal_patients(200, seed=3, scrambled=True)),
    }


def run(sets: dict[str, Path], synthetic: Path | str, out: Path, *extra: str) -> int:
    return utility.main(
        [
            "--training_data_folder",
            str(sets["training"]),
            "--evaluation_data_folder",
            str(sets["evaluation"]),
            "--synthetic_data_folder",
            str(synthetic),
            "--output_folder",
            str(out),
            *extra,
        ]
    )


def metrics_of(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def test_a_copy_of_the_training_set_scores_as_the_training_set(sets, tmp_path, capsys):
    assert run(sets, sets["copy"], tmp_path / "out") == 0
    metrics = metrics_of(tmp_path / "out")
    assert metrics["utility_num_tasks"] == 2
    assert [metrics["utility_task_1_concept_id"], metrics["utility_task_2_concept_id"]] in (
        [500, 501],
        [501, 500],
    )
    for rank in (1, 2):
        assert metrics[f"utility_task_{rank}_tstr_auroc"] == metrics[f"utility_task_{rank}_trtr_auroc"]
        assert metrics[f"utility_task_{rank}_trtr_auroc"] > 0.75
    assert metrics["utility_auroc_gap_mean"] == 0.0
    assert metrics["utility_num_evaluation_patients"] == 100
    assert metrics["utility_num_tasks_skipped_synthetic"] == 0
    tasks = pd.read_parquet(tmp_path / "out" / "utility_tasks.parquet")
    assert tasks["training_positives"].tolist() == [
        metrics["utility_task_1_training_positives"],
        metrics["utility_task_2_training_positives"],
    ]
    report = (tmp_path / "out" / "report.html").read_text()
    assert "<section id='utility'>" in report and "<td>500</td>" in report and "<td>501</td>" in report
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["utility_auroc_gap_mean"] == 0.0
    assert "utility_auroc_gap_mean" in capsys.readouterr().out


def test_synthetic_patients_with_scrambled_labels_leave_a_gap(sets, tmp_path):
    assert run(sets, sets["scrambled"], tmp_path / "out") == 0
    metrics = metrics_of(tmp_path / "out")
    assert metrics["utility_num_tasks"] == 2
    assert metrics["utility_trtr_auroc_mean"] > 0.75
    assert metrics["utility_tstr_auroc_mean"] < 0.5
    assert metrics["utility_auroc_gap_mean"] > 0.4
    assert metrics["utility_auroc_gap_mean"] == pytest.approx(
        metrics["utility_trtr_auroc_mean"] - metrics["utility_tstr_auroc_mean"]
    )


def test_the_seed_makes_runs_reproducible(sets, tmp_path):
    for name in ("a", "b"):
        assert run(sets, sets["scrambled"], tmp_path / name, "--seed", "7") == 0
    assert (tmp_path / "a" / "metrics.json").read_bytes() == (tmp_path / "b" / "metrics.json").read_bytes()


def test_synthetic_rows_that_are_not_whole_patients_are_counted(sets, tmp_path, capsys):
    broken = [p[:-3] for p in signal_patients(5, seed=4)]  # cut inside the last visit
    folder = write_patients(tmp_path / "mixed", signal_patients(200, seed=1) + broken)
    assert run(sets, folder, tmp_path / "out") == 0
    assert metrics_of(tmp_path / "out")["utility_num_synthetic_excluded"] == 5
    assert "5 row(s) that are not whole patients were excluded" in capsys.readouterr().err


def error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and lines[-1].startswith("error: ")
    return lines[-1]


def test_missing_and_empty_folders(sets, tmp_path, capsys):
    assert run(sets, tmp_path / "nowhere", tmp_path / "out") == 2
    assert "--synthetic_data_folder" in error_line(capsys) and not (tmp_path / "out").exists()
    (tmp_path / "empty").mkdir()
    assert run(sets, tmp_path / "empty", tmp_path / "out") == 2
    assert "holds no .parquet files" in error_line(capsys) and not (tmp_path / "out").exists()


def test_no_grammar_valid_synthetic_patient(sets, tmp_path, capsys):
    folder = write_patients(tmp_path / "broken", [p[:-3] for p in signal_patients(5, seed=4)])
    assert run(sets, folder, tmp_path / "out") == 2
    assert "holds no whole patient under the grammar" in error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_fewer_than_20_held_out_patients_with_a_follow_up(sets, tmp_path, capsys):
    sets["evaluation"] = write_patients(tmp_path / "small", signal_patients(19, seed=5))
    assert run(sets, sets["copy"], tmp_path / "out") == 2
    assert "holds 19 patient(s) with a follow-up after their first year; expected at least 20" in error_line(
        capsys
    )
    assert not (tmp_path / "out").exists()


def test_no_task_with_enough_positives_is_said_and_leaves_the_means_out(sets, tmp_path, capsys):
    """A release too small for any task: utility is not measured, the rest is written (exit 0)."""
    assert run(sets, sets["copy"], tmp_path / "out", "--min_task_patients", "150") == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if line.startswith("warning: utility not measured")] == [
        (
            "warning: utility not measured: no concept has 150 new-onset positives and as many negatives "
            "after the first year in the training, synthetic and held-out sets (0 candidate(s) lacked them "
            "only in the synthetic set); larger sets or a smaller --min_task_patients measure it"
        )
    ]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["utility_num_tasks"] == 0
    assert not any(name.endswith("_auroc_mean") or name == "utility_auroc_gap_mean" for name in metrics)
    assert (tmp_path / "out" / "report.html").exists()


def test_only_single_visit_patients(sets, tmp_path, capsys):
    folder = write_patients(tmp_path / "short", [HAND_MADE[1]] * 30)
    assert run(sets, folder, tmp_path / "out") == 2
    assert "none of its 30 patient(s) has an event 365 days or more after their first visit" in error_line(
        capsys
    )


@pytest.mark.parametrize("flag", ["--num_tasks", "--min_task_patients"])
def test_non_positive_counts(sets, tmp_path, capsys, flag):
    assert run(sets, sets["copy"], tmp_path / "out", flag, "0") == 2
    assert f"{flag} is 0" in error_line(capsys)
    assert not (tmp_path / "out").exists()
