"""Save a recurrent state (after a prompt, a chat turn) to a safetensors file and load it back.

The five state arrays are stored under HF's names (state.py: ffn_x, att_x, num, den, max), each
(B, H, L), in the model's dtype. The file's metadata identifies the model the state belongs to:

    format             "rwkv_np.state/1"
    config             JSON of the fields that fix the state's meaning and shapes
    config_sha256      its hash
    weights_sha256     hash of every layer's time_first rounded to float16 (weights that differ
                       but have the same shapes -- another checkpoint -- give another hash)

Loading into a model whose config or weights hash differs is a ModelFileError: a state is only
meaningful for the weights that produced it.
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from .errors import ModelFileError
from .state import NAMES

FORMAT = "rwkv_np.state/1"
_CONFIG_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "attention_hidden_size",
                  "intermediate_size", "layer_norm_epsilon", "rescale_every")


def model_identity(model) -> dict[str, str]:
    """The metadata that ties a state to `model` (an RwkvForCausalLM)."""
    config = {f: getattr(model.config, f) for f in _CONFIG_FIELDS}
    config_json = json.dumps(config, sort_keys=True)
    identity = {"config": config_json,
                "config_sha256": hashlib.sha256(config_json.encode()).hexdigest()}
    blocks = getattr(getattr(model, "rwkv", None), "blocks", None)
    if blocks:
        digest = hashlib.sha256()
        for blk in blocks:
            digest.update(np.ascontiguousarray(blk.time_first, dtype="<f2").tobytes())
        identity["weights_sha256"] = digest.hexdigest()
    return identity


def save_state(path: str | os.PathLike, state, model, metadata: dict[str, str] | None = None) -> None:
    """Write `state` (five (B, H, L) arrays) of `model` to `path`; extra string metadata allowed."""
    from safetensors.numpy import save_file

    if not isinstance(state, (list, tuple)) or len(state) != 5:
        raise ModelFileError(f"{path}: a state to save must be a list of 5 arrays")
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta.update(model_identity(model), format=FORMAT)
    save_file({name: np.ascontiguousarray(s) for name, s in zip(NAMES, state)}, os.fspath(path), metadata=meta)


def read_state(path: str | os.PathLike) -> tuple[list[np.ndarray], dict[str, str]]:
    """The state arrays and metadata of a state file, unchecked."""
    from safetensors import SafetensorError, safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"{path}: no such state file")
    try:
        with safe_open(path, framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ModelFileError(f"{path}: not an rwkv_np state file (format {meta.get('format')!r},"
                                     f" expected {FORMAT!r})")
            missing = [n for n in NAMES if n not in f.keys()]
            if missing:
                raise ModelFileError(f"{path}: state file lacks {', '.join(missing)}")
            state = [f.get_tensor(n) for n in NAMES]
    except (SafetensorError, OSError, ValueError) as e:
        if isinstance(e, ModelFileError):
            raise
        raise ModelFileError(f"{path}: not a readable safetensors state file ({e})") from None
    return state, meta


def load_state(path: str | os.PathLike, model) -> list[np.ndarray]:
    """The state saved in `path`, checked to belong to `model` and cast to its dtype."""
    state, meta = read_state(path)
    mine = model_identity(model)
    if meta.get("config_sha256") != mine["config_sha256"]:
        theirs = json.loads(meta.get("config", "{}"))
        diff = [f"{k} {theirs.get(k)!r} in the file, {v!r} in the model"
                for k, v in json.loads(mine["config"]).items() if theirs.get(k) != v]
        raise ModelFileError(f"{path}: state was saved for a different model ({'; '.join(diff[:3]) or 'config differs'})")
    if "weights_sha256" in mine and meta.get("weights_sha256") not in (None, mine["weights_sha256"]):
        raise ModelFileError(f"{path}: state was saved for a model with the same shapes but other weights")
    dtype = getattr(getattr(model, "rwkv", None), "dtype", np.float32)
    batch = state[0].shape[0] if state[0].ndim == 3 else None
    for name, s in zip(NAMES, state):
        if s.ndim != 3 or s.shape[0] != batch or s.shape[2] != model.config.num_hidden_layers:
            raise ModelFileError(f"{path}: state array {name} has shape {s.shape}, not (B, H, L)")
    return [s.astype(dtype, copy=False) for s in state]
