"""A zero-byte or foreign ``.parquet`` in a sequence folder ends an analysis in one line naming the file."""

from __future__ import annotations

from pathlib import Path

import pytest
from analysis_sequences import patient_tokens

from cehrgpt.analysis import fidelity
from cehrgpt.analysis.io import AnalysisError, read_sequence_folder
from cehrgpt.analysis.privacy import memorization

PATIENTS = [patient_tokens(30 + i, [101, 102 + i % 3, 201 + i % 2]) for i in range(6)]
BROKEN = {
    "empty": (b"", "is empty (0 bytes), not a parquet file"),
    "foreign": (b"person_id,concept_ids\n1,101\n", "is not a parquet file (no PAR1 magic bytes)"),
    "short": (b"PAR1", "is 4 bytes, too short for a parquet file"),
}


def break_folder(folder: str, content: bytes) -> Path:
    """A second file in the folder, named like parquet but not parquet."""
    bad = Path(folder) / "part-00001.parquet"
    bad.write_bytes(content)
    return bad


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_the_reader_names_the_file_that_is_not_parquet(make_folder, kind):
    content, why = BROKEN[kind]
    bad = break_folder(make_folder("synthetic", PATIENTS), content)
    with pytest.raises(AnalysisError) as error:
        read_sequence_folder(bad.parent, role="synthetic_data_folder")
    assert str(error.value) == f"--synthetic_data_folder {str(bad.parent)!r}: {bad.name} {why}"


def test_a_parquet_file_with_a_broken_footer_is_named_too(make_folder):
    good = make_folder("synthetic", PATIENTS)
    bad = break_folder(good, b"PAR1" + b"\0" * 20 + b"PAR1")
    with pytest.raises(AnalysisError) as error:
        read_sequence_folder(good, role="synthetic_data_folder")
    assert str(error.value).startswith(f"--synthetic_data_folder {good!r}: cannot be read as parquet (")
    assert "\n" not in str(error.value) and bad.name in str(error.value)


def fidelity_argv(folders: dict[str, str], out: Path) -> list[str]:
    return [
        "--real_data_folder", folders["train"],
        "--synthetic_data_folder", folders["synthetic"],
        "--output_folder", str(out),
    ]  # fmt: skip


def memorization_argv(folders: dict[str, str], out: Path) -> list[str]:
    return [
        "--training_data_folder", folders["train"],
        "--evaluation_data_folder", folders["test"],
        "--synthetic_data_folder", folders["synthetic"],
        "--output_folder", str(out),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("module", "argv"),
    [(fidelity, fidelity_argv), (memorization, memorization_argv)],
    ids=["fidelity", "memorisation"],
)
def test_an_analysis_stops_in_one_line_with_exit_2(module, argv, make_folder, tmp_path, capsys):
    folders = {name: make_folder(name, PATIENTS) for name in ("train", "test", "synthetic")}
    bad = break_folder(folders["synthetic"], b"")
    out = tmp_path / "out"
    assert module.main(argv(folders, out)) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (
        f"error: --synthetic_data_folder {folders['synthetic']!r}: {bad.name} is empty (0 bytes), not a parquet file"
    )
    assert "Traceback" not in err
    assert not (out / "metrics.json").exists()
