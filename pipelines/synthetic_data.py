"""Pipeline ``synthetic_data``: a trained model → synthetic patients → OMOP, privacy and fidelity → gate → upload.

Steps:
    1. import the model and prepare's three outputs (sequences, vocabulary, prompts) by URI;
    2. plan shards, then one generation pod per shard, each on one GPU (``dsl.ParallelFor``); beside them,
       the model's own memorisation (its loss on training against held-out patients, one GPU);
    3. gather the shards into one Dataset;
    4. in parallel: restore OMOP (SparkApplication or local Spark) then its data-quality checks, the four privacy
       analyses, memorisation, fidelity and utility;
    5. the privacy gate over every analysis (memorisation, the model's memorisation and utility metrics
       included);
    6. only when the gate and the quality checks passed and ``upload`` is on: upload the restored tables,
       credentials from a Secret.

The gate comes before the upload on purpose: a breached threshold must stop
the data from being published, not report it afterwards.
"""

from components.analysis import (
    attribute_inference,
    fidelity_report,
    member_inference,
    memorization,
    nearest_neighbor_inference,
    privacy_gate,
    reid_inference,
    utility,
)
from components.generation import gather_generated_shards, generate_sequences, plan_generation_shards
from components.omop import check_omop_quality, restore_omop_tables, upload_omop_tables
from kfp import dsl, kubernetes
from kfp.dsl import Dataset, Model

from cehrgpt.analysis.gate import pipeline_default
from cehrgpt.pipeline.images import SPARK_IMAGE
from cehrgpt.pipeline.sparkapp import KFP_MINIO_ENDPOINT, KFP_MINIO_SECRET
from pipelines.training import (
    DEFAULT_GPU_TOLERATIONS,
    GPU_RESOURCE,
    add_model_memorization_step,
    expose_pod_identity,
    spark_application_settings,
)

PIPELINE_NAME = "cehrgpt-synthetic-data"
#: Generation pods running at once: the GPUs one run may hold. Kubeflow needs a literal here.
MAX_PARALLEL_GENERATION_PODS = 8
#: Secret keys → environment of the upload task (see manifests/examples/database-secret.yaml).
DATABASE_SECRET_KEYS = {"url": "CEHRGPT_DB_URL", "password": "CEHRGPT_DB_PASSWORD"}
MINIO_SECRET_KEYS = {"accesskey": "AWS_ACCESS_KEY_ID", "secretkey": "AWS_SECRET_ACCESS_KEY"}
ATTRIBUTE_CONFIG_IN_IMAGE = "/opt/cehrgpt/analysis/privacy/attribute_inference_config.yml"


def _resources(task, cpu: str, memory: str, cpu_limit: str | None = None, memory_limit: str | None = None):
    return (
        task.set_cpu_request(cpu)
        .set_cpu_limit(cpu_limit or cpu)
        .set_memory_request(memory)
        .set_memory_limit(memory_limit or memory)
    )


def add_synthesis_steps(
    model,
    prepared,
    *,
    model_memorization_results,
    vocabulary,
    prompts,
    num_of_patients,
    num_shards,
    batch_size,
    buffer_size,
    context_window,
    sampling_strategy,
    top_p,
    top_k,
    temperature,
    repetition_penalty,
    epsilon_cutoff,
    seed,
    device,
    dtype,
    gpu_node_selector,
    gpu_tolerations,
    spark_mode,
    spark_settings,
    attribute_config,
    n_iterations,
    num_of_samples,
    max_reid_risk,
    max_nnaa_privacy_loss,
    max_mia_f1_above_chance,
    max_mia_auc,
    max_mia_tpr_at_fpr_0_01_lift,
    max_memorization_copy_excess,
    max_memorization_shifted_copy_excess,
    max_memorization_near_copy_excess_lower,
    max_memorization_dcr_closer_to_train_share,
    max_aia_f1_lift_over_holdout,
    max_utility_auroc_gap_mean,
    max_model_mia_auc,
    utility_num_tasks,
    upload,
    upload_target,
    upload_schema,
    upload_mode,
    database_secret,
    type_concept_id=32817,
    min_persons=1,
) -> None:
    """Add steps 2-6 to the pipeline being defined, from a model and prepared-data artifact.

    ``model_memorization_results`` is the model-memorisation step's ``results``
    (:func:`pipelines.training.add_model_memorization_step`): the gate reads its metrics.

    ``spark_settings`` is :func:`pipelines.training.spark_application_settings`: the restore's
    SparkApplication and, through its MinIO entries, the generation pods' durable copies.
    """
    # 2. plan shards and generate, one GPU per shard
    plan = plan_generation_shards(num_of_patients=num_of_patients, num_shards=num_shards)
    plan.set_display_name("2. plan generation shards").set_caching_options(True)
    _resources(plan, "100m", "256Mi", "1", "1Gi")
    with dsl.ParallelFor(
        plan.output, parallelism=MAX_PARALLEL_GENERATION_PODS, name="2. generation shards"
    ) as shard:
        generate = generate_sequences(
            model=model,
            prompts=prompts,
            shard_index=shard.shard_index,
            num_shards=shard.num_shards,
            num_of_patients=num_of_patients,
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
            minio_endpoint=spark_settings["minio_endpoint"],
        )
        generate.set_display_name("2. generate a shard (1 GPU)").set_caching_options(True)
        generate.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(1)
        # a retried pod fetches the files its shard already copied to the output artifact's URI, and skips them
        generate.set_retry(num_retries=2, backoff_duration="60s")
        kubernetes.use_secret_as_env(  # MinIO credentials for that copy; absent on other stores
            generate,
            secret_name=spark_settings["minio_credentials_secret"],
            secret_key_to_env=MINIO_SECRET_KEYS,
            optional=True,
        )
        _resources(generate, "4", "32Gi", "8", "48Gi")
        kubernetes.add_node_selector_json(generate, gpu_node_selector)
        kubernetes.add_toleration_json(generate, gpu_tolerations)

    # 3. gather the shards
    gather = gather_generated_shards(shards=dsl.Collected(generate.outputs["generated"]))
    gather.set_display_name("3. gather generation shards").set_caching_options(True)
    _resources(gather, "1", "2Gi", "2", "4Gi")
    sequences = gather.outputs["sequences"]

    # 4. restore, privacy analyses and fidelity, in parallel
    restore = restore_omop_tables(
        sequences=sequences,
        vocabulary=vocabulary,
        spark_mode=spark_mode,
        **spark_settings,
        type_concept_id=type_concept_id,
        min_persons=min_persons,
    )
    restore.set_display_name("4. restore OMOP (Spark)").set_caching_options(True)
    _resources(restore, "2", "8Gi", "4", "16Gi")
    expose_pod_identity(restore)
    quality = check_omop_quality(restored=restore.outputs["restored"], vocabulary=vocabulary)
    quality.set_display_name("4. OMOP data quality").set_caching_options(True)
    _resources(quality, "1", "4Gi", "2", "8Gi")

    samples = {"n_iterations": n_iterations, "num_of_samples": num_of_samples, "seed": seed}
    aia = attribute_inference(
        prepared=prepared, sequences=sequences, model=model, attribute_config=attribute_config, **samples
    )
    aia.set_display_name("4. privacy: attribute inference")
    mia = member_inference(prepared=prepared, sequences=sequences, model=model, **samples)
    mia.set_display_name("4. privacy: membership inference")
    nnaa = nearest_neighbor_inference(prepared=prepared, sequences=sequences, model=model, **samples)
    nnaa.set_display_name("4. privacy: nearest-neighbour adversarial accuracy")
    reid = reid_inference(
        prepared=prepared, sequences=sequences, model=model, attribute_config=attribute_config, seed=seed
    )
    reid.set_display_name("4. privacy: re-identification risk")
    fidelity = fidelity_report(prepared=prepared, vocabulary=vocabulary, sequences=sequences, seed=seed)
    fidelity.set_display_name("4. fidelity report")
    memorized = memorization(prepared=prepared, sequences=sequences, model=model, seed=seed)
    memorized.set_display_name("4. privacy: memorisation")
    useful = utility(prepared=prepared, sequences=sequences, seed=seed, num_tasks=utility_num_tasks)
    useful.set_display_name("4. utility (train on synthetic, test on real)")
    for analysis in (aia, mia, nnaa, reid, fidelity, memorized, useful):
        analysis.set_caching_options(True)
        _resources(analysis, "2", "8Gi", "4", "16Gi")

    # 5. the gate
    gate = privacy_gate(
        attribute_inference=aia.outputs["results"],
        member_inference=mia.outputs["results"],
        nearest_neighbor_inference=nnaa.outputs["results"],
        reid_inference=reid.outputs["results"],
        fidelity=fidelity.outputs["results"],
        memorization=memorized.outputs["results"],
        utility=useful.outputs["results"],
        model_memorization=model_memorization_results,
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
    )
    gate.set_display_name("5. privacy gate").set_caching_options(False)
    _resources(gate, "100m", "256Mi", "1", "1Gi")

    # 6. publish only what passed the gate
    with dsl.If(upload == True, name="6. upload when enabled"):  # noqa: E712 (a pipeline condition, not a Python test)
        load = upload_omop_tables(
            restored=restore.outputs["restored"],
            target=upload_target,
            schema=upload_schema,
            mode=upload_mode,
            min_persons=min_persons,
        )
        load.set_display_name("6. upload OMOP tables").set_caching_options(False).after(gate, quality)
        _resources(load, "1", "4Gi", "2", "8Gi")
        kubernetes.use_secret_as_env(
            load, secret_name=database_secret, secret_key_to_env=DATABASE_SECRET_KEYS
        )


@dsl.pipeline(name=PIPELINE_NAME)
def synthetic_data(
    model_uri: str,
    prepared_data_uri: str,
    vocabulary_uri: str,
    prompts_uri: str,
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
    """Generate synthetic patients with a trained CEHR-GPT model, restore OMOP, check privacy, publish.

    Args:
        model_uri: Folder of the trained model (Hugging Face format, tokenizer included).
        prepared_data_uri: Prepare's sequences output: patient_sequence/{train,test}, prepare_report.json.
        vocabulary_uri: Prepare's vocabulary output (the concept table).
        prompts_uri: Prepare's prompts output (what the generation pods download).
        num_of_patients: Synthetic patients to generate, exactly, over all shards.
        num_shards: Generation pods, one GPU each (at most 8 run at once).
        batch_size: Sequences decoded together per pod.
        buffer_size: Patients per output parquet file.
        context_window: Maximum sequence length, prompt included.
        sampling_strategy: TopPStrategy, TopKStrategy or TopMixStrategy.
        top_p: Nucleus sampling mass.
        top_k: Top-k cut.
        temperature: Sampling temperature.
        repetition_penalty: Penalty on repeated tokens.
        epsilon_cutoff: Epsilon sampling cut-off (0: off).
        seed: Seed of generation and every analysis.
        device: cuda or cpu.
        dtype: Model dtype for generation (bfloat16, float16, float32).
        gpu_node_selector: Node labels for generation pods, e.g. {"cloud.google.com/gke-accelerator": "nvidia-l4"}.
        gpu_tolerations: Tolerations for generation pods (default: the nvidia.com/gpu taint).
        spark_mode: operator (a SparkApplication) or local (Spark inside the restore pod).
        spark_namespace: Namespace of the SparkApplication (empty: the run's own namespace).
        spark_image: Image of the SparkApplication.
        spark_driver_cores: Driver cores.
        spark_driver_memory: Driver memory.
        spark_executor_instances: Executors.
        spark_executor_cores: Cores per executor.
        spark_executor_memory: Memory per executor.
        spark_ttl_seconds: The operator deletes the finished application after this long.
        spark_timeout_seconds: Fail the restore when it has not completed after this long.
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
    model = dsl.importer(artifact_uri=model_uri, artifact_class=Model, reimport=False)
    model.set_display_name("1. import model")
    prepared = dsl.importer(artifact_uri=prepared_data_uri, artifact_class=Dataset, reimport=False)
    prepared.set_display_name("1. import prepared sequences")
    vocabulary = dsl.importer(artifact_uri=vocabulary_uri, artifact_class=Dataset, reimport=False)
    vocabulary.set_display_name("1. import vocabulary")
    prompts = dsl.importer(artifact_uri=prompts_uri, artifact_class=Dataset, reimport=False)
    prompts.set_display_name("1. import prompts")
    memorized = add_model_memorization_step(
        prepared.output,
        model.output,
        seed=seed,
        gpu_node_selector=gpu_node_selector,
        gpu_tolerations=gpu_tolerations,
        step="2",
    )
    add_synthesis_steps(
        model.output,
        prepared.output,
        model_memorization_results=memorized.outputs["results"],
        vocabulary=vocabulary.output,
        prompts=prompts.output,
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
