"""scripts/omop_pipeline.sh: the seed's command line, both flag forms, portable sh, a real local run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omop_restore_data import SEQUENCES, write_sequences, write_vocabulary

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "omop_pipeline.sh"


def run_script(args: list[str], python: str, shell: str = "sh") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": python}
    return subprocess.run([shell, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture
def echo_python(tmp_path) -> str:
    """A stand-in for python that prints the arguments it was given, one per line."""
    stub = tmp_path / "echo-python"
    stub.write_text('#!/bin/sh\nfor a in "$@"; do printf \'%s\\n\' "$a"; done\n')
    stub.chmod(0o755)
    return str(stub)


EXPECTED = [
    "-m",
    "cehrgpt.omop.restore",
    "--patient_sequence_folder",
    "/in/gen sequences/",
    "--omop_folder",
    "gs://bucket/omop",
    "--source_omop_folder",
    "/vocab",
    "--spark_master",
    "local[10]",
]


@pytest.mark.parametrize("shell", ["sh", "dash"])
def test_script_is_valid_posix_sh(shell):
    assert subprocess.run([shell, "-n", str(SCRIPT)], capture_output=True).returncode == 0


@pytest.mark.parametrize(
    "args",
    [
        [
            "--patient-sequence-folder=/in/gen sequences/",
            "--omop-folder=gs://bucket/omop",
            "--source-omop-folder=/vocab",
            "--cpu-cores=10",
        ],
        [
            "--patient-sequence-folder",
            "/in/gen sequences/",
            "--omop-folder",
            "gs://bucket/omop",
            "--source-omop-folder",
            "/vocab",
            "--cpu-cores",
            "10",
        ],
    ],
    ids=["equals", "space"],
)
def test_both_flag_forms_run_the_restore_module_on_local_spark(echo_python, args):
    result = run_script(args, echo_python, shell="dash")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == EXPECTED


@pytest.mark.parametrize(
    "args,message",
    [
        (["--omop-folder=o", "--source-omop-folder=v"], "error: --patient-sequence-folder is required"),
        (["--patient-sequence-folder=p", "--source-omop-folder=v"], "error: --omop-folder is required"),
        (["--patient-sequence-folder=p", "--omop-folder=o"], "error: --source-omop-folder is required"),
        (
            ["--patient-sequence-folder=p", "--omop-folder=o", "--source-omop-folder=v", "--cpu-cores=two"],
            "error: --cpu-cores must be a positive whole number, got 'two'",
        ),
        (
            ["--patient-sequence-folder=p", "--omop-folder=o", "--source-omop-folder=v", "--cpu-cores=0"],
            "error: --cpu-cores must be a positive whole number, got '0'",
        ),
        (
            ["--patient-sequence-folder=p", "--omop-folder=o", "--source-omop-folder=v", "--id-offset=-3"],
            "error: --id-offset must be a whole number, got '-3'",
        ),
        (
            [
                "--patient-sequence-folder=p",
                "--omop-folder=o",
                "--source-omop-folder=v",
                "--type-concept-id=EHR",
            ],
            "error: --type-concept-id must be a whole number, got 'EHR'",
        ),
        (["--patient-sequence-folder"], "error: --patient-sequence-folder needs a value"),
        (["--output=x"], "error: unknown flag '--output'"),
        (["stray"], "error: unexpected argument 'stray'"),
    ],
)
def test_bad_arguments_fail_with_one_line(echo_python, args, message):
    result = run_script(args, echo_python)
    assert result.returncode == 2
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1
    assert result.stdout == ""


def test_type_concept_id_offset_and_min_persons_pass_through(echo_python):
    args = ["--patient-sequence-folder=/in/gen sequences/", "--omop-folder=gs://bucket/omop",
            "--source-omop-folder=/vocab", "--cpu-cores=10", "--id-offset", "0", "--type-concept-id=32879",
            "--min-persons=0"]  # fmt: skip
    result = run_script(args, echo_python, shell="dash")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        *EXPECTED,
        "--type_concept_id",
        "32879",
        "--id_offset",
        "0",
        "--min_persons",
        "0",
    ]


def test_the_end_date_cut_off_passes_through(echo_python):
    args = ["--patient-sequence-folder=/in/gen sequences/", "--omop-folder=gs://bucket/omop",
            "--source-omop-folder=/vocab", "--cpu-cores=10", "--end-date", "2020-12-31"]  # fmt: skip
    result = run_script(args, echo_python, shell="dash")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [*EXPECTED, "--end_date", "2020-12-31"]
    result = run_script([*args[:4], "--end-date=31/12/2020"], echo_python)
    assert (result.returncode, result.stderr) == (
        2,
        "error: --end-date must be YYYY-MM-DD, got '31/12/2020'\n",
    )
    assert "--end-date" in run_script(["--help"], echo_python).stdout


def test_help_exits_zero(echo_python):
    result = run_script(["--help"], echo_python)
    assert result.returncode == 0 and "--patient-sequence-folder=P" in result.stdout


def test_real_run_with_the_seed_command_line(tmp_path):
    seq = write_sequences(tmp_path / "generated_sequences", SEQUENCES[:2])
    vocab = write_vocabulary(tmp_path / "vocab")
    out = tmp_path / "restored_omop"
    result = run_script(
        [
            f"--patient-sequence-folder={seq}/",
            f"--omop-folder={out}/",
            f"--source-omop-folder={vocab}",
            "--cpu-cores=2",
        ],
        sys.executable,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "restore_report.json").read_text())
    assert (report["input_patients"], report["patients_restored"]) == (2, 2)
    assert (out / "_SUCCESS").exists()
    assert "restored 2 of 2 patients" in result.stdout


def _stub(path: Path, name: str, imports_cehrgpt: bool) -> Path:
    """A stand-in python named ``name`` that can (or cannot) import cehrgpt and echoes its name and arguments."""
    path.mkdir(parents=True, exist_ok=True)
    stub = path / "python"
    probe = "exit 0" if imports_cehrgpt else "exit 1"
    stub.write_text(
        f'#!/bin/sh\nif [ "$1" = "-c" ]; then {probe}; fi\n'
        f"printf '%s\\n' {name}\n"
        'for a in "$@"; do printf \'%s\\n\' "$a"; done\n'
    )
    stub.chmod(0o755)
    return stub


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A copy of the script in a stand-in repository checkout (its .venv is added per test)."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    (repo / "scripts" / "omop_pipeline.sh").write_text(SCRIPT.read_text())
    return repo


@pytest.mark.parametrize(
    "path_python_imports,has_venv,chosen",
    [(True, True, "path-python"), (False, True, "venv-python"), (True, False, "path-python")],
)
def test_without_python_set_the_script_picks_an_interpreter_that_imports_cehrgpt(
    tmp_path, checkout, path_python_imports, has_venv, chosen
):
    _stub(tmp_path / "bin", "path-python", path_python_imports)
    if has_venv:
        _stub(checkout / ".venv" / "bin", "venv-python", True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    env["PATH"] = f"{tmp_path / 'bin'}:/usr/bin:/bin"
    script = checkout / "scripts" / "omop_pipeline.sh"
    args = ["--patient-sequence-folder=/in/gen sequences/", "--omop-folder=gs://bucket/omop"]
    args += ["--source-omop-folder=/vocab", "--cpu-cores=10"]
    result = subprocess.run(["dash", str(script), *args], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [chosen, *EXPECTED]


def test_without_any_python_that_imports_cehrgpt_the_script_says_what_to_do(tmp_path, checkout):
    _stub(tmp_path / "bin", "path-python", imports_cehrgpt=False)
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    env["PATH"] = f"{tmp_path / 'bin'}:/usr/bin:/bin"
    script = checkout / "scripts" / "omop_pipeline.sh"
    args = ["--patient-sequence-folder=p", "--omop-folder=o", "--source-omop-folder=v"]
    result = subprocess.run(["sh", str(script), *args], capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert result.stderr == (
        "error: no python that can import cehrgpt: activate a venv that has it, "
        "run 'make venv' in the repository, or set $PYTHON\n"
    )
    assert result.stdout == ""
