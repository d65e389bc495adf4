"""The recurrent state: HF's public layout, a list of five arrays, each (B, H, L).

    state[FFN_X]  (B, H, L)  last token's ln2 output, per layer (token shift of feed_forward)
    state[ATT_X]  (B, H, L)  last token's ln1 output, per layer (token shift of attention)
    state[NUM]    (B, A, L)  WKV numerator a    } the true numerator is a * e^p and the
    state[DEN]    (B, A, L)  WKV denominator b  } true denominator b * e^p (see wkv.py)
    state[MAX]    (B, A, L)  WKV exponent p: -1e38 before the first token

(A = attention_hidden_size, which HF requires to equal H.) In a float32 model the state is
float32 throughout, like HF's; in a float64 model float64.

The other engines' layouts of one sequence's state (L layers, H channels), converted below:
    rwkv pip   list of 5*L arrays (H,), per layer [att_x, num, den, max, ffn_x] (BlinkDL's `rwkv`
               package, RWKV-4; its names for num/den/max are aa/bb/pp)
    rwkv.cpp   one float32 array (5*L*H,), per layer [ffn_x, att_x, num, den, max]
The values mean the same in all three (num and den scaled by e^-max, max = -1e38 or -1e30 for
"no token yet"), so conversion is a pure re-arrangement and round-trips exactly.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from .config import RwkvConfig
from .wkv import EMPTY_MAX

FFN_X, ATT_X, NUM, DEN, MAX = range(5)
NAMES = ("ffn_x", "att_x", "num", "den", "max")
PIP_ORDER = (ATT_X, NUM, DEN, MAX, FFN_X)     # rwkv pip: state[5*i + j] is HF's PIP_ORDER[j]
RWKVCPP_ORDER = (FFN_X, ATT_X, NUM, DEN, MAX)  # rwkv.cpp: the same order as HF's list


def empty_state(config: RwkvConfig, batch: int, dtype=np.float32) -> list[np.ndarray]:
    """The state before any token (what HF builds when `state=None` and use_cache is on)."""
    H, A, L = config.hidden_size, config.attention_hidden_size, config.num_hidden_layers
    state = [np.zeros((batch, H if i <= ATT_X else A, L), dtype) for i in range(5)]
    state[MAX][:] = EMPTY_MAX
    return state


def check_state(state, config: RwkvConfig, batch: int, dtype=np.float32) -> list[np.ndarray]:
    """Validate a state passed by a caller; return it as a new list of arrays in `dtype`, which
    the forward pass then updates in place (the caller's arrays are never modified)."""
    if not isinstance(state, (list, tuple)) or len(state) != 5:
        got = f"{len(state)} items" if isinstance(state, (list, tuple)) else type(state).__name__
        raise InputError(f"state: expected a list of 5 arrays [ffn_x, att_x, num, den, max], got {got}")
    H, A, L = config.hidden_size, config.attention_hidden_size, config.num_hidden_layers
    out = []
    for i, s in enumerate(state):
        try:
            s = np.asarray(s)
        except (ValueError, TypeError) as e:  # ragged nested lists...
            raise InputError(f"state[{i}] ({NAMES[i]}): not an array ({e})") from None
        want = (batch, H if i <= ATT_X else A, L)
        if s.shape != want:
            raise InputError(f"state[{i}] ({NAMES[i]}): expected shape {want} (batch, channels, layers), "
                             f"got {s.shape}")
        if not np.issubdtype(s.dtype, np.floating):
            raise InputError(f"state[{i}] ({NAMES[i]}): expected floating-point values, got {s.dtype}")
        out.append(np.array(s, dtype))
    return out


def _check_hf(state, index: int):
    if not isinstance(state, (list, tuple)) or len(state) != 5:
        raise InputError("state: expected HF's list of 5 arrays [ffn_x, att_x, num, den, max]")
    state = [np.asarray(s) for s in state]
    if any(s.ndim != 3 or s.shape != state[0].shape for s in state):
        raise InputError(f"state: expected 5 arrays of one shape (B, H, L), got {[s.shape for s in state]}")
    if not 0 <= index < state[0].shape[0]:
        raise InputError(f"index: {index} is outside the batch of {state[0].shape[0]}")
    return state


def to_rwkv_pip(state, index: int = 0) -> list[np.ndarray]:  # 5 x (B, H, L) -> 5L x (H,)
    """Sequence `index` of an HF state as BlinkDL's `rwkv` package holds it (wrap each array in
    torch.from_numpy to pass it to rwkv.model.RWKV.forward)."""
    state = _check_hf(state, index)
    L = state[0].shape[2]
    return [np.array(state[j][index, :, i]) for i in range(L) for j in PIP_ORDER]


def from_rwkv_pip(tensors) -> list[np.ndarray]:  # 5L x (H,) -> 5 x (1, H, L)
    """A BlinkDL `rwkv` package state (torch tensors or arrays) -> HF's list of five (1, H, L)."""
    arrays = [np.asarray(t.detach().cpu().numpy() if hasattr(t, "detach") else t) for t in tensors]
    if not arrays or len(arrays) % 5 or any(a.shape != arrays[0].shape or a.ndim != 1 for a in arrays):
        raise InputError(f"rwkv pip state: expected 5*L arrays of one shape (H,), got {len(arrays)} "
                         f"of shapes {sorted({a.shape for a in arrays})}")
    L = len(arrays) // 5
    state = [None] * 5
    for j, hf in enumerate(PIP_ORDER):
        state[hf] = np.stack([arrays[5 * i + j] for i in range(L)], axis=-1)[None]
    return state


def to_rwkvcpp(state, index: int = 0) -> np.ndarray:  # 5 x (B, H, L) -> (5*L*H,) float32
    """Sequence `index` of an HF state as rwkv.cpp's flat float32 state buffer."""
    state = _check_hf(state, index)
    per_layer = np.stack([state[j][index] for j in RWKVCPP_ORDER])  # (5, H, L)
    return np.ascontiguousarray(per_layer.transpose(2, 0, 1), dtype=np.float32).reshape(-1)


def from_rwkvcpp(flat, n_layer: int) -> list[np.ndarray]:  # (5*L*H,) -> 5 x (1, H, L)
    """rwkv.cpp's flat state buffer (or a file of it, read with np.fromfile) -> HF's list."""
    flat = np.asarray(flat).reshape(-1)
    if n_layer < 1 or flat.size % (5 * n_layer):
        raise InputError(f"rwkv.cpp state: {flat.size} values is not 5 x {n_layer} layers x H")
    per_layer = flat.reshape(n_layer, 5, -1)                         # (L, 5, H)
    state = [None] * 5
    for j, hf in enumerate(RWKVCPP_ORDER):
        state[hf] = np.ascontiguousarray(per_layer[:, j].T)[None]    # (1, H, L)
    return state
