"""Run the project's Spark jobs (OMOP restore, prepare) as Spark-operator ``SparkApplication``s, or in-process.

On a cluster these jobs are too big for the pipeline pod, so the restore and
prepare components ask the Spark operator (``sparkoperator.k8s.io/v1beta2``) to run
``cehrgpt/omop/restore.py`` or ``cehrgpt/data/prepare.py`` from the project's Spark
image, wait for it and delete it. :func:`build_spark_application` is pure (a manifest dict);
:func:`run_spark_application` is the only code that talks to Kubernetes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cehrgpt.pipeline.images import SPARK_IMAGE

GROUP = "sparkoperator.k8s.io"
VERSION = "v1beta2"
PLURAL = "sparkapplications"

#: Where the Spark image (images/spark.Dockerfile) installs the restore job.
RESTORE_MAIN_FILE = "local:///opt/cehrgpt/venv/lib/python3.11/site-packages/cehrgpt/omop/restore.py"
#: Where the Spark image installs the prepare job (OMOP CDM → patient sequences).
PREPARE_MAIN_FILE = "local:///opt/cehrgpt/venv/lib/python3.11/site-packages/cehrgpt/data/prepare.py"
#: The version of Spark the Spark image carries (images/spark.Dockerfile).
SPARK_VERSION = "4.0.1"

FAILED_STATES = frozenset({"FAILED", "SUBMISSION_FAILED"})
SPARK_MODES = ("operator", "local")
#: Annotation holding :func:`spec_fingerprint`, so a retried task knows the application it finds is its own job.
SPEC_ANNOTATION = "cehrgpt.io/spec-fingerprint"
#: Times a retried task deletes and re-creates a leftover application before giving up.
REPLACE_ATTEMPTS = 5
#: Container name Spark gives the driver in its pod.
DRIVER_CONTAINER = "spark-kubernetes-driver"

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


def spec_fingerprint(manifest: dict[str, Any]) -> str:
    """A short hash of an application's spec: a retry adopts an application only when it is the same job."""
    return hashlib.sha256(json.dumps(manifest["spec"], sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for transient Kubernetes API errors (connection errors, HTTP 429 and 5xx).

    Each API call is tried up to ``attempts`` times in a row; the waits double from
    ``base_s`` up to ``cap_s``, each scaled by a jitter factor in [0.5, 1] drawn from a
    generator seeded with the application's name, so retries are spread yet reproducible.
    """

    attempts: int = 8
    base_s: float = 1.0
    cap_s: float = 60.0

    def delays(self, seed: str) -> list[float]:
        """The waits between the attempts of one call."""
        rng = random.Random(seed)
        return [
            min(self.cap_s, self.base_s * 2**i) * (0.5 + 0.5 * rng.random()) for i in range(self.attempts - 1)
        ]


def is_transient(error: BaseException) -> bool:
    """An API error worth retrying: no answer at all, throttling (429) or a server error (5xx)."""
    from kubernetes.client import ApiException
    from urllib3.exceptions import HTTPError

    if isinstance(error, ApiException):
        status = error.status or 0
        return status == 429 or status >= 500 or status == 0
    return isinstance(error, HTTPError | ConnectionError | TimeoutError)


def _describe_error(error: BaseException) -> str:
    from kubernetes.client import ApiException

    if isinstance(error, ApiException):
        return f"HTTP {error.status} {error.reason}"
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".rstrip(": ")


class _Api:
    """The Kubernetes calls the launcher makes, each retried on transient errors."""

    def __init__(
        self, api_client: Any, retry: RetryPolicy, sleep: Callable[[float], None], seed: str
    ) -> None:
        from kubernetes import client

        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.retry = retry
        self.sleep = sleep
        self.seed = seed

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        delays = self.retry.delays(self.seed)
        for attempt in range(self.retry.attempts):
            try:
                return fn(*args, **kwargs)
            except Exception as e:
                if not is_transient(e) or attempt == self.retry.attempts - 1:
                    raise
                logger.warning(
                    "%s: %s; retrying in %.1f s (attempt %d of %d)",
                    what, _describe_error(e), delays[attempt], attempt + 2, self.retry.attempts,
                )  # fmt: skip
                self.sleep(delays[attempt])
        raise AssertionError("unreachable")

    def create(self, namespace: str, manifest: dict[str, Any]) -> Any:
        return self.call(
            "create", self.custom.create_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, manifest
        )

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        return self.call(
            "status read", self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name
        )

    def patch(self, namespace: str, name: str, body: dict[str, Any]) -> Any:
        return self.call(
            "adopt", self.custom.patch_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name, body
        )

    def delete(self, namespace: str, name: str) -> Any:
        return self.call(
            "delete", self.custom.delete_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name
        )


#: Environment variables the component sets from the downward API (``metadata.name``/``metadata.uid``);
#: Kubeflow's own ``KFP_POD_NAME``/``KFP_POD_UID`` (its launcher sets them) are the fall-backs.
POD_NAME_ENV = "CEHRGPT_POD_NAME"
POD_UID_ENV = "CEHRGPT_POD_UID"


def launcher_pod(environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """The (name, uid) of the pod running this launcher, as far as its environment says ("" when unknown)."""
    environ = os.environ if environ is None else environ
    name = environ.get(POD_NAME_ENV) or environ.get("KFP_POD_NAME", "")
    uid = environ.get(POD_UID_ENV) or environ.get("KFP_POD_UID", "")
    return name, uid


def owner_reference(api: _Api, namespace: str, pod_name: str, pod_uid: str) -> dict[str, Any] | None:
    """An ownerReference to the launcher pod, so deleting the run (and its pods) deletes the application.

    The uid is read from the API when the environment lacks it. Returns None (and the
    application lives until its TTL or our own delete) when the pod cannot be named.
    """
    from kubernetes.client import ApiException

    if not pod_name:
        logger.warning(
            "launcher pod unknown (no %s): the SparkApplication gets no ownerReference", POD_NAME_ENV
        )
        return None
    if not pod_uid:
        try:
            pod_uid = api.call("pod read", api.core.read_namespaced_pod, pod_name, namespace).metadata.uid
        except ApiException as e:
            logger.warning(
                "cannot read launcher pod %s/%s (HTTP %s): no ownerReference", namespace, pod_name, e.status
            )
            return None
    return {"apiVersion": "v1", "kind": "Pod", "name": pod_name, "uid": pod_uid, "blockOwnerDeletion": False}


class _Terminated(BaseException):
    """SIGTERM arrived (the pod is being deleted or preempted)."""


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into an exception while the application runs, so ``finally`` deletes it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def driver_log_tail(api: _Api, namespace: str, status: dict[str, Any], name: str, lines: int = 40) -> str:
    """The last lines of the driver's log, or why they cannot be read."""
    from kubernetes.client import ApiException

    pod = (status.get("driverInfo") or {}).get("podName") or f"{name}-driver"
    try:
        text = api.call(
            "driver log read",
            api.core.read_namespaced_pod_log,
            pod,
            namespace,
            container=DRIVER_CONTAINER,
            tail_lines=lines,
        )
    except ApiException as e:
        return f"(driver log of {pod} unavailable: HTTP {e.status} {e.reason})"
    except Exception as e:  # transient errors exhausted: the failure itself matters more
        return f"(driver log of {pod} unavailable: {_describe_error(e)})"
    return str(text).rstrip("\n") or f"(driver log of {pod} is empty)"


def _create_or_adopt(api: _Api, namespace: str, manifest: dict[str, Any]) -> str:
    """Create the application; on 409 adopt the previous attempt's (same spec, not failed) or replace it.

    Returns ``created`` or ``adopted``.
    """
    from kubernetes.client import ApiException

    name = manifest["metadata"]["name"]
    fingerprint = manifest["metadata"]["annotations"][SPEC_ANNOTATION]
    for _ in range(REPLACE_ATTEMPTS):
        try:
            api.create(namespace, manifest)
            return "created"
        except ApiException as e:
            if e.status != 409:
                raise
        try:
            existing = api.get(namespace, name)
        except ApiException as e:
            if e.status == 404:  # deleted in between: create again
                continue
            raise
        state = ((existing.get("status") or {}).get("applicationState") or {}).get("state", "")
        same_job = (existing.get("metadata") or {}).get("annotations", {}).get(SPEC_ANNOTATION) == fingerprint
        if same_job and state not in FAILED_STATES:
            owners = list((existing.get("metadata") or {}).get("ownerReferences") or [])
            mine = manifest["metadata"].get("ownerReferences") or []
            new = [o for o in mine if o["uid"] not in {x.get("uid") for x in owners}]
            if new:  # the new launcher pod owns it too, so it outlives the old pod's garbage collection
                api.patch(namespace, name, {"metadata": {"ownerReferences": owners + new}})
            logger.info(
                "adopted SparkApplication %s/%s of a previous attempt (%s)", namespace, name, state or "new"
            )
            return "adopted"
        logger.info(
            "replacing SparkApplication %s/%s of a previous attempt (%s)",
            namespace, name, "failed" if same_job else "a different job",
        )  # fmt: skip
        try:
            api.delete(namespace, name)
        except ApiException as e:
            if e.status != 404:
                raise
        api.sleep(api.retry.base_s)  # let the deletion finish before creating again
    raise SparkApplicationError(
        f"could not create SparkApplication {namespace}/{name}: it still exists after {REPLACE_ATTEMPTS} replacements"
    )


def run_spark_application(
    manifest: dict[str, Any],
    api_client: Any,
    timeout_s: float = 6 * 3600,
    poll_s: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
    retry: RetryPolicy = RetryPolicy(),
    environ: Mapping[str, str] | None = None,
    log_lines: int = 40,
) -> dict[str, Any]:
    """Create a SparkApplication (or adopt a retried task's), wait until it completes, and delete it whatever happened.

    The application is owned by the launcher pod (when in the same namespace), so
    deleting the run deletes it; SIGTERM deletes it too. Transient API errors are
    retried with :class:`RetryPolicy`, during creation and during hours of polling.

    Args:
        manifest: From :func:`build_spark_application` (not modified).
        api_client: A ``kubernetes.client.ApiClient`` (in-cluster or kubeconfig).
        timeout_s: Give up (and delete the application) after this many seconds.
        poll_s: Seconds between status reads.
        sleep: Waits between polls and retries (the real ``time.sleep`` outside tests).
        retry: Backoff for transient API errors.
        environ: Where the launcher pod's name and uid are read (``os.environ`` by default).
        log_lines: Lines of the driver's log quoted when the application fails.

    Returns:
        The application's final ``status``.

    Raises:
        SparkApplicationError: it ended FAILED or SUBMISSION_FAILED (the message quotes
            the driver's ``errorMessage`` and the tail of its log), it could not be created,
            the API kept failing, or SIGTERM arrived.
        SparkApplicationTimeout: it was not COMPLETED within ``timeout_s``.
    """
    from kubernetes.client import ApiException

    name = manifest["metadata"]["name"]
    namespace = manifest["metadata"]["namespace"]
    api = _Api(api_client, retry, sleep, seed=name)
    manifest = copy.deepcopy(manifest)
    manifest["metadata"].setdefault("annotations", {})[SPEC_ANNOTATION] = spec_fingerprint(manifest)
    pod_name, pod_uid = launcher_pod(environ)
    own_namespace = _own_namespace()
    if own_namespace is not None and own_namespace != namespace:
        logger.warning(
            "SparkApplication in %s, launcher in %s: an owner must share the namespace, so none is set",
            namespace, own_namespace,
        )  # fmt: skip
    else:
        owner = owner_reference(api, namespace, pod_name, pod_uid)
        if owner is not None:
            manifest["metadata"]["ownerReferences"] = [owner]
    with _sigterm_raises():
        try:
            how = _create_or_adopt(api, namespace, manifest)
        except ApiException as e:
            raise SparkApplicationError(
                f"could not create SparkApplication {namespace}/{name}: HTTP {e.status} {e.reason}"
            ) from None
        except _Terminated:
            _delete(api, namespace, name)
            raise SparkApplicationError(
                f"SIGTERM while creating SparkApplication {namespace}/{name}"
            ) from None
        except SparkApplicationError:
            raise
        except Exception as e:
            raise SparkApplicationError(
                f"could not create SparkApplication {namespace}/{name}: {_describe_error(e)}"
            ) from None
        logger.info("%s SparkApplication %s/%s", how, namespace, name)
        try:
            return _wait(api, namespace, name, timeout_s, poll_s, log_lines)
        except _Terminated:
            raise SparkApplicationError(
                f"SIGTERM: SparkApplication {namespace}/{name} deleted before it finished"
            ) from None
        finally:
            _delete(api, namespace, name)


def _wait(
    api: _Api, namespace: str, name: str, timeout_s: float, poll_s: float, log_lines: int
) -> dict[str, Any]:
    from kubernetes.client import ApiException

    deadline = time.monotonic() + timeout_s
    last_state = None
    while True:
        try:
            status = api.get(namespace, name).get("status") or {}
        except ApiException as e:
            raise SparkApplicationError(
                f"could not read SparkApplication {namespace}/{name}: HTTP {e.status} {e.reason}"
            ) from None
        except Exception as e:
            raise SparkApplicationError(
                f"could not read SparkApplication {namespace}/{name}: {_describe_error(e)}"
            ) from None
        state = (status.get("applicationState") or {}).get("state", "")
        if state != last_state:
            logger.info("SparkApplication %s: %s", name, state or "(no state yet)")
            last_state = state
        if state == "COMPLETED":
            return status
        if state in FAILED_STATES:
            message = (status.get("applicationState") or {}).get("errorMessage") or "no error message"
            tail = driver_log_tail(api, namespace, status, name, log_lines)
            raise SparkApplicationError(
                f"SparkApplication {namespace}/{name} {state}: {message}\n--- driver log (last lines) ---\n{tail}"
            )
        if time.monotonic() >= deadline:
            raise SparkApplicationTimeout(
                f"SparkApplication {namespace}/{name} not COMPLETED after {timeout_s:g} s "
                f"(last state {state or 'none'})"
            )
        api.sleep(poll_s)


def _delete(api: _Api, namespace: str, name: str) -> None:
    from kubernetes.client import ApiException

    try:
        api.delete(namespace, name)
        logger.info("deleted SparkApplication %s/%s", namespace, name)
    except ApiException as e:
        if e.status != 404:
            logger.warning("could not delete SparkApplication %s/%s: HTTP %s", namespace, name, e.status)
    except Exception as e:  # transient errors exhausted; the TTL and the ownerReference still remove it
        logger.warning("could not delete SparkApplication %s/%s: %s", namespace, name, _describe_error(e))


def _own_namespace() -> str | None:
    try:
        return POD_NAMESPACE_FILE.read_text().strip()
    except OSError:
        return None


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
    status = submit_spark_job(
        RESTORE_MAIN_FILE,
        arguments,
        operator,
        application_name(run_hint),
        api_client=api_client,
        on_minio=on_minio,
    )
    return {"spark_mode": "operator", "application": application_name(run_hint), "status": status}


def submit_spark_job(
    main_application_file: str,
    arguments: Sequence[str],
    operator: SparkOperatorSettings | None,
    name: str,
    api_client: Any = None,
    on_minio: bool = False,
    secret_env: dict[str, tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """Run one of the project's Spark jobs (restore, prepare) as a SparkApplication and wait for it.

    Args:
        main_application_file: The job inside the Spark image (:data:`RESTORE_MAIN_FILE`, :data:`PREPARE_MAIN_FILE`).
        arguments: The job's command line (URIs, never a password).
        operator: Namespace and sizes of the application.
        name: The application's name (:func:`application_name`).
        api_client: A Kubernetes ``ApiClient``; by default the in-cluster configuration.
        on_minio: the paths are on Kubeflow's MinIO store: apply the operator's MinIO settings.
        secret_env: More environment from Secrets for driver and executors: name → (secret, key).

    Returns:
        The application's final status.

    Raises:
        SparkApplicationError: no settings, or the application failed.
    """
    if operator is None:
        raise SparkApplicationError(
            "spark_mode 'operator' needs the operator settings (namespace, image, sizes)"
        )
    minio_conf, minio_env = (
        minio_access(operator.minio_endpoint, operator.minio_credentials_secret) if on_minio else ({}, {})
    )
    manifest = build_spark_application(
        name=name,
        namespace=operator.namespace or pod_namespace(),
        image=operator.image,
        main_application_file=main_application_file,
        arguments=arguments,
        driver_cores=operator.driver_cores,
        driver_memory=operator.driver_memory,
        executor_instances=operator.executor_instances,
        executor_cores=operator.executor_cores,
        executor_memory=operator.executor_memory,
        service_account=operator.service_account,
        ttl_seconds=operator.ttl_seconds,
        spark_conf={**minio_conf, **operator.spark_conf},
        secret_env={**minio_env, **(secret_env or {})},
    )
    if api_client is None:
        from kubernetes import client, config

        config.load_incluster_config()
        api_client = client.ApiClient()
    return run_spark_application(manifest, api_client, timeout_s=operator.timeout_s, poll_s=operator.poll_s)
