"""Train a CEHR-GPT model (GPT-2) on patient sequences and save it as Hugging Face artifacts.

Why a small ``accelerate`` loop rather than the HF ``Trainer``: the loop is a
page long, runs unchanged on one CPU, one GPU or under ``torchrun`` /
``accelerate launch`` on several GPUs (``Accelerator`` reads the launcher's
environment), gives bf16 autocast with one argument, and keeps the two things
this format needs in plain sight: seeded prompt-preserving windows and a
length-grouped sampler whose order depends only on (seed, epoch), so that
``--resume`` continues the exact batch sequence and loss curve from a
checkpoint (model, optimizer, scheduler and RNG state via ``save_state``).

Output folder, written so that a killed run never looks complete::

    MODEL/checkpoints/tokenizer/          tokenizer built at the start (reused by --resume)
    MODEL/checkpoints/step-<N>/           accelerate state + trainer_state.json
    MODEL/config.json model.safetensors generation_config.json tokenizer.json tokenizer_config.json
    MODEL/token_metadata.json
    MODEL/training_metrics.json           written last: its presence means the run finished
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cehrgpt import grammar
from cehrgpt.models.gpt import generation_config, gpt2_config
from cehrgpt.models.tokenizer import (
    build_tokenizer,
    load_tokenizer,
    save_tokenizer,
    token_metadata,
)
from cehrgpt.train.data import (
    IGNORE_INDEX,
    WindowDataset,
    collate_windows,
    encode_all,
    read_split,
    training_loader,
    unigram_log_probs,
    whole_history,
)
from cehrgpt.train.scoring import first_window, membership_auc, window_losses
from cehrgpt.train.settings import TrainError, TrainSettings, resolve_settings

logger = logging.getLogger("cehrgpt.train")

METRICS_FILE = "training_metrics.json"
CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
KEEP_CHECKPOINTS = 2
WARMUP_FRACTION = 0.05
MAX_WARMUP_STEPS = 500
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0
#: Patients per set (training sample, held-out) of the summary's model-memorisation figure: its AUC's
#: standard error is about 0.013 at chance, and scoring them costs a few seconds of a tiny model on 2 cores.
MEMORIZATION_SAMPLE = 500


def train(
    data_folder: str | os.PathLike, output_folder: str | os.PathLike, *, preset: str = "tiny", **overrides
) -> dict:
    """Build the tokenizer, train GPT-2 on ``data_folder/train``, evaluate on ``data_folder/test``, save.

    Args:
        data_folder: The ETL's ``patient_sequence`` folder (``train/`` and ``test/`` parquet,
            column ``concept_ids``).
        output_folder: Where the model, tokenizer and ``training_metrics.json`` go; must be
            empty or absent unless ``resume=True``.
        preset: ``tiny``, ``small`` or ``base`` (see :data:`cehrgpt.models.gpt.PRESETS`).
        **overrides: Any :class:`TrainSettings` field (``max_steps``, ``epochs``, ``batch_size``,
            ``learning_rate``, ``context_window``, ``seed``, ``resume``, ...).

    Returns:
        The metrics written to ``training_metrics.json``.

    Raises:
        TrainError: a bad setting or an output folder that holds something else.
        DataFolderError: the data folder is missing, empty or in the wrong format.
    """
    settings = resolve_settings(preset, **overrides)
    return _Run(Path(data_folder), Path(output_folder), settings).execute()


@dataclass
class _Data:
    """What a run trains and validates on."""

    tokenizer: Any
    tokenizer_stats: dict
    loader: DataLoader
    eval_windows: list[np.ndarray]
    eval_count: int  # tokens predicted over the validation windows
    unigram_nll: float  # summed over those tokens
    pad_id: int
    end_id: int
    num_train: int
    num_test: int
    train_ids: list[np.ndarray]
    test_ids: list[np.ndarray]


class _Run:
    """One training run: its settings, data, model and bookkeeping."""

    def __init__(self, data_folder: Path, output_folder: Path, settings: TrainSettings):
        self.data_folder = data_folder
        self.out = output_folder
        self.settings = settings
        self.checkpoints = output_folder / CHECKPOINTS

    # --- setup ---------------------------------------------------------------------------------------------

    def _check_output_folder(self) -> Path | None:
        """Refuse a folder holding other things; return the checkpoint to resume from, if any."""
        if self.out.exists() and not self.out.is_dir():
            raise TrainError(f"output folder {str(self.out)!r} is a file: expected a folder")
        if not self.settings.resume:
            if self.out.is_dir() and any(self.out.iterdir()):
                raise TrainError(
                    f"output folder {str(self.out)!r} is not empty: choose an empty folder or pass --resume"
                )
            return None
        steps = sorted(
            (int(p.name.split("-")[1]), p)
            for p in self.checkpoints.glob("step-*")
            if (p / STATE_FILE).is_file()
        )
        return steps[-1][1] if steps else None

    def execute(self) -> dict:
        from accelerate import Accelerator

        started = time.perf_counter()
        checkpoint = self._check_output_folder()
        self.mixed_precision = (
            "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
        )
        # cpu=True without a GPU: accelerate only sets up multi-process (gloo) CPU runs when told so
        self.accelerator = Accelerator(
            mixed_precision=self.mixed_precision,
            step_scheduler_with_optimizer=False,
            cpu=not torch.cuda.is_available(),
        )
        data = self._prepare_data(resuming=checkpoint is not None)
        model, optimizer, loader, scheduler, total_steps = self._build(data)
        state: dict[str, Any] = {"step": 0, "log_history": [], "eval_history": []}
        if checkpoint is not None:
            state = self._load_checkpoint(checkpoint)
        finished = self.out / METRICS_FILE
        if checkpoint is not None and state["step"] >= total_steps and finished.is_file():
            # nothing left to train: rewriting the metrics would replace the run's throughput with null
            logger.info(
                "%s already finished at step %d; nothing to train, left as it was", self.out, state["step"]
            )
            self.accelerator.wait_for_everyone()
            return json.loads(finished.read_text())
        if self.accelerator.is_main_process:
            (self.out / METRICS_FILE).unlink(missing_ok=True)  # no longer a finished run
        self._log_start(model, data, len(loader), total_steps, state["step"])

        resumed_from = state["step"]
        tokens_seen, seconds = self._train_loop(model, optimizer, scheduler, loader, data, state, total_steps)
        final = self._evaluate(model, data, state["step"])
        state["eval_history"].append(final)
        memorization = self._model_memorization(model, data) if self.accelerator.is_main_process else None
        metrics = {
            "train_loss": state["log_history"][-1]["loss"] if state["log_history"] else None,
            "validation_loss": final["validation_loss"],
            "validation_perplexity": final["validation_perplexity"],
            "unigram_baseline_perplexity": final["unigram_baseline_perplexity"],
            "model_memorization": memorization,
            "validation_tokens": data.eval_count,
            "tokens_per_second": round(tokens_seen / seconds, 1) if seconds else None,
            "wall_time_seconds": round(time.perf_counter() - started, 2),
            "steps": state["step"],
            "resumed_from_step": resumed_from if checkpoint else None,
            "steps_per_epoch": len(loader),
            "epochs_completed": round(state["step"] / len(loader), 3),
            "num_train_patients": data.num_train,
            "num_test_patients": data.num_test,
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "device": str(self.accelerator.device),
            "num_processes": self.accelerator.num_processes,
            "mixed_precision": self.mixed_precision,
            "tokenizer": data.tokenizer_stats,
            "settings": asdict(self.settings),
            "log_history": state["log_history"],
            "eval_history": state["eval_history"],
        }
        if self.accelerator.is_main_process:
            unwrapped = self.accelerator.unwrap_model(model)
            self._write_artifact(unwrapped, self.accelerator.get_state_dict(model), data.tokenizer, metrics)
            assert memorization is not None
            logger.info(
                "validation loss %.4f, perplexity %.2f (unigram baseline %.2f); model memorisation: loss attack "
                "AUC %.3f, held-out − training loss %.4f; %s tokens/s; saved to %s",
                metrics["validation_loss"], metrics["validation_perplexity"],
                metrics["unigram_baseline_perplexity"], memorization["mia_auc"], memorization["loss_gap"],
                metrics["tokens_per_second"], self.out,
            )  # fmt: skip
        self.accelerator.wait_for_everyone()
        return metrics

    def _prepare_data(self, resuming: bool) -> _Data:
        s = self.settings
        train_tokens = read_split(self.data_folder, "train")
        test_tokens = read_split(self.data_folder, "test")
        tokenizer, stats = self._tokenizer(train_tokens, resuming)
        vocab = tokenizer.get_vocab()
        pad_id, end_id, vs_id = vocab[grammar.PAD], vocab[grammar.END], vocab[grammar.VISIT_START]
        train_ids = encode_all(train_tokens, vocab, vocab[grammar.OOV])
        test_ids = encode_all(test_tokens, vocab, vocab[grammar.OOV])
        loader = training_loader(train_ids, vocab, s.context_window, s.batch_size, s.seed, s.num_workers)
        eval_set = WindowDataset(test_ids, s.context_window, end_id, vs_id, s.seed + 1)
        eval_windows = [eval_set[i] for i in range(len(eval_set))]
        unigram = unigram_log_probs([whole_history(ids, end_id) for ids in train_ids], len(tokenizer))
        return _Data(
            tokenizer=tokenizer,
            tokenizer_stats=stats,
            loader=loader,
            eval_windows=eval_windows,
            eval_count=sum(len(w) - 1 for w in eval_windows),
            unigram_nll=-sum(float(unigram[w[1:]].sum()) for w in eval_windows),
            pad_id=pad_id,
            end_id=end_id,
            num_train=len(train_ids),
            num_test=len(test_ids),
            train_ids=train_ids,
            test_ids=test_ids,
        )

    def _build(self, data: _Data):
        """Model, optimizer, loader and scheduler, prepared for this process; and the step budget."""
        from accelerate.utils import set_seed
        from transformers import GPT2LMHeadModel, get_cosine_schedule_with_warmup

        s = self.settings
        set_seed(s.seed)
        config = gpt2_config(
            data.tokenizer,
            n_layer=s.n_layer,
            n_embd=s.n_embd,
            n_head=s.n_head,
            context_window=s.context_window,
            dropout=s.dropout,
            attention_dropout=s.attention_dropout,
        )
        model = GPT2LMHeadModel(config)
        model.loss_type = "ForCausalLM"  # what transformers falls back to anyway, minus its warning
        model.generation_config = generation_config(data.tokenizer, s.context_window)
        optimizer = torch.optim.AdamW(model.parameters(), lr=s.learning_rate, weight_decay=WEIGHT_DECAY)
        model, optimizer, loader = self.accelerator.prepare(model, optimizer, data.loader)
        total_steps = s.max_steps or len(loader) * s.epochs
        warmup = min(MAX_WARMUP_STEPS, max(1, int(WARMUP_FRACTION * total_steps)))
        scheduler = self.accelerator.prepare(get_cosine_schedule_with_warmup(optimizer, warmup, total_steps))
        return model, optimizer, loader, scheduler, total_steps

    def _log_start(self, model, data: _Data, steps_per_epoch: int, total_steps: int, step: int) -> None:
        if not self.accelerator.is_main_process:
            return
        s = self.settings
        logger.info(
            "training %s (%.2fM parameters, vocab %d, window %d) on %d patients, %d steps (%d per epoch), "
            "%s, %d process(es), mixed precision %s%s",
            s.preset, sum(p.numel() for p in model.parameters()) / 1e6, len(data.tokenizer), s.context_window,
            data.num_train, total_steps, steps_per_epoch, self.accelerator.device,
            self.accelerator.num_processes, self.mixed_precision, f", resumed from step {step}" if step else "",
        )  # fmt: skip

    def _train_loop(self, model, optimizer, scheduler, loader, data: _Data, state: dict, total_steps: int):
        """Run steps until ``total_steps``, logging, evaluating and checkpointing into ``state``.

        Returns:
            Real tokens trained on (all processes) and the seconds spent training (evaluation and
            checkpoints excluded).
        """
        s, accelerator = self.settings, self.accelerator
        steps_per_epoch = len(loader)
        device = accelerator.device
        step = state["step"]
        window_loss = torch.zeros((), device=device)
        window_tokens = torch.zeros((), dtype=torch.long, device=device)
        window_steps, tokens_seen, seconds = 0, 0, 0.0
        bar = tqdm(
            total=total_steps,
            initial=step,
            disable=not accelerator.is_main_process,
            unit="step",
            desc="train",
        )
        model.train()
        tick = time.perf_counter()
        while step < total_steps:
            loader.set_epoch(step // steps_per_epoch)
            skip = step % steps_per_epoch
            for batch in accelerator.skip_first_batches(loader, skip) if skip else loader:
                with accelerator.autocast():
                    loss = model(**batch).loss
                accelerator.backward(loss)
                accelerator.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                window_loss += loss.detach().float()
                window_tokens += batch["attention_mask"].sum()
                window_steps += 1
                bar.update(1)
                if (s.logging_steps and step % s.logging_steps == 0) or step == total_steps:
                    elapsed = time.perf_counter() - tick
                    tokens = int(accelerator.reduce(window_tokens))
                    mean_loss = float(accelerator.reduce(window_loss / window_steps, "mean"))
                    seconds, tokens_seen = seconds + elapsed, tokens_seen + tokens
                    entry = {
                        "step": step,
                        "epoch": round(step / steps_per_epoch, 3),
                        "loss": round(mean_loss, 5),
                        "learning_rate": scheduler.get_last_lr()[0],
                        "tokens_per_second": round(tokens / max(elapsed, 1e-9), 1),
                    }
                    state["log_history"].append(entry)
                    bar.set_postfix(loss=f"{mean_loss:.3f}", tok_s=f"{entry['tokens_per_second']:,.0f}")
                    if accelerator.is_main_process:
                        logger.info(
                            "step %d/%d epoch %.2f loss %.4f lr %.2e %.0f tokens/s", step, total_steps,
                            entry["epoch"], mean_loss, entry["learning_rate"], entry["tokens_per_second"],
                        )  # fmt: skip
                    window_loss.zero_()
                    window_tokens.zero_()
                    window_steps = 0
                    tick = time.perf_counter()
                state["step"] = step
                if s.eval_steps and step % s.eval_steps == 0 and step != total_steps:
                    state["eval_history"].append(self._evaluate(model, data, step))
                    tick = time.perf_counter()
                if (s.save_steps and step % s.save_steps == 0) or step == total_steps:
                    self._save_checkpoint(step, state)
                    tick = time.perf_counter()
                if step >= total_steps:
                    break
        bar.close()
        return tokens_seen, seconds

    def _tokenizer(self, train_tokens: list[list[str]], resuming: bool):
        saved = self.checkpoints / "tokenizer"
        stats_file = saved / "build_stats.json"
        if resuming and stats_file.is_file():
            return load_tokenizer(saved), json.loads(stats_file.read_text())
        tokenizer, stats = build_tokenizer(train_tokens, self.settings.min_concept_patients)
        tokenizer.model_max_length = self.settings.context_window
        if self.accelerator.is_main_process:
            if saved.exists():
                shutil.rmtree(saved)
            tmp = self.checkpoints / ".tokenizer.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            save_tokenizer(tokenizer, tmp)
            (tmp / "build_stats.json").write_text(json.dumps(stats, indent=1))
            tmp.replace(saved)
            logger.info(
                "tokenizer: %d tokens; %d of %d concepts kept, %d left out (seen in < %d patients)",
                stats["vocab_size"], stats["concepts_kept"], stats["concepts_seen"],
                stats["concepts_left_out_rare"], stats["min_concept_patients"],
            )  # fmt: skip
        self.accelerator.wait_for_everyone()
        return tokenizer, stats

    # --- evaluation -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def _evaluate(self, model, data: _Data, step: int) -> dict:
        """Token-level validation loss over every test window; each process takes every n-th window."""
        accelerator = self.accelerator
        mine = data.eval_windows[accelerator.process_index :: accelerator.num_processes]
        mine = sorted(mine, key=len, reverse=True)
        batch_size = self.settings.batch_size
        total = torch.zeros((), dtype=torch.float64, device=accelerator.device)
        model.eval()
        for begin in range(0, len(mine), batch_size):
            batch = collate_windows(mine[begin : begin + batch_size], data.pad_id)
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            with accelerator.autocast():
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            total += torch.nn.functional.cross_entropy(
                logits[:, :-1].float().flatten(0, 1),
                batch["labels"][:, 1:].flatten(),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            ).double()
        model.train()
        loss = float(accelerator.reduce(total, "sum")) / data.eval_count
        result = {
            "step": step,
            "validation_loss": round(loss, 5),
            "validation_perplexity": round(math.exp(loss), 3),
            "unigram_baseline_perplexity": round(math.exp(data.unigram_nll / data.eval_count), 3),
        }
        if accelerator.is_main_process:
            logger.info(
                "step %d: validation loss %.4f, perplexity %.2f (unigram baseline %.2f)",
                step, loss, result["validation_perplexity"], result["unigram_baseline_perplexity"],
            )  # fmt: skip
        return result

    def _model_memorization(self, model, data: _Data) -> dict:
        """The model's loss on a seeded sample of training patients against held-out ones (``train/scoring.py``).

        At most :data:`MEMORIZATION_SAMPLE` patients per set, scored on their first window in eval mode;
        ``mia_auc`` is the loss attack's ROC AUC (0.5 = no memorisation), as
        ``python -m cehrgpt.analysis.privacy.model_memorization`` measures it on every patient.
        """
        rng = np.random.default_rng(self.settings.seed)
        picked = {}
        for name, patients in (("training", data.train_ids), ("held_out", data.test_ids)):
            rows = np.sort(rng.choice(len(patients), min(len(patients), MEMORIZATION_SAMPLE), replace=False))
            picked[name] = [
                first_window(patients[i], self.settings.context_window, data.end_id) for i in rows
            ]
        unwrapped = self.accelerator.unwrap_model(model)
        unwrapped.eval()
        losses = window_losses(
            unwrapped,
            picked["training"] + picked["held_out"],
            data.pad_id,
            self.settings.batch_size,
            self.accelerator.device,
            progress=False,
        )
        unwrapped.train()
        n = len(picked["training"])
        return {
            "mia_auc": round(membership_auc(losses[:n], losses[n:]), 5),
            "loss_train_mean": round(float(np.mean(losses[:n])), 5),
            "loss_holdout_mean": round(float(np.mean(losses[n:])), 5),
            "loss_gap": round(float(np.mean(losses[n:]) - np.mean(losses[:n])), 5),
            "training_patients": n,
            "held_out_patients": len(losses) - n,
        }

    # --- checkpoints and the artifact -----------------------------------------------------------------------

    def _save_checkpoint(self, step: int, state: dict) -> None:
        accelerator = self.accelerator
        final = self.checkpoints / f"step-{step}"
        tmp = self.checkpoints / f".step-{step}.tmp"
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp), safe_serialization=True)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (tmp / STATE_FILE).write_text(json.dumps({**state, "settings": asdict(self.settings)}, indent=1))
            shutil.rmtree(final, ignore_errors=True)
            tmp.replace(final)
            done = sorted(
                (int(p.name.split("-")[1]), p)
                for p in self.checkpoints.glob("step-*")
                if (p / STATE_FILE).is_file()
            )
            for _, old in done[:-KEEP_CHECKPOINTS]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    def _load_checkpoint(self, checkpoint: Path) -> dict:
        state = json.loads((checkpoint / STATE_FILE).read_text())
        saved, now = state.get("settings", {}), asdict(self.settings)
        for name in (
            "batch_size",
            "context_window",
            "n_layer",
            "n_embd",
            "n_head",
            "seed",
            "min_concept_patients",
        ):
            if saved.get(name) != now[name]:
                raise TrainError(
                    f"cannot resume from {str(checkpoint)!r}: it was trained with {name}={saved.get(name)}, "
                    f"this run has {name}={now[name]}"
                )
        self.accelerator.load_state(str(checkpoint))
        return state

    def _write_artifact(self, model, state_dict, tokenizer, metrics: dict) -> None:
        """Write model, tokenizer and metadata to a staging folder, move them in, metrics last."""
        staging = self.out / ".artifact.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(staging, state_dict=state_dict)
        save_tokenizer(tokenizer, staging)
        token_metadata(tokenizer)  # fails loudly before anything is moved if metadata went missing
        mode = _file_mode()
        for path in sorted(staging.iterdir()):
            if path.is_file():
                path.chmod(mode)  # safetensors writes 0600; every file of the model gets the umask's mode
            path.replace(self.out / path.name)
        staging.rmdir()
        tmp = self.out / f".{METRICS_FILE}.tmp"
        tmp.write_text(json.dumps(metrics, indent=1))
        tmp.replace(self.out / METRICS_FILE)


def _file_mode() -> int:
    """The mode a plain ``open(path, "w")`` gives a new file under the current umask (0644 for umask 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask
