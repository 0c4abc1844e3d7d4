"""Load a model folder and its tokenizer for generation, refusing a mismatched pair before anything is written.

Three kinds of folder reach the generator: one this project trained (loaded with
``AutoModelForCausalLM`` and :func:`~cehrgpt.models.tokenizer.load_tokenizer`), one
the original CEHR-GPT package trained (``model_type: "cehrgpt"``; converted in
memory by :mod:`cehrgpt.tools.convert_original_model`, which says so in one line),
and anything else, which is refused in one line naming the file at fault: a
``config.json`` that is not a model's, unreadable weights, or a tokenizer whose
size differs from the model's vocabulary (it belongs to another model).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


class ModelFolderError(ValueError):
    """The model or tokenizer folder cannot be used; the message names the file and the problem."""


def _read_config(model_folder: Path) -> dict:
    path = model_folder / "config.json"
    if not path.is_file():
        raise ModelFolderError(f"model folder {str(model_folder)!r} not found or holds no config.json")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFolderError(f"{str(path)!r} is not valid JSON ({exc}): not a model folder") from exc
    if not isinstance(config, dict) or not config.get("model_type"):
        raise ModelFolderError(
            f"{str(path)!r} names no model_type: not a model folder (expected a trained CEHR-GPT model)"
        )
    return config


def _check_weights(model_folder: Path) -> None:
    """Open the safetensors header now, so a corrupt file is one line, not a traceback."""
    from safetensors import SafetensorError, safe_open

    path = model_folder / "model.safetensors"
    if not path.is_file():
        return  # from_pretrained names what it looked for
    try:
        with safe_open(str(path), framework="pt") as weights:
            weights.keys()
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFolderError(f"{str(path)!r} is not a readable safetensors file: {exc}") from exc


def _check_pair(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, model_folder, tokenizer_folder
) -> None:
    vocab_size = model.config.vocab_size
    if len(tokenizer) != vocab_size:
        raise ModelFolderError(
            f"tokenizer {str(tokenizer_folder)!r} holds {len(tokenizer)} tokens but model {str(model_folder)!r} "
            f"has vocab_size {vocab_size}: the tokenizer belongs to another model"
        )


def load_for_generation(
    model_folder: str | os.PathLike,
    tokenizer_folder: str | os.PathLike | None,
    demographic_data_path: str | os.PathLike | None,
    dtype: torch.dtype,
    say: Callable[[str], None] = print,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model (in eval mode, ``dtype``, on CPU) and its tokenizer.

    An original CEHR-GPT folder is converted in memory; its token roles are read from
    ``demographic_data_path`` (the training sequences), and ``say`` gets one line saying so.

    Raises:
        ModelFolderError: not a model folder, unreadable weights, a tokenizer of another model, or an
            original model the converter refuses (every reason, one per line).
    """
    from transformers import AutoModelForCausalLM

    from cehrgpt.models.tokenizer import TokenizerError, load_tokenizer
    from cehrgpt.tools import convert_original_model as convert

    model_folder = Path(model_folder)
    tokenizer_path = Path(tokenizer_folder) if tokenizer_folder else model_folder
    config = _read_config(model_folder)
    if convert.is_original_config(config):
        try:
            conversion = convert.convert_folder(model_folder, tokenizer_path, demographic_data_path)
        except convert.ConversionError as exc:
            raise ModelFolderError("\n".join(exc.problems)) from exc
        for warning in conversion.warnings:
            say(f"warning: {warning}")
        say(
            f"{model_folder} is an original CEHR-GPT model: converted in memory to GPT2LMHeadModel "
            f"(heads dropped: {', '.join(conversion.report['heads_dropped']) or 'none'}); "
            "python -m cehrgpt.tools.convert_original_model saves the conversion"
        )
        model, tokenizer = conversion.model.to(dtype), conversion.tokenizer  # type: ignore[arg-type]
    else:
        try:
            tokenizer = load_tokenizer(tokenizer_path)
        except (TokenizerError, OSError) as exc:
            raise ModelFolderError(str(exc)) from exc
        _check_weights(model_folder)
        try:
            model = AutoModelForCausalLM.from_pretrained(model_folder, dtype=dtype)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelFolderError(f"cannot load model folder {str(model_folder)!r}: {first}") from exc
    _check_pair(model, tokenizer, model_folder, tokenizer_path)
    return model.eval(), tokenizer
