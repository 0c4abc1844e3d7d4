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
