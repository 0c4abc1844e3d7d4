"""The OMOP source's password (from the Secret or on the command line) never reaches a report or a log line."""

from __future__ import annotations

import json
import logging

import pytest
from data_omop_fixtures import drop_postgres_schema, tiny_omop, write_postgres

from cehrgpt.omop.source import OmopSourceError, resolve_omop_source

PASSWORD = "S3cr3t-pw-4711"


def test_the_source_comes_from_the_secret_when_the_parameter_is_empty():
    env = {"CEHRGPT_OMOP_URL": "postgresql+psycopg://reader@db/cdm", "CEHRGPT_OMOP_PASSWORD": "p@ss"}
    assert resolve_omop_source("", env) == "postgresql+psycopg://reader:p%40ss@db/cdm"
    assert resolve_omop_source("mysql+pymysql://r@other/cdm", env) == "mysql+pymysql://r:p%40ss@other/cdm"
    assert resolve_omop_source("mysql+pymysql://r:own@other/cdm", env) == "mysql+pymysql://r:own@other/cdm"
    assert resolve_omop_source("/data/omop", env) == "/data/omop"  # a folder has no password
    with pytest.raises(OmopSourceError) as e:
        resolve_omop_source("", {})
    assert str(e.value) == (
        "omop source: none given; pass --omop_source or set $CEHRGPT_OMOP_URL (the Secret's url key)"
    )


@pytest.mark.parametrize("password_from", ["secret", "command_line", "query_string"])
def test_prepare_report_and_log_mask_the_password(
    spark, tmp_path, monkeypatch, caplog, capsys, postgres_url, password_from
):
    """Needs a server whose user ``postgres`` trusts any password (the local test server does)."""
    from cehrgpt.pipeline.steps import run_prepare_step, run_stage

    schema = f"prepare_secret_{password_from}"
    url = write_postgres(postgres_url, schema, tiny_omop())
    out = tmp_path / "prepared"
    caplog.set_level(logging.DEBUG)
    try:
        if password_from == "secret":  # the pipeline: url and password from the Secret, the parameter empty
            monkeypatch.setenv("CEHRGPT_OMOP_URL", url)
            monkeypatch.setenv("CEHRGPT_OMOP_PASSWORD", PASSWORD)
            run_prepare_step("local", "", (str(out), str(out)), test_fraction=0.0, seed=1)
        else:  # a user running the stage with the password in the URL's user info or its query string
            from cehrgpt.data.prepare import main

            with_password = (
                url.replace("postgres@", f"postgres:{PASSWORD}@")
                if password_from == "command_line"
                else f"{url}&password={PASSWORD}"
            )
            run_stage("prepare", main, ["--omop_source", with_password, "--output_folder", str(out)])
    finally:
        drop_postgres_schema(postgres_url, schema)
    report_text = (out / "prepare_report.json").read_text()
    # with the local server: postgresql+psycopg://postgres:***@127.0.0.1:5432/test?options=-csearch_path%3D<schema>
    expected = (
        f"{url}&password=***"
        if password_from == "query_string"
        else url.replace("postgres@", "postgres:***@")
    )
    assert json.loads(report_text)["omop_source"] == expected
    captured = capsys.readouterr()
    logged = caplog.text + captured.out + captured.err
    assert "prepare " in caplog.text  # run_stage's line is there, masked
    assert PASSWORD not in report_text and PASSWORD not in logged
    written = [f for f in out.rglob("*") if f.is_file() and PASSWORD.encode() in f.read_bytes()]
    assert written == []


def test_prepare_without_a_source_fails_in_one_line(tmp_path, monkeypatch, capsys):
    from cehrgpt.data.prepare import main

    monkeypatch.delenv("CEHRGPT_OMOP_URL", raising=False)
    assert main(["--output_folder", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (
        "error: omop source: none given; pass --omop_source or set $CEHRGPT_OMOP_URL (the Secret's url key)\n"
    )
    assert not (tmp_path / "out").exists()


def test_an_unreachable_database_is_named_without_its_password(tmp_path, capsys):
    from cehrgpt.data.prepare import main

    url = f"postgresql+psycopg://reader:{PASSWORD}@127.0.0.1:1/cdm"
    assert main(["--omop_source", url, "--output_folder", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "error: omop source: cannot connect to postgresql+psycopg://reader:***@127.0.0.1:1/cdm: "
    )
    assert err.count("\n") == 1 and PASSWORD not in err
    assert not (tmp_path / "out").exists()
