"""Run the OMOP restore as a Spark-operator ``SparkApplication``, or in-process with local Spark.

On a cluster the restore job is too big for the pipeline pod, so the restore
component asks the Spark operator (``sparkoperator.k8s.io/v1beta2``) to run
``cehrgpt/omop/restore.py`` from the project's Spark image, waits for it and
deletes it. :func:`build_spark_application` is pure (a manifest dict);
:func:`run_spark_application` is the only code that talks to Kubernetes.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cehrgpt.pipeline.images import SPARK_IMAGE

GROUP = "sparkoperator.k8s.io"
VERSION = "v1beta2"
PLURAL = "sparkapplications"

#: Where the Spark image (images/spark.Dockerfile) installs the restore job.
RESTORE_MAIN_FILE = "local:///opt/cehrgpt/venv/lib/python3.11/site-packages/cehrgpt/omop/restore.py"
#: The version of Spark the Spark image carries (images/spark.Dockerfile).
SPARK_VERSION = "4.0.1"

FAILED_STATES = frozenset({"FAILED", "SUBMISSION_FAILED"})
SPARK_MODES = ("operator", "local")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^\d+(\.\d+)?[kmgtKMGT]?$")

logger = logging.getLogger(__name__)


class SparkApplicationError(RuntimeError):
    """A SparkApplication could not be built, failed, or did not finish in time."""


class SparkApplicationTimeout(SparkApplicationError):
    """The SparkApplication did not reach a final state within the timeout."""


def build_spark_application(
    name: str,
    namespace: str,
    image: str,
    main_application_file: str,
    arguments: Sequence[str],
    driver_cores: int = 1,
    driver_memory: str = "4g",
    executor_instances: int = 2,
    executor_cores: int = 2,
    executor_memory: str = "8g",
    service_account: str = "cehrgpt-spark-driver",
    ttl_seconds: int = 3600,
    spark_version: str = SPARK_VERSION,
    spark_conf: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    secret_env: dict[str, tuple[str, str]] | None = None,
    labels: dict[str, str] | None = None,
    image_pull_policy: str = "IfNotPresent",
) -> dict[str, Any]:
    """A ``SparkApplication`` manifest running one PySpark file in cluster mode.

    Args:
        name: The application's name (a DNS-1123 label, at most 63 characters).
        namespace: Namespace the application is created in.
        image: Image for the driver and the executors (the project's Spark image).
        main_application_file: The job, e.g. ``local:///opt/.../restore.py``.
        arguments: The job's command-line arguments (artifact URIs).
        driver_cores: Driver CPU cores.
        driver_memory: Driver memory, Spark notation (``4g``).
        executor_instances: Number of executors.
        executor_cores: CPU cores per executor.
        executor_memory: Memory per executor, Spark notation.
        service_account: Service account of the driver, allowed to create executor pods.
        ttl_seconds: The operator deletes the finished application after this long.
        spark_version: Spark version of the image.
        spark_conf: Extra ``spark.*`` settings.
        env: Environment variables for driver and executors.
        secret_env: Environment variables for driver and executors from Secrets: name → (secret, key).
        labels: Labels for the application and its pods.
        image_pull_policy: ``Always``, ``IfNotPresent`` or ``Never``.

    Returns:
        The manifest as a dict, ready for ``CustomObjectsApi``.

    Raises:
        SparkApplicationError: a name, count or memory value is not what Kubernetes or Spark accepts.
    """
    if len(name) > 63 or not _DNS_LABEL.match(name):
        raise SparkApplicationError(
            f"SparkApplication name {name!r} is not a DNS-1123 label (lower-case letters, digits, '-', ≤ 63 chars)"
        )
    for what, value in (
        ("driver_cores", driver_cores),
        ("executor_instances", executor_instances),
        ("executor_cores", executor_cores),
        ("ttl_seconds", ttl_seconds),
    ):
        if not isinstance(value, int) or value < 1:
            raise SparkApplicationError(f"{what} must be a positive integer, got {value!r}")
    for what, memory in (("driver_memory", driver_memory), ("executor_memory", executor_memory)):
        if not _QUANTITY.match(str(memory)):
            raise SparkApplicationError(f"{what} must be a Spark memory size such as '4g', got {memory!r}")
    pod_labels = {"app.kubernetes.io/part-of": "cehrgpt", **(labels or {})}
    env_vars: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted((env or {}).items())]
    env_vars += [
        {"name": k, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
        for k, (secret, key) in sorted((secret_env or {}).items())
    ]
    role: dict[str, Any] = {"labels": pod_labels}
    if env_vars:
        role["env"] = env_vars
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SparkApplication",
        "metadata": {"name": name, "namespace": namespace, "labels": pod_labels},
        "spec": {
            "type": "Python",
            "pythonVersion": "3",
            "mode": "cluster",
            "image": image,
            "imagePullPolicy": image_pull_policy,
            "mainApplicationFile": main_application_file,
            "arguments": [str(a) for a in arguments],
            "sparkVersion": spark_version,
            "sparkConf": {"spark.sql.session.timeZone": "UTC", **(spark_conf or {})},
            "timeToLiveSeconds": ttl_seconds,
            "restartPolicy": {"type": "Never"},
            "driver": {
                **role,
                "cores": driver_cores,
                "memory": driver_memory,
                "serviceAccount": service_account,
            },
            "executor": {
                **role,
                "instances": executor_instances,
                "cores": executor_cores,
                "memory": executor_memory,
            },
        },
    }


def run_spark_application(
    manifest: dict[str, Any],
    api_client: Any,
    timeout_s: float = 6 * 3600,
    poll_s: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Create a SparkApplication, wait until it completes, and delete it whatever happened.

    Args:
        manifest: From :func:`build_spark_application`.
        api_client: A ``kubernetes.client.ApiClient`` (in-cluster or kubeconfig).
        timeout_s: Give up (and delete the application) after this many seconds.
        poll_s: Seconds between status reads.
        sleep: Waits between polls (the real ``time.sleep`` outside tests).

    Returns:
        The application's final ``status``.

    Raises:
        SparkApplicationError: it ended FAILED or SUBMISSION_FAILED (the message quotes
            the driver's ``errorMessage``), or it could not be created.
        SparkApplicationTimeout: it was not COMPLETED within ``timeout_s``.
    """
    from kubernetes import client

    api = client.CustomObjectsApi(api_client)
    name = manifest["metadata"]["name"]
    namespace = manifest["metadata"]["namespace"]
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
    except client.ApiException as e:
        raise SparkApplicationError(
            f"could not create SparkApplication {namespace}/{name}: HTTP {e.status} {e.reason}"
        ) from None
    logger.info("created SparkApplication %s/%s", namespace, name)
    deadline = time.monotonic() + timeout_s
    last_state = None
    try:
        while True:
            status = (
                api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name).get("status") or {}
            )
            state = (status.get("applicationState") or {}).get("state", "")
            if state != last_state:
                logger.info("SparkApplication %s: %s", name, state or "(no state yet)")
                last_state = state
            if state == "COMPLETED":
                return status
            if state in FAILED_STATES:
                message = (status.get("applicationState") or {}).get("errorMessage") or "no error message"
                raise SparkApplicationError(f"SparkApplication {namespace}/{name} {state}: {message}")
            if time.monotonic() >= deadline:
                raise SparkApplicationTimeout(
                    f"SparkApplication {namespace}/{name} not COMPLETED after {timeout_s:g} s "
                    f"(last state {state or 'none'})"
                )
            sleep(poll_s)
    finally:
        try:
            api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            logger.info("deleted SparkApplication %s/%s", namespace, name)
        except client.ApiException as e:
            if e.status != 404:
                logger.warning("could not delete SparkApplication %s/%s: HTTP %s", namespace, name, e.status)


@dataclass(frozen=True)
class SparkOperatorSettings:
    """Where and how big the restore SparkApplication is (pipeline parameters).

    An empty ``namespace`` means the namespace the restore pod runs in.
    """

    namespace: str
    image: str = SPARK_IMAGE
    driver_cores: int = 1
    driver_memory: str = "4g"
    executor_instances: int = 2
    executor_cores: int = 2
    executor_memory: str = "8g"
    service_account: str = "cehrgpt-spark-driver"
    ttl_seconds: int = 3600
    timeout_s: float = 6 * 3600
    poll_s: float = 10.0
    spark_conf: dict[str, str] = field(default_factory=dict)
    #: For ``minio://`` artifacts (Kubeflow's default store): its S3 endpoint, and the Secret holding
    #: its ``accesskey`` and ``secretkey``; applied only when a path is on MinIO.
    minio_endpoint: str = ""
    minio_credentials_secret: str = ""


#: Kubeflow Pipelines' defaults for its MinIO artifact store (the ``kfp-launcher`` ConfigMap can change them).
KFP_MINIO_ENDPOINT = "http://minio-service.kubeflow:9000"
KFP_MINIO_SECRET = "mlpipeline-minio-artifact"


def minio_access(endpoint: str, credentials_secret: str) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """The Spark settings and Secret-backed environment that let s3a read and write a MinIO store.

    s3a reads ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` from the environment (its default
    credential chain), so the keys never appear in the manifest.
    """
    spark_conf: dict[str, str] = {}
    if endpoint:
        spark_conf = {
            "spark.hadoop.fs.s3a.endpoint": endpoint,
            "spark.hadoop.fs.s3a.path.style.access": "true",
            "spark.hadoop.fs.s3a.connection.ssl.enabled": str(endpoint.startswith("https://")).lower(),
        }
    secret_env: dict[str, tuple[str, str]] = {}
    if credentials_secret:
        secret_env = {
            "AWS_ACCESS_KEY_ID": (credentials_secret, "accesskey"),
            "AWS_SECRET_ACCESS_KEY": (credentials_secret, "secretkey"),
        }
    return spark_conf, secret_env


#: Where Kubernetes tells a pod its own namespace.
POD_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def pod_namespace(namespace_file: Path = POD_NAMESPACE_FILE) -> str:
    """The namespace this pod runs in (the Kubeflow profile of the run).

    Raises:
        SparkApplicationError: not running in a pod, so the namespace must be given.
    """
    try:
        return namespace_file.read_text().strip()
    except OSError:
        raise SparkApplicationError(
            f"no namespace given and {namespace_file} is not readable (not in a pod): set spark_namespace"
        ) from None


def application_name(run_hint: str, prefix: str = "cehrgpt-restore") -> str:
    """A valid, unique-per-run SparkApplication name from any string (a run or task id)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", run_hint.lower()).strip("-")
    return f"{prefix}-{slug}"[:63].rstrip("-")


def restore_omop(
    spark_mode: str,
    patient_sequence_folder: str,
    omop_folder: str,
    source_omop_folder: str,
    operator: SparkOperatorSettings | None = None,
    run_hint: str = "run",
    api_client: Any = None,
    on_minio: bool = False,
    restore_arguments: Sequence[str] = (),
) -> dict[str, Any]:
    """Run ``cehrgpt.omop.restore`` in-process (``local``) or as a SparkApplication (``operator``).

    Args:
        spark_mode: ``local`` (local Spark in this process) or ``operator``.
        patient_sequence_folder: Generated sequences; a URI in operator mode.
        omop_folder: Output folder of the restored tables; a URI in operator mode.
        source_omop_folder: The vocabulary (``omop_vocab``); a URI in operator mode.
        operator: Namespace and sizes of the application; required in operator mode.
        run_hint: Makes the application name unique (e.g. the run id).
        api_client: A Kubernetes ``ApiClient``; by default the in-cluster configuration.
        on_minio: the paths are on Kubeflow's MinIO store: apply the operator's MinIO settings.
        restore_arguments: more restore flags, e.g. ``["--type_concept_id", "32817"]``.

    Returns:
        ``{"spark_mode": ..., ...}``: the application's final status in operator mode.

    Raises:
        SparkApplicationError: bad mode, the restore failed, or the application failed.
    """
    arguments = [
        "--patient_sequence_folder",
        patient_sequence_folder,
        "--omop_folder",
        omop_folder,
        "--source_omop_folder",
        source_omop_folder,
        *restore_arguments,
    ]
    if spark_mode == "local":
        from cehrgpt.omop.restore import main as restore_main

        code = restore_main(arguments)
        if code != 0:
            raise SparkApplicationError(f"the local restore job exited with code {code}")
        return {"spark_mode": "local"}
    if spark_mode != "operator":
        raise SparkApplicationError(f"spark_mode must be one of {', '.join(SPARK_MODES)}, got {spark_mode!r}")
    if operator is None:
        raise SparkApplicationError(
            "spark_mode 'operator' needs the operator settings (namespace, image, sizes)"
        )
    minio_conf, secret_env = (
        minio_access(operator.minio_endpoint, operator.minio_credentials_secret) if on_minio else ({}, {})
    )
    manifest = build_spark_application(
        name=application_name(run_hint),
        namespace=operator.namespace or pod_namespace(),
        image=operator.image,
        main_application_file=RESTORE_MAIN_FILE,
        arguments=arguments,
        driver_cores=operator.driver_cores,
        driver_memory=operator.driver_memory,
        executor_instances=operator.executor_instances,
        executor_cores=operator.executor_cores,
        executor_memory=operator.executor_memory,
        service_account=operator.service_account,
        ttl_seconds=operator.ttl_seconds,
        spark_conf={**minio_conf, **operator.spark_conf},
        secret_env=secret_env,
    )
    if api_client is None:
        from kubernetes import client, config

        config.load_incluster_config()
        api_client = client.ApiClient()
    status = run_spark_application(manifest, api_client, timeout_s=operator.timeout_s, poll_s=operator.poll_s)
    return {"spark_mode": "operator", "application": manifest["metadata"]["name"], "status": status}
