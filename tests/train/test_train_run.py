"""Training end to end on a tiny hand-made data folder with a 2-layer, 32-wide model."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cehrgpt import grammar as g
from cehrgpt.models.tokenizer import vocabulary_token_kinds
from cehrgpt.train import main, train
from cehrgpt.train.data import IGNORE_INDEX, WindowDataset, collate_windows, encode_all, read_split

TINY = {
    "n_layer": 2,
    "n_embd": 32,
    "n_head": 2,
    "context_window": 32,
    "batch_size": 4,
    "learning_rate": 1e-2,
    "logging_steps": 1,
    "eval_steps": 0,
    "save_steps": 4,
    "seed": 7,
    "min_concept_patients": 1,  # 24 hand-made patients: keep every concept
}


def patient(i: int) -> list[str]:
    """A small valid patient; every third one is long enough to be windowed at 32 tokens."""
    tokens = [g.year_token(2000 + i % 5), g.age_token(20 + i % 7), str(8507 + 25 * (i % 2)), "8527"]
    for visit in range(2 + 4 * (i % 3 == 0)):
        if visit:
            tokens.append(g.gap_token(7 * (visit + i % 2)))
        tokens += [g.VISIT_START, "9202", str(4000 + i % 4), str(4100 + visit % 3), g.VISIT_END]
    return [*tokens, g.END]


def write_folder(root, train_patients: int = 24, test_patients: int = 6) -> None:
    for split, ids in (("train", range(train_patients)), ("test", range(100, 100 + test_patients))):
        (root / split).mkdir(parents=True)
        table = pa.table(
            {
                "person_id": pa.array(list(ids), pa.int64()),
                "concept_ids": pa.array([patient(i) for i in ids], pa.list_(pa.string())),
            }
        )
        pq.write_table(table, root / split / "part-00000.parquet")


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("patient_sequence")
    write_folder(root)
    return root


@pytest.fixture(scope="module")
def trained(data_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "model"
    metrics = train(data_folder, out, max_steps=12, **TINY)
    return out, metrics


def test_a_few_steps_reduce_the_loss(trained):
    _, metrics = trained
    losses = [entry["loss"] for entry in metrics["log_history"]]
    assert [entry["step"] for entry in metrics["log_history"]] == list(range(1, 13))
    assert losses[-1] < 0.7 * losses[0]
    assert metrics["validation_perplexity"] < metrics["unigram_baseline_perplexity"]


def test_metrics_file_holds_the_documented_fields(trained):
    out, metrics = trained
    written = json.loads((out / "training_metrics.json").read_text())
    assert written == metrics
    assert metrics["steps"] == 12
    assert metrics["steps_per_epoch"] == 6  # 24 patients / batch 4
    assert (metrics["num_train_patients"], metrics["num_test_patients"]) == (24, 6)
    assert metrics["resumed_from_step"] is None
    assert metrics["device"] == "cpu" and metrics["mixed_precision"] == "no"
    assert metrics["settings"]["n_layer"] == 2 and metrics["settings"]["preset"] == "tiny"
    assert (metrics["settings"]["dropout"], metrics["settings"]["attention_dropout"]) == (0.1, 0.0)
    assert metrics["validation_perplexity"] == pytest.approx(math.exp(metrics["validation_loss"]), rel=1e-4)
    for key in ("train_loss", "tokens_per_second", "wall_time_seconds", "unigram_baseline_perplexity"):
        assert metrics[key] > 0, key
    assert metrics["tokenizer"]["concepts_left_out_rare"] == 0


def test_output_folder_loads_with_auto_classes_and_reproduces_the_validation_loss(trained, data_folder):
    out, metrics = trained
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert (model.config.n_layer, model.config.n_embd, model.config.n_positions) == (2, 32, 32)
    assert model.config.vocab_size == len(tokenizer)
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids(g.END) == 3
    assert model.generation_config.pad_token_id == tokenizer.convert_tokens_to_ids(g.PAD) == 0
    assert model.generation_config.bos_token_id in (None, 2)
    assert vocabulary_token_kinds(out)[3] == g.TokenKind.END
    for name in (
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "token_metadata.json",
    ):
        assert (out / name).is_file(), name

    # The saved weights give the validation loss the run measured in memory.
    vocab = tokenizer.get_vocab()
    test_ids = encode_all(read_split(data_folder, "test"), vocab, vocab[g.OOV])
    dataset = WindowDataset(test_ids, 32, vocab[g.END], vocab[g.VISIT_START], TINY["seed"] + 1)
    batch = collate_windows([dataset[i] for i in range(len(dataset))], pad_id=0)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=IGNORE_INDEX
    )
    assert float(loss) == pytest.approx(metrics["validation_loss"], abs=1e-4)


def test_save_then_load_gives_identical_logits(trained, tmp_path):
    out, _ = trained
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.tensor([[7, 8, 9, 10, 4, 11, 12, 5]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)


def test_resume_of_a_finished_run_leaves_it_as_it_was(trained, data_folder, tmp_path):
    out, metrics = trained
    finished = tmp_path / "finished"
    shutil.copytree(out, finished)
    before = {p.name: p.read_bytes() for p in finished.iterdir() if p.is_file()}
    assert train(data_folder, finished, max_steps=12, resume=True, **TINY) == metrics
    assert {p.name: p.read_bytes() for p in finished.iterdir() if p.is_file()} == before
    assert json.loads((finished / "training_metrics.json").read_text())["tokens_per_second"] > 0


def test_every_file_of_the_model_has_the_umask_mode(trained):
    out, _ = trained
    mask = os.umask(0)
    os.umask(mask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir() if p.is_file()}
    assert "model.safetensors" in modes
    assert modes == dict.fromkeys(modes, 0o666 & ~mask)


def test_resume_continues_from_the_saved_step(trained, data_folder, tmp_path):
    out, metrics = trained
    # A run killed after step 8 (mid-epoch): its folder holds the tokenizer and that checkpoint, nothing else.
    killed = tmp_path / "killed"
    (killed / "checkpoints").mkdir(parents=True)
    for name in ("tokenizer", "step-8"):
        shutil.copytree(out / "checkpoints" / name, killed / "checkpoints" / name)

    resumed = train(data_folder, killed, max_steps=12, resume=True, **TINY)

    assert resumed["resumed_from_step"] == 8
    assert resumed["steps"] == 12
    assert [e["step"] for e in resumed["log_history"]] == list(range(1, 13))
    np.testing.assert_allclose(
        [e["loss"] for e in resumed["log_history"]], [e["loss"] for e in metrics["log_history"]], atol=1e-4
    )
    assert resumed["validation_loss"] == pytest.approx(metrics["validation_loss"], abs=1e-4)
    assert (killed / "training_metrics.json").is_file()


def test_checkpoints_keep_the_last_two(trained):
    out, _ = trained
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-12", "step-8", "tokenizer"]


def test_rare_concepts_never_reach_the_model_vocabulary(data_folder, tmp_path):
    metrics = train(data_folder, tmp_path / "m", max_steps=1, **{**TINY, "min_concept_patients": 7})
    vocab = AutoTokenizer.from_pretrained(tmp_path / "m").get_vocab()
    # 4000..4003 are each in 6 of 24 training patients; 4100..4102 in at least 8.
    assert not {"4000", "4001", "4002", "4003"} & set(vocab)
    assert {"4100", "4101", "4102"} <= set(vocab)
    assert metrics["tokenizer"]["concepts_left_out_rare"] == 4


def _cli(data, out, *extra: str) -> list[str]:
    flags = [f"--{k}={v}" for k, v in TINY.items()]
    return ["--data_folder", str(data), "--output_folder", str(out), *flags, *extra]


def test_cli_trains_and_prints_both_perplexities(data_folder, tmp_path, capsys):
    assert main(_cli(data_folder, tmp_path / "cli", "--max_steps", "2")) == 0
    printed = capsys.readouterr().out
    assert "validation perplexity" in printed and "unigram baseline" in printed
    # 7 concepts (4000..4003, 4100..4102), TINY keeps them all
    assert "tokenizer: 0 of 7 concepts left out (seen in fewer than 1 training patients)" in printed
    assert (tmp_path / "cli" / "training_metrics.json").is_file()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: None, "does not exist: expected the ETL's patient_sequence folder"),
        (lambda root: (root / "train").mkdir(parents=True), "no parquet files in"),
        (
            lambda root: [
                (root / "train").mkdir(parents=True),
                pq.write_table(pa.table({"person_id": [1]}), root / "train" / "p.parquet"),
            ],
            "has no 'concept_ids' column (columns: person_id)",
        ),
    ],
    ids=["missing", "empty", "wrong-columns"],
)
def test_a_bad_data_folder_fails_with_one_clear_line(tmp_path, capsys, make, message):
    make(tmp_path / "data")
    assert main(_cli(tmp_path / "data", tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "out" / "training_metrics.json").exists()


def test_a_missing_test_split_is_named(tmp_path, capsys):
    write_folder(tmp_path / "data")
    shutil.rmtree(tmp_path / "data" / "test")
    assert main(_cli(tmp_path / "data", tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert f"no parquet files in '{tmp_path / 'data' / 'test'}'" in err


def test_a_non_empty_output_folder_is_refused_without_resume(data_folder, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "something").write_text("x")
    assert main(_cli(data_folder, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert err.strip().endswith("is not empty: choose an empty folder or pass --resume")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch_size", "0"], "error: batch_size must be >= 1, got 0"),
        (["--n_embd", "31"], "error: n_embd (31) must be a multiple of n_head (2)"),
        (["--context_window", "4"], "error: context_window must exceed the 4-token prompt, got 4"),
        (["--learning_rate", "-1"], "error: learning_rate must be > 0, got -1.0"),
        (["--dropout", "1"], "error: dropout must be in [0, 1), got 1.0"),
        (["--attention_dropout", "-0.1"], "error: attention_dropout must be in [0, 1), got -0.1"),
    ],
)
def test_bad_settings_fail_with_a_clear_line(data_folder, tmp_path, capsys, flags, message):
    assert main(_cli(data_folder, tmp_path / "out", *flags)) == 2
    assert capsys.readouterr().err.strip() == message


def test_an_unknown_preset_is_an_argparse_error(data_folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--data_folder", str(data_folder), "--output_folder", str(tmp_path), "--preset", "huge"])
    assert exc.value.code == 2
    assert "invalid choice: 'huge'" in capsys.readouterr().err


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--max_steps",
        "--epochs",
        "--context_window",
        "--resume",
        "--min_concept_patients",
        "--seed",
    ):
        assert flag in out


def test_two_processes_under_torchrun_share_the_batches_with_no_code_change(data_folder, tmp_path):
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "cehrgpt.train", *_cli(data_folder, out, "--max_steps", "3"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((out / "training_metrics.json").read_text())
    assert metrics["num_processes"] == 2
    assert metrics["steps_per_epoch"] == 3  # 24 patients / (batch 4 x 2 processes)
    assert done.stdout.count("validation perplexity") == 1
    assert sorted(p.name for p in (out / "checkpoints" / "step-3").glob("random_states_*")) == [
        "random_states_0.pkl",
        "random_states_1.pkl",
    ]
