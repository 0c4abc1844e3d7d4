"""Model memorisation: does the trained model fit its training patients better than patients it never saw?

Measured on the model itself, before any patient is generated::

    python -m cehrgpt.analysis.privacy.model_memorization --model_folder M \\
        --training_data_folder T --evaluation_data_folder E --output_folder O \\
        [--seed N] [--batch_size 32] [--device auto] [--max_patients 10000]

Every patient of T (members) and E (held out) gets the model's *loss*: the mean
token negative log-likelihood over its sequence, as training computes it (the
next-token cross-entropy of every token after the first, padding excluded).
Tokens the tokenizer does not know become ``[OOV]``, as in training
(:func:`cehrgpt.train.data.encode_all`).

**Which window.** A patient that fits the context window together with
``[END]`` is scored whole, ``[END]`` appended (the training window). A longer
one is scored on its *first* window: the 4-token prompt and the history's
first ``context_window − 4`` tokens — the window training cuts when its seeded
slice starts at the first visit. One window per patient keeps every patient's
weight equal and the score free of randomness; a training patient was trained
on some slice, not necessarily this one, so on long histories the first window
can only understate memorisation. ``num_tokens`` and ``truncated`` in the table
say which patients were cut. The window and the loss are :mod:`cehrgpt.train.scoring`'s,
which the trainer also uses for the ``model_memorization`` line of
``training_metrics.json`` (on a sample of at most 500 patients per set).

**The attack.** The strongest simple membership attack on a language model
(Yeom et al. 2018; Carlini et al. 2021) predicts "member" when the loss is low.
``model_mia_auc`` is the ROC AUC of −loss with training patients as positives
(0.5 = the model fits members no better than unseen patients; 1 = every member
fits better than every held-out patient), ``model_mia_tpr_at_fpr_0.01`` /
``_0.1`` the members exposed while wrongly accusing at most 1% / 10% of
held-out patients, ``model_mia_advantage`` the best TPR − FPR. The ROC code is
membership inference's (:func:`cehrgpt.analysis.privacy.member_inference.roc_metrics`);
its other figures come along with the ``model_`` prefix (``model_mia_tpr_at_fpr_0.01_chance``,
``_chance_p99``, ``model_mia_tpr_at_fpr_0_01_lift``).
``model_loss_train_mean`` / ``model_loss_holdout_mean`` are the mean per-patient
losses and ``model_loss_gap`` their difference (held-out − train).

**Sizes.** AUC does not depend on the ratio of the sets' sizes, so a set larger
than ``--max_patients`` (10,000) is cut to a seeded sample of that size
(``--seed``), said on stderr; fewer than 20 held-out patients is an error (the
control would be noise).

Patients are scored in batches of ``--batch_size`` on the model's device under
``torch.inference_mode``, sorted by length so that a batch pads little; memory
is about ``batch_size × context_window × vocabulary × 4`` bytes of logits.

Outputs in ``--output_folder``: ``metrics.json``, ``summary.json``,
``model_patient_losses.parquet`` (``person_id``, ``set`` — ``training`` or
``held_out`` —, ``loss``, ``num_tokens``, ``truncated``) and ``roc_curve.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import pandas as pd
import torch

from cehrgpt import grammar
from cehrgpt.analysis.io import AnalysisError, read_sequence_folder, warn, write_outputs
from cehrgpt.analysis.privacy.common import DEFAULT_SEED, MIN_HELD_OUT_PATIENTS, check_positive, run_main
from cehrgpt.analysis.privacy.member_inference import ROC_FILE, roc_metrics
from cehrgpt.exits import CommandParser
from cehrgpt.train.data import encode_all
from cehrgpt.train.scoring import first_window, window_losses

TABLE = "model_patient_losses"
DEFAULT_BATCH_SIZE = 32
DEFAULT_MAX_PATIENTS = 10_000
TRAINING, HELD_OUT = "training", "held_out"


def membership_metrics(training_losses: np.ndarray, held_out_losses: np.ndarray) -> tuple[dict, dict]:
    """The ``model_*`` metrics of the loss attack (module docstring) and its ROC curve's points."""
    labels = np.concatenate([np.ones(len(training_losses), bool), np.zeros(len(held_out_losses), bool)])
    roc, curve = roc_metrics(labels, np.concatenate([training_losses, held_out_losses]))
    metrics: dict[str, float] = {f"model_{name}": value for name, value in roc.items()}
    train_mean, held_out_mean = float(np.mean(training_losses)), float(np.mean(held_out_losses))
    metrics["model_loss_train_mean"] = train_mean
    metrics["model_loss_holdout_mean"] = held_out_mean
    metrics["model_loss_gap"] = held_out_mean - train_mean
    metrics["model_num_training_patients"] = len(training_losses)
    metrics["model_num_evaluation_patients"] = len(held_out_losses)
    return metrics, curve


def _patients(
    folder: str, role: str, max_patients: int, rng: np.random.Generator
) -> tuple[pd.DataFrame, int]:
    """The rows of a set that hold tokens, cut to a seeded sample of ``max_patients``; and the rows left out."""
    frame = read_sequence_folder(folder, role)
    has_tokens = frame["concept_ids"].map(
        lambda tokens: tokens is not None and len(tokens) > int(len(tokens) > 0 and tokens[-1] == grammar.END)
    )
    excluded = int((~has_tokens).sum())
    frame = frame.loc[has_tokens, ["person_id", "concept_ids"]].reset_index(drop=True)
    if frame.empty:
        raise AnalysisError(f"--{role} {folder!r} holds no patient with tokens ({excluded} empty row(s))")
    if excluded:
        warn(f"--{role}: {excluded} row(s) without tokens were left out")
    if len(frame) > max_patients:
        warn(
            f"--{role}: a seeded sample of {max_patients} of its {len(frame)} patients is scored "
            "(--max_patients, --seed)"
        )
        keep = np.sort(rng.choice(len(frame), size=max_patients, replace=False))
        frame = frame.iloc[keep].reset_index(drop=True)
    return frame, excluded


def _device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise AnalysisError("--device cuda: no CUDA device is available; expected cpu or auto")
    return torch.device(requested)


def run_model_memorization(
    model_folder: str,
    training_data_folder: str,
    evaluation_data_folder: str,
    output_folder: str,
    seed: int = DEFAULT_SEED,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "auto",
    max_patients: int = DEFAULT_MAX_PATIENTS,
    progress: bool = True,
) -> dict[str, float]:
    """Score every (sampled) training and held-out patient with the model; write the table and ``metrics.json``.

    Raises:
        AnalysisError: a missing or empty folder, a folder without a usable model, fewer than
            :data:`MIN_HELD_OUT_PATIENTS` held-out patients, a non-positive batch size or sample cap,
            or ``cuda`` asked for where there is none.
    """
    import transformers

    from cehrgpt.models.loading import ModelFolderError, load_for_generation

    transformers.utils.logging.disable_progress_bar()  # the scoring bar is the one progress output
    started = time.perf_counter()
    check_positive(batch_size, "batch_size")
    check_positive(max_patients, "max_patients")
    target = _device(device)
    rng = np.random.default_rng(seed)
    training, training_excluded = _patients(training_data_folder, "training_data_folder", max_patients, rng)
    held_out, held_out_excluded = _patients(
        evaluation_data_folder, "evaluation_data_folder", max_patients, rng
    )
    if len(held_out) < MIN_HELD_OUT_PATIENTS:
        raise AnalysisError(
            f"--evaluation_data_folder {evaluation_data_folder!r} holds {len(held_out)} held-out patient(s); "
            f"expected at least {MIN_HELD_OUT_PATIENTS} for a held-out control"
        )
    try:
        model, tokenizer = load_for_generation(
            model_folder,
            None,
            training_data_folder,
            torch.float32,
            say=lambda line: print(line, file=sys.stderr),
        )
    except ModelFolderError as exc:
        raise AnalysisError(f"--model_folder: {exc}") from exc
    model = model.to(target)  # type: ignore[arg-type]
    vocab = tokenizer.get_vocab()
    context_window = int(model.config.n_positions)
    end_id, oov_id = vocab[grammar.END], vocab[grammar.OOV]

    tokens = [*training["concept_ids"], *held_out["concept_ids"]]
    ids = encode_all([list(t) for t in tokens], vocab, oov_id)
    windows = [first_window(i, context_window, end_id) for i in ids]
    losses = window_losses(model, windows, vocab[grammar.PAD], batch_size, target, progress)
    history_lengths = np.array([len(i) - int(len(i) > 0 and i[-1] == end_id) for i in ids])
    table = pd.DataFrame(
        {
            "person_id": np.concatenate([training["person_id"], held_out["person_id"]]).astype(np.int64),
            "set": [TRAINING] * len(training) + [HELD_OUT] * len(held_out),
            "loss": losses,
            "num_tokens": np.array([len(w) for w in windows], dtype=np.int64),
            "truncated": history_lengths + 1 > context_window,
        }
    )
    n = len(training)
    metrics, curve = membership_metrics(losses[:n], losses[n:])
    oov = np.array([int((i == oov_id).sum()) for i in ids])
    seconds = time.perf_counter() - started
    summary = {
        "analysis": "model_memorization",
        "seed": seed,
        "model_folder": str(model_folder),
        "training_data_folder": str(training_data_folder),
        "evaluation_data_folder": str(evaluation_data_folder),
        "device": str(target),
        "batch_size": batch_size,
        "max_patients": max_patients,
        "context_window": context_window,
        "window": "first (prompt + the history's first context_window - 4 tokens; whole with [END] when it fits)",
        "rows_without_tokens": {TRAINING: training_excluded, HELD_OUT: held_out_excluded},
        "patients_truncated": {
            TRAINING: int(table["truncated"][:n].sum()),
            HELD_OUT: int(table["truncated"][n:].sum()),
        },
        "tokens_out_of_vocabulary": {TRAINING: int(oov[:n].sum()), HELD_OUT: int(oov[n:].sum())},
        "tokens_scored": int(table["num_tokens"].sum()),
        "seconds": round(seconds, 2),
    }
    write_outputs(output_folder, {TABLE: table}, metrics, summary, {ROC_FILE: json.dumps(curve).encode()})
    return metrics


def _parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="python -m cehrgpt.analysis.privacy.model_memorization", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model_folder", required=True, help="the trained model folder (tokenizer included)")
    parser.add_argument("--training_data_folder", required=True, help="the model's training sequences")
    parser.add_argument("--evaluation_data_folder", required=True, help="held-out sequences")
    parser.add_argument("--output_folder", required=True, help="where the table and metrics.json go")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the samples of large sets")
    parser.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE, help="patients scored together")
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda when available"
    )
    parser.add_argument(
        "--max_patients",
        type=int,
        default=DEFAULT_MAX_PATIENTS,
        help="a larger set is cut to a seeded sample of this many patients",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_main(
        lambda: run_model_memorization(
            args.model_folder,
            args.training_data_folder,
            args.evaluation_data_folder,
            args.output_folder,
            seed=args.seed,
            batch_size=args.batch_size,
            device=args.device,
            max_patients=args.max_patients,
        ),
        "Model memorisation",
    )


if __name__ == "__main__":
    raise SystemExit(main())
