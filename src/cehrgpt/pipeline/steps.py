"""What Kubeflow component bodies call besides a stage's entry point.

A component body must be self-contained source, so anything beyond "call the
stage, log its metrics" lives here, in the image, where it can be tested:
command-line assembly, failing the task on a non-zero exit, turning a stage's
JSON report into Kubeflow Metrics, and gathering the generation shards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cehrgpt.pipeline.sparkapp import SparkOperatorSettings, application_name
from cehrgpt.pipeline.sparkapp_jobs import PREPARE_MAIN_FILE, restore_omop, submit_spark_job
from cehrgpt.pipeline.stores import open_store
from cehrgpt.redaction import has_password, redact

logger = logging.getLogger(__name__)

#: Sub-folders of the Dataset written by ``cehrgpt.data.prepare``.
TRAIN_SEQUENCES = "patient_sequence/train"
HELD_OUT_SEQUENCES = "patient_sequence/test"
SEQUENCES = "patient_sequence"
VOCABULARY = "omop_vocab"  # in prepare's command-line output; the pipelines pass it as an artifact of its own
#: Sub-folder of the gathered generation Dataset holding every shard's parquet files.
GENERATED_SEQUENCES = "generated_sequences"


#: Where the upload task finds the database URL when the pipeline gives none (a Kubernetes Secret key).
DATABASE_URL_ENV_VAR = "CEHRGPT_DB_URL"


class StageFailed(RuntimeError):
    """A stage's entry point returned a non-zero exit code (its own message is already on stderr)."""


def flags(**values: Any) -> list[str]:
    """``--name value`` pairs in the order given; None is left out, True is a bare ``--name``, False is left out."""
    argv: list[str] = []
    for name, value in values.items():
        if value is None or value is False:
            continue
        argv.append(f"--{name}")
        if value is not True:
            argv.append(str(value))
    return argv


def run_stage(name: str, entry_point: Callable[[list[str]], int], argv: Sequence[str]) -> None:
    """Call a stage's ``main(argv)`` and fail the task when it returns non-zero.

    Raises:
        StageFailed: the exit code was not 0.
    """
    logger.info("%s %s", name, redact(" ".join(argv)))
    code = entry_point(list(argv))
    if code != 0:
        raise StageFailed(f"stage {name} exited with code {code}")


def flatten_metrics(report: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a (nested) JSON report as ``{"a.b.c": value}``; booleans become 0/1."""
    out: dict[str, float] = {}
    for key, value in report.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_metrics(value, prefix=f"{name}."))
        elif isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, int | float) and math.isfinite(value):
            out[name] = value
    return out


#: What the Kubeflow Metrics panel shows of each analysis (metric names ``<analysis>_<name>``): its headline
#: metrics. Counts and settings (samples, iterations, patients used, thresholds applied) stay in the
#: analysis's ``metrics.json`` and in the Metrics artifact's file, where the gate and ``pipeline compare`` read
#: them. Names of other steps (prepare's counts, the restore's rows, ...) are all shown.
HEADLINE_METRICS: dict[str, frozenset[str]] = {
    "aia": frozenset(
        {"aia_f1_advantage", "aia_f1_lift_over_holdout", "aia_f1_synthetic_train", "aia_f1_train_train"}
    ),
    "mia": frozenset({"mia_f1_above_chance", "mia_auc", "mia_advantage", "mia_tpr_at_fpr_0_01_lift"}),
    "nnaa": frozenset({"nnaa_privacy_loss", "nnaa_aa_train", "nnaa_aa_test"}),
    "reid": frozenset({"reid_risk"}),
    "memorization": frozenset(
        {
            "memorization_copy_share_train",
            "memorization_copy_excess",
            "memorization_shifted_copy_excess",
            "memorization_near_copy_share_train",
            "memorization_near_copy_excess",
            "memorization_near_copy_excess_lower",
            "memorization_dcr_closer_to_train_share",
        }
    ),
    "utility": frozenset({"utility_tstr_auroc_mean", "utility_trtr_auroc_mean", "utility_auroc_gap_mean"}),
    "fidelity": frozenset(
        {
            "fidelity_prevalence_r2",
            "fidelity_prevalence_pearson",
            "fidelity_prevalence_kl",
            "fidelity_cooccurrence_r2",
            "fidelity_cooccurrence_kl",
            "fidelity_age_tvd",
            "fidelity_gender_tvd",
            "fidelity_sequence_length_ks",
        }
    ),
    "quality": frozenset({"quality_checks", "quality_passed", "quality_failed", "quality_not_applicable"}),
}


def shown_in_metrics_panel(name: str) -> bool:
    """An analysis's metric only when it is a headline (:data:`HEADLINE_METRICS`); any other step's always."""
    analysis = name.split("_", 1)[0] if "_" in name else ""
    headlines = HEADLINE_METRICS.get(analysis)
    return headlines is None or name in headlines


def log_metrics_json(report_path: str | Path, metrics: Any, prefix: str = "") -> dict[str, float]:
    """Log a JSON report's headline numbers on a Kubeflow ``Metrics`` artifact, and save all of them in its file.

    Kubeflow shows what ``log_metric`` records (:func:`shown_in_metrics_panel`); the file
    (flat name → number, every number) is what ``cehrgpt pipeline compare`` reads back from the pipeline root.

    Args:
        report_path: A stage's ``metrics.json`` or report.
        metrics: The task's ``Output[Metrics]``.
        prefix: Put before every name.

    Returns:
        Every metric of the report (the file's content).
    """
    values = flatten_metrics(json.loads(Path(report_path).read_text()), prefix)
    for name, value in values.items():
        if shown_in_metrics_panel(name):
            metrics.log_metric(name, value)
    Path(metrics.path).parent.mkdir(parents=True, exist_ok=True)
    Path(metrics.path).write_text(json.dumps(values, indent=2, sort_keys=True))
    return values


def gather_generated_shards(shard_folders: Sequence[str | Path], output_folder: str | Path) -> dict[str, Any]:
    """Copy every shard's ``<strategy>/generated_sequences/*.parquet`` into one folder and merge the summaries.

    Files are renamed ``shard-00003-<name>.parquet`` so no two shards collide.
    Writes ``<output>/generated_sequences/`` and ``<output>/generation_summary.json``
    (numbers summed over shards, each shard's summary kept).

    Raises:
        ValueError: a shard holds no strategy folder, several, or different strategies.
    """
    out = Path(output_folder)
    target = out / GENERATED_SEQUENCES
    target.mkdir(parents=True, exist_ok=True)
    strategies: set[str] = set()
    shard_summaries: list[dict[str, Any]] = []
    for index, folder in enumerate(shard_folders):
        found = sorted(p.parent for p in Path(folder).glob(f"*/{GENERATED_SEQUENCES}/"))
        if len(found) != 1:
            raise ValueError(
                f"shard {index} ({folder}) should hold exactly one <strategy>/{GENERATED_SEQUENCES} folder, "
                f"found {len(found)}"
            )
        strategy_folder = found[0]
        strategies.add(strategy_folder.name)
        for parquet in sorted((strategy_folder / GENERATED_SEQUENCES).glob("*.parquet")):
            shutil.copy2(parquet, target / f"shard-{index:05d}-{parquet.name}")
        summary_path = strategy_folder / "generation_summary.json"
        shard_summaries.append(json.loads(summary_path.read_text()) if summary_path.exists() else {})
    if len(strategies) > 1:
        raise ValueError(f"shards were generated with different strategies: {sorted(strategies)}")
    merged = {
        "strategy": next(iter(strategies), None),
        "num_shards": len(shard_summaries),
        **combine_shard_figures(shard_summaries),
        "shards": shard_summaries,
    }
    (out / "generation_summary.json").write_text(json.dumps(merged, indent=2))
    return merged


def database_target(target: str, environ: Mapping[str, str] | None = None) -> str:
    """The upload's SQLAlchemy URL: the pipeline parameter, else ``$CEHRGPT_DB_URL`` (from the Secret).

    Raises:
        StageFailed: neither is set.
    """
    environ = os.environ if environ is None else environ
    url = target or environ.get(DATABASE_URL_ENV_VAR, "")
    if not url:
        raise StageFailed(
            f"no upload target: set the pipeline parameter upload_target or the Secret key that fills ${DATABASE_URL_ENV_VAR}"
        )
    return url


def combine_shard_figures(summaries: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Top-level numbers of the shards' summaries: counts (integers) summed as ``total_<name>``,
    rates and fractions (floats) averaged as ``mean_<name>``, weighted by each shard's ``patients``."""
    names = sorted(
        {k for s in summaries for k, v in s.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    )
    out: dict[str, float] = {}
    for name in names:
        present = [
            s for s in summaries if isinstance(s.get(name), int | float) and not isinstance(s.get(name), bool)
        ]
        if all(isinstance(s[name], int) for s in present):
            out[f"total_{name}"] = sum(s[name] for s in present)
            continue
        weights = [s.get("patients", 1) or 0 for s in present]
        total = sum(weights)
        values = [float(s[name]) for s in present]
        out[f"mean_{name}"] = (
            sum(w * v for w, v in zip(weights, values, strict=True)) / total
            if total
            else sum(values) / len(values)
        )
    return out


def spark_uri(uri: str) -> str:
    """An artifact URI as Spark's Hadoop file systems spell it (``minio://``/``s3://`` → ``s3a://``)."""
    for scheme in ("minio://", "s3://"):
        if uri.startswith(scheme):
            return "s3a://" + uri[len(scheme) :]
    return uri


def run_restore_step(
    spark_mode: str,
    sequences: tuple[str, str],
    vocabulary: tuple[str, str],
    restored: tuple[str, str],
    operator: SparkOperatorSettings,
    api_client: Any = None,
    type_concept_id: int | None = None,
    min_persons: int | None = None,
) -> Path | None:
    """Restore OMOP from the gathered sequences with local Spark or a SparkApplication.

    Args:
        spark_mode: ``local`` or ``operator``.
        sequences: (local path, URI) of the gathered generation Dataset.
        vocabulary: (local path, URI) of prepare's vocabulary Dataset.
        restored: (local path, URI) of the output Dataset.
        operator: The SparkApplication's namespace and sizes (used in operator mode).
        api_client: A Kubernetes ``ApiClient``; by default the in-cluster configuration.
        type_concept_id: the restore's ``--type_concept_id`` (None: its default, 32817 EHR).
        min_persons: the restore's ``--min_persons`` (None: its default, 1).

    Returns:
        A local copy of ``restore_report.json`` to log, or None when it cannot be read back.
    """
    restore_arguments = flags(type_concept_id=type_concept_id, min_persons=min_persons)
    if spark_mode == "local":
        restore_omop(
            "local",
            f"{sequences[0]}/{GENERATED_SEQUENCES}",
            restored[0],
            vocabulary[0],
            restore_arguments=restore_arguments,
        )
        return Path(restored[0]) / "restore_report.json"
    restore_omop(
        spark_mode,
        spark_uri(f"{sequences[1]}/{GENERATED_SEQUENCES}"),
        spark_uri(restored[1]),
        spark_uri(vocabulary[1]),
        operator=operator,
        on_minio=any(uri.startswith("minio://") for _, uri in (sequences, vocabulary, restored)),
        # unique per output location (so per run and task), and the same on a retry of the task
        run_hint=hashlib.sha256(restored[1].encode()).hexdigest()[:12],
        api_client=api_client,
        restore_arguments=restore_arguments,
    )
    return _report_copy(restored, "restore_report.json")


def _report_copy(output: tuple[str, str], name: str) -> Path | None:
    """A local copy of a report a SparkApplication wrote next to its output (read through the store's URI)."""
    report = Path(output[0]) / name
    try:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_bytes(open_store(output[1]).read_bytes(name))
    except Exception as e:  # the job succeeded; only its figures are missing from the run's metrics
        logger.warning("could not read %s back from %s: %s", name, output[1], e)
        return None
    return report


#: Environment of the prepare task filled from the OMOP source's Secret (keys ``url`` and ``password``).
OMOP_SOURCE_SECRET_KEYS = {"url": "CEHRGPT_OMOP_URL", "password": "CEHRGPT_OMOP_PASSWORD"}


def check_no_password(omop_source: str) -> None:
    """Refuse a pipeline parameter carrying a password: Kubeflow shows and stores parameters.

    Raises:
        StageFailed: the URL has a password.
    """
    if has_password(omop_source):
        raise StageFailed(
            "omop_source holds a password; pass the URL without it and put the password in the Secret "
            "named by omop_source_secret (key password)"
        )


def run_prepare_step(
    spark_mode: str,
    omop_source: str,
    prepared: tuple[str, str],
    *,
    test_fraction: float,
    seed: int,
    vocabulary: tuple[str, str] | None = None,
    prompts: tuple[str, str] | None = None,
    operator: SparkOperatorSettings | None = None,
    omop_source_secret: str = "",
    api_client: Any = None,
    environ: Mapping[str, str] | None = None,
) -> Path | None:
    """Prepare patient sequences with local Spark in this pod or as a SparkApplication.

    Args:
        spark_mode: ``local`` or ``operator``.
        omop_source: A folder, DuckDB file, URI or SQLAlchemy URL without password; empty: the Secret's url.
        prepared: (local path, URI) of the output Dataset.
        vocabulary: (local path, URI) of the vocabulary's own Dataset (default: inside ``prepared``).
        prompts: (local path, URI) of the prompts' own Dataset (default: inside ``prepared``).
        test_fraction: Share of persons held out.
        seed: Seed of the split.
        operator: The SparkApplication's namespace and sizes (operator mode).
        omop_source_secret: The Secret holding the source's url/password; in operator mode the
            application's driver gets the keys this pod got (``CEHRGPT_OMOP_URL``/``_PASSWORD``).
        api_client: A Kubernetes ``ApiClient``; by default the in-cluster configuration.
        environ: This pod's environment (``os.environ`` by default).

    Returns:
        A local copy of ``prepare_report.json`` to log, or None when it cannot be read back.

    Raises:
        StageFailed: a password in ``omop_source``, a bad mode, or the job failed.
    """
    check_no_password(omop_source)
    environ = os.environ if environ is None else environ
    options = {"test_fraction": test_fraction, "seed": seed}
    if spark_mode == "local":
        from cehrgpt.data.prepare import main as prepare_main

        run_stage(
            "prepare",
            prepare_main,
            flags(
                omop_source=omop_source or None,
                output_folder=prepared[0],
                vocabulary_folder=vocabulary[0] if vocabulary else None,
                prompts_folder=prompts[0] if prompts else None,
                **options,
            ),
        )
        return Path(prepared[0]) / "prepare_report.json"
    if spark_mode != "operator":
        raise StageFailed(f"prepare_spark_mode must be operator or local, got {spark_mode!r}")
    secret_env = {
        variable: (omop_source_secret, key)
        for key, variable in OMOP_SOURCE_SECRET_KEYS.items()
        if omop_source_secret and environ.get(variable)  # only keys the Secret has (it is optional)
    }
    arguments = flags(
        omop_source=spark_uri(omop_source) or None,
        output_folder=spark_uri(prepared[1]),
        vocabulary_folder=spark_uri(vocabulary[1]) if vocabulary else None,
        prompts_folder=spark_uri(prompts[1]) if prompts else None,
        **options,
    )
    logger.info("prepare as a SparkApplication: %s", redact(" ".join(arguments)))
    submit_spark_job(
        PREPARE_MAIN_FILE,
        arguments,
        operator,
        # unique per output location (so per run and task), and the same on a retry of the task
        application_name(hashlib.sha256(prepared[1].encode()).hexdigest()[:12], prefix="cehrgpt-prepare"),
        api_client=api_client,
        on_minio=any(uri.startswith("minio://") for uri in (prepared[1], omop_source)),
        secret_env=secret_env,
    )
    return _report_copy(prepared, "prepare_report.json")


def run_quality_step(restored: str | Path, vocabulary: str | Path, output: str | Path, metrics: Any) -> None:
    """Run the OMOP data-quality checks on restored tables, log the summary, and fail the task on a failed check.

    Args:
        restored: local path of the restored tables.
        vocabulary: local path of prepare's vocabulary Dataset (its ``concept`` table); checks that need
            it are "not applicable" when it is absent.
        output: where ``quality_report.json`` goes.
        metrics: the task's ``Output[Metrics]``.

    Raises:
        StageFailed: a check failed (exit 1) or the input was unusable (exit 2).
    """
    from cehrgpt.omop.quality import REPORT
    from cehrgpt.omop.quality import main as quality_main

    vocabulary = Path(vocabulary)
    argv = flags(
        omop_folder=restored, output_folder=output, vocab_folder=vocabulary if vocabulary.exists() else None
    )
    logger.info("quality %s", " ".join(argv))
    code = quality_main(argv)
    report = Path(output) / REPORT
    if report.exists():
        summary = json.loads(report.read_text())["summary"]
        (Path(output) / "quality_summary.json").write_text(json.dumps(summary))
        log_metrics_json(Path(output) / "quality_summary.json", metrics, prefix="quality_")
    if code != 0:
        raise StageFailed(f"stage quality exited with code {code}")
