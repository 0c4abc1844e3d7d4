"""The release gate: refuse to publish synthetic data whose privacy metrics breach a threshold.

Reads the ``metrics.json`` of the analyses (folders or files), checks each
threshold (a metric's maximum), writes ``gate.json`` and exits non-zero with
one line per breached threshold. A metric a threshold needs but no file holds
is an error too: a gate that cannot see a risk must not pass it.

Default thresholds (override with ``--max_<metric>`` flags, or a yml mapping
``metric: max`` where ``null`` switches a threshold off; flags win over the yml)::

    memorization_copy_excess                 0.02  verbatim training patients beyond chance, as a share of
                                                   the release (a 10% copy leak reads ≈ 0.1)
    memorization_shifted_copy_excess         0.02  the same with the prompt's year set aside (a copy moved
                                                   in calendar time)
    memorization_near_copy_excess_lower      0.01  near copies of training patients beyond chance, as a
                                                   share of the release: its one-sided 95% lower bound,
                                                   so a breach means more than 1% near copies with 95%
                                                   confidence (10% near copies of 500 reads ≈ 0.08,
                                                   of 50 ≈ 0.03)
    memorization_dcr_closer_to_train_share   off   share of the release nearer training than held-out
                                                   records, at equal set sizes (0.5 = no memorisation)
    mia_auc                                  0.6   membership-inference ROC AUC (0.5 = chance)
    mia_f1_above_chance                      0.1   membership-inference F1 above a coin with the same rate
    model_mia_auc                            0.6   ROC AUC of the loss attack on the model itself (lower loss
                                                   = member; 0.5 = chance; Eunomia: the demo's model ≈ 0.5,
                                                   a model that memorised 40 patients ≈ 1)
    mia_tpr_at_fpr_0_01_lift                 0.01  members exposed at FPR ≤ 1% beyond the 99th percentile
                                                   of chance at these set sizes (≤ 0 by chance)
    nnaa_privacy_loss                        0.05  NNAA privacy loss (AA_test − AA_train)
    aia_f1_lift_over_holdout                 0.1   attribute-inference F1 beyond the held-out control
    reid_risk                                0.09  re-identification risk (El Emam's common acceptance level)
    utility_auroc_gap_mean                   off   TRTR − TSTR AUROC (set it to refuse useless data)

Why these: the memorisation and membership metrics are all ≈ their chance value
(0, 0.5, 0, 0) for a release of unseen real patients, and rise with
memorisation — a release that is 10% verbatim training patients breaches the
copy excess (≈ 0.1), the training set itself breaches the copy excess,
``mia_auc``, ``mia_f1_above_chance`` and the NNAA loss at once. The margins above
chance (0.02 of copies, 0.1 of AUC) leave room for the noise of a few hundred
patients, so a release from a model that learned the population but not its
patients passes. With fewer than ~100 held-out patients ``mia_auc`` is noisy
(its standard error is ≈ 0.03–0.06): read it with the copy excess.

The DCR share is reported but not gated by default: a few real records are the
nearest neighbour of many synthetic patients (hubs), so the share moves in
steps of whole hubs — by permutation of training and held-out labels its
standard deviation was ≈ 0.085 for 300 synthetic against 1,000 + 300 real
random patients, too wide for a default that must not refuse a private
release. Set ``--max_memorization_dcr_closer_to_train_share`` (e.g. 0.75) on large
sets. Each threshold is also a pipeline parameter (``max_<metric>``; 1.0 = no limit
for the two that are off).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from cehrgpt.analysis.io import METRICS_FILE, AnalysisError
from cehrgpt.exits import CommandParser, run_command

GATE_FILE = "gate.json"
DEFAULT_THRESHOLDS: dict[str, float | None] = {
    "memorization_copy_excess": 0.02,
    "memorization_shifted_copy_excess": 0.02,
    "memorization_near_copy_excess_lower": 0.01,
    "memorization_dcr_closer_to_train_share": None,
    "mia_auc": 0.6,
    "mia_f1_above_chance": 0.1,
    "mia_tpr_at_fpr_0_01_lift": 0.01,
    "model_mia_auc": 0.6,
    "nnaa_privacy_loss": 0.05,
    "aia_f1_lift_over_holdout": 0.1,
    "reid_risk": 0.09,
    "utility_auroc_gap_mean": None,
}


#: A pipeline parameter is a number: the thresholds that are off default to this there. None of the
#: metrics of :data:`DEFAULT_THRESHOLDS` exceeds 1, so for them a maximum of 1 or more can never be
#: breached and is read as off: the metric is then not needed (a small run whose utility has no task
#: still passes the gate). A threshold a user adds on another metric (a count, say) is taken as given.
NO_LIMIT = 1.0


def pipeline_default(metric: str) -> float:
    """The default of the pipeline parameter ``max_<metric>``: the gate's default, or :data:`NO_LIMIT` when off."""
    maximum = DEFAULT_THRESHOLDS[metric]
    return NO_LIMIT if maximum is None else maximum


def read_metrics(paths: Sequence[str | os.PathLike]) -> dict[str, float]:
    """Merge the metrics of every folder (its ``metrics.json``) or file given.

    Raises:
        AnalysisError: a path or its metrics.json is missing, not a flat JSON object, or two
            files disagree on a metric.
    """
    merged: dict[str, float] = {}
    for path in map(Path, paths):
        file = path / METRICS_FILE if path.is_dir() else path
        if not file.is_file():
            raise AnalysisError(f"--metrics {str(path)!r} has no {METRICS_FILE}; expected an analysis output")
        try:
            metrics = json.loads(file.read_text())
        except json.JSONDecodeError as exc:
            raise AnalysisError(f"--metrics {str(file)!r} is not valid JSON: {exc}") from exc
        if not isinstance(metrics, dict):
            raise AnalysisError(
                f"--metrics {str(file)!r} holds {type(metrics).__name__}; expected name → number"
            )
        for name, value in metrics.items():
            if name in merged and merged[name] != value:
                raise AnalysisError(
                    f"metric {name!r} is {merged[name]} in one file and {value} in {str(file)!r}"
                )
            merged[name] = value
    return merged


def read_thresholds(path: str | os.PathLike) -> dict[str, float | None]:
    """A yml mapping ``metric: max`` (null switches a default threshold off)."""
    file = Path(path)
    if not file.is_file():
        raise AnalysisError(f"--thresholds {str(file)!r} does not exist; expected a yml mapping metric: max")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise AnalysisError(f"--thresholds {str(file)!r} is not valid yml: {exc}") from exc
    if not isinstance(data, dict):
        raise AnalysisError(f"--thresholds {str(file)!r} holds {type(data).__name__}; expected metric: max")
    thresholds: dict[str, float | None] = {}
    for name, value in data.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise AnalysisError(f"--thresholds {str(file)!r}: {name} is {value!r}; expected a number or null")
        thresholds[str(name)] = None if value is None else float(value)
    return thresholds


def check_thresholds(
    metrics: Mapping[str, float | None], thresholds: Mapping[str, float | None]
) -> list[dict[str, object]]:
    """One check per active threshold: the metric's value, its maximum and whether it passed.

    Raises:
        AnalysisError: a threshold that is negative or not a finite number; a metric an active
            threshold needs is absent or not a finite number (NaN or ±Infinity: the analysis measured
            nothing, and a gate that cannot see a risk does not pass it).
    """
    for name, maximum in thresholds.items():
        if maximum is not None and not (math.isfinite(maximum) and maximum >= 0):
            raise AnalysisError(
                f"threshold max_{name} is {maximum}; expected a finite number >= 0 "
                "(null in a yml switches it off)"
            )
    checks: list[dict[str, object]] = []
    for name, maximum in thresholds.items():
        if maximum is None or (name in DEFAULT_THRESHOLDS and maximum >= NO_LIMIT):
            continue
        value = metrics.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise AnalysisError(
                f"metric {name!r} needed by a threshold is missing or not a finite number ({value!r}); "
                "expected it in one of the --metrics files"
            )
        checks.append(
            {"metric": name, "value": float(value), "threshold": maximum, "passed": value <= maximum}
        )
    return checks


def run_gate(
    metrics_paths: Sequence[str | os.PathLike],
    thresholds: Mapping[str, float | None],
    output_folder: str | os.PathLike | None = None,
) -> list[dict[str, object]]:
    """Check the thresholds and write ``gate.json`` (passed or not); returns the checks.

    ``gate.json`` goes to ``output_folder``, by default the folder that holds all the metrics inputs.
    """
    checks = check_thresholds(read_metrics(metrics_paths), thresholds)
    if output_folder is None:
        inputs = [Path(p).resolve() for p in metrics_paths]
        output_folder = os.path.commonpath([p if p.is_dir() else p.parent for p in inputs])
    folder = Path(output_folder)
    folder.mkdir(parents=True, exist_ok=True)
    report = {"passed": all(c["passed"] for c in checks), "checks": checks}
    tmp = folder / f".{GATE_FILE}.tmp"
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, folder / GATE_FILE)
    return checks


def _parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="python -m cehrgpt.analysis.gate",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--metrics", nargs="+", required=True, help="analysis output folders or metrics.json")
    parser.add_argument("--thresholds", help="yml mapping metric: max (null switches one off)")
    for name, default in DEFAULT_THRESHOLDS.items():
        shown = "off" if default is None else default
        parser.add_argument(f"--max_{name}", type=float, help=f"maximum {name} (default {shown})")
    parser.add_argument(
        "--output_folder", help=f"where {GATE_FILE} goes (default: the folder holding all the --metrics)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def body() -> int:
        thresholds: dict[str, float | None] = dict(DEFAULT_THRESHOLDS)
        if args.thresholds:
            thresholds.update(read_thresholds(args.thresholds))
        for name in DEFAULT_THRESHOLDS:
            if (value := getattr(args, f"max_{name}")) is not None:
                thresholds[name] = value
        checks = run_gate(args.metrics, thresholds, args.output_folder)
        breaches = [c for c in checks if not c["passed"]]
        for c in breaches:
            print(f"BREACH {c['metric']} = {c['value']:.4f} > threshold {c['threshold']}", file=sys.stderr)
        if breaches:
            return 1
        print(f"OK: {len(checks)} privacy threshold(s) met ({', '.join(str(c['metric']) for c in checks)})")
        return 0

    return run_command(body, AnalysisError)


if __name__ == "__main__":
    raise SystemExit(main())
