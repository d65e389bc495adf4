"""The RWKV-7 recurrent state: a list of three arrays, batch first, all zeros before any token.

    state[ATT_X]  (B, L, C)        last token's attn_norm output, per layer (token shift of time_mix)
    state[FFN_X]  (B, L, C)        last token's ffn_norm output, per layer (token shift of channel_mix)
    state[WKV]    (B, L, H, N, N)  the WKV matrix S of each layer and head, S[i][j] with
                                   i the VALUE index and j the KEY index (BlinkDL's and rwkv.cpp's
                                   orientation; fla's recurrent_state is its transpose)

A float32 model keeps the state in float32, a float64 model in float64.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from .config import Rwkv7Config

ATT_X, FFN_X, WKV = range(3)
NAMES = ("att_x", "ffn_x", "wkv")


def state_shapes(config: Rwkv7Config, batch: int) -> tuple[tuple[int, ...], ...]:
    C, L, H, N = config.hidden_size, config.num_hidden_layers, config.num_heads, config.head_dim
    return (batch, L, C), (batch, L, C), (batch, L, H, N, N)


def empty_state(config: Rwkv7Config, batch: int, dtype=np.float32) -> list[np.ndarray]:
    """The state before any token."""
    return [np.zeros(shape, dtype) for shape in state_shapes(config, batch)]


def check_state(state, config: Rwkv7Config, batch: int, dtype=np.float32) -> list[np.ndarray]:
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
