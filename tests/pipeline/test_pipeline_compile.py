"""The compiled pipelines: committed YAML is current, and the IR asks the cluster for what each step needs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cehrgpt.cli import main
from cehrgpt.pipeline.compile import PIPELINES, compile_pipelines, strip_volatile

REPO = Path(__file__).resolve().parents[2]
COMPILED = REPO / "pipelines" / "compiled"
PRIVACY_TASKS = ["attribute-inference", "member-inference", "nearest-neighbor-inference", "reid-inference"]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compiled")
    compile_pipelines(out, REPO)
    return out


def _load(folder: Path, name: str) -> tuple[dict, dict]:
    spec, platform = yaml.safe_load_all((folder / f"{name}.yaml").read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.mark.parametrize("name", list(PIPELINES))
def test_committed_yaml_is_current(fresh, name):
    committed = COMPILED / f"{name}.yaml"
    assert committed.exists(), f"{committed} missing: run `make compile`"
    assert strip_volatile(committed.read_text()) == strip_volatile((fresh / f"{name}.yaml").read_text()), (
        f"{committed} is stale: run `make compile` and commit the result"
    )


def test_compiling_twice_gives_identical_files(fresh, tmp_path):
    compile_pipelines(tmp_path, REPO, ["synthetic_data"])
    assert (tmp_path / "synthetic_data.yaml").read_text() == (fresh / "synthetic_data.yaml").read_text()


def test_strip_volatile_removes_only_the_sdk_version():
    assert strip_volatile("a: 1\nsdkVersion: kfp-2.17.3\nb: 2\n") == "a: 1\nb: 2\n"


@pytest.mark.parametrize("name", ["synthetic_data", "end_to_end"])
def test_generation_runs_in_a_parallel_for_with_one_gpu_per_task(fresh, name):
    spec, platform = _load(fresh, name)
    loop = spec["root"]["dag"]["tasks"]["for-loop-1"]
    assert loop["iteratorPolicy"] == {"parallelismLimit": 8}
    assert (
        loop["parameterIterator"]["items"]["inputParameter"]
        == "pipelinechannel--plan-generation-shards-Output"
    )
    body = spec["components"]["comp-for-loop-1"]["dag"]["tasks"]
    assert list(body) == ["generate-sequences"]
    assert body["generate-sequences"]["inputs"]["parameters"]["shard_index"] == {
        "componentInputParameter": "pipelinechannel--plan-generation-shards-Output-loop-item",
        "parameterExpressionSelector": 'parseJson(string_value)["shard_index"]',
    }
    resources = spec["deploymentSpec"]["executors"]["exec-generate-sequences"]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert resources["accelerator"]["resourceCount"] == "1"
    assert platform["exec-generate-sequences"]["nodeSelector"] == {
        "nodeSelectorJson": {"componentInputParameter": "pipelinechannel--gpu_node_selector"}
    }
    assert platform["exec-generate-sequences"]["tolerations"] == [
        {"tolerationJson": {"componentInputParameter": "pipelinechannel--gpu_tolerations"}}
    ]
    assert spec["root"]["inputDefinitions"]["parameters"]["gpu_tolerations"]["defaultValue"] == [
        {"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}
    ]


@pytest.mark.parametrize("name", ["training", "end_to_end"])
def test_training_requests_one_gpu(fresh, name):
    spec, _ = _load(fresh, name)
    resources = spec["deploymentSpec"]["executors"]["exec-train-model"]["container"]["resources"]
    assert (resources["accelerator"]["resourceType"], resources["accelerator"]["resourceCount"]) == (
        "nvidia.com/gpu",
        "1",
    )


def test_privacy_and_fidelity_tasks_emit_metrics_and_feed_the_gate(fresh):
    spec, _ = _load(fresh, "synthetic_data")
    tasks = spec["root"]["dag"]["tasks"]
    for task in [*PRIVACY_TASKS, "fidelity-report"]:
        outputs = spec["components"][f"comp-{task}"]["outputDefinitions"]["artifacts"]
        assert outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics", task
        assert task in tasks["privacy-gate"]["dependentTasks"]
        assert "gather-generated-shards" in tasks[task]["dependentTasks"]
        assert "restore-omop-tables" not in tasks[task]["dependentTasks"]  # they run beside the restore
    fidelity_outputs = spec["components"]["comp-fidelity-report"]["outputDefinitions"]["artifacts"]
    assert fidelity_outputs["report"]["artifactType"]["schemaTitle"] == "system.HTML"


def test_upload_is_optional_after_the_gate_with_the_secret_as_env(fresh):
    spec, platform = _load(fresh, "synthetic_data")
    condition = spec["root"]["dag"]["tasks"]["condition-2"]
    assert (
        condition["triggerPolicy"]["condition"]
        == "inputs.parameter_values['pipelinechannel--upload'] == true"
    )
    assert "privacy-gate" in condition["dependentTasks"]
    assert list(spec["components"]["comp-condition-2"]["dag"]["tasks"]) == ["upload-omop-tables"]
    assert platform["exec-upload-omop-tables"]["secretAsEnv"] == [
        {
            "keyToEnv": [
                {"envVar": "CEHRGPT_DB_URL", "secretKey": "url"},
                {"envVar": "CEHRGPT_DB_PASSWORD", "secretKey": "password"},
            ],
            "optional": False,
            "secretNameParameter": {"componentInputParameter": "pipelinechannel--database_secret"},
        }
    ]


@pytest.mark.parametrize("name", list(PIPELINES))
def test_every_container_has_cpu_and_memory_requests_and_limits(fresh, name):
    spec, _ = _load(fresh, name)
    for executor, body in spec["deploymentSpec"]["executors"].items():
        if "importer" in body:
            continue
        resources = body["container"]["resources"]
        for key in ("resourceCpuRequest", "resourceCpuLimit", "resourceMemoryRequest", "resourceMemoryLimit"):
            assert key in resources, f"{executor} lacks {key}"
        assert body["container"]["image"].startswith("ghcr.io/cehrgpt/cehrgpt-"), executor


@pytest.mark.parametrize("name", list(PIPELINES))
def test_every_task_has_a_display_name_and_pinned_caching(fresh, name):
    spec, _ = _load(fresh, name)
    dags = [spec["root"]["dag"], *(c["dag"] for c in spec["components"].values() if "dag" in c)]
    for dag in dags:
        for task_id, task in dag["tasks"].items():
            assert task["taskInfo"]["name"][0].isdigit(), f"{task_id} has no numbered display name"
            if task_id.startswith(("for-loop", "condition", "importer")):
                continue
            assert "cachingOptions" in task, task_id
    tasks = {t: task for dag in dags for t, task in dag["tasks"].items()}
    if "upload-omop-tables" in tasks:
        assert tasks["upload-omop-tables"]["cachingOptions"] == {}  # never cached: it writes to a database
        assert tasks["privacy-gate"]["cachingOptions"] == {}


def test_restore_takes_the_spark_mode_and_sizes(fresh):
    spec, _ = _load(fresh, "end_to_end")
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["spark_mode"]["defaultValue"] == "operator"
    restore = spec["root"]["dag"]["tasks"]["restore-omop-tables"]["inputs"]["parameters"]
    assert restore["spark_mode"] == {"componentInputParameter": "spark_mode"}
    assert restore["executor_instances"] == {"componentInputParameter": "spark_executor_instances"}


def test_seed_flags_are_pipeline_parameters(fresh):
    spec, _ = _load(fresh, "synthetic_data")
    params = spec["root"]["inputDefinitions"]["parameters"]
    seed_flags = {
        "num_of_patients": 128,
        "batch_size": 16,
        "buffer_size": 128,
        "context_window": 4096,
        "sampling_strategy": "TopPStrategy",
        "top_p": 1.0,
        "temperature": 1.0,
        "repetition_penalty": 1.0,
        "epsilon_cutoff": 0.0,
        "n_iterations": 10,
        "num_of_samples": 10000,
    }
    assert {k: params[k]["defaultValue"] for k in seed_flags} == seed_flags


def test_cli_compile_writes_every_pipeline(tmp_path, capsys):
    assert main(["pipeline", "compile", "--output_folder", str(tmp_path), "--repo_root", str(REPO)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "end_to_end.yaml",
        "synthetic_data.yaml",
        "training.yaml",
    ]
    assert capsys.readouterr().out.splitlines() == [str(tmp_path / f"{n}.yaml") for n in PIPELINES]


def test_cli_compile_outside_the_repository_fails_clearly(tmp_path, capsys):
    assert (
        main(["pipeline", "compile", "--output_folder", str(tmp_path / "out"), "--repo_root", str(tmp_path)])
        == 2
    )
    assert capsys.readouterr().err == (
        f"error: pipelines.training not found under {str(tmp_path)!r}: "
        "run from the repository root or pass --repo_root\n"
    )
    assert not (tmp_path / "out" / "training.yaml").exists()


@pytest.mark.parametrize("name", ["synthetic_data", "end_to_end"])
def test_quality_checks_follow_the_restore_and_gate_the_upload(fresh, name):
    spec, _ = _load(fresh, name)
    tasks = spec["root"]["dag"]["tasks"]
    quality = tasks["check-omop-quality"]
    assert (
        quality["dependentTasks"] == sorted(quality["dependentTasks"])
        and "restore-omop-tables" in quality["dependentTasks"]
    )
    assert quality["inputs"]["artifacts"]["restored"]["taskOutputArtifact"] == {
        "outputArtifactKey": "restored",
        "producerTask": "restore-omop-tables",
    }
    outputs = spec["components"]["comp-check-omop-quality"]["outputDefinitions"]["artifacts"]
    assert outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    condition = next(t for t in tasks.values() if t["taskInfo"]["name"] == "6. upload when enabled")
    assert {"check-omop-quality", "privacy-gate"} <= set(condition["dependentTasks"])
    restore = tasks["restore-omop-tables"]["inputs"]["parameters"]
    assert restore["type_concept_id"] == {"componentInputParameter": "type_concept_id"}
    assert spec["root"]["inputDefinitions"]["parameters"]["type_concept_id"]["defaultValue"] == 32817
