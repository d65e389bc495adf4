"""Rwkv7Config: the hyper-parameters of an RWKV-7 model, with flash-linear-attention's field names.

A config.json written by fla (model_type "rwkv7", RWKV7ForCausalLM) loads here; keys rwkv_np does
not need (attn_mode, fuse_norm, initializer_range...) are kept in `extra` and written back by
`to_dict()`. fla keys that would change what the model computes (a hybrid `attn`, another
hidden_act, norm_bias false...) are refused with one line saying which, not silently ignored.

Symbols used across rwkv_np.v7: C hidden_size, L num_hidden_layers, H num_heads, N head_dim
(C = H N), F intermediate_size, D_w / D_a / D_v / D_g the LoRA ranks, V vocab_size.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..config_file import ConfigFile
from ..errors import ConfigError

MODEL_TYPE = "rwkv7"
ARCHITECTURE = "RWKV7ForCausalLM"

# fla config keys whose other values describe a model rwkv_np does not compute: key -> allowed values.
_FLA_FIXED = {"hidden_act": ("sqrelu",), "norm_bias": (True,), "norm_first": (True,)}


@dataclass
class Rwkv7Config(ConfigFile):
    model_type: ClassVar[str] = MODEL_TYPE  # config.json's model_type, the generations registry's key
    architecture: ClassVar[str] = ARCHITECTURE
    vocab_size: int = 65536                 # V: the RWKV World tokenizer of the released Goose models
    hidden_size: int = 2048                 # C: width of the residual stream (fla's default)
    num_hidden_layers: int = 24             # L
    head_dim: int | None = 64               # N; None -> hidden_size // num_heads. Released models: 64
    num_heads: int | None = None            # H; None -> hidden_size // head_dim
    intermediate_size: int | None = None    # F; None -> 4C rounded up to a multiple of 32, as fla
    decay_low_rank_dim: int = 64            # D_w: rank of the decay LoRA (w_lora)
    a_low_rank_dim: int = 64                # D_a: rank of the in-context learning rate LoRA (a_lora)
    v_low_rank_dim: int = 16                # D_v: rank of the value-residual LoRA (v_lora, layers >= 1)
    gate_low_rank_dim: int = 128            # D_g: rank of the output gate LoRA (g_lora)
    norm_eps: float = 1e-5                  # eps of every LayerNorm (pre_norm, attn/ffn_norm, norm)
    # eps of the per-head GroupNorm on the WKV output (attn.g_norm, BlinkDL's ln_x). BlinkDL trains
    # GroupNorm(eps 1e-5) on y / 8, the same as eps 64e-5 on y, for every head size; rwkv.cpp and
    # ChatRWKV use 64e-5. fla uses head_dim * norm_eps, equal only when head_dim is 64.
    group_norm_eps: float = 64e-5
    bos_token_id: int = 0                   # RWKV tokenizers: token 0 separates documents
    eos_token_id: int = 0
    tie_word_embeddings: bool = False       # True: lm_head.weight is model.embeddings.weight
    use_cache: bool = True                  # return the recurrent state by default
    extra: dict = field(default_factory=dict, repr=False)  # unknown keys, written back as they came

    def __post_init__(self):
        positive = lambda *names: self.check_keys(positive=names, integers=(), flags=())  # noqa: E731
        positive("vocab_size", "hidden_size", "num_hidden_layers")
        if self.head_dim is None and self.num_heads is None:
            raise ConfigError("config: give head_dim or num_heads (hidden_size = num_heads * head_dim)")
        if self.head_dim is None:
            positive("num_heads")
            self.head_dim = self.hidden_size // self.num_heads
        if self.num_heads is None:
            positive("head_dim")
            self.num_heads = self.hidden_size // self.head_dim
        if self.intermediate_size is None:
            self.intermediate_size = 32 * -(-4 * self.hidden_size // 32)
        self.check_keys(positive=("head_dim", "num_heads", "intermediate_size", "decay_low_rank_dim",
                                  "a_low_rank_dim", "v_low_rank_dim", "gate_low_rank_dim"),
                        epsilons=("norm_eps", "group_norm_eps"))
        if self.num_heads * self.head_dim != self.hidden_size:
            raise ConfigError(f"config: num_heads * head_dim = {self.num_heads} * {self.head_dim} "
                              f"is not hidden_size {self.hidden_size}")

    @classmethod
    def from_dict(cls, d: dict) -> "Rwkv7Config":
        fields, extra = cls.split_keys(d)
        if d.get("attn") is not None:
            raise ConfigError("config: 'attn' describes hybrid softmax-attention layers; rwkv_np runs "
                              "pure RWKV-7 models only (attn must be null)")
        for key, allowed in _FLA_FIXED.items():
            if key in d and d[key] not in allowed:
                raise ConfigError(f"config: {key} = {d[key]!r} is not computed by rwkv_np "
                                  f"(it runs {key} = {allowed[0]!r})")
        ratio, C = d.get("hidden_ratio"), d.get("hidden_size", cls.hidden_size)
        if fields.get("intermediate_size") is None and isinstance(ratio, (int, float)) and isinstance(C, int):
            fields["intermediate_size"] = 32 * -(-int(C * ratio) // 32)  # fla's rounding
        config = cls(**fields, extra=extra)
        value_dim = d.get("value_dim")
        if value_dim is not None and any(v != C for v in (value_dim if isinstance(value_dim, list) else [value_dim])):
            raise ConfigError(f"config: value_dim {value_dim!r} differs from hidden_size {C}; rwkv_np "
                              "runs models whose values are as wide as the keys")
        return config
