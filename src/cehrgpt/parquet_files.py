"""Whether a file is parquet at all, judged by its magic bytes before a reader fails deep inside.

A zero-byte or foreign ``.parquet`` file makes Arrow raise ``ArrowInvalid`` and Spark fail inside a
task; checking ``PAR1`` at both ends first lets every stage name the file in one line. The restore
reads the bytes through Hadoop (:func:`cehrgpt.spark.parquet_file_problem`), the analyses from the
local disk (:func:`local_parquet_problem`); both judge them here. Standard library only.
"""

from __future__ import annotations

import os

MAGIC = b"PAR1"
_SHORTEST = 2 * len(MAGIC) + 4  # head magic, footer length, tail magic


def parquet_bytes_problem(length: int, head: bytes, tail: bytes) -> str | None:
    """Why a file of ``length`` bytes starting with ``head`` and ending with ``tail`` (4 bytes each)
    is not parquet, or None when it looks like one."""
    if length == 0:
        return "is empty (0 bytes), not a parquet file"
    if length < _SHORTEST:
        return f"is {length} bytes, too short for a parquet file"
    if (head, tail) != (MAGIC, MAGIC):
        return "is not a parquet file (no PAR1 magic bytes)"
    return None


def local_parquet_problem(path: str | os.PathLike[str]) -> str | None:
    """:func:`parquet_bytes_problem` of a file on the local disk (an unreadable one says why)."""
    try:
        with open(path, "rb") as file:
            length = os.fstat(file.fileno()).st_size
            head = file.read(len(MAGIC))
            file.seek(max(0, length - len(MAGIC)))
            tail = file.read(len(MAGIC))
    except OSError as error:
        return f"cannot be read ({error.strerror})"
    return parquet_bytes_problem(length, head, tail)
