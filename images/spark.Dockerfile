# Spark image: prepare and restore with local Spark in a pipeline pod, and the restore SparkApplication's
# driver and executors. The restore job is cehrgpt/omop/restore.py inside /opt/cehrgpt/venv
# (cehrgpt.pipeline.sparkapp.RESTORE_MAIN_FILE).
# Build from the repository root: docker build -f images/spark.Dockerfile -t ghcr.io/cehrgpt/cehrgpt-spark:0.1.0 .

FROM python:3.11.14-slim-bookworm AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir build==1.3.0 && python -m build --wheel --outdir /wheels .

# Spark 4.0.1 on Java 17; its own Python is 3.10, so the project gets a 3.11 virtual environment.
FROM apache/spark:4.0.1-scala2.13-java17-python3-ubuntu
USER 0
ARG DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/cehrgpt/venv
ENV PATH=/opt/cehrgpt/venv/bin:$PATH \
    PYSPARK_PYTHON=/opt/cehrgpt/venv/bin/python \
    PYSPARK_DRIVER_PYTHON=/opt/cehrgpt/venv/bin/python \
    PYTHONUNBUFFERED=1
COPY --from=wheel /wheels /wheels
COPY images/kfp-runtime.txt images/constraints.txt /tmp/
# versions pinned by constraints.txt and kfp-runtime.txt
# hadolint ignore=DL3013
# pyspark must be the Spark of the base image (SPARK_HOME=/opt/spark, so its jars folder is the one used)
RUN WHEEL="$(ls /wheels/cehrgpt_pipelines-*.whl)" \
 && pip install --no-cache-dir -c /tmp/constraints.txt "${WHEEL}[spark,k8s,gcs,s3]" "pyspark==4.0.1" \
 && pip install --no-cache-dir --no-deps -r /tmp/kfp-runtime.txt \
 && rm -rf /wheels /tmp/kfp-runtime.txt /tmp/constraints.txt \
 && python -c "import cehrgpt.omop.restore"
# Hadoop connectors for s3a:// and gs:// paths (the Python gcs/s3 extras do not give Spark one).
# hadoop-aws must match Spark 4.0.1's Hadoop (3.4.1) and the AWS SDK it was built with (2.24.6).
ARG HADOOP_AWS_VERSION=3.4.1
ARG AWS_SDK_BUNDLE_VERSION=2.24.6
ARG GCS_CONNECTOR_VERSION=hadoop3-2.2.21
ADD --chmod=644 https://repo1.maven.org/maven2/org/apache/hadoop/hadoop-aws/${HADOOP_AWS_VERSION}/hadoop-aws-${HADOOP_AWS_VERSION}.jar /opt/spark/jars/
ADD --chmod=644 https://repo1.maven.org/maven2/software/amazon/awssdk/bundle/${AWS_SDK_BUNDLE_VERSION}/bundle-${AWS_SDK_BUNDLE_VERSION}.jar /opt/spark/jars/
ADD --chmod=644 https://repo1.maven.org/maven2/com/google/cloud/bigdataoss/gcs-connector/${GCS_CONNECTOR_VERSION}/gcs-connector-${GCS_CONNECTOR_VERSION}-shaded.jar /opt/spark/jars/
# the base image's non-root spark user
USER 185
WORKDIR /opt/spark/work-dir
