"""GPT-2 model shapes for CEHR-GPT and the Hugging Face configs built from a tokenizer.

The model is a stock :class:`transformers.GPT2LMHeadModel`: nothing the token
format needs is outside what GPT-2 expresses, so a trained folder loads with
``AutoModelForCausalLM.from_pretrained`` and no custom code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from transformers import GenerationConfig, GPT2Config, PreTrainedTokenizerBase

from cehrgpt import grammar


@dataclass(frozen=True)
class Preset:
    """A model shape and the training defaults that suit it."""

    n_layer: int
    n_embd: int
    n_head: int
    context_window: int
    batch_size: int
    learning_rate: float
    epochs: int
    max_steps: int | None = None  # when set, wins over epochs unless the user asks for epochs

    def as_dict(self) -> dict:
        return asdict(self)


# tiny: the laptop demo and the generator benchmark (4 layers, 256 wide, 4 heads, 512 window); its 60
# default steps (about 230k tokens) fit the 3-minute demo on 2 CPU cores and already beat the unigram
# baseline several times over on Eunomia.
PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        n_layer=4,
        n_embd=256,
        n_head=4,
        context_window=512,
        batch_size=16,
        learning_rate=1e-3,
        epochs=1,
        max_steps=60,
    ),
    "small": Preset(
        n_layer=6, n_embd=512, n_head=8, context_window=1024, batch_size=16, learning_rate=5e-4, epochs=10
    ),
    "base": Preset(
        n_layer=12, n_embd=768, n_head=12, context_window=2048, batch_size=16, learning_rate=2e-4, epochs=10
    ),
}


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Ids of ``[PAD]``, ``[START]`` and ``[END]`` (the tokenizer puts them at 0, 2 and 3)."""
    vocab = tokenizer.get_vocab()
    return {"pad": vocab[grammar.PAD], "bos": vocab[grammar.START], "eos": vocab[grammar.END]}


def gpt2_config(
    tokenizer: PreTrainedTokenizerBase,
    *,
    n_layer: int,
    n_embd: int,
    n_head: int,
    context_window: int,
    dropout: float = 0.1,
    attention_dropout: float = 0.0,
) -> GPT2Config:
    """A GPT-2 config sized to the tokenizer's vocabulary, with ``[END]`` as eos and ``[PAD]`` as pad.

    ``dropout`` applies to the embeddings and the residual stream, ``attention_dropout`` to the
    attention weights. The latter is off by default: on the CPU it costs a third of a training step at
    a 512-token window (a random mask over every batch x head x window x window weight, and PyTorch's
    fused attention cannot take it), and it made no measurable difference to validation perplexity or
    the privacy metrics on Eunomia (README, training).

    Raises:
        ValueError: ``n_embd`` is not a multiple of ``n_head``, or a size is not positive.
    """
    for name, value in (("n_layer", n_layer), ("n_embd", n_embd), ("n_head", n_head)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if context_window <= grammar.PROMPT_LENGTH:
        raise ValueError(
            f"context_window must exceed the {grammar.PROMPT_LENGTH}-token prompt, got {context_window}"
        )
    if n_embd % n_head:
        raise ValueError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
    ids = special_token_ids(tokenizer)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=context_window,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=attention_dropout,
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
        tie_word_embeddings=True,
        # GPT-2's tanh GELU as one fused kernel: same function as "gelu_new", a third less CPU per step
        activation_function="gelu_pytorch_tanh",
    )
    return config


def generation_config(tokenizer: PreTrainedTokenizerBase, context_window: int) -> GenerationConfig:
    """Generation defaults saved with the model: stop at ``[END]``, pad with ``[PAD]``."""
    ids = special_token_ids(tokenizer)
    return GenerationConfig(
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
        max_length=context_window,
    )
