"""The head, the HF-style causal-LM call and the output records that RWKV-5's, 6's and 7's models
share (v5/model.py, whose classes RWKV-6's subclass, and v7/model.py; RWKV-4 keeps HF's
RwkvForCausalLM layout of its own).

`CausalLM` is a mixin placed before the generation's trunk, whose methods it wraps:

    class Rwkv7ForCausalLM(CausalLM, Rwkv7Model):
        head_name = HEAD                     # the head tensor's name, from the generation's names.py

The trunk's __init__(config, tensors, dtype, weights) sets self.embeddings and self.dtype; its
__call__(input_ids, state, use_cache, output_hidden_states, output_attentions, inputs_embeds,
attention_mask) returns a ModelOutput.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .linear import linear
from .nn import cross_entropy
from .storage import storage_of


@dataclass
class ModelOutput:
    """The trunk's output. state: the generation's state (its state.py, matrix_state.py's layout)."""
    last_hidden_state: np.ndarray            # (B, T, C) after the final norm (v5/v6 ln_out, v7 norm)
    state: list | None = None                # [att_x (B, L, C), ffn_x (B, L, C), wkv (B, L, H, N, N)]
    hidden_states: tuple | None = None       # L + 1 of (B, T, C): each layer's output, then the final norm's
    attentions: tuple | None = None          # L of (B, T, C): each layer's time-mix branch output
    feed_forward: tuple | None = None        # L of (B, T, C): each layer's channel-mix branch output


@dataclass
class CausalLMOutput:
    """The language model's output: ModelOutput's fields with the logits (and loss) in place of
    last_hidden_state."""
    loss: float | None = None                # mean next-token cross-entropy (nats), given labels
    logits: np.ndarray | None = None         # (B, T, V)
    state: list | None = None                # [att_x (B, L, C), ffn_x (B, L, C), wkv (B, L, H, N, N)]
    hidden_states: tuple | None = None       # L + 1 of (B, T, C): each layer's output, then the final norm's
    attentions: tuple | None = None          # L of (B, T, C): each layer's time-mix branch output
    feed_forward: tuple | None = None        # L of (B, T, C): each layer's channel-mix branch output


class CausalLM:
    """The trunk plus the head. Call it like HF's causal LMs: model(input_ids, state=...)."""

    with_head = True                         # from_pretrained reads the head tensor too
    head_name: str                           # the head tensor's name (the generation's names.HEAD)

    def __init__(self, config, tensors: dict, dtype="float32", weights: str | None = None):
        """As the trunk's; tensors also hold the head (head_name) unless tie_word_embeddings."""
        super().__init__(config, tensors, dtype, weights)
        self.head = self.embeddings if config.tie_word_embeddings and self.head_name not in tensors \
            else storage_of(self.dtype, weights, edge=True)(tensors[self.head_name])      # (V, C)

    def generate(self, input_ids, max_new_tokens: int = 20, **kwargs):  # input_ids (B, P) -> (B, P + N)
        """HF-style generate (greedy or sampled); see rwkv_np.generation.generate for the options."""
        from .generation import generate
        return generate(self, input_ids, max_new_tokens, **kwargs)

    def __call__(self, input_ids=None, state=None, use_cache=None, output_hidden_states=False,
                 output_attentions=False, labels=None, inputs_embeds=None, attention_mask=None,
                 logits_to_keep: int = 0) -> CausalLMOutput:  # input_ids (B, T) -> logits (B, T, V)
        """logits_to_keep > 0 computes the logits of the last that many positions only."""
        out = super().__call__(input_ids, state, use_cache, output_hidden_states, output_attentions,
                               inputs_embeds, attention_mask)
        x = out.last_hidden_state                                                           # (B, T, C)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        B, T, C = x.shape
        logits = linear(x.reshape(B * T, C), self.head).reshape(B, T, -1)
        return CausalLMOutput(
            loss=None if labels is None else cross_entropy(logits, labels), logits=logits,
            state=out.state, hidden_states=out.hidden_states, attentions=out.attentions,
            feed_forward=out.feed_forward)
