"""Sampling settings and the one factory that turns them into transformers' own processors and warpers."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from transformers import (
    EpsilonLogitsWarper,
    LogitsProcessor,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from cehrgpt.generation.naming import (
    STRATEGIES,
    TOP_K_STRATEGY,
    TOP_P_STRATEGY,
    strategy_folder_name,
)


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


def build_logits_processors(
    config: SamplingConfig, constraint: LogitsProcessor | None = None
) -> LogitsProcessorList:
    """The processors in the order ``model.generate`` applies them: penalty, constraint, then the warpers.

    The grammar constraint comes before the warpers so that top-p and top-k
    renormalise over the allowed tokens only.
    """
    processors = LogitsProcessorList()
    if config.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(penalty=config.repetition_penalty))
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
