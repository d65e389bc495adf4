"""RwkvConfig: the hyper-parameters of an RWKV-4 model, with Hugging Face's field names and defaults.

A config.json written by HF transformers (model_type "rwkv") loads here unchanged; keys HF writes
that rwkv_np does not need (architectures, torch_dtype, transformers_version...) are tolerated and
kept in `extra` so that `to_dict()` writes them back.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import ClassVar

from ..errors import ConfigError


@dataclass
class RwkvConfig:
    model_type: ClassVar[str] = "rwkv"   # config.json's model_type, the registry's key
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
        for name in ("vocab_size", "context_length", "hidden_size", "num_hidden_layers",
                     "attention_hidden_size", "intermediate_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"config: {name} must be a positive integer, got {value!r}")
        for name in ("bos_token_id", "eos_token_id", "rescale_every"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"config: {name} must be an integer, got {value!r}")
        eps = self.layer_norm_epsilon
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
            raise ConfigError(f"config: layer_norm_epsilon must be a number in (0, 1), got {eps!r}")
        self.layer_norm_epsilon = float(eps)
        for name in ("tie_word_embeddings", "use_cache"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"config: {name} must be true or false, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "RwkvConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"config: expected a JSON object, got {type(d).__name__}")
        if d.get("model_type", "rwkv") != "rwkv":
            raise ConfigError(f"config: model_type is {d['model_type']!r}, an RWKV-4 config says 'rwkv'")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in d.items() if k in known}
        extra = {k: v for k, v in d.items() if k not in known and k != "model_type"}
        return cls(**kwargs, extra=extra)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "RwkvConfig":
        """Read `config.json` from a model directory (or the file itself)."""
        path = os.fspath(path)
        file = os.path.join(path, "config.json") if os.path.isdir(path) else path
        try:
            with open(file, encoding="utf-8") as f:
                d = json.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{file}: not found (a model directory needs config.json)") from None
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise ConfigError(f"{file}: not valid JSON ({e})") from None
        except OSError as e:  # a directory, no permission...
            raise ConfigError(f"{file}: cannot read ({e.strerror})") from None
        try:
            return cls.from_dict(d)
        except ConfigError as e:
            raise ConfigError(f"{file}: {e}") from None
        except TypeError as e:  # wrong key types reaching the dataclass
            raise ConfigError(f"{file}: {e}") from None

    def to_dict(self) -> dict:
        d = dict(self.extra)
        d.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"})
        d["model_type"] = "rwkv"
        d.setdefault("architectures", ["RwkvForCausalLM"])
        return d

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")
