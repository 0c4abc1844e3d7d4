"""``python -m cehrgpt.tools.convert_original_model``: use a model trained by the original CEHR-GPT package.

The original package (PyPI ``cehrgpt`` 0.1.9) saves ``model_type: "cehrgpt"`` folders
whose default model is GPT-2 under other weight names and without a learned
position embedding. This converts such a folder, exactly, into a stock
``GPT2LMHeadModel`` (a zero position table reproduces "no position signal") with
this project's tokenizer and ``token_metadata.json``, so it loads like a model this
project trained. Options the GPT-2 shape cannot express are refused, all named at
once; heads that only fed training losses are dropped and reported.

Token roles (gender, race, visit type, discharge, concept) come from where the
tokens stand in real sequences (``--demographic_data_path``), read with the same
code the tokenizer builder uses; a token never seen gets the builder's default.

Pure core: :func:`check_original_config`, :func:`convert_weights`,
:func:`gpt2_config_from_original`, :func:`token_kinds_from_roles`; I/O:
:func:`convert_folder`, :func:`write_converted`; CLI: :func:`main`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from cehrgpt import grammar
from cehrgpt.exits import CommandParser, run_command
from cehrgpt.grammar import TokenKind

ORIGINAL_MODEL_TYPE = "cehrgpt"
ORIGINAL_ARCHITECTURE = "CEHRGPT2LMHeadModel"
ORIGINAL_TOKENIZER_FILE = "cehrgpt_tokenizer.json"
REPORT_FILE = "conversion_report.json"
REPORT_FORMAT = "cehrgpt-conversion-report/1"

# Options whose computation a GPT-2 cannot reproduce: (config key, value that is harmless, why it blocks).
_BLOCKING_OPTIONS: tuple[tuple[str, object, str], ...] = (
    ("backbone", "gpt2", "a Qwen2 decoder stack"),
    ("decoder_mlp", "GPT2MLP", "a non-GPT-2 MLP"),
    ("apply_rotary", False, "an age-driven rotary embedding"),
    ("causal_sfm", False, "a random vector inserted after the prompt"),
    ("include_values", False, "value embeddings fed back into the input"),
    ("add_cross_attention", False, "cross-attention layers"),
)
# Heads that only feed training losses: (config key, weight-name prefix, what it predicted).
_TRAINING_HEADS: tuple[tuple[str, str, str], ...] = (
    ("use_sub_time_tokenization", "time_token_lm_head.", "sub-time-token head"),
    ("include_ttv_prediction", "tte_head.", "time-to-visit head"),
    ("include_motor_time_to_event", "motor_tte.", "MOTOR time-to-event head"),
)
# Buffers some transformers versions save next to the attention weights; they hold no learned value.
_IGNORED_BUFFER = re.compile(r"^cehrgpt\.h\.\d+\.attn\.(bias|masked_bias)$")
_LAYER_PARAMS = (
    "ln_1.weight",
    "ln_1.bias",
    "attn.c_attn.weight",
    "attn.c_attn.bias",
    "attn.c_proj.weight",
    "attn.c_proj.bias",
    "ln_2.weight",
    "ln_2.bias",
    "mlp.c_fc.weight",
    "mlp.c_fc.bias",
    "mlp.c_proj.weight",
    "mlp.c_proj.bias",
)


class ConversionError(ValueError):
    """The folder cannot be converted exactly; ``problems`` holds one line per reason."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass
class Conversion:
    """A converted model in memory: the GPT-2, this project's tokenizer, the report and any warnings."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    report: dict
    warnings: list[str] = field(default_factory=list)


# --- pure core -----------------------------------------------------------------------------------------------


def is_original_config(config: dict) -> bool:
    """True for a config the original CEHR-GPT package wrote."""
    return config.get("model_type") == ORIGINAL_MODEL_TYPE


def check_original_config(config: dict) -> list[str]:
    """Every reason the original config cannot become a GPT-2 exactly (empty: it can)."""
    problems = []
    if config.get("model_type") != ORIGINAL_MODEL_TYPE:
        problems.append(
            f"model_type is {config.get('model_type')!r}; expected {ORIGINAL_MODEL_TYPE!r} (an original CEHR-GPT model)"
        )
    architectures = config.get("architectures") or []
    if architectures != [ORIGINAL_ARCHITECTURE]:
        problems.append(f"architectures is {architectures}; expected [{ORIGINAL_ARCHITECTURE!r}]")
    for key, harmless, why in _BLOCKING_OPTIONS:
        value = config.get(key, harmless)
        if value != harmless and not (harmless is False and not value):
            problems.append(f"blocking option {key}={value!r} ({why}) has no GPT-2 equivalent")
    for key in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
        if not isinstance(config.get(key), int) or config[key] < 1:
            problems.append(f"config field {key} is {config.get(key)!r}; expected a positive integer")
    return problems


def dropped_heads(config: dict) -> list[str]:
    """The training-only heads the original config switches on (they are dropped)."""
    return [f"{what} ({key})" for key, _, what in _TRAINING_HEADS if config.get(key)]


def _uses_pretrained_embeddings(config: dict) -> bool:
    return bool(config.get("use_pretrained_embeddings"))


def _is_tied(config: dict) -> bool:
    return bool(config.get("tie_word_embeddings", True)) and not _uses_pretrained_embeddings(config)


def _pretrained_layer_indices(config: dict) -> list[int]:
    """Indices of the Linear layers in the original's ``pretrained_wte`` Sequential (Embedding, then Linear/GELU)."""
    return [1 + 2 * i for i in range(int(config.get("n_pretrained_embeddings_layers", 2)))]


def _expected_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    n_embd, vocab = config["n_embd"], config["vocab_size"]
    inner = config.get("n_inner") or 4 * n_embd
    per_layer = {
        "ln_1.weight": (n_embd,),
        "ln_1.bias": (n_embd,),
        "attn.c_attn.weight": (n_embd, 3 * n_embd),
        "attn.c_attn.bias": (3 * n_embd,),
        "attn.c_proj.weight": (n_embd, n_embd),
        "attn.c_proj.bias": (n_embd,),
        "ln_2.weight": (n_embd,),
        "ln_2.bias": (n_embd,),
        "mlp.c_fc.weight": (n_embd, inner),
        "mlp.c_fc.bias": (inner,),
        "mlp.c_proj.weight": (inner, n_embd),
        "mlp.c_proj.bias": (n_embd,),
    }
    shapes = {
        "cehrgpt.wte.weight": (vocab, n_embd),
        "cehrgpt.ln_f.weight": (n_embd,),
        "cehrgpt.ln_f.bias": (n_embd,),
    }
    for i in range(config["n_layer"]):
        shapes.update({f"cehrgpt.h.{i}.{name}": shape for name, shape in per_layer.items()})
    if not _is_tied(config):
        shapes["lm_head.weight"] = (vocab, n_embd)
    if _uses_pretrained_embeddings(config):
        dim = int(config.get("pretrained_embedding_dim", 768))
        shapes["cehrgpt.pretrained_wte.0.weight"] = (vocab, dim)
        for n, index in enumerate(_pretrained_layer_indices(config)):
            shapes[f"cehrgpt.pretrained_wte.{index}.weight"] = (n_embd, dim if n == 0 else n_embd)
            shapes[f"cehrgpt.pretrained_wte.{index}.bias"] = (n_embd,)
    return shapes


def _pretrained_rows(config: dict, weights: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The token ids fed through the original's pretrained-embedding projection, and their embedding rows."""
    from transformers.activations import ACT2FN

    gelu_new = ACT2FN["gelu_new"]
    ids = torch.tensor(sorted(set(config.get("pretrained_token_ids") or [])), dtype=torch.long)
    with torch.no_grad():
        rows = weights["cehrgpt.pretrained_wte.0.weight"][ids].float()
        for index in _pretrained_layer_indices(config):
            weight = weights[f"cehrgpt.pretrained_wte.{index}.weight"].float()
            bias = weights[f"cehrgpt.pretrained_wte.{index}.bias"].float()
            rows = gelu_new(torch.nn.functional.linear(rows, weight, bias))
    return ids, rows


def convert_weights(
    config: dict, weights: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Rename the original's weights to ``GPT2LMHeadModel`` ones.

    Returns:
        The GPT-2 state dict (a zero position table; ``lm_head.weight`` only when untied), the problems
        (unknown, missing or misshapen weights; empty when the conversion is exact) and the names dropped.
    """
    expected = _expected_shapes(config)
    head_prefixes = tuple(prefix for key, prefix, _ in _TRAINING_HEADS if config.get(key))
    problems: list[str] = []
    dropped = sorted(name for name in weights if head_prefixes and name.startswith(head_prefixes))
    unknown = sorted(
        name
        for name in weights
        if name not in expected
        and name not in dropped
        and not _IGNORED_BUFFER.match(name)
        and not (name == "lm_head.weight" and _is_tied(config))
    )
    if unknown:
        problems.append(f"unknown weight(s) {', '.join(unknown[:8])}{' ...' if len(unknown) > 8 else ''}")
    missing = sorted(name for name in expected if name not in weights)
    if missing:
        problems.append(f"missing weight(s) {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    for name, shape in expected.items():
        if name in weights and tuple(weights[name].shape) != shape:
            problems.append(f"weight {name} has shape {tuple(weights[name].shape)}; expected {shape}")
    if problems:
        return {}, problems, dropped

    state: dict[str, torch.Tensor] = {}
    wte = weights["cehrgpt.wte.weight"].clone()
    if _uses_pretrained_embeddings(config):
        ids, rows = _pretrained_rows(config, weights)
        if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= config["vocab_size"]):
            return (
                {},
                [f"pretrained_token_ids reach outside the vocabulary of {config['vocab_size']}"],
                dropped,
            )
        wte[ids] = rows.to(wte.dtype)
    state["transformer.wte.weight"] = wte
    state["transformer.wpe.weight"] = torch.zeros(config["n_positions"], config["n_embd"], dtype=wte.dtype)
    for i in range(config["n_layer"]):
        for name in _LAYER_PARAMS:
            state[f"transformer.h.{i}.{name}"] = weights[f"cehrgpt.h.{i}.{name}"]
    state["transformer.ln_f.weight"] = weights["cehrgpt.ln_f.weight"]
    state["transformer.ln_f.bias"] = weights["cehrgpt.ln_f.bias"]
    state["lm_head.weight"] = wte if _is_tied(config) else weights["lm_head.weight"]
    return state, [], dropped


def gpt2_config_from_original(config: dict, special_ids: dict[str, int]):
    """The ``GPT2Config`` computing what the original config computes (ids from the tokenizer)."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=config["vocab_size"],
        n_positions=config["n_positions"],
        n_embd=config["n_embd"],
        n_layer=config["n_layer"],
        n_head=config["n_head"],
        n_inner=config.get("n_inner"),
        activation_function=config.get("activation_function", "gelu_new"),
        layer_norm_epsilon=config.get("layer_norm_epsilon", 1e-5),
        scale_attn_weights=config.get("scale_attn_weights", True),
        scale_attn_by_inverse_layer_idx=config.get("scale_attn_by_inverse_layer_idx", False),
        reorder_and_upcast_attn=config.get("reorder_and_upcast_attn", False),
        resid_pdrop=config.get("resid_pdrop", 0.1),
        embd_pdrop=config.get("embd_pdrop", 0.1),
        attn_pdrop=config.get("attn_pdrop", 0.1),
        initializer_range=config.get("initializer_range", 0.02),
        tie_word_embeddings=_is_tied(config),
        bos_token_id=special_ids["bos"],
        eos_token_id=special_ids["eos"],
        pad_token_id=special_ids["pad"],
    )


def check_vocabulary(vocab: dict[str, int], vocab_size: int, where: str) -> list[str]:
    """Reasons the original tokenizer's vocabulary cannot drive this project's generator (empty: fine)."""
    problems = []
    if len(vocab) != vocab_size:
        problems.append(f"{where} holds {len(vocab)} tokens but the model's vocab_size is {vocab_size}")
    if sorted(vocab.values()) != list(range(len(vocab))):
        problems.append(f"{where} token ids are not 0..{len(vocab) - 1}")
    absent = [t for t in (grammar.PAD, grammar.END, grammar.OOV) if t not in vocab]
    if absent:
        problems.append(f"{where} lacks the special token(s) {', '.join(absent)}")
    if not any(grammar.syntactic_kind(t) == TokenKind.YEAR for t in vocab) or not any(
        grammar.syntactic_kind(t) == TokenKind.AGE for t in vocab
    ):
        problems.append(
            f"{where} has no year:/age: tokens (a MEDS-format model?); expected the patient-sequence format"
        )
    return problems


def token_kinds_from_roles(vocab: Iterable[str], sequences: Iterable[Sequence[str]]) -> tuple[dict, dict]:
    """Each vocabulary token's kind, read from where it stands in ``sequences`` (the builder's shared code).

    Returns:
        token -> :class:`TokenKind`, and lists for the report: ``oov_kind`` (tokens the grammar does not
        know; never sampled), ``role_defaulted`` (concept-like tokens never seen, given the default role)
        and ``non_day_gaps`` (week/month gap tokens).
    """
    from cehrgpt.models.tokenizer import count_token_roles

    roles = count_token_roles(sequences)
    kinds, oov, defaulted, non_day = {}, [], [], []
    for token in vocab:
        kind = roles.kind_of(token)
        kinds[token] = kind
        if kind == TokenKind.OOV and token != grammar.OOV:
            oov.append(token)
        if roles.role_defaulted(token):
            defaulted.append(token)
        if kind == TokenKind.GAP and token != grammar.LONG_TERM and not token.startswith("D"):
            non_day.append(token)
    return kinds, {
        "oov_kind": sorted(oov),
        "role_defaulted": sorted(defaulted),
        "non_day_gaps": sorted(non_day),
        "patients_read": roles.num_patients,
    }


# --- I/O -----------------------------------------------------------------------------------------------------


def read_original_config(model_folder: str | os.PathLike) -> dict:
    """The folder's ``config.json``.

    Raises:
        ConversionError: no such file, or it is not a JSON object.
    """
    path = Path(model_folder) / "config.json"
    if not path.is_file():
        raise ConversionError([f"model folder {str(model_folder)!r} holds no config.json"])
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConversionError([f"{str(path)!r} is not valid JSON: {exc}"]) from exc
    if not isinstance(config, dict):
        raise ConversionError([f"{str(path)!r} is not a JSON object"])
    return config


def is_original_model_folder(model_folder: str | os.PathLike) -> bool:
    """True when ``model_folder/config.json`` names the original CEHR-GPT model type."""
    try:
        return is_original_config(read_original_config(model_folder))
    except ConversionError:
        return False


def _read_weights(model_folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """The weights file and the weights of ``model.safetensors`` (or ``pytorch_model.bin``, read with ``weights_only``; never unpickled)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    safetensors_path = model_folder / "model.safetensors"
    bin_path = model_folder / "pytorch_model.bin"
    if safetensors_path.is_file():
        try:
            return safetensors_path, load_file(safetensors_path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise ConversionError(
                [f"{str(safetensors_path)!r} is not a readable safetensors file: {exc}"]
            ) from exc
    if bin_path.is_file():
        try:
            return bin_path, torch.load(bin_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a damaged or unsafe file
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConversionError([f"{str(bin_path)!r} is not a readable weights file: {first}"]) from exc
    raise ConversionError(
        [f"model folder {str(model_folder)!r} holds no model.safetensors or pytorch_model.bin"]
    )


def _read_original_vocabulary(tokenizer_folder: Path) -> dict[str, int]:
    from tokenizers import Tokenizer

    path = tokenizer_folder / ORIGINAL_TOKENIZER_FILE
    if not path.is_file():
        raise ConversionError(
            [f"tokenizer folder {str(tokenizer_folder)!r} holds no {ORIGINAL_TOKENIZER_FILE}"]
        )
    try:
        return Tokenizer.from_file(str(path)).get_vocab(with_added_tokens=True)
    except Exception as exc:  # the tokenizers library raises a bare Exception on a malformed file
        raise ConversionError(
            [f"{str(path)!r} is not a tokenizers file: {str(exc).splitlines()[0]}"]
        ) from exc


def _read_sequences(path: str | os.PathLike | None) -> list[list[str]]:
    """Token lists of a patient-sequence parquet file or folder (the original's layout; extra columns ignored)."""
    if path is None:
        return []
    from cehrgpt.analysis.io import AnalysisError, read_sequence_folder

    try:
        frame = read_sequence_folder(path, role="demographic_data_path")
    except AnalysisError as exc:
        raise ConversionError([str(exc)]) from exc
    return [list(tokens) for tokens in frame["concept_ids"] if tokens is not None]


def _config_hash(model_folder: Path) -> str:
    return "sha256:" + hashlib.sha256((model_folder / "config.json").read_bytes()).hexdigest()


def convert_folder(
    model_folder: str | os.PathLike,
    tokenizer_folder: str | os.PathLike | None = None,
    demographic_data_path: str | os.PathLike | None = None,
) -> Conversion:
    """Convert an original CEHR-GPT model folder in memory.

    Raises:
        ConversionError: one line per problem (model type, blocking options, weights, tokenizer).
    """
    from transformers import GPT2LMHeadModel

    from cehrgpt.models.tokenizer import tokenizer_from_vocabulary

    model_folder = Path(model_folder)
    tokenizer_folder = Path(tokenizer_folder) if tokenizer_folder else model_folder
    config = read_original_config(model_folder)
    problems = check_original_config(config)
    if problems:  # the rest needs the fields checked here
        raise ConversionError([f"{model_folder / 'config.json'}: {p}" for p in problems])
    weights_file, weights = _read_weights(model_folder)
    state, problems, dropped = convert_weights(config, weights)
    problems = [f"{weights_file}: {p}" for p in problems]
    vocab: dict[str, int] = {}
    try:
        vocab = _read_original_vocabulary(tokenizer_folder)
    except ConversionError as exc:
        problems += exc.problems
    if vocab:
        problems += check_vocabulary(
            vocab, config["vocab_size"], str(tokenizer_folder / ORIGINAL_TOKENIZER_FILE)
        )
    if problems:
        raise ConversionError(problems)
    sequences = _read_sequences(demographic_data_path)
    kinds, roles = token_kinds_from_roles(vocab, sequences)
    tokenizer = tokenizer_from_vocabulary(vocab, kinds, None)
    special = {
        "pad": vocab[grammar.PAD],
        "eos": vocab[grammar.END],
        "bos": vocab.get(grammar.START, vocab[grammar.END]),
    }
    gpt2_config = gpt2_config_from_original(config, special)
    model = GPT2LMHeadModel(gpt2_config)
    model.load_state_dict(state, strict=not gpt2_config.tie_word_embeddings)
    model.tie_weights()
    model.eval()
    warnings = []
    if roles["oov_kind"]:
        warnings.append(
            f"{len(roles['oov_kind'])} token(s) outside this project's grammar are never sampled: "
            f"{', '.join(roles['oov_kind'][:10])}{' ...' if len(roles['oov_kind']) > 10 else ''}"
        )
    if roles["non_day_gaps"]:
        warnings.append(
            f"gap tokens of a type other than 'day' ({', '.join(roles['non_day_gaps'][:10])}): "
            "the model was trained with another gap type; restore reads them, the grammar allows them"
        )
    if not sequences:
        warnings.append(
            "no --demographic_data_path: every concept-like token got its default role "
            "(give the training sequences so gender, race, visit and discharge tokens get theirs)"
        )
    report = {
        "format": REPORT_FORMAT,
        "source_model_folder": str(model_folder),
        "source_tokenizer_folder": str(tokenizer_folder),
        "source_config_sha256": _config_hash(model_folder),
        "source_transformers_version": config.get("transformers_version"),
        "architecture": "GPT2LMHeadModel",
        "tied_output_layer": gpt2_config.tie_word_embeddings,
        "pretrained_embeddings_folded": len(config.get("pretrained_token_ids") or [])
        if _uses_pretrained_embeddings(config)
        else 0,
        "heads_dropped": dropped_heads(config),
        "weights_dropped": dropped,
        "vocab_size": len(vocab),
        "oov_kind_tokens": roles["oov_kind"],
        "role_defaulted_tokens": roles["role_defaulted"],
        "non_day_gap_tokens": roles["non_day_gaps"],
        "patients_read_for_roles": roles["patients_read"],
        "warnings": warnings,
    }
    return Conversion(model=model, tokenizer=tokenizer, report=report, warnings=warnings)


def check_output_folder(output: Path, overwrite: bool) -> None:
    """Refuse a non-empty output folder unless ``overwrite`` (checked before converting and before writing).

    Raises:
        ConversionError: it exists, is not empty and ``overwrite`` is off.
    """
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not overwrite:
        raise ConversionError([f"output folder {str(output)!r} exists and is not empty; pass --overwrite"])


def overlapping_folder(output: Path, sources: dict[str, Path]) -> str | None:
    """The flag of a source folder that ``output`` is, lies inside or contains (resolved paths, so
    ``..`` and links count), or None: replacing the output would delete that source.
    """
    target = output.resolve()
    for flag, source in sources.items():
        folder = source.resolve()
        if target == folder or target.is_relative_to(folder) or folder.is_relative_to(target):
            return flag
    return None


def check_output_apart(output: Path, model_folder: Path, tokenizer_folder: Path | None) -> None:
    """Refuse an output folder that overlaps the original model or tokenizer, ``--overwrite`` or not.

    Raises:
        ConversionError: it is, lies inside or contains ``--model_folder`` or ``--tokenizer_folder``.
    """
    sources = {"--model_folder": model_folder, "--tokenizer_folder": tokenizer_folder or model_folder}
    flag = overlapping_folder(output, sources)
    if flag is not None:
        line = (
            f"--output_folder {str(output)!r} overlaps {flag} {str(sources[flag])!r}: writing it would "
            "delete the original; give a folder outside both"
        )
        raise ConversionError([line])


def write_converted(
    conversion: Conversion, output_folder: str | os.PathLike, overwrite: bool = False
) -> Path:
    """Write the converted model, tokenizer, metadata and ``conversion_report.json`` into ``output_folder``.

    Written to a hidden sibling first and renamed, so a failure leaves nothing half-written.

    Raises:
        ConversionError: the output folder overlaps the original's folders, or exists, is not empty
            and ``overwrite`` is off.
    """
    from cehrgpt.models.tokenizer import save_tokenizer

    output = Path(output_folder)
    report = conversion.report
    check_output_apart(output, Path(report["source_model_folder"]), Path(report["source_tokenizer_folder"]))
    check_output_folder(output, overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        conversion.model.save_pretrained(staging)
        save_tokenizer(conversion.tokenizer, staging)
        (staging / REPORT_FILE).write_text(json.dumps(conversion.report, indent=1))
        if output.exists():
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        staging.rename(output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output


# --- CLI -----------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog="python -m cehrgpt.tools.convert_original_model",
        description="Convert a model trained by the original CEHR-GPT package into a folder this project loads.",
    )
    p.add_argument("--model_folder", required=True, help="the original's model folder (config.json, weights)")
    p.add_argument(
        "--tokenizer_folder", help=f"folder with {ORIGINAL_TOKENIZER_FILE} (default: the model folder)"
    )
    p.add_argument("--output_folder", required=True, help="where the converted model goes")
    p.add_argument(
        "--demographic_data_path",
        help="training patient_sequence parquet file or folder: token roles are read from it",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    return p


def main(argv: list[str] | None = None, print_line: Callable[[str], None] = print) -> int:
    args = build_parser().parse_args(argv)
    output = Path(args.output_folder)

    def body() -> int:
        tokenizer_folder = Path(args.tokenizer_folder) if args.tokenizer_folder else None
        check_output_apart(output, Path(args.model_folder), tokenizer_folder)
        check_output_folder(output, args.overwrite)
        conversion = convert_folder(args.model_folder, args.tokenizer_folder, args.demographic_data_path)
        for warning in conversion.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        write_converted(conversion, output, overwrite=args.overwrite)
        report = conversion.report
        print_line(
            f"converted {args.model_folder} to {output} (GPT2LMHeadModel, {report['vocab_size']} tokens; "
            f"heads dropped: {', '.join(report['heads_dropped']) or 'none'}; report: {output / REPORT_FILE})"
        )
        return 0

    # every problem found, on the one line (joined by " | ": a problem may hold "; ")
    return run_command(body, ConversionError, describe=lambda e: " | ".join(getattr(e, "problems", [str(e)])))


if __name__ == "__main__":
    raise SystemExit(main())
