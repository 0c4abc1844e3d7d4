"""Command line of ``python -m cehrgpt.train``: parse arguments, call :func:`cehrgpt.train.trainer.train`."""

from __future__ import annotations

import argparse
import logging

from accelerate import PartialState

from cehrgpt.exits import CommandParser, run_command
from cehrgpt.models.gpt import PRESETS
from cehrgpt.models.tokenizer import DEFAULT_MIN_CONCEPT_PATIENTS, TokenizerError
from cehrgpt.train.data import DataFolderError
from cehrgpt.train.settings import TrainError
from cehrgpt.train.trainer import train


def _parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="python -m cehrgpt.train",
        description="Build the CEHR-GPT tokenizer and train a GPT-2 model on patient sequences; the output "
        "folder loads with AutoModelForCausalLM/AutoTokenizer.from_pretrained.",
        argument_default=argparse.SUPPRESS,  # unset flags fall back to the preset
    )
    parser.add_argument("--data_folder", required=True, help="patient_sequence folder with train/ and test/")
    parser.add_argument("--output_folder", required=True, help="model folder to write (empty or absent)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="model size (default tiny)")
    parser.add_argument(
        "--max_steps", type=int, help="optimizer steps; wins over --epochs (tiny: 60 by default)"
    )
    parser.add_argument(
        "--epochs", type=int, help="passes over the training patients, when --max_steps is unset"
    )
    parser.add_argument("--batch_size", type=int, help="windows per step per device")
    parser.add_argument("--learning_rate", type=float, help="peak AdamW learning rate (cosine decay)")
    parser.add_argument("--context_window", type=int, help="longest window in tokens, prompt included")
    parser.add_argument("--n_layer", type=int, help="override the preset's transformer layers")
    parser.add_argument("--n_embd", type=int, help="override the preset's hidden width")
    parser.add_argument("--n_head", type=int, help="override the preset's attention heads")
    parser.add_argument(
        "--dropout", type=float, help="dropout on embeddings and the residual stream (default 0.1)"
    )
    parser.add_argument(
        "--attention_dropout", type=float, help="dropout on the attention weights (default 0: off)"
    )
    parser.add_argument(
        "--seed", type=int, help="seeds model init, data order and window choice (default 42)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in the folder"
    )
    parser.add_argument(
        "--min_concept_patients",
        type=int,
        help=f"leave out concepts seen in fewer training patients (default {DEFAULT_MIN_CONCEPT_PATIENTS}; 1 keeps all)",
    )
    parser.add_argument(
        "--eval_steps", type=int, help="validate every N steps, 0 = only at the end (default 500)"
    )
    parser.add_argument("--logging_steps", type=int, help="log loss and tokens/s every N steps (default 50)")
    parser.add_argument(
        "--save_steps", type=int, help="checkpoint every N steps, 0 = only at the end (default 500)"
    )
    parser.add_argument("--num_workers", type=int, help="data loader worker processes (default 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(_parser().parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per checkpoint file otherwise

    def body() -> int:
        metrics = train(args.pop("data_folder"), args.pop("output_folder"), **args)
        if not PartialState().is_main_process:  # under torchrun every process returns; one reports
            return 0
        print(
            f"validation perplexity {metrics['validation_perplexity']:.2f} "
            f"(unigram baseline {metrics['unigram_baseline_perplexity']:.2f}), "
            f"{metrics['steps']} steps, {metrics['tokens_per_second']} tokens/s, {metrics['wall_time_seconds']}s"
        )
        built = metrics["tokenizer"]
        print(
            f"tokenizer: {built['concepts_left_out_rare']} of {built['concepts_seen']} concepts left out "
            f"(seen in fewer than {built['min_concept_patients']} training patients)"
        )
        return 0

    return run_command(body, TrainError, DataFolderError, TokenizerError)


if __name__ == "__main__":
    raise SystemExit(main())
