"""Sampling settings and the one factory that turns them into logits processors and warpers.

The warpers are transformers' own; the repetition penalty is ours
(:class:`ConceptRepetitionPenaltyLogitsProcessor`): transformers' penalises every
token already in the history, which would push down ``[VS]``, ``[VE]``, gaps and
visit types, the tokens every patient repeats by design.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from transformers import (
    EpsilonLogitsWarper,
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from cehrgpt import grammar
from cehrgpt.generation.naming import (
    STRATEGIES,
    TOP_K_STRATEGY,
    TOP_P_STRATEGY,
    strategy_folder_name,
)
from cehrgpt.grammar import TokenKind


@dataclass(frozen=True)
class SamplingConfig:
    """How the next token is drawn; the seed command's sampling flags.

    TopKStrategy keeps the ``top_k`` most likely tokens (top_p forced to 1.0),
    TopPStrategy keeps the nucleus of mass ``top_p`` (no top-k), TopMixStrategy both.
    """

    sampling_strategy: str = TOP_P_STRATEGY
    top_p: float = 1.0
    top_k: int = 100
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    epsilon_cutoff: float = 0.0

    def __post_init__(self) -> None:
        if self.sampling_strategy not in STRATEGIES:
            raise ValueError(
                f"unknown sampling strategy {self.sampling_strategy!r}; expected one of {', '.join(STRATEGIES)}"
            )
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {self.top_k}")
        if not self.temperature > 0.0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if not self.repetition_penalty > 0.0:
            raise ValueError(f"repetition_penalty must be positive, got {self.repetition_penalty}")
        if not 0.0 <= self.epsilon_cutoff < 1.0:
            raise ValueError(f"epsilon_cutoff must be in [0, 1), got {self.epsilon_cutoff}")

    @property
    def effective_top_p(self) -> float:
        return 1.0 if self.sampling_strategy == TOP_K_STRATEGY else self.top_p

    @property
    def effective_top_k(self) -> int | None:
        return None if self.sampling_strategy == TOP_P_STRATEGY else self.top_k

    @property
    def folder_name(self) -> str:
        return strategy_folder_name(**asdict(self))


class ConceptRepetitionPenaltyLogitsProcessor(LogitsProcessor):
    """The CTRL repetition penalty (as transformers applies it), on clinical concept tokens only.

    A token id of kind CONCEPT that the row has already generated after its prompt has its
    score divided by ``penalty`` (multiplied when negative). Every other token, ``[VS]``,
    ``[VE]``, gaps, visit types, discharges, specials, is left as it is, and the prompt's
    tokens are not counted as repeats. The history may be left-padded with the ``[PAD]`` id
    (the id of kind PAD); pads are not counted as prompt tokens.

    Args:
        penalty: above 1 discourages repeats, below 1 encourages them.
        token_kinds: the :class:`~cehrgpt.grammar.TokenKind` of every token id, shape ``[vocab_size]``.
        prompt_length: tokens at the start of each row that are the prompt.
    """

    def __init__(self, penalty: float, token_kinds: np.ndarray, prompt_length: int = grammar.PROMPT_LENGTH):
        if not penalty > 0.0:
            raise ValueError(f"repetition_penalty must be positive, got {penalty}")
        kinds = np.asarray(token_kinds)
        self.penalty = float(penalty)
        self.prompt_length = prompt_length
        self._concept = torch.from_numpy(kinds == TokenKind.CONCEPT)
        self._mask: torch.Tensor | None = None
        pads = np.flatnonzero(kinds == TokenKind.PAD)
        self.pad_token_id = int(pads[0]) if len(pads) else None

    def _concept_mask(self, vocab: int, device: torch.device) -> torch.Tensor:
        """The concept mask sized to the scores' width, on their device (built once per width/device)."""
        if self._mask is None or self._mask.shape[0] != vocab or self._mask.device != device:
            mask = torch.zeros(vocab, dtype=torch.bool)
            known = min(vocab, len(self._concept))
            mask[:known] = self._concept[:known]
            self._mask = mask.to(device)
        return self._mask

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        vocab = scores.shape[-1]
        concept = self._concept_mask(vocab, scores.device)
        in_range = (input_ids >= 0) & (input_ids < vocab)
        ids = input_ids.clamp(0, vocab - 1)
        real = in_range if self.pad_token_id is None else in_range & (input_ids != self.pad_token_id)
        after_prompt = real.long().cumsum(dim=1) > self.prompt_length
        counted = (real & after_prompt & concept[ids]).long()
        seen = (
            torch.zeros(scores.shape, dtype=torch.long, device=scores.device).scatter_add_(1, ids, counted)
            > 0
        )
        penalised = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return torch.where(seen, penalised, scores)  # type: ignore[return-value]


def build_logits_processors(
    config: SamplingConfig,
    constraint: LogitsProcessor | None = None,
    token_kinds: np.ndarray | None = None,
) -> LogitsProcessorList:
    """The processors in the order ``model.generate`` applies them: penalty, constraint, then the warpers.

    The grammar constraint comes before the warpers so that top-p and top-k
    renormalise over the allowed tokens only. ``token_kinds`` (per vocabulary id) tells
    the repetition penalty which tokens are concepts; it is needed when the penalty is not 1.
    """
    processors = LogitsProcessorList()
    if config.repetition_penalty != 1.0:
        if token_kinds is None:
            raise ValueError("a repetition penalty other than 1 needs the vocabulary's token kinds")
        processors.append(ConceptRepetitionPenaltyLogitsProcessor(config.repetition_penalty, token_kinds))
    if constraint is not None:
        processors.append(constraint)
    if config.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(config.temperature))
    if config.effective_top_k is not None:
        processors.append(TopKLogitsWarper(top_k=config.effective_top_k))
    if config.effective_top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p=config.effective_top_p))
    if config.epsilon_cutoff > 0.0:
        processors.append(EpsilonLogitsWarper(epsilon=config.epsilon_cutoff))
    return processors


def sample_next_tokens(scores: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token per row from processed scores, drawn with ``generator`` (same seed, same tokens)."""
    probs = torch.softmax(scores.float(), dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
