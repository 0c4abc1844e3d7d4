"""`cehrgpt pipeline submit` against a stub Kubeflow API, and `compare` over local, S3 and GCS run folders."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import pytest
from pipeline_http_stubs import serve

from cehrgpt.cli import main
from cehrgpt.pipeline.compare import RunMetrics, format_comparison, task_name
from cehrgpt.pipeline.submit import SubmitError, load_package, parse_params, pipeline_inputs

REPO = Path(__file__).resolve().parents[2]
TRAINING = REPO / "pipelines" / "compiled" / "training.yaml"


# --- submit --------------------------------------------------------------------------------------------------


def test_params_are_typed_by_the_compiled_pipeline():
    inputs = pipeline_inputs(load_package(TRAINING))
    assert inputs["max_steps"] == "NUMBER_INTEGER" and inputs["gpu_tolerations"] == "LIST"
    params = parse_params(
        [
            "omop_source=postgresql://r@db/cdm",
            "max_steps=100",
            "test_fraction=0.1",
            'gpu_node_selector={"a": "b"}',
        ],
        inputs,
    )
    assert params == {
        "omop_source": "postgresql://r@db/cdm",
        "max_steps": 100,
        "test_fraction": 0.1,
        "gpu_node_selector": {"a": "b"},
    }


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("max_steps", "--param 'max_steps' is not of the form name=value"),
        ("max_step=1", "unknown parameter 'max_step': expected one of batch_size, context_window, epochs,"),
        ("max_steps=ten", "parameter max_steps='ten' is not a valid NUMBER_INTEGER"),
        ("gpu_tolerations={}", "parameter gpu_tolerations='{}' is not a valid LIST"),
        (
            "omop_source=postgresql://r:hunter2@db/cdm",
            (
                "parameter omop_source holds a password (postgresql://r:***@db/cdm), which Kubeflow stores "
                "and shows; give the URL without it and the password in the pipeline's Secret (key password)"
            ),
        ),
        ("omop_source=postgresql://r@db/cdm?password=hunter2", "parameter omop_source holds a password ("),
    ],
)
def test_bad_params_are_named(pair, message):
    with pytest.raises(SubmitError) as e:
        parse_params([pair], pipeline_inputs(load_package(TRAINING)))
    assert str(e.value).startswith(message)


class KubeflowStub:
    """The v2beta1 endpoints kfp.Client uses to run and upload pipelines."""

    def __init__(self, existing_pipeline: str | None = None):
        self.existing_pipeline = existing_pipeline

    def __call__(self, method, path, body):
        url = urlparse(path)
        if url.path == "/apis/v2beta1/healthz":
            return 200, {}
        if url.path == "/apis/v2beta1/experiments" and method == "GET":
            return 200, {}
        if url.path == "/apis/v2beta1/experiments" and method == "POST":
            return 200, {"experiment_id": "exp-1", "display_name": json.loads(body)["display_name"]}
        if url.path == "/apis/v2beta1/runs" and method == "POST":
            return 200, {"run_id": "run-42", "experiment_id": "exp-1"}
        if url.path == "/apis/v2beta1/pipelines" and method == "GET":
            found = self.existing_pipeline and self.existing_pipeline in unquote(url.query)
            return 200, {"pipelines": [{"pipeline_id": "p-7"}], "total_size": 1} if found else {}
        if url.path == "/apis/v2beta1/pipelines/upload":
            return 200, {"pipeline_id": "p-1", "display_name": parse_qs(url.query)["name"][0]}
        if url.path == "/apis/v2beta1/pipelines/upload_version":
            return 200, {"pipeline_id": "p-7", "pipeline_version_id": "v-2"}
        return 404, {"error": "not found"}


def test_submit_runs_the_pipeline_in_an_experiment_with_typed_params(capsys):
    with serve(KubeflowStub()) as (url, calls):
        code = main(["pipeline", "submit", str(TRAINING), "--host", url, "--experiment", "team-a",
                     "--param", "omop_source=/data/cdm", "--param", "max_steps=5", "--run_name", "nightly"])  # fmt: skip
    assert code == 0
    assert capsys.readouterr().out.strip().endswith("run_id=run-42")
    run = json.loads(
        next(body for method, path, body in calls if method == "POST" and path == "/apis/v2beta1/runs")
    )
    assert run["display_name"] == "nightly" and run["experiment_id"] == "exp-1"
    assert run["runtime_config"]["parameters"] == {"omop_source": "/data/cdm", "max_steps": 5}
    assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "cehrgpt-training"
    experiment = next(body for method, path, body in calls if method == "POST" and "experiments" in path)
    assert json.loads(experiment)["display_name"] == "team-a"


def test_submit_upload_only_creates_the_pipeline_or_a_new_version(capsys):
    with serve(KubeflowStub()) as (url, calls):
        assert main(["pipeline", "submit", str(TRAINING), "--host", url, "--upload_only"]) == 0
    assert capsys.readouterr().out.strip().endswith("pipeline_id=p-1")
    assert any(
        path.startswith("/apis/v2beta1/pipelines/upload?name=cehrgpt-training") for _, path, _ in calls
    )
    with serve(KubeflowStub(existing_pipeline="cehrgpt-training")) as (url, calls):
        assert main(["pipeline", "submit", str(TRAINING), "--host", url, "--upload_only"]) == 0
    assert capsys.readouterr().out.strip().endswith("pipeline_id=p-7 version_id=v-2")
    assert not any(path.startswith("/apis/v2beta1/pipelines/upload?") for _, path, _ in calls)


def test_submit_reports_a_refusing_host_in_one_line(capsys):
    with serve(
        lambda method, path, body: (
            (403, {"error": "denied"}) if "runs" in path or "experiments" in path else (200, {})
        )
    ) as (url, _):
        code = main(["pipeline", "submit", str(TRAINING), "--host", url, "--param", "omop_source=x"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: Kubeflow host {url} refused the request: 403")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["/nowhere.yaml"],
            "error: compiled pipeline '/nowhere.yaml' does not exist (run `cehrgpt pipeline compile`)\n",
        ),
        ([str(TRAINING), "--param", "seed=x"], "error: parameter seed='x' is not a valid NUMBER_INTEGER\n"),
    ],
)
def test_submit_bad_input_fails_before_contacting_the_host(argv, message, capsys):
    assert main(["pipeline", "submit", *argv[:1], "--host", "http://127.0.0.1:9", *argv[1:]]) == 2
    assert capsys.readouterr().err == message


def test_submit_rejects_a_file_that_is_not_a_compiled_pipeline(tmp_path, capsys):
    bogus = tmp_path / "x.yaml"
    bogus.write_text("a: 1\n")
    assert main(["pipeline", "submit", str(bogus), "--host", "http://127.0.0.1:9"]) == 2
    assert (
        capsys.readouterr().err
        == f"error: '{bogus}' is not a compiled Kubeflow pipeline (no pipelineInfo/root)\n"
    )


# --- compare -------------------------------------------------------------------------------------------------


def _run_folder(root: Path, metrics: dict[str, dict]) -> Path:
    for task, values in metrics.items():
        (root / task).mkdir(parents=True, exist_ok=True)
        (root / task / "metrics").write_text(json.dumps(values))
    (root / "gather-generated-shards" / "sequences").mkdir(parents=True, exist_ok=True)
    (root / "fidelity-report").mkdir(exist_ok=True)
    (root / "fidelity-report" / "report").write_text("<html></html>")
    return root


RUN_A = {"member-inference": {"f1": 0.5, "accuracy": 0.51}, "reid-inference": {"risk": 0.02}}
RUN_B = {
    "member-inference": {"f1": 0.61},
    "reid-inference": {"risk": 0.1},
    "prepare-sequences": {"rows.person": 2694},
}


def test_task_names_from_artifact_paths():
    assert task_name("member-inference/metrics") == "member-inference"
    assert task_name("member-inference/123/metrics") == "member-inference"
    assert task_name("for-loop-1-iteration-3/generate-sequences/metrics") == "generate-sequences[3]"


def test_compare_local_runs_as_a_table(tmp_path, capsys):
    a = _run_folder(tmp_path / "run-a", RUN_A)
    b = _run_folder(tmp_path / "run-b", RUN_B)
    assert main(["pipeline", "compare", str(a), str(b)]) == 0
    assert capsys.readouterr().out == (
        "metric                         run-a  run-b\n"
        "-----------------------------  -----  -----\n"
        "member-inference.accuracy       0.51\n"
        "member-inference.f1              0.5   0.61\n"
        "prepare-sequences.rows.person          2694\n"
        "reid-inference.risk             0.02    0.1\n"
    )


def test_compare_as_csv_and_json(tmp_path, capsys):
    a = _run_folder(tmp_path / "run-a", RUN_A)
    b = _run_folder(tmp_path / "run-b", RUN_B)
    assert main(["pipeline", "compare", str(a), str(b), "--format", "csv"]) == 0
    assert capsys.readouterr().out == (
        "metric,run-a,run-b\n"
        "member-inference.accuracy,0.51,\n"
        "member-inference.f1,0.5,0.61\n"
        "prepare-sequences.rows.person,,2694\n"
        "reid-inference.risk,0.02,0.1\n"
    )
    assert main(["pipeline", "compare", str(a), str(a), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "run-a": {"member-inference.accuracy": 0.51, "member-inference.f1": 0.5, "reid-inference.risk": 0.02},
        "run-a#2": {
            "member-inference.accuracy": 0.51,
            "member-inference.f1": 0.5,
            "reid-inference.risk": 0.02,
        },
    }


def test_compare_bad_runs_fail_clearly(tmp_path, capsys):
    assert main(["pipeline", "compare", str(tmp_path / "missing")]) == 2
    assert (
        capsys.readouterr().err
        == f"error: run folder '{tmp_path / 'missing'}' does not exist or is not a folder\n"
    )
    (tmp_path / "empty").mkdir()
    assert main(["pipeline", "compare", str(tmp_path / "empty")]) == 2
    assert (
        capsys.readouterr().err
        == f"error: no Metrics artifacts (files named 'metrics') under '{tmp_path / 'empty'}'\n"
    )
    assert main(["pipeline", "compare", "ftp://host/run"]) == 2
    assert capsys.readouterr().err == (
        "error: unsupported location 'ftp://host/run': expected a folder, gs://, s3://, s3a:// or minio://\n"
    )


def test_format_comparison_rejects_an_unknown_format():
    from cehrgpt.pipeline.compare import CompareError

    with pytest.raises(CompareError, match="unknown format 'xml': expected one of table, json, csv"):
        format_comparison([RunMetrics("a", {"x": 1})], "xml")


def _objects(tree: dict[str, dict], prefix: str) -> dict[str, bytes]:
    return {f"{prefix}/{task}/metrics": json.dumps(values).encode() for task, values in tree.items()}


def test_compare_reads_runs_from_s3_compatible_storage(monkeypatch, capsys):
    objects = _objects(RUN_A, "v2/artifacts/cehrgpt-end-to-end/run-a")
    objects["v2/artifacts/cehrgpt-end-to-end/run-a/fidelity-report/report"] = b"<html/>"

    def s3(method, path, body):
        url = urlparse(path)
        if url.path == "/mlpipeline" and "list-type=2" in url.query:
            prefix = parse_qs(url.query).get("prefix", [""])[0]
            keys = "".join(
                f"<Contents><Key>{k}</Key><Size>{len(v)}</Size></Contents>"
                for k, v in objects.items()
                if k.startswith(prefix)
            )
            xml = f'<?xml version="1.0"?><ListBucketResult><Name>mlpipeline</Name><IsTruncated>false</IsTruncated>{keys}</ListBucketResult>'
            return 200, xml.encode()
        key = unquote(url.path.removeprefix("/mlpipeline/"))
        return (200, objects[key]) if key in objects else (404, b"")

    for name, value in {
        "AWS_ACCESS_KEY_ID": "minio",
        "AWS_SECRET_ACCESS_KEY": "minio123",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    with serve(s3) as (url, _):
        code = main(["pipeline", "compare", "minio://mlpipeline/v2/artifacts/cehrgpt-end-to-end/run-a",
                     "--s3_endpoint_url", url, "--format", "json"])  # fmt: skip
    assert code == 0
    assert json.loads(capsys.readouterr().out) == {
        "run-a": {"member-inference.accuracy": 0.51, "member-inference.f1": 0.5, "reid-inference.risk": 0.02}
    }


def test_compare_reads_runs_from_google_cloud_storage(capsys):
    objects = _objects(RUN_B, "root/cehrgpt-end-to-end/run-b")

    def gcs(method, path, body):
        url = urlparse(path)
        if url.path == "/storage/v1/b/bucket/o":
            prefix = parse_qs(url.query).get("prefix", [""])[0]
            return 200, {
                "kind": "storage#objects",
                "items": [{"name": k, "bucket": "bucket"} for k in objects if k.startswith(prefix)],
            }
        if m := re.match(r"^/download/storage/v1/b/bucket/o/(.+)$", url.path):
            key = unquote(m.group(1))
            return (200, objects[key]) if key in objects else (404, b"")
        return 404, {}

    with serve(gcs) as (url, _):
        code = main(
            [
                "pipeline",
                "compare",
                "gs://bucket/root/cehrgpt-end-to-end/run-b",
                "--gcs_endpoint_url",
                url,
                "--format",
                "csv",
            ]
        )
    assert code == 0
    assert capsys.readouterr().out == (
        "metric,run-b\nmember-inference.f1,0.61\nprepare-sequences.rows.person,2694\nreid-inference.risk,0.1\n"
    )


def test_compare_reads_runs_by_id_from_a_kubeflow_host(tmp_path, capsys):
    _run_folder(tmp_path / "root" / "cehrgpt-end-to-end" / "run-9", RUN_A)

    def kubeflow(method, path, body):
        if path.startswith("/apis/v2beta1/runs/run-9"):
            return 200, {
                "run_id": "run-9",
                "runtime_config": {"pipeline_root": str(tmp_path / "root")},
                "pipeline_spec": {"pipelineInfo": {"name": "cehrgpt-end-to-end"}},
            }
        if path.startswith("/apis/v2beta1/runs/"):
            return 404, {"error": "not found"}
        return 200, {}

    with serve(kubeflow) as (url, _):
        assert main(["pipeline", "compare", "run-9", "--host", url, "--format", "csv"]) == 0
        assert capsys.readouterr().out == (
            "metric,run-9\nmember-inference.accuracy,0.51\nmember-inference.f1,0.5\nreid-inference.risk,0.02\n"
        )
        assert main(["pipeline", "compare", "run-0", "--host", url]) == 2
        assert capsys.readouterr().err == f"error: cannot read run run-0 from {url}: 404\n"


def test_ci_upload_names_the_version_after_the_commit_and_sends_the_token(monkeypatch, capsys):
    """What .github/workflows/pipelines.yml runs on the main branch, against the stubbed KFP API."""
    monkeypatch.setenv("KFP_TOKEN", "ci-token-123")
    headers: list[dict[str, str]] = []
    with serve(KubeflowStub(existing_pipeline="cehrgpt-training"), headers) as (url, calls):
        argv = ["pipeline", "submit", str(TRAINING), "--host", url, "--upload_only",
                "--version_name", "training-0123456789ab"]  # fmt: skip
        assert main(argv) == 0
    assert capsys.readouterr().out.strip().endswith("pipeline_id=p-7 version_id=v-2")
    upload = [(path, h) for (_, path, _), h in zip(calls, headers, strict=True) if "upload_version" in path]
    assert len(upload) == 1
    query = parse_qs(urlparse(upload[0][0]).query)
    assert query["name"] == ["training-0123456789ab"] and query["pipelineid"] == ["p-7"]
    assert headers and all(
        {k.lower(): v for k, v in h.items()}["authorization"] == "Bearer ci-token-123" for h in headers
    )
