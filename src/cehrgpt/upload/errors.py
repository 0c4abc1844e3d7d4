"""The one error type of the upload stage: a user-facing, single-line message with no secret in it."""

from __future__ import annotations


class UploadError(Exception):
    """A bad input, a bad credential or a database refusal, worded for the person running the upload.

    The message names the bad value and what was expected, and never contains a
    password (callers pass driver messages through :func:`cehrgpt.redaction.redact` before
    raising, and the command line redacts once more).
    """
