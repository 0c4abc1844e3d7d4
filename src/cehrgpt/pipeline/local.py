"""Run the ``end_to_end`` pipeline on this machine through ``kfp.local``, the same DAG a cluster runs.

Every component runs as a subprocess of this Python (``SubprocessRunner``
without per-task virtual environments: the project's own environment is the
image), restore uses local Spark, the upload goes into a DuckDB file, and
generation runs on the CPU. The run folder keeps every artifact; the summary
names where each is and prints the metrics of every task.

    python -m cehrgpt.pipeline.local --omop_source eunomia.duckdb --output_root local_outputs/kfp
"""

from __future__ import annotations

import argparse
import builtins
import json
import time
import warnings
from pathlib import Path
from typing import Any

from cehrgpt.data import DEFAULT_TEST_FRACTION
from cehrgpt.exits import CommandParser, run_command
from cehrgpt.pipeline.compare import RunMetrics, collect_metrics, format_comparison
from cehrgpt.pipeline.compile import load_pipeline
from cehrgpt.pipeline.steps import OMOP_SOURCE_SECRET_KEYS
from cehrgpt.pipeline.stores import LocalStore
from cehrgpt.redaction import has_password, redact

SUMMARY_FILE = "local_run_summary.json"
PIPELINE_ROOT = "kfp_runs"

#: Laptop-sized settings: a tiny model, CPU generation in two shards, local Spark, a DuckDB target.
LOCAL_DEFAULTS: dict[str, Any] = {
    "test_fraction": DEFAULT_TEST_FRACTION,
    "preset": "tiny",
    "max_steps": 300,
    "num_of_patients": 256,
    "num_shards": 2,
    "batch_size": 64,
    "buffer_size": 128,
    "context_window": 512,
    "device": "cpu",
    "dtype": "float32",
    "spark_mode": "local",
    "prepare_spark_mode": "local",
    "n_iterations": 2,
    "num_of_samples": 500,
    "upload": True,
    "upload_mode": "replace",
}


class LocalRunError(RuntimeError):
    """The local run could not start (bad input) or a task failed."""


def _artifacts(run_folder: Path) -> dict[str, str]:
    """``{"<task>/<output>": path}`` of every artifact the run wrote (files and folders, not bookkeeping)."""
    found = {}
    for task in sorted(p for p in run_folder.rglob("*") if (p / "executor_output.json").is_file()):
        for output in sorted(task.iterdir()):
            if output.name == "executor_output.json" or output.name.endswith(".upload_summary.json"):
                continue
            found[f"{task.relative_to(run_folder).as_posix()}/{output.name}"] = str(output)
    return found


def _reachable(path: Path, link_folder: Path) -> Path:
    """``path``, or a symlink to it when its name contains ``python3``.

    kfp.local's SubprocessRunner rewrites every ``python3`` in a task's
    arguments to the interpreter's path, which mangles a file inside a
    virtual environment (such as the Eunomia file under ``lib/python3.11``).
    """
    if "python3" not in str(path):
        return path
    link_folder.mkdir(parents=True, exist_ok=True)
    link = link_folder / path.name
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(path)
    return link


def check_source_without_password(source: str) -> None:
    """Refuse an OMOP source URL that holds a password before anything is written: kfp.local would
    store it, as a pipeline parameter, in the run folder, the task logs and the summary.

    Raises:
        LocalRunError: the URL holds a password (the message names where the password goes instead).
    """
    if has_password(source):
        variable = OMOP_SOURCE_SECRET_KEYS["password"]
        raise LocalRunError(
            f"--omop_source {redact(source)} holds a password, which the run would store; give the URL "
            f"without it and the password in ${variable}"
        )


def _newest_run(pipeline_root: Path, pipeline_name: str, started: float) -> Path | None:
    runs = [
        p for p in pipeline_root.glob(f"{pipeline_name}-*") if p.is_dir() and p.stat().st_mtime >= started - 1
    ]
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None


def run_end_to_end_locally(
    omop_source: str | Path,
    output_root: str | Path,
    repo_root: str | Path = ".",
    enable_caching: bool = True,
    **params: Any,
) -> dict[str, Any]:
    """Run ``end_to_end`` with kfp.local and summarise where its outputs are and what its metrics say.

    Args:
        omop_source: OMOP CDM source (folder, DuckDB file or SQLAlchemy URL), e.g. the Eunomia file.
        output_root: Holds the kfp run folders, the DuckDB upload target and the summary.
        repo_root: The repository root (``pipelines/``, ``components/``, ``analysis/``).
        enable_caching: Reuse the outputs of tasks whose inputs did not change since an earlier
            run under the same ``output_root`` (as a cluster would); the gate and upload always run.
        **params: Pipeline parameters overriding :data:`LOCAL_DEFAULTS` (e.g. ``num_of_patients=64``).

    Returns:
        ``{"status", "run_folder", "outputs", "metrics", "wall_seconds", "parameters"}``; also
        written to ``<output_root>/local_run_summary.json``.

    Raises:
        LocalRunError: a missing OMOP source, one whose URL holds a password, or a missing repository root.
    """
    source = str(omop_source)
    check_source_without_password(source)
    for name in ("num_of_patients", "num_shards", "max_steps"):  # the pipeline reads 0 steps as the preset's
        if name in params and params[name] < 1:
            raise LocalRunError(
                f"--{name} must be at least 1, got {params[name]}"
                + (" (leave it out for the local default)" if name == "max_steps" else "")
            )
    from kfp import local

    root = Path(repo_root).resolve()
    out = Path(output_root).resolve()
    if "://" not in source and not Path(source).exists():
        raise LocalRunError(
            f"OMOP source {source!r} does not exist (expected a folder, a DuckDB file or a URL)"
        )
    try:
        pipeline = load_pipeline("end_to_end", root)
    except Exception as e:
        raise LocalRunError(str(e)) from None
    out.mkdir(parents=True, exist_ok=True)
    database = out / "synthetic_omop.duckdb"
    arguments = {
        **LOCAL_DEFAULTS,
        "omop_source": str(_reachable(Path(source).resolve(), out / "inputs"))
        if "://" not in source
        else source,
        "attribute_config": str(root / "analysis" / "privacy" / "attribute_inference_config.yml"),
        "upload_target": f"duckdb:///{database}",
        **params,
    }
    pipeline_root = out / PIPELINE_ROOT
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(pipeline_root),
        raise_on_error=False,
        enable_caching=enable_caching,
    )
    started = time.time()
    with warnings.catch_warnings():
        # the components name the project's images; locally this Python stands in for them
        warnings.filterwarnings(
            "ignore", message="You may be attemping to run a task", category=RuntimeWarning
        )
        # resources, accelerators and display names are for the cluster; kfp.local says so for every task
        warnings.filterwarnings(
            "ignore", message=".*have no effect in the current local runner", category=UserWarning
        )
        # kfp.local indents print() while a task runs by swapping builtins.print; the shards of a
        # ParallelFor run side by side and can restore each other's swap, leaving print indented after
        printer = builtins.print
        try:
            pipeline(**arguments)
        finally:
            builtins.print = printer
    wall = time.time() - started
    run_folder = _newest_run(pipeline_root, pipeline.name, started)
    if run_folder is None:
        raise LocalRunError(f"kfp.local wrote no run folder under {pipeline_root}")
    metrics = collect_metrics(LocalStore(run_folder))
    outputs = _artifacts(run_folder)
    if database.exists():
        outputs["database"] = str(database)
    finished = {p.parent.name for p in run_folder.rglob("executor_output.json")}
    gate_passed = "privacy-gate" in finished
    uploaded = "upload-omop-tables" in finished
    quality_passed = "check-omop-quality" in finished  # the task fails when a data-quality check fails
    status = (
        "succeeded" if gate_passed and quality_passed and (uploaded or not arguments["upload"]) else "failed"
    )
    summary = {
        "status": status,
        "gate_passed": gate_passed,
        "quality_passed": quality_passed,
        "run_folder": str(run_folder),
        "wall_seconds": round(wall, 1),
        "parameters": arguments,
        "outputs": outputs,
        "metrics": metrics,
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True))
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    """Where every output is, then the metrics table."""
    print(f"\nRun folder: {summary['run_folder']}  ({summary['wall_seconds']} s, {summary['status']})")
    print("\nOutputs:")
    width = max((len(name) for name in summary["outputs"]), default=0)
    for name, path in summary["outputs"].items():
        print(f"  {name:<{width}}  {path}")
    print("\nMetrics:")
    print(format_comparison([RunMetrics("value", summary["metrics"])], "table"), end="")


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--omop_source", required=True, help="OMOP CDM folder, DuckDB file or SQLAlchemy URL")
    parser.add_argument("--output_root", type=Path, default=Path("local_outputs/kfp"))
    parser.add_argument("--repo_root", type=Path, default=Path("."))
    parser.add_argument("--num_of_patients", type=int, default=LOCAL_DEFAULTS["num_of_patients"])
    parser.add_argument("--max_steps", type=int, default=LOCAL_DEFAULTS["max_steps"])
    parser.add_argument("--num_shards", type=int, default=LOCAL_DEFAULTS["num_shards"])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no_cache", action="store_true", help="rerun every task, even unchanged ones")
    args = parser.parse_args(argv)

    def body() -> int:
        summary = run_end_to_end_locally(
            args.omop_source,
            args.output_root,
            args.repo_root,
            enable_caching=not args.no_cache,
            num_of_patients=args.num_of_patients,
            max_steps=args.max_steps,
            num_shards=args.num_shards,
            seed=args.seed,
        )
        print_summary(summary)
        print(f"\nSummary: {args.output_root / SUMMARY_FILE}")
        return 0 if summary["status"] == "succeeded" else 1

    return run_command(body, LocalRunError)


if __name__ == "__main__":
    raise SystemExit(main())
