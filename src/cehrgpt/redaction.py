"""Hiding passwords in text that may be logged or written to a report (standard library only, so every image has it)."""

from __future__ import annotations

import re

REDACTED = "***"

_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")


def scrub_urls(text: str) -> str:
    """Hide any ``scheme://user:password@`` password left in a free-text message."""
    return _URL_PASSWORD.sub(rf"\g<1>{REDACTED}@", text)
