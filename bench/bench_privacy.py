"""Benchmark the privacy analyses at the issue's sizes, against a looped dense baseline.

Data: grammar-valid random patients with realistic concept counts (about 30
distinct clinical concepts over ~7 visits per patient, drawn with a Zipf-like
frequency from a 400-concept vocabulary — Eunomia's shape), generated here
with a seed; nothing is downloaded.

Measured, on this machine:

1. the nearest-neighbour kernel against a naive baseline (Python loop over
   pairs of dense vectors) at a small n, median of ``--repeats`` runs: the ratio;
2. attribute inference with ``--num_of_samples`` (10,000) × ``--n_iterations`` (10);
   membership inference and NNAA over every one of the ``--num_of_samples``
   members and as many non-members against the whole synthetic set (as many
   again), asked for ``--n_iterations`` as the seed's command does (nothing is
   sampled, so they run one pass), and ``*_unbalanced``: the same with a quarter
   as many non-members (NNAA then cuts the members into 4 folds, drawn afresh in
   each of the iterations); re-identification over ``--num_of_samples`` training
   patients, and memorisation of the whole synthetic set against training and
   held-out (targets: memorisation, membership inference and NNAA ≤ 60 s,
   attribute inference ≤ 120 s, re-identification ≤ 300 s); ``--only`` picks
   some of them, ``--analysis_repeats`` times each (median);
3. sequence parsing (patients per second), which every command pays once per set.

Usage: ``python bench/bench_privacy.py [--num_of_samples 10000] [--n_iterations 10] [--baseline_n 600]
[--only memorization member_inference] [--analysis_repeats 3]``.
Writes ``bench/out/bench_privacy.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cehrgpt import grammar
from cehrgpt.analysis.features import FeatureSpace, nearest_neighbours, parse_patients
from cehrgpt.analysis.privacy.attribute_inference import attribute_inference_analysis
from cehrgpt.analysis.privacy.member_inference import membership_inference_analysis
from cehrgpt.analysis.privacy.memorization import memorization_analysis
from cehrgpt.analysis.privacy.nearest_neighbor_inference import nnaa_analysis
from cehrgpt.analysis.privacy.reid_inference import default_attributes, reid_analysis

VOCABULARY = np.arange(1_000_000, 1_000_400)
WEIGHTS = 1.0 / (np.arange(len(VOCABULARY)) + 5.0)
WEIGHTS /= WEIGHTS.sum()


def random_patient(rng: np.random.Generator) -> list[str]:
    """A grammar-valid patient: prompt, 1 + Poisson(6) visits of 1 + Poisson(4) concepts, gaps between."""
    tokens = [
        grammar.year_token(int(rng.integers(1990, 2020))),
        grammar.age_token(int(rng.integers(0, 90))),
        str(rng.choice([8507, 8532])),
        str(rng.choice([8527, 8516, 8515, 0])),
    ]
    for v in range(1 + rng.poisson(6)):
        if v:
            tokens.append(grammar.gap_token(int(rng.integers(0, 400))))
        visit_type = int(rng.choice([9202, 9201, 9203], p=[0.7, 0.1, 0.2]))
        concepts = rng.choice(VOCABULARY, size=1 + rng.poisson(4), p=WEIGHTS)
        tokens += [grammar.VISIT_START, str(visit_type), *map(str, concepts)]
        if visit_type == 9201:
            tokens += [grammar.inpatient_gap_token(int(rng.integers(1, 5))), str(concepts[0]), "8536"]
        tokens.append(grammar.VISIT_END)
    tokens.append(grammar.END)
    return tokens


def random_frame(rng: np.random.Generator, n: int) -> pd.DataFrame:
    return pd.DataFrame({"person_id": np.arange(n), "concept_ids": [random_patient(rng) for _ in range(n)]})


def naive_nearest(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The baseline: a Python loop over every pair of dense vectors."""
    best = np.empty(len(a))
    for i in range(len(a)):
        best[i] = min(float(np.sum((a[i] - b[j]) ** 2)) for j in range(len(b)))
    return best


def median_seconds(run, repeats: int) -> float:
    return timed(run, repeats)[0]


def timed(run, repeats: int) -> tuple[float, float, object]:
    """Median wall seconds and median CPU seconds (all threads) of ``repeats`` runs, and the last result.

    On a shared machine the wall time depends on the load; CPU seconds do not,
    and on an idle machine wall ≈ CPU / cores for this BLAS-bound work.
    """
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        started, cpu = time.perf_counter(), time.process_time()
        result = run()
        walls.append(time.perf_counter() - started)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_of_samples", type=int, default=10_000)
    parser.add_argument("--n_iterations", type=int, default=10)
    parser.add_argument("--baseline_n", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="bench/out/bench_privacy.json")
    parser.add_argument("--only", nargs="+", help="analyses to time (default: all)")
    parser.add_argument("--analysis_repeats", type=int, default=1, help="runs of each analysis (median)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    n = args.num_of_samples
    machine = f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    print(f"machine: {machine}")

    frames = {name: random_frame(rng, n) for name in ("training", "evaluation", "synthetic")}
    started = time.perf_counter()
    sets = {name: parse_patients(frame, check_grammar=name == "synthetic") for name, frame in frames.items()}
    parse_rate = 3 * n / (time.perf_counter() - started)
    training, evaluation, synthetic = sets["training"], sets["evaluation"], sets["synthetic"]
    distinct = np.diff(training.concept_indptr)
    print(
        f"data: {n} patients per set, {distinct.mean():.1f} distinct concepts per patient (median {np.median(distinct):.0f})"
    )
    print(f"parsing: {parse_rate:,.0f} patients/s")
    space = FeatureSpace.fit([training, evaluation, synthetic])

    small = np.arange(args.baseline_n)
    a, b = space.encode(training.take(small)), space.encode(synthetic.take(small))
    assert a.age is not None and b.age is not None
    # dense over the columns either sample uses (the timeline's columns number in the millions)
    used = np.flatnonzero(np.diff(sp.vstack([a.binary, b.binary]).tocsc().indptr))
    dense_a = np.hstack([a.binary[:, used].toarray(), a.age[:, None]])
    dense_b = np.hstack([b.binary[:, used].toarray(), b.age[:, None]])
    naive = median_seconds(lambda: naive_nearest(dense_a, dense_b), args.repeats)
    kernel = median_seconds(lambda: nearest_neighbours(a, b), args.repeats)
    assert np.allclose(naive_nearest(dense_a, dense_b), nearest_neighbours(a, b).a_to_b_distance)
    full_a, full_b = space.encode(training), space.encode(synthetic)
    kernel_full = median_seconds(lambda: nearest_neighbours(full_a, full_b), args.repeats)
    naive_full = naive * (n / args.baseline_n) ** 2  # the looped baseline scales with the pairs
    results: dict[str, object] = {
        "machine": machine,
        "data": "random grammar-valid sequences (Zipf-like concepts, 400-concept vocabulary)",
        "num_of_samples": n,
        "n_iterations": args.n_iterations,
        "parse_patients_per_second": parse_rate,
        "baseline_n": args.baseline_n,
        "naive_nn_seconds": naive,
        "kernel_nn_seconds": kernel,
        "kernel_speedup": naive / kernel,
        "kernel_nn_full_seconds": kernel_full,
        "naive_nn_full_seconds_extrapolated": naive_full,
    }
    print(
        f"nearest neighbours {args.baseline_n}x{args.baseline_n}: looped dense baseline {naive:.3f}s, "
        f"chunked kernel {kernel:.4f}s (median of {args.repeats}): {naive / kernel:,.0f}x faster"
    )
    print(
        f"nearest neighbours {n}x{n}: chunked kernel {kernel_full:.2f}s (median of {args.repeats}); looped "
        f"baseline extrapolated by pairs {naive_full:,.0f}s: {naive_full / kernel_full:,.0f}x"
    )

    quarter = evaluation.take(np.arange(n // 4))
    tokens = {
        name: frames[name]["concept_ids"].iloc[patients.source_rows].reset_index(drop=True)
        for name, patients in sets.items()
    }
    config = default_attributes(training)
    common, sensitive = config["common_attributes"], config["sensitive_attributes"][:20]
    analyses = {
        "attribute_inference": lambda: attribute_inference_analysis(
            training, synthetic, space, common, sensitive, args.n_iterations, n, args.seed
        ),
        "member_inference": lambda: membership_inference_analysis(
            training, evaluation, synthetic, space, n_iterations=args.n_iterations, seed=args.seed
        ),
        "member_inference_unbalanced": lambda: membership_inference_analysis(
            training, quarter, synthetic, space, n_iterations=args.n_iterations, seed=args.seed
        ),
        "nearest_neighbor_inference": lambda: nnaa_analysis(
            training, evaluation, synthetic, space, n_iterations=args.n_iterations, seed=args.seed
        ),
        "nearest_neighbor_inference_unbalanced": lambda: nnaa_analysis(
            training, quarter, synthetic, space, n_iterations=args.n_iterations, seed=args.seed
        ),
        "reid_inference": lambda: reid_analysis(
            training, evaluation, synthetic, space, common, config["sensitive_attributes"]
        ),
        "memorization": lambda: memorization_analysis(
            training,
            evaluation,
            synthetic,
            space,
            training_tokens=tokens["training"],
            evaluation_tokens=tokens["evaluation"],
            synthetic_tokens=tokens["synthetic"],
            seed=args.seed,
        ),
    }
    unknown = set(args.only or []) - set(analyses)
    if unknown:
        parser.error(f"--only {sorted(unknown)}: expected some of {sorted(analyses)}")
    analyses = {name: run for name, run in analyses.items() if not args.only or name in args.only}
    results["load_average_before"] = os.getloadavg()[0]
    for name, run in analyses.items():
        seconds, cpu, result = timed(run, args.analysis_repeats)
        results[f"{name}_seconds"] = seconds
        results[f"{name}_cpu_seconds"] = cpu
        scope = {
            "reid_inference": f"{n} training patients",
            "memorization": f"{n} synthetic vs {n} training + {n} held-out",
        }.get(name, f"{n} samples x {args.n_iterations}")
        if name.startswith(("member_inference", "nearest_neighbor_inference")):
            assert isinstance(result, tuple)
            metrics = result[-1] if name.startswith("nearest") else result[1]
            non_members = n // 4 if name.endswith("unbalanced") else n
            ran = metrics["mia_n_iterations" if name.startswith("member") else "nnaa_n_iterations"]
            scope = (
                f"every record: {n} members + {non_members} non-members vs {n} synthetic, {ran} iteration(s)"
            )
            results[f"{name}_iterations_run"] = ran
        print(f"{name}: {seconds:.1f}s wall, {cpu:.1f}s CPU, median of {args.analysis_repeats} ({scope})")
    results["load_average_after"] = os.getloadavg()[0]
    loads = f"{results['load_average_before']:.1f} / {results['load_average_after']:.1f}"
    print(f"load average (1 min) before/after: {loads}")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=1))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
