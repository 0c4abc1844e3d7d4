"""Hiding passwords in text that may be logged or written to a report.

The one place the project hides passwords: :func:`redact_url` for a URL the code holds,
:func:`scrub_urls` for free text (an error line, a command line) that may contain one.
Standard library only (SQLAlchemy is used when the image has it), so every image has it.
"""

from __future__ import annotations

import re

REDACTED = "***"

_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")


def scrub_urls(text: str) -> str:
    """Hide any ``scheme://user:password@`` password left in a free-text message."""
    return _URL_PASSWORD.sub(rf"\g<1>{REDACTED}@", text)


def redact_url(url: str) -> str:
    """A URL safe to print: SQLAlchemy's rendering with the password hidden, or only its scheme when
    the URL cannot be parsed (or SQLAlchemy is not installed) and so cannot be trusted to be scrubbed."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("://", 1)[0] + "://…"
