"""Prepare: OMOP CDM → patient sequences and vocabulary (local Spark or a Spark-operator application)."""

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from cehrgpt.pipeline.images import SPARK_IMAGE


@dsl.component(base_image=SPARK_IMAGE, install_kfp_package=False)
def prepare_sequences(
    omop_source: str,
    omop_source_secret: str,
    test_fraction: float,
    seed: int,
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
    prepared: Output[Dataset],
    vocabulary: Output[Dataset],
    prompts: Output[Dataset],
    metrics: Output[Metrics],
):
    """Turn an OMOP CDM source into train / held-out patient sequences, prompts and its vocabulary.

    Args:
        omop_source: Folder of parquet/CSV tables, a DuckDB file, or a SQLAlchemy URL without password;
            empty: the Secret's url.
        omop_source_secret: Secret whose ``url``/``password`` keys reach prepare as $CEHRGPT_OMOP_URL/_PASSWORD.
        test_fraction: Share of persons held out for evaluation and privacy analyses.
        seed: Seed of the per-person split.
        spark_mode: ``operator`` (a SparkApplication on the cluster) or ``local`` (Spark in this pod).
        namespace: Namespace of the SparkApplication (empty: this pod's).
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
        prepared: patient_sequence/{train,test} and prepare_report.json.
        vocabulary: The concept table (what restore and the fidelity report read).
        prompts: The training patients' 4-token prompts (all a generation pod downloads besides the model).
        metrics: The headline counts of prepare_report.json.
    """
    from cehrgpt.pipeline.sparkapp import SparkOperatorSettings
    from cehrgpt.pipeline.steps import log_metrics_json, run_prepare_step

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
    report_path = run_prepare_step(
        spark_mode,
        omop_source,
        (prepared.path, prepared.uri),
        vocabulary=(vocabulary.path, vocabulary.uri),
        prompts=(prompts.path, prompts.uri),
        test_fraction=test_fraction,
        seed=seed,
        operator=operator,
        omop_source_secret=omop_source_secret,
    )
    if report_path is not None:
        log_metrics_json(report_path, metrics)
