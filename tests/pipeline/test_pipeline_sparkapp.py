"""SparkApplication manifests (validated against the operator's CRD schema) and the create/wait/delete launcher."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
from pipeline_http_stubs import SparkOperatorStub, serve

from cehrgpt.pipeline.sparkapp import (
    KFP_MINIO_ENDPOINT,
    KFP_MINIO_SECRET,
    RESTORE_MAIN_FILE,
    SparkApplicationError,
    SparkApplicationTimeout,
    SparkOperatorSettings,
    application_name,
    build_spark_application,
    restore_omop,
    run_spark_application,
)

DATA = Path(__file__).parent / "data"


def _strict(schema):
    """The CRD schema with unknown fields rejected, so a misspelt key fails instead of being pruned."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(x) for x in schema]
    return schema


@pytest.fixture(scope="module")
def sparkapp_schema() -> dict:
    schema = _strict(json.loads((DATA / "sparkapplication_v1beta2_schema.json").read_text()))
    schema["properties"]["metadata"] = {"type": "object"}
    return schema


def _manifest(**overrides):
    args = {
        "name": "cehrgpt-restore-run-1",
        "namespace": "kubeflow-user",
        "image": "ghcr.io/cehrgpt/cehrgpt-spark:0.1.0",
        "main_application_file": RESTORE_MAIN_FILE,
        "arguments": ["--patient_sequence_folder", "s3a://b/seq", "--omop_folder", "s3a://b/omop"],
        "executor_instances": 3,
        "ttl_seconds": 600,
    }
    args.update(overrides)
    return build_spark_application(**args)


def test_manifest_is_valid_against_the_crd_schema(sparkapp_schema):
    manifest = _manifest(env={"AWS_REGION": "eu-west-1"}, spark_conf={"spark.executor.memoryOverhead": "1g"})
    jsonschema.validate(manifest, sparkapp_schema)
    spec = manifest["spec"]
    assert manifest["apiVersion"] == "sparkoperator.k8s.io/v1beta2"
    assert manifest["kind"] == "SparkApplication"
    assert (spec["type"], spec["mode"], spec["timeToLiveSeconds"]) == ("Python", "cluster", 600)
    assert spec["mainApplicationFile"].startswith("local:///") and spec["mainApplicationFile"].endswith(
        "cehrgpt/omop/restore.py"
    )
    assert spec["arguments"] == ["--patient_sequence_folder", "s3a://b/seq", "--omop_folder", "s3a://b/omop"]
    assert spec["driver"]["serviceAccount"] == "cehrgpt-spark-driver"
    assert (spec["executor"]["instances"], spec["executor"]["cores"], spec["executor"]["memory"]) == (
        3,
        2,
        "8g",
    )
    assert spec["driver"]["env"] == [{"name": "AWS_REGION", "value": "eu-west-1"}]


def test_the_strict_schema_catches_a_misspelt_field(sparkapp_schema):
    manifest = _manifest()
    manifest["spec"]["timeToLiveSecond"] = 5
    with pytest.raises(jsonschema.ValidationError, match="timeToLiveSecond"):
        jsonschema.validate(manifest, sparkapp_schema)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "Restore_Run"}, "'Restore_Run' is not a DNS-1123 label"),
        ({"executor_instances": 0}, "executor_instances must be a positive integer, got 0"),
        ({"driver_memory": "lots"}, "driver_memory must be a Spark memory size such as '4g', got 'lots'"),
    ],
)
def test_bad_manifest_values_are_named(overrides, message):
    with pytest.raises(SparkApplicationError) as e:
        _manifest(**overrides)
    assert message in str(e.value)


def test_application_name_is_a_dns_label():
    assert application_name("Run_2026/11 27.x") == "cehrgpt-restore-run-2026-11-27-x"
    assert len(application_name("x" * 200)) == 63


def _client(url):
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = url
    return client.ApiClient(configuration)


def test_completed_application_returns_its_status_and_is_deleted():
    stub = SparkOperatorStub(["", "SUBMITTED", "RUNNING", "COMPLETED"])
    with serve(stub) as (url, calls):
        status = run_spark_application(
            _manifest(), _client(url), timeout_s=60, poll_s=0, sleep=lambda s: None
        )
    assert status == {"applicationState": {"state": "COMPLETED"}}
    assert stub.created["spec"]["type"] == "Python"
    assert stub.deleted == ["cehrgpt-restore-run-1"]
    assert [c[0] for c in calls] == ["POST", "GET", "GET", "GET", "GET", "DELETE"]
    assert calls[0][1] == "/apis/sparkoperator.k8s.io/v1beta2/namespaces/kubeflow-user/sparkapplications"


@pytest.mark.parametrize("state", ["FAILED", "SUBMISSION_FAILED"])
def test_failed_application_raises_the_driver_message_and_is_deleted(state):
    stub = SparkOperatorStub(
        ["RUNNING", state], error_message="driver pod failed with exit code 1: no such file"
    )
    with serve(stub) as (url, _), pytest.raises(SparkApplicationError) as e:
        run_spark_application(_manifest(), _client(url), timeout_s=60, poll_s=0, sleep=lambda s: None)
    assert str(e.value) == (
        f"SparkApplication kubeflow-user/cehrgpt-restore-run-1 {state}: driver pod failed with exit code 1: no such file"
    )
    assert stub.deleted == ["cehrgpt-restore-run-1"]


def test_timeout_raises_and_deletes():
    stub = SparkOperatorStub(["RUNNING"])
    with serve(stub) as (url, _), pytest.raises(SparkApplicationTimeout) as e:
        run_spark_application(_manifest(), _client(url), timeout_s=0, poll_s=0, sleep=lambda s: None)
    assert str(e.value) == (
        "SparkApplication kubeflow-user/cehrgpt-restore-run-1 not COMPLETED after 0 s (last state RUNNING)"
    )
    assert stub.deleted == ["cehrgpt-restore-run-1"]


def test_refused_creation_is_one_clear_error():
    stub = SparkOperatorStub(["COMPLETED"], create_status=403)
    with serve(stub) as (url, _), pytest.raises(SparkApplicationError) as e:
        run_spark_application(_manifest(), _client(url), timeout_s=5, poll_s=0, sleep=lambda s: None)
    assert (
        str(e.value)
        == "could not create SparkApplication kubeflow-user/cehrgpt-restore-run-1: HTTP 403 Forbidden"
    )
    assert stub.deleted == []


def test_restore_in_operator_mode_passes_the_uris_to_the_job(sparkapp_schema):
    stub = SparkOperatorStub(["COMPLETED"])
    settings = SparkOperatorSettings(namespace="team-a", executor_instances=4, poll_s=0)
    with serve(stub) as (url, _):
        result = restore_omop(
            "operator",
            "gs://b/seq",
            "gs://b/omop",
            "gs://b/vocab",
            settings,
            run_hint="abc",
            api_client=_client(url),
        )
    assert result["application"] == "cehrgpt-restore-abc"
    jsonschema.validate(stub.created, sparkapp_schema)
    assert stub.created["spec"]["arguments"] == [
        "--patient_sequence_folder", "gs://b/seq", "--omop_folder", "gs://b/omop", "--source_omop_folder", "gs://b/vocab",
    ]  # fmt: skip
    assert stub.created["spec"]["executor"]["instances"] == 4
    assert stub.created["metadata"]["namespace"] == "team-a"


@pytest.mark.parametrize("on_minio", [True, False])
def test_minio_endpoint_and_credentials_reach_driver_and_executors_only_for_minio_paths(
    sparkapp_schema, on_minio
):
    stub = SparkOperatorStub(["COMPLETED"])
    settings = SparkOperatorSettings(
        namespace="team-a",
        poll_s=0,
        minio_endpoint="https://minio.example.org:9000",
        minio_credentials_secret="mlpipeline-minio-artifact",
        spark_conf={"spark.hadoop.fs.s3a.path.style.access": "false"},  # the user's own setting wins
    )
    with serve(stub) as (url, _):
        restore_omop("operator", "s3a://b/seq", "s3a://b/omop", "s3a://b/vocab", settings,
                     api_client=_client(url), on_minio=on_minio)  # fmt: skip
    jsonschema.validate(stub.created, sparkapp_schema)
    spec = stub.created["spec"]
    s3a = {k: v for k, v in spec["sparkConf"].items() if k.startswith("spark.hadoop.fs.s3a.")}
    if not on_minio:
        assert s3a == {"spark.hadoop.fs.s3a.path.style.access": "false"}
        assert "env" not in spec["driver"] and "env" not in spec["executor"]
        return
    assert s3a == {
        "spark.hadoop.fs.s3a.endpoint": "https://minio.example.org:9000",
        "spark.hadoop.fs.s3a.path.style.access": "false",
        "spark.hadoop.fs.s3a.connection.ssl.enabled": "true",
    }
    expected_env = [
        {"name": "AWS_ACCESS_KEY_ID",
         "valueFrom": {"secretKeyRef": {"name": "mlpipeline-minio-artifact", "key": "accesskey"}}},
        {"name": "AWS_SECRET_ACCESS_KEY",
         "valueFrom": {"secretKeyRef": {"name": "mlpipeline-minio-artifact", "key": "secretkey"}}},
    ]  # fmt: skip
    assert spec["driver"]["env"] == expected_env and spec["executor"]["env"] == expected_env


def test_restore_rejects_an_unknown_mode():
    with pytest.raises(SparkApplicationError, match="spark_mode must be one of operator, local, got 'yarn'"):
        restore_omop("yarn", "a", "b", "c")


def test_restore_step_in_operator_mode_uses_uris_and_reads_the_report_back(tmp_path):
    from cehrgpt.pipeline.steps import run_restore_step

    bucket = tmp_path / "bucket"  # the object store, seen through its URI
    (bucket / "restored").mkdir(parents=True)
    (bucket / "restored" / "restore_report.json").write_text('{"rows": {"person": 5}}')
    stub = SparkOperatorStub(["RUNNING", "COMPLETED"])
    with serve(stub) as (url, _):
        report = run_restore_step(
            "operator",
            ("/local/seq", "minio://mlpipeline/run/seq"),
            ("/local/vocabulary", "minio://mlpipeline/run/prepare/vocabulary"),
            (str(tmp_path / "pod" / "restored"), str(bucket / "restored")),
            SparkOperatorSettings(
                namespace="team-a",
                poll_s=0,
                minio_endpoint=KFP_MINIO_ENDPOINT,
                minio_credentials_secret=KFP_MINIO_SECRET,
            ),
            api_client=_client(url),
        )
    assert (
        stub.created["spec"]["sparkConf"]["spark.hadoop.fs.s3a.endpoint"]
        == "http://minio-service.kubeflow:9000"
    )
    assert stub.created["spec"]["arguments"] == [
        "--patient_sequence_folder", "s3a://mlpipeline/run/seq/generated_sequences",
        "--omop_folder", str(bucket / "restored"),
        "--source_omop_folder", "s3a://mlpipeline/run/prepare/vocabulary",
    ]  # fmt: skip
    assert report == tmp_path / "pod" / "restored" / "restore_report.json"
    assert report.read_text() == '{"rows": {"person": 5}}'
    name = stub.created["metadata"]["name"]
    assert re.fullmatch(r"cehrgpt-restore-[0-9a-f]{12}", name)  # a hash of the output location
    assert stub.deleted == [name]


def test_pod_namespace_is_read_from_the_service_account_mount(tmp_path):
    from cehrgpt.pipeline.sparkapp import pod_namespace

    (tmp_path / "namespace").write_text("team-b\n")
    assert pod_namespace(tmp_path / "namespace") == "team-b"
    with pytest.raises(SparkApplicationError) as e:
        pod_namespace(tmp_path / "missing")
    assert str(e.value) == (
        f"no namespace given and {tmp_path / 'missing'} is not readable (not in a pod): set spark_namespace"
    )
