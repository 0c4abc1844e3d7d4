"""Re-identification risk of a synthetic release, as El Emam, Mosquera and Bass (JMIR 2020) define it.

In the paper's terms: ``s`` counts the records of the real sample the release
was generated from (here the *training* patients, n of them), ``N`` is the size
of the population that sample was drawn from, ``f_s`` the size of ``s``'s
equivalence class (same quasi-identifier values) in the real sample, ``F_s`` in
the population, ``I_s`` = 1 when some synthetic record matches ``s`` on the
quasi-identifiers, ``R_s`` = 1 when the adversary then learns something new
about ``s``, and ``λ`` the adjustment for matching and verification errors
(λ = 0.23, used as ``λ′ = (1 + λ) / 2``). The meaningful identity disclosure risk
is the larger of the two attack directions, population → synthetic and
synthetic → population::

    risk = λ′ · max( (1/N) Σ_s I_s R_s / f_s ,  (1/n) Σ_s I_s R_s / F_s )

The population here is the set the release was drawn from, the training set,
so ``N = n`` and ``F_s = f_s`` and both terms equal ``(λ′/n) Σ_s I_s R_s / f_s``
(held-out patients are not part of it; ``--evaluation_data_folder`` is accepted
for the seed's command line and joins only the age scale of the features).

Quasi-identifiers (QIs): age (exact, or in 10-year bands), gender, race, and the
presence of each *common* concept. Every generalisation is tried — age exact or
banded, each common concept kept or dropped (2^(1 + k) for k common concepts) —
and the release's risk is the worst one. ``R_s`` = 1 when a synthetic record of
``s``'s class shares at least ``max(1, ⌈L · number of sensitive concepts⌉)`` of
``s``'s *sensitive* concepts (L = ``--sensitive_match_fraction``, 0.001): a match
always needs at least one sensitive concept in common, so a record with no
sensitive concept, or a look-alike with none of its, discloses nothing.

Common and sensitive concepts come from ``--attribute_config`` when given; by
default the 7 most prevalent training concepts are common and every other
concept that fewer than half the training patients have is sensitive (the
original's choice). Commonly accepted risk: below 0.09.

Metrics: ``reid_risk``, ``reid_a_term``, ``reid_b_term`` (of the riskiest generalisation),
``reid_num_generalizations``, ``reid_sensitive_match_threshold`` (shared sensitive
concepts needed), counts. Table ``reid_inference.parquet``: one row per generalisation
with ``Config`` (age level then one digit per common concept, as the original's file
names), ``A_term``, ``B_term``, ``Risk``, ``Matched``.
"""

from __future__ import annotations

import argparse
import itertools
import math

import numpy as np
import pandas as pd
from tqdm import tqdm

from cehrgpt.analysis.features import FeatureSpace, PatientSet
from cehrgpt.analysis.io import AnalysisError, read_attribute_config, write_outputs
from cehrgpt.analysis.privacy.attribute_inference import check_config_concepts
from cehrgpt.analysis.privacy.common import DEFAULT_SEED, load_inputs, run_main
from cehrgpt.exits import CommandParser

TABLE = "reid_inference"
LAMBDA = 0.23
AGE_BAND_YEARS = 10
DEFAULT_NUM_COMMON = 7
DEFAULT_SENSITIVE_MATCH_FRACTION = 0.001
MAX_COMMON_ATTRIBUTES = 12  # 2^13 generalisations
MAX_PAIRS_PER_BLOCK = 1 << 22


def default_attributes(training: PatientSet, num_common: int = DEFAULT_NUM_COMMON) -> dict[str, list[int]]:
    """The original's choice: the most prevalent concepts are common, the rest under 50% prevalence sensitive."""
    prevalence = training.concept_prevalence()
    common = prevalence.index[:num_common].tolist()
    rest = prevalence.iloc[num_common:]
    return {"common_attributes": common, "sensitive_attributes": rest[rest < 0.5].index.tolist()}


def _packed_bits(matrix_rows: np.ndarray) -> np.ndarray:
    """Bool rows packed into uint64 words, for popcount overlaps."""
    packed = np.packbits(matrix_rows, axis=1)
    pad = (-packed.shape[1]) % 8
    if pad or packed.shape[1] == 0:
        packed = np.pad(packed, ((0, 0), (0, pad if packed.shape[1] else 8)))
    return np.ascontiguousarray(packed).view(np.uint64)


def _presence(patients: PatientSet, space: FeatureSpace, concepts: list[int]) -> np.ndarray:
    if not concepts:
        return np.zeros((len(patients), 0), dtype=bool)
    return space.encode(patients, concepts=np.asarray(concepts), demographics=False).binary.toarray() > 0


def _class_ids(keys: np.ndarray) -> np.ndarray:
    return np.unique(keys, axis=0, return_inverse=True)[1].reshape(-1)


def _matched(
    train_class: np.ndarray,
    synthetic_class: np.ndarray,
    train_bits: np.ndarray,
    synthetic_bits: np.ndarray,
    threshold: int,
) -> np.ndarray:
    """Per training patient: does a synthetic patient of its class share at least ``threshold`` sensitive concepts?"""
    order = np.argsort(synthetic_class, kind="stable")
    sorted_class = synthetic_class[order]
    lo = np.searchsorted(sorted_class, train_class, side="left")
    counts = np.searchsorted(sorted_class, train_class, side="right") - lo
    matched = np.zeros(len(train_class), dtype=bool)
    start = 0
    cumulative = np.cumsum(counts)
    while start < len(train_class):
        base = cumulative[start - 1] if start else 0
        stop = max(int(np.searchsorted(cumulative, base + MAX_PAIRS_PER_BLOCK, side="right")), start + 1)
        block_counts = counts[start:stop]
        total = int(block_counts.sum())
        if total:
            train_index = np.repeat(np.arange(start, stop), block_counts)
            offsets = np.arange(total) - np.repeat(np.cumsum(block_counts) - block_counts, block_counts)
            synthetic_index = order[np.repeat(lo[start:stop], block_counts) + offsets]
            shared = np.bitwise_count(train_bits[train_index] & synthetic_bits[synthetic_index]).sum(axis=1)
            hit = train_index[shared >= threshold]
            matched[hit] = True
        start = stop
    return matched


def reid_analysis(
    training: PatientSet,
    evaluation: PatientSet,
    synthetic: PatientSet,
    space: FeatureSpace,
    common_attributes: list[int],
    sensitive_attributes: list[int],
    sensitive_match_fraction: float = DEFAULT_SENSITIVE_MATCH_FRACTION,
    lambda_: float = LAMBDA,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Risk of every QI generalisation; returns the table and the metrics of the riskiest one.

    ``evaluation`` joins nothing but the count reported: the population is the training set.
    """
    if len(common_attributes) > MAX_COMMON_ATTRIBUTES:
        raise AnalysisError(
            f"{len(common_attributes)} common attributes give 2^{len(common_attributes) + 1} generalisations; "
            f"expected at most {MAX_COMMON_ATTRIBUTES}"
        )
    if not 0 <= sensitive_match_fraction < 1:
        raise AnalysisError(
            f"--sensitive_match_fraction {sensitive_match_fraction}; expected a value in [0, 1)"
        )
    threshold = max(1, math.ceil(sensitive_match_fraction * len(set(sensitive_attributes))))
    n = big_n = len(training)  # the population is the training set: N = n, F_s = f_s
    ages = np.concatenate([s.ages for s in (training, synthetic)]).astype(np.int64)
    genders = np.concatenate([s.genders for s in (training, synthetic)])
    races = np.concatenate([s.races for s in (training, synthetic)])
    common = np.concatenate([_presence(s, space, common_attributes) for s in (training, synthetic)])
    train_bits = _packed_bits(_presence(training, space, sensitive_attributes))
    synthetic_bits = _packed_bits(_presence(synthetic, space, sensitive_attributes))
    lambda_prime = (1 + lambda_) / 2
    rows = []
    levels = list(itertools.product((0, 1), repeat=1 + len(common_attributes)))
    for level in tqdm(levels, desc="re-identification", unit="generalisation"):
        age_key = ages if level[0] == 1 else -(-ages // AGE_BAND_YEARS)
        kept = np.flatnonzero(level[1:])
        keys = np.column_stack([age_key, genders, races, common[:, kept].astype(np.int64)])
        class_id = _class_ids(keys)
        train_class, population_class = class_id[:n], class_id[:big_n]
        f_s = np.bincount(train_class, minlength=class_id.max() + 1)[train_class]
        big_f_s = np.bincount(population_class, minlength=class_id.max() + 1)[train_class]
        matched = _matched(train_class, class_id[big_n:], train_bits, synthetic_bits, threshold)
        a_term = float(np.sum(matched / f_s) * lambda_prime / big_n)
        b_term = float(np.sum(matched / big_f_s) * lambda_prime / n)
        rows.append(
            {
                "Config": "".join(map(str, level)),
                "A_term": a_term,
                "B_term": b_term,
                "Risk": max(a_term, b_term),
                "Matched": int(matched.sum()),
            }
        )
    table = pd.DataFrame(rows)
    worst = table.loc[table["Risk"].idxmax()]
    metrics = {
        "reid_risk": float(worst["Risk"]),
        "reid_a_term": float(worst["A_term"]),
        "reid_b_term": float(worst["B_term"]),
        "reid_matched_training_patients": int(worst["Matched"]),
        "reid_num_generalizations": len(table),
        "reid_sensitive_match_threshold": threshold,
        "reid_num_common_attributes": len(set(common_attributes)),
        "reid_num_sensitive_attributes": len(set(sensitive_attributes)),
        "reid_num_population_patients": big_n,
    }
    return table, metrics


def run_reid_inference(
    training_data_folder: str,
    evaluation_data_folder: str,
    synthetic_data_folder: str,
    output_folder: str,
    attribute_config: str | None = None,
    tokenizer_path: str | None = None,
    sensitive_match_fraction: float = DEFAULT_SENSITIVE_MATCH_FRACTION,
    seed: int = DEFAULT_SEED,
) -> dict[str, float]:
    """Read the folders, score every generalisation, write the table and ``metrics.json``.

    ``seed`` is recorded only: the analysis uses every patient and draws nothing at random.
    """
    inputs = load_inputs(training_data_folder, synthetic_data_folder, evaluation_data_folder, tokenizer_path)
    assert inputs.evaluation is not None
    if attribute_config:
        config = read_attribute_config(attribute_config)
        check_config_concepts(
            inputs.space, config, f"--attribute_config {attribute_config!r}", training_data_folder
        )
    else:
        config = default_attributes(inputs.training)
    table, metrics = reid_analysis(
        inputs.training,
        inputs.evaluation,
        inputs.synthetic,
        inputs.space,
        config["common_attributes"],
        config["sensitive_attributes"],
        sensitive_match_fraction=sensitive_match_fraction,
    )
    metrics = {**metrics, **{f"reid_{k}": v for k, v in inputs.counts().items()}}
    summary = {
        "analysis": "reid_inference",
        "seed": seed,
        "training_data_folder": str(training_data_folder),
        "evaluation_data_folder": str(evaluation_data_folder),
        "synthetic_data_folder": str(synthetic_data_folder),
        "riskiest_config": str(table.loc[table["Risk"].idxmax(), "Config"]),
        "common_attributes": config["common_attributes"],
        "synthetic_exclusion_reasons": inputs.synthetic.exclusion_reasons,
    }
    write_outputs(output_folder, {TABLE: table}, metrics, summary)
    return metrics


def _parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="python -m cehrgpt.analysis.privacy.reid_inference", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--training_data_folder", required=True)
    parser.add_argument("--evaluation_data_folder", required=True)
    parser.add_argument("--synthetic_data_folder", required=True)
    parser.add_argument("--output_folder", required=True, help="where the table and metrics.json go")
    parser.add_argument("--attribute_config", help="yml naming the common (QI) and sensitive concepts")
    parser.add_argument("--tokenizer_path", help="tokenizer folder; its concepts are the features")
    parser.add_argument(
        "--sensitive_match_fraction",
        type=float,
        default=DEFAULT_SENSITIVE_MATCH_FRACTION,
        help="learning something new = sharing at least this fraction (and at least one) of the sensitive concepts",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="recorded; nothing is sampled")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_main(
        lambda: run_reid_inference(
            args.training_data_folder,
            args.evaluation_data_folder,
            args.synthetic_data_folder,
            args.output_folder,
            args.attribute_config,
            args.tokenizer_path,
            args.sensitive_match_fraction,
            args.seed,
        ),
        "Re-identification risk",
    )


if __name__ == "__main__":
    raise SystemExit(main())
