"""Pipeline ``training``: OMOP CDM → patient sequences → a CEHR-GPT model trained on one GPU.

Steps:
    1. prepare the patient sequences and the vocabulary (a SparkApplication, or Spark in the pod);
    2. train the tokenizer and the model on one GPU;
    3. the model's own memorisation: its loss on training against held-out patients (one GPU).
"""

from components.analysis import model_memorization
from components.data import prepare_sequences
from components.training import train_model
from kfp import dsl, kubernetes

from cehrgpt.data import DEFAULT_TEST_FRACTION
from cehrgpt.pipeline.images import SPARK_IMAGE
from cehrgpt.pipeline.sparkapp import KFP_MINIO_ENDPOINT, KFP_MINIO_SECRET
from cehrgpt.pipeline.sparkapp_launcher import POD_NAME_ENV, POD_UID_ENV
from cehrgpt.pipeline.steps import OMOP_SOURCE_SECRET_KEYS

PIPELINE_NAME = "cehrgpt-training"
GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_GPU_TOLERATIONS = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]


def expose_pod_identity(task):
    """Give a SparkApplication launcher its own pod's name and uid (the downward API), for the ownerReference."""
    kubernetes.use_field_path_as_env(task, env_name=POD_NAME_ENV, field_path="metadata.name")
    kubernetes.use_field_path_as_env(task, env_name=POD_UID_ENV, field_path="metadata.uid")
    return task


def spark_application_settings(
    *,
    spark_namespace,
    spark_image,
    spark_driver_cores,
    spark_driver_memory,
    spark_executor_instances,
    spark_executor_cores,
    spark_executor_memory,
    spark_ttl_seconds,
    spark_timeout_seconds,
    minio_endpoint,
    minio_credentials_secret,
):
    """The pipeline's Spark-operator parameters as the prepare component's arguments."""
    return {
        "namespace": spark_namespace,
        "spark_image": spark_image,
        "driver_cores": spark_driver_cores,
        "driver_memory": spark_driver_memory,
        "executor_instances": spark_executor_instances,
        "executor_cores": spark_executor_cores,
        "executor_memory": spark_executor_memory,
        "ttl_seconds": spark_ttl_seconds,
        "timeout_seconds": spark_timeout_seconds,
        "minio_endpoint": minio_endpoint,
        "minio_credentials_secret": minio_credentials_secret,
    }


def add_training_steps(
    *,
    omop_source,
    omop_source_secret,
    prepare_spark_mode,
    spark_settings,
    test_fraction,
    preset,
    max_steps,
    epochs,
    batch_size,
    learning_rate,
    context_window,
    seed,
    gpu_node_selector,
    gpu_tolerations,
    min_concept_patients,
):
    """Add steps 1-3 to the pipeline being defined; returns (prepare task, train task, model memorisation task)."""
    prepare = prepare_sequences(
        omop_source=omop_source,
        omop_source_secret=omop_source_secret,
        test_fraction=test_fraction,
        seed=seed,
        spark_mode=prepare_spark_mode,
        **spark_settings,
    )
    prepare.set_display_name("1. prepare patient sequences").set_caching_options(True)
    prepare.set_cpu_request("4").set_cpu_limit("8").set_memory_request("16Gi").set_memory_limit("32Gi")
    # the source's url and password from a Secret, never a parameter; optional, for folder sources
    kubernetes.use_secret_as_env(
        prepare, secret_name=omop_source_secret, secret_key_to_env=OMOP_SOURCE_SECRET_KEYS, optional=True
    )
    expose_pod_identity(prepare)

    train = train_model(
        prepared=prepare.outputs["prepared"],
        preset=preset,
        max_steps=max_steps,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        context_window=context_window,
        seed=seed,
        min_concept_patients=min_concept_patients,
    )
    train.set_display_name("2. train CEHR-GPT (1 GPU)").set_caching_options(True)
    train.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(1)
    train.set_cpu_request("4").set_cpu_limit("8").set_memory_request("32Gi").set_memory_limit("48Gi")
    kubernetes.add_node_selector_json(train, gpu_node_selector)
    kubernetes.add_toleration_json(train, gpu_tolerations)

    memorized = add_model_memorization_step(
        prepare.outputs["prepared"],
        train.outputs["model"],
        seed=seed,
        gpu_node_selector=gpu_node_selector,
        gpu_tolerations=gpu_tolerations,
        step="3",
    )
    return prepare, train, memorized


def add_model_memorization_step(prepared, model, *, seed, gpu_node_selector, gpu_tolerations, step: str):
    """Add the model-memorisation step (the loss attack on the model, before any generation); returns the task."""
    task = model_memorization(prepared=prepared, model=model, seed=seed)
    task.set_display_name(f"{step}. privacy: model memorisation (1 GPU)").set_caching_options(True)
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(1)
    task.set_cpu_request("2").set_cpu_limit("4").set_memory_request("16Gi").set_memory_limit("32Gi")
    kubernetes.add_node_selector_json(task, gpu_node_selector)
    kubernetes.add_toleration_json(task, gpu_tolerations)
    return task


@dsl.pipeline(name=PIPELINE_NAME)
def training(
    omop_source: str,
    omop_source_secret: str = "cehrgpt-omop-source",
    prepare_spark_mode: str = "operator",
    test_fraction: float = DEFAULT_TEST_FRACTION,
    preset: str = "small",
    max_steps: int = 0,
    epochs: int = 0,
    batch_size: int = 0,
    learning_rate: float = 0.0,
    context_window: int = 0,
    seed: int = 42,
    gpu_node_selector: dict = {},  # noqa: B006 (a pipeline default, never mutated)
    gpu_tolerations: list = DEFAULT_GPU_TOLERATIONS,
    min_concept_patients: int = 10,
    spark_namespace: str = "",
    spark_image: str = SPARK_IMAGE,
    spark_driver_cores: int = 1,
    spark_driver_memory: str = "4g",
    spark_executor_instances: int = 2,
    spark_executor_cores: int = 2,
    spark_executor_memory: str = "8g",
    spark_ttl_seconds: int = 3600,
    spark_timeout_seconds: int = 21600,
    minio_endpoint: str = KFP_MINIO_ENDPOINT,
    minio_credentials_secret: str = KFP_MINIO_SECRET,
):
    """Prepare patient sequences from an OMOP CDM database, train a CEHR-GPT model on them, measure its memorisation.

    Args:
        omop_source: Folder of parquet/CSV tables, a DuckDB file or a SQLAlchemy URL without password
            (read only); empty: the url of ``omop_source_secret``.
        omop_source_secret: Kubernetes Secret (optional) with the source's ``url`` and ``password``.
        prepare_spark_mode: operator (prepare as a SparkApplication) or local (Spark inside the prepare pod).
        test_fraction: Share of persons held out.
        preset: Model size: tiny, small or base.
        max_steps: Training steps (0: the preset's).
        epochs: Epochs (0: the preset's).
        batch_size: Batch size (0: the preset's).
        learning_rate: Peak learning rate (0: the preset's).
        context_window: Tokens per training window (0: the preset's).
        seed: Seed of the split, initialisation and data order.
        gpu_node_selector: Node labels for the training pod.
        gpu_tolerations: Tolerations for the training pod (default: the nvidia.com/gpu taint).
        min_concept_patients: Leave out of the vocabulary concepts seen in fewer training patients
            (small-cell suppression; 1 keeps every concept).
        spark_namespace: Namespace of prepare's SparkApplication (empty: the run's own namespace).
        spark_image: Image of the SparkApplication.
        spark_driver_cores: Driver cores.
        spark_driver_memory: Driver memory.
        spark_executor_instances: Executors.
        spark_executor_cores: Cores per executor.
        spark_executor_memory: Memory per executor.
        spark_ttl_seconds: The operator deletes the finished application after this long.
        spark_timeout_seconds: Fail prepare when it has not completed after this long.
        minio_endpoint: S3 endpoint of Kubeflow's MinIO artifact store (used when artifacts are on it).
        minio_credentials_secret: Secret with the MinIO ``accesskey`` and ``secretkey``.
    """
    add_training_steps(
        omop_source=omop_source,
        omop_source_secret=omop_source_secret,
        prepare_spark_mode=prepare_spark_mode,
        spark_settings=spark_application_settings(
            spark_namespace=spark_namespace,
            spark_image=spark_image,
            spark_driver_cores=spark_driver_cores,
            spark_driver_memory=spark_driver_memory,
            spark_executor_instances=spark_executor_instances,
            spark_executor_cores=spark_executor_cores,
            spark_executor_memory=spark_executor_memory,
            spark_ttl_seconds=spark_ttl_seconds,
            spark_timeout_seconds=spark_timeout_seconds,
            minio_endpoint=minio_endpoint,
            minio_credentials_secret=minio_credentials_secret,
        ),
        test_fraction=test_fraction,
        preset=preset,
        max_steps=max_steps,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        context_window=context_window,
        seed=seed,
        gpu_node_selector=gpu_node_selector,
        gpu_tolerations=gpu_tolerations,
        min_concept_patients=min_concept_patients,
    )
