"""Metrics: compare the profiles of a real and a synthetic set of patients.

Prevalence (R², Pearson, Spearman, mean absolute difference, overall and per domain), within-visit
co-occurrence, the original CEHR-GPT's KL measures, KS statistics and total variation distances;
:func:`fidelity_metrics` gathers them under their ``fidelity_*`` names.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats

from cehrgpt.analysis.fidelity.profile import SequenceProfile, distinct_with_counts

DEFAULT_MIN_PAIR_SUPPORT = 5
KL_MISSING_PROBABILITY = 1e-10  # the original CEHR-GPT's probability for a key the synthetic set lacks
AGE_BAND_YEARS = 10
UNKNOWN_DOMAIN = "Unknown"


def r_squared(real: np.ndarray, synthetic: np.ndarray) -> float:
    """Coefficient of determination of ``synthetic`` as a prediction of ``real`` (NaN if real is constant)."""
    total = float(np.sum((real - real.mean()) ** 2)) if len(real) else 0.0
    if total == 0:
        return float("nan")
    return 1.0 - float(np.sum((synthetic - real) ** 2)) / total


def pearson(real: np.ndarray, synthetic: np.ndarray) -> float:
    if len(real) < 2 or np.std(real) == 0 or np.std(synthetic) == 0:
        return float("nan")
    return float(np.corrcoef(real, synthetic)[0, 1])


def spearman(real: np.ndarray, synthetic: np.ndarray) -> float:
    """Rank correlation: does the synthetic set order concepts as the real one does (NaN if either is constant)."""
    if len(real) < 2 or np.std(real) == 0 or np.std(synthetic) == 0:
        return float("nan")
    return float(stats.spearmanr(real, synthetic).statistic)


def kl_divergence(real_counts: np.ndarray, synthetic_counts: np.ndarray, synthetic_total: float) -> float:
    """KL(real‖synthetic) in nats, as the original CEHR-GPT computes it for its concept distributions.

    ``real_counts`` are the counts of every key seen in the real set, ``synthetic_counts`` the synthetic
    counts of the same keys (0 where the synthetic set lacks one) and ``synthetic_total`` the synthetic
    count over all its keys (those the real set lacks included). With p = real / Σ real and
    q = synthetic / synthetic_total, the result is Σ p · ln(p / q), where q is taken as
    :data:`KL_MISSING_PROBABILITY` for a key the synthetic set lacks (NaN when the real set is empty).
    """
    real_total = float(np.sum(real_counts))
    if real_total == 0:
        return float("nan")
    p = np.asarray(real_counts, np.float64) / real_total
    q = np.asarray(synthetic_counts, np.float64) / synthetic_total if synthetic_total else np.zeros(len(p))
    q = np.where(q > 0, q, KL_MISSING_PROBABILITY)
    seen = p > 0
    return float(np.sum(p[seen] * np.log(p[seen] / q[seen])))


def concept_token_kl(real: SequenceProfile, synthetic: SequenceProfile) -> float:
    """:func:`kl_divergence` of concept probabilities: a concept's tokens / all concept tokens of the set."""
    ids, real_counts = distinct_with_counts(real.concept_tokens)
    synthetic_ids, counts = distinct_with_counts(synthetic.concept_tokens)
    return kl_divergence(real_counts, _counts_of(ids, synthetic_ids, counts), len(synthetic.concept_tokens))


def _counts_of(keys: np.ndarray, sorted_keys: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``counts`` (of ``sorted_keys``) looked up for ``keys``; 0 for a key not among them."""
    if not len(sorted_keys):
        return np.zeros(len(keys), np.int64)
    at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return np.where(sorted_keys[at] == keys, counts[at], 0)


def total_variation(real: list, synthetic: list) -> float:
    """½ Σ |p − q| over the categories of two samples (NaN when one is empty)."""
    if not real or not synthetic:
        return float("nan")
    p, q = Counter(real), Counter(synthetic)
    return 0.5 * sum(abs(p[k] / len(real) - q[k] / len(synthetic)) for k in p.keys() | q.keys())


def ks_statistic(real: np.ndarray, synthetic: np.ndarray) -> float:
    if len(real) == 0 or len(synthetic) == 0:
        return float("nan")
    return float(stats.ks_2samp(real, synthetic).statistic)


def concept_prevalence(real: SequenceProfile, synthetic: SequenceProfile) -> pd.DataFrame:
    """Share of real and of synthetic patients having each concept (union of both sets)."""
    ids, _ = distinct_with_counts(np.concatenate([real.patient_concepts, synthetic.patient_concepts]))

    def shares(profile: SequenceProfile) -> np.ndarray:
        present, counts = distinct_with_counts(profile.patient_concepts)
        out = np.zeros(len(ids))
        out[np.searchsorted(ids, present)] = counts
        return out / len(profile)

    return pd.DataFrame(
        {"concept_id": ids, "real_prevalence": shares(real), "synthetic_prevalence": shares(synthetic)}
    )


def _pair_rates(profile: SequenceProfile, concepts: np.ndarray) -> sp.csr_matrix:
    """Upper-triangular counts of visits holding both concepts of each pair, over the sorted ``concepts``."""
    visits, ids = profile.visit_concepts
    column = np.searchsorted(concepts, ids)
    known = column < len(concepts)
    known[known] = concepts[column[known]] == ids[known]
    incidence = sp.csr_matrix(
        (np.ones(int(known.sum())), (visits[known], column[known])),
        shape=(profile.visit_count, len(concepts)),
    )
    return sp.triu(incidence.T @ incidence, k=1).tocsr()


@dataclass
class Cooccurrence:
    """The within-visit pair comparison: the pair table and its summary numbers."""

    pairs: pd.DataFrame  # concept_id_a < concept_id_b, real_rate, synthetic_rate
    r2: float
    synthetic_only_pairs: int  # pairs of the table no real visit holds (invented by the model)
    kl: float


def _values_at(matrix: sp.csr_matrix, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    return np.asarray(matrix[rows, columns]).reshape(-1) if len(rows) else np.zeros(0)


def cooccurrence(real: SequenceProfile, synthetic: SequenceProfile, min_pair_support: int) -> Cooccurrence:
    """Compare the within-visit pair rates of the two sets.

    A pair's rate is the share of a set's visits holding both its concepts. The table and R² cover the
    pairs seen in ≥ ``min_pair_support`` real visits *or* ≥ ``min_pair_support`` synthetic visits, so a
    pair the model invents counts against it. The KL is :func:`kl_divergence` over every pair (no support
    floor) of the pair probabilities: visits holding the pair / Σ of that count over all pairs of the set.
    """
    ids, _ = distinct_with_counts(np.concatenate([real.visit_concepts[1], synthetic.visit_concepts[1]]))
    real_counts, synthetic_counts = _pair_rates(real, ids), _pair_rates(synthetic, ids)
    support = real_counts.maximum(synthetic_counts).tocoo()
    keep = support.data >= min_pair_support
    order = np.lexsort((support.col[keep], support.row[keep]))
    a, b = support.row[keep][order], support.col[keep][order]
    real_values, synthetic_values = _values_at(real_counts, a, b), _values_at(synthetic_counts, a, b)
    pairs = pd.DataFrame(
        {
            "concept_id_a": ids[a].astype(np.int64),
            "concept_id_b": ids[b].astype(np.int64),
            "real_rate": real_values / max(real.visit_count, 1),
            "synthetic_rate": synthetic_values / max(synthetic.visit_count, 1),
        }
    )
    seen = real_counts.tocoo()
    return Cooccurrence(
        pairs=pairs,
        r2=r_squared(pairs["real_rate"].to_numpy(), pairs["synthetic_rate"].to_numpy()),
        synthetic_only_pairs=int(np.sum(real_values == 0)),
        kl=kl_divergence(
            seen.data, _values_at(synthetic_counts, seen.row, seen.col), float(synthetic_counts.sum())
        ),
    )


def fidelity_metrics(
    real: SequenceProfile,
    synthetic: SequenceProfile,
    domains: Mapping[int, str] | None = None,
    min_pair_support: int = DEFAULT_MIN_PAIR_SUPPORT,
) -> tuple[dict[str, float], pd.DataFrame, pd.DataFrame]:
    """Every fidelity metric, the per-concept prevalence table and the co-occurrence pair table."""
    prevalence = concept_prevalence(real, synthetic)
    prevalence["domain_id"] = [(domains or {}).get(int(c), UNKNOWN_DOMAIN) for c in prevalence["concept_id"]]
    r, s = prevalence["real_prevalence"].to_numpy(), prevalence["synthetic_prevalence"].to_numpy()
    metrics: dict[str, float] = {
        "fidelity_prevalence_r2": r_squared(r, s),
        "fidelity_prevalence_pearson": pearson(r, s),
        "fidelity_prevalence_spearman": spearman(r, s),
        "fidelity_prevalence_mean_abs_diff": float(np.mean(np.abs(r - s))) if len(r) else float("nan"),
        "fidelity_prevalence_kl": concept_token_kl(real, synthetic),
    }
    if domains:
        for domain, part in prevalence.groupby("domain_id"):
            name = str(domain).lower().replace(" ", "_")
            pr, ps = part["real_prevalence"].to_numpy(), part["synthetic_prevalence"].to_numpy()
            metrics[f"fidelity_prevalence_r2_{name}"] = r_squared(pr, ps)
            metrics[f"fidelity_prevalence_pearson_{name}"] = pearson(pr, ps)
            metrics[f"fidelity_prevalence_spearman_{name}"] = spearman(pr, ps)
            metrics[f"fidelity_prevalence_mean_abs_diff_{name}"] = float(np.mean(np.abs(pr - ps)))
    pairs = cooccurrence(real, synthetic, min_pair_support)
    age_band = lambda ages: [int(a) // AGE_BAND_YEARS for a in ages]  # noqa: E731
    metrics.update(
        {
            "fidelity_cooccurrence_r2": pairs.r2,
            "fidelity_cooccurrence_pairs": len(pairs.pairs),
            "fidelity_cooccurrence_synthetic_only_pairs": pairs.synthetic_only_pairs,
            "fidelity_cooccurrence_kl": pairs.kl,
            "fidelity_sequence_length_ks": ks_statistic(real.lengths, synthetic.lengths),
            "fidelity_visits_per_patient_ks": ks_statistic(
                real.visits_per_patient, synthetic.visits_per_patient
            ),
            "fidelity_age_tvd": total_variation(age_band(real.ages), age_band(synthetic.ages)),
            "fidelity_gender_tvd": total_variation(real.genders, synthetic.genders),
            "fidelity_race_tvd": total_variation(real.races, synthetic.races),
            "fidelity_days_between_visits_ks": ks_statistic(
                real.days_between_visits, synthetic.days_between_visits
            ),
            "fidelity_inpatient_stay_ks": ks_statistic(
                real.inpatient_stay_days, synthetic.inpatient_stay_days
            ),
            "fidelity_visit_type_tvd": total_variation(real.visit_types, synthetic.visit_types),
            "fidelity_num_real_patients": len(real),
            "fidelity_num_synthetic_patients": len(synthetic),
            "fidelity_num_synthetic_excluded": synthetic.excluded,
            "fidelity_num_real_excluded": real.excluded,
        }
    )
    return metrics, prevalence, pairs.pairs
