"""Converting models trained by the original CEHR-GPT package (fixtures made with its own classes)."""

from __future__ import annotations

import json

import pytest
import torch
from original_cehrgpt_fixtures import (
    FIXTURES,
    MODELS,
    copy_model,
    edit_vocabulary,
    expected,
    fixture_sequences,
    original_vocabulary,
    write_original_layout,
)
from transformers import AutoModelForCausalLM

from cehrgpt.analysis.io import read_sequence_folder
from cehrgpt.generation.engine import _cache_argument
from cehrgpt.grammar import TokenKind
from cehrgpt.models.tokenizer import load_tokenizer, vocabulary_token_kinds
from cehrgpt.tools import convert_original_model as convert

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def converted() -> dict[str, torch.nn.Module]:
    return {
        name: convert.convert_folder(FIXTURES / name / "model", FIXTURES / name / "tokenizer").model
        for name in MODELS
    }


def _pad_batch(sequences: list[torch.Tensor], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.zeros(len(sequences), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(sequences):
        cols = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, cols] = seq
        mask[row, cols] = 1
    return ids, mask


@pytest.mark.parametrize("name", MODELS)
def test_right_padded_batch_matches_the_original(converted, name):
    cases = expected(name)
    ids, mask = _pad_batch([s for s, _ in cases], left=False)
    with torch.no_grad():
        logits = converted[name](input_ids=ids, attention_mask=mask).logits
    for row, (seq, want) in enumerate(cases):
        assert torch.allclose(logits[row, : len(seq)], want, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_left_padded_batch_with_position_ids_matches_the_original(converted, name):
    cases = expected(name)
    ids, mask = _pad_batch([s for s, _ in cases], left=True)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = converted[name](input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
    for row, (seq, want) in enumerate(cases):
        assert torch.allclose(logits[row, -len(seq) :], want, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_token_by_token_with_a_cache_matches_the_original(converted, name):
    for seq, want in expected(name):
        model, past, steps = converted[name], None, []
        cache_argument = _cache_argument(model)
        with torch.no_grad():
            for i in range(len(seq)):
                out = model(input_ids=seq[None, i : i + 1], use_cache=True, **{cache_argument: past})
                past = out.past_key_values
                steps.append(out.logits[0, -1])
        assert torch.allclose(torch.stack(steps), want, atol=TOLERANCE, rtol=0)


def test_pretrained_embeddings_fold_into_rows_and_untie_the_output_layer(converted):
    model = converted["pretrained"]
    assert not model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr()
    assert model.config.architectures is None or model.config.architectures == ["GPT2LMHeadModel"]


def test_cli_writes_a_folder_loaded_like_a_native_model(tmp_path, capsys):
    write_original_layout(tmp_path / "patient_sequence" / "train", fixture_sequences())
    out = tmp_path / "converted"
    code = convert.main(
        [
            "--model_folder", str(FIXTURES / "default" / "model"),
            "--tokenizer_folder", str(FIXTURES / "default" / "tokenizer"),
            "--output_folder", str(out),
            "--demographic_data_path", str(tmp_path / "patient_sequence"),
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.count("\n") == 1 and "converted" in captured.out
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2
    assert "[LINEAR_PROB]" in warnings[0] and "VS" in warnings[0]
    assert "W1" in warnings[1]

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = load_tokenizer(out)
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert tokenizer.get_vocab() == original_vocabulary()
    for seq, want in expected("default"):
        with torch.no_grad():
            assert torch.allclose(model(input_ids=seq[None]).logits[0], want, atol=TOLERANCE, rtol=0)

    vocab = tokenizer.get_vocab()
    kinds = vocabulary_token_kinds(tokenizer)
    roles = {token: TokenKind(kinds[vocab[token]]) for token in vocab}
    assert roles["8507"] == roles["8532"] == TokenKind.GENDER
    assert roles["8527"] == roles["8516"] == TokenKind.RACE
    assert roles["9202"] == TokenKind.VISIT_TYPE
    assert roles["9201"] == TokenKind.INPATIENT_VISIT_TYPE
    assert roles["8717"] == roles["0"] == TokenKind.DISCHARGE
    assert roles["320128"] == roles["1112807"] == TokenKind.CONCEPT
    assert roles["313217"] == roles["4329847"] == TokenKind.CONCEPT
    assert roles["[LINEAR_PROB]"] == roles["VS"] == TokenKind.OOV
    assert roles["Gender/0"] == TokenKind.GENDER and roles["Race/0"] == TokenKind.RACE
    assert roles["W1"] == roles["D7"] == roles["LT"] == TokenKind.GAP

    report = json.loads((out / convert.REPORT_FILE).read_text())
    assert report["source_config_sha256"].startswith("sha256:") and len(report["source_config_sha256"]) == 71
    assert report["heads_dropped"] == ["sub-time-token head (use_sub_time_tokenization)"]
    assert report["weights_dropped"] == ["time_token_lm_head.weight"]
    assert report["oov_kind_tokens"] == ["VS", "[LINEAR_PROB]"]
    # never seen in the sequences: the builder's defaults
    assert report["role_defaulted_tokens"] == ["Gender/0", "Race/0"]
    assert report["patients_read_for_roles"] == 3
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "token_metadata.json",
            convert.REPORT_FILE,
        ]
    )


def test_reader_takes_the_original_patient_sequence_layout(tmp_path):
    sequences = fixture_sequences()
    folder = write_original_layout(tmp_path / "train", sequences)
    frame = read_sequence_folder(folder, role="demographic_data_path")
    assert list(frame.columns) == ["person_id", "concept_ids"]
    assert frame["person_id"].tolist() == [101, 102, 103]
    assert [list(s) for s in frame["concept_ids"]] == sequences


def test_a_vocabulary_without_start_converts_without_growing(tmp_path):
    model, tokenizer = copy_model(tmp_path)
    edit_vocabulary(tokenizer, rename={"[START]": "[BOS]"})
    conversion = convert.convert_folder(model, tokenizer)
    assert len(conversion.tokenizer) == conversion.model.config.vocab_size == 33
    assert conversion.tokenizer.bos_token is None


def test_weights_saved_as_pytorch_model_bin_convert_the_same(tmp_path):
    from safetensors.torch import load_file

    model, tokenizer = copy_model(tmp_path)
    weights = model / "model.safetensors"
    torch.save(load_file(weights), model / "pytorch_model.bin")
    weights.unlink()
    converted_bin = convert.convert_folder(model, tokenizer).model
    for seq, want in expected("default"):
        with torch.no_grad():
            assert torch.allclose(converted_bin(input_ids=seq[None]).logits[0], want, atol=TOLERANCE, rtol=0)
