"""A trained model's loss on each patient: what model memorisation measures, shared by the trainer's summary
and :mod:`cehrgpt.analysis.privacy.model_memorization`.

Each patient is scored on one window (:func:`first_window`): the whole history
with ``[END]`` when it fits the context window — the window training cuts —,
otherwise the prompt and the history's first ``context_window − 4`` tokens
(training's window when its seeded slice starts at the first visit). The loss
is the trainer's: the mean next-token cross-entropy over the window.

The membership AUC here (:func:`membership_auc`) is the rank (Mann–Whitney)
form of the ROC AUC, numpy and pandas only, so the training image (torch, no
scikit-learn) can write it into ``training_metrics.json``; it equals
scikit-learn's ``roc_auc_score`` (tested).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from cehrgpt.train.data import IGNORE_INDEX, collate_windows


def first_window(ids: np.ndarray, context_window: int, end_id: int) -> np.ndarray:
    """The window a patient is scored on (see the module docstring): the whole history with ``[END]``, or its start."""
    if len(ids) and ids[-1] == end_id:
        ids = ids[:-1]
    if len(ids) + 1 <= context_window:
        return np.append(ids, np.int32(end_id)).astype(np.int32)
    return ids[:context_window].astype(np.int32)


def window_losses(
    model: torch.nn.Module,
    windows: Sequence[np.ndarray],
    pad_id: int,
    batch_size: int,
    device: torch.device,
    progress: bool = True,
) -> np.ndarray:
    """Mean next-token negative log-likelihood of each window (the training loss, one patient at a time).

    Windows are scored longest first in batches of ``batch_size`` (right-padded, padding masked out of
    attention and loss); the result is in the order of ``windows``. A window of one token predicts
    nothing: its loss is NaN.
    """
    lengths = np.fromiter((len(w) for w in windows), dtype=np.int64, count=len(windows))
    order = np.argsort(-lengths, kind="stable")
    losses = np.full(len(windows), np.nan, dtype=np.float64)
    bar = tqdm(
        total=int(lengths.sum()),
        desc="model memorisation",
        unit="tok",
        unit_scale=True,
        disable=not progress,
        file=sys.stderr,
    )
    with torch.inference_mode():
        for begin in range(0, len(order), batch_size):
            rows = order[begin : begin + batch_size]
            batch = collate_windows([windows[i] for i in rows], pad_id)
            labels = batch["labels"][:, 1:].to(device)
            logits = model(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            ).logits[:, :-1]
            nll = torch.nn.functional.cross_entropy(
                logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
            ).view(labels.shape)
            predicted = (labels != IGNORE_INDEX).sum(dim=1)
            per_window = nll.sum(dim=1).double() / predicted.clamp(min=1)
            per_window[predicted == 0] = float("nan")
            losses[rows] = per_window.cpu().numpy()
            bar.update(int(lengths[rows].sum()))
            bar.set_postfix(patients=f"{min(begin + batch_size, len(order))}/{len(order)}", refresh=False)
    bar.close()
    return losses


def membership_auc(training_losses: np.ndarray, held_out_losses: np.ndarray) -> float:
    """ROC AUC of the attack "lower loss = member": the chance a training patient's loss is below a held-out
    patient's, ties counting one half (0.5 = no memorisation)."""
    n, m = len(training_losses), len(held_out_losses)
    scores = pd.Series(np.concatenate([-np.asarray(training_losses), -np.asarray(held_out_losses)]))
    ranks = scores.rank(method="average").to_numpy()
    return float((ranks[:n].sum() - n * (n + 1) / 2) / (n * m))
