"""Demographic prompts: the first 4 tokens of a patient (year, age, gender, race), drawn with a seed.

Two sources:

* ``data`` (the original package's behaviour): whole prompts of randomly drawn
  training patients.
* ``distribution``: year and age are drawn together from one training patient,
  gender and race together from *another*, so no generated patient starts from
  a real patient's full prompt. Privacy trade-off: this keeps the joint
  year-age distribution (hence birth years) and the joint gender-race
  distribution exactly, but breaks their correlation across the pairs, and
  a rare combination can still happen to coincide with a real patient's; a
  year-age pair alone is still a real patient's pair. It lowers, but does not
  remove, what a prompt reveals about one training patient.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cehrgpt import grammar

PROMPT_SOURCES = ("data", "distribution")


class PromptError(ValueError):
    """The demographic data cannot supply prompts."""


def _parquet_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*.parquet") if not p.name.startswith((".", "_")))
    raise PromptError(
        f"demographic data path {str(path)!r} does not exist; expected a parquet file or folder"
    )


def read_prompt_tokens(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """The first 4 tokens of every sequence in a patient-sequence parquet file or folder.

    Returns:
        An object array ``[rows, 4]`` of token strings, and how many rows were too short to hold a prompt.

    Raises:
        PromptError: the path is missing, holds no parquet, is unreadable, lacks ``concept_ids`` or has no rows.
    """
    path = Path(path)
    files = _parquet_files(path)
    if not files:
        raise PromptError(f"demographic data path {str(path)!r} holds no parquet files")
    chunks, short = [], 0
    for file in files:
        try:
            column = pq.read_table(file, columns=["concept_ids"]).column("concept_ids")
        except (pa.ArrowException, OSError, KeyError) as exc:
            raise PromptError(
                f"cannot read 'concept_ids' from demographic file {str(file)!r}: {str(exc).splitlines()[0]}"
            ) from exc
        column = column.combine_chunks() if column.num_chunks else pa.array([], pa.list_(pa.string()))
        long_enough = pc.fill_null(
            pc.greater_equal(pc.list_value_length(column), grammar.PROMPT_LENGTH), False
        )
        short += len(column) - pc.sum(long_enough).as_py() if len(column) else 0
        heads = pc.list_slice(column.filter(long_enough), 0, grammar.PROMPT_LENGTH)
        flat = pc.list_flatten(heads).to_numpy(zero_copy_only=False)
        chunks.append(flat.astype(object).reshape(-1, grammar.PROMPT_LENGTH))
    tokens = np.concatenate(chunks) if chunks else np.empty((0, grammar.PROMPT_LENGTH), dtype=object)
    if len(tokens) == 0:
        raise PromptError(
            f"demographic data {str(path)!r} holds no sequence with a {grammar.PROMPT_LENGTH}-token prompt"
        )
    return tokens, int(short)


def _is_valid_prompt(tokens) -> bool:
    violation = grammar.first_violation(list(tokens))
    return violation is None or violation[0] >= grammar.PROMPT_LENGTH


@dataclass
class PromptPool:
    """Prompts as token ids, ready to be drawn.

    Attributes:
        ids: ``[rows, 4]`` token ids of the usable prompts.
        source: ``data`` or ``distribution``.
        skipped: rows left out, by reason (``too_short``, ``malformed``, ``out_of_vocabulary``).
    """

    ids: np.ndarray
    source: str = "data"
    skipped: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.source not in PROMPT_SOURCES:
            raise PromptError(
                f"unknown prompt source {self.source!r}; expected one of {', '.join(PROMPT_SOURCES)}"
            )
        if len(self.ids) == 0:
            raise PromptError(f"no usable prompt: every row was skipped ({self.skipped})")
        if self.source == "distribution" and len(self.ids) < 2:
            raise PromptError("--prompt_source distribution needs at least 2 usable prompts to mix")

    def draw(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """``count`` prompts, ``[count, 4]`` int64."""
        first = rng.integers(0, len(self.ids), size=count)
        if self.source == "data":
            return self.ids[first]
        # gender and race from a different patient than year and age
        second = (first + rng.integers(1, len(self.ids), size=count)) % len(self.ids)
        return np.concatenate([self.ids[first, :2], self.ids[second, 2:]], axis=1)


def build_prompt_pool(
    tokens: np.ndarray, vocab: dict[str, int], source: str = "data", too_short: int = 0
) -> PromptPool:
    """Map prompt tokens to ids, leaving out malformed prompts and prompts with a token outside the vocabulary."""
    if len(tokens) == 0:
        return PromptPool(ids=np.empty((0, grammar.PROMPT_LENGTH), np.int64), source=source)
    checked: dict[tuple, bool] = {}  # training data repeats few distinct prompts: check each once
    for key in map(tuple, tokens):
        if key not in checked:
            checked[key] = _is_valid_prompt(key)
    valid = np.array([checked[key] for key in map(tuple, tokens)], dtype=bool)
    unique, inverse = np.unique(tokens.astype(str), return_inverse=True)
    unique_ids = np.array([vocab.get(t, -1) for t in unique], dtype=np.int64)
    ids = unique_ids[inverse.reshape(tokens.shape)]
    in_vocab = (ids >= 0).all(axis=1)
    skipped = {
        "too_short": int(too_short),
        "malformed": int((~valid).sum()),
        "out_of_vocabulary": int((valid & ~in_vocab).sum()),
    }
    return PromptPool(ids=ids[valid & in_vocab], source=source, skipped=skipped)
