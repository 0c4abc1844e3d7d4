"""Put the metrics of several pipeline runs side by side.

Every component saves its Metrics artifact as a file called ``metrics`` (a
flat JSON object, name → number) under ``<run>/<task>/``: the kfp.local run
folder on a laptop, the pipeline root (GCS, S3, MinIO) on a cluster. A run is
read from such a location, or by id from a Kubeflow host.
"""

from __future__ import annotations

import csv
import io
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from cehrgpt.pipeline.stores import Store, StoreError, open_store

METRICS_FILE = "metrics"
FORMATS = ("table", "json", "csv")
_ID_LIKE = re.compile(r"^(\d+|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")
_LOOP_ITERATION = re.compile(r"^for-loop-\d+-iteration-(\d+)$")


class CompareError(RuntimeError):
    """A run cannot be found or read."""


@dataclass(frozen=True)
class RunMetrics:
    """The metrics of one run: ``{"<task>.<metric>": value}``."""

    label: str
    metrics: dict[str, float]


def task_name(relative_path: str) -> str:
    """The task a ``.../<task>/[<execution id>/]metrics`` file belongs to; loop iterations get ``[i]``."""
    parts = list(PurePosixPath(relative_path).parts[:-1])
    while parts and _ID_LIKE.match(parts[-1]):
        parts.pop()
    if not parts:
        return "run"
    name = parts[-1]
    for part in parts[:-1]:
        if m := _LOOP_ITERATION.match(part):
            name = f"{name}[{m.group(1)}]"
    return name


def collect_metrics(store: Store) -> dict[str, float]:
    """Every Metrics artifact under a run's location, keyed ``<task>.<metric>``.

    Raises:
        CompareError: the location holds no Metrics artifact.
    """
    out: dict[str, float] = {}
    for relative in store.list_files():
        if PurePosixPath(relative).name != METRICS_FILE:
            continue
        try:
            values = json.loads(store.read_bytes(relative))
        except (ValueError, UnicodeDecodeError):
            continue
        if not isinstance(values, dict):
            continue
        task = task_name(relative)
        for name, value in values.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[f"{task}.{name}"] = value
    return out


def run_location(run_id: str, host: str, pipeline_root: str | None = None, client: Any = None) -> str:
    """Where a run on a Kubeflow host keeps its artifacts: ``<pipeline root>/<pipeline name>/<run id>``.

    Raises:
        CompareError: the run has no pipeline root and none was given.
    """
    if client is None:
        import kfp

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "This client only works with", FutureWarning)
            client = kfp.Client(host=host)
    try:
        run = client.get_run(run_id)
    except Exception as e:  # kfp_server_api.ApiException or a connection error
        raise CompareError(
            f"cannot read run {run_id} from {host}: {getattr(e, 'status', '') or type(e).__name__}"
        ) from None
    runtime = getattr(run, "runtime_config", None)
    root = pipeline_root or (getattr(runtime, "pipeline_root", None) if runtime else None)
    if not root:
        raise CompareError(f"run {run_id} does not name its pipeline root: pass --pipeline_root")
    spec = getattr(run, "pipeline_spec", None) or {}
    name = (spec.get("pipelineInfo") or {}).get("name") or (spec.get("pipeline_spec") or {}).get(
        "pipelineInfo", {}
    ).get("name")
    if not name:
        raise CompareError(f"run {run_id} has no pipeline name in its spec")
    return f"{root.rstrip('/')}/{name}/{run_id}"


def load_runs(
    runs: Sequence[str],
    host: str | None = None,
    pipeline_root: str | None = None,
    s3_endpoint_url: str | None = None,
    gcs_endpoint_url: str | None = None,
    client: Any = None,
) -> list[RunMetrics]:
    """Read the metrics of each run: a local folder, a gs://, s3://, minio:// location, or a run id with ``host``.

    Raises:
        CompareError: a run cannot be read or holds no metrics.
    """
    loaded = []
    for run in runs:
        location = run if (host is None or "/" in run) else run_location(run, host, pipeline_root, client)
        try:
            store = open_store(location, s3_endpoint_url=s3_endpoint_url, gcs_endpoint_url=gcs_endpoint_url)
            metrics = collect_metrics(store)
        except StoreError as e:
            raise CompareError(str(e)) from None
        if not metrics:
            raise CompareError(f"no Metrics artifacts (files named '{METRICS_FILE}') under {location!r}")
        loaded.append(RunMetrics(label=PurePosixPath(run.rstrip("/")).name or run, metrics=metrics))
    return loaded


def _shown(value: float | None) -> str:
    if value is None:
        return ""
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return f"{value:.4g}"


def format_comparison(runs: Sequence[RunMetrics], fmt: str = "table") -> str:
    """Metrics as rows, runs as columns, in ``table``, ``json`` or ``csv``; a missing metric is empty.

    Raises:
        CompareError: an unknown format.
    """
    if fmt not in FORMATS:
        raise CompareError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    names = sorted({name for run in runs for name in run.metrics})
    labels = _unique([run.label for run in runs])
    if fmt == "json":
        return json.dumps(
            {label: run.metrics for label, run in zip(labels, runs, strict=True)}, indent=2, sort_keys=True
        )
    rows = [[name, *(_shown(run.metrics.get(name)) for run in runs)] for name in names]
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["metric", *labels])
        writer.writerows(rows)
        return buffer.getvalue()
    header = ["metric", *labels]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _unique(labels: Sequence[str]) -> list[str]:
    seen: Mapping[str, int] = {}
    out = []
    for label in labels:
        count = seen.get(label, 0)
        seen = {**seen, label: count + 1}
        out.append(label if count == 0 else f"{label}#{count + 1}")
    return out
