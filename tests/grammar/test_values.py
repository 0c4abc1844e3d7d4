"""Value tokens in the grammar (where a value may stand) and the value bins (numbers → bins → numbers)."""

from __future__ import annotations

import json

import pytest

from cehrgpt import grammar as g
from cehrgpt import values as v
from cehrgpt.grammar import TokenKind as K
from cehrgpt.grammar import ValueClass

VALUED_PATIENT = (
    "year:2001 age:12 8532 8527 [VS] 9203 3004249 v:7 380378 [VE] D154 "
    "[VS] 9201 19078461 dur:7 i-D1 4021 vc:4181412 8536 [VE] [END]"
).split()


def test_value_spellings_round_trip():
    assert g.value_bin_token(3) == "v:3"
    assert g.value_concept_token(4181412) == "vc:4181412"
    assert [g.drug_duration_token(d) for d in (-2, 0, 1, 6, 7, 27, 28, 29, 30, 59, 364, 365, 5000)] == [
        None,
        None,
        "dur:1",
        "dur:1",
        "dur:7",
        "dur:14",
        "dur:28",
        "dur:28",
        "dur:30",
        "dur:30",
        "dur:180",
        "dur:365",
        "dur:365",
    ]
    assert g.drug_duration_range("dur:30") == (30, 60)
    assert g.drug_duration_range("dur:365") == (365, None)
    assert g.drug_duration_range("dur:31") is None  # not an edge
    assert g.value_bin_of("v:12") == 12 and g.value_bin_of("v:0") is None
    assert g.value_concept_of("vc:7") == 7 and g.value_concept_of("vc:0") is None
    with pytest.raises(ValueError, match=r"outside 1\.\.99"):
        g.value_bin_token(0)
    with pytest.raises(ValueError, match="above 0"):
        g.value_concept_token(0)


def test_value_tokens_have_kind_value_and_a_class():
    assert [g.syntactic_kind(t) for t in ("v:1", "vc:4181412", "dur:7", "dur:8", "v:100")] == [
        K.VALUE,
        K.VALUE,
        K.VALUE,
        K.OOV,
        K.OOV,
    ]
    assert [g.value_class(t) for t in ("v:1", "vc:9", "dur:365", "4021", "D7")] == [
        ValueClass.NUMBER,
        ValueClass.CATEGORY,
        ValueClass.DURATION,
        ValueClass.NONE,
        ValueClass.NONE,
    ]


def test_a_value_may_follow_a_concept_in_either_kind_of_visit():
    assert g.first_violation(VALUED_PATIENT) is None
    kinds = g.assign_kinds(VALUED_PATIENT)
    assert [k.name for k in kinds[5:10]] == ["VISIT_TYPE", "CONCEPT", "VALUE", "CONCEPT", "VISIT_END"]
    assert [k.name for k in kinds[12:20]] == [
        "INPATIENT_VISIT_TYPE",
        "CONCEPT",
        "VALUE",
        "INPATIENT_GAP",
        "CONCEPT",
        "VALUE",
        "DISCHARGE",
        "VISIT_END",
    ]


@pytest.mark.parametrize(
    ("tokens", "reason"),
    [
        ("year:2001 age:12 8532 8527 [VS] 9203 v:7 [VE]", "value not allowed in state outpatient_empty"),
        (
            "year:2001 age:12 8532 8527 [VS] 9203 4021 v:7 v:2 [VE]",
            "value not allowed in state outpatient_valued",
        ),
        (
            "year:2001 age:12 8532 8527 [VS] 9201 4021 i-D2 v:7 8536 [VE]",
            "value not allowed in state inpatient_after_gap",
        ),
        (
            "year:2001 age:12 8532 8527 [VS] 9201 4021 8536 v:7 [VE]",
            "visit_end not allowed in state inpatient_valued",
        ),
        ("year:2001 age:12 8532 8527 [VS] 9203 4021 [VE] v:7", "value not allowed in state between_visits"),
        ("year:2001 age:12 8532 v:1 [VS] 9203 4021 [VE]", "value not allowed in state prompt_race"),
    ],
)
def test_a_value_anywhere_else_breaks_the_grammar(tokens, reason):
    violation = g.first_violation(tokens.split())
    assert violation is not None and violation[1] == reason


def test_number_edges_merge_ties_and_bin_every_value():
    quantiles = v.bin_quantiles(4)
    assert quantiles == [0.01, 0.25, 0.5, 0.75, 0.99]
    edges = v.number_edges([1.0, 2.0, 2.0, 5.0, 9.0])
    assert edges == [1.0, 2.0, 5.0, 9.0] and v.num_bins(edges) == 3
    assert [v.bin_number(edges, x) for x in (-10, 1.0, 1.99, 2.0, 4.9, 5.0, 9.0, 1e9)] == [
        1,
        1,
        1,
        2,
        2,
        3,
        3,
        3,
    ]
    assert v.draw_in_bin(edges, 2, 0.0) == 2.0
    assert v.draw_in_bin(edges, 2, 0.5) == 3.5
    assert v.number_edges([4.0, 4.0, 4.0]) == [4.0, 4.0]  # one value: one bin of width 0
    with pytest.raises(ValueError, match="finite"):
        v.number_edges([1.0, float("nan")])
    with pytest.raises(ValueError, match="num_bins"):
        v.bin_quantiles(0)


def test_value_bins_round_trip_through_their_file(tmp_path):
    bins = v.ValueBins(
        numbers={
            3004249: v.NumberBins([80.0, 110.0, 160.0], 8876, patients=12, values=40, other_unit_values=1)
        },
        categories={4013886: [4181412, 45877994]},
        duration_days={"dur:30": 30, "dur:7": 7},
        num_bins=2,
        min_concept_patients=10,
    )
    v.write_value_bins(bins, tmp_path)
    data = json.loads((tmp_path / v.VALUE_BINS_FILE).read_text())
    assert data["format"] == v.VALUE_BINS_FORMAT and list(data["duration_days"]) == ["dur:7", "dur:30"]
    assert v.read_value_bins(tmp_path) == bins
    assert (
        bins.duration_of("dur:30") == 30
        and bins.duration_of("dur:90") == 90
        and bins.duration_of("v:1") is None
    )
    assert v.read_value_bins(tmp_path / "absent") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "unreadable"),
        ('{"format": "other"}', "not a cehrgpt-value-bins/1 document"),
        ('{"format": "cehrgpt-value-bins/1", "numbers": {}}', "malformed"),
        (
            (
                '{"format": "cehrgpt-value-bins/1", "num_bins": 2, "min_concept_patients": 1, "categories": {}, '
                '"duration_days": {}, "numbers": {"1": {"edges": [3, 1], "unit_concept_id": null, "patients": 1, '
                '"values": 1, "other_unit_values": 0}}}'
            ),
            "concept 1: edges",
        ),
    ],
)
def test_a_broken_value_bins_file_is_named(tmp_path, text, message):
    (tmp_path / v.VALUE_BINS_FILE).write_text(text)
    with pytest.raises(v.ValueBinsError, match=message) as err:
        v.read_value_bins(tmp_path)
    assert str(tmp_path) in str(err.value)
