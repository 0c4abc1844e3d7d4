"""The pure token assembly: known patients → exact token, age, date and visit columns."""

from __future__ import annotations

from datetime import date

import pytest

from cehrgpt import grammar
from cehrgpt.data.sequences import Visit, birth_date, patient_sequence, visits_from_events
from cehrgpt.dates import age_in_years, date_to_day


def day(y: int, m: int, d: int) -> int:
    return date_to_day(date(y, m, d))


def test_inpatient_outpatient_long_gap_and_death():
    visits = [
        Visit(
            start_day=day(2020, 1, 10),
            visit_concept_id=9201,
            visit_id=100,
            discharge_concept_id=8536,
            events=[
                (day(2020, 1, 12), 4163872),
                (day(2020, 1, 9), 4329847),  # before the visit start: clipped to it
                (day(2020, 1, 10), 201826),
                (day(2020, 1, 12), 1127433),
                (day(2020, 1, 12), 316139),
            ],
        ),
        Visit(day(2020, 3, 1), 9202, 101, None, [(day(2020, 3, 1), 1127078), (day(2020, 3, 1), 320128)]),
        Visit(day(2023, 6, 1), 9203, 102, None, [(day(2023, 6, 1), 19059056)]),
    ]
    seq = patient_sequence(date(1980, 6, 15), 8532, 8527, visits, death_day=day(2024, 1, 1))
    assert seq.concept_ids == [
        "year:2020", "age:39", "8532", "8527",
        "[VS]", "9201", "201826", "4329847", "i-D2", "316139", "1127433", "4163872", "8536", "[VE]",
        "D49",
        "[VS]", "9202", "320128", "1127078", "[VE]",
        "LT",
        "[VS]", "9203", "19059056", "[VE]",
        "D214",
        "[VS]", "[DEATH]", "[VE]",
    ]  # fmt: skip
    assert seq.ages == [-1] * 4 + [39] * 10 + [39] + [39] * 5 + [42] + [42] * 4 + [43] + [43] * 3
    assert seq.dates == [-1] * 4 + [2610] * 10 + [2617] + [2617] * 5 + [2787] + [2787] * 4 + [2817] * 4
    assert seq.visit_concept_ids == (
        ["0"] * 4 + ["9201"] * 10 + ["0"] + ["9202"] * 5 + ["0"] + ["9203"] * 4 + ["0"] + ["0"] * 3
    )
    assert seq.visit_concept_orders == [0] * 4 + [1] * 10 + [0] + [2] * 5 + [0] + [3] * 4 + [0] + [4] * 3
    assert seq.num_of_visits == 3
    assert (seq.negative_gaps, seq.death_before_last_visit) == (0, False)
    assert grammar.is_valid(seq.concept_ids)


def test_orphan_events_unknown_demographics_and_death_before_the_last_visit():
    events = [
        {"visit_id": None, "event_day": day(2021, 5, 10), "concept_id": 4329847},
        {"visit_id": None, "event_day": day(2021, 5, 12), "concept_id": 255848},
        {"visit_id": None, "event_day": day(2021, 5, 10), "concept_id": 432867},
        {
            "visit_id": 105,
            "visit_concept_id": 9201,
            "visit_start_day": day(2021, 6, 1),
            "discharge_concept_id": None,
            "event_day": day(2021, 6, 3),
            "concept_id": 2211,
        },
        {
            "visit_id": 105,
            "visit_concept_id": 9201,
            "visit_start_day": day(2021, 6, 1),
            "discharge_concept_id": None,
            "event_day": day(2021, 6, 1),
            "concept_id": 4163872,
        },
    ]
    seq = patient_sequence(date(1990, 1, 1), 0, None, visits_from_events(events), death_day=day(2021, 5, 1))
    assert seq.concept_ids == [
        "year:2021", "age:31", "Gender/0", "Race/0",
        "[VS]", "Visit/0", "432867", "4329847", "[VE]",
        "D2",
        "[VS]", "Visit/0", "255848", "[VE]",
        "D20",
        "[VS]", "9201", "4163872", "i-D2", "2211", "Discharge/0", "[VE]",
        "D0",
        "[VS]", "[DEATH]", "[VE]",
    ]  # fmt: skip
    assert (
        seq.dates
        == [-1] * 4 + [2679] * 5 + [2679] + [2679] * 4 + [2682] * 4 + [2683] * 3 + [2682] + [2683] * 4
    )
    assert seq.visit_concept_ids == (
        ["0"] * 4 + ["Visit/0"] * 5 + ["0"] + ["Visit/0"] * 4 + ["0"] + ["9201"] * 7 + ["0"] * 4
    )
    assert seq.visit_concept_orders == [0] * 4 + [1] * 5 + [0] + [2] * 4 + [0] + [3] * 7 + [0] + [4] * 3
    assert seq.death_before_last_visit is True
    assert grammar.is_valid(seq.concept_ids)


def test_inpatient_first_day_after_the_start_keeps_its_events_together():
    visit = Visit(
        day(2020, 1, 1), 262, 1, 0, [(day(2020, 1, 3), 2), (day(2020, 1, 3), 1), (day(2020, 1, 4), 3)]
    )
    seq = patient_sequence(date(2000, 1, 1), 8507, 8516, [visit])
    assert seq.concept_ids[4:] == ["[VS]", "262", "1", "2", "i-D3", "3", "Discharge/0", "[VE]"]


def test_overlapping_visits_clip_the_gap_to_zero_and_count_it():
    first = Visit(day(2020, 1, 1), 9201, 1, 8536, [(day(2020, 1, 1), 1), (day(2020, 1, 5), 2)])
    second = Visit(day(2020, 1, 3), 9202, 2, None, [(day(2020, 1, 3), 3)])
    seq = patient_sequence(date(2000, 1, 1), 8507, 8516, [first, second])
    assert seq.concept_ids[4:] == [
        "[VS]",
        "9201",
        "1",
        "i-D4",
        "2",
        "8536",
        "[VE]",
        "D0",
        "[VS]",
        "9202",
        "3",
        "[VE]",
    ]
    assert seq.negative_gaps == 1


def test_real_visits_come_before_artificial_ones_on_the_same_day():
    events = [
        {"visit_id": None, "event_day": 10, "concept_id": 5},
        {
            "visit_id": 7,
            "visit_concept_id": 9202,
            "visit_start_day": 10,
            "discharge_concept_id": None,
            "event_day": 10,
            "concept_id": 6,
        },
    ]
    assert [(v.visit_id, v.visit_concept_id) for v in visits_from_events(events)] == [(7, 9202), (None, None)]


def test_gap_spellings_follow_the_grammar_threshold():
    visits = [Visit(0, 9202, 1, None, [(0, 1)]), Visit(1079, 9202, 2, None, [(1079, 1)])]
    visits.append(Visit(1079 + 1080, 9202, 3, None, [(1079 + 1080, 1)]))
    seq = patient_sequence(date(1960, 1, 1), 8507, 8516, visits)
    assert [t for t in seq.concept_ids if grammar.gap_days(t) is not None] == ["D1079", "LT"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((1980, 6, 15, None), date(1980, 6, 15)),
        ((1980, None, None, None), date(1980, 1, 1)),
        ((1980, 2, 31, None), date(1980, 1, 1)),  # impossible day: the year is all we trust
        ((1980, 6, 15, day(1981, 2, 3)), date(1981, 2, 3)),  # birth_datetime wins
        ((None, None, None, None), None),
    ],
)
def test_birth_date_rules(args, expected):
    assert birth_date(*args) == expected


def test_age_counts_whole_years():
    assert age_in_years(date(2000, 3, 1), day(2001, 2, 28)) == 0
    assert age_in_years(date(2000, 3, 1), day(2001, 3, 1)) == 1


def test_a_person_without_visits_has_no_sequence():
    with pytest.raises(ValueError, match="at least one visit"):
        patient_sequence(date(2000, 1, 1), 8507, 8516, [])
