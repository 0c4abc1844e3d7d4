"""Membership inference: can an attacker holding the synthetic data tell who was in the training set?

Every training patient (member) and every held-out patient (non-member) is
scored, the sets keeping their own sizes: each record's distance to the nearest
of *all* synthetic patients, measured once per record (a sample of either side
would miss most twins of a copied patient, or the copied patient itself).

``--num_of_samples`` is an upper bound on the records taken from each set, by
default none. A set larger than it is sampled (seeded, ``--seed``) afresh in
each of ``--n_iterations`` iterations; when no set is cut every iteration
would see the same records, so one pass is run (``mia_n_iterations`` says how
many ran, and a note on stderr says so when more were asked for).

Threshold-free, over every record scored (each once; score = −distance:
nearer is more likely a member): ``mia_auc`` (ROC AUC, scikit-learn; 0.5 =
chance, whatever the set sizes), ``mia_tpr_at_fpr_0.01`` and
``mia_tpr_at_fpr_0.1`` (the highest true-positive rate at a false-positive rate
no higher than 1% / 10%: how many members an attacker exposes while rarely
accusing a non-member) and ``mia_advantage`` (max TPR − FPR over all
thresholds). Equal distances are one threshold (scikit-learn groups them).

The tail, gated: with n non-members the FPR moves in steps of 1/n, so the 1%
point admits k = ⌊0.01·n⌋ non-members and below 100 non-members only FPR 0
(k = 0). A chance attack (members and non-members exchangeable) then exposes
the members ranked before the (k+1)-th non-member, a negative-hypergeometric
count over m members: its mean share, (k+1)/(n+1), is
``mia_tpr_at_fpr_0.01_chance``, its 99th percentile
``mia_tpr_at_fpr_0.01_chance_p99``. ``mia_tpr_at_fpr_0_01_lift`` =
``mia_tpr_at_fpr_0.01`` − ``mia_tpr_at_fpr_0.01_chance_p99``: members exposed at
FPR ≤ 1% beyond what chance reaches in 99 of 100 releases at these set sizes
(≤ 0 for a private release; about the share of members copied verbatim for a
leaking one). It is defined and NaN-free at every size and needs no margin for
small sets: few non-members widen the percentile instead (20 non-members and 50
members: 0.24; 300 and 1,000: 0.036; 10,000 and 10,000: 0.014). Ties only lower
an attack's TPR at a fixed FPR (a tied group is one point), so the tie-free
chance is the cautious reference. The name has ``0_01``, not ``0.01``, so that
the gate's ``max_<metric>`` is a pipeline parameter name.

Thresholded (the seed's attack), per iteration: a record is predicted a member
when its distance is below a threshold, at two thresholds:

- ``fixed``: the original's fixed distance (default 5, squared Euclidean);
- ``median``: the median of the iteration's records' distances (about half predicted members).

Chance for a threshold is the F1 of a coin that predicts the same share ``q``
of members when the members' share of the records is π: precision π, recall
q, F1 = 2πq / (π + q) (= q / (0.5 + q) on balanced sets).
``mia_f1_above_chance`` is the larger of the two thresholds' F1 minus its
chance F1. Accuracy is reported as is: on unbalanced sets its chance value is
not 0.5.

The ROC curve's points go to ``roc_curve.json`` (``fpr``, ``tpr``, ``threshold``:
predict a member when the distance is at most the threshold) for the
pipeline's ``ClassificationMetrics``.

Metrics: ``mia_{accuracy,precision,recall,f1,f1_chance,advantage}_{fixed,median}_threshold``
(advantage = true-positive rate − false-positive rate; means over iterations),
``mia_f1_above_chance``, the ROC metrics above, ``mia_num_members`` and
``mia_num_non_members`` (records the ROC metrics score), ``mia_num_of_samples``
(most records taken from one set per iteration), ``mia_n_iterations``
(iterations run). Table ``membership_inference.parquet``: one row per iteration
and threshold with ``Iteration``, ``Threshold Type``, ``Threshold``,
``Accuracy``, ``Precision``, ``Recall``, ``F1``, ``F1 Chance``, ``Advantage``,
``Members``, ``Non-members``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import nhypergeom
from sklearn.metrics import roc_auc_score, roc_curve
from tqdm import tqdm

from cehrgpt.analysis.features import (
    DEFAULT_CHUNK_SIZE,
    FeatureSpace,
    PatientSet,
    nearest_neighbours,
    sample_indices,
)
from cehrgpt.analysis.io import warn, write_outputs
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

TABLE = "membership_inference"
FIXED_THRESHOLD = 5.0
THRESHOLD_TYPES = ("fixed", "median")
ROC_FILE = "roc_curve.json"
SAMPLES_HELP = (
    "at most this many records from each set, a seeded sample per iteration of a larger set "
    "(default: no cap, every member and non-member, one pass)"
)


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


def chance_f1(positive_rate: float, prevalence: float = 0.5) -> float:
    """F1 of a coin that predicts ``positive_rate`` of the records members when ``prevalence`` of them are.

    Its precision is the prevalence π and its recall the rate q: F1 = 2πq / (π + q).
    """
    if positive_rate <= 0 or prevalence <= 0:
        return 0.0
    return 2 * prevalence * positive_rate / (prevalence + positive_rate)


LOW_FPR = 0.01
CHANCE_QUANTILE = 0.99


def chance_tpr_at_fpr(members: int, non_members: int, fpr: float = LOW_FPR) -> tuple[float, float]:
    """Mean and 99th percentile of a chance attack's TPR at FPR ≤ ``fpr``, for these set sizes.

    With k the most non-members that FPR admits, a chance ranking exposes the
    members ranked before the (k+1)-th non-member: negative hypergeometric
    (``members`` + ``non_members`` records drawn until k+1 non-members).
    """
    k = int(np.count_nonzero(np.arange(non_members + 1) / non_members <= fpr)) - 1
    cdf = np.cumsum(nhypergeom.pmf(np.arange(members + 1), members + non_members, members, k + 1))
    p99 = min(int(np.searchsorted(cdf, CHANCE_QUANTILE - 1e-12)), members)
    return (k + 1) / (non_members + 1), p99 / members


def roc_metrics(labels: np.ndarray, distances: np.ndarray) -> tuple[dict[str, float], dict[str, list[float]]]:
    """AUC, TPR at FPR ≤ 1% and ≤ 10% (the first against chance), the best advantage of "nearer = member"; the curve.

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
            "mia_tpr_at_fpr_0.01_chance": nan,
            "mia_tpr_at_fpr_0.01_chance_p99": nan,
            "mia_tpr_at_fpr_0_01_lift": nan,
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
    chance, chance_p99 = chance_tpr_at_fpr(int(labels.sum()), int((~labels).sum()))
    metrics["mia_tpr_at_fpr_0.01_chance"] = chance
    metrics["mia_tpr_at_fpr_0.01_chance_p99"] = chance_p99
    metrics["mia_tpr_at_fpr_0_01_lift"] = metrics["mia_tpr_at_fpr_0.01"] - chance_p99
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
    num_of_samples: int | None = None,
    seed: int = DEFAULT_SEED,
    fixed_threshold: float = FIXED_THRESHOLD,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[pd.DataFrame, dict[str, float], dict[str, list[float]]]:
    """Membership inference over every member and non-member (or ``num_of_samples`` of a larger set).

    Returns the table (per iteration, at the fixed and the median threshold), the metrics and the ROC
    curve's points.
    """
    check_positive(n_iterations, "n_iterations")
    sets = (training, evaluation)
    used = records_per_set(
        num_of_samples, {"training": len(training), "evaluation": len(evaluation)}, "member_inference"
    )
    sizes = (used["training"], used["evaluation"])
    sampled = any(size < len(patients) for size, patients in zip(sizes, sets, strict=True))
    iterations = n_iterations if sampled else 1
    if iterations < n_iterations:
        warn(
            f"member_inference: every record of both sets is scored; --n_iterations {n_iterations} would "
            "repeat the same records, so one pass is run"
        )
    rng = np.random.default_rng(seed)
    samples = [
        tuple(
            sample_indices(rng, len(patients), size) if size < len(patients) else np.arange(len(patients))
            for patients, size in zip(sets, sizes, strict=True)
        )
        for _ in range(iterations)
    ]
    # A record's distance to the whole synthetic set does not depend on the sample it is drawn in:
    # each distinct record is measured once, however many iterations draw it.
    s = space.encode(synthetic)
    distance_of, scored = [], []
    for side, patients in enumerate(sets):
        drawn = np.unique(np.concatenate([pair[side] for pair in samples]))
        found = nearest_neighbours(space.encode(patients.take(drawn)), s, chunk_size=chunk_size)
        lookup = np.zeros(len(patients), dtype=np.float64)
        lookup[drawn] = found.a_to_b_distance
        distance_of.append(lookup)
        scored.append(found.a_to_b_distance)
    rows = []
    for iteration, (member_rows, non_member_rows) in enumerate(
        tqdm(samples, desc="membership inference", unit="iteration"), start=1
    ):
        distances = np.concatenate([distance_of[0][member_rows], distance_of[1][non_member_rows]])
        labels = np.concatenate(
            [np.ones(len(member_rows), dtype=bool), np.zeros(len(non_member_rows), dtype=bool)]
        )
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
                    "F1 Chance": chance_f1(scores["positive_rate"], float(labels.mean())),
                    "Advantage": scores["advantage"],
                    "Members": len(member_rows),
                    "Non-members": len(non_member_rows),
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
    members, non_members = scored
    roc, curve = roc_metrics(
        np.concatenate([np.ones(len(members), dtype=bool), np.zeros(len(non_members), dtype=bool)]),
        np.concatenate([members, non_members]),
    )
    metrics.update(roc)
    metrics["mia_fixed_threshold"] = fixed_threshold
    metrics["mia_num_members"] = len(members)
    metrics["mia_num_non_members"] = len(non_members)
    metrics["mia_num_of_samples"] = max(sizes)
    metrics["mia_n_iterations"] = iterations
    return table, metrics, curve


def run_member_inference(
    training_data_folder: str,
    evaluation_data_folder: str,
    synthetic_data_folder: str,
    output_folder: str,
    tokenizer_path: str | None = None,
    n_iterations: int = 1,
    num_of_samples: int | None = None,
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
    parser = CommandParser(
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
    add_sampling_flags(parser, default_samples=None, samples_help=SAMPLES_HELP)
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
