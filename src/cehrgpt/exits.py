"""The one exit-code convention of every command (``python -m cehrgpt.…`` and ``cehrgpt pipeline …``).

- **0** success;
- **1** a verdict, and nothing else: a quality check failed, a gate threshold was breached (a local
  pipeline run that finished without passing them);
- **2** bad input or environment: an invalid option, a missing, unreadable or foreign input, an output
  folder it may not write (permissions included). Always exactly one line on stderr starting ``error: ``;
- **3** an unexpected error (a bug): its traceback, then one ``error: `` line.

Each ``main`` builds its parser with :class:`CommandParser` (the epilog below in ``--help``, an invalid
option as one line) and runs its body through :func:`run_command`, which turns the stage's own error
classes and an ``OSError`` on a path into that line. Standard library only, so every image has it.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

OK = 0
VERDICT = 1
ERROR = 2
BUG = 3

EPILOG = (
    "exit codes: 0 success; 1 a verdict (a quality check failed, a gate threshold breached), nothing else;\n"
    "2 bad input or environment (an invalid option, a missing or unreadable input, an output it may not\n"
    "write), with one line on stderr starting 'error: '; 3 an unexpected error (a bug: a traceback)."
)


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose ``--help`` ends with :data:`EPILOG` and whose errors are one line, exit 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        epilog = kwargs.get("epilog")
        kwargs["epilog"] = f"{epilog}\n\n{EPILOG}" if epilog else EPILOG
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(ERROR, f"error: {self.prog}: {one_line(message)}\n")


def one_line(message: object) -> str:
    """``message`` on one line (the lines of a multi-line message joined by ``; ``)."""
    return "; ".join(line.strip() for line in str(message).splitlines() if line.strip()) or "failed"


def fail(message: object) -> int:
    """Print the one ``error: `` line; return :data:`ERROR`."""
    print(f"error: {one_line(message)}", file=sys.stderr)
    return ERROR


def os_error_line(error: OSError) -> str:
    """``permission denied: /out/report.json`` from ``[Errno 13] Permission denied: '/out/report.json'``."""
    reason = (error.strerror or type(error).__name__).lower()
    where = error.filename if error.filename2 is None else f"{error.filename} -> {error.filename2}"
    return f"{reason}: {where}"


def run_command(
    body: Callable[[], int],
    *expected: type[BaseException],
    describe: Callable[[BaseException], str] = str,
) -> int:
    """Run a command's body under the convention.

    ``expected`` (the stage's error classes) and an ``OSError`` that names a path end in one
    ``error:`` line and exit 2 (``describe`` words the first, e.g. to redact a URL); any other
    exception is a bug: its traceback and exit 3 (not 1, which only a verdict returns).
    """
    try:
        return body()
    except expected as error:
        return fail(describe(error))
    except OSError as error:
        if error.filename is None:
            return _bug(error)
        return fail(os_error_line(error))
    except Exception as error:
        return _bug(error)


def _bug(error: BaseException) -> int:
    traceback.print_exception(error, file=sys.stderr)
    print(f"error: unexpected {type(error).__name__} (a bug; the traceback is above)", file=sys.stderr)
    return BUG
