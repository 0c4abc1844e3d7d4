"""Profiles: read patient sequences into what the fidelity metrics need (:class:`SequenceProfile`).

Grammar-valid patients are profiled from the restore's vectorised decoder
(:func:`cehrgpt.omop.arrow_decode.decode_arrow`); the rest, and every patient with ``vectorised=False``,
one by one over :func:`cehrgpt.grammar.assign_kinds` (the reference path; a test checks both agree).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from cehrgpt import grammar
from cehrgpt.analysis.io import AnalysisError
from cehrgpt.grammar import TokenKind
from cehrgpt.omop.arrow_decode import ArrowDecoded, decode_arrow


@dataclass
class SequenceProfile:
    """What the fidelity metrics need from one set of sequences."""

    lengths: np.ndarray
    visits_per_patient: np.ndarray
    ages: np.ndarray
    genders: list[int]
    races: list[int]
    visit_types: list[int]
    days_between_visits: np.ndarray
    inpatient_stay_days: np.ndarray
    patient_concepts: np.ndarray  # one concept id per (patient, distinct concept of that patient)
    concept_tokens: np.ndarray  # one concept id per concept token, repeats kept (for the token-level KL)
    visit_concepts: tuple[np.ndarray, np.ndarray]  # (visit index, concept id) per distinct concept of a visit
    visit_count: int
    excluded: int
    exclusion_reasons: dict[str, int]

    def __len__(self) -> int:
        return len(self.lengths)


@dataclass
class _Tally:
    """The per-patient, per-visit and per-gap values of :class:`SequenceProfile`, as they are collected."""

    lengths: list[int] = field(default_factory=list)
    visits: list[int] = field(default_factory=list)
    ages: list[int] = field(default_factory=list)
    genders: list[int] = field(default_factory=list)
    races: list[int] = field(default_factory=list)
    visit_types: list[int] = field(default_factory=list)
    gaps: list[int] = field(default_factory=list)
    stays: list[int] = field(default_factory=list)
    patient_concepts: list[np.ndarray] = field(default_factory=list)
    concept_tokens: list[np.ndarray] = field(default_factory=list)
    visit_of_concepts: list[np.ndarray] = field(default_factory=list)
    visit_concepts: list[np.ndarray] = field(default_factory=list)
    visit_count: int = 0
    reasons: Counter[str] = field(default_factory=Counter)


def profile_sequences(
    token_lists: list[list[str]] | pa.ListArray,
    check_grammar: bool,
    vectorised: bool = True,
    excluded_before: Mapping[str, int] | None = None,
) -> SequenceProfile:
    """Collect the fidelity statistics of every sequence.

    Grammar-valid patients go through the restore's vectorised decoder
    (:func:`cehrgpt.omop.arrow_decode.decode_arrow`), the rest one by one over
    :func:`grammar.assign_kinds`; both give the same values (a test checks).
    A null sequence, or one holding a null token, is excluded and counted; with
    ``check_grammar``, so are patients that break the grammar, by reason.
    ``excluded_before`` adds the rows the reader already left out (``is_valid`` false).
    ``vectorised=False`` takes the reference path for every patient.
    """
    sequences = (
        token_lists
        if isinstance(token_lists, pa.ListArray)
        else pa.array(list(token_lists), pa.list_(pa.string()))
    )
    tally = _Tally()
    tally.reasons.update(excluded_before or {})
    sequences = _without_nulls(sequences, tally)
    fast = decode_arrow(sequences, np.full(len(sequences), vectorised))
    _tally_decoded(sequences, fast, tally)
    slow = np.flatnonzero(~fast.decoded)
    if len(slow):
        _tally_one_by_one(sequences.take(pa.array(slow)).to_pylist(), check_grammar, tally)
    return SequenceProfile(
        lengths=np.asarray(tally.lengths),
        visits_per_patient=np.asarray(tally.visits),
        ages=np.asarray(tally.ages),
        genders=tally.genders,
        races=tally.races,
        visit_types=tally.visit_types,
        days_between_visits=np.asarray(tally.gaps),
        inpatient_stay_days=np.asarray(tally.stays),
        patient_concepts=_check_concept_ids(_concatenated(tally.patient_concepts)),
        concept_tokens=_concatenated(tally.concept_tokens),
        visit_concepts=(_concatenated(tally.visit_of_concepts), _concatenated(tally.visit_concepts)),
        visit_count=tally.visit_count,
        excluded=sum(tally.reasons.values()),
        exclusion_reasons=dict(tally.reasons),
    )


def _without_nulls(sequences: pa.ListArray, tally: _Tally) -> pa.ListArray:
    """``sequences`` less its null rows and rows holding a null token, which are counted by reason."""
    null_row = pc.is_null(sequences).to_numpy(zero_copy_only=False)
    null_token = pc.is_null(pc.list_flatten(sequences)).to_numpy(zero_copy_only=False)
    has_null_token = np.zeros(len(sequences), bool)
    has_null_token[pc.list_parent_indices(sequences).to_numpy(zero_copy_only=False)[null_token]] = True
    if null_row.any():
        tally.reasons["null sequence"] += int(null_row.sum())
    if has_null_token.any():
        tally.reasons["null token"] += int(has_null_token.sum())
    bad = null_row | has_null_token
    return sequences.filter(pa.array(~bad)) if bad.any() else sequences


def _concatenated(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def distinct_with_counts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values and how often each occurs, by sorting (numpy's hashing ``unique`` is
    several times slower on millions of ids)."""
    ordered = np.sort(values.astype(np.int64, copy=False))
    if not len(ordered):
        return ordered, np.zeros(0, np.int64)
    starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
    return ordered[starts], np.diff(np.append(starts, len(ordered)))


def _check_concept_ids(concepts: np.ndarray) -> np.ndarray:
    outside = concepts[(concepts < 0) | (concepts >= 1 << 32)]
    if len(outside):
        raise AnalysisError(f"concept id {outside[0]} is outside 0 .. 2^32 - 1, which the report supports")
    return concepts


def _distinct_pairs(groups: np.ndarray, concepts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group, concept) pairs with repeats removed (concept ids are below 2^32, as OMOP's are)."""
    _check_concept_ids(concepts)
    keys, _ = distinct_with_counts((groups.astype(np.int64) << 32) | concepts.astype(np.int64))
    return keys >> 32, keys & 0xFFFFFFFF


def _tally_decoded(sequences: pa.ListArray, fast: ArrowDecoded, tally: _Tally) -> None:
    """The statistics of the patients ``decode_arrow`` decoded, from its records, without a Python token loop."""
    rows = np.flatnonzero(fast.decoded)
    if not len(rows):
        return
    slot = np.full(len(fast.decoded), -1, np.int64)  # batch row → index among the decoded rows
    slot[rows] = np.arange(len(rows))
    lengths = pc.list_value_length(sequences).to_numpy(zero_copy_only=False)
    age_tokens = pc.list_element(sequences.take(pa.array(rows)), 1).to_pylist()
    ages: dict[str, int] = {}
    for token in set(age_tokens):
        age = grammar.prompt_age(token)
        assert age is not None, token  # a decoded patient has a valid prompt
        ages[token] = age
    person = fast.person
    by_row = np.argsort(person["row"])
    visit, event, death = fast.visit, fast.event, fast.death
    order = np.lexsort((visit["position"], visit["row"]))
    v_row, v_position = visit["row"][order], visit["position"][order]
    v_start, v_end, v_type = (
        visit["start_day"][order],
        visit["end_day"][order],
        visit["visit_concept_id"][order],
    )
    same_patient = v_row[1:] == v_row[:-1]
    gaps = (v_start[1:] - v_end[:-1])[same_patient]
    visit_keys = v_row * (1 << 32) + v_position  # sorted: visits are ordered by row, then position
    if len(death["row"]):  # the gap before [VS] [DEATH] [VE], counted from the last visit's end
        last = np.searchsorted(visit_keys, death["row"] * (1 << 32) + death["position"]) - 1
        has_visit = (last >= 0) & (v_row[np.maximum(last, 0)] == death["row"])
        gaps = np.concatenate([gaps, (death["day"] - v_end[np.maximum(last, 0)])[has_visit]])
    inpatient = np.isin(v_type, list(grammar.INPATIENT_VISIT_CONCEPT_IDS))
    concept = event["concept_id"] != 0
    visit_index = np.searchsorted(visit_keys, event["row"] * (1 << 32) + event["visit_position"])
    tally.lengths += lengths[rows].tolist()
    tally.visits += np.bincount(slot[v_row], minlength=len(rows)).tolist()
    tally.ages += [ages[token] for token in age_tokens]
    tally.genders += person["gender_concept_id"][by_row].tolist()
    tally.races += person["race_concept_id"][by_row].tolist()
    tally.visit_types += v_type.tolist()
    tally.gaps += gaps.tolist()
    tally.stays += (v_end - v_start)[inpatient].tolist()
    tally.patient_concepts.append(
        _distinct_pairs(slot[event["row"][concept]], event["concept_id"][concept])[1]
    )
    tally.concept_tokens.append(event["concept_id"][concept])
    visits, concepts = _distinct_pairs(visit_index[concept], event["concept_id"][concept])
    tally.visit_of_concepts.append(visits + tally.visit_count)
    tally.visit_concepts.append(concepts)
    tally.visit_count += len(v_row)


def _tally_one_by_one(token_lists: list[list[str]], check_grammar: bool, tally: _Tally) -> None:
    """The reference path: one patient at a time over :func:`grammar.assign_kinds`."""
    for tokens in tqdm(token_lists, desc="reading sequences", unit="patient", leave=False):
        if check_grammar and (violation := grammar.first_violation(tokens)) is not None:
            tally.reasons[violation[1].split(" in state")[0]] += 1
            continue
        kinds = grammar.assign_kinds(tokens)
        age = grammar.prompt_age(tokens[1]) if len(tokens) >= grammar.PROMPT_LENGTH else None
        if age is None or kinds[2] != TokenKind.GENDER or kinds[3] != TokenKind.RACE:
            tally.reasons["no demographic prompt"] += 1
            continue
        concepts: set[int] = set()
        tokens_of_concepts: list[int] = []
        current: set[int] | None = None
        stay: int | None = None
        n_visits = 0
        for token, kind in zip(tokens, kinds, strict=True):
            if kind in (TokenKind.VISIT_TYPE, TokenKind.INPATIENT_VISIT_TYPE):
                n_visits += 1
                tally.visit_types.append(grammar.concept_id_of(token) or 0)
                current = set()
                stay = 0 if kind == TokenKind.INPATIENT_VISIT_TYPE else None
            elif kind == TokenKind.CONCEPT and current is not None:
                concept = grammar.concept_id_of(token)
                if concept:
                    current.add(concept)
                    concepts.add(concept)
                    tokens_of_concepts.append(concept)
            elif kind == TokenKind.INPATIENT_GAP and stay is not None:
                stay += grammar.inpatient_gap_days(token) or 0
            elif kind == TokenKind.GAP:
                tally.gaps.append(grammar.gap_days(token) or 0)
            elif kind == TokenKind.VISIT_END:
                if current is not None:
                    tally.visit_of_concepts.append(np.full(len(current), tally.visit_count))
                    tally.visit_concepts.append(np.fromiter(current, np.int64, len(current)))
                    tally.visit_count += 1
                if stay is not None:
                    tally.stays.append(stay)
                current, stay = None, None
        tally.lengths.append(len(tokens))
        tally.visits.append(n_visits)
        tally.ages.append(age)
        tally.genders.append(grammar.concept_id_of(tokens[2]) or 0)
        tally.races.append(grammar.concept_id_of(tokens[3]) or 0)
        tally.patient_concepts.append(np.fromiter(concepts, np.int64, len(concepts)))
        tally.concept_tokens.append(np.asarray(tokens_of_concepts, np.int64))
