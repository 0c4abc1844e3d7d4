"""The four privacy commands and the config command: outputs, reproducibility and every bad input."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pandas as pd
import pytest
import yaml
from analysis_sequences import patient_tokens

from cehrgpt.analysis.privacy import (
    attribute_inference,
    config,
    member_inference,
    nearest_neighbor_inference,
    reid_inference,
)

TRAIN = [
    patient_tokens(30 + i, [101, 102 + i % 3, 201 + i % 2], gender=[8507, 8532][i % 2]) for i in range(8)
]
TEST = [patient_tokens(40 + i, [101, 103, 202 + i % 2], gender=[8507, 8532][i % 2]) for i in range(6)]
SYNTHETIC = [*TRAIN[:5], ["year:2000", "age:3", "8507"]]  # the last row is not a whole patient


@pytest.fixture
def folders(make_folder, tmp_path):
    cfg = tmp_path / "config.yml"
    cfg.write_text(yaml.safe_dump({"common_attributes": ["101", "102"], "sensitive_attributes": [201, 202]}))
    return {
        "train": make_folder("train", TRAIN),
        "test": make_folder("test", TEST),
        "synthetic": make_folder("synthetic", SYNTHETIC),
        "config": str(cfg),
        "out": tmp_path / "out",
    }


def aia_argv(f, **overrides):
    args = {
        "training_data_folder": f["train"],
        "synthetic_data_folder": f["synthetic"],
        "output_folder": str(f["out"]),
        "attribute_config": f["config"],
        "n_iterations": "2",
        "num_of_samples": "4",
        "seed": "5",
        **overrides,
    }
    return [x for k, v in args.items() for x in (f"--{k}", str(v))]


def two_set_argv(f, output_flag="output_folder", **overrides):
    args = {
        "training_data_folder": f["train"],
        "evaluation_data_folder": f["test"],
        "synthetic_data_folder": f["synthetic"],
        output_flag: str(f["out"]),
        "n_iterations": "2",
        "num_of_samples": "4",
        "seed": "5",
        **overrides,
    }
    return [x for k, v in args.items() for x in (f"--{k}", str(v))]


def reid_argv(f, **overrides):
    args = {
        "training_data_folder": f["train"],
        "evaluation_data_folder": f["test"],
        "synthetic_data_folder": f["synthetic"],
        "output_folder": str(f["out"]),
        **overrides,
    }
    return [x for k, v in args.items() for x in (f"--{k}", str(v))]


def metrics_of(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def test_attribute_inference_writes_the_original_table_and_metrics(folders, capsys):
    assert attribute_inference.main(aia_argv(folders)) == 0
    table = pd.read_parquet(folders["out"] / "attribute_inference.parquet")
    assert table.columns.tolist() == attribute_inference.COLUMNS
    assert table["Iteration"].tolist() == [1, 2]
    metrics = metrics_of(folders["out"])
    assert metrics["aia_num_synthetic_patients"] == 5
    assert metrics["aia_num_synthetic_excluded"] == 1
    assert metrics["aia_num_of_samples"] == 4
    captured = capsys.readouterr()
    assert "aia_f1_synthetic_train" in captured.out
    assert "1 row(s) that are not whole patients were excluded" in captured.err


def test_membership_inference_reports_both_thresholds(folders):
    assert member_inference.main(two_set_argv(folders)) == 0
    table = pd.read_parquet(folders["out"] / "membership_inference.parquet")
    assert table["Threshold Type"].tolist() == ["fixed", "median", "fixed", "median"]
    assert {"Iteration", "Accuracy", "Precision", "Recall", "F1"} <= set(table.columns)
    metrics = metrics_of(folders["out"])
    assert {"mia_f1_fixed_threshold", "mia_f1_median_threshold", "mia_f1_above_chance"} <= set(metrics)
    assert metrics["mia_fixed_threshold"] == 5.0
    assert 0.0 <= metrics["mia_auc"] <= 1.0
    curve = json.loads((folders["out"] / "roc_curve.json").read_text())
    assert sorted(curve) == ["fpr", "threshold", "tpr"]
    assert curve["fpr"][0] == 0.0 and curve["fpr"][-1] == 1.0 and curve["tpr"][-1] == 1.0


def test_the_roc_curve_file_logs_on_a_kfp_classification_metrics_artifact(tmp_path):
    from kfp.dsl import ClassificationMetrics

    curve = {"fpr": [0.0, 0.0, 0.5, 1.0], "tpr": [0.0, 0.5, 1.0, 1.0], "threshold": [-1.0, 0.0, 2.0, 4.0]}
    path = tmp_path / "roc_curve.json"
    path.write_text(json.dumps(curve))
    artifact = ClassificationMetrics(name="roc", uri=str(tmp_path / "roc"), metadata={})
    assert member_inference.log_roc_curve_file(str(path), artifact, max_points=3) == 3
    points = artifact.metadata["confidenceMetrics"]
    # thinned evenly, first and last kept: points 0, 1 (of 1.5) and 3
    assert [(p["falsePositiveRate"], p["recall"], p["confidenceThreshold"]) for p in points] == [
        (0.0, 0.0, -1.0),
        (0.0, 0.5, 0.0),
        (1.0, 1.0, 4.0),
    ]


def test_nearest_neighbor_inference_uses_the_seed_flags(folders):
    argv = two_set_argv(folders, output_flag="metrics_folder")
    assert nearest_neighbor_inference.main(argv) == 0
    table = pd.read_parquet(folders["out"] / "nearest_neighbor_inference.parquet")
    assert "NNAAE" in table.columns
    assert len(table) == 2
    assert "nnaa_privacy_loss" in metrics_of(folders["out"])


def test_reid_inference_writes_every_generalisation(folders):
    assert reid_inference.main(reid_argv(folders, attribute_config=folders["config"])) == 0
    table = pd.read_parquet(folders["out"] / "reid_inference.parquet")
    assert table["Config"].tolist() == ["000", "001", "010", "011", "100", "101", "110", "111"]
    assert {"A_term", "B_term"} <= set(table.columns)
    metrics = metrics_of(folders["out"])
    assert metrics["reid_num_common_attributes"] == 2
    assert metrics["reid_num_population_patients"] == 8  # the training set


@pytest.mark.parametrize(
    ("module", "argv"),
    [
        (member_inference, lambda f, s: two_set_argv(f, seed=s)),
        (nearest_neighbor_inference, lambda f, s: two_set_argv(f, output_flag="metrics_folder", seed=s)),
        (attribute_inference, lambda f, s: aia_argv(f, seed=s)),
    ],
)
def test_the_seed_makes_runs_reproducible(folders, module, argv):
    assert module.main(argv(folders, 11)) == 0
    first = (folders["out"] / f"{module.TABLE}.parquet").read_bytes()
    assert module.main(argv(folders, 11)) == 0
    assert (folders["out"] / f"{module.TABLE}.parquet").read_bytes() == first


def test_membership_inference_scores_every_record_by_default(folders, capsys):
    # no --num_of_samples: all 8 members and 6 non-members, unbalanced; the 2 iterations asked would see
    # the same records, so one pass runs and the note says so
    argv = [a for a in two_set_argv(folders) if a not in ("--num_of_samples", "4")]
    assert member_inference.main(argv) == 0
    err = capsys.readouterr().err
    assert (
        "member_inference: every record of both sets is scored; --n_iterations 2 would repeat the same "
        "records, so one pass is run"
    ) in err
    metrics = metrics_of(folders["out"])
    assert (metrics["mia_num_members"], metrics["mia_num_non_members"]) == (8, 6)
    assert (metrics["mia_num_of_samples"], metrics["mia_n_iterations"]) == (8, 1)
    table = pd.read_parquet(folders["out"] / "membership_inference.parquet")
    assert table["Members"].tolist() == [8, 8] and table["Non-members"].tolist() == [6, 6]
    # the release holds members 1-5 verbatim (distance 0); members 7 and 8 sit at 0.16 (another age),
    # member 6 at 8.02 (a concept replaced mid-visit: 2 concepts and 6 timeline shingles), every non-member
    # between 2.36 and 6.87: 7 members are nearer than every non-member, member 6 farther than all 6
    assert metrics["mia_auc"] == pytest.approx(42 / 48) and metrics["mia_tpr_at_fpr_0.01"] == 7 / 8
    # 6 non-members: FPR ≤ 1% admits none; a chance ranking puts x or more members before the first
    # non-member with P = C(8, x)/C(14, x): 28/3003 < 1% for 6, 56/2002 > 1% for 5: 99th percentile 5/8
    assert metrics["mia_tpr_at_fpr_0.01_chance_p99"] == 5 / 8
    assert metrics["mia_tpr_at_fpr_0_01_lift"] == 2 / 8


def test_a_cap_above_every_set_is_no_cap(folders, capsys):
    assert member_inference.main(two_set_argv(folders, num_of_samples=100)) == 0
    assert "--num_of_samples 100" not in capsys.readouterr().err
    metrics = metrics_of(folders["out"])
    assert (metrics["mia_num_members"], metrics["mia_num_non_members"]) == (8, 6)


def test_a_cap_below_a_set_says_which_sets_are_sampled(folders, capsys):
    assert member_inference.main(two_set_argv(folders, num_of_samples=7)) == 0
    assert (
        "member_inference: --num_of_samples 7 is below the patients of training 8; a seeded sample of 7 is "
        "drawn from each such set per iteration"
    ) in capsys.readouterr().err
    metrics = metrics_of(folders["out"])
    assert (metrics["mia_num_of_samples"], metrics["mia_n_iterations"], metrics["mia_num_non_members"]) == (
        7,
        2,
        6,
    )
    argv = two_set_argv(folders, output_flag="metrics_folder", num_of_samples=7)
    assert nearest_neighbor_inference.main(argv) == 0
    metrics = metrics_of(folders["out"])
    # 7 training records in folds of the 6 held-out: 2 folds (the second overlapping the first by 5)
    assert (metrics["nnaa_num_training_records"], metrics["nnaa_num_folds_train"]) == (7, 2)
    assert (metrics["nnaa_num_of_samples"], metrics["nnaa_n_iterations"]) == (6, 2)


def test_a_tokenizer_that_left_a_concept_out_changes_nothing(folders, tmp_path, capsys):
    tokenizer = tmp_path / "model"
    tokenizer.mkdir()
    tokens = {str(c): {"kind": "CONCEPT", "concept_id": c} for c in (101, 102, 201)}
    tokens["8507"] = {"kind": "GENDER", "concept_id": 8507}
    (tokenizer / "token_metadata.json").write_text(json.dumps({"format": "x", "tokens": tokens}))
    assert attribute_inference.main(aia_argv(folders)) == 0
    without = metrics_of(folders["out"])
    # 202 is in the data but not in the model's vocabulary (rare to the tokenizer): the analysis still sees it
    assert attribute_inference.main(aia_argv(folders, tokenizer_path=tokenizer)) == 0
    assert metrics_of(folders["out"]) == without


def run_and_error(module, argv, capsys) -> str:
    assert module.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ")
    return err[-1]


def test_missing_folder(folders, capsys):
    line = run_and_error(member_inference, two_set_argv(folders, training_data_folder="/nope/train"), capsys)
    assert (
        line
        == "error: --training_data_folder '/nope/train' does not exist; expected a folder of sequence parquet"
    )
    assert not folders["out"].exists()


def test_empty_folder(folders, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    argv = two_set_argv(folders, output_flag="metrics_folder", evaluation_data_folder=tmp_path / "empty")
    line = run_and_error(nearest_neighbor_inference, argv, capsys)
    assert "--evaluation_data_folder" in line
    assert "holds no .parquet files" in line


def test_no_parseable_synthetic_patient(folders, make_folder, capsys):
    broken = make_folder("broken", [["year:2000", "age:3"], ["[VS]", "[VE]"]])
    line = run_and_error(reid_inference, reid_argv(folders, synthetic_data_folder=broken), capsys)
    assert "--synthetic_data_folder" in line
    assert "holds no parseable patient (2 row(s) excluded" in line


def test_config_naming_unknown_concepts(folders, tmp_path, capsys):
    cfg = tmp_path / "bad.yml"
    cfg.write_text(yaml.safe_dump({"common_attributes": [101, 999], "sensitive_attributes": [201]}))
    line = run_and_error(attribute_inference, aia_argv(folders, attribute_config=cfg), capsys)
    assert "common_attributes names 1 concept(s) unknown to the data and vocabulary (999)" in line


@pytest.mark.parametrize("module,argv", [(attribute_inference, aia_argv), (reid_inference, reid_argv)])
def test_a_config_naming_unknown_concepts_names_the_command_that_derives_one(
    folders, tmp_path, capsys, monkeypatch, module, argv
):
    cfg = tmp_path / "bad.yml"
    cfg.write_text(yaml.safe_dump({"common_attributes": [101, 999], "sensitive_attributes": [201]}))
    line = run_and_error(module, argv(folders, attribute_config=cfg), capsys)
    command = (
        f"python -m cehrgpt.analysis.privacy.config --training_data_folder {folders['train']} "
        "--output attribute_config.yml"
    )
    assert line == (
        f"error: --attribute_config '{cfg}': common_attributes names 1 concept(s) unknown to the data and "
        "vocabulary (999); expected concept ids that occur in the patient sequences; "
        f"derive a config from this training data with `{command}`"
    )
    monkeypatch.chdir(tmp_path)  # the command, as the user would run it, writes a config the analysis accepts
    small_data = ["--num_common", "1", "--num_sensitive", "2", "--min_sensitive_patients", "1"]
    assert config.main([*shlex.split(command)[3:], *small_data]) == 0
    assert module.main(argv(folders, attribute_config=tmp_path / "attribute_config.yml")) == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("common_attributes: [101]\n", "sensitive_attributes is None; expected a non-empty list"),
        ("- 1\n- 2\n", "holds list; expected a mapping"),
        ("common_attributes: [x]\nsensitive_attributes: [201]\n", "holds a non-concept id"),
    ],
)
def test_malformed_config(folders, tmp_path, capsys, content, message):
    cfg = tmp_path / "bad.yml"
    cfg.write_text(content)
    assert message in run_and_error(attribute_inference, aia_argv(folders, attribute_config=cfg), capsys)


def test_missing_config_and_tokenizer(folders, capsys):
    line = run_and_error(attribute_inference, aia_argv(folders, attribute_config="/nope.yml"), capsys)
    assert line == "error: --attribute_config '/nope.yml' does not exist; expected a yml file"
    argv = two_set_argv(folders, output_flag="metrics_folder", concept_tokenizer_path="/nope/model")
    line = run_and_error(nearest_neighbor_inference, argv, capsys)
    assert line == "error: --concept_tokenizer_path '/nope/model' does not exist; expected a tokenizer folder"


@pytest.mark.parametrize(("flag", "value"), [("n_iterations", "0"), ("num_of_samples", "0")])
@pytest.mark.parametrize("module", [member_inference, nearest_neighbor_inference])
def test_non_positive_counts(folders, capsys, flag, value, module):
    output_flag = "metrics_folder" if module is nearest_neighbor_inference else "output_folder"
    line = run_and_error(module, two_set_argv(folders, output_flag=output_flag, **{flag: value}), capsys)
    assert line == f"error: --{flag} is 0; expected a positive " + (
        "integer" if flag == "n_iterations" else "number of patients"
    )
    assert not folders["out"].exists()


def test_config_command_writes_a_yml_the_analyses_read(folders, tmp_path, capsys):
    output = tmp_path / "derived.yml"
    argv = ["--training_data_folder", folders["train"], "--output", str(output)]
    argv += ["--num_common", "1", "--num_sensitive", "2", "--min_sensitive_patients", "1"]
    assert config.main(argv) == 0
    # prevalence in TRAIN: 101 8/8; 201 4/8, 202 4/8 (not under ½); 102 3/8, 103 3/8, 104 2/8
    assert yaml.safe_load(output.read_text()) == {
        "common_attributes": ["101"],
        "sensitive_attributes": ["102", "103"],
    }
    assert attribute_inference.main(aia_argv(folders, attribute_config=output)) == 0
    capsys.readouterr()
    assert config.main([*argv[:4], "--num_common", "1", "--num_sensitive", "9"]) == 2
    assert capsys.readouterr().err == (
        "error: --num_sensitive 9: only 0 concept(s) below the common ones have a prevalence under 0.5 "
        "and at least 5 patients\n"
    )


@pytest.mark.parametrize(
    "module", [attribute_inference, member_inference, nearest_neighbor_inference, reid_inference, config]
)
def test_help(module, capsys):
    with pytest.raises(SystemExit) as exited:
        module.main(["--help"])
    assert exited.value.code == 0
    assert "--training_data_folder" in capsys.readouterr().out


def test_hidden_and_temporary_folders_are_not_data(folders):
    for hidden in (".staging-1", "_temporary"):
        (Path(folders["synthetic"]) / hidden).mkdir()
        (Path(folders["synthetic"]) / hidden / "part-9.parquet").write_bytes(b"not parquet")
    assert member_inference.main(two_set_argv(folders)) == 0
    assert metrics_of(folders["out"])["mia_num_synthetic_patients"] == 5
