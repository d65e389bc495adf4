"""The RWKV-5 / RWKV-6 recurrent state: a list of three arrays, batch first, all zeros before any token.

    state[ATT_X]  (B, L, C)        last token's ln1 output, per layer (token shift of the time mix)
    state[FFN_X]  (B, L, C)        last token's ln2 output, per layer (token shift of the channel mix)
    state[WKV]    (B, L, H, N, N)  the WKV matrix S of each layer and head, S[i][j] with i the KEY
                                   index and j the VALUE index (BlinkDL's, rwkv.cpp's and ggml's
                                   orientation for v5/v6; RWKV-7's is the transpose)

A float32 model keeps the state in float32, a float64 model in float64. RWKV-6 has the same state
(rwkv_np.v6.state re-exports this module).

The other engines' layouts of one sequence's state (L layers, C channels, H heads of N):
    rwkv pip   list of 3*L arrays, per layer [att_x (C,), wkv (H, N, N), ffn_x (C,)] (BlinkDL's
               `rwkv` package, class RWKV for v5/v6; its wkv is float32, [key][value])
    rwkv.cpp   one float32 array (L*(2+N)*C,), per layer [ffn_x (C), att_x (C), wkv (H*N*N)]
               with wkv[h][key][value] flattened (rwkv_get_state_len; ggml's wkv6 kernel indexes
               h*N*N + i*N + j with i from k and r, j from v)
All three hold the same values in the same orientation, so conversion is a pure re-arrangement
and round-trips exactly (values keep their dtype; rwkv.cpp's buffer is float32). The code,
the same for RWKV-5, 6 and 7, is rwkv_np/matrix_state.py.
"""
from ..matrix_state import (ATT_X, FFN_X, NAMES, WKV, check_state, empty_state,  # noqa: F401
                            from_rwkv_pip, from_rwkvcpp, state_shapes, to_rwkv_pip, to_rwkvcpp)
