"""The RWKV-6 recurrent state: RWKV-5's, unchanged (rwkv_np/v5/state.py documents it):

    [att_x (B, L, C), ffn_x (B, L, C), wkv (B, L, H, N, N)]   S[i][j] = [key][value]

with the same converters to and from BlinkDL's `rwkv` package (class RWKV, v6.0) and rwkv.cpp."""
from ..v5.state import (ATT_X, FFN_X, NAMES, WKV, check_state, empty_state, from_rwkv_pip,  # noqa: F401
                        from_rwkvcpp, state_shapes, to_rwkv_pip, to_rwkvcpp)
