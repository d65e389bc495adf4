"""RWKV-6 "Finch": config and weight names (names.py), the float64 reference forward pass a
student reads first (reference.py, NumPy only), the fast model (model.py). RWKV-6 is RWKV-5.2
with a data-dependent token shift and decay; its WKV recurrence (a decay per token) and its state
are RWKV-5's, so it runs rwkv_np.v5's readable forms (v5/wkv.py: sequential and chunked) and
Numba kernel (v5/kernels.py), and state.py re-exports rwkv_np.v5.state."""
