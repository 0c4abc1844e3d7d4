"""What the privacy analyses share: reading their inputs, sample sizes, flags and the CLI wrapper."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cehrgpt.analysis.features import DEFAULT_CHUNK_SIZE, FeatureSpace, PatientSet, parse_patients
from cehrgpt.analysis.io import (
    AnalysisError,
    format_table,
    read_concept_vocabulary,
    read_sequence_folder,
    warn,
)
from cehrgpt.exits import run_command

DEFAULT_SEED = 0
MIN_HELD_OUT_PATIENTS = 20  # below this a held-out control is noise, not a measurement


@dataclass(frozen=True)
class AnalysisInputs:
    """The parsed sets an analysis compares and the one feature space fitted over all of them."""

    training: PatientSet
    synthetic: PatientSet
    evaluation: PatientSet | None
    space: FeatureSpace
    frames: dict[str, pd.DataFrame] | None = None  # the rows read, by set name, when asked for

    def tokens(self, name: str, patients: PatientSet) -> pd.Series:
        """The token lists of ``patients`` (parsed from set ``name``), in the patients' order."""
        assert self.frames is not None and patients.source_rows is not None
        return self.frames[name]["concept_ids"].iloc[patients.source_rows].reset_index(drop=True)

    def counts(self) -> dict[str, int]:
        """Patients used and rows excluded per set, for metrics.json."""
        counts = {
            "num_training_patients": len(self.training),
            "num_synthetic_patients": len(self.synthetic),
            "num_synthetic_excluded": self.synthetic.excluded,
            "num_training_excluded": self.training.excluded,
        }
        if self.evaluation is not None:
            counts["num_evaluation_patients"] = len(self.evaluation)
            counts["num_evaluation_excluded"] = self.evaluation.excluded
        return counts


def _parse_real(frame: pd.DataFrame, folder: str, role: str) -> PatientSet:
    patients = parse_patients(frame, check_grammar=False)
    if len(patients) == 0:
        raise AnalysisError(f"--{role} {folder!r} holds no patient with a readable demographic prompt")
    if patients.excluded:
        warn(f"--{role}: {patients.excluded} row(s) without a readable prompt were left out")
    return patients


def load_inputs(
    training_data_folder: str,
    synthetic_data_folder: str,
    evaluation_data_folder: str | None = None,
    tokenizer_path: str | None = None,
    tokenizer_role: str = "tokenizer_path",
    keep_frames: bool = False,
    min_evaluation_patients: int = 1,
) -> AnalysisInputs:
    """Read and parse the sets; synthetic rows that are not whole patients under the grammar are excluded.

    ``keep_frames`` keeps the rows read (``training``, ``evaluation``, ``synthetic``) for analyses
    that look at whole token sequences.

    Raises:
        AnalysisError: a folder is missing or empty, no synthetic row is a whole patient, or the
            held-out set has fewer than ``min_evaluation_patients`` patients.
    """
    vocabulary = read_concept_vocabulary(tokenizer_path, tokenizer_role)
    frames = {"training": read_sequence_folder(training_data_folder, "training_data_folder")}
    if evaluation_data_folder:
        frames["evaluation"] = read_sequence_folder(evaluation_data_folder, "evaluation_data_folder")
    frames["synthetic"] = read_sequence_folder(synthetic_data_folder, "synthetic_data_folder")
    training = _parse_real(frames["training"], training_data_folder, "training_data_folder")
    evaluation = (
        _parse_real(frames["evaluation"], evaluation_data_folder, "evaluation_data_folder")
        if evaluation_data_folder
        else None
    )
    if evaluation is not None and len(evaluation) < min_evaluation_patients:
        raise AnalysisError(
            f"--evaluation_data_folder {evaluation_data_folder!r} holds {len(evaluation)} held-out patient(s); "
            f"expected at least {min_evaluation_patients} for a held-out control"
        )
    synthetic = parse_patients(frames["synthetic"], check_grammar=True)
    if len(synthetic) == 0:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(synthetic.exclusion_reasons.items()))
        raise AnalysisError(
            f"--synthetic_data_folder {synthetic_data_folder!r} holds no parseable patient "
            f"({synthetic.excluded} row(s) excluded; {reasons}); expected grammar-valid sequences"
        )
    if synthetic.excluded:
        warn(
            f"--synthetic_data_folder: {synthetic.excluded} row(s) that are not whole patients were excluded"
        )
    sets = [s for s in (training, evaluation, synthetic) if s is not None]
    return AnalysisInputs(
        training=training,
        synthetic=synthetic,
        evaluation=evaluation,
        space=FeatureSpace.fit(sets, vocabulary),
        frames=frames if keep_frames else None,
    )


def samples_used(requested: int, available: Mapping[str, int], analysis: str) -> int:
    """The sample size every set can supply: ``requested``, or the smallest set when one is smaller.

    Says so on stderr when the request is cut down.
    """
    if requested < 1:
        raise AnalysisError(f"--num_of_samples is {requested}; expected a positive number of patients")
    smallest = min(available.values())
    if requested > smallest:
        sizes = ", ".join(f"{name} {size}" for name, size in available.items())
        warn(
            f"{analysis}: --num_of_samples {requested} exceeds the patients available ({sizes}); using {smallest}"
        )
        return smallest
    return requested


def records_per_set(cap: int | None, available: Mapping[str, int], analysis: str) -> dict[str, int]:
    """Records each set supplies per iteration: all of it, or ``cap`` (a seeded sample) when it holds more.

    ``cap`` None is no cap. Unlike :func:`samples_used` the sets keep their own sizes (no set is cut to
    the smallest); a set that is cut is named on stderr, since some of its records then go unscored in
    an iteration.
    """
    if cap is not None and cap < 1:
        raise AnalysisError(f"--num_of_samples is {cap}; expected a positive number of patients")
    used = {name: size if cap is None else min(cap, size) for name, size in available.items()}
    cut = [f"{name} {available[name]}" for name in available if used[name] < available[name]]
    if cut:
        warn(
            f"{analysis}: --num_of_samples {cap} is below the patients of {', '.join(cut)}; "
            f"a seeded sample of {cap} is drawn from each such set per iteration"
        )
    return used


def check_positive(value: int, flag: str) -> int:
    if value < 1:
        raise AnalysisError(f"--{flag} is {value}; expected a positive integer")
    return value


def add_sampling_flags(
    parser: argparse.ArgumentParser,
    default_samples: int | None = 5000,
    samples_help: str = "patients sampled from each set per iteration (all of a smaller set, with a warning)",
) -> None:
    """``--n_iterations``, ``--num_of_samples`` (``default_samples``; None: no cap), ``--seed`` and the block size."""
    parser.add_argument("--n_iterations", type=int, default=1, help="repetitions of the sampling")
    parser.add_argument("--num_of_samples", type=int, default=default_samples, help=samples_help)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of every random choice")
    parser.add_argument(
        "--matching_batch_size",
        type=int,
        default=DEFAULT_CHUNK_SIZE,
        help="query rows per distance block (memory ~ this × sample size × 8 bytes)",
    )


def run_main(run: Callable[[], Mapping[str, float]], title: str) -> int:
    """Run an analysis; print its metrics table, or one ``error:`` line and return 2 on bad input."""

    def body() -> int:
        print(format_table(run(), title))
        return 0

    return run_command(body, AnalysisError)


def mean_of(values: list[float]) -> float:
    finite = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")
