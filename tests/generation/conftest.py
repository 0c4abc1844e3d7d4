"""Fixtures for the generator tests: a hand-made vocabulary, a tiny random GPT-2, a demographic folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from generation_fixtures import PATIENTS, VALUED_PATIENTS, tiny_model, write_sequences

from cehrgpt.models.tokenizer import build_tokenizer, save_tokenizer


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models on a shared 2-core machine: extra threads only spin against each other."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tokenizer():
    tok, _ = build_tokenizer([p.split() for p in PATIENTS], min_concept_patients=1)
    return tok


@pytest.fixture(scope="session")
def valued_tokenizer():
    """A vocabulary whose concepts take values: the patients without values and those with."""
    tok, _ = build_tokenizer([p.split() for p in PATIENTS + VALUED_PATIENTS], min_concept_patients=1)
    return tok


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory, tokenizer) -> Path:
    """A saved random model with its tokenizer, as the train stage leaves it."""
    folder = tmp_path_factory.mktemp("model")
    tiny_model(len(tokenizer)).save_pretrained(folder)
    save_tokenizer(tokenizer, folder)
    return folder


@pytest.fixture(scope="session")
def demographic_folder(tmp_path_factory) -> Path:
    return write_sequences(tmp_path_factory.mktemp("train"), [p.split() for p in PATIENTS])
