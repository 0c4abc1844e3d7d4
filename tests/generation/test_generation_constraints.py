"""The grammar constraint: exact masks, forced closing, validation, and 100% valid patients from a random model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from generation_fixtures import PATIENTS, tiny_model
from transformers import LogitsProcessorList

from cehrgpt import grammar
from cehrgpt.generation.constraints import (
    GrammarConstrainedLogitsProcessor,
    minimum_context_window,
    reachable_close_costs,
)
from cehrgpt.generation.engine import ContinuousBatchDecoder
from cehrgpt.generation.sampling import SamplingConfig, build_logits_processors
from cehrgpt.grammar import GrammarState, TokenKind
from cehrgpt.models.tokenizer import decode_ids, encode_sequence, token_value_classes, vocabulary_token_kinds


def _allowed_tokens(tokenizer, prefix: list[str], context_window: int) -> set[str]:
    """The tokens the constraint lets through after ``prefix``."""
    kinds = vocabulary_token_kinds(tokenizer)
    processor = GrammarConstrainedLogitsProcessor(kinds, context_window)
    prompt = torch.tensor([encode_sequence(tokenizer, prefix[:4])])
    scores = torch.zeros(1, len(tokenizer))
    out = processor(prompt, scores)
    for token in prefix[4:]:  # replay the rest one token at a time, as generate does
        prompt = torch.cat([prompt, torch.tensor([encode_sequence(tokenizer, [token])])], dim=1)
        out = processor(prompt, scores)
    assert torch.equal(scores, torch.zeros(1, len(tokenizer)))  # the input is never changed in place
    return set(decode_ids(tokenizer, torch.nonzero(out[0] > -float("inf")).flatten().tolist()))


def _of_kind(tokenizer, *kinds: TokenKind) -> set[str]:
    k = vocabulary_token_kinds(tokenizer)
    return set(decode_ids(tokenizer, np.flatnonzero(np.isin(k, [int(x) for x in kinds])).tolist()))


PROMPT = ["year:2001", "age:12", "8532", "8527"]


def test_close_costs_with_every_kind_never_pass_through_death():
    costs = reachable_close_costs(grammar.transition_tables().next_state, {int(k) for k in TokenKind})
    assert costs[GrammarState.BETWEEN_VISITS] == 0
    assert costs[GrammarState.OUTPATIENT] == 1
    assert costs[GrammarState.INPATIENT] == 2  # discharge, [VE]
    assert costs[GrammarState.INPATIENT_AFTER_GAP] == 3
    assert costs[GrammarState.VISIT_OPENED] == 3  # visit type, concept, [VE] — not [DEATH] [VE]
    assert costs[GrammarState.BEFORE_VISIT] == 4
    assert costs[GrammarState.DEATH_OPENED] == 1
    assert costs[GrammarState.PROMPT_YEAR] == 8


def test_close_costs_follow_the_kinds_the_vocabulary_has():
    every_kind = {int(k) for k in TokenKind}
    next_state = grammar.transition_tables().next_state
    no_outpatient = reachable_close_costs(next_state, every_kind - {int(TokenKind.VISIT_TYPE)})
    assert no_outpatient[GrammarState.VISIT_OPENED] == 4  # inpatient type, concept, discharge, [VE]
    no_discharge = reachable_close_costs(next_state, every_kind - {int(TokenKind.DISCHARGE)})
    assert no_discharge[GrammarState.INPATIENT] == 1 << 30  # an inpatient visit can never close
    assert no_discharge[GrammarState.VISIT_OPENED] == 3


def test_after_prompt_only_a_visit_start(tokenizer):
    assert _allowed_tokens(tokenizer, PROMPT, 64) == {"[VS]"}


def test_after_visit_start_a_visit_type_or_death(tokenizer):
    expected = _of_kind(tokenizer, TokenKind.VISIT_TYPE, TokenKind.INPATIENT_VISIT_TYPE) | {"[DEATH]"}
    assert _allowed_tokens(tokenizer, [*PROMPT, "[VS]"], 64) == expected


def test_inside_outpatient_visit_concepts_or_close(tokenizer):
    concepts = _of_kind(tokenizer, TokenKind.CONCEPT)
    assert _allowed_tokens(tokenizer, [*PROMPT, "[VS]", "9202"], 64) == concepts
    assert _allowed_tokens(tokenizer, [*PROMPT, "[VS]", "9202", "380378"], 64) == concepts | {"[VE]"}


def test_inside_inpatient_visit_gaps_and_discharge(tokenizer):
    concepts = _of_kind(tokenizer, TokenKind.CONCEPT)
    inpatient = [*PROMPT, "[VS]", "9201", "380378"]
    expected = concepts | _of_kind(tokenizer, TokenKind.INPATIENT_GAP, TokenKind.DISCHARGE)
    assert _allowed_tokens(tokenizer, inpatient, 64) == expected
    assert _allowed_tokens(tokenizer, [*inpatient, "8536"], 64) == {"[VE]"}


def test_between_visits_a_gap_or_end(tokenizer):
    done = [*PROMPT, "[VS]", "9202", "380378", "[VE]"]
    assert _allowed_tokens(tokenizer, done, 64) == _of_kind(tokenizer, TokenKind.GAP) | {"[END]"}


def test_after_death_only_end(tokenizer):
    dead = [*PROMPT, "[VS]", "[DEATH]", "[VE]"]
    assert _allowed_tokens(tokenizer, dead, 64) == {"[END]"}


def test_window_forces_the_visit_closed(tokenizer):
    # 8 tokens so far, window 9: the last token must close the visit
    assert _allowed_tokens(tokenizer, [*PROMPT, "[VS]", "9202", "380378", "380378"], 9) == {"[VE]"}
    # an inpatient visit needs a discharge then [VE]: with 2 left, only the discharge fits
    assert _allowed_tokens(tokenizer, [*PROMPT, "[VS]", "9201", "380378"], 9) == _of_kind(
        tokenizer, TokenKind.DISCHARGE
    )


def test_no_visit_opened_without_room_to_close_it_and_no_death_invented(tokenizer):
    done = [*PROMPT, "[VS]", "9202", "380378", "[VE]"]
    # 8 tokens so far: a gap needs [VS] type concept [VE] after it, so with fewer than 5 left only [END]
    assert _allowed_tokens(tokenizer, done, 12) == {"[END]"}
    assert _allowed_tokens(tokenizer, done, 13) == _of_kind(tokenizer, TokenKind.GAP) | {"[END]"}
    # [VS] opens only when a whole ordinary visit fits after it (never a death for want of room)
    assert _allowed_tokens(tokenizer, [*done, "D0"], 13) == {"[VS]"}


def test_minimum_context_window(tokenizer):
    assert minimum_context_window(vocabulary_token_kinds(tokenizer)) == 8


@pytest.mark.parametrize(
    ("kinds", "window", "message"),
    [
        (np.zeros((2, 2), dtype=np.int64), 16, "1-D integer array"),
        (np.array([0.5, 1.0]), 16, "1-D integer array"),
        (np.array([0, 99]), 16, "TokenKind values"),
        (np.array([0, 3, 4, 5, 11]), 16, "cannot spell one whole visit"),
    ],
)
def test_processor_rejects_bad_inputs(kinds, window, message):
    with pytest.raises(ValueError, match=message):
        GrammarConstrainedLogitsProcessor(kinds, window)


def test_processor_rejects_too_small_window(tokenizer):
    with pytest.raises(ValueError, match=r"context_window 7 is too small .* expected at least 8"):
        GrammarConstrainedLogitsProcessor(vocabulary_token_kinds(tokenizer), 7)


def _generate(tokenizer, model, context_window, batch_size, count, seed, constrained=True, sampling=None):
    kinds = vocabulary_token_kinds(tokenizer)
    constraint = GrammarConstrainedLogitsProcessor(kinds, context_window) if constrained else None
    processors = build_logits_processors(sampling or SamplingConfig(), constraint, kinds)
    prompts = torch.tensor([encode_sequence(tokenizer, p) for p in (q.split()[:4] for q in PATIENTS)])
    rng = np.random.default_rng(seed)
    decoder = ContinuousBatchDecoder(
        model,
        processors,
        context_window,
        tokenizer.convert_tokens_to_ids(grammar.END),
        batch_size,
        torch.Generator().manual_seed(seed),
    )
    result = decoder.run(count, lambda k: prompts[rng.integers(0, len(prompts), k)])
    return [decode_ids(tokenizer, s) for s in result.sequences]


@pytest.mark.parametrize(
    ("context_window", "batch_size", "seed", "sampling"),
    [
        (8, 5, 0, None),
        (9, 3, 1, SamplingConfig(temperature=1.7)),
        (13, 7, 2, SamplingConfig(sampling_strategy="TopKStrategy", top_k=5)),
        (
            31,
            16,
            3,
            SamplingConfig(sampling_strategy="TopMixStrategy", top_p=0.9, top_k=20, repetition_penalty=1.3),
        ),
        (64, 11, 4, SamplingConfig(top_p=0.8, epsilon_cutoff=0.01)),
    ],
)
def test_untrained_model_yields_only_valid_patients(tokenizer, context_window, batch_size, seed, sampling):
    model = tiny_model(len(tokenizer), n_positions=64, seed=seed)
    sequences = _generate(tokenizer, model, context_window, batch_size, 80, seed, sampling=sampling)
    assert len(sequences) == 80
    assert [grammar.first_violation(s) for s in sequences] == [None] * 80
    assert max(len(s) for s in sequences) <= context_window


def test_without_constraint_a_random_model_breaks_the_grammar(tokenizer):
    model = tiny_model(len(tokenizer), n_positions=64, seed=0)
    sequences = _generate(tokenizer, model, 31, 8, 40, 0, constrained=False)
    assert sum(grammar.is_valid(s) for s in sequences) < 40


def test_one_processor_serves_successive_generate_calls(tokenizer):
    model = tiny_model(len(tokenizer), n_positions=64, seed=5)
    constraint = GrammarConstrainedLogitsProcessor(vocabulary_token_kinds(tokenizer), 20)
    prompts = torch.tensor([encode_sequence(tokenizer, p.split()[:4]) for p in PATIENTS])
    end, pad = tokenizer.convert_tokens_to_ids(grammar.END), tokenizer.convert_tokens_to_ids(grammar.PAD)
    torch.manual_seed(0)
    for _ in range(3):
        out = model.generate(
            input_ids=prompts,
            attention_mask=torch.ones_like(prompts),
            do_sample=True,
            max_length=20,
            eos_token_id=end,
            pad_token_id=pad,
            logits_processor=LogitsProcessorList([constraint]),
        )
        for row in out.tolist():
            tokens = decode_ids(tokenizer, row[: row.index(end) + 1] if end in row else row)
            assert grammar.first_violation(tokens) is None


def _allowed_with_values(tokenizer, prefix: list[str], context_window: int = 64) -> set[str]:
    kinds, classes = vocabulary_token_kinds(tokenizer), token_value_classes(tokenizer)
    processor = GrammarConstrainedLogitsProcessor(kinds, context_window, classes)
    ids = torch.tensor([encode_sequence(tokenizer, prefix)])
    out = processor(ids[:, :4], torch.zeros(1, len(tokenizer)))
    for width in range(5, ids.shape[1] + 1):
        out = processor(ids[:, :width], torch.zeros(1, len(tokenizer)))
    return set(decode_ids(tokenizer, torch.nonzero(out[0] > -float("inf")).flatten().tolist()))


def test_a_value_follows_only_a_concept_that_takes_its_class(valued_tokenizer):
    tok = valued_tokenizer
    concepts = _of_kind(tok, TokenKind.CONCEPT)
    numbers, durations, categories = {"v:1", "v:2", "v:3"}, {"dur:7", "dur:30"}, {"vc:4181412"}
    assert _of_kind(tok, TokenKind.VALUE) == numbers | durations | categories
    outpatient = [*PROMPT, "[VS]", "9202"]
    assert _allowed_with_values(tok, [*outpatient, "3004249"]) == concepts | {"[VE]"} | numbers
    assert _allowed_with_values(tok, [*outpatient, "1112807"]) == concepts | {"[VE]"} | durations
    assert _allowed_with_values(tok, [*outpatient, "380378"]) == concepts | {"[VE]"}
    assert _allowed_with_values(tok, [*outpatient, "3004249", "v:2"]) == concepts | {"[VE]"}
    inpatient = [*PROMPT, "[VS]", "9201", "4013886"]
    closing = _of_kind(tok, TokenKind.INPATIENT_GAP, TokenKind.DISCHARGE)
    assert _allowed_with_values(tok, inpatient) == concepts | closing | categories
    assert _allowed_with_values(tok, [*inpatient, "vc:4181412"]) == concepts | closing
    # without the vocabulary's value classes no value token is ever let out
    assert _allowed_tokens(tok, [*outpatient, "3004249"], 64) == concepts | {"[VE]"}


def test_value_classes_must_match_the_vocabulary():
    with pytest.raises(ValueError, match=r"value_classes has shape \(3,\), expected \(6,\)"):
        GrammarConstrainedLogitsProcessor(np.array([0, 3, 4, 5, 11, 16]), 16, np.zeros(3, dtype=np.int64))


def test_untrained_model_emits_values_only_where_they_fit(valued_tokenizer):
    tok = valued_tokenizer
    kinds, classes = vocabulary_token_kinds(tok), token_value_classes(tok)
    model = tiny_model(len(tok), n_positions=64, seed=7)
    constraint = GrammarConstrainedLogitsProcessor(kinds, 48, classes)
    processors = build_logits_processors(SamplingConfig(), constraint, kinds)
    prompts = torch.tensor([encode_sequence(tok, p.split()[:4]) for p in PATIENTS])
    rng = np.random.default_rng(7)
    decoder = ContinuousBatchDecoder(
        model, processors, 48, tok.convert_tokens_to_ids(grammar.END), 9, torch.Generator().manual_seed(7)
    )
    result = decoder.run(120, lambda k: prompts[rng.integers(0, len(prompts), k)])
    ids = [list(s) for s in result.sequences]
    assert [grammar.first_violation(decode_ids(tok, s)) for s in ids] == [None] * 120
    values = [(s[i - 1], t) for s in ids for i, t in enumerate(s) if kinds[t] == TokenKind.VALUE]
    assert len(values) > 20  # a random model tries values wherever it may
    assert all(classes[concept] & classes[value] for concept, value in values)
