"""The database tests find their servers: the local defaults (as in .ci/run), an override, or a reason to skip."""

from __future__ import annotations

from pathlib import Path

import pytest

from server_urls import (
    MARIADB_DEFAULT_URL,
    MARIADB_URL_VARIABLE,
    POSTGRES_DEFAULT_URL,
    POSTGRES_URL_VARIABLE,
    answering_server_url,
)


def test_defaults_are_the_servers_ci_starts():
    assert POSTGRES_DEFAULT_URL == "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    assert MARIADB_DEFAULT_URL == "mysql+pymysql://root@127.0.0.1:3306/test"
    ci = (Path(__file__).parents[2] / ".ci" / "run").read_text()
    assert f"{POSTGRES_URL_VARIABLE}:-{POSTGRES_DEFAULT_URL}" in ci
    assert f"{MARIADB_URL_VARIABLE}:-{MARIADB_DEFAULT_URL}" in ci


def test_without_the_variable_the_local_server_is_used(monkeypatch, postgres_url, mariadb_url):
    monkeypatch.delenv(POSTGRES_URL_VARIABLE, raising=False)
    monkeypatch.delenv(MARIADB_URL_VARIABLE, raising=False)
    assert (
        answering_server_url("PostgreSQL", POSTGRES_URL_VARIABLE, POSTGRES_DEFAULT_URL)
        == POSTGRES_DEFAULT_URL
    )
    assert answering_server_url("MariaDB", MARIADB_URL_VARIABLE, MARIADB_DEFAULT_URL) == MARIADB_DEFAULT_URL


@pytest.mark.parametrize(
    ("server", "variable", "default", "silent_url", "shown"),
    [
        ("PostgreSQL", POSTGRES_URL_VARIABLE, POSTGRES_DEFAULT_URL,
         "postgresql+psycopg://postgres:hunter2@127.0.0.1:1/test", "postgresql+psycopg://postgres:***@127.0.0.1:1/test"),
        ("MariaDB", MARIADB_URL_VARIABLE, MARIADB_DEFAULT_URL,
         "mysql+pymysql://root:hunter2@127.0.0.1:1/test", "mysql+pymysql://root:***@127.0.0.1:1/test"),
    ],
)  # fmt: skip
def test_a_server_that_does_not_answer_skips_naming_server_url_and_error(
    monkeypatch, server, variable, default, silent_url, shown
):
    monkeypatch.setenv(variable, silent_url)  # port 1: nothing listens there
    with pytest.raises(pytest.skip.Exception) as skipped:
        answering_server_url(server, variable, default)
    message = str(skipped.value)
    assert message.startswith(f"{server} tests skipped: {server} at {shown} did not answer (")
    assert message.endswith(f"); start it or set ${variable}")
    assert "hunter2" not in message
