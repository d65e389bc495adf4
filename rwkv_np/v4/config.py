"""RwkvConfig: the hyper-parameters of an RWKV-4 model, with Hugging Face's field names and defaults.

A config.json written by HF transformers (model_type "rwkv") loads here unchanged; keys HF writes
that rwkv_np does not need (architectures, torch_dtype, transformers_version...) are tolerated and
kept in `extra` so that `to_dict()` writes them back.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..config_file import ConfigFile


@dataclass
class RwkvConfig(ConfigFile):
    model_type: ClassVar[str] = "rwkv"   # config.json's model_type, the registry's key
    architecture: ClassVar[str] = "RwkvForCausalLM"
    vocab_size: int = 50277              # GPT-NeoX-20B tokenizer of the Pile models
    context_length: int = 1024           # a limit of HF's CUDA kernel only; the RNN has none
    hidden_size: int = 4096              # H: width of the residual stream
    num_hidden_layers: int = 32          # L
    attention_hidden_size: int | None = None  # A: width of k, v, r and the WKV state; None -> H
    intermediate_size: int | None = None      # I: width of the channel-mix hidden layer; None -> 4H
    layer_norm_epsilon: float = 1e-5    # eps of every LayerNorm except ln_out (always 1e-5 in HF)
    bos_token_id: int = 0
    eos_token_id: int = 0
    rescale_every: int = 6               # halve x every N blocks at inference (<= 0 disables)
    tie_word_embeddings: bool = False    # True: head.weight is embeddings.weight
    use_cache: bool = True               # return the recurrent state by default
    extra: dict = field(default_factory=dict, repr=False)  # unknown keys, written back as they came

    def __post_init__(self):
        if self.attention_hidden_size is None:
            self.attention_hidden_size = self.hidden_size
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        self.check_keys(positive=("vocab_size", "context_length", "hidden_size", "num_hidden_layers",
                                  "attention_hidden_size", "intermediate_size"),
                        epsilons=("layer_norm_epsilon",),
                        integers=("bos_token_id", "eos_token_id", "rescale_every"))
