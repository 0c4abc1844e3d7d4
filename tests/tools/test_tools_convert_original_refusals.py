"""What the converter refuses: exit 2, one line per problem, nothing written."""

from __future__ import annotations

import shutil

import pytest
import torch
from original_cehrgpt_fixtures import (
    BLOCKING,
    FIXTURES,
    copy_model,
    edit_config,
    edit_vocabulary,
    edit_weights,
)

from cehrgpt.tools import convert_original_model as convert


def _run(capsys, model, tokenizer, out) -> tuple[int, list[str]]:
    code = convert.main(
        ["--model_folder", str(model), "--tokenizer_folder", str(tokenizer), "--output_folder", str(out)]
    )
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) <= 1, err  # one line (exit-code convention): every problem on it, joined by " | "
    return code, [
        f"error: {problem}" for line in lines for problem in line.removeprefix("error: ").split(" | ")
    ]


def _refused(capsys, tmp_path, model, tokenizer) -> list[str]:
    out = tmp_path / "out"
    code, errors = _run(capsys, model, tokenizer, out)
    assert code == 2
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    return errors


@pytest.mark.parametrize("option", BLOCKING)
def test_each_blocking_option_is_refused(capsys, tmp_path, option):
    model, tokenizer = copy_model(tmp_path)
    shutil.copy(FIXTURES / "blocking" / option / "config.json", model / "config.json")
    errors = _refused(capsys, tmp_path, model, tokenizer)
    assert len(errors) == 1
    key = {"qwen2": "backbone", "llama_mlp": "decoder_mlp"}.get(option, option)
    assert errors[0].startswith(f"error: {model / 'config.json'}: blocking option {key}=")


def test_every_blocking_option_is_named_at_once(capsys, tmp_path):
    model, tokenizer = copy_model(tmp_path)
    shutil.copy(FIXTURES / "blocking" / "all_blocking" / "config.json", model / "config.json")
    errors = _refused(capsys, tmp_path, model, tokenizer)
    assert [e.split("blocking option ")[1].split("=")[0] for e in errors] == [
        "decoder_mlp",
        "apply_rotary",
        "causal_sfm",
        "include_values",
    ]


def test_cross_attention_is_refused(capsys, tmp_path):
    model, tokenizer = copy_model(tmp_path)
    edit_config(model, add_cross_attention=True)
    assert "blocking option add_cross_attention=True" in _refused(capsys, tmp_path, model, tokenizer)[0]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"model_type": "gpt2"}, "model_type is 'gpt2'"),
        ({"architectures": ["CehrGptForClassification"]}, "architectures is ['CehrGptForClassification']"),
    ],
)
def test_another_model_type_or_architecture_is_refused(capsys, tmp_path, changes, expected):
    model, tokenizer = copy_model(tmp_path)
    edit_config(model, **changes)
    errors = _refused(capsys, tmp_path, model, tokenizer)
    assert len(errors) == 1 and expected in errors[0]


def test_unknown_and_missing_weights_are_both_named(capsys, tmp_path):
    model, tokenizer = copy_model(tmp_path)
    edit_weights(model, drop=("cehrgpt.h.1.mlp.c_fc.bias",), add={"cehrgpt.wpe.weight": torch.zeros(32, 16)})
    errors = _refused(capsys, tmp_path, model, tokenizer)
    assert len(errors) == 2
    weights = model / "model.safetensors"
    assert errors[0] == f"error: {weights}: unknown weight(s) cehrgpt.wpe.weight"
    assert errors[1] == f"error: {weights}: missing weight(s) cehrgpt.h.1.mlp.c_fc.bias"


def test_a_misshapen_weight_is_refused(capsys, tmp_path):
    model, tokenizer = copy_model(tmp_path)
    edit_weights(model, add={"cehrgpt.ln_f.bias": torch.zeros(15)})
    errors = _refused(capsys, tmp_path, model, tokenizer)
    assert errors == [
        f"error: {model / 'model.safetensors'}: weight cehrgpt.ln_f.bias has shape (15,); expected (16,)"
    ]


def test_a_corrupt_weights_file_is_one_line(capsys, tmp_path):
    model, tokenizer = copy_model(tmp_path)
    (model / "model.safetensors").write_bytes(b"not a safetensors file")
    errors = _refused(capsys, tmp_path, model, tokenizer)
    assert len(errors) == 1 and "model.safetensors" in errors[0] and "not a readable safetensors" in errors[0]


def test_tokenizer_size_and_missing_specials_are_each_named(capsys, tmp_path):
    model, tokenizer = copy_model(tmp_path)
    edit_vocabulary(tokenizer, remove=("[END]",))
    errors = _refused(capsys, tmp_path, model, tokenizer)
    assert len(errors) == 2
    assert "holds 32 tokens but the model's vocab_size is 33" in errors[0]
    assert "lacks the special token(s) [END]" in errors[1]


def test_missing_pad_and_oov_are_named(capsys, tmp_path):
    model, tokenizer = copy_model(tmp_path)
    edit_vocabulary(tokenizer, rename={"[PAD]": "<pad>", "[OOV]": "<unk>"})
    errors = _refused(capsys, tmp_path, model, tokenizer)
    assert len(errors) == 1 and "lacks the special token(s) [PAD], [OOV]" in errors[0]


def test_a_meds_format_model_without_year_and_age_tokens_is_refused(capsys, tmp_path):
    model, tokenizer = copy_model(tmp_path)
    edit_vocabulary(
        tokenizer, rename={"year:2001": "MEDS_BIRTH", "year:1995": "AGE//1", "age:40": "a40", "age:63": "a63"}
    )
    errors = _refused(capsys, tmp_path, model, tokenizer)
    assert len(errors) == 1 and "no year:/age: tokens" in errors[0]


def test_no_tokenizer_file_is_refused(capsys, tmp_path):
    model, _ = copy_model(tmp_path)
    errors = _refused(capsys, tmp_path, model, tmp_path / "nowhere")
    assert len(errors) == 1 and "holds no cehrgpt_tokenizer.json" in errors[0]


def test_a_non_empty_output_folder_needs_overwrite(capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    model, tokenizer = FIXTURES / "default" / "model", FIXTURES / "default" / "tokenizer"
    code, errors = _run(capsys, model, tokenizer, out)
    assert code == 2 and len(errors) == 1 and "pass --overwrite" in errors[0]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    code = convert.main(
        [
            "--model_folder",
            str(model),
            "--tokenizer_folder",
            str(tokenizer),
            "--output_folder",
            str(out),
            "--overwrite",
        ]
    )
    assert code == 0
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


@pytest.mark.parametrize("content", [b"", b"not parquet at all"], ids=["zero_byte", "garbage"])
def test_demographic_data_that_is_not_parquet_is_one_line(capsys, tmp_path, content):
    model, tokenizer = copy_model(tmp_path)
    sequences = tmp_path / "patient_sequence"
    sequences.mkdir()
    (sequences / "part-0.parquet").write_bytes(content)
    out = tmp_path / "out"
    code = convert.main(
        [
            "--model_folder", str(model),
            "--tokenizer_folder", str(tokenizer),
            "--output_folder", str(out),
            "--demographic_data_path", str(sequences),
        ]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [
        f"error: --demographic_data_path {str(sequences)!r}: part-0.parquet "
        + (
            "is empty (0 bytes), not a parquet file"
            if not content
            else "is not a parquet file (no PAR1 magic bytes)"
        )
    ]
    assert not out.exists()


def _tree(folder):
    return sorted(
        (p.relative_to(folder).as_posix(), p.read_bytes()) for p in folder.rglob("*") if p.is_file()
    )


@pytest.mark.parametrize(
    ("where", "names"),
    [
        ("model", "--model_folder"),
        ("tokenizer", "--tokenizer_folder"),
        ("inside_model", "--model_folder"),
        ("above_both", "--model_folder"),
        ("model_via_dots", "--model_folder"),
    ],
)
def test_an_output_folder_overlapping_the_original_is_refused_even_with_overwrite(
    capsys, tmp_path, where, names
):
    model, tokenizer = copy_model(tmp_path)
    before = _tree(tmp_path)
    out = {
        "model": model,
        "tokenizer": tokenizer,
        "inside_model": model / "converted",
        "above_both": tmp_path,
        "model_via_dots": tokenizer / ".." / model.name,
    }[where]
    code = convert.main(
        [
            "--model_folder", str(model),
            "--tokenizer_folder", str(tokenizer),
            "--output_folder", str(out),
            "--overwrite",
        ]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith(f"error: --output_folder {str(out)!r} ") and names in line
    assert _tree(tmp_path) == before
