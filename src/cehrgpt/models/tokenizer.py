"""The CEHR-GPT tokenizer: a word-level vocabulary over sequence tokens, with per-token metadata.

The tokenizer is a plain Hugging Face ``tokenizers`` WordLevel model (whitespace
split, unknown token ``[OOV]``) wrapped in a fast tokenizer, so
``transformers.AutoTokenizer.from_pretrained(folder)`` loads it with no custom
code. Beside it, ``token_metadata.json`` records for every token its
:class:`~cehrgpt.grammar.TokenKind` and OMOP concept id, and for a clinical concept the
:class:`~cehrgpt.grammar.ValueClass` mask of the values it was seen with in training
(``value_classes``): the constrained decoder masks by kind and lets a value token follow
only a concept that takes its class; the OMOP restore maps concepts back. The same metadata also
rides in the tokenizer's init kwargs, so a plain ``save_pretrained`` keeps it.

Privacy by construction: a clinical concept seen in fewer than
``min_concept_patients`` distinct training patients (default
:data:`DEFAULT_MIN_CONCEPT_PATIENTS`, the usual small-cell suppression threshold)
is left out of the vocabulary, so the model can never emit it; so is a categorical
value token (``vc:<concept id>``) seen in fewer patients.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from cehrgpt import grammar
from cehrgpt.grammar import TokenKind, ValueClass

METADATA_FILE = "token_metadata.json"
METADATA_FORMAT = "cehrgpt-token-metadata/1"
DEFAULT_MIN_CONCEPT_PATIENTS = 10  # small cells suppressed by default; 1 keeps every concept
_METADATA_KWARG = "token_metadata"

# Spellings the generator may need to open or close a visit even when training data never used them.
_ALWAYS_KEPT = {
    grammar.UNKNOWN_GENDER: TokenKind.GENDER,
    grammar.UNKNOWN_RACE: TokenKind.RACE,
    grammar.UNKNOWN_VISIT: TokenKind.VISIT_TYPE,
    grammar.UNKNOWN_DISCHARGE: TokenKind.DISCHARGE,
}


class TokenizerError(ValueError):
    """A tokenizer folder or its metadata is missing or malformed."""


def build_tokenizer(
    sequences: Iterable[Sequence[str]], min_concept_patients: int = DEFAULT_MIN_CONCEPT_PATIENTS
) -> tuple[PreTrainedTokenizerBase, dict]:
    """Build the word-level tokenizer from training sequences (one token list per patient).

    Args:
        sequences: The training patients' token lists (the ``concept_ids`` column).
        min_concept_patients: A clinical concept (kind CONCEPT) seen in fewer distinct
            patients than this is left out (default 10; 1 keeps them all); every other token is
            always kept.

    Returns:
        The tokenizer (specials first, ids 0..6 in ``grammar.SPECIAL_TOKENS`` order, then
        tokens by descending frequency, ties by spelling) and counts describing the build.

    Raises:
        ValueError: ``min_concept_patients`` is below 1.
    """
    if min_concept_patients < 1:
        raise ValueError(f"min_concept_patients must be >= 1, got {min_concept_patients}")
    roles = count_token_roles(sequences)
    occurrences, patients = roles.occurrences, roles.patients
    num_patients = roles.num_patients

    kinds: dict[str, TokenKind] = {}
    unrecognised = rare = concepts_seen = rare_values = 0
    for token in occurrences:
        kind = roles.kind_of(token)
        if kind == TokenKind.OOV:
            unrecognised += int(token != grammar.OOV)
            continue
        if kind == TokenKind.CONCEPT:
            concepts_seen += 1
            if patients[token] < min_concept_patients:
                rare += 1
                continue
        if grammar.value_class(token) == ValueClass.CATEGORY and patients[token] < min_concept_patients:
            rare_values += 1
            continue
        kinds[token] = kind
    for token, kind in _ALWAYS_KEPT.items():
        kinds.setdefault(token, kind)
    for token in grammar.SPECIAL_TOKENS:
        kinds[token] = grammar.syntactic_kind(token)  # type: ignore[assignment]

    ordinary = sorted(
        (t for t in kinds if t not in grammar.SPECIAL_TOKENS), key=lambda t: (-occurrences[t], t)
    )
    vocab = {token: i for i, token in enumerate([*grammar.SPECIAL_TOKENS, *ordinary])}
    stats = {
        "num_patients": num_patients,
        "num_tokens": sum(occurrences.values()),
        "vocab_size": len(vocab),
        "min_concept_patients": min_concept_patients,
        "concepts_seen": concepts_seen,
        "concepts_kept": concepts_seen - rare,
        "concepts_left_out_rare": rare,
        "categorical_values_left_out_rare": rare_values,
        "concepts_taking_values": sum(
            1 for t, c in roles.value_classes.items() if c and kinds.get(t) == TokenKind.CONCEPT
        ),
        "unrecognised_tokens_left_out": unrecognised,
        "tokens_by_kind": dict(sorted(Counter(k.name for k in kinds.values()).items())),
    }
    return tokenizer_from_vocabulary(vocab, kinds, min_concept_patients, roles.value_classes), stats


def tokenizer_from_vocabulary(
    vocab: dict[str, int],
    kinds: dict[str, TokenKind],
    min_concept_patients: int | None,
    value_classes: dict[str, ValueClass] | None = None,
) -> PreTrainedTokenizerBase:
    """The word-level tokenizer over ``vocab`` (token -> id) carrying each token's kind and concept id, and
    each clinical concept's value classes (those it takes no value; ``value_classes`` absent: none do).

    ``min_concept_patients`` is recorded as built with (None: the vocabulary came from elsewhere).
    """
    value_classes = value_classes or {}
    tokens: dict[str, dict] = {}
    for token in vocab:
        entry: dict = {"kind": kinds[token].name, "concept_id": grammar.concept_id_of(token)}
        if kinds[token] == TokenKind.CONCEPT and value_classes.get(token):
            entry["value_classes"] = int(value_classes[token])
        tokens[token] = entry
    metadata = {"format": METADATA_FORMAT, "min_concept_patients": min_concept_patients, "tokens": tokens}
    return _wrap(vocab, metadata)


@dataclass
class TokenRoles:
    """Where tokens appear in real sequences: what the tokenizer builder and the model converter read roles from.

    A concept-like token (a bare concept id, ``Gender/0``...) has no kind of its own: it is a gender, race,
    visit type, discharge or clinical concept by where it stands, so each occurrence votes for a kind and
    the most frequent one wins.
    """

    occurrences: Counter[str] = field(default_factory=Counter)
    patients: Counter[str] = field(default_factory=Counter)
    kind_votes: dict[str, Counter[TokenKind]] = field(default_factory=dict)
    value_classes: dict[str, ValueClass] = field(
        default_factory=dict
    )  # clinical concept -> values seen after it
    num_patients: int = 0

    def kind_of(self, token: str) -> TokenKind:
        """The token's kind: fixed by its spelling, else its most frequent role, else :func:`default_kind`."""
        votes = self.kind_votes.get(token)
        if grammar.syntactic_kind(token) is None and votes:
            return _most_frequent_kind(votes)
        return default_kind(token)

    def role_defaulted(self, token: str) -> bool:
        """True for a concept-like token never seen in the sequences (its kind is the default)."""
        return grammar.syntactic_kind(token) is None and not self.kind_votes.get(token)


def count_token_roles(sequences: Iterable[Sequence[str]]) -> TokenRoles:
    """Count, over patients' token lists, each token's occurrences, patients and positional kinds."""
    roles = TokenRoles()
    for tokens in sequences:
        roles.num_patients += 1
        tokens = list(tokens)
        roles.occurrences.update(tokens)
        roles.patients.update(set(tokens))
        kinds = grammar.assign_kinds(tokens)
        for i, (token, kind) in enumerate(zip(tokens, kinds, strict=True)):
            if grammar.syntactic_kind(token) is None:
                roles.kind_votes.setdefault(token, Counter())[kind] += 1
            elif kind == TokenKind.VALUE and i > 0 and kinds[i - 1] == TokenKind.CONCEPT:
                concept = tokens[i - 1]
                roles.value_classes[concept] = roles.value_classes.get(concept, ValueClass.NONE) | (
                    grammar.value_class(token)
                )
    return roles


def default_kind(token: str) -> TokenKind:
    """The kind of a vocabulary token never seen in sequences: its fixed kind, an always-kept unknown
    spelling's kind, else a clinical concept."""
    fixed = grammar.syntactic_kind(token)
    if fixed is not None:
        return fixed
    return _ALWAYS_KEPT.get(token, TokenKind.CONCEPT)


def _most_frequent_kind(votes: Counter[TokenKind]) -> TokenKind:
    """The kind a positional token takes most often; ties go to the lower kind value (stable)."""
    return min(votes, key=lambda kind: (-votes[kind], kind.value))


def _wrap(vocab: dict[str, int], metadata: dict) -> PreTrainedTokenizerBase:
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=grammar.OOV))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # only specials the vocabulary holds: naming an absent one would add it as a new token (a converted
    # original vocabulary need not hold [START])
    specials = {
        "unk_token": grammar.OOV,
        "pad_token": grammar.PAD,
        "eos_token": grammar.END,
        "bos_token": grammar.START,
    }
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        **{name: token for name, token in specials.items() if token in vocab},
        **{_METADATA_KWARG: metadata},
    )


def token_metadata(tokenizer: PreTrainedTokenizerBase) -> dict:
    """The metadata a tokenizer carries (built here, or loaded with :func:`load_tokenizer`)."""
    metadata = tokenizer.init_kwargs.get(_METADATA_KWARG)
    if not isinstance(metadata, dict) or metadata.get("format") != METADATA_FORMAT:
        raise TokenizerError(
            f"tokenizer {tokenizer.name_or_path!r} carries no CEHR-GPT token metadata "
            f"(expected {METADATA_FILE} in its folder)"
        )
    return metadata


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, folder: str | os.PathLike) -> None:
    """Write the Hugging Face tokenizer files and ``token_metadata.json`` into ``folder``."""
    folder = Path(folder)
    metadata = token_metadata(tokenizer)
    tokenizer.save_pretrained(folder)
    tmp = folder / f".{METADATA_FILE}.tmp"
    tmp.write_text(json.dumps(metadata, indent=1))
    tmp.replace(folder / METADATA_FILE)


def load_tokenizer(folder: str | os.PathLike) -> PreTrainedTokenizerBase:
    """Load a tokenizer folder with ``AutoTokenizer``; ``token_metadata.json`` wins over the config copy.

    Raises:
        TokenizerError: the folder holds no tokenizer, a tokenizer file that cannot be read (truncated,
            not JSON, not a tokenizer), or no token metadata.
    """
    folder = Path(folder)
    tokenizer_file = folder / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise TokenizerError(f"no tokenizer in {str(folder)!r}: expected tokenizer.json there")
    for path in (tokenizer_file, folder / "tokenizer_config.json"):
        json_problem = _json_file_problem(path)
        if json_problem:
            raise TokenizerError(f"{str(path)!r} is not a readable tokenizer file ({json_problem})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as exc:  # transformers and tokenizers raise KeyError, ValueError or a bare Exception
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise TokenizerError(
            f"{str(tokenizer_file)!r} is not a readable tokenizer file ({type(exc).__name__}: {first})"
        ) from exc
    metadata_path = folder / METADATA_FILE
    if metadata_path.is_file():
        try:
            tokenizer.init_kwargs[_METADATA_KWARG] = json.loads(metadata_path.read_text())
        except json.JSONDecodeError as exc:
            raise TokenizerError(f"{str(metadata_path)!r} is not valid JSON: {exc}") from exc
    token_metadata(tokenizer)
    return tokenizer


def _json_file_problem(path: Path) -> str | None:
    """Why a JSON file that is present cannot be parsed (a truncated copy, say), or None."""
    if not path.is_file():
        return None
    try:
        json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return f"not valid JSON: {exc}"
    except OSError as exc:
        return f"cannot be read: {exc.strerror}"
    return None


def _as_tokenizer(
    folder_or_tokenizer: str | os.PathLike | PreTrainedTokenizerBase,
) -> PreTrainedTokenizerBase:
    if isinstance(folder_or_tokenizer, PreTrainedTokenizerBase):
        return folder_or_tokenizer
    return load_tokenizer(folder_or_tokenizer)


def _tokens_by_id(tokenizer: PreTrainedTokenizerBase) -> list[str | None]:
    vocab = tokenizer.get_vocab()
    by_id: list[str | None] = [None] * len(tokenizer)
    for token, i in vocab.items():
        by_id[i] = token
    return by_id


def vocabulary_token_kinds(folder_or_tokenizer: str | os.PathLike | PreTrainedTokenizerBase) -> np.ndarray:
    """The :class:`TokenKind` value of every token id (int64, length = vocabulary size; unknown → OOV)."""
    tokenizer = _as_tokenizer(folder_or_tokenizer)
    entries = token_metadata(tokenizer)["tokens"]
    kinds = np.full(len(tokenizer), TokenKind.OOV, dtype=np.int64)
    for i, token in enumerate(_tokens_by_id(tokenizer)):
        if token in entries:
            kinds[i] = TokenKind[entries[token]["kind"]]
    return kinds


def token_value_classes(folder_or_tokenizer: str | os.PathLike | PreTrainedTokenizerBase) -> np.ndarray:
    """Per token id (int64): for a value token its :class:`ValueClass`, for a clinical concept the mask of
    the classes it takes (0 when none, or when the metadata predates values), 0 for every other token."""
    tokenizer = _as_tokenizer(folder_or_tokenizer)
    entries = token_metadata(tokenizer)["tokens"]
    classes = np.zeros(len(tokenizer), dtype=np.int64)
    for i, token in enumerate(_tokens_by_id(tokenizer)):
        if token is None or token not in entries:
            continue
        if entries[token]["kind"] == TokenKind.VALUE.name:
            classes[i] = int(grammar.value_class(token))
        elif entries[token]["kind"] == TokenKind.CONCEPT.name:
            classes[i] = int(entries[token].get("value_classes", 0))
    return classes


def token_concept_ids(folder_or_tokenizer: str | os.PathLike | PreTrainedTokenizerBase) -> np.ndarray:
    """The OMOP concept id of every token id (int64; -1 where the token names no concept)."""
    tokenizer = _as_tokenizer(folder_or_tokenizer)
    entries = token_metadata(tokenizer)["tokens"]
    concept_ids = np.full(len(tokenizer), -1, dtype=np.int64)
    for i, token in enumerate(_tokens_by_id(tokenizer)):
        concept_id = entries.get(token, {}).get("concept_id") if token is not None else None
        if concept_id is not None:
            concept_ids[i] = concept_id
    return concept_ids


def encode_sequence(tokenizer: PreTrainedTokenizerBase, tokens: Sequence[str]) -> list[int]:
    """Token ids of a token list, one id per token; tokens outside the vocabulary become ``[OOV]``."""
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    return [ids] if isinstance(ids, int) else list(ids)


def decode_ids(tokenizer: PreTrainedTokenizerBase, ids: Iterable[int]) -> list[str]:
    """Tokens of a list of ids, one token per id; ids outside the vocabulary become ``[OOV]``."""
    ids = [int(i) for i in ids]
    size = len(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens([i if 0 <= i < size else 0 for i in ids])
    return [
        token if 0 <= i < size and token is not None else grammar.OOV
        for i, token in zip(ids, tokens, strict=True)
    ]
