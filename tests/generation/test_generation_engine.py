"""Continuous batching: the spliced, left-padded cache gives exactly the logits of decoding each row alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from generation_fixtures import PATIENTS, tiny_model
from transformers import LogitsProcessor, LogitsProcessorList

from cehrgpt import grammar
from cehrgpt.generation import engine
from cehrgpt.generation.constraints import GrammarConstrainedLogitsProcessor
from cehrgpt.generation.engine import ContinuousBatchDecoder, GenerationError
from cehrgpt.models.tokenizer import encode_sequence, vocabulary_token_kinds


class RecordScores(LogitsProcessor):
    """Keeps a copy of every (history, scores, live rows) the decoder produces."""

    def __init__(self):
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.decoder: ContinuousBatchDecoder | None = None

    def __call__(self, input_ids, scores):
        assert self.decoder is not None
        self.calls.append((input_ids.clone(), scores.clone(), self.decoder.alive.clone()))
        return scores


def _prompts(tokenizer):
    return torch.tensor([encode_sequence(tokenizer, p.split()[:4]) for p in PATIENTS])


def _decoder(tokenizer, model, processors, window, batch_size, seed=0):
    end = tokenizer.convert_tokens_to_ids(grammar.END)
    return ContinuousBatchDecoder(
        model, processors, window, end, batch_size, torch.Generator().manual_seed(seed)
    )


def test_spliced_rows_see_exactly_their_own_tokens(tokenizer, monkeypatch):
    monkeypatch.setattr(engine, "COMPACT_EVERY", 2)  # compact often, so that path is checked too
    model = tiny_model(len(tokenizer), n_positions=64, seed=7)
    recorder = RecordScores()
    constraint = GrammarConstrainedLogitsProcessor(vocabulary_token_kinds(tokenizer), 20)
    decoder = _decoder(tokenizer, model, LogitsProcessorList([recorder, constraint]), 20, 3)
    recorder.decoder = decoder
    prompts, rng = _prompts(tokenizer), np.random.default_rng(0)
    result = decoder.run(8, lambda k: prompts[rng.integers(0, 4, k)])
    assert len(result.sequences) == 8
    pad = tokenizer.convert_tokens_to_ids(grammar.PAD)
    assert pad == 0 and model.config.pad_token_id is None  # the decoder's fallback: [PAD] is id 0
    checked = dead = 0
    for history, scores, alive in recorder.calls:
        dead += int((~alive).sum())
        for row in torch.nonzero(alive).flatten().tolist():
            tokens = history[row][history[row] != pad]
            with torch.no_grad():
                alone = model(input_ids=tokens[None]).logits[0, -1]
            torch.testing.assert_close(scores[row], alone, atol=1e-4, rtol=1e-4)
            checked += 1
    assert checked > 50 and dead > 0


def test_exact_count_and_every_sequence_ends_or_fills_the_window(tokenizer):
    model = tiny_model(len(tokenizer), n_positions=64, seed=1)
    constraint = GrammarConstrainedLogitsProcessor(vocabulary_token_kinds(tokenizer), 16)
    decoder = _decoder(tokenizer, model, LogitsProcessorList([constraint]), 16, 4)
    prompts, rng = _prompts(tokenizer), np.random.default_rng(1)
    result = decoder.run(13, lambda k: prompts[rng.integers(0, 4, k)])
    assert len(result.sequences) == 13
    end = tokenizer.convert_tokens_to_ids(grammar.END)
    for seq, hit in zip(result.sequences, result.hit_context_window, strict=True):
        assert (seq[-1] != end) == hit
        assert len(seq) == 16 if hit else len(seq) <= 16


def test_same_seed_same_sequences_other_seed_other_sequences(tokenizer):
    model = tiny_model(len(tokenizer), n_positions=64, seed=2)

    def run(seed):
        constraint = GrammarConstrainedLogitsProcessor(vocabulary_token_kinds(tokenizer), 24)
        decoder = _decoder(tokenizer, model, LogitsProcessorList([constraint]), 24, 5, seed=seed)
        prompts, rng = _prompts(tokenizer), np.random.default_rng(seed)
        return decoder.run(9, lambda k: prompts[rng.integers(0, 4, k)]).sequences

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_rejected_rows_are_retried_until_the_count_is_met(tokenizer):
    model = tiny_model(len(tokenizer), n_positions=64, seed=3)
    constraint = GrammarConstrainedLogitsProcessor(vocabulary_token_kinds(tokenizer), 24)
    decoder = _decoder(tokenizer, model, LogitsProcessorList([constraint]), 24, 4)
    prompts, rng = _prompts(tokenizer), np.random.default_rng(3)
    seen = []

    def accept(seq, hit):
        seen.append(seq)
        return len(seen) % 2 == 0  # every other finished row is rejected

    result = decoder.run(6, lambda k: prompts[rng.integers(0, 4, k)], accept=accept)
    assert len(result.sequences) == 6
    assert result.rejected == len(seen) - 6
    assert result.sequences == [s for i, s in enumerate(seen) if i % 2 == 1][:6]


def test_an_unreachable_acceptance_rule_fails_clearly(tokenizer):
    model = tiny_model(len(tokenizer), n_positions=64, seed=3)
    decoder = _decoder(tokenizer, model, LogitsProcessorList(), 12, 4)
    prompts, rng = _prompts(tokenizer), np.random.default_rng(3)
    with pytest.raises(GenerationError, match="out of reach"):
        decoder.run(2, lambda k: prompts[rng.integers(0, 4, k)], accept=lambda s, h: False, max_rejections=5)


def test_decoder_rejects_a_window_beyond_the_model(tokenizer):
    model = tiny_model(len(tokenizer), n_positions=32)
    with pytest.raises(ValueError, match="context_window 40 exceeds the model's 32 positions"):
        _decoder(tokenizer, model, LogitsProcessorList(), 40, 4)
