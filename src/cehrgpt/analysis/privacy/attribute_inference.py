"""Attribute inference: does a synthetic look-alike reveal a real patient's sensitive concepts?

An attacker knows a training patient's demographics and *common* concepts
(``common_attributes`` of the yml config). Each iteration samples the same
number of training and synthetic patients; for every sampled training patient
the attacker takes the nearest synthetic patient on ``[age, gender, race,
common concepts]`` and guesses that the patient has that look-alike's
*sensitive* concepts (``sensitive_attributes``). The baseline guesses from the
nearest *other* training patient instead: what the attacker would learn from
real data anyway.

With ``--evaluation_data_folder`` the attack is also run with held-out real
patients in place of the synthetic ones (the *held-out control*): what an
attacker learns from any real sample of the population the training patients
came from. ``aia_f1_lift_over_holdout`` = F1 from the synthetic look-alikes − F1
from the held-out ones is what the synthetic release reveals beyond that; ≈ 0
(or below) for a private release, and the release gate bounds it. Then all
three sets are sampled to the same size each iteration (a larger pool of
look-alikes finds nearer ones), and at least 20 held-out patients are needed.

Precision, recall and F1 are micro-averaged over the sampled patients:
precision = correctly guessed sensitive concepts / all guessed, recall =
correctly guessed / all the patients actually have (0 when the denominator is 0).
Ties between equally near look-alikes go to the first one in sample order.

Metrics: ``aia_{precision,recall,f1}_synthetic_train``, ``aia_{precision,recall,f1}_train_train``,
``aia_f1_advantage`` (synthetic − baseline F1), with a held-out set also
``aia_{precision,recall,f1}_holdout_train`` and ``aia_f1_lift_over_holdout``, ``aia_num_of_samples``, ``aia_n_iterations``,
``aia_num_common_attributes``, ``aia_num_sensitive_attributes``. Table
``attribute_inference.parquet``: the original's columns, one row per iteration (with a held-out
set also ``Precision Holdout Train``, ``Recall Holdout Train``, ``F1 Holdout Train``).
"""

from __future__ import annotations

import argparse
import shlex

import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm import tqdm

from cehrgpt.analysis.features import (
    DEFAULT_CHUNK_SIZE,
    FeatureSpace,
    PatientSet,
    nearest_neighbours,
    nearest_other,
    sample_indices,
)
from cehrgpt.analysis.io import AnalysisError, read_attribute_config, write_outputs
from cehrgpt.analysis.privacy.common import (
    DEFAULT_SEED,
    MIN_HELD_OUT_PATIENTS,
    add_sampling_flags,
    check_positive,
    load_inputs,
    mean_of,
    run_main,
    samples_used,
)
from cehrgpt.exits import CommandParser

TABLE = "attribute_inference"
COLUMNS = [
    "Iteration",
    "Precision Synthetic Train",
    "Recall Synthetic Train",
    "F1 Synthetic Train",
    "Precision Train Train",
    "Recall Train Train",
    "F1 Train Train",
]
HOLDOUT_COLUMNS = ["Precision Holdout Train", "Recall Holdout Train", "F1 Holdout Train"]


def inference_scores(actual: sp.csr_matrix, guessed: sp.csr_matrix) -> tuple[float, float, float]:
    """Micro-averaged (precision, recall, F1) of binary ``guessed`` rows against ``actual`` rows."""
    correct = float(actual.multiply(guessed).sum())
    n_guessed, n_actual = float(guessed.sum()), float(actual.sum())
    precision = correct / n_guessed if n_guessed else 0.0
    recall = correct / n_actual if n_actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def check_config_concepts(
    space: FeatureSpace, config: dict[str, list[int]], source: str, training_data_folder: str
) -> None:
    """Raise when the config names concepts that are not features (not in the data or the vocabulary).

    The error names the command that derives a config from ``training_data_folder``: a config written
    for another database (such as the shipped sample) rarely fits the user's own data.
    """
    for key, concepts in config.items():
        unknown = space.unknown_concepts(concepts)
        if unknown:
            shown = ", ".join(map(str, unknown[:10])) + (" ..." if len(unknown) > 10 else "")
            derive = (
                "python -m cehrgpt.analysis.privacy.config "
                f"--training_data_folder {shlex.quote(str(training_data_folder))} --output attribute_config.yml"
            )
            raise AnalysisError(
                f"{source}: {key} names {len(unknown)} concept(s) unknown to the data and vocabulary "
                f"({shown}); expected concept ids that occur in the patient sequences; "
                f"derive a config from this training data with `{derive}`"
            )
    overlap = sorted(set(config["common_attributes"]) & set(config["sensitive_attributes"]))
    if overlap:
        raise AnalysisError(
            f"{source}: concept(s) {overlap[:10]} are both common and sensitive; expected disjoint lists"
        )


def attribute_inference_analysis(
    training: PatientSet,
    synthetic: PatientSet,
    space: FeatureSpace,
    common_attributes: list[int],
    sensitive_attributes: list[int],
    n_iterations: int = 1,
    num_of_samples: int = 5000,
    seed: int = DEFAULT_SEED,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    evaluation: PatientSet | None = None,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Attribute inference per iteration from synthetic look-alikes and from real ones; table and metrics.

    ``evaluation`` adds the held-out control (module docstring).
    """
    check_positive(n_iterations, "n_iterations")
    available = {"training": len(training), "synthetic": len(synthetic)}
    if evaluation is not None:
        available["evaluation"] = len(evaluation)
    n = samples_used(num_of_samples, available, "attribute_inference")
    if n < 2:
        raise AnalysisError(
            f"attribute inference needs at least 2 patients per set; the smallest set has {n}"
        )
    common = np.asarray(common_attributes, dtype=np.int64)
    sensitive = np.asarray(sensitive_attributes, dtype=np.int64)
    rng = np.random.default_rng(seed)
    rows = []
    for iteration in tqdm(range(1, n_iterations + 1), desc="attribute inference", unit="iteration"):
        train = training.take(sample_indices(rng, len(training), n))
        synth = synthetic.take(sample_indices(rng, len(synthetic), n))
        train_known = space.encode(train, concepts=common)
        train_sensitive = space.encode(train, concepts=sensitive, demographics=False).binary
        synth_sensitive = space.encode(synth, concepts=sensitive, demographics=False).binary
        look_alike = nearest_neighbours(
            train_known, space.encode(synth, concepts=common), chunk_size=chunk_size
        ).a_to_b_index
        real_look_alike = nearest_other(train_known, chunk_size=chunk_size).a_to_b_index
        synthetic_scores = inference_scores(train_sensitive, synth_sensitive[look_alike])
        baseline_scores = inference_scores(train_sensitive, train_sensitive[real_look_alike])
        row = dict(zip(COLUMNS, (iteration, *synthetic_scores, *baseline_scores), strict=True))
        if evaluation is not None:
            held_out = evaluation.take(sample_indices(rng, len(evaluation), n))
            held_out_look_alike = nearest_neighbours(
                train_known, space.encode(held_out, concepts=common), chunk_size=chunk_size
            ).a_to_b_index
            held_out_sensitive = space.encode(held_out, concepts=sensitive, demographics=False).binary
            control = inference_scores(train_sensitive, held_out_sensitive[held_out_look_alike])
            row.update(zip(HOLDOUT_COLUMNS, control, strict=True))
        rows.append(row)
    table = pd.DataFrame(rows, columns=COLUMNS + (HOLDOUT_COLUMNS if evaluation is not None else []))
    metrics = {
        "aia_precision_synthetic_train": mean_of(table["Precision Synthetic Train"].tolist()),
        "aia_recall_synthetic_train": mean_of(table["Recall Synthetic Train"].tolist()),
        "aia_f1_synthetic_train": mean_of(table["F1 Synthetic Train"].tolist()),
        "aia_precision_train_train": mean_of(table["Precision Train Train"].tolist()),
        "aia_recall_train_train": mean_of(table["Recall Train Train"].tolist()),
        "aia_f1_train_train": mean_of(table["F1 Train Train"].tolist()),
    }
    metrics["aia_f1_advantage"] = metrics["aia_f1_synthetic_train"] - metrics["aia_f1_train_train"]
    if evaluation is not None:
        for column, name in zip(HOLDOUT_COLUMNS, ("precision", "recall", "f1"), strict=True):
            metrics[f"aia_{name}_holdout_train"] = mean_of(table[column].tolist())
        metrics["aia_f1_lift_over_holdout"] = (
            metrics["aia_f1_synthetic_train"] - metrics["aia_f1_holdout_train"]
        )
    metrics.update(
        {
            "aia_num_of_samples": n,
            "aia_n_iterations": n_iterations,
            "aia_num_common_attributes": len(set(common_attributes)),
            "aia_num_sensitive_attributes": len(set(sensitive_attributes)),
        }
    )
    return table, metrics


def run_attribute_inference(
    training_data_folder: str,
    synthetic_data_folder: str,
    output_folder: str,
    attribute_config: str,
    tokenizer_path: str | None = None,
    evaluation_data_folder: str | None = None,
    n_iterations: int = 1,
    num_of_samples: int = 5000,
    seed: int = DEFAULT_SEED,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, float]:
    """Read the folders and the config, run attribute inference, write the table and ``metrics.json``.

    ``evaluation_data_folder`` (optional, as in the original) adds the held-out control.
    """
    config = read_attribute_config(attribute_config)
    inputs = load_inputs(
        training_data_folder,
        synthetic_data_folder,
        evaluation_data_folder,
        tokenizer_path,
        min_evaluation_patients=MIN_HELD_OUT_PATIENTS,
    )
    check_config_concepts(
        inputs.space, config, f"--attribute_config {attribute_config!r}", training_data_folder
    )
    table, metrics = attribute_inference_analysis(
        inputs.training,
        inputs.synthetic,
        inputs.space,
        config["common_attributes"],
        config["sensitive_attributes"],
        n_iterations=n_iterations,
        num_of_samples=num_of_samples,
        seed=seed,
        chunk_size=chunk_size,
        evaluation=inputs.evaluation,
    )
    metrics = {**metrics, **{f"aia_{k}": v for k, v in inputs.counts().items()}}
    summary = {
        "analysis": "attribute_inference",
        "seed": seed,
        "training_data_folder": str(training_data_folder),
        "synthetic_data_folder": str(synthetic_data_folder),
        "attribute_config": str(attribute_config),
        "synthetic_exclusion_reasons": inputs.synthetic.exclusion_reasons,
    }
    write_outputs(output_folder, {TABLE: table}, metrics, summary)
    return metrics


def _parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="python -m cehrgpt.analysis.privacy.attribute_inference", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--training_data_folder", required=True)
    parser.add_argument("--synthetic_data_folder", required=True)
    parser.add_argument("--output_folder", required=True, help="where the table and metrics.json go")
    parser.add_argument(
        "--attribute_config", required=True, help="yml with common_attributes and sensitive_attributes"
    )
    parser.add_argument("--tokenizer_path", help="tokenizer folder; its concepts are the features")
    parser.add_argument(
        "--evaluation_data_folder",
        help="held-out sequences: the control attack (needed by the release gate's aia_f1_lift_over_holdout)",
    )
    add_sampling_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_main(
        lambda: run_attribute_inference(
            args.training_data_folder,
            args.synthetic_data_folder,
            args.output_folder,
            args.attribute_config,
            args.tokenizer_path,
            args.evaluation_data_folder,
            n_iterations=args.n_iterations,
            num_of_samples=args.num_of_samples,
            seed=args.seed,
            chunk_size=args.matching_batch_size,
        ),
        "Attribute inference",
    )


if __name__ == "__main__":
    raise SystemExit(main())
