"""The registry of RWKV generations: which package computes a model, found from its config's
model_type or, for files without a config, from its tensor names.

Each supported generation is a package rwkv_np/vN/ with the same modules (see
docs/ADDING_A_GENERATION.md): config (the config class), names (tensor names, shapes and the
maps from foreign formats), reference, wkv, kernels, model, decode, state. Adding one is one
line in GENERATIONS. Generations listed with package None are recognised, so that a user gets
"this is an RWKV-6 file, which this version does not run" instead of a missing-tensor error.
"""
from __future__ import annotations

import importlib
from typing import NamedTuple

from .errors import ConfigError, ModelFileError


class Generation(NamedTuple):
    name: str                  # "v4": also the package's folder
    title: str                 # "RWKV-4", for messages
    model_type: str            # config.json's model_type (HF / fla layouts)
    signature: tuple           # tensor-name fragments (BlinkDL, HF or rwkv.cpp) only it has
    package: str | None        # None: known, not supported by this version

    def module(self, part: str):
        """One module of the generation's package: "config", "names", "model", "state"..."""
        return importlib.import_module(f"{self.package}.{part}")


# Most specific first: detection takes the first whose signature matches a tensor name.
GENERATIONS = (
    Generation("v7", "RWKV-7", "rwkv7", (".att.r_k", ".attn.r_k", ".att.x_rwkvag"), "rwkv_np.v7"),
    Generation("v6", "RWKV-6", "rwkv6", (".att.time_maa_x", ".attention.time_maa_x"), "rwkv_np.v6"),
    Generation("v5", "RWKV-5", "rwkv5", (".att.ln_x.", ".attention.ln_x."), "rwkv_np.v5"),
    Generation("v4", "RWKV-4", "rwkv", (".att.time_first", ".attention.time_first"), "rwkv_np.v4"),
)
SUPPORTED = ", ".join(f"{g.title} (model_type {g.model_type!r})" for g in GENERATIONS if g.package)


def _supported(generation: Generation, source: str, exc) -> Generation:
    if generation.package is None:
        raise exc(f"{source}: this is an {generation.title} model, which this version of rwkv_np "
                  f"does not run (it runs {SUPPORTED})")
    return generation


def by_model_type(model_type: str, source: str) -> Generation:
    """The generation whose config.json says `model_type`."""
    for g in GENERATIONS:
        if g.model_type == model_type:
            return _supported(g, source, ConfigError)
    raise ConfigError(f"{source}: model_type is {model_type!r}; rwkv_np reads {SUPPORTED}")


def detect(names, source: str) -> Generation:
    """The generation of a checkpoint from its tensor names."""
    names = [f".{n}" for n in names]
    for g in GENERATIONS:
        if any(fragment in n for n in names for fragment in g.signature):
            return _supported(g, source, ModelFileError)
    raise ModelFileError(f"{source}: no RWKV generation recognised from its tensor names "
                         f"(rwkv_np reads {SUPPORTED})")


def of_config(config) -> Generation:
    """The generation a config object belongs to."""
    return by_model_type(config.model_type, type(config).__name__)
