"""The repetition penalty touches concept tokens the row generated, never structure, gaps or the prompt."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from generation_fixtures import PATIENTS, tiny_model
from test_generation_cli import _argv, _read
from transformers import LogitsProcessor, LogitsProcessorList

from cehrgpt import grammar
from cehrgpt.generation.engine import ContinuousBatchDecoder
from cehrgpt.generation.generate_batch_hf_gpt_sequence import main
from cehrgpt.generation.sampling import (
    ConceptRepetitionPenaltyLogitsProcessor,
    SamplingConfig,
    build_logits_processors,
)
from cehrgpt.grammar import TokenKind
from cehrgpt.models.tokenizer import encode_sequence, vocabulary_token_kinds


def _ids(tokenizer, text: str) -> list[int]:
    return encode_sequence(tokenizer, text.split())


def test_only_concepts_generated_after_the_prompt_are_penalised(tokenizer):
    kinds = vocabulary_token_kinds(tokenizer)
    penalty = ConceptRepetitionPenaltyLogitsProcessor(2.0, kinds)
    # row 0: left pad, prompt, then a visit repeating [VS] [VE] and a gap, with concepts 380378 and 201826
    row0 = _ids(tokenizer, "[PAD] [PAD] year:2001 age:12 8532 8527 [VS] 9202 380378 [VE] D7 [VS] 9202 201826")
    # row 1: the prompt's third token is a concept id (as if a tokenizer gave it that kind): not counted
    row1 = _ids(
        tokenizer, "[PAD] year:2001 age:12 4029498 8527 [VS] 9202 1112807 [VE] D7 [VS] 9202 1112807 [VE]"
    )
    history = torch.tensor([row0, row1])
    scores = torch.linspace(-3.0, 3.0, 2 * len(kinds)).reshape(2, len(kinds))
    scores[:, 0] = 0.5  # a positive score that must stay
    out = penalty(history, scores.clone())
    vocab = tokenizer.get_vocab()
    changed = {
        row: sorted(
            tokenizer.convert_ids_to_tokens(torch.nonzero(out[row] != scores[row]).flatten().tolist())
        )
        for row in range(2)
    }
    assert changed == {0: ["201826", "380378"], 1: ["1112807"]}
    for row, token in ((0, "380378"), (0, "201826"), (1, "1112807")):
        before = float(scores[row, vocab[token]])
        assert float(out[row, vocab[token]]) == pytest.approx(before / 2 if before > 0 else before * 2)
    assert all(kinds[vocab[t]] == TokenKind.CONCEPT for t in ("380378", "201826", "1112807"))


def test_a_penalty_of_one_changes_nothing_and_a_vocabulary_wider_model_is_handled(tokenizer):
    kinds = vocabulary_token_kinds(tokenizer)
    history = torch.tensor([_ids(tokenizer, "year:2001 age:12 8532 8527 [VS] 9202 380378 [VE]")])
    scores = torch.randn(1, len(kinds) + 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ConceptRepetitionPenaltyLogitsProcessor(1.0, kinds)(history, scores.clone()), scores)
    out = ConceptRepetitionPenaltyLogitsProcessor(1.5, kinds)(history, scores.clone())
    assert torch.nonzero(out[0] != scores[0]).flatten().tolist() == [
        tokenizer.convert_tokens_to_ids("380378")
    ]


def test_the_factory_needs_the_token_kinds_for_a_penalty():
    with pytest.raises(ValueError, match="needs the vocabulary's token kinds"):
        build_logits_processors(SamplingConfig(repetition_penalty=1.2))
    with pytest.raises(ValueError, match="repetition_penalty must be positive"):
        ConceptRepetitionPenaltyLogitsProcessor(0.0, np.zeros(3, np.int64))


class _Record(LogitsProcessor):
    def __init__(self):
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, input_ids, scores):
        self.calls.append((input_ids.clone(), scores.clone()))
        return scores


def test_the_engine_penalises_concept_logits_only(tokenizer):
    """A tiny model through the continuous-batching engine: scores before and after the penalty."""
    kinds = vocabulary_token_kinds(tokenizer)
    concept = torch.from_numpy(kinds == TokenKind.CONCEPT)
    before, after = _Record(), _Record()
    processors = LogitsProcessorList([before, ConceptRepetitionPenaltyLogitsProcessor(3.0, kinds), after])
    model = tiny_model(len(tokenizer), n_positions=64, seed=11)
    decoder = ContinuousBatchDecoder(
        model,
        processors,
        24,
        tokenizer.convert_tokens_to_ids(grammar.END),
        3,
        torch.Generator().manual_seed(0),
        pad_token_id=tokenizer.convert_tokens_to_ids(grammar.PAD),
    )
    prompts = torch.tensor([_ids(tokenizer, " ".join(p.split()[:4])) for p in PATIENTS])
    rng = np.random.default_rng(0)
    assert len(decoder.run(6, lambda k: prompts[rng.integers(0, 4, k)]).sequences) == 6
    penalised = 0
    for (history, raw), (_, out) in zip(before.calls, after.calls, strict=True):
        assert torch.equal(out[:, ~concept], raw[:, ~concept])  # structure, gaps, visit types: untouched
        for row in range(history.shape[0]):
            tokens = history[row][history[row] != 0][grammar.PROMPT_LENGTH :]  # 0 is [PAD]
            repeated = torch.zeros(len(kinds), dtype=torch.bool)
            repeated[tokens] = True
            repeated &= concept
            expected = torch.where(raw[row] < 0, raw[row] * 3.0, raw[row] / 3.0)
            torch.testing.assert_close(out[row][repeated], expected[repeated])
            torch.testing.assert_close(out[row][~repeated], raw[row][~repeated])
            penalised += int(repeated.sum())
    assert penalised > 20


def test_the_command_runs_with_a_repetition_penalty(model_folder, demographic_folder, tmp_path):
    argv = _argv(model_folder, demographic_folder, tmp_path, num_of_patients=7, repetition_penalty=1.5)
    assert main(argv) == 0
    strategy = "top_p10000_repetition_penalty_15000"
    rows = _read(tmp_path, strategy).to_pylist()
    assert len(rows) == 7 and all(grammar.is_valid(r["concept_ids"]) for r in rows)
    summary = json.loads((tmp_path / strategy / "generation_summary.json").read_text())
    assert summary["patients"] == 7
