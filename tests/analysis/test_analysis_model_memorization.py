"""The model's own memorisation: per-patient losses, the loss attack's metrics, the gate, bad inputs.

Models are small GPT-2s trained here on Eunomia patients whose whole history fits
the 256-token window (so the window trained on is the window scored):

- ``overfit``: 40 training patients, 1,000 steps at lr 5e-3, no dropout (training loss ≈ 0.01) —
  memorises them: refused on the model's own loss, and its release on copies;
- ``brief``: 1,000 training patients, 60 steps — learns the population, not its patients.

Both are scored against the same 200 held-out patients.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from cehrgpt import grammar
from cehrgpt.analysis import gate
from cehrgpt.analysis.privacy import memorization, model_memorization
from cehrgpt.analysis.privacy.common import MIN_HELD_OUT_PATIENTS
from cehrgpt.analysis.privacy.model_memorization import membership_metrics
from cehrgpt.generation import generate_batch_hf_gpt_sequence
from cehrgpt.train import train
from cehrgpt.train.scoring import first_window, membership_auc, window_losses

SEED = 7
WINDOW = 256
pytestmark = pytest.mark.slow


def write(frame: pd.DataFrame, folder: Path) -> Path:
    folder.mkdir(parents=True)
    frame[["person_id", "concept_ids"]].to_parquet(folder / "part-0.parquet", index=False)
    return folder


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = model_memorization.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- exact values on hand-made data ---------------------------------------------------------------------------


def test_loss_attack_metrics_on_known_losses():
    metrics, curve = membership_metrics(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.25, 0.5, 0.6, 0.7]))
    # 14 of the 16 (member, non-member) pairs have the member's loss lower
    assert metrics["model_mia_auc"] == 14 / 16
    # the two lowest losses are members: half the members exposed before the first false accusation
    assert metrics["model_mia_tpr_at_fpr_0.01"] == 0.5
    assert metrics["model_mia_tpr_at_fpr_0.1"] == 0.5
    assert metrics["model_loss_train_mean"] == pytest.approx(0.25)
    assert metrics["model_loss_holdout_mean"] == pytest.approx(0.5125)
    assert metrics["model_loss_gap"] == pytest.approx(0.2625)
    assert (metrics["model_num_training_patients"], metrics["model_num_evaluation_patients"]) == (4, 4)
    assert curve["fpr"][-1] == 1.0 and curve["tpr"][-1] == 1.0


def test_equal_losses_are_chance():
    metrics, _ = membership_metrics(np.full(5, 1.5), np.full(7, 1.5))
    assert metrics["model_mia_auc"] == 0.5
    assert metrics["model_loss_gap"] == 0.0


def test_the_trainers_rank_auc_is_the_roc_auc_ties_included():
    rng = np.random.default_rng(SEED)
    members, non_members = rng.integers(0, 6, 40).astype(float), rng.integers(1, 7, 55).astype(float)
    assert membership_auc(members, non_members) == pytest.approx(
        membership_metrics(members, non_members)[0]["model_mia_auc"], abs=1e-12
    )
    assert membership_auc(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.25, 0.5, 0.6, 0.7])) == 14 / 16


def test_first_window_keeps_a_short_history_whole_and_cuts_a_long_one_at_its_start():
    end = 3
    short = np.array([10, 11, 12, 13, 4, 20, 5], dtype=np.int32)
    assert first_window(short, 16, end).tolist() == [10, 11, 12, 13, 4, 20, 5, end]
    assert first_window(np.append(short, end), 16, end).tolist() == [10, 11, 12, 13, 4, 20, 5, end]
    long = np.arange(10, 40, dtype=np.int32)
    assert first_window(long, 8, end).tolist() == list(range(10, 18))
    assert first_window(long[:7], 8, end).tolist() == [*range(10, 17), end]  # 7 + [END] fits exactly


def test_window_losses_are_the_training_loss_of_each_patient_however_batched():
    torch.manual_seed(SEED)
    config = GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=1, n_head=2, pad_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    rng = np.random.default_rng(SEED)
    windows = [rng.integers(4, 50, size=int(n)).astype(np.int32) for n in rng.integers(2, 33, size=23)]
    batched = window_losses(model, windows, 0, 5, torch.device("cpu"), progress=False)
    model.loss_type = "ForCausalLM"  # the trainer's loss
    with torch.no_grad():
        one_by_one = []
        for window in windows:
            ids = torch.tensor(window[None], dtype=torch.long)
            one_by_one.append(float(model(input_ids=ids, labels=ids).loss))
    np.testing.assert_allclose(batched, one_by_one, rtol=0, atol=1e-5)


# --- trained models ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folders(eunomia_sequences, tmp_path_factory) -> dict[str, Path]:
    """Training sets of 40 and 1,000 patients and 200 held-out ones, each history fitting the window."""
    rng = np.random.default_rng(SEED)
    sequences = eunomia_sequences / "patient_sequence"
    fits = {}
    for split in ("train", "test"):
        rows = pd.read_parquet(sequences / split, columns=["person_id", "concept_ids"])
        rows = rows[rows["concept_ids"].map(len) < WINDOW]
        fits[split] = rows.iloc[rng.permutation(len(rows))].reset_index(drop=True)
    assert len(fits["train"]) >= 1040 and len(fits["test"]) >= 200
    root = tmp_path_factory.mktemp("model_memorization")
    held_out = fits["test"].iloc[:200]
    return {
        "root": root,
        "overfit": write(fits["train"].iloc[:40], root / "overfit" / "train").parent,
        "brief": write(fits["train"].iloc[40:1040], root / "brief" / "train").parent,
        "held_out": write(held_out, root / "held_out"),
        "few_held_out": write(held_out.iloc[: MIN_HELD_OUT_PATIENTS - 1], root / "few_held_out"),
    }


def trained(data: Path, held_out: Path, model: Path, **settings) -> Path:
    (data / "test").symlink_to(held_out)
    train(
        data,
        model,
        n_layer=2,
        n_embd=64,
        n_head=2,
        context_window=WINDOW,
        batch_size=8,
        logging_steps=50,
        eval_steps=0,
        save_steps=0,
        seed=SEED,
        **settings,
    )
    return model


@pytest.fixture(scope="module")
def overfit_model(folders) -> Path:
    return trained(
        folders["overfit"],
        folders["held_out"],
        folders["root"] / "overfit_model",
        learning_rate=5e-3,
        max_steps=1000,
        dropout=0.0,
        min_concept_patients=1,
    )


@pytest.fixture(scope="module")
def brief_model(folders) -> Path:
    return trained(folders["brief"], folders["held_out"], folders["root"] / "brief_model", max_steps=60)


def scored(folders, model: Path, name: str, *extra: str) -> list[str]:
    data = folders["overfit"] if "overfit" in model.name else folders["brief"]
    return [
        "--model_folder", str(model),
        "--training_data_folder", str(data / "train"),
        "--evaluation_data_folder", str(folders["held_out"]),
        "--output_folder", str(folders["root"] / name),
        "--device", "cpu",
        *extra,
    ]  # fmt: skip


def gate_on_model_metrics(folder: Path, capsys) -> tuple[int, str]:
    """The gate with its default ``model_mia_auc`` threshold, every other threshold off (no other metrics here)."""
    others = [
        flag
        for metric in gate.DEFAULT_THRESHOLDS
        if metric != "model_mia_auc"
        for flag in (f"--max_{metric}", str(gate.NO_LIMIT))
    ]
    code = gate.main(["--metrics", str(folder), *others])
    return code, capsys.readouterr().err


def test_an_overfit_model_is_exposed_and_refused_by_the_gate(folders, overfit_model, capsys):
    code, out, err = run(scored(folders, overfit_model, "overfit_out"), capsys)
    assert code == 0, err
    folder = folders["root"] / "overfit_out"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["model_mia_auc"] > 0.95
    assert metrics["model_mia_auc"] > gate.DEFAULT_THRESHOLDS["model_mia_auc"] + 0.2
    assert metrics["model_loss_train_mean"] < metrics["model_loss_holdout_mean"] - 1.0
    assert metrics["model_loss_gap"] == pytest.approx(
        metrics["model_loss_holdout_mean"] - metrics["model_loss_train_mean"]
    )
    assert (metrics["model_num_training_patients"], metrics["model_num_evaluation_patients"]) == (40, 200)
    assert "model_mia_auc" in out  # the metrics table
    # on the CPU the progress bar is the only other output
    assert err and {line.split(":")[0] for line in re.split(r"[\r\n]+", err) if line} == {
        "model memorisation"
    }

    table = pd.read_parquet(folder / "model_patient_losses.parquet")
    assert list(table.columns) == ["person_id", "set", "loss", "num_tokens", "truncated"]
    assert table["set"].value_counts().to_dict() == {"held_out": 200, "training": 40}
    assert not table["truncated"].any()
    expected_ids = pd.read_parquet(folders["overfit"] / "train")["person_id"].tolist()
    assert table.loc[table["set"] == "training", "person_id"].tolist() == expected_ids
    lengths = pd.read_parquet(folders["overfit"] / "train")["concept_ids"].map(len) + 1  # + [END]
    assert table.loc[table["set"] == "training", "num_tokens"].tolist() == lengths.tolist()
    assert table.groupby("set")["loss"].mean()["training"] == pytest.approx(metrics["model_loss_train_mean"])
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["patients_truncated"] == {"training": 0, "held_out": 0}
    assert summary["context_window"] == WINDOW

    # the training summary measured the same patients (fewer than its 500-patient sample) the same way
    summary_line = json.loads((overfit_model / "training_metrics.json").read_text())["model_memorization"]
    assert (summary_line["training_patients"], summary_line["held_out_patients"]) == (40, 200)
    assert summary_line["mia_auc"] == pytest.approx(metrics["model_mia_auc"], abs=1e-5)
    assert summary_line["loss_gap"] == pytest.approx(metrics["model_loss_gap"], abs=1e-4)

    code, err = gate_on_model_metrics(folder, capsys)
    assert code == 1
    assert [line.split()[1] for line in err.splitlines() if line.startswith("BREACH")] == ["model_mia_auc"]


def test_a_briefly_trained_model_passes_the_gate(folders, brief_model, capsys):
    code, _, err = run(scored(folders, brief_model, "brief_out"), capsys)
    assert code == 0, err
    folder = folders["root"] / "brief_out"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert 0.4 < metrics["model_mia_auc"] < gate.DEFAULT_THRESHOLDS["model_mia_auc"] - 0.02
    assert abs(metrics["model_loss_gap"]) < 0.1
    assert (metrics["model_num_training_patients"], metrics["model_num_evaluation_patients"]) == (1000, 200)
    code, err = gate_on_model_metrics(folder, capsys)
    assert (code, err) == (0, "")


def test_the_seed_picks_the_sample_of_a_large_set_and_nothing_else(folders, brief_model, capsys):
    def sample(seed: int, name: str) -> tuple[pd.DataFrame, dict, str]:
        code, _, err = run(
            scored(folders, brief_model, name, "--max_patients", "100", "--seed", str(seed)), capsys
        )
        assert code == 0, err
        table = pd.read_parquet(folders["root"] / name / "model_patient_losses.parquet")
        return table, json.loads((folders["root"] / name / "metrics.json").read_text()), err

    first, first_metrics, err = sample(3, "seed_3")
    again, again_metrics, _ = sample(3, "seed_3_again")
    other, _, _ = sample(4, "seed_4")
    pd.testing.assert_frame_equal(first, again)
    assert first_metrics == again_metrics
    assert (
        first_metrics["model_num_training_patients"] == first_metrics["model_num_evaluation_patients"] == 100
    )
    members = set(first.loc[first["set"] == "training", "person_id"])
    assert members != set(other.loc[other["set"] == "training", "person_id"])
    assert [line for line in err.splitlines() if "seeded sample" in line] == [
        f"warning: --{flag}: a seeded sample of 100 of its {size} patients is scored (--max_patients, --seed)"
        for flag, size in (("training_data_folder", 1000), ("evaluation_data_folder", 200))
    ]


# --- bad input ---------------------------------------------------------------------------------------------------


def _bad_inputs(folders, brief_model: Path) -> dict[str, tuple[list[str], str]]:
    root = folders["root"]
    (root / "no_model").mkdir(exist_ok=True)
    (root / "no_model" / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 10}))
    empty = root / "empty_rows"
    if not empty.exists():
        write(pd.DataFrame({"person_id": [1, 2], "concept_ids": [[], [grammar.END]]}), empty)
    return {
        "missing_training": (["--training_data_folder", str(root / "absent")], "does not exist"),
        "missing_model": (["--model_folder", str(root / "absent_model")], "holds no config.json"),
        "model_folder_without_weights": (["--model_folder", str(root / "no_model")], "--model_folder"),
        "model_folder_is_data": (["--model_folder", str(folders["held_out"])], "holds no config.json"),
        "empty_held_out": (["--evaluation_data_folder", str(empty)], "holds no patient with tokens"),
        "few_held_out": (["--evaluation_data_folder", str(folders["few_held_out"])], "expected at least 20"),
        "batch_size": (["--batch_size", "0"], "--batch_size is 0"),
        "max_patients": (["--max_patients", "-1"], "--max_patients is -1"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing_training",
        "missing_model",
        "model_folder_without_weights",
        "model_folder_is_data",
        "empty_held_out",
        "few_held_out",
        "batch_size",
        "max_patients",
    ],
)
def test_bad_input_is_one_error_line_and_nothing_written(folders, brief_model, case, capsys):
    override, expected = _bad_inputs(folders, brief_model)[case]
    output = folders["root"] / f"bad_{case}"
    argv = scored(folders, brief_model, f"bad_{case}")
    for flag, value in zip(override[::2], override[1::2], strict=True):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    code, out, err = run(argv, capsys)
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0]
    assert not output.exists()


def test_the_overfit_models_release_is_refused_on_copies(folders, overfit_model, capsys):
    """What a memorising model emits, as the generator writes it (closed by [END]), from its patients' prompts."""
    out = folders["root"] / "overfit_release"
    argv = [
        "--model_folder", str(overfit_model),
        "--output_folder", str(out),
        "--demographic_data_path", str(folders["overfit"] / "train"),
        "--num_of_patients", "200",
        "--batch_size", "50",
        "--buffer_size", "200",
        "--seed", str(SEED),
        "--device", "cpu",
        "--no_progress",
    ]  # fmt: skip
    assert generate_batch_hf_gpt_sequence.main(argv) == 0
    release = out / "top_p10000" / "generated_sequences"
    # as the generator writes patients: closed by [END], or (past the window, slid) at a visit's end by the cap
    last = pd.Series([list(t)[-1] for t in pd.read_parquet(release)["concept_ids"]])
    assert set(last) <= {grammar.END, grammar.VISIT_END} and (last == grammar.END).mean() > 0.9
    analysis = folders["root"] / "overfit_release_memorization"
    argv = [
        "--training_data_folder", str(folders["overfit"] / "train"),
        "--evaluation_data_folder", str(folders["held_out"]),
        "--synthetic_data_folder", str(release),
        "--output_folder", str(analysis),
        "--seed", str(SEED),
    ]  # fmt: skip
    assert memorization.main(argv) == 0
    metrics = json.loads((analysis / "metrics.json").read_text())
    # measured: 60% verbatim copies, 88% near copies, none of a held-out patient
    assert metrics["memorization_copy_share_train"] > 0.4, metrics
    assert metrics["memorization_near_copy_share_train"] > 0.7, metrics
    assert (
        metrics["memorization_copy_share_holdout"] == metrics["memorization_near_copy_share_holdout"] == 0.0
    )
    capsys.readouterr()
    others = [
        flag
        for metric in gate.DEFAULT_THRESHOLDS
        if not metric.startswith("memorization_")
        for flag in (f"--max_{metric}", str(gate.NO_LIMIT))
    ]
    assert gate.main(["--metrics", str(analysis), *others]) == 1
    breaches = {line.split()[1] for line in capsys.readouterr().err.splitlines() if line.startswith("BREACH")}
    assert breaches == {
        "memorization_copy_excess",
        "memorization_shifted_copy_excess",
        "memorization_near_copy_excess_lower",
    }
