"""RWKV-4: HF transformers' RwkvForCausalLM, in float64 (reference.py) and fast (model.py)."""
