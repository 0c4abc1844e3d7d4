"""Hand-made patients and tiny models shared by the generator tests (importable; conftest holds fixtures)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from transformers import GPT2Config, GPT2LMHeadModel

# Hand-made training patients: every token kind the grammar knows appears at least once.
PATIENTS = [
    "year:2001 age:12 8532 8527 [VS] 9202 380378 4029498 [VE] D154 [VS] 9201 43530652 i-D1 4021968 8536 [VE] [END]",
    "year:1999 age:40 8507 8516 [VS] 9203 201826 [VE] D7 [VS] 9202 1112807 380378 [VE] LT [VS] [DEATH] [VE] [END]",
    "year:2010 age:3 8532 Race/0 [VS] 9201 201826 i-D2 380378 8536 [VE] D30 [VS] 9202 4029498 [VE] [END]",
    "year:1985 age:67 8507 8527 [VS] 9202 1112807 [VE] D0 [VS] 9203 43530652 201826 [VE] [END]",
]
PROMPTS = [p.split()[:4] for p in PATIENTS]


def write_sequences(folder: Path, sequences: list[list[str]], name: str = "part-0.parquet") -> Path:
    """A patient-sequence parquet file with the columns the generator reads."""
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "person_id": pa.array(range(1, len(sequences) + 1), pa.int64()),
            "concept_ids": pa.array(sequences, pa.list_(pa.string())),
        }
    )
    pq.write_table(table, folder / name)
    return folder


def tiny_model(vocab_size: int, n_positions: int = 64, seed: int = 0) -> GPT2LMHeadModel:
    """An untrained GPT-2 (the hardest case for the grammar constraint: it never learned the format)."""
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=vocab_size, n_positions=n_positions)
    return GPT2LMHeadModel(config).eval()


# Patients with values: 3004249 (a lab) takes numeric bins, 1112807 (a drug) durations, 4013886 a categorical value.
VALUED_PATIENTS = [
    "year:2001 age:12 8532 8527 [VS] 9202 3004249 v:2 380378 [VE] D154 [VS] 9201 1112807 dur:7 i-D1 4013886 vc:4181412 8536 [VE] [END]",
    "year:1999 age:40 8507 8516 [VS] 9203 3004249 v:1 1112807 dur:30 [VE] D7 [VS] 9202 380378 4013886 [VE] [END]",
    "year:2010 age:3 8532 Race/0 [VS] 9202 3004249 v:3 1112807 [VE] D30 [VS] [DEATH] [VE] [END]",
]
