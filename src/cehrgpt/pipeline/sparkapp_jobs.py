"""Run the project's Spark jobs (OMOP restore, prepare) as a ``SparkApplication``, or restore in-process.

:func:`submit_spark_job` builds the manifest (:mod:`cehrgpt.pipeline.sparkapp`) from the
operator settings and runs it (:mod:`cehrgpt.pipeline.sparkapp_launcher`);
:func:`restore_omop` chooses between that and local Spark in the pod.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cehrgpt.pipeline.sparkapp import (
    SparkApplicationError,
    SparkOperatorSettings,
    application_name,
    build_spark_application,
    minio_access,
)
from cehrgpt.pipeline.sparkapp_launcher import pod_namespace, run_spark_application

#: Where the Spark image (images/spark.Dockerfile) installs the restore job.
RESTORE_MAIN_FILE = "local:///opt/cehrgpt/venv/lib/python3.11/site-packages/cehrgpt/omop/restore.py"
#: Where the Spark image installs the prepare job (OMOP CDM → patient sequences).
PREPARE_MAIN_FILE = "local:///opt/cehrgpt/venv/lib/python3.11/site-packages/cehrgpt/data/prepare.py"
SPARK_MODES = ("operator", "local")


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
