"""RWKV-7 "Goose": config and weight names (names.py), the float64 reference forward pass a
student reads first (reference.py, NumPy only), the WKV-7 recurrence in readable sequential and
chunked forms (wkv.py) and its Numba kernels (kernels.py)."""
