"""A planted password never reaches stdout, stderr, a log or any file a command writes.

Each command runs as a user runs it (a subprocess), with a password unique to the test run in the
places a user puts one: the URL's user info, its query string, an unencoded '@', a JDBC base_url.
Every file under the test's folder (outputs, summaries, logs) and the two streams are searched for it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import quote, quote_plus

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

PLANTED = f"Pl4nted-{uuid.uuid4().hex[:12]}"


def run(
    module: str, argv: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *argv],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def leaks(folder: Path, result: subprocess.CompletedProcess) -> list[str]:
    """Where the planted password (or its URL-encoded spellings) appears: the streams and every file under ``folder``."""
    spellings = {PLANTED, quote(PLANTED, safe=""), quote_plus(PLANTED)}
    found = [
        stream for stream in ("stdout", "stderr") if any(s in getattr(result, stream) for s in spellings)
    ]
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        content = file.read_bytes()
        found += [str(file) for s in spellings if s.encode() in content][:1]
    return found


def restored_person_folder(folder: Path) -> Path:
    """The smallest restored OMOP output: a ``person`` table of two persons."""
    (folder / "person").mkdir(parents=True)
    person = pa.table(
        {
            "person_id": pa.array([1, 2], pa.int64()),
            "gender_concept_id": pa.array([8507, 8532], pa.int64()),
            "year_of_birth": pa.array([1980, 1991], pa.int32()),
            "race_concept_id": pa.array([0, 0], pa.int64()),
            "ethnicity_concept_id": pa.array([0, 0], pa.int64()),
        }
    )
    pq.write_table(person, folder / "person" / "part-0.parquet")
    return folder


@pytest.fixture
def postgres_schema(postgres_url):
    """A fresh schema on the PostgreSQL test server, dropped afterwards: (url, schema)."""
    schema = f"redaction_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(postgres_url)
    with engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    yield postgres_url, schema
    with engine.begin() as connection:
        connection.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    engine.dispose()


def test_upload_with_the_password_in_the_query_string_stores_and_prints_none_of_it(tmp_path, postgres_schema):
    """Needs a server that trusts any password for its user (the local test server does)."""
    url, schema = postgres_schema
    target = f"{url}?password={PLANTED}"
    restored = restored_person_folder(tmp_path / "restored_omop")
    result = run(
        "cehrgpt.tools.upload_omop",
        ["--target", target, "--input_folder", str(restored), "--schema", schema],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert (restored / "upload_summary.json").is_file()
    assert "password=***" in (restored / "upload_summary.json").read_text()
    assert leaks(tmp_path, result) == []


@pytest.mark.parametrize(
    "target",
    [
        f"postgresql+psycopg://reader@127.0.0.1:1/cdm?password={PLANTED}",
        f"postgresql+psycopg://reader:p@{PLANTED}@127.0.0.1:1/cdm",  # an unencoded '@' in the password
        f"mysql+pymysql://reader@127.0.0.1:1/cdm?charset=utf8mb4&passwd={PLANTED}",
    ],
)
def test_a_failed_upload_names_the_target_without_its_password(tmp_path, target):
    restored = restored_person_folder(tmp_path / "restored_omop")
    result = run("cehrgpt.tools.upload_omop", ["--target", target, "--input_folder", str(restored)], tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert leaks(tmp_path, result) == []


def test_an_oracle_base_url_is_refused_without_echoing_its_password(tmp_path):
    credentials = tmp_path / "credentials.ini"
    credentials.write_text(f"[DEFAULT]\nbase_url = jdbc:oracle:thin:scott/{PLANTED}@db:1521:orcl\n")
    restored = restored_person_folder(tmp_path / "restored_omop")
    result = run(
        "cehrgpt.tools.upload_omop",
        ["--credential_path", str(credentials), "--input_folder", str(restored)],
        tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: base_url scheme 'jdbc:oracle:' is not supported")
    # the credential file itself holds it: every other file must not
    credentials.unlink()
    assert leaks(tmp_path, result) == []


@pytest.mark.parametrize(
    "source",
    [
        f"postgresql+psycopg://reader@127.0.0.1:1/cdm?password={PLANTED}",
        f"postgresql+psycopg://reader:p@{PLANTED}@127.0.0.1:1/cdm",
        f"postgresql+psycopg://reader:{PLANTED}@127.0.0.1:1/cdm",
    ],
)
def test_a_failed_prepare_names_the_source_without_its_password(tmp_path, source):
    result = run(
        "cehrgpt.data.prepare", ["--omop_source", source, "--output_folder", str(tmp_path / "out")], tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.count("\nerror: ") + result.stderr.startswith("error: ") == 1, result.stderr
    assert leaks(tmp_path, result) == []


@pytest.mark.parametrize(
    "source",
    [
        f"postgresql+psycopg://reader:{PLANTED}@db.example.org/cdm",
        f"postgresql+psycopg://reader@db.example.org/cdm?password={PLANTED}",
        f"postgresql+psycopg://reader:p@{PLANTED}@db.example.org/cdm",
    ],
)
def test_the_local_pipeline_refuses_a_source_url_with_a_password_before_writing_anything(tmp_path, source):
    output_root = tmp_path / "kfp"
    result = run(
        "cehrgpt.pipeline.local",
        ["--omop_source", source, "--output_root", str(output_root)],
        tmp_path,
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert (
        line.startswith("error: --omop_source postgresql+psycopg://reader")
        and "$CEHRGPT_OMOP_PASSWORD" in line
    )
    assert not output_root.exists()
    assert leaks(tmp_path, result) == []


def test_prepare_of_a_source_without_tables_names_it_without_its_password(tmp_path, postgres_schema):
    """Past the connection: prepare starts Spark and finds no CDM table in the (empty) schema."""
    url, schema = postgres_schema
    source = f"{url}?options=-csearch_path%3D{schema}&password={PLANTED}"
    result = run(
        "cehrgpt.data.prepare", ["--omop_source", source, "--output_folder", str(tmp_path / "out")], tmp_path
    )
    assert result.returncode == 2, result.stderr
    assert "error: " in result.stderr
    assert leaks(tmp_path, result) == []
