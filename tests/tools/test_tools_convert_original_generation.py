"""The seed's generation command on an original CEHR-GPT model's folders, unchanged."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from original_cehrgpt_fixtures import FIXTURES, fixture_sequences, original_vocabulary, write_original_layout

from cehrgpt import grammar
from cehrgpt.generation.generate_batch_hf_gpt_sequence import main
from cehrgpt.tools import convert_original_model as convert


@pytest.fixture(autouse=True)
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def demographics(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("original_etl") / "patient_sequence"
    write_original_layout(root / "train", fixture_sequences())
    return root / "train"


def _argv(model: Path, tokenizer: Path, data: Path, out: Path, shard: int) -> list[str]:
    return [
        "--model_folder", str(model), "--tokenizer_folder", str(tokenizer), "--output_folder", str(out),
        "--demographic_data_path", str(data), "--num_of_patients", "10", "--batch_size", "3",
        "--buffer_size", "4", "--context_window", "32", "--sampling_strategy", "TopKStrategy", "--top_k", "12",
        "--temperature", "1.5", "--seed", "7", "--shard_index", str(shard), "--num_shards", "2", "--no_progress",
    ]  # fmt: skip


def _generated(out: Path) -> pa.Table:
    files = sorted((out / "top_k12_temp_15000" / "generated_sequences").glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])


def test_generation_runs_on_the_original_folders_with_every_flag(demographics, tmp_path, capsys):
    model, tokenizer = FIXTURES / "default" / "model", FIXTURES / "default" / "tokenizer"
    out = tmp_path / "out"
    for shard in (0, 1):
        assert main(_argv(model, tokenizer, demographics, out, shard)) == 0
        err = capsys.readouterr().err
        said = [line for line in err.splitlines() if "converted in memory" in line]
        assert len(said) == 1 and "is an original CEHR-GPT model" in said[0]
    table = _generated(out)
    assert table.num_rows == 10
    assert len(set(table.column("person_id").to_pylist())) == 10
    assert all(table.column("is_valid").to_pylist())  # constrained decoding holds for a converted model
    vocab = original_vocabulary()
    never_sampled = {"[LINEAR_PROB]", "VS", grammar.OOV, grammar.PAD}
    for tokens in table.column("concept_ids").to_pylist():
        assert set(tokens) <= set(vocab) and not set(tokens) & never_sampled


def test_in_memory_conversion_generates_what_the_saved_conversion_generates(demographics, tmp_path, capsys):
    model, tokenizer = FIXTURES / "default" / "model", FIXTURES / "default" / "tokenizer"
    saved = tmp_path / "converted"
    assert (
        convert.main(
            [
                "--model_folder",
                str(model),
                "--tokenizer_folder",
                str(tokenizer),
                "--output_folder",
                str(saved),
                "--demographic_data_path",
                str(demographics),
            ]
        )
        == 0
    )
    assert main(_argv(model, tokenizer, demographics, tmp_path / "a", 0)) == 0
    assert "converted in memory" in capsys.readouterr().err
    assert main(_argv(saved, saved, demographics, tmp_path / "b", 0)) == 0
    assert "converted in memory" not in capsys.readouterr().err  # a saved conversion loads as a native model
    a, b = _generated(tmp_path / "a"), _generated(tmp_path / "b")
    assert a.column("concept_ids").to_pylist() == b.column("concept_ids").to_pylist()
    assert a.column("person_id").to_pylist() == b.column("person_id").to_pylist()


def test_a_refused_original_model_writes_nothing(demographics, tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text((FIXTURES / "blocking" / "all_blocking" / "config.json").read_text())
    (model / "model.safetensors").write_bytes(
        (FIXTURES / "default" / "model" / "model.safetensors").read_bytes()
    )
    out = tmp_path / "out"
    assert main(_argv(model, FIXTURES / "default" / "tokenizer", demographics, out, 0)) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    # one line (the exit-code convention), naming each of the four blocking options
    assert len(errors) == 1 and errors[0].count("blocking option") == 4
    assert not out.exists()


def test_fidelity_and_privacy_take_generated_and_original_layout_sequences(demographics, tmp_path, capsys):
    from cehrgpt.analysis import fidelity
    from cehrgpt.analysis.privacy import member_inference

    model, tokenizer = FIXTURES / "default" / "model", FIXTURES / "default" / "tokenizer"
    out = tmp_path / "gen"
    assert main(_argv(model, tokenizer, demographics, out, 0)) == 0
    synthetic = out / "top_k12_temp_15000" / "generated_sequences"
    code = fidelity.main(
        ["--real_data_folder", str(demographics), "--synthetic_data_folder", str(synthetic),
         "--output_folder", str(tmp_path / "fidelity")]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "fidelity" / "metrics.json").is_file()
    code = member_inference.main(
        ["--training_data_folder", str(demographics), "--evaluation_data_folder", str(demographics),
         "--synthetic_data_folder", str(synthetic), "--tokenizer_path", str(tokenizer),
         "--output_folder", str(tmp_path / "mia"), "--num_of_samples", "3"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "mia" / "metrics.json").is_file()
