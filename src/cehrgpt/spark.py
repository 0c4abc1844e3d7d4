"""One way to get a Spark session (local[*] on a laptop, whatever spark-submit set on a cluster), and
one way to move, mark and delete output folders on local disks and object stores alike."""

from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession


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


def parent_and_name(folder: str) -> tuple[str, str]:
    """``s3a://b/runs/out`` → (``s3a://b/runs``, ``out``); ``out`` → (``.``, ``out``); ``/out`` → (``/``, ``out``)."""
    stripped = folder.rstrip("/")
    parent, slash, name = stripped.rpartition("/")
    if not name or parent.endswith(":/"):  # "", "/", "s3a://bucket"
        raise ValueError(f"{folder!r}: expected a folder below a root or bucket")
    if not slash:
        return ".", name
    return parent or "/", name
