"""The PostgreSQL and MariaDB servers the database tests use: the local ones unless the environment names others.

The defaults are the servers ``.ci/run`` starts, so ``make test`` on a developer machine runs the database
tests too. When a server does not answer, its tests are skipped with a reason that names the server, the URL
(password hidden) and the connection error; pytest's ``-ra`` summary lists them at the end of the run.
"""

from __future__ import annotations

import os

import pytest

POSTGRES_URL_VARIABLE = "CEHRGPT_TEST_POSTGRES_URL"
POSTGRES_DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MARIADB_URL_VARIABLE = "CEHRGPT_TEST_MARIADB_URL"
MARIADB_DEFAULT_URL = "mysql+pymysql://root@127.0.0.1:3306/test"
CONNECT_TIMEOUT_S = 5


def answering_server_url(server: str, variable: str, default: str) -> str:
    """``$variable`` (else ``default``) once a connection to it succeeds; otherwise skips the calling test."""
    import sqlalchemy as sa

    url = os.environ.get(variable) or default
    try:
        where = sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        where = f"${variable}"  # not a URL: echo nothing that may hold a password
    try:
        engine = sa.create_engine(url, connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
        try:
            with engine.connect():
                pass
        finally:
            engine.dispose()
    except (
        Exception
    ) as exc:  # any failure to reach the server (refused, auth, missing driver) skips its tests
        lines = str(exc).strip().splitlines()
        reason = lines[0] if lines else type(exc).__name__
        pytest.skip(
            f"{server} tests skipped: {server} at {where} did not answer ({reason}); "
            f"start it or set ${variable}"
        )
    return url
