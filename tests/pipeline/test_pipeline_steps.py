"""What component bodies call: command lines, exit codes, metrics, gathering the generation shards."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from kfp.dsl import Metrics

from cehrgpt.analysis.gate import DEFAULT_THRESHOLDS
from cehrgpt.pipeline.steps import (
    HEADLINE_METRICS,
    StageFailed,
    database_target,
    flags,
    flatten_metrics,
    gather_generated_shards,
    log_metrics_json,
    run_stage,
    shown_in_metrics_panel,
    spark_uri,
)


def test_flags_keep_order_and_drop_unset_values():
    assert flags(model_folder="/m", top_k=None, top_p=0.95, resume=True, quiet=False, seed=0) == [
        "--model_folder", "/m", "--top_p", "0.95", "--resume", "--seed", "0",
    ]  # fmt: skip


def test_run_stage_passes_argv_and_fails_on_a_non_zero_exit():
    seen = []
    run_stage("prepare", lambda argv: seen.append(argv) or 0, ["--a", "1"])
    assert seen == [["--a", "1"]]
    with pytest.raises(StageFailed, match=r"^stage restore exited with code 3$"):
        run_stage("restore", lambda argv: 3, [])


def test_flatten_metrics_keeps_finite_numbers_with_dotted_names():
    report = {
        "rows": {"person": 10, "death": 0},
        "valid_fraction": 0.5,
        "ok": True,
        "name": "x",
        "bad": float("nan"),
    }
    assert flatten_metrics(report) == {"rows.person": 10, "rows.death": 0, "valid_fraction": 0.5, "ok": 1.0}


def test_log_metrics_json_logs_and_writes_the_artifact_file(tmp_path):
    report = tmp_path / "metrics.json"
    report.write_text(json.dumps({"nnaa": {"privacy_loss": 0.01}, "aa_test": 0.52}))
    metrics = Metrics(name="metrics", uri=str(tmp_path / "task" / "metrics"))
    assert log_metrics_json(report, metrics) == {"nnaa.privacy_loss": 0.01, "aa_test": 0.52}
    assert metrics.metadata == {"nnaa.privacy_loss": 0.01, "aa_test": 0.52}
    assert json.loads((tmp_path / "task" / "metrics").read_text()) == {
        "aa_test": 0.52,
        "nnaa.privacy_loss": 0.01,
    }


def _shard(root: Path, index: int, files: list[str], summary: dict, strategy: str = "top_p10000") -> Path:
    folder = root / f"shard{index}"
    sequences = folder / strategy / "generated_sequences"
    sequences.mkdir(parents=True)
    for name in files:
        (sequences / name).write_bytes(f"{index}:{name}".encode())
    (folder / strategy / "generation_summary.json").write_text(json.dumps(summary))
    return folder


def test_gather_copies_every_shard_without_collisions_and_sums_the_summaries(tmp_path):
    shards = [
        _shard(
            tmp_path,
            0,
            ["part-0.parquet", "part-1.parquet"],
            {"patients": 3, "tokens": 100, "valid_fraction": 1.0},
        ),
        _shard(tmp_path, 1, ["part-0.parquet"], {"patients": 2, "tokens": 50, "valid_fraction": 1.0}),
    ]
    merged = gather_generated_shards(shards, tmp_path / "out")
    files = sorted(p.name for p in (tmp_path / "out" / "generated_sequences").iterdir())
    assert files == ["shard-00000-part-0.parquet", "shard-00000-part-1.parquet", "shard-00001-part-0.parquet"]
    assert (
        tmp_path / "out" / "generated_sequences" / "shard-00001-part-0.parquet"
    ).read_text() == "1:part-0.parquet"
    assert merged["strategy"] == "top_p10000"
    assert (merged["num_shards"], merged["total_patients"], merged["total_tokens"]) == (2, 5, 150)
    assert merged["mean_valid_fraction"] == 1.0
    assert json.loads((tmp_path / "out" / "generation_summary.json").read_text()) == merged


def test_gather_rejects_a_shard_without_output_and_mixed_strategies(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        ValueError,
        match=r"shard 0 \(.*empty\) should hold exactly one <strategy>/generated_sequences folder, found 0",
    ):
        gather_generated_shards([tmp_path / "empty"], tmp_path / "out")
    shards = [
        _shard(tmp_path, 0, ["a.parquet"], {}),
        _shard(tmp_path, 1, ["a.parquet"], {}, strategy="top_k300"),
    ]
    with pytest.raises(ValueError, match=r"different strategies: \['top_k300', 'top_p10000'\]"):
        gather_generated_shards(shards, tmp_path / "out2")


def test_spark_uri_maps_object_store_schemes_to_s3a():
    assert spark_uri("minio://mlpipeline/v2/a") == "s3a://mlpipeline/v2/a"
    assert spark_uri("s3://b/k") == "s3a://b/k"
    assert spark_uri("gs://b/k") == "gs://b/k"
    assert spark_uri("/local/path") == "/local/path"


def test_database_target_prefers_the_parameter_then_the_secret():
    assert database_target("duckdb:///a.duckdb", {"CEHRGPT_DB_URL": "postgresql://x"}) == "duckdb:///a.duckdb"
    assert database_target("", {"CEHRGPT_DB_URL": "postgresql://x"}) == "postgresql://x"
    with pytest.raises(StageFailed, match=r"no upload target: set the pipeline parameter upload_target"):
        database_target("", {})


def test_shard_counts_are_summed_and_fractions_weighted_by_patients():
    from cehrgpt.pipeline.steps import combine_shard_figures

    shards = [
        {"patients": 3, "valid_fraction": 1.0, "tokens_per_second": 10.0, "ok": True},
        {"patients": 1, "valid_fraction": 0.5, "tokens_per_second": 30.0, "device": "cpu"},
    ]
    assert combine_shard_figures(shards) == {
        "total_patients": 4,
        "mean_valid_fraction": 0.875,
        "mean_tokens_per_second": 15.0,
    }


def test_the_metrics_panel_shows_an_analysis_headlines_and_the_file_keeps_everything(tmp_path):
    report = tmp_path / "metrics.json"
    report.write_text(json.dumps({
        "mia_auc": 0.51, "mia_advantage": 0.02, "mia_num_of_samples": 500, "mia_n_iterations": 2,
        "reid_risk": 0.03, "reid_num_population_patients": 40, "rows": {"person": 10},
    }))  # fmt: skip
    metrics = Metrics(name="metrics", uri=str(tmp_path / "task" / "metrics"))
    everything = log_metrics_json(report, metrics)
    assert metrics.metadata == {"mia_auc": 0.51, "mia_advantage": 0.02, "reid_risk": 0.03, "rows.person": 10}
    assert json.loads((tmp_path / "task" / "metrics").read_text()) == everything
    assert everything["mia_num_of_samples"] == 500 and everything["reid_num_population_patients"] == 40


def test_every_headline_the_analyses_report_is_in_the_allowlist():
    headlines = set().union(*HEADLINE_METRICS.values())
    expected = {  # the names the analyses write (privacy, utility, fidelity, quality)
        "memorization_copy_share_train", "memorization_copy_excess", "memorization_dcr_closer_to_train_share",
        "mia_auc", "mia_advantage", "mia_f1_above_chance", "aia_f1_lift_over_holdout", "aia_f1_advantage",
        "nnaa_privacy_loss", "reid_risk",
        "utility_tstr_auroc_mean", "utility_trtr_auroc_mean", "utility_auroc_gap_mean",
        "fidelity_prevalence_kl", "fidelity_cooccurrence_kl",
        "quality_checks", "quality_passed", "quality_failed",
    }  # fmt: skip
    assert expected <= headlines
    assert all(shown_in_metrics_panel(name) for name in headlines)
    # whatever the gate reads is on the run's Metrics panel, where runs are compared
    assert all(shown_in_metrics_panel(name) for name in DEFAULT_THRESHOLDS)
    assert not any(
        shown_in_metrics_panel(n) for n in ("mia_n_iterations", "aia_num_of_samples", "utility_num_tasks")
    )


def _cdm(folder, year_of_birth: int):
    """A one-person CDM: person, observation period, a visit and death, in the restore's layout."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cehrgpt.omop.cdm import cdm_fields

    types = {
        "integer": pa.int64(),
        "date": pa.date32(),
        "datetime": pa.timestamp("us"),
        "float": pa.float64(),
    }
    values = {
        "person": {"person_id": 1, "gender_concept_id": 8532, "year_of_birth": year_of_birth,
                   "race_concept_id": 0, "ethnicity_concept_id": 0},
        "observation_period": {"observation_period_id": 1, "person_id": 1,
                               "observation_period_start_date": dt.date(1990, 1, 1),
                               "observation_period_end_date": dt.date(2000, 1, 1), "period_type_concept_id": 32817},
        "visit_occurrence": {"visit_occurrence_id": 1, "person_id": 1, "visit_concept_id": 9202,
                             "visit_start_date": dt.date(1999, 1, 1), "visit_end_date": dt.date(1999, 1, 1),
                             "visit_type_concept_id": 32817},
        "death": {"person_id": 1, "death_date": dt.date(2000, 1, 1), "death_type_concept_id": 32817},
    }  # fmt: skip
    for table, row in values.items():
        (folder / table).mkdir(parents=True)
        columns = {
            f.name: pa.array([row.get(f.name)], types.get(f.datatype, pa.string())) for f in cdm_fields(table)
        }
        pq.write_table(pa.table(columns), folder / table / "part-0.parquet")
    return folder


def test_quality_step_logs_the_summary_and_fails_the_task_on_a_failed_check(tmp_path):
    from cehrgpt.pipeline.steps import StageFailed, run_quality_step

    prepared = tmp_path / "vocabulary"  # absent: the vocabulary checks are left out
    metrics = Metrics(name="metrics", uri=str(tmp_path / "task" / "metrics"))
    run_quality_step(_cdm(tmp_path / "good", 1950), prepared, tmp_path / "q1", metrics)
    logged = json.loads(Path(metrics.path).read_text())
    assert logged["quality_failed"] == 0 and logged["quality_passed"] == logged["quality_checks"] > 10
    bad = Metrics(name="metrics", uri=str(tmp_path / "task2" / "metrics"))
    with pytest.raises(StageFailed, match="stage quality exited with code 1"):
        run_quality_step(_cdm(tmp_path / "bad", 1850), prepared, tmp_path / "q2", bad)  # died at 150
    assert json.loads(Path(bad.path).read_text())["quality_failed"] == 1
    assert (tmp_path / "q2" / "quality_report.json").exists()
