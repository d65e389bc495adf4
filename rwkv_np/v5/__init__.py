"""RWKV-5 "Eagle" (variants 5.0, 5.1, 5.2): config and weight names (names.py), the float64
reference forward pass a student reads first (reference.py, NumPy only), the WKV-5 recurrence in
readable sequential and chunked forms (wkv.py) and its Numba kernel (kernels.py), the state
layout and its converters (state.py), the fast model (model.py). RWKV-6 (rwkv_np.v6) runs the
same WKV recurrence with a decay per token, and has the same state."""
