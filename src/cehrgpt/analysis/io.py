"""The analyses' thin I/O layer: read sequence folders and vocabularies, write outputs all-or-nothing."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import yaml

from cehrgpt.parquet_files import local_parquet_problem

METRICS_FILE = "metrics.json"
SUMMARY_FILE = "summary.json"
TOKEN_METADATA_FILE = "token_metadata.json"
# Token kinds whose concept ids are demographics or visit structure, not clinical features.
_NON_CLINICAL_KINDS = {"GENDER", "RACE", "VISIT_TYPE", "INPATIENT_VISIT_TYPE", "DISCHARGE"}


class AnalysisError(ValueError):
    """Bad input to an analysis: the message names the bad value and what was expected."""


def _is_data_file(file: Path, root: Path) -> bool:
    """A parquet file of the dataset, not in a hidden or temporary folder (``.staging``, ``_temporary``)."""
    return file.is_file() and not any(part.startswith((".", "_")) for part in file.relative_to(root).parts)


def read_sequence_folder(folder: str | os.PathLike, role: str) -> pd.DataFrame:
    """Read ``person_id``, ``concept_ids`` (and ``is_valid`` when present) from a parquet folder.

    Args:
        folder: A folder of parquet files (or one parquet file) in the patient-sequence format.
        role: The flag it came from, for error messages (e.g. ``training_data_folder``).

    Raises:
        AnalysisError: the folder is missing, holds no parquet, a file that is not parquet (named),
            lacks the columns or holds no rows.
    """
    path = Path(folder)
    if not path.exists():
        raise AnalysisError(f"--{role} {str(path)!r} does not exist; expected a folder of sequence parquet")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*.parquet") if _is_data_file(p, path))
    if not files:
        raise AnalysisError(f"--{role} {str(path)!r} holds no .parquet files; expected patient sequences")
    check_parquet_files(files, path, role)
    try:
        dataset = ds.dataset([str(f) for f in files], format="parquet")
        names = set(dataset.schema.names)
    except (pa.ArrowException, OSError) as exc:  # magic bytes right, footer broken
        raise AnalysisError(
            f"--{role} {str(path)!r}: cannot be read as parquet ({_first_line(exc)})"
        ) from None
    missing = {"person_id", "concept_ids"} - names
    if missing:
        raise AnalysisError(
            f"--{role} {str(path)!r} lacks column(s) {sorted(missing)}; expected person_id and concept_ids"
        )
    columns = ["person_id", "concept_ids"] + (["is_valid"] if "is_valid" in names else [])
    try:
        frame = dataset.to_table(columns=columns).to_pandas()
    except (pa.ArrowException, OSError) as exc:
        raise AnalysisError(
            f"--{role} {str(path)!r}: cannot be read as parquet ({_first_line(exc)})"
        ) from None
    if frame.empty:
        raise AnalysisError(f"--{role} {str(path)!r} holds no patients (0 rows)")
    return frame


def check_parquet_files(files: list[Path], root: Path, role: str) -> None:
    """Every file is parquet by its magic bytes; else one line naming the first that is not (and how
    many), before Arrow fails on it with a traceback.

    Raises:
        AnalysisError: a file is empty, too short or foreign.
    """
    problems = [(f, why) for f in files if (why := local_parquet_problem(f))]
    if problems:
        file, why = problems[0]
        name = file.name if file == root else file.relative_to(root).as_posix()
        more = f" (and {len(problems) - 1} other file(s))" if len(problems) > 1 else ""
        raise AnalysisError(f"--{role} {str(root)!r}: {name} {why}{more}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def read_concept_vocabulary(tokenizer_folder: str | os.PathLike | None, role: str) -> frozenset[int] | None:
    """The clinical concept ids a tokenizer knows, from its ``token_metadata.json``.

    Returns None when ``tokenizer_folder`` is None or has no metadata file (the
    analyses then use the union of the concepts in the data).

    Raises:
        AnalysisError: the folder does not exist or its metadata is unreadable.
    """
    if tokenizer_folder is None:
        return None
    folder = Path(tokenizer_folder)
    if not folder.exists():
        raise AnalysisError(f"--{role} {str(folder)!r} does not exist; expected a tokenizer folder")
    metadata_path = folder / TOKEN_METADATA_FILE if folder.is_dir() else None
    if metadata_path is None or not metadata_path.is_file():
        return None
    try:
        tokens = json.loads(metadata_path.read_text())["tokens"]
        return frozenset(
            int(entry["concept_id"])
            for entry in tokens.values()
            if entry.get("concept_id") not in (None, 0) and entry.get("kind") not in _NON_CLINICAL_KINDS
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise AnalysisError(
            f"{str(metadata_path)!r} is not valid token metadata ({exc}); expected "
            '{"tokens": {token: {"kind": ..., "concept_id": ...}}}'
        ) from exc


def read_attribute_config(path: str | os.PathLike) -> dict[str, list[int]]:
    """Read a yml with ``common_attributes`` and ``sensitive_attributes`` concept-id lists.

    Raises:
        AnalysisError: the file is missing, not yml, or a list is missing, empty or not concept ids.
    """
    config_path = Path(path)
    if not config_path.is_file():
        raise AnalysisError(f"--attribute_config {str(config_path)!r} does not exist; expected a yml file")
    try:
        data = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError as exc:
        raise AnalysisError(f"--attribute_config {str(config_path)!r} is not valid yml: {exc}") from exc
    if not isinstance(data, dict):
        raise AnalysisError(
            f"--attribute_config {str(config_path)!r} holds {type(data).__name__}; "
            "expected a mapping with common_attributes and sensitive_attributes"
        )
    config: dict[str, list[int]] = {}
    for key in ("common_attributes", "sensitive_attributes"):
        values = data.get(key)
        if not isinstance(values, list) or not values:
            raise AnalysisError(
                f"--attribute_config {str(config_path)!r}: {key} is {values!r}; expected a non-empty list "
                "of concept ids"
            )
        try:
            config[key] = [int(str(v)) for v in values]
        except ValueError as exc:
            raise AnalysisError(
                f"--attribute_config {str(config_path)!r}: {key} holds a non-concept id ({exc}); "
                "expected integers"
            ) from exc
    return config


def warn(message: str) -> None:
    """One line on stderr for something the user should know that is not an error."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _json_number(value: float) -> float | int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value


def write_outputs(
    output_folder: str | os.PathLike,
    tables: Mapping[str, pd.DataFrame],
    metrics: Mapping[str, float],
    summary: Mapping[str, object] | None = None,
    extra_files: Mapping[str, bytes] | None = None,
) -> Path:
    """Write parquet tables, extra files, ``summary.json`` and finally ``metrics.json`` into a folder.

    Everything is written into a temporary folder beside the outputs first and
    moved into place; ``metrics.json`` goes last, so its presence marks a
    complete run. NaN metrics are written as null.
    """
    folder = Path(output_folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / METRICS_FILE).unlink(missing_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))
    try:
        for name, table in tables.items():
            table.to_parquet(staging / f"{name}.parquet", index=False)
        for name, content in (extra_files or {}).items():
            (staging / name).write_bytes(content)
        if summary is not None:
            (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=1, default=str))
        flat = {name: _json_number(value) for name, value in metrics.items()}
        (staging / METRICS_FILE).write_text(json.dumps(flat, indent=1, sort_keys=True))
        for path in sorted(staging.iterdir(), key=lambda p: p.name == METRICS_FILE):
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def format_table(metrics: Mapping[str, float], title: str) -> str:
    """A two-column text table of metrics for stdout."""
    width = max([len(name) for name in metrics] + [len("metric")])
    lines = [title, f"{'metric':<{width}}  value", f"{'-' * width}  ----------"]
    for name, value in metrics.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"{name:<{width}}  {shown}")
    return "\n".join(lines)
