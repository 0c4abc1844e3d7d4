"""The one redaction rule: every form a URL or connection string carries a password in is hidden."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from cehrgpt.redaction import has_password, redact, redact_url, url_passwords

SECRET = "Pl4nted-7c1e"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql://u:Pl4nted-7c1e@h/db", "postgresql://u:***@h/db"),
        (
            "at postgresql+psycopg://u:Pl4nted-7c1e@h:5432/db now",
            "at postgresql+psycopg://u:***@h:5432/db now",
        ),
        # an unencoded '@' (or '/', '?') in the password: hidden to the last '@'
        ("postgresql://u:p@ss@Pl4nted-7c1e@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:p/Pl4nted-7c1e@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:p?Pl4nted-7c1e@h/db", "postgresql://u:***@h/db"),
        # the query string
        ("postgresql://u@h/db?password=Pl4nted-7c1e", "postgresql://u@h/db?password=***"),
        (
            "postgresql://u@h/db?sslmode=require&PWD=Pl4nted-7c1e&x=1",
            "postgresql://u@h/db?sslmode=require&PWD=***&x=1",
        ),
        ("mysql://u@h/db?passwd=Pl4nted-7c1e", "mysql://u@h/db?passwd=***"),
        # ODBC connect strings, plain and percent-encoded inside a URL
        (
            "DRIVER={ODBC Driver 18};UID=u;PWD={Pl4nted;-7c1e};DATABASE=cdm",
            "DRIVER={ODBC Driver 18};UID=u;PWD=***;DATABASE=cdm",
        ),
        (
            "mssql+pyodbc:///?odbc_connect=UID%3Du%3BPWD%3DPl4nted-7c1e%3BSERVER%3Dh",
            "mssql+pyodbc:///?odbc_connect=UID%3Du%3BPWD%3D***%3BSERVER%3Dh",
        ),
        # JDBC forms
        (
            "jdbc:sqlserver://h:1433;user=u;password=Pl4nted-7c1e;encrypt=true",
            "jdbc:sqlserver://h:1433;user=u;password=***;encrypt=true",
        ),
        ("jdbc:sqlserver://h;password=p@Pl4nted-7c1e;db=x", "jdbc:sqlserver://h;password=***;db=x"),
        ("jdbc:postgresql://h/db?user=u&password=Pl4nted-7c1e", "jdbc:postgresql://h/db?user=u&password=***"),
        ("jdbc:oracle:thin:scott/Pl4nted-7c1e@h:1521:orcl", "jdbc:oracle:thin:scott/***@h:1521:orcl"),
        ("jdbc:oracle:thin:scott/p@Pl4nted-7c1e@//h:1521/svc", "jdbc:oracle:thin:scott/***@//h:1521/svc"),
        # libpq keywords
        ("host=h user=u password=Pl4nted-7c1e dbname=cdm", "host=h user=u password=*** dbname=cdm"),
    ],
)
def test_every_form_of_a_password_is_hidden(text, shown):
    assert redact(text) == shown
    assert SECRET not in redact(text)
    assert has_password(text)


@pytest.mark.parametrize(
    "text",
    [
        "postgresql+psycopg://reader@db:5432/cdm",
        "postgresql://u:***@h/db",
        "duckdb:///data/omop@2024.duckdb",
        "s3a://bucket/runs/out",
        "jdbc:oracle:thin:@h:1521:orcl",
        "password authentication failed for user reader",
        "/data/omop",
    ],
)
def test_text_without_a_password_is_unchanged(text):
    assert redact(text) == text
    assert not has_password(text)


def test_a_password_the_caller_holds_is_hidden_in_every_spelling():
    text = "failed for p@ss/w rd and p%40ss%2Fw+rd and p%40ss%2Fw%20rd"
    assert redact(text, ["p@ss/w rd", None, ""]) == "failed for *** and *** and ***"


def test_a_sqlalchemy_url_is_rendered_with_every_password_hidden():
    url = make_url(f"postgresql+psycopg://u:{SECRET}@h:5432/db?sslmode=require&password={SECRET}")
    assert redact_url(url) == "postgresql+psycopg://u:***@h:5432/db?password=***&sslmode=require"
    assert redact_url(f"postgresql+psycopg://u:{SECRET}@h:5432/db") == "postgresql+psycopg://u:***@h:5432/db"
    assert redact_url("duckdb:///data/omop.duckdb") == "duckdb:///data/omop.duckdb"
    assert url_passwords(url) == [SECRET, SECRET]
    assert url_passwords(make_url("duckdb:///x.duckdb")) == []
