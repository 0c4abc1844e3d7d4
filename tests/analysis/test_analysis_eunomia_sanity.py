"""Sanity of every privacy metric on Eunomia patients, against three synthetic sets of known risk.

From the Eunomia training sequences: T (members, 500), E (held out, 500) and
three "synthetic" sets —

- (a) 500 other real patients, never seen in T: private by construction;
- (b) T's patients copied with a little noise (one concept dropped, one added): a leak;
- (c) 500 patients drawn from T's concept marginals: private and unrealistic.

Every metric must rank (b) as the riskiest; (a) must show an NNAA privacy loss
≈ 0 and membership inference ≈ chance.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cehrgpt import grammar
from cehrgpt.analysis.privacy import (
    attribute_inference,
    member_inference,
    nearest_neighbor_inference,
    reid_inference,
)
from cehrgpt.grammar import TokenKind

N = 500
SEED = 13
CONFIG = Path(__file__).resolve().parents[2] / "analysis" / "privacy" / "attribute_inference_config.yml"

pytestmark = pytest.mark.slow


def noisy_copy(tokens: list[str], rng: np.random.Generator, vocabulary: list[str]) -> list[str]:
    """Drop one clinical concept (with its value) from a visit that keeps another, add one random concept to a visit."""
    tokens = list(tokens)
    kinds = grammar.assign_kinds(tokens)
    visit_of, visit = [], -1
    for kind in kinds:
        visit += kind == TokenKind.VISIT_START
        visit_of.append(visit)
    concepts = [i for i, k in enumerate(kinds) if k == TokenKind.CONCEPT]
    per_visit = pd.Series([visit_of[i] for i in concepts]).value_counts()
    droppable = [i for i in concepts if per_visit[visit_of[i]] > 1]
    if droppable:
        drop = int(rng.choice(droppable))
        valued = drop + 1 < len(tokens) and kinds[drop + 1] == TokenKind.VALUE  # its value goes with it
        del tokens[drop : drop + 1 + valued]
        kinds = grammar.assign_kinds(tokens)
    visit_types = [
        i for i, k in enumerate(kinds) if k in (TokenKind.VISIT_TYPE, TokenKind.INPATIENT_VISIT_TYPE)
    ]
    tokens.insert(int(rng.choice(visit_types)) + 1, str(rng.choice(vocabulary)))
    assert grammar.is_valid(tokens)
    return tokens


def marginal_patient(rng: np.random.Generator, prompts: list[list[str]], prevalence: pd.Series) -> list[str]:
    """Demographics of a random real prompt, concepts drawn independently with their prevalence, one visit."""
    prompt = prompts[int(rng.integers(len(prompts)))]
    drawn = prevalence.index[rng.random(len(prevalence)) < prevalence.to_numpy()].tolist()
    drawn = drawn or [prevalence.index[0]]
    return [*prompt, grammar.VISIT_START, "9202", *map(str, drawn), grammar.VISIT_END, grammar.END]


@pytest.fixture(scope="module")
def scenarios(eunomia_sequences, tmp_path_factory) -> dict[str, Path]:
    rng = np.random.default_rng(SEED)
    train = pd.read_parquet(
        eunomia_sequences / "patient_sequence" / "train", columns=["person_id", "concept_ids"]
    )
    train = train.iloc[rng.permutation(len(train))].reset_index(drop=True)
    assert len(train) >= 3 * N
    root = tmp_path_factory.mktemp("eunomia_scenarios")
    sets = {"T": train.iloc[:N], "E": train.iloc[N : 2 * N], "a": train.iloc[2 * N : 3 * N]}
    members = [list(t) for t in sets["T"]["concept_ids"]]
    kinds = [grammar.assign_kinds(t) for t in members]
    concepts = pd.Series(
        [
            int(tok)
            for t, k in zip(members, kinds, strict=True)
            for tok, kk in zip(t, k, strict=True)
            if kk == 16
        ]
    )
    prevalence = (
        pd.Series(
            [
                c
                for t, k in zip(members, kinds, strict=True)
                for c in {tok for tok, kk in zip(t, k, strict=True) if kk == 16}
            ]
        )
        .value_counts()
        .div(N)
    )
    vocabulary = sorted(map(str, concepts.unique()))
    sets["b"] = pd.DataFrame(
        {"person_id": np.arange(N) + 10**6, "concept_ids": [noisy_copy(t, rng, vocabulary) for t in members]}
    )
    sets["c"] = pd.DataFrame(
        {
            "person_id": np.arange(N) + 2 * 10**6,
            "concept_ids": [marginal_patient(rng, [t[:4] for t in members], prevalence) for _ in range(N)],
        }
    )
    folders = {}
    for name, frame in sets.items():
        folder = root / name
        folder.mkdir()
        frame[["person_id", "concept_ids"]].to_parquet(folder / "part-0.parquet", index=False)
        folders[name] = folder
    return folders


def run_all(folders: dict[str, Path], synthetic: str, out: Path) -> dict[str, float]:
    common = ["--training_data_folder", str(folders["T"]), "--synthetic_data_folder", str(folders[synthetic])]
    sampling = ["--n_iterations", "2", "--num_of_samples", str(N), "--seed", str(SEED)]
    evaluation = ["--evaluation_data_folder", str(folders["E"])]
    assert (
        attribute_inference.main(
            [*common, *sampling, "--output_folder", str(out / "aia"), "--attribute_config", str(CONFIG)]
        )
        == 0
    )
    assert member_inference.main([*common, *sampling, *evaluation, "--output_folder", str(out / "mia")]) == 0
    assert (
        nearest_neighbor_inference.main(
            [*common, *sampling, *evaluation, "--metrics_folder", str(out / "nnaa")]
        )
        == 0
    )
    assert reid_inference.main([*common, *evaluation, "--output_folder", str(out / "reid")]) == 0
    metrics: dict[str, float] = {}
    for name in ("aia", "mia", "nnaa", "reid"):
        metrics.update(json.loads((out / name / "metrics.json").read_text()))
    return metrics


@pytest.fixture(scope="module")
def results(scenarios, tmp_path_factory) -> dict[str, dict[str, float]]:
    root = tmp_path_factory.mktemp("eunomia_privacy")
    return {name: run_all(scenarios, name, root / name) for name in ("a", "b", "c")}


@pytest.mark.parametrize(
    "metric",
    [
        "aia_f1_advantage",
        "mia_f1_above_chance",
        "mia_advantage_median_threshold",
        "nnaa_privacy_loss",
        "reid_risk",
    ],
)
def test_every_metric_ranks_the_noisy_copy_riskiest(results, metric):
    values = {name: results[name][metric] for name in results}
    assert values["b"] > values["a"], values
    assert values["b"] > values["c"], values


def test_held_out_patients_as_synthetic_data_leak_nothing(results):
    held_out = results["a"]
    assert abs(held_out["nnaa_privacy_loss"]) < 0.05
    assert abs(held_out["mia_f1_median_threshold"] - 0.5) < 0.05
    assert held_out["mia_f1_above_chance"] < 0.1
    assert abs(held_out["aia_f1_advantage"]) < 0.05


def test_the_noisy_copy_is_flagged(results):
    leak = results["b"]
    assert leak["nnaa_privacy_loss"] > 0.3
    assert leak["mia_f1_above_chance"] > 0.3
    # re-identification stays lower in absolute terms: Eunomia's quasi-identifiers (age at the first
    # event, gender, race, near-universal common concepts) put most patients in large classes
