"""Every component body runs under ``kfp.local``: the ``end_to_end`` DAG once, on Eunomia, with a 2-step model.

One session-scoped run (Spark in local mode, torch on the CPU, the upload into DuckDB) executes every
component the pipelines use, so a broken component body fails the tests, not a cluster run. The tasks
expected are read from the compiled ``end_to_end`` IR, so a component added to the pipeline is covered
without touching this file.
"""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
import yaml

from cehrgpt.pipeline.local import run_end_to_end_locally

REPO = Path(__file__).resolve().parents[2]
PATIENTS = 8
PRINT = builtins.print


def _tasks_with_a_body(spec: dict) -> set[str]:
    """Names of the tasks whose component is a container (not a loop or condition), at any depth."""
    components = spec["components"]
    names = set()

    def walk(dag: dict) -> None:
        for name, task in dag.get("tasks", {}).items():
            component = components[task["componentRef"]["name"]]
            if "dag" in component:
                walk(component["dag"])
            else:
                names.add(name)

    walk(spec["root"]["dag"])
    return names


@pytest.fixture(scope="session")
def local_run(tmp_path_factory) -> dict:
    from cehrgpt.analysis.gate import DEFAULT_THRESHOLDS, NO_LIMIT
    from cehrgpt.demo import eunomia_path

    return run_end_to_end_locally(
        eunomia_path(),
        tmp_path_factory.mktemp("kfp_local"),
        repo_root=REPO,
        enable_caching=False,
        max_steps=2,
        train_batch_size=2,
        train_context_window=64,
        num_of_patients=PATIENTS,
        num_shards=2,
        batch_size=4,
        buffer_size=2,
        context_window=64,
        n_iterations=1,
        num_of_samples=20,
        # 8 patients measure no privacy: every gate threshold off (the gate still runs and must pass)
        **{f"max_{metric}": NO_LIMIT for metric in DEFAULT_THRESHOLDS},
        seed=1,
    )


def test_every_component_body_ran_and_succeeded(local_run):
    spec = next(yaml.safe_load_all((REPO / "pipelines" / "compiled" / "end_to_end.yaml").read_text()))
    expected = _tasks_with_a_body(spec)
    finished = {p.parent.name for p in Path(local_run["run_folder"]).rglob("executor_output.json")}
    assert expected - finished == set(), "these component bodies did not finish under kfp.local"
    assert local_run["status"] == "succeeded" and local_run["gate_passed"]
    assert builtins.print is PRINT  # kfp.local's per-task print indentation does not outlive the run


def test_generation_pods_read_the_prompts_artifact_and_the_shards_add_up(local_run):
    outputs = local_run["outputs"]
    prompts = pq.read_table(outputs["prepare-sequences/prompts"])
    assert (
        prompts.column_names == ["concept_ids"]
        and max(len(p) for p in prompts.column("concept_ids").to_pylist()) == 4
    )
    assert sorted(
        p.name for p in Path(outputs["prepare-sequences/vocabulary"]).iterdir() if not p.name.startswith(".")
    ) == ["concept", "value_bins.json"]  # the value bins travel with the vocabulary to the restore
    gathered = Path(outputs["gather-generated-shards/sequences"])
    summary = json.loads((gathered / "generation_summary.json").read_text())
    assert summary["total_patients"] == PATIENTS
    shards = sorted(Path(local_run["run_folder"]).rglob("generate-sequences/executor_output.json"))
    assert len(shards) == 2
    assert [s["patients"] for s in summary["shards"]] == [PATIENTS // 2, PATIENTS // 2]


def test_the_restored_patients_reached_the_database(local_run):
    with duckdb.connect(local_run["outputs"]["database"], read_only=True) as db:
        schemas = [
            r[0]
            for r in db.execute(
                "select distinct table_schema from information_schema.tables where table_name = 'person'"
            ).fetchall()
        ]
        assert schemas
        persons = db.execute(f'select count(*) from "{schemas[0]}".person').fetchone()[0]
    assert persons == PATIENTS
