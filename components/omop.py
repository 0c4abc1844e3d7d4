"""Restore OMOP tables (local Spark or a Spark-operator application) and upload them."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from cehrgpt.pipeline.images import CPU_IMAGE, SPARK_IMAGE


@dsl.component(base_image=SPARK_IMAGE, install_kfp_package=False)
def restore_omop_tables(
    sequences: Input[Dataset],
    vocabulary: Input[Dataset],
    spark_mode: str,
    namespace: str,
    spark_image: str,
    driver_cores: int,
    driver_memory: str,
    executor_instances: int,
    executor_cores: int,
    executor_memory: str,
    ttl_seconds: int,
    timeout_seconds: int,
    minio_endpoint: str,
    minio_credentials_secret: str,
    restored: Output[Dataset],
    metrics: Output[Metrics],
    type_concept_id: int = 32817,
    min_persons: int = 1,
):
    """Restore CDM 5.4 tables from the generated sequences (the seed's Step 2).

    Args:
        sequences: The gathered generated sequences.
        vocabulary: Prepare's vocabulary (the concept table).
        spark_mode: ``operator`` (a SparkApplication on the cluster) or ``local`` (Spark in this pod).
        namespace: Namespace of the SparkApplication.
        spark_image: Image of the SparkApplication's driver and executors.
        driver_cores: Driver cores.
        driver_memory: Driver memory (Spark notation, e.g. 4g).
        executor_instances: Executors.
        executor_cores: Cores per executor.
        executor_memory: Memory per executor.
        ttl_seconds: The operator deletes the finished application after this long.
        timeout_seconds: Fail the task when the application has not completed after this long.
        minio_endpoint: S3 endpoint of Kubeflow's MinIO store, for the application's s3a paths.
        minio_credentials_secret: Secret with the store's ``accesskey`` and ``secretkey``.
        restored: One parquet folder per CDM table, rejected/ and restore_report.json.
        type_concept_id: The visit, event and death type concept (32817: EHR).
        min_persons: Fewer restored persons fail the task and publish nothing.
        metrics: Rows per table and rejections per reason.
    """
    from cehrgpt.pipeline.sparkapp import SparkOperatorSettings
    from cehrgpt.pipeline.steps import log_metrics_json, run_restore_step

    operator = SparkOperatorSettings(
        namespace=namespace,
        image=spark_image,
        driver_cores=driver_cores,
        driver_memory=driver_memory,
        executor_instances=executor_instances,
        executor_cores=executor_cores,
        executor_memory=executor_memory,
        ttl_seconds=ttl_seconds,
        timeout_s=timeout_seconds,
        minio_endpoint=minio_endpoint,
        minio_credentials_secret=minio_credentials_secret,
    )
    report_path = run_restore_step(
        spark_mode,
        (sequences.path, sequences.uri),
        (vocabulary.path, vocabulary.uri),
        (restored.path, restored.uri),
        operator,
        type_concept_id=type_concept_id,
        min_persons=min_persons,
    )
    if report_path is not None:
        log_metrics_json(report_path, metrics)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def check_omop_quality(
    restored: Input[Dataset], vocabulary: Input[Dataset], quality: Output[Dataset], metrics: Output[Metrics]
):
    """OHDSI-style data-quality checks on the restored tables; the task fails when a check fails.

    Args:
        restored: The restored CDM tables.
        vocabulary: Prepare's vocabulary (the concept table), for the domain checks.
        quality: quality_report.json.
        metrics: Checks passed, failed and not applicable.
    """
    from cehrgpt.pipeline.steps import run_quality_step

    run_quality_step(restored.path, vocabulary.path, quality.path, metrics)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def upload_omop_tables(
    restored: Input[Dataset],
    target: str,
    schema: str,
    mode: str,
    metrics: Output[Metrics],
    min_persons: int = 1,
):
    """Load the restored tables into a database, all or nothing (the seed's Step 3).

    The database password (``$CEHRGPT_DB_PASSWORD``) and, when ``target`` is empty,
    the URL (``$CEHRGPT_DB_URL``) come from a Kubernetes Secret, never from a pipeline parameter.

    Args:
        restored: The restored CDM tables.
        target: SQLAlchemy URL without the password, or empty to take it from the Secret.
        schema: Target schema (empty: the database's default).
        mode: replace, append or fail.
        min_persons: A person table of fewer rows is refused before the target is touched.
        metrics: Rows uploaded per table (the upload summary's numbers).
    """
    from cehrgpt.pipeline.steps import database_target, flags, log_metrics_json, run_stage
    from cehrgpt.tools.upload_omop import main

    summary = f"{metrics.path}.upload_summary.json"
    argv = flags(
        target=database_target(target),
        input_folder=restored.path,
        schema=schema or None,
        mode=mode,
        summary_path=summary,
        min_persons=min_persons,
    )
    run_stage("upload", main, argv)
    log_metrics_json(summary, metrics)
