"""Kustomize base, examples and Dockerfiles: valid Kubernetes objects, the RBAC the pipeline needs, lint-clean images."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from cehrgpt.pipeline.sparkapp import (
    KFP_MINIO_ENDPOINT,
    KFP_MINIO_SECRET,
    build_spark_application,
    minio_access,
)
from cehrgpt.pipeline.sparkapp_jobs import RESTORE_MAIN_FILE

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
K8S_VERSION = "1.30"


def _documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _kustomization_objects(folder: Path) -> list[dict]:
    """The objects a kustomization lists (its resources, recursively), without applying transformers."""
    objects: list[dict] = []
    for resource in yaml.safe_load((folder / "kustomization.yaml").read_text())["resources"]:
        target = (folder / resource).resolve()
        objects.extend(_kustomization_objects(target) if target.is_dir() else _documents(target))
    return objects


def _by_kind_name(objects: list[dict]) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def test_base_objects_are_valid_kubernetes():
    objects = _kustomization_objects(MANIFESTS / "base")
    assert sorted(_by_kind_name(objects)) == [
        ("Role", "cehrgpt-spark-driver"),
        ("Role", "cehrgpt-sparkapplication-launcher"),
        ("RoleBinding", "cehrgpt-spark-driver"),
        ("RoleBinding", "cehrgpt-sparkapplication-launcher"),
        ("ServiceAccount", "cehrgpt-spark-driver"),
    ]  # no Secret: a placeholder password must not be applied by accident
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def _verbs_used(calls: list[tuple[str, str, bytes]]) -> set[tuple[str, str, str]]:
    """(API group, resource, RBAC verb) of each request the launcher made to the stubbed API."""
    verb = {"POST": "create", "GET": "get", "PATCH": "patch", "DELETE": "delete", "PUT": "update"}
    used = set()
    for method, path, _ in calls:
        parts = path.split("?")[0].strip("/").split("/")
        if parts[0] == "api":  # /api/v1/namespaces/ns/<resource>/<name>[/<subresource>]
            group, rest = "", parts[4:]
        else:  # /apis/<group>/<version>/namespaces/ns/<resource>[/<name>[/<subresource>]]
            group, rest = parts[1], parts[5:]
        resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
        used.add((group, resource, verb[method]))
    return used


def test_the_launcher_role_grants_exactly_the_verbs_the_code_uses():
    """A tour of every launcher path against the stubbed API: uid lookup, adopt, replace, failure log, delete."""
    from kubernetes import client
    from pipeline_http_stubs import SparkOperatorStub, serve

    from cehrgpt.pipeline.sparkapp import SPEC_ANNOTATION, SparkApplicationError, spec_fingerprint
    from cehrgpt.pipeline.sparkapp_launcher import run_spark_application

    def manifest():
        return build_spark_application("app", "ns", "img", RESTORE_MAIN_FILE, [])

    def previous(state):
        app = manifest()
        app["metadata"]["annotations"] = {SPEC_ANNOTATION: spec_fingerprint(app)}
        return {**app, "status": {"applicationState": {"state": state}}}

    calls: list = []
    for existing, final in (
        ({"app": previous("RUNNING")}, "COMPLETED"),
        ({"app": previous("FAILED")}, "FAILED"),
    ):
        stub = SparkOperatorStub(
            [final], existing=existing, pods={"pod": "uid"}, pod_logs={"app-driver": "x\n"}
        )
        configuration = client.Configuration()
        with serve(stub) as (url, seen):
            configuration.host = url
            args = (manifest(), client.ApiClient(configuration))
            kwargs = {"poll_s": 0, "sleep": lambda s: None, "environ": {"KFP_POD_NAME": "pod"}}
            if final == "FAILED":
                with pytest.raises(SparkApplicationError, match="driver log"):
                    run_spark_application(*args, **kwargs)
            else:
                run_spark_application(*args, **kwargs)
        calls += seen
    used = _verbs_used(calls)
    role = _by_kind_name(_kustomization_objects(MANIFESTS / "base"))[
        ("Role", "cehrgpt-sparkapplication-launcher")
    ]
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert (
        used
        == granted
        == {
            ("sparkoperator.k8s.io", "sparkapplications", "create"),
            ("sparkoperator.k8s.io", "sparkapplications", "get"),
            ("sparkoperator.k8s.io", "sparkapplications", "patch"),
            ("sparkoperator.k8s.io", "sparkapplications", "delete"),
            ("", "pods", "get"),
            ("", "pods/log", "get"),
        }
    )
    objects = _by_kind_name(_kustomization_objects(MANIFESTS / "base"))
    binding = objects[("RoleBinding", "cehrgpt-sparkapplication-launcher")]
    assert (
        binding["subjects"][0]["name"] == "default-editor"
    )  # Kubeflow's pipeline-runner account in a profile
    driver = objects[("Role", "cehrgpt-spark-driver")]["rules"][0]
    assert {"pods", "services", "configmaps"} <= set(driver["resources"])
    assert objects[("RoleBinding", "cehrgpt-spark-driver")]["subjects"][0]["name"] == "cehrgpt-spark-driver"


@pytest.mark.parametrize(
    ("example", "secret_name", "keys"),
    [("database-secret.yaml", "cehrgpt-database", "DATABASE_SECRET_KEYS"),
     ("omop-source-secret.yaml", "cehrgpt-omop-source", "OMOP_SOURCE_SECRET_KEYS")],
)  # fmt: skip
def test_the_secret_examples_have_the_keys_the_steps_read(example, secret_name, keys):
    import importlib

    from cehrgpt.pipeline.compile import load_pipeline

    load_pipeline("synthetic_data", REPO)  # puts the repository root on sys.path
    secret_keys = {
        "DATABASE_SECRET_KEYS": lambda: (
            importlib.import_module("pipelines.synthetic_data").DATABASE_SECRET_KEYS
        ),
        "OMOP_SOURCE_SECRET_KEYS": lambda: (
            importlib.import_module("cehrgpt.pipeline.steps").OMOP_SOURCE_SECRET_KEYS
        ),
    }[keys]()
    secret = _documents(MANIFESTS / "examples" / example)[0]
    kubernetes_validate.validate(secret, K8S_VERSION, strict=True)
    assert secret["metadata"]["name"] == secret_name
    assert set(secret["stringData"]) == set(secret_keys) == {"url", "password"}
    assert (
        "@" in secret["stringData"]["url"] and ":CHANGE" not in secret["stringData"]["url"]
    )  # no password in url


def test_gpu_example_and_overlay_patch_are_valid():
    pod = _documents(MANIFESTS / "examples" / "gpu-smoke-test" / "pod.yaml")[0]
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["spec"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    patch = _documents(MANIFESTS / "overlays" / "gpu-node-pool" / "gpu-toleration.yaml")[0]
    patched = {**pod, "spec": {**pod["spec"], **patch["spec"]}}
    kubernetes_validate.validate(patched, K8S_VERSION, strict=True)


@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (for `kubectl kustomize`) is not installed"
)
def test_kustomize_renders_the_overlay_into_one_namespace():
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(MANIFESTS / "overlays" / "gpu-node-pool")],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    objects = _documents_from_text(rendered)
    assert {o["metadata"]["namespace"] for o in objects} == {"kubeflow-user"}
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    pod = _by_kind_name(objects)[("Pod", "cehrgpt-gpu-smoke-test")]
    assert pod["spec"]["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}


def _documents_from_text(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def test_example_sparkapplication_matches_the_crd_and_the_image_layout():
    schema = json.loads((Path(__file__).parent / "data" / "sparkapplication_v1beta2_schema.json").read_text())
    app = _documents(MANIFESTS / "examples" / "sparkapplication-restore.yaml")[0]
    jsonschema.validate(app, schema)
    assert app["spec"]["mainApplicationFile"] == RESTORE_MAIN_FILE
    # exactly what the restore step submits for artifacts on Kubeflow's MinIO store
    spark_conf, secret_env = minio_access(KFP_MINIO_ENDPOINT, KFP_MINIO_SECRET)
    submitted = build_spark_application(
        name=app["metadata"]["name"],
        namespace="any",
        image=app["spec"]["image"],
        main_application_file=RESTORE_MAIN_FILE,
        arguments=app["spec"]["arguments"],
        spark_conf=spark_conf,
        secret_env=secret_env,
    )
    assert app["spec"] == submitted["spec"]


def test_example_prepare_application_is_what_the_prepare_step_submits():
    """manifests/examples/sparkapplication-prepare.yaml against run_prepare_step in operator mode (stubbed API)."""
    from kubernetes import client
    from pipeline_http_stubs import SparkOperatorStub, serve

    from cehrgpt.pipeline.sparkapp import SparkOperatorSettings
    from cehrgpt.pipeline.steps import run_prepare_step

    schema = json.loads((Path(__file__).parent / "data" / "sparkapplication_v1beta2_schema.json").read_text())
    app = _documents(MANIFESTS / "examples" / "sparkapplication-prepare.yaml")[0]
    jsonschema.validate(app, schema)
    args = dict(zip(app["spec"]["arguments"][::2], app["spec"]["arguments"][1::2], strict=True))
    stub = SparkOperatorStub(["COMPLETED"])
    configuration = client.Configuration()
    with serve(stub) as (url, _):
        configuration.host = url
        run_prepare_step(
            "operator",
            args["--omop_source"],
            ("/pod/prepared", "minio://" + args["--output_folder"].removeprefix("s3a://")),
            test_fraction=float(args["--test_fraction"]),
            seed=int(args["--seed"]),
            operator=SparkOperatorSettings(namespace="any", poll_s=0, minio_endpoint=KFP_MINIO_ENDPOINT,
                                           minio_credentials_secret=KFP_MINIO_SECRET),
            omop_source_secret="cehrgpt-omop-source",
            api_client=client.ApiClient(configuration),
            environ={"CEHRGPT_OMOP_URL": "set", "CEHRGPT_OMOP_PASSWORD": "set"},  # the Secret has both keys
        )  # fmt: skip
    assert app["spec"] == stub.created["spec"]
    assert app["metadata"]["labels"] == stub.created["metadata"]["labels"]


@pytest.mark.parametrize("name", ["gpu", "spark", "cpu"])
def test_dockerfiles_run_as_non_root_and_install_kfp_without_dependencies(name):
    text = (REPO / "images" / f"{name}.Dockerfile").read_text()
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("0", "root"), name
    assert "pip install --no-cache-dir --no-deps -r /tmp/kfp-runtime.txt" in text
    assert text.count("FROM ") >= 2, "multi-stage: the wheel is built apart from the runtime image"


def test_each_image_installs_only_its_stage_extras():
    extras = {
        name: (REPO / "images" / f"{name}.Dockerfile").read_text().split("${WHEEL}[")[1].split("]")[0]
        for name in ("gpu", "spark", "cpu")
    }
    assert extras == {"gpu": "torch,analysis", "spark": "spark,k8s,gcs,s3", "cpu": "analysis,db,k8s,gcs,s3"}


def test_spark_image_carries_the_s3a_and_gs_connectors():
    text = (REPO / "images" / "spark.Dockerfile").read_text()
    jars = [line.split()[-2].rsplit("/", 1)[-1] for line in text.splitlines() if line.startswith("ADD ")]
    assert jars == [
        "hadoop-aws-${HADOOP_AWS_VERSION}.jar",
        "bundle-${AWS_SDK_BUNDLE_VERSION}.jar",
        "gcs-connector-${GCS_CONNECTOR_VERSION}-shaded.jar",
    ]
    assert all(
        line.split()[-1] == "/opt/spark/jars/" for line in text.splitlines() if line.startswith("ADD ")
    )
    assert "ARG HADOOP_AWS_VERSION=3.4.1" in text  # the Hadoop of Spark 4.0.1, which the image pins


def test_hadolint_passes():
    hadolint = Path(sys.executable).parent / "hadolint"
    dockerfiles = sorted(str(p) for p in (REPO / "images").glob("*.Dockerfile"))
    result = subprocess.run([str(hadolint), *dockerfiles], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
