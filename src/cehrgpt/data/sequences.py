"""One patient's visits and events → one CEHR-GPT patient sequence (pure Python, no Spark).

Every token is spelled by :mod:`cehrgpt.grammar`; this module only decides the
order. Dates are whole days since 1970-01-01 ("epoch days", :mod:`cehrgpt.dates`) throughout.

Rules (also in docs/architecture.md):

* Prompt: year and age at the first visit start, gender, race (unknown → ``Gender/0``/``Race/0``).
* Visits sorted by start day, real visits before artificial ones on the same
  day, then by visit id. An artificial visit groups a person's orphan events of
  one day (events whose visit is null or does not exist); its type is
  ``Visit/0`` because the source does not say what kind of visit it was, and
  ``9202`` (outpatient) would invent a fact.
* Non-inpatient visit: ``[VS] type concepts [VE]``, concepts by (day, concept id, value token, source
  value), so ties are ordered the same in every run.
* An event with a value (:class:`~cehrgpt.data.value_tokens.EventValue`, decided by
  :mod:`cehrgpt.data.value_tokens`) is its concept token followed by its value token, both with the
  concept's age, date and visit; the concept's entry of the value columns (``concept_value_masks``,
  ``number_as_values``, ``concept_as_values``, ``is_numeric_types``, ``units``) records a number's or a
  category's source value (a duration only its token); every other entry is 0 or null.
* Inpatient visit: a day cursor starts at the visit start; events by (day,
  concept id), days clipped to the start; the first event sits on the start day
  with the other events of its day (the grammar allows no day token before it),
  each later day is preceded by ``i-D<days since the cursor>``, so later days keep
  their true dates; the discharge concept
  (``Discharge/0`` when unknown) closes it. The cursor ends on the last event day.
* One gap token between visits (negative gaps clip to ``D0`` and are counted),
  and ``gap [VS] [DEATH] [VE]`` after the last visit when the person died.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from cehrgpt import grammar
from cehrgpt.data.value_tokens import DURATION, NUMBER, VALUE_CLASSES, EventValue
from cehrgpt.dates import age_in_years, day_to_date

OUTSIDE_VISIT = "0"
PROMPT_POSITION = -1


def week_of(day: int) -> int:
    return day // 7


def birth_date(
    year_of_birth: int | None,
    month_of_birth: int | None = None,
    day_of_birth: int | None = None,
    birth_day: int | None = None,
) -> date | None:
    """The birth date: ``birth_datetime`` (as epoch day) if known, else year + month/day (default 1)."""
    if birth_day is not None:
        return day_to_date(birth_day)
    if year_of_birth is None:
        return None
    try:
        return date(int(year_of_birth), int(month_of_birth or 1), int(day_of_birth or 1))
    except ValueError:
        return date(int(year_of_birth), 1, 1)


@dataclass
class Visit:
    """One visit and its kept events; ``visit_id`` None marks an artificial visit."""

    start_day: int
    visit_concept_id: int | None
    visit_id: int | None = None
    discharge_concept_id: int | None = None
    # (event day, concept id) or (event day, concept id, its value or None)
    events: list[tuple[Any, ...]] = field(default_factory=list)

    @property
    def is_inpatient(self) -> bool:
        return (
            self.visit_concept_id is not None and self.visit_concept_id in grammar.INPATIENT_VISIT_CONCEPT_IDS
        )

    def sort_key(self) -> tuple[int, int, int]:
        return (self.start_day, self.visit_id is None, self.visit_id or 0)


def visits_from_events(events: Iterable[dict]) -> list[Visit]:
    """Group one person's events into visits, sorted as the sequence lists them.

    Each event is a mapping with ``visit_id`` (None for an orphan event),
    ``visit_concept_id``, ``visit_start_day``, ``discharge_concept_id``,
    ``event_day``, ``concept_id`` and optionally ``value`` (an :class:`EventValue` or None).
    Orphan events form one artificial visit per day.
    """
    visits: dict[tuple[bool, int], Visit] = {}
    for event in events:
        visit_id = event["visit_id"]
        key = (False, visit_id) if visit_id is not None else (True, event["event_day"])
        visit = visits.get(key)
        if visit is None:
            if visit_id is None:
                visit = Visit(start_day=event["event_day"], visit_concept_id=None)
            else:
                visit = Visit(
                    start_day=event["visit_start_day"],
                    visit_concept_id=event["visit_concept_id"],
                    visit_id=visit_id,
                    discharge_concept_id=event["discharge_concept_id"],
                )
            visits[key] = visit
        visit.events.append((event["event_day"], event["concept_id"], event.get("value")))
    return sorted(visits.values(), key=Visit.sort_key)


@dataclass
class PatientSequence:
    """The columns of one ``patient_sequence`` row, plus what the report counts."""

    concept_ids: list[str] = field(default_factory=list)
    ages: list[int] = field(default_factory=list)
    dates: list[int] = field(default_factory=list)
    visit_concept_ids: list[str] = field(default_factory=list)
    visit_concept_orders: list[int] = field(default_factory=list)
    # the original CEHR-GPT's value columns, one entry per token (see :func:`patient_sequence`)
    concept_value_masks: list[int] = field(default_factory=list)
    number_as_values: list[float | None] = field(default_factory=list)
    concept_as_values: list[str | None] = field(default_factory=list)
    is_numeric_types: list[int] = field(default_factory=list)
    units: list[str | None] = field(default_factory=list)
    num_of_visits: int = 0
    negative_gaps: int = 0
    death_before_last_visit: bool = False
    value_tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(VALUE_CLASSES, 0))

    def add(self, token: str, age: int, week: int, visit_token: str, order: int) -> None:
        self.concept_ids.append(token)
        self.ages.append(age)
        self.dates.append(week)
        self.visit_concept_ids.append(visit_token)
        self.visit_concept_orders.append(order)
        self.concept_value_masks.append(0)
        self.number_as_values.append(None)
        self.concept_as_values.append(None)
        self.is_numeric_types.append(0)
        self.units.append(None)

    def add_event(
        self, concept_id: int, value: EventValue | None, age: int, week: int, visit_token: str, order: int
    ) -> None:
        """A clinical concept and, when it has one, its value token (same age, date and visit)."""
        self.add(grammar.concept_token(concept_id, "0"), age, week, visit_token, order)
        if value is None:
            return
        self.value_tokens[value.value_class] += 1
        if value.value_class != DURATION:
            self.concept_value_masks[-1] = 1
            self.is_numeric_types[-1] = int(value.value_class == NUMBER)
            self.number_as_values[-1] = value.number
            self.concept_as_values[-1] = (
                None if value.value_concept_id is None else str(value.value_concept_id)
            )
            self.units[-1] = None if value.unit_concept_id is None else str(value.unit_concept_id)
        self.add(value.token, age, week, visit_token, order)


def _event_key(event: tuple[Any, ...]) -> tuple[Any, ...]:
    """(day, concept id, then the value's order): events that tie are ordered the same in every run."""
    value = event[2] if len(event) > 2 else None
    return (event[0], event[1], *(value.sort_key() if value is not None else ("",)))


def patient_sequence(
    birth: date,
    gender_concept_id: int | None,
    race_concept_id: int | None,
    visits: list[Visit],
    death_day: int | None = None,
) -> PatientSequence:
    """The token sequence of one person.

    Args:
        birth: the birth date (see :func:`birth_date`).
        gender_concept_id: ``person.gender_concept_id``; 0/None is unknown.
        race_concept_id: ``person.race_concept_id``; 0/None is unknown.
        visits: at least one visit with at least one event each, sorted (see :func:`visits_from_events`).
        death_day: the death date as an epoch day, or None.

    Returns:
        The sequence; it always satisfies :func:`cehrgpt.grammar.is_valid` (without ``[END]``).
    """
    if not visits:
        raise ValueError("a patient sequence needs at least one visit")
    seq = PatientSequence()
    first = visits[0].start_day
    for token in (
        grammar.year_token(day_to_date(first).year),
        grammar.age_token(age_in_years(birth, first)),
        grammar.concept_token(gender_concept_id, grammar.UNKNOWN_GENDER),
        grammar.concept_token(race_concept_id, grammar.UNKNOWN_RACE),
    ):
        seq.add(token, PROMPT_POSITION, PROMPT_POSITION, OUTSIDE_VISIT, 0)

    cursor = first
    for order, visit in enumerate(visits, start=1):
        start = visit.start_day
        if order > 1:
            if start < cursor:
                seq.negative_gaps += 1
            seq.add(
                grammar.gap_token(start - cursor),
                age_in_years(birth, start),
                week_of(start),
                OUTSIDE_VISIT,
                0,
            )
        cursor = _add_visit(seq, birth, visit, order)
    seq.num_of_visits = len(visits)

    if death_day is not None:
        if death_day < cursor:
            seq.death_before_last_visit = True
        day = max(death_day, cursor)
        age, week = age_in_years(birth, day), week_of(day)
        seq.add(grammar.gap_token(day - cursor), age, week, OUTSIDE_VISIT, 0)
        death_visit = str(grammar.DEATH_VISIT_CONCEPT_ID)
        for token in (grammar.VISIT_START, grammar.DEATH, grammar.VISIT_END):
            seq.add(token, age, week, death_visit, len(visits) + 1)
    return seq


def _add_visit(seq: PatientSequence, birth: date, visit: Visit, order: int) -> int:
    """Append one visit's tokens; returns the cursor day after it."""
    start = visit.start_day
    visit_token = grammar.concept_token(visit.visit_concept_id, grammar.UNKNOWN_VISIT)
    start_age, start_week = age_in_years(birth, start), week_of(start)
    seq.add(grammar.VISIT_START, start_age, start_week, visit_token, order)
    seq.add(visit_token, start_age, start_week, visit_token, order)
    cursor = start
    if not visit.is_inpatient:
        for event in sorted(visit.events, key=_event_key):
            value = event[2] if len(event) > 2 else None
            seq.add_event(event[1], value, start_age, start_week, visit_token, order)
    else:
        age, week = start_age, start_week
        previous_day = None
        clipped = [(max(event[0], start), *event[1:]) for event in visit.events]
        for event in sorted(clipped, key=_event_key):
            day = event[0]
            if previous_day is not None and day != previous_day:
                age, week = age_in_years(birth, day), week_of(day)
                seq.add(grammar.inpatient_gap_token(day - cursor), age, week, visit_token, order)
                cursor = day
            previous_day = day
            seq.add_event(event[1], event[2] if len(event) > 2 else None, age, week, visit_token, order)
        discharge = grammar.concept_token(visit.discharge_concept_id, grammar.UNKNOWN_DISCHARGE)
        seq.add(discharge, age, week, visit_token, order)
    seq.add(grammar.VISIT_END, start_age, start_week, visit_token, order)
    return cursor
