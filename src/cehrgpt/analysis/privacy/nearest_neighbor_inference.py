"""Nearest-neighbour adversarial accuracy (NNAA) and its privacy loss (Yale et al. 2020).

For a real set T and the synthetic set S, with d_TS a real patient's distance
to its nearest synthetic patient and d_TT to its nearest *other* real patient::

    AA_TS = ½ [ P(d_TS > d_TT) + P(d_ST > d_SS) ]

A tie counts ½ (the original counted it as a miss) and the share of tied
comparisons is reported. AA_train uses training patients, AA_test held-out
ones; the privacy loss ``NNAAE = AA_test − AA_train`` is ≈ 0 when the
synthetic data sits no closer to the training patients than to unseen ones.
Both are measured against the *whole* synthetic set (a synthetic sample would
miss the twins of most copied patients), so its size shifts them alike.

Every training and every held-out record takes part. d_TT and d_ST depend on
the size of the real set (a larger set has nearer neighbours), so the two AAs
are only comparable at equal sizes: the larger set is cut into folds of the
smaller set's size — a seeded permutation cut in order, the last fold being
the permutation's last records, so it overlaps the one before when the sizes
do not divide — and its AA is the mean over its folds (every record in at
least one fold; the few in two weigh double). ``--num_of_samples`` is an upper
bound on the records taken from each set, by default none; a larger set is
sampled (seeded) afresh in each iteration. An iteration draws new folds and
samples; when the sets are of equal size and none is cut, every iteration
would be the same, so one pass is run.

Metrics (``metrics.json``): ``nnaa_aa_train``, ``nnaa_aa_test``,
``nnaa_privacy_loss`` (means over iterations), ``nnaa_privacy_loss_max``,
``nnaa_tie_rate_train``, ``nnaa_tie_rate_test``, ``nnaa_num_of_samples`` (the
size at which each AA is computed: the fold size), ``nnaa_num_training_records``
and ``nnaa_num_evaluation_records`` (records used per iteration),
``nnaa_num_folds_train``, ``nnaa_num_folds_test``, ``nnaa_n_iterations``
(iterations run). Table ``nearest_neighbor_inference.parquet``: one row per
iteration with ``Iteration``, ``AA_train``, ``AA_test``, ``NNAAE``, ``Tie Rate Train``,
``Tie Rate Test``.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from tqdm import tqdm

from cehrgpt.analysis.features import (
    DEFAULT_CHUNK_SIZE,
    FeatureSpace,
    PatientSet,
    nearest_neighbours,
    nearest_other,
    sample_indices,
)
from cehrgpt.analysis.io import AnalysisError, warn, write_outputs
from cehrgpt.analysis.privacy.common import (
    DEFAULT_SEED,
    add_sampling_flags,
    check_positive,
    load_inputs,
    mean_of,
    records_per_set,
    run_main,
)
from cehrgpt.exits import CommandParser

TABLE = "nearest_neighbor_inference"
SAMPLES_HELP = (
    "at most this many records from each set, a seeded sample per iteration of a larger set "
    "(default: no cap, every training and held-out record)"
)


def adversarial_accuracy(
    d_real_synthetic: np.ndarray,
    d_real_real: np.ndarray,
    d_synthetic_real: np.ndarray,
    d_synthetic_synthetic: np.ndarray,
) -> tuple[float, float]:
    """AA = ½[mean(d_RS > d_RR) + mean(d_SR > d_SS)] with ties counted ½; returns (AA, tie rate)."""
    real_wins = (d_real_synthetic > d_real_real) + 0.5 * (d_real_synthetic == d_real_real)
    synthetic_wins = (d_synthetic_real > d_synthetic_synthetic) + 0.5 * (
        d_synthetic_real == d_synthetic_synthetic
    )
    ties = np.count_nonzero(d_real_synthetic == d_real_real) + np.count_nonzero(
        d_synthetic_real == d_synthetic_synthetic
    )
    return 0.5 * (float(real_wins.mean()) + float(synthetic_wins.mean())), ties / (
        len(d_real_real) + len(d_synthetic_synthetic)
    )


def equal_folds(rng: np.random.Generator, rows: np.ndarray, fold_size: int) -> list[np.ndarray]:
    """Cover ``rows`` with ⌈len/fold_size⌉ folds of exactly ``fold_size`` (the last overlapping when needed).

    ``rows`` as given when it is one fold; otherwise a seeded permutation cut in order, the last fold
    being its last ``fold_size`` rows.
    """
    if len(rows) == fold_size:
        return [rows]
    order = rows[rng.permutation(len(rows))]
    starts = [*range(0, len(rows) - fold_size, fold_size), len(rows) - fold_size]
    return [order[start : start + fold_size] for start in starts]


def nnaa_analysis(
    training: PatientSet,
    evaluation: PatientSet,
    synthetic: PatientSet,
    space: FeatureSpace,
    n_iterations: int = 1,
    num_of_samples: int | None = None,
    seed: int = DEFAULT_SEED,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """NNAA of every training and held-out record, in equal-size folds, against the whole synthetic set."""
    check_positive(n_iterations, "n_iterations")
    sets = (training, evaluation)
    used = records_per_set(
        num_of_samples,
        {"training": len(training), "evaluation": len(evaluation)},
        "nearest_neighbor_inference",
    )
    sizes = (used["training"], used["evaluation"])
    fold_size = min(sizes)
    if min(fold_size, len(synthetic)) < 2:
        raise AnalysisError(
            f"NNAA needs at least 2 patients in every set; got {fold_size} real and {len(synthetic)} synthetic"
        )
    sampled = any(size < len(patients) for size, patients in zip(sizes, sets, strict=True))
    iterations = n_iterations if sampled or sizes[0] != sizes[1] else 1
    if iterations < n_iterations:
        warn(
            f"nearest_neighbor_inference: every record of both sets is used at equal sizes; --n_iterations "
            f"{n_iterations} would repeat the same comparison, so one pass is run"
        )
    rng = np.random.default_rng(seed)
    s = space.encode(synthetic)
    d_ss = nearest_other(s, chunk_size=chunk_size).a_to_b_distance

    def fold_aa(patients: PatientSet, rows: np.ndarray) -> tuple[float, float]:
        real = space.encode(patients.take(rows))
        found = nearest_neighbours(real, s, both_directions=True, chunk_size=chunk_size)
        assert found.b_to_a_distance is not None
        return adversarial_accuracy(
            found.a_to_b_distance,
            nearest_other(real, chunk_size=chunk_size).a_to_b_distance,
            found.b_to_a_distance,
            d_ss,
        )

    rows = []
    folds = [-(-size // fold_size) for size in sizes]  # ⌈size / fold_size⌉ per set, every iteration
    for iteration in tqdm(range(1, iterations + 1), desc="NNAA", unit="iteration"):
        results = []
        for patients, size in zip(sets, sizes, strict=True):
            drawn = sample_indices(rng, len(patients), size) if size < len(patients) else np.arange(size)
            parts = [fold_aa(patients, fold) for fold in equal_folds(rng, drawn, fold_size)]
            results.append((float(np.mean([aa for aa, _ in parts])), float(np.mean([t for _, t in parts]))))
        (aa_train, ties_train), (aa_test, ties_test) = results
        rows.append(
            {
                "Iteration": iteration,
                "AA_train": aa_train,
                "AA_test": aa_test,
                "NNAAE": aa_test - aa_train,
                "Tie Rate Train": ties_train,
                "Tie Rate Test": ties_test,
            }
        )
    table = pd.DataFrame(rows)
    metrics = {
        "nnaa_aa_train": mean_of(table["AA_train"].tolist()),
        "nnaa_aa_test": mean_of(table["AA_test"].tolist()),
        "nnaa_privacy_loss": mean_of(table["NNAAE"].tolist()),
        "nnaa_privacy_loss_max": float(table["NNAAE"].max()),
        "nnaa_tie_rate_train": mean_of(table["Tie Rate Train"].tolist()),
        "nnaa_tie_rate_test": mean_of(table["Tie Rate Test"].tolist()),
        "nnaa_num_of_samples": fold_size,
        "nnaa_num_training_records": sizes[0],
        "nnaa_num_evaluation_records": sizes[1],
        "nnaa_num_folds_train": folds[0],
        "nnaa_num_folds_test": folds[1],
        "nnaa_n_iterations": iterations,
    }
    return table, metrics


def run_nearest_neighbor_inference(
    training_data_folder: str,
    evaluation_data_folder: str,
    synthetic_data_folder: str,
    metrics_folder: str,
    concept_tokenizer_path: str | None = None,
    n_iterations: int = 1,
    num_of_samples: int | None = None,
    seed: int = DEFAULT_SEED,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, float]:
    """Read the three folders, run NNAA, write the table and ``metrics.json``; returns the metrics."""
    inputs = load_inputs(
        training_data_folder,
        synthetic_data_folder,
        evaluation_data_folder,
        concept_tokenizer_path,
        tokenizer_role="concept_tokenizer_path",
    )
    assert inputs.evaluation is not None
    table, metrics = nnaa_analysis(
        inputs.training,
        inputs.evaluation,
        inputs.synthetic,
        inputs.space,
        n_iterations=n_iterations,
        num_of_samples=num_of_samples,
        seed=seed,
        chunk_size=chunk_size,
    )
    metrics = {**metrics, **{f"nnaa_{k}": v for k, v in inputs.counts().items()}}
    summary = {
        "analysis": "nearest_neighbor_inference",
        "seed": seed,
        "training_data_folder": str(training_data_folder),
        "evaluation_data_folder": str(evaluation_data_folder),
        "synthetic_data_folder": str(synthetic_data_folder),
        "synthetic_exclusion_reasons": inputs.synthetic.exclusion_reasons,
    }
    write_outputs(metrics_folder, {TABLE: table}, metrics, summary)
    return metrics


def _parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="python -m cehrgpt.analysis.privacy.nearest_neighbor_inference",
        description=__doc__.split("\n")[0],
    )
    parser.add_argument("--training_data_folder", required=True)
    parser.add_argument("--evaluation_data_folder", required=True)
    parser.add_argument("--synthetic_data_folder", required=True)
    parser.add_argument("--metrics_folder", required=True, help="where the table and metrics.json go")
    parser.add_argument("--concept_tokenizer_path", help="tokenizer folder; its concepts are the features")
    add_sampling_flags(parser, default_samples=None, samples_help=SAMPLES_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_main(
        lambda: run_nearest_neighbor_inference(
            args.training_data_folder,
            args.evaluation_data_folder,
            args.synthetic_data_folder,
            args.metrics_folder,
            args.concept_tokenizer_path,
            n_iterations=args.n_iterations,
            num_of_samples=args.num_of_samples,
            seed=args.seed,
            chunk_size=args.matching_batch_size,
        ),
        "Nearest-neighbour adversarial accuracy",
    )


if __name__ == "__main__":
    raise SystemExit(main())
