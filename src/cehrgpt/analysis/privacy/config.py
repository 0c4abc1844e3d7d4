"""Derive the common and sensitive concept lists of an attribute config from training data by prevalence.

Concepts are ranked by prevalence (share of training patients having them),
most prevalent first, ties by concept id. *Common* attributes are the
``num_common`` most prevalent: what an attacker plausibly knows about anyone.
*Sensitive* attributes are the next ``num_sensitive`` concepts down the ranking
that are rarer than ``max_sensitive_prevalence`` (a concept most patients have
reveals nothing) and seen in at least ``min_sensitive_patients`` patients: a
band of prevalence right below the common ones. The same lists feed attribute
inference (``--attribute_config``) and re-identification's quasi-identifiers.

    python -m cehrgpt.analysis.privacy.config --training_data_folder OUT/patient_sequence/train \\
        --output analysis/privacy/attribute_inference_config.yml --num_common 10 --num_sensitive 30
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import yaml

from cehrgpt.analysis.features import PatientSet, parse_patients
from cehrgpt.analysis.io import AnalysisError, read_sequence_folder
from cehrgpt.exits import CommandParser, run_command

DEFAULT_MAX_SENSITIVE_PREVALENCE = 0.5
DEFAULT_MIN_SENSITIVE_PATIENTS = 5


def derive_attribute_config(
    training: PatientSet,
    num_common: int,
    num_sensitive: int,
    max_sensitive_prevalence: float = DEFAULT_MAX_SENSITIVE_PREVALENCE,
    min_sensitive_patients: int = DEFAULT_MIN_SENSITIVE_PATIENTS,
) -> dict[str, list[int]]:
    """Common = the ``num_common`` most prevalent concepts; sensitive = the next eligible ``num_sensitive``.

    Raises:
        AnalysisError: a count is not positive, or the data has too few (eligible) concepts.
    """
    if num_common < 1 or num_sensitive < 1:
        raise AnalysisError(
            f"--num_common {num_common} / --num_sensitive {num_sensitive}; expected positive counts"
        )
    prevalence = training.concept_prevalence()
    if len(prevalence) < num_common:
        raise AnalysisError(
            f"--num_common {num_common} exceeds the {len(prevalence)} distinct concepts in the training data"
        )
    common = prevalence.index[:num_common].tolist()
    rest = prevalence.iloc[num_common:]
    min_share = min_sensitive_patients / max(len(training), 1)
    eligible = rest[(rest < max_sensitive_prevalence) & (rest >= min_share)]
    if len(eligible) < num_sensitive:
        raise AnalysisError(
            f"--num_sensitive {num_sensitive}: only {len(eligible)} concept(s) below the common ones have a "
            f"prevalence under {max_sensitive_prevalence} and at least {min_sensitive_patients} patients"
        )
    return {"common_attributes": common, "sensitive_attributes": eligible.index[:num_sensitive].tolist()}


def config_yaml(config: dict[str, list[int]], source: str, prevalence: dict[int, float]) -> str:
    """The config as yml, each concept id (as a string, as the original wrote them) with its prevalence."""
    lines = [
        f"# Derived by cehrgpt.analysis.privacy.config from {source}.",
        "# common: most prevalent concepts; sensitive: the next band down (see the module docstring).",
    ]
    for key, concepts in config.items():
        lines.append(f"{key}:")
        lines.extend(f'  - "{c}"  # prevalence {prevalence[c]:.3f}' for c in concepts)
    text = "\n".join(lines) + "\n"
    assert yaml.safe_load(text) == {k: [str(c) for c in v] for k, v in config.items()}
    return text


def write_attribute_config(
    training_data_folder: str,
    output: str,
    num_common: int,
    num_sensitive: int,
    max_sensitive_prevalence: float = DEFAULT_MAX_SENSITIVE_PREVALENCE,
    min_sensitive_patients: int = DEFAULT_MIN_SENSITIVE_PATIENTS,
) -> dict[str, list[int]]:
    """Derive the config from a training sequence folder and write it as yml (atomically)."""
    training = parse_patients(read_sequence_folder(training_data_folder, "training_data_folder"), False)
    config = derive_attribute_config(
        training, num_common, num_sensitive, max_sensitive_prevalence, min_sensitive_patients
    )
    text = config_yaml(config, f"{len(training)} training patients", training.concept_prevalence().to_dict())
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return config


def _parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="python -m cehrgpt.analysis.privacy.config", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--training_data_folder", required=True)
    parser.add_argument("--output", required=True, help="the yml to write")
    parser.add_argument("--num_common", type=int, default=7)
    parser.add_argument("--num_sensitive", type=int, default=20)
    parser.add_argument("--max_sensitive_prevalence", type=float, default=DEFAULT_MAX_SENSITIVE_PREVALENCE)
    parser.add_argument("--min_sensitive_patients", type=int, default=DEFAULT_MIN_SENSITIVE_PATIENTS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def body() -> int:
        config = write_attribute_config(
            args.training_data_folder,
            args.output,
            args.num_common,
            args.num_sensitive,
            args.max_sensitive_prevalence,
            args.min_sensitive_patients,
        )
        print(
            f"wrote {args.output}: {len(config['common_attributes'])} common, "
            f"{len(config['sensitive_attributes'])} sensitive attributes"
        )
        return 0

    return run_command(body, AnalysisError)


if __name__ == "__main__":
    raise SystemExit(main())
