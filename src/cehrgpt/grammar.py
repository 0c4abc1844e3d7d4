"""The CEHR-GPT token grammar: the one definition of what a patient sequence is.

The ETL writes sequences with these spellings, the tokenizer records each
vocabulary token's :class:`TokenKind`, the constrained decoder masks tokens with
:func:`transition_tables`, and the OMOP restore reads sequences back with
:func:`assign_kinds` and :func:`step`. Change the format here and nowhere else.

A sequence::

    year:2001 age:12 8532 8527 [VS] 9203 380378 3004249 v:7 [VE] D154 [VS] 9201 4356 i-D1 19078461 dur:7 0 [VE] LT ... [END]

Grammar (``*`` = zero or more, ``+`` = one or more, ``?`` = optional)::

    patient    := year age gender race visit (gap visit)* (gap death)? [END]?
    visit      := [VS] visit_type event+ [VE]                                  (not inpatient)
                | [VS] inpatient_type event (i-gap? event)* discharge [VE]    (inpatient)
    event      := concept value?
    death      := [VS] [DEATH] [VE]

A value token (:class:`ValueClass`) may follow a clinical concept and nothing else: ``v:<k>``
the k-th of the concept's value bins (``value_as_number``; the bins are per concept, an artifact
of the ETL, :mod:`cehrgpt.values`), ``vc:<concept id>`` a categorical value (``value_as_concept_id``),
``dur:<days>`` a drug exposure's duration bin (:data:`DRUG_DURATION_EDGES_DAYS`; no token = ends the
day it starts). Which concepts take which class is vocabulary data (the tokenizer records it from
the training sequences); the grammar only says where a value may stand.

Between two visits there is always exactly one gap token (``D0`` for the same
day). Dates: a cursor starts on Jan 1 of the prompt year; a gap moves it before
the next visit starts, an inpatient gap moves it inside an inpatient visit, and
an inpatient visit ends on the cursor.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum, IntFlag

import numpy as np

# --- spellings ---------------------------------------------------------------------------------------------

PAD = "[PAD]"
OOV = "[OOV]"
START = "[START]"
END = "[END]"
VISIT_START = "[VS]"
VISIT_END = "[VE]"
DEATH = "[DEATH]"
SPECIAL_TOKENS = (PAD, OOV, START, END, VISIT_START, VISIT_END, DEATH)

UNKNOWN_GENDER = "Gender/0"
UNKNOWN_RACE = "Race/0"
UNKNOWN_VISIT = "Visit/0"
UNKNOWN_DISCHARGE = "Discharge/0"
_UNKNOWN_SPELLINGS = {UNKNOWN_GENDER, UNKNOWN_RACE, UNKNOWN_VISIT, UNKNOWN_DISCHARGE, "0"}

LONG_TERM = "LT"
LONG_TERM_THRESHOLD_DAYS = 1080  # gaps of this many days or more are written LT
LONG_TERM_DAYS = 3 * 365  # and read back as this many days
PROMPT_LENGTH = 4

INPATIENT_VISIT_CONCEPT_IDS = frozenset({9201, 262, 8971, 8920})
DEATH_VISIT_CONCEPT_ID = 0  # the death pseudo-visit carries no visit concept

_YEAR = re.compile(r"^year:(\d{1,4})$")
_AGE = re.compile(r"^age:(-?\d{1,3})$")
_DAY_GAP = re.compile(r"^D(\d+)$")
_WEEK_GAP = re.compile(r"^W([0-3])$")
_MONTH_GAP = re.compile(r"^M(1[01]|[1-9])$")
_INPATIENT_GAP = re.compile(r"^i-D(\d+)$")
_CONCEPT = re.compile(r"^\d+$")
_VALUE_BIN = re.compile(r"^v:([1-9]\d?)$")
_VALUE_CONCEPT = re.compile(r"^vc:([1-9]\d*)$")
_DRUG_DURATION = re.compile(r"^dur:(\d+)$")

#: Lower edges (days) of the drug-duration bins: ``dur:<edge>`` covers [edge, next edge) days from the
#: exposure's start to its end; the edges sit on the usual supplies (a week, two, a month, a quarter...).
#: A duration of 0 days (ends the day it starts) has no token.
DRUG_DURATION_EDGES_DAYS = (1, 7, 14, 28, 30, 60, 90, 180, 365)
MAX_VALUE_BINS = 99  # v:1 .. v:99


def year_token(year: int) -> str:
    return f"year:{int(year)}"


def age_token(age: int) -> str:
    return f"age:{int(age)}"


def gap_token(days: int) -> str:
    """The token for ``days`` between the cursor and the next visit (negative gaps clip to ``D0``)."""
    days = max(int(days), 0)
    return LONG_TERM if days >= LONG_TERM_THRESHOLD_DAYS else f"D{days}"


def inpatient_gap_token(days: int) -> str:
    return f"i-D{max(int(days), 1)}"


def concept_token(concept_id: int | None, unknown: str) -> str:
    """A concept id as a token; a null or 0 concept becomes the role's ``unknown`` spelling."""
    return unknown if concept_id is None or int(concept_id) == 0 else str(int(concept_id))


def value_bin_token(bin_number: int) -> str:
    """The token of the ``bin_number``-th (1-based) of a concept's value bins."""
    if not 1 <= int(bin_number) <= MAX_VALUE_BINS:
        raise ValueError(f"value bin {bin_number} is outside 1..{MAX_VALUE_BINS}")
    return f"v:{int(bin_number)}"


def value_concept_token(value_concept_id: int) -> str:
    """The token of a categorical value (``value_as_concept_id``, never 0)."""
    if int(value_concept_id) <= 0:
        raise ValueError(f"a categorical value needs a concept id above 0, got {value_concept_id}")
    return f"vc:{int(value_concept_id)}"


def drug_duration_token(days: int) -> str | None:
    """The token of a drug exposure lasting ``days`` (end − start); None for 0 days or fewer (no token)."""
    days = int(days)
    if days < DRUG_DURATION_EDGES_DAYS[0]:
        return None
    edge = max(e for e in DRUG_DURATION_EDGES_DAYS if e <= days)
    return f"dur:{edge}"


def value_bin_of(token: str) -> int | None:
    m = _VALUE_BIN.match(token)
    return int(m.group(1)) if m else None


def value_concept_of(token: str) -> int | None:
    m = _VALUE_CONCEPT.match(token)
    return int(m.group(1)) if m else None


def drug_duration_range(token: str) -> tuple[int, int | None] | None:
    """The [low, high) days a duration token covers (high None for the last bin), or None when not one."""
    m = _DRUG_DURATION.match(token)
    if not m or int(m.group(1)) not in DRUG_DURATION_EDGES_DAYS:
        return None
    low = int(m.group(1))
    i = DRUG_DURATION_EDGES_DAYS.index(low)
    return low, (DRUG_DURATION_EDGES_DAYS[i + 1] if i + 1 < len(DRUG_DURATION_EDGES_DAYS) else None)


def gap_days(token: str) -> int | None:
    """Days a between-visit gap token moves the cursor, or None when ``token`` is not one."""
    if token == LONG_TERM:
        return LONG_TERM_DAYS
    if m := _DAY_GAP.match(token):
        return int(m.group(1))
    if m := _WEEK_GAP.match(token):
        return 7 * int(m.group(1))
    if m := _MONTH_GAP.match(token):
        return 30 * int(m.group(1))
    return None


def inpatient_gap_days(token: str) -> int | None:
    m = _INPATIENT_GAP.match(token)
    return int(m.group(1)) if m else None


def prompt_year(token: str) -> int | None:
    m = _YEAR.match(token)
    return int(m.group(1)) if m else None


def prompt_age(token: str) -> int | None:
    m = _AGE.match(token)
    return int(m.group(1)) if m else None


def concept_id_of(token: str) -> int | None:
    """The OMOP concept id a concept-like token names (0 for the unknown spellings), else None."""
    if token in _UNKNOWN_SPELLINGS:
        return 0
    return int(token) if _CONCEPT.match(token) else None


def is_concept_like(token: str) -> bool:
    return concept_id_of(token) is not None


class ValueClass(IntFlag):
    """What a value token says about the concept before it; a concept's accepted classes form a mask."""

    NONE = 0
    NUMBER = 1  # v:<bin>
    CATEGORY = 2  # vc:<concept id>
    DURATION = 4  # dur:<days>


def value_class(token: str) -> ValueClass:
    """The class of a value token, ``ValueClass.NONE`` for any other token."""
    if _VALUE_BIN.match(token):
        return ValueClass.NUMBER
    if _VALUE_CONCEPT.match(token):
        return ValueClass.CATEGORY
    if drug_duration_range(token) is not None:
        return ValueClass.DURATION
    return ValueClass.NONE


# --- what two sequences are compared on --------------------------------------------------------------------

#: Tokens that say nothing about the patient: how a sequence is framed or padded. The ETL writes
#: training rows without ``[END]``, the generator closes with it every patient that ends before its
#: context window, so a comparison of patients that kept them would miss a generated copy of a training patient.
NON_CLINICAL_TOKENS = frozenset({PAD, OOV, START, END})


def clinical_content(tokens: Sequence[str | None] | None) -> tuple[str, ...]:
    """The tokens of a sequence that describe the patient, in order: what every comparison of patients uses.

    Drops :data:`NON_CLINICAL_TOKENS` and null tokens wherever they stand; keeps the prompt,
    visits, gaps and death. Two sequences are the same patient exactly when their clinical
    contents are equal.
    """
    if tokens is None:
        return ()
    return tuple(t for t in tokens if t is not None and t not in NON_CLINICAL_TOKENS)


def without_calendar(content: Sequence[str]) -> tuple[str, ...]:
    """Clinical content with the prompt's year left out: the same patient shifted in calendar time compares equal.

    Every date of a restored patient follows from the prompt year and the gaps, so dropping the
    year token drops the calendar and keeps the patient's timeline (age, order, gaps).
    """
    return tuple(t for i, t in enumerate(content) if not (i == 0 and _YEAR.match(t)))


# --- kinds and states --------------------------------------------------------------------------------------


class TokenKind(IntEnum):
    """What a token is. Concept-like tokens take their kind from their position in a sequence."""

    PAD = 0
    OOV = 1
    START = 2
    END = 3
    VISIT_START = 4
    VISIT_END = 5
    DEATH = 6
    YEAR = 7
    AGE = 8
    GENDER = 9
    RACE = 10
    VISIT_TYPE = 11  # a visit concept that is not inpatient
    INPATIENT_VISIT_TYPE = 12
    GAP = 13
    INPATIENT_GAP = 14
    DISCHARGE = 15
    CONCEPT = 16  # a clinical event: condition, drug, procedure, measurement, observation, device
    VALUE = 17  # the value of the concept before it (a ValueClass)


_SPECIAL_KINDS = {
    PAD: TokenKind.PAD,
    OOV: TokenKind.OOV,
    START: TokenKind.START,
    END: TokenKind.END,
    VISIT_START: TokenKind.VISIT_START,
    VISIT_END: TokenKind.VISIT_END,
    DEATH: TokenKind.DEATH,
}


def syntactic_kind(token: str) -> TokenKind | None:
    """The kind a token has wherever it stands; None for concept-like tokens, whose kind is positional."""
    if token in _SPECIAL_KINDS:
        return _SPECIAL_KINDS[token]
    if _YEAR.match(token):
        return TokenKind.YEAR
    if _AGE.match(token):
        return TokenKind.AGE
    if gap_days(token) is not None:
        return TokenKind.GAP
    if _INPATIENT_GAP.match(token):
        return TokenKind.INPATIENT_GAP
    if value_class(token):
        return TokenKind.VALUE
    if is_concept_like(token):
        return None
    return TokenKind.OOV


def visit_type_kind(token: str) -> TokenKind:
    return (
        TokenKind.INPATIENT_VISIT_TYPE
        if concept_id_of(token) in INPATIENT_VISIT_CONCEPT_IDS
        else TokenKind.VISIT_TYPE
    )


# The positional rule, as data: what a concept-like token (syntactic kind None) is, by where it stands.
# In order of precedence: at a prompt position of PROMPT_CONCEPT_KINDS, that demographic; right after a
# token of kind VISIT_TYPE_FOLLOWS, the visit's type (inpatient or not by its concept, visit_type_kind);
# inside an inpatient visit (from its inpatient visit type to the next kind in INPATIENT_STOPS) and
# right before a token of kind DISCHARGE_PRECEDES, the discharge; anywhere else a clinical CONCEPT.
# assign_kinds applies it token by token; the restore's vectorised decoder (omop.arrow_decode.decode_arrow)
# applies the same tables to whole batches.
PROMPT_CONCEPT_KINDS: dict[int, TokenKind] = {2: TokenKind.GENDER, 3: TokenKind.RACE}
VISIT_TYPE_FOLLOWS = TokenKind.VISIT_START
DISCHARGE_PRECEDES = TokenKind.VISIT_END
INPATIENT_STOPS = frozenset({TokenKind.VISIT_START, TokenKind.VISIT_END})


def assign_kinds(
    tokens: Sequence[str], kind_of: Callable[[str], TokenKind | None] = syntactic_kind
) -> list[TokenKind]:
    """Give every token of one sequence its kind, reading concept-like tokens by position.

    Works on malformed sequences too (the restore job reads generated ones): it
    never fails, and :func:`step` then says where the grammar is broken.

    Args:
        tokens: one sequence.
        kind_of: a token's kind wherever it stands, None when positional; :func:`syntactic_kind`
            by default. The restore passes a cached, stricter one
            (:func:`cehrgpt.omop.decode.restore_kind`); the positional rule is always this one.
    """
    raw = [kind_of(token) for token in tokens]
    kinds: list[TokenKind] = []
    in_inpatient = False
    last = len(raw) - 1
    for i, kind in enumerate(raw):
        if kind is None:
            if i in PROMPT_CONCEPT_KINDS:
                kind = PROMPT_CONCEPT_KINDS[i]
            elif i > 0 and raw[i - 1] == VISIT_TYPE_FOLLOWS:
                kind = visit_type_kind(tokens[i])
                in_inpatient = kind == TokenKind.INPATIENT_VISIT_TYPE
            elif in_inpatient and i < last and raw[i + 1] == DISCHARGE_PRECEDES:
                kind = TokenKind.DISCHARGE
            else:
                kind = TokenKind.CONCEPT
        elif kind in INPATIENT_STOPS:
            in_inpatient = False
        kinds.append(kind)
    return kinds


class GrammarState(IntEnum):
    """Where a sequence stands; the state after the 4-token prompt is BEFORE_VISIT."""

    PROMPT_YEAR = 0
    PROMPT_AGE = 1
    PROMPT_GENDER = 2
    PROMPT_RACE = 3
    BEFORE_VISIT = 4  # after the prompt or a gap: only [VS]
    VISIT_OPENED = 5  # after [VS]: a visit type or [DEATH]
    OUTPATIENT_EMPTY = 6  # after a non-inpatient visit type: a concept
    OUTPATIENT = 7  # right after a concept: a concept, its value or [VE]
    INPATIENT_EMPTY = 8  # after an inpatient visit type: a concept
    INPATIENT = 9  # right after a concept: a concept, its value, an inpatient gap or the discharge
    INPATIENT_AFTER_GAP = 10  # a concept
    INPATIENT_DISCHARGED = 11  # [VE]
    BETWEEN_VISITS = 12  # a gap or [END]
    DEATH_OPENED = 13  # [VE]
    DEAD = 14  # [END]; nothing may follow a death
    ENDED = 15  # [PAD] only
    OUTPATIENT_VALUED = 16  # after a concept's value: a concept or [VE]
    INPATIENT_VALUED = 17  # after a concept's value: a concept, an inpatient gap or the discharge


S, K = GrammarState, TokenKind
_TRANSITIONS: dict[tuple[GrammarState, TokenKind], GrammarState] = {
    (S.PROMPT_YEAR, K.YEAR): S.PROMPT_AGE,
    (S.PROMPT_AGE, K.AGE): S.PROMPT_GENDER,
    (S.PROMPT_GENDER, K.GENDER): S.PROMPT_RACE,
    (S.PROMPT_RACE, K.RACE): S.BEFORE_VISIT,
    (S.BEFORE_VISIT, K.VISIT_START): S.VISIT_OPENED,
    (S.VISIT_OPENED, K.VISIT_TYPE): S.OUTPATIENT_EMPTY,
    (S.VISIT_OPENED, K.INPATIENT_VISIT_TYPE): S.INPATIENT_EMPTY,
    (S.VISIT_OPENED, K.DEATH): S.DEATH_OPENED,
    (S.OUTPATIENT_EMPTY, K.CONCEPT): S.OUTPATIENT,
    (S.OUTPATIENT, K.CONCEPT): S.OUTPATIENT,
    (S.OUTPATIENT, K.VISIT_END): S.BETWEEN_VISITS,
    (S.OUTPATIENT, K.VALUE): S.OUTPATIENT_VALUED,
    (S.OUTPATIENT_VALUED, K.CONCEPT): S.OUTPATIENT,
    (S.OUTPATIENT_VALUED, K.VISIT_END): S.BETWEEN_VISITS,
    (S.INPATIENT_EMPTY, K.CONCEPT): S.INPATIENT,
    (S.INPATIENT, K.CONCEPT): S.INPATIENT,
    (S.INPATIENT, K.INPATIENT_GAP): S.INPATIENT_AFTER_GAP,
    (S.INPATIENT, K.DISCHARGE): S.INPATIENT_DISCHARGED,
    (S.INPATIENT, K.VALUE): S.INPATIENT_VALUED,
    (S.INPATIENT_VALUED, K.CONCEPT): S.INPATIENT,
    (S.INPATIENT_VALUED, K.INPATIENT_GAP): S.INPATIENT_AFTER_GAP,
    (S.INPATIENT_VALUED, K.DISCHARGE): S.INPATIENT_DISCHARGED,
    (S.INPATIENT_AFTER_GAP, K.CONCEPT): S.INPATIENT,
    (S.INPATIENT_DISCHARGED, K.VISIT_END): S.BETWEEN_VISITS,
    (S.BETWEEN_VISITS, K.GAP): S.BEFORE_VISIT,
    (S.BETWEEN_VISITS, K.END): S.ENDED,
    (S.DEATH_OPENED, K.VISIT_END): S.DEAD,
    (S.DEAD, K.END): S.ENDED,
    (S.ENDED, K.PAD): S.ENDED,
}
del S, K

# States in which a sequence may stop and still be a whole patient.
CLOSED_STATES = frozenset({GrammarState.BETWEEN_VISITS, GrammarState.DEAD, GrammarState.ENDED})


def step(state: GrammarState, kind: TokenKind) -> GrammarState | None:
    """The state after a token of ``kind``, or None when the grammar forbids it there."""
    return _TRANSITIONS.get((state, kind))


@dataclass(frozen=True)
class TransitionTables:
    """The grammar as arrays, for vectorised masking on a device.

    ``next_state[s, k]`` is the state after a token of kind ``k`` in state ``s``,
    or -1 where forbidden. The fewest tokens from a state to one where the
    sequence may stop depend on the kinds a vocabulary has: see
    :func:`cehrgpt.generation.constraints.reachable_close_costs`.
    """

    next_state: np.ndarray  # int64 [num_states, num_kinds]


def transition_tables() -> TransitionTables:
    next_state = np.full((len(GrammarState), len(TokenKind)), -1, dtype=np.int64)
    for (state, kind), nxt in _TRANSITIONS.items():
        next_state[state, kind] = nxt
    return TransitionTables(next_state=next_state)


def first_violation(tokens: Sequence[str]) -> tuple[int, str] | None:
    """The position and reason of the first grammar violation, or None for a whole, valid patient."""
    state = GrammarState.PROMPT_YEAR
    for i, kind in enumerate(assign_kinds(tokens)):
        nxt = step(state, kind)
        if nxt is None:
            return i, f"{kind.name.lower()} not allowed in state {state.name.lower()}"
        state = nxt
    if state not in CLOSED_STATES:
        return len(tokens), f"sequence ends in state {state.name.lower()}"
    return None


def is_valid(tokens: Sequence[str]) -> bool:
    return first_violation(tokens) is None
