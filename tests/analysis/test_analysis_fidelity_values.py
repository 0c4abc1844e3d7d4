"""Value fidelity: bins per lab, the share of labs carrying a value and drug durations, worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from cehrgpt.analysis import fidelity
from cehrgpt.analysis.fidelity.values import value_metrics, value_profile

PROMPT = ["year:2000", "age:30", "8507", "8527"]


def visit(*events: str) -> list[str]:
    return ["[VS]", "9202", *events, "[VE]"]


# Lab 3004249 takes bins (real: 1, 1, 2, 3; synthetic: 1, 3 and once no value), lab 3000963 (real: 5, 5;
# synthetic: never), drug 1112807 a duration (real: 7, 30 and once none = 0 days; synthetic: 7, 7).
REAL = [
    [*PROMPT, *visit("3004249", "v:1", "1112807", "dur:7"), "D3", *visit("3004249", "v:1", "3000963", "v:5")],
    [*PROMPT, *visit("3004249", "v:2", "3000963", "v:5", "1112807", "dur:30", "1112807")],
    [*PROMPT, *visit("3004249", "v:3", "4013886", "vc:4181412")],
]
SYNTHETIC = [
    [*PROMPT, *visit("3004249", "v:1", "1112807", "dur:7", "3000963"), "[END]"],
    [*PROMPT, *visit("3004249", "v:3", "3004249", "1112807", "dur:7"), "[END]"],
]


def test_value_profile_reads_the_value_after_each_concept():
    profile = value_profile(pa.array(REAL, pa.list_(pa.string())))
    clinical = profile.concept_ids >= 1_000_000
    assert profile.concept_ids[clinical].tolist() == [
        3004249, 1112807, 3004249, 3000963, 3004249, 3000963, 1112807, 1112807, 3004249, 4013886,
    ]  # fmt: skip
    assert profile.number_bins[clinical].tolist() == [1, 0, 1, 5, 2, 5, 0, 0, 3, 0]
    assert profile.duration_days[clinical].tolist() == [0, 7, 0, 0, 0, 0, 30, 0, 0, 0]
    assert profile.has_category[clinical].tolist() == [False] * 9 + [True]


def test_value_metrics_by_hand():
    real = value_profile(pa.array(REAL, pa.list_(pa.string())))
    synthetic = value_profile(pa.array(SYNTHETIC, pa.list_(pa.string())))
    metrics, table = value_metrics(real, synthetic)
    # 3004249: real bins {1,1,2,3} vs synthetic {1,3}: the CDFs differ most at 1 (0.5 vs 0.5), 2 (0.75 vs 0.5)
    assert table["concept_id"].tolist() == [3004249, 3000963]
    assert table["ks"].tolist()[0] == pytest.approx(0.25)
    assert np.isnan(table["ks"].tolist()[1])  # the synthetic set never gives 3000963 a value
    assert metrics["fidelity_value_ks_median"] == pytest.approx(0.25)
    assert metrics["fidelity_value_concepts_compared"] == 1
    # labs taking numbers: real 6 of 6 occurrences carry one, synthetic 2 of 4
    assert metrics["fidelity_value_share_real"] == 1.0
    assert metrics["fidelity_value_share_synthetic"] == 0.5
    # drug 1112807: real durations {0, 7, 30}, synthetic {7, 7}: the CDFs differ by 1/3 at 0 and at 7
    assert metrics["fidelity_drug_duration_ks"] == pytest.approx(1 / 3)


def test_the_report_carries_value_metrics_only_for_sequences_with_values(make_folder, tmp_path):
    out = tmp_path / "out"
    argv = [
        "--real_data_folder",
        make_folder("real", REAL),
        "--synthetic_data_folder",
        make_folder("syn", SYNTHETIC),
    ]
    assert fidelity.main([*argv, "--output_folder", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["fidelity_value_ks_median"] == pytest.approx(0.25)
    assert (out / "values.parquet").exists()
    plain = [[t for t in p if not t.startswith(("v:", "dur:", "vc:"))] for p in REAL]
    argv = [
        "--real_data_folder",
        make_folder("plain", plain),
        "--synthetic_data_folder",
        make_folder("syn2", SYNTHETIC),
    ]
    assert fidelity.main([*argv, "--output_folder", str(tmp_path / "plain_out")]) == 0
    assert "fidelity_value_ks_median" not in json.loads((tmp_path / "plain_out" / "metrics.json").read_text())
