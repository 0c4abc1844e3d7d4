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

from cehrgpt.pipeline.sparkapp import SparkOperatorSettings, restore_omop
from cehrgpt.pipeline.stores import open_store

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
    logger.info("%s %s", name, " ".join(argv))
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


def log_metrics_json(report_path: str | Path, metrics: Any, prefix: str = "") -> dict[str, float]:
    """Log every number of a JSON report on a Kubeflow ``Metrics`` artifact, and save them in its file.

    Kubeflow shows what ``log_metric`` records; the file (flat name → number)
    is what ``cehrgpt pipeline compare`` reads back from the pipeline root.

    Args:
        report_path: A stage's ``metrics.json`` or report.
        metrics: The task's ``Output[Metrics]``.
        prefix: Put before every name.

    Returns:
        The logged metrics.
    """
    values = flatten_metrics(json.loads(Path(report_path).read_text()), prefix)
    for name, value in values.items():
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
) -> Path | None:
    """Restore OMOP from the gathered sequences with local Spark or a SparkApplication.

    Args:
        spark_mode: ``local`` or ``operator``.
        sequences: (local path, URI) of the gathered generation Dataset.
        vocabulary: (local path, URI) of prepare's vocabulary Dataset.
        restored: (local path, URI) of the output Dataset.
        operator: The SparkApplication's namespace and sizes (used in operator mode).
        api_client: A Kubernetes ``ApiClient``; by default the in-cluster configuration.

    Returns:
        A local copy of ``restore_report.json`` to log, or None when it cannot be read back.
    """
    if spark_mode == "local":
        restore_omop(
            "local",
            f"{sequences[0]}/{GENERATED_SEQUENCES}",
            restored[0],
            vocabulary[0],
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
    )
    report = Path(restored[0]) / "restore_report.json"
    try:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_bytes(open_store(restored[1]).read_bytes("restore_report.json"))
    except Exception as e:  # the restore succeeded; only its figures are missing from the run's metrics
        logger.warning("could not read restore_report.json back from %s: %s", restored[1], e)
        return None
    return report
