"""Value fidelity: do synthetic labs carry values, in the real bins, and do drugs last as long as real ones?

Read straight from the token lists (vectorised with Arrow): a value token (:func:`cehrgpt.grammar.value_class`)
belongs to the concept right before it. Real and synthetic values are compared as what the sequences
hold, the per-concept bin number of ``v:<k>`` (both sides were binned by the same ``value_bins``) and
the duration bin of ``dur:<days>`` (its low edge in days; a drug without one lasted 0 days), so the
comparison measures the model, not the restore's draw within a bin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from cehrgpt import grammar
from cehrgpt.analysis.fidelity.metrics import ks_statistic

TOP_VALUE_CONCEPTS = 20  # the most frequent real concepts with numeric values that the value KS compares


@dataclass(frozen=True)
class ValueProfile:
    """Each clinical concept occurrence with the value that follows it (one row per concept token)."""

    concept_ids: np.ndarray  # int64: the concept
    number_bins: np.ndarray  # int64: k of a following v:<k>, 0 when none
    duration_days: np.ndarray  # int64: low edge of a following dur:<days>, 0 when none
    has_category: np.ndarray  # bool: a vc:<id> follows


def value_profile(sequences: pa.ListArray) -> ValueProfile:
    """Every concept-id token of ``sequences`` with the value token after it, if any.

    Bare concept ids stand in visits as clinical concepts, visit types, discharges and (in the prompt)
    gender and race; only clinical concepts are ever followed by a value, and the statistics below are
    per concept that takes values, so the other roles only add rows no metric reads.
    """
    flat = pc.list_flatten(sequences)
    row = pc.list_parent_indices(sequences).to_numpy(zero_copy_only=False)
    is_concept = pc.fill_null(pc.match_substring_regex(flat, r"^\d+$"), False).to_numpy(zero_copy_only=False)
    at = np.flatnonzero(is_concept)
    after = at + 1
    in_row = after < len(flat)
    in_row[in_row] = row[after[in_row]] == row[at[in_row]]
    following = pc.fill_null(flat.take(pa.array(np.where(in_row, after, at))), "")
    following = pc.if_else(pa.array(in_row), following, "")  # the last token of a row is followed by nothing
    number = _parsed(following, "v:", grammar.value_bin_of)
    duration = _parsed(following, "dur:", lambda t: (grammar.drug_duration_range(t) or (0, None))[0])
    category = pc.starts_with(following, "vc:").to_numpy(zero_copy_only=False)
    return ValueProfile(
        concept_ids=pc.cast(flat.filter(pa.array(is_concept)), pa.int64()).to_numpy(zero_copy_only=False),
        number_bins=number,
        duration_days=duration,
        has_category=category.astype(bool),
    )


def _parsed(tokens: pa.Array, prefix: str, parse) -> np.ndarray:
    """``parse`` of the tokens starting with ``prefix`` (0 for the rest and for what it cannot read)."""
    out = np.zeros(len(tokens), dtype=np.int64)
    hit = np.flatnonzero(pc.starts_with(tokens, prefix).to_numpy(zero_copy_only=False))
    if len(hit):
        out[hit] = [parse(t) or 0 for t in tokens.take(pa.array(hit)).to_pylist()]
    return out


def value_metrics(real: ValueProfile, synthetic: ValueProfile) -> tuple[dict[str, float], pd.DataFrame]:
    """The value metrics and the per-concept table of the compared concepts.

    * ``fidelity_value_ks_median`` / ``_mean``: KS of the bin numbers of the :data:`TOP_VALUE_CONCEPTS`
      real concepts with most numeric values, over those the synthetic set also gives a value.
    * ``fidelity_value_share_real`` / ``_synthetic``: of the occurrences of concepts that take numbers in
      the real set, the share carrying one (a model that drops values shows here).
    * ``fidelity_drug_duration_ks``: durations of the concepts that have a duration in the real set.
    NaN where nothing can be compared.
    """
    numeric = np.unique(real.concept_ids[real.number_bins > 0])
    counts = pd.Series(real.concept_ids[real.number_bins > 0]).value_counts()
    top = counts.sort_index().sort_values(ascending=False, kind="stable").index[:TOP_VALUE_CONCEPTS]
    rows = []
    for concept in top:
        r = real.number_bins[(real.concept_ids == concept) & (real.number_bins > 0)]
        s = synthetic.number_bins[(synthetic.concept_ids == concept) & (synthetic.number_bins > 0)]
        rows.append(
            {
                "concept_id": int(concept),
                "real_values": len(r),
                "synthetic_values": len(s),
                "real_mean_bin": float(r.mean()),
                "synthetic_mean_bin": float(s.mean()) if len(s) else float("nan"),
                "ks": ks_statistic(r, s) if len(s) else float("nan"),
            }
        )
    table = pd.DataFrame(
        rows,
        columns=[
            "concept_id",
            "real_values",
            "synthetic_values",
            "real_mean_bin",
            "synthetic_mean_bin",
            "ks",
        ],
    )
    ks = table["ks"].dropna().to_numpy()

    def share(profile: ValueProfile) -> float:
        takes = np.isin(profile.concept_ids, numeric)
        return float((profile.number_bins[takes] > 0).mean()) if takes.any() else float("nan")

    drugs = np.unique(real.concept_ids[real.duration_days > 0])
    real_durations = real.duration_days[np.isin(real.concept_ids, drugs)]
    synthetic_durations = synthetic.duration_days[np.isin(synthetic.concept_ids, drugs)]
    metrics = {
        "fidelity_value_ks_median": float(np.median(ks)) if len(ks) else float("nan"),
        "fidelity_value_ks_mean": float(np.mean(ks)) if len(ks) else float("nan"),
        "fidelity_value_concepts_compared": len(ks),
        "fidelity_value_share_real": share(real),
        "fidelity_value_share_synthetic": share(synthetic),
        "fidelity_drug_duration_ks": (
            ks_statistic(real_durations, synthetic_durations)
            if len(real_durations) and len(synthetic_durations)
            else float("nan")
        ),
    }
    return metrics, table
