"""Value tokens in the restore: numbers drawn in their bin, units, categorical values and drug durations.

Hand-made patients cover every case (a value that fits each table, and each way a value does not fit);
both decoding paths (the vectorised one and the reference) give the same records, with exact values
computed from the same pure functions (:func:`cehrgpt.values.value_uniform`, :func:`draw_in_bin`).
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from omop_restore_data import write_sequences, write_vocabulary

from cehrgpt.dates import date_to_day
from cehrgpt.omop import records
from cehrgpt.omop.arrow_decode import decode_arrow
from cehrgpt.omop.cdm import cdm_fields
from cehrgpt.omop.event_values import value_lookup
from cehrgpt.omop.inputs import RestoreError
from cehrgpt.omop.records import EVENT, PERSON, REJECTION, TALLY, VISIT, decode_batches
from cehrgpt.omop.restore import REJECTED, restore
from cehrgpt.omop.source import spark_type
from cehrgpt.values import (
    NumberBins,
    ValueBins,
    draw_in_bin,
    value_uniform,
    value_uniforms,
    write_value_bins,
)

PROMPT = "year:2001 age:12 8532 8527"
CONCEPTS = {
    101: "Condition",
    201: "Drug",
    401: "Measurement",
    402: "Measurement",
    501: "Observation",
    999: "Metadata",
    9201: "Visit",
    9202: "Visit",
    8536: "Visit",
}
EDGES_401 = [0.0, 10.0, 20.0, 50.0]
EDGES_501 = [1.0, 2.0]
BINS = ValueBins(
    numbers={
        401: NumberBins(EDGES_401, 8840, patients=20, values=60, other_unit_values=0),
        501: NumberBins(EDGES_501, None, patients=15, values=30, other_unit_values=0),
        201: NumberBins([5.0, 6.0], 8576, patients=11, values=11, other_unit_values=0),  # a drug: no number
    },
    categories={401: [4181412]},
    duration_days={"dur:30": 31},
)
# person 11: every value an outpatient visit can hold, and every way one does not fit
OUTPATIENT = (
    f"{PROMPT} [VS] 9202 401 v:2 401 vc:4181412 401 v:3 401 v:4 402 v:1 501 v:1 501 vc:45877994 "
    "201 dur:30 201 dur:7 201 201 v:1 101 v:1 101 dur:7 101 vc:5 [VE] [END]"
)
# person 12: an inpatient visit; values of concepts the vocabulary rejects, a drug after an inpatient gap
INPATIENT = f"{PROMPT} [VS] 9201 401 v:1 i-D2 201 dur:30 777 v:1 999 vc:3 401 v:4 8536 [VE]"
# person 13: not grammar-valid (a stray token): only the reference decoder reads it
BROKEN = f"{PROMPT} [VS] 9202 401 [OOV] v:2 501 vc:7 [VE]"
PATIENTS = [(11, OUTPATIENT), (12, INPATIENT), (13, BROKEN)]
DAY = date_to_day(date(2001, 1, 1))


def number(person: int, position: int, edges: list[float], k: int) -> float:
    return draw_in_bin(edges, k, value_uniform(person, position))


# (person, concept position) -> (concept, day, value_as_number, unit, value_as_concept_id, end day, days_supply)
EXPECTED_EVENTS = {
    (11, 6): (401, DAY, number(11, 7, EDGES_401, 2), 8840, None, None, None),
    (11, 8): (401, DAY, None, None, 4181412, None, None),
    (11, 10): (401, DAY, number(11, 11, EDGES_401, 3), 8840, None, None, None),
    (11, 12): (401, DAY, None, None, None, None, None),  # v:4: beyond its 3 bins
    (11, 14): (402, DAY, None, None, None, None, None),  # no bins
    (11, 16): (501, DAY, number(11, 17, EDGES_501, 1), None, None, None, None),  # no unit in the bins
    (11, 18): (501, DAY, None, None, 45877994, None, None),
    (11, 20): (201, DAY, None, None, None, DAY + 31, 31),  # the bins' median of dur:30
    (11, 22): (201, DAY, None, None, None, DAY + 7, 7),  # not in the bins: the bin's low edge
    (11, 24): (201, DAY, None, None, None, None, None),  # no duration: ends the day it starts
    (11, 25): (201, DAY, None, None, None, None, None),  # v:1 after a drug
    (11, 27): (101, DAY, None, None, None, None, None),
    (11, 29): (101, DAY, None, None, None, None, None),
    (11, 31): (101, DAY, None, None, None, None, None),
    (12, 6): (401, DAY, number(12, 7, EDGES_401, 1), 8840, None, None, None),
    (12, 9): (201, DAY + 2, None, None, None, DAY + 33, 31),
    (12, 15): (401, DAY + 2, None, None, None, None, None),
    (13, 6): (401, DAY, number(13, 8, EDGES_401, 2), 8840, None, None, None),  # the last concept kept
    (13, 9): (501, DAY, None, None, 7, None, None),
}
EXPECTED_REJECTIONS = {
    (11, 13, "v:4", "value_does_not_fit"),
    (11, 15, "v:1", "value_does_not_fit"),
    (11, 26, "v:1", "value_does_not_fit"),
    (11, 28, "v:1", "value_does_not_fit"),
    (11, 30, "dur:7", "value_does_not_fit"),
    (11, 32, "vc:5", "value_does_not_fit"),
    (12, 11, "777", "concept_not_in_vocabulary"),
    (12, 12, "v:1", "value_without_concept"),
    (12, 13, "999", "unsupported_domain"),
    (12, 14, "vc:3", "value_without_concept"),
    (12, 16, "v:4", "value_does_not_fit"),
    (13, 7, "[OOV]", "unexpected_token_in_visit"),
}
VALUES_PLACED = {"number": 5, "category": 3, "duration": 3}


def _vocabulary() -> tuple[np.ndarray, np.ndarray]:
    ids = np.array(sorted(CONCEPTS), np.int64)
    table_of = {domain: i for i, domain in enumerate(records.EVENT_TABLES)}
    tables = [table_of.get(CONCEPTS[c].lower(), records.UNSUPPORTED) for c in ids.tolist()]
    return ids, np.array(tables, np.int8)


def _records(patients, bins: ValueBins | None) -> list[dict]:
    batch = pa.record_batch(
        {
            "person_id": pa.array([p for p, _ in patients], pa.int64()),
            "concept_ids": pa.array([t.split() for _, t in patients], pa.list_(pa.string())),
            "file_path": ["file:/in/a.parquet"] * len(patients),
            "row_index": pa.array(range(len(patients)), pa.int64()),
        }
    )
    lookup = value_lookup(bins) if bins is not None else None
    out = decode_batches(
        iter([batch]), {"file:/in/a.parquet": 0}, frozenset(), _vocabulary(), 0, values=lookup
    )
    return pa.Table.from_batches(out, records.DECODED_SCHEMA).to_pylist()


def _days(value) -> int | None:
    return None if value is None else date_to_day(value)


def _events(rows: list[dict]) -> dict[tuple[int, int], tuple]:
    return {
        (r["person_id"], r["position"]): (
            r["concept_id"],
            _days(r["start_date"]),
            r["value_as_number"],
            r["unit_concept_id"],
            r["value_as_concept_id"],
            _days(r["end_date"]),
            r["days_supply"],
        )
        for r in rows
        if r["record"] == EVENT
    }


def _rejections(rows: list[dict]) -> set[tuple]:
    return {
        (r["person_id"], r["position"], r["token"], r["reason"]) for r in rows if r["record"] == REJECTION
    }


@pytest.fixture(params=["vectorised", "reference"])
def decoding_path(request, monkeypatch):
    """Both decoding paths: the vectorised decoder for grammar-valid patients, or the reference for all."""
    if request.param == "reference":
        monkeypatch.setattr(
            records, "decode_arrow", lambda seqs, usable, end_day: decode_arrow(seqs, usable & False, end_day)
        )
    return request.param


def test_the_uniform_is_a_pure_function_of_person_and_position_and_the_same_vectorised():
    people = np.array([0, 1, 11, -5, (1 << 62) + 3, np.iinfo(np.int64).max], np.int64)
    positions = np.array([0, 7, 7, 3, 1 << 17, 9], np.int64)
    expected = [value_uniform(int(p), int(q)) for p, q in zip(people, positions, strict=True)]
    assert value_uniforms(people, positions).tolist() == expected
    assert all(0.0 <= u < 1.0 for u in expected) and len(set(expected)) == len(expected)
    assert value_uniform(11, 7) == value_uniform(11, 7) != value_uniform(11, 8)
    rng = np.random.default_rng(0)
    many = value_uniforms(rng.integers(0, 1 << 40, 100_000), rng.integers(0, 1 << 18, 100_000))
    assert abs(many.mean() - 0.5) < 0.01 and many.min() >= 0.0 and many.max() < 1.0


def test_both_decoding_paths_place_every_value_that_fits_and_reject_the_rest(decoding_path):
    rows = _records(PATIENTS, BINS)
    events = _events(rows)
    assert events == EXPECTED_EVENTS
    assert _rejections(rows) == EXPECTED_REJECTIONS
    # exact numbers: bin 2 of 401 is [10, 20), its unit 8840; no rounding
    assert 10.0 <= events[(11, 6)][2] < 20.0 and events[(11, 6)][2] == 10.0 + 10.0 * value_uniform(11, 7)
    placed = {
        "number": sum(e[2] is not None for e in events.values()),
        "category": sum(e[4] is not None for e in events.values()),
        "duration": sum(e[6] is not None for e in events.values()),
    }
    assert placed == VALUES_PLACED
    _check_accounting(rows, PATIENTS)


def test_both_decoding_paths_give_the_same_records(monkeypatch):
    fast = _records(PATIENTS, BINS)
    monkeypatch.setattr(
        records, "decode_arrow", lambda seqs, usable, end_day: decode_arrow(seqs, usable & False, end_day)
    )
    slow = _records(PATIENTS, BINS)

    def key(r):
        return tuple(str(v) for v in r.values())

    assert sorted(fast, key=key) == sorted(slow, key=key)
    decoded = decode_arrow(
        pa.array([t.split() for _, t in PATIENTS], pa.list_(pa.string())), np.ones(3, bool)
    )
    assert decoded.decoded.tolist() == [True, True, False]


def _value_tokens() -> list[tuple[int, int, str]]:
    """(person, position, token) of every value token of PATIENTS."""
    return [
        (p, i, t)
        for p, text in PATIENTS
        for i, t in enumerate(text.split())
        if t.startswith(("v:", "vc:", "dur:"))
    ]


WITHOUT_CONCEPT = {(12, 12), (12, 14)}  # after 777 (not in the vocabulary) and 999 (Metadata)


def test_without_value_bins_every_value_token_is_rejected_and_its_concept_kept(decoding_path):
    rows = _records(PATIENTS, None)
    events = _events(rows)
    assert events.keys() == EXPECTED_EVENTS.keys()
    assert all(e[2:] == (None,) * 5 for e in events.values())
    rejected = {r for r in _rejections(rows) if r[3].startswith("value")}
    assert len(_value_tokens()) == 20
    assert rejected == {
        (p, i, t, "value_without_concept" if (p, i) in WITHOUT_CONCEPT else "value_does_not_fit")
        for p, i, t in _value_tokens()
    }
    _check_accounting(rows, PATIENTS)


def _check_accounting(rows: list[dict], patients) -> None:
    """input = placed + structural + rejected, per patient, with placed values counted on their rows."""
    accounted = {p: 0 for p, _ in patients}
    for r in rows:
        person = r["person_id"]
        if r["record"] == PERSON:
            accounted[person] += 4
        elif r["record"] == VISIT:
            accounted[person] += 1 + (r["concept_id_2"] is not None)
        elif r["record"] == EVENT:
            accounted[person] += 1 + sum(
                r[c] is not None for c in ("value_as_number", "value_as_concept_id", "days_supply")
            )
        elif r["record"] == REJECTION:
            accounted[person] += 1
        elif r["record"] == TALLY:
            accounted[person] += r["count"]
    assert accounted == {p: len(t.split()) for p, t in patients}


# --- through real local Spark ----------------------------------------------------------------------------


def _restore_folders(root: Path, with_bins: bool = True) -> tuple[Path, Path]:
    seq = write_sequences(root / "seq", [("a", p, t) for p, t in PATIENTS])
    vocab = write_vocabulary(root / "vocab", CONCEPTS)
    if with_bins:
        write_value_bins(BINS, vocab)
    return seq, vocab


def _table(spark, folder: Path, table: str) -> list[dict]:
    frame = spark.read.parquet(str(folder / table))
    return sorted((r.asDict() for r in frame.collect()), key=lambda r: tuple(str(v) for v in r.values()))


def test_a_restore_puts_values_units_value_concepts_end_dates_and_days_supply_in_the_tables(spark, tmp_path):
    seq, vocab = _restore_folders(tmp_path)
    out = tmp_path / "omop"
    report = restore(str(seq), str(out), str(vocab), spark=spark, end_date=date(2030, 1, 1))
    measurement = {
        (r["person_id"], r["measurement_id"] & ((1 << 18) - 1)): (
            r["measurement_concept_id"],
            r["value_as_number"],
            r["unit_concept_id"],
            r["value_as_concept_id"],
        )
        for r in _table(spark, out, "measurement")
    }
    assert measurement == {
        k: (e[0], e[2], e[3], e[4]) for k, e in EXPECTED_EVENTS.items() if e[0] in (401, 402)
    }
    observation = {
        (r["person_id"], r["observation_id"] & ((1 << 18) - 1)): (
            r["value_as_number"],
            r["unit_concept_id"],
            r["value_as_concept_id"],
        )
        for r in _table(spark, out, "observation")
    }
    assert observation == {k: (e[2], e[3], e[4]) for k, e in EXPECTED_EVENTS.items() if e[0] == 501}
    drugs = {
        (r["person_id"], r["drug_exposure_id"] & ((1 << 18) - 1)): (
            r["drug_exposure_start_date"],
            r["drug_exposure_end_date"],
            r["drug_exposure_end_datetime"].date(),
            r["days_supply"],
        )
        for r in _table(spark, out, "drug_exposure")
    }
    d = date(2001, 1, 1)
    assert drugs == {
        (11, 20): (d, date(2001, 2, 1), date(2001, 2, 1), 31),
        (11, 22): (d, date(2001, 1, 8), date(2001, 1, 8), 7),
        (11, 24): (d, d, d, None),
        (11, 25): (d, d, d, None),
        (12, 9): (date(2001, 1, 3), date(2001, 2, 3), date(2001, 2, 3), 31),
    }
    rejected = {
        (r["person_id"], r["position"], r["token"], r["reason"]) for r in _table(spark, out, REJECTED)
    }
    assert rejected == EXPECTED_REJECTIONS
    assert report["values_placed"] == VALUES_PLACED
    tokens = sum(len(t.split()) for _, t in PATIENTS)
    assert (
        report["tokens"]["input"]
        == tokens
        == sum(report["tokens"][k] for k in ("placed", "structural", "rejected"))
    )
    assert report["tokens"]["rejected"] == len(EXPECTED_REJECTIONS)
    assert report["value_bins"] == f"{vocab}/value_bins.json"
    assert json.loads((out / "restore_report.json").read_text()) == report
    for table in ("measurement", "observation", "drug_exposure"):
        frame = spark.read.parquet(str(out / table))
        fields = cdm_fields(table)
        assert frame.columns == [f.name for f in fields]
        assert [c.dataType for c in frame.schema.fields] == [spark_type(f.datatype) for f in fields]

    # the same restore again: identical tables, values and all
    before = {t: _table(spark, out, t) for t in ("measurement", "observation", "drug_exposure", REJECTED)}
    again = restore(str(seq), str(out), str(vocab), spark=spark, end_date=date(2030, 1, 1))
    assert {t: _table(spark, out, t) for t in before} == before
    assert again["values_placed"] == report["values_placed"] and again["tokens"] == report["tokens"]


def test_a_restore_without_value_bins_rejects_every_value_and_counts_none_placed(spark, tmp_path):
    seq, vocab = _restore_folders(tmp_path, with_bins=False)
    out = tmp_path / "omop"
    report = restore(str(seq), str(out), str(vocab), spark=spark, end_date=date(2030, 1, 1))
    assert report["values_placed"] == {"number": 0, "category": 0, "duration": 0}
    assert report["value_bins"] is None
    assert report["rejected_tokens"]["value_does_not_fit"] == 18
    assert report["rejected_tokens"]["value_without_concept"] == len(WITHOUT_CONCEPT)
    assert report["rows"]["measurement"] == 8 and report["rows"]["drug_exposure"] == 5
    measurement = spark.read.parquet(str(out / "measurement"))
    assert measurement.where("value_as_number is not null or value_as_concept_id is not null").count() == 0


def test_value_bins_are_read_from_a_vocabulary_uri_and_a_broken_file_is_one_line(spark, tmp_path):
    seq, vocab = _restore_folders(tmp_path)
    report = restore(
        seq.as_uri(), (tmp_path / "omop").as_uri(), vocab.as_uri(), spark=spark, end_date=date(2030, 1, 1)
    )
    assert report["values_placed"] == VALUES_PLACED
    assert report["value_bins"] == f"{vocab.as_uri()}/value_bins.json"
    (vocab / "value_bins.json").write_text('{"format": "other"}')
    for where in (str(vocab), vocab.as_uri()):
        with pytest.raises(RestoreError, match=r"value_bins\.json: not a cehrgpt-value-bins/1 document"):
            restore(str(seq), str(tmp_path / "omop2"), where, spark=spark)
    assert not (tmp_path / "omop2" / "_SUCCESS").exists()


@pytest.mark.parametrize("vectorised", [True, False])
def test_fidelity_profiles_read_value_tokens_as_values_not_concepts(vectorised):
    from cehrgpt.analysis.fidelity.profile import profile_sequences

    valued = [OUTPATIENT.split(), INPATIENT.split()]
    plain = [[t for t in tokens if not t.startswith(("v:", "vc:", "dur:"))] for tokens in valued]
    with_values = profile_sequences(valued, check_grammar=True, vectorised=vectorised)
    without = profile_sequences(plain, check_grammar=True, vectorised=vectorised)
    assert with_values.excluded == without.excluded == 0
    assert sorted(with_values.concept_tokens.tolist()) == sorted(without.concept_tokens.tolist())
    assert len(with_values.concept_tokens) == 14 + 5  # every concept token, no value token among them
    assert sorted(with_values.patient_concepts.tolist()) == sorted(without.patient_concepts.tolist())
    assert [a.tolist() for a in with_values.visit_concepts] == [a.tolist() for a in without.visit_concepts]
    assert with_values.inpatient_stay_days.tolist() == without.inpatient_stay_days.tolist() == [2]
