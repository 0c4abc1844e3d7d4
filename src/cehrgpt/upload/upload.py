"""Upload restored OMOP tables into a database, all or nothing.

1. Check the input folder against the CDM 5.4 specification (parquet footers only), and refuse
   a ``person`` table of fewer than ``min_persons`` rows unless ``allow_empty``: an empty
   release never replaces a database.
2. Drop staging tables a killed earlier run left behind (``<table>__cehrgpt_staging``, ``__cehrgpt_old``).
3. Create one staging table per CDM table with the CDM's types and keys, bulk-load it,
   and verify its row count against the parquet.
4. In one transaction: ``replace`` empties every existing target (``DELETE``) and fills it from
   its staging table (``INSERT ... SELECT``); ``append`` only inserts. Targets are kept, so the
   grants, indexes, constraints, triggers and views a site added to its CDM tables survive,
   and readers see the old rows until the commit. A missing target gets its staging table
   renamed in. Staging tables are dropped after the commit. Targets are emptied children first
   and filled parents first (the CDM's foreign-key order), so a site's OHDSI foreign keys hold
   after every statement (:func:`cehrgpt.upload.ddl.replace_statements`).
5. With ``create_indexes``, the CDM 5.4 primary keys and indexes the targets lack are created,
   then the CDM 5.4 foreign keys among the uploaded tables (OHDSI's ``fpk_<table>_<field>``;
   not on DuckDB and SQLite) (:mod:`cehrgpt.upload.indexes`).

What "all or nothing" means per database:

* PostgreSQL, SQL Server, DuckDB, SQLite: DDL is transactional, so the deletes, inserts and
  renames of every table commit together or not at all. A failure or a killed process
  before that commit leaves the target tables exactly as they were; the leftover staging
  tables are dropped by the next run.
* MySQL/MariaDB: DDL commits on its own, so both modes create missing target tables empty
  first, then delete (``replace``) and insert in one InnoDB transaction (DML only), and drop
  the tables they created if that fails. A process killed between the creation and the
  commit leaves those new targets empty (tables that did not exist before); existing targets
  are unchanged either way.

The staging tables have fixed names, so one upload per schema runs at a time: a
server-side lock (PostgreSQL advisory lock, MariaDB ``GET_LOCK``, SQL Server
``sp_getapplock``) refuses a second one. The final transaction waits at most
``lock_timeout_s`` for tables other sessions are reading, then gives up and
changes nothing, rather than queueing every reader behind it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import NoSuchModuleError
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from cehrgpt.omop.cdm import cdm_tables, dependency_order, primary_key
from cehrgpt.redaction import redact, redact_url, url_passwords
from cehrgpt.upload.credentials import read_credential_file, target_url
from cehrgpt.upload.ddl import (
    RETIRED_SUFFIX,
    STAGING_SUFFIX,
    SwapItem,
    append_statements,
    cdm_table,
    qualified,
    replace_statements,
    staging_name,
)
from cehrgpt.upload.errors import UploadError
from cehrgpt.upload.indexes import foreign_key_statements, index_statements
from cehrgpt.upload.inputs import DEFAULT_MIN_PERSONS, TableInput, check_release_size, find_tables
from cehrgpt.upload.loaders import load_staging

log = logging.getLogger(__name__)

MODES = ("replace", "append", "fail")
DEFAULT_CHUNK_SIZE = 50_000
DEFAULT_LOCK_TIMEOUT_S = 60.0
SUMMARY_FILE = "upload_summary.json"
# Fault-injection hook for the tests, "<where>:<seconds>": sleep once, after the first chunk of table <where>, or inside
# the final transaction before its commit when <where> is "swap" (MariaDB: before its RENAME), or after the
# commit, before the leftovers are dropped, when <where> is "retire"; so a test can kill the upload right there.
PAUSE_ENV_VAR = "CEHRGPT_UPLOAD_TEST_PAUSE"

GUARANTEES = {
    "postgresql": "one transaction: every target emptied and refilled (or a new one renamed in)",
    "mssql": "one transaction: every target emptied and refilled (or a new one renamed in with sp_rename)",
    "duckdb": "one transaction: every target emptied and refilled (or a new one renamed in)",
    "sqlite": "one transaction: every target emptied and refilled (or a new one renamed in)",
    "mysql": "missing targets created empty first; then one InnoDB transaction empties and refills every target",
}


def upload_omop(
    input_folder: str | os.PathLike[str],
    target: str | os.PathLike[str] | URL,
    *,
    schema: str | None = None,
    mode: str = "replace",
    tables: list[str] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    summary_path: str | os.PathLike[str] | None = None,
    create_indexes: bool = False,
    min_persons: int = DEFAULT_MIN_PERSONS,
    allow_empty: bool = False,
) -> dict[str, Any]:
    """Upload every restored CDM table in ``input_folder`` to a database, all or nothing.

    Args:
        input_folder: The restore job's ``restored_omop`` folder (one parquet folder per table;
            ``rejected/`` and ``restore_report.json`` are ignored).
        target: A SQLAlchemy URL (a ``str`` or ``URL``), or the ``Path`` of a seed-style credential
            ini file (see :mod:`cehrgpt.upload.credentials`).
        schema: The target schema (MariaDB: database); None uses the connection's default.
            It must exist.
        mode: ``replace`` the target tables, ``append`` to them (a key conflict changes nothing),
            or ``fail`` if any of them exists.
        tables: Upload only these CDM tables; None uploads every table folder.
        chunk_size: Rows per bulk-insert chunk.
        lock_timeout_s: How long the final transaction waits for a table another session is using
            (PostgreSQL, SQL Server, MariaDB) before giving up and changing nothing, rather than
            queueing every reader of the schema behind it.
        summary_path: Where the JSON summary goes; default ``<input_folder>/upload_summary.json``.
        create_indexes: After the load, give every uploaded table the CDM 5.4 primary key and
            indexes it lacks, then the CDM 5.4 foreign keys among the uploaded tables
            (:mod:`cehrgpt.upload.indexes`).
        min_persons: Refuse, before touching the target, a ``person`` table of fewer rows (default 1).
        allow_empty: Upload a ``person`` table of fewer than ``min_persons`` rows anyway.

    Returns:
        The summary: target (password hidden), mode, per-table rows loaded and rows in the target
        afterwards, totals and rows per second.

    Raises:
        UploadError: Bad input, credentials or target, or a database refusal; the target is left as it was.
    """
    if mode not in MODES:
        raise UploadError(f"mode '{mode}' is not one of {', '.join(MODES)}")
    if chunk_size < 1:
        raise UploadError(f"chunk size {chunk_size} must be a positive number of rows")
    if not (math.isfinite(lock_timeout_s) and lock_timeout_s > 0):
        raise UploadError(f"lock timeout {lock_timeout_s} must be a positive number of seconds")
    if min_persons < 0:
        raise UploadError(f"--min_persons {min_persons} must be 0 or more")
    url = _resolve_target(target)
    secrets = url_passwords(url)
    inputs = find_tables(input_folder, tables)
    check_release_size(inputs, input_folder, min_persons=min_persons, allow_empty=allow_empty)
    started = time.perf_counter()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    engine = create_target_engine(url)
    try:
        tables_summary = _Upload(
            engine, inputs, schema, mode, chunk_size, lock_timeout_s, secrets, create_indexes
        ).run()
        if schema is None:  # name the schema written, not just the database
            with engine.connect() as connection:
                schema = sa.inspect(connection).default_schema_name
    finally:
        engine.dispose()
    seconds = time.perf_counter() - started
    total_rows = sum(ti.rows for ti in inputs)
    summary = {
        "target": redact_url(url),
        "dialect": engine.dialect.name,
        "schema": schema,
        "mode": mode,
        "all_or_nothing": GUARANTEES.get(_family(engine.dialect.name), "transactional DDL assumed"),
        "tables": tables_summary,
        "total_rows": total_rows,
        "seconds": round(seconds, 3),
        "rows_per_second": round(total_rows / seconds, 1) if seconds > 0 else None,
        "started_at": started_at,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_summary(summary, Path(summary_path) if summary_path else Path(input_folder) / SUMMARY_FILE)
    return summary


def write_summary(summary: dict[str, Any], path: Path) -> None:
    """Write the summary atomically (temp file + rename)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(json.dumps(summary, indent=2) + "\n")
        temporary.replace(path)
    except OSError as exc:
        raise UploadError(
            f"the upload succeeded but its summary {path} could not be written ({exc.strerror})"
        ) from None


def create_target_engine(url: URL) -> Engine:
    """A SQLAlchemy engine set up for bulk loading and transactional DDL on ``url``'s database."""
    kwargs: dict[str, Any] = {}
    backend, _, driver = url.drivername.partition("+")  # not get_driver_name(): it loads the dialect
    if backend == "mssql" and driver == "pyodbc":
        kwargs["fast_executemany"] = True
    if backend == "postgresql" and driver == "psycopg" and "application_name" not in url.query:
        kwargs["connect_args"] = {"application_name": "cehrgpt-upload"}
    try:
        engine = sa.create_engine(url, **kwargs)
    except NoSuchModuleError:
        raise UploadError(
            f"no SQLAlchemy dialect for '{url.drivername}'; expected e.g. mssql+pyodbc, postgresql+psycopg, "
            "mysql+pymysql, duckdb or sqlite"
        ) from None
    except ImportError as exc:
        hint = (
            "; install unixODBC and Microsoft's ODBC Driver 18 for SQL Server (or FreeTDS)"
            if backend == "mssql"
            else ""
        )
        raise UploadError(f"the {url.drivername} driver cannot be loaded ({exc}){hint}") from None
    if backend == "sqlite":
        _real_sqlite_transactions(engine)
    if backend in ("mysql", "mariadb"):
        _strict_mysql_sessions(engine)
    if backend == "mssql":
        _quiet_mssql_sessions(engine)
    return engine


# --- the run -----------------------------------------------------------------------------------------------


class _Upload:
    """One upload run: the state a failure must undo (staging tables made so far)."""

    def __init__(
        self,
        engine: Engine,
        inputs: list[TableInput],
        schema: str | None,
        mode: str,
        chunk_size: int,
        lock_timeout_s: float,
        secrets: list[str],
        create_indexes: bool = False,
    ) -> None:
        self.engine = engine
        self.create_indexes = create_indexes
        self.dialect = engine.dialect
        self.inputs = inputs
        self.schema = schema
        self.mode = mode
        self.chunk_size = chunk_size
        self.lock_timeout_s = lock_timeout_s
        self.secrets = secrets
        self.staged: list[str] = []
        self.created_targets: list[str] = []
        self.leftovers: list[str] = []
        where, _, seconds = os.environ.get(PAUSE_ENV_VAR, "").partition(":")
        self.pause_at, self.pause_s = where, float(seconds or 0)

    def run(self) -> dict[str, dict[str, Any]]:
        connecting = f"connecting to {redact_url(self.engine.url)}"
        with self._database_errors(connecting, unchanged=True):
            try:
                self._check_schema()
            except TypeError as exc:  # the driver's connect() refused a keyword: a query key of the URL
                raise UploadError(
                    redact(
                        f"{connecting} failed: the {self.engine.driver} driver does not take an option of "
                        f"the URL ({str(exc).splitlines()[0]}); the target was left unchanged",
                        self.secrets,
                    )
                ) from None
        with self._exclusive_upload():
            with self._database_errors("listing the target tables", unchanged=True):
                existing = set(sa.inspect(self.engine).get_table_names(schema=self.schema))
            return self._run(existing)

    def _run(self, existing: set[str]) -> dict[str, dict[str, Any]]:
        self._drop_stale(existing)  # before any refusal: a killed run's staging never outlives the next run
        wanted = [ti.table for ti in self.inputs]
        present = [t for t in wanted if t in existing]
        if self.mode == "fail" and present:
            raise UploadError(
                f"--mode fail: table {qualified(self.dialect, self.schema, present[0])} already exists "
                f"({len(present)} of the {len(wanted)} tables do); nothing was changed"
            )
        timings: dict[str, float] = {}
        try:
            total = sum(ti.rows for ti in self.inputs)
            with (
                logging_redirect_tqdm(),
                tqdm(total=total, unit="rows", unit_scale=True, desc="upload", smoothing=0) as bar,
            ):
                for ti in self.inputs:
                    started = time.perf_counter()
                    self._stage(ti, bar)
                    timings[ti.table] = time.perf_counter() - started
            items = [SwapItem(t, t in existing, primary_key(t) is not None) for t in wanted]
            self._swap(items)
        except BaseException:
            self._undo()
            raise
        self._after_swap(items)
        indexes = self._create_indexes(wanted) if self.create_indexes else {}
        foreign = self._create_foreign_keys(wanted) if self.create_indexes else {}
        with self._database_errors("counting the rows of the target tables", unchanged=False):
            after = self._counts(wanted)
        return {
            ti.table: {
                "rows_loaded": ti.rows,
                "rows_in_target": after[ti.table],
                "files": len(ti.files),
                "seconds": round(timings[ti.table], 3),
                **(
                    {"indexes_created": indexes[ti.table], "foreign_keys_created": foreign[ti.table]}
                    if self.create_indexes
                    else {}
                ),
            }
            for ti in self.inputs
        }

    def _create_indexes(self, tables: list[str]) -> dict[str, list[str]]:
        """The CDM 5.4 primary keys and indexes the targets lack, one statement per transaction, after the load."""
        created: dict[str, list[str]] = {}
        for table in tables:
            with self._database_errors(f"inspecting {table}'s indexes", unchanged=False):
                existing, has_key = self._indexes_of(table)
            statements = index_statements(
                self.dialect, self.schema, table, existing_indexes=existing, has_primary_key=has_key
            )
            self._run_each(statements)
            created[table] = statements
        return created

    def _create_foreign_keys(self, tables: list[str]) -> dict[str, list[str]]:
        """The CDM 5.4 foreign keys among the uploaded tables that they lack (OHDSI's names), parents first.

        Only keys into tables of this upload, which were just checked to hold their rows: a key into the
        site's vocabulary is the DBA's call. DuckDB and SQLite cannot add a key to an existing table.
        """
        if self.dialect.name in ("duckdb", "sqlite"):
            return {table: [] for table in tables}
        created: dict[str, list[str]] = {}
        for table in dependency_order(tables):
            with self._database_errors(f"inspecting {table}'s foreign keys", unchanged=False):
                keys = sa.inspect(self.engine).get_foreign_keys(table, schema=self.schema)
            statements = foreign_key_statements(
                self.dialect,
                self.schema,
                table,
                parents=set(tables),
                existing={str(key["name"]).lower() for key in keys},
            )
            self._run_each(statements)
            created[table] = statements
        return created

    def _run_each(self, statements: list[str]) -> None:
        """DDL after the load, one statement per transaction (a failure names it; the rows stay loaded)."""
        for statement in statements:
            log.info("%s", statement)
            with (
                self._database_errors(f"{statement} (the rows are loaded)", unchanged=False),
                self.engine.begin() as conn,
            ):
                conn.exec_driver_sql(statement)

    @contextlib.contextmanager
    def _exclusive_upload(self) -> Iterator[None]:
        """Hold a server-side lock per schema for the whole run, so two uploads never share staging tables.

        PostgreSQL advisory lock, MySQL/MariaDB ``GET_LOCK``, SQL Server ``sp_getapplock``; DuckDB
        and SQLite lock their file themselves. The lock dies with the session if the process is killed.
        """
        family = _family(self.dialect.name)
        statements = {
            "postgresql": (
                "SELECT pg_try_advisory_lock(hashtext(:name))",
                "SELECT pg_advisory_unlock(hashtext(:name))",
            ),
            "mysql": ("SELECT GET_LOCK(:name, 0) = 1", "SELECT RELEASE_LOCK(:name)"),
            "mssql": (
                (
                    "SET NOCOUNT ON; DECLARE @status int; EXEC @status = sp_getapplock @Resource = :name, "
                    "@LockMode = 'Exclusive', @LockOwner = 'Session', @LockTimeout = 0; "
                    "SELECT CASE WHEN @status >= 0 THEN 1 ELSE 0 END"
                ),
                "EXEC sp_releaseapplock @Resource = :name, @LockOwner = 'Session'",
            ),
        }
        if family not in statements:
            yield
            return
        take, release = statements[family]
        with self._database_errors("taking the upload lock", unchanged=True):
            conn = self.engine.connect()
            # the schema written, not the option: no --schema and --schema S lock alike where S is the default
            schema = self.schema or sa.inspect(conn).default_schema_name or ""
            name = f"cehrgpt_upload:{schema}"
            taken = bool(conn.execute(sa.text(take), {"name": name}).scalar())
            conn.commit()
        try:
            if not taken:
                raise UploadError(
                    f"another upload into schema '{schema or '(default)'}' of {redact_url(self.engine.url)} "
                    "is running; nothing was changed"
                )
            yield
        finally:
            with contextlib.suppress(Exception):
                if taken:
                    conn.execute(sa.text(release), {"name": name})
                    conn.commit()
            with contextlib.suppress(Exception):
                conn.close()

    def _check_schema(self) -> None:
        """Connect, and refuse a schema that does not exist (creating one is the DBA's call)."""
        inspector = sa.inspect(self.engine)
        if self.schema is not None and self.schema not in _schema_names(inspector):
            raise UploadError(
                f"schema '{self.schema}' does not exist in {redact_url(self.engine.url)}; create it first"
            )

    def _drop_stale(self, existing: set[str]) -> None:
        prefixes = set(cdm_tables())
        stale = sorted(
            name
            for name in existing
            for suffix in (STAGING_SUFFIX, RETIRED_SUFFIX)
            if name.endswith(suffix) and name[: -len(suffix)] in prefixes
        )
        if stale:
            log.info("dropping %s, left behind by an earlier upload that did not finish", ", ".join(stale))
        for name in stale:
            with (
                self._database_errors(f"dropping the stale table {name}", unchanged=True),
                self.engine.begin() as conn,
            ):
                conn.exec_driver_sql(f"DROP TABLE {qualified(self.dialect, self.schema, name)}")

    def _stage(self, ti: TableInput, bar: tqdm) -> None:
        name = staging_name(ti.table)
        staging = cdm_table(
            ti.table, sa.MetaData(), dialect_name=self.dialect.name, name=name, schema=self.schema
        )
        log.info("loading %s (%d rows, %d files) into %s", ti.table, ti.rows, len(ti.files), name)
        with self._database_errors(f"creating {name}", unchanged=True), self.engine.begin() as conn:
            staging.create(conn)
        self.staged.append(ti.table)

        def on_rows(rows: int) -> None:
            bar.update(rows)
            self._pause(ti.table)

        with self._database_errors(f"loading {ti.table}", unchanged=True), self.engine.begin() as conn:
            load_staging(conn, ti.table, staging, ti.files, chunk_size=self.chunk_size, on_rows=on_rows)
        with self._database_errors(f"counting the rows of {name}", unchanged=True):
            loaded = self._counts([name])[name]
        if loaded != ti.rows:
            raise UploadError(
                f"{ti.table}: {loaded} rows arrived in {name} but the parquet holds {ti.rows}; "
                "the target was left unchanged"
            )

    def _swap(self, items: list[SwapItem]) -> None:
        mariadb = _family(self.dialect.name) == "mysql"
        if mariadb:
            for item in (i for i in items if not i.target_exists):
                target = cdm_table(
                    item.table, sa.MetaData(), dialect_name=self.dialect.name, schema=self.schema
                )
                with (
                    self._database_errors(f"creating {item.table}", unchanged=True),
                    self.engine.begin() as conn,
                ):
                    target.create(conn)
                self.created_targets.append(item.table)
            items = [SwapItem(i.table, True, i.has_primary_key) for i in items]
        plan = (append_statements if self.mode == "append" else replace_statements)(
            self.dialect, self.schema, items
        )
        step = "appending to the target tables" if self.mode == "append" else "swapping the staging tables in"
        log.info("%s: one transaction, %d statements", step, len(plan))
        with self._database_errors(step, unchanged=True), self.engine.begin() as conn:
            for statement in transaction_statements(self.dialect.name, self.lock_timeout_s):
                conn.exec_driver_sql(statement)
            for statement in plan:
                conn.exec_driver_sql(statement)
            self._pause("swap")
        # Committed: from here on nothing may be undone. Appended-from staging tables remain to be dropped.
        self.created_targets = []
        self.staged = []
        self.leftovers = [staging_name(i.table) for i in items if i.target_exists]

    def _after_swap(self, items: list[SwapItem]) -> None:
        """Drop what the committed swap left over; a failure here no longer changes the target's data."""
        statements = [f"DROP TABLE {qualified(self.dialect, self.schema, name)}" for name in self.leftovers]
        self._pause("retire")
        for statement in statements:
            with contextlib.suppress(Exception), self.engine.begin() as conn:
                conn.exec_driver_sql(statement)

    def _indexes_of(self, table: str) -> tuple[set[str], bool]:
        """The names of ``table``'s indexes (lower case) and whether it has a primary key."""
        if self.dialect.name == "duckdb":  # duckdb_engine's inspector cannot list indexes
            schema = "coalesce(:schema, current_schema())"
            with self.engine.connect() as conn:
                names = (
                    conn.execute(
                        sa.text(
                            f"SELECT index_name FROM duckdb_indexes() WHERE table_name = :t AND schema_name = {schema}"
                        ),
                        {"t": table, "schema": self.schema},
                    )
                    .scalars()
                    .all()
                )
                keys = conn.execute(
                    sa.text(
                        "SELECT count(*) FROM duckdb_constraints() WHERE table_name = :t "
                        f"AND schema_name = {schema} AND constraint_type = 'PRIMARY KEY'"
                    ),
                    {"t": table, "schema": self.schema},
                ).scalar_one()
                return {str(n).lower() for n in names}, bool(keys)
        inspector = sa.inspect(self.engine)
        indexes = {str(i["name"]).lower() for i in inspector.get_indexes(table, schema=self.schema)}
        return indexes, bool(
            inspector.get_pk_constraint(table, schema=self.schema).get("constrained_columns")
        )

    def _pause(self, where: str) -> None:
        if self.pause_s and where == self.pause_at:
            log.info("pausing %s s at %s (%s)", self.pause_s, where, PAUSE_ENV_VAR)
            self.pause_at = ""  # once
            time.sleep(self.pause_s)

    def _undo(self) -> None:
        """Best effort after a failure: drop our staging tables (and MariaDB targets we created empty)."""
        names = [staging_name(t) for t in self.staged] + self.created_targets
        for name in names:
            with contextlib.suppress(Exception), self.engine.begin() as conn:
                conn.exec_driver_sql(f"DROP TABLE {qualified(self.dialect, self.schema, name)}")

    def _counts(self, names: list[str]) -> dict[str, int]:
        with self.engine.connect() as conn:
            return {
                name: int(
                    conn.exec_driver_sql(
                        f"SELECT COUNT(*) FROM {qualified(self.dialect, self.schema, name)}"
                    ).scalar_one()
                )
                for name in names
            }

    @contextlib.contextmanager
    def _database_errors(self, step: str, *, unchanged: bool) -> Iterator[None]:
        """Turn a driver error into one redacted line naming the step (and whether the target changed)."""
        driver_error: tuple[type[BaseException], ...] = (sa.exc.SQLAlchemyError,)
        dbapi = getattr(self.dialect, "loaded_dbapi", None)
        if dbapi is not None and isinstance(getattr(dbapi, "Error", None), type):
            driver_error = (*driver_error, dbapi.Error)
        try:
            yield
        except UploadError:
            raise
        except driver_error as exc:
            original = getattr(exc, "orig", None) or exc
            lines = [line.strip() for line in str(original).splitlines() if line.strip()]
            reason = lines[0] if lines else type(original).__name__
            if len(lines) > 1 and lines[0].lower().startswith("connection"):
                reason = " ".join(lines[:2])
            outcome = "; the target was left unchanged" if unchanged else ""
            message = redact(f"{step} failed: {reason}{outcome}", self.secrets)
            raise UploadError(message) from None
        except (OSError, pa.ArrowException) as exc:  # an input file that vanished or broke while loading
            outcome = "; the target was left unchanged" if unchanged else ""
            raise UploadError(f"{step} failed: {str(exc).splitlines()[0]}{outcome}") from None


def transaction_statements(dialect_name: str, lock_timeout_s: float) -> list[str]:
    """What the final transaction runs first: SQL Server batches without row-count messages
    (``SET NOCOUNT ON``, which drivers would otherwise read as results), then the lock timeout."""
    quiet = ["SET NOCOUNT ON"] if dialect_name == "mssql" else []
    return quiet + lock_timeout_statements(dialect_name, lock_timeout_s)


def lock_timeout_statements(dialect_name: str, seconds: float) -> list[str]:
    """Statements that bound how long the final transaction waits for another session's table locks."""
    milliseconds = max(int(seconds * 1000), 1)
    if dialect_name == "postgresql":
        return [f"SET LOCAL lock_timeout = {milliseconds}"]
    if dialect_name == "mssql":
        return [f"SET LOCK_TIMEOUT {milliseconds}"]
    if dialect_name in ("mysql", "mariadb"):
        whole = max(
            round(seconds), 1
        )  # metadata locks, and InnoDB row locks (a writer's) that DELETE waits for
        return [f"SET SESSION lock_wait_timeout = {whole}", f"SET SESSION innodb_lock_wait_timeout = {whole}"]
    return []


# --- helpers -------------------------------------------------------------------------------------------------


def _resolve_target(target: str | os.PathLike[str] | URL) -> URL:
    if isinstance(target, URL):
        return target
    if isinstance(target, str):
        return target_url(target)
    return read_credential_file(target)


def _family(dialect_name: str) -> str:
    return "mysql" if dialect_name in ("mysql", "mariadb") else dialect_name


def _schema_names(inspector: sa.Inspector) -> set[str]:
    names = set(inspector.get_schema_names())
    return names | {n.rsplit(".", 1)[-1] for n in names}  # DuckDB lists schemas as "<catalog>.<schema>"


def _real_sqlite_transactions(engine: Engine) -> None:
    """pysqlite leaves DDL outside transactions; take BEGIN/COMMIT into our hands so the swap is atomic."""

    @event.listens_for(engine, "connect")
    def _no_implicit_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN")


def _strict_mysql_sessions(engine: Engine) -> None:
    """Make MySQL/MariaDB refuse, not truncate, a value that does not fit its column."""

    @event.listens_for(engine, "connect")
    def _strict(dbapi_connection: Any, _record: Any) -> None:
        with contextlib.closing(dbapi_connection.cursor()) as cursor:
            cursor.execute("SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'")


def _quiet_mssql_sessions(engine: Engine) -> None:
    """SQL Server: ``SET NOCOUNT ON`` for the whole session, so no batch sends row-count messages."""

    @event.listens_for(engine, "connect")
    def _nocount(dbapi_connection: Any, _record: Any) -> None:
        with contextlib.closing(dbapi_connection.cursor()) as cursor:
            cursor.execute("SET NOCOUNT ON")
