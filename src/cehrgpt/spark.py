"""One way to get a Spark session: local[*] on a laptop, whatever spark-submit set on a cluster."""

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
