"""Hand-made patient sequences shared by the analysis tests (imported by name: tests/ has no packages)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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
    """A patient as the generator writes it: closed by ``[END]`` (cehrgpt.generation stops every row there)."""
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
