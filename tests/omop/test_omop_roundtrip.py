"""Round trip on Eunomia: training sequences → restore → ETL on the restored OMOP → the same sequences.

Normalisations (the restore cannot know what the tokens do not say), none of which
changes ``concept_ids``:

- every person is born on Jan 1 of ``year − age`` and the first visit is on Jan 1 of
  the prompt year, so per-token ``ages`` and ``dates`` shift by less than a year;
- ``LT`` is read back as 1,095 days, which the ETL writes as ``LT`` again; ``W``/``M``
  gaps (older data) would come back as ``D``;
- drugs end the day they start; condition and procedure end dates are empty;
- a concept lands in the table of its vocabulary domain, whichever table it came from.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cehrgpt.data.prepare import prepare
from cehrgpt.omop.quality import check_quality
from cehrgpt.omop.restore import restore
from cehrgpt.omop.tables import TABLES

ALL_DOMAINS = ("condition", "drug", "procedure", "measurement", "observation", "device")


def sequences(folder: Path) -> dict[int, list[str]]:
    table = pq.read_table(folder, columns=["person_id", "concept_ids"]).to_pydict()
    return dict(zip(table["person_id"], table["concept_ids"], strict=True))


@pytest.fixture(scope="module")
def eunomia_all_domains(spark, eunomia_duckdb, tmp_path_factory) -> Path:
    """Eunomia through the ETL with every event domain, measurement and observation included."""
    out = tmp_path_factory.mktemp("eunomia_all_domains") / "out"
    prepare(str(eunomia_duckdb), str(out), spark=spark, seed=42, test_fraction=0.1, domains=ALL_DOMAINS)
    return out


@pytest.fixture(scope="module")
def eunomia_restored(spark, eunomia_all_domains, tmp_path_factory) -> tuple[Path, dict]:
    """The Eunomia training sequences restored: (the restore's output folder, its report)."""
    out = tmp_path_factory.mktemp("eunomia_restored") / "omop"
    train = eunomia_all_domains / "patient_sequence" / "train"
    return out, restore(str(train), str(out), str(eunomia_all_domains / "omop_vocab"), spark=spark)


@pytest.mark.slow
def test_eunomia_training_sequences_survive_restore_and_etl(
    spark, eunomia_all_domains, eunomia_restored, tmp_path
):
    eunomia_sequences = eunomia_all_domains
    train = eunomia_sequences / "patient_sequence" / "train"
    restored, report = eunomia_restored
    original = sequences(train)
    assert report["input_patients"] == len(original)
    assert report["patients_restored"] == len(original)
    assert report["rejected_tokens"] == {}
    assert report["rows"]["measurement"] > 0 and report["rows"]["observation"] > 0

    # the restored tables plus the vocabulary, as one OMOP folder for the ETL
    cdm = tmp_path / "cdm"
    cdm.mkdir()
    for table in TABLES:
        (cdm / table).symlink_to(restored / table)
    (cdm / "concept").symlink_to(eunomia_sequences / "omop_vocab" / "concept")
    prepare(str(cdm), str(tmp_path / "again"), spark=spark, seed=42, test_fraction=0.0, domains=ALL_DOMAINS)
    again = sequences(tmp_path / "again" / "patient_sequence" / "train")

    assert again.keys() == original.keys()
    differ = [pid for pid in original if list(again[pid]) != list(original[pid])]
    assert differ == [], (differ[:3], original[differ[0]][:40], again[differ[0]][:40])


@pytest.mark.slow
def test_eunomia_restore_passes_the_quality_checks(eunomia_all_domains, eunomia_restored, tmp_path):
    restored, _ = eunomia_restored
    quality = check_quality(restored, tmp_path / "quality", eunomia_all_domains / "omop_vocab")
    failed = [
        (c["name"], c["table"], c["field"], c["violations"])
        for c in quality["checks"]
        if c["status"] == "fail"
    ]
    assert failed == []
    checked = {(c["name"], c["table"]) for c in quality["checks"] if c["status"] == "pass"}
    assert ("fkDomain", "condition_occurrence") in checked and (
        "plausibleDuringObservation",
        "measurement",
    ) in checked
    assert quality["summary"]["passed"] > 100
