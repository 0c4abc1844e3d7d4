"""The compiled pipelines: committed YAML is current, and the IR asks the cluster for what each step needs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cehrgpt.cli import main
from cehrgpt.pipeline.compile import PIPELINES, compile_pipelines, strip_volatile

REPO = Path(__file__).resolve().parents[2]
COMPILED = REPO / "pipelines" / "compiled"
PRIVACY_TASKS = [
    "attribute-inference",
    "member-inference",
    "nearest-neighbor-inference",
    "reid-inference",
    "memorization",
]


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
    for task in [*PRIVACY_TASKS, "fidelity-report", "utility"]:
        outputs = spec["components"][f"comp-{task}"]["outputDefinitions"]["artifacts"]
        assert outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics", task
        assert task in tasks["privacy-gate"]["dependentTasks"]
        assert "gather-generated-shards" in tasks[task]["dependentTasks"]
        assert "restore-omop-tables" not in tasks[task]["dependentTasks"]  # they run beside the restore
    fidelity_outputs = spec["components"]["comp-fidelity-report"]["outputDefinitions"]["artifacts"]
    assert fidelity_outputs["report"]["artifactType"]["schemaTitle"] == "system.HTML"
    utility_outputs = spec["components"]["comp-utility"]["outputDefinitions"]["artifacts"]
    assert utility_outputs["report"]["artifactType"]["schemaTitle"] == "system.HTML"
    mia_outputs = spec["components"]["comp-member-inference"]["outputDefinitions"]["artifacts"]
    assert mia_outputs["roc"]["artifactType"]["schemaTitle"] == "system.ClassificationMetrics"


@pytest.mark.parametrize(
    ("name", "after", "step"),
    [
        ("training", "train-model", "3"),
        ("end_to_end", "train-model", "3"),
        ("synthetic_data", "importer", "2"),
    ],
)
def test_model_memorization_scores_the_model_on_one_gpu_before_generation(fresh, name, after, step):
    from cehrgpt.pipeline.images import GPU_IMAGE

    spec, platform = _load(fresh, name)
    tasks = spec["root"]["dag"]["tasks"]
    task = tasks["model-memorization"]
    assert task["taskInfo"]["name"] == f"{step}. privacy: model memorisation (1 GPU)"
    assert sorted(task["inputs"]["artifacts"]) == ["model", "prepared"]
    assert task["inputs"]["parameters"]["seed"] == {"componentInputParameter": "seed"}
    assert task["cachingOptions"] == {"enableCache": True}
    if after == "train-model":
        assert sorted(task["dependentTasks"]) == ["prepare-sequences", "train-model"]
        assert task["inputs"]["artifacts"]["model"]["taskOutputArtifact"] == {
            "outputArtifactKey": "model",
            "producerTask": "train-model",
        }
    else:
        assert sorted(task["dependentTasks"]) == ["importer", "importer-2"]
    outputs = spec["components"]["comp-model-memorization"]["outputDefinitions"]["artifacts"]
    assert outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    assert outputs["results"]["artifactType"]["schemaTitle"] == "system.Dataset"
    container = spec["deploymentSpec"]["executors"]["exec-model-memorization"]["container"]
    assert container["image"] == GPU_IMAGE
    assert (
        container["resources"]["accelerator"]["resourceType"],
        container["resources"]["accelerator"]["resourceCount"],
    ) == ("nvidia.com/gpu", "1")
    assert platform["exec-model-memorization"]["tolerations"] == [
        {"tolerationJson": {"componentInputParameter": "gpu_tolerations"}}
    ]
    if name != "training":  # the gate reads its metrics
        gate = tasks["privacy-gate"]
        assert "model-memorization" in gate["dependentTasks"]
        assert gate["inputs"]["artifacts"]["model_memorization"] == {
            "taskOutputArtifact": {"outputArtifactKey": "results", "producerTask": "model-memorization"}
        }
        assert gate["inputs"]["parameters"]["max_model_mia_auc"] == {
            "componentInputParameter": "max_model_mia_auc"
        }
    else:
        assert "privacy-gate" not in tasks


@pytest.mark.parametrize("name", ["synthetic_data", "end_to_end"])
def test_every_gate_threshold_is_a_pipeline_parameter_with_the_gate_default(fresh, name):
    from cehrgpt.analysis.gate import DEFAULT_THRESHOLDS, NO_LIMIT

    spec, _ = _load(fresh, name)
    params = spec["root"]["inputDefinitions"]["parameters"]
    gate_inputs = spec["root"]["dag"]["tasks"]["privacy-gate"]["inputs"]["parameters"]
    for metric, maximum in DEFAULT_THRESHOLDS.items():
        flag = f"max_{metric}"
        assert params[flag]["defaultValue"] == (NO_LIMIT if maximum is None else maximum), flag
        assert gate_inputs[flag] == {"componentInputParameter": flag}
    assert params["utility_num_tasks"]["defaultValue"] == 10


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


@pytest.mark.parametrize("name", ["training", "end_to_end"])
def test_small_cell_suppression_is_a_training_parameter(fresh, name):
    from cehrgpt.models.tokenizer import DEFAULT_MIN_CONCEPT_PATIENTS

    spec, _ = _load(fresh, name)
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["min_concept_patients"]["defaultValue"] == DEFAULT_MIN_CONCEPT_PATIENTS == 10
    train = spec["root"]["dag"]["tasks"]["train-model"]["inputs"]["parameters"]
    assert train["min_concept_patients"] == {"componentInputParameter": "min_concept_patients"}


@pytest.mark.parametrize("name", ["training", "end_to_end"])
def test_the_test_fraction_default_is_the_command_lines(fresh, name):
    from cehrgpt.data import DEFAULT_TEST_FRACTION

    spec, _ = _load(fresh, name)
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["test_fraction"]["defaultValue"] == DEFAULT_TEST_FRACTION == 0.2


@pytest.mark.parametrize("name", ["synthetic_data", "end_to_end"])
def test_spark_application_launchers_know_their_own_pod(fresh, name):
    _, platform = _load(fresh, name)
    assert platform["exec-restore-omop-tables"]["fieldPathAsEnv"] == [
        {"fieldPath": "metadata.name", "name": "CEHRGPT_POD_NAME"},
        {"fieldPath": "metadata.uid", "name": "CEHRGPT_POD_UID"},
    ]


@pytest.mark.parametrize("name", ["training", "end_to_end"])
def test_prepare_takes_its_spark_mode_and_the_source_secret_never_a_password(fresh, name):
    spec, platform = _load(fresh, name)
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["prepare_spark_mode"]["defaultValue"] == "operator"
    assert params["omop_source_secret"]["defaultValue"] == "cehrgpt-omop-source"
    prepare = spec["root"]["dag"]["tasks"]["prepare-sequences"]["inputs"]["parameters"]
    assert prepare["spark_mode"] == {"componentInputParameter": "prepare_spark_mode"}
    assert prepare["executor_instances"] == {"componentInputParameter": "spark_executor_instances"}
    assert platform["exec-prepare-sequences"]["secretAsEnv"] == [
        {
            "keyToEnv": [
                {"envVar": "CEHRGPT_OMOP_URL", "secretKey": "url"},
                {"envVar": "CEHRGPT_OMOP_PASSWORD", "secretKey": "password"},
            ],
            "optional": True,  # a folder or bucket source needs no Secret
            "secretNameParameter": {"componentInputParameter": "omop_source_secret"},
        }
    ]
    assert [e["name"] for e in platform["exec-prepare-sequences"]["fieldPathAsEnv"]] == [
        "CEHRGPT_POD_NAME",
        "CEHRGPT_POD_UID",
    ]
    assert not any("password" in p.lower() for p in params)


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


def test_the_ci_workflow_compiles_fails_on_stale_yaml_and_uploads_versions_from_main():
    """.github/workflows/pipelines.yml (actionlint checks its syntax in `make lint` and in the workflow itself)."""
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "pipelines.yml").read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as True
    assert triggers["push"] == {"branches": ["main"]} and "pull_request" in triggers
    assert workflow["permissions"] == {"contents": "read"}
    steps = workflow["jobs"]["compile"]["steps"]
    runs = [step.get("run", "") for step in steps]
    order = [
        next(i for i, run in enumerate(runs) if needle in run)
        for needle in (
            "make compile",
            "actionlint",
            "git diff --exit-code pipelines/compiled",
            "--upload_only",
        )
    ]
    assert order == sorted(order)
    upload = steps[order[-1]]
    assert upload["if"] == "github.event_name == 'push' && github.ref == 'refs/heads/main'"
    assert upload["env"] == {"KFP_HOST": "${{ secrets.KFP_HOST }}", "KFP_TOKEN": "${{ secrets.KFP_TOKEN }}"}
    assert '--version_name "$(basename "$package" .yaml)-${GITHUB_SHA::12}"' in upload["run"]
    assert "$KFP_TOKEN" not in upload["run"]  # the token reaches the client from the environment only
    assert all(
        "if" not in step for step in steps[: order[-1]]
    )  # compile and the stale check run on every event


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


@pytest.mark.parametrize("name", ["synthetic_data", "end_to_end"])
def test_min_persons_reaches_the_restore_and_the_upload(fresh, name):
    spec, _ = _load(fresh, name)
    tasks = spec["root"]["dag"]["tasks"]
    assert spec["root"]["inputDefinitions"]["parameters"]["min_persons"]["defaultValue"] == 1
    restore = tasks["restore-omop-tables"]["inputs"]["parameters"]
    assert restore["min_persons"] == {"componentInputParameter": "min_persons"}
    condition = next(t for t in tasks.values() if t["taskInfo"]["name"] == "6. upload when enabled")
    upload = spec["components"][condition["componentRef"]["name"]]["dag"]["tasks"]["upload-omop-tables"]
    assert upload["inputs"]["parameters"]["min_persons"] == {
        "componentInputParameter": "pipelinechannel--min_persons"
    }
