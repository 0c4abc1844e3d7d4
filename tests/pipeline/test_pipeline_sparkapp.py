"""SparkApplication manifests (validated against the operator's CRD schema) and the create/wait/delete launcher."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import jsonschema
import pytest
from pipeline_http_stubs import DROP, SparkOperatorStub, serve

from cehrgpt.pipeline.sparkapp import (
    KFP_MINIO_ENDPOINT,
    KFP_MINIO_SECRET,
    SPEC_ANNOTATION,
    SparkApplicationError,
    SparkOperatorSettings,
    application_name,
    build_spark_application,
    spec_fingerprint,
)
from cehrgpt.pipeline.sparkapp_jobs import PREPARE_MAIN_FILE, RESTORE_MAIN_FILE, restore_omop
from cehrgpt.pipeline.sparkapp_launcher import (
    REPLACE_ATTEMPTS,
    RetryPolicy,
    SparkApplicationTimeout,
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
    configuration.retries = 0  # urllib3's own retries off: the launcher's backoff is what is tested
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
        "\n--- driver log (last lines) ---\n"
        "(driver log of cehrgpt-restore-run-1-driver unavailable: HTTP 404 Not Found)"
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
    from cehrgpt.pipeline.sparkapp_launcher import pod_namespace

    (tmp_path / "namespace").write_text("team-b\n")
    assert pod_namespace(tmp_path / "namespace") == "team-b"
    with pytest.raises(SparkApplicationError) as e:
        pod_namespace(tmp_path / "missing")
    assert str(e.value) == (
        f"no namespace given and {tmp_path / 'missing'} is not readable (not in a pod): set spark_namespace"
    )


# --- robustness: ownership, retries of the task, transient API errors, failures, SIGTERM ---------------------

NAME = "cehrgpt-restore-run-1"
POD_ENV = {"CEHRGPT_POD_NAME": "run-1-restore-pod", "CEHRGPT_POD_UID": "uid-new"}
OWNER_NEW = {"apiVersion": "v1", "kind": "Pod", "name": "run-1-restore-pod", "uid": "uid-new",
             "blockOwnerDeletion": False}  # fmt: skip


def _run(stub, manifest=None, sleeps=None, environ=None, **kwargs):
    """Run the launcher against the stub; waits are recorded in ``sleeps`` instead of slept."""
    sleeps = [] if sleeps is None else sleeps
    with serve(stub) as (url, calls):
        try:
            status = run_spark_application(
                manifest or _manifest(), _client(url), timeout_s=60, poll_s=0.5, sleep=sleeps.append,
                environ=POD_ENV if environ is None else environ, **kwargs,
            )  # fmt: skip
        finally:
            stub.calls = calls
    return status


def _previous_attempt(state, same_spec=True):
    manifest = _manifest() if same_spec else _manifest(executor_instances=9)
    manifest["metadata"]["annotations"] = {SPEC_ANNOTATION: spec_fingerprint(manifest)}
    manifest["metadata"]["ownerReferences"] = [{**OWNER_NEW, "name": "run-1-restore-old", "uid": "uid-old"}]
    manifest["status"] = {"applicationState": {"state": state}}
    return manifest


def test_the_application_is_owned_by_the_launcher_pod_named_by_the_downward_api():
    stub = SparkOperatorStub(["COMPLETED"])
    _run(stub)
    assert stub.created["metadata"]["ownerReferences"] == [OWNER_NEW]
    assert stub.created["metadata"]["annotations"] == {SPEC_ANNOTATION: spec_fingerprint(_manifest())}


def test_the_launcher_pod_uid_is_read_from_the_api_when_the_environment_lacks_it():
    stub = SparkOperatorStub(["COMPLETED"], pods={"run-1-pod": "uid-from-api"})
    _run(stub, environ={"KFP_POD_NAME": "run-1-pod"})
    assert stub.created["metadata"]["ownerReferences"] == [
        {**OWNER_NEW, "name": "run-1-pod", "uid": "uid-from-api"}
    ]
    assert stub.calls[0][:2] == ("GET", "/api/v1/namespaces/kubeflow-user/pods/run-1-pod")


def test_without_a_known_pod_there_is_no_owner_reference():
    stub = SparkOperatorStub(["COMPLETED"])
    _run(stub, environ={})
    assert "ownerReferences" not in stub.created["metadata"]
    assert [c[0] for c in stub.calls] == ["POST", "GET", "DELETE"]


def test_a_retried_task_adopts_the_running_application_of_its_previous_attempt():
    stub = SparkOperatorStub(["RUNNING", "COMPLETED"], existing={NAME: _previous_attempt("RUNNING")})
    status = _run(stub)
    assert status == {"applicationState": {"state": "COMPLETED"}}
    assert stub.creates == []  # the 409 was not an error, and nothing was re-submitted
    old_owner = {**OWNER_NEW, "name": "run-1-restore-old", "uid": "uid-old"}
    assert stub.patches == [{"metadata": {"ownerReferences": [old_owner, OWNER_NEW]}}]
    assert [c[0] for c in stub.calls] == ["POST", "GET", "PATCH", "GET", "GET", "DELETE"]
    assert stub.deleted == [NAME]


@pytest.mark.parametrize(("state", "same_spec"), [("FAILED", True), ("RUNNING", False)])
def test_a_retried_task_replaces_a_failed_or_different_application(state, same_spec):
    stub = SparkOperatorStub(["COMPLETED"], existing={NAME: _previous_attempt(state, same_spec)})
    sleeps: list[float] = []
    _run(stub, sleeps=sleeps)
    assert [c[0] for c in stub.calls] == ["POST", "GET", "DELETE", "POST", "GET", "DELETE"]
    assert len(stub.creates) == 1 and stub.creates[0]["spec"] == _manifest()["spec"]
    assert stub.patches == []
    assert sleeps == [1.0]  # one pause for the deletion to finish


def test_an_application_that_will_not_go_away_is_one_clear_error():
    class Undying(SparkOperatorStub):
        def __call__(self, method, path, body):
            answer = super().__call__(method, path, body)
            self.existing[NAME] = _previous_attempt("FAILED")  # back after every delete
            return answer

    stub = Undying(["COMPLETED"], existing={NAME: _previous_attempt("FAILED")})
    with pytest.raises(SparkApplicationError) as e:
        _run(stub)
    assert str(e.value) == (
        f"could not create SparkApplication kubeflow-user/{NAME}: it still exists after {REPLACE_ATTEMPTS} replacements"
    )


def test_transient_api_errors_are_retried_with_the_seeded_backoff_during_create_and_polling():
    stub = SparkOperatorStub(
        ["RUNNING", "COMPLETED"], faults={"POST": [503, DROP], "GET": [429, DROP, 500], "DELETE": [502]}
    )
    sleeps: list[float] = []
    status = _run(stub, sleeps=sleeps)
    assert status == {"applicationState": {"state": "COMPLETED"}}
    assert len(stub.creates) == 1 and stub.deleted == [NAME]
    delays = RetryPolicy().delays(NAME)
    assert delays == RetryPolicy().delays(NAME)  # seeded: the same waits every time
    assert all(0.5 * min(60.0, 2.0**i) <= d <= min(60.0, 2.0**i) for i, d in enumerate(delays))
    # create: two retries; first read: three retries; a poll pause; delete: one retry
    assert sleeps == [delays[0], delays[1], delays[0], delays[1], delays[2], 0.5, delays[0]]


def test_transient_errors_past_the_retry_budget_fail_the_task_and_still_delete():
    stub = SparkOperatorStub(["RUNNING"], faults={"GET": [503] * 3})
    with pytest.raises(SparkApplicationError) as e:
        _run(stub, retry=RetryPolicy(attempts=3, base_s=1.0, cap_s=2.0))
    assert (
        str(e.value) == f"could not read SparkApplication kubeflow-user/{NAME}: HTTP 503 Service Unavailable"
    )
    assert stub.deleted == [NAME]


def test_a_refused_create_is_not_retried():
    stub = SparkOperatorStub(["COMPLETED"], create_status=403)
    sleeps: list[float] = []
    with pytest.raises(SparkApplicationError, match="HTTP 403 Forbidden"):
        _run(stub, sleeps=sleeps)
    assert sleeps == [] and [c[0] for c in stub.calls] == ["POST"]


@pytest.mark.parametrize("driver_pod", ["", "custom-driver-pod"])
def test_a_failure_quotes_the_tail_of_the_driver_log(driver_pod):
    pod = driver_pod or f"{NAME}-driver"
    log = "".join(f"line {i}\n" for i in range(100)) + "Py4JJavaError: table person is missing\n"

    class WithDriverInfo(SparkOperatorStub):
        def __call__(self, method, path, body):
            code, payload = super().__call__(method, path, body)
            if driver_pod and method == "GET" and "sparkapplications/" in path:
                payload["status"]["driverInfo"] = {"podName": driver_pod}
            return code, payload

    stub = WithDriverInfo(["RUNNING", "FAILED"], error_message="driver container failed with ExitCode: 1",
                          pod_logs={pod: log})  # fmt: skip
    with pytest.raises(SparkApplicationError) as e:
        _run(stub, log_lines=3)
    assert str(e.value) == (
        f"SparkApplication kubeflow-user/{NAME} FAILED: driver container failed with ExitCode: 1\n"
        "--- driver log (last lines) ---\n"
        "line 98\nline 99\nPy4JJavaError: table person is missing"
    )
    log_read = [c[1] for c in stub.calls if "/log" in c[1]]
    assert log_read == [
        f"/api/v1/namespaces/kubeflow-user/pods/{pod}/log?container=spark-kubernetes-driver&tailLines=3"
    ]
    assert stub.deleted == [NAME]


def test_sigterm_deletes_the_application():
    stub = SparkOperatorStub(["RUNNING"])
    before = signal.getsignal(signal.SIGTERM)
    polls: list[float] = []

    def sleep(seconds):
        polls.append(seconds)
        if len(polls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    with serve(stub) as (url, _), pytest.raises(SparkApplicationError) as e:
        run_spark_application(_manifest(), _client(url), timeout_s=60, poll_s=1, sleep=sleep, environ={})
    assert str(e.value) == f"SIGTERM: SparkApplication kubeflow-user/{NAME} deleted before it finished"
    assert stub.deleted == [NAME]
    assert signal.getsignal(signal.SIGTERM) == before  # the pod's own handler is back


# --- prepare as a SparkApplication (the same builder and launcher as the restore) ------------------------------


def _prepare_in_operator_mode(environ, omop_source="postgresql+psycopg://reader@cdm-db:5432/cdm"):
    """prepare's step in operator mode against the stub, its report read back from a local 'bucket'."""
    from cehrgpt.pipeline.steps import run_prepare_step

    stub = SparkOperatorStub(["SUBMITTED", "RUNNING", "COMPLETED"])
    with serve(stub) as (url, _):
        report = run_prepare_step(
            "operator",
            omop_source,
            ("/pod/prepared", "minio://mlpipeline/v2/artifacts/run-1/prepare/prepared"),
            test_fraction=0.2,
            seed=7,
            operator=SparkOperatorSettings(
                namespace="team-a", executor_instances=6, executor_memory="16g", poll_s=0,
                minio_endpoint=KFP_MINIO_ENDPOINT, minio_credentials_secret=KFP_MINIO_SECRET,
            ),
            omop_source_secret="cehrgpt-omop-source",
            api_client=_client(url),
            environ=environ,
        )  # fmt: skip
    return stub, report


def test_prepare_in_operator_mode_submits_the_prepare_job_valid_against_the_crd(sparkapp_schema):
    stub, report = _prepare_in_operator_mode({"CEHRGPT_OMOP_PASSWORD": "from-the-secret"})
    jsonschema.validate(stub.created, sparkapp_schema)
    spec = stub.created["spec"]
    assert spec["mainApplicationFile"] == PREPARE_MAIN_FILE and PREPARE_MAIN_FILE.endswith(
        "cehrgpt/data/prepare.py"
    )
    assert spec["arguments"] == [
        "--omop_source", "postgresql+psycopg://reader@cdm-db:5432/cdm",
        "--output_folder", "s3a://mlpipeline/v2/artifacts/run-1/prepare/prepared",
        "--test_fraction", "0.2", "--seed", "7",
    ]  # fmt: skip
    assert (spec["executor"]["instances"], spec["executor"]["memory"]) == (6, "16g")
    assert re.fullmatch(r"cehrgpt-prepare-[0-9a-f]{12}", stub.created["metadata"]["name"])
    # the password reaches the driver from the Secret (only the keys this pod got), never as an argument
    secret_env = [e for e in spec["driver"]["env"] if e["name"].startswith("CEHRGPT_")]
    assert secret_env == [
        {"name": "CEHRGPT_OMOP_PASSWORD",
         "valueFrom": {"secretKeyRef": {"name": "cehrgpt-omop-source", "key": "password"}}},
    ]  # fmt: skip
    assert "from-the-secret" not in json.dumps(stub.created)
    assert spec["sparkConf"]["spark.hadoop.fs.s3a.endpoint"] == KFP_MINIO_ENDPOINT
    assert report is None  # the report could not be read back from the (absent) MinIO store: a warning only
    assert stub.deleted == [stub.created["metadata"]["name"]]


def test_prepare_without_the_secret_gives_the_driver_no_secret_env():
    stub, _ = _prepare_in_operator_mode({}, omop_source="gs://omop-bucket/cdm")
    assert [e["name"] for e in stub.created["spec"]["driver"]["env"]] == [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ]
    assert stub.created["spec"]["arguments"][:2] == ["--omop_source", "gs://omop-bucket/cdm"]


def test_prepare_refuses_a_password_in_its_parameter_and_an_unknown_mode(tmp_path):
    from cehrgpt.pipeline.steps import StageFailed, run_prepare_step

    with pytest.raises(StageFailed) as e:
        run_prepare_step("local", "postgresql://reader:hunter2@db/cdm", (str(tmp_path / "out"), ""),
                         test_fraction=0.1, seed=1)  # fmt: skip
    assert str(e.value) == (
        "omop_source holds a password; pass the URL without it and put the password in the Secret "
        "named by omop_source_secret (key password)"
    )
    with pytest.raises(StageFailed, match="prepare_spark_mode must be operator or local, got 'yarn'"):
        run_prepare_step("yarn", "/omop", (str(tmp_path / "out"), ""), test_fraction=0.1, seed=1)
    assert not (tmp_path / "out").exists()


def test_an_application_in_another_namespace_than_the_launcher_gets_no_owner(tmp_path, monkeypatch):
    from cehrgpt.pipeline import sparkapp_launcher

    (tmp_path / "namespace").write_text("kubeflow-other\n")  # the launcher pod's namespace
    monkeypatch.setattr(sparkapp_launcher, "POD_NAMESPACE_FILE", tmp_path / "namespace")
    stub = SparkOperatorStub(["COMPLETED"])
    _run(stub)  # the application goes to kubeflow-user: an owner there cannot be the launcher pod
    assert "ownerReferences" not in stub.created["metadata"]
    (tmp_path / "namespace").write_text("kubeflow-user\n")
    stub = SparkOperatorStub(["COMPLETED"])
    _run(stub)
    assert stub.created["metadata"]["ownerReferences"] == [OWNER_NEW]


def test_restore_step_passes_the_type_concept_and_min_persons_to_the_job(tmp_path):
    from cehrgpt.pipeline.steps import run_restore_step

    (tmp_path / "restored").mkdir()
    stub = SparkOperatorStub(["COMPLETED"])
    with serve(stub) as (url, _):
        run_restore_step(
            "operator",
            ("/local/seq", "gs://b/seq"),
            ("/local/prep", "gs://b/prep"),
            (str(tmp_path / "pod"), str(tmp_path / "restored")),
            SparkOperatorSettings(namespace="team-a", poll_s=0),
            api_client=_client(url),
            type_concept_id=32879,
            min_persons=5,
        )
    assert stub.created["spec"]["arguments"][-4:] == ["--type_concept_id", "32879", "--min_persons", "5"]
