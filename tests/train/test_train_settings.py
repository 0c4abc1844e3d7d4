"""Preset resolution: preset defaults, overrides, and the step budget."""

from __future__ import annotations

import pytest

from cehrgpt.train.settings import TrainError, resolve_settings


def test_tiny_is_the_demo_shape_with_a_step_budget():
    s = resolve_settings("tiny")
    assert (s.n_layer, s.n_embd, s.n_head, s.context_window) == (4, 256, 4, 512)
    assert (s.max_steps, s.epochs, s.batch_size) == (60, 1, 16)


def test_asking_for_epochs_drops_the_preset_step_budget():
    assert resolve_settings("tiny", epochs=3).max_steps is None
    assert resolve_settings("tiny", epochs=3, max_steps=5).max_steps == 5


def test_small_and_base_train_by_epochs():
    small, base = resolve_settings("small"), resolve_settings("base")
    assert (small.n_layer, small.n_embd, small.max_steps) == (6, 512, None)
    assert (base.n_layer, base.n_embd, base.max_steps) == (12, 768, None)


def test_small_cells_are_suppressed_by_default():
    assert (
        resolve_settings("tiny").min_concept_patients == resolve_settings("base").min_concept_patients == 10
    )
    assert resolve_settings("tiny", min_concept_patients=1).min_concept_patients == 1


def test_attention_dropout_is_off_unless_asked_for_and_reaches_the_config(tmp_path):
    from cehrgpt.models.gpt import gpt2_config
    from cehrgpt.models.tokenizer import build_tokenizer

    tokenizer, _ = build_tokenizer([["year:2000", "age:30", "8507", "8527", "[VS]", "9202", "1", "[VE]"]], 1)
    shape = {"n_layer": 1, "n_embd": 8, "n_head": 2, "context_window": 16}
    default = gpt2_config(tokenizer, **shape)
    assert (default.embd_pdrop, default.resid_pdrop, default.attn_pdrop) == (0.1, 0.1, 0.0)
    asked = gpt2_config(tokenizer, **shape, dropout=0.2, attention_dropout=0.05)
    assert (asked.embd_pdrop, asked.resid_pdrop, asked.attn_pdrop) == (0.2, 0.2, 0.05)
    assert resolve_settings("tiny").attention_dropout == 0.0
    assert resolve_settings("tiny", attention_dropout=0.1).attention_dropout == 0.1


def test_none_overrides_keep_the_preset_value():
    assert resolve_settings("tiny", batch_size=None).batch_size == 16


def test_unknown_settings_and_presets_are_named():
    with pytest.raises(TrainError, match="unknown setting\\(s\\) batchsize: expected some of"):
        resolve_settings("tiny", batchsize=3)
    with pytest.raises(TrainError, match="unknown preset 'huge': expected one of tiny, small, base"):
        resolve_settings("huge")
