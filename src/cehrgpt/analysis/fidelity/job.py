"""Fidelity report: how closely synthetic patients reproduce the real ones' statistics.

The job and its command line: read both sequence folders (and the vocabulary's domains), profile
them, compute the metrics, and write ``metrics.json``, the tables and ``report.html``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from cehrgpt.analysis.features import sample_indices
from cehrgpt.analysis.fidelity.metrics import DEFAULT_MIN_PAIR_SUPPORT, fidelity_metrics
from cehrgpt.analysis.fidelity.profile import SequenceProfile, profile_sequences
from cehrgpt.analysis.fidelity.report import plot_images, render_report
from cehrgpt.analysis.fidelity.values import ValueProfile, value_metrics, value_profile
from cehrgpt.analysis.io import AnalysisError, format_table, read_sequence_folder, warn, write_outputs
from cehrgpt.exits import CommandParser, run_command


def read_domains(vocab_folder: str | None) -> dict[int, str]:
    """concept_id → domain_id from ``<vocab_folder>/concept`` (parquet or CSV, any column case)."""
    if vocab_folder is None:
        return {}
    folder = Path(vocab_folder)
    if not folder.exists():
        raise AnalysisError(f"--vocab_folder {str(folder)!r} does not exist; expected OUT/omop_vocab")
    concept = next(p for p in (folder / "concept", folder / "CONCEPT", folder) if p.exists())
    files = (
        [concept]
        if concept.is_file()
        else sorted(concept.rglob("*.parquet")) or sorted(concept.rglob("*.csv"))
    )
    if not files:
        raise AnalysisError(f"--vocab_folder {str(folder)!r} holds no concept table (parquet or CSV)")
    fmt = "csv" if str(files[0]).endswith(".csv") else "parquet"
    table = ds.dataset([str(f) for f in files], format=fmt).to_table().to_pandas()
    table.columns = [c.lower() for c in table.columns]
    if not {"concept_id", "domain_id"} <= set(table.columns):
        raise AnalysisError(
            f"--vocab_folder {str(folder)!r}: the concept table lacks concept_id or domain_id"
        )
    return dict(zip(table["concept_id"].astype(np.int64), table["domain_id"].astype(str), strict=True))


def _read_tokens(
    folder: str, role: str, max_patients: int | None, rng: np.random.Generator
) -> tuple[pa.ListArray, dict[str, int]]:
    """The (sampled) sequences of a folder, and the rows left out because ``is_valid`` is false."""
    frame = read_sequence_folder(folder, role)
    excluded: dict[str, int] = {}
    if "is_valid" in frame.columns:
        valid = ~frame["is_valid"].eq(False)  # null counts as valid
        if not valid.all():
            excluded["is_valid is false"] = int((~valid).sum())
        frame = frame[valid]
    if max_patients is not None and len(frame) > max_patients:
        frame = frame.iloc[np.sort(sample_indices(rng, len(frame), max_patients))]
    return pa.array(frame["concept_ids"].to_numpy(), pa.list_(pa.string())), excluded


def _profile_folder(
    folder: str,
    role: str,
    max_patients: int | None,
    rng: np.random.Generator,
    check_grammar: bool,
    vectorised: bool,
) -> tuple[SequenceProfile, ValueProfile]:
    tokens, excluded = _read_tokens(folder, role, max_patients, rng)
    return profile_sequences(tokens, check_grammar, vectorised, excluded), value_profile(tokens)


def _reasons(profile: SequenceProfile) -> str:
    """``N row(s) excluded: reason: count, ...`` for a message."""
    listed = ", ".join(f"{reason}: {count}" for reason, count in sorted(profile.exclusion_reasons.items()))
    return f"{profile.excluded} row(s) excluded: {listed or 'none'}"


def run_fidelity(
    real_data_folder: str,
    synthetic_data_folder: str,
    output_folder: str,
    vocab_folder: str | None = None,
    min_pair_support: int = DEFAULT_MIN_PAIR_SUPPORT,
    max_patients: int | None = None,
    seed: int = 0,
    vectorised: bool = True,
) -> dict[str, float]:
    """Compare the folders, write ``metrics.json``, the tables and ``report.html``; returns the metrics.

    ``max_patients`` caps each set by a seeded random sample (None: every patient);
    ``vectorised`` is passed to :func:`profile_sequences` (False: the reference path, for the benchmark).
    """
    if min_pair_support < 1:
        raise AnalysisError(f"--min_pair_support {min_pair_support}; expected a positive number of visits")
    rng = np.random.default_rng(seed)
    domains = read_domains(vocab_folder)
    real, real_values = _profile_folder(
        real_data_folder, "real_data_folder", max_patients, rng, False, vectorised
    )
    if len(real) == 0:
        raise AnalysisError(
            f"--real_data_folder {real_data_folder!r} holds no patient with a readable prompt ({_reasons(real)})"
        )
    synthetic, synthetic_values = _profile_folder(
        synthetic_data_folder, "synthetic_data_folder", max_patients, rng, True, vectorised
    )
    if len(synthetic) == 0:
        raise AnalysisError(
            f"--synthetic_data_folder {synthetic_data_folder!r} holds no parseable patient "
            f"({_reasons(synthetic)}); expected grammar-valid sequences"
        )
    if real.excluded:
        warn(f"--real_data_folder: {_reasons(real)}")
    if synthetic.excluded:
        warn(f"--synthetic_data_folder: {_reasons(synthetic)} (not whole patients)")
    metrics, prevalence, pairs = fidelity_metrics(real, synthetic, domains, min_pair_support)
    tables = {"prevalence": prevalence, "cooccurrence": pairs}
    if real_values.number_bins.any() or real_values.duration_days.any():  # sequences prepared with values
        value_results, tables["values"] = value_metrics(real_values, synthetic_values)
        metrics.update(value_results)
    report = render_report(
        metrics, plot_images(real, synthetic, prevalence, pairs), "Synthetic data fidelity"
    )
    summary = {
        "analysis": "fidelity",
        "seed": seed,
        "real_data_folder": str(real_data_folder),
        "synthetic_data_folder": str(synthetic_data_folder),
        "vocab_folder": vocab_folder,
        "min_pair_support": min_pair_support,
        "synthetic_exclusion_reasons": synthetic.exclusion_reasons,
        "real_exclusion_reasons": real.exclusion_reasons,
    }
    write_outputs(
        output_folder,
        tables,
        metrics,
        summary,
        extra_files={"report.html": report.encode("utf-8")},
    )
    return metrics


def _parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="python -m cehrgpt.analysis.fidelity", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--real_data_folder", required=True, help="real sequences (e.g. patient_sequence/train)"
    )
    parser.add_argument("--synthetic_data_folder", required=True, help="GEN/<strategy>/generated_sequences")
    parser.add_argument("--output_folder", required=True, help="where metrics.json and report.html go")
    parser.add_argument("--vocab_folder", help="OUT/omop_vocab (its concept table gives the domains)")
    parser.add_argument("--min_pair_support", type=int, default=DEFAULT_MIN_PAIR_SUPPORT)
    parser.add_argument("--max_patients", type=int, help="cap each set by a seeded random sample")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def body() -> int:
        metrics = run_fidelity(
            args.real_data_folder,
            args.synthetic_data_folder,
            args.output_folder,
            args.vocab_folder,
            args.min_pair_support,
            args.max_patients,
            args.seed,
        )
        print(format_table(metrics, "Fidelity"))
        return 0

    return run_command(body, AnalysisError)
