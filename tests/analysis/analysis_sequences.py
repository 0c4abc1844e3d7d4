"""Hand-made patient sequences shared by the analysis tests (imported by name: tests/ has no packages)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cehrgpt import grammar


def patient_tokens(
    age: int,
    concepts: Sequence[int],
    gender: int = 8507,
    race: int = 8527,
    visit_type: int = 9202,
    year: int = 2000,
) -> list[str]:
    """One outpatient visit holding ``concepts`` (or a lone concept 1 when empty is asked for)."""
    return [
        grammar.year_token(year),
        grammar.age_token(age),
        str(gender),
        str(race),
        grammar.VISIT_START,
        str(visit_type),
        *[str(c) for c in concepts],
        grammar.VISIT_END,
        grammar.END,
    ]


def timeline_patient(
    age: int,
    visits: Sequence[Sequence[int]],
    gaps: Sequence[int] | None = None,
    gender: int = 8507,
    race: int = 8527,
    year: int = 2000,
) -> list[str]:
    """A patient as the ETL writes it (no ``[END]``): outpatient visits of ``concepts`` separated by day gaps."""
    gaps = list(gaps) if gaps is not None else [7 * (i + 1) for i in range(len(visits) - 1)]
    tokens = [grammar.year_token(year), grammar.age_token(age), str(gender), str(race)]
    for i, concepts in enumerate(visits):
        if i:
            tokens.append(grammar.gap_token(gaps[i - 1]))
        tokens += [grammar.VISIT_START, "9202", *[str(c) for c in concepts], grammar.VISIT_END]
    return tokens


def as_generated(tokens: Sequence[str]) -> list[str]:
    """A patient as the generator writes one that ends before its context window: closed by ``[END]``."""
    return [*(t for t in tokens if t != grammar.END), grammar.END]


def as_stored(tokens: Sequence[str]) -> list[str]:
    """A patient as the ETL writes training rows: no ``[END]`` (cehrgpt.data.sequences)."""
    return [t for t in tokens if t != grammar.END]


def write_patients(folder: Path, patients: Sequence[Sequence[str]], first_id: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(
        {
            "person_id": list(range(first_id, first_id + len(patients))),
            "concept_ids": [list(p) for p in patients],
        }
    )
    frame.to_parquet(folder / "part-0.parquet", index=False)
    return folder


NEAR_COPY_EDITS = (
    "concept_removed",
    "concept_replaced",
    "last_visit_dropped",
    "year_shifted",
    "gap_changed",
    "first_60_percent",
    "visit_appended",
)


def near_copy(tokens: Sequence[str], edit: str, rng: np.random.Generator) -> list[str] | None:
    """A memorising model's near copy of a (grammar-valid) patient, as the generator writes it.

    ``edit`` is one of :data:`NEAR_COPY_EDITS`; None when the patient offers no place for it
    (no visit with two concepts, a single visit, no day gap, nothing to cut at 60%).
    """
    t = as_stored(tokens)
    kinds = grammar.assign_kinds(t)
    K = grammar.TokenKind

    def pick(positions: list[int]) -> int | None:
        return positions[int(rng.integers(len(positions)))] if positions else None

    if edit in ("concept_removed", "concept_replaced"):
        # a concept whose visit keeps another one; a value after it goes with it
        def span(i: int) -> int:
            return 2 if i + 1 < len(t) and kinds[i + 1] == K.VALUE else 1

        i = pick(
            [
                i
                for i, k in enumerate(kinds)
                if k == K.CONCEPT
                and (
                    kinds[i - 1] in (K.CONCEPT, K.VALUE)
                    or (i + span(i) < len(t) and kinds[i + span(i)] == K.CONCEPT)
                )
            ]
        )
        if i is None:
            return None
        t = t[:i] + t[i + span(i) :] if edit == "concept_removed" else [*t[:i], "99999999", *t[i + 1 :]]
    elif edit == "last_visit_dropped":
        starts = [i for i, k in enumerate(kinds) if k == K.VISIT_START]
        if len(starts) < 2:
            return None
        t = t[: starts[-1] - 1]  # the last visit and the gap before it
    elif edit == "year_shifted":
        t = [grammar.year_token(int(grammar.prompt_year(t[0]) or 0) + 1), *t[1:]]
    elif edit == "gap_changed":
        i = pick([i for i, k in enumerate(kinds) if k == K.GAP and t[i].startswith("D")])
        if i is None:
            return None
        t = [*t[:i], grammar.gap_token(int(grammar.gap_days(t[i]) or 0) + 3), *t[i + 1 :]]
    elif edit == "first_60_percent":
        ends = [i for i, k in enumerate(kinds) if k == K.VISIT_END and i + 1 <= 0.6 * len(t)]
        if not ends:
            return None
        t = t[: ends[-1] + 1]
    elif edit == "visit_appended":
        if kinds[-1] != K.VISIT_END or K.DEATH in kinds:
            return None
        t = [*t, "D30", grammar.VISIT_START, "9202", "77777777", grammar.VISIT_END]
    else:
        raise ValueError(f"unknown edit {edit!r}")
    return as_generated(t)
