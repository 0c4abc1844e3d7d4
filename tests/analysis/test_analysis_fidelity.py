"""The fidelity report on a tiny hand-made pair of sets, every number worked out by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from analysis_sequences import patient_tokens

from cehrgpt.analysis import fidelity

PROMPT_M = ["year:2000", "age:30", "8507", "8527"]
REAL = [
    # visits {101, 102} (outpatient) and {101, 103} (inpatient, stay 3 days, discharge 8536), gap 10 days
    [
        *PROMPT_M,
        "[VS]",
        "9202",
        "101",
        "102",
        "[VE]",
        "D10",
        "[VS]",
        "9201",
        "101",
        "i-D3",
        "103",
        "8536",
        "[VE]",
        "[END]",
    ],
    ["year:2000", "age:45", "8532", "8527", "[VS]", "9202", "101", "[VE]", "[END]"],
]
SYNTHETIC = [
    ["year:2000", "age:31", "8507", "8527", "[VS]", "9202", "101", "102", "[VE]", "[END]"],
    [
        "year:2000",
        "age:52",
        "8532",
        "8527",
        "[VS]",
        "9202",
        "102",
        "[VE]",
        "D20",
        "[VS]",
        "9202",
        "101",
        "102",
        "[VE]",
        "[END]",
    ],
    ["year:2000", "age:52", "8532", "8527", "[VS]", "9202"],  # not a whole patient: excluded
]


@pytest.fixture
def report(make_folder, tmp_path):
    vocab = tmp_path / "omop_vocab" / "concept"
    vocab.mkdir(parents=True)
    pd.DataFrame({"CONCEPT_ID": [101, 102], "DOMAIN_ID": ["Condition", "Drug"]}).to_parquet(
        vocab / "c.parquet"
    )
    out = tmp_path / "fidelity"
    argv = [
        "--real_data_folder",
        make_folder("real", REAL),
        "--synthetic_data_folder",
        make_folder("syn", SYNTHETIC),
    ]
    argv += [
        "--output_folder",
        str(out),
        "--vocab_folder",
        str(tmp_path / "omop_vocab"),
        "--min_pair_support",
        "1",
    ]
    return argv, out


def test_fidelity_metrics_by_hand(report, capsys):
    argv, out = report
    assert fidelity.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # prevalence over 101, 102, 103: real [1, ½, ½], synthetic [1, 1, 0]
    #   MAD = (0 + ½ + ½)/3 = ⅓; R² = 1 - ½ / (1/6) = -2; Pearson = (1/6) / sqrt(1/6 · 2/3) = ½
    assert metrics["fidelity_prevalence_mean_abs_diff"] == pytest.approx(1 / 3)
    assert metrics["fidelity_prevalence_r2"] == pytest.approx(-2.0)
    assert metrics["fidelity_prevalence_pearson"] == pytest.approx(0.5)
    # ranks real [3, 1.5, 1.5], synthetic [2.5, 2.5, 1]: centred [1, -½, -½]·[½, ½, -1] / 1.5 = ½
    assert metrics["fidelity_prevalence_spearman"] == pytest.approx(0.5)
    # concept tokens real 101×3, 102, 103 (8536 is a discharge) → p = [.6, .2, .2];
    # synthetic 101×2, 102×3 → q = [.4, .6, 1e-10 (103 missing)]
    assert metrics["fidelity_prevalence_kl"] == pytest.approx(
        0.6 * math.log(0.6 / 0.4) + 0.2 * math.log(0.2 / 0.6) + 0.2 * math.log(0.2 / 1e-10)
    )
    # per domain: Condition {101} equal; Drug {102} ½ apart; 103 is not in the vocabulary: Unknown, ½ apart
    assert metrics["fidelity_prevalence_mean_abs_diff_condition"] == 0.0
    assert metrics["fidelity_prevalence_mean_abs_diff_drug"] == 0.5
    assert metrics["fidelity_prevalence_mean_abs_diff_unknown"] == 0.5
    assert metrics["fidelity_prevalence_r2_condition"] is None  # one concept: R² undefined
    # pairs in real visits {101,102}, {101,103}, {101}: both at rate ⅓ (constant -> R² undefined)
    assert metrics["fidelity_cooccurrence_pairs"] == 2
    assert metrics["fidelity_cooccurrence_synthetic_only_pairs"] == 0
    assert metrics["fidelity_cooccurrence_r2"] is None
    # pair counts real (101,102): 1, (101,103): 1; synthetic (101,102): 2 of 2 → q = [1, 1e-10]
    assert metrics["fidelity_cooccurrence_kl"] == pytest.approx(
        0.5 * math.log(0.5) + 0.5 * math.log(0.5 / 1e-10)
    )
    # lengths real {18, 9} vs synthetic {10, 15}: the ECDFs differ by ½ on [9, 10)
    assert metrics["fidelity_sequence_length_ks"] == 0.5
    assert metrics["fidelity_visits_per_patient_ks"] == 0.0  # {2, 1} vs {1, 2}
    # age bands real {3, 4}, synthetic {3, 5}: TVD ½(0 + ½ + ½) = ½
    assert metrics["fidelity_age_tvd"] == 0.5
    assert metrics["fidelity_gender_tvd"] == 0.0
    assert metrics["fidelity_race_tvd"] == 0.0
    assert metrics["fidelity_days_between_visits_ks"] == 1.0  # {10} vs {20}
    assert metrics["fidelity_inpatient_stay_ks"] is None  # no synthetic inpatient stay
    # visit types real {9202: ⅔, 9201: ⅓}, synthetic {9202: 1}: TVD ⅓
    assert metrics["fidelity_visit_type_tvd"] == pytest.approx(1 / 3)
    assert metrics["fidelity_num_synthetic_excluded"] == 1
    pairs = pd.read_parquet(out / "cooccurrence.parquet")
    assert pairs[["concept_id_a", "concept_id_b"]].values.tolist() == [[101, 102], [101, 103]]
    assert pairs["synthetic_rate"].tolist() == pytest.approx([2 / 3, 0.0])
    assert "fidelity_prevalence_r2" in capsys.readouterr().out


def test_report_is_self_contained_html(report):
    argv, out = report
    assert fidelity.main(argv) == 0
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert page.count('src="data:image/png;base64,') == 10
    assert "http://" not in page and "https://" not in page


def test_support_floor_drops_rare_pairs(report):
    argv, out = report
    assert fidelity.main([*argv[:-1], "2"]) == 0
    # each real pair is in one real visit; (101,102) is in two synthetic visits, so it stays
    assert json.loads((out / "metrics.json").read_text())["fidelity_cooccurrence_pairs"] == 1
    pairs = pd.read_parquet(out / "cooccurrence.parquet")
    assert pairs[["concept_id_a", "concept_id_b"]].values.tolist() == [[101, 102]]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("--real_data_folder", "/nope"), "error: --real_data_folder '/nope' does not exist"),
        (("--vocab_folder", "/nope/vocab"), "error: --vocab_folder '/nope/vocab' does not exist"),
        (("--min_pair_support", "0"), "error: --min_pair_support 0; expected a positive number of visits"),
    ],
)
def test_bad_input(report, capsys, change, message):
    argv, out = report
    flag, value = change
    argv = list(argv)
    argv[argv.index(flag) + 1] = value
    assert fidelity.main(argv) == 2
    assert capsys.readouterr().err.startswith(message)
    assert not (out / "metrics.json").exists()


def test_no_parseable_synthetic_patient(report, make_folder, capsys):
    argv, _ = report
    argv = list(argv)
    argv[argv.index("--synthetic_data_folder") + 1] = make_folder("broken", [SYNTHETIC[2]])
    assert fidelity.main(argv) == 2
    assert "holds no parseable patient (1 row(s) excluded" in capsys.readouterr().err


def test_help(capsys):
    with pytest.raises(SystemExit) as exited:
        fidelity.main(["--help"])
    assert exited.value.code == 0
    assert "--min_pair_support" in capsys.readouterr().out


def _profile_as_multisets(profile: fidelity.SequenceProfile) -> dict:
    """The profile with order removed: the metrics compare distributions, not patient or visit order."""
    visits, concepts = profile.visit_concepts
    per_visit: dict[int, list[int]] = {v: [] for v in range(profile.visit_count)}
    for v, c in zip(visits.tolist(), concepts.tolist(), strict=True):
        per_visit[v].append(c)
    return {
        "patients": sorted(
            zip(
                profile.lengths.tolist(),
                profile.visits_per_patient.tolist(),
                profile.ages.tolist(),
                profile.genders,
                profile.races,
                strict=True,
            )
        ),
        "patient_concepts": sorted(profile.patient_concepts.tolist()),
        "concept_tokens": sorted(profile.concept_tokens.tolist()),
        "visit_types": sorted(profile.visit_types),
        "gaps": sorted(profile.days_between_visits.tolist()),
        "stays": sorted(profile.inpatient_stay_days.tolist()),
        "visit_concepts": sorted(tuple(sorted(c)) for c in per_visit.values()),
        "excluded": (profile.excluded, profile.exclusion_reasons),
    }


EDGE_CASES = [
    # unknown visit type and gender, a same-day gap, a 3-year gap, a 0 concept
    ["year:2001", "age:12", "Gender/0", "Race/0", "[VS]", "Visit/0", "101", "0", "101", "[VE]", "D0",
     "[VS]", "9202", "0", "[VE]", "LT", "[VS]", "9202", "102", "101", "[VE]", "[END]"],
    ["year:2001", "age:12", "8507", "8527", "[VS]", "9202", "[VE]"],  # an empty visit breaks the grammar
    # two inpatient stays with discharges, then death after a gap
    ["year:1990", "age:40", "8532", "8527", "[VS]", "9201", "101", "i-D2", "102", "i-D1", "103", "8536",
     "[VE]", "D30", "[VS]", "262", "104", "0", "[VE]", "D7", "[VS]", "[DEATH]", "[VE]"],
    ["year:2010", "age:0", "8507", "8516", "[VS]", "[DEATH]", "[VE]"],  # death as the only visit
    ["[START]", "year:2000", "age:1", "8507", "8527", "[VS]", "9202", "101", "[VE]"],  # reference path
    ["year:2000", "age:52", "8532", "8527", "[VS]", "9202"],  # truncated: excluded when checked
]  # fmt: skip


@pytest.mark.parametrize("check_grammar", [True, False])
def test_vectorised_profile_equals_the_reference_path(check_grammar):
    sequences = REAL + SYNTHETIC + EDGE_CASES
    fast = fidelity.profile_sequences(sequences, check_grammar)
    reference = fidelity.profile_sequences(sequences, check_grammar, vectorised=False)
    assert _profile_as_multisets(fast) == _profile_as_multisets(reference)
    assert sorted(fast.days_between_visits.tolist()) == [0, 7, 10, 20, 30, 1095]
    assert sorted(fast.inpatient_stay_days.tolist()) == [0, 3, 3]


def test_vectorised_profile_equals_the_reference_path_on_eunomia(eunomia_sequences):
    import pyarrow.parquet as pq

    tokens = pq.read_table(eunomia_sequences / "patient_sequence" / "train", columns=["concept_ids"])
    sequences = tokens.column("concept_ids").combine_chunks()
    assert fidelity.decode_arrow(sequences, np.ones(len(sequences), bool)).decoded.all()  # all vectorised
    fast = fidelity.profile_sequences(sequences, True)
    reference = fidelity.profile_sequences(sequences, True, vectorised=False)
    assert len(fast) == len(sequences) and fast.excluded == 0
    assert _profile_as_multisets(fast) == _profile_as_multisets(reference)


@pytest.mark.parametrize("vectorised", [True, False])
def test_a_concept_id_beyond_32_bits_is_a_clear_error(vectorised):
    patient = ["year:2000", "age:30", "8507", "8527", "[VS]", "9202", "5000000000", "[VE]", "[END]"]
    with pytest.raises(fidelity.AnalysisError, match=r"^concept id 5000000000 is outside 0 \.\. 2\^32 - 1"):
        fidelity.profile_sequences([patient], False, vectorised=vectorised)


@pytest.mark.parametrize("vectorised", [True, False])
@pytest.mark.parametrize("check_grammar", [True, False])
def test_a_null_sequence_or_token_is_excluded_and_counted(vectorised, check_grammar):
    with_null_token = [*REAL[1][:6], None, *REAL[1][6:]]
    profile = fidelity.profile_sequences(
        [None, REAL[1], with_null_token], check_grammar, vectorised, {"is_valid is false": 2}
    )
    assert len(profile) == 1 and profile.lengths.tolist() == [9]
    assert profile.excluded == 4
    assert profile.exclusion_reasons == {"is_valid is false": 2, "null sequence": 1, "null token": 1}


def test_all_invalid_synthetic_rows_report_the_true_excluded_count(report, tmp_path, capsys):
    argv, out = report
    folder = tmp_path / "all_invalid"
    folder.mkdir()
    rows = [SYNTHETIC[0]] * 7 + [None] * 2 + [SYNTHETIC[2]]
    pd.DataFrame(
        {"person_id": range(10), "concept_ids": rows, "is_valid": [False] * 7 + [None] * 3}
    ).to_parquet(folder / "part-0.parquet", index=False)
    argv = list(argv)
    argv[argv.index("--synthetic_data_folder") + 1] = str(folder)
    assert fidelity.main(argv) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: --synthetic_data_folder {str(folder)!r} holds no parseable patient (10 row(s) excluded: "
        "is_valid is false: 7, null sequence: 2, sequence ends: 1); expected grammar-valid sequences"
    )
    assert not out.exists()


def test_null_synthetic_rows_are_excluded_from_the_report(report, tmp_path, capsys):
    argv, out = report
    folder = tmp_path / "with_nulls"
    folder.mkdir()
    pd.DataFrame({"person_id": range(4), "concept_ids": [*SYNTHETIC, None]}).to_parquet(
        folder / "part-0.parquet", index=False
    )
    argv = list(argv)
    argv[argv.index("--synthetic_data_folder") + 1] = str(folder)
    assert fidelity.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["fidelity_num_synthetic_patients"] == 2
    assert metrics["fidelity_num_synthetic_excluded"] == 2
    assert json.loads((out / "summary.json").read_text())["synthetic_exclusion_reasons"] == {
        "null sequence": 1,
        "sequence ends": 1,
    }
    assert "warning: --synthetic_data_folder: 2 row(s) excluded: null sequence: 1, sequence ends: 1" in (
        capsys.readouterr().err
    )


# One visit per patient. Real visits {1,2,3}, {1,2}, {4}; synthetic {1,2}, {1,4}, {2,3}, {5}: the model
# invents the pair (1,4) and the concept 5.
REAL_VISITS = [patient_tokens(40, [1, 2, 3]), patient_tokens(40, [1, 2]), patient_tokens(40, [4])]
SYNTHETIC_VISITS = [patient_tokens(40, c) for c in ([1, 2], [1, 4], [2, 3], [5])]


@pytest.mark.parametrize("vectorised", [True, False])
def test_invented_pairs_count_and_the_original_measures(vectorised):
    real = fidelity.profile_sequences(REAL_VISITS, False, vectorised)
    synthetic = fidelity.profile_sequences(SYNTHETIC_VISITS, True, vectorised)
    metrics, _, pairs = fidelity.fidelity_metrics(real, synthetic, min_pair_support=1)
    # union of pairs (1,2), (1,3), (1,4), (2,3): real rates [⅔, ⅓, 0, ⅓], synthetic [¼, 0, ¼, ¼];
    # mean real ⅓, Σ(real - mean)² = 2/9, Σ(synthetic - real)² = (25 + 16 + 9 + 1)/144 = 51/144
    assert pairs[["concept_id_a", "concept_id_b"]].values.tolist() == [[1, 2], [1, 3], [1, 4], [2, 3]]
    assert pairs["real_rate"].tolist() == pytest.approx([2 / 3, 1 / 3, 0, 1 / 3])
    assert pairs["synthetic_rate"].tolist() == pytest.approx([1 / 4, 0, 1 / 4, 1 / 4])
    assert metrics["fidelity_cooccurrence_r2"] == pytest.approx(1 - (51 / 144) / (2 / 9))
    assert metrics["fidelity_cooccurrence_pairs"] == 4
    assert metrics["fidelity_cooccurrence_synthetic_only_pairs"] == 1
    # pair probabilities real (1,2) 2/4, (1,3) 1/4, (2,3) 1/4; synthetic (1,2) ⅓, (1,3) missing, (2,3) ⅓
    assert metrics["fidelity_cooccurrence_kl"] == pytest.approx(
        0.5 * math.log(0.5 / (1 / 3)) + 0.25 * math.log(0.25 / 1e-10) + 0.25 * math.log(0.25 / (1 / 3))
    )
    # concept tokens real 1,2,2,1,3,4 → [2, 2, 1, 1]/6; synthetic [2, 2, 1, 1, 1]/7: every ratio is 7/6
    assert metrics["fidelity_prevalence_kl"] == pytest.approx(math.log(7 / 6))
    # prevalence real [⅔, ⅔, ⅓, ⅓, 0], synthetic [½, ½, ¼, ¼, ¼]: ranks [4.5, 4.5, 2.5, 2.5, 1] and
    # [4.5, 4.5, 2, 2, 2], centred products 7.5 over norms 3 · √7.5
    assert metrics["fidelity_prevalence_spearman"] == pytest.approx(math.sqrt(7.5) / 3)


def test_the_support_floor_applies_to_either_set():
    real = fidelity.profile_sequences(REAL_VISITS, False)
    synthetic = fidelity.profile_sequences([*SYNTHETIC_VISITS, patient_tokens(40, [1, 4])], True)
    _, _, pairs = fidelity.fidelity_metrics(real, synthetic, min_pair_support=2)
    # (1,2) is in 2 real visits, (1,4) in 2 synthetic ones (none real); (1,3), (2,3) in one of each
    assert pairs[["concept_id_a", "concept_id_b"]].values.tolist() == [[1, 2], [1, 4]]
    assert pairs["real_rate"].tolist() == pytest.approx([2 / 3, 0])
    assert pairs["synthetic_rate"].tolist() == pytest.approx([1 / 5, 2 / 5])


def test_kl_divergence_by_hand():
    # p = [¾, ¼]; q = [3/6, 1e-10]: the synthetic total (6) includes a key the real set lacks
    assert fidelity.kl_divergence(np.array([3, 1]), np.array([3, 0]), 6) == pytest.approx(
        0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 1e-10)
    )
    assert fidelity.kl_divergence(np.array([2, 2]), np.array([5, 5]), 10) == 0.0
    assert math.isnan(fidelity.kl_divergence(np.zeros(0), np.zeros(0), 0))
    # no synthetic key at all: every q is 1e-10
    assert fidelity.kl_divergence(np.array([1]), np.array([0]), 0) == pytest.approx(math.log(1e10))
