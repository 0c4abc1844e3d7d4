"""The pure decoding core: each rule on tiny hand-made sequences, with exact expected records."""

from __future__ import annotations

import random
from datetime import date

import numpy as np
import pyarrow as pa
import pytest

from cehrgpt.dates import date_to_day, day_to_date
from cehrgpt.grammar import PROMPT_LENGTH, TokenKind, assign_kinds, is_valid, visit_type_kind
from cehrgpt.omop.arrow_decode import _positional_kinds, decode_arrow
from cehrgpt.omop.decode import (
    DeathRecord,
    DecodedPatient,
    EventRecord,
    PersonRecord,
    Reason,
    Rejection,
    VisitRecord,
    decode_patient,
    restore_kind,
    sequence_token_kinds,
)

PROMPT = "year:2001 age:12 8532 8527"


def decode(text: str, **kwargs) -> DecodedPatient:
    tokens = text.split()
    out = decode_patient(7, tokens, **kwargs)
    assert out.placed + out.structural + len(out.rejections) == len(tokens)
    assert sequence_token_kinds(tokens) == assign_kinds(tokens)
    return out


def day(text: str) -> int:
    return date_to_day(date.fromisoformat(text))


def reasons(out: DecodedPatient) -> list[tuple[int, str, str]]:
    return [(r.position, r.token, r.reason.value) for r in out.rejections]


def test_day_conversion_round_trips():
    assert day("1970-01-01") == 0
    assert day_to_date(day("2001-06-04")) == date(2001, 6, 4)


def test_prompt_gives_person_born_on_jan_1_of_year_minus_age():
    out = decode(f"{PROMPT} [VS] 9202 123 [VE] [END]")
    assert out.person == PersonRecord(gender_concept_id=8532, race_concept_id=8527, year_of_birth=1989)
    assert out.visits == [VisitRecord(4, 9202, day("2001-01-01"), day("2001-01-01"), None, None)]
    assert out.events == [EventRecord(6, 123, day("2001-01-01"), 4)]
    assert (out.placed, out.structural, out.rejections) == (6, 3, [])


def test_negative_age_is_kept_as_written():
    out = decode("year:1970 age:-6 8507 8516 [VS] 9202 1 [VE]")
    assert out.person == PersonRecord(gender_concept_id=8507, race_concept_id=8516, year_of_birth=1976)


@pytest.mark.parametrize("gender,race", [("Gender/0", "Race/0"), ("0", "0")])
def test_unknown_gender_and_race_become_zero(gender, race):
    out = decode(f"year:2001 age:12 {gender} {race} [VS] 9202 123 [VE]")
    assert out.person == PersonRecord(gender_concept_id=0, race_concept_id=0, year_of_birth=1989)


@pytest.mark.parametrize(
    "gap,expected",
    [
        ("D0", "2001-01-01"),
        ("D154", "2001-06-04"),
        ("W2", "2001-01-15"),
        ("M3", "2001-04-01"),
        ("LT", "2004-01-01"),
    ],
)
def test_gap_moves_the_cursor_before_the_next_visit(gap, expected):
    out = decode(f"{PROMPT} [VS] 9202 1 [VE] {gap} [VS] 9203 2 [VE]")
    assert [(v.start_day, v.end_day) for v in out.visits] == [
        (day("2001-01-01"), day("2001-01-01")),
        (day(expected), day(expected)),
    ]
    assert out.events[1] == EventRecord(11, 2, day(expected), 9)
    assert out.visits[1].preceding_position == 4


def test_gaps_accumulate():
    out = decode(f"{PROMPT} [VS] 9202 1 [VE] D10 [VS] 9202 2 [VE] W1 [VS] 9202 3 [VE]")
    assert [v.start_day for v in out.visits] == [day("2001-01-01"), day("2001-01-11"), day("2001-01-18")]


def test_inpatient_day_gaps_move_events_and_the_visit_ends_on_the_cursor():
    out = decode(f"{PROMPT} [VS] 9201 10 i-D2 11 12 8536 [VE] D10 [VS] 9202 13 [VE] [END]")
    assert out.visits == [
        VisitRecord(4, 9201, day("2001-01-01"), day("2001-01-03"), 8536, None),
        VisitRecord(13, 9202, day("2001-01-13"), day("2001-01-13"), None, 4),
    ]
    assert out.events == [
        EventRecord(6, 10, day("2001-01-01"), 4),
        EventRecord(8, 11, day("2001-01-03"), 4),
        EventRecord(9, 12, day("2001-01-03"), 4),
        EventRecord(15, 13, day("2001-01-13"), 13),
    ]
    # prompt 4 + 2 visit types + 1 discharge + 4 events; [VS] [VE] x2, i-D2, D10, [END]
    assert (out.placed, out.structural) == (11, 7)


def test_a_value_token_is_placed_on_the_concept_before_it():
    out = decode(
        f"{PROMPT} [VS] 9202 401 v:2 201 dur:30 101 [VE] D1 [VS] 9201 501 vc:8 i-D2 201 dur:7 0 [VE]"
    )
    assert out.events == [
        EventRecord(6, 401, day("2001-01-01"), 4, 7, "v:2"),
        EventRecord(8, 201, day("2001-01-01"), 4, 9, "dur:30"),
        EventRecord(10, 101, day("2001-01-01"), 4),
        EventRecord(15, 501, day("2001-01-02"), 13, 16, "vc:8"),
        EventRecord(18, 201, day("2001-01-04"), 13, 19, "dur:7"),
    ]
    # prompt 4 + 2 visit types + 1 discharge + 5 events + 4 values; [VS] [VE] x2, D1, i-D2
    assert (out.placed, out.structural, out.rejections) == (16, 6, [])


@pytest.mark.parametrize(
    "visit,bad,valued",
    [
        ("[VS] 9202 v:1 401 [VE]", [(6, "v:1")], {}),  # before any concept
        ("[VS] 9202 401 v:1 v:2 [VE]", [(8, "v:2")], {6: "v:1"}),  # a second value
        ("[VS] 9202 401 [OOV] v:2 [VE]", [(7, "[OOV]")], {6: "v:2"}),  # the last concept kept takes it
        ("[VS] 9201 401 i-D1 v:2 402 8536 [VE]", [(8, "v:2")], {}),  # after an inpatient gap
    ],
)
def test_a_value_token_the_grammar_does_not_allow_is_rejected_alone(visit, bad, valued):
    out = decode(f"{PROMPT} {visit}")
    assert reasons(out) == [(p, t, "unexpected_token_in_visit") for p, t in bad]
    assert {e.position: e.value_token for e in out.events if e.value_token} == valued
    assert len(out.visits) == 1


def test_a_value_outside_a_visit_or_before_discharge_in_the_wrong_place_is_rejected():
    out = decode(f"{PROMPT} [VS] 9202 401 [VE] v:1 D1 [VS] 9201 401 8536 v:1 [VE]")
    assert reasons(out)[0] == (8, "v:1", "token_outside_visit")
    assert [r.reason.value for r in out.rejections[1:]] == ["malformed_visit"] * 6


@pytest.mark.parametrize("discharge", ["Discharge/0", "0"])
def test_unknown_discharge_becomes_zero(discharge):
    out = decode(f"{PROMPT} [VS] 262 10 {discharge} [VE]")
    assert out.visits[0].discharged_to_concept_id == 0
    assert out.visits[0].visit_concept_id == 262


def test_unknown_visit_type_becomes_zero():
    out = decode(f"{PROMPT} [VS] Visit/0 10 [VE]")
    assert out.visits[0].visit_concept_id == 0


def test_death_on_the_cursor_date():
    out = decode(f"{PROMPT} [VS] 9202 1 [VE] D5 [VS] [DEATH] [VE] [END] [PAD] [PAD]")
    assert out.death == DeathRecord(position=10, day=day("2001-01-06"))
    assert out.rejections == []
    assert (out.placed, out.structural) == (7, 8)


def test_leading_start_token_is_structural():
    out = decode(f"[START] {PROMPT} [VS] 9202 1 [VE]")
    assert out.person is not None and out.visits[0].position == 5
    assert out.structural == 3


@pytest.mark.parametrize("person_id", [None])
def test_missing_person_id_rejects_every_token(person_id):
    out = decode_patient(person_id, f"{PROMPT} [VS] 9202 1 [VE]".split())
    assert out.person is None
    assert {r.reason for r in out.rejections} == {Reason.MISSING_PERSON_ID}
    assert len(out.rejections) == 8


def test_duplicate_person_rejects_every_token():
    out = decode(f"{PROMPT} [VS] 9202 1 [VE]", duplicate=True)
    assert out.person is None and out.visits == []
    assert reasons(out)[0] == (0, "year:2001", "duplicate_person")
    assert len(out.rejections) == 8


@pytest.mark.parametrize(
    "prompt",
    [
        "age:12 year:2001 8532 8527",  # swapped
        "year:2001 age:151 8532 8527",  # older than anyone
        "year:2001 age:-151 8532 8527",
        "year:20 age:30 8532 8527",  # born before year 1
        "year:0 age:0 8532 8527",  # no such year
        "year:2001 age:12 [VS] 8527",  # gender missing
        "year:2001 age:12 8532",  # too short
        "",
    ],
)
def test_bad_prompt_rejects_the_patient_with_reason(prompt):
    text = f"{prompt} [VS] 9202 1 [VE]"
    out = decode(text)
    assert out.person is None and out.visits == [] and out.events == []
    assert [r.reason for r in out.rejections] == [Reason.BAD_PROMPT] * len(text.split())


@pytest.mark.parametrize(
    "visit",
    [
        "[VS] [VE]",  # nothing inside
        "[VS] 9202 [VE]",  # no concept
        "[VS] D5 1 [VE]",  # no visit type
        "[VS] 9201 1 i-D1 [VE]",  # inpatient without discharge
        "[VS] 9201 8536 [VE]",  # inpatient with only a discharge
        "[VS] [DEATH] 1 [VE]",  # death with content
    ],
)
def test_malformed_visit_is_rejected_whole_and_the_rest_kept(visit):
    out = decode(f"{PROMPT} [VS] 9202 1 [VE] D1 {visit} D1 [VS] 9202 2 [VE]")
    n = len(visit.split())
    assert [r.reason for r in out.rejections] == [Reason.MALFORMED_VISIT] * n
    assert [r.position for r in out.rejections] == list(range(9, 9 + n))
    assert [v.start_day for v in out.visits] == [day("2001-01-01"), day("2001-01-03")]
    assert out.death is None


def test_visit_interrupted_by_end_is_malformed():
    out = decode(f"{PROMPT} [VS] 9202 1 [END]")
    assert reasons(out) == [
        (4, "[VS]", "malformed_visit"),
        (5, "9202", "malformed_visit"),
        (6, "1", "malformed_visit"),
    ]
    assert out.structural == 1


def test_visit_interrupted_by_another_visit_is_malformed_and_the_next_lacks_a_gap():
    out = decode(f"{PROMPT} [VS] 9202 1 [VS] 9202 2 [VE] D1 [VS] 9202 3 [VE]")
    assert [r.reason.value for r in out.rejections] == ["malformed_visit"] * 3 + ["missing_gap"] * 4
    assert [e.concept_id for e in out.events] == [3]


def test_truncated_visit_at_the_end():
    out = decode(f"{PROMPT} [VS] 9202 1 [VE] D3 [VS] 9201 2 i-D1")
    assert reasons(out) == [
        (9, "[VS]", "truncated_visit"),
        (10, "9201", "truncated_visit"),
        (11, "2", "truncated_visit"),
        (12, "i-D1", "truncated_visit"),
    ]
    assert len(out.visits) == 1


def test_missing_gap_rejects_the_second_visit():
    out = decode(f"{PROMPT} [VS] 9202 1 [VE] [VS] 9202 2 [VE]")
    assert [r.reason for r in out.rejections] == [Reason.MISSING_GAP] * 4
    assert [e.concept_id for e in out.events] == [1]


@pytest.mark.parametrize(
    "text,position",
    [
        (f"{PROMPT} D5 [VS] 9202 1 [VE]", 4),  # before the first visit
        (f"{PROMPT} [VS] 9202 1 [VE] D5 D6 [VS] 9202 2 [VE]", 9),  # two in a row
    ],
)
def test_misplaced_gap_is_rejected_and_does_not_move_the_cursor(text, position):
    out = decode(text)
    assert [(r.position, r.reason) for r in out.rejections] == [(position, Reason.MISPLACED_GAP)]
    assert out.visits[-1].start_day == day("2001-01-06" if len(out.visits) == 2 else "2001-01-01")


@pytest.mark.parametrize("stray", ["123", "[VE]", "[DEATH]", "i-D1", "[OOV]", "age:3"])
def test_token_outside_visit(stray):
    out = decode(f"{PROMPT} [VS] 9202 1 [VE] {stray} D2 [VS] 9202 2 [VE]")
    assert reasons(out) == [(8, stray, "token_outside_visit")]
    assert [v.start_day for v in out.visits] == [day("2001-01-01"), day("2001-01-03")]


@pytest.mark.parametrize(
    "visit,bad,events",
    [
        ("[VS] 9202 1 i-D1 2 [VE]", [(7, "i-D1")], [1, 2]),  # inpatient gap in an outpatient visit
        ("[VS] 9202 1 [OOV] 2 [VE]", [(7, "[OOV]")], [1, 2]),
        ("[VS] 9202 1 D4 2 [VE]", [(7, "D4")], [1, 2]),
        ("[VS] 9201 i-D1 1 8536 [VE]", [(6, "i-D1")], [1]),  # gap before any event
        ("[VS] 9201 1 i-D1 i-D2 2 8536 [VE]", [(8, "i-D2")], [1, 2]),  # two gaps in a row
    ],
)
def test_unexpected_token_in_visit_rejects_only_that_token(visit, bad, events):
    out = decode(f"{PROMPT} {visit}")
    assert reasons(out) == [(p, t, "unexpected_token_in_visit") for p, t in bad]
    assert [e.concept_id for e in out.events] == events
    assert len(out.visits) == 1


def test_date_out_of_range_gap_is_rejected():
    out = decode("year:9999 age:10 8532 8527 [VS] 9202 1 [VE] LT [VS] 9202 2 [VE]")
    assert reasons(out)[0] == (8, "LT", "date_out_of_range")
    assert [v.start_day for v in out.visits] == [day("9999-01-01")] * 2


def test_date_out_of_range_inpatient_gap_is_rejected():
    out = decode("year:9999 age:10 8532 8527 [VS] 9201 1 i-D400 2 0 [VE]")
    assert reasons(out) == [(7, "i-D400", "date_out_of_range")]
    assert out.visits[0].end_day == day("9999-01-01")


def test_a_timeline_past_the_end_date_is_cut_there():
    text = (
        f"{PROMPT} [VS] 9202 1 [VE] D30 [VS] 9202 2 [VE] D5 [VS] 9202 3 [VE] D1 [VS] [DEATH] [VE] [END] [PAD]"
    )
    out = decode(text, end_day=day("2001-02-01"))
    assert [(v.start_day, [e.concept_id for e in out.events if e.visit_position == v.position])
            for v in out.visits] == [(day("2001-01-01"), [1]), (day("2001-01-31"), [2])]  # fmt: skip
    # the D5 that passes the end date is structural; every later token but [END]/[PAD] is rejected
    assert reasons(out) == [
        (p, t, "after_end_date") for p, t in enumerate(text.split()) if 14 <= p <= 21 and t != "[END]"
    ]
    assert out.death is None and out.structural == 8  # [VS]/[VE] of two visits, D30, D5, [END], [PAD]
    # an end date the timeline never passes changes nothing
    assert decode(text, end_day=day("2001-02-06")) == decode(text)


def test_the_vectorised_decoder_leaves_a_timeline_past_the_end_date_to_the_reference():
    inside = f"{PROMPT} [VS] 9202 1 [VE] D30 [VS] 9202 2 [VE] [END]"
    past = f"{PROMPT} [VS] 9202 1 [VE] D31 [VS] 9202 2 [VE] [END]"
    sequences = pa.array([inside.split(), past.split()], pa.list_(pa.string()))
    fast = decode_arrow(sequences, np.ones(2, bool), end_day=day("2001-01-31"))
    assert fast.decoded.tolist() == [True, False]
    slow = decode(past, end_day=day("2001-01-31"))
    assert [r.reason.value for r in slow.rejections] == ["after_end_date"] * 4


def test_tokens_after_death_are_rejected():
    out = decode(f"{PROMPT} [VS] 9202 1 [VE] D1 [VS] [DEATH] [VE] D1 [VS] 9202 2 [VE] [END]")
    assert out.death == DeathRecord(10, day("2001-01-02"))
    assert [r.reason for r in out.rejections] == [Reason.AFTER_DEATH] * 5
    assert [e.concept_id for e in out.events] == [1]


def test_death_as_the_only_visit():
    out = decode(f"{PROMPT} [VS] [DEATH] [VE] [END]")
    assert out.death == DeathRecord(5, day("2001-01-01")) and out.visits == []


def test_tokens_after_end_are_rejected_but_padding_is_not():
    out = decode(f"{PROMPT} [VS] 9202 1 [VE] [END] [PAD] D1 [VS] [PAD]")
    assert reasons(out) == [(10, "D1", "after_end"), (11, "[VS]", "after_end")]
    assert out.structural == 5


TOKEN_SOUP = [
    *"[VS] [VE] [END] [PAD] [DEATH] [OOV] [START] D0 D7 LT W1 M2 i-D1 i-D3".split(),
    *"9201 9202 262 8536 0 Visit/0 Discharge/0 123 456 year:2000 age:3".split(),
    *"v:2 vc:5 dur:7".split(),
]


def test_sequence_token_kinds_equals_the_grammar_on_token_soup():
    rng = random.Random(0)
    for _ in range(300):
        tokens = [rng.choice(TOKEN_SOUP) for _ in range(rng.randint(0, 30))]
        assert sequence_token_kinds(tokens) == assign_kinds(tokens)
        out = decode_patient(1, tokens)
        assert out.placed + out.structural + len(out.rejections) == len(tokens)


def test_the_vectorised_positional_rule_gives_the_grammars_kinds_on_token_soup():
    rng = random.Random(1)
    # rows that end inside an inpatient visit or on [VS], before rows that start with [VE] or a concept:
    # the rule must not look across a row's end
    edges = [
        s.split() for s in ("year:2000 age:3 0 0 [VS] 9201 123", "[VE] 456", "9202 [VS]", "262 8536 [VE]")
    ]
    rows = edges + [[rng.choice(TOKEN_SOUP) for _ in range(rng.randint(0, 30))] for _ in range(300)]
    tokens = [t for row in rows for t in row]
    position = np.concatenate([np.arange(len(row)) for row in rows])
    lengths = np.repeat([len(row) for row in rows], [len(row) for row in rows])
    raw_kind = np.array([-1 if (k := restore_kind(t)) is None else int(k) for t in tokens], np.int8)
    inpatient_type = np.array([visit_type_kind(t) == TokenKind.INPATIENT_VISIT_TYPE for t in tokens])
    kinds, _ = _positional_kinds(raw_kind, inpatient_type, position, position == 0, position == lengths - 1)
    assert kinds.tolist() == [int(k) for row in rows for k in assign_kinds(row)]


def test_rejection_records_the_token():
    out = decode(f"{PROMPT} [VS] 9202 1 [VE] 77")
    assert out.rejections == [Rejection(8, "77", Reason.TOKEN_OUTSIDE_VISIT)]


VALUE_TOKENS = ["v:1", "v:3", "vc:8536", "dur:7", "dur:30"]


def _random_valid_sequence(rng: random.Random) -> list[str]:
    """A grammar-valid patient drawn at random: every visit kind, gaps of every spelling, maybe a death."""
    tokens = [f"year:{rng.randint(1950, 2020)}", f"age:{rng.randint(-2, 90)}"]
    tokens += [rng.choice(["8532", "8507", "Gender/0", "0"]), rng.choice(["8527", "Race/0", "0"])]
    for visit in range(rng.randint(1, 6)):
        if visit:
            tokens.append(rng.choice(["D0", "D3", "D400", "LT", "W2", "M5"]))
        kind = rng.choice(["9202", "9203", "Visit/0", "9201", "262"])
        tokens += ["[VS]", kind]
        for event in range(rng.randint(1, 4)):
            if event and kind in ("9201", "262") and rng.random() < 0.5:
                tokens.append(f"i-D{rng.randint(1, 9)}")
            tokens.append(rng.choice(["101", "202", "303", "0"]))
            if rng.random() < 0.3:
                tokens.append(rng.choice(VALUE_TOKENS))
        if kind in ("9201", "262"):
            tokens.append(rng.choice(["8536", "0", "Discharge/0"]))
        tokens.append("[VE]")
    if rng.random() < 0.3:
        tokens += ["D2", "[VS]", "[DEATH]", "[VE]"]
    if rng.random() < 0.5:
        tokens += ["[END]"] + ["[PAD]"] * rng.randint(0, 2)
    return tokens


def _fast_as_records(fast, row: int):
    """The vectorised decoder's output for one row, in decode_patient's record types."""
    p, v, e, d = fast.person, fast.visit, fast.event, fast.death
    i = list(p["row"]).index(row)
    person = PersonRecord(
        int(p["gender_concept_id"][i]), int(p["race_concept_id"][i]), int(p["year_of_birth"][i])
    )

    def none_if_negative(x):
        return None if x < 0 else int(x)

    visits = [
        VisitRecord(
            int(v["position"][j]),
            int(v["visit_concept_id"][j]),
            int(v["start_day"][j]),
            int(v["end_day"][j]),
            none_if_negative(v["discharged_to_concept_id"][j]),
            none_if_negative(v["preceding_position"][j]),
        )
        for j in np.flatnonzero(v["row"] == row)
    ]
    events = [
        EventRecord(
            int(e["position"][j]),
            int(e["concept_id"][j]),
            int(e["day"][j]),
            int(e["visit_position"][j]),
            none_if_negative(e["value_position"][j]),
            e["value_token"][j],
        )
        for j in np.flatnonzero(e["row"] == row)
    ]
    deaths = [DeathRecord(int(d["position"][j]), int(d["day"][j])) for j in np.flatnonzero(d["row"] == row)]
    return person, visits, events, (deaths[0] if deaths else None), int(p["structural"][i])


def test_vectorised_decoder_equals_the_reference_on_valid_patients_and_leaves_the_rest():
    rng = random.Random(1)
    sequences = [_random_valid_sequence(rng) for _ in range(400)]
    malformed = [
        f"{PROMPT} [VS] 9202 1 [VE] 77",  # a stray token
        f"{PROMPT} [VS] 9202 1",  # truncated
        f"[START] {PROMPT} [VS] 9202 1 [VE]",  # valid, but [START] goes the reference way
        "year:2001 age:151 8532 8527 [VS] 9202 1 [VE]",
        "year:9999 age:1 8532 8527 [VS] 9202 1 [VE] LT [VS] 9202 1 [VE]",  # past 9999-12-31
        "",
        "year:2001",
    ]
    sequences += [m.split() for m in malformed]
    usable = np.ones(len(sequences), bool)
    usable[3] = False  # e.g. a duplicate person
    fast = decode_arrow(pa.array(sequences, pa.list_(pa.string())), usable)
    for row, tokens in enumerate(sequences):
        reference = decode_patient(1, tokens)
        whole = reference.person is not None and not reference.rejections and is_valid(tokens)
        assert fast.decoded[row] == (whole and usable[row] and tokens[:1] != ["[START]"]), (row, tokens)
        if fast.decoded[row]:
            expected = (
                reference.person,
                reference.visits,
                reference.events,
                reference.death,
                reference.structural,
            )
            assert _fast_as_records(fast, row) == expected, tokens
    assert fast.decoded.sum() == 399
    assert sum(e.value_token is not None for t in sequences for e in decode_patient(1, t).events) > 100
    tokens = fast.event["token"]
    assert {t for t, c in zip(tokens, fast.event["concept_id"], strict=True) if c == 0} == {"0"}
    assert all(t == str(c) for t, c in zip(tokens, fast.event["concept_id"], strict=True) if c)


def test_sequence_beyond_the_id_layout_is_rejected_whole_and_its_neighbour_kept():
    from cehrgpt.omop.records import POSITION_BITS, REJECTION, TALLY, decode_batches

    too_long = PROMPT.split() + ["[VS]", "9202"] + ["1"] * ((1 << POSITION_BITS) - 7) + ["[VE]"]
    assert len(too_long) == 1 << POSITION_BITS
    batch = pa.record_batch(
        {
            "person_id": pa.array([8, 9], pa.int64()),
            "concept_ids": pa.array([too_long, f"{PROMPT} [VS] 9202 1 [VE]".split()], pa.list_(pa.string())),
            "file_path": ["file:/in/a.parquet"] * 2,
            "row_index": pa.array([0, 1], pa.int64()),
        }
    )
    vocabulary = (np.array([1], np.int64), np.array([0], np.int8))
    records = pa.Table.from_batches(
        decode_batches(iter([batch]), {"file:/in/a.parquet": 0}, frozenset(), vocabulary)
    ).to_pydict()
    rows = list(
        zip(records["record"], records["person_id"], records["reason"], records["position"], strict=True)
    )
    rejected = [
        (person, reason, position) for record, person, reason, position in rows if record == REJECTION
    ]
    assert rejected == [(8, "sequence_too_long", p) for p in range(1 << POSITION_BITS)]
    tallies = sorted((person, reason) for record, person, reason, _ in rows if record == TALLY)
    assert tallies == [(8, "sequence_too_long"), (9, None)]
    assert {person for record, person, _, _ in rows if record not in (REJECTION, TALLY)} == {9}


# --- property test: any token sequence is accounted for, token by token, on both decoding paths ---------------

_HUGE = ["99999999999999999999", "9" * 5000, "D99999999999999999999", "i-D" + "9" * 30, "D" + "7" * 5000]
_STRINGS = [
    "",
    " ",
    "[vs]",
    "year:",
    "age:x",
    "-5",
    "1.5",
    "Gender/1",
    "héllo",
    "[VS][VE]",
    "i-D",
    "W9",
    "M0",
]


def _hostile_sequence(rng: random.Random) -> list[str | None]:
    """A valid patient, then maybe truncated, shuffled, or salted with random strings, huge numbers and nulls."""
    tokens: list[str | None] = list(_random_valid_sequence(rng))
    mutation = rng.choice(["valid", "truncated", "shuffled", "strings", "huge", "null", "all"])
    if mutation in ("truncated", "all"):
        tokens = tokens[: rng.randint(0, len(tokens))]
    if mutation in ("shuffled", "all"):
        rng.shuffle(tokens)
    if mutation in ("strings", "all"):
        for _ in range(rng.randint(1, 4)):
            text = "".join(rng.choice("0123456789[]:-DViy aé") for _ in range(rng.randint(0, 12)))
            tokens.insert(rng.randint(0, len(tokens)), rng.choice([text, rng.choice(_STRINGS)]))
    if mutation in ("huge", "all"):
        for _ in range(rng.randint(1, 3)):
            position = rng.randint(0, len(tokens))
            if rng.random() < 0.5 and position < len(tokens):
                tokens[position] = rng.choice(_HUGE)  # e.g. an event, the gender or a visit type
            else:
                tokens.insert(position, rng.choice(_HUGE))
    if mutation in ("null", "all") and tokens:
        tokens[rng.randrange(len(tokens))] = None
    return tokens


def test_every_token_of_random_hostile_sequences_is_placed_structural_or_rejected_on_both_paths():
    from cehrgpt.omop.records import DEATH, EVENT, PERSON, REJECTION, TALLY, VISIT, decode_batches

    rng = random.Random(17)
    sequences = [_hostile_sequence(rng) for _ in range(600)]
    sequences[0] = f"{PROMPT} [VS] 9202 99999999999999999999 1 [VE]".split()  # the case
    # the per-patient decoder
    for tokens in sequences:
        out = decode_patient(1, tokens)
        assert out.placed + out.structural + len(out.rejections) == len(tokens), tokens
        assert sorted(r.position for r in out.rejections) == sorted({r.position for r in out.rejections})
    first = decode_patient(1, sequences[0])
    assert [(r.position, r.reason.value) for r in first.rejections] == [(6, "unexpected_token_in_visit")]
    assert first.events == [EventRecord(7, 1, day("2001-01-01"), 4)]
    # the job's path: the vectorised decoder, the per-patient one for the rest, the vocabulary check
    batch = pa.record_batch(
        {
            "person_id": pa.array(range(len(sequences)), pa.int64()),
            "concept_ids": pa.array(sequences, pa.list_(pa.string())),
            "file_path": ["file:/in/a.parquet"] * len(sequences),
            "row_index": pa.array(range(len(sequences)), pa.int64()),
        }
    )
    vocabulary = (np.array([0, 101, 202], np.int64), np.array([0, 0, 1], np.int8))
    records = pa.Table.from_batches(
        decode_batches(iter([batch]), {"file:/in/a.parquet": 0}, frozenset(), vocabulary)
    ).to_pylist()
    accounted = dict.fromkeys(range(len(sequences)), 0)
    tallied: dict[int, int] = {}
    for r in records:
        person = r["person_id"]
        if r["record"] == PERSON:
            accounted[person] += PROMPT_LENGTH
        elif r["record"] == VISIT:
            accounted[person] += 1 + (r["concept_id_2"] is not None)
        elif r["record"] in (EVENT, DEATH, REJECTION):
            accounted[person] += 1
        elif r["record"] == TALLY:
            accounted[person] += r["count"]
            tallied[person] = r["tokens"]
    assert tallied == {i: len(tokens) for i, tokens in enumerate(sequences)}
    assert accounted == tallied
    decoded = decode_arrow(batch.column("concept_ids"), np.ones(len(sequences), bool)).decoded
    assert 0 < decoded.sum() < len(sequences)  # both paths were taken
