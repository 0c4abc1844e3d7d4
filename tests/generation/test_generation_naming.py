"""Strategy folder names (rounded like the seed expects), shard plans and person-id layout."""

from __future__ import annotations

import pytest

from cehrgpt.generation.naming import strategy_folder_name
from cehrgpt.generation.sharding import file_ranges, person_id, plan_shards, shard_range


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"sampling_strategy": "TopPStrategy", "top_p": 1.0}, "top_p10000"),
        ({"sampling_strategy": "TopPStrategy", "top_p": 0.95}, "top_p9500"),
        ({"sampling_strategy": "TopPStrategy", "top_p": 0.29}, "top_p2900"),  # truncation gives 2899
        ({"sampling_strategy": "TopPStrategy", "top_p": 0.57}, "top_p5700"),  # truncation gives 5699
        ({"sampling_strategy": "TopKStrategy", "top_k": 100}, "top_k100"),
        ({"sampling_strategy": "TopKStrategy", "top_k": 100, "top_p": 0.5}, "top_k100"),
        ({"sampling_strategy": "TopMixStrategy", "top_p": 0.95, "top_k": 50}, "top_mix_p9500_k50"),
        ({"sampling_strategy": "TopPStrategy", "temperature": 0.7}, "top_p10000_temp_7000"),
        ({"sampling_strategy": "TopPStrategy", "temperature": 1.1}, "top_p10000_temp_11000"),
        (
            {"sampling_strategy": "TopPStrategy", "repetition_penalty": 1.2},
            "top_p10000_repetition_penalty_12000",
        ),
        ({"sampling_strategy": "TopPStrategy", "epsilon_cutoff": 0.0003}, "top_p10000_epsilon_cutoff_30"),
        ({"sampling_strategy": "TopPStrategy", "epsilon_cutoff": 0.0}, "top_p10000"),
        (
            {
                "sampling_strategy": "TopMixStrategy",
                "top_p": 0.9,
                "top_k": 10,
                "temperature": 0.29,
                "repetition_penalty": 1.0,
                "epsilon_cutoff": 0.00029,
            },
            "top_mix_p9000_k10_temp_2900_epsilon_cutoff_29",
        ),
    ],
)
def test_folder_name_rounds(kwargs, expected):
    assert strategy_folder_name(**kwargs) == expected


def test_folder_name_rejects_unknown_strategy():
    with pytest.raises(ValueError, match="unknown sampling strategy 'BeamStrategy'"):
        strategy_folder_name("BeamStrategy")


def test_plan_shards_sums_exactly():
    assert plan_shards(10, 3) == [
        {"shard_index": 0, "num_shards": 3, "num_of_patients": 4},
        {"shard_index": 1, "num_shards": 3, "num_of_patients": 3},
        {"shard_index": 2, "num_shards": 3, "num_of_patients": 3},
    ]
    assert [s["num_of_patients"] for s in plan_shards(2, 4)] == [1, 1, 0, 0]
    assert sum(s["num_of_patients"] for s in plan_shards(1001, 7)) == 1001


def test_shard_ranges_are_contiguous_and_disjoint():
    assert [shard_range(10, i, 3) for i in range(3)] == [range(0, 4), range(4, 7), range(7, 10)]
    assert file_ranges(range(4, 11), 3) == [range(4, 7), range(7, 10), range(10, 11)]


@pytest.mark.parametrize(("args", "message"), [((0, 2), "num_of_patients"), ((5, 0), "num_shards")])
def test_plan_shards_rejects_non_positive(args, message):
    with pytest.raises(ValueError, match=message):
        plan_shards(*args)


def test_shard_range_rejects_bad_index():
    with pytest.raises(ValueError, match=r"shard_index must be in \[0, 3\), got 3"):
        shard_range(10, 3, 3)


def test_person_id_layout():
    assert person_id(0, 0) == 1
    assert person_id(0, 99) == 100
    assert person_id(1, 0) == 2**40 + 1
    assert person_id(2**23 - 1, 2**40 - 2) == 2**63 - 1
    with pytest.raises(ValueError, match="seed must be in"):
        person_id(2**23, 0)
