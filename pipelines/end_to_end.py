"""Pipeline ``end_to_end``: OMOP CDM → trained model → synthetic OMOP, privacy-gated.

Steps 1-3 are the ``training`` pipeline's (3: the model's own memorisation,
whose metrics the gate reads), steps 2-6 the ``synthetic_data`` pipeline's, fed
by the freshly trained model instead of imported artifacts.
Generation flags keep the seed's names; the training ones are prefixed ``train_``.
"""

from kfp import dsl

from cehrgpt.analysis.gate import pipeline_default
from cehrgpt.data import DEFAULT_TEST_FRACTION
from cehrgpt.pipeline.images import SPARK_IMAGE
from cehrgpt.pipeline.sparkapp import KFP_MINIO_ENDPOINT, KFP_MINIO_SECRET
from pipelines.synthetic_data import (
    ATTRIBUTE_CONFIG_IN_IMAGE,
    DEFAULT_GPU_TOLERATIONS,
    add_synthesis_steps,
)
from pipelines.training import add_training_steps, spark_application_settings

PIPELINE_NAME = "cehrgpt-end-to-end"


@dsl.pipeline(name=PIPELINE_NAME)
def end_to_end(
    omop_source: str,
    omop_source_secret: str = "cehrgpt-omop-source",
    prepare_spark_mode: str = "operator",
    test_fraction: float = DEFAULT_TEST_FRACTION,
    preset: str = "small",
    max_steps: int = 0,
    epochs: int = 0,
    train_batch_size: int = 0,
    learning_rate: float = 0.0,
    train_context_window: int = 0,
    min_concept_patients: int = 10,
    num_of_patients: int = 128,
    num_shards: int = 1,
    batch_size: int = 16,
    buffer_size: int = 128,
    context_window: int = 4096,
    sampling_strategy: str = "TopPStrategy",
    top_p: float = 1.0,
    top_k: int = 300,
    temperature: float = 1.0,
    repetition_penalty: float = 1.0,
    epsilon_cutoff: float = 0.0,
    seed: int = 42,
    device: str = "cuda",
    dtype: str = "bfloat16",
    gpu_node_selector: dict = {},  # noqa: B006 (a pipeline default, never mutated)
    gpu_tolerations: list = DEFAULT_GPU_TOLERATIONS,
    spark_mode: str = "operator",
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
    attribute_config: str = ATTRIBUTE_CONFIG_IN_IMAGE,
    n_iterations: int = 10,
    num_of_samples: int = 10000,
    max_reid_risk: float = 0.09,
    max_nnaa_privacy_loss: float = 0.05,
    max_mia_f1_above_chance: float = 0.1,
    max_mia_auc: float = pipeline_default("mia_auc"),
    max_mia_tpr_at_fpr_0_01_lift: float = pipeline_default("mia_tpr_at_fpr_0_01_lift"),
    max_memorization_copy_excess: float = pipeline_default("memorization_copy_excess"),
    max_memorization_shifted_copy_excess: float = pipeline_default("memorization_shifted_copy_excess"),
    max_memorization_near_copy_excess_lower: float = pipeline_default("memorization_near_copy_excess_lower"),
    max_memorization_dcr_closer_to_train_share: float = pipeline_default(
        "memorization_dcr_closer_to_train_share"
    ),
    max_aia_f1_lift_over_holdout: float = pipeline_default("aia_f1_lift_over_holdout"),
    max_utility_auroc_gap_mean: float = pipeline_default("utility_auroc_gap_mean"),
    max_model_mia_auc: float = pipeline_default("model_mia_auc"),
    utility_num_tasks: int = 10,
    upload: bool = False,
    upload_target: str = "",
    upload_schema: str = "",
    upload_mode: str = "replace",
    database_secret: str = "cehrgpt-database",
    type_concept_id: int = 32817,
    min_persons: int = 1,
):
    """Train CEHR-GPT on an OMOP CDM database, generate synthetic patients, restore OMOP, gate on privacy, publish.

    Args:
        omop_source: Folder of parquet/CSV tables, a DuckDB file or a SQLAlchemy URL without password
            (read only); empty: the url of ``omop_source_secret``.
        omop_source_secret: Kubernetes Secret (optional) with the source's ``url`` and ``password``.
        prepare_spark_mode: operator (prepare as a SparkApplication) or local (Spark inside the prepare pod).
        test_fraction: Share of persons held out (the privacy analyses' non-members).
        preset: Model size: tiny, small or base.
        max_steps: Training steps (0: the preset's).
        epochs: Training epochs (0: the preset's).
        train_batch_size: Training batch size (0: the preset's).
        learning_rate: Peak learning rate (0: the preset's).
        train_context_window: Tokens per training window (0: the preset's).
        min_concept_patients: Leave out of the vocabulary concepts seen in fewer training patients
            (small-cell suppression; 1 keeps every concept).
        num_of_patients: Synthetic patients to generate, exactly, over all shards.
        num_shards: Generation pods, one GPU each (at most 8 run at once).
        batch_size: Sequences decoded together per generation pod.
        buffer_size: Patients per output parquet file.
        context_window: Maximum generated sequence length, prompt included.
        sampling_strategy: TopPStrategy, TopKStrategy or TopMixStrategy.
        top_p: Nucleus sampling mass.
        top_k: Top-k cut.
        temperature: Sampling temperature.
        repetition_penalty: Penalty on repeated tokens.
        epsilon_cutoff: Epsilon sampling cut-off (0: off).
        seed: Seed of the split, training, generation and every analysis.
        device: cuda or cpu (generation).
        dtype: Model dtype for generation (bfloat16, float16, float32).
        gpu_node_selector: Node labels for the GPU pods.
        gpu_tolerations: Tolerations for the GPU pods (default: the nvidia.com/gpu taint).
        spark_mode: operator (a SparkApplication) or local (Spark inside the restore pod).
        spark_namespace: Namespace of the SparkApplications (empty: the run's own namespace).
        spark_image: Image of the SparkApplication.
        spark_driver_cores: Driver cores.
        spark_driver_memory: Driver memory.
        spark_executor_instances: Executors.
        spark_executor_cores: Cores per executor.
        spark_executor_memory: Memory per executor.
        spark_ttl_seconds: The operator deletes the finished application after this long.
        spark_timeout_seconds: Fail prepare or the restore when not completed after this long.
        minio_endpoint: S3 endpoint of Kubeflow's MinIO artifact store (used when artifacts are on it).
        minio_credentials_secret: Secret with the MinIO ``accesskey`` and ``secretkey``.
        attribute_config: Attribute-inference YAML (a path inside the CPU image).
        n_iterations: Repetitions of each sampled privacy analysis.
        num_of_samples: Patients per repetition.
        max_reid_risk: Gate: highest acceptable re-identification risk.
        max_nnaa_privacy_loss: Gate: highest acceptable NNAA privacy loss.
        max_mia_f1_above_chance: Gate: highest acceptable membership-inference F1 above chance.
        max_mia_auc: Gate: highest acceptable membership-inference ROC AUC (0.5 = chance).
        max_mia_tpr_at_fpr_0_01_lift: Gate: highest acceptable share of members exposed at FPR ≤ 1% beyond
            the 99th percentile of chance.
        max_memorization_copy_excess: Gate: highest acceptable share of verbatim training copies beyond chance.
        max_memorization_shifted_copy_excess: Gate: the same for copies moved in calendar time.
        max_memorization_near_copy_excess_lower: Gate: highest acceptable 95% lower bound of the near-copy
            excess over held-out controls.
        max_memorization_dcr_closer_to_train_share: Gate: highest acceptable share of synthetic patients
            nearer a training than a held-out record, at equal set sizes (0.5 = no memorisation; 1.0: no limit).
        max_aia_f1_lift_over_holdout: Gate: highest acceptable attribute-inference F1 beyond the held-out control.
        max_utility_auroc_gap_mean: Gate: highest acceptable TRTR − TSTR AUROC gap (1.0: no limit).
        max_model_mia_auc: Gate: highest acceptable ROC AUC of the loss attack on the model itself
            (0.5 = chance).
        utility_num_tasks: Prediction tasks of the utility analysis.
        upload: Upload the restored tables when the gate passes.
        upload_target: SQLAlchemy URL without password; empty to use the Secret's url.
        upload_schema: Target schema.
        upload_mode: replace, append or fail.
        database_secret: Kubernetes Secret with the database url and password.
        type_concept_id: Type concept of the restored visits, events and deaths (32817: EHR).
        min_persons: Fewer restored persons stop the restore and the upload (an empty release never
            replaces a database).
    """
    # one set of Spark-operator settings for prepare and restore
    spark_settings = spark_application_settings(
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
    )
    prepare, train, memorized = add_training_steps(
        omop_source=omop_source,
        omop_source_secret=omop_source_secret,
        prepare_spark_mode=prepare_spark_mode,
        spark_settings=spark_settings,
        test_fraction=test_fraction,
        preset=preset,
        max_steps=max_steps,
        epochs=epochs,
        batch_size=train_batch_size,
        learning_rate=learning_rate,
        context_window=train_context_window,
        seed=seed,
        gpu_node_selector=gpu_node_selector,
        gpu_tolerations=gpu_tolerations,
        min_concept_patients=min_concept_patients,
    )
    add_synthesis_steps(
        train.outputs["model"],
        prepare.outputs["prepared"],
        model_memorization_results=memorized.outputs["results"],
        vocabulary=prepare.outputs["vocabulary"],
        prompts=prepare.outputs["prompts"],
        num_of_patients=num_of_patients,
        num_shards=num_shards,
        batch_size=batch_size,
        buffer_size=buffer_size,
        context_window=context_window,
        sampling_strategy=sampling_strategy,
        top_p=top_p,
        top_k=top_k,
        temperature=temperature,
        repetition_penalty=repetition_penalty,
        epsilon_cutoff=epsilon_cutoff,
        seed=seed,
        device=device,
        dtype=dtype,
        gpu_node_selector=gpu_node_selector,
        gpu_tolerations=gpu_tolerations,
        spark_mode=spark_mode,
        spark_settings=spark_settings,
        attribute_config=attribute_config,
        n_iterations=n_iterations,
        num_of_samples=num_of_samples,
        max_reid_risk=max_reid_risk,
        max_nnaa_privacy_loss=max_nnaa_privacy_loss,
        max_mia_f1_above_chance=max_mia_f1_above_chance,
        max_mia_auc=max_mia_auc,
        max_mia_tpr_at_fpr_0_01_lift=max_mia_tpr_at_fpr_0_01_lift,
        max_memorization_copy_excess=max_memorization_copy_excess,
        max_memorization_shifted_copy_excess=max_memorization_shifted_copy_excess,
        max_memorization_near_copy_excess_lower=max_memorization_near_copy_excess_lower,
        max_memorization_dcr_closer_to_train_share=max_memorization_dcr_closer_to_train_share,
        max_aia_f1_lift_over_holdout=max_aia_f1_lift_over_holdout,
        max_utility_auroc_gap_mean=max_utility_auroc_gap_mean,
        max_model_mia_auc=max_model_mia_auc,
        utility_num_tasks=utility_num_tasks,
        upload=upload,
        upload_target=upload_target,
        upload_schema=upload_schema,
        upload_mode=upload_mode,
        database_secret=database_secret,
        type_concept_id=type_concept_id,
        min_persons=min_persons,
    )
