"""Rwkv6Config: the hyper-parameters of an RWKV-6 ("Finch") model, with the field names of the HF
rwkv6 config.json (model_type "rwkv6", Rwkv6ForCausalLM of the RWKV/v6-Finch-*-HF repositories).

Keys rwkv_np does not need (architectures, torch_dtype, rescale_every, head_size_divisor...) are
kept in `extra` and written back by `to_dict()`.

Symbols used across rwkv_np.v6: C hidden_size, L num_hidden_layers, H heads, N head_size
(H N = C), F intermediate_size, D_mix time_mix_extra_dim (rank of the token-shift LoRA, 5 of
them, rows w, k, v, r, g), D_decay time_decay_extra_dim (rank of the decay LoRA), V vocab_size.
HF's config has no key for the two ranks (its modeling code fixes 32 and 64, or 64 and 128 when
C is 4096, as RWKV-LM's RWKV_Tmix_x060); rwkv_np reads them from the tensor shapes and writes them.

The group-norm epsilon of ln_x: every source agrees for RWKV-6 (spec 3.3): RWKV-LM trains
GroupNorm(1e-5) on y / 8 = GroupNorm(64e-5) on y, ChatRWKV and rwkv.cpp's rwkv_att_v6 run 64e-5,
HF rwkv6 1e-5 * head_size_divisor**2 (64e-5 for its divisor 8). A config.json with
head_size_divisor d and no group_norm_eps gets 1e-5 * d**2.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..config_file import ConfigFile
from ..errors import ConfigError
from ..v5.config import with_divisor_eps

MODEL_TYPE = "rwkv6"
ARCHITECTURE = "Rwkv6ForCausalLM"


@dataclass
class Rwkv6Config(ConfigFile):
    model_type: ClassVar[str] = MODEL_TYPE  # config.json's model_type, the registry's key
    architecture: ClassVar[str] = ARCHITECTURE
    vocab_size: int = 65536                 # V: the RWKV World tokenizer of the Finch models
    hidden_size: int = 768                  # C
    num_hidden_layers: int = 24             # L
    attention_hidden_size: int | None = None  # width of r, k, v, g; None -> C (rwkv_np needs = C)
    head_size: int = 64                     # N: every released Finch model; rwkv.cpp's tiny one 8
    intermediate_size: int | None = None    # F; None -> int(3.5 C) rounded down to 32, as HF rwkv6
    time_mix_extra_dim: int | None = None   # D_mix; None -> 32 (64 when C = 4096), RWKV-LM's choice
    time_decay_extra_dim: int | None = None  # D_decay; None -> 64 (128 when C = 4096)
    layer_norm_epsilon: float = 1e-5        # eps of ln0 (pre_ln), ln1, ln2, ln_out
    group_norm_eps: float = 64e-5           # eps of ln_x per head (see the module docstring)
    bos_token_id: int = 0                   # RWKV tokenizers: token 0 separates documents
    eos_token_id: int = 0
    tie_word_embeddings: bool = False       # True: head.weight is rwkv.embeddings.weight
    use_cache: bool = True                  # return the recurrent state by default
    extra: dict = field(default_factory=dict, repr=False)  # unknown keys, written back as they came

    def __post_init__(self):
        if self.attention_hidden_size is None:
            self.attention_hidden_size = self.hidden_size
        wide = self.hidden_size == 4096
        if self.intermediate_size is None and isinstance(self.hidden_size, int):
            self.intermediate_size = int(self.hidden_size * 3.5) // 32 * 32
        if self.time_mix_extra_dim is None:
            self.time_mix_extra_dim = 64 if wide else 32
        if self.time_decay_extra_dim is None:
            self.time_decay_extra_dim = 128 if wide else 64
        self.check_keys(positive=("vocab_size", "hidden_size", "num_hidden_layers", "attention_hidden_size",
                                  "head_size", "intermediate_size", "time_mix_extra_dim", "time_decay_extra_dim"),
                        epsilons=("layer_norm_epsilon", "group_norm_eps"))
        if self.attention_hidden_size != self.hidden_size:
            raise ConfigError(f"config: attention_hidden_size {self.attention_hidden_size} differs from "
                              f"hidden_size {self.hidden_size}; rwkv_np runs RWKV-6 models where they are equal")
        if self.hidden_size % self.head_size:
            raise ConfigError(f"config: hidden_size {self.hidden_size} is not a multiple of head_size "
                              f"{self.head_size}")

    @property
    def num_heads(self) -> int:  # H
        return self.hidden_size // self.head_size

    @classmethod
    def from_dict(cls, d: dict) -> Rwkv6Config:
        fields, extra = cls.split_keys(d)
        return cls(**with_divisor_eps(d, fields), extra=extra)
