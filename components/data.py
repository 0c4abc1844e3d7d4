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
    metrics: Output[Metrics],
):
    """Turn an OMOP CDM source into train / held-out patient sequences and copy its vocabulary.

    Args:
        omop_source: Folder of parquet/CSV tables, a DuckDB file or a SQLAlchemy URL.
        test_fraction: Share of persons held out for evaluation and privacy analyses.
        seed: Seed of the per-person split.
        prepared: patient_sequence/{train,test}, omop_vocab/ and prepare_report.json.
        metrics: Row counts of prepare_report.json.
    """
    from cehrgpt.data.prepare import main
    from cehrgpt.pipeline.steps import flags, log_metrics_json, run_stage

    argv = flags(omop_source=omop_source, output_folder=prepared.path, test_fraction=test_fraction, seed=seed)
    run_stage("prepare", main, argv)
    log_metrics_json(f"{prepared.path}/prepare_report.json", metrics)
