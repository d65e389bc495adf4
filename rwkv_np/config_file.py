"""ConfigFile: what every generation's config class shares -- config.json in and out.

Each generation's config (v4/config.py ... v7/config.py) is a dataclass with HF's (or fla's) field
names that inherits this. Keys a class does not know (architectures, torch_dtype, keys of other
engines...) are kept in its `extra` field and written back by `to_dict()`, so a config.json
survives a load and a save. Every failure is one ConfigError line naming the file and the key.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import ClassVar

from .errors import ConfigError


class ConfigFile:
    model_type: ClassVar[str]      # config.json's model_type, the generations registry's key
    architecture: ClassVar[str]    # written to "architectures" when the file has none

    @classmethod
    def split_keys(cls, d) -> tuple[dict, dict]:  # a config.json's object -> (fields, extra)
        """The keys that are fields of cls and the rest (but model_type); refuses a value that is
        not a JSON object and another generation's model_type."""
        if not isinstance(d, dict):
            raise ConfigError(f"config: expected a JSON object, got {type(d).__name__}")
        if d.get("model_type", cls.model_type) != cls.model_type:
            raise ConfigError(f"config: model_type is {d['model_type']!r}, {cls.__name__} "
                              f"reads {cls.model_type!r}")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return ({k: v for k, v in d.items() if k in known},
                {k: v for k, v in d.items() if k not in known and k != "model_type"})

    @classmethod
    def from_dict(cls, d: dict):
        fields, extra = cls.split_keys(d)
        return cls(**fields, extra=extra)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike):
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
        except (ConfigError, TypeError) as e:  # TypeError: wrong key types reaching the dataclass
            raise ConfigError(f"{file}: {e}") from None

    def to_dict(self) -> dict:
        d = dict(self.extra)
        d.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"})
        d["model_type"] = self.model_type
        d.setdefault("architectures", [self.architecture])
        return d

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")

    def check_keys(self, positive=(), epsilons=(), integers=("bos_token_id", "eos_token_id"),
                   flags=("tie_word_embeddings", "use_cache")) -> None:
        """The checks of __post_init__ that every generation makes, each failure one line:
        positive integers, epsilons in (0, 1) (stored as float), integers or None, booleans."""
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"config: {name} must be a positive integer, got {value!r}")
        for name in epsilons:
            eps = getattr(self, name)
            if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
                raise ConfigError(f"config: {name} must be a number in (0, 1), got {eps!r}")
            setattr(self, name, float(eps))
        for name in integers:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"config: {name} must be an integer, got {value!r}")
        for name in flags:
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"config: {name} must be true or false, got {getattr(self, name)!r}")
