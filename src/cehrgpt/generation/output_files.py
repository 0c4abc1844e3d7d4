"""What a generation shard writes: parquet parts as they fill, and the summaries built from them.

Each part holds ``--buffer_size`` patients in the order they finished and carries, in its parquet
metadata, the tokens sampled and the rows rejected since the previous part. A summary built from the
parts (:func:`count_shard_files`) therefore covers every attempt that wrote them, so a restarted shard
reports its whole work. Every file is written under a hidden temporary name and renamed, so a reader
(or a restarted shard) never sees half a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cehrgpt import grammar
from cehrgpt.generation import sharding

SUMMARY_FILE = "generation_summary.json"
OUTPUT_SCHEMA = pa.schema(
    [
        ("person_id", pa.int64()),
        ("concept_ids", pa.list_(pa.string())),
        ("num_of_concepts", pa.int32()),
        ("is_valid", pa.bool_()),
    ]
)
FILE_METADATA_KEY = b"cehrgpt.generation"  # the per-part counts


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_parquet_atomically(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


class ShardFileWriter:
    """Takes accepted sequences in the order they finish and writes each part as soon as it is full.

    Args:
        targets: ``(path, global patient indices)`` of every part still to write, in order.
        seed: the run's seed (person ids are derived from it and the global index).
        tokens_by_id: the token spelled by each vocabulary id.
        on_written: called with each part's path once it is in place (the durable copy).
    """

    def __init__(
        self,
        targets: list[tuple[Path, range]],
        seed: int,
        tokens_by_id: list[str],
        on_written: Callable[[Path], None] | None = None,
    ):
        self.targets = targets
        self.on_written = on_written
        self.seed = seed
        self.tokens_by_id = tokens_by_id
        self.written = 0
        self.sequences: list[list[str]] = []
        self.hits: list[bool] = []
        self.slides: list[int] = []
        self.sampled_tokens = 0  # this attempt
        self.rejected = 0  # this attempt
        self.valid = 0
        self.hit_context_window = 0
        self.slid_patients = 0
        self._counted = {"sampled_tokens": 0, "rejected_and_retried": 0}

    def add(self, ids: list[int], hit: bool, slides: int = 0) -> None:
        """Take one accepted sequence: its ids, whether the length cap closed it, and its slides."""
        self.sequences.append([self.tokens_by_id[i] for i in ids])
        self.hits.append(hit)
        self.slides.append(slides)

    def count_step(self, new_tokens: int) -> None:
        """Count one decode step's tokens, then write the parts its sequences completed."""
        self.sampled_tokens += new_tokens
        while self.written < len(self.targets) and len(self.sequences) >= len(self.targets[self.written][1]):
            self._write_next()

    def _write_next(self) -> None:
        path, file_patients = self.targets[self.written]
        n = len(file_patients)
        sequences, hits, slides = self.sequences[:n], self.hits[:n], self.slides[:n]
        del self.sequences[:n], self.hits[:n], self.slides[:n]
        valid = [grammar.is_valid(seq) for seq in sequences]
        now = {"sampled_tokens": self.sampled_tokens, "rejected_and_retried": self.rejected}
        counts = {k: now[k] - self._counted[k] for k in now} | {
            "closed_by_context_window": sum(hits),
            "slid_patients": sum(1 for k in slides if k),
            "slides": sum(slides),
        }
        self._counted = now
        table = pa.table(
            {
                "person_id": [sharding.person_id(self.seed, g) for g in file_patients],
                "concept_ids": sequences,
                "num_of_concepts": [len(seq) for seq in sequences],
                "is_valid": valid,
            },
            schema=OUTPUT_SCHEMA.with_metadata({FILE_METADATA_KEY: json.dumps(counts, sort_keys=True)}),
        )
        write_parquet_atomically(table, path)
        if self.on_written is not None:
            self.on_written(path)
        self.valid += sum(valid)
        self.hit_context_window += sum(hits)
        self.slid_patients += counts["slid_patients"]
        self.written += 1


def count_shard_files(out_dir: Path, shard_prefix: str) -> dict[str, int]:
    """Patients, valid patients and the per-part counts of a shard's finished parts (any attempt's)."""
    totals = dict.fromkeys(
        (
            "patients",
            "valid",
            "sampled_tokens",
            "rejected_and_retried",
            "closed_by_context_window",
            "slid_patients",
            "slides",
        ),
        0,
    )
    for path in sorted(out_dir.glob(f"{shard_prefix}-part*.parquet")):
        table = pq.read_table(path, columns=["is_valid"])
        totals["patients"] += table.num_rows
        totals["valid"] += int(sum(table.column("is_valid").to_pylist()))
        counts = json.loads((table.schema.metadata or {}).get(FILE_METADATA_KEY, b"{}"))
        for key, value in counts.items():
            totals[key] += int(value)
    return totals


def merge_shard_summaries(strategy_folder: Path) -> dict:
    """Every shard summary under ``runs/`` merged into ``generation_summary.json`` (written and returned)."""
    shards = [json.loads(p.read_text()) for p in sorted((strategy_folder / "runs").glob("seed*-shard*.json"))]
    patients = sum(s["patients_in_files"] for s in shards)
    valid = sum(s["valid_patients_in_files"] for s in shards)
    merged = {
        "strategy": strategy_folder.name,
        "patients": patients,
        "valid_patients": valid,
        "valid_fraction": valid / patients if patients else None,
        "sampled_tokens": sum(s["sampled_tokens"] for s in shards),
        "rejected_and_retried": sum(s["rejected_and_retried"] for s in shards),
        "closed_by_context_window": sum(s.get("closed_by_context_window", 0) for s in shards),
        # patients that outgrew the model's window and went on sliding, and their slides (README, generation)
        "slid_patients": sum(s.get("slid_patients", 0) for s in shards),
        "slides": sum(s.get("slides", 0) for s in shards),
        "shards": shards,
    }
    atomic_write_text(strategy_folder / SUMMARY_FILE, json.dumps(merged, indent=1))
    return merged
