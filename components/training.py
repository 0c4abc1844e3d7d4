"""Train: patient sequences → a CEHR-GPT model (Hugging Face folder)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from cehrgpt.pipeline.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train_model(
    prepared: Input[Dataset],
    preset: str,
    max_steps: int,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    context_window: int,
    seed: int,
    model: Output[Model],
    metrics: Output[Metrics],
    min_concept_patients: int = 10,
):
    """Train the tokenizer and a GPT-2 CEHR-GPT model on the training sequences.

    Args:
        prepared: Output of prepare (its patient_sequence folder is read).
        preset: tiny, small or base.
        max_steps: Stop after this many steps (0: the preset's).
        epochs: Epochs (0: the preset's).
        batch_size: Per-device batch size (0: the preset's).
        learning_rate: Peak learning rate (0: the preset's).
        context_window: Tokens per training window (0: the preset's).
        seed: Seed of initialisation and data order.
        min_concept_patients: Leave out concepts seen in fewer training patients (small-cell
            suppression, default 10; 1 keeps every concept).
        model: The Hugging Face model folder with tokenizer and training_metrics.json.
        metrics: Losses, perplexities and throughput of training_metrics.json.
    """
    from cehrgpt.pipeline.steps import SEQUENCES, flags, log_metrics_json, run_stage
    from cehrgpt.train import main

    argv = flags(
        data_folder=f"{prepared.path}/{SEQUENCES}",
        output_folder=model.path,
        preset=preset,
        max_steps=max_steps or None,
        epochs=epochs or None,
        batch_size=batch_size or None,
        learning_rate=learning_rate or None,
        context_window=context_window or None,
        seed=seed,
        min_concept_patients=min_concept_patients,
    )
    run_stage("train", main, argv)
    log_metrics_json(f"{model.path}/training_metrics.json", metrics)
