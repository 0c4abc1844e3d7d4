"""One way to get a Spark session: local[*] on a laptop, whatever spark-submit set on a cluster."""

from __future__ import annotations

import os

from pyspark.sql import SparkSession


def get_spark(app_name: str, master: str | None = None, shuffle_partitions: int | None = None) -> SparkSession:
    """A Spark session for one job.

    ``master`` None keeps what spark-submit configured and falls back to
    ``local[*]``, so the same job runs unchanged on a laptop and in a
    Spark-operator application.
    """
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    elif not os.environ.get("SPARK_MASTER") and "spark.master" not in os.environ.get("PYSPARK_SUBMIT_ARGS", ""):
        builder = builder.master("local[*]")
    builder = (
        builder.config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.driver.memory", os.environ.get("CEHRGPT_SPARK_DRIVER_MEMORY", "4g"))
    )
    if shuffle_partitions:
        builder = builder.config("spark.sql.shuffle.partitions", str(shuffle_partitions))
    return builder.getOrCreate()
