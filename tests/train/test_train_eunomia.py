"""The tokenizer and a short training run on the whole Eunomia demo data (ETL output)."""

from __future__ import annotations

from collections import defaultdict

import pytest

from cehrgpt import grammar as g
from cehrgpt.models.tokenizer import build_tokenizer, encode_sequence
from cehrgpt.train import train
from cehrgpt.train.data import read_split

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def eunomia_train(eunomia_sequences):
    return read_split(eunomia_sequences / "patient_sequence", "train")


def test_every_eunomia_token_is_in_the_vocabulary_without_a_privacy_threshold(eunomia_train):
    tokenizer, stats = build_tokenizer(eunomia_train, min_concept_patients=1)
    assert stats["concepts_left_out_rare"] == 0 and stats["unrecognised_tokens_left_out"] == 0
    assert all(1 not in encode_sequence(tokenizer, tokens) for tokens in eunomia_train)


def test_eunomia_concepts_below_the_threshold_are_exactly_the_ones_left_out(eunomia_train):
    patients_of: dict[str, set[int]] = defaultdict(set)
    for person, tokens in enumerate(eunomia_train):
        for token, kind in zip(tokens, g.assign_kinds(tokens), strict=True):
            if kind == g.TokenKind.CONCEPT:
                patients_of[token].add(person)
    rare = {token for token, people in patients_of.items() if len(people) < 20}
    assert rare  # Eunomia has rare concepts, so the check below means something

    tokenizer, stats = build_tokenizer(eunomia_train, min_concept_patients=20)
    vocab = set(tokenizer.get_vocab())
    assert not rare & vocab
    assert stats["concepts_left_out_rare"] == len(rare)


def test_a_short_run_beats_the_unigram_baseline(eunomia_sequences, tmp_path):
    metrics = train(
        eunomia_sequences / "patient_sequence",
        tmp_path / "model",
        n_layer=2,
        n_embd=64,
        n_head=2,
        context_window=128,
        batch_size=16,
        learning_rate=5e-3,
        max_steps=60,
        logging_steps=10,
        eval_steps=0,
        save_steps=0,
    )
    assert metrics["validation_perplexity"] < 0.6 * metrics["unigram_baseline_perplexity"]
    assert (tmp_path / "model" / "training_metrics.json").is_file()
