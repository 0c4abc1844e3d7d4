"""Membership inference: can an attacker holding the synthetic data tell who was in the training set?

Each iteration samples the same number of training patients (members) and
held-out patients (non-members); every sampled record gets its distance to the
nearest of *all* synthetic patients (a sample of the synthetic set would miss
most twins of a copied patient). A record is predicted a member when that
distance is below a threshold, at two thresholds:

- ``fixed``: the original's fixed distance (default 5, squared Euclidean);
- ``median``: the median of all the sampled records' distances, where about half
  the records are predicted members and chance F1 is 0.5.

Chance for a threshold is the F1 of a coin that predicts the same share ``q`` of
members on these balanced samples: ``q / (0.5 + q)``. ``mia_f1_above_chance`` is the
larger of the two thresholds' F1 minus its chance F1.

Threshold-free, over every iteration's records pooled (score = −distance: nearer
is more likely a member): ``mia_auc`` (ROC AUC, scikit-learn; 0.5 = chance, what
the release gate reads), ``mia_tpr_at_fpr_0.01`` and ``mia_tpr_at_fpr_0.1`` (the
highest true-positive rate at a false-positive rate no higher than 1% / 10%:
how many members an attacker exposes while rarely accusing a non-member) and
``mia_advantage`` (max TPR − FPR over all thresholds). The ROC curve's points
go to ``roc_curve.json`` (``fpr``, ``tpr``, ``threshold``: predict a member when the
distance is at most the threshold) for the pipeline's ``ClassificationMetrics``.

Metrics: ``mia_{accuracy,precision,recall,f1,f1_chance,advantage}_{fixed,median}_threshold``
(advantage = true-positive rate − false-positive rate), ``mia_f1_above_chance``,
``mia_num_of_samples``, ``mia_n_iterations``. Table ``membership_inference.parquet``: one
row per iteration and threshold with ``Iteration``, ``Threshold Type``, ``Threshold``,
``Accuracy``, ``Precision``, ``Recall``, ``F1``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve
from tqdm import tqdm

from cehrgpt.analysis.features import (
    DEFAULT_CHUNK_SIZE,
    FeatureSpace,
    PatientSet,
    nearest_neighbours,
    sample_indices,
)
from cehrgpt.analysis.io import write_outputs
from cehrgpt.analysis.privacy.common import (
    DEFAULT_SEED,
    add_sampling_flags,
    check_positive,
    load_inputs,
    mean_of,
    run_main,
    samples_used,
)

TABLE = "membership_inference"
FIXED_THRESHOLD = 5.0
THRESHOLD_TYPES = ("fixed", "median")
ROC_FILE = "roc_curve.json"


def classification_scores(labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """Accuracy, precision, recall, F1, predicted-positive share and advantage (TPR − FPR); 0 when undefined."""
    labels, predictions = labels.astype(bool), predictions.astype(bool)
    tp = int(np.count_nonzero(labels & predictions))
    fp = int(np.count_nonzero(~labels & predictions))
    fn = int(np.count_nonzero(labels & ~predictions))
    positives, negatives = int(labels.sum()), int((~labels).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "accuracy": float(np.mean(labels == predictions)),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "positive_rate": float(predictions.mean()),
        "advantage": recall - (fp / negatives if negatives else 0.0) if positives else 0.0,
    }


def chance_f1(positive_rate: float) -> float:
    """F1 of random guessing that predicts ``positive_rate`` of a balanced set as members."""
    return positive_rate / (0.5 + positive_rate) if positive_rate > 0 else 0.0


def roc_metrics(labels: np.ndarray, distances: np.ndarray) -> tuple[dict[str, float], dict[str, list[float]]]:
    """AUC, TPR at FPR ≤ 1% and ≤ 10%, and the best advantage of the attack "nearer = member"; and the curve.

    Ties in distance are one threshold (scikit-learn groups equal scores). Undefined
    (NaN) when either class is absent.
    """
    labels = labels.astype(bool)
    if labels.all() or not labels.any():
        nan = float("nan")
        return {
            "mia_auc": nan,
            "mia_tpr_at_fpr_0.01": nan,
            "mia_tpr_at_fpr_0.1": nan,
            "mia_advantage": nan,
        }, {
            "fpr": [],
            "tpr": [],
            "threshold": [],
        }
    scores = -np.asarray(distances, dtype=np.float64)
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    metrics = {
        "mia_auc": float(roc_auc_score(labels, scores)),
        "mia_tpr_at_fpr_0.01": float(tpr[fpr <= 0.01].max()),
        "mia_tpr_at_fpr_0.1": float(tpr[fpr <= 0.1].max()),
        "mia_advantage": float((tpr - fpr).max()),
    }
    distance_thresholds = np.where(np.isfinite(thresholds), -thresholds, -1.0)  # the first point: nobody
    curve = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "threshold": distance_thresholds.tolist()}
    return metrics, curve


def log_roc_curve_file(path: str, classification_metrics, max_points: int = 500) -> int:
    """Log ``roc_curve.json`` on a Kubeflow ``ClassificationMetrics`` artifact; returns the points logged.

    A curve over many records is thinned to ``max_points`` evenly spaced points (first and last kept)
    so the UI stays responsive; the file keeps every point.
    """
    curve = json.loads(Path(path).read_text())
    keep = np.unique(np.linspace(0, len(curve["fpr"]) - 1, min(max_points, len(curve["fpr"]))).astype(int))
    classification_metrics.log_roc_curve(
        [curve["fpr"][i] for i in keep],
        [curve["tpr"][i] for i in keep],
        [curve["threshold"][i] for i in keep],
    )
    return len(keep)


def membership_inference_analysis(
    training: PatientSet,
    evaluation: PatientSet,
    synthetic: PatientSet,
    space: FeatureSpace,
    n_iterations: int = 1,
    num_of_samples: int = 5000,
    seed: int = DEFAULT_SEED,
    fixed_threshold: float = FIXED_THRESHOLD,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[pd.DataFrame, dict[str, float], dict[str, list[float]]]:
    """Membership inference per iteration at the fixed and the median threshold, and the pooled ROC.

    Returns the table, the metrics and the ROC curve's points.
    """
    check_positive(n_iterations, "n_iterations")
    n = samples_used(
        num_of_samples, {"training": len(training), "evaluation": len(evaluation)}, "member_inference"
    )
    rng = np.random.default_rng(seed)
    rows = []
    samples = [
        (sample_indices(rng, len(training), n), sample_indices(rng, len(evaluation), n))
        for _ in range(n_iterations)
    ]
    # A record's distance to the whole synthetic set does not depend on the sample it is drawn in:
    # each distinct sampled record is measured once, however many iterations draw it.
    s = space.encode(synthetic)
    distance_of = []
    for patients, side in ((training, 0), (evaluation, 1)):
        drawn = np.unique(np.concatenate([pair[side] for pair in samples]))
        found = nearest_neighbours(space.encode(patients.take(drawn)), s, chunk_size=chunk_size)
        lookup = np.zeros(len(patients), dtype=np.float64)
        lookup[drawn] = found.a_to_b_distance
        distance_of.append(lookup)
    pooled_labels, pooled_distances = [], []
    for iteration, (member_rows, non_member_rows) in enumerate(
        tqdm(samples, desc="membership inference", unit="iteration"), start=1
    ):
        distances = np.concatenate([distance_of[0][member_rows], distance_of[1][non_member_rows]])
        labels = np.concatenate([np.ones(n, dtype=bool), np.zeros(n, dtype=bool)])
        pooled_labels.append(labels)
        pooled_distances.append(distances)
        for threshold_type, threshold in (
            ("fixed", fixed_threshold),
            ("median", float(np.median(distances))),
        ):
            scores = classification_scores(labels, distances < threshold)
            rows.append(
                {
                    "Iteration": iteration,
                    "Threshold Type": threshold_type,
                    "Threshold": threshold,
                    "Accuracy": scores["accuracy"],
                    "Precision": scores["precision"],
                    "Recall": scores["recall"],
                    "F1": scores["f1"],
                    "F1 Chance": chance_f1(scores["positive_rate"]),
                    "Advantage": scores["advantage"],
                }
            )
    table = pd.DataFrame(rows)
    metrics: dict[str, float] = {}
    for threshold_type in THRESHOLD_TYPES:
        part = table[table["Threshold Type"] == threshold_type]
        for column, measure in (
            ("Accuracy", "accuracy"),
            ("Precision", "precision"),
            ("Recall", "recall"),
            ("F1", "f1"),
            ("F1 Chance", "f1_chance"),
            ("Advantage", "advantage"),
        ):
            metrics[f"mia_{measure}_{threshold_type}_threshold"] = mean_of(part[column].tolist())
    metrics["mia_f1_above_chance"] = max(
        metrics[f"mia_f1_{t}_threshold"] - metrics[f"mia_f1_chance_{t}_threshold"] for t in THRESHOLD_TYPES
    )
    roc, curve = roc_metrics(np.concatenate(pooled_labels), np.concatenate(pooled_distances))
    metrics.update(roc)
    metrics["mia_fixed_threshold"] = fixed_threshold
    metrics["mia_num_of_samples"] = n
    metrics["mia_n_iterations"] = n_iterations
    return table, metrics, curve


def run_member_inference(
    training_data_folder: str,
    evaluation_data_folder: str,
    synthetic_data_folder: str,
    output_folder: str,
    tokenizer_path: str | None = None,
    n_iterations: int = 1,
    num_of_samples: int = 5000,
    seed: int = DEFAULT_SEED,
    fixed_threshold: float = FIXED_THRESHOLD,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, float]:
    """Read the three folders, run membership inference, write the table, the ROC curve and ``metrics.json``."""
    inputs = load_inputs(training_data_folder, synthetic_data_folder, evaluation_data_folder, tokenizer_path)
    assert inputs.evaluation is not None
    table, metrics, curve = membership_inference_analysis(
        inputs.training,
        inputs.evaluation,
        inputs.synthetic,
        inputs.space,
        n_iterations=n_iterations,
        num_of_samples=num_of_samples,
        seed=seed,
        fixed_threshold=fixed_threshold,
        chunk_size=chunk_size,
    )
    metrics = {**metrics, **{f"mia_{k}": v for k, v in inputs.counts().items()}}
    summary = {
        "analysis": "member_inference",
        "seed": seed,
        "training_data_folder": str(training_data_folder),
        "evaluation_data_folder": str(evaluation_data_folder),
        "synthetic_data_folder": str(synthetic_data_folder),
        "synthetic_exclusion_reasons": inputs.synthetic.exclusion_reasons,
    }
    write_outputs(output_folder, {TABLE: table}, metrics, summary, {ROC_FILE: json.dumps(curve).encode()})
    return metrics


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cehrgpt.analysis.privacy.member_inference", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--training_data_folder", required=True)
    parser.add_argument("--evaluation_data_folder", required=True)
    parser.add_argument("--synthetic_data_folder", required=True)
    parser.add_argument("--output_folder", required=True, help="where the table and metrics.json go")
    parser.add_argument("--tokenizer_path", help="tokenizer folder; its concepts are the features")
    parser.add_argument(
        "--fixed_threshold", type=float, default=FIXED_THRESHOLD, help="the original's distance threshold"
    )
    add_sampling_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_main(
        lambda: run_member_inference(
            args.training_data_folder,
            args.evaluation_data_folder,
            args.synthetic_data_folder,
            args.output_folder,
            args.tokenizer_path,
            n_iterations=args.n_iterations,
            num_of_samples=args.num_of_samples,
            seed=args.seed,
            fixed_threshold=args.fixed_threshold,
            chunk_size=args.matching_batch_size,
        ),
        "Membership inference",
    )


if __name__ == "__main__":
    raise SystemExit(main())
