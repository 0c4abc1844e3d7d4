"""The DAG picture from compiled IR, and the kfp.local runner's input checks and output listing."""

from __future__ import annotations

from pathlib import Path

from cehrgpt.pipeline.dag import mermaid_from_ir
from cehrgpt.pipeline.local import _artifacts, _reachable, main

TINY_IR = {
    "components": {
        "comp-a": {"executorLabel": "exec-a"},
        "comp-b": {"executorLabel": "exec-b"},
        "comp-for-loop-1": {
            "dag": {"tasks": {"b": {"componentRef": {"name": "comp-b"}, "taskInfo": {"name": "2. b"}}}}
        },
    },
    "root": {
        "dag": {
            "tasks": {
                "a": {"componentRef": {"name": "comp-a"}, "taskInfo": {"name": '1. "a"'}},
                "for-loop-1": {
                    "componentRef": {"name": "comp-for-loop-1"},
                    "taskInfo": {"name": "2. shards"},
                    "iteratorPolicy": {"parallelismLimit": 4},
                    "dependentTasks": ["a"],
                },
            }
        }
    },
}


def test_mermaid_from_ir_draws_tasks_loops_and_edges():
    assert mermaid_from_ir(TINY_IR) == (
        "flowchart TD\n"
        "  a[\"1. 'a'\"]\n"
        '  subgraph for_loop_1["2. shards (≤ 4 at once)"]\n'
        '    b["2. b"]\n'
        "  end\n"
        "  a --> for_loop_1\n"
    )


def test_paths_naming_the_interpreter_are_reached_through_a_symlink(tmp_path):
    target = tmp_path / "lib" / "python3.11" / "eunomia.duckdb"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"db")
    link = _reachable(target, tmp_path / "inputs")
    assert link == tmp_path / "inputs" / "eunomia.duckdb" and link.read_bytes() == b"db"
    assert _reachable(tmp_path / "plain.duckdb", tmp_path / "inputs") == tmp_path / "plain.duckdb"


def test_artifacts_lists_outputs_of_finished_tasks_only(tmp_path):
    run = tmp_path / "cehrgpt-end-to-end-2026"
    for task, outputs in {
        "prepare-sequences": ["prepared", "metrics"],
        "for-loop-1-iteration-0/generate-sequences": ["generated"],
    }.items():
        for output in outputs:
            (run / task / output).mkdir(parents=True)
        (run / task / "executor_output.json").write_text("{}")
    (run / "privacy-gate" / "verdict").mkdir(parents=True)  # failed: no executor_output.json
    assert _artifacts(run) == {
        "for-loop-1-iteration-0/generate-sequences/generated": str(
            run / "for-loop-1-iteration-0/generate-sequences/generated"
        ),
        "prepare-sequences/metrics": str(run / "prepare-sequences/metrics"),
        "prepare-sequences/prepared": str(run / "prepare-sequences/prepared"),
    }


def test_local_run_with_a_missing_source_fails_before_running(tmp_path, capsys):
    assert main(["--omop_source", str(tmp_path / "nope.duckdb"), "--output_root", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (
        f"error: OMOP source '{tmp_path / 'nope.duckdb'}' does not exist (expected a folder, a DuckDB file or a URL)\n"
    )
    assert not (tmp_path / "out").exists()


def test_local_run_outside_the_repository_fails_clearly(tmp_path, capsys):
    source = tmp_path / "cdm.duckdb"
    source.write_bytes(b"")
    argv = [
        "--omop_source",
        str(source),
        "--output_root",
        str(tmp_path / "out"),
        "--repo_root",
        str(tmp_path),
    ]
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith(
        f"error: pipelines.end_to_end not found under {str(tmp_path)!r}"
    )
    assert not (tmp_path / "out").exists()


def test_docs_embed_the_current_dag():
    import yaml

    repo = Path(__file__).resolve().parents[2]
    spec = next(yaml.safe_load_all((repo / "pipelines" / "compiled" / "end_to_end.yaml").read_text()))
    assert mermaid_from_ir(spec) in (repo / "docs" / "kubeflow.md").read_text(), (
        "regenerate the DAG in docs/kubeflow.md"
    )


def test_plan_component_runs_under_kfp_local(tmp_path):
    import importlib
    import warnings

    from kfp import local

    from cehrgpt.pipeline.compile import load_pipeline

    load_pipeline(
        "synthetic_data", Path(__file__).resolve().parents[2]
    )  # puts the repository root on sys.path
    generation = importlib.import_module("components.generation")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        task = generation.plan_generation_shards(num_of_patients=10, num_shards=3)
    assert task.output == [
        {"shard_index": 0, "num_shards": 3, "num_of_patients": 4},
        {"shard_index": 1, "num_shards": 3, "num_of_patients": 3},
        {"shard_index": 2, "num_shards": 3, "num_of_patients": 3},
    ]
