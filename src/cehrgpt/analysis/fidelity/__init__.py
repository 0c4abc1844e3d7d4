"""Fidelity report: how closely synthetic patients reproduce the real ones' statistics.

Compares a real and a synthetic sequence folder (synthetic rows that are not
whole patients under :mod:`cehrgpt.grammar` are excluded and counted) on:

- concept prevalence (share of patients having each concept): R², Pearson r,
  Spearman ρ and mean absolute difference, overall and per OMOP domain (``--vocab_folder``);
- within-visit co-occurrence (share of visits holding both concepts of a pair):
  R² over the pairs seen in at least ``--min_pair_support`` real *or* synthetic
  visits (a pair the model invents counts), and how many of those only synthetic visits hold;
- the original CEHR-GPT's own measures, to compare like for like: ``fidelity_prevalence_kl``,
  KL(real‖synthetic) of concept probabilities (a concept's tokens / all concept tokens; demographic
  and visit-type tokens are not concepts here), and ``fidelity_cooccurrence_kl``, the same formula on
  within-visit pair probabilities (see :func:`kl_divergence` and :func:`cooccurrence`);
- sequence length and visits per patient: Kolmogorov–Smirnov statistic;
- age at the first event (10-year bands), gender, race: total variation distance;
- days between visits and inpatient length of stay: KS statistic;
- visit-type mix: total variation distance.

R² is ``1 − Σ(synthetic − real)² / Σ(real − mean real)²`` (1 is perfect, can be
negative). Writes a flat ``metrics.json`` (``fidelity_*``), ``prevalence.parquet``
and a self-contained ``report.html`` with the plots embedded as PNG.

The package, by concern:

- :mod:`.profile`: sequences → per-patient, per-visit :class:`SequenceProfile` (vectorised and reference paths);
- :mod:`.metrics`: the comparisons above (:func:`fidelity_metrics`);
- :mod:`.report`: the self-contained ``report.html``;
- :mod:`.job`: :func:`run_fidelity` and the command line (``python -m cehrgpt.analysis.fidelity``).
"""

from cehrgpt.analysis.fidelity.job import main, read_domains, run_fidelity
from cehrgpt.analysis.fidelity.metrics import (
    AGE_BAND_YEARS,
    DEFAULT_MIN_PAIR_SUPPORT,
    KL_MISSING_PROBABILITY,
    UNKNOWN_DOMAIN,
    Cooccurrence,
    concept_prevalence,
    concept_token_kl,
    cooccurrence,
    fidelity_metrics,
    kl_divergence,
    ks_statistic,
    pearson,
    r_squared,
    spearman,
    total_variation,
)
from cehrgpt.analysis.fidelity.profile import SequenceProfile, profile_sequences
from cehrgpt.analysis.fidelity.report import METRIC_NOTES, render_report
from cehrgpt.analysis.io import AnalysisError
from cehrgpt.omop.arrow_decode import decode_arrow

__all__ = [
    "AGE_BAND_YEARS",
    "DEFAULT_MIN_PAIR_SUPPORT",
    "KL_MISSING_PROBABILITY",
    "METRIC_NOTES",
    "UNKNOWN_DOMAIN",
    "AnalysisError",
    "Cooccurrence",
    "SequenceProfile",
    "concept_prevalence",
    "concept_token_kl",
    "cooccurrence",
    "decode_arrow",
    "fidelity_metrics",
    "kl_divergence",
    "ks_statistic",
    "main",
    "pearson",
    "profile_sequences",
    "r_squared",
    "read_domains",
    "render_report",
    "run_fidelity",
    "spearman",
    "total_variation",
]
