"""Tiny hand-made inputs for the restore tests: a vocabulary and sequences covering every rule."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

CONCEPTS = {
    101: "Condition",
    201: "Drug",
    301: "Procedure",
    401: "Measurement",
    501: "Observation",
    601: "Device",
    999: "Metadata",
    9201: "Visit",
    9202: "Visit",
    8536: "Visit",
}
# (file, person_id, tokens)
SEQUENCES = [
    (
        "a",
        1,
        (
            "year:2001 age:12 8532 8527 [VS] 9202 101 201 301 [VE] D5 "
            "[VS] 9201 401 i-D2 501 601 8536 [VE] D3 [VS] [DEATH] [VE] [END]"
        ),
    ),
    (
        "a",
        2,
        "year:1990 age:40 8507 Race/0 [VS] 9202 101 777 999 [VE] 301 D400 [VS] 9202 201 [VE] D1 [VS] 9201 101",
    ),
    ("a", 3, "year:2001 age:x 8532 8527 [VS] 9202 101 [VE]"),
    ("b", 1, "year:2001 age:12 8532 8527 [VS] 9202 101 [VE]"),
    ("b", 5, "year:2010 age:0 Gender/0 Race/0 [VS] Visit/0 101 [VE] LT [VS] 9202 201 [VE]"),
    ("b", None, "year:2001 age:1 0 0 [VS] 9202 101 [VE]"),
    ("b", 7, ""),
]


def write_vocabulary(folder: Path, concepts: dict[int, str] = CONCEPTS) -> Path:
    (folder / "concept").mkdir(parents=True)
    table = pa.table(
        {
            "concept_id": pa.array(list(concepts), pa.int64()),
            "concept_name": [f"concept {c}" for c in concepts],
            "domain_id": list(concepts.values()),
        }
    )
    pq.write_table(table, folder / "concept" / "part-0.parquet")
    return folder


def write_sequences(folder: Path, sequences=SEQUENCES) -> Path:
    folder.mkdir(parents=True)
    for file in sorted({f for f, _, _ in sequences}):
        rows = [(pid, text.split()) for f, pid, text in sequences if f == file]
        table = pa.table(
            {
                "person_id": pa.array([pid for pid, _ in rows], pa.int64()),
                "concept_ids": pa.array([tokens for _, tokens in rows], pa.list_(pa.string())),
            }
        )
        pq.write_table(table, folder / f"{file}.parquet")
    return folder
