"""Data-quality checks on restored OMOP CDM 5.4 tables, in the spirit of the OHDSI Data Quality Dashboard.

``python -m cehrgpt.omop.quality --omop_folder O --output_folder Q [--vocab_folder V]``
reads ``O/<table>/`` (parquet, as the restore writes them) with DuckDB, runs
every check that applies to the tables present and writes
``Q/quality_report.json``: per check its name, category, table, field, violating
rows, denominator, percentage, threshold (percent of the denominator allowed to
violate) and status (``pass``, ``fail`` or ``not_applicable``). It prints every
check as a table and a summary; exit 1 when a check fails, 2 on unusable input.

The checks themselves (what each one finds, its threshold) are defined, as pure SQL text, in
:mod:`cehrgpt.omop.quality_checks`; this module opens the tables with DuckDB, runs them,
writes the report and holds the CLI.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from datetime import date
from pathlib import Path
from typing import Any

from cehrgpt.exits import CommandParser, run_command
from cehrgpt.omop.cdm import cdm_tables
from cehrgpt.omop.quality_checks import VALUE_RANGES, CheckResult, define_checks, evaluate
from cehrgpt.values import ValueBinsError, read_value_bins

REPORT = "quality_report.json"


class QualityInputError(ValueError):
    """An OMOP folder or vocabulary the checks cannot read: one line naming it."""


def _parquet_glob(folder: Path) -> str | None:
    """The parquet files of one table folder (Spark's part files, or one file), or None."""
    if folder.is_file() and folder.suffix == ".parquet":
        return str(folder)
    if folder.is_dir() and any(folder.rglob("*.parquet")):
        return str(folder / "**" / "*.parquet")
    return None


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def open_tables(connection: Any, omop_folder: Path, vocab_folder: Path | None) -> dict[str, dict[str, str]]:
    """Register a view per CDM table found in ``omop_folder`` (and ``concept`` from ``vocab_folder``).

    Returns:
        table → {column: DuckDB type} of the CDM tables.

    Raises:
        QualityInputError: a missing folder, no CDM table, an unreadable table or vocabulary.
    """
    if not omop_folder.is_dir():
        raise QualityInputError(f"omop_folder {omop_folder} is not a folder")
    present: dict[str, dict[str, str]] = {}
    entries = {p.name.lower().removesuffix(".parquet"): p for p in omop_folder.iterdir()}
    for table in cdm_tables():
        files = _parquet_glob(entries[table]) if table in entries else None
        if files is None or table == "concept":
            continue
        present[table] = _view(connection, table, files, f"omop_folder {omop_folder}: {table}")
    if not present:
        raise QualityInputError(
            f"omop_folder {omop_folder}: no CDM table (a folder of parquet files per table)"
        )
    if vocab_folder is not None:
        concept = vocab_folder / "concept"
        files = _parquet_glob(concept) or _parquet_glob(vocab_folder / "concept.parquet")
        if files is None:
            raise QualityInputError(f"vocab_folder {vocab_folder}: no concept table (concept/ as parquet)")
        columns = _view(connection, "concept", files, f"vocab_folder {vocab_folder}: concept")
        missing = {"concept_id", "domain_id"} - columns.keys()
        if missing:
            raise QualityInputError(
                f"vocab_folder {vocab_folder}: concept has no {sorted(missing)[0]} column"
            )
    return present


def _register_value_ranges(connection: Any, vocab_folder: Path) -> bool:
    """Register the training value ranges of ``vocab_folder/value_bins.json`` as a view; False when it has none.

    Raises:
        QualityInputError: the file is unreadable or malformed.
    """
    import pandas as pd

    try:
        bins = read_value_bins(vocab_folder)
    except ValueBinsError as error:
        raise QualityInputError(str(error)) from None
    if bins is None or not bins.numbers:
        return False
    ranges = pd.DataFrame(
        {
            "concept_id": list(bins.numbers),
            "low": [b.edges[0] for b in bins.numbers.values()],
            "high": [b.edges[-1] for b in bins.numbers.values()],
        }
    )
    connection.register(VALUE_RANGES, ranges)
    return True


def _view(connection: Any, name: str, files: str, where: str) -> dict[str, str]:
    import duckdb

    try:
        connection.execute(
            f"CREATE VIEW {name} AS SELECT * FROM read_parquet({_sql_string(files)}, union_by_name = true)"
        )
        described = connection.execute(f"DESCRIBE {name}").fetchall()
    except duckdb.Error as error:
        raise QualityInputError(f"{where}: cannot read the parquet ({str(error).splitlines()[0]})") from None
    return {str(row[0]).lower(): str(row[1]) for row in described}


def run_checks(
    omop_folder: str | Path,
    vocab_folder: str | Path | None = None,
    *,
    today: date | None = None,
    threads: int | None = None,
) -> list[CheckResult]:
    """Run every applicable check on the tables in ``omop_folder`` with DuckDB (in memory)."""
    import duckdb
    from tqdm import tqdm

    if threads is not None and threads < 1:
        raise QualityInputError(
            f"--threads {threads}: expected a positive number of DuckDB threads (leave it out for every core)"
        )
    connection = duckdb.connect()
    try:
        if threads:
            connection.execute(f"SET threads = {int(threads)}")
        present = open_tables(connection, Path(omop_folder), Path(vocab_folder) if vocab_folder else None)
        ranged = vocab_folder is not None and _register_value_ranges(connection, Path(vocab_folder))
        checks = define_checks(
            present, vocabulary=vocab_folder is not None, today=today or date.today(), value_ranges=ranged
        )
        results = []
        for check in tqdm(checks, desc="quality checks", unit="check"):
            try:
                row = connection.execute(check.sql).fetchone()
            except duckdb.Error as error:
                raise QualityInputError(
                    f"{check.table}.{check.field or ''} {check.name}: {str(error).splitlines()[0]}"
                ) from None
            violations, denominator, applicable = row if row is not None else (0, 0, False)
            results.append(evaluate(check, int(violations or 0), int(denominator or 0), bool(applicable)))
        return results
    finally:
        connection.close()


def quality_report(results: list[CheckResult], **extra: Any) -> dict[str, Any]:
    statuses = [r.status for r in results]
    return {
        "checks": [asdict(r) for r in results],
        "summary": {
            "checks": len(results),
            "passed": statuses.count("pass"),
            "failed": statuses.count("fail"),
            "not_applicable": statuses.count("not_applicable"),
        },
        **extra,
    }


def format_table(results: list[CheckResult], *, only_failed: bool = False) -> str:
    rows = [r for r in results if r.status == "fail" or not only_failed]
    header = ("status", "check", "table", "field", "violations", "denominator", "%", "threshold %")
    lines = [
        (
            r.status,
            r.name,
            r.table,
            r.field or "",
            str(r.violations),
            str(r.denominator),
            f"{r.percent:g}",
            f"{r.threshold:g}",
        )
        for r in rows
    ]
    widths = [
        max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)
    ]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in [header, *lines]
    )


def check_quality(
    omop_folder: str | Path,
    output_folder: str | Path,
    vocab_folder: str | Path | None = None,
    *,
    today: date | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run the checks and write ``output_folder/quality_report.json`` (atomically); return the report."""
    started = time.perf_counter()
    results = run_checks(omop_folder, vocab_folder, today=today, threads=threads)
    report = quality_report(
        results,
        omop_folder=str(omop_folder),
        vocab_folder=None if vocab_folder is None else str(vocab_folder),
        today=(today or date.today()).isoformat(),
        seconds=round(time.perf_counter() - started, 3),
    )
    output = Path(output_folder)
    output.mkdir(parents=True, exist_ok=True)
    temporary = output / f".{REPORT}.tmp"
    temporary.write_text(json.dumps(report, indent=2) + "\n")
    temporary.replace(output / REPORT)
    return report


def _parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="python -m cehrgpt.omop.quality",
        description="OHDSI-style data-quality checks on restored OMOP CDM 5.4 tables (parquet, with DuckDB).",
    )
    parser.add_argument(
        "--omop_folder",
        "--omop-folder",
        type=Path,
        required=True,
        help="one parquet folder per CDM table (the restore's output)",
    )
    parser.add_argument(
        "--output_folder", "--output-folder", type=Path, required=True, help=f"where {REPORT} goes"
    )
    parser.add_argument(
        "--vocab_folder",
        "--vocab-folder",
        type=Path,
        default=None,
        help="a folder with concept/ (parquet): adds the concept and domain checks",
    )
    parser.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: every core)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def body() -> int:
        report = check_quality(args.omop_folder, args.output_folder, args.vocab_folder, threads=args.threads)
        results = [CheckResult(**c) for c in report["checks"]]
        summary = report["summary"]
        print(format_table(results))
        print(
            f"{summary['checks']} checks: {summary['passed']} passed, {summary['failed']} failed, "
            f"{summary['not_applicable']} not applicable ({args.output_folder / REPORT})"
        )
        return 1 if summary["failed"] else 0

    return run_command(body, QualityInputError)


if __name__ == "__main__":
    raise SystemExit(main())
