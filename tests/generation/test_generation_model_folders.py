"""Model and tokenizer folders that cannot be used: one line naming the file, exit 2, nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from generation_fixtures import PATIENTS

from cehrgpt.generation.generate_batch_hf_gpt_sequence import main
from cehrgpt.models.tokenizer import build_tokenizer, save_tokenizer


def _argv(model: Path, data: Path, out: Path, tokenizer: Path | None = None) -> list[str]:
    argv = [
        "--model_folder", str(model), "--output_folder", str(out), "--demographic_data_path", str(data),
        "--num_of_patients", "4", "--batch_size", "2", "--buffer_size", "4", "--context_window", "32",
        "--seed", "7", "--no_progress",
    ]  # fmt: skip
    return argv + (["--tokenizer_folder", str(tokenizer)] if tokenizer else [])


def _refused(capsys, argv: list[str], out: Path) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert not out.exists()
    return lines[0]


def test_a_tokenizer_of_another_model_is_refused_before_anything_is_written(
    model_folder, demographic_folder, tmp_path, capsys
):
    other, _ = build_tokenizer(
        [p.split() for p in PATIENTS] + [["year:1970", "age:5", "8551", "8657", "[VS]"]]
    )
    other_folder = tmp_path / "other_tokenizer"
    save_tokenizer(other, other_folder)
    out = tmp_path / "out"
    line = _refused(capsys, _argv(model_folder, demographic_folder, out, tokenizer=other_folder), out)
    assert str(other_folder) in line and str(model_folder) in line
    assert "the tokenizer belongs to another model" in line
    # the corrected rerun into the same folder with the same seed is not refused
    assert main(_argv(model_folder, demographic_folder, out, tokenizer=model_folder)) == 0
    assert len(list((out / "top_p10000" / "generated_sequences").glob("*.parquet"))) == 1


@pytest.mark.parametrize(
    ("config_text", "expected"),
    [
        (json.dumps({"vocab_size": 40, "n_layer": 2}), "names no model_type: not a model folder"),
        ("{not json", "is not valid JSON"),
    ],
)
def test_a_config_that_is_not_a_model_is_one_line(
    model_folder, demographic_folder, tmp_path, capsys, config_text, expected
):
    folder = shutil.copytree(model_folder, tmp_path / "model")
    (folder / "config.json").write_text(config_text)
    out = tmp_path / "out"
    line = _refused(capsys, _argv(folder, demographic_folder, out), out)
    assert str(folder / "config.json") in line and expected in line


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_weights_file_is_one_line(model_folder, demographic_folder, tmp_path, capsys, damage):
    folder = shutil.copytree(model_folder, tmp_path / "model")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(b"\x00garbage" * 8 if damage == "garbage" else data[: len(data) // 2])
    out = tmp_path / "out"
    line = _refused(capsys, _argv(folder, demographic_folder, out), out)
    assert str(weights) in line and "not a readable safetensors file" in line


@pytest.mark.parametrize("damage", ["truncated", "empty", "not_a_tokenizer"])
def test_a_broken_tokenizer_file_is_one_line(model_folder, demographic_folder, tmp_path, capsys, damage):
    folder = shutil.copytree(model_folder, tmp_path / "model")
    tokenizer_file = folder / "tokenizer.json"
    text = tokenizer_file.read_text()
    tokenizer_file.write_text(
        {"truncated": text[: len(text) // 2], "empty": "", "not_a_tokenizer": '{"model": 1}'}[damage]
    )
    out = tmp_path / "out"
    line = _refused(capsys, _argv(folder, demographic_folder, out), out)
    assert line.startswith(f"error: {str(tokenizer_file)!r} is not a readable tokenizer file (")
