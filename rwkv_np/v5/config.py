"""Rwkv5Config: the hyper-parameters of an RWKV-5 ("Eagle") model, with the field names of the
HF rwkv5 config.json (model_type "rwkv5", Rwkv5ForCausalLM of the RWKV/rwkv-5-world repositories).

Keys rwkv_np does not need (architectures, torch_dtype, rescale_every, context_length...) are kept
in `extra` and written back by `to_dict()`. HF's `num_attention_heads` is one of them: released
configs hold values that do not match the weights, so the head count is attention_hidden_size //
head_size, as in the tensor shapes.

Symbols used across rwkv_np.v5: C hidden_size, L num_hidden_layers, H heads, N head_size
(H N = C), F intermediate_size, V vocab_size.

Three layouts of RWKV-5 exist (RWKV567_SPEC.md section 2.1); `variant` says which:

    variant  gate  time_decay  bonus u                     who
    "5.2"    yes   (H, N)      time_faaaa (H, N), raw      every released Eagle / World model
    "5.1"    yes   (H,)        exp(time_first) (H,)        old checkpoints (ChatRWKV's "5.1")
    "5.0"    no    (H,)        exp(time_first) (H,)        old checkpoints; rwkv.cpp's 5v1 test file

The group-norm epsilon (`group_norm_eps`, the ln_x after the WKV) is where sources disagree
(spec section 2.5): BlinkDL trains GroupNorm(eps 1e-5) on y / head_size_divisor (8), which is
GroupNorm(eps 64e-5) on y, and ChatRWKV / the `rwkv` package run 64e-5; rwkv.cpp runs 1e-5 on y,
and its expected logits are reproduced only with 1e-5. The default per source:

    BlinkDL .pth, HF directory without the key    64e-5  (the dataclass default)
    HF config.json with head_size_divisor d         1e-5 * d**2 (HF rwkv6's rule)
    rwkv.cpp .bin (names.from_rwkvcpp)              1e-5
    a config.json saying group_norm_eps             that value (convert writes it, so a converted
                                                    rwkv.cpp file keeps 1e-5; golden bundles record it)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..config_file import ConfigFile
from ..errors import ConfigError

MODEL_TYPE = "rwkv5"
ARCHITECTURE = "Rwkv5ForCausalLM"
VARIANTS = ("5.0", "5.1", "5.2")
BLINKDL_GROUP_NORM_EPS = 64e-5   # GroupNorm(1e-5) of y / 8, the form BlinkDL trains
RWKVCPP_GROUP_NORM_EPS = 1e-5    # rwkv.cpp rwkv_att_v5: ggml_norm(y, 1e-5) per head


@dataclass
class Rwkv5Config(ConfigFile):
    model_type: ClassVar[str] = MODEL_TYPE  # config.json's model_type, the registry's key
    architecture: ClassVar[str] = ARCHITECTURE
    vocab_size: int = 65536                 # V: the RWKV World tokenizer of the Eagle models
    hidden_size: int = 768                  # C: width of the residual stream (HF's default)
    num_hidden_layers: int = 24             # L
    attention_hidden_size: int | None = None  # width of r, k, v, g; None -> C (rwkv_np needs = C)
    head_size: int = 64                     # N: every released Eagle model; rwkv.cpp's tiny ones 8
    intermediate_size: int | None = None    # F; None -> int(3.5 C) rounded down to 32, as HF rwkv5
    layer_norm_epsilon: float = 1e-5        # eps of ln0 (pre_ln), ln1, ln2, ln_out
    group_norm_eps: float = BLINKDL_GROUP_NORM_EPS  # eps of ln_x per head; see the module docstring
    variant: str = "5.2"                    # "5.2", "5.1" or "5.0" (the table above)
    bos_token_id: int = 0                   # RWKV tokenizers: token 0 separates documents
    eos_token_id: int = 0
    tie_word_embeddings: bool = False       # True: head.weight is rwkv.embeddings.weight
    use_cache: bool = True                  # return the recurrent state by default
    extra: dict = field(default_factory=dict, repr=False)  # unknown keys, written back as they came

    def __post_init__(self):
        if self.attention_hidden_size is None:
            self.attention_hidden_size = self.hidden_size
        if self.intermediate_size is None and isinstance(self.hidden_size, int):
            self.intermediate_size = int(self.hidden_size * 3.5) // 32 * 32
        self.check_keys(positive=("vocab_size", "hidden_size", "num_hidden_layers", "attention_hidden_size",
                                  "head_size", "intermediate_size"),
                        epsilons=("layer_norm_epsilon", "group_norm_eps"))
        if self.attention_hidden_size != self.hidden_size:
            raise ConfigError(f"config: attention_hidden_size {self.attention_hidden_size} differs from "
                              f"hidden_size {self.hidden_size}; rwkv_np runs RWKV-5 models where they are equal")
        if self.hidden_size % self.head_size:
            raise ConfigError(f"config: hidden_size {self.hidden_size} is not a multiple of head_size "
                              f"{self.head_size}")
        if self.variant not in VARIANTS:
            raise ConfigError(f"config: variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")

    @property
    def num_heads(self) -> int:  # H
        return self.hidden_size // self.head_size

    @property
    def gated(self) -> bool:     # 5.1 and 5.2 multiply the WKV output by silu(gate(x))
        return self.variant != "5.0"

    @classmethod
    def from_dict(cls, d: dict) -> Rwkv5Config:
        fields, extra = cls.split_keys(d)
        return cls(**with_divisor_eps(d, fields), extra=extra)


def with_divisor_eps(d: dict, fields: dict) -> dict:
    """fields, plus group_norm_eps = 1e-5 * q**2 when the config.json `d` gives head_size_divisor q
    and no group_norm_eps (HF rwkv5/rwkv6's rule: GroupNorm(1e-5) of y / q)."""
    divisor = d.get("head_size_divisor")
    if "group_norm_eps" not in d and isinstance(divisor, (int, float)) and not isinstance(divisor, bool) \
            and divisor > 0:
        return dict(fields, group_norm_eps=1e-5 * divisor ** 2)
    return fields
