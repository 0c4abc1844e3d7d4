"""``python -m cehrgpt.generation.generate_batch_hf_gpt_sequence``: the seed's generation command.

Takes every flag of the original command with the same meaning, plus sharding
(``--shard_index/--num_shards``, one pod per GPU), ``--seed``, ``--device``,
``--dtype``, ``--prompt_source``, ``--no_constrained_decoding`` and sliding past the
model's window (``--max_patient_tokens``, ``--no_sliding``). ``--context_window``
keeps the seed's meaning, the longest sequence, where it exceeds the model's
positions (the seed's 4096): the model decodes with its own window and slides.
"""

from __future__ import annotations

import argparse

from cehrgpt.exits import CommandParser, run_command
from cehrgpt.generation.engine import GenerationError
from cehrgpt.generation.naming import STRATEGIES
from cehrgpt.generation.prompts import PROMPT_SOURCES
from cehrgpt.generation.runner import DEVICES, DTYPES, GenerationInputError, GenerationSettings, generate
from cehrgpt.generation.sampling import SamplingConfig

__all__ = ["build_parser", "generate", "main", "settings_from_args"]


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog="python -m cehrgpt.generation.generate_batch_hf_gpt_sequence",
        description="Generate synthetic patient sequences with a CEHR-GPT model (one shard of a run).",
    )
    p.add_argument("--model_folder", required=True, help="trained model folder")
    p.add_argument("--tokenizer_folder", help="tokenizer folder (default: the model folder)")
    p.add_argument(
        "--output_folder",
        required=True,
        help="output root; files go to <root>/<strategy>/generated_sequences",
    )
    p.add_argument(
        "--num_of_patients", type=int, required=True, help="patients in the whole run, over all shards"
    )
    p.add_argument("--batch_size", type=int, default=16, help="rows decoded together")
    p.add_argument(
        "--buffer_size",
        type=int,
        default=128,
        help="patients per output parquet file, written as it fills (a restarted shard skips finished "
        "files); one decoder serves all of a shard's files, so the batch stays full",
    )
    p.add_argument(
        "--context_window",
        type=int,
        help="tokens the model sees at once, prompt included (default: the model's positions); beyond them "
        "(the seed's 4096) the model's own window slides and this is the longest patient",
    )
    p.add_argument(
        "--max_patient_tokens",
        type=int,
        help="longest patient, prompt included, when the window slides (default: 8 context windows, or "
        "--context_window where it exceeds the model's positions); the grammar closes a patient by then",
    )
    p.add_argument(
        "--no_sliding",
        action="store_true",
        help="close every patient within one context window (no sliding, as before)",
    )
    p.add_argument("--sampling_strategy", default="TopPStrategy", help=f"one of {', '.join(STRATEGIES)}")
    p.add_argument("--top_p", type=float, default=1.0, help="nucleus mass, in (0, 1]")
    p.add_argument("--top_k", type=int, default=100, help="tokens kept by top-k")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--repetition_penalty", type=float, default=1.0)
    p.add_argument("--epsilon_cutoff", type=float, default=0.0)
    p.add_argument("--num_beams", type=int, default=1, help="accepted for compatibility; only 1 is supported")
    p.add_argument(
        "--num_beam_groups", type=int, default=1, help="accepted for compatibility; only 1 is supported"
    )
    p.add_argument(
        "--demographic_data_path", required=True, help="training patient_sequence parquet file or folder"
    )
    p.add_argument(
        "--prompt_source",
        default="data",
        choices=PROMPT_SOURCES,
        help="whole real prompts or the mixed distribution",
    )
    p.add_argument(
        "--min_num_of_concepts", type=int, default=1, help="clinical concepts a patient needs; fewer: retried"
    )
    p.add_argument(
        "--drop_long_sequences",
        action="store_true",
        help="retry patients that reach the length cap unended (the context window with --no_sliding)",
    )
    p.add_argument(
        "--no_constrained_decoding", action="store_true", help="sample without the grammar constraint"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed; also the high bits of every person_id")
    p.add_argument("--shard_index", type=int, default=0)
    p.add_argument("--num_shards", type=int, default=1)
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--dtype", default="auto", choices=DTYPES)
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--durable_output_uri",
        help="durable copy of --output_folder (s3://, gs://, minio://, a path): each finished file is copied "
        "there as it is written, and a restarted shard takes the files it finds there as done",
    )
    p.add_argument(
        "--durable_s3_endpoint", help="S3 endpoint for --durable_output_uri (default AWS_ENDPOINT_URL)"
    )
    return p


def settings_from_args(args: argparse.Namespace) -> GenerationSettings:
    """The run's settings from parsed flags.

    Raises:
        GenerationInputError: a sampling flag is out of range or beams are asked for.
    """
    if args.num_beams != 1 or args.num_beam_groups != 1:
        raise GenerationInputError(f"beam search is not supported: --num_beams {args.num_beams}, expected 1")
    try:
        sampling = SamplingConfig(
            sampling_strategy=args.sampling_strategy,
            top_p=args.top_p,
            top_k=args.top_k,
            temperature=args.temperature,
            repetition_penalty=args.repetition_penalty,
            epsilon_cutoff=args.epsilon_cutoff,
        )
    except ValueError as exc:
        raise GenerationInputError(str(exc)) from exc
    return GenerationSettings(
        model_folder=args.model_folder,
        tokenizer_folder=args.tokenizer_folder,
        output_folder=args.output_folder,
        num_of_patients=args.num_of_patients,
        demographic_data_path=args.demographic_data_path,
        batch_size=args.batch_size,
        buffer_size=args.buffer_size,
        context_window=args.context_window,
        max_patient_tokens=args.max_patient_tokens,
        sliding=not args.no_sliding,
        sampling=sampling,
        min_num_of_concepts=args.min_num_of_concepts,
        drop_long_sequences=args.drop_long_sequences,
        constrained_decoding=not args.no_constrained_decoding,
        prompt_source=args.prompt_source,
        seed=args.seed,
        shard_index=args.shard_index,
        num_shards=args.num_shards,
        device=args.device,
        dtype=args.dtype,
        show_progress=not args.no_progress,
        durable_output_uri=args.durable_output_uri,
        durable_s3_endpoint=args.durable_s3_endpoint,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        generate(settings_from_args(args))
        return 0

    return run_command(body, GenerationInputError, GenerationError)


if __name__ == "__main__":
    raise SystemExit(main())
