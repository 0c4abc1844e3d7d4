"""One way to get a Spark session (local[*] on a laptop, whatever spark-submit set on a cluster),
one way to move, mark and delete output folders on local disks and object stores alike, and one way
to turn an exception from Spark (the JVM through Py4J, or a Python worker) into one line."""

from __future__ import annotations

import os
import re
import sys
import tempfile
import traceback

from pyspark.sql import SparkSession

from cehrgpt.parquet_files import MAGIC, parquet_bytes_problem
from cehrgpt.redaction import redact


def get_spark(
    app_name: str, master: str | None = None, shuffle_partitions: int | None = None
) -> SparkSession:
    """A Spark session for one job.

    ``master`` None keeps what spark-submit configured and falls back to
    ``local[*]``, so the same job runs unchanged on a laptop and in a
    Spark-operator application.
    """
    # Under spark-submit (the Spark operator's driver included) the JVM already knows its master.
    launched_by_spark_submit = "PYSPARK_GATEWAY_PORT" in os.environ or bool(os.environ.get("SPARK_MASTER"))
    if not master and not launched_by_spark_submit:
        master = "local[*]"
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    if master and master.startswith("local"):
        # Local Python workers must run this interpreter (the one with cehrgpt installed), not `python3` on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = (
        builder.config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.driver.memory", os.environ.get("CEHRGPT_SPARK_DRIVER_MEMORY", "4g"))
    )
    if shuffle_partitions:
        builder = builder.config("spark.sql.shuffle.partitions", str(shuffle_partitions))
    return builder.getOrCreate()


class HadoopFiles:
    """Files under one folder through Spark's Hadoop FileSystem, so ``gs://``, ``s3a://`` and local paths
    all work: what the stages use to publish output only once it is complete."""

    def __init__(self, spark: SparkSession, root: str):
        jvm = spark.sparkContext._jvm
        assert jvm is not None
        self._path = jvm.org.apache.hadoop.fs.Path
        self.root = root.rstrip("/") or "/"
        self.fs = self._path(self.root).getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
        if self.fs.getScheme() == "file":  # the raw local disk: no .crc files beside what is written here
            self.fs = self.fs.getRawFileSystem()

    def path(self, name: str):
        return self._path(f"{self.root}/{name}" if name else self.root)

    def exists(self, name: str) -> bool:
        return bool(self.fs.exists(self.path(name)))

    def mkdirs(self, name: str = "") -> None:
        self.fs.mkdirs(self.path(name))

    def delete(self, name: str) -> None:
        if self.fs.exists(self.path(name)):
            self.fs.delete(self.path(name), True)

    def move(self, source: str, target: str) -> None:
        """Replace ``target`` with ``source`` (a rename; on object stores, a copy then a delete)."""
        self.delete(target)
        if not self.fs.rename(self.path(source), self.path(target)):
            raise OSError(f"cannot move {self.root}/{source} to {self.root}/{target}")

    def write_text(self, name: str, text: str) -> None:
        stream = self.fs.create(self.path(name), True)
        try:
            stream.write(bytearray(text.encode("utf-8")))
        finally:
            stream.close()

    def children(self) -> list[str]:
        if not self.fs.exists(self.path("")):
            return []
        return [status.getPath().getName() for status in self.fs.listStatus(self.path(""))]


def parquet_file_problem(spark: SparkSession, uri: str) -> str | None:
    """Why ``uri`` (a file Spark listed) is not a parquet file, or None when it looks like one.

    Spark reads a zero-byte file as no rows and fails on a foreign one deep inside a task;
    checking the magic bytes at both ends first lets a stage name the file instead
    (:func:`cehrgpt.parquet_files.parquet_bytes_problem` judges them).
    """
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    path = jvm.org.apache.hadoop.fs.Path(uri)
    fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    length = int(fs.getFileStatus(path).getLen())
    if length < 2 * len(MAGIC):
        return parquet_bytes_problem(length, b"", b"")
    ends = []
    stream = fs.open(path)
    try:  # byte by byte: py4j hands a Java byte[] over as a copy, so readFully cannot fill one
        for position in (0, length - len(MAGIC)):
            stream.seek(position)
            ends.append(bytes(int(stream.read()) for _ in range(len(MAGIC))))
    finally:
        stream.close()
    return parquet_bytes_problem(length, *ends)


def parent_and_name(folder: str) -> tuple[str, str]:
    """``s3a://b/runs/out`` → (``s3a://b/runs``, ``out``); ``out`` → (``.``, ``out``); ``/out`` → (``/``, ``out``)."""
    stripped = folder.rstrip("/")
    parent, slash, name = stripped.rpartition("/")
    if not name or parent.endswith(":/"):  # "", "/", "s3a://bucket"
        raise ValueError(f"{folder!r}: expected a folder below a root or bucket")
    if not slash:
        return ".", name
    return parent or "/", name


# --- failures -------------------------------------------------------------------------------------------------

_PYTHON_TRACEBACK = "Traceback (most recent call last)"
_SQLSTATE = re.compile(r"\s*SQLSTATE: \w+\.?\s*$")


def _summary(message: str) -> str:
    """The line of one message that says what went wrong: a Python traceback's last, else the first."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    if _PYTHON_TRACEBACK in message:  # "An exception was thrown from the Python worker: <the error>"
        head = lines[0].rstrip(":")
        return lines[-1] if head.startswith(_PYTHON_TRACEBACK) else f"{head}: {lines[-1]}"
    return _SQLSTATE.sub("", lines[0].removeprefix(": "))


def _messages(error: BaseException) -> list[str]:
    """The messages of an exception and of its causes, outermost first, the JVM's included."""
    java = getattr(error, "java_exception", None)  # py4j's Py4JJavaError
    if java is None:
        text = str(error).split("JVM stacktrace:")[0]  # pyspark's captured exceptions may append it
        messages = [text]
        if error.__cause__ is not None:
            messages += _messages(error.__cause__)
        return messages
    messages = []
    for _ in range(32):  # a cause chain is short; never loop on a cyclic one
        if java is None:
            break
        messages.append(str(java.getMessage() or java.getClass().getName()))
        java = java.getCause()
    return messages


def spark_error_line(error: BaseException) -> str:
    """One line for an exception raised by a Spark job: what failed and, when different, its root cause.

    Spark wraps a worker's failure (a Java exception, or a Python traceback from a
    ``mapInArrow`` worker) in layers of ``SparkException``; the outermost says which file or
    stage, the innermost says why. Both are kept, each cut to its one telling line.
    """
    summaries = [s for s in (_summary(m) for m in _messages(error)) if s]
    if not summaries:
        return type(error).__name__
    outer, inner = summaries[0], summaries[-1]
    line = outer if inner in outer else f"{outer} (caused by: {inner})"
    return line if len(line) <= 600 else line[:597] + "..."


def spark_failure(error: BaseException, stage: str) -> str:
    """:func:`spark_error_line`, with the full trace (Java's included) written to a log file it names."""
    fd, log_path = tempfile.mkstemp(prefix=f"cehrgpt-{stage}-", suffix=".log")
    with os.fdopen(fd, "w", encoding="utf-8") as log:
        log.write(redact("".join(traceback.format_exception(error))))
        java_trace = getattr(error, "_stackTrace", None)  # pyspark's captured exceptions keep the JVM's apart
        if isinstance(java_trace, str) and java_trace:
            log.write(f"\nJVM stacktrace:\n{redact(java_trace)}\n")
    return f"{spark_error_line(error)} (full trace: {log_path})"


def quiet_spark_console(spark: SparkSession) -> None:
    """Keep the JVM's task-failure stack dumps off the console (a stage reports one line and a log file).

    ``CEHRGPT_SPARK_LOG_LEVEL`` overrides the level (e.g. ``WARN`` to debug).
    """
    spark.sparkContext.setLogLevel(os.environ.get("CEHRGPT_SPARK_LOG_LEVEL", "FATAL"))
