"""The one exit-code convention: 0 success, 1 a verdict, 2 bad input or environment with one ``error:`` line.

Every command's ``--help`` ends with the shared epilog; a representative bad input, permission problem and
verdict are driven through several commands as a user runs them (``python -m …`` in a subprocess), and the
exit code and the whole of stderr are asserted.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cehrgpt.exits import EPILOG

SRC = Path(__file__).resolve().parents[1] / "src"
COMMANDS = [
    ("cehrgpt.cli", []),
    ("cehrgpt.cli", ["pipeline", "compile"]),
    ("cehrgpt.cli", ["pipeline", "submit"]),
    ("cehrgpt.cli", ["pipeline", "compare"]),
    ("cehrgpt.data.prepare", []),
    ("cehrgpt.train.cli", []),
    ("cehrgpt.generation.generate_batch_hf_gpt_sequence", []),
    ("cehrgpt.omop.restore", []),
    ("cehrgpt.omop.quality", []),
    ("cehrgpt.tools.upload_omop", []),
    ("cehrgpt.tools.convert_original_model", []),
    ("cehrgpt.analysis.utility", []),
    ("cehrgpt.analysis.fidelity.job", []),
    ("cehrgpt.analysis.gate", []),
    ("cehrgpt.analysis.privacy.config", []),
    ("cehrgpt.analysis.privacy.attribute_inference", []),
    ("cehrgpt.analysis.privacy.member_inference", []),
    ("cehrgpt.analysis.privacy.nearest_neighbor_inference", []),
    ("cehrgpt.analysis.privacy.reid_inference", []),
    ("cehrgpt.analysis.privacy.memorization", []),
    ("cehrgpt.analysis.privacy.model_memorization", []),
    ("cehrgpt.pipeline.local", []),
]


def words(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize(("module", "prefix"), COMMANDS, ids=[" ".join([m, *p]) for m, p in COMMANDS])
def test_every_help_ends_with_the_exit_codes(module, prefix, capsys):
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exited:
        main([*prefix, "--help"])
    assert exited.value.code == 0
    assert words(capsys.readouterr().out).endswith(words(EPILOG))


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder an unprivileged user can reach (pytest's own is private to its user)."""
    folder = Path(tempfile.mkdtemp(prefix="cehrgpt-exit-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def run(module: str, *args: str | Path, unprivileged: bool = False) -> tuple[int, str, str]:
    """``python -m module args`` as a user runs it; as root, ``unprivileged`` drops to ``nobody`` so modes count."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", module, *map(str, args)]
    if unprivileged and os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv (util-linux): a file mode does not stop root")
        command = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", *command]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    return done.returncode, done.stdout, done.stderr


def writable(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o777)
    return folder


def read_only(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    return folder


def metrics(folder: Path, values: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    (folder / "metrics.json").write_text(json.dumps(values))
    (folder / "metrics.json").chmod(0o644)
    return folder


def safe_metrics(folder: Path, **changed: float) -> Path:
    from cehrgpt.analysis.gate import DEFAULT_THRESHOLDS

    values = {name: 0.0 for name, maximum in DEFAULT_THRESHOLDS.items() if maximum is not None}
    return metrics(folder, {**values, **changed})


def person_only_cdm(folder: Path) -> Path:
    """A CDM with a person table only: the quality step's verdict is a failed cdmTable check."""
    (folder / "person").mkdir(parents=True)
    pq.write_table(
        pa.table(
            {
                "person_id": [1],
                "gender_concept_id": [8532],
                "year_of_birth": [1980],
                "race_concept_id": [0],
                "ethnicity_concept_id": [0],
            }
        ),
        folder / "person" / "part-0.parquet",
    )
    for path in [folder, folder / "person", folder / "person" / "part-0.parquet"]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


def case_gate_breach(tmp: Path) -> tuple[str, list, int, str | None]:
    metrics_folder = safe_metrics(tmp / "m", reid_risk=0.5)
    return (
        "cehrgpt.analysis.gate",
        ["--metrics", metrics_folder, "--output_folder", writable(tmp / "g")],
        1,
        None,
    )


def case_gate_read_only(tmp: Path):
    out = read_only(tmp / "out")
    return (
        "cehrgpt.analysis.gate",
        ["--metrics", safe_metrics(tmp / "m"), "--output_folder", out],
        2,
        f"error: permission denied: {out}/.gate.json.tmp",
    )


def case_gate_missing_metrics(tmp: Path):
    return (
        "cehrgpt.analysis.gate",
        ["--metrics", tmp / "nowhere"],
        2,
        f"error: --metrics '{tmp}/nowhere' has no metrics.json; expected an analysis output",
    )


def case_quality_verdict(tmp: Path):
    cdm = person_only_cdm(tmp / "cdm")
    return "cehrgpt.omop.quality", ["--omop_folder", cdm, "--output_folder", writable(tmp / "q")], 1, None


def case_quality_read_only(tmp: Path):
    out = read_only(tmp / "q")
    return (
        "cehrgpt.omop.quality",
        ["--omop_folder", person_only_cdm(tmp / "cdm"), "--output_folder", out],
        2,
        f"error: permission denied: {out}/.quality_report.json.tmp",
    )


def case_compare_missing_run(tmp: Path):
    return (
        "cehrgpt.cli",
        ["pipeline", "compare", tmp / "no-run"],
        2,
        None,
    )


def case_quality_negative_threads(tmp: Path):
    cdm = person_only_cdm(tmp / "cdm")
    return (
        "cehrgpt.omop.quality",
        ["--omop_folder", cdm, "--output_folder", writable(tmp / "q"), "--threads", "-1"],
        2,
        "error: --threads -1: expected a positive number of DuckDB threads (leave it out for every core)",
    )


def case_gate_negative_threshold(tmp: Path):
    return (
        "cehrgpt.analysis.gate",
        [
            "--metrics",
            safe_metrics(tmp / "m"),
            "--output_folder",
            writable(tmp / "g"),
            "--max_reid_risk",
            "-0.1",
        ],
        2,
        "error: threshold max_reid_risk is -0.1; expected a finite number >= 0 (null in a yml switches it off)",
    )


def case_gate_nan_threshold(tmp: Path):
    (tmp / "t.yml").write_text("mia_auc: .nan\n")
    (tmp / "t.yml").chmod(0o644)
    return (
        "cehrgpt.analysis.gate",
        [
            "--metrics",
            safe_metrics(tmp / "m"),
            "--output_folder",
            writable(tmp / "g"),
            "--thresholds",
            tmp / "t.yml",
        ],
        2,
        "error: threshold max_mia_auc is nan; expected a finite number >= 0 (null in a yml switches it off)",
    )


def case_gate_minus_infinity_metric(tmp: Path):
    (tmp / "m").mkdir()
    metrics_file = safe_metrics(tmp / "m") / "metrics.json"
    metrics_file.write_text(metrics_file.read_text().replace('"reid_risk": 0.0', '"reid_risk": -Infinity'))
    return (
        "cehrgpt.analysis.gate",
        ["--metrics", tmp / "m", "--output_folder", writable(tmp / "g")],
        2,
        (
            "error: metric 'reid_risk' needed by a threshold is missing or not a finite number (-inf); "
            "expected it in one of the --metrics files"
        ),
    )


def case_upload_nan_lock_timeout(tmp: Path):
    cdm = person_only_cdm(tmp / "cdm")
    return (
        "cehrgpt.tools.upload_omop",
        [
            "--target",
            f"sqlite:///{writable(tmp / 'db')}/t.db",
            "--input_folder",
            cdm,
            "--lock_timeout_s",
            "nan",
        ],
        2,
        "error: lock timeout nan must be a positive number of seconds",
    )


def case_local_zero_shards(tmp: Path):
    return (
        "cehrgpt.pipeline.local",
        [
            "--omop_source",
            person_only_cdm(tmp / "cdm"),
            "--output_root",
            writable(tmp / "out"),
            "--num_shards",
            "0",
        ],
        2,
        "error: --num_shards must be at least 1, got 0",
    )


def case_local_zero_steps(tmp: Path):
    return (
        "cehrgpt.pipeline.local",
        [
            "--omop_source",
            person_only_cdm(tmp / "cdm"),
            "--output_root",
            writable(tmp / "out"),
            "--max_steps",
            "0",
        ],
        2,
        "error: --max_steps must be at least 1, got 0 (leave it out for the local default)",
    )


def case_upload_unknown_url_option(tmp: Path):
    target = "mysql+pymysql://root@127.0.0.1:3306/test?sslmode=x"
    return (
        "cehrgpt.tools.upload_omop",
        ["--target", target, "--input_folder", person_only_cdm(tmp / "cdm")],
        2,
        (
            f"error: connecting to {target} failed: the pymysql driver does not take an option of the "
            "URL (Connection.__init__() got an unexpected keyword argument 'sslmode'); "
            "the target was left unchanged"
        ),
    )


CASES = {
    "upload unknown URL option": case_upload_unknown_url_option,
    "quality --threads -1": case_quality_negative_threads,
    "gate negative threshold": case_gate_negative_threshold,
    "gate NaN threshold": case_gate_nan_threshold,
    "gate -Infinity metric": case_gate_minus_infinity_metric,
    "upload --lock_timeout_s nan": case_upload_nan_lock_timeout,
    "local --num_shards 0": case_local_zero_shards,
    "local --max_steps 0": case_local_zero_steps,
    "gate breach (verdict)": case_gate_breach,
    "gate read-only output": case_gate_read_only,
    "gate missing metrics": case_gate_missing_metrics,
    "quality failed check (verdict)": case_quality_verdict,
    "quality read-only output": case_quality_read_only,
    "compare missing run": case_compare_missing_run,
}


@pytest.mark.parametrize("case", list(CASES))
def test_exit_code_and_one_error_line(case, shared_tmp):
    module, args, code, line = CASES[case](shared_tmp)
    returned, _, stderr = run(module, *args, unprivileged=True)
    assert returned == code, stderr
    assert "Traceback" not in stderr, stderr
    if code == 2:  # one error line (progress bars and log lines may go to stderr too)
        errors = [x for x in stderr.splitlines() if x.startswith("error: ")]
        assert len(errors) == 1, stderr
        if line is not None:
            assert errors == [line]
    else:
        assert "error:" not in stderr, stderr
