"""``python -m cehrgpt.tools.upload_omop``: upload the restored OMOP tables to a database, all or nothing.

Seed-compatible (``--credential_path``, ``--input_folder``), plus ``--target``
for a SQLAlchemy URL such as ``duckdb:///omop.duckdb``. The logic lives in
:func:`cehrgpt.upload.upload_omop`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cehrgpt.exits import CommandParser, run_command
from cehrgpt.redaction import redact
from cehrgpt.upload import UploadError, upload_omop
from cehrgpt.upload.inputs import DEFAULT_MIN_PERSONS
from cehrgpt.upload.upload import DEFAULT_CHUNK_SIZE, DEFAULT_LOCK_TIMEOUT_S, MODES, SUMMARY_FILE


def _table_list(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number of persons") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number of rows") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="python -m cehrgpt.tools.upload_omop",
        description="Upload restored OMOP CDM 5.4 tables (one parquet folder per table) to a database: "
        "staged, verified, then emptied and refilled (replace) or appended to in one transaction.",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--credential_path",
        type=Path,
        help="ini file with [DEFAULT] base_url (JDBC), driver, user, password; or sqlalchemy_url; "
        "password_env names a variable holding the password ($CEHRGPT_DB_PASSWORD is also read)",
    )
    where.add_argument("--target", help="a SQLAlchemy URL instead, e.g. duckdb:///omop.duckdb")
    parser.add_argument("--input_folder", type=Path, required=True, help="the restored_omop folder")
    parser.add_argument(
        "--schema", help="target schema (MariaDB: database); must exist; default: the connection's"
    )
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="replace",
        help="replace the tables (default), append to them, or fail if any exists",
    )
    parser.add_argument(
        "--tables", type=_table_list, help="comma-separated CDM tables to upload (default: all found)"
    )
    parser.add_argument(
        "--chunk_size", type=_positive, default=DEFAULT_CHUNK_SIZE, help="rows per bulk-insert chunk"
    )
    parser.add_argument(
        "--lock_timeout_s",
        type=float,
        default=DEFAULT_LOCK_TIMEOUT_S,
        help="how long the final swap waits for tables other sessions are using, then gives up changing nothing",
    )
    parser.add_argument(
        "--summary_path",
        type=Path,
        help=f"where the JSON summary goes (default: INPUT_FOLDER/{SUMMARY_FILE})",
    )
    parser.add_argument(
        "--create_indexes",
        action="store_true",
        help="after the load, create the CDM 5.4 primary keys and indexes the tables lack, and the CDM 5.4 "
        "foreign keys among the uploaded tables (not on DuckDB and SQLite)",
    )
    parser.add_argument(
        "--min_persons",
        type=_non_negative,
        default=DEFAULT_MIN_PERSONS,
        help="refuse (exit 2, target untouched) a person table of fewer rows: an empty release never "
        f"replaces a database (default {DEFAULT_MIN_PERSONS})",
    )
    parser.add_argument(
        "--allow_empty",
        action="store_true",
        help="upload a person table of fewer than --min_persons rows anyway",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    def body() -> int:
        summary = upload_omop(
            args.input_folder,
            args.target if args.target else args.credential_path,
            schema=args.schema,
            mode=args.mode,
            tables=args.tables,
            chunk_size=args.chunk_size,
            lock_timeout_s=args.lock_timeout_s,
            summary_path=args.summary_path,
            create_indexes=args.create_indexes,
            min_persons=args.min_persons,
            allow_empty=args.allow_empty,
        )
        print(
            f"uploaded {summary['total_rows']} rows in {len(summary['tables'])} tables to schema "
            f"{summary['schema']} of {summary['target']} "
            f"({summary['rows_per_second']} rows/s)"
        )
        return 0

    return run_command(body, UploadError, describe=lambda e: redact(str(e)))


if __name__ == "__main__":
    raise SystemExit(main())
