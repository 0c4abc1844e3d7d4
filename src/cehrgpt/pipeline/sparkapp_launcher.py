"""Run a ``SparkApplication`` manifest on Kubernetes: create or adopt it, wait for it, delete it.

:func:`run_spark_application` is the only code of the project that talks to the Spark
operator: it owns the application through the launcher pod, adopts a retried task's
application of the same spec (or replaces it), retries transient API errors with a
seeded backoff, quotes the driver's log on failure, and deletes the application
whatever happened, SIGTERM included. The manifest comes from
:mod:`cehrgpt.pipeline.sparkapp`.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cehrgpt.pipeline.sparkapp import (
    GROUP,
    PLURAL,
    SPEC_ANNOTATION,
    VERSION,
    SparkApplicationError,
    spec_fingerprint,
)

FAILED_STATES = frozenset({"FAILED", "SUBMISSION_FAILED"})
#: Times a retried task deletes and re-creates a leftover application before giving up.
REPLACE_ATTEMPTS = 5
#: Container name Spark gives the driver in its pod.
DRIVER_CONTAINER = "spark-kubernetes-driver"

logger = logging.getLogger(__name__)


class SparkApplicationTimeout(SparkApplicationError):
    """The SparkApplication did not reach a final state within the timeout."""


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
