"""Benchmark the model's own memorisation measurement (``cehrgpt.analysis.privacy.model_memorization``).

Measures the whole command — read both sequence folders, load the model folder,
score every patient, write the outputs — for the ``tiny`` preset (4 layers, 256
wide, 512-token window), randomly initialised (the scores' values do not change
the work), on ``--patients`` (10,000) training + ``--patients`` held-out patients:

- ``--data random`` (default): grammar-valid random patients with Eunomia's concept
  counts (``bench_privacy.random_patient``: ~7 visits of ~5 concepts, ~70 tokens,
  1.4 M tokens in all). Target: ≤ 120 s on a 2-core CPU.
- ``--data eunomia``: Eunomia's own training sequences with every domain (prepared
  once under ``bench/out/restore/eunomia`` by ``bench_restore.training_sequences``),
  resampled with replacement (seeded) to each set's size — the real length
  distribution (~260 tokens per patient, 5 M tokens in all: 3.6 times the work).

Prints the machine, the data, the median wall and CPU seconds of ``--repeats``
runs, tokens and patients per second, and the share of the scored batches that
was padding (length-sorted batches should waste little).

Usage: ``python bench/bench_model_memorization.py [--data random|eunomia] [--patients 10000] [--repeats 3]
[--batch_size 32] [--device cpu]``. Writes ``bench/out/bench_model_memorization.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from bench_privacy import random_frame, timed
from bench_restore import OUT, training_sequences
from transformers import GPT2LMHeadModel

from cehrgpt.analysis.privacy.model_memorization import (
    DEFAULT_BATCH_SIZE,
    TABLE,
    run_model_memorization,
)
from cehrgpt.models.gpt import PRESETS, gpt2_config
from cehrgpt.models.tokenizer import build_tokenizer, save_tokenizer


def write_model(folder: Path, sequences: list[list[str]], seed: int) -> int:
    """A randomly initialised ``tiny`` model with a tokenizer built from ``sequences``; returns its parameters."""
    tokenizer, _ = build_tokenizer(sequences, min_concept_patients=1)
    preset = PRESETS["tiny"]
    torch.manual_seed(seed)
    config = gpt2_config(
        tokenizer,
        n_layer=preset.n_layer,
        n_embd=preset.n_embd,
        n_head=preset.n_head,
        context_window=preset.context_window,
    )
    model = GPT2LMHeadModel(config)
    model.save_pretrained(folder)
    save_tokenizer(tokenizer, folder)
    return sum(p.numel() for p in model.parameters())


def eunomia_frame(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """``n`` of Eunomia's training patients drawn with replacement, ids 0..n-1."""
    source = pd.read_parquet(
        training_sequences(OUT / "eunomia") / "patient_sequence" / "train", columns=["concept_ids"]
    )
    picks = rng.integers(0, len(source), n)
    return pd.DataFrame(
        {"person_id": np.arange(n), "concept_ids": source["concept_ids"].iloc[picks].to_list()}
    )


def padding_share(lengths: np.ndarray, batch_size: int) -> float:
    """Share of the scored positions that are padding when batches are cut from the length-sorted order."""
    ordered = np.sort(lengths)[::-1]
    padded = sum(
        int(ordered[i]) * len(ordered[i : i + batch_size]) for i in range(0, len(ordered), batch_size)
    )
    return 1 - ordered.sum() / padded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", choices=("random", "eunomia"), default="random")
    parser.add_argument("--patients", type=int, default=10_000, help="patients per set")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="bench/out/bench_model_memorization.json")
    args = parser.parse_args(argv)
    machine = f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    print(f"machine: {machine}; torch {torch.__version__}, {torch.get_num_threads()} threads")

    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(prefix="bench_model_memorization-") as tmp:
        root = Path(tmp)
        make = eunomia_frame if args.data == "eunomia" else random_frame
        frames = {name: make(rng, args.patients) for name in ("training", "evaluation")}
        for name, frame in frames.items():
            (root / name).mkdir()
            frame.to_parquet(root / name / "part-0.parquet", index=False)
        parameters = write_model(root / "model", list(frames["training"]["concept_ids"]), args.seed)
        lengths = np.concatenate([f["concept_ids"].map(len).to_numpy() for f in frames.values()])
        print(
            f"data: {args.data}, {args.patients} + {args.patients} patients, {lengths.mean():.1f} tokens per patient "
            f"(max {lengths.max()}); model: tiny, {parameters / 1e6:.2f}M parameters, random weights"
        )

        def run() -> None:
            run_model_memorization(
                str(root / "model"),
                str(root / "training"),
                str(root / "evaluation"),
                str(root / "out"),
                seed=args.seed,
                batch_size=args.batch_size,
                device=args.device,
            )

        wall, cpu = timed(run, args.repeats)[:2]
        table = pd.read_parquet(root / "out" / f"{TABLE}.parquet")
        tokens = int(table["num_tokens"].sum())
        padding = padding_share(table["num_tokens"].to_numpy(), args.batch_size)
    results = {
        "machine": machine,
        "data": args.data,
        "patients_per_set": args.patients,
        "tokens_scored": tokens,
        "batch_size": args.batch_size,
        "device": args.device,
        "repeats": args.repeats,
        "wall_seconds_median": round(wall, 2),
        "cpu_seconds_median": round(cpu, 2),
        "tokens_per_second": round(tokens / wall, 1),
        "patients_per_second": round(2 * args.patients / wall, 1),
        "padding_share": round(padding, 4),
        "target_seconds": 120,
    }
    print(
        f"model memorisation, tiny, {args.data} data, {args.patients} + {args.patients} patients: {wall:.1f} s wall, "
        f"{cpu:.1f} s CPU (median of {args.repeats}); {tokens / wall:,.0f} tokens/s, "
        f"{2 * args.patients / wall:,.0f} patients/s; padding {padding:.1%} of the batches (target ≤ 120 s)"
    )
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
