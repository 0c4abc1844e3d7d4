"""The pure core of the training data: windows, batches, sampler order, unigram baseline, reading errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from cehrgpt.train.data import (
    DataFolderError,
    LengthGroupedSampler,
    collate_windows,
    cut_window,
    read_split,
    unigram_log_probs,
    window_length,
)

END, VS = 3, 4
# prompt 10 11 12 13, then visits [VS] 20 21 [VE] / gap 30 / [VS] 22 [VE] / gap 31 / [VS] 23 24 25 [VE]
HISTORY = np.array([10, 11, 12, 13, VS, 20, 21, 5, 30, VS, 22, 5, 31, VS, 23, 24, 25, 5], dtype=np.int32)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_a_history_that_fits_gets_end_appended():
    assert cut_window(HISTORY, 19, END, VS, rng()).tolist() == [*HISTORY.tolist(), END]


def test_a_history_already_ending_in_end_is_not_given_a_second_one():
    with_end = np.append(HISTORY, END).astype(np.int32)
    assert cut_window(with_end, 64, END, VS, rng()).tolist() == [*HISTORY.tolist(), END]


def test_a_history_filling_the_window_exactly_has_no_room_for_end():
    assert cut_window(HISTORY, 18, END, VS, rng()).tolist() == HISTORY.tolist()


def test_a_long_history_keeps_the_prompt_and_slices_from_a_visit_start():
    # body of 9 tokens: a slice may start at the [VS] at 4 or 9 (the one at 13 leaves only 5 tokens)
    seen = {tuple(cut_window(HISTORY, 13, END, VS, rng(seed)).tolist()) for seed in range(40)}
    assert seen == {
        (10, 11, 12, 13, VS, 20, 21, 5, 30, VS, 22, 5, 31),
        (10, 11, 12, 13, VS, 22, 5, 31, VS, 23, 24, 25, 5),
    }


def test_without_a_usable_visit_start_any_slice_start_is_taken():
    ids = np.array([10, 11, 12, 13, 40, 41, 42, 43, 44, 45, 46], dtype=np.int32)
    seen = {tuple(cut_window(ids, 8, END, VS, rng(seed)).tolist()) for seed in range(60)}
    assert seen == {(10, 11, 12, 13, *ids[s : s + 4].tolist()) for s in range(4, 8)}


def test_window_length_counts_the_end_token():
    assert [window_length(n, 10, has_end=False) for n in (5, 9, 10, 50)] == [6, 10, 10, 10]
    assert window_length(5, 10, has_end=True) == 5


def test_collate_pads_right_and_masks_padding_out_of_the_loss():
    batch = collate_windows([np.array([7, 8, 9], dtype=np.int32), np.array([7, 3], dtype=np.int32)], pad_id=0)
    assert torch.equal(batch["input_ids"], torch.tensor([[7, 8, 9], [7, 3, 0]]))
    assert torch.equal(batch["attention_mask"], torch.tensor([[1, 1, 1], [1, 1, 0]]))
    assert torch.equal(batch["labels"], torch.tensor([[7, 8, 9], [7, 3, -100]]))


def test_sampler_order_depends_only_on_seed_and_epoch_and_groups_lengths():
    lengths = np.array([5, 50, 7, 40, 9, 30, 11, 20])
    sampler = LengthGroupedSampler(lengths, batch_size=2, seed=1, group_batches=2)
    first = list(sampler)
    assert sorted(first) == list(range(8))
    assert list(LengthGroupedSampler(lengths, batch_size=2, seed=1, group_batches=2)) == first
    for begin in (0, 4):  # each mega-batch of 4 is sorted longest first
        group = lengths[first[begin : begin + 4]]
        assert group.tolist() == sorted(group.tolist(), reverse=True)
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_unigram_log_probs_are_add_one_smoothed_over_predicted_tokens():
    log_probs = unigram_log_probs([np.array([9, 1, 1, 2]), np.array([9, 2])], vocab_size=4)
    # predicted tokens: 1, 1, 2, 2 -> counts 1+0, 1+2, 1+2, 1+0 over a total of 8
    np.testing.assert_allclose(np.exp(log_probs), [1 / 8, 3 / 8, 3 / 8, 1 / 8])


def _write(folder, table: pa.Table) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "part-0.parquet")


def test_read_split_returns_token_lists_and_skips_empty_rows(tmp_path):
    _write(tmp_path / "train", pa.table({"concept_ids": [["year:2001", "age:1"], [], ["year:1999"]]}))
    (tmp_path / "train" / "_SUCCESS").write_text("")
    assert read_split(tmp_path, "train") == [["year:2001", "age:1"], ["year:1999"]]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda root: None,
            r"data folder '.*/data' does not exist: expected the ETL's patient_sequence folder",
        ),
        (lambda root: (root / "train").mkdir(parents=True), r"no parquet files in '.*/data/train'"),
        (
            lambda root: _write(root / "train", pa.table({"tokens": [["a"]]})),
            r"'.*/data/train' has no 'concept_ids' column \(columns: tokens\)",
        ),
        (
            lambda root: _write(root / "train", pa.table({"concept_ids": [1, 2]})),
            r"column 'concept_ids' in '.*/data/train' has type int64: expected list<string>",
        ),
        (
            lambda root: _write(
                root / "train", pa.table({"concept_ids": pa.array([[]], pa.list_(pa.string()))})
            ),
            r"'.*/data/train' holds no patients",
        ),
    ],
)
def test_read_split_rejects_bad_folders_by_name(tmp_path, make, message):
    make(tmp_path / "data")
    with pytest.raises(DataFolderError, match=message):
        read_split(tmp_path / "data", "train")
