"""Helpers over the original-CEHR-GPT fixtures (``tests/fixtures/original_cehrgpt``, made by its script).

Nothing here imports the original package: the fixtures are plain files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, save_file

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "original_cehrgpt"
MODELS = ("default", "pretrained")
BLOCKING = ("apply_rotary", "causal_sfm", "include_values", "qwen2", "llama_mlp")


def expected(name: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input ids, the original's logits on them alone) for each saved sequence of model ``name``."""
    tensors = load_file(FIXTURES / "expected_logits.safetensors")
    count = sum(1 for key in tensors if key.startswith(f"{name}.input_ids."))
    return [(tensors[f"{name}.input_ids.{n}"], tensors[f"{name}.logits.{n}"]) for n in range(count)]


def original_vocabulary(name: str = "default") -> dict[str, int]:
    tokenizer = json.loads((FIXTURES / name / "tokenizer" / "cehrgpt_tokenizer.json").read_text())
    return tokenizer["model"]["vocab"]


def fixture_sequences(name: str = "default") -> list[list[str]]:
    """The token lists the fixture's logits were computed on."""
    by_id = {i: t for t, i in original_vocabulary(name).items()}
    return [[by_id[int(i)] for i in ids] for ids, _ in expected(name)]


def copy_model(tmp: Path, name: str = "default") -> tuple[Path, Path]:
    """A writable copy of a fixture's model and tokenizer folders."""
    model = shutil.copytree(FIXTURES / name / "model", tmp / f"{name}_model")
    tokenizer = shutil.copytree(FIXTURES / name / "tokenizer", tmp / f"{name}_tokenizer")
    return model, tokenizer


def edit_config(model_folder: Path, **changes) -> None:
    path = model_folder / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


def edit_weights(model_folder: Path, drop: tuple[str, ...] = (), add: dict | None = None) -> None:
    path = model_folder / "model.safetensors"
    weights = {k: v for k, v in load_file(path).items() if k not in drop}
    weights.update(add or {})
    save_file(weights, path, metadata={"format": "pt"})


def edit_vocabulary(tokenizer_folder: Path, remove: tuple[str, ...] = (), rename: dict | None = None) -> None:
    """Remove tokens (later ids shift down) or respell them, keeping the original's file format."""
    path = tokenizer_folder / "cehrgpt_tokenizer.json"
    data = json.loads(path.read_text())
    tokens = sorted(data["model"]["vocab"], key=data["model"]["vocab"].get)
    tokens = [(rename or {}).get(t, t) for t in tokens if t not in remove]
    data["model"]["vocab"] = {t: i for i, t in enumerate(tokens)}
    if data["model"].get("unk_token") in remove:
        data["model"]["unk_token"] = tokens[0]
    path.write_text(json.dumps(data))


def write_original_layout(folder: Path, sequences: list[list[str]]) -> Path:
    """Patient sequences in the original ETL's parquet layout: every column it writes, most unused here."""
    folder.mkdir(parents=True, exist_ok=True)
    n = [len(s) for s in sequences]
    table = pa.table(
        {
            "person_id": pa.array(range(101, 101 + len(sequences)), pa.int64()),
            "concept_ids": pa.array(sequences, pa.list_(pa.string())),
            "ages": pa.array([[-1] * 4 + [40] * (k - 4) for k in n], pa.list_(pa.int32())),
            "dates": pa.array([[0] * 4 + [1600] * (k - 4) for k in n], pa.list_(pa.int32())),
            "visit_segments": pa.array([[0] * k for k in n], pa.list_(pa.int32())),
            "orders": pa.array([list(range(k)) for k in n], pa.list_(pa.int32())),
            "visit_concept_orders": pa.array([[1] * k for k in n], pa.list_(pa.int32())),
            "num_of_visits": pa.array([s.count("[VS]") for s in sequences], pa.int32()),
            "num_of_concepts": pa.array(n, pa.int32()),
            "visit_concept_ids": pa.array([["9202"] * k for k in n], pa.list_(pa.string())),
            "concept_value_masks": pa.array([[0] * k for k in n], pa.list_(pa.int32())),
            "number_as_values": pa.array([[None] * k for k in n], pa.list_(pa.float32())),
            "concept_as_values": pa.array([[None] * k for k in n], pa.list_(pa.string())),
            "is_numeric_types": pa.array([[0] * k for k in n], pa.list_(pa.int32())),
            "units": pa.array([[None] * k for k in n], pa.list_(pa.string())),
        }
    )
    pq.write_table(table, folder / "part-00000.parquet")
    return folder
