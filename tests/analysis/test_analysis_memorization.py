"""Memorisation: copy shares, the size-corrected copy excess, DCRs, the id list and bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from analysis_sequences import patient_tokens

from cehrgpt.analysis.privacy import memorization

# Every record unique: training patients carry concept 1000+i, held-out 3000+i, novel synthetic 5000+i.
TRAIN = [patient_tokens(20 + i % 40, [1000 + i, 2000 + i % 7]) for i in range(60)]
HELD_OUT = [patient_tokens(20 + i % 40, [3000 + i, 2000 + i % 7]) for i in range(30)]
NOVEL = [patient_tokens(20 + i % 40, [5000 + i, 2000 + i % 7]) for i in range(45)]
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


def test_ten_percent_verbatim_training_patients(make_folder, tmp_path):
    synthetic = [*TRAIN[:5], *NOVEL, BROKEN]
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
        "training_patients_with_sequence": [1, 1, 1, 1, 1],
    }
    assert (tmp_path / "out" / "memorized_person_ids.csv").read_text().split() == [
        "person_id", "1", "2", "3", "4", "5",
    ]  # fmt: skip
    dcr = pd.read_parquet(tmp_path / "out" / "dcr.parquet")
    assert len(dcr) == 50 and (dcr["dcr_train"].iloc[:5] == 0).all()


def test_the_training_set_itself(make_folder, tmp_path):
    metrics = run(make_folder, tmp_path, TRAIN)
    assert metrics["memorization_copy_share_train"] == 1.0
    assert metrics["memorization_copy_excess"] == pytest.approx(1.0)
    assert metrics["memorization_dcr_closer_to_train_share"] == 1.0
    assert metrics["memorization_dcr_train_p5"] == 0.0
    assert metrics["memorization_dcr_holdout_p5"] > 0


def test_held_out_patients_as_a_release(make_folder, tmp_path):
    metrics = run(make_folder, tmp_path, HELD_OUT)
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
    rng = np.random.default_rng(0)
    # training 5 = two parts of 2 and a remainder of 1; code 7 is in every training patient
    training = np.array([7, 7, 7, 7, 7])
    held_out = np.array([7, 8])
    synthetic = np.array([7, 9])
    # parts: 3 (two full + remainder) × ½ ; control: 2 full parts × ½ + remainder sample (7 or 8): ½ or 0
    assert memorization.copy_excess(synthetic, training, held_out, rng) in (0.0, 0.5)


def test_closer_to_train_share_is_one_half_at_the_size_ratio():
    d_train, d_held_out = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 1.0])
    ties_train, ties_held_out = np.array([1, 3, 1]), np.array([1, 1, 1])
    scores, share = memorization.closer_to_train_share(d_train, ties_train, d_held_out, ties_held_out, 0.75)
    assert scores.tolist() == [1.0, 0.75, 0.0]  # a tie splits by the tied records' training share
    p = 1.75 / 3
    assert share == pytest.approx(p * 0.25 / (p * 0.25 + (1 - p) * 0.75))
    assert memorization.closer_to_train_share(d_train, ties_train, d_held_out, ties_held_out, p)[1] == 0.5


def test_the_seed_makes_runs_reproducible(make_folder, tmp_path):
    first = run(make_folder, tmp_path, [*TRAIN[:5], *NOVEL], seed=9)
    again = run(make_folder, tmp_path, [*TRAIN[:5], *NOVEL], seed=9)
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
