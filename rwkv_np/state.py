"""The recurrent state: HF's public layout, a list of five arrays, each (B, H, L).

    state[FFN_X]  (B, H, L)  last token's ln2 output, per layer (token shift of feed_forward)
    state[ATT_X]  (B, H, L)  last token's ln1 output, per layer (token shift of attention)
    state[NUM]    (B, A, L)  WKV numerator a    } the true numerator is a * e^p and the
    state[DEN]    (B, A, L)  WKV denominator b  } true denominator b * e^p (see wkv.py)
    state[MAX]    (B, A, L)  WKV exponent p: -1e38 before the first token

(A = attention_hidden_size, which HF requires to equal H.) In a float32 model the state is
float32 throughout, like HF's; in a float64 model float64.
"""
from __future__ import annotations

import numpy as np

from .config import RwkvConfig
from .errors import InputError
from .wkv import EMPTY_MAX

FFN_X, ATT_X, NUM, DEN, MAX = range(5)
NAMES = ("ffn_x", "att_x", "num", "den", "max")


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
