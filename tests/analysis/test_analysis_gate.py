"""The release gate: passes, breaches, missing metrics and threshold sources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cehrgpt.analysis import gate

SAFE = {
    "memorization_copy_excess": 0.0,
    "memorization_shifted_copy_excess": 0.0,
    "memorization_near_copy_excess_lower": -0.004,
    "memorization_dcr_closer_to_train_share": 0.51,
    "mia_auc": 0.52,
    "mia_tpr_at_fpr_0_01_lift": -0.02,
    "model_mia_auc": 0.51,
    "mia_f1_above_chance": 0.03,
    "nnaa_privacy_loss": 0.01,
    "aia_f1_lift_over_holdout": -0.02,
    "reid_risk": 0.02,
    "nnaa_num_of_samples": 100,
}
CHECKED = [name for name, maximum in gate.DEFAULT_THRESHOLDS.items() if maximum is not None]
assert (
    len(CHECKED) == 10
)  # copies, shifted copies, near copies, MIA AUC, F1 and tail, the model, NNAA, AIA, re-id


def metrics_folder(root: Path, name: str, metrics: dict) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_passing_prints_ok_and_writes_gate_json(tmp_path, capsys):
    reid = metrics_folder(tmp_path, "reid", {"reid_risk": 0.02})
    other = metrics_folder(tmp_path, "nnaa", {k: v for k, v in SAFE.items() if k != "reid_risk"})
    assert gate.main(["--metrics", str(reid), str(other / "metrics.json")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"OK: {len(CHECKED)} privacy threshold(s) met ({', '.join(CHECKED)})"]
    report = json.loads((tmp_path / "gate.json").read_text())  # the folder holding both inputs
    assert report["passed"] is True
    assert [c["metric"] for c in report["checks"]] == CHECKED


def test_each_breach_is_one_line_and_exits_non_zero(tmp_path, capsys):
    folder = metrics_folder(tmp_path, "all", {**SAFE, "reid_risk": 0.25, "mia_f1_above_chance": 0.4})
    assert gate.main(["--metrics", str(folder), "--output_folder", str(tmp_path / "g")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "BREACH mia_f1_above_chance = 0.4000 > threshold 0.1",
        "BREACH reid_risk = 0.2500 > threshold 0.09",
    ]
    assert json.loads((tmp_path / "g" / "gate.json").read_text())["passed"] is False


def test_flags_and_yml_set_thresholds(tmp_path, capsys):
    folder = metrics_folder(tmp_path, "all", {**SAFE, "reid_risk": 0.25})
    thresholds = tmp_path / "thresholds.yml"
    thresholds.write_text("reid_risk: 0.3\nnnaa_privacy_loss: null\nnnaa_num_of_samples: 50\n")
    # yml: reid passes at 0.3, NNAA off, a new maximum on the sample size (100 > 50) breaches
    assert gate.main(["--metrics", str(folder), "--thresholds", str(thresholds)]) == 1
    assert capsys.readouterr().err.strip() == "BREACH nnaa_num_of_samples = 100.0000 > threshold 50.0"
    # a flag wins over the yml
    argv = ["--metrics", str(folder), "--thresholds", str(thresholds), "--max_reid_risk", "0.2"]
    thresholds.write_text("reid_risk: 0.3\n")
    assert gate.main(argv) == 1
    assert capsys.readouterr().err.strip() == "BREACH reid_risk = 0.2500 > threshold 0.2"


def test_a_missing_metric_is_an_error(tmp_path, capsys):
    folder = metrics_folder(tmp_path, "reid", {"reid_risk": 0.01})
    assert gate.main(["--metrics", str(folder)]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: metric 'memorization_copy_excess' needed by a threshold is missing or not a finite number (None); "
        "expected it in one of the --metrics files"
    )


def test_the_utility_threshold_is_off_by_default_and_a_flag_switches_it_on(tmp_path, capsys):
    folder = metrics_folder(tmp_path, "all", {**SAFE, "utility_auroc_gap_mean": 0.3})
    assert gate.main(["--metrics", str(folder)]) == 0
    capsys.readouterr()
    assert gate.main(["--metrics", str(folder), "--max_utility_auroc_gap_mean", "0.1"]) == 1
    assert capsys.readouterr().err.strip() == "BREACH utility_auroc_gap_mean = 0.3000 > threshold 0.1"


def test_a_maximum_of_one_is_off_and_needs_no_metric(tmp_path, capsys):
    """The pipelines pass ``max_<metric>`` = 1.0 (NO_LIMIT) for the thresholds that are off."""
    folder = metrics_folder(tmp_path, "all", SAFE)  # no utility metric (a small run: no task)
    argv = ["--metrics", str(folder), "--max_utility_auroc_gap_mean", str(gate.NO_LIMIT)]
    assert gate.main(argv) == 0
    assert (
        capsys.readouterr().out.strip()
        == f"OK: {len(CHECKED)} privacy threshold(s) met ({', '.join(CHECKED)})"
    )
    assert gate.main([*argv[:2], "--max_utility_auroc_gap_mean", "0.99"]) == 2
    assert "metric 'utility_auroc_gap_mean' needed by a threshold is missing" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda root: str(root / "nowhere"), "has no metrics.json; expected an analysis output"),
        (lambda root: str(metrics_folder(root, "x", [1, 2])), "holds list; expected name → number"),
    ],
)
def test_bad_metrics_inputs(tmp_path, capsys, setup, message):
    assert gate.main(["--metrics", setup(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_bad_thresholds_file(tmp_path, capsys):
    folder = metrics_folder(tmp_path, "all", SAFE)
    thresholds = tmp_path / "t.yml"
    thresholds.write_text("reid_risk: high\n")
    assert gate.main(["--metrics", str(folder), "--thresholds", str(thresholds)]) == 2
    assert "reid_risk is 'high'; expected a number or null" in capsys.readouterr().err


def test_conflicting_metric_values(tmp_path, capsys):
    a = metrics_folder(tmp_path, "a", SAFE)
    b = metrics_folder(tmp_path, "b", {"reid_risk": 0.5})
    assert gate.main(["--metrics", str(a), str(b)]) == 2
    assert "metric 'reid_risk' is 0.02 in one file and 0.5 in" in capsys.readouterr().err


def test_help(capsys):
    with pytest.raises(SystemExit) as exited:
        gate.main(["--help"])
    assert exited.value.code == 0
    assert "--max_reid_risk" in capsys.readouterr().out
