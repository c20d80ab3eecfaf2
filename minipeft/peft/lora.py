"""LoRA, rsLoRA and DoRA on GPT-2's Conv1D layers: the math, forward and backward.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models",
arXiv:2106.09685) freezes a linear layer W0 and learns a low-rank update:

    h = x W0 + b  +  s · drop(x) Aᵀ Bᵀ          x (N, in), W0 (in, out) Conv1D layout
                                                A (r, in) = lora_A.weight,  B (out, r) = lora_B.weight
    s = α / r        LoRA's scaling (lora_alpha / r)
    s = α / √r       rsLoRA (Kalajdzievski 2023, arXiv:2312.03732): keeps the update's
                     size stable as r grows

B starts at zero, so training starts exactly at the base model. A and B use peft's
(torch nn.Linear) layout; GPT-2's Conv1D stores W0 as [in, out], the transpose of
nn.Linear, which is why peft sets ``fan_in_fan_out=True`` for GPT-2 and merges

    W = W0 + s (B A)ᵀ                          (in, out)

DoRA (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation",
arXiv:2402.09353) splits the merged weight into a magnitude m (one per output) and a
direction, and trains m too:

    W' = m ⊙ (W0 + s (BA)ᵀ) / ‖W0 + s (BA)ᵀ‖_c    ‖·‖_c: the norm of each output column
                                                  over `in`; m starts equal to it

The paper (§4.3) treats the norm as a constant in backward ("detached"), so with
g = m / ‖·‖_c the layer is, as peft computes it,

    h = x W0 + b  +  (g − 1) ⊙ (x W0)  +  g ⊙ s · drop(x) Aᵀ Bᵀ

With dropout active in training, peft uses drop(x) W0 in the middle term (dora_forward).
Without dropout the terms collect into the merged layer, rescaled per output column
(dora_merged_forward): h = b + g ⊙ x (W0 + s (BA)ᵀ).

Trainable parameters per targeted layer: r · (in + out), plus `out` for DoRA's m.

Every function here is the plain NumPy twin of a Numba kernel in
``minipeft.kernels.lora``; the tests hold the two equal.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np


class LoraCache(NamedTuple):
    xd: np.ndarray                # (N, in) drop(x), x itself without dropout
    u: np.ndarray                 # (N, r) the down-projection xd Aᵀ


class DoraCache(NamedTuple):
    merged: np.ndarray            # (N, out) base + delta: x (W0 + s (BA)ᵀ) without bias (under
                                  #          dropout drop(x) W0 + delta); all dmagnitude needs
    g: np.ndarray                 # (out,) m / norm
    norm: np.ndarray              # (out,) ‖W0 + s (BA)ᵀ‖_c, a constant


def lora_scaling(lora_alpha: float, r: int, use_rslora: bool = False) -> float:
    """s = α / r, or α / √r with rsLoRA."""
    return lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r


def dropout_mask(rng: np.random.Generator, shape, p: float, dtype) -> np.ndarray | None:
    """Inverted dropout as torch.nn.Dropout: keep with 1 − p, scale kept values by 1/(1 − p).
    None when p == 0 (nothing to drop)."""
    if p == 0.0:
        return None
    keep = rng.random(shape) >= p
    return keep.astype(dtype) / dtype.type(1.0 - p)


# ------------------------------------------------------------------ LoRA
def lora_forward(x, A, B, scaling, mask=None):
    """x (N, in) -> the update s · drop(x) Aᵀ Bᵀ (N, out); cache (xd, u)."""
    xd = x if mask is None else x * mask              # (N, in)   drop(x)
    u = xd @ A.T                                      # (N, r)    down-projection
    delta = u @ B.T                                   # (N, out)  up-projection
    delta *= scaling
    return delta, LoraCache(xd, u)


def lora_backward(ddelta, cache, A, B, scaling, mask=None):
    """ddelta (N, out) -> (dx (N, in), dA (r, in), dB (out, r))."""
    xd, u = cache
    # delta = s · u Bᵀ
    dB = scaling * (ddelta.T @ u)                     # (out, r)
    du = scaling * (ddelta @ B)                       # (N, r)
    # u = xd Aᵀ
    dA = du.T @ xd                                    # (r, in)
    dx = du @ A                                       # (N, in)
    # xd = x * mask
    if mask is not None:
        dx *= mask
    return dx, dA, dB


def delta_weight(A, B, scaling):
    """The merged update in Conv1D layout: s (B A)ᵀ = s Aᵀ Bᵀ, (in, out)."""
    return scaling * (A.T @ B.T)


# ------------------------------------------------------------------ DoRA
def dora_weight_norm(W, A, B, scaling):
    """‖W0 + s (BA)ᵀ‖ over `in` for each output column: (out,). Treated as a constant."""
    merged = W + delta_weight(A, B, scaling)          # (in, out)
    return np.sqrt(np.sum(merged * merged, axis=0))   # (out,)


def dora_forward(base, delta, magnitude, norm):
    """DoRA's extra output (g − 1) ⊙ base + g ⊙ delta, g = m / norm.

    base (N, out): x W0 without bias (drop(x) W0 under dropout); delta (N, out): the
    LoRA update from lora_forward. Returns (extra (N, out), cache)."""
    g = magnitude / norm                              # (out,)
    extra = (g - 1) * base + g * delta                # (N, out)
    return extra, DoraCache(base + delta, g, norm)


def dora_backward(dextra, cache):
    """dextra (N, out) -> (dbase (N, out), ddelta (N, out), dmagnitude (out,))."""
    merged, g, norm = cache
    dbase = dextra * (g - 1)
    ddelta = dextra * g
    # extra = (m / norm) ⊙ (base + delta) − base: the norm is a constant
    dmagnitude = np.einsum("no,no->o", dextra, merged) / norm
    return dbase, ddelta, dmagnitude


def dora_merged_forward(xw, bias, delta, magnitude, norm):
    """The whole DoRA layer without dropout, where base = x W0: the terms of dora_forward
    collect into the merged layer rescaled,  x W0 + b + extra = b + g ⊙ (x W0 + delta).

    xw (N, out): x W0 without bias; bias (out,); delta (N, out) from lora_forward.
    Returns (out (N, out), cache)."""
    g = magnitude / norm                              # (out,)
    merged = xw + delta                               # (N, out) x (W0 + s (BA)ᵀ)
    out = bias + g * merged                           # (N, out)
    return out, DoraCache(merged, g, norm)


def dora_merged_backward(dout, cache):
    """dout (N, out) -> (dmerged (N, out), dmagnitude (out,)). dmerged = g ⊙ dout is the
    gradient of x W0 and of delta alike: both enter as their sum."""
    merged, g, norm = cache
    dmerged = dout * g
    # out = b + (m / norm) ⊙ merged: the norm is a constant
    dmagnitude = np.einsum("no,no->o", dout, merged) / norm
    return dmerged, dmagnitude


# ------------------------------------------------------------------ merging
def merge_weight(W, A, B, scaling, magnitude=None):
    """-> (merged W (in, out), norm or None). DoRA keeps the norm: unmerge needs it."""
    merged = W + delta_weight(A, B, scaling)
    if magnitude is None:
        return merged, None
    norm = np.sqrt(np.sum(merged * merged, axis=0))   # (out,) of the unmerged weight
    return merged * (magnitude / norm), norm


def unmerge_weight(W, A, B, scaling, magnitude=None, norm=None):
    """Inverse of merge_weight (up to round-off)."""
    if magnitude is not None:
        W = W / (magnitude / norm)
    return W - delta_weight(A, B, scaling)
