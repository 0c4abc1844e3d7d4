"""Sliding past the model's window: whole long patients, exact logits after a slide, counts, the seed's 4096."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from generation_fixtures import PATIENTS, tiny_model
from transformers import LogitsProcessor, LogitsProcessorList

from cehrgpt import grammar
from cehrgpt.generation import engine
from cehrgpt.generation.constraints import GrammarConstrainedLogitsProcessor
from cehrgpt.generation.engine import ContinuousBatchDecoder
from cehrgpt.generation.generate_batch_hf_gpt_sequence import main
from cehrgpt.models.tokenizer import encode_sequence, save_tokenizer, vocabulary_token_kinds

STRATEGY = "top_p10000"


class RecordContexts(LogitsProcessor):
    """Keeps every (history, scores, live rows) the decoder shows its processors."""

    def __init__(self):
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.decoder: ContinuousBatchDecoder | None = None

    def __call__(self, input_ids, scores):
        assert self.decoder is not None
        self.calls.append((input_ids.clone(), scores.clone(), self.decoder.alive.clone()))
        return scores


def _prompts(tokenizer) -> torch.Tensor:
    return torch.tensor([encode_sequence(tokenizer, p.split()[:4]) for p in PATIENTS])


def _sliding_decoder(tokenizer, model, window, max_length, batch_size, seed=0, recorder=None):
    kinds = vocabulary_token_kinds(tokenizer)
    constraint = GrammarConstrainedLogitsProcessor(kinds, max_length)  # the total cap, not the window
    processors = LogitsProcessorList([recorder, constraint] if recorder else [constraint])
    decoder = ContinuousBatchDecoder(
        model,
        processors,
        window,
        tokenizer.convert_tokens_to_ids(grammar.END),
        batch_size,
        torch.Generator().manual_seed(seed),
        max_length=max_length,
        visit_start_token_id=tokenizer.convert_tokens_to_ids(grammar.VISIT_START),
    )
    if recorder is not None:
        recorder.decoder = decoder
    return decoder


def _tokens(tokenizer, ids: list[int]) -> list[str]:
    return tokenizer.convert_ids_to_tokens(ids)


def test_after_a_slide_the_cache_gives_the_logits_of_recomputing_the_context(tokenizer, monkeypatch):
    monkeypatch.setattr(engine, "COMPACT_EVERY", 2)  # compact often, so slides meet compaction too
    model = tiny_model(len(tokenizer), n_positions=16, seed=11)
    recorder = RecordContexts()
    decoder = _sliding_decoder(tokenizer, model, 16, 80, 3, seed=5, recorder=recorder)
    prompts, rng = _prompts(tokenizer), np.random.default_rng(5)
    result = decoder.run(8, lambda k: prompts[rng.integers(0, 4, k)])
    pad = tokenizer.convert_tokens_to_ids(grammar.PAD)
    assert result.slides > 0 and max(len(s) for s in result.sequences) > 16
    checked = 0
    for history, scores, alive in recorder.calls:
        for row in torch.nonzero(alive).flatten().tolist():
            context = history[row][history[row] != pad]
            assert len(context) <= 16  # the model never sees more than its window
            with torch.no_grad():
                alone = model(input_ids=context[None]).logits[0, -1]  # positions 0.. as after a slide
            torch.testing.assert_close(scores[row], alone, atol=1e-4, rtol=1e-4)
            checked += 1
    assert checked > 100


def test_a_slid_patient_keeps_every_token_and_its_context_is_prompt_plus_recent_visits(tokenizer):
    model = tiny_model(len(tokenizer), n_positions=16, seed=12)
    recorder = RecordContexts()
    decoder = _sliding_decoder(tokenizer, model, 16, 64, 1, seed=2, recorder=recorder)  # one row: one stream
    prompts, rng = _prompts(tokenizer), np.random.default_rng(2)
    result = decoder.run(4, lambda k: prompts[rng.integers(0, 4, k)])
    pad, vs = (tokenizer.convert_tokens_to_ids(t) for t in (grammar.PAD, grammar.VISIT_START))
    contexts = [h[0][h[0] != pad].tolist() for h, _, _ in recorder.calls]
    # rebuild each patient from what the model saw: a prompt, then the newest token of each next context
    rebuilt: list[list[int]] = []
    slides = 0
    for before, context in zip([None, *contexts], contexts, strict=False):
        if len(context) == 4:
            rebuilt.append(list(context))
            continue
        assert before is not None
        rebuilt[-1].append(context[-1])
        if len(context) != len(before) + 1:  # a slide: the prompt, then history from a [VS]
            slides += 1
            full = [*before, context[-1]]  # the window the sampled token filled
            assert len(full) == 16 and len(context) <= 8
            assert context == rebuilt[-1][:4] + rebuilt[-1][len(rebuilt[-1]) - len(context) + 4 :]
            recent = full[16 - 4 :]  # the newest half of the window, less the prompt
            assert context[4] == vs or vs not in recent
            assert vs not in full[16 - 4 : 16 - len(context) + 4]  # the earliest [VS] of that half
    assert slides == sum(result.slide_counts) > 0
    assert len(rebuilt) == len(result.sequences) == 4
    for seq, seen in zip(result.sequences, rebuilt, strict=True):
        assert seq[: len(seen)] == seen and len(seq) == len(seen) + 1  # plus the token that ended it
        assert grammar.first_violation(_tokens(tokenizer, seq)) is None
    hit = [len(s) for s, h in zip(result.sequences, result.hit_context_window, strict=True) if h]
    assert all(n == 64 for n in hit)  # closed by the total cap, never by the window


def test_sliding_is_reproducible_with_the_same_seed(tokenizer):
    model = tiny_model(len(tokenizer), n_positions=16, seed=13)

    def run(seed):
        decoder = _sliding_decoder(tokenizer, model, 16, 96, 4, seed=seed)
        prompts, rng = _prompts(tokenizer), np.random.default_rng(seed)
        return decoder.run(10, lambda k: prompts[rng.integers(0, 4, k)])

    a, b, c = run(1), run(1), run(2)
    assert a.sequences == b.sequences and a.slide_counts == b.slide_counts
    assert a.sequences != c.sequences
    assert sum(a.slide_counts) > 0 and max(len(s) for s in a.sequences) > 16


def test_the_engine_refuses_a_cap_below_the_window(tokenizer):
    model = tiny_model(len(tokenizer), n_positions=16)
    with pytest.raises(ValueError, match="max_length 12 is below the context window 16"):
        _sliding_decoder(tokenizer, model, 16, 12, 2)


# --- the command line ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def window16_model(tmp_path_factory, tokenizer) -> Path:
    """A random GPT-2 with 16 positions: most patients outgrow it."""
    folder = tmp_path_factory.mktemp("window16")
    tiny_model(len(tokenizer), n_positions=16, seed=4).save_pretrained(folder)
    save_tokenizer(tokenizer, folder)
    return folder


def _argv(model: Path, data: Path, out: Path, *extra: str, patients: int = 12, seed: int = 0) -> list[str]:
    return [
        "--model_folder", str(model), "--output_folder", str(out), "--demographic_data_path", str(data),
        "--num_of_patients", str(patients), "--batch_size", "4", "--buffer_size", "5",
        "--seed", str(seed), "--no_progress", *extra,
    ]  # fmt: skip


def _rows(out: Path) -> list[dict]:
    files = sorted((out / STRATEGY / "generated_sequences").glob("*.parquet"))
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def _summary(out: Path) -> dict:
    return json.loads((out / STRATEGY / "generation_summary.json").read_text())


def test_patients_longer_than_the_window_come_out_whole_and_counted(
    window16_model, demographic_folder, tmp_path, capsys
):
    argv = _argv(window16_model, demographic_folder, tmp_path / "a", "--max_patient_tokens", "120")
    assert main(argv) == 0
    assert capsys.readouterr().err == ""  # the model's own window: nothing to say
    rows = _rows(tmp_path / "a")
    lengths = [len(r["concept_ids"]) for r in rows]
    assert len(rows) == 12 and max(lengths) > 16 and max(lengths) <= 120
    assert all(grammar.first_violation(r["concept_ids"]) is None and r["is_valid"] for r in rows)
    summary = _summary(tmp_path / "a")
    shard = summary["shards"][0]
    slid = sum(n > 16 for n in lengths)
    assert summary["slid_patients"] == shard["slid_patients"] == slid > 0
    assert summary["slides"] == shard["slides"] >= slid
    assert (shard["context_window_used"], shard["max_patient_tokens_used"], shard["sliding"]) == (
        16,
        120,
        True,
    )
    closed = sum(r["concept_ids"][-1] != grammar.END for r in rows)
    assert summary["closed_by_context_window"] == closed and all(
        n == 120 for r, n in zip(rows, lengths, strict=True) if r["concept_ids"][-1] != grammar.END
    )
    # the same seed, the same files, byte for byte
    assert main(_argv(window16_model, demographic_folder, tmp_path / "b", "--max_patient_tokens", "120")) == 0
    files_a = sorted((tmp_path / "a" / STRATEGY / "generated_sequences").glob("*.parquet"))
    files_b = sorted((tmp_path / "b" / STRATEGY / "generated_sequences").glob("*.parquet"))
    assert [f.read_bytes() for f in files_a] == [f.read_bytes() for f in files_b]


def test_default_cap_is_eight_windows_and_no_sliding_keeps_one_window(
    window16_model, demographic_folder, tmp_path
):
    assert main(_argv(window16_model, demographic_folder, tmp_path / "slide", patients=4)) == 0
    shard = _summary(tmp_path / "slide")["shards"][0]
    assert (shard["context_window_used"], shard["max_patient_tokens_used"]) == (16, 128)
    assert all(len(r["concept_ids"]) <= 128 for r in _rows(tmp_path / "slide"))

    assert main(_argv(window16_model, demographic_folder, tmp_path / "one", "--no_sliding")) == 0
    rows = _rows(tmp_path / "one")
    assert all(len(r["concept_ids"]) <= 16 and r["is_valid"] for r in rows)
    summary = _summary(tmp_path / "one")
    assert (summary["slid_patients"], summary["slides"]) == (0, 0)
    assert (summary["shards"][0]["max_patient_tokens_used"], summary["shards"][0]["sliding"]) == (16, False)


def test_drop_long_sequences_retries_patients_that_reach_the_cap(
    window16_model, demographic_folder, tmp_path
):
    argv = _argv(
        window16_model, demographic_folder, tmp_path, "--max_patient_tokens", "40", "--drop_long_sequences"
    )
    assert main(argv) == 0
    rows = _rows(tmp_path)
    assert all(r["concept_ids"][-1] == grammar.END and len(r["concept_ids"]) <= 40 for r in rows)
    summary = _summary(tmp_path)
    assert summary["closed_by_context_window"] == 0 and summary["rejected_and_retried"] > 0
    assert summary["slid_patients"] == sum(len(r["concept_ids"]) > 16 for r in rows)


def test_the_seeds_context_window_beyond_the_models_positions_slides_and_says_so_once(
    window16_model, demographic_folder, tmp_path, capsys
):
    """Item 3: the seed's ``--context_window 4096`` on a model with fewer positions (here 100 on 16)."""
    assert main(_argv(window16_model, demographic_folder, tmp_path, "--context_window", "100")) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [
        (
            "--context_window 100 exceeds the model's 16 positions: decoding with its 16-token window, "
            "sliding past it, patients capped at 100 tokens"
        )
    ]
    rows = _rows(tmp_path)
    lengths = [len(r["concept_ids"]) for r in rows]
    assert len(rows) == 12 and max(lengths) > 16 and max(lengths) <= 100
    assert all(grammar.first_violation(r["concept_ids"]) is None for r in rows)
    shard = _summary(tmp_path)["shards"][0]
    assert (shard["context_window_used"], shard["max_patient_tokens_used"]) == (16, 100)
    assert shard["slid_patients"] == sum(n > 16 for n in lengths) > 0


def test_the_seeds_4096_on_a_model_with_fewer_positions(window16_model, demographic_folder, tmp_path, capsys):
    argv = _argv(window16_model, demographic_folder, tmp_path, "--context_window", "4096", patients=2)
    assert main(argv) == 0
    assert "patients capped at 4096 tokens" in capsys.readouterr().err
    assert _summary(tmp_path)["shards"][0]["max_patient_tokens_used"] == 4096
    assert all(r["is_valid"] for r in _rows(tmp_path))


# --- what reads long patients ----------------------------------------------------------------------------------


def _long_patient(visits: int) -> list[str]:
    """A grammar-valid patient of about ``6 * visits`` tokens (weekly visits, 7-day gaps)."""
    body = ["[VS]", "9202", "380378", "4029498", "[VE]", "D7"] * visits
    return ["year:2001", "age:12", "8532", "8527", *body, "[VS]", "9202", "380378", "[VE]", "[END]"]


def test_the_restore_decoders_and_the_fidelity_profile_take_patients_far_longer_than_a_window(
    window16_model, demographic_folder, tmp_path
):
    """Slid patients reach the restore and the analyses: nothing there assumes a window's length."""
    from cehrgpt.analysis.fidelity import profile_sequences
    from cehrgpt.omop.arrow_decode import decode_arrow
    from cehrgpt.omop.decode import decode_patient

    assert main(_argv(window16_model, demographic_folder, tmp_path, "--max_patient_tokens", "200")) == 0
    generated = [r["concept_ids"] for r in _rows(tmp_path)]
    long = _long_patient(1000)  # 6009 tokens: eleven of the tiny preset's 512-token windows
    assert len(long) == 6009 and grammar.first_violation(long) is None
    sequences = [long, *generated]
    fast = decode_arrow(pa.array(sequences, pa.list_(pa.string())), np.ones(len(sequences), bool))
    assert fast.decoded.all()
    for row, tokens in enumerate(sequences):
        patient = decode_patient(row + 1, tokens)
        assert not patient.rejections and patient.placed + patient.structural == len(tokens)
        assert len(patient.visits) == int((fast.visit["row"] == row).sum())
        assert len(patient.events) == int((fast.event["row"] == row).sum())
    assert fast.event["position"].max() == 6006  # the last concept, before [VE] [END]
    assert len(decode_patient(1, long).visits) == 1001
    vectorised = profile_sequences(sequences, True)
    reference = profile_sequences(sequences, True, vectorised=False)
    assert sorted(vectorised.lengths.tolist()) == sorted(reference.lengths.tolist())
    assert max(vectorised.lengths.tolist()) == 6009 and vectorised.excluded == 0
    assert sorted(vectorised.visits_per_patient.tolist()) == sorted(reference.visits_per_patient.tolist())
    assert max(vectorised.visits_per_patient.tolist()) == 1001
