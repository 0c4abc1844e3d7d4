"""Memorisation: which synthetic patients are (near) copies of training patients, and does the release sit closer?

Run over the *whole* synthetic set (grammar-valid rows; the others are excluded
and counted), the training set and the held-out set::

    python -m cehrgpt.analysis.privacy.memorization --training_data_folder T \\
        --evaluation_data_folder E --synthetic_data_folder S --output_folder O [--seed N]

**Copies.** A synthetic patient *copies* a real one when their clinical contents
are equal (:func:`cehrgpt.grammar.clinical_content`: the whole sequence, prompt,
visits, gaps and death, with ``[END]``, ``[PAD]`` and the like set aside — the
generator closes a patient with ``[END]``, the ETL never writes one).
``memorization_copy_share_train`` / ``_holdout`` are the shares of synthetic
patients copying some training / held-out patient. ``memorization_shifted_copy_*``
are the same with the prompt's year set aside (:func:`cehrgpt.grammar.without_calendar`),
so a copy moved in calendar time is still a copy.

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

**Near copies.** A memorising model also emits a training patient with a concept
dropped or replaced, a gap moved by a few days, the last visit left out, the
calendar shifted, or only its first visits. Each patient's timeline is the
multiset of overlapping token triples of its clinical content after the prompt
(:func:`cehrgpt.analysis.features.timeline_shingles`): it sees the order of the
visits, their types, the gaps, the concepts of each visit and their repeats, and
one edit changes at most three triples. A synthetic patient is a *near copy* of a
real one when gender and race are equal, the ages differ by at most a year, both
have at least 5 distinct clinical concepts (shorter records identify nobody),
and the shorter timeline misses at most ``max(3, 10%)`` of its triples in the
other (a prefix or a patient with a visit appended misses none). On Eunomia, 500
unseen patients against 1,000 training patients held no near copy; every edit
above, and a 60% prefix, was found.

``memorization_near_copy_excess`` is the copy excess's count over the same parts
and controls with near copies in place of copies; per synthetic patient, the
number of training parts holding a near copy minus its held-out control, whose
mean is the excess and whose standard error (``_se``) gives ``_z`` and the
one-sided 95% lower bound ``memorization_near_copy_excess_lower`` the gate reads:
a small release's chance coincidences do not breach it, a 10% near-copy leak of
50 patients does (≈ 0.03; of 500 ≈ 0.08).

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
or nears a training patient, the ``training_person_id`` it copies or nears, the
``kind`` — ``copy``, ``copy_shifted_calendar`` or ``near_copy``, the strongest —,
its ``timeline_overlap`` and, for copies, the number of training patients with that
content), ``memorized_person_ids.csv`` (``person_id,training_person_id,kind``: the
patients to drop from a release) and ``dcr.parquet`` (per synthetic patient: DCRs and
the closer-to-training score). Distances run in chunks of query rows: memory is
``chunk × set size``, never n². Fewer than 20 held-out patients is an error: the
control would be noise.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm import tqdm

from cehrgpt import grammar
from cehrgpt.analysis.features import (
    DEFAULT_CHUNK_SIZE,
    FeatureSpace,
    PatientSet,
    TimelineMatches,
    nearest_distance_and_ties,
    sample_indices,
    timeline_matches,
)
from cehrgpt.analysis.io import write_outputs
from cehrgpt.analysis.privacy.common import (
    DEFAULT_SEED,
    MIN_HELD_OUT_PATIENTS,
    load_inputs,
    run_main,
)
from cehrgpt.exits import CommandParser

COPIES_TABLE = "memorized_patients"
COPIES_CSV = "memorized_person_ids.csv"
DCR_TABLE = "dcr"
DCR_PERCENTILE = 5
NEAR_COPY_MIN_OVERLAP = 0.9  # share of the shorter timeline's shingles the other patient has too
NEAR_COPY_EDIT_SHINGLES = 3  # shingles one edit changes: a short record may miss this many and still be near
NEAR_COPY_MAX_AGE_DIFFERENCE = 1  # years between the prompts' ages
MIN_IDENTIFYING_CONCEPTS = 5  # distinct clinical concepts below which a record identifies nobody
LOWER_BOUND_Z = 1.645  # one-sided 95% normal quantile for the near-copy excess's lower bound

#: What a synthetic patient in the copies table is of its training patient, strongest first.
COPY, SHIFTED_COPY, NEAR_COPY = "copy", "copy_shifted_calendar", "near_copy"


def sequence_codes(*token_columns: pd.Series, calendar: bool = True) -> list[np.ndarray]:
    """One integer per row, equal for two rows (of any of the columns) exactly when they are the same patient.

    Rows are compared on their clinical content (:func:`cehrgpt.grammar.clinical_content`), so a
    generated copy ending in ``[END]`` equals the training row it copies; ``calendar=False`` also
    sets the prompt's year aside (:func:`cehrgpt.grammar.without_calendar`).
    """
    codes: dict[tuple, int] = {}
    result = []
    for column in token_columns:
        contents = (grammar.clinical_content(t) for t in column)
        if not calendar:
            contents = (grammar.without_calendar(c) for c in contents)
        result.append(
            np.fromiter(
                (codes.setdefault(c, len(codes)) for c in contents),
                dtype=np.int64,
                count=len(column),
            )
        )
    return result


@dataclass(frozen=True)
class Partition:
    """The training set cut into parts of the held-out set's size, and the control for the last part.

    ``part_of[i]`` is training patient i's part; the first ``full_parts`` parts hold ``h`` patients
    (the held-out set's size), a last one the remainder, whose control is the held-out sample
    ``remainder_sample`` (indices into the held-out set; empty without a remainder).
    """

    part_of: np.ndarray
    full_parts: int
    remainder_sample: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, num_training: int, num_held_out: int) -> Partition:
        part_of = np.empty(num_training, dtype=np.int64)
        part_of[rng.permutation(num_training)] = np.arange(num_training) // num_held_out
        full_parts, remainder = divmod(num_training, num_held_out)
        sample = sample_indices(rng, num_held_out, remainder) if remainder else np.zeros(0, np.int64)
        return cls(part_of=part_of, full_parts=full_parts, remainder_sample=sample)

    @property
    def num_parts(self) -> int:
        return self.full_parts + (1 if len(self.remainder_sample) else 0)


def copy_excess(
    synthetic: np.ndarray, training: np.ndarray, held_out: np.ndarray, partition: Partition
) -> float:
    """Copies of training patients beyond those of equal-size held-out samples (see the module docstring).

    Args:
        synthetic, training, held_out: Sequence codes (:func:`sequence_codes`) of each set's patients.
        partition: The training parts and the held-out sample for the remainder part.
    """
    pairs = np.unique(np.column_stack([training, partition.part_of]), axis=0)
    parts_per_code = np.bincount(pairs[:, 0], minlength=int(max(synthetic.max(), training.max())) + 1)
    copied_parts = float(parts_per_code[synthetic].mean()) if len(synthetic) else 0.0
    control = partition.full_parts * float(np.isin(synthetic, held_out).mean())
    if len(partition.remainder_sample):
        control += float(np.isin(synthetic, held_out[partition.remainder_sample]).mean())
    return copied_parts - control


@dataclass(frozen=True)
class NearCopies:
    """Each synthetic patient's nearest training timeline and the near-copy excess with its uncertainty."""

    training_index: np.ndarray  # int64 per synthetic patient: its best-overlapping training patient, -1 none
    overlap: np.ndarray  # float64: that patient's timeline overlap
    of_training: np.ndarray  # bool: a near copy of some training patient
    of_held_out: np.ndarray  # bool: a near copy of some held-out patient
    excess_per_patient: np.ndarray  # float64: parts it nears − its held-out control (mean = the excess)

    def metrics(self) -> dict[str, float]:
        d = self.excess_per_patient
        excess = float(d.mean())
        se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
        return {
            "memorization_near_copy_share_train": float(self.of_training.mean()),
            "memorization_near_copy_share_holdout": float(self.of_held_out.mean()),
            "memorization_near_copy_excess": excess,
            "memorization_near_copy_excess_se": se,
            "memorization_near_copy_excess_z": excess / se if se > 0 else 0.0,
            "memorization_near_copy_excess_lower": excess - LOWER_BOUND_Z * se,
            "memorization_num_near_copies_train": int(self.of_training.sum()),
        }


def find_near_copies(
    synthetic: PatientSet,
    training: PatientSet,
    held_out: PatientSet,
    partition: Partition,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> NearCopies:
    """Near copies of every synthetic patient among the training parts and their held-out controls.

    The excess per synthetic patient is the number of training parts holding a near copy of it
    minus the same count over the held-out controls (``full_parts`` × the held-out set, plus the
    remainder sample), as for verbatim copies; its mean is the excess, its spread the uncertainty.
    """

    def matches(real: PatientSet, groups: np.ndarray) -> TimelineMatches:
        return timeline_matches(
            synthetic,
            real,
            min_overlap=NEAR_COPY_MIN_OVERLAP,
            edit_shingles=NEAR_COPY_EDIT_SHINGLES,
            max_age_difference=NEAR_COPY_MAX_AGE_DIFFERENCE,
            min_concepts=MIN_IDENTIFYING_CONCEPTS,
            groups=groups,
            chunk_size=chunk_size,
        )

    train = matches(training, partition.part_of)
    in_sample = np.zeros(len(held_out), dtype=np.int64)
    in_sample[partition.remainder_sample] = 1
    held = matches(held_out, in_sample)
    of_held_out = np.asarray(held.group_hits.any(axis=1), dtype=bool)
    control = partition.full_parts * of_held_out.astype(np.float64)
    if len(partition.remainder_sample):
        control += held.group_hits[:, 1]
    return NearCopies(
        training_index=train.best_index,
        overlap=train.best_overlap,
        of_training=np.asarray(train.group_hits.any(axis=1)),
        of_held_out=np.asarray(of_held_out),
        excess_per_patient=train.group_hits.sum(axis=1) - control,
    )


def closer_to_train_share(
    d_train: np.ndarray, ties_train: np.ndarray, d_held_out: np.ndarray, ties_held_out: np.ndarray, b: float
) -> tuple[np.ndarray, float]:
    """Per-patient closer-to-training scores and their mean re-weighed to equal set sizes (module docstring)."""
    tied = ties_train / (ties_train + ties_held_out)
    score = np.where(d_train < d_held_out, 1.0, np.where(d_train > d_held_out, 0.0, tied))
    p = float(score.mean())
    denominator = p * (1 - b) + (1 - p) * b
    return score, p * (1 - b) / denominator if denominator > 0 else 0.5


@dataclass(frozen=True)
class _Copies:
    """Verbatim copies on one comparison (with or without the calendar)."""

    of_training: np.ndarray  # bool per synthetic patient
    of_held_out: np.ndarray
    excess: float
    training_index: np.ndarray  # int64 per synthetic patient: the first training patient with its content, -1
    training_matched: np.ndarray  # int64: training patients with its content


def _copies(
    synthetic: pd.Series, training: pd.Series, held_out: pd.Series, partition: Partition, calendar: bool
) -> _Copies:
    train_codes, held_out_codes, synthetic_codes = sequence_codes(
        training, held_out, synthetic, calendar=calendar
    )
    of_training = np.isin(synthetic_codes, train_codes)
    first = pd.Series(np.arange(len(train_codes))).groupby(train_codes).first()
    count = pd.Series(train_codes).value_counts()
    return _Copies(
        of_training=of_training,
        of_held_out=np.isin(synthetic_codes, held_out_codes),
        excess=copy_excess(synthetic_codes, train_codes, held_out_codes, partition),
        training_index=first.reindex(synthetic_codes).fillna(-1).to_numpy(np.int64),
        training_matched=count.reindex(synthetic_codes).fillna(0).to_numpy(np.int64),
    )


def copies_table(
    synthetic: PatientSet, training: PatientSet, exact: _Copies, shifted: _Copies, near: NearCopies
) -> pd.DataFrame:
    """One row per synthetic patient that copies or nears a training patient, with its strongest kind."""
    kind = np.where(
        exact.of_training,
        COPY,
        np.where(shifted.of_training, SHIFTED_COPY, np.where(near.of_training, NEAR_COPY, "")),
    )
    training_index = np.where(
        exact.of_training,
        exact.training_index,
        np.where(shifted.of_training, shifted.training_index, near.training_index),
    )
    matched = np.where(exact.of_training, exact.training_matched, shifted.training_matched)
    rows = np.flatnonzero(kind != "")
    return pd.DataFrame(
        {
            "person_id": synthetic.person_ids[rows],
            "training_person_id": training.person_ids[training_index[rows]],
            "kind": kind[rows],
            "timeline_overlap": near.overlap[rows],
            "training_patients_with_sequence": matched[rows],
        }
    )


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
    """Copies, near copies and DCRs of every synthetic patient; returns the copies table, the DCR table, the metrics."""
    rng = np.random.default_rng(seed)
    partition = Partition.draw(rng, len(training), len(evaluation))
    steps = tqdm(total=5, desc="memorisation", unit="pass")
    exact = _copies(synthetic_tokens, training_tokens, evaluation_tokens, partition, calendar=True)
    shifted = _copies(synthetic_tokens, training_tokens, evaluation_tokens, partition, calendar=False)
    steps.update()
    near = find_near_copies(synthetic, training, evaluation, partition, chunk_size=chunk_size)
    steps.update()
    copies = copies_table(synthetic, training, exact, shifted, near)

    s = space.encode(synthetic)
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
            "copies_training_patient": exact.of_training,
            "copies_holdout_patient": exact.of_held_out,
            "near_copy_of_training_patient": near.of_training,
            "timeline_overlap_train": near.overlap,
        }
    )
    metrics: dict[str, float] = {
        "memorization_copy_share_train": float(exact.of_training.mean()),
        "memorization_copy_share_holdout": float(exact.of_held_out.mean()),
        "memorization_copy_excess": exact.excess,
        "memorization_num_copies_train": int(exact.of_training.sum()),
        "memorization_shifted_copy_share_train": float(shifted.of_training.mean()),
        "memorization_shifted_copy_share_holdout": float(shifted.of_held_out.mean()),
        "memorization_shifted_copy_excess": shifted.excess,
        "memorization_num_shifted_copies_train": int(shifted.of_training.sum()),
        **near.metrics(),
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
    id_list = copies[["person_id", "training_person_id", "kind"]].to_csv(index=False).encode()
    write_outputs(
        output_folder, {COPIES_TABLE: copies, DCR_TABLE: dcr}, metrics, summary, {COPIES_CSV: id_list}
    )
    return metrics


def _parser() -> argparse.ArgumentParser:
    parser = CommandParser(
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
