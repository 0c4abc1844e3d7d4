"""The one rule for hiding passwords in anything that may be printed, logged or written to a file.

Every module passes what it shows through :func:`redact` (free text: an error line, a
command line, a driver's message) or :func:`redact_url` (one URL, a string or a SQLAlchemy
``URL``); :func:`has_password` tells a caller to refuse a URL before it is stored anywhere.
A password is hidden wherever a URL or connection string can carry one:

- user info: ``scheme://user:PASSWORD@host``, the password running to the *last* ``@`` of the
  word, so an unencoded ``@`` (or ``/``, ``?``) inside it stays hidden;
- a keyword: ``?password=``, ``&pwd=``, ODBC ``PWD={…}``, JDBC ``;password=``, libpq
  ``password=``, also percent-encoded (``PWD%3D…%3B``);
- Oracle's JDBC form ``jdbc:oracle:thin:user/PASSWORD@host``.

The rule errs towards hiding too much (a port may go with an ``@`` later in the same word)
rather than too little. Standard library only, so every image has it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

REDACTED = "***"

# scheme://user:PASSWORD@ — the user has no ':' or '/'; the password runs to the word's last '@'.
_USER_INFO = re.compile(r"(?P<keep>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/]*:)(?P<secret>\S*)@")
# password=…, pwd=…, PWD={…}: to the next '&', ';' or blank (or their percent-encodings).
_KEYWORD = re.compile(
    r"(?P<keep>\b\w*(?:password|passwd|pwd)\s*(?:=|%3D)\s*)"
    r"(?P<secret>\{(?:[^}]|\}\})*\}?|(?:(?!%26|%3B)[^&;\s])*)",
    re.IGNORECASE,
)
# jdbc:oracle:thin:user/PASSWORD@host (also oci, kprb): to the word's last '@'.
_ORACLE = re.compile(r"(?P<keep>\bjdbc:oracle:\w+:[^\s/@:]*/)(?P<secret>\S*)@", re.IGNORECASE)
_PATTERNS = (_USER_INFO, _KEYWORD, _ORACLE)
_PASSWORD_KEY = re.compile(r"\w*(?:password|passwd|pwd)", re.IGNORECASE)


def _secret_spans(text: str) -> list[tuple[int, int]]:
    """Where the passwords are, every pattern matched on the original text and overlaps merged,
    so one form cannot cut another short (``;password=p@ss`` also looks like user info)."""
    spans = sorted(
        m.span("secret") for pattern in _PATTERNS for m in pattern.finditer(text) if m.group("secret")
    )
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with every password a URL or connection string carries hidden as ``***``, and every
    one of ``secrets`` (a password the caller holds; also URL-encoded) wherever it appears."""
    kept, position = [], 0
    for start, end in _secret_spans(text):
        kept += [text[position:start], REDACTED]
        position = end
    text = "".join(kept) + text[position:]
    for secret in secrets:
        if not secret:
            continue
        for spelling in sorted({secret, quote_plus(secret), quote(secret, safe="")}, key=len, reverse=True):
            text = text.replace(spelling, REDACTED)
    return text


def redact_url(url: object) -> str:
    """A URL safe to print: a SQLAlchemy ``URL`` rendered with its password hidden, or a string,
    then :func:`redact` (a password in the query string, or after an unencoded ``@``)."""
    render = getattr(url, "render_as_string", None)
    return redact(render(hide_password=True) if callable(render) else str(url))


def has_password(text: str) -> bool:
    """Whether ``text`` carries a password :func:`redact` would hide (so it must not be stored)."""
    return redact(text) != text


def url_passwords(url: object) -> list[str]:
    """Every password a SQLAlchemy ``URL`` carries, in its user info or its query string
    (``?password=``), so a driver message that echoes one can be redacted."""
    found = [getattr(url, "password", None)]
    for key, values in dict(getattr(url, "query", {})).items():
        if _PASSWORD_KEY.fullmatch(key):
            found += [values] if isinstance(values, str) else list(values)
    return [p for p in found if isinstance(p, str) and p]
