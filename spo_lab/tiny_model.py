"""A tiny Qwen3 policy with a character-level tokenizer, bundled in ``data/tiny-qwen3``.

The SPO recipe fine-tunes Qwen3-8B; spo_lab's CPU profile needs a policy that trains in minutes on
a laptop yet goes through *exactly* the same code path as a real checkpoint. So the tiny model is a
genuine ``transformers`` ``Qwen3ForCausalLM`` (same blocks: RMSNorm, rotary attention with grouped
KV heads and q/k-norm, SwiGLU MLP), only shrunk to about 1 M parameters, and it is loaded with

    AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)

which is also how ``Qwen/Qwen3-0.6B`` would be loaded. Swapping in a real model is a path change.

The tokenizer has one token per character (``CHARS``) plus three special tokens: ``<pad>`` (id 0),
``<eos>`` (id 1, ends every answer) and ``<unk>`` (id 2, any character outside ``CHARS``).
Encoding adds no special tokens, so ``"347+58="`` is exactly 7 tokens. Padding is on the left, so
a batch of prompts of different lengths ends at the same position and ``generate`` continues all
of them at once.

``scripts/build_tiny_model.py`` builds the tokenizer and an untrained model with the functions
below, warm-starts it with a short supervised pass and saves both; :func:`spo_lab.models.load_policy`
reads them back, exactly as it reads any other checkpoint.
"""

from __future__ import annotations

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from .models import DEFAULT_MODEL_DIR

__all__ = [
    "DEFAULT_MODEL_DIR",
    "SPECIAL_TOKENS",
    "CHARS",
    "build_tokenizer",
    "tiny_qwen3_config",
    "build_tiny_model",
]

SPECIAL_TOKENS = ("<pad>", "<eos>", "<unk>")
"""Special tokens, in id order: padding (0), end of sequence (1), unknown character (2)."""

CHARS = "0123456789+-= "
"""Every ordinary character the tokenizer knows; each is one token (ids 3, 4, ...)."""


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The character-level tokenizer: ``<pad>``, ``<eos>``, ``<unk>``, then one token per char.

    Built with the ``tokenizers`` library (a ``WordLevel`` vocabulary over single characters, a
    pre-tokenizer that isolates every character, a ``Fuse`` decoder that joins them back without
    spaces) and wrapped as a ``PreTrainedTokenizerFast`` with left padding.
    """
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *CHARS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=64,
    )


def tiny_qwen3_config(
    tokenizer: PreTrainedTokenizerBase,
    *,
    hidden_size: int = 128,
    num_hidden_layers: int = 4,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 512,
    max_position_embeddings: int = 64,
) -> Qwen3Config:
    """A ``Qwen3Config`` sized for CPU work (defaults: ~1.0 M parameters, tied embeddings).

    ``head_dim`` is ``hidden_size // num_attention_heads`` (Qwen3's own default of 128 would be
    larger than the whole hidden state here). Vocabulary and special-token ids come from
    ``tokenizer``; Qwen3 uses no beginning-of-sequence token, and neither does this model.
    """
    return Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        head_dim=hidden_size // num_attention_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )


def build_tiny_model(config: Qwen3Config, seed: int) -> Qwen3ForCausalLM:
    """A freshly initialised ``Qwen3ForCausalLM``; the same ``seed`` gives the same weights."""
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(config)
