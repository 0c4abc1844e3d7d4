"""Run the original CEHR-GPT OMOP converter, unmodified, as the restore benchmark's baseline.

The baseline is the real thing: ``cehrgpt.generation.omop_converter_batch`` from the published
``cehrgpt==0.1.9`` wheel (the version ``shared/reference/cehrgpt-formats.md`` describes), fetched
once with ``pip download`` into ``bench/out/original/`` and imported from there. Nothing of it is
copied into this repository.

Its module imports a few heavy packages (femr, datasets, cehrbert) only for constants the converter
uses: ``END_TOKEN``, ``DEATH_TOKEN`` and MEDS' ``death_code``. They are provided as small stand-in
modules with the original's values; every function the converter calls is its own.

The original and this project share the package name ``cehrgpt``, so the converter runs in a fresh
interpreter started with ``-S`` (no site hooks, so the project's editable install is invisible) and
a ``sys.path`` of the unpacked wheel followed by the environment's site-packages (numpy, pandas,
pyarrow, tqdm, transformers).

Input: the converter parses visit and discharge concepts with ``int()``, so the unknown-concept
spellings of the format (``Visit/0``, ``Discharge/0``) would make it drop almost every Eunomia
patient (most Eunomia visits are artificial). :func:`respelled_input` writes a copy of the input
where those two spell ``0``, the original ETL's older spelling, so that it restores the patients
instead of discarding them; the copy is made before timing starts. Its workers also race to create
the output table folders (the crashes the issue reports), so they are created before it starts.

    python bench/original_converter.py INPUT OUTPUT CONCEPT_FOLDER CORES   # writes OUTPUT/summary.json
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

VERSION = "0.1.9"
RESPELLED = {"Visit/0": "0", "Discharge/0": "0"}


def unpacked_wheel(folder: Path) -> Path:
    """The original package's wheel, downloaded once and unpacked under ``folder``."""
    site = folder / f"cehrgpt-{VERSION}"
    if (site / "cehrgpt" / "generation" / "omop_converter_batch.py").exists():
        return site
    folder.mkdir(parents=True, exist_ok=True)
    download = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", f"cehrgpt=={VERSION}",
                "--dest", str(folder)]  # fmt: skip
    result = subprocess.run(download, capture_output=True, text=True)
    wheels = sorted(folder.glob(f"cehrgpt-{VERSION}-*.whl"))
    if result.returncode != 0 or not wheels:
        raise SystemExit(
            f"cannot fetch the baseline cehrgpt=={VERSION} from PyPI: {result.stderr.strip()[-500:]}"
        )
    shutil.rmtree(site, ignore_errors=True)
    with zipfile.ZipFile(wheels[0]) as wheel:
        wheel.extractall(site)
    return site


def respelled_input(source: Path, target: Path) -> Path:
    """A copy of ``source``'s sequences with the unknown visit/discharge spelled ``0`` (see module doc)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if (target / "_DONE").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for file in sorted(source.glob("*.parquet")):
        table = pq.read_table(file)
        tokens = table.column("concept_ids").combine_chunks()
        values = tokens.values
        for spelling, replacement in RESPELLED.items():
            values = pc.if_else(pc.equal(values, spelling), replacement, values)
        respelled = pa.ListArray.from_arrays(tokens.offsets, values)
        table = table.set_column(table.schema.get_field_index("concept_ids"), "concept_ids", respelled)
        pq.write_table(table, target / file.name)
    (target / "_DONE").write_text("")
    return target


def run(input_folder: Path, output: Path, concept_folder: Path, cores: int, wheel_folder: Path) -> dict:
    """Run the original in a fresh ``python -S``; returns wall and inside seconds and persons restored."""
    site = unpacked_wheel(wheel_folder)
    shutil.rmtree(output, ignore_errors=True)
    command = [sys.executable, "-S", __file__, str(input_folder), str(output), str(concept_folder), str(cores),
               str(site), sysconfig.get_paths()["purelib"]]  # fmt: skip
    wall = timed_run(command, "the original converter")
    summary = json.loads((output / "summary.json").read_text())
    return {"wall": wall, "inside": summary["seconds"], "persons": summary["persons"]}


def timed_run(command: list[str], what: str) -> float:
    """Wall seconds of a subprocess that must succeed."""
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{what} failed:\n{result.stderr[-3000:]}")
    return wall


def _stand_in_modules() -> None:
    """Constants the converter's imports pull from packages it does not otherwise need."""
    import types

    from cehrgpt.models.special_tokens import END_TOKEN  # the original's own module

    stand_ins = {
        "cehrgpt.models.tokenization_hf_cehrgpt": {"END_TOKEN": END_TOKEN},
        "cehrbert_data": {},
        "cehrbert_data.const": {},
        "cehrbert_data.const.artificial_tokens": {"DEATH_TOKEN": "[DEATH]"},
        "meds": {"death_code": "MEDS_DEATH"},
    }
    for name, values in stand_ins.items():
        module = types.ModuleType(name)
        module.__dict__.update(values)
        sys.modules[name] = module


def _main(input_folder: str, output: str, concept_folder: str, cores: str, site: str, purelib: str) -> None:
    sys.path[:0] = [site]
    sys.path.append(purelib)
    import argparse
    import glob

    _stand_in_modules()
    import pyarrow.parquet as pq

    from cehrgpt.generation import omop_converter_batch as original

    assert original.__file__.startswith(site), original.__file__
    for table in original.TABLE_LIST:  # its workers race to create these (the crashes); not timed
        (Path(output) / table).mkdir(parents=True)
    started = time.perf_counter()
    original.main(
        argparse.Namespace(
            patient_sequence_path=input_folder,
            output_folder=output,
            concept_path=concept_folder,
            buffer_size=1024,
            cpu_cores=int(cores),
            use_original_person_id=True,
        )
    )
    seconds = time.perf_counter() - started
    persons = sum(pq.read_metadata(f).num_rows for f in glob.glob(f"{output}/person/*.parquet"))
    (Path(output) / "summary.json").write_text(json.dumps({"persons": persons, "seconds": seconds}))


if __name__ == "__main__":
    _main(*sys.argv[1:7])
