"""Prepare: OMOP CDM → patient sequences and vocabulary."""

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from cehrgpt.pipeline.images import SPARK_IMAGE


@dsl.component(base_image=SPARK_IMAGE, install_kfp_package=False)
def prepare_sequences(
    omop_source: str,
    test_fraction: float,
    seed: int,
    prepared: Output[Dataset],
    vocabulary: Output[Dataset],
    prompts: Output[Dataset],
    metrics: Output[Metrics],
):
    """Turn an OMOP CDM source into train / held-out patient sequences, prompts and its vocabulary.

    Args:
        omop_source: Folder of parquet/CSV tables, a DuckDB file or a SQLAlchemy URL.
        test_fraction: Share of persons held out for evaluation and privacy analyses.
        seed: Seed of the per-person split.
        prepared: patient_sequence/{train,test} and prepare_report.json.
        vocabulary: The concept table (what restore and the fidelity report read).
        prompts: The training patients' 4-token prompts (all a generation pod downloads besides the model).
        metrics: Row counts of prepare_report.json.
    """
    from cehrgpt.data.prepare import main
    from cehrgpt.pipeline.steps import flags, log_metrics_json, run_stage

    argv = flags(
        omop_source=omop_source,
        output_folder=prepared.path,
        vocabulary_folder=vocabulary.path,
        prompts_folder=prompts.path,
        test_fraction=test_fraction,
        seed=seed,
    )
    run_stage("prepare", main, argv)
    log_metrics_json(f"{prepared.path}/prepare_report.json", metrics)
