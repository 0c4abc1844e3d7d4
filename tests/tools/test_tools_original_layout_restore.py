"""The restore reads the original ETL's patient-sequence layout (extra columns ignored)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
from original_cehrgpt_fixtures import fixture_sequences, write_original_layout

from cehrgpt.omop.restore import restore

DOMAINS = {
    320128: "Condition",
    201826: "Condition",
    4329847: "Condition",
    313217: "Condition",
    1112807: "Drug",
    9201: "Visit",
    9202: "Visit",
    8717: "Visit",
}


def test_restore_takes_the_original_layout(spark, tmp_path):
    sequences = write_original_layout(tmp_path / "patient_sequence", fixture_sequences())
    (tmp_path / "vocab" / "concept").mkdir(parents=True)
    pq.write_table(
        pa.table(
            {
                "concept_id": pa.array(list(DOMAINS), pa.int64()),
                "concept_name": [f"concept {c}" for c in DOMAINS],
                "domain_id": list(DOMAINS.values()),
            }
        ),
        tmp_path / "vocab" / "concept" / "part-0.parquet",
    )
    report = restore(str(sequences), str(tmp_path / "omop"), str(tmp_path / "vocab"), spark=spark)
    assert report["input_patients"] == 3 and report["patients_restored"] == 3
    assert report["rows"]["person"] == 3
    assert report["rows"]["visit_occurrence"] == 6
    assert report["rows"]["death"] == 1
    assert report["rows"]["condition_occurrence"] == 6 and report["rows"]["drug_exposure"] == 2
    assert report["tokens"]["input"] == sum(len(s) for s in fixture_sequences())
    assert report["tokens"]["rejected"] == 0
