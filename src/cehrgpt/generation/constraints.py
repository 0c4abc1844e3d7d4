"""Grammar-constrained decoding: a logits processor that only lets whole, parseable patients out.

The grammar (:mod:`cehrgpt.grammar`) is a small state machine over token kinds.
Each row of the batch carries its state; a token is allowed when the grammar
accepts its kind in that state *and* the sequence can still be closed within the
context window afterwards. That second condition forces the open visit shut
before the window ends, and since closing costs never pass through ``[DEATH]``,
a death is never invented for lack of room. A value token (kind VALUE) is allowed
only right after a clinical concept that takes its :class:`~cehrgpt.grammar.ValueClass`
(the tokenizer's ``value_classes``): the grammar says where a value may stand, the
vocabulary which concept takes which value.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import LogitsProcessor

from cehrgpt import grammar
from cehrgpt.grammar import GrammarState, TokenKind

_FORBIDDEN = 1 << 30


def reachable_close_costs(next_state: np.ndarray, kinds_present: set[int]) -> np.ndarray:
    """Fewest tokens from each state to a closed state using only kinds the vocabulary has, never [DEATH].

    Larger than with a full vocabulary (or unreachable, ``1 << 30``) when a kind on the
    cheapest path is missing. Never passing through [DEATH] is what keeps the decoder
    from inventing a death just because the context window runs short.
    """
    usable = sorted(kinds_present - {int(TokenKind.DEATH)})
    cost = np.full(next_state.shape[0], _FORBIDDEN, dtype=np.int64)
    for closed in grammar.CLOSED_STATES:
        cost[closed] = 0
    changed = True
    while changed:
        changed = False
        for state in range(next_state.shape[0]):
            for kind in usable:
                nxt = next_state[state, kind]
                if nxt >= 0 and cost[nxt] + 1 < cost[state]:
                    cost[state] = cost[nxt] + 1
                    changed = True
    return cost


def minimum_context_window(token_kinds: np.ndarray) -> int:
    """The shortest context window that fits a prompt plus one closed visit with this vocabulary."""
    tables = grammar.transition_tables()
    costs = reachable_close_costs(tables.next_state, {int(k) for k in np.unique(token_kinds)})
    return grammar.PROMPT_LENGTH + int(costs[GrammarState.BEFORE_VISIT])


class GrammarConstrainedLogitsProcessor(LogitsProcessor):
    """Masks every token the patient grammar forbids, or that would leave no room to close the sequence.

    Works inside ``model.generate(logits_processor=[...])`` (the state is read from
    the prompt on the first call and advanced by the last column afterwards) and in
    :mod:`cehrgpt.generation.engine`, which also calls :meth:`restart_rows` and
    :meth:`select_rows` as rows are replaced and dropped. Prompts must be the
    4-token demographic prompt (or a longer valid prefix).

    Args:
        token_kinds: the :class:`~cehrgpt.grammar.TokenKind` of every token id, shape ``[vocab_size]``.
        context_window: total sequence length allowed, prompt included.
        value_classes: per token id, a value token's :class:`~cehrgpt.grammar.ValueClass` and a clinical
            concept's mask of the classes it takes (:func:`cehrgpt.models.tokenizer.token_value_classes`);
            None: no concept takes a value, so no value token is ever allowed.
    """

    def __init__(
        self,
        token_kinds: np.ndarray | torch.Tensor,
        context_window: int,
        value_classes: np.ndarray | None = None,
    ):
        kinds = np.asarray(token_kinds.cpu() if isinstance(token_kinds, torch.Tensor) else token_kinds)
        if kinds.ndim != 1 or kinds.size == 0 or not np.issubdtype(kinds.dtype, np.integer):
            raise ValueError(
                f"token_kinds must be a non-empty 1-D integer array, got shape {kinds.shape} {kinds.dtype}"
            )
        if kinds.min() < 0 or kinds.max() >= len(TokenKind):
            raise ValueError(
                f"token_kinds holds {kinds.min()}..{kinds.max()}, expected TokenKind values 0..{len(TokenKind) - 1}"
            )
        tables = grammar.transition_tables()
        costs = reachable_close_costs(tables.next_state, {int(k) for k in np.unique(kinds)})
        if costs[GrammarState.BEFORE_VISIT] >= _FORBIDDEN:
            raise ValueError(
                "the vocabulary cannot spell one whole visit ([VS], a visit type, a concept, [VE])"
            )
        needed = grammar.PROMPT_LENGTH + int(costs[GrammarState.BEFORE_VISIT])
        if not isinstance(context_window, int) or context_window < needed:
            raise ValueError(
                f"context_window {context_window} is too small for a {grammar.PROMPT_LENGTH}-token prompt "
                f"plus one visit; expected at least {needed}"
            )
        self.context_window = context_window
        self.pad_token_id = (
            int(np.flatnonzero(kinds == TokenKind.PAD)[0]) if (kinds == TokenKind.PAD).any() else None
        )
        next_by_token = tables.next_state[:, kinds]  # [states, vocab]
        cost_by_token = np.where(next_by_token >= 0, costs[np.maximum(next_by_token, 0)], _FORBIDDEN)
        classes = (
            np.zeros(kinds.shape, dtype=np.int64) if value_classes is None else np.asarray(value_classes)
        )
        if classes.shape != kinds.shape:
            raise ValueError(
                f"value_classes has shape {classes.shape}, expected {kinds.shape} like token_kinds"
            )
        is_value = kinds == TokenKind.VALUE
        # a concept's accepted classes where its id is the last token; a value token's own class per column
        self._accepts = torch.from_numpy(np.where(kinds == TokenKind.CONCEPT, classes, 0).astype(np.int64))
        self._value_class = torch.from_numpy(np.where(is_value, classes, 0).astype(np.int64))
        self._is_value = torch.from_numpy(is_value)
        self._kinds = torch.from_numpy(kinds.astype(np.int64))
        self._next_by_token = torch.from_numpy(next_by_token)
        self._cost_by_token = torch.from_numpy(cost_by_token)
        self._next_state = torch.from_numpy(tables.next_state)
        self.state: torch.Tensor | None = None  # [batch] GrammarState per row
        self.length: torch.Tensor | None = None  # [batch] tokens so far per row
        self._fresh: torch.Tensor | None = None  # rows whose state already covers their last token
        self._last_width = -1
        # Under model.generate the input grows one column per call, so a call that does not is a new
        # generate call and the state is read afresh; the continuous-batching engine resizes the input
        # itself and says so here.
        self.follows_engine = False

    def _to(self, device: torch.device) -> None:
        if self._kinds.device != device:
            self._kinds = self._kinds.to(device)
            self._accepts = self._accepts.to(device)
            self._value_class = self._value_class.to(device)
            self._is_value = self._is_value.to(device)
            self._next_by_token = self._next_by_token.to(device)
            self._cost_by_token = self._cost_by_token.to(device)
            self._next_state = self._next_state.to(device)

    def prompt_states(self, prompt_ids: torch.Tensor) -> torch.Tensor:
        """The grammar state after each prompt row (positions 2 and 3 read as gender and race).

        Raises:
            ValueError: when a prompt row is not a valid start of a patient.
        """
        self._to(prompt_ids.device)
        kinds = self._kinds[prompt_ids]
        if kinds.shape[1] > 2:
            kinds[:, 2] = TokenKind.GENDER
        if kinds.shape[1] > 3:
            kinds[:, 3] = TokenKind.RACE
        state = torch.full((prompt_ids.shape[0],), int(GrammarState.PROMPT_YEAR), device=prompt_ids.device)
        for column in range(kinds.shape[1]):
            state = self._next_state[state.clamp(min=0), kinds[:, column]].where(state >= 0, state)
        if (state < 0).any():
            bad = int(torch.nonzero(state < 0)[0, 0])
            raise ValueError(f"prompt row {bad} {prompt_ids[bad].tolist()} is not a valid patient start")
        return state

    def restart_rows(self, rows: torch.Tensor, prompt_ids: torch.Tensor) -> None:
        """Start ``rows`` afresh from new prompts (continuous batching)."""
        assert self.state is not None and self.length is not None and self._fresh is not None
        self.state = self.state.index_put((rows,), self.prompt_states(prompt_ids))
        self.length = self.length.index_put((rows,), torch.full_like(rows, prompt_ids.shape[1]))
        self._fresh = self._fresh.index_put((rows,), torch.ones_like(rows, dtype=torch.bool))

    def select_rows(self, keep: torch.Tensor) -> None:
        """Keep only the rows ``keep`` (finished rows leave the batch)."""
        assert self.state is not None and self.length is not None and self._fresh is not None
        self.state, self.length, self._fresh = self.state[keep], self.length[keep], self._fresh[keep]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._to(scores.device)
        new_generate_call = not self.follows_engine and input_ids.shape[1] != self._last_width + 1
        self._last_width = input_ids.shape[1]
        if self.state is None or self.state.shape[0] != input_ids.shape[0] or new_generate_call:
            self.state = self.prompt_states(input_ids)
            self.length = torch.full_like(self.state, input_ids.shape[1])
            self._fresh = torch.ones_like(self.state, dtype=torch.bool)
        assert self.length is not None and self._fresh is not None
        stale = ~self._fresh
        advanced = self._next_by_token[self.state, input_ids[:, -1]]
        self.state = torch.where(stale, advanced.clamp(min=0), self.state)
        self.length = self.length + stale.long()
        self._fresh = torch.zeros_like(self._fresh)
        room_after = (self.context_window - self.length - 1).unsqueeze(1)
        allowed = self._cost_by_token[self.state] <= room_after
        # the grammar admits VALUE only right after a concept: keep the values that concept takes
        takes = (self._accepts[input_ids[:, -1]].unsqueeze(1) & self._value_class.unsqueeze(0)) != 0
        allowed &= ~self._is_value.unsqueeze(0) | takes
        if self.pad_token_id is not None:
            stuck = ~allowed.any(dim=1)
            allowed[:, self.pad_token_id] |= stuck
        return scores.masked_fill(~allowed, -float("inf"))  # type: ignore[return-value]
