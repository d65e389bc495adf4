"""The recurrent state of RWKV-5, 6 and 7: two token shifts and one N x N matrix per head and layer.

    state[ATT_X]  (B, L, C)        last token's normed input of the time mix, per layer
    state[FFN_X]  (B, L, C)        last token's normed input of the channel mix, per layer
    state[WKV]    (B, L, H, N, N)  the WKV matrix S of each layer and head

All zeros before any token (no -inf sentinel, unlike RWKV-4); a float32 model keeps it in float32,
a float64 model in float64. Which index of S is the key and which the value differs between
generations (v5/state.py, v7/state.py say); every engine here agrees with rwkv_np within a
generation, so the converters below are the same pure re-arrangement for all three.

The other engines' layouts of one sequence's state (L layers, C channels, H heads of N):
    rwkv pip   list of 3*L arrays, per layer [att_x (C,), wkv (H, N, N), ffn_x (C,)] (BlinkDL's
               `rwkv` package; its wkv is float32)
    rwkv.cpp   one float32 array (L*(2+N)*C,), per layer [ffn_x (C), att_x (C), wkv (H*N*N)]
               with wkv[h] flattened row-major (rwkv_get_state_len)
Conversion round-trips exactly (values keep their dtype; rwkv.cpp's buffer is float32).
"""
from __future__ import annotations

import numpy as np

from .errors import InputError

ATT_X, FFN_X, WKV = range(3)
NAMES = ("att_x", "ffn_x", "wkv")


def state_shapes(config, batch: int) -> tuple[tuple[int, ...], ...]:
    C, L = config.hidden_size, config.num_hidden_layers
    H, N = config.num_heads, config.hidden_size // config.num_heads
    return (batch, L, C), (batch, L, C), (batch, L, H, N, N)


def empty_state(config, batch: int, dtype=np.float32) -> list[np.ndarray]:
    """The state before any token (zeros: RWKV-5 and later have no -inf sentinel)."""
    return [np.zeros(shape, dtype) for shape in state_shapes(config, batch)]


def check_state(state, config, batch: int, dtype=np.float32) -> list[np.ndarray]:
    """Validate a state passed by a caller; return it as a new list of arrays in `dtype` (the
    caller's arrays are never modified)."""
    if not isinstance(state, (list, tuple)) or len(state) != 3:
        got = f"{len(state)} items" if isinstance(state, (list, tuple)) else type(state).__name__
        raise InputError(f"state: expected a list of 3 arrays [att_x, ffn_x, wkv], got {got}")
    out = []
    for i, (s, want) in enumerate(zip(state, state_shapes(config, batch))):
        try:
            s = np.asarray(s)
        except (ValueError, TypeError) as e:  # ragged nested lists...
            raise InputError(f"state[{i}] ({NAMES[i]}): not an array ({e})") from None
        if s.shape != want:
            raise InputError(f"state[{i}] ({NAMES[i]}): expected shape {want}, got {s.shape}")
        if not np.issubdtype(s.dtype, np.floating):
            raise InputError(f"state[{i}] ({NAMES[i]}): expected floating-point values, got {s.dtype}")
        out.append(np.array(s, dtype))
    return out


def _check_state(state, index: int) -> list[np.ndarray]:
    """A state list [att_x (B, L, C), ffn_x (B, L, C), wkv (B, L, H, N, N)] with `index` in its batch."""
    if not isinstance(state, (list, tuple)) or len(state) != 3:
        raise InputError("state: expected rwkv_np's list of 3 arrays [att_x, ffn_x, wkv]")
    att_x, ffn_x, wkv = (np.asarray(s) for s in state)
    if att_x.ndim != 3 or ffn_x.shape != att_x.shape or wkv.ndim != 5 or wkv.shape[:2] != att_x.shape[:2] \
            or wkv.shape[3] != wkv.shape[4] or wkv.shape[2] * wkv.shape[3] != att_x.shape[2]:
        raise InputError(f"state: expected att_x, ffn_x (B, L, C) and wkv (B, L, H, N, N) with H*N = C, "
                         f"got {[np.shape(s) for s in state]}")
    if not 0 <= index < att_x.shape[0]:
        raise InputError(f"index: {index} is outside the batch of {att_x.shape[0]}")
    return [att_x, ffn_x, wkv]


def to_rwkv_pip(state, index: int = 0) -> list[np.ndarray]:  # 3 arrays, batch first -> 3L arrays
    """Sequence `index` of a state as BlinkDL's `rwkv` package holds it (class RWKV for v5/v6,
    RWKV_x070 for v7): per layer att_x (C,), wkv (H, N, N), ffn_x (C,). Wrap each in torch.from_numpy to pass it to
    rwkv.model.RWKV.forward (the package computes in float32: take a float32 model's state)."""
    att_x, ffn_x, wkv = _check_state(state, index)
    return [np.array(part[index, i]) for i in range(att_x.shape[1]) for part in (att_x, wkv, ffn_x)]


def from_rwkv_pip(tensors) -> list[np.ndarray]:  # 3L arrays -> [att_x (1, L, C), ffn_x (1, L, C), wkv (1, L, H, N, N)]
    """A BlinkDL `rwkv` package state (torch tensors or arrays) -> rwkv_np's list of three."""
    arrays = [np.asarray(t.detach().cpu().numpy() if hasattr(t, "detach") else t) for t in tensors]
    att, wkv, ffn = arrays[0::3], arrays[1::3], arrays[2::3]
    C = att[0].shape[0] if arrays and att[0].ndim == 1 else -1
    if not arrays or len(arrays) % 3 or any(a.shape != (C,) for a in att + ffn) \
            or any(w.ndim != 3 or w.shape != wkv[0].shape or w.shape[0] * w.shape[1] != C or w.shape[1] != w.shape[2]
                   for w in wkv):
        raise InputError(f"rwkv pip state: expected 3*L arrays, per layer att_x (C,), wkv (H, N, N) with "
                         f"H*N = C, ffn_x (C,); got {len(arrays)} of shapes {[a.shape for a in arrays[:3]]}...")
    return [np.stack(att)[None], np.stack(ffn)[None], np.stack(wkv)[None]]


def to_rwkvcpp(state, index: int = 0) -> np.ndarray:  # -> (L*(2+N)*C,) float32
    """Sequence `index` of a state as rwkv.cpp's flat float32 state buffer (rwkv_get_state_len)."""
    att_x, ffn_x, wkv = _check_state(state, index)
    L = att_x.shape[1]
    layers = [np.concatenate([ffn_x[index, i], att_x[index, i], wkv[index, i].reshape(-1)]) for i in range(L)]
    return np.ascontiguousarray(np.concatenate(layers), dtype=np.float32)


def from_rwkvcpp(flat, n_layer: int, head_dim: int = 64) -> list[np.ndarray]:  # -> [att_x, ffn_x, wkv], batch 1
    """rwkv.cpp's flat state buffer (or a file of it, read with np.fromfile) -> rwkv_np's list.
    The buffer does not say its head size N: give head_dim (64 in every released v5, v6 and v7 model)."""
    flat = np.asarray(flat).reshape(-1)
    N = head_dim
    if n_layer < 1 or N < 1 or flat.size % (n_layer * (2 + N)) or (flat.size // (n_layer * (2 + N))) % N:
        raise InputError(f"rwkv.cpp state: {flat.size} values is not {n_layer} layers x (2 + {N}) x C "
                         f"with C a multiple of head_dim {N}")
    C = flat.size // (n_layer * (2 + N))
    per_layer = flat.reshape(n_layer, (2 + N) * C)
    ffn_x, att_x = per_layer[:, :C], per_layer[:, C:2 * C]
    wkv = per_layer[:, 2 * C:].reshape(n_layer, C // N, N, N)
    return [np.array(att_x)[None], np.array(ffn_x)[None], np.array(wkv)[None]]
