"""The shared featurisation and the nearest-neighbour kernels, on tiny hand-made data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from analysis_sequences import patient_tokens

from cehrgpt.analysis.features import (
    FeatureMatrix,
    FeatureSpace,
    nearest_distance_and_ties,
    nearest_neighbours,
    nearest_other,
    parse_patients,
    sample_indices,
)

INPATIENT = ["year:2000", "age:40", "8532", "0", "[VS]", "9201", "201", "i-D2", "202", "8536", "[VE]"]
INPATIENT += ["D5", "[VS]", "9202", "203", "[VE]", "[END]"]


def frame(*patients: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"person_id": range(1, len(patients) + 1), "concept_ids": list(patients)})


def test_parse_keeps_clinical_concepts_only():
    patients = parse_patients(frame(patient_tokens(30, [102, 101, 102]), INPATIENT), check_grammar=True)
    assert patients.person_ids.tolist() == [1, 2]
    assert patients.ages.tolist() == [30.0, 40.0]
    assert patients.genders.tolist() == [8507, 8532]
    assert patients.races.tolist() == [8527, 0]  # a bare "0" race is unknown
    # visit types 9202/9201 and the discharge 8536 are structure, not clinical concepts
    assert patients.concepts_of(0).tolist() == [101, 102]
    assert patients.concepts_of(1).tolist() == [201, 202, 203]
    assert patients.excluded == 0


def test_parse_excludes_and_counts_invalid_synthetic_rows():
    truncated = patient_tokens(30, [101])[:-3]  # stops inside a visit
    rows = frame(patient_tokens(30, [101]), truncated, ["year:2000"])
    rows["is_valid"] = [True, True, True]
    patients = parse_patients(rows, check_grammar=True)
    assert len(patients) == 1
    assert patients.excluded == 2
    assert patients.exclusion_reasons == {"sequence ends": 2}
    rows["is_valid"] = [False, True, True]
    assert parse_patients(rows, check_grammar=True).exclusion_reasons == {
        "is_valid is false": 1,
        "sequence ends": 2,
    }


def test_one_age_scale_and_encoding_shared_by_all_sets():
    a = parse_patients(frame(patient_tokens(30, [101, 102]), patient_tokens(50, [102], gender=8532)), False)
    b = parse_patients(frame(INPATIENT), False)
    space = FeatureSpace.fit([a, b])
    assert (space.age_min, space.age_max) == (30.0, 50.0)
    assert space.concept_ids.tolist() == [101, 102, 201, 202, 203]
    # columns: gender 8507, 8532 | race 0, 8527 | concepts 101, 102, 201, 202, 203 | timeline, year
    encoded_a = space.encode(a)
    assert encoded_a.binary.toarray()[:, :9].tolist() == [
        [1, 0, 0, 1, 1, 1, 0, 0, 0],
        [0, 1, 0, 1, 0, 1, 0, 0, 0],
    ]
    assert encoded_a.age.tolist() == [0.0, 1.0]
    assert space.encode(b).age.tolist() == [0.5]  # 40 on the shared 30..50 scale, not 0 on its own
    only = space.encode(a, concepts=np.array([102]), demographics=False)
    assert only.binary.toarray().tolist() == [[1], [1]]
    assert only.age is None


def test_the_whole_space_sees_the_timeline_and_the_year():
    first = ["year:2000", "age:3", "8507", "8527", "[VS]", "9202", "11", "12", "[VE]"]
    second = ["year:2003", "age:3", "8507", "8527", "[VS]", "9202", "11", "13", "[VE]", "[END]"]
    patients = parse_patients(frame(first, second), False)
    space = FeatureSpace.fit([patients])
    assert (space.year_min, space.year_max, len(space.timeline_ids)) == (2000, 2003, 5)
    encoded = space.encode(patients).binary.toarray()
    # gender, race | concepts 11, 12, 13 | the visit's 3 shingles each, 1 shared ("[VS] 9202 11") | years
    assert encoded.shape == (2, 2 + 3 + 5 + 3)
    assert encoded.sum(axis=1).tolist() == [2 + 2 + 3 + 0, 2 + 2 + 3 + 3]
    assert encoded[:, -3:].tolist() == [[0, 0, 0], [1, 1, 1]]  # the thermometer: 2003 is three years on
    # Hamming: 2 concepts, 2 + 2 shingles around them, 3 years
    assert np.abs(encoded[0] - encoded[1]).sum() == 9
    # a concept subset (attribute inference, re-identification) is concepts only
    assert space.encode(patients, concepts=np.array([11, 12])).binary.shape == (2, 2 + 2)


def test_values_are_columns_of_their_own_and_stay_out_of_the_timeline():
    lab = ["year:2000", "age:3", "8507", "8527", "[VS]", "9202", "11", "3004249", "v:2", "[VE]"]
    other_bin = [*lab[:8], "v:5", "[VE]", "[END]"]
    patients = parse_patients(frame(lab, other_bin), False)
    # the timeline drops values: both patients have the same 3 shingles ([VS] 9202 11, 9202 11 3004249, ...)
    assert patients.timeline_values[:3].tolist() == patients.timeline_values[3:].tolist()
    assert np.diff(patients.value_indptr).tolist() == [1, 1]
    assert patients.value_values[0] != patients.value_values[1]  # (3004249, v:2) vs (3004249, v:5)
    space = FeatureSpace.fit([patients])
    encoded = space.encode(patients).binary.toarray()
    # gender, race | concepts 11, 3004249 | 3 shared shingles + 2 value pairs | no year span
    assert encoded.shape == (2, 2 + 2 + 3 + 2)
    assert np.abs(encoded[0] - encoded[1]).sum() == 2  # one lab result apart
    taken = patients.take(np.array([1]))
    assert taken.value_values.tolist() == [patients.value_values[1]]


def test_a_vocabulary_adds_columns_but_never_drops_a_concept_the_data_has():
    a = parse_patients(frame(patient_tokens(30, [101, 102])), False)
    space = FeatureSpace.fit([a], concept_vocabulary=[102, 999])
    assert space.concept_ids.tolist() == [101, 102, 999]
    assert space.unknown_concepts([101, 102, 555]) == [555]
    # 101 is rare to the tokenizer, not to the analyses: it stays in the vector
    assert space.encode(a).binary.toarray()[:, :5].tolist() == [[1, 1, 1, 1, 0]]


def matrix(rows: list[list[int]], ages: list[float] | None) -> FeatureMatrix:
    return FeatureMatrix(
        binary=sp.csr_matrix(np.asarray(rows, dtype=np.float32)),
        age=None if ages is None else np.asarray(ages, dtype=np.float64),
    )


A = matrix([[1, 0, 1], [0, 1, 1]], [0.0, 1.0])
B = matrix([[1, 0, 0], [1, 0, 1], [0, 1, 1]], [0.5, 0.5, 1.0])


@pytest.mark.parametrize("chunk_size", [1, 2, 512])
def test_nearest_neighbours_both_directions(chunk_size):
    # squared distances (Hamming + age²), by hand:
    #   a0: b0 1+0.25=1.25, b1 0+0.25=0.25, b2 2+1=3      -> b1 at 0.25
    #   a1: b0 3+0.25=3.25, b1 2+0.25=2.25, b2 0+0=0      -> b2 at 0
    #   b0 -> a0 (1.25), b1 -> a0 (0.25), b2 -> a1 (0)
    result = nearest_neighbours(A, B, both_directions=True, chunk_size=chunk_size)
    assert result.a_to_b_index.tolist() == [1, 2]
    assert result.a_to_b_distance.tolist() == [0.25, 0.0]
    assert result.b_to_a_index.tolist() == [0, 0, 1]
    assert result.b_to_a_distance.tolist() == [1.25, 0.25, 0.0]


@pytest.mark.parametrize("chunk_size", [1, 2, 512])
def test_nearest_other_leaves_each_row_out(chunk_size):
    # b0-b1: 1+0=1, b0-b2: 3+0.25=3.25, b1-b2: 2+0.25=2.25
    result = nearest_other(B, chunk_size=chunk_size)
    assert result.a_to_b_index.tolist() == [1, 0, 1]
    assert result.a_to_b_distance.tolist() == [1.0, 1.0, 2.25]


def test_ties_go_to_the_lowest_index_and_duplicates_are_distance_zero():
    query = matrix([[1, 0]], None)
    reference = matrix([[0, 0], [1, 1], [1, 0], [1, 0]], None)
    result = nearest_neighbours(query, matrix([[0, 0], [1, 1]], None), chunk_size=1)
    assert result.a_to_b_index.tolist() == [0]  # both at distance 1
    assert nearest_other(reference).a_to_b_distance.tolist() == [1.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize("chunk_size", [1, 2, 512])
def test_nearest_distance_and_ties_counts_every_equally_near_row(chunk_size):
    # query [1, 0] against [0, 0] (1), [1, 1] (1), [1, 0] (0), [1, 0] (0): nearest 0, two rows that near
    # query [0, 1] against the same: [0, 0] (1), [1, 1] (1), [1, 0] (2), [1, 0] (2): nearest 1, two rows
    query = matrix([[1, 0], [0, 1]], None)
    reference = matrix([[0, 0], [1, 1], [1, 0], [1, 0]], None)
    distance, ties = nearest_distance_and_ties(query, reference, chunk_size=chunk_size)
    assert distance.tolist() == [0.0, 1.0]
    assert ties.tolist() == [2, 2]
    # with ages: the distances of nearest_neighbours, one row at each minimum
    distance, ties = nearest_distance_and_ties(A, B, chunk_size=chunk_size)
    assert distance.tolist() == nearest_neighbours(A, B).a_to_b_distance.tolist()
    assert ties.tolist() == [1, 1]


def test_sample_indices_are_seeded_and_capped():
    first = sample_indices(np.random.default_rng(7), 100, 10)
    assert first.tolist() == sample_indices(np.random.default_rng(7), 100, 10).tolist()
    assert len(set(first.tolist())) == 10
    assert sorted(sample_indices(np.random.default_rng(7), 5, 10).tolist()) == [0, 1, 2, 3, 4]


def test_a_null_token_excludes_a_generated_row_and_is_skipped_in_a_real_one():
    tokens = [*patient_tokens(30, [101, 102])]
    tokens.insert(6, None)
    generated = parse_patients(frame(tokens, patient_tokens(40, [103])), check_grammar=True)
    assert generated.person_ids.tolist() == [2]
    assert generated.exclusion_reasons == {"null token": 1}
    real = parse_patients(frame(tokens), check_grammar=False)
    assert real.person_ids.tolist() == [1] and real.concepts_of(0).tolist() == [101, 102]
