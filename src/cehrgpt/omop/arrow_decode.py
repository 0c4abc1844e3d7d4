"""The restore's decoding, vectorised: the grammar-valid patients of an Arrow batch at once.

:func:`decode_arrow` gives, for every patient the grammar accepts whole, exactly the
records the per-patient reference :func:`cehrgpt.omop.decode.decode_patient` gives (a
test checks), about ten times faster: the per-token work is numpy over the whole
flattened batch, and Python sees each distinct token once. Patients it leaves out
(``ArrowDecoded.decoded`` False) need the reference decoder's rejections and recovery
rules. The positional token-kind rule is the grammar's tables applied to arrays
(:func:`_positional_kinds`), not a second rule. Used by the restore's record adapters
(:mod:`cehrgpt.omop.records`), the fidelity profiles and the utility analysis.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cehrgpt.dates import MAX_DAY
from cehrgpt.grammar import (
    CLOSED_STATES,
    DISCHARGE_PRECEDES,
    INPATIENT_STOPS,
    OOV,
    PROMPT_CONCEPT_KINDS,
    PROMPT_LENGTH,
    VISIT_TYPE_FOLLOWS,
    GrammarState,
    TokenKind,
    concept_id_of,
    gap_days,
    inpatient_gap_days,
    prompt_age,
    prompt_year,
    transition_tables,
    visit_type_kind,
)
from cehrgpt.omop.decode import MAX_AGE, restore_kind


@dataclass
class ArrowDecoded:
    """Records of the grammar-valid patients of one Arrow batch, as numpy columns.

    ``row`` columns index the batch; positions are token positions in the row's sequence.
    Patients with ``decoded[row]`` False were left out: decode them with
    :func:`cehrgpt.omop.decode.decode_patient`.
    """

    decoded: np.ndarray  # bool [rows]
    person: dict[str, np.ndarray]  # row, gender_concept_id, race_concept_id, year_of_birth, structural
    visit: dict[
        str, np.ndarray
    ]  # row, position, visit_concept_id, start_day, end_day, discharged_to, preceding
    # row, position, concept_id, day, visit_position, token (None unless spelled),
    # value_position (-1: none), value_token (None: none): the value token right after the concept
    event: dict[str, np.ndarray]
    death: dict[str, np.ndarray]  # row, position, day


_NO_KIND = -1
_K = TokenKind


def _token_tables(tokens: list[str]) -> dict[str, np.ndarray]:
    """Per distinct token: syntactic kind (-1 if positional), concept id, gap days, prompt year and age.

    Gaps are clipped to one day past :data:`MAX_DAY` (any longer gap is out of range all the same), so
    no value overflows int64.
    """
    n = len(tokens)
    kind = np.full(n, _NO_KIND, np.int8)
    concept = np.full(n, -1, np.int64)
    gap = np.zeros(n, np.int64)
    year = np.full(n, -1, np.int64)
    age = np.full(n, 10_000, np.int64)
    inpatient = np.zeros(n, bool)
    for i, token in enumerate(tokens):
        k = restore_kind(token)
        if k is None:
            cid = concept_id_of(token)
            concept[i] = cid if cid is not None else -1
            inpatient[i] = visit_type_kind(token) == _K.INPATIENT_VISIT_TYPE
            continue
        kind[i] = k
        if k == _K.GAP:
            gap[i] = min(gap_days(token) or 0, MAX_DAY + 1)
        elif k == _K.INPATIENT_GAP:
            gap[i] = min(inpatient_gap_days(token) or 0, MAX_DAY + 1)
        elif k == _K.YEAR:
            year[i] = prompt_year(token) or -1
        elif k == _K.AGE:
            age[i] = prompt_age(token) or 0
    return {"kind": kind, "concept": concept, "gap": gap, "year": year, "age": age, "inpatient": inpatient}


def _forward_fill(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Each element replaced by the last ``known`` element at or before it (index 0 must be known)."""
    index = np.where(known, np.arange(len(values)), 0)
    np.maximum.accumulate(index, out=index)
    return values[index]


def _nothing_decoded(rows: int) -> ArrowDecoded:
    empty = np.zeros(0, np.int64)
    return ArrowDecoded(
        decoded=np.zeros(rows, bool),
        person={
            k: empty for k in ("row", "gender_concept_id", "race_concept_id", "year_of_birth", "structural")
        },
        visit={
            k: empty
            for k in (
                "row",
                "position",
                "visit_concept_id",
                "start_day",
                "end_day",
                "discharged_to_concept_id",
                "preceding_position",
            )
        },
        event={
            **{
                k: empty for k in ("row", "position", "concept_id", "day", "visit_position", "value_position")
            },
            "token": np.zeros(0, object),
            "value_token": np.zeros(0, object),
        },
        death={k: empty for k in ("row", "position", "day")},
    )


def _positional_kinds(
    raw_kind: np.ndarray,
    inpatient_type: np.ndarray,
    position: np.ndarray,
    first_of_row: np.ndarray,
    last_of_row: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Every token's kind, and whether it lies inside an inpatient visit, for a whole flattened batch.

    The grammar's positional rule (:func:`cehrgpt.grammar.assign_kinds`) in numpy: it is not a
    second rule but the same tables (``PROMPT_CONCEPT_KINDS``, ``VISIT_TYPE_FOLLOWS``,
    ``DISCHARGE_PRECEDES``, ``INPATIENT_STOPS`` in :mod:`cehrgpt.grammar`) applied to all
    rows at once, precedence kept by assigning the weakest case first. A test checks both
    give the same kinds (:func:`cehrgpt.omop.decode.sequence_token_kinds` against ``decode_arrow``'s records).

    Args:
        raw_kind: each token's :func:`restore_kind` (-1 where positional).
        inpatient_type: each token, read as a visit type, is an inpatient one.
        position: each token's position in its row; ``first_of_row``/``last_of_row`` mark row ends.
    """
    kinds = raw_kind.astype(np.int64)
    positional = raw_kind == _NO_KIND
    previous_raw = np.concatenate([[_NO_KIND], raw_kind[:-1]])
    next_raw = np.concatenate([raw_kind[1:], [_NO_KIND]])
    prompt_slot = np.isin(position, list(PROMPT_CONCEPT_KINDS))
    visit_type = positional & (previous_raw == VISIT_TYPE_FOLLOWS) & ~first_of_row & ~prompt_slot
    stops = np.isin(raw_kind, [int(k) for k in INPATIENT_STOPS])
    in_inpatient = _forward_fill(visit_type & inpatient_type, visit_type | stops | first_of_row)
    kinds[positional] = _K.CONCEPT
    kinds[positional & in_inpatient & (next_raw == DISCHARGE_PRECEDES) & ~last_of_row] = _K.DISCHARGE
    kinds[visit_type] = np.where(inpatient_type[visit_type], _K.INPATIENT_VISIT_TYPE, _K.VISIT_TYPE)
    for slot, kind in PROMPT_CONCEPT_KINDS.items():
        kinds[positional & (position == slot)] = kind
    return kinds, in_inpatient


@cache
def _grammar_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The transition table, and the one state each kind leads to (-1 where it depends on context)."""
    next_state = transition_tables().next_state
    targets = np.full(len(TokenKind), -1, np.int64)
    for k in TokenKind:
        reached = set(next_state[:, k][next_state[:, k] >= 0].tolist())
        if len(reached) == 1:
            targets[k] = reached.pop()
    return next_state, targets


def _state_after(kinds: np.ndarray, in_inpatient: np.ndarray, previous_kind: np.ndarray) -> np.ndarray:
    """The grammar state after each token, assuming every token so far was allowed.

    Every kind leads to one state wherever it is allowed, except a concept and a value (inside an
    inpatient visit or not) and ``[VE]`` (closing a death or a visit).
    """
    state = _grammar_arrays()[1][kinds]
    concept = kinds == _K.CONCEPT
    state[concept] = np.where(in_inpatient[concept], GrammarState.INPATIENT, GrammarState.OUTPATIENT)
    value = kinds == _K.VALUE
    state[value] = np.where(
        in_inpatient[value], GrammarState.INPATIENT_VALUED, GrammarState.OUTPATIENT_VALUED
    )
    end = kinds == _K.VISIT_END
    state[end] = np.where(previous_kind[end] == _K.DEATH, GrammarState.DEAD, GrammarState.BETWEEN_VISITS)
    return state


def decode_arrow(sequences: pa.ListArray, usable: np.ndarray, end_day: int = MAX_DAY) -> ArrowDecoded:
    """Decode the grammar-valid patients of a batch at once; the rest are left to
    :func:`cehrgpt.omop.decode.decode_patient`.

    Gives exactly what :func:`decode_patient` gives for a valid patient (a test
    checks), about ten times faster: the per-token work is numpy over the whole
    batch, and Python only sees each distinct token once.

    Args:
        sequences: ``concept_ids`` of the batch.
        usable: per row, False where the row must take the slow path anyway
            (missing or duplicate person id).
        end_day: as in :func:`cehrgpt.omop.decode.decode_patient`; a row whose cursor passes it takes
            the slow path.
    """
    rows = len(sequences)
    lengths = pc.fill_null(pc.list_value_length(sequences), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    if lengths.sum() == 0:
        return _nothing_decoded(rows)
    # a null token is [OOV] here, which sends its row to decode_patient (which rejects it)
    encoded = pc.dictionary_encode(pc.fill_null(pc.list_flatten(sequences), OOV))
    dictionary = encoded.dictionary.to_pylist()
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    table = _token_tables(dictionary)
    n = len(codes)
    index = np.arange(n)
    row_of = np.repeat(np.arange(rows), lengths)
    position = index - starts[row_of]
    raw_kind = table["kind"][codes]
    last_of_row = position == (lengths[row_of] - 1)
    first_of_row = position == 0

    kinds, in_inpatient = _positional_kinds(
        raw_kind, table["inpatient"][codes], position, first_of_row, last_of_row
    )

    # the grammar, token by token, all at once
    previous_kind = np.concatenate([[_NO_KIND], kinds[:-1]])
    state = _state_after(kinds, in_inpatient, previous_kind)
    before = np.concatenate([[GrammarState.PROMPT_YEAR], state[:-1]])
    before[first_of_row] = GrammarState.PROMPT_YEAR
    allowed = _grammar_arrays()[0][before, kinds] == state
    allowed &= state >= 0
    bad_tokens = np.bincount(row_of[~allowed], minlength=rows)
    closed = np.zeros(rows, bool)
    ends = starts + lengths - 1
    has_tokens = lengths >= PROMPT_LENGTH
    closed[has_tokens] = np.isin(state[ends[has_tokens]], [int(s) for s in CLOSED_STATES])

    # the prompt and the dates
    year = np.full(rows, -1, np.int64)
    age = np.full(rows, 10_000, np.int64)
    year[has_tokens] = table["year"][codes[starts[has_tokens]]]
    age[has_tokens] = table["age"][codes[starts[has_tokens] + 1]]
    good_prompt = (year >= 1) & (np.abs(age) <= MAX_AGE) & (year - age >= 1) & (year - age <= 9999)
    first_day = np.zeros(rows, np.int64)
    first_day[good_prompt] = (
        np.array(year[good_prompt] - 1970, "datetime64[Y]").astype("datetime64[D]").astype(np.int64)
    )
    moves = np.where((kinds == _K.GAP) | (kinds == _K.INPATIENT_GAP), table["gap"][codes], 0)
    moved = np.cumsum(moves)
    moved_before_row = np.concatenate([[0], moved])[starts]
    day = first_day[row_of] + moved - moved_before_row[row_of]
    last_day = np.zeros(rows, np.int64)
    last_day[has_tokens] = day[ends[has_tokens]]  # gaps never move the cursor back
    decoded = (
        usable & has_tokens & closed & (bad_tokens == 0) & good_prompt & (last_day <= min(end_day, MAX_DAY))
    )
    token_ok = decoded[row_of]

    # records
    starts_row = starts[decoded]
    person = {
        "row": np.flatnonzero(decoded),
        "gender_concept_id": table["concept"][codes[starts_row + 2]],
        "race_concept_id": table["concept"][codes[starts_row + 3]],
        "year_of_birth": (year - age)[decoded],
        "structural": np.bincount(row_of[token_ok & np.isin(kinds, list(_STRUCTURAL_KINDS))], minlength=rows)[
            decoded
        ],
    }
    vs_index = _forward_fill(index, (kinds == _K.VISIT_START) | first_of_row)
    next_ve = np.minimum.accumulate(np.where(kinds == _K.VISIT_END, index, n)[::-1])[::-1]
    visit_types = np.flatnonzero(token_ok & ((kinds == _K.VISIT_TYPE) | (kinds == _K.INPATIENT_VISIT_TYPE)))
    visit_rows = row_of[visit_types]
    closing = next_ve[visit_types]
    inpatient_visit = kinds[visit_types] == _K.INPATIENT_VISIT_TYPE
    discharge = np.where(inpatient_visit, table["concept"][codes[closing - 1]], -1)
    same_row_before = np.concatenate([[False], visit_rows[1:] == visit_rows[:-1]])
    visit_position = position[visit_types] - 1
    visit = {
        "row": visit_rows,
        "position": visit_position,
        "visit_concept_id": table["concept"][codes[visit_types]],
        "start_day": day[visit_types - 1],
        "end_day": day[closing],
        "discharged_to_concept_id": discharge,  # -1: none
        "preceding_position": np.where(same_row_before, np.concatenate([[-1], visit_position[:-1]]), -1),
    }
    events = np.flatnonzero(token_ok & (kinds == _K.CONCEPT))
    event_concepts = table["concept"][codes[events]]
    spelled = np.array(dictionary, object)
    # a valid row never ends on a concept, so the token after one is in its row: its value, if a VALUE
    after = np.minimum(events + 1, n - 1)
    valued = kinds[after] == _K.VALUE
    event = {
        "row": row_of[events],
        "position": position[events],
        "concept_id": event_concepts,
        "day": day[events],
        "visit_position": position[vs_index[events]],
        "token": spelled[codes[events]],
        "value_position": np.where(valued, position[after], -1),
        "value_token": np.where(valued, spelled[codes[after]], None),
    }
    deaths = np.flatnonzero(token_ok & (kinds == _K.DEATH))
    death = {"row": row_of[deaths], "position": position[deaths], "day": day[deaths]}
    return ArrowDecoded(decoded=decoded, person=person, visit=visit, event=event, death=death)


_STRUCTURAL_KINDS = frozenset(
    {_K.VISIT_START, _K.VISIT_END, _K.GAP, _K.INPATIENT_GAP, _K.END, _K.PAD, _K.START}
)
