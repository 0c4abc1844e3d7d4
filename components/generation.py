"""Generate: plan shards, one GPU pod per shard, gather the shards."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from cehrgpt.pipeline.images import CPU_IMAGE, GPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def plan_generation_shards(num_of_patients: int, num_shards: int) -> list:
    """Split the patients to generate over parallel pods.

    Args:
        num_of_patients: Patients the whole run produces (exactly).
        num_shards: Parallel generation pods, one GPU each.

    Returns:
        One ``{"shard_index", "num_shards", "num_of_patients"}`` per shard.
    """
    from cehrgpt.generation.sharding import plan_shards

    return plan_shards(num_of_patients, num_shards)


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def generate_sequences(
    model: Input[Model],
    prompts: Input[Dataset],
    shard_index: int,
    num_shards: int,
    num_of_patients: int,
    batch_size: int,
    buffer_size: int,
    context_window: int,
    sampling_strategy: str,
    top_p: float,
    top_k: int,
    temperature: float,
    repetition_penalty: float,
    epsilon_cutoff: float,
    seed: int,
    device: str,
    dtype: str,
    minio_endpoint: str,
    generated: Output[Dataset],
):
    """Generate one shard of synthetic patient sequences (the seed's Step 1) on one GPU.

    Args:
        model: The trained model and tokenizer folder.
        prompts: Prepare's prompts (the training patients' first 4 tokens), drawn with the seed.
        shard_index: This pod's shard.
        num_shards: Shards in the run.
        num_of_patients: Patients of the whole run (the shard takes its share).
        batch_size: Sequences decoded together.
        buffer_size: Patients per output parquet file.
        context_window: Maximum sequence length, prompt included.
        sampling_strategy: TopPStrategy, TopKStrategy or TopMixStrategy.
        top_p: Nucleus sampling mass.
        top_k: Top-k cut.
        temperature: Sampling temperature.
        repetition_penalty: Penalty on repeated tokens.
        epsilon_cutoff: Epsilon sampling cut-off (0: off).
        seed: Seed of the run (shards derive theirs from it).
        device: cuda or cpu.
        dtype: Model dtype on the device.
        minio_endpoint: S3 endpoint of Kubeflow's MinIO store (used when the output artifact is on it).
        generated: <strategy>/generated_sequences/*.parquet and generation_summary.json; each finished file is
            also copied to the artifact's URI at once, so a retried pod skips it.
    """
    from cehrgpt.generation.generate_batch_hf_gpt_sequence import main
    from cehrgpt.pipeline.steps import flags, run_stage

    argv = flags(
        model_folder=model.path,
        tokenizer_folder=model.path,
        output_folder=generated.path,
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
        demographic_data_path=prompts.path,
        shard_index=shard_index,
        num_shards=num_shards,
        seed=seed,
        device=device,
        dtype=dtype,
        durable_output_uri=generated.uri,
        durable_s3_endpoint=minio_endpoint,
    )
    run_stage("generate", main, argv)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def gather_generated_shards(
    shards: Input[list[Dataset]],
    sequences: Output[Dataset],
    metrics: Output[Metrics],
):
    """Collect every shard's sequences into one Dataset and sum the generation summaries.

    Args:
        shards: The generation tasks' outputs.
        sequences: generated_sequences/*.parquet and generation_summary.json.
        metrics: Summed generation figures (patients, tokens, valid patients).
    """
    from cehrgpt.pipeline.steps import gather_generated_shards, log_metrics_json

    gather_generated_shards([shard.path for shard in shards], sequences.path)
    log_metrics_json(f"{sequences.path}/generation_summary.json", metrics)
