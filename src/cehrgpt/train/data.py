"""Training data: read patient sequences, cut them into model windows, batch them.

Windowing (the pure core): a history that fits the context window together
with ``[END]`` is used whole with ``[END]`` appended; a longer one becomes the
4-token demographic prompt followed by a contiguous slice of the history, so
every window starts like a real patient. The slice starts at a ``[VS]`` chosen
with a seeded generator (any position when no ``[VS]`` leaves a full slice), so
the window reads prompt, visit, gap, visit ... exactly as the grammar allows
after a prompt.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cehrgpt import grammar

TOKENS_COLUMN = "concept_ids"
SPLITS = ("train", "test")
IGNORE_INDEX = -100  # label value the loss skips (padding)


class DataFolderError(ValueError):
    """The patient-sequence folder is missing, empty or not in the expected format."""


# --- reading ---------------------------------------------------------------------------------------------------


def read_split(data_folder: str | os.PathLike, split: str) -> list[list[str]]:
    """The token lists of one split (``train`` or ``test``) of a patient-sequence folder.

    Raises:
        DataFolderError: the split folder is missing, holds no parquet, has no ``concept_ids``
            list-of-strings column, or holds no patients.
    """
    folder = Path(data_folder) / split
    expected = f"expected the ETL's patient_sequence folder with {'/ and '.join(SPLITS)}/ parquet"
    if not Path(data_folder).is_dir():
        raise DataFolderError(f"data folder {str(data_folder)!r} does not exist: {expected}")
    files = (
        sorted(p for p in folder.glob("*.parquet") if not p.name.startswith(("_", ".")))
        if folder.is_dir()
        else []
    )
    if not files:
        raise DataFolderError(f"no parquet files in {str(folder)!r}: {expected}")
    try:
        schema = pq.read_schema(files[0])
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataFolderError(f"{str(files[0])!r} is not a readable parquet file: {exc}") from exc
    if TOKENS_COLUMN not in schema.names:
        raise DataFolderError(
            f"{str(folder)!r} has no {TOKENS_COLUMN!r} column (columns: {', '.join(schema.names)}): "
            "expected the patient-sequence format"
        )
    column_type = schema.field(TOKENS_COLUMN).type
    if not (pa.types.is_list(column_type) or pa.types.is_large_list(column_type)) or not (
        pa.types.is_string(column_type.value_type) or pa.types.is_large_string(column_type.value_type)
    ):
        raise DataFolderError(
            f"column {TOKENS_COLUMN!r} in {str(folder)!r} has type {column_type}: expected list<string>"
        )
    sequences: list[list[str]] = []
    for path in files:
        column = pq.read_table(path, columns=[TOKENS_COLUMN]).column(TOKENS_COLUMN)
        sequences.extend(tokens for tokens in column.to_pylist() if tokens)
    if not sequences:
        raise DataFolderError(f"{str(folder)!r} holds no patients: expected at least one non-empty sequence")
    return sequences


def encode_all(sequences: Sequence[Sequence[str]], vocab: dict[str, int], oov_id: int) -> list[np.ndarray]:
    """Token lists as int32 id arrays (a dictionary lookup; unknown tokens become ``oov_id``)."""
    get = vocab.get
    return [
        np.fromiter((get(t, oov_id) for t in tokens), dtype=np.int32, count=len(tokens))
        for tokens in sequences
    ]


# --- windowing (pure) --------------------------------------------------------------------------------------------


def window_length(num_tokens: int, context_window: int, has_end: bool) -> int:
    """Length of the window cut from a history of ``num_tokens`` tokens."""
    return min(num_tokens + (0 if has_end else 1), context_window)


def cut_window(
    ids: np.ndarray, context_window: int, end_id: int, visit_start_id: int, rng: np.random.Generator
) -> np.ndarray:
    """One training window of a patient's ids (see the module docstring).

    Args:
        ids: The patient's token ids, prompt first.
        context_window: Longest window, the prompt included.
        end_id: Id of ``[END]``, appended when the whole history fits.
        visit_start_id: Id of ``[VS]``; long histories are sliced from one.
        rng: Chooses the slice start of a long history.
    """
    if len(ids) and ids[-1] == end_id:
        ids = ids[:-1]
    if len(ids) + 1 <= context_window:
        return np.append(ids, np.int32(end_id)).astype(np.int32)
    prompt = grammar.PROMPT_LENGTH
    body = context_window - prompt
    last_start = len(ids) - body
    starts = np.flatnonzero(ids[prompt : last_start + 1] == visit_start_id) + prompt
    start = int(rng.choice(starts)) if len(starts) else int(rng.integers(prompt, last_start + 1))
    return np.concatenate([ids[:prompt], ids[start : start + body]]).astype(np.int32)


def whole_history(ids: np.ndarray, end_id: int) -> np.ndarray:
    """A patient's ids ending in exactly one ``[END]`` (the unigram baseline counts these)."""
    return ids if len(ids) and ids[-1] == end_id else np.append(ids, np.int32(end_id)).astype(np.int32)


class WindowDataset(Dataset):
    """Patients as training windows; the window of patient ``i`` in epoch ``e`` depends only on (seed, e, i)."""

    def __init__(
        self, patients: list[np.ndarray], context_window: int, end_id: int, visit_start_id: int, seed: int
    ):
        self.patients = patients
        self.context_window = context_window
        self.end_id = end_id
        self.visit_start_id = visit_start_id
        self.seed = seed
        self.epoch = 0
        self.lengths = np.array(
            [
                window_length(len(p) - int(len(p) > 0 and p[-1] == end_id), context_window, has_end=False)
                for p in patients
            ],
            dtype=np.int64,
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.patients)

    def __getitem__(self, index: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        return cut_window(self.patients[index], self.context_window, self.end_id, self.visit_start_id, rng)


class LengthGroupedSampler(Sampler[int]):
    """Shuffled indices, sorted by window length inside mega-batches so that batches pad little.

    The order depends only on (seed, epoch), so a resumed run sees the same batches.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, group_batches: int = 50):
        self.lengths = lengths
        self.mega = max(batch_size * group_batches, 1)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng((self.seed, self.epoch)).permutation(len(self.lengths))
        for begin in range(0, len(order), self.mega):
            group = order[begin : begin + self.mega]
            yield from group[np.argsort(-self.lengths[group], kind="stable")].tolist()


def collate_windows(windows: list[np.ndarray], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad windows to the longest; padding is masked out of attention and loss."""
    width = max(len(w) for w in windows)
    input_ids = torch.full((len(windows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(windows), width), dtype=torch.long)
    for row, window in enumerate(windows):
        input_ids[row, : len(window)] = torch.from_numpy(window.astype(np.int64))
        attention_mask[row, : len(window)] = 1
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def training_loader(
    patients: list[np.ndarray],
    vocab: dict[str, int],
    context_window: int,
    batch_size: int,
    seed: int,
    num_workers: int = 0,
) -> DataLoader:
    """The training batches: seeded windows of ``patients`` (encoded ids), length-grouped, right-padded."""
    dataset = WindowDataset(patients, context_window, vocab[grammar.END], vocab[grammar.VISIT_START], seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=LengthGroupedSampler(dataset.lengths, batch_size, seed),
        collate_fn=functools.partial(collate_windows, pad_id=vocab[grammar.PAD]),
        num_workers=num_workers,
        # its own generator: creating an epoch iterator must not draw from the global RNG (dropout),
        # or a resumed run would diverge from the uninterrupted one
        generator=torch.Generator().manual_seed(seed),
    )


def unigram_log_probs(windows: Sequence[np.ndarray], vocab_size: int) -> np.ndarray:
    """Add-one smoothed log-probabilities of each token id over the tokens a model predicts (all but the first)."""
    counts = np.ones(vocab_size, dtype=np.float64)
    for window in windows:
        np.add.at(counts, window[1:], 1)
    return np.log(counts / counts.sum())
