"""The HTML report: the metrics table and the comparison plots in one self-contained page."""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from collections.abc import Mapping

import numpy as np
import pandas as pd

from cehrgpt.analysis.fidelity.profile import SequenceProfile


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def plot_images(
    real: SequenceProfile, synthetic: SequenceProfile, prevalence: pd.DataFrame, pairs: pd.DataFrame
):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def scatter(title, x, y, label):
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.scatter(x, y, s=8, alpha=0.6)
        top = max([*x, *y, 1e-9])
        ax.plot([0, top], [0, top], color="grey", linewidth=1)
        ax.set(title=title, xlabel=f"real {label}", ylabel=f"synthetic {label}")
        return fig

    def histograms(title, a, b):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        values = np.concatenate([a, b]) if len(a) + len(b) else np.zeros(1)
        bins = np.histogram_bin_edges(values, bins=30)
        for values, label in ((a, "real"), (b, "synthetic")):
            if len(values):
                ax.hist(values, bins=bins, alpha=0.5, density=True, label=label)
        ax.set(title=title)
        ax.legend()
        return fig

    def bars(title, a, b):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        keys = sorted(set(a) | set(b), key=str)
        count_a, count_b = Counter(a), Counter(b)
        x = np.arange(len(keys))
        ax.bar(x - 0.2, [count_a[k] / max(len(a), 1) for k in keys], 0.4, label="real")
        ax.bar(x + 0.2, [count_b[k] / max(len(b), 1) for k in keys], 0.4, label="synthetic")
        ax.set_xticks(x, [str(k) for k in keys], rotation=45, fontsize=7)
        ax.set(title=title)
        ax.legend()
        return fig

    figures = [
        scatter(
            "Concept prevalence", prevalence["real_prevalence"], prevalence["synthetic_prevalence"], "share"
        ),
        scatter("Within-visit co-occurrence", pairs["real_rate"], pairs["synthetic_rate"], "rate"),
        histograms("Sequence length (tokens)", real.lengths, synthetic.lengths),
        histograms("Visits per patient", real.visits_per_patient, synthetic.visits_per_patient),
        histograms("Age at first event", real.ages, synthetic.ages),
        histograms("Days between visits", real.days_between_visits, synthetic.days_between_visits),
        histograms(
            "Inpatient length of stay (days)", real.inpatient_stay_days, synthetic.inpatient_stay_days
        ),
        bars("Gender", real.genders, synthetic.genders),
        bars("Race", real.races, synthetic.races),
        bars("Visit type", real.visit_types, synthetic.visit_types),
    ]
    encoded = [_png(f) for f in figures]
    for f in figures:
        plt.close(f)
    return encoded


METRIC_NOTES = {
    "fidelity_prevalence_spearman": "rank correlation of per-concept patient shares (1: same order)",
    "fidelity_cooccurrence_r2": "over pairs seen in enough real or synthetic visits; invented pairs count",
    "fidelity_prevalence_kl": (
        "the original CEHR-GPT's KL(real‖synthetic), nats, of concept token probabilities; 0 is identical, "
        "a concept the synthetic set lacks counts at probability 1e-10"
    ),
    "fidelity_cooccurrence_kl": "the same KL on within-visit pair probabilities, over every pair",
    "fidelity_value_ks_median": (
        "median KS of the value bins of the 20 real concepts with most numeric values (values.parquet per concept)"
    ),
    "fidelity_value_share_synthetic": "share of occurrences of value-taking concepts that carry a value (real: _real)",
    "fidelity_drug_duration_ks": "KS of the duration bins of the drugs that have durations (no token: 0 days)",
}


def render_report(metrics: Mapping[str, float], images: list[str], title: str) -> str:
    """A self-contained HTML page: the metrics table and the plots as embedded PNGs."""
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{'' if v is None else f'{v:.4f}' if isinstance(v, float) else v}</td></tr>"
        for k, v in metrics.items()
    )
    plots = "".join(f'<img alt="plot" src="data:image/png;base64,{png}">' for png in images)
    notes = "".join(
        f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in METRIC_NOTES.items() if k in metrics
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "table{border-collapse:collapse}td{border:1px solid #ccc;padding:2px 8px}"
        "img{margin:6px;border:1px solid #eee}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><h2>Metrics</h2><table>{rows}</table><ul>{notes}</ul>"
        f"<h2>Plots</h2>{plots}</body></html>"
    )
