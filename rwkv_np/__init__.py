"""rwkv_np: a CPU-only RWKV engine on NumPy and Numba: RWKV-4 faithful to Hugging Face
transformers, later generations to BlinkDL's reference code and rwkv.cpp."""
__version__ = "0.2.0"

import importlib as _importlib
import os as _os

# Before libgomp loads (at Numba's first parallel call): threads.py says why.
_os.environ.setdefault("GOMP_SPINCOUNT", "1000")

from .errors import ConfigError, InputError, ModelFileError, RwkvError  # noqa: E402

# The small byte-level model trained on tinyshakespeare that ships inside the package.
DEMO_MODEL = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "assets", "tiny-shakespeare")

# The rest is imported on first use (PEP 562): `import rwkv_np.cli` then costs no numba import,
# so the command line answers --help at once and a Ctrl-C while numba loads ends it quietly.
_LAZY = {
    "set_threads": "threads",
    "GenerateOutput": "generation", "TextStream": "generation", "generate": "generation",
    "load_state": "state_file", "save_state": "state_file",
    "ByteTokenizer": "tokenizer", "StreamDecoder": "tokenizer", "Tokenizer": "tokenizer",
    "WorldTokenizer": "tokenizer",
    "RwkvConfig": "v4.config",
    "RwkvCausalLMOutput": "v4.model", "RwkvForCausalLM": "v4.model", "RwkvModel": "v4.model",
    "RwkvOutput": "v4.model",
    "Rwkv5Config": "v5.config", "Rwkv5ForCausalLM": "v5.model", "Rwkv5Model": "v5.model",
    "Rwkv6Config": "v6.config", "Rwkv6ForCausalLM": "v6.model", "Rwkv6Model": "v6.model",
    "Rwkv7Config": "v7.config", "Rwkv7ForCausalLM": "v7.model", "Rwkv7Model": "v7.model",
}
__all__ = ["ConfigError", "DEMO_MODEL", "InputError", "ModelFileError", "RwkvError"] + list(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'rwkv_np' has no attribute {name!r}")
    _importlib.import_module(".threads", __name__)  # first: it sets the OpenMP threads' spin
    value = getattr(_importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
