"""Decode one patient's token sequence into OMOP records, accounting for every token.

The pure core of the restore job (:mod:`cehrgpt.omop.restore`): no Spark, no
vocabulary, no ids. :func:`decode_patient` reads a sequence with the grammar
of :mod:`cehrgpt.grammar` and returns the person, visits, clinical events and
death it describes, plus one :class:`Rejection` for every token it could not
place. Every token ends up in exactly one of three bins:

- *placed*: its information is in an output row (the 4 prompt tokens → person,
  a visit type → visit_occurrence, a discharge → ``discharged_to_concept_id``,
  ``[DEATH]`` → death, a clinical concept → an event, a value token → its event's
  value: :attr:`EventRecord.value_token`);
- *structural*: it only shapes rows (``[VS]``, ``[VE]``, gaps, inpatient day
  gaps, ``[START]``, ``[END]``, ``[PAD]``);
- *rejected*: with a :class:`Reason`.

Dates are whole days since 1970-01-01 (``int``): a cursor starts on Jan 1 of
the prompt year, a gap (``D<n>``, ``W<n>``, ``M<n>``, ``LT``) moves it before
the next visit, an inpatient gap (``i-D<n>``) moves it inside an inpatient
visit, and an inpatient visit ends on the cursor at its ``[VE]``.

Recovery rules (the smallest unit that is wrong is rejected, never more):

- a bad prompt, a duplicate or a missing person id rejects the whole patient;
- a visit that is not closed by ``[VE]``, has no visit type, no concept, or
  (inpatient) no discharge is rejected whole (``malformed_visit``), as is one
  cut off by the end of the sequence (``truncated_visit``) and one that
  follows the previous visit without a gap (``missing_gap``);
- a token the grammar does not allow inside a visit rejects only that token;
- between visits, a token that is neither a gap nor ``[VS]`` is rejected
  (``token_outside_visit``, ``misplaced_gap``); after a death only ``[END]``
  and ``[PAD]`` may follow (``after_death``), after ``[END]`` only ``[PAD]``;
- once a gap moves the date past the end date (``end_day``: the restore's
  ``--end_date``, today by default), every later token but ``[END]``/``[PAD]``
  is rejected (``after_end_date``): a generated timeline is cut where the data ends.

A number the output cannot hold (a concept id beyond int64, digits beyond
Python's integer-string limit) or a null token is read as ``[OOV]``, so it is
rejected like any other token the grammar does not allow there.

A value token (``v:<bin>``, ``vc:<concept>``, ``dur:<days>``; :func:`cehrgpt.grammar.value_class`)
belongs to the clinical concept before it: the grammar allows it only right after one, and
it is kept on that concept's event (``value_position``, ``value_token``). Which table an
event goes to depends on its concept's domain, so events and their values are checked
against the vocabulary and the value bins later (``concept_not_in_vocabulary``,
``unsupported_domain``, ``value_does_not_fit``, ``value_without_concept``), by the job
(:mod:`cehrgpt.omop.event_values`).

This is the reference decoder, one patient at a time; the job reads the
grammar-valid patients of a batch with its vectorised twin,
:func:`cehrgpt.omop.arrow_decode.decode_arrow`, which gives the same records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from enum import StrEnum
from functools import lru_cache

import numpy as np

from cehrgpt.dates import MAX_DAY, date_to_day
from cehrgpt.grammar import (
    PROMPT_LENGTH,
    START,
    GrammarState,
    TokenKind,
    assign_kinds,
    concept_id_of,
    gap_days,
    inpatient_gap_days,
    prompt_age,
    prompt_year,
    step,
    syntactic_kind,
)

MAX_AGE = 150  # a prompt age beyond this (either sign) is not a person
MAX_CONCEPT_ID = int(np.iinfo(np.int64).max)  # the restore writes concept ids as bigint


class Reason(StrEnum):
    """Why a token could not be placed: the fixed vocabulary of ``rejected.reason``."""

    MISSING_PERSON_ID = "missing_person_id"
    DUPLICATE_PERSON = "duplicate_person"
    BAD_PROMPT = "bad_prompt"
    MALFORMED_VISIT = "malformed_visit"
    TRUNCATED_VISIT = "truncated_visit"
    MISSING_GAP = "missing_gap"
    MISPLACED_GAP = "misplaced_gap"
    TOKEN_OUTSIDE_VISIT = "token_outside_visit"
    UNEXPECTED_TOKEN_IN_VISIT = "unexpected_token_in_visit"
    DATE_OUT_OF_RANGE = "date_out_of_range"
    AFTER_DEATH = "after_death"
    AFTER_END = "after_end"
    AFTER_END_DATE = "after_end_date"  # the cursor passed the restore's --end_date (a CDM holds no future)
    SEQUENCE_TOO_LONG = "sequence_too_long"  # beyond the job's id layout (2^18 tokens, records.POSITION_BITS)
    CONCEPT_NOT_IN_VOCABULARY = "concept_not_in_vocabulary"
    UNSUPPORTED_DOMAIN = "unsupported_domain"
    # a value token its concept's row cannot hold: a class the concept's table has no column for, a number
    # bin the concept has no bins for (or beyond them), any value when the restore has no value bins
    VALUE_DOES_NOT_FIT = "value_does_not_fit"
    VALUE_WITHOUT_CONCEPT = "value_without_concept"  # the value's concept was rejected (vocabulary, domain)


# Reasons that reject a whole patient: no person row is written.
PATIENT_REASONS = frozenset(
    {Reason.MISSING_PERSON_ID, Reason.DUPLICATE_PERSON, Reason.BAD_PROMPT, Reason.SEQUENCE_TOO_LONG}
)


@dataclass(frozen=True)
class PersonRecord:
    """The person a prompt describes; born on Jan 1 of ``year_of_birth``."""

    gender_concept_id: int
    race_concept_id: int
    year_of_birth: int


@dataclass(frozen=True)
class VisitRecord:
    """A visit, identified by the position of its ``[VS]`` token."""

    position: int
    visit_concept_id: int
    start_day: int
    end_day: int
    discharged_to_concept_id: int | None  # inpatient visits only
    preceding_position: int | None  # the patient's previous placed visit


@dataclass(frozen=True)
class EventRecord:
    """A clinical concept on a day, inside the visit whose ``[VS]`` is at ``visit_position``,
    with the value token that follows it (if any; the job turns it into the row's value columns)."""

    position: int
    concept_id: int
    day: int
    visit_position: int
    value_position: int | None = None
    value_token: str | None = None


@dataclass(frozen=True)
class DeathRecord:
    position: int  # of the [DEATH] token
    day: int


@dataclass(frozen=True)
class Rejection:
    position: int
    token: str
    reason: Reason


@dataclass
class DecodedPatient:
    """Everything one sequence decodes to, and the token accounting that proves nothing was lost."""

    person: PersonRecord | None = None
    visits: list[VisitRecord] = field(default_factory=list)
    events: list[EventRecord] = field(default_factory=list)
    death: DeathRecord | None = None
    rejections: list[Rejection] = field(default_factory=list)
    structural: int = 0

    @property
    def placed(self) -> int:
        """Tokens whose information is in a record (events still await the vocabulary check)."""
        if self.person is None:
            return 0
        discharges = sum(v.discharged_to_concept_id is not None for v in self.visits)
        values = sum(e.value_token is not None for e in self.events)
        return (
            PROMPT_LENGTH
            + len(self.visits)
            + discharges
            + len(self.events)
            + values
            + (self.death is not None)
        )


@lru_cache(maxsize=1 << 20)  # bounded: garbage spellings must not grow it forever
def restore_kind(token: str | None) -> TokenKind | None:
    """:func:`cehrgpt.grammar.syntactic_kind`, except that what the restore cannot hold is ``[OOV]``.

    That is a null token, a concept id beyond :data:`MAX_CONCEPT_ID`, and a number with
    more digits than Python converts (``int()`` raises ``ValueError``): one such token must
    be rejected, not abort the whole job. Cached: generated vocabularies are small and tokens
    repeat, so doing each distinct token's regex work once makes the restore several times faster.
    """
    if token is None:
        return TokenKind.OOV
    try:
        kind = syntactic_kind(token)
        if kind is None and (concept_id_of(token) or 0) > MAX_CONCEPT_ID:
            return TokenKind.OOV
    except ValueError:
        return TokenKind.OOV
    return kind


def sequence_token_kinds(tokens: Sequence[str]) -> list[TokenKind]:
    """The kind of every token of one sequence: :func:`cehrgpt.grammar.assign_kinds` over :func:`restore_kind`.

    The positional rule is the grammar's; only the per-token lookup differs (cached, and
    what :func:`restore_kind` calls ``[OOV]`` is ``[OOV]`` here).
    """
    return assign_kinds(tokens, restore_kind)


def _reject_all(tokens: Sequence[str], reason: Reason) -> DecodedPatient:
    return DecodedPatient(rejections=[Rejection(i, t, reason) for i, t in enumerate(tokens)])


def _decode_prompt(tokens: Sequence[str], kinds: Sequence[TokenKind], offset: int) -> PersonRecord | None:
    """The person of a 4-token prompt starting at ``offset``, or None when it does not describe one.

    A negative age is kept (the grammar allows it and the ETL writes it for
    source events dated before birth): the person is then born after the first visit.
    """
    if len(tokens) < offset + PROMPT_LENGTH:
        return None
    expected = (TokenKind.YEAR, TokenKind.AGE, TokenKind.GENDER, TokenKind.RACE)
    if tuple(kinds[offset : offset + PROMPT_LENGTH]) != expected:
        return None
    year = prompt_year(tokens[offset])
    age = prompt_age(tokens[offset + 1])
    if year is None or age is None or year < 1 or abs(age) > MAX_AGE or not 1 <= year - age <= 9999:
        return None
    gender = concept_id_of(tokens[offset + 2])
    race = concept_id_of(tokens[offset + 3])
    assert gender is not None and race is not None  # GENDER and RACE kinds are concept-like
    return PersonRecord(gender_concept_id=gender, race_concept_id=race, year_of_birth=year - age)


class _Decoder:
    """The walk over one sequence after its prompt; see the module docstring for the rules."""

    def __init__(
        self, tokens: Sequence[str], kinds: Sequence[TokenKind], out: DecodedPatient, day: int, end_day: int
    ):
        self.tokens = tokens
        self.kinds = kinds
        self.out = out
        self.day = day
        self.end_day = end_day
        self.previous_visit: int | None = None

    def reject(self, start: int, stop: int, reason: Reason) -> None:
        self.out.rejections.extend(Rejection(p, self.tokens[p], reason) for p in range(start, stop))

    def run(self, start: int) -> None:
        tokens, kinds, out = self.tokens, self.kinds, self.out
        n = len(tokens)
        after_visit = ended = dead = False
        i = start
        while i < n:
            kind = kinds[i]
            if ended:
                if kind == TokenKind.PAD:
                    out.structural += 1
                else:
                    self.reject(i, i + 1, Reason.AFTER_END)
                i += 1
            elif kind in (TokenKind.END, TokenKind.PAD):
                out.structural += 1
                ended = kind == TokenKind.END
                i += 1
            elif dead:
                self.reject(i, i + 1, Reason.AFTER_DEATH)
                i += 1
            elif self.day > self.end_day:
                self.reject(i, i + 1, Reason.AFTER_END_DATE)
                i += 1
            elif kind == TokenKind.GAP:
                self._gap(i, after_visit)
                after_visit = False
                i += 1
            elif kind == TokenKind.VISIT_START:
                close = i + 1
                while close < n and kinds[close] not in _VISIT_STOPS:
                    close += 1
                if close == n:
                    self.reject(i, n, Reason.TRUNCATED_VISIT)
                elif kinds[close] != TokenKind.VISIT_END:
                    self.reject(i, close, Reason.MALFORMED_VISIT)
                    close -= 1  # the token that interrupted the visit is read again on its own
                elif after_visit:
                    self.reject(i, close + 1, Reason.MISSING_GAP)
                else:
                    dead = self._visit(i, close)
                after_visit = True
                i = close + 1
            else:
                self.reject(i, i + 1, Reason.TOKEN_OUTSIDE_VISIT)
                i += 1

    def _gap(self, i: int, after_visit: bool) -> None:
        if not after_visit:
            self.reject(i, i + 1, Reason.MISPLACED_GAP)
            return
        moved = self.day + (gap_days(self.tokens[i]) or 0)
        if moved > MAX_DAY:
            self.reject(i, i + 1, Reason.DATE_OUT_OF_RANGE)
            return
        self.day = moved
        self.out.structural += 1

    def _visit(self, open_: int, close: int) -> bool:
        """Decode ``[VS] ... [VE]`` at ``open_..close``; True when it is the patient's death."""
        tokens, kinds, out = self.tokens, self.kinds, self.out
        if close == open_ + 1:
            self.reject(open_, close + 1, Reason.MALFORMED_VISIT)
            return False
        type_kind = kinds[open_ + 1]
        if type_kind == TokenKind.DEATH:
            if close != open_ + 2:
                self.reject(open_, close + 1, Reason.MALFORMED_VISIT)
                return False
            out.death = DeathRecord(position=open_ + 1, day=self.day)
            out.structural += 2
            return True
        state = step(GrammarState.VISIT_OPENED, type_kind)
        if state is None:
            self.reject(open_, close + 1, Reason.MALFORMED_VISIT)
            return False
        day = self.day
        events: list[EventRecord] = []
        rejections: list[Rejection] = []
        discharge: int | None = None
        gaps = 0
        for p in range(open_ + 2, close):
            kind = kinds[p]
            nxt = step(state, kind)
            if nxt is None:
                rejections.append(Rejection(p, tokens[p], Reason.UNEXPECTED_TOKEN_IN_VISIT))
                continue
            if kind == TokenKind.CONCEPT:
                events.append(EventRecord(p, concept_id_of(tokens[p]) or 0, day, open_))
            elif kind == TokenKind.VALUE:  # allowed only while the last token kept is a concept: its value
                events[-1] = replace(events[-1], value_position=p, value_token=tokens[p])
            elif kind == TokenKind.INPATIENT_GAP:
                moved = day + (inpatient_gap_days(tokens[p]) or 0)
                if moved > MAX_DAY:
                    rejections.append(Rejection(p, tokens[p], Reason.DATE_OUT_OF_RANGE))
                    continue
                day = moved
                gaps += 1
            elif kind == TokenKind.DISCHARGE:
                discharge = concept_id_of(tokens[p])
            state = nxt
        if step(state, TokenKind.VISIT_END) is None:
            self.reject(open_, close + 1, Reason.MALFORMED_VISIT)
            return False
        out.visits.append(
            VisitRecord(
                position=open_,
                visit_concept_id=concept_id_of(tokens[open_ + 1]) or 0,
                start_day=self.day,
                end_day=day,
                discharged_to_concept_id=discharge,
                preceding_position=self.previous_visit,
            )
        )
        out.events.extend(events)
        out.rejections.extend(rejections)
        out.structural += 2 + gaps
        self.previous_visit = open_
        self.day = day
        return False


_VISIT_STOPS = frozenset({TokenKind.VISIT_END, TokenKind.VISIT_START, TokenKind.END})


def decode_patient(
    person_id: int | None,
    tokens: Sequence[str] | None,
    *,
    duplicate: bool = False,
    end_day: int = MAX_DAY,
) -> DecodedPatient:
    """Decode one patient's tokens into records and rejections.

    Args:
        person_id: the patient's id; None rejects the patient (``missing_person_id``).
        tokens: the sequence (``concept_ids``); a leading ``[START]`` is allowed.
        duplicate: True when an earlier input row already had this ``person_id``.
        end_day: the last epoch day a record may have: once a gap moves the cursor past it, every
            later token is rejected (``after_end_date``), so nothing is dated after the data's end.

    Returns:
        The decoded patient. ``placed + structural + len(rejections) == len(tokens)``.
    """
    tokens = list(tokens or ())
    if person_id is None:
        return _reject_all(tokens, Reason.MISSING_PERSON_ID)
    if duplicate:
        return _reject_all(tokens, Reason.DUPLICATE_PERSON)
    offset = 1 if tokens and tokens[0] == START else 0
    kinds = [TokenKind.START] * offset + sequence_token_kinds(tokens[offset:])
    person = _decode_prompt(tokens, kinds, offset)
    if person is None:
        return _reject_all(tokens, Reason.BAD_PROMPT)
    out = DecodedPatient(person=person, structural=offset)
    first_day = date_to_day(date(prompt_year(tokens[offset]) or 1, 1, 1))
    _Decoder(tokens, kinds, out, first_day, min(end_day, MAX_DAY)).run(offset + PROMPT_LENGTH)
    return out
