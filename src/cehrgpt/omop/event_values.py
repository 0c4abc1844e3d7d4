"""The value columns of restored events: what a value token after a clinical concept becomes.

A value token belongs to the clinical concept right before it (:mod:`cehrgpt.grammar`; both
decoders keep it on the concept's event). Once the event's table is known from its concept's
vocabulary domain, :func:`event_values` turns it into that row's columns, from the ETL's value
bins (:class:`cehrgpt.values.ValueBins`, ``value_bins.json`` beside the vocabulary):

- ``v:<k>`` after a ``measurement`` or ``observation`` concept with number bins →
  ``value_as_number`` drawn uniformly within the concept's k-th bin at
  :func:`cehrgpt.values.value_uniform` (person id, the value token's position): the same on every
  rerun; ``unit_concept_id`` = the concept's unit;
- ``vc:<id>`` after a ``measurement`` or ``observation`` concept → ``value_as_concept_id`` = id;
- ``dur:<d>`` after a ``drug_exposure`` concept → ``days_supply`` = ``bins.duration_of(token)`` days,
  and the exposure ends that many days after it starts.

Any other value does not fit (``value_does_not_fit``): a number bin after a concept without bins or
beyond its number of bins, a number after a drug, a categorical value or a number in a table
without those columns, a duration after a non-drug concept, any value when the restore has no
value bins. A value whose concept is itself rejected (not in the vocabulary, unsupported domain)
is rejected with it (``value_without_concept``). Pure numpy; used by :mod:`cehrgpt.omop.records`
inside the restore's ``mapInArrow`` for both decoding paths alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from cehrgpt.grammar import ValueClass, value_bin_of, value_class, value_concept_of
from cehrgpt.omop.decode import Reason
from cehrgpt.values import ValueBins, value_uniforms

NUMBER_TABLES = ("measurement", "observation")  # value_as_number and unit_concept_id
CATEGORY_TABLES = ("measurement", "observation")  # value_as_concept_id
DURATION_TABLES = ("drug_exposure",)  # drug_exposure_end_date and days_supply


@dataclass(frozen=True)
class ValueLookup:
    """:class:`cehrgpt.values.ValueBins` as arrays for vectorised lookups (broadcast to the workers)."""

    concepts: np.ndarray  # int64, sorted: the concepts with number bins
    edges: np.ndarray  # float64 [concepts, most edges]; NaN past a concept's last edge
    num_bins: np.ndarray  # int64: each concept's number of bins
    units: np.ndarray  # int64: each concept's unit, -1 for none
    value_bins: ValueBins  # what the arrays were made from (durations: ValueBins.duration_of)


def value_lookup(bins: ValueBins) -> ValueLookup:
    concepts = np.array(sorted(bins.numbers), np.int64)
    widest = max((len(bins.numbers[c].edges) for c in concepts.tolist()), default=0)
    edges = np.full((len(concepts), widest), np.nan)
    for i, concept in enumerate(concepts.tolist()):
        edges[i, : len(bins.numbers[concept].edges)] = bins.numbers[concept].edges
    units = [bins.numbers[c].unit_concept_id for c in concepts.tolist()]
    return ValueLookup(
        concepts=concepts,
        edges=edges,
        num_bins=np.array([len(bins.numbers[c].edges) - 1 for c in concepts.tolist()], np.int64),
        units=np.array([-1 if u is None else u for u in units], np.int64),
        value_bins=bins,
    )


@dataclass
class EventValues:
    """Per event: its value columns (NaN / -1 where none) and why its value token was rejected (None: not)."""

    value_as_number: np.ndarray  # float64
    unit_concept_id: np.ndarray  # int64
    value_as_concept_id: np.ndarray  # int64
    days_supply: np.ndarray  # int64
    rejected: np.ndarray  # object: a Reason value, or None (no value token, or it fits)


def event_values(
    person_ids: np.ndarray,
    concept_ids: np.ndarray,
    tables: np.ndarray,
    table_names: Sequence[str],
    value_positions: np.ndarray,
    value_tokens: np.ndarray,
    lookup: ValueLookup | None,
) -> EventValues:
    """The value columns of events, from their value tokens (see the module docstring).

    Args:
        person_ids, concept_ids: per event.
        tables: per event, its table's index into ``table_names``; negative when its concept is rejected.
        value_positions: the value token's position in the sequence, -1 for none (it seeds the draw).
        value_tokens: the value token, None for none.
        lookup: the restore's value bins (:func:`value_lookup`); None when it has none.
    """
    n = len(concept_ids)
    out = EventValues(
        value_as_number=np.full(n, np.nan),
        unit_concept_id=np.full(n, -1, np.int64),
        value_as_concept_id=np.full(n, -1, np.int64),
        days_supply=np.full(n, -1, np.int64),
        rejected=np.full(n, None, object),
    )
    valued = np.flatnonzero(np.asarray(value_positions) >= 0)
    if not len(valued):
        return out
    encoded = pa.array(np.asarray(value_tokens, object)[valued], pa.string()).dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    spelled = encoded.dictionary.to_pylist()
    classes = np.array([int(value_class(t)) for t in spelled], np.int64)[codes]
    bin_no = np.array([value_bin_of(t) or 0 for t in spelled], np.int64)[codes]
    category = np.array([value_concept_of(t) or 0 for t in spelled], np.int64)[codes]
    bins = lookup.value_bins if lookup is not None else None
    days = np.array([(bins.duration_of(t) if bins else None) or 0 for t in spelled], np.int64)[codes]
    table = np.asarray(tables, np.int64)[valued]

    def in_tables(names: Sequence[str]) -> np.ndarray:
        return np.isin(table, [table_names.index(name) for name in names])

    fits = np.zeros(len(valued), bool)
    if lookup is not None:
        number = (classes == ValueClass.NUMBER) & in_tables(NUMBER_TABLES)
        if len(lookup.concepts):
            concept = np.asarray(concept_ids, np.int64)[valued]
            at = np.minimum(np.searchsorted(lookup.concepts, concept), len(lookup.concepts) - 1)
            number &= (lookup.concepts[at] == concept) & (bin_no >= 1) & (bin_no <= lookup.num_bins[at])
            rows, at, k = valued[number], at[number], bin_no[number]
            low, high = lookup.edges[at, k - 1], lookup.edges[at, k]
            uniform = value_uniforms(np.asarray(person_ids)[rows], np.asarray(value_positions)[rows])
            out.value_as_number[rows] = low + (high - low) * uniform  # values.draw_in_bin, vectorised
            out.unit_concept_id[rows] = lookup.units[at]
        else:
            number[:] = False
        categorical = (classes == ValueClass.CATEGORY) & in_tables(CATEGORY_TABLES)
        out.value_as_concept_id[valued[categorical]] = category[categorical]
        duration = (classes == ValueClass.DURATION) & in_tables(DURATION_TABLES)
        out.days_supply[valued[duration]] = days[duration]
        fits = number | categorical | duration
    out.rejected[valued[~fits]] = np.where(
        table[~fits] < 0, Reason.VALUE_WITHOUT_CONCEPT.value, Reason.VALUE_DOES_NOT_FIT.value
    )
    return out
