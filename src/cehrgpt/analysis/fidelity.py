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
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import scipy.sparse as sp
from scipy import stats
from tqdm import tqdm

from cehrgpt import grammar
from cehrgpt.analysis.features import sample_indices
from cehrgpt.analysis.io import AnalysisError, format_table, read_sequence_folder, warn, write_outputs
from cehrgpt.grammar import TokenKind
from cehrgpt.omop.decode import ArrowDecoded, decode_arrow

DEFAULT_MIN_PAIR_SUPPORT = 5
KL_MISSING_PROBABILITY = 1e-10  # the original CEHR-GPT's probability for a key the synthetic set lacks
AGE_BAND_YEARS = 10
UNKNOWN_DOMAIN = "Unknown"


@dataclass
class SequenceProfile:
    """What the fidelity metrics need from one set of sequences."""

    lengths: np.ndarray
    visits_per_patient: np.ndarray
    ages: np.ndarray
    genders: list[int]
    races: list[int]
    visit_types: list[int]
    days_between_visits: np.ndarray
    inpatient_stay_days: np.ndarray
    patient_concepts: np.ndarray  # one concept id per (patient, distinct concept of that patient)
    concept_tokens: np.ndarray  # one concept id per concept token, repeats kept (for the token-level KL)
    visit_concepts: tuple[np.ndarray, np.ndarray]  # (visit index, concept id) per distinct concept of a visit
    visit_count: int
    excluded: int
    exclusion_reasons: dict[str, int]

    def __len__(self) -> int:
        return len(self.lengths)


@dataclass
class _Tally:
    """The per-patient, per-visit and per-gap values of :class:`SequenceProfile`, as they are collected."""

    lengths: list[int] = field(default_factory=list)
    visits: list[int] = field(default_factory=list)
    ages: list[int] = field(default_factory=list)
    genders: list[int] = field(default_factory=list)
    races: list[int] = field(default_factory=list)
    visit_types: list[int] = field(default_factory=list)
    gaps: list[int] = field(default_factory=list)
    stays: list[int] = field(default_factory=list)
    patient_concepts: list[np.ndarray] = field(default_factory=list)
    concept_tokens: list[np.ndarray] = field(default_factory=list)
    visit_of_concepts: list[np.ndarray] = field(default_factory=list)
    visit_concepts: list[np.ndarray] = field(default_factory=list)
    visit_count: int = 0
    reasons: Counter[str] = field(default_factory=Counter)


def profile_sequences(
    token_lists: list[list[str]] | pa.ListArray,
    check_grammar: bool,
    vectorised: bool = True,
    excluded_before: Mapping[str, int] | None = None,
) -> SequenceProfile:
    """Collect the fidelity statistics of every sequence.

    Grammar-valid patients go through the restore's vectorised decoder
    (:func:`cehrgpt.omop.decode.decode_arrow`), the rest one by one over
    :func:`grammar.assign_kinds`; both give the same values (a test checks).
    A null sequence, or one holding a null token, is excluded and counted; with
    ``check_grammar``, so are patients that break the grammar, by reason.
    ``excluded_before`` adds the rows the reader already left out (``is_valid`` false).
    ``vectorised=False`` takes the reference path for every patient.
    """
    sequences = (
        token_lists
        if isinstance(token_lists, pa.ListArray)
        else pa.array(list(token_lists), pa.list_(pa.string()))
    )
    tally = _Tally()
    tally.reasons.update(excluded_before or {})
    sequences = _without_nulls(sequences, tally)
    fast = decode_arrow(sequences, np.full(len(sequences), vectorised))
    _tally_decoded(sequences, fast, tally)
    slow = np.flatnonzero(~fast.decoded)
    if len(slow):
        _tally_one_by_one(sequences.take(pa.array(slow)).to_pylist(), check_grammar, tally)
    return SequenceProfile(
        lengths=np.asarray(tally.lengths),
        visits_per_patient=np.asarray(tally.visits),
        ages=np.asarray(tally.ages),
        genders=tally.genders,
        races=tally.races,
        visit_types=tally.visit_types,
        days_between_visits=np.asarray(tally.gaps),
        inpatient_stay_days=np.asarray(tally.stays),
        patient_concepts=_check_concept_ids(_concatenated(tally.patient_concepts)),
        concept_tokens=_concatenated(tally.concept_tokens),
        visit_concepts=(_concatenated(tally.visit_of_concepts), _concatenated(tally.visit_concepts)),
        visit_count=tally.visit_count,
        excluded=sum(tally.reasons.values()),
        exclusion_reasons=dict(tally.reasons),
    )


def _without_nulls(sequences: pa.ListArray, tally: _Tally) -> pa.ListArray:
    """``sequences`` less its null rows and rows holding a null token, which are counted by reason."""
    null_row = pc.is_null(sequences).to_numpy(zero_copy_only=False)
    null_token = pc.is_null(pc.list_flatten(sequences)).to_numpy(zero_copy_only=False)
    has_null_token = np.zeros(len(sequences), bool)
    has_null_token[pc.list_parent_indices(sequences).to_numpy(zero_copy_only=False)[null_token]] = True
    if null_row.any():
        tally.reasons["null sequence"] += int(null_row.sum())
    if has_null_token.any():
        tally.reasons["null token"] += int(has_null_token.sum())
    bad = null_row | has_null_token
    return sequences.filter(pa.array(~bad)) if bad.any() else sequences


def _concatenated(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def _distinct(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values and how often each occurs, by sorting (numpy's hashing ``unique`` is
    several times slower on millions of ids)."""
    ordered = np.sort(values.astype(np.int64, copy=False))
    if not len(ordered):
        return ordered, np.zeros(0, np.int64)
    starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
    return ordered[starts], np.diff(np.append(starts, len(ordered)))


def _check_concept_ids(concepts: np.ndarray) -> np.ndarray:
    outside = concepts[(concepts < 0) | (concepts >= 1 << 32)]
    if len(outside):
        raise AnalysisError(f"concept id {outside[0]} is outside 0 .. 2^32 - 1, which the report supports")
    return concepts


def _distinct_pairs(groups: np.ndarray, concepts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group, concept) pairs with repeats removed (concept ids are below 2^32, as OMOP's are)."""
    _check_concept_ids(concepts)
    keys, _ = _distinct((groups.astype(np.int64) << 32) | concepts.astype(np.int64))
    return keys >> 32, keys & 0xFFFFFFFF


def _tally_decoded(sequences: pa.ListArray, fast: ArrowDecoded, tally: _Tally) -> None:
    """The statistics of the patients ``decode_arrow`` decoded, from its records, without a Python token loop."""
    rows = np.flatnonzero(fast.decoded)
    if not len(rows):
        return
    slot = np.full(len(fast.decoded), -1, np.int64)  # batch row → index among the decoded rows
    slot[rows] = np.arange(len(rows))
    lengths = pc.list_value_length(sequences).to_numpy(zero_copy_only=False)
    age_tokens = pc.list_element(sequences.take(pa.array(rows)), 1).to_pylist()
    ages: dict[str, int] = {}
    for token in set(age_tokens):
        age = grammar.prompt_age(token)
        assert age is not None, token  # a decoded patient has a valid prompt
        ages[token] = age
    person = fast.person
    by_row = np.argsort(person["row"])
    visit, event, death = fast.visit, fast.event, fast.death
    order = np.lexsort((visit["position"], visit["row"]))
    v_row, v_position = visit["row"][order], visit["position"][order]
    v_start, v_end, v_type = (
        visit["start_day"][order],
        visit["end_day"][order],
        visit["visit_concept_id"][order],
    )
    same_patient = v_row[1:] == v_row[:-1]
    gaps = (v_start[1:] - v_end[:-1])[same_patient]
    visit_keys = v_row * (1 << 32) + v_position  # sorted: visits are ordered by row, then position
    if len(death["row"]):  # the gap before [VS] [DEATH] [VE], counted from the last visit's end
        last = np.searchsorted(visit_keys, death["row"] * (1 << 32) + death["position"]) - 1
        has_visit = (last >= 0) & (v_row[np.maximum(last, 0)] == death["row"])
        gaps = np.concatenate([gaps, (death["day"] - v_end[np.maximum(last, 0)])[has_visit]])
    inpatient = np.isin(v_type, list(grammar.INPATIENT_VISIT_CONCEPT_IDS))
    concept = event["concept_id"] != 0
    visit_index = np.searchsorted(visit_keys, event["row"] * (1 << 32) + event["visit_position"])
    tally.lengths += lengths[rows].tolist()
    tally.visits += np.bincount(slot[v_row], minlength=len(rows)).tolist()
    tally.ages += [ages[token] for token in age_tokens]
    tally.genders += person["gender_concept_id"][by_row].tolist()
    tally.races += person["race_concept_id"][by_row].tolist()
    tally.visit_types += v_type.tolist()
    tally.gaps += gaps.tolist()
    tally.stays += (v_end - v_start)[inpatient].tolist()
    tally.patient_concepts.append(
        _distinct_pairs(slot[event["row"][concept]], event["concept_id"][concept])[1]
    )
    tally.concept_tokens.append(event["concept_id"][concept])
    visits, concepts = _distinct_pairs(visit_index[concept], event["concept_id"][concept])
    tally.visit_of_concepts.append(visits + tally.visit_count)
    tally.visit_concepts.append(concepts)
    tally.visit_count += len(v_row)


def _tally_one_by_one(token_lists: list[list[str]], check_grammar: bool, tally: _Tally) -> None:
    """The reference path: one patient at a time over :func:`grammar.assign_kinds`."""
    for tokens in tqdm(token_lists, desc="reading sequences", unit="patient", leave=False):
        if check_grammar and (violation := grammar.first_violation(tokens)) is not None:
            tally.reasons[violation[1].split(" in state")[0]] += 1
            continue
        kinds = grammar.assign_kinds(tokens)
        age = grammar.prompt_age(tokens[1]) if len(tokens) >= grammar.PROMPT_LENGTH else None
        if age is None or kinds[2] != TokenKind.GENDER or kinds[3] != TokenKind.RACE:
            tally.reasons["no demographic prompt"] += 1
            continue
        concepts: set[int] = set()
        tokens_of_concepts: list[int] = []
        current: set[int] | None = None
        stay: int | None = None
        n_visits = 0
        for token, kind in zip(tokens, kinds, strict=True):
            if kind in (TokenKind.VISIT_TYPE, TokenKind.INPATIENT_VISIT_TYPE):
                n_visits += 1
                tally.visit_types.append(grammar.concept_id_of(token) or 0)
                current = set()
                stay = 0 if kind == TokenKind.INPATIENT_VISIT_TYPE else None
            elif kind == TokenKind.CONCEPT and current is not None:
                concept = grammar.concept_id_of(token)
                if concept:
                    current.add(concept)
                    concepts.add(concept)
                    tokens_of_concepts.append(concept)
            elif kind == TokenKind.INPATIENT_GAP and stay is not None:
                stay += grammar.inpatient_gap_days(token) or 0
            elif kind == TokenKind.GAP:
                tally.gaps.append(grammar.gap_days(token) or 0)
            elif kind == TokenKind.VISIT_END:
                if current is not None:
                    tally.visit_of_concepts.append(np.full(len(current), tally.visit_count))
                    tally.visit_concepts.append(np.fromiter(current, np.int64, len(current)))
                    tally.visit_count += 1
                if stay is not None:
                    tally.stays.append(stay)
                current, stay = None, None
        tally.lengths.append(len(tokens))
        tally.visits.append(n_visits)
        tally.ages.append(age)
        tally.genders.append(grammar.concept_id_of(tokens[2]) or 0)
        tally.races.append(grammar.concept_id_of(tokens[3]) or 0)
        tally.patient_concepts.append(np.fromiter(concepts, np.int64, len(concepts)))
        tally.concept_tokens.append(np.asarray(tokens_of_concepts, np.int64))


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
    ids, real_counts = _distinct(real.concept_tokens)
    synthetic_ids, counts = _distinct(synthetic.concept_tokens)
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
    ids, _ = _distinct(np.concatenate([real.patient_concepts, synthetic.patient_concepts]))

    def shares(profile: SequenceProfile) -> np.ndarray:
        present, counts = _distinct(profile.patient_concepts)
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
    ids, _ = _distinct(np.concatenate([real.visit_concepts[1], synthetic.visit_concepts[1]]))
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


# --- the HTML report ----------------------------------------------------------------------------------------


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _plots(real: SequenceProfile, synthetic: SequenceProfile, prevalence: pd.DataFrame, pairs: pd.DataFrame):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def scatter(title, x, y, label):
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.scatter(x, y, s=8, alpha=0.6)
        top = max([*x, *y, 1e-9])
        ax.plot([0, top], [0, top], color="grey", linewidth=1)
        ax.set(title=title, xlabel=f"real {label}", ylabel=f"synthetic {label}")
        return fig

    def histograms(title, a, b):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        values = np.concatenate([a, b]) if len(a) + len(b) else np.zeros(1)
        bins = np.histogram_bin_edges(values, bins=30)
        for values, label in ((a, "real"), (b, "synthetic")):
            if len(values):
                ax.hist(values, bins=bins, alpha=0.5, density=True, label=label)
        ax.set(title=title)
        ax.legend()
        return fig

    def bars(title, a, b):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        keys = sorted(set(a) | set(b), key=str)
        count_a, count_b = Counter(a), Counter(b)
        x = np.arange(len(keys))
        ax.bar(x - 0.2, [count_a[k] / max(len(a), 1) for k in keys], 0.4, label="real")
        ax.bar(x + 0.2, [count_b[k] / max(len(b), 1) for k in keys], 0.4, label="synthetic")
        ax.set_xticks(x, [str(k) for k in keys], rotation=45, fontsize=7)
        ax.set(title=title)
        ax.legend()
        return fig

    figures = [
        scatter(
            "Concept prevalence", prevalence["real_prevalence"], prevalence["synthetic_prevalence"], "share"
        ),
        scatter("Within-visit co-occurrence", pairs["real_rate"], pairs["synthetic_rate"], "rate"),
        histograms("Sequence length (tokens)", real.lengths, synthetic.lengths),
        histograms("Visits per patient", real.visits_per_patient, synthetic.visits_per_patient),
        histograms("Age at first event", real.ages, synthetic.ages),
        histograms("Days between visits", real.days_between_visits, synthetic.days_between_visits),
        histograms(
            "Inpatient length of stay (days)", real.inpatient_stay_days, synthetic.inpatient_stay_days
        ),
        bars("Gender", real.genders, synthetic.genders),
        bars("Race", real.races, synthetic.races),
        bars("Visit type", real.visit_types, synthetic.visit_types),
    ]
    encoded = [_png(f) for f in figures]
    for f in figures:
        plt.close(f)
    return encoded


METRIC_NOTES = {
    "fidelity_prevalence_spearman": "rank correlation of per-concept patient shares (1: same order)",
    "fidelity_cooccurrence_r2": "over pairs seen in enough real or synthetic visits; invented pairs count",
    "fidelity_prevalence_kl": (
        "the original CEHR-GPT's KL(real‖synthetic), nats, of concept token probabilities; 0 is identical, "
        "a concept the synthetic set lacks counts at probability 1e-10"
    ),
    "fidelity_cooccurrence_kl": "the same KL on within-visit pair probabilities, over every pair",
}


def render_report(metrics: Mapping[str, float], images: list[str], title: str) -> str:
    """A self-contained HTML page: the metrics table and the plots as embedded PNGs."""
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{'' if v is None else f'{v:.4f}' if isinstance(v, float) else v}</td></tr>"
        for k, v in metrics.items()
    )
    plots = "".join(f'<img alt="plot" src="data:image/png;base64,{png}">' for png in images)
    notes = "".join(
        f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in METRIC_NOTES.items() if k in metrics
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "table{border-collapse:collapse}td{border:1px solid #ccc;padding:2px 8px}"
        "img{margin:6px;border:1px solid #eee}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><h2>Metrics</h2><table>{rows}</table><ul>{notes}</ul>"
        f"<h2>Plots</h2>{plots}</body></html>"
    )


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
) -> SequenceProfile:
    tokens, excluded = _read_tokens(folder, role, max_patients, rng)
    return profile_sequences(tokens, check_grammar, vectorised, excluded)


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
    real = _profile_folder(real_data_folder, "real_data_folder", max_patients, rng, False, vectorised)
    if len(real) == 0:
        raise AnalysisError(
            f"--real_data_folder {real_data_folder!r} holds no patient with a readable prompt ({_reasons(real)})"
        )
    synthetic = _profile_folder(
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
    report = render_report(metrics, _plots(real, synthetic, prevalence, pairs), "Synthetic data fidelity")
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
        {"prevalence": prevalence, "cooccurrence": pairs},
        metrics,
        summary,
        extra_files={"report.html": report.encode("utf-8")},
    )
    return metrics


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cehrgpt.analysis.fidelity", description=__doc__.split("\n")[0]
    )
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
    try:
        metrics = run_fidelity(
            args.real_data_folder,
            args.synthetic_data_folder,
            args.output_folder,
            args.vocab_folder,
            args.min_pair_support,
            args.max_patients,
            args.seed,
        )
    except AnalysisError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(metrics, "Fidelity"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
