"""The token grammar: spellings, positional kinds, the state machine and its tables."""

from __future__ import annotations

import numpy as np
import pytest

from cehrgpt import grammar as g
from cehrgpt.grammar import GrammarState as S
from cehrgpt.grammar import TokenKind as K

INPATIENT_PATIENT = (
    "year:2001 age:12 8532 8527 [VS] 9203 380378 [VE] D154 "
    "[VS] 9201 4356 i-D1 4021 8536 [VE] LT [VS] [DEATH] [VE] [END]"
).split()


def test_spellings_round_trip():
    assert g.year_token(2001) == "year:2001"
    assert g.age_token(12) == "age:12"
    assert [g.gap_token(d) for d in (-3, 0, 7, 1079, 1080, 5000)] == ["D0", "D0", "D7", "D1079", "LT", "LT"]
    assert g.inpatient_gap_token(3) == "i-D3"
    assert g.concept_token(None, g.UNKNOWN_GENDER) == "Gender/0"
    assert g.concept_token(0, g.UNKNOWN_RACE) == "Race/0"
    assert g.concept_token(8532, g.UNKNOWN_GENDER) == "8532"


def test_gap_days_reads_every_spelling():
    assert [g.gap_days(t) for t in ("D0", "D154", "LT", "W2", "M11", "i-D1", "8532")] == [
        0,
        154,
        1095,
        14,
        330,
        None,
        None,
    ]
    assert g.inpatient_gap_days("i-D4") == 4
    assert g.inpatient_gap_days("D4") is None


def test_concept_ids_and_prompt_values():
    assert [g.concept_id_of(t) for t in ("8532", "Gender/0", "0", "Discharge/0", "[VS]", "D1")] == [
        8532,
        0,
        0,
        0,
        None,
        None,
    ]
    assert g.prompt_year("year:1999") == 1999
    assert g.prompt_age("age:7") == 7
    assert g.prompt_year("age:7") is None


def test_assign_kinds_reads_concepts_by_position():
    assert g.assign_kinds(INPATIENT_PATIENT) == [
        K.YEAR, K.AGE, K.GENDER, K.RACE,
        K.VISIT_START, K.VISIT_TYPE, K.CONCEPT, K.VISIT_END, K.GAP,
        K.VISIT_START, K.INPATIENT_VISIT_TYPE, K.CONCEPT, K.INPATIENT_GAP, K.CONCEPT, K.DISCHARGE, K.VISIT_END,
        K.GAP, K.VISIT_START, K.DEATH, K.VISIT_END, K.END,
    ]  # fmt: skip


def test_concept_before_outpatient_visit_end_is_not_a_discharge():
    kinds = g.assign_kinds("year:2001 age:1 8532 8527 [VS] 9202 4356 [VE]".split())
    assert kinds[-2] == K.CONCEPT


def test_valid_sequences():
    assert g.is_valid(INPATIENT_PATIENT)
    assert g.is_valid(INPATIENT_PATIENT[:-1])  # [END] is optional
    assert g.is_valid("year:2001 age:1 Gender/0 Race/0 [VS] Visit/0 4356 [VE]".split())


@pytest.mark.parametrize(
    ("tokens", "position", "reason"),
    [
        ("year:2001 age:1 8532 8527 4356".split(), 4, "concept not allowed in state before_visit"),
        ("year:2001 age:1 8532 8527 [VE]".split(), 4, "visit_end not allowed in state before_visit"),
        ("year:2001 age:1 8532 8527 [VS] 9202 [VE]".split(), 6, "visit_end not allowed in state outpatient_empty"),
        ("year:2001 age:1 8532 8527 [VS] 9202 4356 D3 [VE]".split(), 7, "gap not allowed in state outpatient"),
        ("year:2001 age:1 8532 8527 [VS] 9202 4356 [VE] [VS]".split(), 8, "visit_start not allowed in state between_visits"),
        ("year:2001 age:1 8532 8527 [VS] 9202 4356 i-D1 4356 [VE]".split(), 7, "inpatient_gap not allowed in state outpatient"),
        ("year:2001 age:1 8532 8527 [VS] 9202 4356 [END] [VE]".split(), 7, "end not allowed in state outpatient"),
        ("year:2001 age:1 8532 8527 [VS] 9202 4356 [VE] D1 [VS] [DEATH] [VE] D1".split(), 12, "gap not allowed in state dead"),
        ("year:2001 age:1 8532 8527 [VS] 9201 4356".split(), 7, "sequence ends in state inpatient"),
        ("age:1 year:2001 8532 8527".split(), 0, "age not allowed in state prompt_year"),
    ],
)  # fmt: skip
def test_first_violation_names_position_and_reason(tokens, position, reason):
    assert g.first_violation(tokens) == (position, reason)


def test_transition_tables_match_step():
    tables = g.transition_tables()
    assert tables.next_state.shape == (len(S), len(K))
    for state in S:
        for kind in K:
            expected = g.step(state, kind)
            assert tables.next_state[state, kind] == (-1 if expected is None else expected)
    assert tables.next_state.dtype == np.int64


def test_clinical_content_sets_aside_what_carries_no_patient_information():
    stored = ["year:2001", "age:12", "8532", "8527", "[VS]", "9202", "380378", "[VE]"]
    assert g.clinical_content(stored) == tuple(stored)
    assert g.clinical_content([*stored, "[END]", "[PAD]", "[PAD]"]) == tuple(stored)
    assert g.clinical_content(["[START]", *stored[:4], None, "[OOV]", *stored[4:]]) == tuple(stored)
    assert g.clinical_content(None) == ()
    # the calendar: only the prompt's year goes; a death keeps its place
    dead = [*stored, "D3", "[VS]", "[DEATH]", "[VE]", "[END]"]
    assert g.without_calendar(g.clinical_content(dead)) == (*stored[1:], "D3", "[VS]", "[DEATH]", "[VE]")
    assert g.without_calendar(("age:12", "8532")) == ("age:12", "8532")
