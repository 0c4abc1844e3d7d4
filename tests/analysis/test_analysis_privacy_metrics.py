"""Each privacy metric on tiny hand-made sets, with the expected numbers worked out by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from analysis_sequences import patient_tokens

from cehrgpt.analysis.features import FeatureSpace, nearest_neighbours, parse_patients
from cehrgpt.analysis.io import AnalysisError
from cehrgpt.analysis.privacy.attribute_inference import attribute_inference_analysis, inference_scores
from cehrgpt.analysis.privacy.config import derive_attribute_config
from cehrgpt.analysis.privacy.member_inference import (
    chance_f1,
    chance_tpr_at_fpr,
    classification_scores,
    membership_inference_analysis,
    roc_metrics,
)
from cehrgpt.analysis.privacy.nearest_neighbor_inference import (
    adversarial_accuracy,
    equal_folds,
    nnaa_analysis,
)
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
    assert metrics["nnaa_n_iterations"] == 1  # equal sizes, nothing sampled: the 2 iterations would be one
    assert len(table) == 1


def test_equal_folds_cover_every_row_at_one_size():
    rng = np.random.default_rng(0)
    rows = np.arange(10, 20)
    folds = equal_folds(rng, rows, 4)  # ⌈10 / 4⌉ = 3 folds of 4; the last overlaps the second by 2
    assert [len(f) for f in folds] == [4, 4, 4]
    assert sorted(np.concatenate(folds[:2]).tolist() + folds[2][2:].tolist()) == rows.tolist()
    assert len(np.intersect1d(folds[1], folds[2])) == 2
    assert [f.tolist() for f in equal_folds(rng, rows, 10)] == [rows.tolist()]  # one fold: as given


def test_nnaa_scores_every_training_record_in_equal_size_folds():
    # same age, one concept each: any two different patients are at distance 2. T = 6, E = 2, S = a copy of
    # T6 and two others. T is cut into 3 folds of 2 (E's size). The fold holding T6: real terms 0 (T6: 0 > 2
    # no) and ½ (tie) -> ¼; synthetic terms 0 (the copy: 0 > 2 no), ½, ½ -> ⅓; AA = ½(¼ + ⅓) = 7/24, ties
    # 3 of 5. The two other folds tie everywhere: AA ½, ties 1. AA_train = (7/24 + ½ + ½) / 3 = 31/72,
    # tie rate (3/5 + 1 + 1) / 3 = 13/15; E ties everywhere: AA_test ½. Loss = ½ − 31/72 = 5/72, whichever
    # fold T6 lands in: a sample of 2 of T would miss T6 two times in three.
    train = patients(*[patient_tokens(40, [100 + i]) for i in range(6)])
    held_out = patients(*[patient_tokens(40, [200 + i]) for i in range(2)])
    synthetic = patients(patient_tokens(40, [105]), patient_tokens(40, [300]), patient_tokens(40, [301]))
    space = FeatureSpace.fit([train, held_out, synthetic])
    for seed in range(5):
        table, metrics = nnaa_analysis(train, held_out, synthetic, space, n_iterations=3, seed=seed)
        assert table["AA_train"].tolist() == pytest.approx([31 / 72] * 3)
        assert metrics["nnaa_aa_train"] == pytest.approx(31 / 72)
        assert metrics["nnaa_aa_test"] == 0.5
        assert metrics["nnaa_privacy_loss"] == pytest.approx(5 / 72)
        assert metrics["nnaa_tie_rate_train"] == pytest.approx(13 / 15)
        assert metrics["nnaa_tie_rate_test"] == 1.0
        assert (
            metrics["nnaa_num_of_samples"],
            metrics["nnaa_num_folds_train"],
            metrics["nnaa_num_folds_test"],
        ) == (
            2,
            3,
            1,
        )
        assert (metrics["nnaa_num_training_records"], metrics["nnaa_num_evaluation_records"]) == (6, 2)
        assert metrics["nnaa_n_iterations"] == 3  # the folds are drawn afresh in each iteration


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


def test_roc_metrics_on_unbalanced_sets_by_hand():
    # 3 members at 0, 2, 4; 5 non-members at 1, 3, 5, 6, 7. Pairs won: 0 beats 5, 2 beats 4, 4 beats 3:
    # AUC 12/15. At d ≤ 0 (fpr 0) tpr ⅓; at d ≤ 4, tpr 1 at fpr ⅖: advantage ⅗.
    metrics, _ = roc_metrics(
        np.array([1, 1, 1, 0, 0, 0, 0, 0]), np.array([0.0, 2.0, 4.0, 1.0, 3.0, 5.0, 6.0, 7.0])
    )
    assert metrics["mia_auc"] == pytest.approx(0.8)
    assert metrics["mia_tpr_at_fpr_0.01"] == pytest.approx(1 / 3)
    assert metrics["mia_tpr_at_fpr_0.1"] == pytest.approx(1 / 3)
    assert metrics["mia_advantage"] == pytest.approx(0.6)
    # 5 non-members: FPR ≤ 1% admits none. A chance ranking exposes the members before the first
    # non-member: P(0, 1, 2, 3 members) = 5/8, 15/56, 5/56, 1/56; mean (0+1)/(5+1) of the members = ⅙;
    # P(≤ 2) = 55/56 < 0.99, so its 99th percentile is all 3 members: lift ⅓ − 1
    assert metrics["mia_tpr_at_fpr_0.01_chance"] == pytest.approx(1 / 6)
    assert metrics["mia_tpr_at_fpr_0.01_chance_p99"] == 1.0
    assert metrics["mia_tpr_at_fpr_0_01_lift"] == pytest.approx(-2 / 3)


def test_chance_tpr_at_one_percent_fpr_follows_the_set_sizes():
    # FPR ≤ 1% admits ⌊0.01 n⌋ non-members; the mean share exposed is (k + 1)/(n + 1)
    assert chance_tpr_at_fpr(3, 5) == (pytest.approx(1 / 6), 1.0)
    assert chance_tpr_at_fpr(50, 20) == (pytest.approx(1 / 21), 0.24)  # P(≥ x members first) ≈ (50/70)^x
    assert chance_tpr_at_fpr(1000, 300) == (pytest.approx(4 / 301), 0.036)
    assert chance_tpr_at_fpr(10000, 10000) == (pytest.approx(101 / 10001), 0.0136)


def far_from(synthetic_concept: int, base: int, extra: int) -> list[str]:
    """The one-concept patient with ``extra`` concepts of its own appended to its visit.

    Its squared distance is 0 for none, else 2·extra + 2: ``extra`` concepts, and ``extra`` + 2
    timeline shingles (``extra`` + 1 new triples from the first appended concept to ``[VE]``, and
    the triple "9202 <concept> [VE]" lost).
    """
    return patient_tokens(40, [synthetic_concept, *range(base, base + extra)])


def test_membership_inference_on_unbalanced_sets_by_hand():
    # one synthetic patient; 3 members with 0, 2, 4 concepts of their own (distance 0, 6, 10) and 5 non-members
    # with 1, 3, 5, 6, 7 (distance 4, 8, 12, 14, 16): the ranks of the ROC above. Every record is scored: the
    # 3 asked iterations would repeat the same records, one pass runs. Median threshold 9 predicts 0, 4, 6,
    # 8: q ½, precision ½, recall ⅔, F1 4/7; members' share π ⅜, so chance F1 = 2πq/(π + q) = 3/7. Fixed
    # threshold 5 predicts 0 and 4: q ¼, precision ½, recall ⅓, F1 2/5; chance 2·⅜·¼ / ⅝ = 3/10. Above
    # chance: max(2/5 − 3/10, 4/7 − 3/7) = 1/7.
    synthetic = patients(patient_tokens(40, [900]))
    train = patients(*[far_from(900, 1000 + 10 * i, d) for i, d in enumerate([0, 2, 4])])
    held_out = patients(*[far_from(900, 2000 + 10 * i, d) for i, d in enumerate([1, 3, 5, 6, 7])])
    space = FeatureSpace.fit([train, held_out, synthetic])
    s = space.encode(synthetic)
    assert nearest_neighbours(space.encode(train), s).a_to_b_distance.tolist() == [0, 6, 10]
    assert nearest_neighbours(space.encode(held_out), s).a_to_b_distance.tolist() == [4, 8, 12, 14, 16]
    table, metrics, _ = membership_inference_analysis(
        train, held_out, synthetic, space, n_iterations=3, seed=4
    )
    assert table["Threshold"].tolist() == [5.0, 9.0]
    assert table["F1"].tolist() == pytest.approx([2 / 5, 4 / 7])
    assert table["F1 Chance"].tolist() == pytest.approx([3 / 10, 3 / 7])
    assert (table["Members"].tolist(), table["Non-members"].tolist()) == ([3, 3], [5, 5])
    assert metrics["mia_f1_above_chance"] == pytest.approx(1 / 7)
    assert metrics["mia_auc"] == pytest.approx(0.8)
    assert metrics["mia_tpr_at_fpr_0_01_lift"] == pytest.approx(-2 / 3)
    assert (metrics["mia_num_members"], metrics["mia_num_non_members"]) == (3, 5)
    assert (metrics["mia_num_of_samples"], metrics["mia_n_iterations"]) == (5, 1)


def test_every_member_is_scored_so_a_leaked_one_always_is():
    # 50 members and 20 non-members, same age, one concept each; the release holds member 37 verbatim and
    # nothing else. Member 37 is at 0, every other record at 2: at FPR 0 the attack exposes it, 1 of 50,
    # with every seed (a sample of 20 members per iteration would miss it 3 times in 5).
    train = patients(*[patient_tokens(40, [100 + i]) for i in range(50)])
    held_out = patients(*[patient_tokens(40, [300 + i]) for i in range(20)])
    synthetic = patients(patient_tokens(40, [137]))
    space = FeatureSpace.fit([train, held_out, synthetic])
    for seed in range(5):
        _, metrics, curve = membership_inference_analysis(
            train, held_out, synthetic, space, n_iterations=10, num_of_samples=10000, seed=seed
        )
        assert (metrics["mia_num_members"], metrics["mia_num_non_members"]) == (50, 20)
        assert metrics["mia_tpr_at_fpr_0.01"] == 0.02
        assert metrics["mia_auc"] == pytest.approx(0.51)  # 20 pairs won, 49 × 20 tied: (20 + 490) / 1000
        assert curve["threshold"][:2] == [-1.0, 0.0]
        # one leaked patient in 50 is within chance at 20 non-members: 99th percentile 12 of 50
        assert metrics["mia_tpr_at_fpr_0.01_chance_p99"] == 0.24
        assert metrics["mia_tpr_at_fpr_0_01_lift"] == pytest.approx(0.02 - 0.24)
    # the training set released: every member at 0, every non-member at 2: lift 1 − 0.24
    _, metrics, _ = membership_inference_analysis(train, held_out, train, space)
    assert metrics["mia_tpr_at_fpr_0.01"] == 1.0
    assert metrics["mia_tpr_at_fpr_0_01_lift"] == pytest.approx(0.76)


def test_a_cap_below_a_set_samples_it_afresh_in_each_iteration():
    # 50 members capped at 20 per iteration, 20 non-members whole (not drawn): the iterations' seeded
    # samples are 4 draws of 20 of 50 from the seed's generator, and the ROC scores each member any of
    # them drew once
    train = patients(*[patient_tokens(40, [100 + i]) for i in range(50)])
    held_out = patients(*[patient_tokens(40, [300 + i]) for i in range(20)])
    space = FeatureSpace.fit([train, held_out])
    table, metrics, _ = membership_inference_analysis(
        train, held_out, train, space, n_iterations=4, num_of_samples=20, seed=1
    )
    rng = np.random.default_rng(1)
    drawn = np.unique(np.concatenate([rng.choice(50, size=20, replace=False) for _ in range(4)]))
    assert len(table) == 8 and set(table["Members"]) == {20} and set(table["Non-members"]) == {20}
    assert metrics["mia_n_iterations"] == 4
    assert (metrics["mia_num_members"], metrics["mia_num_non_members"]) == (len(drawn), 20)
    assert metrics["mia_auc"] == 1.0


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
    # unbalanced: 1 member in 4 (π ¼), a coin calling half the records members: precision ¼, recall ½,
    # F1 = 2·⅛ / ¾ = ⅓
    assert chance_f1(0.5, prevalence=0.25) == pytest.approx(1 / 3)
    assert chance_f1(0.5, prevalence=0.0) == 0.0


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
