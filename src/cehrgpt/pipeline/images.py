"""The project's runtime images (built from images/*.Dockerfile), one per kind of step.

Components name these as their ``base_image``; retag and push them to your
registry, then change the constants here (and recompile), or override the
image per task with ``task.set_container_image`` in a pipeline of your own.
"""

from __future__ import annotations

REGISTRY = "ghcr.io/cehrgpt"
VERSION = "0.1.0"

#: CUDA image: training and generation (extras torch, kfp).
GPU_IMAGE = f"{REGISTRY}/cehrgpt-gpu:{VERSION}"
#: Spark image: prepare, restore (local Spark) and the restore SparkApplication (extras spark, k8s, kfp, gcs, s3).
SPARK_IMAGE = f"{REGISTRY}/cehrgpt-spark:{VERSION}"
#: Slim CPU image: shard planning, privacy, fidelity, gate, upload (extras analysis, db, k8s, kfp, gcs, s3).
CPU_IMAGE = f"{REGISTRY}/cehrgpt-cpu:{VERSION}"
