"""NumPy building blocks every generation's reference and fast model share (NumPy only)."""
from __future__ import annotations

import numpy as np

from .errors import InputError


def layer_norm(x, weight, bias, eps):  # x (..., C) -> (..., C)
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis, variance without
    Bessel's correction (biased), as torch's LayerNorm."""
    mean = x.mean(-1, keepdims=True)
    xc = x - mean
    var = (xc * xc).mean(-1, keepdims=True)
    return xc * (1 / np.sqrt(var + eps)) * weight + bias


def group_norm(x, weight, bias, heads, eps):  # x (B, T, C) -> (B, T, C)
    """A layer norm of each head's C / heads channels on its own (biased variance), then one
    affine map over all C: torch's GroupNorm(heads, C) on each token, BlinkDL's ln_x (RWKV-5/6/7)."""
    B, T, C = x.shape
    return layer_norm(x.reshape(B, T, heads, C // heads), 1.0, 0.0, eps).reshape(B, T, C) * weight + bias


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def token_shift(x, last):  # x (B, T, C), last (B, C) -> (B, T, C)
    """Each position sees the previous position's input: out[:, t] = x[:, t-1], out[:, 0] = last."""
    return np.concatenate([last[:, None, :], x[:, :-1]], axis=1)


def nest(params: dict) -> dict:
    """{"model.layers.0.attn.x_r": array, ...} -> {"model": {"layers": {"0": {"attn": {"x_r": ...}}}}}
    in float64, so that a block's weights are one dict of keyword arguments (the references of
    RWKV-5/6/7). Values must be float arrays (bfloat16 bits or int8 storage: widen them first
    with rwkv_np.storage.as_float)."""
    tree = {}
    for name, x in params.items():
        if not np.issubdtype(np.asarray(x).dtype, np.floating):  # bfloat16 bits are uint16
            raise InputError(f"{name}: the reference reads float arrays, got {type(x).__name__} "
                             f"of {np.asarray(x).dtype} (widen it with rwkv_np.storage.as_float)")
        *path, leaf = name.split(".")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = np.asarray(x, np.float64)
    return tree


def cross_entropy(logits, labels) -> float:  # logits (B, T, V), labels (B, T)
    """HF's causal-LM loss: position t predicts labels[:, t+1]; labels of -100 are ignored."""
    labels = np.atleast_2d(np.asarray(labels))
    if labels.shape != logits.shape[:2]:
        raise InputError(f"labels: expected shape {logits.shape[:2]}, got {labels.shape}")
    V = logits.shape[-1]
    if not np.issubdtype(labels.dtype, np.integer) or np.any((labels != -100) & ((labels < 0) | (labels >= V))):
        raise InputError(f"labels: expected integer token ids in [0, {V}) or -100 (ignored)")
    z = logits[:, :-1].astype(np.float64)
    target = labels[:, 1:]
    keep = target != -100
    z = z[keep]
    z = z - z.max(-1, keepdims=True)
    logp = z[np.arange(len(z)), target[keep]] - np.log(np.exp(z).sum(-1))
    return float(-logp.mean()) if len(z) else float("nan")
