"""Training settings: a model preset's shape and defaults, overridden by what the user asks for, checked.

One :class:`TrainSettings` holds every knob of a run; :func:`resolve_settings` is the only way the
trainer builds one, so a bad value fails before any data is read.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from cehrgpt import grammar
from cehrgpt.models.gpt import PRESETS, Preset
from cehrgpt.models.tokenizer import DEFAULT_MIN_CONCEPT_PATIENTS


class TrainError(ValueError):
    """A training setting or the output folder is not usable."""


@dataclass(frozen=True)
class TrainSettings(Preset):
    """Every knob of a run: the model shape and training defaults of a :class:`Preset`, and the rest
    (build it with :func:`resolve_settings`, which fills in the preset)."""

    preset: str = "tiny"
    dropout: float = 0.1
    attention_dropout: float = 0.0
    seed: int = 42
    resume: bool = False
    min_concept_patients: int = DEFAULT_MIN_CONCEPT_PATIENTS
    eval_steps: int = 500
    logging_steps: int = 50
    save_steps: int = 500
    num_workers: int = 0


def resolve_settings(preset: str = "tiny", **overrides) -> TrainSettings:
    """The preset's settings with ``overrides`` applied (``None`` values ignored), checked.

    Raises:
        TrainError: an unknown preset or setting, or a value out of range.
    """
    if preset not in PRESETS:
        raise TrainError(f"unknown preset {preset!r}: expected one of {', '.join(PRESETS)}")
    known = {f.name for f in fields(TrainSettings)} - {"preset"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TrainError(
            f"unknown setting(s) {', '.join(unknown)}: expected some of {', '.join(sorted(known))}"
        )
    given = {name: value for name, value in overrides.items() if value is not None}
    defaults = PRESETS[preset].as_dict()
    if "epochs" in given and "max_steps" not in given:
        defaults["max_steps"] = None  # asking for epochs overrides the preset's step budget
    s = TrainSettings(preset=preset, **{**defaults, **given})
    at_least_one = (
        "epochs",
        "batch_size",
        "context_window",
        "n_layer",
        "n_embd",
        "n_head",
        "min_concept_patients",
    )
    for name in at_least_one:
        if getattr(s, name) < 1:
            raise TrainError(f"{name} must be >= 1, got {getattr(s, name)}")
    for name in ("eval_steps", "logging_steps", "save_steps", "num_workers"):
        if getattr(s, name) < 0:
            raise TrainError(f"{name} must be >= 0, got {getattr(s, name)}")
    if s.max_steps is not None and s.max_steps < 1:
        raise TrainError(f"max_steps must be >= 1, got {s.max_steps}")
    if s.learning_rate <= 0:
        raise TrainError(f"learning_rate must be > 0, got {s.learning_rate}")
    for name in ("dropout", "attention_dropout"):
        if not 0 <= getattr(s, name) < 1:
            raise TrainError(f"{name} must be in [0, 1), got {getattr(s, name)}")
    if s.context_window <= grammar.PROMPT_LENGTH:
        raise TrainError(
            f"context_window must exceed the {grammar.PROMPT_LENGTH}-token prompt, got {s.context_window}"
        )
    if s.n_embd % s.n_head:
        raise TrainError(f"n_embd ({s.n_embd}) must be a multiple of n_head ({s.n_head})")
    return s
