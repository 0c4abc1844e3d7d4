"""The word-level tokenizer: vocabulary, privacy filter, token metadata, Hugging Face round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from cehrgpt import grammar
from cehrgpt.grammar import TokenKind as K
from cehrgpt.models.tokenizer import (
    METADATA_FILE,
    TokenizerError,
    build_tokenizer,
    decode_ids,
    encode_sequence,
    load_tokenizer,
    save_tokenizer,
    token_concept_ids,
    token_value_classes,
    vocabulary_token_kinds,
)

# Three patients. 380378 is in all three, 4356 in two, 4021 and 8536 (a discharge) in one.
PATIENTS = [
    "year:2001 age:12 8532 8527 [VS] 9203 380378 [VE] D154 [VS] 9201 4356 i-D1 4021 8536 [VE] [END]".split(),
    "year:2001 age:40 8507 Race/0 [VS] 9202 380378 4356 [VE] LT [VS] [DEATH] [VE] [END]".split(),
    "year:1999 age:7 8532 8527 [VS] 9202 380378 380378 [VE]".split(),
]


def test_special_tokens_take_ids_zero_to_six_in_grammar_order():
    tokenizer, _ = build_tokenizer(PATIENTS, min_concept_patients=1)
    assert tokenizer.convert_ids_to_tokens(list(range(7))) == list(grammar.SPECIAL_TOKENS)
    assert (tokenizer.pad_token, tokenizer.eos_token, tokenizer.unk_token) == ("[PAD]", "[END]", "[OOV]")
    assert (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.eos_token_id) == (0, 1, 3)


def test_tokens_to_ids_to_tokens_is_exact():
    tokenizer, _ = build_tokenizer(PATIENTS, min_concept_patients=1)
    for tokens in PATIENTS:
        ids = encode_sequence(tokenizer, tokens)
        assert len(ids) == len(tokens)
        assert 1 not in ids
        assert decode_ids(tokenizer, ids) == tokens


def test_vocabulary_orders_tokens_by_frequency_then_spelling():
    tokenizer, stats = build_tokenizer(PATIENTS, min_concept_patients=1)
    vocab = tokenizer.get_vocab()
    # 380378 occurs 4 times, [VE] is special; the next most frequent ordinary tokens follow.
    assert vocab["380378"] == 7
    assert stats["vocab_size"] == len(vocab) == 29


def test_unknown_tokens_and_ids_become_oov():
    tokenizer, _ = build_tokenizer(PATIENTS, min_concept_patients=1)
    assert encode_sequence(tokenizer, ["year:2001", "999999", "year:1850"]) == [
        tokenizer.get_vocab()["year:2001"],
        1,
        1,
    ]
    assert decode_ids(tokenizer, [-1, len(tokenizer), 3]) == ["[OOV]", "[OOV]", "[END]"]
    assert tokenizer("year:2001 999999")["input_ids"] == [tokenizer.get_vocab()["year:2001"], 1]


def test_rare_concepts_are_left_out_with_exact_counts():
    tokenizer, stats = build_tokenizer(PATIENTS, min_concept_patients=2)
    vocab = tokenizer.get_vocab()
    assert "380378" in vocab and "4356" in vocab
    assert "4021" not in vocab
    # 8536 stands before [VE] in an inpatient visit: a discharge, never filtered.
    assert "8536" in vocab
    # year/age/gender/race/visit types/gaps seen once are kept.
    for token in ("year:1999", "age:7", "8507", "Race/0", "9203", "9201", "D154", "LT", "i-D1"):
        assert token in vocab, token
    assert stats["concepts_seen"] == 3
    assert stats["concepts_kept"] == 2
    assert stats["concepts_left_out_rare"] == 1
    assert stats["num_patients"] == 3

    _, stats3 = build_tokenizer(PATIENTS, min_concept_patients=3)
    assert (stats3["concepts_kept"], stats3["concepts_left_out_rare"]) == (1, 2)


def test_kinds_and_concept_ids_exact_for_a_hand_made_vocabulary():
    tokenizer, _ = build_tokenizer(PATIENTS, min_concept_patients=2)
    vocab = tokenizer.get_vocab()
    kinds = vocabulary_token_kinds(tokenizer)
    concept_ids = token_concept_ids(tokenizer)
    expected = {
        "[PAD]": (K.PAD, -1),
        "[OOV]": (K.OOV, -1),
        "[START]": (K.START, -1),
        "[END]": (K.END, -1),
        "[VS]": (K.VISIT_START, -1),
        "[VE]": (K.VISIT_END, -1),
        "[DEATH]": (K.DEATH, -1),
        "year:2001": (K.YEAR, -1),
        "year:1999": (K.YEAR, -1),
        "age:12": (K.AGE, -1),
        "age:40": (K.AGE, -1),
        "age:7": (K.AGE, -1),
        "8532": (K.GENDER, 8532),
        "8507": (K.GENDER, 8507),
        "8527": (K.RACE, 8527),
        "Race/0": (K.RACE, 0),
        "9203": (K.VISIT_TYPE, 9203),
        "9202": (K.VISIT_TYPE, 9202),
        "9201": (K.INPATIENT_VISIT_TYPE, 9201),
        "380378": (K.CONCEPT, 380378),
        "4356": (K.CONCEPT, 4356),
        "8536": (K.DISCHARGE, 8536),
        "D154": (K.GAP, -1),
        "LT": (K.GAP, -1),
        "i-D1": (K.INPATIENT_GAP, -1),
        # always kept so the generator can open and close visits
        "Gender/0": (K.GENDER, 0),
        "Visit/0": (K.VISIT_TYPE, 0),
        "Discharge/0": (K.DISCHARGE, 0),
    }
    assert set(vocab) == set(expected)
    assert kinds.dtype == np.int64 and kinds.shape == (len(vocab),)
    for token, (kind, concept_id) in expected.items():
        assert (kinds[vocab[token]], concept_ids[vocab[token]]) == (kind, concept_id), token


def test_a_token_takes_its_most_frequent_kind_and_is_then_never_filtered():
    # 9201 is a visit type in two patients and a clinical concept in one.
    patients = [
        "year:2001 age:1 8532 8527 [VS] 9201 4356 0 [VE]".split(),
        "year:2001 age:1 8532 8527 [VS] 9201 4356 0 [VE]".split(),
        "year:2001 age:1 8532 8527 [VS] 9202 9201 [VE]".split(),
    ]
    tokenizer, stats = build_tokenizer(patients, min_concept_patients=3)
    vocab = tokenizer.get_vocab()
    kinds = vocabulary_token_kinds(tokenizer)
    assert kinds[vocab["9201"]] == K.INPATIENT_VISIT_TYPE
    assert kinds[vocab["0"]] == K.DISCHARGE
    assert "4356" not in vocab
    assert stats["concepts_left_out_rare"] == 1


def test_unrecognised_spellings_are_left_out_and_counted():
    patients = [[*PATIENTS[0][:-1], "garbage", "[VE]"]]
    tokenizer, stats = build_tokenizer(patients, min_concept_patients=1)
    assert "garbage" not in tokenizer.get_vocab()
    assert stats["unrecognised_tokens_left_out"] == 1


def test_saved_folder_loads_with_autotokenizer_and_keeps_metadata(tmp_path):
    tokenizer, _ = build_tokenizer(PATIENTS, min_concept_patients=2)
    save_tokenizer(tokenizer, tmp_path)
    metadata = json.loads((tmp_path / METADATA_FILE).read_text())
    assert metadata["tokens"]["8536"] == {"kind": "DISCHARGE", "concept_id": 8536}
    assert metadata["min_concept_patients"] == 2

    plain = AutoTokenizer.from_pretrained(tmp_path)
    assert plain.get_vocab() == tokenizer.get_vocab()
    assert plain.convert_tokens_to_ids(PATIENTS[1]) == encode_sequence(tokenizer, PATIENTS[1])
    assert plain.pad_token == "[PAD]" and plain.eos_token == "[END]"

    loaded = load_tokenizer(tmp_path)
    np.testing.assert_array_equal(vocabulary_token_kinds(tmp_path), vocabulary_token_kinds(tokenizer))
    np.testing.assert_array_equal(token_concept_ids(loaded), token_concept_ids(tokenizer))

    # A plain save_pretrained of a loaded tokenizer still carries the metadata.
    again = tmp_path / "again"
    plain.save_pretrained(again)
    np.testing.assert_array_equal(
        vocabulary_token_kinds(AutoTokenizer.from_pretrained(again)), vocabulary_token_kinds(tokenizer)
    )


def test_loading_a_folder_without_a_tokenizer_names_the_folder(tmp_path):
    with pytest.raises(TokenizerError, match=r"no tokenizer in .*expected tokenizer\.json"):
        load_tokenizer(tmp_path / "missing")


def test_concepts_of_fewer_than_ten_patients_are_left_out_by_default():
    # 4356 in 10 patients, 4021 in 9: small cells (below 10) are suppressed unless asked otherwise
    patients = [
        ["year:2001", "age:12", "8532", "8527", "[VS]", "9202", "4356", *(["4021"] if i < 9 else []), "[VE]"]
        for i in range(10)
    ]
    tokenizer, stats = build_tokenizer(patients)
    assert "4356" in tokenizer.get_vocab() and "4021" not in tokenizer.get_vocab()
    assert (stats["min_concept_patients"], stats["concepts_seen"], stats["concepts_left_out_rare"]) == (
        10,
        2,
        1,
    )


def test_min_concept_patients_below_one_is_rejected():
    with pytest.raises(ValueError, match="min_concept_patients must be >= 1, got 0"):
        build_tokenizer(PATIENTS, min_concept_patients=0)


# 3004249 (a lab) is seen with numbers in both patients, 1112807 (a drug) with a duration once and
# without once, 4013886 with a categorical value in one patient only; 380378 never takes a value.
VALUED = [
    (
        "year:2001 age:12 8532 8527 [VS] 9202 3004249 v:2 1112807 dur:7 380378 [VE] D1 "
        "[VS] 9201 4013886 vc:4181412 i-D1 3004249 v:9 8536 [VE] [END]"
    ),
    "year:2003 age:50 8507 8527 [VS] 9202 3004249 v:1 1112807 380378 4013886 [VE]",
]


def test_each_concept_records_the_classes_of_the_values_seen_after_it(tmp_path):
    tokenizer, stats = build_tokenizer([p.split() for p in VALUED], min_concept_patients=1)
    save_tokenizer(tokenizer, tmp_path)
    entries = json.loads((tmp_path / METADATA_FILE).read_text())["tokens"]
    assert entries["3004249"] == {"kind": "CONCEPT", "concept_id": 3004249, "value_classes": 1}
    assert entries["1112807"]["value_classes"] == 4 and entries["4013886"]["value_classes"] == 2
    assert "value_classes" not in entries["380378"] and "value_classes" not in entries["8536"]
    assert entries["v:9"] == {"kind": "VALUE", "concept_id": None}
    vocab = tokenizer.get_vocab()
    classes = token_value_classes(load_tokenizer(tmp_path))
    expected = {
        "3004249": 1,
        "1112807": 4,
        "4013886": 2,
        "v:1": 1,
        "v:2": 1,
        "v:9": 1,
        "dur:7": 4,
        "vc:4181412": 2,
    }
    assert {t: int(classes[i]) for t, i in vocab.items() if classes[i]} == expected
    assert stats["concepts_taking_values"] == 3 and stats["categorical_values_left_out_rare"] == 0


def test_a_rare_categorical_value_is_left_out_like_a_rare_concept():
    tokenizer, stats = build_tokenizer([p.split() for p in VALUED], min_concept_patients=2)
    vocab = tokenizer.get_vocab()
    assert "vc:4181412" not in vocab and "4013886" in vocab
    assert {"v:1", "v:2", "v:9", "dur:7"} <= set(vocab)  # bins say nothing about one patient: always kept
    assert stats["categorical_values_left_out_rare"] == 1
