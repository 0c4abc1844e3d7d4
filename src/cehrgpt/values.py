"""Value bins: how a measurement's number, a categorical value and a drug's duration become tokens and back.

The ETL learns them on the training split only (:func:`number_edges` per concept from robust
quantiles), writes them as ``value_bins.json`` beside the vocabulary (:func:`write_value_bins`),
and the restore reads them back (:func:`read_value_bins`) to draw a number within its bin
(:func:`draw_in_bin`, seeded by the caller) and to set the unit. The token spellings are
:mod:`cehrgpt.grammar`'s.

Privacy: the outer edges sit at robust percentiles (``ROBUST_QUANTILES``), so no single
patient's extreme value becomes an edge a synthetic value can be drawn at; a concept whose
values come from fewer than ``min_concept_patients`` training patients gets no bins (its values
are dropped, counted), and a categorical value seen in fewer patients gets no token.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cehrgpt import grammar

VALUE_BINS_FILE = "value_bins.json"
VALUE_BINS_FORMAT = "cehrgpt-value-bins/1"
DEFAULT_NUM_BINS = 10
ROBUST_QUANTILES = (0.01, 0.99)
#: Values of a concept seen in fewer training patients than this get no bins (the ETL's default; the
#: tokenizer's ``DEFAULT_MIN_CONCEPT_PATIENTS`` is the same small-cell threshold for concepts).
DEFAULT_MIN_CONCEPT_PATIENTS = 10


class ValueBinsError(ValueError):
    """A ``value_bins.json`` that is missing a part or malformed."""


def bin_quantiles(num_bins: int = DEFAULT_NUM_BINS) -> list[float]:
    """The quantiles whose values are a concept's bin edges: the robust low, the inner cut points, the robust high."""
    if not 1 <= num_bins <= grammar.MAX_VALUE_BINS:
        raise ValueError(f"num_bins must be in 1..{grammar.MAX_VALUE_BINS}, got {num_bins}")
    low, high = ROBUST_QUANTILES
    inner = [i / num_bins for i in range(1, num_bins)]
    return [low, *inner, high]


def number_edges(quantile_values: Sequence[float]) -> list[float]:
    """Bin edges from the values at :func:`bin_quantiles`: ascending, ties merged (a lab that takes few values
    gets fewer bins). A concept whose robust range is one value gets one bin of width 0."""
    edges: list[float] = []
    for value in quantile_values:
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"a bin edge must be a finite number, got {value}")
        if not edges or value > edges[-1]:
            edges.append(value)
    return edges if len(edges) > 1 else edges * 2


def bin_number(edges: Sequence[float], value: float) -> int:
    """The 1-based bin of ``value``; values beyond the robust range fall in the outer bins."""
    inner = np.asarray(edges[1:-1], dtype=np.float64)
    return int(np.searchsorted(inner, float(value), side="right")) + 1


def num_bins(edges: Sequence[float]) -> int:
    return len(edges) - 1


def draw_in_bin(edges: Sequence[float], bin_no: int, uniform: float) -> float:
    """The value at ``uniform`` (in [0, 1)) across bin ``bin_no``: the restore draws it seeded per record."""
    low, high = float(edges[bin_no - 1]), float(edges[bin_no])
    return low + (high - low) * float(uniform)


@dataclass(frozen=True)
class NumberBins:
    """One concept's numeric value bins, its unit and what the ETL saw."""

    edges: list[float]
    unit_concept_id: int | None  # the most frequent unit of the concept's values; None when none had one
    patients: int  # training patients with a value
    values: int  # training values binned
    other_unit_values: int  # values recorded with another unit than ``unit_concept_id`` (binned all the same)


@dataclass(frozen=True)
class ValueBins:
    """Everything the ETL learned about values, keyed by concept id."""

    numbers: dict[int, NumberBins] = field(default_factory=dict)
    categories: dict[int, list[int]] = field(default_factory=dict)  # concept id -> value concept ids kept
    duration_days: dict[str, int] = field(
        default_factory=dict
    )  # dur token -> median training days in its bin
    num_bins: int = DEFAULT_NUM_BINS
    min_concept_patients: int = 1

    def duration_of(self, token: str) -> int | None:
        """Days a duration token restores to: the training median of its bin, else the bin's low edge."""
        span = grammar.drug_duration_range(token)
        if span is None:
            return None
        return self.duration_days.get(token, span[0])

    def to_json(self) -> dict:
        return {
            "format": VALUE_BINS_FORMAT,
            "num_bins": self.num_bins,
            "robust_quantiles": list(ROBUST_QUANTILES),
            "min_concept_patients": self.min_concept_patients,
            "numbers": {
                str(c): {
                    "edges": b.edges,
                    "unit_concept_id": b.unit_concept_id,
                    "patients": b.patients,
                    "values": b.values,
                    "other_unit_values": b.other_unit_values,
                }
                for c, b in sorted(self.numbers.items())
            },
            "categories": {str(c): sorted(v) for c, v in sorted(self.categories.items())},
            "duration_days": dict(sorted(self.duration_days.items(), key=lambda kv: int(kv[0][4:]))),
        }

    @classmethod
    def from_json(cls, data: dict) -> ValueBins:
        if not isinstance(data, dict) or data.get("format") != VALUE_BINS_FORMAT:
            raise ValueBinsError(f"not a {VALUE_BINS_FORMAT} document")
        try:
            numbers = {
                int(c): NumberBins(
                    edges=[float(e) for e in b["edges"]],
                    unit_concept_id=None if b["unit_concept_id"] is None else int(b["unit_concept_id"]),
                    patients=int(b["patients"]),
                    values=int(b["values"]),
                    other_unit_values=int(b["other_unit_values"]),
                )
                for c, b in data["numbers"].items()
            }
            categories = {int(c): [int(v) for v in vs] for c, vs in data["categories"].items()}
            durations = {str(t): int(d) for t, d in data["duration_days"].items()}
            bins = cls(
                numbers, categories, durations, int(data["num_bins"]), int(data["min_concept_patients"])
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueBinsError(f"malformed {VALUE_BINS_FORMAT} document: {err!r}") from None
        for concept, b in bins.numbers.items():
            if len(b.edges) < 2 or any(b2 < b1 for b1, b2 in zip(b.edges, b.edges[1:], strict=False)):
                raise ValueBinsError(f"concept {concept}: edges {b.edges} are not ascending")
        return bins


def value_bins_text(bins: ValueBins) -> str:
    """The text of ``value_bins.json`` (what :func:`write_value_bins` writes; the ETL writes it through Hadoop)."""
    return json.dumps(bins.to_json(), indent=1) + "\n"


def write_value_bins(bins: ValueBins, folder: str | Path) -> Path:
    path = Path(folder) / VALUE_BINS_FILE
    path.write_text(value_bins_text(bins))
    return path


def read_value_bins(folder: str | Path) -> ValueBins | None:
    """The bins in ``folder``, or None when the folder has none (sequences prepared without values)."""
    path = Path(folder) / VALUE_BINS_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueBinsError(f"{path}: unreadable ({err})") from None
    try:
        return ValueBins.from_json(data)
    except ValueBinsError as err:
        raise ValueBinsError(f"{path}: {err}") from None


# --- the restore's seeded draw -----------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


def _splitmix64(x: int) -> int:
    x = (x + _GOLDEN) & _MASK64
    x = ((x ^ (x >> 30)) * _MIX1) & _MASK64
    x = ((x ^ (x >> 27)) * _MIX2) & _MASK64
    return x ^ (x >> 31)


def value_uniform(person_id: int, position: int) -> float:
    """The uniform number in [0, 1) the restore draws a value at: a pure function of the person id and
    the value token's position (splitmix64 of splitmix64(person id) + position, its top 53 bits), so a
    rerun gives the same tables. :func:`value_uniforms` is the same over arrays, bit for bit."""
    z = _splitmix64((_splitmix64(int(person_id) & _MASK64) + int(position)) & _MASK64)
    return (z >> 11) * 2.0**-53


def _splitmix64_array(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(_GOLDEN)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(_MIX1)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(_MIX2)
    return x ^ (x >> np.uint64(31))


def value_uniforms(person_ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """:func:`value_uniform` of each (person id, position) pair, vectorised (uint64 arithmetic wraps)."""
    people = np.asarray(person_ids, np.int64).view(np.uint64)
    at = np.asarray(positions, np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        z = _splitmix64_array(_splitmix64_array(people) + at)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53
