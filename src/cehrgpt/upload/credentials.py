"""Where to upload: the seed's credential file (a JDBC URL) or a SQLAlchemy URL, with the password kept secret.

The seed's ``credential_file_sample.ini`` holds, in ``[DEFAULT]``, ``base_url``
(a JDBC URL), ``driver`` (a JDBC driver class), ``user`` and ``password``. We
translate the JDBC URL into a SQLAlchemy URL: SQL Server through
``mssql+pyodbc`` with Microsoft's ODBC driver (or FreeTDS for jTDS), PostgreSQL
through psycopg 3, MySQL and MariaDB through PyMySQL. Two optional keys go
further: ``sqlalchemy_url`` reaches any database SQLAlchemy knows (it wins over
``base_url``), and ``password_env`` names an environment variable holding the
password (a Kubernetes Secret in the pipeline).

Which password is used, first found wins: the variable named by
``password_env`` (an error if it is unset), ``$CEHRGPT_DB_PASSWORD``, the
``password`` key, a password inside the URL itself.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import SplitResult, parse_qsl, urlsplit

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from cehrgpt.upload.errors import UploadError

PASSWORD_ENV_VAR = "CEHRGPT_DB_PASSWORD"
MSSQL_ODBC_DRIVER = "ODBC Driver 18 for SQL Server"
FREETDS_ODBC_DRIVER = "FreeTDS"
FREETDS_TDS_VERSION = "7.4"  # the first TDS version that carries DATETIME2 as a date-time, not a string

# SQLAlchemy URL schemes without a driver, given the driver we ship.
_DEFAULT_DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
    "mssql": "mssql+pyodbc",
}

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def read_credential_file(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> URL:
    """The SQLAlchemy URL described by a seed-style credential file.

    Args:
        path: An ini file whose ``[DEFAULT]`` section has ``base_url`` (JDBC) or ``sqlalchemy_url``,
            and optionally ``driver``, ``user``, ``password``, ``password_env``, ``odbc_driver``.
        environ: Where environment variables are looked up (``os.environ`` by default).

    Raises:
        UploadError: The file is missing or unreadable, or names no usable database.
    """
    environ = os.environ if environ is None else environ
    file = Path(path)
    if not file.is_file():
        raise UploadError(
            f"credential file {file} does not exist; expected an ini file with a [DEFAULT] section"
        )
    parser = configparser.ConfigParser(interpolation=None)  # passwords may contain '%'
    try:
        parser.read_string(file.read_text(), source=str(file))
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise UploadError(f"credential file {file} is not a valid ini file: {type(exc).__name__}") from None
    keys = {key: value.strip() for key, value in parser.defaults().items()}
    password = _password(keys, environ, where=str(file))
    if keys.get("sqlalchemy_url"):
        url = parse_database_url(keys["sqlalchemy_url"], what=f"sqlalchemy_url in {file}")
    elif keys.get("base_url"):
        url = jdbc_to_sqlalchemy_url(
            keys["base_url"], driver=keys.get("driver"), odbc_driver=keys.get("odbc_driver")
        )
    else:
        elsewhere = next(
            (
                f"; [{section}] holds {key}: move the keys to the [DEFAULT] section"
                for section in parser.sections()
                for key in ("base_url", "sqlalchemy_url")
                if parser.get(section, key, fallback=None)
            ),
            "",
        )
        raise UploadError(
            f"credential file {file}: [DEFAULT] has neither base_url (a JDBC URL) nor sqlalchemy_url{elsewhere}"
        )
    if keys.get("user") and not url.username:
        url = url.set(username=keys["user"])
    if password is not None:
        url = url.set(password=password)
    return url


def target_url(text: str, environ: Mapping[str, str] | None = None) -> URL:
    """A SQLAlchemy URL given on the command line, its password taken from ``$CEHRGPT_DB_PASSWORD`` if set."""
    environ = os.environ if environ is None else environ
    url = parse_database_url(text, what="--target")
    if environ.get(PASSWORD_ENV_VAR):
        url = url.set(password=environ[PASSWORD_ENV_VAR])
    return url


def parse_database_url(text: str, *, what: str) -> URL:
    """Parse a SQLAlchemy URL and give a bare scheme the driver this project installs (psycopg, PyMySQL, pyodbc)."""
    try:
        url = make_url(text.strip())
    except ValueError:  # make_url's int() on the port (ArgumentError is a different class)
        port = text.strip().partition("://")[2].partition("/")[0].rpartition("@")[2].rpartition(":")[2]
        raise UploadError(f"{what}: port {port!r} is not a number") from None
    except ArgumentError:
        raise UploadError(
            f"{what} is not a SQLAlchemy database URL; expected e.g. "
            "postgresql+psycopg://user@host:5432/db or duckdb:///path/to/omop.duckdb"
        ) from None
    if url.host and "@" in url.host:
        raise UploadError(
            f"{what}: the host part holds an '@'; an '@' in a user name or password must be written %40"
        )
    if url.drivername in _DEFAULT_DRIVERS:
        url = url.set(drivername=_DEFAULT_DRIVERS[url.drivername])
    if url.get_backend_name() == "mssql" and url.get_driver_name() == "pyodbc" and "driver" not in url.query:
        url = url.update_query_dict({"driver": MSSQL_ODBC_DRIVER})
    return url


def jdbc_to_sqlalchemy_url(
    jdbc_url: str,
    *,
    user: str | None = None,
    password: str | None = None,
    driver: str | None = None,
    odbc_driver: str | None = None,
) -> URL:
    """Translate a JDBC URL (SQL Server, jTDS, PostgreSQL, MySQL, MariaDB) into a SQLAlchemy URL.

    Connection properties that change security or behaviour are carried over
    (``encrypt``, ``trustServerCertificate``, ``sslmode``, ...); a property we
    cannot translate is an error rather than silently dropped.

    Args:
        jdbc_url: E.g. ``jdbc:sqlserver://host:1433;databaseName=cdm;encrypt=true``.
        user: Overrides a ``user`` property in the URL.
        password: Overrides a ``password`` property in the URL.
        driver: The seed's JDBC driver class; ``net.sourceforge.jtds.jdbc.Driver`` selects FreeTDS.
        odbc_driver: The ODBC driver name for SQL Server (default: Microsoft's ODBC Driver 18).
    """
    text = jdbc_url.strip()
    lower = text.lower()
    if lower.startswith("jdbc:sqlserver://"):
        use_freetds = bool(driver and "jtds" in driver.lower()) or (odbc_driver or "").lower() == "freetds"
        url = _sqlserver_url(text[len("jdbc:sqlserver://") :], freetds=use_freetds, odbc_driver=odbc_driver)
    elif lower.startswith("jdbc:jtds:sqlserver://"):
        url = _jtds_url(text[len("jdbc:jtds:sqlserver://") :], odbc_driver=odbc_driver)
    elif lower.startswith("jdbc:postgresql://"):
        url = _postgresql_url(text[len("jdbc:") :])
    elif lower.startswith(("jdbc:mysql://", "jdbc:mariadb://")):
        url = _mysql_url(text[len("jdbc:") :])
    else:
        scheme = jdbc_scheme(text)
        raise UploadError(
            f"base_url scheme '{scheme}' is not supported; expected jdbc:sqlserver://, jdbc:jtds:sqlserver://, "
            "jdbc:postgresql://, jdbc:mysql:// or jdbc:mariadb:// (or give sqlalchemy_url)"
        )
    if user:
        url = url.set(username=user)
    if password is not None:
        url = url.set(password=password)
    return url


def jdbc_scheme(jdbc_url: str) -> str:
    """The part of a JDBC URL that names the database, safe to echo: ``jdbc:oracle:`` of
    ``jdbc:oracle:thin:user/password@host``, ``jdbc:db2:`` of ``jdbc:db2://host``."""
    return ":".join(jdbc_url.split(":", 2)[:2]) + ":"


# --- private helpers -----------------------------------------------------------------------------------------


def _password(keys: Mapping[str, str], environ: Mapping[str, str], *, where: str) -> str | None:
    variable = keys.get("password_env")
    if variable:
        if variable not in environ:
            raise UploadError(f"{where}: password_env names ${variable}, which is not set")
        return environ[variable]
    if environ.get(PASSWORD_ENV_VAR):
        return environ[PASSWORD_ENV_VAR]
    return keys.get("password") or None


def _bool_property(name: str, value: str, yes: str = "yes", no: str = "no") -> str:
    if value.lower() in _TRUE:
        return yes
    if value.lower() in _FALSE:
        return no
    raise UploadError(f"JDBC property {name}={value!r} is not a boolean; expected true or false")


def _split_host_port(text: str, what: str) -> tuple[str | None, int | None]:
    if not text:
        return None, None
    host, sep, port = text.rpartition(":") if ":" in text else (text, "", "")
    if not sep:
        return text, None
    if not port.isdigit():
        raise UploadError(f"{what}: port {port!r} is not a number")
    return host, int(port)


def _port(parts: SplitResult) -> int | None:
    try:
        return parts.port
    except ValueError:
        raise UploadError(
            f"base_url: the port in {parts.netloc.rpartition('@')[2]!r} is not a number"
        ) from None


def _sqlserver_url(rest: str, *, freetds: bool, odbc_driver: str | None) -> URL:
    server, *pairs = rest.split(";")
    properties = {}
    for pair in filter(None, (p.strip() for p in pairs)):
        key, sep, value = pair.partition("=")
        if not sep:
            raise UploadError(f"base_url property {key!r} has no value; expected key=value")
        properties[key.strip().lower()] = value.strip()
    host, port = _split_host_port(server, "base_url")
    host = properties.pop("servername", None) or host
    port_property = properties.pop("portnumber", None) or properties.pop("port", None)
    if port_property is not None:
        if not port_property.isdigit():
            raise UploadError(f"base_url: port {port_property!r} is not a number")
        port = int(port_property)
    instance = properties.pop("instancename", None)
    if host and "\\" in host:
        host, instance = host.split("\\", 1)
    if not host:
        raise UploadError(
            "base_url names no SQL Server host; expected jdbc:sqlserver://host:1433;databaseName=db"
        )
    database = properties.pop("databasename", None) or properties.pop("database", None)
    username = properties.pop("user", None) or properties.pop("username", None)
    password = properties.pop("password", None)
    query: dict[str, str] = {"driver": odbc_driver or (FREETDS_ODBC_DRIVER if freetds else MSSQL_ODBC_DRIVER)}
    if freetds:
        query["TDS_Version"] = FREETDS_TDS_VERSION
    for key, value in properties.items():
        query.update(_sqlserver_option(key, value, freetds=freetds))
    return URL.create(
        "mssql+pyodbc",
        username=username,
        password=password,
        host=f"{host}\\{instance}" if instance else host,
        port=port,
        database=database,
        query=query,
    )


def _sqlserver_option(key: str, value: str, *, freetds: bool) -> dict[str, str]:
    """One JDBC SQL Server property as ODBC connection-string keywords (keys arrive lower-cased)."""
    if key == "encrypt":
        if value.lower() == "strict" and not freetds:
            return {"Encrypt": "strict"}
        if freetds:
            return {"Encryption": _bool_property("encrypt", value, "require", "off")}
        return {"Encrypt": _bool_property("encrypt", value)}
    simple = {
        "trustservercertificate": ("TrustServerCertificate", True),
        "multisubnetfailover": ("MultiSubnetFailover", True),
        "hostnameincertificate": ("HostNameInCertificate", False),
        "applicationname": ("APP", False),
        "applicationintent": ("ApplicationIntent", False),
        "authentication": ("Authentication", False),
    }
    if key == "integratedsecurity":
        return {"Trusted_Connection": _bool_property(key, value)}
    if key in simple and not freetds:
        odbc_key, is_bool = simple[key]
        return {odbc_key: _bool_property(key, value) if is_bool else value}
    raise UploadError(
        f"JDBC property {key!r} in base_url cannot be translated for "
        f"{'FreeTDS' if freetds else 'the Microsoft ODBC driver'}; remove it or give sqlalchemy_url"
    )


def _jtds_url(rest: str, *, odbc_driver: str | None) -> URL:
    # jTDS: jdbc:jtds:sqlserver://host[:port][/database][;property=value...]
    location, *pairs = rest.split(";")
    server, _, database = location.partition("/")
    sqlserver_rest = ";".join([server, *([f"databaseName={database}"] if database else []), *pairs])
    properties = [p for p in sqlserver_rest.split(";")[1:] if p.lower().startswith("ssl=")]
    for prop in properties:  # jTDS spells TLS as ssl=require|request|authenticate|off
        sqlserver_rest = sqlserver_rest.replace(
            prop, f"encrypt={'false' if prop[4:].lower() == 'off' else 'true'}"
        )
    return _sqlserver_url(sqlserver_rest, freetds=True, odbc_driver=odbc_driver)


_POSTGRES_PROPERTIES = {
    "sslmode": "sslmode",
    "sslrootcert": "sslrootcert",
    "sslcert": "sslcert",
    "sslkey": "sslkey",
    "applicationname": "application_name",
    "connecttimeout": "connect_timeout",
}


def _postgresql_url(text: str) -> URL:
    parts = urlsplit(text)
    properties = {key.lower(): value for key, value in parse_qsl(parts.query, keep_blank_values=True)}
    username = properties.pop("user", None) or parts.username
    password = properties.pop("password", None) or parts.password
    query: dict[str, str] = {}
    ssl = properties.pop("ssl", None)
    if ssl is not None and _bool_property("ssl", ssl) == "yes":
        query["sslmode"] = "require"
    schema = properties.pop("currentschema", None)
    for key, value in properties.items():
        if key not in _POSTGRES_PROPERTIES:
            raise UploadError(
                f"JDBC property {key!r} in base_url cannot be translated for PostgreSQL; "
                f"expected one of {', '.join(['ssl', 'currentSchema', *_POSTGRES_PROPERTIES])}, or give sqlalchemy_url"
            )
        query[_POSTGRES_PROPERTIES[key]] = value
    if schema:
        query["options"] = f"-csearch_path={schema}"
    return URL.create(
        "postgresql+psycopg",
        username=username,
        password=password,
        host=parts.hostname,
        port=_port(parts),
        database=parts.path.lstrip("/") or None,
        query=query,
    )


# MySQL/MariaDB JDBC properties that change nothing for us: we always speak utf8mb4 and store naive datetimes.
_MYSQL_IGNORED = {"useunicode", "characterencoding", "servertimezone", "rewritebatchedstatements"}


def _mysql_url(text: str) -> URL:
    parts = urlsplit(text)
    properties = {key.lower(): value for key, value in parse_qsl(parts.query, keep_blank_values=True)}
    username = properties.pop("user", None) or parts.username
    password = properties.pop("password", None) or parts.password
    wants_tls = properties.pop("usessl", "false").lower() in _TRUE
    wants_tls |= properties.pop("sslmode", "disabled").lower() not in ("disabled", "disable")
    if wants_tls:
        raise UploadError(
            "TLS settings in a MySQL/MariaDB base_url are not translated; give sqlalchemy_url with "
            "ssl_ca=/path/to/ca.pem instead"
        )
    unknown = sorted(set(properties) - _MYSQL_IGNORED)
    if unknown:
        raise UploadError(
            f"JDBC property {unknown[0]!r} in base_url cannot be translated for MySQL/MariaDB; "
            "remove it or give sqlalchemy_url"
        )
    scheme = "mariadb+pymysql" if parts.scheme == "mariadb" else "mysql+pymysql"
    return URL.create(
        scheme,
        username=username,
        password=password,
        host=parts.hostname,
        port=_port(parts),
        database=parts.path.lstrip("/") or None,
        query={"charset": "utf8mb4"},
    )
