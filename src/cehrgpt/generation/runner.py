"""One shard of a generation run: prompts in, ``generated_sequences/*.parquet`` and a summary out.

Layout under ``<output_folder>/<strategy name>/``::

    generated_sequences/seed<S>-shard<i>-of<n>-part<f>.parquet   one file per --buffer_size patients
    runs/seed<S>.json                                             the settings that define run S
    runs/seed<S>-shard<i>-of<n>.json                              this shard's summary
    generation_summary.json                                       every shard summary in the folder

One continuous-batching decoder serves the whole shard: patients go into the
files in the order they finish, and a file is written (hidden temp name, then
rename) as soon as it holds ``--buffer_size`` patients, so the batch stays full
until the shard's last patients. A restarted shard skips the files it already
wrote and decodes the rest from a seed derived from --seed, shard and the first
file still missing: the same run and restart point give byte-identical files,
though not the files an uninterrupted run would have written.

Sliding (on unless ``--no_sliding``): a patient still open when its context fills
the model's window goes on with the prompt plus its most recent history as
context (:mod:`cehrgpt.generation.engine`), up to ``--max_patient_tokens`` tokens
in all (default :data:`SLIDE_FACTOR` times the window). A ``--context_window``
beyond the model's positions (the seed's 4096) decodes with the model's own
window and caps patients at the requested length. The files themselves (parts, counts in
their metadata, summaries) are :mod:`cehrgpt.generation.output_files`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cehrgpt import grammar
from cehrgpt.generation import sharding
from cehrgpt.generation.constraints import GrammarConstrainedLogitsProcessor, minimum_context_window
from cehrgpt.generation.durable import DurableCopy, DurableStoreError
from cehrgpt.generation.engine import ContinuousBatchDecoder, GenerationError
from cehrgpt.generation.output_files import (
    ShardFileWriter,
    atomic_write_text,
    count_shard_files,
    merge_shard_summaries,
)
from cehrgpt.generation.prompts import PROMPT_SOURCES, PromptError, build_prompt_pool, read_prompt_tokens
from cehrgpt.generation.sampling import SamplingConfig, build_logits_processors

log = logging.getLogger(__name__)
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
SLIDE_FACTOR = 8  # default --max_patient_tokens: this many context windows (4096 for the tiny preset's 512)


class GenerationInputError(ValueError):
    """A setting or input the user gave cannot be used (reported as one line, exit code 2)."""


@dataclass(frozen=True)
class GenerationSettings:
    """Everything one shard needs; the command-line flags, one field each.

    ``min_num_of_concepts`` counts clinical events (tokens of kind CONCEPT; visit
    types, discharges and gaps do not count). A patient with fewer, or with
    ``drop_long_sequences`` one that reached the length cap without ``[END]`` (the
    context window with ``sliding`` off, the patient cap with it on), is rejected and
    its slot decodes a fresh prompt (reject-and-retry), so the output still holds
    exactly ``num_of_patients``; rejections are counted in the summary.
    """

    model_folder: str
    output_folder: str
    num_of_patients: int
    demographic_data_path: str
    tokenizer_folder: str | None = None
    batch_size: int = 16
    buffer_size: int = 128
    context_window: int | None = None
    max_patient_tokens: int | None = None
    sliding: bool = True
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    min_num_of_concepts: int = 1
    drop_long_sequences: bool = False
    constrained_decoding: bool = True
    prompt_source: str = "data"
    seed: int = 0
    shard_index: int = 0
    num_shards: int = 1
    device: str = "auto"
    dtype: str = "auto"
    show_progress: bool = True
    durable_output_uri: str | None = None
    durable_s3_endpoint: str | None = None

    def run_defining(self) -> dict:
        """The settings that fix what a run produces (a rerun with the same seed must match them)."""
        settings = asdict(self)
        transient_fields = (
            "output_folder",
            "shard_index",
            "device",
            "show_progress",
            "durable_output_uri",
            "durable_s3_endpoint",
        )
        for transient in transient_fields:
            settings.pop(transient)
        return settings


def _check(settings: GenerationSettings) -> None:
    s = settings
    for name in ("num_of_patients", "batch_size", "buffer_size", "num_shards"):
        if getattr(s, name) < 1:
            raise GenerationInputError(f"--{name} must be at least 1, got {getattr(s, name)}")
    if s.max_patient_tokens is not None:
        if not s.sliding:
            raise GenerationInputError("--max_patient_tokens needs sliding; drop --no_sliding or the cap")
        if not 1 <= s.max_patient_tokens <= sharding.MAX_PATIENT_TOKENS:
            raise GenerationInputError(
                f"--max_patient_tokens must be in [1, {sharding.MAX_PATIENT_TOKENS}] (the restore numbers "
                f"a patient's tokens in 18 bits), got {s.max_patient_tokens}"
            )
    if s.min_num_of_concepts < 0:
        raise GenerationInputError(f"--min_num_of_concepts must be >= 0, got {s.min_num_of_concepts}")
    if not 0 <= s.shard_index < s.num_shards:
        raise GenerationInputError(f"--shard_index must be in [0, {s.num_shards}), got {s.shard_index}")
    if not 0 <= s.seed <= sharding.MAX_SEED:
        raise GenerationInputError(
            f"--seed must be in [0, {sharding.MAX_SEED}] (person_id layout), got {s.seed}"
        )
    if s.num_of_patients > sharding.MAX_PATIENTS_PER_RUN:
        raise GenerationInputError(
            f"--num_of_patients {s.num_of_patients} exceeds {sharding.MAX_PATIENTS_PER_RUN}"
        )
    if s.device not in DEVICES:
        raise GenerationInputError(f"unknown --device {s.device!r}; expected one of {', '.join(DEVICES)}")
    if s.dtype not in DTYPES:
        raise GenerationInputError(f"unknown --dtype {s.dtype!r}; expected one of {', '.join(DTYPES)}")
    if s.prompt_source not in PROMPT_SOURCES:
        raise GenerationInputError(
            f"unknown --prompt_source {s.prompt_source!r}; expected one of {', '.join(PROMPT_SOURCES)}"
        )
    model = Path(s.model_folder)
    if not (model / "config.json").is_file():
        raise GenerationInputError(f"model folder {str(model)!r} not found or holds no config.json")
    if s.device == "cuda" and not torch.cuda.is_available():
        raise GenerationInputError("--device cuda asked for, but no CUDA device is available")


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _say(line: str) -> None:
    tqdm.write(line, file=sys.stderr)


def _draw_prompt_tensor(pool, rng: np.random.Generator, count: int) -> torch.Tensor:
    return torch.from_numpy(pool.draw(rng, count))


def _file_seed(seed: int, shard_index: int, num_shards: int, file_index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, shard_index, num_shards, file_index])


def _register_run(runs: Path, settings: GenerationSettings) -> None:
    """Record the run's settings, or refuse when the same seed was already used differently here."""
    record = runs / f"seed{settings.seed}.json"
    wanted = settings.run_defining()
    if record.is_file():
        existing = json.loads(record.read_text())
        if existing != json.loads(json.dumps(wanted)):
            changed = sorted(
                k
                for k in wanted
                if json.dumps(wanted[k], sort_keys=True) != json.dumps(existing.get(k), sort_keys=True)
            )
            raise GenerationInputError(
                f"{str(record)!r} holds run seed {settings.seed} with other settings ({', '.join(changed)}); "
                "use another --seed or --output_folder"
            )
        return
    atomic_write_text(record, json.dumps(wanted, indent=1, sort_keys=True))


def _lengths(s: GenerationSettings, requested: int, n_positions: int) -> tuple[int, int]:
    """The window the model decodes with and the most tokens a patient may have (see the module docstring).

    Raises:
        GenerationInputError: a window beyond the model's positions without sliding, or a cap below the window.
    """
    window = min(requested, n_positions)
    if not s.sliding:
        if requested > n_positions:
            raise GenerationInputError(
                f"--context_window {requested} exceeds the model's {n_positions} positions "
                "(drop --no_sliding to slide its window up to that length)"
            )
        return window, window
    if requested > n_positions:
        cap = s.max_patient_tokens or requested
        if cap > sharding.MAX_PATIENT_TOKENS:
            raise GenerationInputError(
                f"--context_window {requested} exceeds the {sharding.MAX_PATIENT_TOKENS} tokens the restore "
                "numbers per patient"
            )
        _say(
            f"--context_window {requested} exceeds the model's {n_positions} positions: decoding with its "
            f"{n_positions}-token window, sliding past it, patients capped at {cap} tokens"
        )
    else:
        cap = s.max_patient_tokens or min(SLIDE_FACTOR * window, sharding.MAX_PATIENT_TOKENS)
    if cap < window:
        raise GenerationInputError(
            f"--max_patient_tokens {cap} is below the {window}-token context window; "
            f"use --context_window {cap} instead"
        )
    return window, cap


def generate(settings: GenerationSettings) -> dict:
    """Generate this shard's patients and write them, skipping files a previous attempt finished.

    Args:
        settings: the run's settings (see :class:`GenerationSettings`).

    Returns:
        This shard's summary (also written to ``runs/`` and merged into ``generation_summary.json``).

    Raises:
        GenerationInputError: a bad setting, model folder, tokenizer or demographic file.
        GenerationError: the acceptance rule could not be met.
    """
    import transformers

    from cehrgpt.models.loading import ModelFolderError, load_for_generation
    from cehrgpt.models.tokenizer import token_value_classes, vocabulary_token_kinds

    _check(settings)
    s = settings
    if not s.show_progress:
        transformers.utils.logging.disable_progress_bar()
    started = time.perf_counter()
    device = _resolve_device(s.device)
    dtype = _resolve_dtype(s.dtype, device)
    try:
        model, tokenizer = load_for_generation(
            s.model_folder, s.tokenizer_folder, s.demographic_data_path, dtype, say=_say
        )
    except ModelFolderError as exc:
        raise GenerationInputError(str(exc)) from exc
    vocab = tokenizer.get_vocab()
    tokens_by_id = [""] * len(vocab)
    for token, i in vocab.items():
        tokens_by_id[i] = token
    kinds = vocabulary_token_kinds(tokenizer)
    value_classes = token_value_classes(tokenizer)
    model = model.to(device).eval()  # type: ignore[arg-type]
    n_positions = getattr(model.config, "n_positions", None) or model.config.max_position_embeddings
    context_window = s.context_window or n_positions
    needed = minimum_context_window(kinds)
    if context_window < needed:
        raise GenerationInputError(
            f"--context_window {context_window} is too small for a {grammar.PROMPT_LENGTH}-token prompt "
            f"plus one visit; expected at least {needed}"
        )
    context_window, max_patient_tokens = _lengths(s, context_window, n_positions)
    try:
        prompt_tokens, too_short = read_prompt_tokens(s.demographic_data_path)
        pool = build_prompt_pool(prompt_tokens, vocab, s.prompt_source, too_short)
    except PromptError as exc:
        raise GenerationInputError(str(exc)) from exc

    strategy_folder = Path(s.output_folder) / s.sampling.folder_name
    out_dir = strategy_folder / "generated_sequences"
    runs = strategy_folder / "runs"
    out_dir.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    shard_prefix = f"seed{s.seed}-shard{s.shard_index:05d}-of{s.num_shards:05d}"
    durable = None
    fetched: list[str] = []
    # The durable copy is best effort: a store this pod cannot reach costs the resume, not the run.
    durable_problem: list[str] = []

    def publish(path: Path) -> None:
        if durable is None or durable_problem:
            return
        try:
            durable.publish(path)
        except DurableStoreError as exc:
            durable_problem.append(str(exc))
            log.warning("no more durable copies (a retry will start this shard over): %s", exc)

    if s.durable_output_uri:
        try:
            durable = DurableCopy(s.durable_output_uri, s.output_folder, s.durable_s3_endpoint)
        except DurableStoreError as exc:
            raise GenerationInputError(str(exc)) from exc
        strategy = s.sampling.folder_name
        try:
            durable.fetch(f"{strategy}/runs", f"seed{s.seed}.json")
            fetched = durable.fetch(f"{strategy}/generated_sequences", f"{shard_prefix}-part")
        except DurableStoreError as exc:
            durable_problem.append(str(exc))
            log.warning("durable copy off (a retry will start this shard over): %s", exc)
    _register_run(runs, s)
    publish(runs / f"seed{s.seed}.json")

    end_id = vocab[grammar.END]
    patients = sharding.shard_range(s.num_of_patients, s.shard_index, s.num_shards)
    files = sharding.file_ranges(patients, s.buffer_size)
    concept_kind = int(grammar.TokenKind.CONCEPT)

    def meets_rule(ids: list[int], hit_window: bool) -> bool:
        if s.drop_long_sequences and hit_window:
            return False
        return int((kinds[ids[grammar.PROMPT_LENGTH :]] == concept_kind).sum()) >= s.min_num_of_concepts

    def file_path(file_index: int) -> Path:
        return out_dir / f"{shard_prefix}-part{file_index:05d}.parquet"

    pending = [i for i in range(len(files)) if not file_path(i).is_file()]
    progress = tqdm(
        total=len(patients), unit="patient", disable=not s.show_progress, desc=f"shard {s.shard_index}"
    )
    progress.update(len(patients) - sum(len(files[i]) for i in pending))
    result = None
    decode_seconds = 0.0
    if pending:
        # One decoder for every file still to write: the batch stays full until the shard's last patients.
        # Its random streams are seeded by the first file it writes, so a restart is reproducible too.
        seed_seq = _file_seed(s.seed, s.shard_index, s.num_shards, pending[0])
        rng = np.random.default_rng(seed_seq)
        generator = torch.Generator(device=device).manual_seed(
            int(seed_seq.generate_state(1, np.uint64)[0] >> 1)
        )
        constraint = (
            GrammarConstrainedLogitsProcessor(kinds, max_patient_tokens, value_classes)
            if s.constrained_decoding
            else None
        )
        decoder = ContinuousBatchDecoder(
            model,
            build_logits_processors(s.sampling, constraint, kinds),
            context_window,
            end_id,
            s.batch_size,
            generator,
            pad_token_id=vocab[grammar.PAD],
            max_length=max_patient_tokens,
            visit_start_token_id=vocab[grammar.VISIT_START],
        )
        writer = ShardFileWriter(
            [(file_path(i), files[i]) for i in pending],
            s.seed,
            tokens_by_id,
            publish,
        )

        def accept(ids: list[int], hit_window: bool) -> bool:
            if meets_rule(ids, hit_window):
                return True
            writer.rejected += 1
            return False

        def on_step(new_tokens: int, accepted: int) -> None:
            writer.count_step(new_tokens)
            progress.update(accepted)
            elapsed = max(time.perf_counter() - started, 1e-9)
            progress.set_postfix(tokens_per_s=f"{writer.sampled_tokens / elapsed:.0f}", refresh=False)

        t0 = time.perf_counter()
        result = decoder.run(
            sum(len(files[i]) for i in pending),
            functools.partial(_draw_prompt_tensor, pool, rng),
            accept=accept,
            on_step=on_step,
            on_sequence=writer.add,
        )
        decode_seconds = time.perf_counter() - t0
    progress.close()
    totals = {
        "sampled_tokens": result.sampled_tokens if result else 0,
        "rejected": result.rejected if result else 0,
        "patients": result.accepted if result else 0,
        "valid": writer.valid if result else 0,
        "hit_context_window": writer.hit_context_window if result else 0,
        "slides": result.slides if result else 0,
    }
    skipped_files = len(files) - len(pending)

    in_files = count_shard_files(out_dir, shard_prefix)
    wall = time.perf_counter() - started
    summary = {
        "shard_index": s.shard_index,
        "num_shards": s.num_shards,
        "seed": s.seed,
        "strategy": s.sampling.folder_name,
        "person_id_range": [
            sharding.person_id(s.seed, patients.start),
            sharding.person_id(s.seed, patients.stop - 1),
        ]
        if len(patients)
        else None,
        "files": len(files),
        "files_skipped_as_done": skipped_files,
        "files_fetched_from_durable_storage": len(fetched),
        "durable_copy": s.durable_output_uri,
        "durable_copy_problem": durable_problem[0] if durable_problem else None,
        "patients": totals["patients"],
        "patients_in_files": in_files["patients"],
        "valid_patients_in_files": in_files["valid"],
        "valid_fraction": totals["valid"] / totals["patients"] if totals["patients"] else None,
        # over every file of the shard, whichever attempt wrote it
        "rejected_and_retried": in_files["rejected_and_retried"],
        "closed_by_context_window": in_files["closed_by_context_window"],
        "slid_patients": in_files["slid_patients"],
        "slides": in_files["slides"],
        "slides_this_attempt": totals["slides"],
        "sampled_tokens": in_files["sampled_tokens"],
        "sampled_tokens_this_attempt": totals["sampled_tokens"],
        "batch_occupancy": round(result.occupancy, 4) if result and result.occupancy else None,
        "wall_seconds": round(wall, 3),
        "decode_seconds": round(decode_seconds, 3),
        "tokens_per_second": round(totals["sampled_tokens"] / decode_seconds, 1) if decode_seconds else None,
        "patients_per_second": round(totals["patients"] / decode_seconds, 2) if decode_seconds else None,
        "prompts_usable": len(pool.ids),
        "prompts_skipped": pool.skipped,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
        "settings": json.loads(json.dumps(s.run_defining())),
        "context_window_used": context_window,
        "sliding": max_patient_tokens > context_window,
        "max_patient_tokens_used": max_patient_tokens,
    }
    shard_file = runs / f"{shard_prefix}.json"
    atomic_write_text(shard_file, json.dumps(summary, indent=1))
    publish(shard_file)
    merge_shard_summaries(strategy_folder)
    return summary


__all__ = ["GenerationError", "GenerationInputError", "GenerationSettings", "generate"]
