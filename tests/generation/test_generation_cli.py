"""The seed's generation command end to end: flags, files, counts, ids, determinism, resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cehrgpt import grammar
from cehrgpt.generation.generate_batch_hf_gpt_sequence import build_parser, main, settings_from_args
from cehrgpt.generation.prompts import PromptPool, build_prompt_pool, read_prompt_tokens
from cehrgpt.generation.sampling import SamplingConfig


def _argv(model: Path, data: Path, out: Path, **flags) -> list[str]:
    values = {
        "num_of_patients": 20,
        "batch_size": 6,
        "buffer_size": 8,
        "context_window": 32,
        "max_patient_tokens": 64,  # a patient may slide past the window once or twice
        "sampling_strategy": "TopPStrategy",
        "top_p": 1.0,
        "seed": 0,
    } | flags
    argv = ["--model_folder", str(model), "--output_folder", str(out), "--demographic_data_path", str(data)]
    for name, value in values.items():
        if value is True:
            argv.append(f"--{name}")
        elif value is not None:
            argv += [f"--{name}", str(value)]
    return [*argv, "--no_progress"]


def _files(out: Path, strategy: str = "top_p10000") -> list[Path]:
    return sorted((out / strategy / "generated_sequences").glob("*.parquet"))


def _read(out: Path, strategy: str = "top_p10000") -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in _files(out, strategy)])


def test_the_seed_command_line_parses():
    argv = (
        "--model_folder M --tokenizer_folder M --output_folder OUT --num_of_patients 128 --batch_size 16 "
        "--buffer_size 128 --context_window 4096 --sampling_strategy TopPStrategy --top_p 1.0 --temperature 1.0 "
        "--repetition_penalty 1.0 --epsilon_cutoff 0.00 --demographic_data_path DATA/patient_sequence/train"
    ).split()
    settings = settings_from_args(build_parser().parse_args(argv))
    assert (settings.model_folder, settings.tokenizer_folder, settings.output_folder) == ("M", "M", "OUT")
    assert (settings.num_of_patients, settings.batch_size, settings.buffer_size) == (128, 16, 128)
    assert settings.context_window == 4096
    assert settings.sampling == SamplingConfig(
        "TopPStrategy", top_p=1.0, temperature=1.0, repetition_penalty=1.0
    )
    assert settings.sampling.folder_name == "top_p10000"
    assert settings.demographic_data_path == "DATA/patient_sequence/train"
    assert (settings.min_num_of_concepts, settings.constrained_decoding, settings.seed) == (1, True, 0)
    assert (settings.shard_index, settings.num_shards, settings.prompt_source) == (0, 1, "data")


def test_help_exits_cleanly(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "--num_of_patients" in capsys.readouterr().out


def test_writes_exactly_the_patients_asked_for_in_buffer_sized_files(
    model_folder, demographic_folder, tmp_path
):
    assert main(_argv(model_folder, demographic_folder, tmp_path)) == 0
    files = _files(tmp_path)
    assert [f.name for f in files] == [f"seed0-shard00000-of00001-part0000{i}.parquet" for i in range(3)]
    assert [pq.read_metadata(f).num_rows for f in files] == [8, 8, 4]
    table = _read(tmp_path)
    assert table.schema.field("person_id").type == pa.int64()
    assert table.schema.field("concept_ids").type == pa.list_(pa.string())
    assert table.column("person_id").to_pylist() == list(range(1, 21))
    rows = table.to_pylist()
    assert all(r["is_valid"] and grammar.is_valid(r["concept_ids"]) for r in rows)
    assert all(r["num_of_concepts"] == len(r["concept_ids"]) <= 64 for r in rows)
    summary = json.loads((tmp_path / "top_p10000" / "generation_summary.json").read_text())
    assert (summary["patients"], summary["valid_fraction"]) == (20, 1.0)
    shard = summary["shards"][0]
    assert (shard["patients"], shard["files"], shard["files_skipped_as_done"]) == (20, 3, 0)
    assert shard["person_id_range"] == [1, 20]
    assert shard["tokens_per_second"] > 0 and shard["sampled_tokens"] > 0


def test_shards_add_up_exactly_with_disjoint_ids(model_folder, demographic_folder, tmp_path):
    for shard in range(3):
        argv = _argv(
            model_folder, demographic_folder, tmp_path, num_of_patients=11, shard_index=shard, num_shards=3
        )
        assert main(argv) == 0
    ids = _read(tmp_path).column("person_id").to_pylist()
    assert sorted(ids) == list(range(1, 12))
    summary = json.loads((tmp_path / "top_p10000" / "generation_summary.json").read_text())
    assert [s["patients"] for s in summary["shards"]] == [4, 4, 3]
    assert summary["patients"] == 11


def test_two_runs_with_other_seeds_share_a_folder_without_id_clashes(
    model_folder, demographic_folder, tmp_path
):
    assert main(_argv(model_folder, demographic_folder, tmp_path, seed=1, num_of_patients=5)) == 0
    assert main(_argv(model_folder, demographic_folder, tmp_path, seed=2, num_of_patients=5)) == 0
    ids = _read(tmp_path).column("person_id").to_pylist()
    assert sorted(ids) == [2**40 + i for i in range(1, 6)] + [2 * 2**40 + i for i in range(1, 6)]


def test_same_seed_gives_byte_identical_files(model_folder, demographic_folder, tmp_path):
    assert main(_argv(model_folder, demographic_folder, tmp_path / "a", seed=5)) == 0
    assert main(_argv(model_folder, demographic_folder, tmp_path / "b", seed=5)) == 0
    assert main(_argv(model_folder, demographic_folder, tmp_path / "c", seed=6)) == 0
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert [f.read_bytes() for f in a] == [f.read_bytes() for f in b]
    assert _read(tmp_path / "a").column("concept_ids") != _read(tmp_path / "c").column("concept_ids")


def _interrupt_after_first_file(out: Path) -> dict[str, bytes]:
    """Leave the folder as a pod preempted while writing the second file leaves it."""
    files = _files(out)
    for f in files[1:]:
        f.unlink()
    (files[1].parent / f".{files[1].name}.tmp-12345").write_bytes(b"half a parquet file")
    return {files[0].name: files[0].read_bytes()}


def test_a_restarted_shard_skips_finished_files_and_redoes_the_rest(
    model_folder, demographic_folder, tmp_path
):
    for run in ("a", "b"):
        assert main(_argv(model_folder, demographic_folder, tmp_path / run)) == 0
    first_file = _files(tmp_path / "a")[0]
    first_file_tokens = json.loads(pq.read_schema(first_file).metadata[b"cehrgpt.generation"])[
        "sampled_tokens"
    ]
    kept = _interrupt_after_first_file(tmp_path / "a")
    mtime = first_file.stat().st_mtime_ns
    _interrupt_after_first_file(tmp_path / "b")
    for run in ("a", "b"):
        assert main(_argv(model_folder, demographic_folder, tmp_path / run)) == 0
    files = _files(tmp_path / "a")
    assert [pq.read_metadata(f).num_rows for f in files] == [8, 8, 4]
    assert {files[0].name: files[0].read_bytes()} == kept and files[0].stat().st_mtime_ns == mtime
    table = _read(tmp_path / "a")
    assert table.column("person_id").to_pylist() == list(range(1, 21))
    assert all(table.column("is_valid").to_pylist())
    # the same restart point gives the same files (the rest is decoded from a seed of its own)
    assert [f.read_bytes() for f in files] == [f.read_bytes() for f in _files(tmp_path / "b")]
    shard = json.loads((tmp_path / "a" / "top_p10000" / "generation_summary.json").read_text())["shards"][0]
    assert (shard["files_skipped_as_done"], shard["patients"], shard["patients_in_files"]) == (1, 12, 20)
    # the summary counts the tokens of both attempts' files
    assert shard["sampled_tokens"] == first_file_tokens + shard["sampled_tokens_this_attempt"]
    assert first_file_tokens > 0 and shard["sampled_tokens_this_attempt"] > 0


def test_one_decoder_keeps_the_batch_fuller_than_one_file_could(model_folder, demographic_folder, tmp_path):
    argv = _argv(model_folder, demographic_folder, tmp_path, batch_size=6, buffer_size=2)
    assert main(argv) == 0
    assert [pq.read_metadata(f).num_rows for f in _files(tmp_path)] == [2] * 10
    shard = json.loads((tmp_path / "top_p10000" / "generation_summary.json").read_text())["shards"][0]
    # a decoder per 2-patient file could never fill more than 2 of its 6 rows
    assert shard["batch_occupancy"] > 0.5
    counts = [json.loads(pq.read_schema(f).metadata[b"cehrgpt.generation"]) for f in _files(tmp_path)]
    assert (
        sum(c["sampled_tokens"] for c in counts)
        == shard["sampled_tokens"]
        == shard["sampled_tokens_this_attempt"]
    )


def test_reusing_a_seed_with_other_settings_is_refused(model_folder, demographic_folder, tmp_path, capsys):
    assert main(_argv(model_folder, demographic_folder, tmp_path)) == 0
    capsys.readouterr()
    assert main(_argv(model_folder, demographic_folder, tmp_path, num_of_patients=21)) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: ")
        and "other settings (num_of_patients)" in err
        and "use another --seed" in err
    )


def test_min_num_of_concepts_and_drop_long_sequences_are_honoured(model_folder, demographic_folder, tmp_path):
    argv = _argv(model_folder, demographic_folder, tmp_path, min_num_of_concepts=3, drop_long_sequences=True)
    assert main(argv) == 0
    for tokens in _read(tmp_path).column("concept_ids").to_pylist():
        kinds = grammar.assign_kinds(tokens)
        assert kinds.count(grammar.TokenKind.CONCEPT) >= 3
        assert tokens[-1] == grammar.END


def test_unconstrained_decoding_reports_its_valid_fraction(model_folder, demographic_folder, tmp_path):
    assert main(_argv(model_folder, demographic_folder, tmp_path, no_constrained_decoding=True)) == 0
    table = _read(tmp_path)
    valid = table.column("is_valid").to_pylist()
    assert valid == [grammar.is_valid(t) for t in table.column("concept_ids").to_pylist()]
    summary = json.loads((tmp_path / "top_p10000" / "generation_summary.json").read_text())
    assert summary["valid_fraction"] == sum(valid) / 20 < 1.0


def test_sampling_flags_name_the_folder(model_folder, demographic_folder, tmp_path):
    argv = _argv(
        model_folder,
        demographic_folder,
        tmp_path,
        sampling_strategy="TopMixStrategy",
        top_p=0.95,
        top_k=5,
        temperature=0.7,
        num_of_patients=3,
    )
    assert main(argv) == 0
    assert len(_read(tmp_path, "top_mix_p9500_k5_temp_7000")) == 3


def test_distribution_prompts_take_gender_and_race_from_another_patient():
    ids = np.array([[0, 1, 2, 3], [10, 11, 12, 13], [20, 21, 22, 23]], dtype=np.int64)
    pool = PromptPool(ids=ids, source="distribution")
    drawn = pool.draw(np.random.default_rng(0), 300)
    assert ((drawn[:, 1] - drawn[:, 0]) == 1).all() and ((drawn[:, 3] - drawn[:, 2]) == 1).all()
    assert (drawn[:, 0] // 10 != drawn[:, 2] // 10).all()
    assert set(drawn[:, 0] // 10) == {0, 1, 2}


def test_prompts_outside_the_vocabulary_or_malformed_are_skipped_and_counted(tmp_path):
    from generation_fixtures import write_sequences

    write_sequences(
        tmp_path,
        [
            ["year:2001", "age:12", "8532", "8527", "[VS]"],
            ["year:2001", "age:12", "99999", "8527", "[VS]"],  # gender not in the vocabulary
            ["age:12", "year:2001", "8532", "8527"],  # malformed
            ["year:2001", "age:12"],  # too short
        ],
    )
    tokens, short = read_prompt_tokens(tmp_path)
    pool = build_prompt_pool(tokens, {"year:2001": 7, "age:12": 8, "8532": 9, "8527": 10}, "data", short)
    assert pool.ids.tolist() == [[7, 8, 9, 10]]
    assert pool.skipped == {"too_short": 1, "malformed": 1, "out_of_vocabulary": 1}


def _bad_demographic_file(tmp_path: Path) -> Path:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "part-0.parquet").write_bytes(b"not parquet at all")
    return folder


def _empty_demographic_folder(tmp_path: Path) -> Path:
    from generation_fixtures import write_sequences

    return write_sequences(tmp_path / "empty", [])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            {"sampling_strategy": "BeamStrategy"},
            "unknown sampling strategy 'BeamStrategy'; expected one of TopPStrategy, TopKStrategy, TopMixStrategy",
        ),
        ({"top_p": 0.0}, "top_p must be in (0, 1], got 0.0"),
        ({"top_p": 1.5}, "top_p must be in (0, 1], got 1.5"),
        ({"top_k": 0, "sampling_strategy": "TopKStrategy"}, "top_k must be a positive integer, got 0"),
        ({"temperature": 0}, "temperature must be positive, got 0.0"),
        (
            {"context_window": 7},
            "--context_window 7 is too small for a 4-token prompt plus one visit; expected at least 8",
        ),
        (
            {"context_window": 65, "no_sliding": True, "max_patient_tokens": None},
            (
                "--context_window 65 exceeds the model's 64 positions "
                "(drop --no_sliding to slide its window up to that length)"
            ),
        ),
        (
            {"no_sliding": True},
            "--max_patient_tokens needs sliding; drop --no_sliding or the cap",
        ),
        (
            {"max_patient_tokens": 16},
            "--max_patient_tokens 16 is below the 32-token context window; use --context_window 16 instead",
        ),
        (
            {"max_patient_tokens": 2**18 + 1},
            (
                "--max_patient_tokens must be in [1, 262144] (the restore numbers a patient's tokens in 18 bits), "
                "got 262145"
            ),
        ),
        (
            {"context_window": 2**18 + 1, "max_patient_tokens": None},
            "--context_window 262145 exceeds the 262144 tokens the restore numbers per patient",
        ),
        ({"num_of_patients": 0}, "--num_of_patients must be at least 1, got 0"),
        ({"shard_index": 2, "num_shards": 2}, "--shard_index must be in [0, 2), got 2"),
        ({"seed": -1}, "--seed must be in [0, 8388607] (person_id layout), got -1"),
        ({"num_beams": 4}, "beam search is not supported: --num_beams 4, expected 1"),
    ],
)
def test_bad_flags_fail_with_one_clear_line(
    model_folder, demographic_folder, tmp_path, capsys, flags, message
):
    assert main(_argv(model_folder, demographic_folder, tmp_path / "out", **flags)) == 2
    err = capsys.readouterr().err
    assert err == f"error: {message}\n"
    assert not (tmp_path / "out").exists()


def test_missing_model_folder_fails_clearly(demographic_folder, tmp_path, capsys):
    assert main(_argv(tmp_path / "nowhere", demographic_folder, tmp_path / "out")) == 2
    assert (
        capsys.readouterr().err
        == f"error: model folder '{tmp_path / 'nowhere'}' not found or holds no config.json\n"
    )
    assert not (tmp_path / "out").exists()


def test_missing_demographic_path_fails_clearly(model_folder, tmp_path, capsys):
    assert main(_argv(model_folder, tmp_path / "missing", tmp_path / "out")) == 2
    assert capsys.readouterr().err == (
        f"error: demographic data path '{tmp_path / 'missing'}' does not exist; expected a parquet file or folder\n"
    )
    assert not (tmp_path / "out").exists()


def test_empty_demographic_folder_fails_clearly(model_folder, tmp_path, capsys):
    data = _empty_demographic_folder(tmp_path)
    assert main(_argv(model_folder, data, tmp_path / "out")) == 2
    assert (
        capsys.readouterr().err
        == f"error: demographic data '{data}' holds no sequence with a 4-token prompt\n"
    )


def test_folder_without_parquet_fails_clearly(model_folder, tmp_path, capsys):
    (tmp_path / "nothing").mkdir()
    assert main(_argv(model_folder, tmp_path / "nothing", tmp_path / "out")) == 2
    assert (
        capsys.readouterr().err
        == f"error: demographic data path '{tmp_path / 'nothing'}' holds no parquet files\n"
    )


def test_unreadable_demographic_file_fails_clearly(model_folder, tmp_path, capsys):
    data = _bad_demographic_file(tmp_path)
    assert main(_argv(model_folder, data, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: cannot read 'concept_ids' from demographic file '{data / 'part-0.parquet'}'"
    )
    assert err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_distribution_prompts_end_to_end(model_folder, demographic_folder, tmp_path):
    from generation_fixtures import PROMPTS

    assert main(_argv(model_folder, demographic_folder, tmp_path, prompt_source="distribution")) == 0
    year_age = {tuple(p[:2]) for p in PROMPTS}
    gender_race = {tuple(p[2:]) for p in PROMPTS}
    for tokens in _read(tmp_path).column("concept_ids").to_pylist():
        assert tuple(tokens[:2]) in year_age and tuple(tokens[2:4]) in gender_race
        assert grammar.is_valid(tokens)


def test_cuda_asked_for_without_a_gpu_fails_clearly(
    model_folder, demographic_folder, tmp_path, capsys, monkeypatch
):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert (
        main(_argv(model_folder, demographic_folder, tmp_path / "out", device="cuda", dtype="bfloat16")) == 2
    )
    assert capsys.readouterr().err == "error: --device cuda asked for, but no CUDA device is available\n"
    assert not (tmp_path / "out").exists()


def test_explicit_cpu_float32(model_folder, demographic_folder, tmp_path):
    assert (
        main(
            _argv(
                model_folder, demographic_folder, tmp_path, device="cpu", dtype="float32", num_of_patients=3
            )
        )
        == 0
    )
    shard = json.loads((tmp_path / "top_p10000" / "generation_summary.json").read_text())["shards"][0]
    assert (shard["device"], shard["dtype"], shard["patients"]) == ("cpu", "float32", 3)


def test_a_rerun_of_a_finished_shard_decodes_nothing_and_keeps_its_counts(
    model_folder, demographic_folder, tmp_path
):
    assert main(_argv(model_folder, demographic_folder, tmp_path)) == 0
    summary_file = tmp_path / "top_p10000" / "generation_summary.json"
    first = json.loads(summary_file.read_text())["shards"][0]
    assert main(_argv(model_folder, demographic_folder, tmp_path)) == 0
    again = json.loads(summary_file.read_text())["shards"][0]
    assert (again["files_skipped_as_done"], again["patients"], again["sampled_tokens_this_attempt"]) == (
        3,
        0,
        0,
    )
    assert (again["sampled_tokens"], again["patients_in_files"]) == (first["sampled_tokens"], 20)
    assert again["batch_occupancy"] is None
