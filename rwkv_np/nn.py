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


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


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
