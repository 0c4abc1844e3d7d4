"""Spark's Python workers must run this interpreter, which has cehrgpt installed (set before any session)."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
