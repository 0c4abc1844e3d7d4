"""Training throughput (tokens/s) of ``cehrgpt.train`` against a plain PyTorch loop on the same model.

What is measured, per preset:

* ``cehrgpt.train``: the real training path (parquet → tokenizer → prompt-keeping
  windows → length-grouped batches → accelerate loop, no evaluation, one checkpoint after the last window). Its
  log lines report tokens/s per logging window; the first window is warm-up, the
  median of the rest is reported. Tokens are real (non-padding) tokens.
* tokens per CPU-second of this process beside tokens/s: on a machine shared with
  other jobs the wall-clock rate mostly measures the neighbours, the CPU-time
  rate stays comparable.
* ``--attention_dropouts 0,0.1``: the real path once per attention-dropout setting (default 0, what
  ``cehrgpt.train`` uses unless told), each against the same baseline.
* the data loader alone (``cehrgpt.train.data.training_loader``, the trainer's own): milliseconds per
  batch of ``--loader_batch_size`` windows over one pass of the training patients, the tokenizer and
  encoding excluded.
* baseline: a bare ``for`` loop of forward/backward/AdamW on the same GPT-2 config,
  fed one dense random batch of the same tokens per step (no data pipeline, no
  padding), timed the same way. The ratio shows what the data pipeline and
  padding cost.

Data: synthetic patients spelled with :mod:`cehrgpt.grammar`, lengths drawn to
look like Eunomia (median about 200 tokens, a tail past the window).

    python bench/bench_train.py                      # tiny and small on CPU, a few minutes
    python bench/bench_train.py --presets tiny,small,base --patients 20000 --batch_size 32   # GPU
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from cehrgpt import grammar as g
from cehrgpt.models.gpt import PRESETS, gpt2_config
from cehrgpt.models.tokenizer import build_tokenizer, load_tokenizer
from cehrgpt.train import train
from cehrgpt.train.data import encode_all, read_split, training_loader


def synthetic_patient(rng: np.random.Generator, concepts: list[str]) -> list[str]:
    """One grammatical patient of roughly Eunomia-like length."""
    target = int(np.clip(rng.lognormal(np.log(200), 0.55), 20, 900))
    tokens = [g.year_token(rng.integers(1950, 2015)), g.age_token(rng.integers(0, 90)), "8507", "8527"]
    while len(tokens) < target:
        if len(tokens) > 4:
            tokens.append(g.gap_token(int(rng.integers(0, 1200))))
        tokens += [
            g.VISIT_START,
            "9202",
            *rng.choice(concepts, int(rng.integers(1, 5))).tolist(),
            g.VISIT_END,
        ]
    return tokens


def write_data(folder: Path, patients: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    concepts = [str(c) for c in rng.choice(np.arange(1_000_000, 2_000_000), 800, replace=False)]
    for split, count in (("train", patients), ("test", max(patients // 50, 8))):
        (folder / split).mkdir(parents=True)
        rows = [synthetic_patient(rng, concepts) for _ in range(count)]
        table = pa.table(
            {"person_id": np.arange(count), "concept_ids": pa.array(rows, pa.list_(pa.string()))}
        )
        pq.write_table(table, folder / split / "part-00000.parquet")


class _WindowClock(logging.Handler):
    """Stamps wall and process-CPU time at each of cehrgpt.train's per-window log lines."""

    def __init__(self) -> None:
        super().__init__()
        self.stamps: list[tuple[float, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("step ") and "tokens/s" in record.getMessage():
            self.stamps.append((time.perf_counter(), time.process_time()))


def bench_pipeline(
    data: Path, work: Path, preset: str, args, attention_dropout: float = 0.0
) -> tuple[list[float], list[float], dict]:
    """Wall tokens/s and tokens per CPU-second of cehrgpt.train, per timed window (warm-up dropped)."""
    clock = _WindowClock()
    logger = logging.getLogger("cehrgpt.train")
    logger.addHandler(clock)
    logger.setLevel(logging.INFO)
    try:
        metrics = train(
            data,
            work / f"model-{preset}-{attention_dropout}",
            preset=preset,
            attention_dropout=attention_dropout,
            max_steps=args.steps_per_window * (args.windows + 1),
            batch_size=args.batch_size,
            logging_steps=args.steps_per_window,
            eval_steps=0,
            save_steps=0,
            seed=args.seed,
        )
    finally:
        logger.removeHandler(clock)
    entries = metrics["log_history"]
    wall, cpu = [], []
    for (w0, c0), (w1, c1), entry in zip(clock.stamps, clock.stamps[1:], entries[1:], strict=False):
        tokens = entry["tokens_per_second"] * (w1 - w0)  # the loop's own rate times the window's wall time
        wall.append(entry["tokens_per_second"])
        cpu.append(tokens / (c1 - c0))
    return wall, cpu, metrics


def bench_loader(data: Path, preset: str, batch_size: int, seed: int) -> float:
    """Milliseconds per batch of the trainer's data loader over one pass of the training patients."""
    train_tokens = read_split(data, "train")
    vocab = build_tokenizer(train_tokens)[0].get_vocab()  # the vocabulary cehrgpt.train builds
    patients = encode_all(train_tokens, vocab, vocab[g.OOV])
    loader = training_loader(patients, vocab, PRESETS[preset].context_window, batch_size, seed)
    started = time.perf_counter()
    batches = sum(1 for _ in loader)
    return 1000 * (time.perf_counter() - started) / batches


def bench_baseline(
    model_folder: Path, preset: str, tokens_per_step: int, args, attention_dropout: float = 0.0
) -> tuple[list[float], list[float]]:
    """The plain loop (same model config, attention dropout included): wall tokens/s and tokens per
    CPU-second per timed window."""
    tokenizer = load_tokenizer(model_folder)
    shape = PRESETS[preset]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = gpt2_config(
        tokenizer,
        n_layer=shape.n_layer,
        n_embd=shape.n_embd,
        n_head=shape.n_head,
        context_window=shape.context_window,
        attention_dropout=attention_dropout,
    )
    from transformers import GPT2LMHeadModel

    torch.manual_seed(args.seed)
    model = GPT2LMHeadModel(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    length = min(max(tokens_per_step // args.batch_size, 8), shape.context_window)
    ids = torch.randint(7, len(tokenizer), (args.batch_size, length), device=device)
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()

    def one_step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.steps_per_window):  # warm-up window
        one_step()
    wall, cpu = [], []
    for _ in range(args.windows):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(args.steps_per_window):
            one_step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        tokens = ids.numel() * args.steps_per_window
        wall.append(tokens / (time.perf_counter() - start))
        cpu.append(tokens / (time.process_time() - start_cpu))
    return wall, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--presets", default="tiny,small", help="comma-separated presets (default tiny,small)"
    )
    parser.add_argument("--patients", type=int, default=600, help="synthetic training patients")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps_per_window", type=int, default=2, help="steps per timed window")
    parser.add_argument("--windows", type=int, default=3, help="timed windows after one warm-up window")
    parser.add_argument(
        "--attention_dropouts",
        default="0",
        help="comma-separated attention-dropout settings, one cehrgpt.train row each (default 0)",
    )
    parser.add_argument(
        "--loader_batch_size", type=int, default=32, help="windows per batch when timing the data loader"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="bench/out/bench_train.json")
    args = parser.parse_args(argv)

    device = f"cuda ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else "cpu"
    machine = (
        f"{platform.platform()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, {device}"
    )
    print(f"machine: {machine}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_data(work / "data", args.patients, args.seed)
        for preset in args.presets.split(","):
            tokens_per_step = _tokens_per_step(work / "data", preset, args.batch_size)
            # the loader is the same whatever the attention dropout: timed once per preset
            loader_ms = bench_loader(work / "data", preset, args.loader_batch_size, args.seed)
            for attention_dropout in [float(a) for a in args.attention_dropouts.split(",")]:
                wall, cpu, metrics = bench_pipeline(work / "data", work, preset, args, attention_dropout)
                model = work / f"model-{preset}-{attention_dropout}"
                base_wall, base_cpu = bench_baseline(model, preset, tokens_per_step, args, attention_dropout)
                ours, theirs = statistics.median(wall), statistics.median(base_wall)
                ours_cpu, theirs_cpu = statistics.median(cpu), statistics.median(base_cpu)
                results.append(
                    {
                        "preset": preset,
                        "attention_dropout": attention_dropout,
                        "pipeline_tokens_per_second": round(ours, 1),
                        "baseline_tokens_per_second": round(theirs, 1),
                        "ratio": round(ours / theirs, 3),
                        "pipeline_tokens_per_cpu_second": round(ours_cpu, 1),
                        "baseline_tokens_per_cpu_second": round(theirs_cpu, 1),
                        "cpu_ratio": round(ours_cpu / theirs_cpu, 3),
                        "pipeline_windows": wall,
                        "baseline_windows": [round(r, 1) for r in base_wall],
                        "tokens_per_step": tokens_per_step,
                        "data_loader_ms_per_batch": round(loader_ms, 3),
                        "data_loader_batch_size": args.loader_batch_size,
                        "batch_size": args.batch_size,
                        "mixed_precision": metrics["mixed_precision"],
                        "load_average": os.getloadavg(),
                    }
                )
                print(
                    f"{preset:6s} attention dropout {attention_dropout:g}  cehrgpt.train {ours:9,.0f} tok/s "
                    f"({ours_cpu:,.0f}/CPU-s)   plain loop {theirs:9,.0f} tok/s ({theirs_cpu:,.0f}/CPU-s)   "
                    f"ratio {ours / theirs:.2f} (CPU {ours_cpu / theirs_cpu:.2f})   "
                    f"data loader {loader_ms:.2f} ms/batch of {args.loader_batch_size}   "
                    f"[{tokens_per_step} real tokens/step, batch {args.batch_size}, load {os.getloadavg()[0]:.1f}]",
                    flush=True,
                )
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "results": results}, indent=1))
    print(f"wrote {out}")
    return 0


def _tokens_per_step(data: Path, preset: str, batch_size: int) -> int:
    """Mean real tokens in a training batch: mean window length times the batch size."""
    column = pq.read_table(data / "train", columns=["concept_ids"]).column("concept_ids").to_pylist()
    window = PRESETS[preset].context_window
    return int(np.mean([min(len(tokens) + 1, window) for tokens in column]) * batch_size)


if __name__ == "__main__":
    sys.exit(main())
