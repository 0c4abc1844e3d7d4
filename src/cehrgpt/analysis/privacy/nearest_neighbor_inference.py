"""Nearest-neighbour adversarial accuracy (NNAA) and its privacy loss (Yale et al. 2020).

For a real set T and the synthetic set S, with d_TS a real patient's distance
to its nearest synthetic patient and d_TT to its nearest *other* real patient::

    AA_TS = ½ [ P(d_TS > d_TT) + P(d_ST > d_SS) ]

A tie counts ½ (the original counted it as a miss) and the share of tied
comparisons is reported. AA_train uses training patients, AA_test held-out
ones; the privacy loss ``NNAAE = AA_test − AA_train`` is ≈ 0 when the
synthetic data sits no closer to the training patients than to unseen ones.
Each iteration samples the same number of training and held-out patients and
compares them with the *whole* synthetic set (a synthetic sample would miss the
twins of most copied patients); both AAs see the same synthetic set, so its
size shifts them alike and the loss stays comparable.

Metrics (``metrics.json``): ``nnaa_aa_train``, ``nnaa_aa_test``,
``nnaa_privacy_loss`` (means over iterations), ``nnaa_privacy_loss_max``,
``nnaa_tie_rate_train``, ``nnaa_tie_rate_test``, ``nnaa_num_of_samples``,
``nnaa_n_iterations``. Table ``nearest_neighbor_inference.parquet``: one row per
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
from cehrgpt.analysis.io import AnalysisError, write_outputs
from cehrgpt.analysis.privacy.common import (
    DEFAULT_SEED,
    add_sampling_flags,
    check_positive,
    load_inputs,
    mean_of,
    run_main,
    samples_used,
)

TABLE = "nearest_neighbor_inference"


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


def nnaa_analysis(
    training: PatientSet,
    evaluation: PatientSet,
    synthetic: PatientSet,
    space: FeatureSpace,
    n_iterations: int = 1,
    num_of_samples: int = 5000,
    seed: int = DEFAULT_SEED,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """NNAA per iteration: equal-size real samples against the whole synthetic set; table and metrics."""
    check_positive(n_iterations, "n_iterations")
    n = samples_used(
        num_of_samples,
        {"training": len(training), "evaluation": len(evaluation)},
        "nearest_neighbor_inference",
    )
    if min(n, len(synthetic)) < 2:
        raise AnalysisError(
            f"NNAA needs at least 2 patients in every set; got {n} real (sampled) and {len(synthetic)} synthetic"
        )
    rng = np.random.default_rng(seed)
    rows = []
    s = space.encode(synthetic)
    d_ss = nearest_other(s, chunk_size=chunk_size).a_to_b_distance
    for iteration in tqdm(range(1, n_iterations + 1), desc="NNAA", unit="iteration"):
        t = space.encode(training.take(sample_indices(rng, len(training), n)))
        e = space.encode(evaluation.take(sample_indices(rng, len(evaluation), n)))
        ts = nearest_neighbours(t, s, both_directions=True, chunk_size=chunk_size)
        es = nearest_neighbours(e, s, both_directions=True, chunk_size=chunk_size)
        assert ts.b_to_a_distance is not None and es.b_to_a_distance is not None
        aa_train, ties_train = adversarial_accuracy(
            ts.a_to_b_distance,
            nearest_other(t, chunk_size=chunk_size).a_to_b_distance,
            ts.b_to_a_distance,
            d_ss,
        )
        aa_test, ties_test = adversarial_accuracy(
            es.a_to_b_distance,
            nearest_other(e, chunk_size=chunk_size).a_to_b_distance,
            es.b_to_a_distance,
            d_ss,
        )
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
        "nnaa_num_of_samples": n,
        "nnaa_n_iterations": n_iterations,
    }
    return table, metrics


def run_nearest_neighbor_inference(
    training_data_folder: str,
    evaluation_data_folder: str,
    synthetic_data_folder: str,
    metrics_folder: str,
    concept_tokenizer_path: str | None = None,
    n_iterations: int = 1,
    num_of_samples: int = 5000,
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
    parser = argparse.ArgumentParser(
        prog="python -m cehrgpt.analysis.privacy.nearest_neighbor_inference",
        description=__doc__.split("\n")[0],
    )
    parser.add_argument("--training_data_folder", required=True)
    parser.add_argument("--evaluation_data_folder", required=True)
    parser.add_argument("--synthetic_data_folder", required=True)
    parser.add_argument("--metrics_folder", required=True, help="where the table and metrics.json go")
    parser.add_argument("--concept_tokenizer_path", help="tokenizer folder; its concepts are the features")
    add_sampling_flags(parser)
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
