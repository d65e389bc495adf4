"""The RWKV-7 recurrent state: a list of three arrays, batch first, all zeros before any token.

    state[ATT_X]  (B, L, C)        last token's attn_norm output, per layer (token shift of time_mix)
    state[FFN_X]  (B, L, C)        last token's ffn_norm output, per layer (token shift of channel_mix)
    state[WKV]    (B, L, H, N, N)  the WKV matrix S of each layer and head, S[i][j] with
                                   i the VALUE index and j the KEY index (BlinkDL's and rwkv.cpp's
                                   orientation; fla's recurrent_state is its transpose)

A float32 model keeps the state in float32, a float64 model in float64.

The other engines' layouts of one sequence's state (L layers, C channels, H heads of N), converted
below:
    rwkv pip   list of 3*L arrays, per layer [att_x (C,), wkv (H, N, N), ffn_x (C,)] (BlinkDL's
               `rwkv` package, RWKV_x070.generate_zero_state; its wkv is float32, [value][key])
    rwkv.cpp   one float32 array (L*(2+N)*C,), per layer [ffn_x (C), att_x (C), wkv (H*N*N)]
               with wkv[h][value][key] flattened (rwkv_get_state_len, rwkv_wkv_v7_impl)
All three hold the same values in the same orientation, so conversion is a pure re-arrangement
and round-trips exactly (values keep their dtype; rwkv.cpp's buffer is float32). The code,
the same for RWKV-5, 6 and 7, is rwkv_np/matrix_state.py.
"""
from ..matrix_state import (ATT_X, FFN_X, NAMES, WKV, check_state, empty_state,  # noqa: F401
                            from_rwkv_pip, from_rwkvcpp, state_shapes, to_rwkv_pip, to_rwkvcpp)
