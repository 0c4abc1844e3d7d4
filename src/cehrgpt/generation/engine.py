"""Continuous-batching decode loop with a key/value cache.

``model.generate`` keeps a batch together until its longest row ends; patients
differ wildly in length, so most of the batch idles. Here a row that finishes
hands its slot to the next prompt at once:

* every row's tokens occupy a *suffix* of the cache columns (left padding is
  masked out), and each row has its own position ids;
* a new prompt is run through the model on its own (all prompts have the same
  length, so new prompts are prefilled together) and its keys/values are
  spliced into the right end of the freed row;
* columns no live row uses any more are cut off the left (compaction), and once
  no prompt is left, finished rows leave the batch;
* a row whose context fills the window while the patient is still open *slides*
  (when ``max_length`` exceeds the window): its context becomes the 4-token prompt
  plus the most recent history cut at a ``[VS]`` (at most ``slide_keep`` tokens in
  all, half the window by default), as the training windows are cut
  (:func:`cehrgpt.train.data.cut_window`); that context is prefilled alone (position
  ids restart at 0, as in a training window) and spliced into the row, and decoding
  goes on. The tokens that left the context are kept, so the sequence handed out is
  the whole patient, up to ``max_length`` tokens.

Sampling goes through a ``LogitsProcessorList`` (transformers' own warpers plus
the grammar constraint) and one seeded ``torch.Generator``, so the same seed
gives the same tokens.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache, LogitsProcessorList, PreTrainedModel
from transformers.cache_utils import Cache, DynamicLayer

from cehrgpt import grammar
from cehrgpt.generation.constraints import GrammarConstrainedLogitsProcessor
from cehrgpt.generation.sampling import sample_next_tokens

COMPACT_EVERY = 32  # cut unused cache columns once this many have piled up
PROMPT = grammar.PROMPT_LENGTH  # the demographic prompt a slid context keeps


class GenerationError(RuntimeError):
    """Generation cannot produce what was asked (e.g. no sequence ever meets the acceptance rule)."""


@dataclass
class DecodeResult:
    """What one decoding run produced, in the order rows finished."""

    sequences: list[list[int]] = field(default_factory=list)  # empty when ``on_sequence`` took them
    hit_context_window: list[bool] = field(default_factory=list)  # closed by ``max_length`` (no ``[END]``)
    slide_counts: list[int] = field(default_factory=list)  # slides of each sequence (with ``sequences``)
    slides: int = 0  # every slide, rejected rows included
    accepted: int = 0
    sampled_tokens: int = 0  # every sampled token, rejected rows included
    rejected: int = 0
    steps: int = 0  # decode steps (one token for every live row)
    batch_size: int = 0  # rows the decoder was allowed

    @property
    def occupancy(self) -> float | None:
        """Mean fraction of the allowed batch rows that held a live patient per decode step."""
        return self.sampled_tokens / (self.steps * self.batch_size) if self.steps else None


def _layers(cache: Cache) -> list[Any]:
    """The cache's per-layer key/value holders (``.keys`` / ``.values``, ``[batch, heads, columns, dim]``)."""
    return list(cache.layers)


class _PreallocatedLayer(DynamicLayer):
    """One layer's keys/values in a buffer allocated once: a step writes one column instead of copying all."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, width: int, capacity: int):
        super().__init__()
        shape = (keys.shape[0], keys.shape[1], capacity, keys.shape[3])
        self.key_buffer = keys.new_zeros(shape)
        self.value_buffer = values.new_zeros(shape)
        self.key_buffer[:, :, :width] = keys
        self.value_buffer[:, :, :width] = values
        self.width = width
        self.is_initialized = True
        self._views()

    def _views(self) -> None:
        self.keys = self.key_buffer[:, :, : self.width]
        self.values = self.value_buffer[:, :, : self.width]

    def update(self, key_states, value_states, *args, **kwargs):
        n = key_states.shape[-2]
        self.key_buffer[:, :, self.width : self.width + n] = key_states
        self.value_buffer[:, :, self.width : self.width + n] = value_states
        self.width += n
        self._views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.width

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.width + query_length, 0

    def splice(self, rows: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Give ``rows`` new contents, right-aligned at the current width (the columns left of them stay masked)."""
        n = keys.shape[-2]
        self.key_buffer[rows] = 0
        self.value_buffer[rows] = 0
        self.key_buffer[rows, :, self.width - n : self.width] = keys
        self.value_buffer[rows, :, self.width - n : self.width] = values

    def drop_left(self, columns: int) -> None:
        kept = self.width - columns
        self.key_buffer[:, :, :kept] = self.key_buffer[:, :, columns : self.width].clone()
        self.value_buffer[:, :, :kept] = self.value_buffer[:, :, columns : self.width].clone()
        self.width = kept
        self._views()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.key_buffer = self.key_buffer[indices]
        self.value_buffer = self.value_buffer[indices]
        self._views()


def _cache_argument(model: PreTrainedModel) -> str:
    """Transformers renamed ``past_key_values`` to ``cache``; pass whichever this version takes."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class ContinuousBatchDecoder:
    """Decodes prompts into whole sequences, keeping the batch full.

    Args:
        model: a causal LM whose forward takes ``attention_mask``, ``position_ids`` and a ``DynamicCache``.
        processors: applied to the scores of every step (see :func:`~cehrgpt.generation.sampling.build_logits_processors`).
        context_window: the most tokens the model sees at once, prompt included (at most its positions).
        end_token_id: the token that ends a patient.
        batch_size: rows decoded together.
        generator: the seeded generator every token is drawn with.
        pad_token_id: the ``[PAD]`` id the history is left-padded with (default: the model config's,
            else 0, where this project's tokenizers put ``[PAD]``).
        max_length: total length of a sequence, prompt included (default ``context_window``: no sliding);
            longer than ``context_window``, rows slide (see the module docstring). A grammar constraint
            among ``processors`` must be built with this length.
        visit_start_token_id: the ``[VS]`` id a slid context starts at (None: the most recent tokens, cut anywhere).
        slide_keep: the most tokens a slid context holds, prompt included (default half the window,
            at least the prompt and one token).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        processors: LogitsProcessorList,
        context_window: int,
        end_token_id: int,
        batch_size: int,
        generator: torch.Generator,
        pad_token_id: int | None = None,
        max_length: int | None = None,
        visit_start_token_id: int | None = None,
        slide_keep: int | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        max_length = context_window if max_length is None else max_length
        if max_length < context_window:
            raise ValueError(f"max_length {max_length} is below the context window {context_window}")
        keep = max(context_window // 2, PROMPT + 1) if slide_keep is None else slide_keep
        if max_length > context_window and not PROMPT < keep < context_window:
            raise ValueError(
                f"slide_keep {keep} must exceed the {PROMPT}-token prompt and stay below "
                f"the context window {context_window}"
            )
        n_positions = getattr(model.config, "n_positions", None) or getattr(
            model.config, "max_position_embeddings", None
        )
        if n_positions is not None and context_window > n_positions:
            raise ValueError(f"context_window {context_window} exceeds the model's {n_positions} positions")
        self.model = model
        self.processors = processors
        self.constraint = next(
            (p for p in processors if isinstance(p, GrammarConstrainedLogitsProcessor)), None
        )
        self.context_window = context_window
        self.max_length = max_length
        self.visit_start_token_id = visit_start_token_id
        self.slide_keep = keep
        self.end_token_id = end_token_id
        self.batch_size = batch_size
        self.generator = generator
        self.device = next(model.parameters()).device
        self._cache_kw = _cache_argument(model)
        if pad_token_id is None:
            pad_token_id = getattr(model.config, "pad_token_id", None)
        self._pad_id = 0 if pad_token_id is None else int(pad_token_id)  # a real token id
        self.alive = torch.ones(0, dtype=torch.bool)  # which batch rows hold a patient still being decoded

    def _forward(self, input_ids, cache, attention_mask=None, position_ids=None) -> torch.Tensor:
        kwargs = {self._cache_kw: cache}
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
            **kwargs,
        )
        return out.logits[:, -1, :].float()

    def _prefill(self, prompts: torch.Tensor) -> tuple[DynamicCache, torch.Tensor]:
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(prompts, cache)
        return cache, logits

    @torch.inference_mode()
    def run(
        self,
        num_sequences: int,
        draw_prompts: Callable[[int], torch.Tensor],
        accept: Callable[[list[int], bool], bool] | None = None,
        on_step: Callable[[int, int], None] | None = None,
        max_rejections: int | None = None,
        on_sequence: Callable[[list[int], bool, int], None] | None = None,
    ) -> DecodeResult:
        """Decode until exactly ``num_sequences`` sequences are accepted.

        Args:
            num_sequences: accepted sequences to return.
            draw_prompts: ``k -> LongTensor[k, prompt_length]``, called in a deterministic order.
            accept: ``(token_ids, hit_context_window) -> bool``; a rejected row is replaced by a new prompt.
                ``hit_context_window``: the sequence reached ``max_length`` without ``[END]``.
            on_step: ``(new_tokens, newly_accepted)`` after every step (progress bars).
            max_rejections: give up after this many rejections (default ``10 * num_sequences + 100``).
            on_sequence: ``(token_ids, hit_context_window, slides)`` for each accepted sequence as it
                finishes; given, the sequences are handed over instead of collected (a whole shard streams
                through one decoder, so the batch stays full across output files).

        Raises:
            GenerationError: when more than ``max_rejections`` rows are rejected.
        """
        result = DecodeResult(batch_size=self.batch_size)
        if num_sequences <= 0:
            return result
        limit = 10 * num_sequences + 100 if max_rejections is None else max_rejections
        rows = min(self.batch_size, num_sequences)
        prompts = draw_prompts(rows).to(self.device)
        prompt_len = prompts.shape[1]
        prefilled, logits = self._prefill(prompts)
        capacity = self.context_window + COMPACT_EVERY + 1
        cache = Cache(
            layers=[_PreallocatedLayer(p.keys, p.values, prompt_len, capacity) for p in _layers(prefilled)]
        )
        mask = torch.ones(rows, prompt_len, dtype=torch.long, device=self.device)
        history = prompts.clone()
        lengths = torch.full((rows,), prompt_len, dtype=torch.long, device=self.device)
        # tokens a row's slides took out of its context (between the prompt and the context's history)
        dropped: list[list[int]] = [[] for _ in range(rows)]
        row_slides = [0] * rows
        dropped_count = torch.zeros(rows, dtype=torch.long, device=self.device)
        # Finished rows with no prompt left stay as dead slots (cheaper than copying the cache each time)
        # until half the batch is dead; then the batch is cut down to its live rows.
        self.alive = torch.ones(rows, dtype=torch.bool, device=self.device)
        in_flight = rows
        if self.constraint is not None:
            self.constraint.state = None  # re-read from the first prompts
            self.constraint.follows_engine = True

        while True:
            scores = self.processors(history, logits)  # type: ignore[arg-type]
            tokens = sample_next_tokens(scores, self.generator)
            history = torch.cat([history, tokens[:, None]], dim=1)
            lengths = lengths + self.alive.long()
            live_rows = int(self.alive.sum())
            result.sampled_tokens += live_rows
            result.steps += 1
            done = ((tokens == self.end_token_id) | (lengths + dropped_count >= self.max_length)) & self.alive
            done_rows = torch.nonzero(done).flatten().tolist()
            accepted_now = 0
            for r in done_rows:
                seq = history[r, history.shape[1] - int(lengths[r]) :].tolist()
                if dropped[r]:
                    seq = seq[:PROMPT] + dropped[r] + seq[PROMPT:]
                hit = seq[-1] != self.end_token_id
                if accept is None or accept(seq, hit):
                    if on_sequence is None:
                        result.sequences.append(seq)
                        result.hit_context_window.append(hit)
                        result.slide_counts.append(row_slides[r])
                    else:
                        on_sequence(seq, hit, row_slides[r])
                    result.accepted += 1
                    accepted_now += 1
                else:
                    result.rejected += 1
                    if result.rejected > limit:
                        raise GenerationError(
                            f"{result.rejected} sequences rejected for {result.accepted} accepted; "
                            "the acceptance rule (min_num_of_concepts / drop_long_sequences) is out of reach"
                        )
            in_flight -= len(done_rows)
            if on_step is not None:
                on_step(live_rows, accepted_now)
            if result.accepted >= num_sequences:
                return result
            # open rows whose context fills the window (only when max_length exceeds it)
            slide_rows = (
                torch.nonzero(self.alive & ~done & (lengths >= self.context_window)).flatten().tolist()
                if self.max_length > self.context_window
                else []  # no sliding: no extra device sync per step
            )

            # one step for every row, then replace or drop the finished ones
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            logits = self._forward(
                tokens[:, None], cache, attention_mask=mask, position_ids=(lengths - 1)[:, None]
            )
            for r in slide_rows:
                context = history[r, history.shape[1] - int(lengths[r]) :]
                cut = self._slide_cut(context)
                kept = torch.cat([context[:PROMPT], context[cut:]])
                dropped[r].extend(context[PROMPT:cut].tolist())
                dropped_count[r] += cut - PROMPT
                row_slides[r] += 1
                result.slides += 1
                row_cache, row_logits = self._prefill(kept[None])
                idx = torch.tensor([r], device=self.device)
                for layer, new_layer in zip(_layers(cache), _layers(row_cache), strict=True):
                    layer.splice(idx, new_layer.keys, new_layer.values)
                mask[r] = 0
                mask[r, mask.shape[1] - len(kept) :] = 1
                history[r] = self._pad_id
                history[r, history.shape[1] - len(kept) :] = kept
                logits[r] = row_logits[0]
                lengths[r] = len(kept)
            if not done_rows:
                cache, mask, history = self._compact(cache, mask, history, lengths)
                continue
            wanted = num_sequences - result.accepted - in_flight
            refill = done_rows[:wanted]
            drop = done_rows[len(refill) :]
            if refill:
                new_prompts = draw_prompts(len(refill)).to(self.device)
                new_cache, new_logits = self._prefill(new_prompts)
                idx = torch.tensor(refill, device=self.device)
                width = mask.shape[1]
                for layer, new_layer in zip(_layers(cache), _layers(new_cache), strict=True):
                    layer.splice(idx, new_layer.keys, new_layer.values)
                mask[idx] = 0
                mask[idx, width - prompt_len :] = 1
                history[idx] = self._pad_id
                history[idx, history.shape[1] - prompt_len :] = new_prompts
                logits[idx] = new_logits
                lengths[idx] = prompt_len
                dropped_count[idx] = 0
                for r in refill:
                    dropped[r], row_slides[r] = [], 0
                if self.constraint is not None:
                    self.constraint.restart_rows(idx, new_prompts)
                in_flight += len(refill)
            if drop:
                dead = torch.tensor(drop, device=self.device)
                self.alive[dead] = False
                lengths[dead] = 1  # a dead slot attends to its newest column only
                dropped_count[dead] = 0
            if 2 * int((~self.alive).sum()) >= len(self.alive):
                keep = torch.nonzero(self.alive).flatten()
                cache.batch_select_indices(keep)
                mask, history, lengths, logits = mask[keep], history[keep], lengths[keep], logits[keep]
                dropped_count = dropped_count[keep]
                kept_rows = keep.tolist()
                dropped = [dropped[r] for r in kept_rows]
                row_slides = [row_slides[r] for r in kept_rows]
                self.alive = self.alive[keep]
                if self.constraint is not None:
                    self.constraint.select_rows(keep)
            cache, mask, history = self._compact(cache, mask, history, lengths)

    def _slide_cut(self, context: torch.Tensor) -> int:
        """Where a full context's kept history starts: the earliest ``[VS]`` that leaves at most
        ``slide_keep`` tokens with the prompt, else (one visit longer than that) the most recent tokens."""
        body = self.slide_keep - PROMPT
        first = len(context) - body
        if self.visit_start_token_id is not None:
            starts = torch.nonzero(context[first:] == self.visit_start_token_id).flatten()
            if len(starts):
                return first + int(starts[0])
        return first

    def _compact(self, cache: Cache, mask: torch.Tensor, history: torch.Tensor, lengths: torch.Tensor):
        """Cut the cache columns that no live row uses (each row's tokens are a suffix)."""
        needed = int(lengths.max())
        unused = mask.shape[1] - needed
        if unused >= COMPACT_EVERY:
            for layer in _layers(cache):
                layer.drop_left(unused)
            mask = mask[:, unused:]
        extra = history.shape[1] - needed
        if extra >= COMPACT_EVERY:
            history = history[:, extra:]
        return cache, mask, history
