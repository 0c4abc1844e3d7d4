"""Privacy analyses, fidelity report and the release gate."""

from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from cehrgpt.pipeline.images import CPU_IMAGE, GPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def attribute_inference(
    prepared: Input[Dataset],
    sequences: Input[Dataset],
    model: Input[Model],
    attribute_config: str,
    n_iterations: int,
    num_of_samples: int,
    seed: int,
    results: Output[Dataset],
    metrics: Output[Metrics],
):
    """Attribute inference: can a synthetic neighbour reveal a real patient's sensitive concepts?

    Args:
        prepared: Output of prepare (training sequences).
        sequences: The gathered generated sequences.
        model: The model folder (its tokenizer).
        attribute_config: YAML with common_attributes and sensitive_attributes (a path in the image).
        n_iterations: Repetitions.
        num_of_samples: Patients sampled per repetition.
        seed: Sampling seed.
        results: The analysis' tables and metrics.json.
        metrics: Precision, recall and F1, synthetic-train vs train-train and the held-out control's lift.
    """
    from cehrgpt.analysis.privacy.attribute_inference import main
    from cehrgpt.pipeline.steps import (
        GENERATED_SEQUENCES,
        HELD_OUT_SEQUENCES,
        TRAIN_SEQUENCES,
        flags,
        log_metrics_json,
        run_stage,
    )

    argv = flags(
        training_data_folder=f"{prepared.path}/{TRAIN_SEQUENCES}",
        evaluation_data_folder=f"{prepared.path}/{HELD_OUT_SEQUENCES}",
        output_folder=results.path,
        synthetic_data_folder=f"{sequences.path}/{GENERATED_SEQUENCES}",
        tokenizer_path=model.path,
        attribute_config=attribute_config,
        n_iterations=n_iterations,
        num_of_samples=num_of_samples,
        seed=seed,
    )
    run_stage("attribute_inference", main, argv)
    log_metrics_json(f"{results.path}/metrics.json", metrics)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def member_inference(
    prepared: Input[Dataset],
    sequences: Input[Dataset],
    model: Input[Model],
    n_iterations: int,
    num_of_samples: int,
    seed: int,
    results: Output[Dataset],
    metrics: Output[Metrics],
    roc: Output[ClassificationMetrics],
):
    """Membership inference: are training patients closer to the synthetic set than held-out ones?

    Args:
        prepared: Output of prepare (training and held-out sequences).
        sequences: The gathered generated sequences.
        model: The model folder (its tokenizer).
        n_iterations: Repetitions.
        num_of_samples: Patients sampled per repetition.
        seed: Sampling seed.
        results: The analysis' tables and metrics.json.
        metrics: Accuracy, precision, recall, F1, ROC AUC and TPR at low FPR of the attack.
        roc: The attack's ROC curve (distance to the nearest synthetic patient as the score).
    """
    from cehrgpt.analysis.privacy.member_inference import ROC_FILE, log_roc_curve_file, main
    from cehrgpt.pipeline.steps import (
        GENERATED_SEQUENCES,
        HELD_OUT_SEQUENCES,
        TRAIN_SEQUENCES,
        flags,
        log_metrics_json,
        run_stage,
    )

    argv = flags(
        training_data_folder=f"{prepared.path}/{TRAIN_SEQUENCES}",
        evaluation_data_folder=f"{prepared.path}/{HELD_OUT_SEQUENCES}",
        output_folder=results.path,
        synthetic_data_folder=f"{sequences.path}/{GENERATED_SEQUENCES}",
        tokenizer_path=model.path,
        n_iterations=n_iterations,
        num_of_samples=num_of_samples,
        seed=seed,
    )
    run_stage("member_inference", main, argv)
    log_metrics_json(f"{results.path}/metrics.json", metrics)
    log_roc_curve_file(f"{results.path}/{ROC_FILE}", roc)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def nearest_neighbor_inference(
    prepared: Input[Dataset],
    sequences: Input[Dataset],
    model: Input[Model],
    n_iterations: int,
    num_of_samples: int,
    seed: int,
    results: Output[Dataset],
    metrics: Output[Metrics],
):
    """Nearest-neighbour adversarial accuracy (train and held-out) and the privacy loss between them.

    Args:
        prepared: Output of prepare (training and held-out sequences).
        sequences: The gathered generated sequences.
        model: The model folder (its tokenizer).
        n_iterations: Repetitions.
        num_of_samples: Patients sampled per repetition.
        seed: Sampling seed.
        results: The analysis' tables and metrics.json.
        metrics: AA_train, AA_test, NNAA privacy loss, tie rate.
    """
    from cehrgpt.analysis.privacy.nearest_neighbor_inference import main
    from cehrgpt.pipeline.steps import (
        GENERATED_SEQUENCES,
        HELD_OUT_SEQUENCES,
        TRAIN_SEQUENCES,
        flags,
        log_metrics_json,
        run_stage,
    )

    argv = flags(
        training_data_folder=f"{prepared.path}/{TRAIN_SEQUENCES}",
        evaluation_data_folder=f"{prepared.path}/{HELD_OUT_SEQUENCES}",
        metrics_folder=results.path,
        synthetic_data_folder=f"{sequences.path}/{GENERATED_SEQUENCES}",
        concept_tokenizer_path=model.path,
        n_iterations=n_iterations,
        num_of_samples=num_of_samples,
        seed=seed,
    )
    run_stage("nearest_neighbor_inference", main, argv)
    log_metrics_json(f"{results.path}/metrics.json", metrics)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def reid_inference(
    prepared: Input[Dataset],
    sequences: Input[Dataset],
    model: Input[Model],
    attribute_config: str,
    seed: int,
    results: Output[Dataset],
    metrics: Output[Metrics],
):
    """Re-identification risk of the synthetic records against the training sample and the population.

    Args:
        prepared: Output of prepare (training and held-out sequences).
        sequences: The gathered generated sequences.
        model: The model folder (its tokenizer's concepts are the features).
        attribute_config: YAML naming the common (quasi-identifier) and sensitive concepts.
        seed: Recorded with the results (nothing is sampled).
        results: The analysis' tables and metrics.json.
        metrics: Re-identification risks.
    """
    from cehrgpt.analysis.privacy.reid_inference import main
    from cehrgpt.pipeline.steps import (
        GENERATED_SEQUENCES,
        HELD_OUT_SEQUENCES,
        TRAIN_SEQUENCES,
        flags,
        log_metrics_json,
        run_stage,
    )

    argv = flags(
        training_data_folder=f"{prepared.path}/{TRAIN_SEQUENCES}",
        evaluation_data_folder=f"{prepared.path}/{HELD_OUT_SEQUENCES}",
        output_folder=results.path,
        synthetic_data_folder=f"{sequences.path}/{GENERATED_SEQUENCES}",
        attribute_config=attribute_config,
        tokenizer_path=model.path,
        seed=seed,
    )
    run_stage("reid_inference", main, argv)
    log_metrics_json(f"{results.path}/metrics.json", metrics)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def fidelity_report(
    prepared: Input[Dataset],
    vocabulary: Input[Dataset],
    sequences: Input[Dataset],
    seed: int,
    results: Output[Dataset],
    metrics: Output[Metrics],
    report: Output[HTML],
):
    """How closely the synthetic patients follow the real ones: prevalence, co-occurrence, lengths, demographics.

    Args:
        prepared: Output of prepare (training sequences).
        vocabulary: Prepare's vocabulary (the concept table gives the domains).
        sequences: The gathered generated sequences.
        seed: Seed of any sampling.
        results: metrics.json and report.html.
        metrics: The fidelity metrics.
        report: The HTML report with its plots, shown in the Kubeflow UI.
    """
    import shutil

    from cehrgpt.analysis.fidelity import main
    from cehrgpt.pipeline.steps import (
        GENERATED_SEQUENCES,
        TRAIN_SEQUENCES,
        flags,
        log_metrics_json,
        run_stage,
    )

    argv = flags(
        real_data_folder=f"{prepared.path}/{TRAIN_SEQUENCES}",
        synthetic_data_folder=f"{sequences.path}/{GENERATED_SEQUENCES}",
        output_folder=results.path,
        vocab_folder=vocabulary.path,
        seed=seed,
    )
    run_stage("fidelity", main, argv)
    log_metrics_json(f"{results.path}/metrics.json", metrics)
    shutil.copyfile(f"{results.path}/report.html", report.path)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def memorization(
    prepared: Input[Dataset],
    sequences: Input[Dataset],
    model: Input[Model],
    seed: int,
    results: Output[Dataset],
    metrics: Output[Metrics],
):
    """Memorisation: synthetic patients that copy a training patient, and distances to closest records.

    Args:
        prepared: Output of prepare (training and held-out sequences).
        sequences: The gathered generated sequences (the whole set is analysed).
        model: The model folder (its tokenizer's concepts are the features).
        seed: Seed of the training partition and samples.
        results: metrics.json, memorized_patients.parquet, memorized_person_ids.csv, dcr.parquet.
        metrics: Copy shares, copy excess, DCR closer-to-training share and 5th percentiles.
    """
    from cehrgpt.analysis.privacy.memorization import main
    from cehrgpt.pipeline.steps import (
        GENERATED_SEQUENCES,
        HELD_OUT_SEQUENCES,
        TRAIN_SEQUENCES,
        flags,
        log_metrics_json,
        run_stage,
    )

    argv = flags(
        training_data_folder=f"{prepared.path}/{TRAIN_SEQUENCES}",
        evaluation_data_folder=f"{prepared.path}/{HELD_OUT_SEQUENCES}",
        synthetic_data_folder=f"{sequences.path}/{GENERATED_SEQUENCES}",
        output_folder=results.path,
        tokenizer_path=model.path,
        seed=seed,
    )
    run_stage("memorization", main, argv)
    log_metrics_json(f"{results.path}/metrics.json", metrics)


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def model_memorization(
    prepared: Input[Dataset],
    model: Input[Model],
    seed: int,
    results: Output[Dataset],
    metrics: Output[Metrics],
):
    """The model's own memorisation: does it fit its training patients better than held-out ones?

    Args:
        prepared: Output of prepare (training and held-out sequences).
        model: The trained model folder.
        seed: Seed of the samples of sets larger than 10,000 patients.
        results: metrics.json, summary.json, model_patient_losses.parquet, roc_curve.json.
        metrics: Loss-attack ROC AUC and TPR at low FPR, mean losses and their gap.
    """
    from cehrgpt.analysis.privacy.model_memorization import main
    from cehrgpt.pipeline.steps import (
        HELD_OUT_SEQUENCES,
        TRAIN_SEQUENCES,
        flags,
        log_metrics_json,
        run_stage,
    )

    argv = flags(
        model_folder=model.path,
        training_data_folder=f"{prepared.path}/{TRAIN_SEQUENCES}",
        evaluation_data_folder=f"{prepared.path}/{HELD_OUT_SEQUENCES}",
        output_folder=results.path,
        seed=seed,
    )
    run_stage("model_memorization", main, argv)
    log_metrics_json(f"{results.path}/metrics.json", metrics)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def utility(
    prepared: Input[Dataset],
    sequences: Input[Dataset],
    seed: int,
    num_tasks: int,
    results: Output[Dataset],
    metrics: Output[Metrics],
    report: Output[HTML],
):
    """Utility: models trained on synthetic patients against models trained on real ones, tested on held-out.

    Args:
        prepared: Output of prepare (training and held-out sequences).
        sequences: The gathered generated sequences.
        seed: Seed of the tasks' models.
        num_tasks: Prediction tasks drawn from the data.
        results: metrics.json and report.html.
        metrics: TSTR and TRTR AUROC means and their gap.
        report: The HTML report, shown in the Kubeflow UI.
    """
    import shutil

    from cehrgpt.analysis.utility import main
    from cehrgpt.pipeline.steps import (
        GENERATED_SEQUENCES,
        HELD_OUT_SEQUENCES,
        TRAIN_SEQUENCES,
        flags,
        log_metrics_json,
        run_stage,
    )

    argv = flags(
        training_data_folder=f"{prepared.path}/{TRAIN_SEQUENCES}",
        evaluation_data_folder=f"{prepared.path}/{HELD_OUT_SEQUENCES}",
        synthetic_data_folder=f"{sequences.path}/{GENERATED_SEQUENCES}",
        output_folder=results.path,
        seed=seed,
        num_tasks=num_tasks,
    )
    run_stage("utility", main, argv)
    log_metrics_json(f"{results.path}/metrics.json", metrics)
    shutil.copyfile(f"{results.path}/report.html", report.path)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def privacy_gate(
    attribute_inference: Input[Dataset],
    member_inference: Input[Dataset],
    nearest_neighbor_inference: Input[Dataset],
    reid_inference: Input[Dataset],
    fidelity: Input[Dataset],
    memorization: Input[Dataset],
    utility: Input[Dataset],
    model_memorization: Input[Dataset],
    max_reid_risk: float,
    max_nnaa_privacy_loss: float,
    max_mia_f1_above_chance: float,
    max_mia_auc: float,
    max_mia_tpr_at_fpr_0_01_lift: float,
    max_memorization_copy_excess: float,
    max_memorization_shifted_copy_excess: float,
    max_memorization_near_copy_excess_lower: float,
    max_memorization_dcr_closer_to_train_share: float,
    max_aia_f1_lift_over_holdout: float,
    max_utility_auroc_gap_mean: float,
    max_model_mia_auc: float,
    verdict: Output[Dataset],
):
    """Fail the run when a privacy threshold is breached, so nothing risky is published.

    Args:
        attribute_inference: Its results (metrics.json).
        member_inference: Its results.
        nearest_neighbor_inference: Its results.
        reid_inference: Its results.
        fidelity: Its results.
        memorization: Its results.
        utility: Its results.
        model_memorization: Its results (the model's loss attack, measured before generation).
        max_reid_risk: Highest acceptable re-identification risk.
        max_nnaa_privacy_loss: Highest acceptable NNAA privacy loss.
        max_mia_f1_above_chance: Highest acceptable membership-inference F1 above chance.
        max_mia_auc: Highest acceptable membership-inference ROC AUC.
        max_mia_tpr_at_fpr_0_01_lift: Highest acceptable members exposed at FPR ≤ 1% beyond chance's 99th percentile.
        max_memorization_copy_excess: Highest acceptable share of verbatim training copies beyond chance.
        max_memorization_shifted_copy_excess: The same for copies moved in calendar time.
        max_memorization_near_copy_excess_lower: Highest acceptable 95% lower bound of the near-copy excess.
        max_memorization_dcr_closer_to_train_share: Highest acceptable DCR closer-to-training share (1.0: no limit).
        max_aia_f1_lift_over_holdout: Highest acceptable attribute-inference F1 lift over held-out.
        max_utility_auroc_gap_mean: Highest acceptable TRTR − TSTR AUROC gap (1.0: no limit).
        max_model_mia_auc: Highest acceptable ROC AUC of the loss attack on the model itself.
        verdict: gate.json, each threshold and the value it was checked against.
    """
    from cehrgpt.analysis.gate import main
    from cehrgpt.pipeline.steps import flags, run_stage

    folders = [
        attribute_inference,
        member_inference,
        nearest_neighbor_inference,
        reid_inference,
        fidelity,
        memorization,
        utility,
        model_memorization,
    ]
    thresholds = flags(
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
        output_folder=verdict.path,
    )
    argv = ["--metrics", *(folder.path for folder in folders), *thresholds]
    run_stage("gate", main, argv)
