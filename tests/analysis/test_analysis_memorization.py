"""Memorisation: copy shares, the size-corrected copy excess, DCRs, the id list and bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from analysis_sequences import (
    NEAR_COPY_EDITS,
    as_generated,
    as_stored,
    near_copy,
    patient_tokens,
    timeline_patient,
)

from cehrgpt.analysis.privacy import memorization

# Every record unique: training patients carry concept 1000+i, held-out 3000+i, novel synthetic 5000+i.
# Real rows as the ETL writes them (no [END]); synthetic rows as the generator writes them (closed by [END]).
TRAIN = [as_stored(patient_tokens(20 + i % 40, [1000 + i, 2000 + i % 7])) for i in range(60)]
HELD_OUT = [as_stored(patient_tokens(20 + i % 40, [3000 + i, 2000 + i % 7])) for i in range(30)]
NOVEL = [patient_tokens(20 + i % 40, [5000 + i, 2000 + i % 7]) for i in range(45)]
COPIED = [as_generated(t) for t in TRAIN]
BROKEN = ["year:2000", "age:3", "8507"]  # not a whole patient: excluded and counted


def run(make_folder, tmp_path, synthetic, train=TRAIN, held_out=HELD_OUT, seed=3) -> dict:
    out = tmp_path / "out"
    argv = [
        "--training_data_folder", make_folder("train", train),
        "--evaluation_data_folder", make_folder("held_out", held_out),
        "--synthetic_data_folder", make_folder("synthetic", synthetic),
        "--output_folder", str(out),
        "--seed", str(seed),
    ]  # fmt: skip
    assert memorization.main(argv) == 0
    return json.loads((out / "metrics.json").read_text())


def test_ten_percent_verbatim_training_patients_as_the_generator_writes_them(make_folder, tmp_path):
    synthetic = [*COPIED[:5], *NOVEL, BROKEN]
    metrics = run(make_folder, tmp_path, synthetic)
    assert metrics["memorization_copy_share_train"] == pytest.approx(0.1)
    assert metrics["memorization_copy_share_holdout"] == 0.0
    assert metrics["memorization_copy_excess"] == pytest.approx(0.1)
    assert metrics["memorization_num_copies_train"] == 5
    assert metrics["memorization_num_synthetic_patients"] == 50
    assert metrics["memorization_num_synthetic_excluded"] == 1
    assert metrics["memorization_dcr_closer_to_train_share"] > 0.5
    copies = pd.read_parquet(tmp_path / "out" / "memorized_patients.parquet")
    # synthetic person ids are 1.. in row order: the first five rows copy training patients 1..5
    assert copies.to_dict("list") == {
        "person_id": [1, 2, 3, 4, 5],
        "training_person_id": [1, 2, 3, 4, 5],
        "kind": ["copy"] * 5,
        "timeline_overlap": [1.0] * 5,
        "training_patients_with_sequence": [1, 1, 1, 1, 1],
    }
    assert (tmp_path / "out" / "memorized_person_ids.csv").read_text().split() == [
        "person_id,training_person_id,kind", "1,1,copy", "2,2,copy", "3,3,copy", "4,4,copy", "5,5,copy",
    ]  # fmt: skip
    dcr = pd.read_parquet(tmp_path / "out" / "dcr.parquet")
    assert len(dcr) == 50 and (dcr["dcr_train"].iloc[:5] == 0).all()


def test_the_training_set_itself(make_folder, tmp_path):
    metrics = run(make_folder, tmp_path, COPIED)
    assert metrics["memorization_copy_share_train"] == 1.0
    assert metrics["memorization_copy_excess"] == pytest.approx(1.0)
    assert metrics["memorization_dcr_closer_to_train_share"] == 1.0
    assert metrics["memorization_dcr_train_p5"] == 0.0
    assert metrics["memorization_dcr_holdout_p5"] > 0


def test_held_out_patients_as_a_release(make_folder, tmp_path):
    metrics = run(make_folder, tmp_path, [as_generated(t) for t in HELD_OUT])
    assert metrics["memorization_copy_share_train"] == 0.0
    assert metrics["memorization_copy_share_holdout"] == 1.0
    # training is two held-out-sized parts; each part's control (the held-out set) holds every record
    assert metrics["memorization_copy_excess"] == pytest.approx(-2.0)
    assert metrics["memorization_dcr_closer_to_train_share"] == 0.0
    assert metrics["memorization_dcr_holdout_p5"] == 0.0


def test_a_record_common_to_training_and_held_out_is_chance_not_a_copy(make_folder, tmp_path):
    short = patient_tokens(50, [777])
    train = [*TRAIN[:29], short]  # as many training as held-out patients: one part, no remainder
    held_out = [*HELD_OUT[:29], short]
    synthetic = [short, *NOVEL[:9]]
    metrics = run(make_folder, tmp_path, synthetic, train=train, held_out=held_out)
    assert metrics["memorization_copy_share_train"] == pytest.approx(0.1)
    assert metrics["memorization_copy_share_holdout"] == pytest.approx(0.1)
    assert metrics["memorization_copy_excess"] == 0.0


def test_copy_excess_counts_a_record_once_per_part_that_holds_it():
    # training 5 = two parts of 2 and a remainder of 1; code 7 is in every training patient
    training = np.array([7, 7, 7, 7, 7])
    held_out = np.array([7, 8])
    synthetic = np.array([7, 9])
    # parts: 3 (two full + remainder) × ½ ; control: 2 full parts × ½ + remainder sample (7 or 8): ½ or 0
    for sample, expected in (([0], 0.0), ([1], 0.5)):
        partition = memorization.Partition(
            part_of=np.array([0, 0, 1, 1, 2]), full_parts=2, remainder_sample=np.array(sample)
        )
        assert memorization.copy_excess(synthetic, training, held_out, partition) == expected


def test_a_training_row_and_its_generated_copy_are_the_same_patient():
    stored = pd.Series([TRAIN[0], TRAIN[1]])
    generated = pd.Series([as_generated(TRAIN[0]), [*TRAIN[1], "[END]", "[PAD]", "[PAD]"]])
    shifted = pd.Series([["year:2001", *TRAIN[0][1:], "[END]"]])
    codes = memorization.sequence_codes(stored, generated, shifted)
    assert codes[0].tolist() == codes[1].tolist() == [0, 1]
    assert codes[2].tolist() == [2]  # another calendar: not a verbatim copy ...
    no_calendar = memorization.sequence_codes(stored, shifted, calendar=False)
    assert no_calendar[1].tolist() == [0]  # ... but the same patient once the year is set aside


def test_closer_to_train_share_is_one_half_at_the_size_ratio():
    d_train, d_held_out = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 1.0])
    ties_train, ties_held_out = np.array([1, 3, 1]), np.array([1, 1, 1])
    scores, share = memorization.closer_to_train_share(d_train, ties_train, d_held_out, ties_held_out, 0.75)
    assert scores.tolist() == [1.0, 0.75, 0.0]  # a tie splits by the tied records' training share
    p = 1.75 / 3
    assert share == pytest.approx(p * 0.25 / (p * 0.25 + (1 - p) * 0.75))
    assert memorization.closer_to_train_share(d_train, ties_train, d_held_out, ties_held_out, p)[1] == 0.5


def test_the_seed_makes_runs_reproducible(make_folder, tmp_path):
    first = run(make_folder, tmp_path, [*COPIED[:5], *NOVEL], seed=9)
    again = run(make_folder, tmp_path, [*COPIED[:5], *NOVEL], seed=9)
    assert first == again


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("few_held_out", "holds 19 held-out patient(s); expected at least 20 for a held-out control"),
        ("empty", "holds no .parquet files"),
        ("no_valid", "holds no parseable patient (1 row(s) excluded"),
    ],
)
def test_bad_input_is_one_line_and_nothing_written(make_folder, tmp_path, capsys, case, message):
    held_out = make_folder("held_out", HELD_OUT[:19] if case == "few_held_out" else HELD_OUT)
    synthetic = make_folder("synthetic", [BROKEN] if case == "no_valid" else NOVEL)
    if case == "empty":
        synthetic = str(tmp_path / "empty")
        Path(synthetic).mkdir()
    out = tmp_path / "out"
    argv = [
        "--training_data_folder", make_folder("train", TRAIN),
        "--evaluation_data_folder", held_out,
        "--synthetic_data_folder", synthetic,
        "--output_folder", str(out),
    ]  # fmt: skip
    assert memorization.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists()


# Longer patients (6 outpatient visits of 3 concepts, 18 distinct concepts each): identifying records.
def long_patient(base: int, i: int, **kwargs) -> list[str]:
    visits = [[base + 100 * i + 3 * v + k for k in range(3)] for v in range(6)]
    return timeline_patient(20 + i % 40, visits, **kwargs)


LONG_TRAIN = [long_patient(10000, i) for i in range(40)]
LONG_HELD_OUT = [long_patient(20000, i) for i in range(20)]
LONG_NOVEL = [as_generated(long_patient(30000, i)) for i in range(45)]


@pytest.mark.parametrize("kind", NEAR_COPY_EDITS)
def test_ten_percent_near_copies_of_every_kind(make_folder, tmp_path, kind):
    label = "copy_shifted_calendar" if kind == "year_shifted" else "near_copy"
    rng = np.random.default_rng(5)
    synthetic = [near_copy(LONG_TRAIN[i], kind, rng) for i in range(5)] + LONG_NOVEL
    metrics = run(make_folder, tmp_path, synthetic, train=LONG_TRAIN, held_out=LONG_HELD_OUT)
    assert metrics["memorization_copy_share_train"] == 0.0
    assert metrics["memorization_shifted_copy_excess"] == (0.1 if kind == "year_shifted" else 0.0)
    assert metrics["memorization_near_copy_share_train"] == pytest.approx(0.1)
    assert metrics["memorization_near_copy_share_holdout"] == 0.0
    # 40 training = 2 parts of 20; each near copy nears exactly one part, the held-out control nothing
    assert metrics["memorization_near_copy_excess"] == pytest.approx(0.1)
    se = np.std([1.0] * 5 + [0.0] * 45, ddof=1) / np.sqrt(50)
    assert metrics["memorization_near_copy_excess_se"] == pytest.approx(se)
    assert metrics["memorization_near_copy_excess_lower"] == pytest.approx(
        0.1 - memorization.LOWER_BOUND_Z * se
    )
    assert metrics["memorization_near_copy_excess_lower"] > 0.01  # the gate's default refuses it
    copies = pd.read_parquet(tmp_path / "out" / "memorized_patients.parquet")
    assert copies["person_id"].tolist() == [1, 2, 3, 4, 5]
    assert copies["training_person_id"].tolist() == [1, 2, 3, 4, 5]
    assert copies["kind"].tolist() == [label] * 5
    lines = (tmp_path / "out" / "memorized_person_ids.csv").read_text().split()
    assert lines == ["person_id,training_person_id,kind", *(f"{i},{i},{label}" for i in range(1, 6))]


def test_novel_patients_and_short_copies_are_not_near_copies(make_folder, tmp_path):
    metrics = run(make_folder, tmp_path, LONG_NOVEL, train=LONG_TRAIN, held_out=LONG_HELD_OUT)
    assert metrics["memorization_near_copy_share_train"] == 0.0
    assert metrics["memorization_near_copy_excess_lower"] == 0.0
    # two concepts identify nobody: a verbatim short copy is a copy, never a near copy
    metrics = run(make_folder, tmp_path, [*COPIED[:5], *NOVEL])
    assert metrics["memorization_num_copies_train"] == 5
    assert metrics["memorization_num_near_copies_train"] == 0


def test_near_copies_of_held_out_patients_read_negative(make_folder, tmp_path):
    rng = np.random.default_rng(5)
    synthetic = [near_copy(LONG_HELD_OUT[i], "concept_removed", rng) for i in range(5)] + LONG_NOVEL
    metrics = run(make_folder, tmp_path, synthetic, train=LONG_TRAIN, held_out=LONG_HELD_OUT)
    assert metrics["memorization_near_copy_share_holdout"] == pytest.approx(0.1)
    # two parts, each controlled by the whole held-out set: −2 per near copy
    assert metrics["memorization_near_copy_excess"] == pytest.approx(-0.2)


def with_lab_values(tokens: list[str], bins: list[int]) -> list[str]:
    """The patient with a lab (3004249) and its value bin appended to each visit, as the ETL writes values."""
    out, visit = [], 0
    for token in tokens:
        if token == "[VE]":
            out += ["3004249", f"v:{bins[visit % len(bins)]}"]
            visit += 1
        out.append(token)
    return out


VALUED_TRAIN = [
    with_lab_values(long_patient(10000, i), [1 + (i + v) % 10 for v in range(6)]) for i in range(40)
]
VALUED_HELD_OUT = [
    with_lab_values(long_patient(20000, i), [1 + (i * v) % 10 for v in range(6)]) for i in range(20)
]
VALUED_NOVEL = [as_generated(with_lab_values(long_patient(30000, i), [5])) for i in range(45)]


def shift_values(tokens: list[str], visits: int) -> list[str]:
    """The same patient with the value bins of its first ``visits`` labs moved up by one."""
    out, changed = [], 0
    for token in tokens:
        if token.startswith("v:") and changed < visits:
            token, changed = f"v:{int(token[2:]) % 10 + 1}", changed + 1
        out.append(token)
    return out


@pytest.mark.parametrize(
    ("visits_changed", "copies", "near_copies"),
    [(0, 5, 5), (1, 0, 5), (6, 0, 5)],
)
def test_values_are_part_of_what_a_copy_is(make_folder, tmp_path, visits_changed, copies, near_copies):
    """Training patients copied with their lab values are copies (and near copies, as every copy is); with
    values redrawn, one or all, the same timeline is a near copy: what the model must not copy includes
    the values, and redrawing them does not hide a memorised patient."""
    synthetic = [as_generated(shift_values(VALUED_TRAIN[i], visits_changed)) for i in range(5)] + VALUED_NOVEL
    metrics = run(make_folder, tmp_path, synthetic, train=VALUED_TRAIN, held_out=VALUED_HELD_OUT)
    assert metrics["memorization_num_copies_train"] == copies
    assert metrics["memorization_num_near_copies_train"] == near_copies
    assert metrics["memorization_num_synthetic_excluded"] == 0
