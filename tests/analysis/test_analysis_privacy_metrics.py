"""Each privacy metric on tiny hand-made sets, with the expected numbers worked out by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from analysis_sequences import patient_tokens

from cehrgpt.analysis.features import FeatureSpace, parse_patients
from cehrgpt.analysis.io import AnalysisError
from cehrgpt.analysis.privacy.attribute_inference import attribute_inference_analysis, inference_scores
from cehrgpt.analysis.privacy.config import derive_attribute_config
from cehrgpt.analysis.privacy.member_inference import (
    chance_f1,
    classification_scores,
    membership_inference_analysis,
    roc_metrics,
)
from cehrgpt.analysis.privacy.nearest_neighbor_inference import adversarial_accuracy, nnaa_analysis
from cehrgpt.analysis.privacy.reid_inference import reid_analysis


def patients(*token_lists):
    rows = pd.DataFrame({"person_id": range(1, len(token_lists) + 1), "concept_ids": list(token_lists)})
    return parse_patients(rows, check_grammar=True)


def test_adversarial_accuracy_counts_ties_as_half():
    # real: 1>2 no (0), 2=2 tie (½), 3>1 yes (1) -> 1.5/3 = 0.5
    # synthetic: 1>0 yes (1), 1>2 no (0)          -> 1/2  = 0.5
    # AA = ½(0.5 + 0.5) = 0.5; ties 1 of 5 comparisons
    aa, tie_rate = adversarial_accuracy(
        np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 1.0]), np.array([1.0, 1.0]), np.array([0.0, 2.0])
    )
    assert aa == 0.5
    assert tie_rate == 0.2


def test_nnaa_of_an_exact_copy_is_all_ties():
    # S = T exactly: d_TS = 0 = d_ST, while d_TT = d_SS = 2 > 0, so every comparison is a loss (0):
    # AA_train = 0. Against E (different patients), d_ES = d_EE structure is symmetric: E1 and E2 are at
    # distance 4 from each other and from T's copies, so every comparison is a tie: AA_test = ½, tie rate 1.
    t = patients(patient_tokens(30, [101]), patient_tokens(30, [102]))
    e = patients(patient_tokens(30, [103]), patient_tokens(30, [104]))
    space = FeatureSpace.fit([t, e, t])
    table, metrics = nnaa_analysis(t, e, t, space, n_iterations=2, num_of_samples=2, seed=1)
    assert table.columns.tolist() == [
        "Iteration",
        "AA_train",
        "AA_test",
        "NNAAE",
        "Tie Rate Train",
        "Tie Rate Test",
    ]
    assert metrics["nnaa_aa_train"] == 0.0
    assert metrics["nnaa_aa_test"] == 0.5
    assert metrics["nnaa_privacy_loss"] == 0.5
    assert metrics["nnaa_tie_rate_train"] == 0.0
    assert metrics["nnaa_tie_rate_test"] == 1.0
    assert metrics["nnaa_num_of_samples"] == 2


def test_roc_metrics_by_hand():
    # members at distances 0, 0, 3; non-members at 1, 3, 5. Member-vs-non-member pairs: the two 0s beat
    # all three (6), the 3 loses to 1, ties 3 (½), beats 5 (1): AUC = 7.5 / 9. ROC points (fpr, tpr):
    # (0, 0), (0, ⅔) at d ≤ 0, (⅓, ⅔) at d ≤ 1, (⅔, 1) at d ≤ 3, (1, 1) at d ≤ 5.
    metrics, curve = roc_metrics(np.array([1, 1, 1, 0, 0, 0]), np.array([0.0, 0.0, 3.0, 1.0, 3.0, 5.0]))
    assert metrics["mia_auc"] == pytest.approx(7.5 / 9)
    assert metrics["mia_tpr_at_fpr_0.01"] == pytest.approx(2 / 3)
    assert metrics["mia_tpr_at_fpr_0.1"] == pytest.approx(2 / 3)
    assert metrics["mia_advantage"] == pytest.approx(2 / 3)
    assert curve["threshold"] == [-1.0, 0.0, 1.0, 3.0, 5.0]
    assert curve["fpr"] == pytest.approx([0, 0, 1 / 3, 2 / 3, 1])
    assert curve["tpr"] == pytest.approx([0, 2 / 3, 2 / 3, 1, 1])


def test_membership_inference_looks_at_the_whole_synthetic_set():
    # the release is the whole training set (20) while only 5 records per class are sampled: every member
    # finds its twin (distance 0) and no non-member does, whatever synthetic patients a sample would miss
    train = patients(*[patient_tokens(30 + i, [100 + i]) for i in range(20)])
    held_out = patients(*[patient_tokens(30 + i, [200 + i]) for i in range(20)])
    space = FeatureSpace.fit([train, held_out])
    table, metrics, curve = membership_inference_analysis(
        train, held_out, train, space, n_iterations=3, num_of_samples=5, seed=2
    )
    assert len(table) == 6
    assert metrics["mia_auc"] == 1.0
    assert metrics["mia_tpr_at_fpr_0.01"] == 1.0
    assert metrics["mia_advantage"] == 1.0
    assert metrics["mia_recall_median_threshold"] == pytest.approx(1.0)
    assert curve["tpr"][1] == 1.0 and curve["fpr"][1] == 0.0


def test_classification_scores_and_chance():
    # tp 2, fp 1, fn 1, tn 2: precision 2/3, recall 2/3, F1 2/3, accuracy 4/6, advantage 2/3 - 1/3
    scores = classification_scores(np.array([1, 1, 1, 0, 0, 0]), np.array([1, 1, 0, 1, 0, 0]))
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3)
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["positive_rate"] == 0.5
    assert scores["advantage"] == pytest.approx(1 / 3)
    assert chance_f1(0.5) == 0.5  # precision ½, recall ½
    assert chance_f1(0.25) == pytest.approx(1 / 3)  # precision ½, recall ¼ -> 2·⅛/¾
    assert chance_f1(0.0) == 0.0


def test_inference_scores_are_micro_averaged():
    actual = sp.csr_matrix(np.array([[1, 1, 0], [0, 0, 1]], dtype=np.float32))
    guessed = sp.csr_matrix(np.array([[1, 0, 0], [1, 1, 1]], dtype=np.float32))
    # correct: row 0 col 0, row 1 col 2 = 2; guessed 4; actual 3 -> P ½, R ⅔, F1 = 2·⅓/(7/6) = 4/7
    precision, recall, f1 = inference_scores(actual, guessed)
    assert (precision, recall) == (0.5, pytest.approx(2 / 3))
    assert f1 == pytest.approx(4 / 7)


def test_attribute_inference_held_out_control_and_lift():
    # common [101], sensitive [201, 202]; the release is the training set itself, so every look-alike is
    # the patient (F1 1). Held-out control: t1 (30, M, 101) looks like h1 (31, M, 101) and guesses its
    # {202} (wrong); t2 (50, F) looks like h2 (49, F) and guesses {201} (wrong): F1 0. Lift = 1 − 0.
    train = patients(patient_tokens(30, [101, 201]), patient_tokens(50, [202], gender=8532))
    held_out = patients(patient_tokens(31, [101, 202]), patient_tokens(49, [201], gender=8532))
    space = FeatureSpace.fit([train, held_out])
    table, metrics = attribute_inference_analysis(
        train, train, space, [101], [201, 202], num_of_samples=2, seed=0, evaluation=held_out
    )
    assert table.columns.tolist()[-3:] == [
        "Precision Holdout Train",
        "Recall Holdout Train",
        "F1 Holdout Train",
    ]
    assert metrics["aia_f1_synthetic_train"] == 1.0
    assert metrics["aia_f1_holdout_train"] == 0.0
    assert metrics["aia_f1_lift_over_holdout"] == 1.0
    # the held-out patients as the release: the same attack as the control, no lift
    _, metrics = attribute_inference_analysis(
        train, held_out, space, [101], [201, 202], num_of_samples=2, seed=0, evaluation=held_out
    )
    assert metrics["aia_f1_lift_over_holdout"] == 0.0


def test_attribute_inference_from_look_alikes():
    # common [101], sensitive [201, 202]
    # t1 (30, M, 101, 201) looks like s1 (30, M, 101, 201, 202): guesses {201, 202}, 1 correct
    # t2 (50, F, 202) looks like s2 (50, F, 301): guesses {}, 0 correct
    # synthetic: correct 1 / guessed 2 / actual 2 -> P ½ R ½ F1 ½
    # baseline: t1 guesses t2's {202} (wrong), t2 guesses t1's {201} (wrong) -> 0, 0, 0
    train = patients(patient_tokens(30, [101, 201]), patient_tokens(50, [202], gender=8532))
    synthetic = patients(patient_tokens(30, [101, 201, 202]), patient_tokens(50, [301], gender=8532))
    space = FeatureSpace.fit([train, synthetic])
    table, metrics = attribute_inference_analysis(
        train, synthetic, space, [101], [201, 202], n_iterations=1, num_of_samples=10, seed=3
    )
    assert table.iloc[0].tolist() == [1, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0]
    assert metrics["aia_f1_synthetic_train"] == 0.5
    assert metrics["aia_f1_advantage"] == 0.5
    assert metrics["aia_num_of_samples"] == 2


# El Emam et al.'s example, by hand. Training (the population, n = N = 4), all ages in the 30s band:
#   t1 (31, M, 101, 201)   t2 (31, M, 101, 202)   t3 (35, M, 201)   t4 (35, F, 202)
# synthetic: s1 = t1, s2 (35, F, 301). Common (QI) concept 101, sensitive 201 and 202; λ′ = 0.615.
# A held-out patient identical to t1 is not part of the population and changes nothing.
REID_TRAIN = [
    patient_tokens(31, [101, 201]),
    patient_tokens(31, [101, 202]),
    patient_tokens(35, [201]),
    patient_tokens(35, [202], gender=8532),
]
REID_EVAL = [patient_tokens(31, [101, 201])]
REID_SYNTHETIC = [patient_tokens(31, [101, 201]), patient_tokens(35, [301], gender=8532)]


def reid(fraction: float):
    train, evaluation, synthetic = patients(*REID_TRAIN), patients(*REID_EVAL), patients(*REID_SYNTHETIC)
    space = FeatureSpace.fit([train, evaluation, synthetic])
    return reid_analysis(
        train, evaluation, synthetic, space, [101], [201, 202], sensitive_match_fraction=fraction
    )


def test_reid_risk_per_el_emam_by_hand():
    # "11" exact age, 101 kept: classes {t1, t2} (31 M 101), {t3}, {t4}. s1 falls in t1's class and shares
    #      201 with t1 (I R = 1), not with t2 (202); s2 falls in t4's class and shares nothing.
    #      Σ I R / f = ½ -> risk = 0.615 · ½ / 4 = 0.076875
    # "10" exact age, 101 dropped: {t1, t2} (31 M), {t3} (35 M), {t4}: the same, 0.076875
    # "01" age band, 101 kept: {t1, t2} (30s M 101), {t3} (30s M), {t4}: the same, 0.076875
    # "00" age band, 101 dropped: {t1, t2, t3} (30s M), {t4}: s1 shares 201 with t1 and t3:
    #      Σ = ⅓ + ⅓ -> risk = 0.615 · ⅔ / 4 = 0.1025, the riskiest
    table, metrics = reid(fraction=0.001)
    assert table["Config"].tolist() == ["00", "01", "10", "11"]
    assert table["Risk"].tolist() == pytest.approx([0.1025, 0.076875, 0.076875, 0.076875])
    assert table["A_term"].tolist() == table["B_term"].tolist()  # N = n, F_s = f_s
    assert table["Matched"].tolist() == [2, 1, 1, 1]
    assert metrics["reid_risk"] == pytest.approx(0.1025)
    assert metrics["reid_sensitive_match_threshold"] == 1  # at least one sensitive concept, always
    assert metrics["reid_num_population_patients"] == 4
    assert metrics["reid_num_generalizations"] == 4


def test_reid_needs_a_shared_sensitive_concept():
    # fraction 0 still needs one shared sensitive concept: the same risks as above
    assert reid(fraction=0.0)[1]["reid_risk"] == pytest.approx(0.1025)
    # fraction ¾ of 2 sensitive concepts: both needed (⌈1.5⌉); no look-alike shares both
    table, metrics = reid(fraction=0.75)
    assert metrics["reid_sensitive_match_threshold"] == 2
    assert metrics["reid_risk"] == 0.0
    assert table["Matched"].tolist() == [0, 0, 0, 0]


def test_reid_refuses_a_lattice_too_large():
    train = patients(*REID_TRAIN)
    space = FeatureSpace.fit([train])
    with pytest.raises(AnalysisError, match="13 common attributes give 2\\^14 generalisations"):
        reid_analysis(train, train, train, space, list(range(13)), [201])


CONFIG_TRAIN = [
    patient_tokens(30, [101, 102, 103]),
    patient_tokens(30, [101, 102]),
    patient_tokens(30, [101, 104]),
    patient_tokens(30, [101]),
]


def test_config_by_prevalence():
    # prevalence: 101 1.0, 102 0.5, 103 0.25, 104 0.25. Common: [101]. 102 is not under 0.5,
    # so the sensitive band is 103, 104 (ties by id).
    config = derive_attribute_config(patients(*CONFIG_TRAIN), 1, 2, 0.5, 1)
    assert config == {"common_attributes": [101], "sensitive_attributes": [103, 104]}
    with pytest.raises(AnalysisError, match="only 0 concept"):
        derive_attribute_config(patients(*CONFIG_TRAIN), 1, 2, 0.5, min_sensitive_patients=2)
    with pytest.raises(AnalysisError, match="--num_common 5 exceeds the 4 distinct concepts"):
        derive_attribute_config(patients(*CONFIG_TRAIN), 5, 1)
