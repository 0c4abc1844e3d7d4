"""Fixtures for the analysis tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from analysis_sequences import write_patients


@pytest.fixture
def make_folder(tmp_path: Path) -> Callable[[str, Sequence[Sequence[str]]], str]:
    """Write token lists as a one-file sequence folder under tmp_path and return its path."""

    def make(name: str, patients: Sequence[Sequence[str]]) -> str:
        return str(write_patients(tmp_path / name, patients))

    return make
