"""Credential files and JDBC URLs → SQLAlchemy URLs; passwords never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from cehrgpt.redaction import redact_url
from cehrgpt.upload.credentials import jdbc_to_sqlalchemy_url, read_credential_file, target_url
from cehrgpt.upload.errors import UploadError

SAMPLE = Path(__file__).parents[2] / "sample_configs" / "credential_file_sample.ini"


def rendered(url) -> str:
    return url.render_as_string(hide_password=False)


def test_sqlserver_jdbc_url_becomes_mssql_pyodbc_with_microsoft_odbc_driver_18():
    url = jdbc_to_sqlalchemy_url(
        "jdbc:sqlserver://db.example.org:1433;databaseName=cdm;encrypt=true;trustServerCertificate=true",
        user="omop",
        password="s3cret",
    )
    assert rendered(url) == (
        "mssql+pyodbc://omop:s3cret@db.example.org:1433/cdm"
        "?Encrypt=yes&TrustServerCertificate=yes&driver=ODBC+Driver+18+for+SQL+Server"
    )


def test_sqlserver_jdbc_properties_user_password_instance_and_options():
    url = jdbc_to_sqlalchemy_url(
        "jdbc:sqlserver://sql01\\PROD;database=omop_cdm;user=etl;password=pw;encrypt=false;"
        "hostNameInCertificate=*.example.org;applicationName=cehrgpt;integratedSecurity=false"
    )
    assert url.host == "sql01\\PROD"
    assert url.port is None
    assert url.database == "omop_cdm"
    assert (url.username, url.password) == ("etl", "pw")
    assert dict(url.query) == {
        "driver": "ODBC Driver 18 for SQL Server",
        "Encrypt": "no",
        "HostNameInCertificate": "*.example.org",
        "APP": "cehrgpt",
        "Trusted_Connection": "no",
    }


def test_jtds_driver_class_or_url_selects_freetds_with_tds_7_4():
    by_class = jdbc_to_sqlalchemy_url(
        "jdbc:sqlserver://h:1433;databaseName=cdm;encrypt=true", driver="net.sourceforge.jtds.jdbc.Driver"
    )
    assert rendered(by_class) == "mssql+pyodbc://h:1433/cdm?Encryption=require&TDS_Version=7.4&driver=FreeTDS"
    by_url = jdbc_to_sqlalchemy_url("jdbc:jtds:sqlserver://h:1433/cdm;ssl=require")
    assert rendered(by_url) == "mssql+pyodbc://h:1433/cdm?Encryption=require&TDS_Version=7.4&driver=FreeTDS"


def test_odbc_driver_name_can_be_chosen():
    url = jdbc_to_sqlalchemy_url(
        "jdbc:sqlserver://h;databaseName=cdm", odbc_driver="ODBC Driver 17 for SQL Server"
    )
    assert rendered(url) == "mssql+pyodbc://h/cdm?driver=ODBC+Driver+17+for+SQL+Server"


def test_postgresql_jdbc_url_carries_ssl_and_current_schema():
    url = jdbc_to_sqlalchemy_url(
        "jdbc:postgresql://pg.example.org:5433/ohdsi?user=omop&password=pw&ssl=true&currentSchema=synthetic"
    )
    assert rendered(url) == (
        "postgresql+psycopg://omop:pw@pg.example.org:5433/ohdsi?options=-csearch_path%3Dsynthetic&sslmode=require"
    )


def test_mysql_and_mariadb_jdbc_urls_use_pymysql_utf8mb4():
    assert (
        rendered(jdbc_to_sqlalchemy_url("jdbc:mysql://m:3306/cdm?useUnicode=true", user="root"))
        == "mysql+pymysql://root@m:3306/cdm?charset=utf8mb4"
    )
    assert (
        rendered(jdbc_to_sqlalchemy_url("jdbc:mariadb://m/cdm", user="u", password="p"))
        == "mariadb+pymysql://u:p@m/cdm?charset=utf8mb4"
    )


@pytest.mark.parametrize(
    ("jdbc", "message"),
    [
        ("jdbc:oracle:thin:scott/tiger@h:1521:orcl", "base_url scheme 'jdbc:oracle:' is not supported"),
        (
            "jdbc:sqlserver://h;databaseName=x;loginTimeout=5",
            "JDBC property 'logintimeout' in base_url cannot be",
        ),
        ("jdbc:sqlserver://h;encrypt=maybe", "JDBC property encrypt='maybe' is not a boolean"),
        (
            "jdbc:postgresql://h/db?tcpKeepAlive=true",
            "JDBC property 'tcpkeepalive' in base_url cannot be translated",
        ),
        ("jdbc:mysql://h/db?useSSL=true", "TLS settings in a MySQL/MariaDB base_url are not translated"),
        ("jdbc:sqlserver://h:port;databaseName=x", "base_url: port 'port' is not a number"),
        ("jdbc:sqlserver://h;portNumber=x1", "base_url: port 'x1' is not a number"),
        ("jdbc:postgresql://h:54x/db", "base_url: the port in 'h:54x' is not a number"),
        (
            "jdbc:mariadb://h/db?sslMode=verify-full",
            "TLS settings in a MySQL/MariaDB base_url are not translated",
        ),
    ],
)
def test_untranslatable_jdbc_urls_are_refused_by_name(jdbc, message):
    with pytest.raises(UploadError, match="^" + message.replace("(", r"\(").replace("*", r"\*")):
        jdbc_to_sqlalchemy_url(jdbc)


def write_ini(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "credentials.ini"
    path.write_text(body)
    return path


def test_seed_credential_file_is_read_from_default_section(tmp_path):
    path = write_ini(
        tmp_path,
        "[DEFAULT]\nbase_url = jdbc:sqlserver://h:1433;databaseName=cdm\n"
        "driver = com.microsoft.sqlserver.jdbc.SQLServerDriver\nuser = omop\npassword = p%w;d\n",
    )
    url = read_credential_file(path, environ={})
    assert (url.username, url.password, url.host, url.database) == ("omop", "p%w;d", "h", "cdm")
    assert redact_url(url) == "mssql+pyodbc://omop:***@h:1433/cdm?driver=ODBC+Driver+18+for+SQL+Server"


def test_password_env_then_cehrgpt_db_password_then_password_key(tmp_path):
    body = "[DEFAULT]\nsqlalchemy_url = postgresql://omop@h/db\npassword = from-file\n"
    assert read_credential_file(write_ini(tmp_path, body), environ={}).password == "from-file"
    assert (
        read_credential_file(write_ini(tmp_path, body), environ={"CEHRGPT_DB_PASSWORD": "from-env"}).password
        == "from-env"
    )
    named = body + "password_env = OMOP_DB_SECRET\n"
    environ = {"CEHRGPT_DB_PASSWORD": "from-env", "OMOP_DB_SECRET": "from-secret"}
    url = read_credential_file(write_ini(tmp_path, named), environ=environ)
    assert url.password == "from-secret"
    assert url.drivername == "postgresql+psycopg"


def test_sqlalchemy_url_key_wins_over_base_url(tmp_path):
    path = write_ini(
        tmp_path, "[DEFAULT]\nbase_url = jdbc:sqlserver://h\nsqlalchemy_url = duckdb:///x.duckdb\n"
    )
    assert rendered(read_credential_file(path, environ={})) == "duckdb:///x.duckdb"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[DEFAULT]\nuser = u\n", r"has neither base_url \(a JDBC URL\) nor sqlalchemy_url"),
        ("[DEFAULT]\nsqlalchemy_url = pg\n", "sqlalchemy_url in .* is not a SQLAlchemy database URL"),
        (
            "[DEFAULT]\nsqlalchemy_url = sqlite://\npassword_env = NOPE_UNSET\n",
            r"password_env names \$NOPE_UNSET",
        ),
        ("not an ini file\n", "is not a valid ini file"),
    ],
)
def test_bad_credential_files_are_refused(tmp_path, body, message):
    with pytest.raises(UploadError, match=message):
        read_credential_file(write_ini(tmp_path, body), environ={})


def test_missing_credential_file(tmp_path):
    with pytest.raises(UploadError, match=r"credential file .*nope.ini does not exist"):
        read_credential_file(tmp_path / "nope.ini")


def test_sample_credential_file_reads():
    url = read_credential_file(SAMPLE, environ={})
    assert url.drivername == "mssql+pyodbc"
    assert url.query["driver"] == "ODBC Driver 18 for SQL Server"


def test_target_url_takes_password_from_environment():
    url = target_url("mysql://root@h/db", environ={"CEHRGPT_DB_PASSWORD": "pw"})
    assert rendered(url) == "mysql+pymysql://root:pw@h/db"


def test_an_unencoded_at_in_the_password_is_refused_without_echoing_it():
    with pytest.raises(UploadError) as error:
        target_url("postgresql://u:p@ss@h/db", environ={})
    assert str(error.value) == (
        "--target: the host part holds an '@'; an '@' in a user name or password must be written %40"
    )


def test_keys_under_another_section_are_named(tmp_path):
    """The seed's file keeps its keys in [DEFAULT]; keys under [database] get an error that says so."""
    file = tmp_path / "credentials.ini"
    file.write_text("[database]\nbase_url = jdbc:postgresql://db:5432/cdm\nuser = u\n")
    with pytest.raises(UploadError) as refused:
        read_credential_file(file)
    assert str(refused.value) == (
        f"credential file {file}: [DEFAULT] has neither base_url (a JDBC URL) nor sqlalchemy_url; "
        "[database] holds base_url: move the keys to the [DEFAULT] section"
    )
