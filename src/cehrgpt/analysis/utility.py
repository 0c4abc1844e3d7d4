"""Utility: does a model trained on the synthetic patients work on real ones? (TSTR against TRTR)

For each of a few prediction tasks, one logistic regression is trained on the
real training patients (TRTR: train on real, test on real) and one on the
synthetic patients (TSTR: train on synthetic, test on real); both are scored by
ROC AUC on the held-out real patients (``--evaluation_data_folder``), which
neither model saw. ``utility_auroc_gap_mean`` = TRTR − TSTR, averaged over the
tasks: 0 means the synthetic data trains models as well as the real data.
HALO (Theodorou et al., Nat. Commun. 2023) reports TSTR 0.938 against TRTR 0.943.

Every set is split the same way, from the dates the restore's decoder
(:func:`cehrgpt.omop.arrow_decode.decode_arrow`) derives for each token:

- *first year*: the clinical concepts dated less than ``HISTORY_DAYS`` (365)
  days after the patient's first visit — the model's features, with the
  prompt's age, gender and race (:mod:`cehrgpt.analysis.features`);
- *follow-up*: the concepts dated ``HISTORY_DAYS`` days or more after it — the labels.

Only patients with a follow-up (at least one event a year or more after their
first visit) take part; the others are counted (``utility_num_*_without_follow_up``).
Synthetic rows that are not whole patients under :mod:`cehrgpt.grammar` are
excluded and counted, as are real rows that are not (the ETL never writes one).

A task predicts the *new onset* of a concept: among patients without it in
their first year, does it appear in the follow-up? (A patient who already has
it in the first year is not part of that task; otherwise the label would mostly
repeat a feature.) Tasks are the concepts with the most new-onset positives in
the real training set that have at least ``--min_task_patients`` (default 10)
positives *and* as many negatives in the training, synthetic and held-out sets;
a candidate that meets the minimum in the real sets but not in the synthetic
one is skipped and counted (``utility_num_tasks_skipped_synthetic``): the
synthetic data cannot train that task at all, which the AUROC means do not show.
When no concept qualifies (a release too small), utility is not measured: a
warning says so and ``metrics.json`` holds the counts but no means, so a gate
that needs ``utility_auroc_gap_mean`` reports it missing.
"""

from __future__ import annotations

import argparse
import html
import sys
import warnings
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from cehrgpt import grammar
from cehrgpt.analysis.features import FeatureSpace, PatientSet
from cehrgpt.analysis.io import AnalysisError, format_table, read_sequence_folder, warn, write_outputs
from cehrgpt.exits import CommandParser, run_command
from cehrgpt.omop.arrow_decode import decode_arrow

HISTORY_DAYS = 365
DEFAULT_NUM_TASKS = 10
DEFAULT_MIN_TASK_PATIENTS = 10
MIN_EVALUATION_PATIENTS = 20
DEFAULT_SEED = 0
REPORT_FILE = "report.html"
_SETS = ("training", "synthetic", "evaluation")


@dataclass(frozen=True)
class TaskCohort:
    """One set's patients with a follow-up, split at the end of their first year.

    ``history`` and ``follow_up`` hold the same patients in the same order:
    ``history`` the first year's distinct concepts (with the prompt demographics),
    ``follow_up`` the distinct concepts after it.
    """

    history: PatientSet
    follow_up: PatientSet
    rows_read: int
    without_follow_up: int  # whole patients with no event a year or more after their first visit
    excluded: int  # rows that are not whole patients under the grammar
    exclusion_reasons: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.history)


def _grouped(slots: np.ndarray, concepts: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR ``(indptr, values)`` of each patient's distinct concepts, sorted, from (patient, concept) pairs."""
    order = np.lexsort((concepts, slots))
    slots, concepts = slots[order], concepts[order]
    keep = np.ones(len(slots), bool)
    keep[1:] = (slots[1:] != slots[:-1]) | (concepts[1:] != concepts[:-1])
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(slots[keep], minlength=n), out=indptr[1:])
    return indptr, concepts[keep].astype(np.int64)


def _exclusion_reason(tokens: list[str] | None) -> str:
    violation = grammar.first_violation(tokens or [])
    if violation is None:  # grammar-valid, but the decoder refused its prompt or dates
        return "prompt or dates out of range"
    return violation[1].split(" in state")[0]


def split_first_year(frame: pd.DataFrame) -> TaskCohort:
    """Decode sequence rows (``person_id``, ``concept_ids``, optional ``is_valid``) into a :class:`TaskCohort`.

    Dates come from :func:`cehrgpt.omop.arrow_decode.decode_arrow`: a patient's first
    visit is day 0; first-year concepts are those dated before ``HISTORY_DAYS``,
    follow-up concepts those on or after it. Unknown concepts (``0``) are dropped.
    """
    reasons: Counter[str] = Counter()
    if "is_valid" in frame.columns:
        flagged = frame["is_valid"].fillna(True).astype(bool).to_numpy()
        reasons["is_valid is false"] = int((~flagged).sum())
        frame = frame[flagged]
    sequences = pa.array(frame["concept_ids"].to_numpy(), pa.list_(pa.string()))
    decoded = decode_arrow(sequences, np.ones(len(sequences), bool))
    for row in np.flatnonzero(~decoded.decoded):
        reasons[_exclusion_reason(sequences[int(row)].as_py())] += 1
    rows = np.flatnonzero(decoded.decoded)
    visit, event, person = decoded.visit, decoded.event, decoded.person
    # decode_arrow lists records by row, then position: a row's first visit record is its first visit
    visit_rows, first_visit = np.unique(visit["row"], return_index=True)
    first_day = np.zeros(len(sequences), np.int64)
    first_day[visit_rows] = visit["start_day"][first_visit]
    offset = event["day"] - first_day[event["row"]]
    followed = np.zeros(len(sequences), bool)
    followed[event["row"][offset >= HISTORY_DAYS]] = True
    eligible = rows[followed[rows]]
    slot = np.full(len(sequences), -1, np.int64)
    slot[eligible] = np.arange(len(eligible))
    known = (event["concept_id"] != 0) & (slot[event["row"]] >= 0)
    in_history = known & (offset < HISTORY_DAYS)
    in_follow_up = known & (offset >= HISTORY_DAYS)

    by_row = np.searchsorted(person["row"], eligible)
    first_visit_year = (
        first_day[eligible].astype("datetime64[D]").astype("datetime64[Y]").astype(np.int64)
    ) + 1970
    # the first visit is on Jan 1 of the prompt year, so this is the prompt's age token
    ages = (first_visit_year - person["year_of_birth"][by_row]).astype(np.float64)
    person_ids = frame["person_id"].to_numpy()[eligible].astype(np.int64)

    def patients(mask: np.ndarray) -> PatientSet:
        indptr, values = _grouped(slot[event["row"][mask]], event["concept_id"][mask], len(eligible))
        return PatientSet(
            person_ids=person_ids,
            ages=ages,
            genders=person["gender_concept_id"][by_row].astype(np.int64),
            races=person["race_concept_id"][by_row].astype(np.int64),
            concept_indptr=indptr,
            concept_values=values,
        )

    reasons = Counter({k: v for k, v in reasons.items() if v})
    return TaskCohort(
        history=patients(in_history),
        follow_up=patients(in_follow_up),
        rows_read=len(frame) + reasons["is_valid is false"],
        without_follow_up=int(len(rows) - len(eligible)),
        excluded=sum(reasons.values()),
        exclusion_reasons=dict(reasons),
    )


def _rows_having(patients: PatientSet, concept_id: int) -> np.ndarray:
    """bool per patient: has ``concept_id``."""
    row_of_value = np.repeat(np.arange(len(patients)), np.diff(patients.concept_indptr))
    has = np.zeros(len(patients), bool)
    has[row_of_value[patients.concept_values == concept_id]] = True
    return has


def task_labels(cohort: TaskCohort, concept_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The patients of the new-onset task for ``concept_id`` (indices) and their labels (bool)."""
    at_risk = np.flatnonzero(~_rows_having(cohort.history, concept_id))
    return at_risk, _rows_having(cohort.follow_up, concept_id)[at_risk]


def onset_counts(cohort: TaskCohort) -> pd.DataFrame:
    """Per concept seen in a follow-up: new-onset ``positives`` and ``negatives`` (at risk, not positive)."""
    history, follow = cohort.history, cohort.follow_up
    n = len(cohort)
    h_rows = np.repeat(np.arange(n), np.diff(history.concept_indptr))
    f_rows = np.repeat(np.arange(n), np.diff(follow.concept_indptr))
    rows = np.concatenate([h_rows, f_rows])
    concepts = np.concatenate([history.concept_values, follow.concept_values])
    is_follow = np.concatenate([np.zeros(len(h_rows), bool), np.ones(len(f_rows), bool)])
    order = np.lexsort(
        (is_follow, rows, concepts)
    )  # a patient's history pair sorts just before its follow-up pair
    rows, concepts, is_follow = rows[order], concepts[order], is_follow[order]
    repeated = np.zeros(len(rows), bool)
    repeated[1:] = (rows[1:] == rows[:-1]) & (concepts[1:] == concepts[:-1])
    onset_ids, positives = np.unique(concepts[is_follow & ~repeated], return_counts=True)
    history_ids, had = np.unique(history.concept_values, return_counts=True)
    had_before = np.zeros(len(onset_ids), np.int64)
    found = np.isin(onset_ids, history_ids)
    had_before[found] = had[np.searchsorted(history_ids, onset_ids[found])]
    return pd.DataFrame(
        {"concept_id": onset_ids, "positives": positives, "negatives": n - had_before - positives}
    )


def choose_tasks(
    cohorts: Mapping[str, TaskCohort], num_tasks: int, min_task_patients: int
) -> tuple[pd.DataFrame, int]:
    """The tasks (most new-onset positives in the real training set first) and the count skipped for synthetic.

    A task needs ``min_task_patients`` positives and as many negatives in every set.
    Returns a table with ``concept_id`` and ``{set}_positives`` / ``{set}_patients`` per set.
    """
    counts = {name: onset_counts(cohorts[name]).set_index("concept_id") for name in _SETS}
    candidates = counts["training"].reset_index()
    candidates = candidates.iloc[np.lexsort((candidates["concept_id"], -candidates["positives"]))]

    def enough(name: str, concept_id: int) -> bool:
        if concept_id not in counts[name].index:
            return False
        row = counts[name].loc[concept_id]
        return bool(row["positives"] >= min_task_patients and row["negatives"] >= min_task_patients)

    chosen: list[dict[str, int]] = []
    skipped = 0
    for concept_id in candidates["concept_id"].tolist():
        if len(chosen) == num_tasks:
            break
        if not (enough("training", concept_id) and enough("evaluation", concept_id)):
            continue
        if not enough("synthetic", concept_id):
            skipped += 1
            continue
        task = {"concept_id": int(concept_id)}
        for name in _SETS:
            row = counts[name].loc[concept_id]
            task[f"{name}_positives"] = int(row["positives"])
            task[f"{name}_patients"] = int(row["positives"] + row["negatives"])
        chosen.append(task)
    columns = ["concept_id"] + [f"{name}_{kind}" for name in _SETS for kind in ("positives", "patients")]
    return pd.DataFrame(chosen, columns=columns), skipped


def design_matrix(space: FeatureSpace, patients: PatientSet) -> sp.csr_matrix:
    """First-year concept presence, one-hot gender and race, and the scaled age, as one sparse matrix."""
    features = space.encode(patients)
    assert features.age is not None  # encode adds the age with the demographics
    return sp.hstack([features.binary, sp.csr_matrix(features.age[:, None])], format="csr")


def task_auroc(
    train_x: sp.csr_matrix, train_y: np.ndarray, test_x: sp.csr_matrix, test_y: np.ndarray, seed: int
) -> float:
    """ROC AUC on the test rows of an L2 logistic regression fitted on the training rows (seeded)."""
    model = LogisticRegression(C=1.0, solver="liblinear", max_iter=1000, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(train_x, train_y)
    return float(roc_auc_score(test_y, model.predict_proba(test_x)[:, 1]))


def _read_cohort(folder: str, name: str) -> TaskCohort:
    role = f"{name}_data_folder"
    cohort = split_first_year(read_sequence_folder(folder, role))
    whole = cohort.rows_read - cohort.excluded
    if whole == 0:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(cohort.exclusion_reasons.items()))
        raise AnalysisError(
            f"--{role} {folder!r} holds no whole patient under the grammar ({cohort.excluded} row(s) "
            f"excluded; {reasons}); expected grammar-valid sequences"
        )
    if len(cohort) == 0:
        raise AnalysisError(
            f"--{role} {folder!r}: none of its {whole} patient(s) has an event {HISTORY_DAYS} days or more "
            "after their first visit; the tasks need a first year and a follow-up"
        )
    if cohort.excluded:
        warn(f"--{role}: {cohort.excluded} row(s) that are not whole patients were excluded")
    return cohort


def _nan_mean(values: pd.Series) -> float:
    return float(values.mean()) if len(values) else float("nan")


def run_utility(
    training_data_folder: str,
    evaluation_data_folder: str,
    synthetic_data_folder: str,
    output_folder: str,
    seed: int = DEFAULT_SEED,
    num_tasks: int = DEFAULT_NUM_TASKS,
    min_task_patients: int = DEFAULT_MIN_TASK_PATIENTS,
) -> dict[str, float]:
    """Derive the tasks, fit TRTR and TSTR per task, write the outputs; returns the metrics.

    Raises:
        AnalysisError: bad input (see the module docstring); nothing is written then.
    """
    if num_tasks < 1:
        raise AnalysisError(f"--num_tasks is {num_tasks}; expected a positive number of tasks")
    if min_task_patients < 1:
        raise AnalysisError(f"--min_task_patients is {min_task_patients}; expected a positive integer")
    folders = {
        "training": training_data_folder,
        "synthetic": synthetic_data_folder,
        "evaluation": evaluation_data_folder,
    }
    cohorts = {name: _read_cohort(folders[name], name) for name in _SETS}
    if len(cohorts["evaluation"]) < MIN_EVALUATION_PATIENTS:
        raise AnalysisError(
            f"--evaluation_data_folder {evaluation_data_folder!r} holds {len(cohorts['evaluation'])} patient(s) "
            f"with a follow-up after their first year; expected at least {MIN_EVALUATION_PATIENTS}"
        )
    tasks, skipped = choose_tasks(cohorts, num_tasks, min_task_patients)
    if tasks.empty:  # a small release: utility is not measured (no means), said so, and the rest written
        print(
            f"warning: utility not measured: no concept has {min_task_patients} new-onset positives and as "
            "many negatives after the first year in the training, synthetic and held-out sets "
            f"({skipped} candidate(s) lacked them only in the synthetic set); larger sets or a smaller "
            "--min_task_patients measure it",
            file=sys.stderr,
        )
    space = FeatureSpace.fit([cohorts[name].history for name in _SETS])
    matrices = {name: design_matrix(space, cohorts[name].history) for name in _SETS}
    trtr, tstr = [], []
    for concept_id in tqdm(tasks["concept_id"].tolist(), desc="utility tasks", unit="task"):
        labelled = {name: task_labels(cohorts[name], concept_id) for name in _SETS}
        test_rows, test_y = labelled["evaluation"]
        test_x = matrices["evaluation"][test_rows]
        scores = []
        for name in ("training", "synthetic"):
            rows, y = labelled[name]
            scores.append(task_auroc(matrices[name][rows], y, test_x, test_y, seed))
        trtr.append(scores[0])
        tstr.append(scores[1])
    tasks["trtr_auroc"] = pd.Series(trtr, index=tasks.index, dtype=float)
    tasks["tstr_auroc"] = pd.Series(tstr, index=tasks.index, dtype=float)
    tasks["auroc_gap"] = tasks["trtr_auroc"] - tasks["tstr_auroc"]

    means = {
        "utility_tstr_auroc_mean": _nan_mean(tasks["tstr_auroc"]),
        "utility_trtr_auroc_mean": _nan_mean(tasks["trtr_auroc"]),
        "utility_auroc_gap_mean": _nan_mean(tasks["auroc_gap"]),
    }
    metrics: dict[str, float] = {
        **(means if len(tasks) else {}),  # no task: no mean (a gate needing it then says it is missing)
        "utility_num_tasks": len(tasks),
        "utility_num_tasks_skipped_synthetic": skipped,
    }
    for name in _SETS:
        metrics[f"utility_num_{name}_patients"] = len(cohorts[name])
        metrics[f"utility_num_{name}_without_follow_up"] = cohorts[name].without_follow_up
        metrics[f"utility_num_{name}_excluded"] = cohorts[name].excluded
    for rank, task in enumerate(tasks.itertuples(index=False), start=1):
        prefix = f"utility_task_{rank}"
        metrics[f"{prefix}_concept_id"] = int(task.concept_id)
        for name in _SETS:
            metrics[f"{prefix}_{name}_positives"] = int(getattr(task, f"{name}_positives"))
        metrics[f"{prefix}_trtr_auroc"] = float(task.trtr_auroc)
        metrics[f"{prefix}_tstr_auroc"] = float(task.tstr_auroc)
    summary = {
        "analysis": "utility",
        "seed": seed,
        **{f"{name}_data_folder": folders[name] for name in _SETS},
        "num_tasks_requested": num_tasks,
        "min_task_patients": min_task_patients,
        "history_days": HISTORY_DAYS,
        "exclusion_reasons": {name: cohorts[name].exclusion_reasons for name in _SETS},
        **{name: metrics.get(name) for name in means},
    }
    write_outputs(
        output_folder,
        {"utility_tasks": tasks},
        metrics,
        summary,
        extra_files={REPORT_FILE: render_report(metrics, tasks).encode("utf-8")},
    )
    return metrics


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:.4f}"
    return html.escape(str(value))


def render_report(metrics: Mapping[str, float], tasks: pd.DataFrame) -> str:
    """A self-contained HTML page: the utility section (headline metrics and the table of tasks)."""
    headline = [k for k in metrics if not k.startswith("utility_task_")]
    summary_rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{_cell(metrics[k])}</td></tr>" for k in headline
    )
    header = "".join(f"<th>{html.escape(c)}</th>" for c in tasks.columns)
    task_rows = "".join(
        "<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>"
        for row in tasks.itertuples(index=False)
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Synthetic data utility</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px}</style></head><body>"
        "<h1>Synthetic data utility</h1>"
        "<section id='utility'><h2>Utility: train on synthetic, test on real</h2>"
        f"<p>Each task predicts the new onset of a concept {HISTORY_DAYS} days or more after a patient's first "
        "visit from the first year's concepts, age, gender and race (logistic regression). TRTR is trained on "
        "the real training patients, TSTR on the synthetic ones; both are scored by ROC AUC on the held-out "
        "real patients. Gap = TRTR − TSTR (0: the synthetic data trains models as well as the real data). "
        "HALO (Nat. Commun. 2023) reports TSTR 0.938 against TRTR 0.943.</p>"
        f"<table>{summary_rows}</table><h3>Tasks</h3><table><tr>{header}</tr>{task_rows}</table>"
        "</section></body></html>"
    )


def _parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="python -m cehrgpt.analysis.utility", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--training_data_folder", required=True, help="the real patients the model trained on"
    )
    parser.add_argument(
        "--evaluation_data_folder",
        required=True,
        help="held-out real patients: every model is tested on them",
    )
    parser.add_argument("--synthetic_data_folder", required=True, help="GEN/<strategy>/generated_sequences")
    parser.add_argument("--output_folder", required=True, help="where metrics.json and report.html go")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the classifiers")
    parser.add_argument("--num_tasks", type=int, default=DEFAULT_NUM_TASKS, help="prediction tasks, at most")
    parser.add_argument(
        "--min_task_patients",
        type=int,
        default=DEFAULT_MIN_TASK_PATIENTS,
        help="positives and negatives a task needs in each set",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def body() -> int:
        metrics = run_utility(
            args.training_data_folder,
            args.evaluation_data_folder,
            args.synthetic_data_folder,
            args.output_folder,
            seed=args.seed,
            num_tasks=args.num_tasks,
            min_task_patients=args.min_task_patients,
        )
        print(
            format_table({k: v for k, v in metrics.items() if not k.startswith("utility_task_")}, "Utility")
        )
        return 0

    return run_command(body, AnalysisError)


if __name__ == "__main__":
    raise SystemExit(main())
