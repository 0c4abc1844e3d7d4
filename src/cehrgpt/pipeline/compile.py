"""Compile the pipelines in ``pipelines/`` to ``pipelines/compiled/<name>.yaml``, deterministically.

The pipeline and component modules live at the repository root (they wire the
library, they are not part of it), so compiling needs the repository root on
``sys.path``; :func:`compile_pipelines` puts it there.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

#: name → (module, pipeline function) under the repository root.
PIPELINES: dict[str, tuple[str, str]] = {
    "training": ("pipelines.training", "training"),
    "synthetic_data": ("pipelines.synthetic_data", "synthetic_data"),
    "end_to_end": ("pipelines.end_to_end", "end_to_end"),
}
COMPILED_FOLDER = Path("pipelines") / "compiled"
_VOLATILE = re.compile(r"^\s*sdkVersion: .*$\n?", re.MULTILINE)
_HEADER_DEFAULT = re.compile(r"^(#\s+\w+: \w+ \[Default: )(.*)(\])$")


class CompileError(RuntimeError):
    """A pipeline is unknown or its module cannot be imported."""


def load_pipeline(name: str, repo_root: Path):
    """The ``@dsl.pipeline`` object called ``name`` (one of :data:`PIPELINES`)."""
    if name not in PIPELINES:
        raise CompileError(f"unknown pipeline {name!r}: expected one of {', '.join(PIPELINES)}")
    module_name, attribute = PIPELINES[name]
    if not (repo_root / module_name.replace(".", "/")).with_suffix(".py").is_file():
        raise CompileError(
            f"{module_name} not found under {str(repo_root)!r}: run from the repository root or pass --repo_root"
        )
    root = str(repo_root.resolve())
    if root not in sys.path:
        sys.path.insert(0, root)
    return getattr(importlib.import_module(module_name), attribute)


def strip_volatile(compiled_yaml: str) -> str:
    """The compiled text without what changes with no change to the pipeline (the kfp SDK version line)."""
    return _VOLATILE.sub("", compiled_yaml)


def _sorted_literal(value):
    if isinstance(value, dict):
        return {k: _sorted_literal(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted_literal(v) for v in value]
    return value


def stable_header(compiled_yaml: str) -> str:
    """The compiled text with dict defaults in its comment header in sorted key order.

    kfp prints those defaults from a protobuf Struct, whose key order changes
    from one process to the next; the YAML body itself is already sorted.
    """
    lines = compiled_yaml.split("\n")
    for i, line in enumerate(lines):
        if not line.startswith("#"):
            break
        if (m := _HEADER_DEFAULT.match(line)) and m.group(2)[:1] in "[{":
            value = _sorted_literal(ast.literal_eval(m.group(2)))
            lines[i] = f"{m.group(1)}{value!r}{m.group(3)}"
    return "\n".join(lines)


def compile_pipelines(
    output_folder: Path, repo_root: Path = Path("."), names: Sequence[str] | None = None
) -> list[Path]:
    """Compile pipelines to ``<output_folder>/<name>.yaml``; each file is replaced atomically.

    Args:
        output_folder: Where the YAML files go.
        repo_root: The repository root (holding ``pipelines/`` and ``components/``).
        names: Pipelines to compile; all of :data:`PIPELINES` by default.

    Returns:
        The files written.

    Raises:
        CompileError: an unknown name or a missing pipeline module.
    """
    from kfp import compiler

    output_folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names or list(PIPELINES):
        pipeline = load_pipeline(name, repo_root)
        target = output_folder / f"{name}.yaml"
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".yaml", dir=output_folder)
        os.close(fd)
        try:
            compiler.Compiler().compile(pipeline, tmp)
            Path(tmp).write_text(stable_header(Path(tmp).read_text()))
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        written.append(target)
    return written
