"""Pipeline ``training``: OMOP CDM → patient sequences → a CEHR-GPT model trained on one GPU.

Steps:
    1. prepare the patient sequences and the vocabulary (Spark in the pod);
    2. train the tokenizer and the model on one GPU.
"""

from components.data import prepare_sequences
from components.training import train_model
from kfp import dsl, kubernetes

from cehrgpt.pipeline.sparkapp import POD_NAME_ENV, POD_UID_ENV

PIPELINE_NAME = "cehrgpt-training"
GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_GPU_TOLERATIONS = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]


def expose_pod_identity(task):
    """Give a SparkApplication launcher its own pod's name and uid (the downward API), for the ownerReference."""
    kubernetes.use_field_path_as_env(task, env_name=POD_NAME_ENV, field_path="metadata.name")
    kubernetes.use_field_path_as_env(task, env_name=POD_UID_ENV, field_path="metadata.uid")
    return task


def add_training_steps(
    *,
    omop_source,
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
):
    """Add steps 1-2 to the pipeline being defined; returns (prepare task, train task)."""
    prepare = prepare_sequences(omop_source=omop_source, test_fraction=test_fraction, seed=seed)
    prepare.set_display_name("1. prepare patient sequences").set_caching_options(True)
    prepare.set_cpu_request("4").set_cpu_limit("8").set_memory_request("16Gi").set_memory_limit("32Gi")

    train = train_model(
        prepared=prepare.outputs["prepared"],
        preset=preset,
        max_steps=max_steps,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        context_window=context_window,
        seed=seed,
    )
    train.set_display_name("2. train CEHR-GPT (1 GPU)").set_caching_options(True)
    train.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(1)
    train.set_cpu_request("4").set_cpu_limit("8").set_memory_request("32Gi").set_memory_limit("48Gi")
    kubernetes.add_node_selector_json(train, gpu_node_selector)
    kubernetes.add_toleration_json(train, gpu_tolerations)
    return prepare, train


@dsl.pipeline(name=PIPELINE_NAME)
def training(
    omop_source: str,
    test_fraction: float = 0.2,
    preset: str = "small",
    max_steps: int = 0,
    epochs: int = 0,
    batch_size: int = 0,
    learning_rate: float = 0.0,
    context_window: int = 0,
    seed: int = 42,
    gpu_node_selector: dict = {},  # noqa: B006 (a pipeline default, never mutated)
    gpu_tolerations: list = DEFAULT_GPU_TOLERATIONS,
):
    """Prepare patient sequences from an OMOP CDM database and train a CEHR-GPT model on them.

    Args:
        omop_source: Folder of parquet/CSV tables, a DuckDB file or a SQLAlchemy URL (read only).
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
    """
    add_training_steps(
        omop_source=omop_source,
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
    )
