"""Memorisation: which synthetic patients are training patients, and does the release sit closer to training?

Run over the *whole* synthetic set (grammar-valid rows; the others are excluded
and counted), the training set and the held-out set::

    python -m cehrgpt.analysis.privacy.memorization --training_data_folder T \\
        --evaluation_data_folder E --synthetic_data_folder S --output_folder O [--seed N]

**Copies.** A synthetic patient *copies* a real one when its whole token
sequence (prompt, visits, gaps, end) equals that patient's.
``memorization_copy_share_train`` / ``_holdout`` are the shares of synthetic
patients copying some training / held-out patient.

Short, common records coincide by chance, and more often the larger the set
looked at, so the two shares are not comparable when the sets differ in size.
``memorization_copy_excess`` compares like with like: the training set is
shuffled (``--seed``) and cut into parts of the held-out set's size ``h`` (the
last part holds the remainder ``r``); each part is an independent sample of the
same population as the held-out set, so without memorisation a synthetic
patient is as likely to copy a patient of the part as one of a held-out sample
of that size. The excess is

    Σ_parts share(copies a patient of the part) − Σ_parts share(copies a patient of a held-out sample of the part's size)

where the held-out sample is the whole held-out set for a full part and a seeded
sample of ``r`` held-out patients for the remainder. Its expectation is 0 when
nothing is memorised, whatever the sets' sizes and however common the short
records; a verbatim copy of a training patient whose record is unique adds
``1 / number of synthetic patients`` (it matches exactly one part). A release
that is 10% verbatim training patients has an excess of about 0.1, the training
set itself about 1; a release copied from the held-out set is negative.

**Distance to closest record (DCR)** on the features of
:mod:`cehrgpt.analysis.features` (squared Euclidean: scaled age + one-hot
demographics + concept presence). For every synthetic patient, its DCR to the
whole training set and to the held-out set, and a *closer-to-training* score:
1 when its nearest training record is nearer than its nearest held-out one, 0
when farther, and on a tie the training share of the records at that distance.
Without memorisation the records are exchangeable, so the mean score ``p``
equals the training share of all records ``b = n_train / (n_train + n_held_out)``.
``memorization_dcr_closer_to_train_share`` re-weighs ``p`` to equal set sizes
(prior odds 1:1 instead of ``b : 1 − b``)::

    share = p (1 − b) / (p (1 − b) + (1 − p) b)

so 0.5 means no memorisation at any size ratio, 1 that every synthetic patient
sits on a training record, and runs with different sizes compare. The 5th
percentiles ``memorization_dcr_train_p5`` and ``memorization_dcr_holdout_p5`` are
over the whole sets; ``memorization_dcr_train_sample_p5`` uses a seeded training
sample of the held-out set's size, comparable with the held-out figure.

Outputs in ``--output_folder``: ``metrics.json``, ``summary.json``,
``memorized_patients.parquet`` (``person_id`` of each synthetic patient that copies
a training patient, the ``training_person_id`` it copies, the number of training
patients with that sequence), ``memorized_person_ids.csv`` (the same ids, one per
line, to drop from a release) and ``dcr.parquet`` (per synthetic patient: DCRs and
the closer-to-training score). Distances run in chunks of query rows: memory is
``chunk × set size``, never n². Fewer than 20 held-out patients is an error: the
control would be noise.
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
    nearest_distance_and_ties,
    sample_indices,
)
from cehrgpt.analysis.io import write_outputs
from cehrgpt.analysis.privacy.common import (
    DEFAULT_SEED,
    MIN_HELD_OUT_PATIENTS,
    load_inputs,
    run_main,
)

COPIES_TABLE = "memorized_patients"
COPIES_CSV = "memorized_person_ids.csv"
DCR_TABLE = "dcr"
DCR_PERCENTILE = 5


def sequence_codes(*token_columns: pd.Series) -> list[np.ndarray]:
    """One integer per row, equal for two rows (of any of the columns) exactly when their token lists are."""
    codes: dict[tuple, int] = {}
    result = []
    for column in token_columns:
        result.append(
            np.fromiter(
                (codes.setdefault(() if t is None else tuple(t), len(codes)) for t in column),
                dtype=np.int64,
                count=len(column),
            )
        )
    return result


def copy_excess(
    synthetic: np.ndarray, training: np.ndarray, held_out: np.ndarray, rng: np.random.Generator
) -> float:
    """Copies of training patients beyond those of equal-size held-out samples (see the module docstring).

    Args:
        synthetic, training, held_out: Sequence codes (:func:`sequence_codes`) of each set's patients.
        rng: Draws the training partition and the held-out sample for the remainder part.
    """
    h = len(held_out)
    part_of = np.empty(len(training), dtype=np.int64)
    part_of[rng.permutation(len(training))] = np.arange(len(training)) // h
    full_parts, remainder = divmod(len(training), h)
    pairs = np.unique(np.column_stack([training, part_of]), axis=0)
    parts_per_code = np.bincount(pairs[:, 0], minlength=int(max(synthetic.max(), training.max())) + 1)
    copied_parts = float(parts_per_code[synthetic].mean()) if len(synthetic) else 0.0
    control = full_parts * float(np.isin(synthetic, held_out).mean())
    if remainder:
        sample = held_out[sample_indices(rng, h, remainder)]
        control += float(np.isin(synthetic, sample).mean())
    return copied_parts - control


def closer_to_train_share(
    d_train: np.ndarray, ties_train: np.ndarray, d_held_out: np.ndarray, ties_held_out: np.ndarray, b: float
) -> tuple[np.ndarray, float]:
    """Per-patient closer-to-training scores and their mean re-weighed to equal set sizes (module docstring)."""
    tied = ties_train / (ties_train + ties_held_out)
    score = np.where(d_train < d_held_out, 1.0, np.where(d_train > d_held_out, 0.0, tied))
    p = float(score.mean())
    denominator = p * (1 - b) + (1 - p) * b
    return score, p * (1 - b) / denominator if denominator > 0 else 0.5


def memorization_analysis(
    training: PatientSet,
    evaluation: PatientSet,
    synthetic: PatientSet,
    space: FeatureSpace,
    training_tokens: pd.Series,
    evaluation_tokens: pd.Series,
    synthetic_tokens: pd.Series,
    seed: int = DEFAULT_SEED,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float]]:
    """Copies and DCRs of every synthetic patient; returns the copies table, the DCR table and the metrics."""
    rng = np.random.default_rng(seed)
    train_codes, held_out_codes, synthetic_codes = sequence_codes(
        training_tokens, evaluation_tokens, synthetic_tokens
    )
    copies_train = np.isin(synthetic_codes, train_codes)
    copies_held_out = np.isin(synthetic_codes, held_out_codes)
    excess = copy_excess(synthetic_codes, train_codes, held_out_codes, rng)

    first_training_patient = pd.Series(np.arange(len(train_codes))).groupby(train_codes).first()
    training_count = pd.Series(train_codes).value_counts()
    copied_codes = synthetic_codes[copies_train]
    copies = pd.DataFrame(
        {
            "person_id": synthetic.person_ids[copies_train],
            "training_person_id": training.person_ids[first_training_patient.loc[copied_codes].to_numpy()],
            "training_patients_with_sequence": training_count.loc[copied_codes].to_numpy(np.int64),
        }
    )

    s = space.encode(synthetic)
    steps = tqdm(total=3, desc="memorisation DCR", unit="set")
    d_train, ties_train = nearest_distance_and_ties(s, space.encode(training), chunk_size=chunk_size)
    steps.update()
    d_held_out, ties_held_out = nearest_distance_and_ties(s, space.encode(evaluation), chunk_size=chunk_size)
    steps.update()
    train_sample = training.take(sample_indices(rng, len(training), len(evaluation)))
    d_train_sample, _ = nearest_distance_and_ties(s, space.encode(train_sample), chunk_size=chunk_size)
    steps.update()
    steps.close()
    b = len(training) / (len(training) + len(evaluation))
    score, share = closer_to_train_share(d_train, ties_train, d_held_out, ties_held_out, b)
    dcr = pd.DataFrame(
        {
            "person_id": synthetic.person_ids,
            "dcr_train": d_train,
            "dcr_holdout": d_held_out,
            "closer_to_train": score,
            "copies_training_patient": copies_train,
            "copies_holdout_patient": copies_held_out,
        }
    )
    metrics: dict[str, float] = {
        "memorization_copy_share_train": float(copies_train.mean()),
        "memorization_copy_share_holdout": float(copies_held_out.mean()),
        "memorization_copy_excess": excess,
        "memorization_num_copies_train": int(copies_train.sum()),
        "memorization_dcr_closer_to_train_share": share,
        "memorization_dcr_closer_to_train_raw": float(score.mean()),
        "memorization_dcr_train_p5": float(np.percentile(d_train, DCR_PERCENTILE)),
        "memorization_dcr_holdout_p5": float(np.percentile(d_held_out, DCR_PERCENTILE)),
        "memorization_dcr_train_sample_p5": float(np.percentile(d_train_sample, DCR_PERCENTILE)),
    }
    return copies, dcr, metrics


def run_memorization(
    training_data_folder: str,
    evaluation_data_folder: str,
    synthetic_data_folder: str,
    output_folder: str,
    tokenizer_path: str | None = None,
    seed: int = DEFAULT_SEED,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, float]:
    """Read the three folders, run the analysis, write the tables, the id list and ``metrics.json``."""
    inputs = load_inputs(
        training_data_folder,
        synthetic_data_folder,
        evaluation_data_folder,
        tokenizer_path,
        keep_frames=True,
        min_evaluation_patients=MIN_HELD_OUT_PATIENTS,
    )
    assert inputs.evaluation is not None
    copies, dcr, metrics = memorization_analysis(
        inputs.training,
        inputs.evaluation,
        inputs.synthetic,
        inputs.space,
        inputs.tokens("training", inputs.training),
        inputs.tokens("evaluation", inputs.evaluation),
        inputs.tokens("synthetic", inputs.synthetic),
        seed=seed,
        chunk_size=chunk_size,
    )
    metrics = {**metrics, **{f"memorization_{k}": v for k, v in inputs.counts().items()}}
    summary = {
        "analysis": "memorization",
        "seed": seed,
        "training_data_folder": str(training_data_folder),
        "evaluation_data_folder": str(evaluation_data_folder),
        "synthetic_data_folder": str(synthetic_data_folder),
        "synthetic_exclusion_reasons": inputs.synthetic.exclusion_reasons,
    }
    id_list = copies[["person_id"]].to_csv(index=False).encode()
    write_outputs(
        output_folder, {COPIES_TABLE: copies, DCR_TABLE: dcr}, metrics, summary, {COPIES_CSV: id_list}
    )
    return metrics


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cehrgpt.analysis.privacy.memorization", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--training_data_folder", required=True)
    parser.add_argument("--evaluation_data_folder", required=True)
    parser.add_argument("--synthetic_data_folder", required=True)
    parser.add_argument("--output_folder", required=True, help="where the tables and metrics.json go")
    parser.add_argument("--tokenizer_path", help="tokenizer folder; its concepts are the features")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of every random choice")
    parser.add_argument(
        "--matching_batch_size",
        type=int,
        default=DEFAULT_CHUNK_SIZE,
        help="query rows per distance block (memory ~ this × set size × 8 bytes)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_main(
        lambda: run_memorization(
            args.training_data_folder,
            args.evaluation_data_folder,
            args.synthetic_data_folder,
            args.output_folder,
            args.tokenizer_path,
            seed=args.seed,
            chunk_size=args.matching_batch_size,
        ),
        "Memorisation",
    )


if __name__ == "__main__":
    raise SystemExit(main())
