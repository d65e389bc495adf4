"""Save a recurrent state (after a prompt, a chat turn) to a safetensors file and load it back.

The state arrays are stored under their generation's names (model.state_names: RWKV-4's
ffn_x, att_x, num, den, max, each (B, H, L); RWKV-7's att_x, ffn_x (B, L, C) and wkv
(B, L, H, N, N)), in the model's dtype, batch first. The file's
metadata identifies the model the state belongs to (`model.identity()`):

    format             "rwkv_np.state/1"
    config             JSON of the fields that fix the state's meaning and shapes
    config_sha256      its hash
    weights_sha256     hash of some of the weights (RWKV-4: every layer's time_first, RWKV-7: every
                       layer's r_k, rounded to float16), so that another checkpoint of the same
                       shapes gives another hash

Loading into a model whose config or weights hash differs is a ModelFileError: a state is only
meaningful for the weights that produced it.
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from .errors import ModelFileError

FORMAT = "rwkv_np.state/1"


def model_identity(model) -> dict[str, str]:
    """The metadata that ties a state to `model` (a causal-LM model of any generation)."""
    config, weights = model.identity()
    config_json = json.dumps(config, sort_keys=True)
    return {"config": config_json, "config_sha256": hashlib.sha256(config_json.encode()).hexdigest(),
            "weights_sha256": hashlib.sha256(weights).hexdigest()}


def save_state(path: str | os.PathLike, state, model, metadata: dict[str, str] | None = None) -> None:
    """Write `state` (the arrays of model.state_names) of `model` to `path`; extra string metadata
    allowed. A file that cannot be written is a ModelFileError (nothing partial is left)."""
    from .formats.safetensors import write_safetensors

    names = model.state_names
    if not isinstance(state, (list, tuple)) or len(state) != len(names):
        raise ModelFileError(f"{path}: a state to save must be a list of {len(names)} arrays")
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta.update(model_identity(model), format=FORMAT)
    try:
        write_safetensors(os.fspath(path), {name: np.ascontiguousarray(s) for name, s in zip(names, state)}, meta)
    except OSError as e:
        raise ModelFileError(f"{os.fspath(path)}: cannot write the state ({e.strerror or e})") from None


def read_state(path: str | os.PathLike, names) -> tuple[list[np.ndarray], dict[str, str]]:
    """The state arrays `names` and the metadata of a state file, unchecked."""
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
            missing = [n for n in names if n not in f.keys()]
            if missing:
                raise ModelFileError(f"{path}: state file lacks {', '.join(missing)}")
            state = [f.get_tensor(n) for n in names]
    except (SafetensorError, OSError, ValueError) as e:
        if isinstance(e, ModelFileError):
            raise
        raise ModelFileError(f"{path}: not a readable safetensors state file ({e})") from None
    return state, meta


def load_state(path: str | os.PathLike, model) -> list[np.ndarray]:
    """The state saved in `path`, checked to belong to `model` and cast to its dtype."""
    state, meta = read_state(path, model.state_names)
    mine = model_identity(model)
    if meta.get("config_sha256") != mine["config_sha256"]:
        theirs = json.loads(meta.get("config", "{}"))
        diff = [f"{k} {theirs.get(k)!r} in the file, {v!r} in the model"
                for k, v in json.loads(mine["config"]).items() if theirs.get(k) != v]
        raise ModelFileError(f"{path}: state was saved for a different model ({'; '.join(diff[:3]) or 'config differs'})")
    if meta.get("weights_sha256") not in (None, mine["weights_sha256"]):
        raise ModelFileError(f"{path}: state was saved for a model with the same shapes but other weights")
    try:
        return model.check_state(state, state[0].shape[0] if state[0].ndim else 0)
    except ValueError as e:
        raise ModelFileError(f"{path}: {e}") from None
