"""What a Spark-operator ``SparkApplication`` of the project looks like: the manifest, its settings and name.

On a cluster the Spark jobs (OMOP restore, prepare) are too big for the pipeline
pod, so they run as ``sparkoperator.k8s.io/v1beta2`` applications from the project's
Spark image. Everything here is pure: :func:`build_spark_application` returns a
manifest dict, :class:`SparkOperatorSettings` holds its sizes (pipeline parameters),
:func:`minio_access` the s3a settings for Kubeflow's MinIO store, and
:func:`spec_fingerprint` the hash a retried task uses to recognise its own job.
:mod:`cehrgpt.pipeline.sparkapp_launcher` talks to Kubernetes;
:mod:`cehrgpt.pipeline.sparkapp_jobs` puts the two together for restore and prepare.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cehrgpt.pipeline.images import SPARK_IMAGE

GROUP = "sparkoperator.k8s.io"
VERSION = "v1beta2"
PLURAL = "sparkapplications"

#: The version of Spark the Spark image carries (images/spark.Dockerfile).
SPARK_VERSION = "4.0.1"

#: Annotation holding :func:`spec_fingerprint`, so a retried task knows the application it finds is its own job.
SPEC_ANNOTATION = "cehrgpt.io/spec-fingerprint"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^\d+(\.\d+)?[kmgtKMGT]?$")


class SparkApplicationError(RuntimeError):
    """A SparkApplication could not be built, failed, or did not finish in time."""


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


def spec_fingerprint(manifest: dict[str, Any]) -> str:
    """A short hash of an application's spec: a retry adopts an application only when it is the same job."""
    return hashlib.sha256(json.dumps(manifest["spec"], sort_keys=True).encode()).hexdigest()[:16]


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


def application_name(run_hint: str, prefix: str = "cehrgpt-restore") -> str:
    """A valid, unique-per-run SparkApplication name from any string (a run or task id)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", run_hint.lower()).strip("-")
    return f"{prefix}-{slug}"[:63].rstrip("-")
